//! Services, masquerade and conntrack through the walk: the article's §3.2 with real
//! frames, ICMP errors about NATed flows, the DNS race, dry-run traces.

use super::*;

#[test]
fn nodeport_to_remote_endpoint_the_article_walk() {
    let mut lab = Lab::new(vec![article::ghost()]);
    let sport = sport_for(&lab, CLIENT, (NODE1, 31266), EP2);
    let host_mac = article::node1().host_port_mac;
    let syn = tcp(host_mac, HOST_MAC, (CLIENT, sport), (NODE1, 31266), true, &[]);
    let (a, tr) = lab.traced_port(PortId::HOST, &syn);
    assert!(matches!(a, Action::ToVtep { remote: NODE2, .. }), "{a:?}");
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst()), (VTEP1, EP2), "DNAT to the endpoint, masquerade to flannel.1's address");
    assert_eq!(l4_ports(&ip), (sport, 2368), "source port kept");
    assert_eq!(ip.ttl(), 64, "the host stack already routed it");
    assert_checksums(&ip);
    let kinds: Vec<&str> = tr.steps.iter().map(step_kind).collect();
    assert_eq!(
        kinds,
        [
            "ingress",
            "packet",
            "miss",
            "service",
            "endpoint",
            "new",
            "dnat",
            "masquerade",
            "route",
            "neighbour",
            "fdb",
            "encap"
        ]
    );
    assert!(tr.steps[3].to_string().contains("KUBE-NODEPORTS tcp dpt:31266"));
    assert!(tr.steps[7].to_string().contains(&format!("-> 10.244.1.0:{sport}")));

    // The article's conntrack listing: reply tuple src=10.244.0.74 dst=10.244.1.0 sport=2368.
    let entries = lab.dp.conntrack.entries(NOW);
    assert_eq!(entries.len(), 1);
    let reply = entries[0].reply.to_string();
    assert_eq!(reply, format!("src=10.244.0.74 dst=10.244.1.0 sport=2368 dport={sport}"));

    // SYN-ACK back from centos7-2: reverse NAT to the client, out the host port.
    let synack = {
        let b = PacketBuilder::ipv4(EP2.octets(), VTEP1.octets(), 63).tcp(2368, sport, 5000, 64240).syn().ack(1001);
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    };
    assert_eq!(lab.vxlan(NODE2, &from_node2(&synack)), Action::ToPort(PortId::HOST));
    let out = lab.out();
    assert_eq!(&out[..6], &host_mac.0);
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst()), (NODE1, CLIENT));
    assert_eq!(l4_ports(&ip), (31266, sport));
    assert_checksums(&ip);
    assert_eq!(lab.count(Counter::CtHitReply), 1);
    assert_eq!(lab.count(Counter::ServiceMasquerade), 1);
    let tables = lab.dp.tables();
    let svc = tables.services.by_node_port(PROTO_TCP, 31266).unwrap();
    assert_eq!(svc.hits.get().0, 1);
    assert_eq!(svc.node_port_hits.get(), svc.hits.get(), "a NodePort flow counts on KUBE-NODEPORTS, as iptables does");
}

#[test]
fn nodeport_to_local_endpoint_masquerades_to_node_ip() {
    let mut lab = Lab::new(vec![article::ghost()]);
    let sport = sport_for(&lab, CLIENT, (NODE1, 31266), EP1);
    let syn = tcp(article::node1().host_port_mac, HOST_MAC, (CLIENT, sport), (NODE1, 31266), true, &[]);
    assert_eq!(lab.port(PortId::HOST, &syn), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst()), (NODE1, EP1));
    assert_eq!(l4_ports(&ip), (sport, 2368));
    // The pod answers; the reply goes back to the client from the NodePort.
    let synack = tcp(EP1_MAC, HOST_MAC, (EP1, 2368), (NODE1, sport), false, &[]);
    assert_eq!(lab.port(PortId(1), &synack), Action::ToPort(PortId::HOST));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip)), (NODE1, CLIENT, (31266, sport)));
    assert_checksums(&ip);
}

