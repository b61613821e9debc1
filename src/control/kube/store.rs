//! The node's Kubernetes objects, and the dataplane's [`ServiceSpec`]s they make: one
//! per service port, as kube-proxy does. Pure: objects in, specs out.
//!
//! Naming: a single-port service is `ns/name` (the article's `default/ghost`); each port
//! of a multi-port service is `ns/name:port-name` (or `:port` when it has no name).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::sync::Arc;

use crate::api::kube::{Address, EndpointPort, KubeError, Meta, Object, ServiceBody, ServicePort, Subset};
use crate::core::nat::service::{Protocol, ServiceSpec};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kube::parse_manifest;
    use crate::core::tables::article;

    const GHOST: &str = include_str!("../../../netns-scripts/manifests/ghost.yaml");

    #[test]
    fn the_articles_ghost_manifest_makes_the_articles_service() {
        let objs = parse_manifest(GHOST).unwrap();
        assert_eq!(objs.iter().map(Object::kind).collect::<Vec<_>>(), ["Service", "Endpoints"]);
        let mut st = Store::default();
        let touched = st.apply(objs, false);
        assert_eq!(touched.into_iter().collect::<Vec<_>>(), ["default/ghost"]);
        assert_eq!(st.specs("default/ghost"), vec![article::ghost()]);
    }

    #[test]
    fn json_multi_port_and_slices() {
        let svc = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"dns","namespace":"kube-system"},
          "spec":{"clusterIP":"10.250.0.10","ports":[{"name":"dns","port":53,"protocol":"UDP"},{"name":"dns-tcp","port":53,"protocol":"TCP"}]}}"#;
        let slice = r#"
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata:
      name: dns-abcde
      namespace: kube-system
      labels: {kubernetes.io/service-name: dns}
    addressType: IPv4
    endpoints:
    - addresses: [10.244.1.9]
      conditions: {ready: true}
    - addresses: [10.244.2.9]
      conditions: {ready: false}
    ports:
    - {name: dns, port: 53, protocol: UDP}
    - {name: dns-tcp, port: 53, protocol: TCP}
    "#;
        let mut st = Store::default();
        st.apply(parse_manifest(svc).unwrap(), false);
        st.apply(parse_manifest(slice).unwrap(), false);
        let specs = st.specs("kube-system/dns");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].name, "kube-system/dns:dns");
        assert_eq!(
            (specs[0].protocol, specs[0].endpoints.clone()),
            (Protocol::Udp, vec!["10.244.1.9:53".parse().unwrap()])
        );
        assert_eq!(specs[1].protocol, Protocol::Tcp);
        assert!(
            spec_of("kube-system/dns:dns-tcp", "kube-system/dns") && !spec_of("kube-system/dnsx", "kube-system/dns")
        );
        // Deleting the Service leaves no spec, whatever endpoints remain.
        st.apply(parse_manifest(svc).unwrap(), true);
        assert!(st.specs("kube-system/dns").is_empty());
    }

    #[test]
    fn service_set_writes_objects_that_make_the_same_spec() {
        let mut g = article::ghost();
        g.endpoints = vec!["10.244.1.5:2368".parse().unwrap(), "10.244.0.74:8080".parse().unwrap()];
        let objs = objects_of(&g).unwrap();
        assert_eq!(
            objs.iter().map(Object::key).collect::<Vec<_>>(),
            ["services/default/ghost", "endpoints/default/ghost"]
        );
        let mut st = Store::default();
        st.apply(objs, false);
        g.endpoints.sort();
        assert_eq!(st.specs("default/ghost"), vec![g.clone()]);
        // Stored as JSON and read back (what every node's watch does), still the same.
        let back: Vec<Object> =
            serde_json::from_str(&serde_json::to_string(&st.iter().collect::<Vec<_>>()).unwrap()).unwrap();
        let mut st2 = Store::default();
        st2.apply(back, false);
        assert_eq!(st2.specs("default/ghost"), vec![g.clone()]);
        g.name = "default/ghost:http".into();
        assert!(matches!(objects_of(&g), Err(KubeError::Object { problem, .. }) if problem.contains("multi-port")));
        g.name = "ghost".into();
        assert!(objects_of(&g).is_err());
    }
}
