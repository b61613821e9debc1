//! The node's network policy: the policy objects (namespaces, pods, NetworkPolicies,
//! Calico policies) as they were applied here or came through etcd, the pods attached
//! on this node bound to them, and the [`PolicyEngine`] that compiles this node's
//! [`PolicyTable`]. Every change goes to the engine as a delta (an object put or
//! deleted, a pod attached, relabelled or gone); the engine recompiles only the chains
//! it touches.
//!
//! A pod's identity is `namespace/name`: CNI names its attachments so
//! (`K8S_POD_NAMESPACE/K8S_POD_NAME`), and `pod add --namespace` too; a plain name is in
//! `default`. A `Pod` object of that identity gives its labels and container ports; the
//! attachment gives its address and node (and its own labels while no object exists).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use crate::api::PodSpec;
use crate::api::kube::{Object, policy::decode_policy};
use crate::api::{PolicyChain, PolicyRuleRow};
use crate::core::Ipv4Net;
use crate::core::policy::model::{self, Labels};
use crate::core::policy::table::Direction;
use crate::core::policy::{PolicyEngine, PolicyTable};

/// A pod attached on this node, as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attached {
    ip: Ipv4Addr,
    labels: Labels,
    /// The host-side interface (Felix's chains are named after it).
    port_name: String,
}

/// The policy objects of the node and its engine.
pub struct PolicyBook {
    node: String,
    engine: PolicyEngine,
    /// Pod objects by identity (their own fields, before binding to an attachment).
    pod_objects: HashMap<(String, String), model::Pod>,
    attached: BTreeMap<(String, String), Attached>,
    /// The policy generation the established flows were last re-checked under.
    pub(crate) checked: u64,
}

impl PolicyBook {
    pub fn new(node: &str, pod_cidr: Ipv4Net) -> PolicyBook {
        PolicyBook {
            node: node.into(),
            engine: PolicyEngine::new(node, pod_cidr),
            pod_objects: HashMap::new(),
            attached: BTreeMap::new(),
            checked: 0,
        }
    }

    /// Puts (or deletes) the policy objects among `objs`; others are not this book's.
    /// The objects were checked when they were parsed; one that no longer decodes is
    /// logged and left out.
    pub fn apply(&mut self, objs: &[Object], delete: bool) {
        for o in objs {
            let Object::Policy { manifest, .. } = o else { continue };
            match decode_policy(manifest) {
                Ok(m) if delete => self.delete_one(&m),
                Ok(m) => self.put_one(m),
                Err(e) => tracing::error!("policy object left out: {e}"),
            }
        }
    }

    fn put_one(&mut self, m: model::Object) {
        match m {
            model::Object::Pod(p) => {
                let id = (p.namespace.clone(), p.name.clone());
                self.pod_objects.insert(id.clone(), p);
                self.refresh_pod(&id);
            }
            other => self.engine.apply(other),
        }
    }

    fn delete_one(&mut self, m: &model::Object) {
        match m {
            model::Object::Pod(p) => {
                let id = (p.namespace.clone(), p.name.clone());
                self.pod_objects.remove(&id);
                self.refresh_pod(&id);
            }
            other => self.engine.delete(other),
        }
    }

    /// The pod the engine should hold for `id`: the object bound to the attachment.
    fn refresh_pod(&mut self, id: &(String, String)) {
        let obj = self.pod_objects.get(id);
        let att = self.attached.get(id);
        let pod = match (obj, att) {
            (None, None) => {
                self.engine.remove_pod(&id.0, &id.1);
                return;
            }
            (Some(o), None) => o.clone(),
            (o, Some(a)) => model::Pod {
                namespace: id.0.clone(),
                name: id.1.clone(),
                labels: o.map_or_else(|| a.labels.clone(), |o| o.labels.clone()),
                ip: Some(a.ip),
                node: Some(self.node.clone()),
                ports: o.map(|o| o.ports.clone()).unwrap_or_default(),
            },
        };
        self.engine.upsert_pod(pod);
    }

