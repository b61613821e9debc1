//! Conntrack with real tuples from the article's flows: NAT, state, expiry, races.

use super::*;
use crate::wire::l4::{TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};

fn client() -> Tuple {
    Tuple {
        proto: PROTO_TCP,
        src: Ipv4Addr::new(172, 16, 240, 1),
        dst: Ipv4Addr::new(172, 16, 240, 131),
        sport: 40000,
        dport: 31266,
    }
}
const EP: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 0, 74), 2368);
const MASQ: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);
const ALL: PortChoice = PortChoice { keep: 40000, lo: 1024, hi: 65535 };

fn new_nodeport(ct: &Conntrack, t: Tuple, now: Now) -> Arc<Entry> {
    match ct.insert(
        NewFlow {
            original: t,
            tcp_flags: TCP_SYN,
            reply_src: EP,
            reply_dst: MASQ,
            nat: NAT_DNAT | NAT_SNAT,
            ports: PortChoice { keep: t.sport, ..ALL },
        },
        now,
    ) {
        Insert::New { entry, .. } => entry,
        other => panic!("{other:?}"),
    }
}

#[test]
fn article_nodeport_flow_and_its_listing() {
    let ct = Conntrack::new(16, Timeouts::default());
    let now = Now::from_secs(100);
    let e = new_nodeport(&ct, client(), now);
    assert_eq!(e.reply.to_string(), "src=10.244.0.74 dst=10.244.1.0 sport=2368 dport=40000");
    assert_eq!(e.tcp_state(), TcpState::SynSent);
    // Original direction: DNAT + SNAT.
    let h = ct.track(&client(), TCP_SYN, now, true).unwrap();
    assert_eq!((h.dir, h.src, h.dst), (Dir::Original, (MASQ, 40000), EP));
    // SYN-ACK from the endpoint to the masquerade address: reverse NAT.
    let h = ct.track(&e.reply, TCP_SYN | TCP_ACK, now, true).unwrap();
    assert_eq!(h.dir, Dir::Reply);
    assert_eq!(h.src, (Ipv4Addr::new(172, 16, 240, 131), 31266));
    assert_eq!(h.dst, (Ipv4Addr::new(172, 16, 240, 1), 40000));
    assert_eq!(e.tcp_state(), TcpState::SynRecv);
    ct.track(&client(), TCP_ACK, now, true).unwrap();
    assert_eq!(e.tcp_state(), TcpState::Established);
    assert!(e.assured());
    assert_eq!(e.remaining(now), 86400);
    assert_eq!(e.original.to_string(), "src=172.16.240.1 dst=172.16.240.131 sport=40000 dport=31266");
}

#[test]
fn tcp_close_sequence_and_timeouts() {
    let ct = Conntrack::new(16, Timeouts::default());
    let now = Now::from_secs(10);
    let e = new_nodeport(&ct, client(), now);
    ct.track(&e.reply, TCP_SYN | TCP_ACK, now, true);
    ct.track(&client(), TCP_ACK, now, true);
    ct.track(&client(), TCP_ACK | TCP_PSH, now, true);
    assert_eq!(e.tcp_state(), TcpState::Established);
    ct.track(&client(), TCP_FIN | TCP_ACK, now, true);
    assert_eq!(e.tcp_state(), TcpState::FinWait);
    ct.track(&e.reply, TCP_ACK, now, true);
    assert_eq!(e.tcp_state(), TcpState::CloseWait);
    assert_eq!(e.remaining(now), 3600);
    ct.track(&e.reply, TCP_FIN | TCP_ACK, now, true);
    assert_eq!(e.tcp_state(), TcpState::LastAck);
    ct.track(&client(), TCP_ACK, now, true);
    assert_eq!(e.tcp_state(), TcpState::TimeWait);
    assert_eq!(e.remaining(now), 120);
    // After TIME_WAIT expires the flow is gone and a new SYN starts afresh.
    let later = Now::from_secs(10 + 121);
    assert!(ct.track(&client(), TCP_SYN, later, true).is_none());
    assert_eq!(ct.sweep(later).expired, 1);
    assert!(ct.is_empty());
}

#[test]
fn rst_closes_and_invalid_does_not_move_state() {
    let ct = Conntrack::new(16, Timeouts::default());
    let now = Now::from_secs(10);
    let e = new_nodeport(&ct, client(), now);
    // A SYN-ACK in the original direction is invalid: state unchanged.
    let h = ct.track(&client(), TCP_SYN | TCP_ACK, now, true).unwrap();
    assert!(h.invalid);
    assert_eq!(e.tcp_state(), TcpState::SynSent);
    ct.track(&e.reply, TCP_RST, now, true);
    assert_eq!(e.tcp_state(), TcpState::Close);
    assert_eq!(e.remaining(now), 10);
    // A FIN cannot start a flow; an ACK can (loose pickup), a SYN can.
    assert!(!ct.can_start(&client(), TCP_FIN));
    assert!(ct.can_start(&client(), TCP_ACK));
    assert!(ct.can_start(&client(), TCP_SYN));
}

