//! IP fragments through NAT: reassembled, NATed whole, fragmented again on the way out
//! (see `core::frag`). A UDP ClusterIP service 10.250.0.10:53 -> a pod's :7000, a
//! 3000-byte request and an 8000-byte reply, each fragmented at MTU 1450 by its sender.

use super::*;
use crate::core::frag::split::{for_each_fragment, split_vxlan};
use crate::core::nat::service::Protocol;

const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 10);

fn dns(endpoint: Ipv4Addr) -> ServiceSpec {
    ServiceSpec {
        name: "kube-system/big-dns".into(),
        protocol: Protocol::Udp,
        cluster_ip: DNS_VIP,
        port: 53,
        node_port: None,
        endpoints: vec![SocketAddrV4::new(endpoint, 7000)],
        ..ServiceSpec::default()
    }
}

/// A UDP datagram (IPv4 bytes, DF clear as DNS over UDP sends it) with `n` payload bytes.
fn big_udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), n: usize, id: u16) -> Vec<u8> {
    let payload: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
    let mut v = Vec::new();
    PacketBuilder::ipv4(src.0.octets(), dst.0.octets(), 64).udp(src.1, dst.1).write(&mut v, &payload).unwrap();
    v[4..6].copy_from_slice(&id.to_be_bytes());
    v[6] = 0;
    Ipv4Packet::new_checked(&mut v[..]).unwrap().fill_checksum();
    v
}

/// The fragments a sender with MTU 1450 puts on its link, as IPv4 bytes.
fn frags(ip: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for_each_fragment(ip, 1450, |h, p| out.push([h, p].concat())).unwrap();
    out
}

fn with_eth(src_mac: MacAddr, ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    ethernet::emit_header(&mut f, HOST_MAC, src_mac, ethernet::ETHERTYPE_IPV4);
    f.extend_from_slice(ip);
    f
}

/// The IPv4 datagram that left, and (for an encapsulated one) its fragments as they
/// leave by VXLAN.
fn left_whole(lab: &Lab) -> Vec<u8> {
    let ip = lab.out_ip();
    ip.header().iter().chain(ip.payload()).copied().collect()
}

#[test]
fn a_3000_byte_request_and_an_8000_byte_reply_through_a_remote_endpoint() {
    let mut lab = Lab::new(vec![dns(EP2)]);
    let req = big_udp((EP1, 53000), (DNS_VIP, 53), 2972, 0x0101);
    let fr = frags(&req);
    assert_eq!(fr.len(), 3);
    assert_eq!(lab.port(PortId(1), &with_eth(EP1_MAC, &fr[0])), Action::Held);
    assert_eq!(lab.port(PortId(1), &with_eth(EP1_MAC, &fr[1])), Action::Held);
    let a = lab.port(PortId(1), &with_eth(EP1_MAC, &fr[2]));
    assert!(matches!(a, Action::ToVtep { remote: NODE2, .. }), "{a:?}");
    // The whole datagram, DNATed to 10.244.0.74:7000, leaves to be fragmented at 1444
    // (the largest fragment received; under the VXLAN MTU).
    assert_eq!(lab.offload.frag_size, 1444);
    let whole = left_whole(&lab);
    assert_eq!(whole.len(), 3000);
    let ip = Ipv4Packet::new_checked(&whole[..]).unwrap();
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip), ip.ttl()), (EP1, EP2, (53000, 7000), 63));
    assert_checksums(&ip);
    assert_eq!(&whole[28..], &req[28..], "the payload intact");
    let mut out = vec![0u8; 96 * 1024];
    let s = split_vxlan(lab.out(), 1444, &mut out).unwrap();
    assert_eq!(s.fragments, 3);
    assert_eq!((lab.count(Counter::FragmentHeld), lab.count(Counter::FragmentReassembled)), (3, 1));

    // The 8000-byte reply, fragmented by centos7-2's pod at 1450, arrives in six VXLAN
    // datagrams; the client pod gets it from 10.250.0.10:53 in fragments of 1444.
    let reply = big_udp((EP2, 7000), (EP1, 53000), 7972, 0x0202);
    let fr = frags(&reply);
    assert_eq!(fr.len(), 6);
    for f in &fr[..5] {
        assert_eq!(lab.vxlan(NODE2, &from_node2(f)), Action::Held);
    }
    assert_eq!(lab.vxlan(NODE2, &from_node2(&fr[5])), Action::ToPort(PortId(1)));
    assert_eq!(lab.offload.frag_size, 1444);
    let whole = left_whole(&lab);
    let ip = Ipv4Packet::new_checked(&whole[..]).unwrap();
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip), ip.total_len()), (DNS_VIP, EP1, (53, 53000), 8000));
    assert_checksums(&ip);
    assert_eq!(&whole[28..], &reply[28..]);
    let mut n = 0;
    for_each_fragment(&whole, 1444, |h, p| {
        assert!(checksum::checksum(h) == 0 && h.len() + p.len() <= 1444);
        assert_eq!((&h[12..16], &h[16..20]), (&DNS_VIP.octets()[..], &EP1.octets()[..]), "every fragment translated");
        n += 1;
    })
    .unwrap();
    assert_eq!(n, 6);
    assert_eq!(lab.count(Counter::CtHitReply), 1);
}

