//! The read-mostly state of the dataplane, built by the control plane and swapped
//! as a whole: the workers read one immutable snapshot per batch through arc-swap
//! (lock-free: a reference-count increment, no lock).

use std::net::Ipv4Addr;

use super::fdb::{Fdb, Neighbours};
use super::nat::service::ServiceTable;
use super::policy::PolicyTable;
use super::route::{Hop, RouteTable};
use super::{Ipv4Net, PortId};
use crate::wire::MacAddr;

/// What the node is: the `[node]` section of the config, resolved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub name: String,
    /// The underlay interface (the article's `ens33`).
    pub uplink: String,
    /// The node IP on the underlay (the VXLAN local address).
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    /// flannel.1's address (the pod subnet's `.0`) and MAC.
    pub vtep_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    pub vni: u32,
    pub vxlan_port: u16,
    /// MTU inside the overlay (1450 = 1500 - 50).
    pub mtu: u16,
    /// The host-side MAC of every pod link and of the host port (Calico's ee:ee:ee:ee:ee:ee).
    pub host_mac: MacAddr,
    /// The MAC of the node kernel's side of the host port.
    pub host_port_mac: MacAddr,
    /// The pods' default gateway (Calico's 169.254.1.1).
    pub gateway: Ipv4Addr,
    /// Source ports for masquerading to the node IP towards the uplink (replies to these
    /// are steered to ucanal; keep the node's own ip_local_port_range outside them).
    pub masquerade_ports: (u16, u16),
    /// Which VXLAN senders are decapsulated.
    pub vxlan_accept: VxlanAccept,
}

/// Which VXLAN datagrams (right VNI, right port) are decapsulated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VxlanAccept {
    /// As the kernel's `flannel.1` (learning off): from any sender, the inner packet then
    /// routed as any other (to a pod, back out by VXLAN, to the node's stack). Frames from
    /// an address with no FDB entry, or from a peer with an inner source outside its pod
    /// subnet, are counted (`vxlan_from_unknown_peer`, `vxlan_foreign_source`).
    #[default]
    Any,
    /// Stricter than the kernel: only from an FDB peer, whose inner source MAC is its VTEP
    /// MAC and inner source address is in its pod subnet, to a destination on this node;
    /// everything else is a counted drop.
    Peers,
}

impl VxlanAccept {
    /// The config spelling (`any`, `peers`).
    pub fn parse(s: &str) -> Option<VxlanAccept> {
        match s {
            "any" => Some(VxlanAccept::Any),
            "peers" => Some(VxlanAccept::Peers),
            _ => None,
        }
    }
}

/// A pod attached to this node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PodPort {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub port: PortId,
    /// The port's name in listings, Calico-style (`cali` + 11 hex digits).
    pub ifname: String,
}

/// A remote node, as its flannel lease describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub name: String,
    /// The peer's pod subnet.
    pub subnet: Ipv4Net,
    /// The peer's underlay address (flannel's `PublicIP`).
    pub public_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
}

impl Peer {
    /// flannel's next hop for a peer subnet: its network address (`10.244.0.0`).
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.addr()
    }
}

/// One snapshot.
#[derive(Debug, Clone)]
pub struct Tables {
    pub generation: u64,
    pub node: NodeInfo,
    /// Seed of the flow hash (endpoint choice, outer source port).
    pub hash_seed: u64,
    pub routes: RouteTable,
    pub neigh: Neighbours,
    pub fdb: Fdb,
    /// Pods by port number; slot 0 is the host port.
    pub ports: Vec<Option<PodPort>>,
    pub peers: Vec<Peer>,
    pub services: ServiceTable,
    /// The outer UDP source ports of the VXLAN send pool (set by the shell), for the trace.
    pub vxlan_source_ports: Vec<u16>,
    /// Network policy of this node's pods (`core::policy`; empty: nothing enforced).
    pub policy: PolicyTable,
}

impl Tables {
    pub fn build(
        generation: u64,
        node: NodeInfo,
        hash_seed: u64,
        pods: &[PodPort],
        peers: &[Peer],
        services: ServiceTable,
    ) -> Tables {
        let mut routes = RouteTable::new(node.node_ip, node.vtep_ip, node.cluster_cidr);
        let mut neigh = Neighbours::default();
        let mut fdb = Fdb::default();
        for p in peers {
            neigh.insert(p.gateway(), p.vtep_mac);
            fdb.insert(p.vtep_mac, p.public_ip, p.subnet);
        }
        for p in peers {
            routes.add_peer(p.subnet, p.gateway(), None);
        }
        let slots = pods.iter().map(|p| p.port.0 as usize + 1).max().unwrap_or(1);
        let mut ports = vec![None; slots];
        for p in pods {
            routes.add_pod(p.ip, p.port);
            ports[p.port.0 as usize] = Some(p.clone());
        }
        let mut t = Tables {
            generation,
            node,
            hash_seed,
            routes,
            neigh,
            fdb,
            ports,
            peers: peers.to_vec(),
            services,
            vxlan_source_ports: Vec::new(),
            policy: PolicyTable::default(),
        };
        t.resolve_hops();
        t
    }

