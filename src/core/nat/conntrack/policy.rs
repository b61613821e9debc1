//! What network policy asks of conntrack (see `core::policy::recheck`): a flow by its
//! original tuple, a walk over every live flow, and the cut of a flow a policy change
//! denies — its entry removed, its tuples made tombstones.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::{Conntrack, Entry};
use crate::core::Now;
use crate::core::nat::Tuple;

impl Conntrack {
    /// The live entry of a flow by its original tuple.
    pub fn entry(&self, original: &Tuple, now: Now) -> Option<Arc<Entry>> {
        self.map.get(&original.key()).filter(|e| e.original == *original && e.is_live(now)).map(|e| e.clone())
    }

    /// Runs `f` on every live flow (once each), under the map's shard read locks: `f`
    /// may change a flow's atomics but not the map.
    pub fn for_each_flow(&self, now: Now, mut f: impl FnMut(&Entry)) {
        for r in self.map.iter() {
            if r.original.key() == *r.key() && r.is_live(now) {
                f(r.value());
            }
        }
    }

    /// Cuts a flow a policy change denies: its entry goes, and both of its tuples become
    /// tombstones carrying `why`, so that its next packets, either way, are dropped as
    /// that (see [`tombstone::Tombstones`]).
    pub fn cut(&self, e: &Arc<Entry>, why: u8, now: Now) {
        self.tombstones.bury(&[e.original.key(), e.reply.key()], why, now);
        let mut gone = false;
        for k in [e.reply.key(), e.original.key()] {
            if self.map.remove_if(&k, |_, m| Arc::ptr_eq(m, e)).is_some() {
                self.filter.sub(k);
                gone |= k == e.original.key();
            }
        }
        if gone {
            self.entries.fetch_sub(1, Relaxed);
        }
    }

    /// The tombstone of a cut flow this packet belongs to (its `why`), refreshed when
    /// `commit`. Only a new flow's packet asks, and only while some flow is cut.
    #[inline]
    pub fn tombstone(&self, t: &Tuple, now: Now, commit: bool) -> Option<u8> {
        self.tombstones.find(t.key(), now, commit)
    }
}
