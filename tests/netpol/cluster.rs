//! Three ucanal nodes in one process, joined by their VXLAN datagrams: every pod of the
//! world on its node's TAP port, a ClusterIP service per pod, and a policy engine per node
//! fed the same objects, as a cluster's control planes would be. A probe is a real first
//! packet (TCP SYN, UDP datagram, SCTP INIT) sent from the client pod's port and carried
//! node to node until it is delivered or dropped, then the server's answer the same way
//! back: reachable means both arrived.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use etherparse::PacketBuilder;
use ucanal::core::nat::conntrack::{Conntrack, Timeouts};
use ucanal::core::nat::service::{Protocol as SvcProto, ServiceSpec, ServiceTable};
use ucanal::core::policy::model::Object;
use ucanal::core::policy::recheck::recheck;
use ucanal::core::policy::{PolicyEngine, decode};
use ucanal::core::tables::{NodeInfo, Peer, PodPort, Tables, VxlanAccept};
use ucanal::core::trace::Trace;
use ucanal::core::{Action, Dataplane, DropReason, HEADROOM, Now, Packet, PortId};
use ucanal::wire::MacAddr;

pub const NOW: Now = Now(1_000_000_000_000);

/// A pod of the world, attached on its node.
#[derive(Debug, Clone)]
pub struct Attached {
    pub node: usize,
    pub port: PodPort,
    pub service: Ipv4Addr,
}

pub struct Node {
    pub info: NodeInfo,
    pub dp: Dataplane,
    pub engine: PolicyEngine,
    pods: Vec<PodPort>,
    /// The policy generation the last re-check saw.
    checked: u64,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub pods: BTreeMap<String, Attached>,
    services: Vec<ServiceSpec>,
}

/// What became of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The request reached the server and the answer the client.
    Connected,
    /// The request was dropped on `node`.
    Refused { node: usize, reason: DropReason },
    /// The request arrived but its answer was dropped (never right: replies pass).
    ReplyLost { node: usize, reason: DropReason },
}

fn node_info(n: usize) -> NodeInfo {
    let k = n as u8 + 1;
    NodeInfo {
        name: format!("node-{k}"),
        uplink: "eth0".into(),
        node_ip: Ipv4Addr::new(172, 16, 240, 130 + k),
        pod_cidr: format!("10.244.{k}.0/24").parse().unwrap(),
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: "10.96.0.0/16".parse().unwrap(),
        vtep_ip: Ipv4Addr::new(10, 244, k, 0),
        vtep_mac: MacAddr([0x0a, 0x58, 0, 0, 0, k]),
        vni: 1,
        vxlan_port: 8472,
        mtu: 1450,
        host_mac: MacAddr::CALICO_HOST,
        host_port_mac: MacAddr([0x02, 0, 0xac, 0x10, 0xf0, 0x80 + k]),
        gateway: Ipv4Addr::new(169, 254, 1, 1),
        masquerade_ports: (61000, 65534),
        vxlan_accept: VxlanAccept::Any,
    }
}

