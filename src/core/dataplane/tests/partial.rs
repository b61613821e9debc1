//! Partial checksums from a kernel peer (veth default offloads) and from pods: what
//! reaches a pod, the host port and the wire (see `core::offload`).

use super::*;

/// Writes the folded pseudo-header sum into the TCP/UDP checksum field of `ip`: the
/// bytes a kernel with tx checksumming leaves for the device (CHECKSUM_PARTIAL).
fn make_partial(ip: &mut [u8]) {
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let at = hl + if ip[9] == PROTO_TCP { 16 } else { 6 };
    let (s, d) = (ip[12..16].try_into().unwrap(), ip[16..20].try_into().unwrap());
    let ps = checksum::fold(checksum::pseudo_header_sum(s, d, ip[9], (total - hl) as u16));
    ip[at..at + 2].copy_from_slice(&ps.to_be_bytes());
}

/// A SYN-ACK from `src` to `dst`, as IPv4 bytes, with a partial checksum.
fn partial_syn_ack(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src.0.octets(), dst.0.octets(), 63)
        .tcp(src.1, dst.1, 5000, 64240)
        .syn()
        .ack(1001)
        .write(&mut v, &[])
        .unwrap();
    set_df(&mut v);
    make_partial(&mut v);
    v
}

/// The L4 checksum of the frame as it left, finished the way the pod's TAP (NEEDS_CSUM,
/// csum_start at L4) or the device would finish it; asserts it then verifies.
fn assert_finishes(lab: &Lab) {
    let ip = lab.out_ip();
    let mut whole: Vec<u8> = ip.header().iter().chain(ip.payload()).copied().collect();
    l4::finish_partial_checksum(&mut whole);
    assert!(l4::verify_checksum(&whole), "the partial field finishes to a valid checksum");
}

#[test]
fn partial_syn_ack_from_a_kernel_peer_reaches_the_pod_as_needs_csum() {
    let mut lab = Lab::new(vec![]);
    let synack = partial_syn_ack((EP2, 2368), (EP1, 40000));
    assert!(!l4::verify_checksum(&synack), "as a complete checksum these bytes are wrong");
    assert_eq!(lab.vxlan(NODE2, &from_node2(&synack)), Action::ToPort(PortId(1)));
    assert_eq!(lab.offload, Offload { csum_partial: true, gso_size: 0, frag_size: 0 }, "NEEDS_CSUM to the TAP");
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), ip.ttl()), (EP2, EP1, 62));
    assert!(ip.verify_checksum());
    assert_eq!(&ip.payload()[16..18], &synack[36..38], "the partial field is passed on as it came");
    assert_finishes(&lab);

    // A TAP without offloads takes no NEEDS_CSUM: ucanal finishes the checksum itself.
    let mut lab = Lab::new(vec![]);
    lab.dp =
        Dataplane::new(article::tables1(vec![]), Conntrack::new(16, Timeouts::default()), 1).with_tap_offloads(false);
    assert_eq!(lab.vxlan(NODE2, &from_node2(&synack)), Action::ToPort(PortId(1)));
    assert_eq!(lab.offload, Offload::default());
    assert_checksums(&lab.out_ip());
}

#[test]
fn a_corrupt_complete_checksum_is_never_delivered_as_valid() {
    let mut lab = Lab::new(vec![]);
    let mut synack = partial_syn_ack((EP2, 2368), (EP1, 40000));
    l4::finish_partial_checksum(&mut synack);
    synack[20 + 16] ^= 0x08; // a bit flipped in the checksum: neither complete nor partial
    let mut data = synack.clone();
    data[20 + 14] ^= 0x01; // or in the data (the window) under a once-valid checksum
    data[20 + 16] ^= 0x08;
    for bad in [synack, data] {
        assert!(!l4::verify_checksum(&bad));
        assert_eq!(lab.vxlan(NODE2, &from_node2(&bad)), Action::ToPort(PortId(1)));
        assert_eq!(lab.offload, Offload::default(), "an ordinary frame: the pod verifies it");
        let ip = lab.out_ip();
        let whole: Vec<u8> = ip.header().iter().chain(ip.payload()).copied().collect();
        assert!(!l4::verify_checksum(&whole), "still wrong: the pod drops it");
    }
    // Through reverse NAT as well: the incremental update keeps a wrong sum wrong.
    let mut lab = Lab::new(vec![article::ghost()]);
    let sport = sport_for(&lab, EP1, (VIP, 2368), EP2);
    let syn = tcp(EP1_MAC, HOST_MAC, (EP1, sport), (VIP, 2368), true, &[]);
    assert!(matches!(lab.port(PortId(1), &syn), Action::ToVtep { .. }));
    let mut bad = partial_syn_ack((EP2, 2368), (EP1, sport));
    l4::finish_partial_checksum(&mut bad);
    bad[20 + 17] ^= 0x10;
    assert_eq!(lab.vxlan(NODE2, &from_node2(&bad)), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), lab.offload), (VIP, Offload::default()));
    let whole: Vec<u8> = ip.header().iter().chain(ip.payload()).copied().collect();
    assert!(!l4::verify_checksum(&whole));
}

