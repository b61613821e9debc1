//! Early drop with real tuples: which flow a full table gives up, and which it keeps.

use std::net::Ipv4Addr;

use super::*;
use crate::core::Now;
use crate::core::nat::Tuple;
use crate::core::nat::conntrack::{Conntrack, Insert, NAT_DNAT, NAT_SNAT, NewFlow, PortChoice, Timeouts};
use crate::wire::ipv4::PROTO_UDP;
use crate::wire::l4::{TCP_ACK, TCP_FIN, TCP_SYN};

const NODE1: Ipv4Addr = Ipv4Addr::new(172, 16, 240, 131);
const EP: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 0, 74), 2368);
const MASQ: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);
const NOW: Now = Now::from_secs(100);

fn nodeport(src: Ipv4Addr, sport: u16) -> Tuple {
    Tuple { proto: PROTO_TCP, src, dst: NODE1, sport, dport: 31266 }
}
fn flow(original: Tuple, tcp_flags: u8, ep: (Ipv4Addr, u16), ports: PortChoice) -> NewFlow {
    NewFlow { original, tcp_flags, reply_src: ep, reply_dst: MASQ, nat: NAT_DNAT | NAT_SNAT, ports }
}
fn all(keep: u16) -> PortChoice {
    PortChoice { keep, lo: 1024, hi: 65535 }
}
fn insert(ct: &Conntrack, t: Tuple, flags: u8) -> Insert {
    ct.insert(flow(t, flags, EP, all(t.sport)), NOW)
}
fn established(ct: &Conntrack, t: Tuple) -> std::sync::Arc<Entry> {
    let Insert::New { entry, .. } = insert(ct, t, TCP_SYN) else { panic!("not inserted") };
    ct.track(&entry.reply, TCP_SYN | TCP_ACK, NOW, true).unwrap();
    ct.track(&t, TCP_ACK, NOW, true).unwrap();
    assert!(entry.assured());
    entry
}

#[test]
fn a_full_table_evicts_the_oldest_unassured_flow() {
    let ct = Conntrack::new(4, Timeouts::default());
    let est = established(&ct, nodeport(Ipv4Addr::new(172, 16, 240, 1), 40000));
    // Three SYNs of a flood fill the table.
    let flood: Vec<Tuple> = (0..3).map(|i| nodeport(Ipv4Addr::new(198, 18, 0, i), 1000 + u16::from(i))).collect();
    for t in &flood {
        assert!(matches!(insert(&ct, *t, TCP_SYN), Insert::New { evicted: false, .. }));
    }
    assert_eq!(ct.len(), 4);
    // A legitimate SYN takes the oldest flood entry's place.
    let legit = nodeport(Ipv4Addr::new(172, 16, 240, 2), 50000);
    assert!(matches!(insert(&ct, legit, TCP_SYN), Insert::New { evicted: true, .. }));
    assert_eq!(ct.len(), 4);
    assert!(ct.track(&flood[0], TCP_SYN, NOW, false).is_none(), "oldest unassured flow evicted");
    assert!(ct.track(&flood[1], TCP_SYN, NOW, false).is_some());
    // The established flow is untouched, both ways.
    assert!(ct.track(&est.original, TCP_ACK, NOW, true).is_some());
    assert!(ct.track(&est.reply, TCP_ACK, NOW, true).is_some());
}

#[test]
fn assured_flows_are_never_evicted() {
    let ct = Conntrack::new(3, Timeouts::default());
    let flows: Vec<_> = (0..3).map(|i| established(&ct, nodeport(Ipv4Addr::new(172, 16, 240, 1), 40000 + i))).collect();
    for _ in 0..10 {
        assert!(matches!(insert(&ct, nodeport(Ipv4Addr::new(198, 18, 0, 1), 999), TCP_SYN), Insert::Full));
    }
    for e in &flows {
        assert!(ct.track(&e.original, TCP_ACK, NOW, false).is_some());
    }
    // A closing flow (FIN_WAIT) may go, as the kernel's tcp_can_early_drop allows.
    ct.track(&flows[1].original, TCP_FIN | TCP_ACK, NOW, true).unwrap();
    assert!(flows[1].can_early_drop());
    assert!(!flows[0].can_early_drop());
}

