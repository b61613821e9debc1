//! The packet walk, path by path, with real frames as the kernel and pods send them.

use super::*;
use crate::core::counters::{Counter, DropReason};
use crate::core::nat::conntrack::Timeouts;
use crate::core::nat::service::ServiceSpec;
use crate::core::nat::uniform_index;
use crate::core::tables::article::{self, EP1_MAC, EP3_MAC};
use crate::core::{HEADROOM, Now, Offload};
use crate::wire::{arp, checksum, icmp, ipv4};
use etherparse::PacketBuilder;

const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 16, 240, 1);
const NODE1: Ipv4Addr = Ipv4Addr::new(172, 16, 240, 131);
const NODE2: Ipv4Addr = Ipv4Addr::new(172, 16, 240, 132);
const EP1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const EP2: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 74);
const EP3: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);
const VTEP1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 40);
const HOST_MAC: MacAddr = MacAddr::CALICO_HOST;
const NOW: Now = Now(1_000_000_000_000);

fn vtep1_mac() -> MacAddr {
    article::node1().vtep_mac
}
fn vtep2_mac() -> MacAddr {
    article::peer2().vtep_mac
}

struct Lab {
    dp: Dataplane,
    /// The frame as it left (copied out: it may have moved to the spare buffer).
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The offload the frame leaves with; `offload_in` the one it arrives with.
    offload: Offload,
    offload_in: Offload,
}

impl Lab {
    fn new(services: Vec<ServiceSpec>) -> Lab {
        let mut t = article::tables1(services);
        t.vxlan_source_ports = vec![40001, 40002, 40003];
        Lab::with_tables(t)
    }
    fn with_tables(t: Tables) -> Lab {
        Lab {
            dp: Dataplane::new(t, Conntrack::new(1024, Timeouts::default()), 1),
            buf: Vec::new(),
            start: 0,
            end: 0,
            offload: Offload::default(),
            offload_in: Offload::default(),
        }
    }
    fn run(
        &mut self,
        frame: &[u8],
        f: impl FnOnce(&Dataplane, &Tables, &mut Packet, &mut Trace) -> Action,
        tr: &mut Trace,
    ) -> Action {
        let mut buf = vec![0u8; HEADROOM + frame.len() + 64];
        buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        let mut spare = vec![0u8; HEADROOM + 14 + 65_535];
        let t = self.dp.tables();
        let mut p = Packet::new(&mut buf, HEADROOM, HEADROOM + frame.len()).with_spare(&mut spare);
        p.offload = std::mem::take(&mut self.offload_in);
        let a = f(&self.dp, &t, &mut p, tr);
        self.buf = p.data().to_vec();
        self.start = 0;
        self.end = self.buf.len();
        self.offload = p.offload;
        a
    }
    fn port(&mut self, port: PortId, frame: &[u8]) -> Action {
        self.run(frame, |dp, t, p, tr| dp.handle_port(0, t, port, p, NOW, tr), &mut Trace::off())
    }
    fn vxlan(&mut self, from: Ipv4Addr, dgram: &[u8]) -> Action {
        self.run(
            dgram,
            |dp, t, p, tr| dp.handle_vxlan(0, t, SocketAddrV4::new(from, 45000), p, NOW, tr),
            &mut Trace::off(),
        )
    }
    fn traced_port(&mut self, port: PortId, frame: &[u8]) -> (Action, Trace) {
        let mut tr = Trace::on();
        let a = self.run(frame, |dp, t, p, tr| dp.handle_port(0, t, port, p, NOW, tr), &mut tr);
        (a, tr)
    }
    /// The frame as it leaves.
    fn out(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
    fn out_ip(&self) -> Ipv4Packet<&[u8]> {
        let d = self.out();
        let at = if d.len() > 8 && d[0] == 0x08 && d[12..14] != [0x08, 0x00] { 8 + 14 } else { 14 };
        Ipv4Packet::new_checked(&d[at..]).unwrap()
    }
    fn count(&self, c: Counter) -> u64 {
        self.dp.counters.get(c)
    }
    fn dropped(&self, d: DropReason) -> u64 {
        self.dp.counters.dropped(d)
    }
}

fn eth(src: MacAddr, dst: MacAddr) -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2(src.0, dst.0)
}

fn ping(src_mac: MacAddr, src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, seq: u16) -> Vec<u8> {
    let b = eth(src_mac, HOST_MAC).ipv4(src.octets(), dst.octets(), ttl).icmpv4_echo_request(0x4242, seq);
    let mut v = Vec::new();
    b.write(&mut v, b"0123456789abcdef").unwrap();
    set_df(&mut v[14..]);
    v
}

