//! The node's routing decision, as the kernel makes it on a Canal node:
//! `/32` host routes to local pods (Calico), `<subnet> via <remote .0> onlink` to
//! each peer (flannel), the node's own addresses, and everything else to the
//! node's stack through the host port.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::{Ipv4Net, PortId, mask};
use crate::wire::MacAddr;

/// Where a destination goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTarget {
    /// A pod on this node, by its `/32` route.
    Pod(PortId),
    /// A peer's pod subnet: next hop is the peer's VTEP address (its `.0`). `hop` is
    /// the neighbour and FDB entries for it, resolved when the tables were built (they
    /// change only with the peer, so the per-packet path needs no further lookup);
    /// `None` when either is missing, and the lookup at forwarding time names the miss.
    Peer { gateway: Ipv4Addr, hop: Option<Hop> },
    /// One of this node's own addresses (node IP, VTEP address): the host stack.
    Local,
    /// Outside the cluster: the host stack routes it (via the uplink).
    Host,
    /// Inside the cluster CIDR with no pod and no peer route.
    Unreachable,
}

/// A resolved VXLAN next hop: the neighbour entry (gateway -> VTEP MAC) and the FDB
/// entry (VTEP MAC -> the peer's public IP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hop {
    pub mac: MacAddr,
    pub remote: Ipv4Addr,
}

/// The value of a peer route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRoute {
    pub gateway: Ipv4Addr,
    pub hop: Option<Hop>,
}

/// The route that matched, for the trace and `show routes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched {
    pub prefix: Ipv4Net,
    pub target: RouteTarget,
}

/// Longest-prefix match over a few distinct prefix lengths (flannel gives every node
/// the same subnet length, so this is one hash lookup in practice).
#[derive(Debug, Clone)]
pub struct Lpm<V> {
    /// (prefix length, masked address -> value), longest first.
    levels: Vec<(u8, HashMap<u32, V, ahash::RandomState>)>,
}

impl<V> Default for Lpm<V> {
    fn default() -> Self {
        Lpm { levels: Vec::new() }
    }
}

impl<V: Copy> Lpm<V> {
    pub fn insert(&mut self, net: Ipv4Net, v: V) {
        let len = net.prefix_len();
        let i = match self.levels.iter().position(|(l, _)| *l <= len) {
            Some(i) if self.levels[i].0 == len => i,
            Some(i) => {
                self.levels.insert(i, (len, HashMap::default()));
                i
            }
            None => {
                self.levels.push((len, HashMap::default()));
                self.levels.len() - 1
            }
        };
        self.levels[i].1.insert(u32::from(net.addr()), v);
    }
    #[inline]
    pub fn lookup(&self, a: Ipv4Addr) -> Option<(Ipv4Net, V)> {
        let a = u32::from(a);
        for (len, m) in &self.levels {
            if let Some(v) = m.get(&(a & mask(*len))) {
                return Some((Ipv4Net::new(Ipv4Addr::from(a), *len).unwrap(), *v));
            }
        }
        None
    }
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.levels.iter_mut().flat_map(|(_, m)| m.values_mut())
    }
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Net, V)> + '_ {
        self.levels
            .iter()
            .flat_map(|(len, m)| m.iter().map(move |(a, v)| (Ipv4Net::new(Ipv4Addr::from(*a), *len).unwrap(), *v)))
    }
}

/// The routing table of one node.
#[derive(Debug, Clone)]
pub struct RouteTable {
    pub(crate) pods: HashMap<Ipv4Addr, PortId, ahash::RandomState>,
    /// The lowest and highest pod address: a destination outside skips the hash lookup
    /// (the established path to a remote pod pays for `peers` only).
    pod_range: (u32, u32),
    pub(crate) peers: Lpm<PeerRoute>,
    pub(crate) node_ip: Ipv4Addr,
    pub(crate) vtep_ip: Ipv4Addr,
    pub(crate) cluster_cidr: Ipv4Net,
}