impl Cluster {
    /// The world's namespaces and pods on three nodes (a pod's `spec.nodeName` says which).
    pub fn new(world: &[Object]) -> Cluster {
        let infos: Vec<NodeInfo> = (0..3).map(node_info).collect();
        let mut pods = BTreeMap::new();
        let mut per_node: Vec<Vec<PodPort>> = vec![Vec::new(); 3];
        let mut services = Vec::new();
        for o in world {
            let Object::Pod(p) = o else { continue };
            let node = infos.iter().position(|i| Some(&i.name) == p.node.as_ref()).expect("a pod on node-1..3");
            let ip = p.ip.expect("a pod address");
            let k = pods.len() as u8;
            let port = PodPort {
                name: format!("{}/{}", p.namespace, p.name),
                netns: format!("pod-{k}"),
                ip,
                mac: MacAddr([0x0a, 0x58, 0x0a, 0xf4, node as u8 + 1, ip.octets()[3]]),
                port: PortId(per_node[node].len() as u32 + 1),
                ifname: format!("cali{:011x}", 0x1_0000_0000u64 + u64::from(k)),
            };
            let service = Ipv4Addr::new(10, 96, 0, 10 + k);
            for protocol in [SvcProto::Tcp, SvcProto::Udp] {
                for svc_port in [80, 81] {
                    services.push(ServiceSpec {
                        name: format!("{}/svc-{}", p.namespace, p.name),
                        protocol,
                        cluster_ip: service,
                        port: svc_port,
                        node_port: None,
                        endpoints: vec![SocketAddrV4::new(ip, svc_port)],
                        ..ServiceSpec::default()
                    });
                }
            }
            per_node[node].push(port.clone());
            pods.insert(port.name.clone(), Attached { node, port, service });
        }
        let nodes = infos
            .iter()
            .enumerate()
            .map(|(n, info)| {
                let mut engine = PolicyEngine::new(&info.name, info.pod_cidr);
                for o in world {
                    engine.apply(o.clone());
                }
                let peers: Vec<Peer> = infos
                    .iter()
                    .filter(|i| i.name != info.name)
                    .map(|i| Peer {
                        name: i.name.clone(),
                        subnet: i.pod_cidr,
                        public_ip: i.node_ip,
                        vtep_mac: i.vtep_mac,
                    })
                    .collect();
                let svc = ServiceTable::build(services.clone(), |_, _| Arc::default());
                let mut t = Tables::build(1, info.clone(), 0x5eed + n as u64, &per_node[n], &peers, svc);
                t.policy = engine.table();
                Node {
                    info: info.clone(),
                    dp: Dataplane::new(t, Conntrack::new(1 << 16, Timeouts::default()), 1),
                    engine,
                    pods: per_node[n].clone(),
                    checked: 0,
                }
            })
            .collect();
        Cluster { nodes, pods, services }
    }

    /// Applies objects on every node's engine, publishes, and re-checks running flows.
    pub fn apply(&mut self, objs: &[Object], delete: &[Object]) {
        for node in &mut self.nodes {
            for o in objs {
                node.engine.apply(o.clone());
            }
            for o in delete {
                node.engine.delete(o);
            }
        }
        self.sync();
    }

    fn sync(&mut self) {
        for node in &mut self.nodes {
            let mut t = (*node.dp.tables()).clone();
            t.policy = node.engine.table();
            node.dp.publish(t);
            if let Some(r) = recheck(&node.dp, NOW, node.checked, 0) {
                node.checked = r.generation;
            }
        }
    }

    /// Carries a frame from `port` of `node` until it is delivered or dropped.
    fn carry(
        &self,
        mut node: usize,
        port: PortId,
        frame: Vec<u8>,
    ) -> Result<(usize, PortId, Vec<u8>), (usize, DropReason)> {
        let mut from: Option<SocketAddrV4> = None;
        let mut data = frame;
        for _ in 0..4 {
            let n = &self.nodes[node];
            let mut buf = vec![0u8; HEADROOM + data.len() + 64];
            buf[HEADROOM..HEADROOM + data.len()].copy_from_slice(&data);
            let mut spare = vec![0u8; HEADROOM + 14 + 65_535];
            let t = n.dp.tables();
            let mut p = Packet::new(&mut buf, HEADROOM, HEADROOM + data.len()).with_spare(&mut spare);
            let a = match from {
                None => n.dp.handle_port(0, &t, port, &mut p, NOW, &mut Trace::off()),
                Some(f) => n.dp.handle_vxlan(0, &t, f, &mut p, NOW, &mut Trace::off()),
            };
            match a {
                Action::ToPort(out) => return Ok((node, out, p.data().to_vec())),
                Action::Drop(r) => return Err((node, r)),
                Action::ToVtep { remote, .. } => {
                    from = Some(SocketAddrV4::new(n.info.node_ip, 40000));
                    data = p.data().to_vec();
                    node = self.nodes.iter().position(|m| m.info.node_ip == remote).expect("a node at the VTEP");
                }
                Action::Held => panic!("a probe was held as a fragment"),
            }
        }
        panic!("a probe went round in circles")
    }

    pub fn pod(&self, name: &str) -> &Attached {
        &self.pods[name]
    }

