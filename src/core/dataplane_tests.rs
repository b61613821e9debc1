//! The packet walk, path by path, with real frames as the kernel and pods send them.

use super::*;
use crate::core::counters::{Counter, DropReason};
use crate::core::nat::conntrack::Timeouts;
use crate::core::nat::service::ServiceSpec;
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
fn decap_refuses_everything_else() {
    let mut lab = Lab::new(vec![]);
    let inner = ping(MacAddr::ZERO, EP2, EP1, 63, 1)[14..].to_vec();
    let good = from_node2(&inner);
    assert_eq!(lab.vxlan(CLIENT, &good), Action::Drop(DropReason::VxlanUnknownPeer));
    let mut bad_vni = good.clone();
    bad_vni[6] = 2;
    assert_eq!(lab.vxlan(NODE2, &bad_vni), Action::Drop(DropReason::VxlanBadVni));
    let mut no_i = good.clone();
    no_i[0] = 0;
    assert_eq!(lab.vxlan(NODE2, &no_i), Action::Drop(DropReason::VxlanMalformed));
    assert_eq!(lab.vxlan(NODE2, &good[..5]), Action::Drop(DropReason::VxlanMalformed));
    assert_eq!(lab.vxlan(NODE2, &good[..8 + 10]), Action::Drop(DropReason::VxlanInnerMalformed));
    assert_eq!(lab.vxlan(NODE2, &good[..8 + 14 + 10]), Action::Drop(DropReason::VxlanInnerMalformed));
    let mut dmac = good.clone();
    dmac[8] ^= 0x02;
    assert_eq!(lab.vxlan(NODE2, &dmac), Action::Drop(DropReason::VxlanInnerDmac));
    let mut smac = good.clone();
    smac[14 + 5] ^= 0x01;
    assert_eq!(lab.vxlan(NODE2, &smac), Action::Drop(DropReason::VxlanFdbMismatch));
    let outside = from_node2(&ping(MacAddr::ZERO, Ipv4Addr::new(10, 244, 7, 1), EP1, 63, 1)[14..]);
    assert_eq!(lab.vxlan(NODE2, &outside), Action::Drop(DropReason::VxlanSrcOutsideSubnet));
    let transit = from_node2(&ping(MacAddr::ZERO, EP2, Ipv4Addr::new(10, 244, 0, 9), 63, 1)[14..]);
    assert_eq!(lab.vxlan(NODE2, &transit), Action::Drop(DropReason::VxlanNotLocal));
    let world = from_node2(&ping(MacAddr::ZERO, EP2, Ipv4Addr::new(8, 8, 8, 8), 63, 1)[14..]);
    assert_eq!(lab.vxlan(NODE2, &world), Action::Drop(DropReason::VxlanNotLocal));
    // Still flowing after all that.
    assert_eq!(lab.vxlan(NODE2, &good), Action::ToPort(PortId(1)));
    assert_eq!(lab.count(Counter::RxVxlan), 12);
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
            *article::ghost().endpoints[pick(u.hash(t.hash_seed), 2)].ip() == want
        })
        .unwrap()
}

