//! Kubernetes objects as `kubectl get -o yaml` prints them — `Service` (ClusterIP,
//! NodePort, LoadBalancer, ExternalName, headless), `Endpoints`, `EndpointSlice`
//! (discovery.k8s.io/v1), and `List`s of them — and the store that turns them into the
//! dataplane's [`ServiceSpec`]s, one per service port, as kube-proxy does (the field
//! semantics and refusals are [`fields`]'). Pure: text in, objects and specs out.
//!
//! Naming: a single-port service is `ns/name` (the article's `default/ghost`); each port
//! of a multi-port service is `ns/name:port-name` (or `:port` when it has no name).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::core::nat::service::ServiceSpec;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeError {
    #[error("manifest: {0}")]
    Syntax(String),
    #[error("{kind} {name}: {problem}")]
    Object { kind: String, name: String, problem: String },
    #[error("kind '{0}' is not one ucanal applies (Service, Endpoints, EndpointSlice, List)")]
    Kind(String),
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
    pub target_port: fields::Accepted,
    #[serde(default, skip_serializing)]
    pub app_protocol: fields::Accepted,
}

fn tcp() -> String {
    "TCP".into()
}

/// A Service's `spec`. Every field the API has is known: one that changes packet handling
/// is implemented or refused by name ([`fields`]), an unknown one is refused.
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
    pub session_affinity_config: Option<fields::SessionAffinityConfig>,
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
    /// Accepted with no dataplane meaning for kube-proxy (see docs/services.md): not stored.
    #[serde(default, skip_serializing)]
    pub selector: fields::Accepted,
    #[serde(rename = "loadBalancerIP", default, skip_serializing)]
    pub load_balancer_ip: fields::Accepted,
    #[serde(default, skip_serializing)]
    pub load_balancer_class: fields::Accepted,
    #[serde(default, skip_serializing)]
    pub external_name: fields::Accepted,
    #[serde(default, skip_serializing)]
    pub traffic_distribution: fields::Accepted,
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
    pub app_protocol: fields::Accepted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Address {
    pub ip: Ipv4Addr,
    /// No dataplane meaning (locality is the pod's route on this node): not stored.
    #[serde(default, skip_serializing)]
    pub node_name: fields::Accepted,
    #[serde(default, skip_serializing)]
    pub hostname: fields::Accepted,
    #[serde(default, skip_serializing)]
    pub target_ref: fields::Accepted,
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
    /// refused ([`fields`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hints: Option<fields::Hints>,
    /// No dataplane meaning (locality is the pod's route on this node): not stored.
    #[serde(default, skip_serializing)]
    pub node_name: fields::Accepted,
    #[serde(default, skip_serializing)]
    pub zone: fields::Accepted,
    #[serde(default, skip_serializing)]
    pub hostname: fields::Accepted,
    #[serde(default, skip_serializing)]
    pub target_ref: fields::Accepted,
    #[serde(default, skip_serializing)]
    pub deprecated_topology: fields::Accepted,
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
/// written with its `kind` as a tag and read back in one typed pass ([`decode`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", try_from = "decode::Raw")]
pub enum Object {
    Service {
        metadata: Meta,
        /// Boxed: the spec is most of a Service, and the other kinds are small.
        spec: Box<ServiceBody>,
        #[serde(default, skip_serializing_if = "fields::ServiceStatus::is_empty")]
        status: fields::ServiceStatus,
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
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Service { .. } => "Service",
            Object::Endpoints { .. } => "Endpoints",
            Object::EndpointSlice { .. } => "EndpointSlice",
        }
    }
    pub fn meta(&self) -> &Meta {
        match self {
            Object::Service { metadata, .. }
            | Object::Endpoints { metadata, .. }
            | Object::EndpointSlice { metadata, .. } => metadata,
        }
    }
    /// `services/default/ghost`: the object's key below ucanal's store prefix.
    pub fn key(&self) -> String {
        let dir = match self {
            Object::Service { .. } => "services",
            Object::Endpoints { .. } => "endpoints",
            Object::EndpointSlice { .. } => "endpointslices",
        };
        format!("{dir}/{}/{}", self.meta().namespace, self.meta().name)
    }
    /// The service (`ns/name`) whose specs this object changes.
    pub fn service(&self) -> String {
        let m = self.meta();
        match self {
            Object::EndpointSlice { .. } => {
                let svc = m.labels.get("kubernetes.io/service-name").unwrap_or(&m.name);
                format!("{}/{svc}", m.namespace)
            }
            _ => format!("{}/{}", m.namespace, m.name),
        }
    }

    fn check(&self) -> Result<(), KubeError> {
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
        let checked = match self {
            Object::Service { metadata, spec, status } => fields::check_service(metadata, spec, status),
            Object::Endpoints { subsets, .. } => {
                subsets.iter().flat_map(|s| &s.ports).try_for_each(|p| fields::check_protocol("ports", &p.protocol))
            }
            Object::EndpointSlice { endpoints, ports, .. } => fields::check_slice(endpoints, ports),
        };
        checked.map_err(bad)?;
        Ok(())
    }
}

