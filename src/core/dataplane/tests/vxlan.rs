//! What flannel.1's receive path accepts, in both `vxlan_accept` modes: `any` (the kernel's
//! behaviour: any sender, the inner packet routed as any other) and `peers` (FDB peers only,
//! for their own pod subnet, to this node).

use super::*;
use crate::core::tables::VxlanAccept;

fn lab(mode: VxlanAccept) -> Lab {
    let mut t = article::tables1(vec![]);
    t.vxlan_source_ports = vec![40001, 40002, 40003];
    t.node.vxlan_accept = mode;
    Lab::with_tables(t)
}

/// An ICMP echo reply, as IPv4 bytes.
fn echo_reply(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, id: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src.octets(), dst.octets(), ttl)
        .icmpv4_echo_reply(id, 1)
        .write(&mut v, b"0123456789abcdef")
        .unwrap();
    v
}

/// The UDP payload of the conformance scenario `vxlan-unknown-peer` as the client sends it
/// (VXLAN VNI 1; inner frame 32:a9:79:6d:0b:b1 -> 8a:40:90:1c:cf:7e; 10.244.0.74 ->
/// 10.244.1.5 ICMP echo id 21041 seq 1, TTL 64, ID 0x5101, DF, "ucanal-conformance").
const UNKNOWN_PEER_ECHO: &str = "0800000000000100 8a40901ccf7e32a9796d0bb10800 \
    4500002e510140004001d2970af4004a0af40105 0800330d523100017563616e616c2d636f6e666f726d616e6365";

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn the_scenario_datagram_is_well_formed() {
    let d = hex(UNKNOWN_PEER_ECHO);
    let ip = Ipv4Packet::new_checked(&d[8 + 14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!((ip.src(), ip.dst(), ip.ttl()), (EP2, EP1, 64));
    assert_eq!(checksum::fold(checksum::sum(ip.payload(), 0)), 0xffff, "icmp checksum");
}

#[test]
fn any_decapsulates_from_an_unknown_sender_as_flannel_1() {
    let mut lab = lab(VxlanAccept::Any);
    assert_eq!(lab.vxlan(CLIENT, &hex(UNKNOWN_PEER_ECHO)), Action::ToPort(PortId(1)));
    let out = lab.out();
    assert_eq!((&out[..6], &out[6..12]), (&EP1_MAC.0[..], &HOST_MAC.0[..]));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), ip.ttl(), ip.ident()), (EP2, EP1, 63, 0x5101));
    assert_checksums(&ip);
    assert_eq!(lab.count(Counter::VxlanFromUnknownPeer), 1);
    assert_eq!(lab.count(Counter::Decap), 1);
    assert_eq!(lab.dropped(DropReason::VxlanUnknownPeer), 0);

    // The pod's reply goes to the FDB peer of 10.244.0.0/24, not to the sender.
    assert!(matches!(lab.port(PortId(1), &ping(EP1_MAC, EP1, EP2, 64, 1)), Action::ToVtep { remote: NODE2, .. }));
}

#[test]
fn any_routes_an_inner_source_outside_the_peers_subnet() {
    let mut lab = lab(VxlanAccept::Any);
    let foreign = Ipv4Addr::new(10, 244, 7, 7);
    let d = from_node2(&ping(MacAddr::ZERO, foreign, EP1, 63, 1)[14..]);
    assert_eq!(lab.vxlan(NODE2, &d), Action::ToPort(PortId(1)));
    assert_eq!((lab.out_ip().src(), lab.out_ip().ttl()), (foreign, 62));
    assert_eq!(lab.count(Counter::VxlanForeignSource), 1);
    assert_eq!(lab.count(Counter::VxlanFromUnknownPeer), 0);
    // The reply has no route (10.244.7.0/24 is nobody's subnet): dropped, as the kernel
    // sends it to a default gateway that does not answer.
    assert_eq!(lab.port(PortId(1), &ping(EP1_MAC, EP1, foreign, 64, 1)), Action::Drop(DropReason::NoRoute));
}

