//! The service table: what kube-proxy's `service-ips` / `service-nodeports` maps and its
//! `cluster-ips` set match, as hash maps instead of a rule walk, so a lookup costs the
//! same with 10 or 100 000 services. The table is part of the immutable snapshot the
//! control plane swaps; its maps are split into copy-on-write shards, so the control
//! plane keeps its own copy, changes one service in it (copying one shard of a few
//! hundred entries) and publishes a clone that shares every other shard with the
//! snapshot before it.
//!
//! Four maps, each keyed as kube-proxy's own:
//! - services by cluster IP:port (the service is held in place, so a lookup reads it
//!   from the bucket it finds);
//! - NodePorts, `(protocol, port)` -> the service's cluster IP:port key;
//! - externalIPs and load-balancer IPs, `(protocol, IP, port)` -> that key and which
//!   of the two matched;
//! - cluster IPs, IP -> how many service ports use it (a wrong port on a cluster IP is
//!   REJECTed, an address of the service CIDR no service owns is DROPped).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use super::service::{Hits, Service, ServiceSpec, Via};

/// Shards of the cluster-IP maps (a power of two). A change copies one shard (about
/// `len / VIP_SHARDS` entries: 100 at 100 000 services) and a publish the shard list
/// (8 KiB of references), never the table; a batch of k changes copies at most k shards.
const VIP_SHARDS: usize = 1024;
/// Shards of the NodePort map (at most 2 x 65 536 keys, usually a few) and of the
/// external-address map (usually a few).
const SMALL_SHARDS: usize = 16;

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

/// An externalIP or load-balancer IP entry: the service's key and which it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct External {
    vip: u64,
    via: Via,
}

/// The service maps. Cloning the table is cheap (one reference per shard); `insert` and
/// `remove` change one service's entries.
#[derive(Debug, Clone)]
pub struct ServiceTable {
    by_vip: Sharded<u64, Service>,
    by_node_port: Sharded<u32, u64>,
    by_external: Sharded<u64, External>,
    cluster_ips: Sharded<u32, u32>,
    externals: usize,
    len: usize,
}

impl Default for ServiceTable {
    fn default() -> Self {
        ServiceTable {
            by_vip: Sharded::new(VIP_SHARDS),
            by_node_port: Sharded::new(SMALL_SHARDS),
            by_external: Sharded::new(SMALL_SHARDS),
            cluster_ips: Sharded::new(VIP_SHARDS),
            externals: 0,
            len: 0,
        }
    }
}

#[inline]
pub(super) fn vip_key(proto: u8, ip: Ipv4Addr, port: u16) -> u64 {
    (u64::from(proto) << 48) | (u64::from(u32::from(ip)) << 16) | u64::from(port)
}

/// The key of a service port: its protocol, cluster IP and port (also the key of its
/// session affinity records).
pub fn spec_key(s: &ServiceSpec) -> u64 {
    vip_key(s.protocol.number(), s.cluster_ip, s.port)
}

#[inline]
fn node_port_key(proto: u8, port: u16) -> u32 {
    (u32::from(proto) << 16) | u32::from(port)
}

/// The externalIP and load-balancer IP keys of a spec, with which each is.
fn external_keys(s: &ServiceSpec) -> impl Iterator<Item = (u64, Via)> + '_ {
    let p = s.protocol.number();
    let ext = s.external_ips.iter().map(move |ip| (vip_key(p, *ip, s.port), Via::ExternalIp));
    ext.chain(s.load_balancer_ips.iter().map(move |ip| (vip_key(p, *ip, s.port), Via::LoadBalancer)))
}

impl ServiceTable {
    /// Builds the table. `hits_for` returns the counters to carry over for a service
    /// name / endpoint (fresh ones for new entries). Callers have validated that no two
    /// services share a VIP:port, a NodePort or an external address:port.
    pub fn build(
        specs: impl IntoIterator<Item = ServiceSpec>,
        mut hits_for: impl FnMut(&str, Option<SocketAddrV4>) -> Arc<Hits>,
    ) -> Self {
        let mut t = ServiceTable::default();
        for spec in specs {
            let hits = hits_for(&spec.name, None);
            let endpoint_hits = spec.all_endpoints().map(|e| hits_for(&spec.name, Some(*e))).collect();
            t.insert(Service { spec, hits, node_port_hits: Arc::default(), endpoint_hits });
        }
        t
    }

