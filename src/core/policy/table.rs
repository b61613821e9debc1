//! The compiled policy of this node's pods, as the dataplane reads it: per local pod and
//! direction, the ordered rules of the policies that select it (Felix's `cali-tw-<if>`
//! and `cali-fw-<if>` chains), and for each peer address the few rules whose selectors
//! include it (its class). A new flow's decision is a lookup of the pod, a lookup of the
//! peer's class, and a walk of that class's rules only: it does not grow with the number
//! of policies in the cluster, only with the rules that could match this very peer.
//!
//! The walk is Felix's: the first rule that matches decides (`Log` records and goes
//! on); `Pass` ends the tier, and then the namespace's profile allows; no match in a pod
//! some policy selects is "Drop if no policies passed packet"; a pod no policy selects
//! (for that direction) is not isolated and its namespace's profile allows.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::ir::PolicyInfo;
use super::model::RuleAction;
use super::sets::PortSet;
use crate::core::Ipv4Net;
use crate::core::nat::Tuple;
use crate::core::nat::service::Hits;
use crate::wire::ipv4::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};

/// Which way a pod's policy applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// To the pod (Felix's `cali-tw-*`: "to workload").
    Ingress,
    /// From the pod (`cali-fw-*`: "from workload").
    Egress,
}

impl Direction {
    /// Felix's chain for a pod's interface.
    pub fn chain(self, ifname: &str) -> String {
        match self {
            Direction::Ingress => format!("cali-tw-{ifname}"),
            Direction::Egress => format!("cali-fw-{ifname}"),
        }
    }
}

/// A port condition on one end of a flow, resolved.
#[derive(Debug, Clone)]
pub(super) enum PortMatch {
    /// `proto: None` = the rule's protocol.
    Range { proto: Option<u8>, lo: u16, hi: u16 },
    /// A named port on the peer: its port on that address.
    Named { proto: u8, set: Arc<PortSet> },
}

impl PortMatch {
    #[inline]
    fn matches(&self, proto: u8, addr: u32, port: u16) -> bool {
        match self {
            PortMatch::Range { proto: p, lo, hi } => p.is_none_or(|p| p == proto) && (*lo..=*hi).contains(&port),
            PortMatch::Named { proto: p, set } => *p == proto && set.get(&addr) == Some(&port),
        }
    }
}

/// The address part of one peer alternative.
#[derive(Debug, Clone, Default)]
pub(super) struct Nets {
    pub nets: Box<[Ipv4Net]>,
    pub not_nets: Box<[Ipv4Net]>,
}

impl Nets {
    #[inline]
    fn matches(&self, a: Ipv4Addr) -> bool {
        (self.nets.is_empty() || self.nets.iter().any(|n| n.contains(a)))
            && !self.not_nets.iter().any(|n| n.contains(a))
    }
}

/// One rule of a pod's chain, with its selectors already applied to the pod itself.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub policy: Arc<PolicyInfo>,
    /// The rule's index in its policy's ingress or egress list.
    pub index: usize,
    pub action: RuleAction,
    pub(super) proto: Option<u8>,
    pub(super) not_proto: Option<u8>,
    /// The pod's own port (destination for ingress, source for egress): any of them.
    pub(super) local_ports: Box<[PortMatch]>,
    pub(super) local_not_ports: Box<[PortMatch]>,
    /// The peer's alternatives (their selector part is in the peer's class).
    pub(super) peer: Box<[Nets]>,
    pub(super) peer_ports: Box<[PortMatch]>,
    pub(super) peer_not_ports: Box<[PortMatch]>,
    pub hits: Arc<Hits>,
}

fn has_ports(proto: u8) -> bool {
    matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP | 136)
}

impl Compiled {
    /// Whether a flow matches, given which peer alternatives its selectors allow.
    #[inline]
    fn matches(&self, f: &Local, alts: u64) -> bool {
        if self.proto.is_some_and(|p| p != f.proto) || self.not_proto == Some(f.proto) {
            return false;
        }
        let ported = !(self.local_ports.is_empty()
            && self.local_not_ports.is_empty()
            && self.peer_ports.is_empty()
            && self.peer_not_ports.is_empty());
        if ported {
            // Port conditions only match protocols that have ports.
            if !has_ports(f.proto) {
                return false;
            }
            let local = |m: &PortMatch| m.matches(f.proto, f.local_addr, f.local_port);
            let peer = |m: &PortMatch| m.matches(f.proto, u32::from(f.peer), f.peer_port);
            if (!self.local_ports.is_empty() && !self.local_ports.iter().any(local))
                || self.local_not_ports.iter().any(local)
                || (!self.peer_ports.is_empty() && !self.peer_ports.iter().any(peer))
                || self.peer_not_ports.iter().any(peer)
            {
                return false;
            }
        }
        let mut m = alts;
        while m != 0 {
            let k = m.trailing_zeros() as usize;
            if self.peer.get(k).is_some_and(|n| n.matches(f.peer)) {
                return true;
            }
            m &= m - 1;
        }
        false
    }
}

/// A flow as one pod's chain sees it.
#[derive(Debug, Clone, Copy)]
pub struct Local {
    pub proto: u8,
    pub peer: Ipv4Addr,
    pub peer_port: u16,
    pub local_addr: u32,
    pub local_port: u16,
}

