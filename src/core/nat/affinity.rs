//! Session affinity (`sessionAffinity: ClientIP`): which endpoint a client IP sticks to
//! for a service port, and until when. kube-proxy keeps this as one `recent` list
//! (iptables) or one timed set (nftables) per endpoint, checked in the service chain and
//! refreshed in the endpoint chain on every new connection; here it is one table keyed by
//! (client IP, service port) — the service port, not the address used to reach it, as
//! kube-proxy's "without regard to which service IP was used".
//!
//! Shape: a sharded concurrent map (dashmap). A hit takes one shard's read lock and
//! refreshes the deadline with an atomic store: no allocation, no write lock. Recording a
//! new choice takes that shard's write lock (a new flow's path). The table is bounded:
//! when it holds `max` records a new one is not recorded (the flow still goes to the
//! endpoint the hash picked; `service_affinity_full` counts it) until [`Affinity::sweep`]
//! removes expired records. Expiry is exact to the second on the caller's clock, so the
//! fake clock of the tests drives it.
//!
//! Heads up: a record is used only if its endpoint is among the packet's candidates (its
//! traffic policy, its endpoints' conditions); otherwise the hash picks and the record
//! is replaced. kube-proxy keeps one set per endpoint, so a client could sit in two sets
//! at once and the first candidate's wins; here the latest choice does (the two differ
//! only when one client IP reaches one service port under two candidate sets).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

use dashmap::DashMap;

use crate::core::Now;

/// The default bound on records (about 60 bytes each: 15 MiB).
pub const DEFAULT_MAX: usize = 1 << 18;

/// One client's choice for one service port.
#[derive(Debug)]
struct Record {
    endpoint: SocketAddrV4,
    /// Expiry, in `Now::secs()`: the last new connection plus the timeout.
    deadline: AtomicU32,
}

/// A record as exported (for a checkpoint or a hand-over) and imported again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AffinityRecord {
    pub client: Ipv4Addr,
    /// The service port: its protocol number, cluster IP and port.
    pub proto: u8,
    pub service_ip: Ipv4Addr,
    pub service_port: u16,
    pub endpoint: SocketAddrV4,
    /// Seconds left when exported.
    pub remaining: u32,
}

/// The affinity table, shared by all workers.
#[derive(Debug)]
pub struct Affinity {
    map: DashMap<u128, Record, ahash::RandomState>,
    len: AtomicUsize,
    max: usize,
}

impl Default for Affinity {
    fn default() -> Self {
        Affinity::new(DEFAULT_MAX)
    }
}

/// The key: client IP and the service port's key (`service_table::spec_key`).
#[inline]
fn key(client: Ipv4Addr, service: u64) -> u128 {
    (u128::from(u32::from(client)) << 64) | u128::from(service)
}

/// What [`Affinity::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Yes,
    /// The table is at its bound: not recorded.
    Full,
}

impl Affinity {
    pub fn new(max: usize) -> Affinity {
        Affinity { map: DashMap::with_hasher(ahash::RandomState::new()), len: AtomicUsize::new(0), max }
    }

    /// The live choice of `client` for service port `service`, if any.
    #[inline]
    pub fn lookup(&self, client: Ipv4Addr, service: u64, now: Now) -> Option<SocketAddrV4> {
        let r = self.map.get(&key(client, service))?;
        (r.deadline.load(Relaxed) > now.secs()).then_some(r.endpoint)
    }

    /// A new connection went to `endpoint` because of its live record: the record lives
    /// `timeout` seconds more (kube-proxy's `update @affinity-… { ip saddr }`).
    #[inline]
    pub fn refresh(&self, client: Ipv4Addr, service: u64, timeout: u32, now: Now) {
        if let Some(r) = self.map.get(&key(client, service)) {
            r.deadline.store(now.secs().saturating_add(timeout), Relaxed);
        }
    }

    /// Records (or replaces) the choice of `client` for `service`.
    pub fn record(&self, client: Ipv4Addr, service: u64, endpoint: SocketAddrV4, timeout: u32, now: Now) -> Recorded {
        let deadline = AtomicU32::new(now.secs().saturating_add(timeout));
        let k = key(client, service);
        if let Some(mut r) = self.map.get_mut(&k) {
            *r = Record { endpoint, deadline };
            return Recorded::Yes;
        }
        // Claim a slot first, so concurrent inserts never pass the bound.
        if self.len.fetch_add(1, Relaxed) >= self.max {
            self.len.fetch_sub(1, Relaxed);
            return Recorded::Full;
        }
        if self.map.insert(k, Record { endpoint, deadline }).is_some() {
            // Another worker inserted it between the two lookups: one slot, not two.
            self.len.fetch_sub(1, Relaxed);
        }
        Recorded::Yes
    }

    /// Removes expired records; how many.
    pub fn sweep(&self, now: Now) -> usize {
        let secs = now.secs();
        let mut n = 0;
        self.map.retain(|_, r| {
            let live = r.deadline.load(Relaxed) > secs;
            n += usize::from(!live);
            live
        });
        self.len.fetch_sub(n, Relaxed);
        n
    }