#[test]
fn nodeport_to_remote_endpoint_the_article_walk() {
    let mut lab = Lab::new(vec![article::ghost()]);
    let sport = sport_for(&lab, CLIENT, (NODE1, 31266), EP2);
    let host_mac = article::node1().host_port_mac;
    let syn = tcp(host_mac, HOST_MAC, (CLIENT, sport), (NODE1, 31266), true, &[]);
    let (a, tr) = lab.traced_port(PortId::HOST, &syn);
    assert!(matches!(a, Action::ToVtep { remote: NODE2, .. }), "{a:?}");
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst()), (VTEP1, EP2), "DNAT to the endpoint, masquerade to flannel.1's address");
    assert_eq!(l4_ports(&ip), (sport, 2368), "source port kept");
    assert_eq!(ip.ttl(), 64, "the host stack already routed it");
    assert_checksums(&ip);
    let kinds: Vec<&str> = tr.steps.iter().map(step_kind).collect();
    assert_eq!(
        kinds,
        [
            "ingress",
            "packet",
            "miss",
            "service",
            "endpoint",
            "new",
            "dnat",
            "masquerade",
            "route",
            "neighbour",
            "fdb",
            "encap"
        ]
    );
    assert!(tr.steps[3].to_string().contains("KUBE-NODEPORTS tcp dpt:31266"));
    assert!(tr.steps[7].to_string().contains(&format!("-> 10.244.1.0:{sport}")));

    // The article's conntrack listing: reply tuple src=10.244.0.74 dst=10.244.1.0 sport=2368.
    let entries = lab.dp.conntrack.entries(NOW);
    assert_eq!(entries.len(), 1);
    let reply = entries[0].reply.to_string();
    assert_eq!(reply, format!("src=10.244.0.74 dst=10.244.1.0 sport=2368 dport={sport}"));

    // SYN-ACK back from centos7-2: reverse NAT to the client, out the host port.
    let synack = {
        let b = PacketBuilder::ipv4(EP2.octets(), VTEP1.octets(), 63).tcp(2368, sport, 5000, 64240).syn().ack(1001);
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    };
    assert_eq!(lab.vxlan(NODE2, &from_node2(&synack)), Action::ToPort(PortId::HOST));
    let out = lab.out();
    assert_eq!(&out[..6], &host_mac.0);
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst()), (NODE1, CLIENT));
    assert_eq!(l4_ports(&ip), (31266, sport));
    assert_checksums(&ip);
    assert_eq!(lab.count(Counter::CtHitReply), 1);
    assert_eq!(lab.count(Counter::ServiceMasquerade), 1);
    let svc = lab.dp.tables().services.by_node_port(PROTO_TCP, 31266).unwrap().hits.get();
    assert_eq!(svc.0, 1);
}

#[test]
fn nodeport_to_local_endpoint_masquerades_to_node_ip() {
    let mut lab = Lab::new(vec![article::ghost()]);
    let sport = sport_for(&lab, CLIENT, (NODE1, 31266), EP1);
    let syn = tcp(article::node1().host_port_mac, HOST_MAC, (CLIENT, sport), (NODE1, 31266), true, &[]);
    assert_eq!(lab.port(PortId::HOST, &syn), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst()), (NODE1, EP1));
    assert_eq!(l4_ports(&ip), (sport, 2368));
    // The pod answers; the reply goes back to the client from the NodePort.
    let synack = tcp(EP1_MAC, HOST_MAC, (EP1, 2368), (NODE1, sport), false, &[]);
    assert_eq!(lab.port(PortId(1), &synack), Action::ToPort(PortId::HOST));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip)), (NODE1, CLIENT, (31266, sport)));
    assert_checksums(&ip);
}

#[test]
fn cluster_ip_from_a_pod_is_not_masqueraded_hairpin_is() {
    let mut lab = Lab::new(vec![article::ghost()]);
    let sport = sport_for(&lab, EP1, (VIP, 2368), EP2);
    let syn = tcp(EP1_MAC, HOST_MAC, (EP1, sport), (VIP, 2368), true, &[]);
    assert!(matches!(lab.port(PortId(1), &syn), Action::ToVtep { .. }));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), ip.ttl()), (EP1, EP2, 63));
    // The reply from the endpoint comes back with the VIP as source.
    let synack = {
        let b = PacketBuilder::ipv4(EP2.octets(), EP1.octets(), 63).tcp(2368, sport, 5000, 64240).syn().ack(1001);
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    };
    assert_eq!(lab.vxlan(NODE2, &from_node2(&synack)), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip)), (VIP, EP1, (2368, sport)));
    assert_checksums(&ip);

    // Hairpin: ghost-ep1 reaching itself through the service is masqueraded.
    let sport = sport_for(&lab, EP1, (VIP, 2368), EP1);
    let syn = tcp(EP1_MAC, HOST_MAC, (EP1, sport), (VIP, 2368), true, &[]);
    assert_eq!(lab.port(PortId(1), &syn), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst()), (NODE1, EP1));
}

