//! The objects policy is made of, as their APIs define them: Kubernetes `Namespace`,
//! `Pod` and `networking.k8s.io/v1` `NetworkPolicy`, and Calico's `projectcalico.org/v3`
//! `NetworkPolicy` and `GlobalNetworkPolicy`. Decoded and validated by [`super::decode`];
//! turned into one rule form by [`super::ir`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::selector::Selector;
use crate::core::Ipv4Net;
use crate::wire::ipv4::{PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

/// Labels of a pod or a namespace.
pub type Labels = BTreeMap<String, String>;

/// The label the API server sets on every namespace to its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Calico's implicit label of a workload endpoint: its namespace.
pub const CALICO_NAMESPACE_LABEL: &str = "projectcalico.org/namespace";
/// Calico's implicit label of a namespace (as a profile): its name.
pub const CALICO_NAME_LABEL: &str = "projectcalico.org/name";

/// A Kubernetes port protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Sctp => PROTO_SCTP,
        }
    }
    /// The API's spelling (`TCP`).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// A namespace: its labels include [`NAMESPACE_NAME_LABEL`], as the API server sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

impl Namespace {
    /// A namespace with these labels, and the name label the API server adds.
    pub fn new(name: &str, mut labels: Labels) -> Namespace {
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.into());
        Namespace { name: name.into(), labels }
    }
}

/// A container port, for named ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `status.podIP`; a pod without one matches no selector's traffic.
    pub ip: Option<Ipv4Addr>,
    /// `spec.nodeName`: the node that enforces the pod's policy.
    pub node: Option<String>,
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    /// The port of the container port named `name` with this protocol.
    pub fn named_port(&self, name: &str, proto: Protocol) -> Option<u16> {
        self.ports.iter().find(|p| p.protocol == proto && p.name.as_deref() == Some(name)).map(|p| p.port)
    }
}

/// A `metav1.LabelSelector`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub key: String,
    pub op: SelectorOp,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelectorOp {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// The same selector in Calico's expression form (as Calico converts it).
    pub fn to_selector(&self) -> Selector {
        let mut terms: Vec<Selector> =
            self.match_labels.iter().map(|(k, v)| Selector::Eq(k.clone(), v.clone())).collect();
        for r in &self.match_expressions {
            let values = r.values.iter().cloned().collect();
            terms.push(match r.op {
                SelectorOp::In => Selector::In(r.key.clone(), values),
                SelectorOp::NotIn => Selector::NotIn(r.key.clone(), values),
                SelectorOp::Exists => Selector::Has(r.key.clone()),
                SelectorOp::DoesNotExist => Selector::Not(Box::new(Selector::Has(r.key.clone()))),
            });
        }
        Selector::and(terms)
    }
}

/// A Kubernetes `NetworkPolicy` (networking.k8s.io/v1), with `policyTypes` defaulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    /// `policyTypes` after the API server's defaulting: Ingress always when unset,
    /// Egress when the policy has egress rules.
    pub ingress_type: bool,
    pub egress_type: bool,
    pub ingress: Vec<K8sRule>,
    pub egress: Vec<K8sRule>,
}

/// An ingress (`from`) or egress (`to`) rule: `peers` empty = every peer, `ports`
/// empty = every port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sRule {
    pub peers: Vec<K8sPeer>,
    pub ports: Vec<K8sPort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum K8sPeer {
    /// `podSelector` and/or `namespaceSelector` (at least one is set): no namespace
    /// selector = the policy's namespace.
    Pods {
        pods: Option<LabelSelector>,
        namespaces: Option<LabelSelector>,
    },
    IpBlock {
        cidr: Ipv4Net,
        except: Vec<Ipv4Net>,
    },
}

/// A port by number (with `endPort`) or by name; `None` = every port of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortRef {
    Number { port: u16, end: u16 },
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sPort {
    pub protocol: Protocol,
    pub port: Option<PortRef>,
}

/// Calico's rule actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RuleAction {
    Allow,
    Deny,
    Log,
    Pass,
}

