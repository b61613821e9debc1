//! The early-drop candidates: two bounded FIFOs of original keys (see the module above
//! for the tiers that read them) and the thresholds the table and the sweep share. A
//! leaf: the conntrack table holds a `Candidates` without naming the eviction code,
//! which is written against the table (`impl Conntrack` in the module above).

use std::collections::VecDeque;
use std::sync::Mutex;

/// Stale front keys dropped per push (keeps the queue short without a scan).
const PRUNE_PER_PUSH: usize = 2;
/// How long a flow waits for its first answer before it is the first to go, and the
/// least an unassured flow lives under pressure (one second: a handshake through a
/// loaded node, well below TCP's first SYN retransmission).
pub const GRACE_NS: u64 = 1_000_000_000;
/// From this share of `max` (percent) on, the sweep removes unassured flows past the grace
/// period (the kernel's gc worker: 95 %).
pub const PRESSURE_PERCENT: usize = 95;

/// One bounded FIFO of (original key, nanoseconds when the flow was entered).
pub(super) struct Queue {
    keys: Mutex<VecDeque<(u128, u64)>>,
    cap: usize,
}

impl Queue {
    fn new(cap: usize) -> Queue {
        Queue { keys: Mutex::new(VecDeque::new()), cap }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u128, u64)>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, key: u128, born: u64, still_candidate: impl Fn(u128) -> bool) {
        let mut q = self.lock();
        for _ in 0..PRUNE_PER_PUSH {
            match q.front() {
                Some(&(k, _)) if !still_candidate(k) => {
                    q.pop_front();
                }
                _ => break,
            }
        }
        if q.len() >= self.cap {
            q.pop_front();
        }
        q.push_back((key, born));
    }

    /// The front key, if it was entered at or before `cutoff`.
    pub(super) fn pop_if_born_by(&self, cutoff: u64) -> Option<(u128, u64)> {
        let mut q = self.lock();
        let &(k, born) = q.front()?;
        (born <= cutoff).then(|| {
            q.pop_front();
            (k, born)
        })
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The flows that may be given up, in the two orders the tiers read them.
pub struct Candidates {
    pub(super) fresh: Queue,
    pub(super) answered: Queue,
}

impl Candidates {
    pub fn new(max: usize) -> Self {
        let cap = max.saturating_mul(2).max(64);
        Candidates { fresh: Queue::new(cap), answered: Queue::new(cap) }
    }

    /// Records a new flow, entered at `born` (ns); `still_candidate` says whether a queued
    /// key still names a flow that could be evicted (called on up to [`PRUNE_PER_PUSH`]
    /// front keys).
    pub fn push(&self, key: u128, born: u64, still_candidate: impl Fn(u128) -> bool) {
        self.fresh.push(key, born, still_candidate);
    }

    /// Records a flow's first answer (it is not assured yet).
    pub fn answered(&self, key: u128, born: u64, still_candidate: impl Fn(u128) -> bool) {
        self.answered.push(key, born, still_candidate);
    }

    pub fn len(&self) -> usize {
        self.fresh.len() + self.answered.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
