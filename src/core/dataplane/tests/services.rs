//! kube-proxy's service shapes beyond ClusterIP and NodePort (Cluster) through the walk,
//! with real frames: externalTrafficPolicy Local, internalTrafficPolicy Local, session
//! affinity, externalIPs, load-balancer IPs and their source ranges, terminating
//! endpoints, the service CIDR's unallocated addresses; the trace's candidate set.

use super::*;
use crate::core::trace::Pick;

const EXT: Ipv4Addr = Ipv4Addr::new(192, 168, 99, 11);
const LB: Ipv4Addr = Ipv4Addr::new(1, 2, 3, 4);

fn ghost(f: impl FnOnce(&mut ServiceSpec)) -> Vec<ServiceSpec> {
    let mut g = article::ghost();
    f(&mut g);
    vec![g]
}

/// A client's SYN as it arrives on the host port from the uplink.
fn from_client(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    tcp(article::node1().host_port_mac, HOST_MAC, src, dst, true, &[])
}

fn endpoint_step(tr: &Trace) -> (SocketAddrV4, Vec<SocketAddrV4>, bool, Pick) {
    tr.steps
        .iter()
        .find_map(|s| match s {
            Step::Endpoint { endpoint, candidates, masquerade, by, .. } => {
                Some((*endpoint, candidates.clone(), *masquerade, *by))
            }
            _ => None,
        })
        .expect("an endpoint step")
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_the_local_endpoint() {
    let mut lab = Lab::new(ghost(|g| g.external_local = true));
    for sport in 40000..40016 {
        let syn = from_client((CLIENT, sport), (NODE1, 31266));
        assert_eq!(lab.port(PortId::HOST, &syn), Action::ToPort(PortId(1)), "ghost-ep1, every time");
        let ip = lab.out_ip();
        assert_eq!((ip.src(), ip.dst()), (CLIENT, EP1), "the pod sees the client");
        assert_eq!(l4_ports(&ip), (sport, 2368));
        assert_checksums(&ip);
    }
    assert_eq!(lab.count(Counter::ServiceDnat), 16);
    assert_eq!(lab.count(Counter::ServiceMasquerade), 0);
    // A pod of this node reaching the same NodePort is short-circuited to every endpoint.
    let sport = sport_for(&lab, EP3, (NODE1, 31266), EP2);
    let syn = tcp(EP3_MAC, HOST_MAC, (EP3, sport), (NODE1, 31266), true, &[]);
    let (a, tr) = lab.traced_port(PortId(2), &syn);
    assert!(matches!(a, Action::ToVtep { remote: NODE2, .. }), "{a:?}");
    assert_eq!(lab.out_ip().src(), EP3, "unmasqueraded");
    let (ep, cands, masq, by) = endpoint_step(&tr);
    assert_eq!((ep.ip(), cands.len(), masq, by), (&EP2, 2, false, Pick::Hash));
}

#[test]
fn external_traffic_policy_local_without_a_local_endpoint_drops() {
    let mut lab = Lab::new(ghost(|g| {
        g.external_local = true;
        g.endpoints.retain(|e| *e.ip() == EP2);
    }));
    let syn = from_client((CLIENT, 40000), (NODE1, 31266));
    assert_eq!(lab.port(PortId::HOST, &syn), Action::Drop(DropReason::NoLocalEndpoint));
    assert_eq!(lab.dropped(DropReason::NoLocalEndpoint), 1);
    assert!(lab.dp.conntrack.entries(NOW).is_empty(), "nothing entered");
    // This node itself still reaches it, masqueraded (kube-proxy's "masquerade local traffic").
    let syn = from_client((NODE1, 40001), (NODE1, 31266));
    assert!(matches!(lab.port(PortId::HOST, &syn), Action::ToVtep { remote: NODE2, .. }));
    assert_eq!(lab.out_ip().src(), VTEP1);
}

#[test]
fn internal_traffic_policy_local_on_the_cluster_ip() {
    let mut lab = Lab::new(ghost(|g| g.internal_local = true));
    for sport in 50000..50008 {
        let syn = tcp(EP3_MAC, HOST_MAC, (EP3, sport), (VIP, 2368), true, &[]);
        assert_eq!(lab.port(PortId(2), &syn), Action::ToPort(PortId(1)));
        assert_eq!(lab.out_ip().dst(), EP1);
    }
    let mut lab = Lab::new(ghost(|g| {
        g.internal_local = true;
        g.endpoints.retain(|e| *e.ip() == EP2);
    }));
    let syn = tcp(EP3_MAC, HOST_MAC, (EP3, 50000), (VIP, 2368), true, &[]);
    assert_eq!(lab.port(PortId(2), &syn), Action::Drop(DropReason::NoLocalEndpoint));
}

#[test]
fn session_affinity_sends_a_client_to_one_endpoint_until_it_expires() {
    let mut lab = Lab::new(ghost(|g| g.affinity_timeout = Some(30)));
    let at = |lab: &mut Lab, sport: u16, now: Now| {
        let syn = from_client((CLIENT, sport), (NODE1, 31266));
        let a = lab.run(&syn, |dp, t, p, tr| dp.handle_port(0, t, PortId::HOST, p, now, tr), &mut Trace::off());
        assert!(!matches!(a, Action::Drop(_)), "{a:?}");
        lab.out_ip().dst()
    };
    let first = at(&mut lab, 41000, NOW);
    for sport in 41001..41050 {
        assert_eq!(at(&mut lab, sport, NOW), first, "sport {sport}");
    }
    assert_eq!(lab.count(Counter::ServiceAffinityHit), 49);
    // Each connection refreshed it; 29 s after the last one it still holds.
    let later = Now(NOW.0 + 29_000_000_000);
    assert_eq!(at(&mut lab, 41050, later), first);
    // A dry-run trace sees the record and names it.
    let syn = from_client((CLIENT, 41051), (NODE1, 31266));
    let mut tr = Trace::dry_run();
    let a = lab.run(&syn, |dp, t, p, tr| dp.handle_port(0, t, PortId::HOST, p, later, tr), &mut tr);
    assert!(!matches!(a, Action::Drop(_)));
    assert_eq!(endpoint_step(&tr).3, Pick::Affinity);
    // Expired: the hash picks again (and records the new choice).
    let expired = Now(later.0 + 30_000_000_000);
    let hits = lab.count(Counter::ServiceAffinityHit);
    at(&mut lab, 41052, expired);
    assert_eq!(lab.count(Counter::ServiceAffinityHit), hits);
    assert_eq!(lab.dp.affinity.len(), 1);
}

#[test]
fn external_and_load_balancer_ips_with_source_ranges() {
    let mut lab = Lab::new(ghost(|g| {
        g.external_ips = vec![EXT];
        g.load_balancer_ips = vec![LB];
        g.source_ranges = vec!["172.16.240.0/28".parse().unwrap()];
    }));
    let syn = from_client((CLIENT, 42000), (EXT, 2368));
    assert!(!matches!(lab.port(PortId::HOST, &syn), Action::Drop(_)));
    assert!([NODE1, VTEP1].contains(&lab.out_ip().src()), "masqueraded (eTP Cluster)");
    let syn = from_client((CLIENT, 42001), (LB, 2368));
    assert!(!matches!(lab.port(PortId::HOST, &syn), Action::Drop(_)), "inside the range");
    let outside = Ipv4Addr::new(172, 16, 240, 77);
    let syn = from_client((outside, 42002), (LB, 2368));
    assert_eq!(lab.port(PortId::HOST, &syn), Action::Drop(DropReason::LbSourceRange));
    let syn = from_client((outside, 42003), (EXT, 2368));
    assert!(!matches!(lab.port(PortId::HOST, &syn), Action::Drop(_)), "externalIPs have no source ranges");
    assert_eq!(lab.dropped(DropReason::LbSourceRange), 1);
}

#[test]
fn terminating_endpoints_carry_new_flows_only_when_no_ready_one_is_left() {
    let mut lab = Lab::new(ghost(|g| {
        g.terminating = vec![SocketAddrV4::new(EP1, 2368)];
        g.endpoints.retain(|e| *e.ip() == EP2);
    }));
    for sport in 43000..43008 {
        let syn = tcp(EP3_MAC, HOST_MAC, (EP3, sport), (VIP, 2368), true, &[]);
        assert!(matches!(lab.port(PortId(2), &syn), Action::ToVtep { .. }), "the ready one, on centos7-2");
    }
    let mut lab = Lab::new(ghost(|g| g.terminating = std::mem::take(&mut g.endpoints)));
    let sport = sport_for(&lab, EP3, (VIP, 2368), EP1);
    let syn = tcp(EP3_MAC, HOST_MAC, (EP3, sport), (VIP, 2368), true, &[]);
    let (a, tr) = lab.traced_port(PortId(2), &syn);
    assert_eq!(a, Action::ToPort(PortId(1)));
    assert!(tr.steps.iter().any(|s| matches!(s, Step::Endpoint { terminating: true, .. })));
}

#[test]
fn the_service_cidr_drops_unallocated_addresses_and_rejects_other_ports() {
    let mut lab = Lab::new(vec![article::ghost()]);
    let syn = tcp(EP1_MAC, HOST_MAC, (EP1, 40000), (Ipv4Addr::new(10, 250, 0, 41), 2368), true, &[]);
    assert_eq!(lab.port(PortId(1), &syn), Action::Drop(DropReason::UnallocatedClusterIp));
    let echo = ping(EP1_MAC, EP1, Ipv4Addr::new(10, 250, 7, 7), 64, 1);
    assert_eq!(lab.port(PortId(1), &echo), Action::Drop(DropReason::UnallocatedClusterIp));
    // A ping to the cluster IP itself is refused, as kube-proxy's `ip daddr @cluster-ips reject`.
    let echo = ping(EP1_MAC, EP1, VIP, 64, 2);
    assert_eq!(lab.port(PortId(1), &echo), Action::ToPort(PortId(1)));
    assert_eq!(icmp::type_code(&lab.out()[14..]), Some((3, 3)));
    assert_eq!(lab.dropped(DropReason::NoService), 1);
}

#[test]
fn the_trace_lists_every_candidate_and_the_mark() {
    let mut lab = Lab::new(ghost(|g| g.external_local = true));
    let syn = from_client((CLIENT, 44000), (VIP, 2368));
    let (_, tr) = lab.traced_port(PortId::HOST, &syn);
    let (_, cands, masq, by) = endpoint_step(&tr);
    assert_eq!(cands, article::ghost().endpoints, "a cluster IP from outside: every endpoint");
    assert!(masq && by == Pick::Hash);
    let json = serde_json::to_value(tr.steps.iter().find(|s| matches!(s, Step::Endpoint { .. })).unwrap()).unwrap();
    assert_eq!(json["candidates"], serde_json::json!(["10.244.0.74:2368", "10.244.1.5:2368"]));
    assert_eq!((json["masquerade"].as_bool(), json["by"].as_str()), (Some(true), Some("hash")));
    let syn = from_client((CLIENT, 44001), (NODE1, 31266));
    let (_, tr) = lab.traced_port(PortId::HOST, &syn);
    let (ep, cands, masq, _) = endpoint_step(&tr);
    assert_eq!((ep, cands, masq), (SocketAddrV4::new(EP1, 2368), vec![SocketAddrV4::new(EP1, 2368)], false));
    assert!(!tr.steps.iter().any(|s| matches!(s, Step::Masquerade { .. })), "no SNAT at all");
}