fn set_df(ip: &mut [u8]) {
    ip[6] |= 0x40;
    Ipv4Packet::new_checked(ip).unwrap().fill_checksum();
}

fn tcp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    syn: bool,
    payload: &[u8],
) -> Vec<u8> {
    let b = eth(src_mac, dst_mac).ipv4(src.0.octets(), dst.0.octets(), 64).tcp(src.1, dst.1, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(2000) };
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    set_df(&mut v[14..]);
    v
}

fn udp(src_mac: MacAddr, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let b = eth(src_mac, HOST_MAC).ipv4(src.0.octets(), dst.0.octets(), 64).udp(src.1, dst.1);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// A VXLAN datagram as the kernel's flannel.1 on centos7-2 sends it.
fn from_node2(inner_ip: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    v.extend_from_slice(&vtep1_mac().0);
    v.extend_from_slice(&vtep2_mac().0);
    v.extend_from_slice(&[0x08, 0x00]);
    v.extend_from_slice(inner_ip);
    v
}

fn l4_ports(ip: &Ipv4Packet<&[u8]>) -> (u16, u16) {
    let p = ip.payload();
    (l4::be16(p, 0), l4::be16(p, 2))
}

fn assert_checksums(ip: &Ipv4Packet<&[u8]>) {
    assert!(ip.verify_checksum(), "ipv4 header checksum");
    let whole = &ip.header().iter().chain(ip.payload()).copied().collect::<Vec<u8>>();
    match ip.protocol() {
        PROTO_TCP | PROTO_UDP => assert!(l4::verify_checksum(whole), "l4 checksum"),
        PROTO_ICMP => assert_eq!(checksum::fold(checksum::sum(ip.payload(), 0)), 0xffff, "icmp checksum"),
        _ => {}
    }
}

#[test]
fn proxy_arp_for_the_gateway() {
    let mut lab = Lab::new(vec![]);
    let mut f = vec![0u8; 42];
    ethernet::emit_header(&mut f, MacAddr::BROADCAST, EP1_MAC, ETHERTYPE_ARP);
    arp::emit(&mut f[14..], arp::OP_REQUEST, EP1_MAC, EP1, MacAddr::ZERO, Ipv4Addr::new(169, 254, 1, 1));
    assert_eq!(lab.port(PortId(1), &f), Action::ToPort(PortId(1)));
    let out = lab.out();
    assert_eq!(&out[..6], &EP1_MAC.0);
    let a = arp::ArpPacket::new_checked(&out[14..]).unwrap();
    assert_eq!(
        (a.operation(), a.sender_mac(), a.sender_ip()),
        (arp::OP_REPLY, HOST_MAC, Ipv4Addr::new(169, 254, 1, 1))
    );
    assert_eq!(lab.count(Counter::ArpProxyReply), 1);
    // ARP unicast to some other MAC is not ours.
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
    assert_eq!(lab.port(PortId(1), &f), Action::Drop(DropReason::EthNotForUs));
}

#[test]
fn local_switch_by_host_route() {
    let mut lab = Lab::new(vec![]);
    let f = ping(EP1_MAC, EP1, EP3, 64, 1);
    assert_eq!(lab.port(PortId(1), &f), Action::ToPort(PortId(2)));
    let out = lab.out();
    assert_eq!(&out[..6], &EP3_MAC.0);
    assert_eq!(&out[6..12], &HOST_MAC.0);
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), ip.ttl()), (EP1, EP3, 63));
    assert_checksums(&ip);
    assert_eq!(lab.count(Counter::ForwardLocal), 1);
}

#[test]
fn anti_spoofing_drops_foreign_source() {
    let mut lab = Lab::new(vec![]);
    let f = ping(EP1_MAC, Ipv4Addr::new(10, 244, 1, 99), EP3, 64, 1);
    assert_eq!(lab.port(PortId(1), &f), Action::Drop(DropReason::SpoofedSource));
    assert_eq!(lab.dropped(DropReason::SpoofedSource), 1);
    // Another pod's address from the wrong port is spoofing too.
    let f = ping(EP1_MAC, EP3, EP1, 64, 1);
    assert_eq!(lab.port(PortId(1), &f), Action::Drop(DropReason::SpoofedSource));
}

