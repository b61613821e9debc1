//! What a Service and its endpoint objects make on a node: the dataplane's
//! [`ServiceSpec`]s, one per service port, as kube-proxy derives its `ServicePort`s and
//! endpoints (`pkg/proxy/serviceport.go`'s `newBaseServiceInfo`,
//! `endpointslicecache.go`), and the inverse for `service set` through etcd. The fields
//! themselves, and which are refused, are `api::kube`'s; docs/services.md lists them.

use std::net::SocketAddrV4;

use crate::api::kube::check::{externally_accessible, source_range, stateless};
use crate::api::kube::fields::{CLIENT_IP_TIMEOUT_DEFAULT, HEADLESS, SERVICE_PROXY_NAME};
use crate::api::kube::{
    Accepted, Address, ClientIpConfig, Conditions, EndpointPort, Ingress, LoadBalancerStatus, Object, ServiceBody,
    ServicePort, ServiceStatus, SessionAffinityConfig,
};
use crate::core::Ipv4Net;
use crate::core::nat::service::{Protocol, ServiceSpec};

/// How an endpoint may be used, from its conditions (kube-proxy's `newEndpointSliceInfo`:
/// unset `ready` and `serving` are true, unset `terminating` false).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usable {
    Ready,
    /// Serving and terminating, not ready: the KEP-1669 fallback.
    Terminating,
    No,
}

fn usable(c: Option<&Conditions>, publish_not_ready: bool) -> Usable {
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(true);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    // publishNotReadyAddresses: "disregard any indications of ready/not-ready" (the
    // EndpointSlice controller marks every endpoint ready).
    if ready || publish_not_ready {
        Usable::Ready
    } else if serving && terminating {
        Usable::Terminating
    } else {
        Usable::No
    }
}

/// One endpoint of the service's objects: its port name and protocol, address, use.
type Found<'a> = (Option<&'a str>, &'a str, SocketAddrV4, Usable);

fn endpoints_of<'a>(
    endpoints: Option<&'a Object>,
    slices: impl Iterator<Item = &'a Object>,
    publish: bool,
) -> Vec<Found<'a>> {
    let mut eps: Vec<Found<'a>> = Vec::new();
    let addr = |a: &Address, p: &'a EndpointPort| SocketAddrV4::new(a.ip, p.port);
    if let Some(Object::Endpoints { subsets, .. }) = endpoints {
        for s in subsets {
            for p in &s.ports {
                let (name, proto) = (p.name.as_deref(), p.protocol.as_str());
                eps.extend(s.addresses.iter().map(|a| (name, proto, addr(a, p), Usable::Ready)));
                let not_ready = if publish { Usable::Ready } else { Usable::No };
                eps.extend(s.not_ready_addresses.iter().map(|a| (name, proto, addr(a, p), not_ready)));
            }
        }
    }
    for o in slices {
        let Object::EndpointSlice { metadata, endpoints, ports } = o else { continue };
        if metadata.labels.contains_key(HEADLESS) || metadata.labels.contains_key(SERVICE_PROXY_NAME) {
            continue;
        }
        for p in ports {
            // kube-proxy takes an endpoint's first address ("clients may choose to only
            // use the first element").
            for e in endpoints.iter().filter(|e| !e.addresses.is_empty()) {
                let u = usable(e.conditions.as_ref(), publish);
                eps.push((p.name.as_deref(), &p.protocol, SocketAddrV4::new(e.addresses[0], p.port), u));
            }
        }
    }
    eps
}

