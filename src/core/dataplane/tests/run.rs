//! Deciding once per run (`run`): every frame goes through two identical dataplanes, one
//! by `handle_vxlan_run` with a memo, one by the whole walk; the actions, the bytes, the
//! offload state and every counter (but `run_replayed`) must agree, frame after frame.

use super::*;
use crate::core::RunMemo;
use crate::wire::tcp as tcpw;

struct Twin {
    run: Lab,
    walk: Lab,
    memo: RunMemo,
}

impl Twin {
    fn new(services: Vec<ServiceSpec>) -> Twin {
        Twin { run: Lab::new(services.clone()), walk: Lab::new(services), memo: RunMemo::default() }
    }

    /// A datagram from `from` through both; returns the action and whether it was replayed.
    fn vxlan_at(&mut self, from: SocketAddrV4, dgram: &[u8], now: Now) -> (Action, bool) {
        let replayed = self.run.count(Counter::RunReplayed);
        let memo = &mut self.memo;
        let a =
            self.run.run(dgram, |dp, t, p, tr| dp.handle_vxlan_run(0, t, from, p, now, tr, memo), &mut Trace::off());
        let b = self.walk.run(dgram, |dp, t, p, tr| dp.handle_vxlan(0, t, from, p, now, tr), &mut Trace::off());
        assert_eq!(a, b, "the same decision");
        assert_eq!(self.run.out(), self.walk.out(), "the same bytes ({a:?})");
        assert_eq!(self.run.offload, self.walk.offload, "the same offload state");
        self.assert_same_counters();
        (a, self.run.count(Counter::RunReplayed) > replayed)
    }
    fn vxlan(&mut self, dgram: &[u8]) -> (Action, bool) {
        self.vxlan_at(SocketAddrV4::new(NODE2, 45000), dgram, NOW)
    }
    /// Frames from a local port through both (no memo: to set up flows).
    fn port(&mut self, port: PortId, frame: &[u8]) -> Action {
        let a = self.run.port(port, frame);
        assert_eq!(a, self.walk.port(port, frame));
        a
    }
    fn assert_same_counters(&self) {
        for c in Counter::ALL.iter().filter(|c| **c != Counter::RunReplayed) {
            assert_eq!(self.run.count(*c), self.walk.count(*c), "counter {c}");
        }
        for d in DropReason::ALL {
            assert_eq!(self.run.dropped(*d), self.walk.dropped(*d), "drop {d}");
        }
    }
}

/// A data segment of 10.244.0.74:2368 -> 10.244.1.5:40000 (centos7-2's pod to ghost-ep1)
/// as flannel.1 on centos7-2 sends it: TTL 63, DF, ACK, `len` payload bytes from `seq`.
fn segment(seq: u32, len: usize, partial: bool) -> Vec<u8> {
    segment_of((EP2, 2368), (EP1, 40000), seq, len, partial)
}

fn segment_of(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), seq: u32, len: usize, partial: bool) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| (i as u32 * 7 + seq) as u8).collect();
    let mut ip = Vec::new();
    PacketBuilder::ipv4(src.0.octets(), dst.0.octets(), 63)
        .tcp(src.1, dst.1, seq, 64240)
        .ack(7000)
        .write(&mut ip, &payload)
        .unwrap();
    ip[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
    set_df(&mut ip);
    if partial {
        let ps = checksum::fold(checksum::pseudo_header_sum(src.0.octets(), dst.0.octets(), 6, (20 + len) as u16));
        ip[36..38].copy_from_slice(&ps.to_be_bytes());
    }
    from_node2(&ip)
}

/// The inner IPv4 header of a datagram, refilled after an edit (and the TCP checksum).
fn refill(d: &mut [u8]) {
    let ip = &mut d[22..];
    Ipv4Packet::new_checked(&mut *ip).unwrap().fill_checksum();
    l4::fill_checksum(ip);
}

#[test]
fn a_run_of_segments_is_decided_once() {
    for partial in [false, true] {
        let mut tw = Twin::new(vec![]);
        let replayed: Vec<bool> = (0..4u32)
            .map(|i| {
                let (a, r) = tw.vxlan(&segment(1 + i * 1398, 1398, partial));
                assert_eq!(a, Action::ToPort(PortId(1)));
                r
            })
            .collect();
        assert_eq!(replayed, [false, true, true, true], "partial {partial}");
        let ip = tw.run.out_ip();
        assert_eq!((ip.src(), ip.dst(), ip.ttl(), ip.ident()), (EP2, EP1, 62, (1 + 3 * 1398) as u16));
        assert_eq!(tw.run.offload.csum_partial, partial);
        // A short last segment with PSH set differs in its flags: the walk.
        let mut last = segment(1 + 4 * 1398, 100, partial);
        last[22 + 33] |= tcpw::PSH;
        if !partial {
            refill(&mut last);
        }
        assert_eq!(tw.vxlan(&last), (Action::ToPort(PortId(1)), false));
        assert_eq!(tw.run.count(Counter::RunReplayed), 3);
    }
}

