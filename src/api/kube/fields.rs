//! What each Service / Endpoints / EndpointSlice field means for the dataplane, as
//! kube-proxy reads it (`pkg/proxy/serviceport.go`, `endpointslicecache.go`,
//! `pkg/api/v1/service`), and the refusals: a field that changes packet handling and that
//! ucanal does not implement is refused by name, never accepted and ignored; a value the
//! API server would refuse is refused with its words. docs/services.md lists every field.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use super::{Address, EndpointPort, Meta, Object, ServiceBody, ServicePort, SliceEndpoint, Store};
use crate::core::Ipv4Net;
use crate::core::nat::service::{AFFINITY_DEFAULT_SECS, AFFINITY_MAX_SECS, Protocol, ServiceSpec};

/// kube-proxy ignores a Service (and its slices) with this label: another proxy serves it.
pub const SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// kube-proxy ignores an EndpointSlice with this label (a headless service's).
pub const HEADLESS: &str = "service.kubernetes.io/headless";

/// A field accepted with no dataplane meaning: read (whatever its value), not kept, so
/// the stored form stays what ucanal acts on and reads back equal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accepted;

impl<'de> Deserialize<'de> for Accepted {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(Accepted)
    }
}

/// `spec.sessionAffinityConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionAffinityConfig {
    #[serde(rename = "clientIP", default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientIpConfig {
    /// Wider than the API's int32 range so a wrong value is refused with the API's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

/// A Service's `status`: the load balancer's ingress addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceStatus {
    #[serde(default, skip_serializing_if = "LoadBalancerStatus::is_empty")]
    pub load_balancer: LoadBalancerStatus,
    #[serde(default, skip_serializing)]
    pub conditions: Accepted,
}

impl ServiceStatus {
    pub fn is_empty(&self) -> bool {
        self.load_balancer.is_empty()
    }
    pub fn ingress(&self) -> impl Iterator<Item = &Ingress> {
        self.load_balancer.ingress.iter()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Ingress>,
}

impl LoadBalancerStatus {
    pub fn is_empty(&self) -> bool {
        self.ingress.is_empty()
    }
}

/// `status.loadBalancer.ingress[]`: an `ip` (VIP mode, captured as kube-proxy does), or
/// a `hostname` only, or `ipMode: Proxy` (the load balancer proxies: not captured).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ingress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_mode: Option<String>,
    #[serde(default, skip_serializing)]
    pub ports: Accepted,
}

/// An EndpointSlice endpoint's topology hints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hints {
    /// A ucanal node has no zone label; kube-proxy on such a node ignores zone hints.
    #[serde(default, skip_serializing)]
    pub for_zones: Accepted,
    /// `PreferSameNode` routing: not implemented, refused.
    #[serde(default, skip_serializing)]
    pub for_nodes: Option<Accepted>,
}

pub(super) fn check_protocol(field: &str, p: &str) -> Result<(), String> {
    match p {
        "TCP" | "UDP" => Ok(()),
        other => Err(format!("{field}: protocol {other} is not implemented (TCP or UDP)")),
    }
}

fn one_of(field: &str, v: Option<&str>, allowed: &[&str]) -> Result<(), String> {
    match v {
        Some(x) if !allowed.contains(&x) => {
            Err(format!("{field}: Unsupported value: \"{x}\": supported values: {}", allowed.join(", ")))
        }
        _ => Ok(()),
    }
}

fn ipv4(field: &str, s: &str) -> Result<Ipv4Addr, String> {
    s.parse().map_err(|_| format!("{field}: {s} is not an IPv4 address (ucanal is IPv4-only)"))
}

/// A source range as kube-proxy takes it: whitespace trimmed, host bits allowed.
fn source_range(field: &str, s: &str) -> Result<Ipv4Net, String> {
    let t = s.trim();
    let bad = || format!("{field}: {s:?} is not an IPv4 CIDR");
    let (a, l) = t.split_once('/').ok_or_else(bad)?;
    let (a, l): (Ipv4Addr, u8) = (a.parse().map_err(|_| bad())?, l.parse().map_err(|_| bad())?);
    Ipv4Net::new(a, l).ok_or_else(bad)
}

/// Makes no dataplane state at all (kube-proxy skips it): headless, ExternalName, or a
/// service another proxy serves.
fn stateless(meta: &Meta, spec: &ServiceBody) -> bool {
    spec.kind == "ExternalName"
        || spec.cluster_ip.as_deref() == Some("None")
        || meta.labels.contains_key(SERVICE_PROXY_NAME)
}