#[test]
fn closing_flows_queued_before_they_closed_can_make_room() {
    let ct = Conntrack::new(2, Timeouts::default());
    let a = established(&ct, nodeport(Ipv4Addr::new(172, 16, 240, 1), 40000));
    let b = established(&ct, nodeport(Ipv4Addr::new(172, 16, 240, 1), 40001));
    ct.track(&b.original, TCP_FIN | TCP_ACK, NOW, true).unwrap();
    assert!(matches!(
        insert(&ct, nodeport(Ipv4Addr::new(172, 16, 240, 3), 7), TCP_SYN),
        Insert::New { evicted: true, .. }
    ));
    assert!(ct.track(&a.original, TCP_ACK, NOW, false).is_some());
    assert!(ct.track(&b.original, TCP_ACK, NOW, false).is_none());
}

fn dns(sport: u16) -> Tuple {
    Tuple { proto: PROTO_UDP, src: Ipv4Addr::new(10, 244, 1, 5), dst: Ipv4Addr::new(10, 250, 0, 10), sport, dport: 53 }
}

fn insert_at(ct: &Conntrack, t: Tuple, flags: u8, now: Now) -> std::sync::Arc<Entry> {
    match ct.insert(flow(t, flags, EP, all(t.sport)), now) {
        Insert::New { entry, .. } => entry,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_one_shot_udp_exchange_may_go_a_stream_stays() {
    let ct = Conntrack::new(2, Timeouts::default());
    let t0 = Now::from_secs(100);
    let stream = insert_at(&ct, dns(5000), 0, t0);
    ct.track(&stream.reply, 0, t0, true).unwrap();
    let later = Now::from_secs(103);
    ct.track(&dns(5000), 0, later, true).unwrap();
    assert!(stream.assured(), "answered and alive past two seconds: a stream");
    let one_shot = insert_at(&ct, dns(5001), 0, later);
    ct.track(&one_shot.reply, 0, later, true).unwrap();
    assert!(!one_shot.assured());
    // Full: the one-shot exchange goes, the stream stays.
    assert!(matches!(ct.insert(flow(dns(5002), 0, EP, all(5002)), later), Insert::New { evicted: true, .. }));
    assert!(ct.track(&stream.original, 0, later, false).is_some());
    assert!(ct.track(&dns(5001), 0, later, false).is_none());
}

/// The tiers: unreplied past the grace second first, then answered-but-unassured in the
/// order of their answers, then young unreplied flows, oldest first.
#[test]
fn unreplied_past_grace_then_answered_then_young_unreplied() {
    let ct = Conntrack::new(4, Timeouts::default());
    let t0 = Now::from_secs(100);
    let stale = insert_at(&ct, nodeport(Ipv4Addr::new(198, 18, 0, 1), 1000), TCP_SYN, t0);
    let t1 = Now::from_secs(102);
    let half_open = insert_at(&ct, nodeport(Ipv4Addr::new(198, 18, 0, 2), 1001), TCP_SYN, t1);
    ct.track(&half_open.reply, TCP_SYN | TCP_ACK, t1, true).unwrap();
    let young_a = insert_at(&ct, nodeport(Ipv4Addr::new(172, 16, 240, 1), 40000), TCP_SYN, t1);
    let young_b = insert_at(&ct, nodeport(Ipv4Addr::new(172, 16, 240, 1), 40001), TCP_SYN, t1);
    let gone = |e: &Entry| ct.track(&e.original, TCP_SYN, t1, false).is_none();
    let newcomer = |port| insert_at(&ct, nodeport(Ipv4Addr::new(172, 16, 240, 2), port), TCP_SYN, t1);
    newcomer(50000);
    assert!(gone(&stale), "unreplied for 2 s: the first to go");
    assert!(!gone(&half_open) && !gone(&young_a) && !gone(&young_b));
    newcomer(50001);
    assert!(gone(&half_open), "answered, never acknowledged: next");
    assert!(!gone(&young_a) && !gone(&young_b));
    newcomer(50002);
    assert!(gone(&young_a) && !gone(&young_b), "then the oldest young handshake");
    assert_eq!(ct.len(), 4);
}

/// A flood whose SYNs are answered (the endpoint answers every SYN, with syncookies)
/// fills the table with half-open flows; a handshake waiting for its SYN-ACK is not
/// given up for any number of them, and one given up after its SYN-ACK is picked up
/// again by its ACK with the same reply tuple.
#[test]
fn an_answered_flood_never_evicts_a_handshake_waiting_for_its_answer() {
    let ct = Conntrack::new(64, Timeouts::default());
    let now = NOW;
    let flood = |i: u32| nodeport(Ipv4Addr::from(0xc612_0000 + i), 1024 + (i % 60000) as u16);
    for i in 0..64 {
        let e = insert_at(&ct, flood(i), TCP_SYN, now);
        ct.track(&e.reply, TCP_SYN | TCP_ACK, now, true).unwrap();
    }
    let legit = nodeport(Ipv4Addr::new(172, 16, 240, 1), 40000);
    let e = insert_at(&ct, legit, TCP_SYN, now);
    for i in 64..10_000 {
        let f = insert_at(&ct, flood(i), TCP_SYN, now);
        ct.track(&f.reply, TCP_SYN | TCP_ACK, now, true).unwrap();
        assert!(ct.len() <= 64);
    }
    let h = ct.track(&e.reply, TCP_SYN | TCP_ACK, now, true).expect("the SYN-ACK finds its flow");
    assert_eq!(h.dst, (legit.src, legit.sport));
    // Given up after its answer, the ACK enters it again, on the same reply tuple.
    for i in 10_000..10_100 {
        let f = insert_at(&ct, flood(i), TCP_SYN, now);
        ct.track(&f.reply, TCP_SYN | TCP_ACK, now, true).unwrap();
    }
    assert!(ct.track(&legit, TCP_ACK, now, false).is_none(), "evicted among the half-open flows");
    let again = insert_at(&ct, legit, TCP_ACK, now);
    assert_eq!(again.reply, e.reply);
}

#[test]
fn under_pressure_the_sweep_gives_unassured_flows_a_grace_second_only() {
    let ct = Conntrack::new(20, Timeouts::default());
    let t0 = Now::from_secs(100);
    let est = established(&ct, nodeport(Ipv4Addr::new(172, 16, 240, 1), 40000));
    for i in 0..17 {
        insert_at(&ct, nodeport(Ipv4Addr::new(198, 18, 0, i), 1000 + u16::from(i)), TCP_SYN, t0);
    }
    assert!(!ct.under_pressure(), "18 of 20 is 90 %");
    let young = insert_at(&ct, nodeport(Ipv4Addr::new(172, 16, 240, 9), 9), TCP_SYN, Now::from_secs(101));
    assert!(ct.under_pressure());
    let swept = ct.sweep(Now(Now::from_secs(101).0 + 500_000_000));
    assert_eq!(swept, crate::core::nat::conntrack::Swept { expired: 0, pressure: 17 });
    assert_eq!(ct.len(), 2, "the assured flow and the handshake younger than a second stay");
    assert!(ct.track(&est.original, TCP_ACK, t0, false).is_some());
    assert!(ct.track(&young.original, TCP_SYN, t0, false).is_some());
    // Below the threshold again: only timeouts remove flows.
    assert_eq!(ct.sweep(Now::from_secs(105)).pressure, 0);
}

#[test]
fn a_flow_picked_up_mid_stream_is_assured_by_its_first_answer() {
    let ct = Conntrack::new(4, Timeouts::default());
    let t = nodeport(Ipv4Addr::new(172, 16, 240, 1), 40000);
    let Insert::New { entry, .. } = insert(&ct, t, TCP_ACK) else { panic!() };
    assert!(!entry.assured());
    ct.track(&t, TCP_ACK, NOW, true).unwrap();
    assert!(!entry.assured(), "the original direction alone proves nothing");
    ct.track(&entry.reply, TCP_ACK, NOW, true).unwrap();
    assert!(entry.assured());
}

#[test]
fn the_masquerade_port_space_is_per_destination() {
    let ct = Conntrack::new(16, Timeouts::default());
    let t = nodeport(Ipv4Addr::new(172, 16, 240, 1), 40000);
    let u = nodeport(Ipv4Addr::new(172, 16, 240, 2), 40000);
    let Insert::New { entry: a, remapped: ra, .. } = ct.insert(flow(t, TCP_SYN, EP, all(40000)), NOW) else { panic!() };
    let other_ep = (Ipv4Addr::new(10, 244, 2, 9), 2368);
    let Insert::New { entry: b, remapped: rb, .. } = ct.insert(flow(u, TCP_SYN, other_ep, all(40000)), NOW) else {
        panic!()
    };
    // Same masquerade address and port, different destination: both keep 40000.
    assert!(!ra && !rb);
    assert_eq!((a.reply.dst, a.reply.dport), (b.reply.dst, b.reply.dport));
    assert_eq!(ct.track(&b.reply, TCP_SYN | TCP_ACK, NOW, true).unwrap().dst, (u.src, u.sport));
}

#[test]
fn an_exhausted_port_range_gives_up_an_unassured_holder() {
    let ct = Conntrack::new(64, Timeouts::default());
    let range = PortChoice { keep: 0, lo: 61000, hi: 61001 };
    let a = nodeport(Ipv4Addr::new(10, 244, 1, 5), 40000);
    let Insert::New { entry: held, .. } = ct.insert(flow(a, TCP_SYN, EP, range), NOW) else { panic!() };
    ct.track(&held.reply, TCP_SYN | TCP_ACK, NOW, true).unwrap();
    ct.track(&a, TCP_ACK, NOW, true).unwrap();
    let b = nodeport(Ipv4Addr::new(10, 244, 1, 6), 40000);
    let Insert::New { entry: half_open, .. } = ct.insert(flow(b, TCP_SYN, EP, range), NOW) else { panic!() };
    // Both ports held: the half-open flow's port is given to the new one.
    let c = nodeport(Ipv4Addr::new(10, 244, 1, 7), 40000);
    let Insert::New { entry, evicted, .. } = ct.insert(flow(c, TCP_SYN, EP, range), NOW) else { panic!() };
    assert!(evicted);
    assert_eq!(entry.reply.dport, half_open.reply.dport);
    assert!(ct.track(&b, TCP_SYN, NOW, false).is_none());
    // Only assured holders left: exhausted.
    ct.track(&entry.reply, TCP_SYN | TCP_ACK, NOW, true).unwrap();
    ct.track(&c, TCP_ACK, NOW, true).unwrap();
    let d = nodeport(Ipv4Addr::new(10, 244, 1, 8), 40000);
    assert!(matches!(ct.insert(flow(d, TCP_SYN, EP, range), NOW), Insert::Exhausted));
    assert_eq!(ct.len(), 2);
}

#[test]
fn the_queue_stays_bounded_under_churn() {
    let ct = Conntrack::new(8, Timeouts::default());
    for i in 0..10_000u32 {
        let t = nodeport(Ipv4Addr::from(0xc612_0000 + i), 1024 + (i % 60000) as u16);
        assert!(matches!(insert(&ct, t, TCP_SYN), Insert::New { .. }));
        assert!(ct.len() <= 8);
    }
    assert!(ct.candidates_len() <= 64);
}
