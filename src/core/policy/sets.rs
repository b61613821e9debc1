//! The IP sets: for every pod selector a rule names (a [`SetKey`]), the addresses of the
//! pods it selects; for every named port a rule names, the (address, port) of the pods
//! that have it. Kept up to date one pod or one namespace at a time; each set knows the
//! policies that name it, so a change marks only their endpoints for recompiling.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::ir::{Scope, SetKey};
use super::model::{CALICO_NAME_LABEL, CALICO_NAMESPACE_LABEL, Labels, Pod, PolicyKey, Protocol};
use crate::wire::ipv4::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};

pub type IpSet = HashSet<u32, ahash::RandomState>;
/// The port a named port has on each address that has it.
pub type PortSet = HashMap<u32, u16, ahash::RandomState>;

/// A set and the policies that name it.
#[derive(Debug, Default)]
pub(super) struct SetEntry {
    pub members: Arc<IpSet>,
    pub policies: BTreeSet<PolicyKey>,
}

#[derive(Debug, Default)]
pub(super) struct NamedEntry {
    pub members: Arc<PortSet>,
    pub policies: BTreeSet<PolicyKey>,
}

/// Whether namespace labels (with Calico's implicit name label) match `sel`'s scope.
pub(super) fn scope_matches(scope: &Scope, ns: &str, ns_labels: &Labels) -> bool {
    match scope {
        Scope::All => true,
        Scope::Namespace(n) => n == ns,
        Scope::Namespaces(sel) => sel.matches(&|k: &str| {
            if k == CALICO_NAME_LABEL { Some(ns) } else { ns_labels.get(k).map(String::as_str) }
        }),
    }
}

/// Whether `pod` (whose namespace has `ns_labels`) is in the set (its address aside).
pub(super) fn selects(key: &SetKey, pod: &Pod, ns_labels: &Labels) -> bool {
    scope_matches(&key.scope, &pod.namespace, ns_labels)
        && key.pods.matches(&|k: &str| {
            if k == CALICO_NAMESPACE_LABEL {
                Some(pod.namespace.as_str())
            } else {
                pod.labels.get(k).map(String::as_str)
            }
        })
}

pub(super) fn protocol_of(proto: u8) -> Option<Protocol> {
    match proto {
        PROTO_TCP => Some(Protocol::Tcp),
        PROTO_UDP => Some(Protocol::Udp),
        PROTO_SCTP => Some(Protocol::Sctp),
        _ => None,
    }
}

/// Every IP set and named-port set in use.
#[derive(Debug, Default)]
pub(super) struct Sets {
    pub sets: HashMap<SetKey, SetEntry>,
    pub named: HashMap<(String, u8), NamedEntry>,
}

/// A pod as the sets see it: its address and what selects it.
pub(super) struct Member<'a> {
    pub pod: &'a Pod,
    pub ns_labels: &'a Labels,
}

impl Sets {
    /// Policy `p` names `key`: computed over every pod when it is new.
    pub fn add_ref<'a>(&mut self, key: &SetKey, p: &PolicyKey, pods: impl Iterator<Item = Member<'a>>) {
        let e = self.sets.entry(key.clone()).or_insert_with(|| {
            let members: IpSet =
                pods.filter(|m| selects(key, m.pod, m.ns_labels)).filter_map(|m| m.pod.ip.map(u32::from)).collect();
            SetEntry { members: Arc::new(members), policies: BTreeSet::new() }
        });
        e.policies.insert(p.clone());
    }

    pub fn drop_ref(&mut self, key: &SetKey, p: &PolicyKey) {
        if let Some(e) = self.sets.get_mut(key) {
            e.policies.remove(p);
            if e.policies.is_empty() {
                self.sets.remove(key);
            }
        }
    }

    pub fn add_named_ref<'a>(&mut self, name: &(String, u8), p: &PolicyKey, pods: impl Iterator<Item = &'a Pod>) {
        let e = self.named.entry(name.clone()).or_insert_with(|| {
            let proto = protocol_of(name.1);
            let members: PortSet =
                pods.filter_map(|pod| Some((u32::from(pod.ip?), pod.named_port(&name.0, proto?)?))).collect();
            NamedEntry { members: Arc::new(members), policies: BTreeSet::new() }
        });
        e.policies.insert(p.clone());
    }

    pub fn drop_named_ref(&mut self, name: &(String, u8), p: &PolicyKey) {
        if let Some(e) = self.named.get_mut(name) {
            e.policies.remove(p);
            if e.policies.is_empty() {
                self.named.remove(name);
            }
        }
    }

    /// Re-evaluates one address after its pod changed (`now`: the pod that holds it now,
    /// if any); returns the policies whose sets changed.
    pub fn update_member(&mut self, ip: Ipv4Addr, now: Option<Member>) -> BTreeSet<PolicyKey> {
        let a = u32::from(ip);
        let mut touched = BTreeSet::new();
        for (key, e) in &mut self.sets {
            let want = now.as_ref().is_some_and(|m| selects(key, m.pod, m.ns_labels));
            if want != e.members.contains(&a) {
                let m = Arc::make_mut(&mut e.members);
                if want {
                    m.insert(a);
                } else {
                    m.remove(&a);
                }
                touched.extend(e.policies.iter().cloned());
            }
        }
        for ((name, proto), e) in &mut self.named {
            let want = now.as_ref().and_then(|m| m.pod.named_port(name, protocol_of(*proto)?));
            if e.members.get(&a).copied() != want {
                let m = Arc::make_mut(&mut e.members);
                match want {
                    Some(w) => m.insert(a, w),
                    None => m.remove(&a),
                };
                touched.extend(e.policies.iter().cloned());
            }
        }
        touched
    }

    pub fn members(&self, key: &SetKey) -> Option<&Arc<IpSet>> {
        self.sets.get(key).map(|e| &e.members)
    }
    pub fn named_members(&self, name: &(String, u8)) -> Option<&Arc<PortSet>> {
        self.named.get(name).map(|e| &e.members)
    }
}