    /// The pods attached on this node now: the ones that came, went or changed go to
    /// the engine.
    pub fn set_attached<'a>(&mut self, pods: impl Iterator<Item = &'a PodSpec>) {
        let now: BTreeMap<(String, String), Attached> = pods
            .map(|p| {
                let (ns, name) = p.kube_id();
                let a = Attached { ip: p.ip, labels: p.labels.clone(), port_name: p.port_name() };
                ((ns.to_string(), name.to_string()), a)
            })
            .collect();
        if now == self.attached {
            return;
        }
        let before = std::mem::replace(&mut self.attached, now);
        let mut changed: Vec<(String, String)> =
            before.iter().filter(|(k, v)| self.attached.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
        changed.extend(self.attached.iter().filter(|(k, v)| before.get(*k) != Some(*v)).map(|(k, _)| k.clone()));
        for id in changed {
            self.refresh_pod(&id);
        }
    }

    /// This node's compiled policy (recompiling what changed).
    pub fn table(&mut self) -> PolicyTable {
        self.engine.table()
    }

    /// `show policy`: every local pod some policy or pod identity names, with its chains.
    pub fn chains(&mut self) -> Vec<PolicyChain> {
        let ids: Vec<((String, String), Attached)> =
            self.attached.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut out = Vec::new();
        for ((ns, name), a) in ids {
            let Some(c) = self.engine.chains(&ns, &name) else { continue };
            let rules = c
                .rules
                .iter()
                .map(|r| PolicyRuleRow {
                    dir: match r.dir {
                        Direction::Ingress => "ingress".into(),
                        Direction::Egress => "egress".into(),
                    },
                    kind: kind_name(r.policy.kind).into(),
                    policy: match &r.policy.namespace {
                        Some(ns) => format!("{ns}/{}", r.policy.name),
                        None => r.policy.name.clone(),
                    },
                    order: r.policy.order.clone(),
                    rule: r.rule,
                    action: format!("{:?}", r.action),
                    packets: r.packets,
                    bytes: r.bytes,
                })
                .collect();
            out.push(PolicyChain {
                namespace: ns,
                name,
                ip: a.ip,
                ingress_chain: Direction::Ingress.chain(&a.port_name),
                egress_chain: Direction::Egress.chain(&a.port_name),
                ingress_isolated: c.ingress_isolated,
                egress_isolated: c.egress_isolated,
                rules,
            });
        }
        out
    }

    /// The per-rule counters, for metrics: (kind, policy, direction, rule, packets, bytes).
    pub fn rule_counters(&self) -> Vec<(String, String, &'static str, usize, u64, u64)> {
        self.engine
            .rule_hits()
            .into_iter()
            .map(|(k, d, i, (p, b))| {
                let dir = if d == Direction::Ingress { "ingress" } else { "egress" };
                (kind_name(k.kind).to_string(), k.to_string(), dir, i, p, b)
            })
            .collect()
    }
}

/// A policy kind as listings and metrics name it.
pub fn kind_name(k: model::PolicyKind) -> &'static str {
    match k {
        model::PolicyKind::NetworkPolicy => "network_policy",
        model::PolicyKind::CalicoNetworkPolicy => "calico_network_policy",
        model::PolicyKind::GlobalNetworkPolicy => "global_network_policy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kube::parse_manifest;

    fn spec(name: &str, ns: Option<&str>, ip: &str, labels: &[(&str, &str)]) -> PodSpec {
        PodSpec {
            name: name.into(),
            netns: name.into(),
            ip: ip.parse().unwrap(),
            mac: None,
            ifname: None,
            namespace: ns.map(String::from),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    const DENY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
";

    /// An attached pod is bound by namespace/name: its labels decide which policy selects
    /// it, a Pod object's labels replace them, deleting the object gives them back.
    #[test]
    fn attached_pods_bind_to_their_objects_and_relabel_as_deltas() {
        let mut b = PolicyBook::new("node-1", "10.244.1.0/24".parse().unwrap());
        let pods = [spec("x-a", Some("x"), "10.244.1.5", &[("pod", "a")]), spec("y/c", None, "10.244.1.9", &[])];
        b.set_attached(pods.iter());
        assert_eq!(b.table().endpoints().count(), 0);
        b.apply(&parse_manifest(DENY).unwrap(), false);
        let chains = b.chains();
        let xa = chains.iter().find(|c| c.name == "x-a").unwrap();
        assert!(xa.ingress_isolated && !xa.egress_isolated);
        assert_eq!(xa.ingress_chain, format!("cali-tw-{}", pods[0].port_name()));
        assert_eq!(xa.rules.len(), 1);
        assert!(chains.iter().any(|c| c.namespace == "y" && c.name == "c" && !c.ingress_isolated));
        let before = b.table().generation();
        // A Pod object relabels it: no longer selected.
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: x-a, namespace: x, labels: {pod: z}}\n";
        let objs = parse_manifest(pod).unwrap();
        b.apply(&objs, false);
        assert!(b.table().generation() > before);
        assert!(!b.chains().iter().find(|c| c.name == "x-a").unwrap().ingress_isolated);
        b.apply(&objs, true);
        assert!(b.chains().iter().find(|c| c.name == "x-a").unwrap().ingress_isolated);
        // Detached: gone from the table.
        b.set_attached(pods[1..].iter());
        assert_eq!(b.table().endpoints().count(), 0);
        b.apply(&parse_manifest(DENY).unwrap(), true);
        assert!(b.rule_counters().is_empty());
    }
}