impl RouteTable {
    pub fn new(node_ip: Ipv4Addr, vtep_ip: Ipv4Addr, cluster_cidr: Ipv4Net) -> Self {
        RouteTable {
            pods: HashMap::default(),
            pod_range: (u32::MAX, 0),
            peers: Lpm::default(),
            node_ip,
            vtep_ip,
            cluster_cidr,
        }
    }
    pub fn add_pod(&mut self, ip: Ipv4Addr, port: PortId) {
        self.pods.insert(ip, port);
        let a = u32::from(ip);
        self.pod_range = (self.pod_range.0.min(a), self.pod_range.1.max(a));
    }
    pub fn add_peer(&mut self, subnet: Ipv4Net, gateway: Ipv4Addr, hop: Option<Hop>) {
        self.peers.insert(subnet, PeerRoute { gateway, hop });
    }
    /// Re-resolves every peer route's next hop (after the neighbour or FDB table changed).
    pub fn resolve_hops(&mut self, resolve: impl Fn(Ipv4Addr) -> Option<Hop>) {
        for p in self.peers.values_mut() {
            p.hop = resolve(p.gateway);
        }
    }
    pub fn is_local_addr(&self, a: Ipv4Addr) -> bool {
        a == self.node_ip || a == self.vtep_ip
    }

    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Matched {
        let a = u32::from(dst);
        if (self.pod_range.0..=self.pod_range.1).contains(&a)
            && let Some(p) = self.pods.get(&dst)
        {
            return Matched { prefix: Ipv4Net::new(dst, 32).unwrap(), target: RouteTarget::Pod(*p) };
        }
        if self.is_local_addr(dst) {
            return Matched { prefix: Ipv4Net::new(dst, 32).unwrap(), target: RouteTarget::Local };
        }
        if let Some((prefix, PeerRoute { gateway, hop })) = self.peers.lookup(dst) {
            return Matched { prefix, target: RouteTarget::Peer { gateway, hop } };
        }
        if self.cluster_cidr.contains(dst) {
            return Matched { prefix: self.cluster_cidr, target: RouteTarget::Unreachable };
        }
        Matched { prefix: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).unwrap(), target: RouteTarget::Host }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn centos7_1() -> RouteTable {
        let mut t = RouteTable::new(
            Ipv4Addr::new(172, 16, 240, 131),
            Ipv4Addr::new(10, 244, 1, 0),
            "10.244.0.0/16".parse().unwrap(),
        );
        t.add_pod(Ipv4Addr::new(10, 244, 1, 5), PortId(1));
        t.add_peer("10.244.0.0/24".parse().unwrap(), Ipv4Addr::new(10, 244, 0, 0), None);
        t
    }

    #[test]
    fn article_routes() {
        let t = centos7_1();
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 1, 5)).target, RouteTarget::Pod(PortId(1)));
        let m = t.lookup(Ipv4Addr::new(10, 244, 0, 74));
        assert_eq!(m.target, RouteTarget::Peer { gateway: Ipv4Addr::new(10, 244, 0, 0), hop: None });
        assert_eq!(m.prefix.to_string(), "10.244.0.0/24");
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 1, 0)).target, RouteTarget::Local);
        assert_eq!(t.lookup(Ipv4Addr::new(172, 16, 240, 131)).target, RouteTarget::Local);
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 1, 9)).target, RouteTarget::Unreachable);
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 7, 9)).target, RouteTarget::Unreachable);
        assert_eq!(t.lookup(Ipv4Addr::new(172, 16, 240, 1)).target, RouteTarget::Host);
    }

    #[test]
    fn longest_prefix_wins() {
        let mut l = Lpm::default();
        l.insert("10.0.0.0/8".parse().unwrap(), 1);
        l.insert("10.1.0.0/16".parse().unwrap(), 2);
        l.insert("10.1.2.0/24".parse().unwrap(), 3);
        assert_eq!(l.lookup(Ipv4Addr::new(10, 1, 2, 3)).unwrap().1, 3);
        assert_eq!(l.lookup(Ipv4Addr::new(10, 1, 3, 3)).unwrap().1, 2);
        assert_eq!(l.lookup(Ipv4Addr::new(10, 9, 3, 3)).unwrap().1, 1);
        assert!(l.lookup(Ipv4Addr::new(11, 0, 0, 1)).is_none());
        assert_eq!(l.iter().count(), 3);
    }
}