#[test]
fn cluster_ip_from_a_pod_is_not_masqueraded_hairpin_is() {
    let mut lab = Lab::new(vec![article::ghost()]);
    let sport = sport_for(&lab, EP1, (VIP, 2368), EP2);
    let syn = tcp(EP1_MAC, HOST_MAC, (EP1, sport), (VIP, 2368), true, &[]);
    assert!(matches!(lab.port(PortId(1), &syn), Action::ToVtep { .. }));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), ip.ttl()), (EP1, EP2, 63));
    // The reply from the endpoint comes back with the VIP as source.
    let synack = {
        let b = PacketBuilder::ipv4(EP2.octets(), EP1.octets(), 63).tcp(2368, sport, 5000, 64240).syn().ack(1001);
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    };
    assert_eq!(lab.vxlan(NODE2, &from_node2(&synack)), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip)), (VIP, EP1, (2368, sport)));
    assert_checksums(&ip);

    // Hairpin: ghost-ep1 reaching itself through the service is masqueraded.
    let sport = sport_for(&lab, EP1, (VIP, 2368), EP1);
    let syn = tcp(EP1_MAC, HOST_MAC, (EP1, sport), (VIP, 2368), true, &[]);
    assert_eq!(lab.port(PortId(1), &syn), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst()), (NODE1, EP1));
    let tables = lab.dp.tables();
    let svc = tables.services.by_node_port(PROTO_TCP, 31266).unwrap();
    assert_eq!((svc.hits.get().0, svc.node_port_hits.get().0), (2, 0), "two cluster IP flows, none via the NodePort");
}

#[test]
fn service_without_endpoints_refuses_at_once() {
    let mut svc = article::ghost();
    svc.endpoints.clear();
    let mut lab = Lab::new(vec![svc]);
    // kube-proxy's REJECT answers TCP with ICMP port unreachable too (not a RST), from the
    // node address, quoting the SYN as routed (FORWARD): TTL 63.
    let syn = tcp(EP1_MAC, HOST_MAC, (EP1, 40000), (VIP, 2368), true, &[]);
    assert_eq!(lab.port(PortId(1), &syn), Action::ToPort(PortId(1)));
    let out = lab.out();
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), ip.ttl()), (NODE1, EP1, 64));
    assert_eq!(icmp::type_code(&out[14..]), Some((3, 3)));
    let quoted = &out[14 + 28..];
    assert_eq!(quoted[8], 63, "the quote as routed");
    assert_eq!((&quoted[..8], &quoted[9..10], &quoted[12..]), (&syn[14..22], &syn[23..24], &syn[26..]));
    assert_eq!(icmp::embedded(ip.payload()).unwrap().dst, VIP);
    assert_checksums(&ip);
    assert_eq!(lab.count(Counter::IcmpUnreachableSent), 1);
    assert_eq!(lab.dropped(DropReason::ServiceNoEndpoints), 1);
    // UDP gets ICMP port unreachable from the node address as well.
    let mut dns = article::ghost();
    dns.name = "kube-system/kube-dns".into();
    dns.protocol = crate::core::nat::service::Protocol::Udp;
    dns.cluster_ip = Ipv4Addr::new(10, 250, 0, 10);
    dns.port = 53;
    dns.node_port = None;
    dns.endpoints.clear();
    let mut lab = Lab::new(vec![dns]);
    let q = udp(EP1_MAC, (EP1, 53000), (Ipv4Addr::new(10, 250, 0, 10), 53), b"query");
    assert_eq!(lab.port(PortId(1), &q), Action::ToPort(PortId(1)));
    assert_eq!(icmp::type_code(&lab.out()[14..]), Some((3, 3)));
    assert_eq!(lab.out_ip().src(), NODE1);
    assert_checksums(&lab.out_ip());
}

