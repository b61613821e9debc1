//! One local pod's chains from the policies that select it: each rule's conditions on
//! the pod itself (its selectors, nets, named ports) are decided here, once; what is
//! left is about the peer and the ports, and each peer address gets its class — the
//! rules whose selectors hold for it — so a flow walks only those.

use std::collections::HashMap;
use std::sync::Arc;

use super::ir::{self, Entity, PortAlt, SetKey};
use super::model::{Labels, Pod, PolicyKey};
use super::sets::{Sets, protocol_of, selects};
use super::table::{Chain, Class, Compiled, Direction, EndpointPolicy, Nets, PortMatch};
use crate::core::nat::service::Hits;

/// Per-rule counters, kept across recompiles: `(policy, direction, rule index)`.
pub(super) type HitsRegistry = HashMap<(PolicyKey, Direction, usize), Arc<Hits>>;

/// A rule's peer names at most this many alternatives per compiled rule (one bit
/// each); a Kubernetes rule with more peers is split into several, which allow alike.
const MAX_ALTS: usize = 64;

/// What compiling needs to know about the world.
pub(super) struct World<'a> {
    pub sets: &'a Sets,
    pub hits: &'a mut HitsRegistry,
}

/// The pod's own end of a rule: does it hold for the pod, and with which ports.
fn local_end(e: &Entity, pod: &Pod, ns_labels: &Labels) -> Option<(Vec<PortMatch>, Vec<PortMatch>)> {
    let ip = pod.ip?;
    let in_set = |s: &SetKey| selects(s, pod, ns_labels);
    let alt_ok = |a: &ir::Peer| {
        a.set.as_ref().is_none_or(in_set)
            && (a.nets.is_empty() || a.nets.iter().any(|n| n.contains(ip)))
            && !a.not_nets.iter().any(|n| n.contains(ip))
    };
    if !e.alts.iter().any(alt_ok) || e.not_set.as_ref().is_some_and(in_set) {
        return None;
    }
    // Named ports resolve on the pod itself; one it does not have matches nothing.
    let resolve = |ports: &[PortAlt]| -> Vec<PortMatch> {
        ports
            .iter()
            .filter_map(|p| match p {
                PortAlt::Range { proto, lo, hi } => Some(PortMatch::Range { proto: *proto, lo: *lo, hi: *hi }),
                PortAlt::Named { proto, name } => pod
                    .named_port(name, protocol_of(*proto)?)
                    .map(|n| PortMatch::Range { proto: Some(*proto), lo: n, hi: n }),
            })
            .collect()
    };
    let ports = resolve(&e.ports);
    if !e.ports.is_empty() && ports.is_empty() {
        return None;
    }
    Some((ports, resolve(&e.not_ports)))
}

/// The peer's ports: named ones through the named-port sets.
fn peer_ports(ports: &[PortAlt], sets: &Sets) -> Vec<PortMatch> {
    ports
        .iter()
        .map(|p| match p {
            PortAlt::Range { proto, lo, hi } => PortMatch::Range { proto: *proto, lo: *lo, hi: *hi },
            PortAlt::Named { proto, name } => PortMatch::Named {
                proto: *proto,
                set: sets.named_members(&(name.clone(), *proto)).cloned().unwrap_or_default(),
            },
        })
        .collect()
}

/// A compiled rule and the sets that decide its peer's class.
struct Pending {
    rule: Compiled,
    alt_sets: Vec<Option<SetKey>>,
    not_set: Option<SetKey>,
}

fn rules_of(pod: &Pod, ns_labels: &Labels, policies: &[&ir::Policy], dir: Direction, w: &mut World) -> Vec<Pending> {
    let mut out = Vec::new();
    for p in policies {
        let rules = match dir {
            Direction::Ingress => p.ingress.as_deref(),
            Direction::Egress => p.egress.as_deref(),
        };
        let info = p.info();
        for (index, r) in rules.unwrap_or(&[]).iter().enumerate() {
            let (local, peer) = match dir {
                Direction::Ingress => (&r.dst, &r.src),
                Direction::Egress => (&r.src, &r.dst),
            };
            let Some((local_ports, local_not_ports)) = local_end(local, pod, ns_labels) else { continue };
            let hits = w.hits.entry((p.key.clone(), dir, index)).or_default().clone();
            for chunk in peer.alts.chunks(MAX_ALTS) {
                out.push(Pending {
                    rule: Compiled {
                        policy: info.clone(),
                        index,
                        action: r.action,
                        proto: r.proto,
                        not_proto: r.not_proto,
                        local_ports: local_ports.clone().into(),
                        local_not_ports: local_not_ports.clone().into(),
                        peer: chunk
                            .iter()
                            .map(|a| Nets { nets: a.nets.clone().into(), not_nets: a.not_nets.clone().into() })
                            .collect(),
                        peer_ports: peer_ports(&peer.ports, w.sets).into(),
                        peer_not_ports: peer_ports(&peer.not_ports, w.sets).into(),
                        hits: hits.clone(),
                    },
                    alt_sets: chunk.iter().map(|a| a.set.clone()).collect(),
                    not_set: peer.not_set.clone(),
                });
            }
        }
    }
    out
}

