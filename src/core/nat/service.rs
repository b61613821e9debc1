//! The service table: what KUBE-SERVICES and KUBE-NODEPORTS match, as two hash
//! maps instead of a rule walk, so a lookup costs the same with 10 or 100 000
//! services. The table is part of the immutable snapshot the control plane swaps;
//! its maps are split into copy-on-write shards, so the control plane keeps its own
//! copy, changes one service in it (copying one shard of a few hundred entries) and
//! publishes a clone that shares every other shard with the snapshot before it.
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
    /// Every new flow of the service (its KUBE-SVC chain).
    pub hits: Arc<Hits>,
    /// The new flows that came through the NodePort (its KUBE-NODEPORTS rule); the rest
    /// came to the cluster IP (its KUBE-SERVICES rule).
    pub node_port_hits: Arc<Hits>,
    /// One per endpoint, in `spec.endpoints` order.
    pub endpoint_hits: Vec<Arc<Hits>>,
}

/// Which rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Via {
    #[serde(rename = "ClusterIP")]
    ClusterIp,
    NodePort,
}

/// Shards of the cluster-IP map (a power of two). A change copies one shard (about
/// `len / VIP_SHARDS` entries: 100 at 100 000 services) and a publish the shard list
/// (8 KiB of references), never the table; a batch of k changes copies at most k shards.
const VIP_SHARDS: usize = 1024;
/// Shards of the NodePort map (at most 2 x 65 536 keys, usually a few).
const NODE_PORT_SHARDS: usize = 16;

type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// A map split into copy-on-write shards: a clone shares every shard, a change copies
/// the one it touches (`Arc::make_mut`), so a snapshot taken by the workers never
/// changes and the next one costs what changed.
#[derive(Debug, Clone)]
struct Sharded<K, V> {
    shards: Vec<Arc<Map<K, V>>>,
}

impl<K: Copy + Eq + std::hash::Hash + Into<u64>, V: Clone> Sharded<K, V> {
    fn new(n: usize) -> Self {
        debug_assert!(n.is_power_of_two());
        // One empty map shared by every shard until its first write.
        Sharded { shards: vec![Arc::default(); n] }
    }
    /// Fibonacci hashing of the key: one multiply picks the shard.
    #[inline]
    fn shard(&self, k: K) -> usize {
        let bits = self.shards.len().trailing_zeros();
        (k.into().wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits)) as usize
    }
    #[inline]
    fn get(&self, k: K) -> Option<&V> {
        self.shards[self.shard(k)].get(&k)
    }
    fn insert(&mut self, k: K, v: V) -> Option<V> {
        let i = self.shard(k);
        Arc::make_mut(&mut self.shards[i]).insert(k, v)
    }
    fn remove(&mut self, k: K) -> Option<V> {
        let i = self.shard(k);
        // Look first: a miss must not copy a shared shard.
        if !self.shards[i].contains_key(&k) {
            return None;
        }
        Arc::make_mut(&mut self.shards[i]).remove(&k)
    }
    fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }
}

/// KUBE-SERVICES and KUBE-NODEPORTS as two sharded hash maps: services by cluster
/// IP:port (held in place, so a lookup reads the service from the bucket it finds), and
/// NodePorts to that key. Cloning it is cheap (one reference per shard); `insert` and
/// `remove` change one service's entries.
#[derive(Debug, Clone)]
pub struct ServiceTable {
    by_vip: Sharded<u64, Service>,
    by_node_port: Sharded<u32, u64>,
    len: usize,
}

impl Default for ServiceTable {
    fn default() -> Self {
        ServiceTable { by_vip: Sharded::new(VIP_SHARDS), by_node_port: Sharded::new(NODE_PORT_SHARDS), len: 0 }
    }
}

#[inline]
fn vip_key(proto: u8, ip: Ipv4Addr, port: u16) -> u64 {
    (u64::from(proto) << 48) | (u64::from(u32::from(ip)) << 16) | u64::from(port)
}

fn spec_key(s: &ServiceSpec) -> u64 {
    vip_key(s.protocol.number(), s.cluster_ip, s.port)
}

#[inline]
fn node_port_key(proto: u8, port: u16) -> u32 {
    (u32::from(proto) << 16) | u32::from(port)
}

