//! A service port as the dataplane knows it: what kube-proxy's `ServicePort` and its
//! endpoints say (cluster IP, NodePort, externalIPs, load-balancer IPs and their source
//! ranges, the two traffic policies, session affinity, the ready and the
//! serving-and-terminating endpoints), with its hit counters. The maps that find a
//! service are [`super::service_table`]'s; what a packet to one may do is
//! [`super::candidates`]'.
//!
//! Hit counters live outside the snapshot (`Arc`s the control plane carries from one
//! snapshot to the next), and count like `iptables -vnL -t nat`: nat rules only see the
//! first packet of a connection, so `packets` is new flows and `bytes` their first packets.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use super::service_table::{ServiceTable, spec_key};
use crate::core::Ipv4Net;
use crate::wire::ipv4::{PROTO_TCP, PROTO_UDP};

/// The largest `sessionAffinityConfig.clientIP.timeoutSeconds` the API server accepts
/// (one day); its default is [`AFFINITY_DEFAULT_SECS`].
pub const AFFINITY_MAX_SECS: u32 = 86_400;
/// kube's `DefaultClientIPServiceAffinitySeconds` (three hours).
pub const AFFINITY_DEFAULT_SECS: u32 = 10_800;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A service port as the control plane describes it (`kubectl get svc` + endpoints).
/// Every field past `endpoints` is optional in the config and the stored forms, so
/// older state files and journals still read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// `namespace/name`, as kube-proxy's rule comments print it.
    pub name: String,
    pub protocol: Protocol,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// The ready endpoints (EndpointSlice `ready`, Endpoints `addresses`).
    #[serde(default)]
    pub endpoints: Vec<SocketAddrV4>,
    /// Endpoints that are serving and terminating but not ready: used only where a
    /// traffic policy's scope has no ready endpoint (KEP-1669). Not-serving endpoints
    /// are never listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terminating: Vec<SocketAddrV4>,
    /// `spec.externalIPs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip` (VIP mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `spec.loadBalancerSourceRanges`: who may reach the load-balancer IPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<Ipv4Net>,
    /// `externalTrafficPolicy: Local`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub internal_local: bool,
    /// `sessionAffinity: ClientIP` with its `timeoutSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<u32>,
    /// `spec.healthCheckNodePort` (LoadBalancer with `externalTrafficPolicy: Local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<u16>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            name: String::new(),
            protocol: Protocol::Tcp,
            cluster_ip: Ipv4Addr::UNSPECIFIED,
            port: 0,
            node_port: None,
            endpoints: Vec::new(),
            terminating: Vec::new(),
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            source_ranges: Vec::new(),
            external_local: false,
            internal_local: false,
            affinity_timeout: None,
            health_check_node_port: None,
        }
    }
}

/// Why a spec cannot be put in the table: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SpecError {
    pub field: String,
    pub problem: String,
}

