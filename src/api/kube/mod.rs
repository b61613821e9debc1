//! Kubernetes objects as `kubectl get -o yaml` prints them — `Service` (ClusterIP /
//! NodePort), `Endpoints`, `EndpointSlice` (discovery.k8s.io/v1), the policy objects
//! of [`policy`] (`Namespace`, `Pod`, `NetworkPolicy`, Calico's policies), and `List`s of them:
//! what `ucanal apply -f` reads and sends, and what `get` lists. Pure: text in, checked
//! objects out. (What they make on a node, the service specs, is
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
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "tcp")]
    pub protocol: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

fn tcp() -> String {
    "TCP".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBody {
    #[serde(rename = "type", default = "cluster_ip_type")]
    pub kind: String,
    #[serde(rename = "clusterIP", default)]
    pub cluster_ip: Option<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
}

fn cluster_ip_type() -> String {
    "ClusterIP".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub ip: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    #[serde(default)]
    pub addresses: Vec<Address>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceEndpoint {
    #[serde(default)]
    pub addresses: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Conditions>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conditions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

/// One object, in the shape ucanal keeps (and stores in etcd) after validation. It is
/// written with its `kind` as a tag and read back in one typed pass (through [`Raw`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", try_from = "Raw")]
pub enum Object {
    Service {
        metadata: Meta,
        spec: ServiceBody,
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

    /// The checks every object passes before it is applied or stored: names are DNS
    /// names, protocols TCP or UDP, a Service is ClusterIP or NodePort with an IPv4
    /// cluster IP and ports.
    pub fn check(&self) -> Result<(), KubeError> {
        if let Object::Policy { metadata, manifest } = self {
            return check_policy(metadata, manifest);
        }
        let m = self.meta();
        let bad = |p: String| KubeError::Object {
            kind: self.kind().into(),
            name: format!("{}/{}", m.namespace, m.name),
            problem: p,
        };
        let dns = |s: &str| {
            !s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        };
        if !dns(&m.name) || !dns(&m.namespace) {
            return Err(bad("metadata.name and .namespace must be DNS names".into()));
        }
        let proto = |p: &str| match p {
            "TCP" | "UDP" => Ok(()),
            other => Err(bad(format!("protocol {other} is not TCP or UDP"))),
        };
        match self {
            Object::Service { spec, .. } => {
                if !matches!(spec.kind.as_str(), "ClusterIP" | "NodePort") {
                    return Err(bad(format!("spec.type {} is not ClusterIP or NodePort", spec.kind)));
                }
                match spec.cluster_ip.as_deref() {
                    Some(ip) if ip.parse::<Ipv4Addr>().is_ok() => {}
                    other => {
                        return Err(bad(format!(
                            "spec.clusterIP {other:?} is not an IPv4 address (ucanal does not allocate)"
                        )));
                    }
                }
                if spec.ports.is_empty() {
                    return Err(bad("spec.ports is empty".into()));
                }
                for (i, p) in spec.ports.iter().enumerate() {
                    proto(&p.protocol)?;
                    if p.node_port.is_some() && spec.kind != "NodePort" {
                        return Err(bad(format!("spec.ports[{i}].nodePort on a {} service", spec.kind)));
                    }
                }
            }
            Object::Endpoints { subsets, .. } => {
                for p in subsets.iter().flat_map(|s| &s.ports) {
                    proto(&p.protocol)?;
                }
            }
            Object::EndpointSlice { ports, .. } => {
                for p in ports {
                    proto(&p.protocol)?;
                }
            }
            Object::Policy { .. } => {}
        }
        Ok(())
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
            Some("Service") => {
                Ok(Object::Service { metadata, spec: r.spec.ok_or(NotAnObject("missing field `spec`"))? })
            }
            Some("Endpoints") => Ok(Object::Endpoints { metadata, subsets: r.subsets.unwrap_or_default() }),
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

/// A policy manifest as a stored object: checked, named by what it decodes to.
pub fn policy_object(manifest: serde_json::Value) -> Result<Object, KubeError> {
    let o = policy::decode_policy(&manifest).map_err(KubeError::Policy)?;
    let (namespace, name) = policy::ident(&o);
    Ok(Object::Policy { metadata: Meta { name, namespace, labels: BTreeMap::new() }, manifest })
}

/// The checks of a stored policy object: it decodes, and its name is its manifest's.
fn check_policy(metadata: &Meta, manifest: &serde_json::Value) -> Result<(), KubeError> {
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

pub use manifest::{parse_manifest, parse_manifest_general};

#[cfg(test)]
mod tests;