#[test]
fn service_without_endpoints_refuses_at_once() {
    let mut svc = article::ghost();
    svc.endpoints.clear();
    let mut lab = Lab::new(vec![svc]);
    let syn = tcp(EP1_MAC, HOST_MAC, (EP1, 40000), (VIP, 2368), true, &[]);
    assert_eq!(lab.port(PortId(1), &syn), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst()), (VIP, EP1));
    assert_eq!(ip.payload()[13], l4::TCP_RST | l4::TCP_ACK);
    assert_checksums(&ip);
    assert_eq!(lab.count(Counter::TcpResetSent), 1);
    assert_eq!(lab.dropped(DropReason::ServiceNoEndpoints), 1);
    // UDP gets ICMP port unreachable from the VIP.
    let mut dns = article::ghost();
    dns.name = "kube-system/kube-dns".into();
    dns.protocol = crate::core::nat::service::Protocol::Udp;
    dns.cluster_ip = Ipv4Addr::new(10, 250, 0, 10);
    dns.port = 53;
    dns.node_port = None;
    dns.endpoints.clear();
    let mut lab = Lab::new(vec![dns]);
    let q = udp(EP1_MAC, (EP1, 53000), (Ipv4Addr::new(10, 250, 0, 10), 53), b"query");
    assert_eq!(lab.port(PortId(1), &q), Action::ToPort(PortId(1)));
    assert_eq!(icmp::type_code(&lab.out()[14..]), Some((3, 3)));
    assert_checksums(&lab.out_ip());
}

#[test]
fn unknown_service_port_is_port_unreachable() {
    let mut lab = Lab::new(vec![article::ghost()]);
    let syn = tcp(EP1_MAC, HOST_MAC, (EP1, 40000), (VIP, 80), true, &[]);
    assert_eq!(lab.port(PortId(1), &syn), Action::ToPort(PortId(1)));
    assert_eq!(icmp::type_code(&lab.out()[14..]), Some((3, 3)));
    assert_eq!(lab.dropped(DropReason::NoService), 1);
}

#[test]
fn pod_to_outside_is_masqueraded_to_node_ip_in_the_steered_range() {
    let mut lab = Lab::new(vec![]);
    let syn = tcp(EP1_MAC, HOST_MAC, (EP1, 45000), (CLIENT, 8080), true, &[]);
    assert_eq!(lab.port(PortId(1), &syn), Action::ToPort(PortId::HOST));
    let ip = lab.out_ip();
    let (sport, dport) = l4_ports(&ip);
    assert_eq!((ip.src(), ip.dst(), dport), (NODE1, CLIENT, 8080));
    assert!((61000..=65534).contains(&sport), "{sport}");
    assert_eq!(ip.ttl(), 64, "the host stack decrements when it forwards");
    assert_checksums(&ip);
    assert_eq!(lab.count(Counter::EgressMasquerade), 1);
    // The client's answer, steered in from the uplink, goes back to the pod.
    let synack = tcp(article::node1().host_port_mac, HOST_MAC, (CLIENT, 8080), (NODE1, sport), false, &[]);
    assert_eq!(lab.port(PortId::HOST, &synack), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip)), (CLIENT, EP1, (8080, 45000)));
    assert_checksums(&ip);
    // Pod to pod is never masqueraded; pod to the node itself neither.
    let to_node = tcp(EP1_MAC, HOST_MAC, (EP1, 45001), (NODE1, 10250), true, &[]);
    assert_eq!(lab.port(PortId(1), &to_node), Action::ToPort(PortId::HOST));
    assert_eq!(lab.out_ip().src(), EP1);
}

#[test]
fn steered_packets_that_are_not_ours_go_back_to_the_host() {
    let mut lab = Lab::new(vec![article::ghost()]);
    let f = tcp(article::node1().host_port_mac, HOST_MAC, (CLIENT, 50000), (NODE1, 22), true, &[]);
    assert_eq!(lab.port(PortId::HOST, &f), Action::ToPort(PortId::HOST));
    assert_eq!(lab.count(Counter::HostPunt), 1);
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst()), (CLIENT, NODE1));
    // The host never gets its own traffic for the outside world back.
    let f = tcp(article::node1().host_port_mac, HOST_MAC, (NODE1, 50000), (CLIENT, 22), true, &[]);
    assert_eq!(lab.port(PortId::HOST, &f), Action::Drop(DropReason::HostLoop));
}