impl ServiceSpec {
    /// The ready endpoints, then the serving-and-terminating ones (the order of
    /// [`Service::endpoint_hits`]).
    pub fn all_endpoints(&self) -> impl Iterator<Item = &SocketAddrV4> {
        self.endpoints.iter().chain(&self.terminating)
    }
    /// Reachable other than by its cluster IP (kube-proxy's `ExternallyAccessible`).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty() || !self.load_balancer_ips.is_empty()
    }
    /// Whether it has a usable endpoint anywhere (kube-proxy's `hasEndpoints`): a
    /// service without one REJECTs on every address.
    pub fn has_endpoints(&self) -> bool {
        !self.endpoints.is_empty() || !self.terminating.is_empty()
    }

    /// Checks what the dataplane relies on, beyond the node-level checks of the config:
    /// the affinity timeout as the API server bounds it, external addresses outside the
    /// cluster and service CIDRs (the fast path looks them up only for other
    /// destinations), and each endpoint listed once.
    pub fn check_policy(&self, cluster: Ipv4Net, services: Ipv4Net) -> Result<(), SpecError> {
        let bad = |field: String, problem: String| Err(SpecError { field, problem });
        if let Some(t) = self.affinity_timeout
            && !(1..=AFFINITY_MAX_SECS).contains(&t)
        {
            return bad(
                "affinity_timeout".into(),
                format!("{t}: must be greater than 0 and at most {AFFINITY_MAX_SECS}"),
            );
        }
        let ext = self.external_ips.iter().map(|ip| ("external_ips", ip));
        for (i, (field, ip)) in ext.chain(self.load_balancer_ips.iter().map(|ip| ("load_balancer_ips", ip))).enumerate()
        {
            let unusable = ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast();
            if unusable || cluster.contains(*ip) || services.contains(*ip) {
                return bad(
                    format!("{field}[{i}]"),
                    format!("{ip} is not usable (inside {cluster} or {services}, or not unicast)"),
                );
            }
        }
        let mut seen: Vec<&SocketAddrV4> = self.all_endpoints().collect();
        seen.sort();
        if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
            return bad("endpoints".into(), format!("{} is listed twice (ready and terminating?)", w[0]));
        }
        if self.health_check_node_port.is_some() && !self.external_local {
            return bad("health_check_node_port".into(), "only with externalTrafficPolicy Local".into());
        }
        Ok(())
    }
}

/// Packets and bytes, iptables-style.
#[derive(Debug, Default)]
pub struct Hits {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
}

impl Hits {
    #[inline]
    pub fn hit(&self, bytes: usize) {
        self.packets.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes as u64, Relaxed);
    }
    pub fn get(&self) -> (u64, u64) {
        (self.packets.load(Relaxed), self.bytes.load(Relaxed))
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub spec: ServiceSpec,
    /// Every new flow of the service (its KUBE-SVC chain).
    pub hits: Arc<Hits>,
    /// The new flows that came through the NodePort (its KUBE-NODEPORTS rule); the rest
    /// came to the cluster IP (its KUBE-SERVICES rule).
    pub node_port_hits: Arc<Hits>,
    /// One per endpoint, in [`ServiceSpec::all_endpoints`] order.
    pub endpoint_hits: Vec<Arc<Hits>>,
}

/// Which kind of service address a packet matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Via {
    #[serde(rename = "ClusterIP")]
    ClusterIp,
    NodePort,
    /// One of `spec.externalIPs`.
    #[serde(rename = "ExternalIP")]
    ExternalIp,
    /// One of `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
}

impl Via {
    /// kube-proxy's "external" destinations: NodePort, externalIPs, load-balancer IPs
    /// (subject to `externalTrafficPolicy`); a cluster IP is "internal".
    pub fn is_external(self) -> bool {
        self != Via::ClusterIp
    }
}