#[test]
fn a_follower_that_differs_where_it_matters_takes_the_walk() {
    type Edit = fn(&mut Vec<u8>);
    let edits: [(&str, Edit); 14] = [
        ("FIN", |d| {
            d[22 + 33] |= tcpw::FIN;
            refill(d)
        }),
        ("RST", |d| {
            d[22 + 33] |= tcpw::RST;
            refill(d)
        }),
        ("SYN", |d| {
            d[22 + 33] |= tcpw::SYN;
            refill(d)
        }),
        ("another destination port", |d| {
            d[22 + 22..22 + 24].copy_from_slice(&40001u16.to_be_bytes());
            refill(d)
        }),
        ("another source address", |d| {
            d[22 + 12..22 + 16].copy_from_slice(&[10, 244, 0, 75]);
            refill(d)
        }),
        ("IP options", |d| {
            // A NOP option word: IHL 6, the TCP header one word later.
            d.splice(42..42, [1, 1, 1, 0]);
            d[22] = 0x46;
            let total = u16::from_be_bytes([d[24], d[25]]) + 4;
            d[24..26].copy_from_slice(&total.to_be_bytes());
            Ipv4Packet::new_checked(&mut d[22..]).unwrap().fill_checksum();
        }),
        ("a first fragment (MF)", |d| {
            d[22 + 6] = 0x20;
            refill(d)
        }),
        ("TTL 1", |d| {
            d[22 + 8] = 1;
            refill(d)
        }),
        ("TOS", |d| {
            d[22 + 1] = 0x10;
            refill(d)
        }),
        ("a wrong IP header checksum", |d| d[22 + 10] ^= 0x5a),
        ("a total length past the frame", |d| {
            let total = u16::from_be_bytes([d[24], d[25]]) + 1;
            d[24..26].copy_from_slice(&total.to_be_bytes());
            Ipv4Packet::new_quoted(&mut d[22..]).unwrap().fill_checksum();
        }),
        ("a total length without the TCP header", |d| {
            d[24..26].copy_from_slice(&30u16.to_be_bytes());
            Ipv4Packet::new_quoted(&mut d[22..]).unwrap().fill_checksum();
        }),
        ("another VNI", |d| d[6] = 2),
        ("another inner source MAC", |d| d[8 + 11] ^= 1),
    ];
    for (what, edit) in edits {
        let mut tw = Twin::new(vec![]);
        assert!(!tw.vxlan(&segment(1, 1398, false)).1);
        assert!(tw.vxlan(&segment(1399, 1398, false)).1, "{what}: the second segment is replayed");
        let mut d = segment(2797, 1398, false);
        edit(&mut d);
        let (a, replayed) = tw.vxlan(&d);
        assert!(!replayed, "{what}: replayed ({a:?})");
        // And whatever it started, the next good segment agrees with the walk too.
        let _ = tw.vxlan(&segment(4195, 1398, false));
    }
}

#[test]
fn a_follower_from_elsewhere_or_later_takes_the_walk() {
    let mut tw = Twin::new(vec![]);
    let node2 = SocketAddrV4::new(NODE2, 45000);
    assert!(!tw.vxlan_at(node2, &segment(1, 1398, false), NOW).1);
    assert!(!tw.vxlan_at(SocketAddrV4::new(NODE2, 45001), &segment(1399, 1398, false), NOW).1, "another sender port");
    let later = Now(NOW.0 + 1);
    assert!(!tw.vxlan_at(SocketAddrV4::new(NODE2, 45001), &segment(2797, 1398, false), later).1, "another now");
    assert!(tw.vxlan_at(SocketAddrV4::new(NODE2, 45001), &segment(4195, 1398, false), later).1);
    // A partial follower of a run of full checksums: the walk.
    assert!(!tw.vxlan_at(SocketAddrV4::new(NODE2, 45001), &segment(5593, 1398, true), later).1);
    // A trace always shows the walk (and forgets the run).
    let d = segment(6991, 1398, true);
    let memo = &mut tw.memo;
    let mut tr = Trace::on();
    let from = SocketAddrV4::new(NODE2, 45001);
    let _ = tw.run.run(&d, |dp, t, p, tr| dp.handle_vxlan_run(0, t, from, p, later, tr, memo), &mut tr);
    assert!(tr.steps.len() > 3, "the walk's steps");
    assert!(!tw.memo.holds());
}

