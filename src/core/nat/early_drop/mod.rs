//! Early drop: which flow a full table gives up for a new one. As the kernel's
//! `early_drop` (nf_conntrack_core.c), only flows that are not ASSURED (TCP before its
//! handshake completes, UDP before it is a stream) or TCP flows already closing
//! (`tcp_can_early_drop`: FIN_WAIT .. CLOSE) may go; an established, assured flow is
//! never evicted to make room.
//!
//! The kernel scans the new tuple's hash bucket and takes any unassured entry there;
//! under a SYN flood that is as likely a legitimate handshake in progress as a flood
//! entry. ucanal chooses, in this order:
//!
//! 1. a flow still **unreplied after [`GRACE_NS`]**: nobody answered it (a SYN to a
//!    dead address, a query without an answer), oldest first;
//! 2. a flow **answered but not assured**, in the order of its first answer: a
//!    handshake whose SYN-ACK went to a spoofed source (a flood's signature), a
//!    one-shot UDP exchange, a closing flow;
//! 3. any unreplied flow, oldest first: a flood nobody answers leaves nothing else.
//!
//! So a legitimate connection's entry is not given up while it waits for its first
//! answer, as long as the table holds flows of tiers 1 and 2; evicted after its
//! SYN-ACK, its ACK picks the flow up again with the same endpoint and port (the
//! flow hash and the kept source port, as after a restart).
//!
//! Under pressure the sweep goes further (see [`Conntrack::sweep`]): over
//! [`PRESSURE_PERCENT`] of `max`, as the kernel's gc worker over 95 %, every flow
//! that may be dropped early and is older than the grace period is removed, which
//! shortens the timeout of unassured flows to between one and two seconds.
//!
//! The kernel's bucket scan has no equivalent in a sharded map, so this module keeps
//! two FIFOs of original keys: `fresh` (every new flow, with when it was entered) and
//! `answered` (pushed on a flow's first reply while it is not assured).
//!
//! Heads up: keys are never removed from the queues when their flow goes (sweep,
//! flush, assurance); a popped key is checked against the table, stale keys are
//! skipped, and each push also drops stale keys from the front, so each queue stays
//! near the number of candidate flows and never grows past its cap.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::conntrack::{Conntrack, Entry, TcpState};
use crate::core::Now;
use crate::wire::ipv4::PROTO_TCP;

pub mod candidates;
pub use candidates::{Candidates, GRACE_NS, PRESSURE_PERCENT};

/// Keys examined per eviction before the new flow is refused.
pub const EVICTION_TRIES: usize = 64;

impl Entry {
    /// May this flow be evicted for a new one?
    pub fn can_early_drop(&self) -> bool {
        !self.assured()
            || (self.original.proto == PROTO_TCP && (TcpState::FinWait..=TcpState::Close).contains(&self.tcp_state()))
    }
}

/// The eviction tiers, in the order they are tried.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tier {
    UnrepliedPastGrace,
    Answered,
    Unreplied,
}

impl Conntrack {
    /// Makes room for one flow: evicts a flow that may be dropped early, tier by tier
    /// (see the module docs; an expired one found on the way counts too). False when
    /// none was found in [`EVICTION_TRIES`] keys.
    pub(super) fn early_drop(&self, now: Now) -> bool {
        let mut tries = EVICTION_TRIES;
        for tier in [Tier::UnrepliedPastGrace, Tier::Answered, Tier::Unreplied] {
            while tries > 0 {
                let popped = match tier {
                    Tier::UnrepliedPastGrace => self.candidates.fresh.pop_if_born_by(now.0.saturating_sub(GRACE_NS)),
                    Tier::Answered => self.candidates.answered.pop_if_born_by(u64::MAX),
                    Tier::Unreplied => self.candidates.fresh.pop_if_born_by(u64::MAX),
                };
                let Some((key, _)) = popped else { break };
                tries -= 1;
                let Some(e) = self.map.get(&key).map(|r| r.value().clone()) else { continue };
                if e.original.key() != key {
                    continue;
                }
                let evictable = match tier {
                    // An answered flow waits in the answered queue.
                    Tier::UnrepliedPastGrace | Tier::Unreplied => !e.seen_reply() && e.can_early_drop(),
                    Tier::Answered => e.can_early_drop(),
                };
                if (!e.is_live(now) || evictable) && self.remove_entry(&e) {
                    return true;
                }
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

    /// True while the table holds [`PRESSURE_PERCENT`] of its maximum or more.
    pub fn under_pressure(&self) -> bool {
        self.len().saturating_mul(100) >= self.max.saturating_mul(PRESSURE_PERCENT)
    }
}

#[cfg(test)]
mod tests;
