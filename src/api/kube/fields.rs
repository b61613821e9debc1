//! The parts of a Service and an EndpointSlice beyond names and ports: session affinity,
//! the load balancer's status, topology hints, and [`Accepted`] for the fields that
//! have no dataplane meaning. Types only; what each means and which are refused is
//! [`super::check`]'s, what they make on a node `control::kube`'s.

use serde::{Deserialize, Serialize};

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

/// The API server's bounds of `sessionAffinityConfig.clientIP.timeoutSeconds`
/// (`MaxClientIPServiceAffinitySeconds`) and its default.
pub const CLIENT_IP_TIMEOUT_MAX: i64 = 86_400;
pub const CLIENT_IP_TIMEOUT_DEFAULT: i64 = 10_800;

/// kube-proxy ignores a Service (and its slices) with this label: another proxy serves it.
pub const SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// kube-proxy ignores an EndpointSlice with this label (a headless service's).
pub const HEADLESS: &str = "service.kubernetes.io/headless";

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

impl Ingress {
    /// A VIP-mode ingress at `ip`.
    pub fn vip(ip: String) -> Ingress {
        Ingress { ip: Some(ip), hostname: None, ip_mode: None, ports: Accepted }
    }
    /// Captured by the proxy, as kube-proxy's `IsVIPMode`: an address, not in Proxy mode.
    pub fn captured(&self) -> Option<&str> {
        self.ip.as_deref().filter(|_| self.ip_mode.as_deref() != Some("Proxy"))
    }
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