#[test]
fn any_sends_transit_back_out_by_vxlan() {
    let mut lab = lab(VxlanAccept::Any);
    let foreign = Ipv4Addr::new(10, 244, 7, 7);
    let d = from_node2(&ping(MacAddr::ZERO, foreign, EP2, 64, 1)[14..]);
    assert!(matches!(lab.vxlan(CLIENT, &d), Action::ToVtep { remote: NODE2, .. }));
    let out = lab.out();
    assert_eq!(out[..8], [0x08, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!((&out[8..14], &out[14..20]), (&vtep2_mac().0[..], &vtep1_mac().0[..]));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), ip.ttl()), (foreign, EP2, 63));
    assert_checksums(&ip);
    assert_eq!(lab.count(Counter::ForwardVxlan), 1);
}

#[test]
fn any_masquerades_transit_to_outside_and_returns_the_reply() {
    let mut lab = lab(VxlanAccept::Any);
    let d = from_node2(&ping(MacAddr::ZERO, EP2, CLIENT, 64, 1)[14..]);
    assert_eq!(lab.vxlan(NODE2, &d), Action::ToPort(PortId::HOST));
    let ip = lab.out_ip();
    // flannel's ip-masq: 10.244.0.0/16 -> outside, to the node IP; the echo id kept. The
    // node's stack routes it on to the uplink (and takes the TTL down then).
    assert_eq!((ip.src(), ip.dst(), ip.ttl()), (NODE1, CLIENT, 64));
    assert_eq!(l4::be16(ip.payload(), 4), 0x4242);
    assert_checksums(&ip);
    assert_eq!(lab.count(Counter::EgressMasquerade), 1);

    let mut reply = Vec::new();
    reply.extend_from_slice(&HOST_MAC.0);
    reply.extend_from_slice(&article::node1().host_port_mac.0);
    reply.extend_from_slice(&[0x08, 0x00]);
    reply.extend_from_slice(&echo_reply(CLIENT, NODE1, 64, 0x4242));
    assert!(matches!(lab.port(PortId::HOST, &reply), Action::ToVtep { remote: NODE2, .. }));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst()), (CLIENT, EP2));
    assert_checksums(&ip);
}

#[test]
fn both_modes_drop_what_flannel_1_drops() {
    for mode in [VxlanAccept::Any, VxlanAccept::Peers] {
        let mut lab = lab(mode);
        let good = from_node2(&ping(MacAddr::ZERO, EP2, EP1, 63, 1)[14..]);
        let mut bad_vni = good.clone();
        bad_vni[6] = 2;
        assert_eq!(lab.vxlan(NODE2, &bad_vni), Action::Drop(DropReason::VxlanBadVni), "{mode:?}");
        // A frame to another MAC is PACKET_OTHERHOST for flannel.1.
        let mut dmac = good.clone();
        dmac[8..14].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        assert_eq!(lab.vxlan(NODE2, &dmac), Action::Drop(DropReason::VxlanInnerDmac), "{mode:?}");
        let mut bcast = good.clone();
        bcast[8..14].copy_from_slice(&MacAddr::BROADCAST.0);
        assert_eq!(lab.vxlan(NODE2, &bcast), Action::Drop(DropReason::VxlanInnerDmac), "{mode:?}");
        // The VTEP's own source MAC is a loop.
        let mut own = good.clone();
        own[14..20].copy_from_slice(&vtep1_mac().0);
        assert_eq!(lab.vxlan(NODE2, &own), Action::Drop(DropReason::VxlanLoop), "{mode:?}");
        assert_eq!(lab.vxlan(NODE2, &good[..8 + 14 + 10]), Action::Drop(DropReason::VxlanInnerMalformed));
        assert_eq!(lab.vxlan(NODE2, &good), Action::ToPort(PortId(1)), "{mode:?}");
    }
}