#[test]
fn node_to_remote_pod_and_back_via_vtep_address() {
    let mut lab = Lab::new(vec![]);
    let hm = article::node1().host_port_mac;
    let f = {
        let b = eth(hm, HOST_MAC).ipv4(VTEP1.octets(), EP2.octets(), 64).icmpv4_echo_request(7, 1);
        let mut v = Vec::new();
        b.write(&mut v, b"x").unwrap();
        v
    };
    assert!(matches!(lab.port(PortId::HOST, &f), Action::ToVtep { .. }));
    assert_eq!(lab.out_ip().ttl(), 64);
    let reply = {
        let b = PacketBuilder::ipv4(EP2.octets(), VTEP1.octets(), 63).icmpv4_echo_reply(7, 1);
        let mut v = Vec::new();
        b.write(&mut v, b"x").unwrap();
        v
    };
    assert_eq!(lab.vxlan(NODE2, &from_node2(&reply)), Action::ToPort(PortId::HOST));
    assert_eq!(lab.count(Counter::CtNew), 0, "node traffic from the VTEP address is not NATed");
}

#[test]
fn icmp_error_about_a_natted_flow_is_translated() {
    let mut lab = Lab::new(vec![article::ghost()]);
    let sport = sport_for(&lab, CLIENT, (NODE1, 31266), EP2);
    let hm = article::node1().host_port_mac;
    let syn = tcp(hm, HOST_MAC, (CLIENT, sport), (NODE1, 31266), true, &[]);
    assert!(matches!(lab.port(PortId::HOST, &syn), Action::ToVtep { .. }));
    let natted = lab.out()[8 + 14..].to_vec();
    // centos7-2's ghost-ep2 answers the NATed SYN with port unreachable.
    let mut err = vec![0u8; 600];
    let n = icmp::emit_error(&mut err, EP2, ErrorRepr::port_unreachable(), &natted);
    err.truncate(n);
    // ... which goes to the masquerade address 10.244.1.0.
    assert_eq!(ipv4::addrs(&err[..20]).1, VTEP1);
    assert_eq!(lab.vxlan(NODE2, &from_node2(&err)), Action::ToPort(PortId::HOST));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst()), (NODE1, CLIENT), "outer addresses translated");
    assert_checksums(&ip);
    let e = icmp::embedded(ip.payload()).unwrap();
    assert_eq!((e.src, e.ports.sport, e.dst, e.ports.dport), (CLIENT, sport, NODE1, 31266), "quote translated");
    assert_eq!(lab.count(Counter::IcmpErrorTranslated), 1);
}

#[test]
fn dry_run_trace_leaves_no_state() {
    let lab = Lab::new(vec![article::ghost()]);
    let syn = tcp(article::node1().host_port_mac, HOST_MAC, (CLIENT, 40000), (NODE1, 31266), true, &[]);
    let mut buf = vec![0u8; HEADROOM + syn.len()];
    buf[HEADROOM..].copy_from_slice(&syn);
    let t = lab.dp.tables();
    let mut p = Packet::new(&mut buf, HEADROOM, HEADROOM + syn.len());
    let mut tr = Trace::dry_run();
    let a = lab.dp.handle_port(0, &t, PortId::HOST, &mut p, NOW, &mut tr);
    assert!(!matches!(a, Action::Drop(_)));
    assert!(tr.steps.iter().any(|s| matches!(s, Step::Dnat { .. })));
    assert!(lab.dp.conntrack.is_empty());
    assert_eq!(lab.count(Counter::RxHost), 0);
}

#[test]
fn two_datagrams_of_a_new_udp_flow_both_pass() {
    let mut dns = article::ghost();
    dns.name = "kube-system/kube-dns".into();
    dns.protocol = crate::core::nat::service::Protocol::Udp;
    dns.cluster_ip = Ipv4Addr::new(10, 250, 0, 10);
    dns.port = 53;
    dns.node_port = None;
    let mut lab = Lab::new(vec![dns]);
    let a = udp(EP1_MAC, (EP1, 53000), (Ipv4Addr::new(10, 250, 0, 10), 53), b"A?");
    let aaaa = udp(EP1_MAC, (EP1, 53000), (Ipv4Addr::new(10, 250, 0, 10), 53), b"AAAA?");
    let first = lab.port(PortId(1), &a);
    let first_dst = lab.out_ip().dst();
    let second = lab.port(PortId(1), &aaaa);
    assert!(!matches!(first, Action::Drop(_)) && !matches!(second, Action::Drop(_)));
    assert_eq!(lab.out_ip().dst(), first_dst, "same endpoint");
    assert_eq!(lab.dp.conntrack.len(), 1);
}

// ---------------------------------------------------------------------------------
// Partial checksums from a kernel peer (veth default offloads) and from pods.

