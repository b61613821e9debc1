//! A policy change and the flows already running: every flow records the policy
//! generation it was admitted under; after a change, [`recheck`] takes each flow of an
//! older generation through the new policy (its original orientation, on its final
//! tuple; both orientations for one picked up mid-stream) and cuts those it denies.
//! A cut flow's entry goes and its tuples become tombstones: its packets are dropped and
//! counted from then on, both ways (see `conntrack::tombstone`) — stricter than Calico,
//! which leaves established connections alone. The control plane runs it after publishing a table and once a second, so an
//! existing connection is cut within a second of the change.
//!
//! Heads up: a flow admitted while a table was being published may record the older
//! generation; the generation check is what makes the next re-check look at it.

use super::Direction;
use super::stage::{self, Quiet};
use crate::core::nat::Tuple;
use crate::core::nat::conntrack::Entry;
use crate::core::{Counter, Dataplane, Now};

/// Why a flow was cut (its tombstone's mark): the direction whose policy denied it.
pub const CUT_INGRESS: u8 = 1;
pub const CUT_EGRESS: u8 = 2;

/// What a re-check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rechecked {
    /// The generation now checked.
    pub generation: u64,
    /// Flows looked at (admitted under an older generation).
    pub checked: usize,
    /// Flows cut.
    pub cut: usize,
}

/// The flow's final tuple: original source (before SNAT), DNAT target.
fn final_tuple(e: &Entry) -> Tuple {
    Tuple {
        proto: e.original.proto,
        src: e.original.src,
        dst: e.reply.src,
        sport: e.original.sport,
        dport: e.reply.sport,
    }
}

/// Re-checks the flows admitted before the current table's generation; `None` when the
/// table is still the one of `since` (nothing to do). Counts cut flows in counter block
/// `block` (the caller's own).
pub fn recheck(dp: &Dataplane, now: Now, since: u64, block: usize) -> Option<Rechecked> {
    let t = dp.tables();
    let table = &t.policy;
    let generation = table.generation();
    if generation == since {
        return None;
    }
    let gen32 = generation as u32;
    let local = |a| t.routes.is_local_addr(a);
    let mut out = Rechecked { generation, ..Rechecked::default() };
    let mut cut = Vec::new();
    dp.conntrack.for_each_flow(now, |e| {
        if e.policy_gen.load(std::sync::atomic::Ordering::Relaxed) == gen32 {
            return;
        }
        out.checked += 1;
        match stage::admit(table, &final_tuple(e), e.policy_both(), local, &mut Quiet) {
            Ok(()) => e.admitted(gen32, false),
            Err(d) => cut.push((e.original, if d.dir == Direction::Ingress { CUT_INGRESS } else { CUT_EGRESS })),
        }
    });
    // Cut outside the walk: the walk holds the map's read locks.
    for (original, why) in cut {
        if let Some(e) = dp.conntrack.entry(&original, now) {
            dp.conntrack.cut(&e, why, now);
            out.cut += 1;
        }
    }
    dp.counters.add(block, Counter::PolicyCut, out.cut as u64);
    Some(out)
}