/// kube's `ExternallyAccessible`: reachable by NodePort, load balancer or externalIPs.
fn externally_accessible(spec: &ServiceBody) -> bool {
    matches!(spec.kind.as_str(), "NodePort" | "LoadBalancer")
        || (spec.kind == "ClusterIP" && !spec.external_ips.is_empty())
}

pub(super) fn check_service(meta: &Meta, spec: &ServiceBody, status: &ServiceStatus) -> Result<(), String> {
    one_of("spec.type", Some(&spec.kind), &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"])?;
    one_of("spec.sessionAffinity", spec.session_affinity.as_deref(), &["None", "ClientIP"])?;
    one_of("spec.externalTrafficPolicy", spec.external_traffic_policy.as_deref(), &["Cluster", "Local"])?;
    one_of("spec.internalTrafficPolicy", spec.internal_traffic_policy.as_deref(), &["Cluster", "Local"])?;
    one_of("spec.ipFamilyPolicy", spec.ip_family_policy.as_deref(), &["SingleStack", "PreferDualStack"])
        .map_err(|e| format!("{e} (RequireDualStack: ucanal is IPv4-only)"))?;
    for (i, f) in spec.ip_families.iter().enumerate() {
        if f != "IPv4" {
            return Err(format!("spec.ipFamilies[{i}]: {f} is not implemented (ucanal is IPv4-only)"));
        }
    }
    if let Some(c) = &spec.session_affinity_config {
        if spec.session_affinity.as_deref() != Some("ClientIP") {
            return Err("spec.sessionAffinityConfig: Forbidden: must not be set when sessionAffinity is None".into());
        }
        if let Some(t) = c.client_ip.as_ref().and_then(|c| c.timeout_seconds)
            && !(1..=i64::from(AFFINITY_MAX_SECS)).contains(&t)
        {
            return Err(format!(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: {t}: must be greater than 0 and less than {AFFINITY_MAX_SECS}"
            ));
        }
    }
    if spec.external_traffic_policy.is_some() && !externally_accessible(spec) {
        return Err(
            "spec.externalTrafficPolicy: Invalid value: may only be set for externally-accessible services".into()
        );
    }
    let lb = spec.kind == "LoadBalancer";
    if spec.health_check_node_port.is_some() && !(lb && spec.external_traffic_policy.as_deref() == Some("Local")) {
        return Err("spec.healthCheckNodePort: Invalid value: may only be set when type is LoadBalancer and externalTrafficPolicy is Local".into());
    }
    if !spec.load_balancer_source_ranges.is_empty() && !lb {
        return Err("spec.loadBalancerSourceRanges: Forbidden: may only be used when type is 'LoadBalancer'".into());
    }
    if spec.allocate_load_balancer_node_ports.is_some() && !lb {
        return Err(
            "spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when type is 'LoadBalancer'".into()
        );
    }
    for (i, r) in spec.load_balancer_source_ranges.iter().enumerate() {
        source_range(&format!("spec.loadBalancerSourceRanges[{i}]"), r)?;
    }
    for (i, ip) in spec.external_ips.iter().enumerate() {
        ipv4(&format!("spec.externalIPs[{i}]"), ip)?;
    }
    for (i, ing) in status.ingress().enumerate() {
        one_of(&format!("status.loadBalancer.ingress[{i}].ipMode"), ing.ip_mode.as_deref(), &["VIP", "Proxy"])?;
        if let Some(ip) = &ing.ip {
            ipv4(&format!("status.loadBalancer.ingress[{i}].ip"), ip)?;
        }
    }
    if stateless(meta, spec) {
        return Ok(());
    }
    check_addresses(spec)?;
    check_ports(spec)
}

fn check_addresses(spec: &ServiceBody) -> Result<(), String> {
    let ip = match spec.cluster_ip.as_deref() {
        Some(ip) if ip.parse::<Ipv4Addr>().is_ok() => ip,
        other => return Err(format!("spec.clusterIP {other:?} is not an IPv4 address (ucanal does not allocate)")),
    };
    for (i, c) in spec.cluster_ips.iter().enumerate() {
        if i == 0 && c != ip {
            return Err(format!("spec.clusterIPs[0]: {c} must be spec.clusterIP {ip}"));
        }
        if i > 0 {
            return Err(format!("spec.clusterIPs[{i}]: a second cluster IP (dual-stack) is not implemented"));
        }
    }
    Ok(())
}

fn check_ports(spec: &ServiceBody) -> Result<(), String> {
    if spec.ports.is_empty() {
        return Err("spec.ports is empty".into());
    }
    let allocates = match spec.kind.as_str() {
        "NodePort" => true,
        "LoadBalancer" => spec.allocate_load_balancer_node_ports != Some(false),
        _ => false,
    };
    for (i, p) in spec.ports.iter().enumerate() {
        check_protocol(&format!("spec.ports[{i}]"), &p.protocol)?;
        match p.node_port {
            Some(_) if !matches!(spec.kind.as_str(), "NodePort" | "LoadBalancer") => {
                return Err(format!("spec.ports[{i}].nodePort on a {} service", spec.kind));
            }
            None if allocates => {
                return Err(format!(
                    "spec.ports[{i}].nodePort is missing (ucanal does not allocate NodePorts; for a LoadBalancer without them say allocateLoadBalancerNodePorts: false)"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

pub(super) fn check_slice(endpoints: &[SliceEndpoint], ports: &[EndpointPort]) -> Result<(), String> {
    for (i, p) in ports.iter().enumerate() {
        check_protocol(&format!("ports[{i}]"), &p.protocol)?;
    }
    for (i, e) in endpoints.iter().enumerate() {
        if e.hints.as_ref().is_some_and(|h| h.for_nodes.is_some()) {
            return Err(format!(
                "endpoints[{i}].hints.forNodes: node topology hints (trafficDistribution PreferSameNode) are not implemented"
            ));
        }
    }
    Ok(())
}

/// How an endpoint may be used, from its conditions (kube-proxy's `newEndpointSliceInfo`:
/// unset `ready` and `serving` are true, unset `terminating` false).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usable {
    Ready,
    /// Serving and terminating, not ready: the KEP-1669 fallback.
    Terminating,
    No,
}

fn usable(c: Option<&super::Conditions>, publish_not_ready: bool) -> Usable {
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

fn endpoints_of<'a>(st: &'a Store, service: &'a str, publish: bool) -> Vec<Found<'a>> {
    let mut eps: Vec<Found<'a>> = Vec::new();
    let addr = |a: &Address, p: &'a EndpointPort| SocketAddrV4::new(a.ip, p.port);
    if let Some(Object::Endpoints { subsets, .. }) = st.get(&format!("endpoints/{service}")) {
        for s in subsets {
            for p in &s.ports {
                let (name, proto) = (p.name.as_deref(), p.protocol.as_str());
                eps.extend(s.addresses.iter().map(|a| (name, proto, addr(a, p), Usable::Ready)));
                let not_ready = if publish { Usable::Ready } else { Usable::No };
                eps.extend(s.not_ready_addresses.iter().map(|a| (name, proto, addr(a, p), not_ready)));
            }
        }
    }
    for o in st.slices_of(service) {
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

/// The specs of service `ns/name`, one per port.
pub(super) fn specs(st: &Store, service: &str) -> Vec<ServiceSpec> {
    let Some((ns, name)) = service.split_once('/') else { return Vec::new() };
    let Some(Object::Service { metadata, spec, status }) = st.get(&format!("services/{service}")) else {
        return Vec::new();
    };
    if stateless(metadata, spec) {
        return Vec::new();
    }
    let Some(cluster_ip) = spec.cluster_ip.as_deref().and_then(|s| s.parse().ok()) else { return Vec::new() };
    let eps = endpoints_of(st, service, spec.publish_not_ready_addresses == Some(true));
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
        t.map_or(AFFINITY_DEFAULT_SECS, |t| t as u32)
    });
    let load_balancer_ips = status
        .ingress()
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect();
    ServiceSpec {
        external_ips: spec.external_ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
        load_balancer_ips,
        source_ranges: spec.load_balancer_source_ranges.iter().filter_map(|r| source_range("", r).ok()).collect(),
        external_local,
        internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        affinity_timeout,
        health_check_node_port: spec.health_check_node_port.filter(|_| spec.kind == "LoadBalancer" && external_local),
        ..ServiceSpec::default()
    }
}

/// The Service body and status that make `spec` (the inverse of [`specs`] for a
/// single-port service), for `service set` and `endpoint add` through etcd.
pub(super) fn service_of(s: &ServiceSpec) -> (ServiceBody, ServiceStatus) {
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
    let ingress: Vec<Ingress> = s
        .load_balancer_ips
        .iter()
        .map(|ip| Ingress { ip: Some(ip.to_string()), hostname: None, ip_mode: None, ports: Accepted })
        .collect();
    let status = ServiceStatus { load_balancer: LoadBalancerStatus { ingress }, conditions: Accepted };
    (body, status)
}

#[cfg(test)]
#[path = "fields_tests.rs"]
mod tests;