    /// Peer routes carry their next hop resolved through the neighbour and FDB tables:
    /// route -> neighbour -> FDB, the kernel's walk, done once per table generation
    /// instead of per packet. Call again after changing `neigh` or `fdb`.
    pub fn resolve_hops(&mut self) {
        let (neigh, fdb) = (&self.neigh, &self.fdb);
        self.routes
            .resolve_hops(|gw| neigh.lookup(gw).and_then(|mac| fdb.lookup(mac).map(|remote| Hop { mac, remote })));
    }

    #[inline]
    pub fn pod(&self, port: PortId) -> Option<&PodPort> {
        self.ports.get(port.0 as usize).and_then(|p| p.as_ref())
    }
    pub fn pods(&self) -> impl Iterator<Item = &PodPort> {
        self.ports.iter().flatten()
    }
}

#[cfg(any(test, feature = "testkit"))]
pub mod article {
    //! The article's lab as tables: centos7-1 with pods ghost-ep1 (and a second pod for
    //! same-node switching), its peer centos7-2, and the `default/ghost` service. Used
    //! by unit tests, benches and fuzz targets; compiled only for tests and with the
    //! `testkit` feature, so the shipped library carries no fixture.
    use super::*;
    use crate::core::nat::service::{Protocol, ServiceSpec};
    use std::sync::Arc;

    pub fn node1() -> NodeInfo {
        NodeInfo {
            name: "centos7-1".into(),
            uplink: "ens33".into(),
            node_ip: Ipv4Addr::new(172, 16, 240, 131),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.250.0.0/16".parse().unwrap(),
            vtep_ip: Ipv4Addr::new(10, 244, 1, 0),
            vtep_mac: "8a:40:90:1c:cf:7e".parse().unwrap(),
            vni: 1,
            vxlan_port: 8472,
            mtu: 1450,
            host_mac: MacAddr::CALICO_HOST,
            host_port_mac: "02:00:ac:10:f0:83".parse().unwrap(),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            masquerade_ports: (61000, 65534),
            vxlan_accept: VxlanAccept::Any,
        }
    }

    pub fn peer2() -> Peer {
        Peer {
            name: "centos7-2".into(),
            subnet: "10.244.0.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(172, 16, 240, 132),
            vtep_mac: "32:a9:79:6d:0b:b1".parse().unwrap(),
        }
    }

    pub const EP1_MAC: MacAddr = MacAddr([0x3e, 0x0c, 0x94, 0x46, 0x7b, 0x98]);
    pub const EP3_MAC: MacAddr = MacAddr([0x3e, 0x0c, 0x94, 0x46, 0x7b, 0x03]);

    pub fn pods1() -> Vec<PodPort> {
        vec![
            PodPort {
                name: "ghost-ep1".into(),
                netns: "uc-ghost-ep1".into(),
                ip: Ipv4Addr::new(10, 244, 1, 5),
                mac: EP1_MAC,
                port: PortId(1),
                ifname: "calif0e9df43659".into(),
            },
            PodPort {
                name: "ghost-ep3".into(),
                netns: "uc-ghost-ep3".into(),
                ip: Ipv4Addr::new(10, 244, 1, 7),
                mac: EP3_MAC,
                port: PortId(2),
                ifname: "cali0000000003".into(),
            },
        ]
    }

    pub fn ghost() -> ServiceSpec {
        ServiceSpec {
            name: "default/ghost".into(),
            protocol: Protocol::Tcp,
            cluster_ip: Ipv4Addr::new(10, 250, 0, 40),
            port: 2368,
            node_port: Some(31266),
            endpoints: vec!["10.244.0.74:2368".parse().unwrap(), "10.244.1.5:2368".parse().unwrap()],
            ..ServiceSpec::default()
        }
    }

    pub fn tables1(services: Vec<ServiceSpec>) -> Tables {
        let svc = ServiceTable::build(services, |_, _| Arc::default());
        Tables::build(1, node1(), 0x1234_5678, &pods1(), &[peer2()], svc)
    }
}

#[cfg(test)]
mod tests {
    use super::article::*;
    use super::*;
    use crate::core::route::RouteTarget;

    #[test]
    fn build_derives_route_neigh_fdb_from_peers() {
        let t = tables1(vec![]);
        assert_eq!(
            t.routes.lookup(Ipv4Addr::new(10, 244, 0, 74)).target,
            RouteTarget::Peer {
                gateway: Ipv4Addr::new(10, 244, 0, 0),
                hop: Some(Hop { mac: peer2().vtep_mac, remote: Ipv4Addr::new(172, 16, 240, 132) })
            }
        );
        assert_eq!(t.neigh.lookup(Ipv4Addr::new(10, 244, 0, 0)), Some(peer2().vtep_mac));
        assert_eq!(t.fdb.lookup(peer2().vtep_mac), Some(Ipv4Addr::new(172, 16, 240, 132)));
        assert_eq!(t.pod(PortId(1)).unwrap().name, "ghost-ep1");
        assert!(t.pod(PortId::HOST).is_none());
        assert!(t.pod(PortId(9)).is_none());
        assert_eq!(t.pods().count(), 2);
    }
}