#[test]
fn fragments_to_a_local_endpoint_out_of_order_and_never_untranslated() {
    let mut lab = Lab::new(vec![dns(EP3)]);
    let req = big_udp((EP1, 53001), (DNS_VIP, 53), 2972, 0x0303);
    let fr = frags(&req);
    // Last first: nothing leaves until the datagram is whole.
    assert_eq!(lab.port(PortId(1), &with_eth(EP1_MAC, &fr[2])), Action::Held);
    assert_eq!(lab.port(PortId(1), &with_eth(EP1_MAC, &fr[0])), Action::Held);
    assert_eq!(lab.port(PortId(1), &with_eth(EP1_MAC, &fr[1])), Action::ToPort(PortId(2)));
    let whole = left_whole(&lab);
    let ip = Ipv4Packet::new_checked(&whole[..]).unwrap();
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip)), (EP1, EP3, (53001, 7000)));
    assert_checksums(&ip);
    // The reply from ghost-ep3 in fragments, one of them twice: the duplicate is dropped,
    // the datagram still completes, reverse-NATed.
    let reply = big_udp((EP3, 7000), (EP1, 53001), 7972, 0x0404);
    let fr = frags(&reply);
    assert_eq!(lab.port(PortId(2), &with_eth(EP3_MAC, &fr[1])), Action::Held);
    assert_eq!(lab.port(PortId(2), &with_eth(EP3_MAC, &fr[1])), Action::Drop(DropReason::FragmentOverlap));
    for f in [&fr[0], &fr[3], &fr[2], &fr[5]] {
        assert_eq!(lab.port(PortId(2), &with_eth(EP3_MAC, f)), Action::Held);
    }
    assert_eq!(lab.port(PortId(2), &with_eth(EP3_MAC, &fr[4])), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), l4_ports(&ip), ip.total_len()), (DNS_VIP, (53, 53001), 8000));
    assert_checksums(&ip);
    // A spoofed fragment is refused before it is held.
    let spoof = big_udp((EP2, 7000), (EP1, 53001), 2972, 0x0505);
    let f = with_eth(EP3_MAC, &frags(&spoof)[0]);
    assert_eq!(lab.port(PortId(2), &f), Action::Drop(DropReason::SpoofedSource));
    // A dry-run trace of a fragment holds nothing.
    let mut tr = Trace::dry_run();
    let f = with_eth(EP1_MAC, &frags(&big_udp((EP1, 53002), (DNS_VIP, 53), 2972, 0x0606))[0]);
    let a = lab.run(&f, |dp, t, p, tr| dp.handle_port(0, t, PortId(1), p, NOW, tr), &mut tr);
    assert_eq!(a, Action::Held);
    assert!(tr.steps.iter().any(|s| step_kind(s) == "defrag"));
    assert_eq!(lab.dp.frags.lock().unwrap().held(), (0, 0));
}
