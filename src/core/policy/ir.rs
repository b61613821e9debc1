//! One rule form for both APIs, as Felix sees them: a Kubernetes `NetworkPolicy` is a
//! Calico policy of order 1000 whose rules all `Allow` (Calico's own conversion); a
//! Calico policy's rules are taken as they are. Every pod selector becomes a [`SetKey`]
//! (the pods of a scope whose labels match), whose members are an IP set.

use std::sync::Arc;

use super::model::{
    CalicoPolicy, CalicoPort, EntityRule, K8sPeer, K8sPort, K8sRule, NetworkPolicy, PolicyKey, PolicyKind, PortRef,
    RuleAction,
};
use super::selector::Selector;
use crate::core::Ipv4Net;

/// Where a set's pods are looked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// One namespace (a namespaced policy's own).
    Namespace(String),
    /// The namespaces whose labels match.
    Namespaces(Selector),
    All,
}

/// A set of pods: those in `scope` whose labels match `pods`. Its members (their
/// IPs) are an IP set, shared by every rule that names the same set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetKey {
    pub scope: Scope,
    pub pods: Selector,
}

/// A port condition: a range, or a named port (resolved on the pod at that end).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortAlt {
    /// `proto: None` takes the rule's protocol (Calico); Kubernetes ports carry theirs.
    Range {
        proto: Option<u8>,
        lo: u16,
        hi: u16,
    },
    Named {
        proto: u8,
        name: String,
    },
}

/// One alternative of a rule's peer: in `set` (when given) and in one of `nets` (when
/// any) and in none of `not_nets`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peer {
    pub set: Option<SetKey>,
    pub nets: Vec<Ipv4Net>,
    pub not_nets: Vec<Ipv4Net>,
}

/// One end of a rule. `alts` is never empty (a single unconstrained alternative = any
/// address); `ports` empty = any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    pub alts: Vec<Peer>,
    pub not_set: Option<SetKey>,
    pub ports: Vec<PortAlt>,
    pub not_ports: Vec<PortAlt>,
}