#[test]
fn udp_unreplied_then_stream() {
    let ct = Conntrack::new(16, Timeouts::default());
    let now = Now::from_secs(0);
    let dns = Tuple {
        proto: PROTO_UDP,
        src: Ipv4Addr::new(10, 244, 1, 5),
        dst: Ipv4Addr::new(10, 250, 0, 10),
        sport: 53000,
        dport: 53,
    };
    let Insert::New { entry: e, .. } = ct.insert(
        NewFlow {
            original: dns,
            tcp_flags: 0,
            reply_src: (Ipv4Addr::new(10, 244, 0, 74), 53),
            reply_dst: dns.src,
            nat: NAT_DNAT,
            ports: PortChoice { keep: 53000, ..ALL },
        },
        now,
    ) else {
        panic!()
    };
    assert_eq!(e.remaining(now), 30);
    assert!(!e.seen_reply());
    // The answer is itself handled as unreplied (the kernel sets SEEN_REPLY after it).
    ct.track(&e.reply, 0, now, true).unwrap();
    assert!(e.seen_reply() && !e.assured());
    assert_eq!(e.remaining(now), 30);
    // Another query within two seconds: still no stream.
    let soon = Now(now.0 + 1_500_000_000);
    ct.track(&dns, 0, soon, true).unwrap();
    assert!(!e.assured());
    assert_eq!(e.remaining(soon), 30);
    // Past two seconds: a stream, ASSURED with the stream timeout.
    let later = Now::from_secs(3);
    ct.track(&e.reply, 0, later, true).unwrap();
    assert!(e.assured());
    assert_eq!(e.remaining(later), 120);
}

#[test]
fn udp_on_the_linux_3_10_rule_is_a_stream_from_the_packet_after_the_reply() {
    let mut ct = Conntrack::new(16, Timeouts::default());
    ct.udp_rule = UdpRule::Linux310;
    let now = Now::from_secs(0);
    let dns = Tuple {
        proto: PROTO_UDP,
        src: Ipv4Addr::new(10, 244, 1, 5),
        dst: Ipv4Addr::new(10, 250, 0, 10),
        sport: 53001,
        dport: 53,
    };
    let flow = NewFlow {
        original: dns,
        tcp_flags: 0,
        reply_src: (Ipv4Addr::new(10, 244, 0, 74), 53),
        reply_dst: dns.src,
        nat: NAT_DNAT,
        ports: PortChoice { keep: 53001, ..ALL },
    };
    let Insert::New { entry: e, .. } = ct.insert(flow, now) else { panic!() };
    ct.track(&e.reply, 0, now, true).unwrap();
    assert!(!e.assured(), "a one-shot exchange is not a stream on 3.10 either");
    ct.track(&dns, 0, now, true).unwrap();
    assert!(e.assured());
    assert_eq!(e.remaining(now), 120);
}

/// Two workers racing for the last slots never take one more than `max` (the issue's
/// 201 of 200): eight threads insert distinct flows into a table of 200.
#[test]
fn concurrent_inserts_never_pass_max() {
    let ct = Arc::new(Conntrack::new(200, Timeouts::default()));
    let now = Now::from_secs(10);
    let threads: Vec<_> = (0..8u16)
        .map(|w| {
            let ct = ct.clone();
            std::thread::spawn(move || {
                let mut peak = 0;
                for i in 0..2_000u16 {
                    let t =
                        Tuple { src: Ipv4Addr::new(198, 18, w as u8, (i % 250) as u8), sport: 1024 + i, ..client() };
                    let _ = ct.insert(
                        NewFlow {
                            original: t,
                            tcp_flags: TCP_SYN,
                            reply_src: EP,
                            reply_dst: MASQ,
                            nat: NAT_DNAT | NAT_SNAT,
                            ports: PortChoice { keep: t.sport, ..ALL },
                        },
                        now,
                    );
                    peak = peak.max(ct.len());
                }
                peak
            })
        })
        .collect();
    let peak = threads.into_iter().map(|t| t.join().unwrap()).max().unwrap();
    assert!(peak <= 200, "the table held {peak} entries with max 200");
    let live = ct.entries(now).len();
    assert_eq!(live, ct.len(), "the count is the number of flows");
    assert!(live <= 200);
}