/// Merges two lists sorted by rule index, OR-ing the masks of one rule.
fn merge(a: &[(u32, u64)], b: &[(u32, u64)]) -> Vec<(u32, u64)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let next = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                i += 1;
                j += 1;
                (x.0, x.1 | y.1)
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                i += 1;
                *x
            }
            (Some(x), None) => {
                i += 1;
                *x
            }
            (_, Some(y)) => {
                j += 1;
                *y
            }
            (None, None) => break,
        };
        out.push(next);
    }
    out
}

/// The chain of one direction: its rules and every peer address's class.
fn chain(pending: Vec<Pending>, isolated: bool, sets: &Sets) -> Chain {
    let mut default: Vec<(u32, u64)> = Vec::new();
    let mut per_ip: HashMap<u32, Vec<(u32, u64)>, ahash::RandomState> = HashMap::default();
    let mut excluded: HashMap<u32, Vec<u32>, ahash::RandomState> = HashMap::default();
    for (j, p) in pending.iter().enumerate() {
        let j = j as u32;
        let mut free = 0u64;
        for (k, s) in p.alt_sets.iter().enumerate() {
            let bit = 1u64 << k;
            match s {
                None => free |= bit,
                Some(s) => {
                    for ip in sets.members(s).map(|m| m.iter()).into_iter().flatten() {
                        let l = per_ip.entry(*ip).or_default();
                        match l.last_mut() {
                            Some(last) if last.0 == j => last.1 |= bit,
                            _ => l.push((j, bit)),
                        }
                    }
                }
            }
        }
        if free != 0 {
            default.push((j, free));
        }
        if let Some(n) = &p.not_set {
            for ip in sets.members(n).map(|m| m.iter()).into_iter().flatten() {
                excluded.entry(*ip).or_default().push(j);
                per_ip.entry(*ip).or_default();
            }
        }
    }
    let mut interned: HashMap<Vec<(u32, u64)>, u32> = HashMap::new();
    let mut class_rules: Vec<Class> = vec![default.clone().into()];
    interned.insert(default.clone(), 0);
    let mut classes = HashMap::default();
    for (ip, list) in per_ip {
        let mut l = merge(&list, &default);
        if let Some(x) = excluded.get(&ip) {
            l.retain(|(j, _)| !x.contains(j));
        }
        let id = *interned.entry(l.clone()).or_insert_with(|| {
            class_rules.push(l.into());
            (class_rules.len() - 1) as u32
        });
        if id != 0 {
            classes.insert(ip, id);
        }
    }
    Chain { isolated, rules: pending.into_iter().map(|p| p.rule).collect(), classes, class_rules: class_rules.into() }
}

/// The policy of a local pod, from the policies that select it (in Felix's order).
pub(super) fn endpoint(pod: &Pod, ns_labels: &Labels, policies: &[&ir::Policy], w: &mut World) -> EndpointPolicy {
    let mut sorted: Vec<&ir::Policy> = policies.to_vec();
    sorted.sort_by(|a, b| {
        let (oa, na) = a.sort_key();
        let (ob, nb) = b.sort_key();
        oa.total_cmp(&ob).then(na.cmp(&nb))
    });
    let mut dir_chain = |dir: Direction| {
        let isolated = sorted.iter().any(|p| match dir {
            Direction::Ingress => p.ingress.is_some(),
            Direction::Egress => p.egress.is_some(),
        });
        let pending = rules_of(pod, ns_labels, &sorted, dir, w);
        chain(pending, isolated, w.sets)
    };
    let ingress = dir_chain(Direction::Ingress);
    let egress = dir_chain(Direction::Egress);
    EndpointPolicy { namespace: pod.namespace.as_str().into(), name: pod.name.as_str().into(), ingress, egress }
}
