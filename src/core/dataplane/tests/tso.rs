//! A kernel peer's TSO super-packet (a veth carries it across whole): the bytes of a NodePort
//! download captured in the mixed lab, through the walk to the host port (see
//! `core::offload`, "Super-packets from a kernel peer").

use super::*;
use crate::core::captured::nodeport_tso as cap;

/// The ghost service with ghost-ep2 as its only endpoint, as the lab had it forced.
fn ghost_on_ep2() -> ServiceSpec {
    let mut s = article::ghost();
    s.endpoints.retain(|e| *e.ip() == EP2);
    s
}

/// centos7-1 after the captured handshake and request of the download.
fn lab_with_the_flow() -> Lab {
    let mut lab = Lab::new(vec![ghost_on_ep2()]);
    assert!(matches!(lab.port(PortId::HOST, cap::SYN), Action::ToVtep { remote: NODE2, .. }), "SYN DNATed");
    assert_eq!(lab.vxlan(NODE2, cap::SYN_ACK), Action::ToPort(PortId::HOST), "SYN-ACK reverse NATed");
    assert!(matches!(lab.port(PortId::HOST, cap::ACK), Action::ToVtep { .. }));
    assert!(matches!(lab.port(PortId::HOST, cap::GET), Action::ToVtep { .. }));
    lab
}

/// The reply as the client must see it: from the NodePort to the client's port.
fn assert_reverse_natted(ip: &Ipv4Packet<&[u8]>) {
    assert_eq!((ip.src().octets(), ip.dst().octets()), (cap::NODE_PORT.0, cap::CLIENT.0));
    assert_eq!(l4_ports(ip), (cap::NODE_PORT.1, cap::CLIENT.1));
    assert!(ip.verify_checksum());
}

#[test]
fn a_kernel_peers_tso_super_packet_reaches_the_host_port_as_a_gso_frame() {
    let mut lab = lab_with_the_flow();

    // A segment within the MTU: an ordinary frame, its checksum finished for the host.
    assert_eq!(lab.vxlan(NODE2, cap::SEGMENT), Action::ToPort(PortId::HOST));
    assert_eq!(lab.offload, Offload::default());
    assert_reverse_natted(&lab.out_ip());
    assert_checksums(&lab.out_ip());

    // The super-packet: 2848 bytes of IPv4, over the VXLAN MTU (1450) and the node's
    // uplink MTU (1500). Without GSO metadata the node's stack cannot forward it (DF):
    // it leaves as a GSO frame at the MSS of the MTU, its checksum partial for the kernel
    // to finish per segment.
    let tcp_payload = &cap::TSO[cap::VXLAN_PAYLOAD_AT..];
    assert_eq!(tcp_payload.len(), 2 * 1398);
    assert_eq!(lab.vxlan(NODE2, cap::TSO), Action::ToPort(PortId::HOST));
    assert_eq!(lab.offload, Offload { csum_partial: true, gso_size: 1450 - 20 - 32, frag_size: 0 });
    assert_eq!(lab.count(Counter::PeerTso), 1);
    let ip = lab.out_ip();
    assert_eq!(ip.total_len(), 2848);
    assert_reverse_natted(&ip);
    let (src, dst) = (ip.src().octets(), ip.dst().octets());
    let pseudo = checksum::fold(checksum::pseudo_header_sum(src, dst, PROTO_TCP, 2848 - 20));
    assert_eq!(&ip.payload()[16..18], &pseudo.to_be_bytes(), "the NATed partial sum, not a finished checksum");
    assert_eq!(&ip.payload()[32..], tcp_payload, "the payload untouched");
    assert_eq!(lab.out()[..12], [article::node1().host_port_mac.0, HOST_MAC.0].concat()[..], "to the host port");
}

#[test]
fn super_packets_to_a_pod_and_to_a_peer_are_gso_frames_too() {
    // The same bytes addressed to ghost-ep1 on this node: GSO to the pod's TAP.
    let mut to_pod = cap::TSO.to_vec();
    let ip = &mut to_pod[22..];
    ip[16..20].copy_from_slice(&EP1.octets());
    Ipv4Packet::new_checked(&mut *ip).unwrap().fill_checksum();
    let pseudo = checksum::fold(checksum::pseudo_header_sum(EP2.octets(), EP1.octets(), PROTO_TCP, 2848 - 20));
    ip[20 + 16..20 + 18].copy_from_slice(&pseudo.to_be_bytes());
    let mut lab = Lab::new(vec![]);
    assert_eq!(lab.vxlan(NODE2, &to_pod), Action::ToPort(PortId(1)));
    assert_eq!(lab.offload, Offload { csum_partial: true, gso_size: 1398, frag_size: 0 });

    // A TAP without offloads takes it as GSO too: it cannot be finished whole, and a
    // frame over the pod's MTU without GSO is what the host port could not forward.
    let mut lab = Lab::new(vec![]);
    lab.dp =
        Dataplane::new(article::tables1(vec![]), Conntrack::new(16, Timeouts::default()), 1).with_tap_offloads(false);
    assert_eq!(lab.vxlan(NODE2, &to_pod), Action::ToPort(PortId(1)));
    assert_eq!(lab.offload, Offload { csum_partial: true, gso_size: 1398, frag_size: 0 });

    // Back out by VXLAN (transit, as flannel.1 forwards it): segmented on the way, where
    // a frame over the MTU with DF would get ICMP fragmentation needed.
    let mut transit = to_pod.clone();
    let ip = &mut transit[22..];
    ip[16..20].copy_from_slice(&[10, 244, 0, 75]);
    Ipv4Packet::new_checked(&mut *ip).unwrap().fill_checksum();
    let pseudo = checksum::fold(checksum::pseudo_header_sum(EP2.octets(), [10, 244, 0, 75], PROTO_TCP, 2848 - 20));
    ip[20 + 16..20 + 18].copy_from_slice(&pseudo.to_be_bytes());
    let mut lab = Lab::new(vec![]);
    assert!(matches!(lab.vxlan(NODE2, &transit), Action::ToVtep { remote: NODE2, .. }));
    assert_eq!(lab.offload.gso_size, 1398);
    assert_eq!(lab.count(Counter::IcmpFragNeededSent), 0);

    // Within the MTU, or a complete checksum (no TSO made it): as before.
    let mut full = to_pod.clone();
    l4::finish_partial_checksum(&mut full[22..]);
    let mut lab = Lab::new(vec![]);
    assert_eq!(lab.vxlan(NODE2, &full), Action::ToPort(PortId(1)));
    assert_eq!(lab.offload, Offload::default());
    assert_eq!(lab.count(Counter::PeerTso), 0);
}

#[test]
fn the_mss_follows_the_mtu_and_the_headers() {
    let ip = &cap::TSO[22..];
    assert_eq!(offload::peer_tso_mss(ip, 1450), Some(1398));
    assert_eq!(offload::peer_tso_mss(ip, 1400), Some(1348));
    assert_eq!(offload::peer_tso_mss(ip, 2848), None, "within the MTU");
    assert_eq!(offload::peer_tso_mss(ip, 52), None, "no room for payload");
    assert_eq!(offload::peer_tso_mss(&cap::SYN_ACK[22..], 40), None, "no room for the headers");
    for n in 0..ip.len() {
        assert_eq!(offload::peer_tso_mss(&ip[..n], 1450), None, "truncated at {n}");
    }
}