/// A Calico protocol: a name or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpProto(pub u8);

impl IpProto {
    /// Calico's names (`TCP`, `UDP`, `ICMP`, `SCTP`, `UDPLite`), or a number 1..255.
    pub fn parse(s: &str) -> Option<IpProto> {
        match s {
            "TCP" => Some(IpProto(PROTO_TCP)),
            "UDP" => Some(IpProto(PROTO_UDP)),
            "ICMP" => Some(IpProto(PROTO_ICMP)),
            "SCTP" => Some(IpProto(PROTO_SCTP)),
            "UDPLite" => Some(IpProto(136)),
            _ => s.parse::<u8>().ok().filter(|n| *n > 0).map(IpProto),
        }
    }
    /// Ports are matched only for protocols that have them.
    pub fn has_ports(self) -> bool {
        matches!(self.0, PROTO_TCP | PROTO_UDP | PROTO_SCTP | 136)
    }
}

/// A Calico port: a number, a range `lo:hi`, or a named port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CalicoPort {
    Range(u16, u16),
    Name(String),
}

/// Calico's `source` / `destination` of a rule. Every field set must match (AND).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntityRule {
    pub nets: Vec<Ipv4Net>,
    pub not_nets: Vec<Ipv4Net>,
    pub selector: Option<Selector>,
    pub not_selector: Option<Selector>,
    pub namespace_selector: Option<Selector>,
    pub ports: Vec<CalicoPort>,
    pub not_ports: Vec<CalicoPort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalicoRule {
    pub action: RuleAction,
    pub protocol: Option<IpProto>,
    pub not_protocol: Option<IpProto>,
    pub source: EntityRule,
    pub destination: EntityRule,
}

/// A Calico `NetworkPolicy` (namespace set) or `GlobalNetworkPolicy` (none).
#[derive(Debug, Clone, PartialEq)]
pub struct CalicoPolicy {
    /// `None` for a GlobalNetworkPolicy.
    pub namespace: Option<String>,
    pub name: String,
    /// `None` sorts last, as Calico's "infinite" order.
    pub order: Option<f64>,
    pub selector: Selector,
    /// A GlobalNetworkPolicy's `namespaceSelector` (the endpoints' namespaces).
    pub namespace_selector: Option<Selector>,
    pub ingress_type: bool,
    pub egress_type: bool,
    pub ingress: Vec<CalicoRule>,
    pub egress: Vec<CalicoRule>,
}

/// Any object the policy engine takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    NetworkPolicy(NetworkPolicy),
    Calico(CalicoPolicy),
}

/// Which API a policy came from; how a trace and a listing name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// networking.k8s.io/v1 NetworkPolicy (Calico order 1000).
    NetworkPolicy,
    /// projectcalico.org/v3 NetworkPolicy.
    CalicoNetworkPolicy,
    /// projectcalico.org/v3 GlobalNetworkPolicy.
    GlobalNetworkPolicy,
}

/// A policy's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl PolicyKey {
    /// The key Felix sorts equal orders by: `namespace/name` (a Kubernetes policy's
    /// name as Calico converts it, `knp.default.<name>`).
    pub fn felix_name(&self) -> String {
        let name = match self.kind {
            PolicyKind::NetworkPolicy => format!("knp.default.{}", self.name),
            _ => self.name.clone(),
        };
        match &self.namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name,
        }
    }
}

impl std::fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl Object {
    /// `kind namespace/name`, for errors and listings.
    pub fn describe(&self) -> String {
        match self {
            Object::Namespace(n) => format!("Namespace {}", n.name),
            Object::Pod(p) => format!("Pod {}/{}", p.namespace, p.name),
            Object::NetworkPolicy(p) => format!("NetworkPolicy {}/{}", p.namespace, p.name),
            Object::Calico(p) => match &p.namespace {
                Some(ns) => format!("NetworkPolicy.projectcalico.org {ns}/{}", p.name),
                None => format!("GlobalNetworkPolicy {}", p.name),
            },
        }
    }
}
