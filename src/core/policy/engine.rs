//! The policy engine: the cluster's namespaces, pods and policies as the control plane
//! feeds them, and this node's compiled [`PolicyTable`]. Every change is applied as a
//! delta: a pod's labels re-evaluate the sets (and, for a local pod, which policies
//! select it), a namespace's labels re-evaluate its pods, a policy computes its own sets;
//! each marks dirty only the local pods whose chains it touches, and [`PolicyEngine::table`]
//! recompiles those alone. Nothing here is on the packet path.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::compile::{self, HitsRegistry, World};
use super::ir::{self, SetKey};
use super::model::{CalicoPolicy, Labels, NAMESPACE_NAME_LABEL, Namespace, NetworkPolicy, Object, Pod, PolicyKey};
use super::sets::{Member, Sets, selects};
use super::table::{Direction, EndpointPolicy, PolicyTable};
use crate::core::Ipv4Net;
use crate::core::nat::service::Hits;

/// A pod's identity.
pub type PodId = (String, String);

/// A local pod's chains, for listings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Chains {
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    /// Ingress rules, then egress rules, each in walk order.
    pub rules: Vec<ChainRow>,
}

/// One rule of a chain and what it matched (new flows: packets and bytes of their first packet).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainRow {
    pub dir: Direction,
    pub policy: ir::PolicyInfo,
    /// Its index in the policy's ingress or egress list.
    pub rule: usize,
    pub action: super::model::RuleAction,
    pub packets: u64,
    pub bytes: u64,
}

/// A policy and the local pods it selects.
#[derive(Debug)]
struct Entry {
    ir: Arc<ir::Policy>,
    sets: Vec<SetKey>,
    named: Vec<(String, u8)>,
    selects: BTreeSet<PodId>,
}

/// The world and this node's compiled policy.
#[derive(Debug)]
pub struct PolicyEngine {
    node: String,
    pod_cidr: Ipv4Net,
    /// Effective labels of every namespace a pod or a Namespace object names (the name
    /// label alone when no Namespace object is known: the API server guarantees it).
    namespaces: HashMap<String, Labels>,
    /// Namespaces known from their objects.
    declared: BTreeSet<String>,
    pods: HashMap<PodId, Pod>,
    by_ns: HashMap<String, BTreeSet<String>>,
    by_ip: HashMap<Ipv4Addr, PodId>,
    policies: BTreeMap<PolicyKey, Entry>,
    sets: Sets,
    /// Local pods (on this node, with an address) and the policies that select them.
    local: BTreeMap<PodId, BTreeSet<PolicyKey>>,
    compiled: HashMap<PodId, Arc<EndpointPolicy>>,
    dirty: BTreeSet<PodId>,
    hits: HitsRegistry,
    in_sync: bool,
    generation: u64,
    table: PolicyTable,
    /// The table needs rebuilding (an endpoint changed, or the sync state).
    stale: bool,
}

fn default_ns_labels(ns: &str) -> Labels {
    Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())])
}

impl PolicyEngine {
    /// The engine of node `node`, whose pods are in `pod_cidr`.
    pub fn new(node: &str, pod_cidr: Ipv4Net) -> Self {
        PolicyEngine {
            node: node.into(),
            pod_cidr,
            namespaces: HashMap::new(),
            declared: BTreeSet::new(),
            pods: HashMap::new(),
            by_ns: HashMap::new(),
            by_ip: HashMap::new(),
            policies: BTreeMap::new(),
            sets: Sets::default(),
            local: BTreeMap::new(),
            compiled: HashMap::new(),
            dirty: BTreeSet::new(),
            hits: HitsRegistry::new(),
            in_sync: true,
            generation: 0,
            table: PolicyTable::default(),
            stale: true,
        }
    }

    /// The effective labels of namespace `ns`.
    fn ns_labels(&self, ns: &str) -> Labels {
        self.namespaces.get(ns).cloned().unwrap_or_else(|| default_ns_labels(ns))
    }

    /// Applies an object (create or replace).
    pub fn apply(&mut self, obj: Object) {
        match obj {
            Object::Namespace(n) => self.upsert_namespace(n),
            Object::Pod(p) => self.upsert_pod(p),
            Object::NetworkPolicy(p) => self.upsert_network_policy(&p),
            Object::Calico(p) => self.upsert_calico_policy(&p),
        }
    }

    /// Deletes the object `obj` names (its spec is not looked at).
    pub fn delete(&mut self, obj: &Object) {
        match obj {
            Object::Namespace(n) => self.remove_namespace(&n.name),
            Object::Pod(p) => self.remove_pod(&p.namespace, &p.name),
            Object::NetworkPolicy(p) => self.remove_policy(&ir::from_k8s(p).key),
            Object::Calico(p) => self.remove_policy(&ir::from_calico(p).key),
        }
    }

    pub fn upsert_namespace(&mut self, ns: Namespace) {
        self.declared.insert(ns.name.clone());
        if self.namespaces.get(&ns.name) == Some(&ns.labels) {
            return;
        }
        self.namespaces.insert(ns.name.clone(), ns.labels);
        self.namespace_changed(&ns.name);
    }

