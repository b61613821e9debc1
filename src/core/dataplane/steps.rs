//! What the walk's stages hand each other and the walk (`Ctx`, in the module above):
//! the NAT stage's outcome, the trace's view of a matched route, and the record of a
//! walk a run of frames replays. A leaf of the walk: the stages (`egress`, `nat`,
//! `run`) are `impl Ctx` blocks over the module above, which names only these types,
//! so the walk's files form no import cycle.

use crate::core::Action;
use crate::core::counters::Counter;
use crate::core::nat::conntrack::Hit;
use crate::core::route::{Matched, RouteTarget};
use crate::core::tables::Tables;
use crate::core::trace::{PortRef, RouteRef};
use crate::wire::MacAddr;

/// What the NAT stage decided.
pub(super) enum Nat {
    /// Not a NATed flow: route as is.
    Untracked,
    /// A tracked flow, rewritten; `original` is the tuple before NAT.
    Tracked,
    /// The packet was answered or dropped here.
    Done(Action),
}

/// The matched route for the trace.
pub(super) fn route_ref(t: &Tables, m: &Matched) -> RouteRef {
    match m.target {
        RouteTarget::Pod(p) => RouteRef::Link { dst: m.prefix.addr(), port: PortRef::of(t, p) },
        RouteTarget::Peer { gateway, .. } => RouteRef::Peer { prefix: m.prefix, gateway },
        RouteTarget::Local => RouteRef::Local { dst: m.prefix.addr() },
        RouteTarget::Host => RouteRef::Host,
        RouteTarget::Unreachable => RouteRef::Unreachable { prefix: m.prefix },
    }
}

/// Counters one recorded walk may bump (a decapsulation bumps four at most).
pub(super) const MAX_COUNTED: usize = 8;

/// What the walk of a run's first frame did (filled through `Ctx::rec`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Recorded {
    pub(super) counters: [Counter; MAX_COUNTED],
    pub(super) counted: usize,
    /// The conntrack hit the walk applied.
    pub(super) hit: Option<Hit>,
    /// The packet's checksum was taken as partial.
    pub(super) partial: bool,
    pub(super) delivery: Option<Delivery>,
    /// Something was done that a replay would not repeat.
    pub(super) replayable: bool,
}

/// How the packet left: to a local port.
#[derive(Debug, Clone, Copy)]
pub(super) struct Delivery {
    pub(super) dec_ttl: bool,
    pub(super) finish: bool,
    pub(super) macs: (MacAddr, MacAddr),
}

impl Recorded {
    pub(super) fn new() -> Self {
        Recorded {
            counters: [Counter::RxVxlan; MAX_COUNTED],
            counted: 0,
            hit: None,
            partial: false,
            delivery: None,
            replayable: true,
        }
    }

    #[inline]
    pub(super) fn counted(&mut self, c: Counter) {
        match self.counters.get_mut(self.counted) {
            Some(slot) => {
                *slot = c;
                self.counted += 1;
            }
            None => self.replayable = false,
        }
    }

    /// The walk delivered the packet to a local port: with a TTL decrement, the
    /// checksum finished in software, these MACs.
    pub(super) fn delivered(&mut self, dec_ttl: bool, finish: bool, macs: (MacAddr, MacAddr)) {
        self.delivery = Some(Delivery { dec_ttl, finish, macs });
    }
}
