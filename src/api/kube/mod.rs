//! Kubernetes objects as `kubectl get -o yaml` prints them — `Service` (ClusterIP /
//! NodePort), `Endpoints`, `EndpointSlice` (discovery.k8s.io/v1), and `List`s of them —
//! and the store that turns them into the dataplane's [`ServiceSpec`]s, one per service
//! port, as kube-proxy does. Pure: text in, objects and specs out.
//!
//! Naming: a single-port service is `ns/name` (the article's `default/ghost`); each port
//! of a multi-port service is `ns/name:port-name` (or `:port` when it has no name).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::core::nat::service::{Protocol, ServiceSpec};

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
/// written with its `kind` as a tag and read back in one typed pass ([`decode`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", try_from = "decode::Raw")]
pub enum Object {
    Service { metadata: Meta, spec: ServiceBody },
    Endpoints { metadata: Meta, subsets: Vec<Subset> },
    EndpointSlice { metadata: Meta, endpoints: Vec<SliceEndpoint>, ports: Vec<EndpointPort> },
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
        }
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

    /// The specs of service `ns/name` (empty when it has no Service object).
    pub fn specs(&self, service: &str) -> Vec<ServiceSpec> {
        let Some((ns, name)) = service.split_once('/') else { return Vec::new() };
        let Some(Object::Service { spec, .. }) = self.get(&format!("services/{service}")) else {
            return Vec::new();
        };
        let Some(cluster_ip) = spec.cluster_ip.as_deref().and_then(|s| s.parse().ok()) else { return Vec::new() };
        let single = spec.ports.len() == 1;
        let slices = self.slices_of(service);
        let mut eps: Vec<(Option<&str>, &str, SocketAddrV4)> = Vec::new();
        if let Some(Object::Endpoints { subsets, .. }) = self.get(&format!("endpoints/{service}")) {
            for s in subsets {
                for p in &s.ports {
                    for a in &s.addresses {
                        eps.push((p.name.as_deref(), &p.protocol, SocketAddrV4::new(a.ip, p.port)));
                    }
                }
            }
        }
        for o in slices {
            if let Object::EndpointSlice { endpoints, ports, .. } = o {
                for p in ports {
                    for e in endpoints.iter().filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false)) {
                        for a in &e.addresses {
                            eps.push((p.name.as_deref(), &p.protocol, SocketAddrV4::new(*a, p.port)));
                        }
                    }
                }
            }
        }
        spec.ports
            .iter()
            .map(|p| {
                let suffix = p.name.clone().unwrap_or_else(|| p.port.to_string());
                let mut endpoints: Vec<SocketAddrV4> = eps
                    .iter()
                    .filter(|(n, proto, _)| *proto == p.protocol && (single || *n == p.name.as_deref()))
                    .map(|(_, _, e)| *e)
                    .collect();
                endpoints.sort();
                endpoints.dedup();
                ServiceSpec {
                    name: if single { service.to_string() } else { format!("{ns}/{name}:{suffix}") },
                    protocol: if p.protocol == "UDP" { Protocol::Udp } else { Protocol::Tcp },
                    cluster_ip,
                    port: p.port,
                    node_port: p.node_port,
                    endpoints,
                }
            })
            .collect()
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
    let metadata = Meta { name: name.into(), namespace: ns.into(), labels: BTreeMap::new() };
    let protocol = spec.protocol.name().to_ascii_uppercase();
    let svc = Object::Service {
        metadata: metadata.clone(),
        spec: ServiceBody {
            kind: if spec.node_port.is_some() { "NodePort" } else { "ClusterIP" }.into(),
            cluster_ip: Some(spec.cluster_ip.to_string()),
            ports: vec![ServicePort {
                name: None,
                protocol: protocol.clone(),
                port: spec.port,
                node_port: spec.node_port,
            }],
        },
    };
    let mut by_port: BTreeMap<u16, Vec<Address>> = BTreeMap::new();
    for e in &spec.endpoints {
        by_port.entry(e.port()).or_default().push(Address { ip: *e.ip() });
    }
    let subsets = by_port
        .into_iter()
        .map(|(port, addresses)| Subset {
            addresses,
            ports: vec![EndpointPort { name: None, port, protocol: protocol.clone() }],
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

#[cfg(test)]
mod tests;
