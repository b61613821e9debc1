//! Kubernetes objects as `kubectl get -o yaml` prints them — `Service` (ClusterIP,
//! NodePort, LoadBalancer, ExternalName, headless), `Endpoints`, `EndpointSlice`
//! (discovery.k8s.io/v1), the policy objects of [`policy`] (`Namespace`, `Pod`,
//! `NetworkPolicy`, Calico's policies), and `List`s of them: what `ucanal apply -f` reads
//! and sends, and what `get` lists. Every field the API has is known: one that changes
//! packet handling is implemented or refused by name ([`check`]), one with no dataplane
//! meaning is accepted and not kept ([`fields::Accepted`]), an unknown one is refused.
//! Pure: text in, checked objects out. (What they make on a node, the service specs, is
//! `control::kube`'s.)

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeError {
    #[error("manifest: {0}")]
    Syntax(String),
    #[error("{kind} {name}: {problem}")]
    Object { kind: String, name: String, problem: String },
    #[error(
        "kind '{0}' is not one ucanal applies (Service, Endpoints, EndpointSlice, Namespace, Pod, NetworkPolicy, \
         GlobalNetworkPolicy, List)"
    )]
    Kind(String),
    /// A policy object that does not decode: the field and its fault.
    #[error("{0}")]
    Policy(crate::core::policy::decode::DecodeError),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_ns")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_ns() -> String {
    "default".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "tcp")]
    pub protocol: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// No dataplane meaning (the endpoints carry the port): accepted, not stored.
    #[serde(default, skip_serializing)]
    pub target_port: Accepted,
    #[serde(default, skip_serializing)]
    pub app_protocol: Accepted,
}

fn tcp() -> String {
    "TCP".into()
}

/// A Service's `spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceBody {
    #[serde(rename = "type", default = "cluster_ip_type")]
    pub kind: String,
    #[serde(rename = "clusterIP", default)]
    pub cluster_ip: Option<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(rename = "clusterIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<String>,
    #[serde(rename = "externalIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_traffic_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_source_ranges: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocate_load_balancer_node_ports: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_not_ready_addresses: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_families: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family_policy: Option<String>,
    /// No dataplane meaning for kube-proxy (see docs/services.md): accepted, not stored.
    #[serde(default, skip_serializing)]
    pub selector: Accepted,
    #[serde(rename = "loadBalancerIP", default, skip_serializing)]
    pub load_balancer_ip: Accepted,
    #[serde(default, skip_serializing)]
    pub load_balancer_class: Accepted,
    #[serde(default, skip_serializing)]
    pub external_name: Accepted,
    #[serde(default, skip_serializing)]
    pub traffic_distribution: Accepted,
}

fn cluster_ip_type() -> String {
    "ClusterIP".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default, skip_serializing)]
    pub app_protocol: Accepted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Address {
    pub ip: Ipv4Addr,
    /// No dataplane meaning (locality is the pod's route on this node): not stored.
    #[serde(default, skip_serializing)]
    pub node_name: Accepted,
    #[serde(default, skip_serializing)]
    pub hostname: Accepted,
    #[serde(default, skip_serializing)]
    pub target_ref: Accepted,
}

impl Address {
    pub fn of(ip: Ipv4Addr) -> Address {
        Address { ip, node_name: Accepted, hostname: Accepted, target_ref: Accepted }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    #[serde(default)]
    pub addresses: Vec<Address>,
    /// Not ready: no traffic, unless the Service publishes not-ready addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready_addresses: Vec<Address>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SliceEndpoint {
    #[serde(default)]
    pub addresses: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Conditions>,
    /// Topology hints: `forZones` has no meaning on a node without a zone, `forNodes` is
    /// refused ([`check`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hints: Option<Hints>,
    /// No dataplane meaning (locality is the pod's route on this node): not stored.
    #[serde(default, skip_serializing)]
    pub node_name: Accepted,
    #[serde(default, skip_serializing)]
    pub zone: Accepted,
    #[serde(default, skip_serializing)]
    pub hostname: Accepted,
    #[serde(default, skip_serializing)]
    pub target_ref: Accepted,
    #[serde(default, skip_serializing)]
    pub deprecated_topology: Accepted,
}

/// EndpointSlice conditions; unset, `ready` and `serving` are true and `terminating`
/// false, as kube-proxy reads them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
}