#[test]
fn peers_refuses_everything_else() {
    let mut lab = lab(VxlanAccept::Peers);
    let inner = ping(MacAddr::ZERO, EP2, EP1, 63, 1)[14..].to_vec();
    let good = from_node2(&inner);
    assert_eq!(lab.vxlan(CLIENT, &good), Action::Drop(DropReason::VxlanUnknownPeer));
    assert_eq!(lab.vxlan(CLIENT, &hex(UNKNOWN_PEER_ECHO)), Action::Drop(DropReason::VxlanUnknownPeer));
    let mut no_i = good.clone();
    no_i[0] = 0;
    assert_eq!(lab.vxlan(NODE2, &no_i), Action::Drop(DropReason::VxlanMalformed));
    assert_eq!(lab.vxlan(NODE2, &good[..5]), Action::Drop(DropReason::VxlanMalformed));
    assert_eq!(lab.vxlan(NODE2, &good[..8 + 10]), Action::Drop(DropReason::VxlanInnerMalformed));
    let mut smac = good.clone();
    smac[14 + 5] ^= 0x01;
    assert_eq!(lab.vxlan(NODE2, &smac), Action::Drop(DropReason::VxlanFdbMismatch));
    let outside = from_node2(&ping(MacAddr::ZERO, Ipv4Addr::new(10, 244, 7, 1), EP1, 63, 1)[14..]);
    assert_eq!(lab.vxlan(NODE2, &outside), Action::Drop(DropReason::VxlanSrcOutsideSubnet));
    let transit = from_node2(&ping(MacAddr::ZERO, EP2, Ipv4Addr::new(10, 244, 0, 9), 63, 1)[14..]);
    assert_eq!(lab.vxlan(NODE2, &transit), Action::Drop(DropReason::VxlanNotLocal));
    let world = from_node2(&ping(MacAddr::ZERO, EP2, Ipv4Addr::new(8, 8, 8, 8), 63, 1)[14..]);
    assert_eq!(lab.vxlan(NODE2, &world), Action::Drop(DropReason::VxlanNotLocal));
    assert_eq!(
        lab.vxlan(NODE2, &from_node2(&ping(MacAddr::ZERO, EP2, CLIENT, 63, 1)[14..])),
        Action::Drop(DropReason::VxlanNotLocal)
    );
    // Counted as drops only; still flowing after all that.
    assert_eq!(lab.count(Counter::VxlanFromUnknownPeer) + lab.count(Counter::VxlanForeignSource), 0);
    assert_eq!(lab.dropped(DropReason::VxlanUnknownPeer), 2);
    assert_eq!(lab.vxlan(NODE2, &good), Action::ToPort(PortId(1)));
    assert_eq!(lab.count(Counter::RxVxlan), 11);
}

#[test]
fn any_applies_the_service_rules_to_what_it_decapsulates() {
    for mode in [VxlanAccept::Any, VxlanAccept::Peers] {
        let mut t = article::tables1(vec![article::ghost()]);
        t.vxlan_source_ports = vec![40001];
        t.node.vxlan_accept = mode;
        let mut lab = Lab::with_tables(t);
        let syn = tcp(MacAddr::ZERO, MacAddr::ZERO, (EP2, 40123), (VIP, 2368), true, b"");
        let a = lab.vxlan(NODE2, &from_node2(&syn[14..]));
        if mode == VxlanAccept::Peers {
            // A peer never hands a new flow over; 10.250.0.40 is not on this node.
            assert_eq!(a, Action::Drop(DropReason::VxlanNotLocal));
            continue;
        }
        // kube-proxy's DNAT, as in the kernel's PREROUTING for flannel.1 (no masquerade:
        // the source is in the cluster).
        assert!(matches!(a, Action::ToPort(PortId(1)) | Action::ToVtep { remote: NODE2, .. }), "{a:?}");
        let ip = lab.out_ip();
        let (_, dport) = l4_ports(&ip);
        assert_eq!((ip.src(), dport), (EP2, 2368));
        assert!([EP1, EP2].contains(&ip.dst()), "{}", ip.dst());
        assert_checksums(&ip);
        assert_eq!(lab.count(Counter::ServiceDnat), 1);
    }
}