/// Parses a manifest: YAML (one or more `---` documents) or JSON, each a Service,
/// Endpoints, EndpointSlice or a `List` of them. Fields ucanal does not use are ignored,
/// as kubectl output carries many. One typed pass when the manifest is right; the
/// general path otherwise, which names what is wrong.
pub fn parse_manifest(text: &str) -> Result<Vec<Object>, KubeError> {
    match decode::fast_manifest(text) {
        Some(objs) => Ok(objs),
        None => parse_manifest_general(text),
    }
}

/// [`parse_manifest`] through a `serde_json::Value` per document: slower, and the
/// reference the fast path must agree with (every error comes from here).
pub fn parse_manifest_general(text: &str) -> Result<Vec<Object>, KubeError> {
    let mut out = Vec::new();
    let docs: Vec<serde_json::Value> = if text.trim_start().starts_with('{') {
        vec![serde_json::from_str(text).map_err(|e| KubeError::Syntax(e.to_string()))?]
    } else {
        let mut v = Vec::new();
        for d in serde_yaml_ng::Deserializer::from_str(text) {
            let doc = serde_json::Value::deserialize(d).map_err(|e| KubeError::Syntax(e.to_string()))?;
            if !doc.is_null() {
                v.push(doc);
            }
        }
        v
    };
    for d in docs {
        push_doc(d, &mut out, 0)?;
    }
    Ok(out)
}

fn push_doc(d: serde_json::Value, out: &mut Vec<Object>, depth: u8) -> Result<(), KubeError> {
    let kind = d.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
    if kind.ends_with("List") && depth == 0 {
        let items = d.get("items").and_then(|i| i.as_array()).cloned().unwrap_or_default();
        for it in items {
            push_doc(it, out, 1)?;
        }
        return Ok(());
    }
    if !matches!(kind.as_str(), "Service" | "Endpoints" | "EndpointSlice") {
        return Err(KubeError::Kind(kind));
    }
    let name = d.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("?").to_string();
    let mut d = d;
    if kind == "Endpoints"
        && let Some(o) = d.as_object_mut()
    {
        o.entry("subsets").or_insert_with(|| serde_json::json!([]));
    }
    let obj: Object = serde_json::from_value(d).map_err(|e| KubeError::Object {
        kind: kind.clone(),
        name,
        problem: e.to_string(),
    })?;
    obj.check()?;
    out.push(obj);
    Ok(())
}

/// Every object applied, and the specs they make. Objects are shared (`Arc`), so a
/// listing takes a snapshot in one pass of reference counts and is built elsewhere.
#[derive(Debug, Clone, Default)]
pub struct Store {
    objects: BTreeMap<String, Arc<Object>>,
}

impl Store {
    pub fn get(&self, key: &str) -> Option<&Object> {
        self.objects.get(key).map(|o| &**o)
    }
    pub fn iter(&self) -> impl Iterator<Item = &Object> {
        self.objects.values().map(|o| &**o)
    }
    /// Every object, in key order, shared with the store.
    pub fn snapshot(&self) -> Vec<Arc<Object>> {
        self.objects.values().cloned().collect()
    }
    pub fn len(&self) -> usize {
        self.objects.len()
    }
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Puts (or, with `delete`, removes) objects; the services whose specs changed.
    pub fn apply(&mut self, objs: Vec<Object>, delete: bool) -> BTreeSet<String> {
        let mut touched = BTreeSet::new();
        for o in objs {
            touched.insert(o.service());
            if delete {
                self.objects.remove(&o.key());
            } else {
                self.objects.insert(o.key(), Arc::new(o));
            }
        }
        touched
    }

