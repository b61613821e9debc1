//! Early drop: which flow a full table gives up for a new one, as the kernel's
//! `early_drop` (nf_conntrack_core.c) decides. Only flows that are not ASSURED (TCP
//! before its handshake completes, UDP before a reply stream) or TCP flows already
//! closing (`tcp_can_early_drop`: FIN_WAIT .. CLOSE) may go; an established, assured
//! flow is never evicted to make room.
//!
//! The kernel scans the new tuple's hash bucket; a sharded map has no cheap "some
//! entry near here", so this module keeps a FIFO of original keys in insertion order
//! and evicts the oldest candidate: a SYN flood's entries are the oldest by the time a
//! legitimate SYN needs room, and a legitimate flow completes its handshake (and leaves
//! candidacy) long before a flood of `max` entries has passed it.
//!
//! Heads up: keys are never removed from the queue when their flow goes (sweep, flush,
//! assurance); a popped key is checked against the table, stale keys are skipped, and
//! each push also drops stale keys from the front, so the queue stays near the number
//! of candidate flows and never grows past its cap.

use std::collections::VecDeque;
use std::sync::Mutex;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::conntrack::{Conntrack, Entry, TcpState};
use crate::core::Now;
use crate::wire::ipv4::PROTO_TCP;

/// Keys examined per eviction before the new flow is refused.
pub const EVICTION_TRIES: usize = 64;
/// Stale front keys dropped per push (keeps the queue short without a scan).
const PRUNE_PER_PUSH: usize = 2;

/// May this flow be evicted for a new one?
pub fn can_early_drop(e: &Entry) -> bool {
    !e.assured() || (e.original.proto == PROTO_TCP && (TcpState::FinWait..=TcpState::Close).contains(&e.tcp_state()))
}

/// Original keys of flows in insertion order, bounded.
pub struct Candidates {
    queue: Mutex<VecDeque<u128>>,
    cap: usize,
}

impl Candidates {
    pub fn new(max: usize) -> Self {
        Candidates { queue: Mutex::new(VecDeque::new()), cap: max.saturating_mul(2).max(64) }
    }

    /// Records a new flow; `still_candidate` says whether a queued key still names a
    /// flow that could be evicted (it is called on up to [`PRUNE_PER_PUSH`] front keys).
    pub fn push(&self, key: u128, still_candidate: impl Fn(u128) -> bool) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..PRUNE_PER_PUSH {
            match q.front() {
                Some(&k) if !still_candidate(k) => {
                    q.pop_front();
                }
                _ => break,
            }
        }
        if q.len() >= self.cap {
            q.pop_front();
        }
        q.push_back(key);
    }

    /// The oldest queued key, removed from the queue.
    pub fn pop(&self) -> Option<u128> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }

    pub fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Conntrack {
    /// Makes room for one flow: evicts the oldest flow that may be dropped early (an
    /// expired one found on the way counts too). False when none was found.
    pub(super) fn early_drop(&self, now: Now) -> bool {
        for _ in 0..EVICTION_TRIES {
            let Some(key) = self.candidates.pop() else { return false };
            let Some(e) = self.map.get(&key).map(|r| r.value().clone()) else { continue };
            if e.original.key() != key {
                continue;
            }
            let live = e.is_live(now);
            if (!live || can_early_drop(&e)) && self.remove_entry(&e) {
                return true;
            }
        }
        false
    }

    /// Removes one flow (both keys) if it is still in the table; true when this call removed it.
    pub(super) fn remove_entry(&self, e: &Arc<Entry>) -> bool {
        let gone = self.map.remove_if(&e.original.key(), |_, m| Arc::ptr_eq(m, e)).is_some();
        if gone {
            self.filter.sub(e.original.key());
        }
        if self.map.remove_if(&e.reply.key(), |_, m| Arc::ptr_eq(m, e)).is_some() {
            self.filter.sub(e.reply.key());
        }
        if gone {
            self.entries.fetch_sub(1, Relaxed);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
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
        let flows: Vec<_> =
            (0..3).map(|i| established(&ct, nodeport(Ipv4Addr::new(172, 16, 240, 1), 40000 + i))).collect();
        for _ in 0..10 {
            assert!(matches!(insert(&ct, nodeport(Ipv4Addr::new(198, 18, 0, 1), 999), TCP_SYN), Insert::Full));
        }
        for e in &flows {
            assert!(ct.track(&e.original, TCP_ACK, NOW, false).is_some());
        }
        // A closing flow (FIN_WAIT) may go, as the kernel's tcp_can_early_drop allows.
        ct.track(&flows[1].original, TCP_FIN | TCP_ACK, NOW, true).unwrap();
        assert!(can_early_drop(&flows[1]));
        assert!(!can_early_drop(&flows[0]));
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

    #[test]
    fn udp_is_assured_by_its_reply_and_then_stays() {
        let ct = Conntrack::new(2, Timeouts::default());
        let dns = |sport| Tuple {
            proto: PROTO_UDP,
            src: Ipv4Addr::new(10, 244, 1, 5),
            dst: Ipv4Addr::new(10, 250, 0, 10),
            sport,
            dport: 53,
        };
        let Insert::New { entry: answered, .. } = insert(&ct, dns(5000), 0) else { panic!() };
        ct.track(&answered.reply, 0, NOW, true).unwrap();
        let Insert::New { .. } = insert(&ct, dns(5001), 0) else { panic!() };
        // Full: the unreplied one goes, the answered one stays.
        assert!(matches!(insert(&ct, dns(5002), 0), Insert::New { evicted: true, .. }));
        assert!(ct.track(&answered.original, 0, NOW, false).is_some());
        assert!(ct.track(&dns(5001), 0, NOW, false).is_none());
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
        let Insert::New { entry: a, remapped: ra, .. } = ct.insert(flow(t, TCP_SYN, EP, all(40000)), NOW) else {
            panic!()
        };
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
}