/// Writes the folded pseudo-header sum into the TCP/UDP checksum field of `ip`: the
/// bytes a kernel with tx checksumming leaves for the device (CHECKSUM_PARTIAL).
fn make_partial(ip: &mut [u8]) {
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let at = hl + if ip[9] == PROTO_TCP { 16 } else { 6 };
    let (s, d) = (ip[12..16].try_into().unwrap(), ip[16..20].try_into().unwrap());
    let ps = checksum::fold(checksum::pseudo_header_sum(s, d, ip[9], (total - hl) as u16));
    ip[at..at + 2].copy_from_slice(&ps.to_be_bytes());
}

/// A SYN-ACK from `src` to `dst`, as IPv4 bytes, with a partial checksum.
fn partial_syn_ack(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src.0.octets(), dst.0.octets(), 63)
        .tcp(src.1, dst.1, 5000, 64240)
        .syn()
        .ack(1001)
        .write(&mut v, &[])
        .unwrap();
    set_df(&mut v);
    make_partial(&mut v);
    v
}

/// The L4 checksum of the frame as it left, finished the way the pod's TAP (NEEDS_CSUM,
/// csum_start at L4) or the device would finish it; asserts it then verifies.
fn assert_finishes(lab: &Lab) {
    let ip = lab.out_ip();
    let mut whole: Vec<u8> = ip.header().iter().chain(ip.payload()).copied().collect();
    l4::finish_partial_checksum(&mut whole);
    assert!(l4::verify_checksum(&whole), "the partial field finishes to a valid checksum");
}

#[test]
fn partial_syn_ack_from_a_kernel_peer_reaches_the_pod_as_needs_csum() {
    let mut lab = Lab::new(vec![]);
    let synack = partial_syn_ack((EP2, 2368), (EP1, 40000));
    assert!(!l4::verify_checksum(&synack), "as a complete checksum these bytes are wrong");
    assert_eq!(lab.vxlan(NODE2, &from_node2(&synack)), Action::ToPort(PortId(1)));
    assert_eq!(lab.offload, Offload { csum_partial: true, gso_size: 0, frag_size: 0 }, "NEEDS_CSUM to the TAP");
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), ip.ttl()), (EP2, EP1, 62));
    assert!(ip.verify_checksum());
    assert_eq!(&ip.payload()[16..18], &synack[36..38], "the partial field is passed on as it came");
    assert_finishes(&lab);

    // A TAP without offloads takes no NEEDS_CSUM: ucanal finishes the checksum itself.
    let mut lab = Lab::new(vec![]);
    lab.dp =
        Dataplane::new(article::tables1(vec![]), Conntrack::new(16, Timeouts::default()), 1).with_tap_offloads(false);
    assert_eq!(lab.vxlan(NODE2, &from_node2(&synack)), Action::ToPort(PortId(1)));
    assert_eq!(lab.offload, Offload::default());
    assert_checksums(&lab.out_ip());
}

#[test]
fn a_corrupt_complete_checksum_is_never_delivered_as_valid() {
    let mut lab = Lab::new(vec![]);
    let mut synack = partial_syn_ack((EP2, 2368), (EP1, 40000));
    l4::finish_partial_checksum(&mut synack);
    synack[20 + 16] ^= 0x08; // a bit flipped in the checksum: neither complete nor partial
    let mut data = synack.clone();
    data[20 + 14] ^= 0x01; // or in the data (the window) under a once-valid checksum
    data[20 + 16] ^= 0x08;
    for bad in [synack, data] {
        assert!(!l4::verify_checksum(&bad));
        assert_eq!(lab.vxlan(NODE2, &from_node2(&bad)), Action::ToPort(PortId(1)));
        assert_eq!(lab.offload, Offload::default(), "an ordinary frame: the pod verifies it");
        let ip = lab.out_ip();
        let whole: Vec<u8> = ip.header().iter().chain(ip.payload()).copied().collect();
        assert!(!l4::verify_checksum(&whole), "still wrong: the pod drops it");
    }
    // Through reverse NAT as well: the incremental update keeps a wrong sum wrong.
    let mut lab = Lab::new(vec![article::ghost()]);
    let sport = sport_for(&lab, EP1, (VIP, 2368), EP2);
    let syn = tcp(EP1_MAC, HOST_MAC, (EP1, sport), (VIP, 2368), true, &[]);
    assert!(matches!(lab.port(PortId(1), &syn), Action::ToVtep { .. }));
    let mut bad = partial_syn_ack((EP2, 2368), (EP1, sport));
    l4::finish_partial_checksum(&mut bad);
    bad[20 + 17] ^= 0x10;
    assert_eq!(lab.vxlan(NODE2, &from_node2(&bad)), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), lab.offload), (VIP, Offload::default()));
    let whole: Vec<u8> = ip.header().iter().chain(ip.payload()).copied().collect();
    assert!(!l4::verify_checksum(&whole));
}