impl Entity {
    pub fn any() -> Entity {
        Entity { alts: vec![Peer::default()], not_set: None, ports: Vec::new(), not_ports: Vec::new() }
    }
    /// Every set the entity names.
    pub fn sets(&self) -> impl Iterator<Item = &SetKey> {
        self.alts.iter().filter_map(|a| a.set.as_ref()).chain(self.not_set.as_ref())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: RuleAction,
    pub proto: Option<u8>,
    pub not_proto: Option<u8>,
    pub src: Entity,
    pub dst: Entity,
}

/// A policy in Felix's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub key: PolicyKey,
    pub order: Option<f64>,
    /// The endpoints it applies to.
    pub applies: SetKey,
    /// `None` when the policy does not have that type.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

/// Calico's order of a Kubernetes NetworkPolicy.
pub const K8S_ORDER: f64 = 1000.0;

impl Policy {
    /// Felix's order: by `order` (unset last), then by name.
    pub fn sort_key(&self) -> (f64, String) {
        (self.order.unwrap_or(f64::INFINITY), self.key.felix_name())
    }
    /// Every set the policy's rules name (its `applies` set is evaluated per endpoint).
    pub fn rule_sets(&self) -> Vec<SetKey> {
        let mut v: Vec<SetKey> = self
            .ingress
            .iter()
            .chain(&self.egress)
            .flatten()
            .flat_map(|r| r.src.sets().chain(r.dst.sets()))
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }
    /// Every named port the rules name, with its protocol.
    pub fn named_ports(&self) -> Vec<(String, u8)> {
        let mut v: Vec<(String, u8)> = self
            .ingress
            .iter()
            .chain(&self.egress)
            .flatten()
            .flat_map(|r| [&r.src, &r.dst])
            .flat_map(|e| e.ports.iter().chain(&e.not_ports))
            .filter_map(|p| match p {
                PortAlt::Named { proto, name } => Some((name.clone(), *proto)),
                PortAlt::Range { .. } => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

fn k8s_port(p: &K8sPort) -> PortAlt {
    let proto = p.protocol.number();
    match &p.port {
        None => PortAlt::Range { proto: Some(proto), lo: 0, hi: u16::MAX },
        Some(PortRef::Number { port, end }) => PortAlt::Range { proto: Some(proto), lo: *port, hi: *end },
        Some(PortRef::Name(name)) => PortAlt::Named { proto, name: name.clone() },
    }
}

fn k8s_peer(ns: &str, p: &K8sPeer) -> Peer {
    match p {
        K8sPeer::IpBlock { cidr, except } => Peer { set: None, nets: vec![*cidr], not_nets: except.clone() },
        K8sPeer::Pods { pods, namespaces } => {
            let scope = match namespaces {
                Some(q) => Scope::Namespaces(q.to_selector()),
                None => Scope::Namespace(ns.to_string()),
            };
            let pods = pods.as_ref().map(|s| s.to_selector()).unwrap_or(Selector::All);
            Peer { set: Some(SetKey { scope, pods }), nets: Vec::new(), not_nets: Vec::new() }
        }
    }
}

/// A Kubernetes rule: the peers (any of them) on the far end, the ports (any of them)
/// on the destination.
fn k8s_rule(ns: &str, r: &K8sRule, ingress: bool) -> Rule {
    let peer = Entity {
        alts: if r.peers.is_empty() {
            vec![Peer::default()]
        } else {
            r.peers.iter().map(|p| k8s_peer(ns, p)).collect()
        },
        not_set: None,
        ports: Vec::new(),
        not_ports: Vec::new(),
    };
    let mut local = Entity::any();
    let ports: Vec<PortAlt> = r.ports.iter().map(k8s_port).collect();
    let (src, dst) = if ingress {
        local.ports = ports;
        (peer, local)
    } else {
        let mut peer = peer;
        peer.ports = ports;
        (local, peer)
    };
    Rule { action: RuleAction::Allow, proto: None, not_proto: None, src, dst }
}

/// Calico's conversion of a Kubernetes policy.
pub fn from_k8s(p: &NetworkPolicy) -> Policy {
    let ns = &p.namespace;
    Policy {
        key: PolicyKey { kind: PolicyKind::NetworkPolicy, namespace: Some(ns.clone()), name: p.name.clone() },
        order: Some(K8S_ORDER),
        applies: SetKey { scope: Scope::Namespace(ns.clone()), pods: p.pod_selector.to_selector() },
        ingress: p.ingress_type.then(|| p.ingress.iter().map(|r| k8s_rule(ns, r, true)).collect()),
        egress: p.egress_type.then(|| p.egress.iter().map(|r| k8s_rule(ns, r, false)).collect()),
    }
}

fn calico_ports(ports: &[CalicoPort], proto: Option<u8>) -> Vec<PortAlt> {
    ports
        .iter()
        .map(|p| match p {
            CalicoPort::Range(lo, hi) => PortAlt::Range { proto: None, lo: *lo, hi: *hi },
            // The decoder let ports in only with a protocol that has them.
            CalicoPort::Name(n) => PortAlt::Named { proto: proto.unwrap_or(0), name: n.clone() },
        })
        .collect()
}

/// A Calico entity: its selector and namespace selector name one set (scoped to the
/// policy's namespace unless `namespaceSelector` says otherwise; a global policy's
/// selectors see every namespace).
fn calico_entity(ns: Option<&str>, e: &EntityRule, proto: Option<u8>) -> Entity {
    let scope = match (&e.namespace_selector, ns) {
        (Some(q), _) => Scope::Namespaces(q.clone()),
        (None, Some(ns)) => Scope::Namespace(ns.to_string()),
        (None, None) => Scope::All,
    };
    let set = (e.selector.is_some() || e.namespace_selector.is_some())
        .then(|| SetKey { scope: scope.clone(), pods: e.selector.clone().unwrap_or(Selector::All) });
    Entity {
        alts: vec![Peer { set, nets: e.nets.clone(), not_nets: e.not_nets.clone() }],
        not_set: e.not_selector.clone().map(|pods| SetKey { scope, pods }),
        ports: calico_ports(&e.ports, proto),
        not_ports: calico_ports(&e.not_ports, proto),
    }
}

pub fn from_calico(p: &CalicoPolicy) -> Policy {
    let ns = p.namespace.as_deref();
    let kind = if ns.is_some() { PolicyKind::CalicoNetworkPolicy } else { PolicyKind::GlobalNetworkPolicy };
    let scope = match (ns, &p.namespace_selector) {
        (Some(ns), _) => Scope::Namespace(ns.to_string()),
        (None, Some(q)) => Scope::Namespaces(q.clone()),
        (None, None) => Scope::All,
    };
    let rules = |rs: &[super::model::CalicoRule]| -> Vec<Rule> {
        rs.iter()
            .map(|r| {
                let proto = r.protocol.map(|p| p.0);
                Rule {
                    action: r.action,
                    proto,
                    not_proto: r.not_protocol.map(|p| p.0),
                    src: calico_entity(ns, &r.source, proto),
                    dst: calico_entity(ns, &r.destination, proto),
                }
            })
            .collect()
    };
    Policy {
        key: PolicyKey { kind, namespace: p.namespace.clone(), name: p.name.clone() },
        order: p.order,
        applies: SetKey { scope, pods: p.selector.clone() },
        ingress: p.ingress_type.then(|| rules(&p.ingress)),
        egress: p.egress_type.then(|| rules(&p.egress)),
    }
}

/// What the engine keeps of a policy: its rules and, for traces and logs, its name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyInfo {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
    /// Calico's order as written (`None`: unset, sorts last).
    pub order: Option<String>,
}

impl Policy {
    pub fn info(&self) -> Arc<PolicyInfo> {
        Arc::new(PolicyInfo {
            kind: self.key.kind,
            namespace: self.key.namespace.clone(),
            name: self.key.name.clone(),
            order: self.order.map(|o| o.to_string()),
        })
    }
}