    /// A deleted namespace keeps its name label (its pods, if any, still have it).
    pub fn remove_namespace(&mut self, name: &str) {
        if self.declared.remove(name) {
            self.namespaces.insert(name.to_string(), default_ns_labels(name));
            self.namespace_changed(name);
        }
    }

    fn namespace_changed(&mut self, ns: &str) {
        let names: Vec<String> = self.by_ns.get(ns).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        for name in names {
            self.pod_changed(&(ns.to_string(), name));
        }
    }

    pub fn upsert_pod(&mut self, pod: Pod) {
        let id = (pod.namespace.clone(), pod.name.clone());
        if self.pods.get(&id) == Some(&pod) {
            return;
        }
        let old_ip = self.pods.get(&id).and_then(|p| p.ip);
        self.by_ns.entry(pod.namespace.clone()).or_default().insert(pod.name.clone());
        self.namespaces.entry(pod.namespace.clone()).or_insert_with(|| default_ns_labels(&pod.namespace));
        if let Some(ip) = pod.ip {
            self.by_ip.insert(ip, id.clone());
        }
        self.pods.insert(id.clone(), pod);
        if let Some(old) = old_ip.filter(|o| Some(*o) != self.pods[&id].ip) {
            self.address_changed(old);
        }
        self.pod_changed(&id);
    }

    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        let id = (namespace.to_string(), name.to_string());
        let Some(old) = self.pods.remove(&id) else { return };
        if let Some(s) = self.by_ns.get_mut(namespace) {
            s.remove(name);
        }
        if let Some(ip) = old.ip {
            self.address_changed(ip);
        }
        self.relocal(&id);
    }

    /// Re-evaluates the sets for an address whose pod left or moved.
    fn address_changed(&mut self, ip: Ipv4Addr) {
        if self.by_ip.get(&ip).is_some_and(|id| self.pods.get(id).is_none_or(|p| p.ip != Some(ip))) {
            self.by_ip.remove(&ip);
        }
        let holder = self.by_ip.get(&ip).and_then(|id| self.pods.get(id));
        let member = holder.and_then(|pod| Some(Member { pod, ns_labels: self.namespaces.get(&pod.namespace)? }));
        let touched = self.sets.update_member(ip, member);
        self.touch(touched);
    }

    /// A pod's labels, ports, address or namespace labels changed.
    fn pod_changed(&mut self, id: &PodId) {
        if let Some(ip) = self.pods.get(id).and_then(|p| p.ip) {
            self.address_changed(ip);
        }
        self.relocal(id);
    }

    /// Which policies select local pod `id` (and whether it is local at all).
    fn relocal(&mut self, id: &PodId) {
        let pod = self.pods.get(id);
        let is_local = pod.is_some_and(|p| {
            p.node.as_deref() == Some(self.node.as_str()) && p.ip.is_some_and(|ip| self.pod_cidr.contains(ip))
        });
        let before = self.local.get(id).cloned();
        let after = match pod.filter(|_| is_local) {
            Some(pod) => {
                let nsl = self.ns_labels(&pod.namespace);
                let sel: BTreeSet<PolicyKey> = self
                    .policies
                    .iter()
                    .filter(|(_, e)| selects(&e.ir.applies, pod, &nsl))
                    .map(|(k, _)| k.clone())
                    .collect();
                Some(sel)
            }
            None => None,
        };
        for (k, e) in &mut self.policies {
            if after.as_ref().is_some_and(|a| a.contains(k)) {
                e.selects.insert(id.clone());
            } else {
                e.selects.remove(id);
            }
        }
        match after {
            Some(a) => {
                self.local.insert(id.clone(), a);
            }
            None => {
                self.local.remove(id);
                if before.is_some() {
                    self.compiled.remove(id);
                    self.stale = true;
                }
            }
        }
        if self.local.contains_key(id) {
            self.dirty.insert(id.clone());
        }
    }

    /// Marks the local pods selected by these policies for recompiling.
    fn touch(&mut self, policies: BTreeSet<PolicyKey>) {
        for k in policies {
            if let Some(e) = self.policies.get(&k) {
                self.dirty.extend(e.selects.iter().cloned());
            }
        }
    }

    pub fn upsert_network_policy(&mut self, p: &NetworkPolicy) {
        self.upsert_policy(ir::from_k8s(p));
    }

    pub fn upsert_calico_policy(&mut self, p: &CalicoPolicy) {
        self.upsert_policy(ir::from_calico(p));
    }

    fn upsert_policy(&mut self, p: ir::Policy) {
        if self.policies.get(&p.key).is_some_and(|e| *e.ir == p) {
            return;
        }
        let key = p.key.clone();
        self.unlink_policy(&key);
        let (sets, named) = (p.rule_sets(), p.named_ports());
        for s in &sets {
            let (pods, namespaces) = (&self.pods, &self.namespaces);
            let members =
                pods.values().filter_map(|pod| Some(Member { pod, ns_labels: namespaces.get(&pod.namespace)? }));
            self.sets.add_ref(s, &key, members);
        }
        for n in &named {
            self.sets.add_named_ref(n, &key, self.pods.values());
        }
        let mut selected = BTreeSet::new();
        for (id, sel) in &mut self.local {
            let pod = &self.pods[id];
            let Some(nsl) = self.namespaces.get(&pod.namespace) else { continue };
            if selects(&p.applies, pod, nsl) {
                sel.insert(key.clone());
                selected.insert(id.clone());
            }
        }
        self.dirty.extend(selected.iter().cloned());
        self.policies.insert(key, Entry { ir: Arc::new(p), sets, named, selects: selected });
    }

    pub fn remove_policy(&mut self, key: &PolicyKey) {
        self.unlink_policy(key);
        self.hits.retain(|(k, _, _), _| k != key);
    }

    /// Removes a policy but keeps its rules' counters (for a replacement).
    fn unlink_policy(&mut self, key: &PolicyKey) {
        let Some(e) = self.policies.remove(key) else { return };
        for s in &e.sets {
            self.sets.drop_ref(s, key);
        }
        for n in &e.named {
            self.sets.drop_named_ref(n, key);
        }
        for id in &e.selects {
            if let Some(sel) = self.local.get_mut(id) {
                sel.remove(key);
            }
        }
        self.dirty.extend(e.selects);
    }

    /// Whether every object is known (a control plane still loading says no: then every
    /// local pod's new flows are dropped as not computable, never let through).
    pub fn set_in_sync(&mut self, yes: bool) {
        if self.in_sync != yes {
            self.in_sync = yes;
            self.stale = true;
        }
    }

    /// This node's compiled policy, recompiling the pods whose chains changed.
    pub fn table(&mut self) -> PolicyTable {
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            let Some(sel) = self.local.get(&id) else { continue };
            let pod = &self.pods[&id];
            let nsl = self.ns_labels(&pod.namespace);
            let pols: Vec<&ir::Policy> = sel.iter().filter_map(|k| self.policies.get(k)).map(|e| &*e.ir).collect();
            let mut w = World { sets: &self.sets, hits: &mut self.hits };
            let ep = compile::endpoint(pod, &nsl, &pols, &mut w);
            let policed = ep.policed();
            let had = self.compiled.contains_key(&id);
            if policed {
                self.compiled.insert(id, Arc::new(ep));
            } else {
                self.compiled.remove(&id);
            }
            self.stale |= policed || had;
        }
        if self.stale {
            self.stale = false;
            self.generation += 1;
            let endpoints = self
                .compiled
                .iter()
                .filter_map(|(id, e)| Some((u32::from(self.pods.get(id)?.ip?), e.clone())))
                .collect();
            self.table = PolicyTable {
                generation: self.generation,
                in_sync: self.in_sync,
                pod_cidr: Some(self.pod_cidr),
                endpoints: Arc::new(endpoints),
            };
        }
        self.table.clone()
    }

    /// The per-rule counters: `(policy, direction, rule index) -> (packets, bytes)` of
    /// new flows that matched it.
    pub fn rule_hits(&self) -> Vec<(PolicyKey, Direction, usize, (u64, u64))> {
        let mut v: Vec<_> =
            self.hits.iter().map(|((k, d, i), h): (&_, &Arc<Hits>)| (k.clone(), *d, *i, h.get())).collect();
        v.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
        v
    }

    /// A local pod's effective chains, in the order they are walked (for `show policy`):
    /// whether each direction is isolated, and every rule with its counters. `None` for
    /// a pod that is not local; a local pod no policy selects has two empty chains.
    pub fn chains(&mut self, namespace: &str, name: &str) -> Option<Chains> {
        let id = (namespace.to_string(), name.to_string());
        self.local.get(&id)?;
        let _ = self.table();
        let Some(ep) = self.compiled.get(&id) else { return Some(Chains::default()) };
        let mut rules = Vec::new();
        for dir in [Direction::Ingress, Direction::Egress] {
            let mut last = None;
            for r in ep.chain(dir).rules.iter() {
                // A Kubernetes rule with many peers may be compiled as several: one row.
                if last == Some((Arc::as_ptr(&r.policy), r.index)) {
                    continue;
                }
                last = Some((Arc::as_ptr(&r.policy), r.index));
                let (packets, bytes) = r.hits.get();
                rules.push(ChainRow {
                    dir,
                    policy: (*r.policy).clone(),
                    rule: r.index,
                    action: r.action,
                    packets,
                    bytes,
                });
            }
        }
        Some(Chains { ingress_isolated: ep.ingress.isolated, egress_isolated: ep.egress.isolated, rules })
    }

    /// The local pods that some policy selects, and those policies (for listings).
    pub fn local_pods(&self) -> impl Iterator<Item = (&PodId, &BTreeSet<PolicyKey>)> {
        self.local.iter()
    }
    pub fn policy(&self, key: &PolicyKey) -> Option<&ir::Policy> {
        self.policies.get(key).map(|e| &*e.ir)
    }
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&(namespace.to_string(), name.to_string()))
    }
    /// Number of pods, namespaces and policies known.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.pods.len(), self.namespaces.len(), self.policies.len())
    }
}