impl Service {
    /// A service for `spec`, keeping the counters of `old` (the service it replaces,
    /// same name) for itself and for the endpoints both have; fresh ones otherwise.
    pub fn carrying(spec: ServiceSpec, old: Option<&Service>) -> Service {
        let hits = old.map(|o| o.hits.clone()).unwrap_or_default();
        let node_port_hits = old.map(|o| o.node_port_hits.clone()).unwrap_or_default();
        let endpoint_hits = spec
            .endpoints
            .iter()
            .map(|e| {
                old.and_then(|o| o.spec.endpoints.iter().position(|x| x == e).map(|i| o.endpoint_hits[i].clone()))
                    .unwrap_or_default()
            })
            .collect();
        Service { spec, hits, node_port_hits, endpoint_hits }
    }
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
            let hits = hits_for(&spec.name, None);
            let endpoint_hits = spec.endpoints.iter().map(|e| hits_for(&spec.name, Some(*e))).collect();
            t.insert(Service { spec, hits, node_port_hits: Arc::default(), endpoint_hits });
        }
        t
    }

    /// Puts one service in (its cluster IP:port and NodePort entries); the services it
    /// displaced from either key, which the caller has checked are the ones it replaces.
    pub fn insert(&mut self, s: Service) -> Vec<Service> {
        let proto = s.spec.protocol.number();
        let (vip, np) = (spec_key(&s.spec), s.spec.node_port);
        let mut out = Vec::new();
        if let Some(old) = self.by_vip.insert(vip, s) {
            // Its NodePort entry goes, unless the new one keeps that NodePort.
            if let Some(onp) = old.spec.node_port
                && np != Some(onp)
            {
                let k = node_port_key(proto, onp);
                if self.by_node_port.get(k) == Some(&vip) {
                    self.by_node_port.remove(k);
                }
            }
            out.push(old);
        } else {
            self.len += 1;
        }
        if let Some(np) = np
            && let Some(other) = self.by_node_port.insert(node_port_key(proto, np), vip)
            && other != vip
            && let Some(old) = self.by_vip.remove(other)
        {
            // Another service held that NodePort: it leaves the table altogether.
            self.len -= 1;
            if let Some(onp) = old.spec.node_port {
                let k = node_port_key(old.spec.protocol.number(), onp);
                if self.by_node_port.get(k) == Some(&other) {
                    self.by_node_port.remove(k);
                }
            }
            out.push(old);
        }
        out
    }

    /// Takes out the service `spec` describes (matched by cluster IP:port and name).
    pub fn remove(&mut self, spec: &ServiceSpec) -> Option<Service> {
        let vip = spec_key(spec);
        if self.by_vip.get(vip).is_none_or(|s| s.spec.name != spec.name) {
            return None;
        }
        let old = self.by_vip.remove(vip)?;
        self.len -= 1;
        if let Some(np) = old.spec.node_port {
            let k = node_port_key(old.spec.protocol.number(), np);
            if self.by_node_port.get(k) == Some(&vip) {
                self.by_node_port.remove(k);
            }
        }
        Some(old)
    }

    /// KUBE-SERVICES: `-d <vip> -p <proto> --dport <port>`.
    #[inline]
    pub fn by_cluster_ip(&self, proto: u8, ip: Ipv4Addr, port: u16) -> Option<&Service> {
        self.by_vip.get(vip_key(proto, ip, port))
    }
    /// KUBE-NODEPORTS: `-p <proto> --dport <nodePort>` on a local address.
    #[inline]
    pub fn by_node_port(&self, proto: u8, port: u16) -> Option<&Service> {
        self.by_node_port.get(node_port_key(proto, port)).and_then(|vip| self.by_vip.get(*vip))
    }
    /// Every service, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Service> {
        self.by_vip.values()
    }
    /// The services that have a NodePort (a walk of the small NodePort map only).
    pub fn with_node_ports(&self) -> impl Iterator<Item = &Service> {
        self.by_node_port.values().filter_map(|vip| self.by_vip.get(*vip))
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::core::tables::article::ghost;

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

    fn svc(name: &str, ip: [u8; 4], port: u16, node_port: Option<u16>) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            protocol: Protocol::Tcp,
            cluster_ip: Ipv4Addr::from(ip),
            port,
            node_port,
            endpoints: vec!["10.244.1.5:2368".parse().unwrap()],
        }
    }

    fn filled(n: u32) -> ServiceTable {
        let specs = (0..n).map(|i| svc(&format!("bench/svc-{i}"), [10, 250, (i >> 8) as u8, i as u8], 80, None));
        ServiceTable::build(specs, |_, _| Arc::default())
    }

    #[test]
    fn insert_replace_remove_one_service() {
        let mut t = filled(1000);
        assert_eq!(t.len(), 1000);
        assert!(t.insert(Service::carrying(ghost(), None)).is_empty());
        assert_eq!(t.len(), 1001);
        assert_eq!(t.by_node_port(PROTO_TCP, 31266).unwrap().spec.name, "default/ghost");
        // Same cluster IP:port, another NodePort: the old NodePort entry goes.
        let mut g2 = ghost();
        g2.node_port = Some(31267);
        let old = t.insert(Service::carrying(g2.clone(), None));
        assert_eq!(old.len(), 1);
        assert_eq!(t.len(), 1001);
        assert!(t.by_node_port(PROTO_TCP, 31266).is_none());
        assert_eq!(t.by_node_port(PROTO_TCP, 31267).unwrap().spec, g2);
        // Removing by a spec of another name leaves it; by its own spec takes it out.
        let mut other = g2.clone();
        other.name = "default/other".into();
        assert!(t.remove(&other).is_none());
        assert_eq!(t.remove(&g2).unwrap().spec, g2);
        assert!(t.by_cluster_ip(PROTO_TCP, Ipv4Addr::new(10, 250, 0, 40), 2368).is_none());
        assert!(t.by_node_port(PROTO_TCP, 31267).is_none());
        assert_eq!(t.len(), 1000);
        assert_eq!(t.iter().count(), 1000);
        assert!(t.remove(&g2).is_none());
    }

    #[test]
    fn a_nodeport_taken_over_evicts_its_holder() {
        let mut t = ServiceTable::default();
        t.insert(Service::carrying(ghost(), None));
        let thief = svc("default/thief", [10, 250, 0, 41], 80, Some(31266));
        let out = t.insert(Service::carrying(thief, None));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].spec.name, "default/ghost");
        assert_eq!(t.len(), 1);
        assert!(t.by_cluster_ip(PROTO_TCP, Ipv4Addr::new(10, 250, 0, 40), 2368).is_none());
        assert_eq!(t.by_node_port(PROTO_TCP, 31266).unwrap().spec.name, "default/thief");
        assert_eq!(t.with_node_ports().count(), 1);
    }

    #[test]
    fn a_published_snapshot_never_changes_and_shares_untouched_shards() {
        let mut master = filled(20_000);
        let published = master.clone();
        let added = svc("bench/svc-new", [10, 250, 200, 1], 8080, Some(30000));
        master.insert(Service::carrying(added.clone(), None));
        master.remove(&svc("bench/svc-7", [10, 250, 0, 7], 80, None)).unwrap();
        // The snapshot still answers as it did.
        assert_eq!(published.len(), 20_000);
        assert!(published.by_cluster_ip(PROTO_TCP, Ipv4Addr::new(10, 250, 200, 1), 8080).is_none());
        assert!(published.by_cluster_ip(PROTO_TCP, Ipv4Addr::new(10, 250, 0, 7), 80).is_some());
        assert!(published.by_node_port(PROTO_TCP, 30000).is_none());
        assert_eq!(master.by_node_port(PROTO_TCP, 30000).unwrap().spec, added);
        // Only the shards the two changes touched were copied.
        let copied = master.by_vip.shards.iter().zip(&published.by_vip.shards).filter(|(a, b)| !Arc::ptr_eq(a, b));
        assert!(copied.count() <= 2);
        let np_copied =
            master.by_node_port.shards.iter().zip(&published.by_node_port.shards).filter(|(a, b)| !Arc::ptr_eq(a, b));
        assert_eq!(np_copied.count(), 1);
        // A miss copies nothing.
        let again = master.clone();
        assert!(master.remove(&svc("bench/none", [10, 250, 255, 255], 1, None)).is_none());
        assert!(master.by_vip.shards.iter().zip(&again.by_vip.shards).all(|(a, b)| Arc::ptr_eq(a, b)));
    }

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
