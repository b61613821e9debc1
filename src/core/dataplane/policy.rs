//! The policy stage of the walk (step 3 of a new flow, after the service stage and
//! before the conntrack insert): `core::policy`'s verdict on the flow's final tuple, with
//! its trace steps, per-rule counters, `Log` records and drop reasons. An admitted flow
//! is entered in conntrack with the policy generation it passed under; a denied one is
//! dropped, counted by direction, and leaves no entry.

use super::*;
use crate::core::nat::conntrack::Entry;
use crate::core::policy::log::LogRecord;
use crate::core::policy::model::RuleAction;
use crate::core::policy::recheck::CUT_INGRESS;
use crate::core::policy::stage::{self, Denied, Observer};
use crate::core::policy::table::{Compiled, EndpointPolicy, Lookup};
use crate::core::policy::{Direction, PolicyInfo, Verdict};
use crate::core::trace::PolicyVerdict;

/// How an admitted flow's entry is marked.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mark {
    pub generation: u32,
    /// Picked up mid-stream: a re-check wants both orientations allowed.
    pub both: bool,
}

impl Mark {
    pub(super) fn on(self, e: &Entry) {
        e.admitted(self.generation, self.both);
    }
}

/// The drop counter of a denial.
fn reason(d: Denied) -> DropReason {
    match (d.verdict, d.dir) {
        (Verdict::Uncomputable | Verdict::Ambiguous, _) => DropReason::PolicyUncomputable,
        (_, Direction::Ingress) => DropReason::PolicyIngress,
        (_, Direction::Egress) => DropReason::PolicyEgress,
    }
}

/// The drop counter of a cut flow's packet (its tombstone's mark).
pub(super) fn cut_reason(why: u8) -> DropReason {
    if why == CUT_INGRESS { DropReason::PolicyIngress } else { DropReason::PolicyEgress }
}

/// The walk as the policy stage's observer: rule counters, `Log` records, trace steps.
struct Seen<'c, 'a> {
    cx: &'c mut Ctx<'a>,
    tuple: Tuple,
    bytes: usize,
    /// `Log` rules matched in the direction being walked.
    logs: Vec<(std::sync::Arc<PolicyInfo>, usize)>,
}

impl Ctx<'_> {
    /// Felix's chain for the local pod at `a` (`cali-tw-<if>` / `cali-fw-<if>`).
    fn chain_of(&self, dir: Direction, a: Ipv4Addr) -> String {
        match self.t.routes.lookup(a).target {
            RouteTarget::Pod(port) => dir.chain(self.t.pod(port).map_or("?", |p| p.ifname.as_str())),
            _ => dir.chain("?"),
        }
    }

    fn policy_step(
        &mut self,
        dir: Direction,
        a: Ipv4Addr,
        pod: (&str, &str),
        verdict: Verdict,
        rule: Option<&Compiled>,
    ) {
        if !self.tr.enabled {
            return;
        }
        let chain = self.chain_of(dir, a);
        self.tr.step(|| Step::Policy {
            dir,
            pod: (pod.0.to_string(), pod.1.to_string()),
            verdict,
            policy: rule.map(|r| (*r.policy).clone()),
            rule: rule.map(|r| r.index),
            chain,
        });
    }
}

impl Observer for Seen<'_, '_> {
    fn matched(&mut self, dir: Direction, ep: &EndpointPolicy, r: &Compiled) {
        if !self.cx.tr.dry_run {
            r.hits.hit(self.bytes);
        }
        if r.action == RuleAction::Log {
            self.logs.push((r.policy.clone(), r.index));
            let a = match dir {
                Direction::Ingress => self.tuple.dst,
                Direction::Egress => self.tuple.src,
            };
            self.cx.policy_step(dir, a, (&ep.namespace, &ep.name), PolicyVerdict::Log, Some(r));
        }
    }

    fn decided(&mut self, dir: Direction, a: Ipv4Addr, ep: Option<&EndpointPolicy>, s: stage::Step<'_>) {
        let pod = ep.map_or(("?", "?"), |e| (&*e.namespace, &*e.name));
        self.cx.policy_step(dir, a, pod, s.verdict, s.rule);
        if self.cx.tr.dry_run {
            self.logs.clear();
            return;
        }
        for (policy, rule) in self.logs.drain(..) {
            self.cx.dp.policy_log.push(LogRecord {
                now: self.cx.now.0,
                dir,
                pod: (pod.0.to_string(), pod.1.to_string()),
                policy: (*policy).clone(),
                rule,
                tuple: self.tuple,
                verdict: s.verdict,
            });
            self.cx.count(Counter::PolicyLogged);
        }
    }
}

impl Ctx<'_> {
    /// Whether a flow touches a local pod with policy: then it is tracked, NATed or not.
    #[inline]
    pub(super) fn policed(&self, u: &Tuple) -> bool {
        let p = &self.t.policy;
        !p.is_empty() && stage::policed(p, u.src, u.dst)
    }

    /// The verdict of a new flow whose final tuple is `fin` (after DNAT, before SNAT);
    /// `Err` is the drop, counted.
    pub(super) fn police(&mut self, fin: &Tuple, tcp_flags: u8, bytes: usize) -> Result<Mark, Action> {
        let t = self.t;
        let generation = t.policy.generation() as u32;
        if t.policy.is_empty() {
            return Ok(Mark { generation, both: false });
        }
        let pickup = stage::is_pickup(fin, tcp_flags);
        let local = |a| t.routes.is_local_addr(a);
        let mut seen = Seen { cx: self, tuple: *fin, bytes, logs: Vec::new() };
        match stage::admit(&t.policy, fin, pickup, local, &mut seen) {
            Ok(()) => Ok(Mark { generation, both: pickup }),
            Err(d) => {
                if d.verdict == Verdict::Ambiguous {
                    // The other orientation's pod: the receiver of the reverse.
                    let a = match d.dir {
                        Direction::Egress => fin.dst,
                        Direction::Ingress => fin.src,
                    };
                    if let Lookup::Policed(ep) = t.policy.lookup(a) {
                        self.policy_step(d.dir, a, (&ep.namespace, &ep.name), Verdict::Ambiguous, None);
                    }
                }
                Err(self.drop(reason(d)))
            }
        }
    }

    /// A packet without a flow (an ICMP error about no tracked flow, ICMP other than
    /// echo, a protocol without ports) to or from a local pod with policy: its rules
    /// decide for this packet alone (port conditions never match it).
    #[cold]
    #[inline(never)]
    pub(super) fn police_stateless(&mut self, hdr: Hdr) -> Option<Action> {
        let u = Tuple { proto: hdr.proto, src: hdr.src, dst: hdr.dst, sport: 0, dport: 0 };
        if !self.policed(&u) {
            return None;
        }
        self.police(&u, crate::wire::tcp::SYN, ethernet::HEADER_LEN + hdr.total).err()
    }
}