#[test]
fn snat_keeps_port_when_free_and_never_shares_a_tuple() {
    let ct = Conntrack::new(1024, Timeouts::default());
    let now = Now::from_secs(1);
    // Two clients with the same source port to the same endpoint, masqueraded to
    // the same address: the second must get another port.
    let a = client();
    let b = Tuple { src: Ipv4Addr::new(172, 16, 240, 9), ..client() };
    let Insert::New { entry: ea, remapped: ra, .. } = ct.insert(
        NewFlow {
            original: a,
            tcp_flags: TCP_SYN,
            reply_src: EP,
            reply_dst: MASQ,
            nat: NAT_SNAT | NAT_DNAT,
            ports: ALL,
        },
        now,
    ) else {
        panic!()
    };
    let Insert::New { entry: eb, remapped: rb, .. } = ct.insert(
        NewFlow {
            original: b,
            tcp_flags: TCP_SYN,
            reply_src: EP,
            reply_dst: MASQ,
            nat: NAT_SNAT | NAT_DNAT,
            ports: ALL,
        },
        now,
    ) else {
        panic!()
    };
    assert!(!ra && rb);
    assert_eq!(ea.reply.dport, 40000);
    assert_ne!(eb.reply.dport, 40000);
    assert_ne!(ea.reply, eb.reply);
    // Many more flows colliding on the same port all stay unique.
    let mut seen = std::collections::HashSet::new();
    seen.insert(ea.reply);
    seen.insert(eb.reply);
    for i in 10..200u8 {
        let t = Tuple { src: Ipv4Addr::new(172, 16, 241, i), ..client() };
        match ct.insert(
            NewFlow {
                original: t,
                tcp_flags: TCP_SYN,
                reply_src: EP,
                reply_dst: MASQ,
                nat: NAT_SNAT | NAT_DNAT,
                ports: ALL,
            },
            now,
        ) {
            Insert::New { entry, .. } => assert!(seen.insert(entry.reply), "duplicate reply tuple"),
            other => panic!("{other:?}"),
        }
    }
    // Each reply tuple maps back to its own flow.
    let h = ct.track(&eb.reply, TCP_SYN | TCP_ACK, now, true).unwrap();
    assert_eq!(h.dst, (b.src, b.sport));
}

#[test]
fn restricted_range_is_respected() {
    let ct = Conntrack::new(16, Timeouts::default());
    let now = Now::from_secs(1);
    let range = PortChoice { keep: 40000, lo: 61000, hi: 61001 };
    for i in 0..2u8 {
        let t = Tuple { src: Ipv4Addr::new(10, 244, 1, 5 + i), ..client() };
        let Insert::New { entry, remapped, .. } = ct.insert(
            NewFlow {
                original: t,
                tcp_flags: TCP_SYN,
                reply_src: (t.dst, t.dport),
                reply_dst: Ipv4Addr::new(172, 16, 240, 131),
                nat: NAT_SNAT,
                ports: range,
            },
            now,
        ) else {
            panic!()
        };
        assert!(remapped);
        assert!((61000..=61001).contains(&entry.reply.dport));
        // Established and assured: never given up for a new flow.
        ct.track(&entry.reply, TCP_SYN | TCP_ACK, now, true).unwrap();
        ct.track(&t, TCP_ACK, now, true).unwrap();
    }
    let t = Tuple { src: Ipv4Addr::new(10, 244, 1, 9), ..client() };
    assert!(matches!(
        ct.insert(
            NewFlow {
                original: t,
                tcp_flags: TCP_SYN,
                reply_src: (t.dst, t.dport),
                reply_dst: Ipv4Addr::new(172, 16, 240, 131),
                nat: NAT_SNAT,
                ports: range
            },
            now
        ),
        Insert::Exhausted
    ));
}

#[test]
fn full_table_of_assured_flows_refuses_new_flows_only() {
    let ct = Conntrack::new(1, Timeouts::default());
    let now = Now::from_secs(1);
    let e = new_nodeport(&ct, client(), now);
    ct.track(&e.reply, TCP_SYN | TCP_ACK, now, true).unwrap();
    ct.track(&client(), TCP_ACK, now, true).unwrap();
    let other = Tuple { sport: 40001, ..client() };
    assert!(matches!(
        ct.insert(
            NewFlow { original: other, tcp_flags: TCP_SYN, reply_src: EP, reply_dst: MASQ, nat: NAT_DNAT, ports: ALL },
            now
        ),
        Insert::Full
    ));
    assert!(ct.track(&e.reply, TCP_SYN | TCP_ACK, now, true).is_some());
    assert!(matches!(
        ct.insert(
            NewFlow {
                original: client(),
                tcp_flags: TCP_SYN,
                reply_src: EP,
                reply_dst: MASQ,
                nat: NAT_DNAT,
                ports: ALL
            },
            now
        ),
        Insert::Joined(_)
    ));
}