impl Local {
    /// The flow `t` (final addresses) from the side of its source (egress) or
    /// destination (ingress).
    pub fn of(dir: Direction, t: &Tuple) -> Local {
        match dir {
            Direction::Ingress => Local {
                proto: t.proto,
                peer: t.src,
                peer_port: t.sport,
                local_addr: u32::from(t.dst),
                local_port: t.dport,
            },
            Direction::Egress => Local {
                proto: t.proto,
                peer: t.dst,
                peer_port: t.dport,
                local_addr: u32::from(t.src),
                local_port: t.sport,
            },
        }
    }
}

/// A class: the rules (index, peer alternatives its selectors allow as a bit mask) a
/// peer address could match, in chain order.
pub(super) type Class = Box<[(u32, u64)]>;

/// One direction of a pod's policy.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    /// Some policy selects the pod for this direction.
    pub isolated: bool,
    pub rules: Box<[Compiled]>,
    /// Peer address -> class (absent: class 0, an address no set of these rules holds).
    pub(super) classes: HashMap<u32, u32, ahash::RandomState>,
    /// Per class, the rules the peer could match, in order.
    pub(super) class_rules: Box<[Class]>,
}

/// How a chain decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No policy selects the pod this way: the namespace's profile allows.
    NotIsolated,
    /// Rule `rule` (an index into [`Chain::rules`]) ended the walk: Allow, Deny or Pass.
    Rule { rule: usize, action: RuleAction },
    /// "Drop if no policies passed packet".
    EndOfTier,
}

impl Decision {
    pub fn allows(self) -> bool {
        match self {
            Decision::NotIsolated => true,
            Decision::EndOfTier => false,
            Decision::Rule { action, .. } => action != RuleAction::Deny,
        }
    }
}

impl Chain {
    /// Walks the rules the flow's peer could match; `matched` sees every rule that
    /// matches (a `Log` rule, then the one that decides).
    #[inline]
    pub fn decide(&self, f: &Local, mut matched: impl FnMut(&Compiled)) -> Decision {
        if !self.isolated {
            return Decision::NotIsolated;
        }
        let class =
            if self.classes.is_empty() { 0 } else { self.classes.get(&u32::from(f.peer)).copied().unwrap_or(0) };
        for &(j, alts) in self.class_rules.get(class as usize).map(|c| &c[..]).unwrap_or(&[]) {
            let r = &self.rules[j as usize];
            if !r.matches(f, alts) {
                continue;
            }
            matched(r);
            match r.action {
                RuleAction::Log => continue,
                action => return Decision::Rule { rule: j as usize, action },
            }
        }
        Decision::EndOfTier
    }
}

/// A local pod's compiled policy.
#[derive(Debug, Clone)]
pub struct EndpointPolicy {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub ingress: Chain,
    pub egress: Chain,
}

impl EndpointPolicy {
    pub fn chain(&self, dir: Direction) -> &Chain {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
    /// Isolated in some direction: its flows are tracked.
    pub fn policed(&self) -> bool {
        self.ingress.isolated || self.egress.isolated
    }
}

/// What the table knows of an address.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'t> {
    /// Not a local pod with policy: nothing to enforce.
    Free,
    Policed(&'t EndpointPolicy),
    /// A local pod whose policy is not known yet (the engine is not in sync).
    Pending,
}

/// The snapshot in [`crate::core::tables::Tables`]: cheap to clone, replaced whole.
#[derive(Debug, Clone)]
pub struct PolicyTable {
    pub(super) generation: u64,
    pub(super) in_sync: bool,
    pub(super) pod_cidr: Option<Ipv4Net>,
    pub(super) endpoints: Arc<HashMap<u32, Arc<EndpointPolicy>, ahash::RandomState>>,
}

impl Default for PolicyTable {
    /// No policy: nothing is enforced, nothing extra is tracked.
    fn default() -> Self {
        PolicyTable { generation: 0, in_sync: true, pod_cidr: None, endpoints: Arc::default() }
    }
}

impl PolicyTable {
    /// Bumped whenever what is enforced changes; a flow records the one it was admitted
    /// under (see `recheck`).
    pub fn generation(&self) -> u64 {
        self.generation
    }
    /// Nothing to enforce on this node: the walk skips the policy stage.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.in_sync && self.endpoints.is_empty()
    }
    #[inline]
    pub fn lookup(&self, a: Ipv4Addr) -> Lookup<'_> {
        if !self.in_sync {
            return match self.pod_cidr {
                Some(c) if c.contains(a) => Lookup::Pending,
                _ => Lookup::Free,
            };
        }
        if self.pod_cidr.is_some_and(|c| !c.contains(a)) {
            return Lookup::Free;
        }
        match self.endpoints.get(&u32::from(a)) {
            Some(e) => Lookup::Policed(e),
            None => Lookup::Free,
        }
    }
    /// Every local pod with policy, by address.
    pub fn endpoints(&self) -> impl Iterator<Item = (Ipv4Addr, &EndpointPolicy)> {
        self.endpoints.iter().map(|(a, e)| (Ipv4Addr::from(*a), &**e))
    }
}