#[test]
fn remote_subnet_goes_route_neighbour_fdb_vxlan() {
    let mut lab = Lab::new(vec![]);
    let f = ping(EP1_MAC, EP1, EP2, 64, 1);
    let (a, tr) = lab.traced_port(PortId(1), &f);
    let Action::ToVtep { remote, flow_hash } = a else { panic!("{a:?}") };
    assert_eq!(remote, NODE2);
    let out = lab.out();
    assert_eq!(&out[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0], "RFC 7348 header, VNI 1");
    assert_eq!(&out[8..14], &vtep2_mac().0, "inner dst = remote VTEP MAC");
    assert_eq!(&out[14..20], &vtep1_mac().0, "inner src = local VTEP MAC");
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), ip.ttl()), (EP1, EP2, 63));
    assert_checksums(&ip);
    // Every packet of the flow has the same hash (same outer source port).
    let again = ping(EP1_MAC, EP1, EP2, 64, 2);
    assert!(matches!(lab.port(PortId(1), &again), Action::ToVtep { flow_hash: h, .. } if h == flow_hash));
    let kinds: Vec<&str> = tr.steps.iter().map(step_kind).collect();
    assert_eq!(kinds, ["ingress", "packet", "miss", "route", "neighbour", "fdb", "encap"]);
    assert!(tr.steps[3].to_string().contains("10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink"));
    assert!(tr.steps[5].to_string().contains("32:a9:79:6d:0b:b1 dev flannel.1 dst 172.16.240.132"));
}

fn step_kind(s: &Step) -> &'static str {
    match s {
        Step::Ingress { .. } => "ingress",
        Step::Packet { .. } => "packet",
        Step::ProxyArp { .. } => "proxy_arp",
        Step::Decap { .. } => "decap",
        Step::Conntrack { .. } => "conntrack",
        Step::ConntrackMiss { .. } => "miss",
        Step::Service { .. } => "service",
        Step::Endpoint { .. } => "endpoint",
        Step::Dnat { .. } => "dnat",
        Step::Masquerade { .. } => "masquerade",
        Step::ConntrackNew { .. } => "new",
        Step::ReverseNat { .. } => "reverse_nat",
        Step::Route { .. } => "route",
        Step::Neighbour { .. } => "neighbour",
        Step::Fdb { .. } => "fdb",
        Step::Encap { .. } => "encap",
        Step::Deliver { .. } => "deliver",
        Step::Reply { .. } => "reply",
        Step::Defrag { .. } => "defrag",
        Step::Drop { .. } => "drop",
        Step::Policy { .. } => "policy",
    }
}

#[test]
fn missing_neighbour_or_fdb_is_a_counted_drop_never_a_flood() {
    let mut t = article::tables1(vec![]);
    t.neigh = Default::default();
    t.resolve_hops();
    let mut lab = Lab::with_tables(t);
    assert_eq!(lab.port(PortId(1), &ping(EP1_MAC, EP1, EP2, 64, 1)), Action::Drop(DropReason::NoNeighbour));
    let mut t = article::tables1(vec![]);
    t.fdb = Default::default();
    t.resolve_hops();
    let mut lab = Lab::with_tables(t);
    assert_eq!(lab.port(PortId(1), &ping(EP1_MAC, EP1, EP2, 64, 1)), Action::Drop(DropReason::NoFdb));
    // Inside the cluster CIDR with no route at all.
    assert_eq!(
        lab.port(PortId(1), &ping(EP1_MAC, EP1, Ipv4Addr::new(10, 244, 9, 9), 64, 1)),
        Action::Drop(DropReason::NoRoute)
    );
}

#[test]
fn decap_from_known_peer_to_local_pod() {
    let mut lab = Lab::new(vec![]);
    let inner = &ping(MacAddr::ZERO, EP2, EP1, 63, 1)[14..];
    assert_eq!(lab.vxlan(NODE2, &from_node2(inner)), Action::ToPort(PortId(1)));
    let out = lab.out();
    assert_eq!(&out[..6], &EP1_MAC.0);
    assert_eq!(&out[6..12], &HOST_MAC.0);
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), ip.ttl()), (EP2, EP1, 62));
    assert_checksums(&ip);
    assert_eq!(lab.count(Counter::Decap), 1);
}

#[test]
fn ttl_expiry_answers_time_exceeded() {
    let mut lab = Lab::new(vec![]);
    let f = ping(EP1_MAC, EP1, EP2, 1, 1);
    assert_eq!(lab.port(PortId(1), &f), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst()), (NODE1, EP1));
    assert_eq!(icmp::type_code(&lab.out()[14..]), Some((11, 0)));
    assert_checksums(&ip);
    let e = icmp::embedded(ip.payload()).unwrap();
    assert_eq!((e.src, e.dst), (EP1, EP2));
    assert_eq!(lab.dropped(DropReason::TtlExceeded), 1);
    assert_eq!(lab.count(Counter::IcmpTimeExceededSent), 1);
}