#[test]
fn nodeport_without_endpoints_rejects_as_input_would() {
    // The client's SYN, forwarded into ucanal0 by the node's stack (TTL 63): the error
    // quotes it as it arrived (TTL 64), from the node IP, and leaves ucanal with TTL 65 so
    // that the node's stack forwards it out with 64, as the kernel's REJECT in INPUT.
    let mut svc = article::ghost();
    svc.endpoints.clear();
    let mut lab = Lab::new(vec![svc]);
    let mut syn = tcp(article::node1().host_port_mac, HOST_MAC, (CLIENT, 40000), (NODE1, 31266), true, &[]);
    Ipv4Packet::new_checked(&mut syn[14..]).unwrap().dec_ttl();
    assert_eq!(lab.port(PortId::HOST, &syn), Action::ToPort(PortId::HOST));
    let out = lab.out().to_vec();
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), ip.ttl()), (NODE1, CLIENT, 65));
    assert_eq!(icmp::type_code(&out[14..]), Some((3, 3)));
    let quoted = Ipv4Packet::new_checked(&out[14 + 28..]).unwrap();
    assert_eq!(quoted.ttl(), 64);
    assert!(quoted.verify_checksum());
    assert_eq!(&out[14 + 28 + 20..], &syn[34..]);
    assert_checksums(&ip);
    // From a pod (no host hop): the quote untouched, TTL 64.
    let syn = tcp(EP1_MAC, HOST_MAC, (EP1, 40001), (NODE1, 31266), true, &[]);
    assert_eq!(lab.port(PortId(1), &syn), Action::ToPort(PortId(1)));
    let out = lab.out().to_vec();
    assert_eq!((out[14 + 8], out[14 + 28 + 8]), (64, 64));
    assert_eq!(&out[14 + 28..], &syn[14..]);
    assert_eq!(lab.dropped(DropReason::ServiceNoEndpoints), 2);
}

#[test]
fn unknown_service_port_is_port_unreachable() {
    let mut lab = Lab::new(vec![article::ghost()]);
    let syn = tcp(EP1_MAC, HOST_MAC, (EP1, 40000), (VIP, 80), true, &[]);
    assert_eq!(lab.port(PortId(1), &syn), Action::ToPort(PortId(1)));
    assert_eq!(icmp::type_code(&lab.out()[14..]), Some((3, 3)));
    assert_eq!(lab.dropped(DropReason::NoService), 1);
}

#[test]
fn pod_to_outside_is_masqueraded_to_node_ip_in_the_steered_range() {
    let mut lab = Lab::new(vec![]);
    let syn = tcp(EP1_MAC, HOST_MAC, (EP1, 45000), (CLIENT, 8080), true, &[]);
    assert_eq!(lab.port(PortId(1), &syn), Action::ToPort(PortId::HOST));
    let ip = lab.out_ip();
    let (sport, dport) = l4_ports(&ip);
    assert_eq!((ip.src(), ip.dst(), dport), (NODE1, CLIENT, 8080));
    assert!((61000..=65534).contains(&sport), "{sport}");
    assert_eq!(ip.ttl(), 64, "the host stack decrements when it forwards");
    assert_checksums(&ip);
    assert_eq!(lab.count(Counter::EgressMasquerade), 1);
    // The client's answer, steered in from the uplink, goes back to the pod.
    let synack = tcp(article::node1().host_port_mac, HOST_MAC, (CLIENT, 8080), (NODE1, sport), false, &[]);
    assert_eq!(lab.port(PortId::HOST, &synack), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip)), (CLIENT, EP1, (8080, 45000)));
    assert_checksums(&ip);
    // Pod to pod is never masqueraded; pod to the node itself neither.
    let to_node = tcp(EP1_MAC, HOST_MAC, (EP1, 45001), (NODE1, 10250), true, &[]);
    assert_eq!(lab.port(PortId(1), &to_node), Action::ToPort(PortId::HOST));
    assert_eq!(lab.out_ip().src(), EP1);
}

#[test]
fn steered_packets_that_are_not_ours_go_back_to_the_host() {
    let mut lab = Lab::new(vec![article::ghost()]);
    let f = tcp(article::node1().host_port_mac, HOST_MAC, (CLIENT, 50000), (NODE1, 22), true, &[]);
    assert_eq!(lab.port(PortId::HOST, &f), Action::ToPort(PortId::HOST));
    assert_eq!(lab.count(Counter::HostPunt), 1);
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst()), (CLIENT, NODE1));
    // The host never gets its own traffic for the outside world back.
    let f = tcp(article::node1().host_port_mac, HOST_MAC, (NODE1, 50000), (CLIENT, 22), true, &[]);
    assert_eq!(lab.port(PortId::HOST, &f), Action::Drop(DropReason::HostLoop));
}