    /// Forgets the records of service port `service` (the service went away, or lost
    /// its affinity).
    pub fn forget_service(&self, service: u64) -> usize {
        let mut n = 0;
        self.map.retain(|k, _| {
            let keep = (*k as u64) != service;
            n += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(n, Relaxed);
        n
    }

    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn max(&self) -> usize {
        self.max
    }

    /// Every live record, with the seconds it has left.
    pub fn export(&self, now: Now) -> Vec<AffinityRecord> {
        let secs = now.secs();
        let mut out: Vec<AffinityRecord> = self
            .map
            .iter()
            .filter_map(|e| {
                let remaining = e.value().deadline.load(Relaxed).checked_sub(secs).filter(|r| *r > 0)?;
                let (k, service) = (*e.key(), *e.key() as u64);
                Some(AffinityRecord {
                    client: Ipv4Addr::from((k >> 64) as u32),
                    proto: (service >> 48) as u8,
                    service_ip: Ipv4Addr::from((service >> 16) as u32),
                    service_port: service as u16,
                    endpoint: e.value().endpoint,
                    remaining,
                })
            })
            .collect();
        out.sort_by_key(|r| (r.client, r.service_ip, r.service_port, r.proto));
        out
    }

    /// Takes records over (from a checkpoint or a predecessor), each living its
    /// `remaining` seconds from `now`; how many were taken (the bound applies).
    pub fn import(&self, records: &[AffinityRecord], now: Now) -> usize {
        let service = |r: &AffinityRecord| super::service_table::vip_key(r.proto, r.service_ip, r.service_port);
        records
            .iter()
            .filter(|r| r.remaining > 0)
            .filter(|r| self.record(r.client, service(r), r.endpoint, r.remaining, now) == Recorded::Yes)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: u64 = 0x0006_0afa_0028_0940; // tcp 10.250.0.40:2368
    const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 16, 240, 1);

    fn ep(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn a_choice_lives_its_timeout_from_the_last_connection() {
        let a = Affinity::new(16);
        let t0 = Now::from_secs(1000);
        assert_eq!(a.lookup(CLIENT, SVC, t0), None);
        assert_eq!(a.record(CLIENT, SVC, ep("10.244.0.74:2368"), 10, t0), Recorded::Yes);
        assert_eq!(a.lookup(CLIENT, SVC, Now::from_secs(1009)), Some(ep("10.244.0.74:2368")));
        assert_eq!(a.lookup(CLIENT, SVC, Now::from_secs(1010)), None, "gone at exactly the timeout");
        // A connection at 1009 keeps it another 10 s.
        a.refresh(CLIENT, SVC, 10, Now::from_secs(1009));
        assert_eq!(a.lookup(CLIENT, SVC, Now::from_secs(1018)), Some(ep("10.244.0.74:2368")));
        // Other clients and other service ports are their own.
        assert_eq!(a.lookup(Ipv4Addr::new(172, 16, 240, 2), SVC, t0), None);
        assert_eq!(a.lookup(CLIENT, SVC + 1, t0), None);
        // Replacing keeps one record.
        a.record(CLIENT, SVC, ep("10.244.1.5:2368"), 10, t0);
        assert_eq!((a.len(), a.lookup(CLIENT, SVC, t0)), (1, Some(ep("10.244.1.5:2368"))));
    }

    #[test]
    fn the_table_is_bounded_and_swept() {
        let a = Affinity::new(3);
        let t0 = Now::from_secs(50);
        for i in 0..3u8 {
            assert_eq!(
                a.record(Ipv4Addr::new(10, 0, 0, i), SVC, ep("10.244.0.74:2368"), 5 + u32::from(i), t0),
                Recorded::Yes
            );
        }
        assert_eq!(a.record(Ipv4Addr::new(10, 0, 0, 9), SVC, ep("10.244.0.74:2368"), 5, t0), Recorded::Full);
        assert_eq!(a.len(), 3);
        // Replacing an existing record is never refused.
        assert_eq!(a.record(Ipv4Addr::new(10, 0, 0, 0), SVC, ep("10.244.1.5:2368"), 5, t0), Recorded::Yes);
        assert_eq!(a.sweep(Now::from_secs(56)), 2, "the two with 5 and 6 s are gone at 56");
        assert_eq!(a.len(), 1);
        assert_eq!(a.record(Ipv4Addr::new(10, 0, 0, 9), SVC, ep("10.244.0.74:2368"), 5, t0), Recorded::Yes);
        assert_eq!(a.forget_service(SVC), 2);
        assert!(a.is_empty());
    }

    #[test]
    fn export_and_import_carry_the_remaining_time() {
        let a = Affinity::new(16);
        a.record(CLIENT, SVC, ep("10.244.0.74:2368"), 10_800, Now::from_secs(100));
        a.record(Ipv4Addr::new(172, 16, 240, 7), SVC, ep("10.244.1.5:2368"), 5, Now::from_secs(100));
        let out = a.export(Now::from_secs(104));
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0],
            AffinityRecord {
                client: CLIENT,
                proto: 6,
                service_ip: Ipv4Addr::new(10, 250, 0, 40),
                service_port: 2368,
                endpoint: ep("10.244.0.74:2368"),
                remaining: 10_796,
            }
        );
        assert_eq!(out[1].remaining, 1);
        // A successor with its own clock takes them over.
        let b = Affinity::new(16);
        assert_eq!(b.import(&out, Now::from_secs(7)), 2);
        assert_eq!(b.lookup(CLIENT, SVC, Now::from_secs(7 + 10_795)), Some(ep("10.244.0.74:2368")));
        assert_eq!(b.lookup(CLIENT, SVC, Now::from_secs(7 + 10_796)), None);
        assert_eq!(b.export(Now::from_secs(8)).len(), 1, "the 1 s one is gone");
    }
}