    /// One connection attempt from `client` to `dst:port` (a pod's address or its service).
    pub fn probe(&self, client: &str, dst: Ipv4Addr, server: &str, proto: u8, port: u16, sport: u16) -> Outcome {
        let (c, s) = (self.pod(client), self.pod(server));
        let hello = frame(proto, c.port.mac, (c.port.ip, sport), (dst, port), Seg::Hello);
        let (node, at, got) = match self.carry(c.node, c.port.port, hello) {
            Ok(d) => d,
            Err((node, reason)) => return Outcome::Refused { node, reason },
        };
        assert_eq!((node, at), (s.node, s.port.port), "{client} -> {dst}:{port} delivered to the wrong pod");
        let (src, dst_seen) = addrs(&got);
        assert_eq!(dst_seen, (s.port.ip, port), "{client} -> {server}: the server sees its own address");
        let answer = frame(proto, s.port.mac, dst_seen, src, Seg::Answer);
        match self.carry(s.node, s.port.port, answer) {
            Ok((node, at, back)) => {
                assert_eq!((node, at), (c.node, c.port.port), "{server}'s answer to {client} went astray");
                assert_eq!(addrs(&back), ((dst, port), (c.port.ip, sport)), "the answer un-NATed");
                Outcome::Connected
            }
            Err((node, reason)) => Outcome::ReplyLost { node, reason },
        }
    }

    /// A packet on an established connection (after its handshake), client to server.
    pub fn again(
        &self,
        client: &str,
        dst: Ipv4Addr,
        proto: u8,
        port: u16,
        sport: u16,
    ) -> Result<(), (usize, DropReason)> {
        let c = self.pod(client);
        let f = frame(proto, c.port.mac, (c.port.ip, sport), (dst, port), Seg::Later);
        self.carry(c.node, c.port.port, f).map(|_| ())
    }

    pub fn services(&self) -> usize {
        self.services.len()
    }
    pub fn attached(&self, node: usize) -> usize {
        self.nodes[node].pods.len()
    }
}

/// Source and destination (address, port) of a delivered frame.
fn addrs(frame: &[u8]) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
    let ip = &frame[14..];
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let a = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
    let p = |o: usize| u16::from_be_bytes([ip[hl + o], ip[hl + o + 1]]);
    ((a(12), p(0)), (a(16), p(2)))
}

/// Which packet of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg {
    /// TCP SYN, a UDP datagram, SCTP INIT.
    Hello,
    /// The server's answer: SYN-ACK, a datagram back, INIT-ACK.
    Answer,
    /// Later, client to server: an ACK with data, a datagram, SCTP DATA.
    Later,
}

/// A packet of a probe's connection.
pub fn frame(proto: u8, mac: MacAddr, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), seg: Seg) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(mac.0, MacAddr::CALICO_HOST.0).ipv4(src.0.octets(), dst.0.octets(), 64);
    let mut v = Vec::new();
    match proto {
        6 => {
            let b = eth.tcp(src.1, dst.1, 1000, 64240);
            match seg {
                Seg::Hello => b.syn().write(&mut v, &[]).unwrap(),
                Seg::Answer => b.syn().ack(1001).write(&mut v, &[]).unwrap(),
                Seg::Later => b.ack(5001).write(&mut v, b"GET /").unwrap(),
            }
        }
        17 => eth.udp(src.1, dst.1).write(&mut v, b"probe").unwrap(),
        132 => {
            let kind = match seg {
                Seg::Hello => 1,
                Seg::Answer => 2,
                Seg::Later => 0,
            };
            let chunk: [u8; 20] = [kind, 0, 0, 20, 0, 0, 0, 1, 0, 0, 0x10, 0, 0, 1, 0, 1, 0, 0, 0, 1];
            let mut l4 = Vec::new();
            l4.extend_from_slice(&src.1.to_be_bytes());
            l4.extend_from_slice(&dst.1.to_be_bytes());
            l4.extend_from_slice(&[0; 8]);
            l4.extend_from_slice(&chunk);
            let mut h = etherparse::Ipv4Header::new(
                l4.len() as u16,
                64,
                etherparse::IpNumber(132),
                src.0.octets(),
                dst.0.octets(),
            )
            .unwrap();
            h.header_checksum = h.calc_header_checksum();
            etherparse::Ethernet2Header {
                source: mac.0,
                destination: MacAddr::CALICO_HOST.0,
                ether_type: etherparse::EtherType::IPV4,
            }
            .write(&mut v)
            .unwrap();
            h.write(&mut v).unwrap();
            v.extend_from_slice(&l4);
        }
        p => panic!("no probe for protocol {p}"),
    }
    v
}

/// The world's objects from their manifests.
pub fn objects(text: &str) -> Vec<Object> {
    decode::decode_all(text).unwrap_or_else(|e| panic!("fixture: {e}"))
}
