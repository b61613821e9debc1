//! The verdict of a new flow: the sender's egress chain if the sender is a local pod
//! with policy, then the receiver's ingress chain if the receiver is (Felix's order on
//! one node: `cali-fw-*` of the sender, then `cali-tw-*` of the receiver). Shared by the
//! dataplane's policy stage (which traces, counts and logs through an [`Observer`]) and
//! by [`super::recheck`] (which only wants the answer).

use std::net::Ipv4Addr;

use super::Verdict;
use super::table::{Compiled, Decision, Direction, EndpointPolicy, Local, Lookup, PolicyTable};
use crate::core::nat::Tuple;
use crate::wire::ipv4::PROTO_TCP;

/// What a caller wants to hear of the walk.
pub trait Observer {
    /// A rule matched (a `Log` rule, or the one that decided).
    fn matched(&mut self, _dir: Direction, _ep: &EndpointPolicy, _rule: &Compiled) {}
    /// A direction decided: `ep` is `None` for a pod whose policy is not known.
    fn decided(&mut self, _dir: Direction, _pod: Ipv4Addr, _ep: Option<&EndpointPolicy>, _step: Step<'_>) {}
}

/// Hears nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// How one direction decided.
#[derive(Debug, Clone, Copy)]
pub struct Step<'r> {
    pub verdict: Verdict,
    pub rule: Option<&'r Compiled>,
}

/// A denied flow: the direction that denied it and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub dir: Direction,
    pub verdict: Verdict,
}

fn step(d: Decision, chain: &super::table::Chain) -> Step<'_> {
    use super::model::RuleAction;
    match d {
        Decision::NotIsolated => Step { verdict: Verdict::NoPolicy, rule: None },
        Decision::EndOfTier => Step { verdict: Verdict::EndOfTier, rule: None },
        Decision::Rule { rule, action } => Step {
            verdict: match action {
                RuleAction::Allow => Verdict::Allow,
                RuleAction::Deny => Verdict::Deny,
                RuleAction::Pass => Verdict::Pass,
                RuleAction::Log => Verdict::Log,
            },
            rule: chain.rules.get(rule),
        },
    }
}

/// One orientation of a flow (`t`: its final tuple). `from_host`: the source is this
/// node itself, whose traffic to its pods always passes.
pub fn check(table: &PolicyTable, t: &Tuple, from_host: bool, obs: &mut impl Observer) -> Result<(), Denied> {
    for (dir, pod) in [(Direction::Egress, t.src), (Direction::Ingress, t.dst)] {
        let ep = match table.lookup(pod) {
            Lookup::Free => continue,
            Lookup::Pending => {
                obs.decided(dir, pod, None, Step { verdict: Verdict::Uncomputable, rule: None });
                return Err(Denied { dir, verdict: Verdict::Uncomputable });
            }
            Lookup::Policed(ep) => ep,
        };
        if dir == Direction::Ingress && from_host {
            obs.decided(dir, pod, Some(ep), Step { verdict: Verdict::FromHost, rule: None });
            continue;
        }
        let chain = ep.chain(dir);
        let d = chain.decide(&Local::of(dir, t), |r| obs.matched(dir, ep, r));
        let s = step(d, chain);
        obs.decided(dir, pod, Some(ep), s);
        if !d.allows() {
            return Err(Denied { dir, verdict: s.verdict });
        }
    }
    Ok(())
}

/// Whether the flow touches a local pod with policy (or one not known yet): then it is
/// tracked, NATed or not, so that its replies pass.
#[inline]
pub fn policed(table: &PolicyTable, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
    let p = |a| match table.lookup(a) {
        Lookup::Free => false,
        Lookup::Policed(ep) => ep.policed(),
        Lookup::Pending => true,
    };
    p(src) || p(dst)
}

/// A TCP packet without SYN starting a flow: a connection not seen from its start (one
/// that existed before its pod had policy, or a cut one). Which end opened it is not
/// known, so it passes only when both orientations are allowed.
pub fn is_pickup(t: &Tuple, tcp_flags: u8) -> bool {
    t.proto == PROTO_TCP && tcp_flags & crate::wire::tcp::SYN == 0
}

/// The whole verdict of a new flow: `check` of its orientation, and for a pickup the
/// other orientation too (quietly; its denial is [`Verdict::Ambiguous`]).
pub fn admit(
    table: &PolicyTable,
    t: &Tuple,
    pickup: bool,
    local: impl Fn(Ipv4Addr) -> bool,
    obs: &mut impl Observer,
) -> Result<(), Denied> {
    check(table, t, local(t.src), obs)?;
    if pickup {
        let r = t.inverse();
        if let Err(d) = check(table, &r, local(r.src), &mut Quiet) {
            return Err(Denied { dir: d.dir, verdict: Verdict::Ambiguous });
        }
    }
    Ok(())
}
