//! A policy change and the flows already running: every flow records the policy
//! generation it was admitted under; after a change, [`recheck`] takes each flow of an
//! older generation through the new policy (its original orientation, on its final
//! tuple; both orientations for one picked up mid-stream) and cuts those it denies.
//! A cut flow's packets are dropped and counted from then on, both ways (see
//! `conntrack::CUT_LINGER`) — stricter than Calico, which leaves established connections
//! alone. The control plane runs it after publishing a table and once a second, so an
//! existing connection is cut within a second of the change.
//!
//! Heads up: a flow admitted while a table was being published may record the older
//! generation; the generation check is what makes the next re-check look at it.

use super::Direction;
use super::stage::{self, Quiet};
use crate::core::nat::Tuple;
use crate::core::nat::conntrack::{CUT, CUT_EGRESS, CUT_INGRESS, Entry, POLICY_BOTH};
use crate::core::{Counter, Dataplane, Now};

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
    dp.conntrack.for_each_flow(now, |e| {
        if e.policy_gen.load(std::sync::atomic::Ordering::Relaxed) == gen32 || e.policy_flags() & CUT != 0 {
            return;
        }
        out.checked += 1;
        let f = final_tuple(e);
        let both = e.policy_flags() & POLICY_BOTH != 0;
        match stage::admit(table, &f, both, local, &mut Quiet) {
            Ok(()) => e.admitted(gen32, false),
            Err(d) => {
                let how = if d.dir == Direction::Ingress { CUT_INGRESS } else { CUT_EGRESS };
                dp.conntrack.cut(e, how, now);
                out.cut += 1;
            }
        }
    });
    dp.counters.add(block, Counter::PolicyCut, out.cut as u64);
    Some(out)
}