/// One object, in the shape ucanal keeps (and stores in etcd) after validation. It is
/// written with its `kind` as a tag and read back in one typed pass (through [`Raw`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", try_from = "Raw")]
pub enum Object {
    Service {
        metadata: Meta,
        /// Boxed: the spec is most of a Service, and the other kinds are small.
        spec: Box<ServiceBody>,
        #[serde(default, skip_serializing_if = "ServiceStatus::is_empty")]
        status: ServiceStatus,
    },
    Endpoints {
        metadata: Meta,
        subsets: Vec<Subset>,
    },
    EndpointSlice {
        metadata: Meta,
        endpoints: Vec<SliceEndpoint>,
        ports: Vec<EndpointPort>,
    },
    /// A policy object, as its manifest (see [`policy`]); `metadata.namespace` is empty
    /// for a cluster-wide kind.
    Policy {
        metadata: Meta,
        manifest: serde_json::Value,
    },
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Service { .. } => "Service",
            Object::Endpoints { .. } => "Endpoints",
            Object::EndpointSlice { .. } => "EndpointSlice",
            Object::Policy { .. } => "Policy",
        }
    }
    pub fn meta(&self) -> &Meta {
        match self {
            Object::Service { metadata, .. }
            | Object::Endpoints { metadata, .. }
            | Object::EndpointSlice { metadata, .. }
            | Object::Policy { metadata, .. } => metadata,
        }
    }
    /// `services/default/ghost`: the object's key below ucanal's store prefix.
    pub fn key(&self) -> String {
        let dir = match self {
            Object::Service { .. } => "services",
            Object::Endpoints { .. } => "endpoints",
            Object::EndpointSlice { .. } => "endpointslices",
            Object::Policy { manifest, metadata } if metadata.namespace.is_empty() => {
                return format!("{}/{}", policy::dir(manifest), metadata.name);
            }
            Object::Policy { manifest, .. } => policy::dir(manifest),
        };
        format!("{dir}/{}/{}", self.meta().namespace, self.meta().name)
    }
    /// The service (`ns/name`) whose specs this object changes (a policy object: its
    /// own key, which names no service).
    pub fn service(&self) -> String {
        let m = self.meta();
        match self {
            Object::Policy { .. } => self.key(),
            Object::EndpointSlice { .. } => {
                let svc = m.labels.get("kubernetes.io/service-name").unwrap_or(&m.name);
                format!("{}/{svc}", m.namespace)
            }
            _ => format!("{}/{}", m.namespace, m.name),
        }
    }
}

/// Every field any object kind (or a `List`) has, flat: `kind` says which apply.
#[derive(Deserialize)]
pub(super) struct Raw {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<Meta>,
    #[serde(default)]
    spec: Option<ServiceBody>,
    #[serde(default)]
    status: Option<ServiceStatus>,
    #[serde(rename = "addressType", default)]
    address_type: Option<String>,
    #[serde(default)]
    subsets: Option<Vec<Subset>>,
    #[serde(default)]
    endpoints: Option<Vec<SliceEndpoint>>,
    #[serde(default)]
    ports: Option<Vec<EndpointPort>>,
    #[serde(default)]
    items: Option<Vec<Raw>>,
    /// A stored policy object's manifest.
    #[serde(default)]
    manifest: Option<serde_json::Value>,
}

/// Why a [`Raw`] is not an object (the general path says it better, naming the object).
#[derive(Debug)]
pub struct NotAnObject(&'static str);

impl std::fmt::Display for NotAnObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl TryFrom<Raw> for Object {
    type Error = NotAnObject;
    fn try_from(r: Raw) -> Result<Object, NotAnObject> {
        let metadata = r.metadata.ok_or(NotAnObject("missing field `metadata`"))?;
        match r.kind.as_deref() {
            Some("Service") => Ok(Object::Service {
                metadata,
                spec: Box::new(r.spec.ok_or(NotAnObject("missing field `spec`"))?),
                status: r.status.unwrap_or_default(),
            }),
            Some("Endpoints") => Ok(Object::Endpoints { metadata, subsets: r.subsets.unwrap_or_default() }),
            // An IPv4 proxy takes IPv4 slices only (kube-proxy's per-family proxier).
            Some("EndpointSlice") if r.address_type.as_deref().is_some_and(|t| t != "IPv4") => {
                Err(NotAnObject("addressType: only IPv4 is implemented (ucanal is IPv4-only)"))
            }
            Some("EndpointSlice") => Ok(Object::EndpointSlice {
                metadata,
                endpoints: r.endpoints.ok_or(NotAnObject("missing field `endpoints`"))?,
                ports: r.ports.ok_or(NotAnObject("missing field `ports`"))?,
            }),
            Some("Policy") => {
                Ok(Object::Policy { metadata, manifest: r.manifest.ok_or(NotAnObject("missing field `manifest`"))? })
            }
            _ => Err(NotAnObject("kind is not Service, Endpoints, EndpointSlice or Policy")),
        }
    }
}

/// `get services|endpoints`: the objects as stored, as kubectl lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectList {
    /// `List`.
    pub kind: String,
    pub items: Vec<Object>,
}

impl ObjectList {
    pub fn new(items: Vec<Object>) -> ObjectList {
        ObjectList { kind: "List".into(), items }
    }
}

pub mod check;
pub mod fields;
/// A policy manifest as a stored object: checked, named by what it decodes to.
pub fn policy_object(manifest: serde_json::Value) -> Result<Object, KubeError> {
    let o = policy::decode_policy(&manifest).map_err(KubeError::Policy)?;
    let (namespace, name) = policy::ident(&o);
    Ok(Object::Policy { metadata: Meta { name, namespace, labels: BTreeMap::new() }, manifest })
}

/// The checks of a stored policy object: it decodes, and its name is its manifest's.
pub(super) fn check_policy(metadata: &Meta, manifest: &serde_json::Value) -> Result<(), KubeError> {
    let o = policy::decode_policy(manifest).map_err(KubeError::Policy)?;
    if policy::ident(&o) != (metadata.namespace.clone(), metadata.name.clone()) {
        return Err(KubeError::Object {
            kind: "Policy".into(),
            name: format!("{}/{}", metadata.namespace, metadata.name),
            problem: format!("metadata does not name its manifest's object {}", o.describe()),
        });
    }
    Ok(())
}

mod manifest;
pub mod policy;

pub use fields::{Accepted, ClientIpConfig, Hints, Ingress, LoadBalancerStatus, ServiceStatus, SessionAffinityConfig};
pub use manifest::{parse_manifest, parse_manifest_general};

#[cfg(test)]
mod tests;
