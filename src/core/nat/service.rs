//! The service table: what KUBE-SERVICES and KUBE-NODEPORTS match, as two hash
//! maps instead of a rule walk, so a lookup costs the same with 10 or 100 000
//! services. The table is part of the immutable snapshot the control plane swaps.
//!
//! Hit counters live outside the snapshot (`Arc`s the control plane carries from one
//! snapshot to the next), and count like `iptables -vnL -t nat`: nat rules only see the
//! first packet of a connection, so `packets` is new flows and `bytes` their first packets.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::wire::ipv4::{PROTO_TCP, PROTO_UDP};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
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

/// A service as the control plane describes it (`kubectl get svc` + endpoints).
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
    #[serde(default)]
    pub endpoints: Vec<SocketAddrV4>,
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
    pub hits: Arc<Hits>,
    /// One per endpoint, in `spec.endpoints` order.
    pub endpoint_hits: Vec<Arc<Hits>>,
}

/// Which rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    ClusterIp,
    NodePort,
}

#[derive(Debug, Clone, Default)]
pub struct ServiceTable {
    services: Vec<Service>,
    by_vip: HashMap<u64, u32, ahash::RandomState>,
    by_node_port: HashMap<u32, u32, ahash::RandomState>,
}

#[inline]
fn vip_key(proto: u8, ip: Ipv4Addr, port: u16) -> u64 {
    (u64::from(proto) << 48) | (u64::from(u32::from(ip)) << 16) | u64::from(port)
}

#[inline]
fn node_port_key(proto: u8, port: u16) -> u32 {
    (u32::from(proto) << 16) | u32::from(port)
}

impl ServiceTable {
    /// Builds the table. `hits_for` returns the counters to carry over for a service
    /// name / endpoint (fresh ones for new entries). Callers have validated that no two
    /// services share a VIP:port or a NodePort.
    pub fn build(
        specs: impl IntoIterator<Item = ServiceSpec>,
        mut hits_for: impl FnMut(&str, Option<SocketAddrV4>) -> Arc<Hits>,
    ) -> Self {
        let mut t = ServiceTable::default();
        for spec in specs {
            let i = t.services.len() as u32;
            let proto = spec.protocol.number();
            t.by_vip.insert(vip_key(proto, spec.cluster_ip, spec.port), i);
            if let Some(np) = spec.node_port {
                t.by_node_port.insert(node_port_key(proto, np), i);
            }
            let hits = hits_for(&spec.name, None);
            let endpoint_hits = spec.endpoints.iter().map(|e| hits_for(&spec.name, Some(*e))).collect();
            t.services.push(Service { spec, hits, endpoint_hits });
        }
        t
    }

    /// KUBE-SERVICES: `-d <vip> -p <proto> --dport <port>`.
    #[inline]
    pub fn by_cluster_ip(&self, proto: u8, ip: Ipv4Addr, port: u16) -> Option<&Service> {
        self.by_vip.get(&vip_key(proto, ip, port)).map(|i| &self.services[*i as usize])
    }
    /// KUBE-NODEPORTS: `-p <proto> --dport <nodePort>` on a local address.
    #[inline]
    pub fn by_node_port(&self, proto: u8, port: u16) -> Option<&Service> {
        self.by_node_port.get(&node_port_key(proto, port)).map(|i| &self.services[*i as usize])
    }
    pub fn iter(&self) -> impl Iterator<Item = &Service> {
        self.services.iter()
    }
    pub fn len(&self) -> usize {
        self.services.len()
    }
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ghost() -> ServiceSpec {
        ServiceSpec {
            name: "default/ghost".into(),
            protocol: Protocol::Tcp,
            cluster_ip: Ipv4Addr::new(10, 250, 0, 40),
            port: 2368,
            node_port: Some(31266),
            endpoints: vec!["10.244.0.74:2368".parse().unwrap(), "10.244.1.5:2368".parse().unwrap()],
        }
    }

    #[test]
    fn lookups() {
        let t = ServiceTable::build([ghost()], |_, _| Arc::default());
        let s = t.by_cluster_ip(PROTO_TCP, Ipv4Addr::new(10, 250, 0, 40), 2368).unwrap();
        assert_eq!(s.spec.name, "default/ghost");
        assert_eq!(s.endpoint_hits.len(), 2);
        assert!(t.by_cluster_ip(PROTO_UDP, Ipv4Addr::new(10, 250, 0, 40), 2368).is_none());
        assert!(t.by_cluster_ip(PROTO_TCP, Ipv4Addr::new(10, 250, 0, 40), 80).is_none());
        assert!(t.by_node_port(PROTO_TCP, 31266).is_some());
        assert!(t.by_node_port(PROTO_UDP, 31266).is_none());
    }

    #[test]
    fn spec_from_toml_rejects_unknown_fields() {
        let ok: ServiceSpec = toml::from_str(
            "name='default/ghost'\nprotocol='tcp'\ncluster_ip='10.250.0.40'\nport=2368\nnode_port=31266\nendpoints=['10.244.0.74:2368']",
        )
        .unwrap();
        assert_eq!(ok.node_port, Some(31266));
        assert!(toml::from_str::<ServiceSpec>("name='x'\nprotocol='sctp'\ncluster_ip='10.250.0.1'\nport=1").is_err());
        assert!(
            toml::from_str::<ServiceSpec>("name='x'\nprotocol='tcp'\ncluster_ip='10.250.0.1'\nport=1\nnodeport=3")
                .is_err()
        );
    }
}
