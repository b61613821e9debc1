//! Tombstones of flows a policy change cut (`core::policy::recheck`): the flow's entry is
//! removed and both of its tuples are remembered with why it was cut, so that its next
//! packets — a retransmission from either end, an answer — are dropped and counted as
//! that, instead of starting it again as a new flow (the other way round, a reply could
//! otherwise open the very connection the policy just denied).
//!
//! A tombstone lives `LINGER` seconds after the last packet that found it: longer than
//! TCP's largest retransmission interval (TCP_RTO_MAX, 120 s), so an end that keeps
//! trying keeps it. Only a new flow's packet looks here, and only while some flow is
//! cut (one atomic load otherwise): established flows never pay for it.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

use dashmap::DashMap;

use crate::core::Now;

/// Seconds a tombstone outlives the last packet that found it.
pub const LINGER: u32 = 130;

#[derive(Debug)]
struct Tomb {
    why: u8,
    deadline: AtomicU32,
}

#[derive(Debug, Default)]
pub struct Tombstones {
    map: DashMap<u128, Tomb, ahash::RandomState>,
    len: AtomicUsize,
}

impl Tombstones {
    /// Remembers the keys of a cut flow.
    pub(super) fn bury(&self, keys: &[u128], why: u8, now: Now) {
        for k in keys {
            let t = Tomb { why, deadline: AtomicU32::new(now.secs().saturating_add(LINGER)) };
            if self.map.insert(*k, t).is_none() {
                self.len.fetch_add(1, Relaxed);
            }
        }
    }

    /// Why the flow of `key` was cut, if it was and its tombstone is live.
    #[inline]
    pub(super) fn find(&self, key: u128, now: Now, commit: bool) -> Option<u8> {
        if self.len.load(Relaxed) == 0 {
            return None;
        }
        let t = self.map.get(&key)?;
        if t.deadline.load(Relaxed) <= now.secs() {
            return None;
        }
        if commit {
            t.deadline.store(now.secs().saturating_add(LINGER), Relaxed);
        }
        Some(t.why)
    }

    /// Forgets expired tombstones.
    pub(super) fn sweep(&self, now: Now) {
        if self.len.load(Relaxed) == 0 {
            return;
        }
        let mut gone = 0;
        self.map.retain(|_, t| {
            let keep = t.deadline.load(Relaxed) > now.secs();
            gone += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(gone, Relaxed);
    }

    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tombstone_lives_while_found_and_goes_after() {
        let t = Tombstones::default();
        assert_eq!(t.find(1, Now::from_secs(10), true), None);
        t.bury(&[1, 2], 7, Now::from_secs(10));
        assert_eq!(t.len(), 2);
        assert_eq!(t.find(2, Now::from_secs(100), true), Some(7), "refreshed to 230");
        assert_eq!(t.find(1, Now::from_secs(141), false), None, "1 was not found since 10");
        t.sweep(Now::from_secs(141));
        assert_eq!(t.len(), 1);
        assert_eq!(t.find(2, Now::from_secs(229), false), Some(7));
        t.sweep(Now::from_secs(231));
        assert!(t.is_empty());
    }
}