#[test]
fn node_to_remote_pod_and_back_via_vtep_address() {
    let mut lab = Lab::new(vec![]);
    let hm = article::node1().host_port_mac;
    let f = {
        let b = eth(hm, HOST_MAC).ipv4(VTEP1.octets(), EP2.octets(), 64).icmpv4_echo_request(7, 1);
        let mut v = Vec::new();
        b.write(&mut v, b"x").unwrap();
        v
    };
    assert!(matches!(lab.port(PortId::HOST, &f), Action::ToVtep { .. }));
    assert_eq!(lab.out_ip().ttl(), 64);
    let reply = {
        let b = PacketBuilder::ipv4(EP2.octets(), VTEP1.octets(), 63).icmpv4_echo_reply(7, 1);
        let mut v = Vec::new();
        b.write(&mut v, b"x").unwrap();
        v
    };
    assert_eq!(lab.vxlan(NODE2, &from_node2(&reply)), Action::ToPort(PortId::HOST));
    assert_eq!(lab.count(Counter::CtNew), 0, "node traffic from the VTEP address is not NATed");
}

#[test]
fn icmp_error_about_a_natted_flow_is_translated() {
    let mut lab = Lab::new(vec![article::ghost()]);
    let sport = sport_for(&lab, CLIENT, (NODE1, 31266), EP2);
    let hm = article::node1().host_port_mac;
    let syn = tcp(hm, HOST_MAC, (CLIENT, sport), (NODE1, 31266), true, &[]);
    assert!(matches!(lab.port(PortId::HOST, &syn), Action::ToVtep { .. }));
    let natted = lab.out()[8 + 14..].to_vec();
    // centos7-2's ghost-ep2 answers the NATed SYN with port unreachable.
    let mut err = vec![0u8; 600];
    let n = icmp::emit_error(&mut err, EP2, ErrorRepr::port_unreachable(), &natted);
    err.truncate(n);
    // ... which goes to the masquerade address 10.244.1.0.
    assert_eq!(ipv4::addrs(&err[..20]).1, VTEP1);
    assert_eq!(lab.vxlan(NODE2, &from_node2(&err)), Action::ToPort(PortId::HOST));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst()), (NODE1, CLIENT), "outer addresses translated");
    assert_checksums(&ip);
    let e = icmp::embedded(ip.payload()).unwrap();
    assert_eq!((e.src, e.ports.sport, e.dst, e.ports.dport), (CLIENT, sport, NODE1, 31266), "quote translated");
    assert_eq!(lab.count(Counter::IcmpErrorTranslated), 1);
}

#[test]
fn icmp_error_from_a_router_about_a_dnated_flow_comes_from_the_service() {
    // ghost-ep1 -> the VIP, DNATed to ghost-ep2 (no masquerade); a router on the way (the
    // peer's VTEP 10.244.0.0) sends time exceeded about the DNATed packet. The kernel's
    // nf_nat_icmp_reply_translation changes the outer source too: it comes from the VIP.
    let mut lab = Lab::new(vec![article::ghost()]);
    let sport = sport_for(&lab, EP1, (VIP, 2368), EP2);
    let syn = tcp(EP1_MAC, HOST_MAC, (EP1, sport), (VIP, 2368), true, &[]);
    assert!(matches!(lab.port(PortId(1), &syn), Action::ToVtep { .. }));
    let natted = lab.out()[8 + 14..].to_vec();
    assert_eq!(ipv4::addrs(&natted[..20]), (EP1, EP2));
    let mut err = vec![0u8; 600];
    let n = icmp::emit_error(&mut err, Ipv4Addr::new(10, 244, 0, 0), ErrorRepr::ttl_exceeded(), &natted);
    err.truncate(n);
    assert_eq!(lab.vxlan(NODE2, &from_node2(&err)), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst()), (VIP, EP1), "outer source: the service IP");
    assert_checksums(&ip);
    let e = icmp::embedded(ip.payload()).unwrap();
    assert_eq!((e.src, e.ports.sport, e.dst, e.ports.dport), (EP1, sport, VIP, 2368));
    assert_eq!(icmp::type_code(&lab.out()[14..]), Some((11, 0)));
}