#[test]
fn an_established_nodeport_flow_replays_its_reverse_nat() {
    let mut tw = Twin::new(vec![article::ghost()]);
    let sport = sport_for(&tw.run, CLIENT, (NODE1, 31266), EP2);
    assert_eq!(sport, sport_for(&tw.walk, CLIENT, (NODE1, 31266), EP2));
    let host_mac = article::node1().host_port_mac;
    let syn = tcp(host_mac, HOST_MAC, (CLIENT, sport), (NODE1, 31266), true, &[]);
    assert!(matches!(tw.port(PortId::HOST, &syn), Action::ToVtep { .. }));
    let synack = {
        let mut v = Vec::new();
        PacketBuilder::ipv4(EP2.octets(), VTEP1.octets(), 63)
            .tcp(2368, sport, 5000, 64240)
            .syn()
            .ack(1001)
            .write(&mut v, &[])
            .unwrap();
        from_node2(&v)
    };
    // SYN-ACK: never replayed (SYN), and SYN_RECV is no state to replay.
    assert_eq!(tw.vxlan(&synack), (Action::ToPort(PortId::HOST), false));
    assert!(!tw.memo.holds());
    let ack = tcp(host_mac, HOST_MAC, (CLIENT, sport), (NODE1, 31266), false, &[]);
    assert!(matches!(tw.port(PortId::HOST, &ack), Action::ToVtep { .. }));
    let replayed: Vec<bool> = (0..3u32)
        .map(|i| {
            let d = segment_of((EP2, 2368), (VTEP1, sport), 5001 + i * 1000, 1000, i == 2);
            let (a, r) = tw.vxlan(&d);
            assert_eq!(a, Action::ToPort(PortId::HOST));
            r
        })
        .collect();
    // The third is partial, the first two are not: it starts a run of its own.
    assert_eq!(replayed, [false, true, false]);
    let ip = tw.run.out_ip();
    assert_eq!((ip.src(), ip.dst()), (NODE1, CLIENT), "reverse NAT from the entry");
    assert_eq!(l4_ports(&ip), (31266, sport));
    assert_checksums(&ip);
    assert_eq!(&tw.run.out()[..6], &host_mac.0);
    assert_eq!(tw.run.count(Counter::CtHitReply), 4, "every replayed frame counted as a hit");
}

#[test]
fn a_new_flow_is_never_replayed() {
    // centos7-2's pod to the outside through this node (vxlan_accept = any): flannel's
    // ip-masq enters the flow (picked up mid-stream by its ACK) on the first segment.
    let mut tw = Twin::new(vec![]);
    let seg = |seq: u32| segment_of((EP2, 2368), (CLIENT, 80), seq, 500, false);
    let replayed: Vec<bool> = (0..3u32).map(|i| tw.vxlan(&seg(1 + i * 500)).1).collect();
    assert_eq!(replayed, [false, false, true], "new flow, first hit, replayed hit");
    assert_eq!(tw.run.count(Counter::CtNew), 1);
    assert_eq!(tw.run.count(Counter::EgressMasquerade), 1);
    assert_eq!(tw.run.out_ip().src(), NODE1);
}

#[test]
fn a_run_of_udp_datagrams_is_decided_once() {
    let mut tw = Twin::new(vec![]);
    let dgram = |n: usize| {
        let mut ip = Vec::new();
        PacketBuilder::ipv4(EP2.octets(), EP1.octets(), 63).udp(53, 40001).write(&mut ip, &vec![7u8; n]).unwrap();
        from_node2(&ip)
    };
    let replayed: Vec<bool> = [100, 200, 100].iter().map(|n| tw.vxlan(&dgram(*n)).1).collect();
    assert_eq!(replayed, [false, true, true]);
    // A UDP length past the IP payload is the walk's drop.
    let mut bad = dgram(100);
    bad[22 + 24..22 + 26].copy_from_slice(&200u16.to_be_bytes());
    assert_eq!(tw.vxlan(&bad), (Action::Drop(DropReason::L4Malformed), false));
}

#[test]
fn a_peers_super_packet_in_a_run_takes_the_walk() {
    // Segments of 1398 bytes, then a super-packet of two MSS (its TCP header has no
    // options: the MSS of the 1450 MTU is 1410), then segments again: the super-packet
    // is marked for GSO by the walk, never given a segment's replayed decision.
    let mut tw = Twin::new(vec![]);
    let lens = [1398, 1398, 2820, 1398, 1398];
    let mut seq = 1;
    let mut replayed = Vec::new();
    for len in lens {
        let (a, r) = tw.vxlan(&segment(seq, len, true));
        assert_eq!(a, Action::ToPort(PortId(1)));
        let gso = if len > 1410 { 1410 } else { 0 };
        assert_eq!(tw.run.offload, Offload { csum_partial: true, gso_size: gso, frag_size: 0 }, "{len} bytes");
        replayed.push(r);
        seq += len as u32;
    }
    assert_eq!(replayed, [false, true, false, false, true]);
    assert_eq!(tw.run.count(Counter::PeerTso), 1);
}