#[test]
fn concurrent_inserts_of_one_flow_join() {
    // The DNS race: many threads insert the same new UDP flow at once; all must
    // come back with the same entry and the table must hold one flow.
    let ct = Arc::new(Conntrack::new(1024, Timeouts::default()));
    let dns = Tuple {
        proto: PROTO_UDP,
        src: Ipv4Addr::new(10, 244, 1, 5),
        dst: Ipv4Addr::new(10, 250, 0, 10),
        sport: 53000,
        dport: 53,
    };
    for round in 0..50u16 {
        let t = Tuple { sport: 50000 + round, ..dns };
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (ct, barrier) = (ct.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    match ct.insert(
                        NewFlow {
                            original: t,
                            tcp_flags: 0,
                            reply_src: (Ipv4Addr::new(10, 244, 0, 74), 53),
                            reply_dst: t.src,
                            nat: NAT_DNAT,
                            ports: PortChoice { keep: t.sport, ..ALL },
                        },
                        Now::from_secs(1),
                    ) {
                        Insert::New { entry, .. } | Insert::Joined(entry) => entry.reply,
                        other => panic!("{other:?}"),
                    }
                })
            })
            .collect();
        let replies: Vec<Tuple> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(replies.windows(2).all(|w| w[0] == w[1]), "{replies:?}");
    }
    assert_eq!(ct.len(), 50);
    assert_eq!(ct.entries(Now::from_secs(1)).len(), 50);
}

#[test]
fn remove_where_flushes_both_keys() {
    let ct = Conntrack::new(16, Timeouts::default());
    let now = Now::from_secs(1);
    let e = new_nodeport(&ct, client(), now);
    assert_eq!(ct.remove_where(|x| x.dnat_target() == Some(SocketAddrV4::new(EP.0, EP.1))), 1);
    assert!(ct.track(&client(), TCP_ACK, now, true).is_none());
    assert!(ct.track(&e.reply, TCP_ACK, now, true).is_none());
    assert_eq!(ct.len(), 0);
}

#[test]
fn dry_run_changes_nothing() {
    let ct = Conntrack::new(16, Timeouts::default());
    let now = Now::from_secs(1);
    let e = new_nodeport(&ct, client(), now);
    ct.track(&e.reply, TCP_SYN | TCP_ACK, Now::from_secs(50), false).unwrap();
    assert_eq!(e.tcp_state(), TcpState::SynSent);
    assert!(!e.seen_reply());
    assert_eq!(e.deadline(), 121);
}

/// The map empty and every bucket of the filter back at zero.
fn filter_empty(ct: &Conntrack) -> bool {
    ct.filter.counts_all_zero() && ct.map.iter().next().is_none()
}

#[test]
fn the_lockless_miss_filter_follows_inserts_and_removals() {
    let ct = Conntrack::new(64, Timeouts::default());
    let now = Now::from_secs(100);
    // Nothing tracked: a miss without touching the map.
    assert!(!ct.filter.may_contain(client().key()));
    assert!(ct.track(&client(), TCP_SYN, now, true).is_none());
    // Both keys of a new flow are counted before they are published: both directions hit.
    let e = new_nodeport(&ct, client(), now);
    assert!(ct.filter.may_contain(e.original.key()) && ct.filter.may_contain(e.reply.key()));
    assert!(ct.track(&e.reply, TCP_SYN | TCP_ACK, now, true).is_some());
    // Swept when expired: the counts go back down.
    assert_eq!(ct.sweep(Now::from_secs(100 + 1000)).expired, 1);
    assert!(filter_empty(&ct));
    assert!(!ct.filter.may_contain(e.reply.key()));
    // remove_where and early drop (a full table evicting an unassured flow) as well.
    let e = new_nodeport(&ct, client(), now);
    assert_eq!(ct.remove_where(|_| true), 1);
    assert!(!ct.filter.may_contain(e.original.key()) && !ct.filter.may_contain(e.reply.key()));
    let e = new_nodeport(&ct, client(), now);
    assert!(ct.remove_entry(&e));
    assert!(filter_empty(&ct));
    // A thousand flows in and out: every count returns to zero.
    let flows: Vec<Tuple> = (0..1000u16).map(|i| Tuple { sport: 20000 + i, ..client() }).collect();
    let ct = Conntrack::new(4096, Timeouts::default());
    for t in &flows {
        new_nodeport(&ct, *t, now);
    }
    assert!(flows.iter().all(|t| ct.track(t, TCP_ACK, now, false).is_some()));
    assert_eq!(ct.sweep(Now::from_secs(100 + 1000)).expired, 1000);
    assert!(ct.filter.counts_all_zero());
}