/// NodePort: the client's SYN arrives partial from the host port (the node's kernel
/// forwards the client veth's CHECKSUM_PARTIAL skb), is DNATed + masqueraded and leaves
/// by VXLAN complete; the kernel peer's partial SYN-ACK is reverse-NATed and reaches the
/// host port complete. ClusterIP: a pod's partial SYN out, the peer's partial SYN-ACK in,
/// reverse-DNATed to the VIP, to the pod as NEEDS_CSUM that finishes valid.
#[test]
fn partial_checksums_through_dnat_masquerade_and_back() {
    let mut lab = Lab::new(vec![article::ghost()]);
    let sport = sport_for(&lab, CLIENT, (NODE1, 31266), EP2);
    let mut syn = tcp(article::node1().host_port_mac, HOST_MAC, (CLIENT, sport), (NODE1, 31266), true, &[]);
    make_partial(&mut syn[14..]);
    lab.offload_in = Offload { csum_partial: true, gso_size: 0, frag_size: 0 };
    assert!(matches!(lab.port(PortId::HOST, &syn), Action::ToVtep { remote: NODE2, .. }));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip)), (VTEP1, EP2, (sport, 2368)));
    assert_checksums(&ip);
    assert_eq!(lab.offload, Offload::default());

    let synack = partial_syn_ack((EP2, 2368), (VTEP1, sport));
    assert_eq!(lab.vxlan(NODE2, &from_node2(&synack)), Action::ToPort(PortId::HOST));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip)), (NODE1, CLIENT, (31266, sport)));
    assert_checksums(&ip);
    assert_eq!(lab.offload, Offload::default(), "finished for the host port");

    let sport = sport_for(&lab, EP1, (VIP, 2368), EP2);
    let mut syn = tcp(EP1_MAC, HOST_MAC, (EP1, sport), (VIP, 2368), true, &[]);
    make_partial(&mut syn[14..]);
    lab.offload_in = Offload { csum_partial: true, gso_size: 0, frag_size: 0 };
    assert!(matches!(lab.port(PortId(1), &syn), Action::ToVtep { .. }));
    assert_checksums(&lab.out_ip());
    let synack = partial_syn_ack((EP2, 2368), (EP1, sport));
    assert_eq!(lab.vxlan(NODE2, &from_node2(&synack)), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip)), (VIP, EP1, (2368, sport)));
    assert_eq!(lab.offload, Offload { csum_partial: true, gso_size: 0, frag_size: 0 });
    assert_finishes(&lab);
    // UDP the same way: a partial answer from the endpoint, reverse-DNATed.
    let mut dns = article::ghost();
    dns.protocol = crate::core::nat::service::Protocol::Udp;
    let mut lab = Lab::new(vec![dns]);
    let t = lab.dp.tables();
    let sport = (40000..41000u16)
        .find(|p| {
            let u = Tuple { proto: PROTO_UDP, src: EP1, dst: VIP, sport: *p, dport: 2368 };
            *article::ghost().endpoints[uniform_index(u.hash(t.hash_seed), 2)].ip() == EP2
        })
        .unwrap();
    let q = udp(EP1_MAC, (EP1, sport), (VIP, 2368), b"query");
    assert!(matches!(lab.port(PortId(1), &q), Action::ToVtep { .. }));
    let mut a = udp(MacAddr::ZERO, (EP2, 2368), (EP1, sport), b"answer")[14..].to_vec();
    make_partial(&mut a);
    assert_eq!(lab.vxlan(NODE2, &from_node2(&a)), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), l4_ports(&ip)), (VIP, (2368, sport)));
    assert!(lab.offload.csum_partial);
    assert_finishes(&lab);
}