impl Service {
    /// A service for `spec`, keeping the counters of `old` (the service it replaces,
    /// same name) for itself and for the endpoints both have; fresh ones otherwise.
    pub fn carrying(spec: ServiceSpec, old: Option<&Service>) -> Service {
        let hits = old.map(|o| o.hits.clone()).unwrap_or_default();
        let node_port_hits = old.map(|o| o.node_port_hits.clone()).unwrap_or_default();
        let endpoint_hits = spec
            .all_endpoints()
            .map(|e| {
                old.and_then(|o| o.spec.all_endpoints().position(|x| x == e).map(|i| o.endpoint_hits[i].clone()))
                    .unwrap_or_default()
            })
            .collect();
        Service { spec, hits, node_port_hits, endpoint_hits }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::core::tables::article::ghost;

    #[test]
    fn counters_carry_over_for_what_stays() {
        let old = Service::carrying(ghost(), None);
        old.hits.hit(60);
        old.endpoint_hits[1].hit(60);
        let mut spec = ghost();
        spec.endpoints = vec!["10.244.1.5:2368".parse().unwrap(), "10.244.1.9:2368".parse().unwrap()];
        let new = Service::carrying(spec, Some(&old));
        assert_eq!(new.hits.get(), (1, 60));
        assert_eq!(new.endpoint_hits[0].get(), (1, 60), "10.244.1.5 kept its count");
        assert_eq!(new.endpoint_hits[1].get(), (0, 0), "10.244.1.9 is new");
        // An endpoint that goes from ready to terminating keeps its count too.
        let mut spec = ghost();
        spec.endpoints = vec!["10.244.0.74:2368".parse().unwrap()];
        spec.terminating = vec!["10.244.1.5:2368".parse().unwrap()];
        let moved = Service::carrying(spec, Some(&old));
        assert_eq!(moved.endpoint_hits.len(), 2);
        assert_eq!(moved.endpoint_hits[1].get(), (1, 60));
    }

    #[test]
    fn spec_from_toml_rejects_unknown_fields() {
        let ok: ServiceSpec = toml::from_str(
            "name='default/ghost'\nprotocol='tcp'\ncluster_ip='10.250.0.40'\nport=2368\nnode_port=31266\nendpoints=['10.244.0.74:2368']",
        )
        .unwrap();
        assert_eq!(ok.node_port, Some(31266));
        assert_eq!((ok.affinity_timeout, ok.external_local), (None, false), "the new fields default to off");
        assert!(toml::from_str::<ServiceSpec>("name='x'\nprotocol='sctp'\ncluster_ip='10.250.0.1'\nport=1").is_err());
        assert!(
            toml::from_str::<ServiceSpec>("name='x'\nprotocol='tcp'\ncluster_ip='10.250.0.1'\nport=1\nnodeport=3")
                .is_err()
        );
        let full: ServiceSpec = toml::from_str(
            "name='a/b'\nprotocol='udp'\ncluster_ip='10.250.0.9'\nport=53\nexternal_ips=['192.168.99.11']\n\
             load_balancer_ips=['1.2.3.4']\nsource_ranges=['203.0.113.0/25']\nexternal_local=true\n\
             internal_local=true\naffinity_timeout=60\nhealth_check_node_port=30000\nterminating=['10.244.1.9:53']",
        )
        .unwrap();
        // The JSON the journal and state file keep reads back the same.
        let back: ServiceSpec = serde_json::from_str(&serde_json::to_string(&full).unwrap()).unwrap();
        assert_eq!(back, full);
        assert!(!serde_json::to_string(&ghost()).unwrap().contains("terminating"), "defaults stay unwritten");
    }

    #[test]
    fn policy_checks_name_the_field() {
        let (c, s): (Ipv4Net, Ipv4Net) = ("10.244.0.0/16".parse().unwrap(), "10.250.0.0/16".parse().unwrap());
        let mut g = ghost();
        assert_eq!(g.check_policy(c, s), Ok(()));
        g.affinity_timeout = Some(0);
        assert_eq!(g.check_policy(c, s).unwrap_err().field, "affinity_timeout");
        g.affinity_timeout = Some(86_401);
        assert!(g.check_policy(c, s).unwrap_err().problem.starts_with("86401"));
        g.affinity_timeout = Some(86_400);
        g.external_ips = vec![Ipv4Addr::new(10, 244, 3, 3)];
        assert_eq!(g.check_policy(c, s).unwrap_err().field, "external_ips[0]");
        g.external_ips = vec![Ipv4Addr::new(192, 168, 99, 11)];
        g.load_balancer_ips = vec![Ipv4Addr::new(10, 250, 9, 9)];
        assert_eq!(g.check_policy(c, s).unwrap_err().field, "load_balancer_ips[1]");
        g.load_balancer_ips = vec![Ipv4Addr::new(1, 2, 3, 4)];
        g.terminating = vec![g.endpoints[0]];
        assert!(g.check_policy(c, s).unwrap_err().problem.contains("twice"));
        g.terminating.clear();
        g.health_check_node_port = Some(30000);
        assert_eq!(g.check_policy(c, s).unwrap_err().field, "health_check_node_port");
        g.external_local = true;
        assert_eq!(g.check_policy(c, s), Ok(()));
    }
}