    pub fn remove_key(&mut self, key: &str) -> Option<String> {
        self.objects.remove(key).map(|o| o.service())
    }

    /// Puts one object; the one it replaced.
    pub fn put(&mut self, o: Object) -> Option<Object> {
        self.objects.insert(o.key(), Arc::new(o)).map(Arc::unwrap_or_clone)
    }

    pub fn remove(&mut self, key: &str) -> Option<Object> {
        self.objects.remove(key).map(Arc::unwrap_or_clone)
    }

    /// Every service (`ns/name`) any object refers to.
    pub fn services(&self) -> BTreeSet<String> {
        self.iter().map(Object::service).collect()
    }

    /// The EndpointSlices of service `ns/name` (a walk of its namespace's slices).
    pub fn slices_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Object> + 'a {
        let ns = service.split_once('/').map_or("", |(ns, _)| ns);
        let dir = format!("endpointslices/{ns}/");
        self.objects
            .range(dir.clone()..)
            .take_while(move |(k, _)| k.starts_with(&dir))
            .map(|(_, o)| &**o)
            .filter(move |o| o.service() == service)
    }

    /// The specs of service `ns/name`, one per port (none when it has no Service object,
    /// or one that makes no dataplane state: headless, ExternalName, another proxy's).
    pub fn specs(&self, service: &str) -> Vec<ServiceSpec> {
        fields::specs(self, service)
    }
}

/// The Service and Endpoints objects that make `spec` (what `service set` writes to etcd
/// in a cluster): the inverse of [`Store::specs`] for a single-port service. Endpoints
/// are grouped by port, one subset each.
pub fn objects_of(spec: &ServiceSpec) -> Result<Vec<Object>, KubeError> {
    let bad = |p: &str| KubeError::Object { kind: "Service".into(), name: spec.name.clone(), problem: p.into() };
    let (ns, name) = spec.name.split_once('/').ok_or_else(|| bad("the name is not namespace/name"))?;
    if name.contains(':') {
        return Err(bad("a port of a multi-port service: change it with apply -f"));
    }
    if !spec.terminating.is_empty() {
        return Err(bad("a service with terminating endpoints: change it with apply -f"));
    }
    let metadata = Meta { name: name.into(), namespace: ns.into(), labels: BTreeMap::new() };
    let protocol = spec.protocol.name().to_ascii_uppercase();
    let (body, status) = fields::service_of(spec);
    let svc = Object::Service { metadata: metadata.clone(), spec: Box::new(body), status };
    let mut by_port: BTreeMap<u16, Vec<Address>> = BTreeMap::new();
    for e in &spec.endpoints {
        let no = fields::Accepted;
        let a = Address { ip: *e.ip(), node_name: no, hostname: no, target_ref: no };
        by_port.entry(e.port()).or_default().push(a);
    }
    let subsets = by_port
        .into_iter()
        .map(|(port, addresses)| Subset {
            addresses,
            not_ready_addresses: Vec::new(),
            ports: vec![EndpointPort { name: None, port, protocol: protocol.clone(), app_protocol: fields::Accepted }],
        })
        .collect();
    let objs = vec![svc, Object::Endpoints { metadata, subsets }];
    for o in &objs {
        o.check()?;
    }
    Ok(objs)
}

/// The service (`ns/name`) a spec name belongs to (`ns/name:port` -> `ns/name`).
pub fn service_of(spec_name: &str) -> &str {
    spec_name.split_once(':').map_or(spec_name, |(s, _)| s)
}

/// Whether a spec name belongs to service `ns/name` (itself or one of its ports).
pub fn spec_of(spec_name: &str, service: &str) -> bool {
    spec_name == service || spec_name.strip_prefix(service).is_some_and(|r| r.starts_with(':'))
}

mod decode;

pub mod fields;

#[cfg(test)]
mod tests;