    /// Puts one service in (its cluster IP:port, NodePort and external entries); the
    /// services it displaced from any of those keys, which leave the table altogether
    /// (the caller has checked they are the ones it replaces).
    pub fn insert(&mut self, s: Service) -> Vec<Service> {
        let vip = spec_key(&s.spec);
        let mut out: Vec<Service> = self.take(vip).into_iter().collect();
        let proto = s.spec.protocol.number();
        let holders = s.spec.node_port.and_then(|np| self.by_node_port.get(node_port_key(proto, np)).copied());
        let holders = holders
            .into_iter()
            .chain(external_keys(&s.spec).filter_map(|(k, _)| self.by_external.get(k).map(|e| e.vip)));
        for other in holders.collect::<Vec<_>>() {
            out.extend(self.take(other));
        }
        self.put(vip, s);
        out
    }

    /// Takes out the service `spec` describes (matched by cluster IP:port and name).
    pub fn remove(&mut self, spec: &ServiceSpec) -> Option<Service> {
        let vip = spec_key(spec);
        if self.by_vip.get(vip).is_none_or(|s| s.spec.name != spec.name) {
            return None;
        }
        self.take(vip)
    }

    /// Adds a service and every index entry of it (its keys are free).
    fn put(&mut self, vip: u64, s: Service) {
        let ip = u32::from(s.spec.cluster_ip);
        let n = self.cluster_ips.get(ip).copied().unwrap_or(0);
        self.cluster_ips.insert(ip, n + 1);
        if let Some(np) = s.spec.node_port {
            self.by_node_port.insert(node_port_key(s.spec.protocol.number(), np), vip);
        }
        for (k, via) in external_keys(&s.spec) {
            if self.by_external.insert(k, External { vip, via }).is_none() {
                self.externals += 1;
            }
        }
        self.by_vip.insert(vip, s);
        self.len += 1;
    }

    /// Removes the service at `vip` and every index entry that points at it.
    fn take(&mut self, vip: u64) -> Option<Service> {
        let old = self.by_vip.remove(vip)?;
        self.len -= 1;
        let ip = u32::from(old.spec.cluster_ip);
        match self.cluster_ips.get(ip).copied() {
            Some(n) if n > 1 => {
                self.cluster_ips.insert(ip, n - 1);
            }
            _ => {
                self.cluster_ips.remove(ip);
            }
        }
        if let Some(np) = old.spec.node_port {
            let k = node_port_key(old.spec.protocol.number(), np);
            if self.by_node_port.get(k) == Some(&vip) {
                self.by_node_port.remove(k);
            }
        }
        for (k, _) in external_keys(&old.spec) {
            if self.by_external.get(k).is_some_and(|e| e.vip == vip) {
                self.by_external.remove(k);
                self.externals -= 1;
            }
        }
        Some(old)
    }

    /// kube-proxy's `service-ips` for a cluster IP: `ip daddr . l4proto . dport`.
    #[inline]
    pub fn by_cluster_ip(&self, proto: u8, ip: Ipv4Addr, port: u16) -> Option<&Service> {
        self.by_vip.get(vip_key(proto, ip, port))
    }
    /// `service-nodeports`: `l4proto . dport` on a node address.
    #[inline]
    pub fn by_node_port(&self, proto: u8, port: u16) -> Option<&Service> {
        self.by_node_port.get(node_port_key(proto, port)).and_then(|vip| self.by_vip.get(*vip))
    }
    /// `service-ips` for an externalIP or a load-balancer IP, and which of the two.
    #[inline]
    pub fn by_external(&self, proto: u8, ip: Ipv4Addr, port: u16) -> Option<(&Service, Via)> {
        if self.externals == 0 {
            return None;
        }
        let e = self.by_external.get(vip_key(proto, ip, port))?;
        self.by_vip.get(e.vip).map(|s| (s, e.via))
    }
    /// `cluster-ips`: whether some service port has this cluster IP (any port).
    #[inline]
    pub fn has_cluster_ip(&self, ip: Ipv4Addr) -> bool {
        self.cluster_ips.get(u32::from(ip)).is_some()
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
#[path = "service_table_tests.rs"]
mod tests;