#[test]
fn oversize_df_gets_frag_needed_1450() {
    let mut lab = Lab::new(vec![]);
    let f = tcp(EP1_MAC, HOST_MAC, (EP1, 40000), (EP2, 2368), false, &[0u8; 1420]);
    assert_eq!(f.len() - 14, 1460);
    assert_eq!(lab.port(PortId(1), &f), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!(icmp::type_code(&lab.out()[14..]), Some((3, 4)));
    assert_eq!(icmp::next_hop_mtu(ip.payload()), 1450);
    assert_eq!(ip.dst(), EP1);
    assert_checksums(&ip);
    // Exactly 1450 passes.
    let f = tcp(EP1_MAC, HOST_MAC, (EP1, 40000), (EP2, 2368), false, &[0u8; 1410]);
    assert!(matches!(lab.port(PortId(1), &f), Action::ToVtep { .. }));
    // Without DF it leaves to be fragmented at 1450, as Linux fragments it.
    let mut f = tcp(EP1_MAC, HOST_MAC, (EP1, 40000), (EP2, 2368), false, &[0u8; 1420]);
    f[14 + 6] = 0;
    Ipv4Packet::new_checked(&mut f[14..]).unwrap().fill_checksum();
    assert!(matches!(lab.port(PortId(1), &f), Action::ToVtep { .. }));
    assert_eq!(lab.offload.frag_size, 1450);
}

#[test]
fn malformed_ipv4_and_l2_are_counted() {
    let mut lab = Lab::new(vec![]);
    let good = ping(EP1_MAC, EP1, EP3, 64, 1);
    assert_eq!(lab.port(PortId(1), &good[..10]), Action::Drop(DropReason::EthTruncated));
    assert_eq!(lab.port(PortId(1), &good[..30]), Action::Drop(DropReason::Ipv4Malformed));
    let mut bad = good.clone();
    bad[14 + 10] ^= 0xff;
    assert_eq!(lab.port(PortId(1), &bad), Action::Drop(DropReason::Ipv4BadChecksum));
    let mut v6 = good.clone();
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(lab.port(PortId(1), &v6), Action::Drop(DropReason::Ipv6Unsupported));
    let mut other = good.clone();
    other[0] = 0x02;
    assert_eq!(lab.port(PortId(1), &other), Action::Drop(DropReason::EthNotForUs));
    assert_eq!(lab.port(PortId(9), &good), Action::Drop(DropReason::PortGone));
    let mcast = ping(EP1_MAC, EP1, Ipv4Addr::new(224, 0, 0, 251), 64, 1);
    assert_eq!(lab.port(PortId(1), &mcast), Action::Drop(DropReason::Ipv4Martian));
    let short_tcp = {
        let mut f = tcp(EP1_MAC, HOST_MAC, (EP1, 1), (EP2, 2), true, &[]);
        f.truncate(14 + 20 + 10);
        f[14 + 3] = 30;
        Ipv4Packet::new_checked(&mut f[14..]).unwrap().fill_checksum();
        f
    };
    assert_eq!(lab.port(PortId(1), &short_tcp), Action::Drop(DropReason::L4Malformed));
}

/// Source ports whose flows hash to the wanted endpoint of default/ghost.
fn sport_for(lab: &Lab, src: Ipv4Addr, dst: (Ipv4Addr, u16), want: Ipv4Addr) -> u16 {
    let t = lab.dp.tables();
    (40000..41000)
        .find(|p| {
            let u = Tuple { proto: PROTO_TCP, src, dst: dst.0, sport: *p, dport: dst.1 };
            *article::ghost().endpoints[uniform_index(u.hash(t.hash_seed), 2)].ip() == want
        })
        .unwrap()
}

#[test]
fn a_zero_length_datagram_is_a_counted_drop() {
    let mut lab = Lab::new(vec![]);
    assert_eq!(lab.vxlan(NODE2, &[]), Action::Drop(DropReason::VxlanMalformed));
    assert_eq!(lab.dropped(DropReason::VxlanMalformed), 1);
}

mod frag;
mod nat;
mod partial;
mod policy;
mod run;
mod services;
mod tso;
mod vxlan;