/// NodePort: the client's SYN arrives partial from the host port (the node's kernel
/// forwards the client veth's CHECKSUM_PARTIAL skb), is DNATed + masqueraded and leaves
/// by VXLAN complete; the kernel peer's partial SYN-ACK is reverse-NATed and reaches the
/// host port complete. ClusterIP: a pod's partial SYN out, the peer's partial SYN-ACK in,
/// reverse-DNATed to the VIP, to the pod as NEEDS_CSUM that finishes valid.
#[test]
fn partial_checksums_through_dnat_masquerade_and_back() {
    let mut lab = Lab::new(vec![article::ghost()]);
    let sport = sport_for(&lab, CLIENT, (NODE1, 31266), EP2);
    let mut syn = tcp(article::node1().host_port_mac, HOST_MAC, (CLIENT, sport), (NODE1, 31266), true, &[]);
    make_partial(&mut syn[14..]);
    lab.offload_in = Offload { csum_partial: true, gso_size: 0, frag_size: 0 };
    assert!(matches!(lab.port(PortId::HOST, &syn), Action::ToVtep { remote: NODE2, .. }));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip)), (VTEP1, EP2, (sport, 2368)));
    assert_checksums(&ip);
    assert_eq!(lab.offload, Offload::default());

    let synack = partial_syn_ack((EP2, 2368), (VTEP1, sport));
    assert_eq!(lab.vxlan(NODE2, &from_node2(&synack)), Action::ToPort(PortId::HOST));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip)), (NODE1, CLIENT, (31266, sport)));
    assert_checksums(&ip);
    assert_eq!(lab.offload, Offload::default(), "finished for the host port");

    let sport = sport_for(&lab, EP1, (VIP, 2368), EP2);
    let mut syn = tcp(EP1_MAC, HOST_MAC, (EP1, sport), (VIP, 2368), true, &[]);
    make_partial(&mut syn[14..]);
    lab.offload_in = Offload { csum_partial: true, gso_size: 0, frag_size: 0 };
    assert!(matches!(lab.port(PortId(1), &syn), Action::ToVtep { .. }));
    assert_checksums(&lab.out_ip());
    let synack = partial_syn_ack((EP2, 2368), (EP1, sport));
    assert_eq!(lab.vxlan(NODE2, &from_node2(&synack)), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip)), (VIP, EP1, (2368, sport)));
    assert_eq!(lab.offload, Offload { csum_partial: true, gso_size: 0, frag_size: 0 });
    assert_finishes(&lab);
    // UDP the same way: a partial answer from the endpoint, reverse-DNATed.
    let mut dns = article::ghost();
    dns.protocol = crate::core::nat::service::Protocol::Udp;
    let mut lab = Lab::new(vec![dns]);
    let t = lab.dp.tables();
    let sport = (40000..41000u16)
        .find(|p| {
            let u = Tuple { proto: PROTO_UDP, src: EP1, dst: VIP, sport: *p, dport: 2368 };
            *article::ghost().endpoints[pick(u.hash(t.hash_seed), 2)].ip() == EP2
        })
        .unwrap();
    let q = udp(EP1_MAC, (EP1, sport), (VIP, 2368), b"query");
    assert!(matches!(lab.port(PortId(1), &q), Action::ToVtep { .. }));
    let mut a = udp(MacAddr::ZERO, (EP2, 2368), (EP1, sport), b"answer")[14..].to_vec();
    make_partial(&mut a);
    assert_eq!(lab.vxlan(NODE2, &from_node2(&a)), Action::ToPort(PortId(1)));
    let ip = lab.out_ip();
    assert_eq!((ip.src(), l4_ports(&ip)), (VIP, (2368, sport)));
    assert!(lab.offload.csum_partial);
    assert_finishes(&lab);
}

#[path = "dataplane_frag_tests.rs"]
mod frag;
