//! What each Service / Endpoints / EndpointSlice field means for the checks an object
//! passes before it is applied or stored, as kube-proxy and the API server read them
//! (`pkg/proxy/serviceport.go`, `pkg/api/v1/service`, the API's validation): a field that
//! changes packet handling and that ucanal does not implement is refused by name, never
//! accepted and ignored; a value the API server would refuse is refused with its words.
//! docs/services.md lists every field.

use std::net::Ipv4Addr;

use super::fields::{CLIENT_IP_TIMEOUT_MAX, SERVICE_PROXY_NAME};
use super::{EndpointPort, KubeError, Meta, Object, ServiceBody, ServiceStatus, SliceEndpoint};

impl Object {
    /// The checks every object passes before it is applied or stored: names are DNS
    /// names, then each kind's fields (below).
    pub fn check(&self) -> Result<(), KubeError> {
        if let Object::Policy { metadata, manifest } = self {
            return super::check_policy(metadata, manifest);
        }
        let m = self.meta();
        let bad = |p: Refused| KubeError::Object {
            kind: self.kind().into(),
            name: format!("{}/{}", m.namespace, m.name),
            problem: p.0,
        };
        let dns = |s: &str| {
            !s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        };
        if !dns(&m.name) || !dns(&m.namespace) {
            return Err(bad("metadata.name and .namespace must be DNS names".into()));
        }
        let checked = match self {
            Object::Service { metadata, spec, status } => check_service(metadata, spec, status),
            Object::Endpoints { subsets, .. } => {
                subsets.iter().flat_map(|s| &s.ports).try_for_each(|p| check_protocol("ports", &p.protocol))
            }
            Object::EndpointSlice { endpoints, ports, .. } => check_slice(endpoints, ports),
            Object::Policy { .. } => Ok(()),
        };
        checked.map_err(bad)
    }
}

/// What a check found wrong with one field of an object: the field's path and the
/// fault, in the API server's words where it has them. `Object::check` files it as a
/// `KubeError::Object` under the object's kind and name; nothing reads it but a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Refused {
    fn from(s: String) -> Refused {
        Refused(s)
    }
}

impl From<&str> for Refused {
    fn from(s: &str) -> Refused {
        Refused(s.to_string())
    }
}

fn check_protocol(field: &str, p: &str) -> Result<(), Refused> {
    match p {
        "TCP" | "UDP" => Ok(()),
        other => Err(format!("{field}: protocol {other} is not implemented (TCP or UDP)").into()),
    }
}

fn one_of(field: &str, v: Option<&str>, allowed: &[&str]) -> Result<(), Refused> {
    match v {
        Some(x) if !allowed.contains(&x) => {
            Err(format!("{field}: Unsupported value: \"{x}\": supported values: {}", allowed.join(", ")).into())
        }
        _ => Ok(()),
    }
}

fn ipv4(field: &str, s: &str) -> Result<Ipv4Addr, Refused> {
    s.parse().map_err(|_| format!("{field}: {s} is not an IPv4 address (ucanal is IPv4-only)").into())
}

/// A source range as kube-proxy takes it: whitespace trimmed, host bits allowed (the
/// caller clears them); its address and prefix length.
pub fn source_range(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, l) = s.trim().split_once('/')?;
    let (a, l): (Ipv4Addr, u8) = (a.parse().ok()?, l.parse().ok()?);
    (l <= 32).then_some((a, l))
}

/// Makes no dataplane state at all (kube-proxy skips it): headless, ExternalName, or a
/// service another proxy serves.
pub fn stateless(meta: &Meta, spec: &ServiceBody) -> bool {
    spec.kind == "ExternalName"
        || spec.cluster_ip.as_deref() == Some("None")
        || meta.labels.contains_key(SERVICE_PROXY_NAME)
}

/// kube's `ExternallyAccessible`: reachable by NodePort, load balancer or externalIPs.
pub fn externally_accessible(spec: &ServiceBody) -> bool {
    matches!(spec.kind.as_str(), "NodePort" | "LoadBalancer")
        || (spec.kind == "ClusterIP" && !spec.external_ips.is_empty())
}

fn check_service(meta: &Meta, spec: &ServiceBody, status: &ServiceStatus) -> Result<(), Refused> {
    one_of("spec.type", Some(&spec.kind), &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"])?;
    one_of("spec.sessionAffinity", spec.session_affinity.as_deref(), &["None", "ClientIP"])?;
    one_of("spec.externalTrafficPolicy", spec.external_traffic_policy.as_deref(), &["Cluster", "Local"])?;
    one_of("spec.internalTrafficPolicy", spec.internal_traffic_policy.as_deref(), &["Cluster", "Local"])?;
    one_of("spec.ipFamilyPolicy", spec.ip_family_policy.as_deref(), &["SingleStack", "PreferDualStack"])
        .map_err(|e| format!("{e} (RequireDualStack: ucanal is IPv4-only)"))?;
    for (i, f) in spec.ip_families.iter().enumerate() {
        if f != "IPv4" {
            return Err(format!("spec.ipFamilies[{i}]: {f} is not implemented (ucanal is IPv4-only)").into());
        }
    }
    if let Some(c) = &spec.session_affinity_config {
        if spec.session_affinity.as_deref() != Some("ClientIP") {
            return Err("spec.sessionAffinityConfig: Forbidden: must not be set when sessionAffinity is None".into());
        }
        if let Some(t) = c.client_ip.as_ref().and_then(|c| c.timeout_seconds)
            && !(1..=CLIENT_IP_TIMEOUT_MAX).contains(&t)
        {
            return Err(format!(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: {t}: must be greater than 0 and less than {CLIENT_IP_TIMEOUT_MAX}"
            ).into());
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
        source_range(r).ok_or_else(|| format!("spec.loadBalancerSourceRanges[{i}]: {r:?} is not an IPv4 CIDR"))?;
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

fn check_addresses(spec: &ServiceBody) -> Result<(), Refused> {
    let ip = match spec.cluster_ip.as_deref() {
        Some(ip) if ip.parse::<Ipv4Addr>().is_ok() => ip,
        other => {
            return Err(format!("spec.clusterIP {other:?} is not an IPv4 address (ucanal does not allocate)").into());
        }
    };
    for (i, c) in spec.cluster_ips.iter().enumerate() {
        if i == 0 && c != ip {
            return Err(format!("spec.clusterIPs[0]: {c} must be spec.clusterIP {ip}").into());
        }
        if i > 0 {
            return Err(format!("spec.clusterIPs[{i}]: a second cluster IP (dual-stack) is not implemented").into());
        }
    }
    Ok(())
}

fn check_ports(spec: &ServiceBody) -> Result<(), Refused> {
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
                return Err(format!("spec.ports[{i}].nodePort on a {} service", spec.kind).into());
            }
            None if allocates => {
                return Err(format!(
                    "spec.ports[{i}].nodePort is missing (ucanal does not allocate NodePorts; for a LoadBalancer without them say allocateLoadBalancerNodePorts: false)"
                ).into());
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_slice(endpoints: &[SliceEndpoint], ports: &[EndpointPort]) -> Result<(), Refused> {
    for (i, p) in ports.iter().enumerate() {
        check_protocol(&format!("ports[{i}]"), &p.protocol)?;
    }
    for (i, e) in endpoints.iter().enumerate() {
        if e.hints.as_ref().is_some_and(|h| h.for_nodes.is_some()) {
            return Err(format!(
                "endpoints[{i}].hints.forNodes: node topology hints (trafficDistribution PreferSameNode) are not implemented"
            ).into());
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