/// The specs of service `ns/name`, one per port, from its Service object, its Endpoints
/// object if any and its EndpointSlices.
pub fn specs<'a>(
    service: &str,
    svc: &'a Object,
    endpoints: Option<&'a Object>,
    slices: impl Iterator<Item = &'a Object>,
) -> Vec<ServiceSpec> {
    let Some((ns, name)) = service.split_once('/') else { return Vec::new() };
    let Object::Service { metadata, spec, status } = svc else { return Vec::new() };
    if stateless(metadata, spec) {
        return Vec::new();
    }
    let Some(cluster_ip) = spec.cluster_ip.as_deref().and_then(|s| s.parse().ok()) else { return Vec::new() };
    let eps = endpoints_of(endpoints, slices, spec.publish_not_ready_addresses == Some(true));
    let single = spec.ports.len() == 1;
    let policy = policy_of(spec, status);
    spec.ports
        .iter()
        .map(|p| {
            let suffix = p.name.clone().unwrap_or_else(|| p.port.to_string());
            let mine = |u: Usable| -> Vec<SocketAddrV4> {
                let mut v: Vec<SocketAddrV4> = eps
                    .iter()
                    .filter(|(n, proto, _, use_)| {
                        *proto == p.protocol && (single || *n == p.name.as_deref()) && *use_ == u
                    })
                    .map(|(_, _, e, _)| *e)
                    .collect();
                v.sort();
                v.dedup();
                v
            };
            let endpoints = mine(Usable::Ready);
            let terminating = mine(Usable::Terminating).into_iter().filter(|e| !endpoints.contains(e)).collect();
            ServiceSpec {
                name: if single { service.to_string() } else { format!("{ns}/{name}:{suffix}") },
                protocol: if p.protocol == "UDP" { Protocol::Udp } else { Protocol::Tcp },
                cluster_ip,
                port: p.port,
                node_port: p.node_port,
                endpoints,
                terminating,
                ..policy.clone()
            }
        })
        .collect()
}

/// The per-service fields of a spec (the same for each of its ports), as kube-proxy's
/// `newBaseServiceInfo` derives them.
fn policy_of(spec: &ServiceBody, status: &ServiceStatus) -> ServiceSpec {
    let external_local = externally_accessible(spec) && spec.external_traffic_policy.as_deref() == Some("Local");
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let t =
            spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds);
        t.unwrap_or(CLIENT_IP_TIMEOUT_DEFAULT) as u32
    });
    let load_balancer_ips = status.ingress().filter_map(|i| i.captured()?.parse().ok()).collect();
    ServiceSpec {
        external_ips: spec.external_ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
        load_balancer_ips,
        source_ranges: spec
            .load_balancer_source_ranges
            .iter()
            .filter_map(|r| source_range(r).and_then(|(a, l)| Ipv4Net::new(a, l)))
            .collect(),
        external_local,
        internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        affinity_timeout,
        health_check_node_port: spec.health_check_node_port.filter(|_| spec.kind == "LoadBalancer" && external_local),
        ..ServiceSpec::default()
    }
}

/// The Service body and status that make `spec` (the inverse of [`specs`] for a
/// single-port service), for `service set` and `endpoint add` through etcd.
pub fn service_of(s: &ServiceSpec) -> (ServiceBody, ServiceStatus) {
    let lb = !s.load_balancer_ips.is_empty() || s.health_check_node_port.is_some() || !s.source_ranges.is_empty();
    let kind = if lb {
        "LoadBalancer"
    } else if s.node_port.is_some() {
        "NodePort"
    } else {
        "ClusterIP"
    };
    let port = ServicePort {
        name: None,
        protocol: s.protocol.name().to_ascii_uppercase(),
        port: s.port,
        node_port: s.node_port,
        target_port: Accepted,
        app_protocol: Accepted,
    };
    let local = |l: bool| Some(if l { "Local" } else { "Cluster" }.to_string());
    let body = ServiceBody {
        kind: kind.into(),
        cluster_ip: Some(s.cluster_ip.to_string()),
        ports: vec![port],
        external_ips: s.external_ips.iter().map(ToString::to_string).collect(),
        session_affinity: s.affinity_timeout.map(|_| "ClientIP".into()),
        session_affinity_config: s
            .affinity_timeout
            .map(|t| SessionAffinityConfig { client_ip: Some(ClientIpConfig { timeout_seconds: Some(i64::from(t)) }) }),
        external_traffic_policy: (kind != "ClusterIP" || !s.external_ips.is_empty())
            .then(|| local(s.external_local))
            .flatten(),
        internal_traffic_policy: s.internal_local.then(|| local(true)).flatten(),
        load_balancer_source_ranges: s.source_ranges.iter().map(ToString::to_string).collect(),
        health_check_node_port: s.health_check_node_port,
        allocate_load_balancer_node_ports: (lb && s.node_port.is_none()).then_some(false),
        ..ServiceBody::default()
    };
    let ingress: Vec<Ingress> = s.load_balancer_ips.iter().map(|ip| Ingress::vip(ip.to_string())).collect();
    let status = ServiceStatus { load_balancer: LoadBalancerStatus { ingress }, conditions: Accepted };
    (body, status)
}

#[cfg(test)]
#[path = "fields_tests.rs"]
mod tests;