#[test]
fn dry_run_trace_leaves_no_state() {
    let lab = Lab::new(vec![article::ghost()]);
    let syn = tcp(article::node1().host_port_mac, HOST_MAC, (CLIENT, 40000), (NODE1, 31266), true, &[]);
    let mut buf = vec![0u8; HEADROOM + syn.len()];
    buf[HEADROOM..].copy_from_slice(&syn);
    let t = lab.dp.tables();
    let mut p = Packet::new(&mut buf, HEADROOM, HEADROOM + syn.len());
    let mut tr = Trace::dry_run();
    let a = lab.dp.handle_port(0, &t, PortId::HOST, &mut p, NOW, &mut tr);
    assert!(!matches!(a, Action::Drop(_)));
    assert!(tr.steps.iter().any(|s| matches!(s, Step::Dnat { .. })));
    assert!(lab.dp.conntrack.is_empty());
    assert_eq!(lab.count(Counter::RxHost), 0);
}

#[test]
fn two_datagrams_of_a_new_udp_flow_both_pass() {
    let mut dns = article::ghost();
    dns.name = "kube-system/kube-dns".into();
    dns.protocol = crate::core::nat::service::Protocol::Udp;
    dns.cluster_ip = Ipv4Addr::new(10, 250, 0, 10);
    dns.port = 53;
    dns.node_port = None;
    let mut lab = Lab::new(vec![dns]);
    let a = udp(EP1_MAC, (EP1, 53000), (Ipv4Addr::new(10, 250, 0, 10), 53), b"A?");
    let aaaa = udp(EP1_MAC, (EP1, 53000), (Ipv4Addr::new(10, 250, 0, 10), 53), b"AAAA?");
    let first = lab.port(PortId(1), &a);
    let first_dst = lab.out_ip().dst();
    let second = lab.port(PortId(1), &aaaa);
    assert!(!matches!(first, Action::Drop(_)) && !matches!(second, Action::Drop(_)));
    assert_eq!(lab.out_ip().dst(), first_dst, "same endpoint");
    assert_eq!(lab.dp.conntrack.len(), 1);
}

#[test]
fn a_syn_flood_against_a_full_table_cannot_keep_new_flows_out() {
    let t = article::tables1(vec![article::ghost()]);
    let mut lab = Lab { dp: Dataplane::new(t, Conntrack::new(8, Timeouts::default()), 1), ..Lab::new(vec![]) };
    let host_mac = article::node1().host_port_mac;
    // An established NodePort flow to the local endpoint.
    let sport = sport_for(&lab, CLIENT, (NODE1, 31266), EP1);
    let syn = tcp(host_mac, HOST_MAC, (CLIENT, sport), (NODE1, 31266), true, &[]);
    assert_eq!(lab.port(PortId::HOST, &syn), Action::ToPort(PortId(1)));
    let synack = {
        let b = eth(EP1_MAC, HOST_MAC).ipv4(EP1.octets(), NODE1.octets(), 64).tcp(2368, sport, 5000, 64240);
        let mut v = Vec::new();
        b.syn().ack(1001).write(&mut v, &[]).unwrap();
        v
    };
    assert_eq!(lab.port(PortId(1), &synack), Action::ToPort(PortId::HOST));
    let ack = tcp(host_mac, HOST_MAC, (CLIENT, sport), (NODE1, 31266), false, b"line 1\n");
    assert_eq!(lab.port(PortId::HOST, &ack), Action::ToPort(PortId(1)));
    let data_back = tcp(EP1_MAC, HOST_MAC, (EP1, 2368), (NODE1, sport), false, b"echo\n");
    assert_eq!(lab.port(PortId::HOST, &ack), Action::ToPort(PortId(1)));
    // A flood of SYNs from spoofed sources: every one enters, evicting older half-open ones.
    for i in 0..100u32 {
        let src = Ipv4Addr::from(0xc612_0000 + i);
        let a = lab.port(PortId::HOST, &tcp(host_mac, HOST_MAC, (src, 1024 + i as u16), (NODE1, 31266), true, &[]));
        assert!(!matches!(a, Action::Drop(_)), "flood SYN {i}: {a:?}");
        assert_eq!(lab.port(PortId::HOST, &ack), Action::ToPort(PortId(1)), "established flow untouched");
    }
    assert_eq!(lab.dp.conntrack.len(), 8);
    assert_eq!(lab.dropped(DropReason::CtFull), 0);
    assert_eq!(lab.count(Counter::CtEarlyDrop), 100 - 7);
    // The established flow still answers its client.
    assert_eq!(lab.port(PortId(1), &data_back), Action::ToPort(PortId::HOST));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip)), (NODE1, CLIENT, (31266, sport)));
}
