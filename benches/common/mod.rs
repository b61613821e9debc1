//! Shared fixtures for the core benches: the article's lab (centos7-1 with ghost-ep1
//! and ghost-ep3, peer centos7-2, the `default/ghost` service), frames built with
//! etherparse the way `src/core/dataplane_tests.rs` builds them, established flows,
//! synthetic conntrack populations and filler services.
//!
//! Everything here runs outside the timed loops.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use etherparse::PacketBuilder;
use ucanal::core::nat::conntrack::{Conntrack, Insert, NAT_DNAT, NAT_SNAT, NewFlow, PortChoice, TcpState, Timeouts};
use ucanal::core::nat::service::{Protocol, ServiceSpec, ServiceTable};
use ucanal::core::nat::{Tuple, uniform_index};
use ucanal::core::tables::{Tables, article};
use ucanal::core::trace::Trace;
use ucanal::core::{Action, Counter, Dataplane, HEADROOM, Now, Packet, PortId};
use ucanal::wire::ipv4::{Ipv4Packet, PROTO_TCP};
use ucanal::wire::l4::{self, End, TCP_ACK, TCP_SYN};
use ucanal::wire::{MacAddr, arp, checksum, ethernet};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 16, 240, 1);
pub const NODE1: Ipv4Addr = Ipv4Addr::new(172, 16, 240, 131);
pub const NODE2: Ipv4Addr = Ipv4Addr::new(172, 16, 240, 132);
pub const EP1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
pub const EP2: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 74);
pub const EP3: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);
pub const VTEP1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const NODE_PORT: u16 = 31266;
pub const TARGET_PORT: u16 = 2368;
pub const HOST_MAC: MacAddr = MacAddr::CALICO_HOST;
/// 1000 s after the shell's epoch; every flow in the benches is live at this time.
pub const NOW: Now = Now(1_000_000_000_000);
/// Room behind the frame in every bench buffer.
pub const TAILROOM: usize = 64;

/// `cargo test --benches` and `cargo bench -- --test` run each bench once (criterion's
/// test mode); the same rule criterion applies to its own arguments.
pub fn test_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let test = args.iter().any(|a| a == "--test");
    !bench || test
}

/// Table sizes: the real ones, except in an unoptimised test-mode build (`cargo test
/// --benches`), where only the assertions matter and sizes above 1 000 are divided by 50
/// (1M -> 20 000) to keep that run to seconds. The bench ids carry the size actually used.
pub fn size(real: usize) -> usize {
    if cfg!(debug_assertions) && test_mode() && real > 1_000 { real / 50 } else { real }
}

pub fn host_port_mac() -> MacAddr {
    article::node1().host_port_mac
}

/// The article's node tables with the given services.
pub fn tables(services: Vec<ServiceSpec>) -> Tables {
    let mut t = article::tables1(services);
    t.vxlan_source_ports = vec![40001, 40002, 40003];
    t
}

pub fn dataplane(services: Vec<ServiceSpec>, ct_max: usize, workers: usize) -> Dataplane {
    Dataplane::new(tables(services), Conntrack::new(ct_max, Timeouts::default()), workers)
}

// ---------------------------------------------------------------------------------
// Frames

fn set_df(ip: &mut [u8]) {
    ip[6] |= 0x40;
    Ipv4Packet::new_checked(ip).unwrap().fill_checksum();
}

/// ARP who-has `target` from a pod, broadcast (what a pod sends for its gateway).
pub fn arp_request(src_mac: MacAddr, src: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; ethernet::HEADER_LEN + arp::PACKET_LEN];
    ethernet::emit_header(&mut f, MacAddr::BROADCAST, src_mac, ethernet::ETHERTYPE_ARP);
    arp::emit(&mut f[ethernet::HEADER_LEN..], arp::OP_REQUEST, src_mac, src, MacAddr::ZERO, target);
    f
}

/// ICMP echo request with 16 bytes of data and DF, as `ping` sends it.
pub fn ping(src_mac: MacAddr, src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac.0, HOST_MAC.0)
        .ipv4(src.octets(), dst.octets(), ttl)
        .icmpv4_echo_request(0x4242, 1);
    let mut v = Vec::new();
    b.write(&mut v, b"0123456789abcdef").unwrap();
    set_df(&mut v[14..]);
    v
}

/// A TCP segment (SYN, or ACK without data) in an Ethernet frame, DF set.
pub fn tcp(src_mac: MacAddr, dst_mac: MacAddr, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac.0, dst_mac.0)
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .tcp(src.1, dst.1, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(2000) };
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    set_df(&mut v[14..]);
    v
}

/// A bare IPv4/TCP packet (the inner packet of a VXLAN datagram).
pub fn tcp_ip(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), syn: bool, ack: bool) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src.0.octets(), dst.0.octets(), 63).tcp(src.1, dst.1, 5000, 64240);
    let b = match (syn, ack) {
        (true, true) => b.syn().ack(1001),
        (true, false) => b.syn(),
        _ => b.ack(1001),
    };
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

/// A VXLAN datagram (header + inner frame) as the kernel's flannel.1 on centos7-2 sends it.
pub fn from_node2(inner_ip: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    v.extend_from_slice(&article::node1().vtep_mac.0);
    v.extend_from_slice(&article::peer2().vtep_mac.0);
    v.extend_from_slice(&[0x08, 0x00]);
    v.extend_from_slice(inner_ip);
    v
}

/// Segments of a bulk transfer 10.244.0.74:2368 -> 10.244.1.5:40000 as centos7-2's
/// flannel.1 sends them (VXLAN datagrams, DF, ACK, 1398-byte payloads in sequence): what
/// one UDP GRO read hands over. `partial`: the checksum field holds the pseudo-header
/// sum (a kernel peer's veth), else a complete checksum.
pub fn bulk_segments(n: usize, partial: bool) -> Vec<Vec<u8>> {
    (0..n as u32)
        .map(|i| {
            let payload: Vec<u8> = (0..1398u32).map(|j| (j * 7 + i) as u8).collect();
            let mut ip = Vec::new();
            PacketBuilder::ipv4(EP2.octets(), EP1.octets(), 63)
                .tcp(TARGET_PORT, 40000, 5000 + i * 1398, 64240)
                .ack(1001)
                .write(&mut ip, &payload)
                .unwrap();
            ip[4..6].copy_from_slice(&(i as u16).to_be_bytes());
            set_df(&mut ip);
            if partial {
                let ps = checksum::fold(checksum::pseudo_header_sum(EP2.octets(), EP1.octets(), 6, 20 + 1398));
                ip[36..38].copy_from_slice(&ps.to_be_bytes());
            }
            from_node2(&ip)
        })
        .collect()
}

/// The client's ACK of an established NodePort flow, arriving on the host port.
pub fn nodeport_ack(client: Ipv4Addr, sport: u16) -> Vec<u8> {
    tcp(host_port_mac(), HOST_MAC, (client, sport), (NODE1, NODE_PORT), false)
}

/// Rewrites the source address and port of the frame in `buf` (checksums fixed
/// incrementally, as the core does): a new flow per iteration without a new template.
#[inline]
pub fn set_source(frame: &mut [u8], src: Ipv4Addr, sport: u16) {
    l4::rewrite(&mut frame[ethernet::HEADER_LEN..], End::Src, src, sport, false);
}

// ---------------------------------------------------------------------------------
// Running frames

/// A buffer with headroom for one frame: the bench loops copy the pristine frame in
/// (the core rewrites it in place) and hand it to the core.
pub struct Buf {
    pub buf: Vec<u8>,
}

impl Buf {
    pub fn for_frame(frame: &[u8]) -> Buf {
        Buf { buf: vec![0u8; HEADROOM + frame.len() + TAILROOM] }
    }
    /// Copies the frame in and returns the packet over it.
    #[inline]
    pub fn load(&mut self, frame: &[u8]) -> Packet<'_> {
        let n = frame.len();
        self.buf[HEADROOM..HEADROOM + n].copy_from_slice(frame);
        Packet::new(&mut self.buf, HEADROOM, HEADROOM + n)
    }
}

/// Runs one frame through a port, untimed, and returns the action and the output bytes.
pub fn run_port(dp: &Dataplane, port: PortId, frame: &[u8]) -> (Action, Vec<u8>) {
    let t = dp.tables();
    let mut b = Buf::for_frame(frame);
    let mut p = b.load(frame);
    let a = dp.handle_port(0, &t, port, &mut p, NOW, &mut Trace::off());
    let out = p.data().to_vec();
    (a, out)
}

pub fn run_vxlan(dp: &Dataplane, from: Ipv4Addr, dgram: &[u8]) -> (Action, Vec<u8>) {
    let t = dp.tables();
    let mut b = Buf::for_frame(dgram);
    let mut p = b.load(dgram);
    let a = dp.handle_vxlan(0, &t, SocketAddrV4::new(from, 45000), &mut p, NOW, &mut Trace::off());
    let out = p.data().to_vec();
    (a, out)
}

// ---------------------------------------------------------------------------------
// Checks on output frames (outside the timed loops)

/// The inner IPv4 packet of an output frame: after the VXLAN header and inner Ethernet
/// header when `vxlan`, else after the Ethernet header.
pub fn out_ip(out: &[u8], vxlan: bool) -> Ipv4Packet<&[u8]> {
    let at = if vxlan { 8 + ethernet::HEADER_LEN } else { ethernet::HEADER_LEN };
    Ipv4Packet::new_checked(&out[at..]).unwrap()
}

pub fn l4_ports(ip: &Ipv4Packet<&[u8]>) -> (u16, u16) {
    let p = ip.payload();
    (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]))
}

/// IPv4 header checksum and L4 checksum both valid.
pub fn assert_checksums(ip: &Ipv4Packet<&[u8]>) {
    assert!(ip.verify_checksum(), "ipv4 header checksum");
    let whole: Vec<u8> = ip.header().iter().chain(ip.payload()).copied().collect();
    if matches!(ip.protocol(), 6 | 17) {
        assert!(l4::verify_checksum(&whole), "l4 checksum");
    }
}

/// Asserts `out` is a VXLAN datagram (VNI 1) to centos7-2 carrying a TCP packet
/// `src -> dst` with valid checksums.
pub fn assert_encapped_tcp(a: Action, out: &[u8], src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) {
    assert!(matches!(a, Action::ToVtep { remote, .. } if remote == NODE2), "{a:?}");
    assert_eq!(&out[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0], "VXLAN header, VNI 1");
    assert_eq!(&out[8..14], &article::peer2().vtep_mac.0, "inner dst = remote VTEP MAC");
    let ip = out_ip(out, true);
    assert_eq!((ip.src(), ip.dst()), (src.0, dst.0), "NATed addresses");
    assert_eq!(l4_ports(&ip), (src.1, dst.1), "NATed ports");
    assert_checksums(&ip);
}

// ---------------------------------------------------------------------------------
// Flows

/// Source ports from `src` to `dst` whose flows hash to endpoint `want` of default/ghost
/// (as `sport_for()` in the core's tests), in increasing order from `from`.
pub fn sports_for(
    t: &Tables,
    src: Ipv4Addr,
    dst: (Ipv4Addr, u16),
    want: Ipv4Addr,
    from: u16,
) -> impl Iterator<Item = u16> {
    let eps = article::ghost().endpoints;
    let seed = t.hash_seed;
    (from..=u16::MAX).filter(move |p| {
        let u = Tuple { proto: PROTO_TCP, src, dst: dst.0, sport: *p, dport: dst.1 };
        *eps[uniform_index(u.hash(seed), eps.len())].ip() == want
    })
}

/// Opens a NodePort flow client:sport -> node1:31266 whose endpoint is the remote
/// 10.244.0.74, the way the article's curl does: SYN from the host port, SYN-ACK back
/// over VXLAN from centos7-2, ACK. Checks it ends ESTABLISHED and that the SYN was DNATed,
/// masqueraded to flannel.1's address and encapsulated.
pub fn establish_nodeport(dp: &Dataplane, client: Ipv4Addr, sport: u16) {
    let (a, out) =
        run_port(dp, PortId::HOST, &tcp(host_port_mac(), HOST_MAC, (client, sport), (NODE1, NODE_PORT), true));
    assert_encapped_tcp(a, &out, (VTEP1, sport), (EP2, TARGET_PORT));
    let synack = from_node2(&tcp_ip((EP2, TARGET_PORT), (VTEP1, sport), true, true));
    let (a, out) = run_vxlan(dp, NODE2, &synack);
    assert_eq!(a, Action::ToPort(PortId::HOST), "SYN-ACK reverse-NATed to the host port");
    let ip = out_ip(&out, false);
    assert_eq!((ip.src(), ip.dst(), l4_ports(&ip)), (NODE1, client, (NODE_PORT, sport)));
    let (a, out) = run_port(dp, PortId::HOST, &nodeport_ack(client, sport));
    assert_encapped_tcp(a, &out, (VTEP1, sport), (EP2, TARGET_PORT));
    let e = dp
        .conntrack
        .entries(NOW)
        .into_iter()
        .find(|e| e.original.src == client && e.original.sport == sport)
        .expect("flow in conntrack");
    assert_eq!(e.tcp_state(), TcpState::Established);
}

/// A synthetic population of established NodePort flows, as the dataplane would hold
/// them after `n` curls from many clients: flow `i` is client `100.64.c.c:sport` ->
/// 172.16.240.131:31266, DNATed to the remote endpoint `10.244.0.(10+c):2368` and
/// masqueraded to 10.244.1.0:sport, where `c = i / 50000` and `sport = 10000 + i % 50000`
/// (so every reply tuple is distinct and no port has to be remapped).
#[derive(Clone, Copy)]
pub struct Population;

impl Population {
    pub const PER_CLIENT: usize = 50_000;

    #[inline]
    pub fn client(i: usize) -> (Ipv4Addr, u16) {
        let c = (i / Self::PER_CLIENT) as u32;
        (Ipv4Addr::from(0x6440_0000 + c), 10_000 + (i % Self::PER_CLIENT) as u16)
    }
    #[inline]
    pub fn original(i: usize) -> Tuple {
        let (src, sport) = Self::client(i);
        Tuple { proto: PROTO_TCP, src, dst: NODE1, sport, dport: NODE_PORT }
    }
    pub fn endpoint(i: usize) -> Ipv4Addr {
        let c = (i / Self::PER_CLIENT) as u8;
        assert!(c < 60, "population too large for the endpoint scheme");
        Ipv4Addr::new(10, 244, 0, 10 + c)
    }
    /// Inserts flows `0..n`, ESTABLISHED (an ACK starts a flow in ESTABLISHED, as the
    /// kernel's loose pickup does).
    pub fn fill(ct: &Conntrack, n: usize) {
        Self::fill_range(ct, 0..n);
    }
    pub fn fill_range(ct: &Conntrack, range: std::ops::Range<usize>) {
        for i in range {
            let u = Self::original(i);
            let ports = PortChoice { keep: u.sport, lo: 1024, hi: u16::MAX };
            let flow = NewFlow {
                original: u,
                tcp_flags: TCP_ACK,
                reply_src: (Self::endpoint(i), TARGET_PORT),
                reply_dst: VTEP1,
                nat: NAT_DNAT | NAT_SNAT,
                ports,
            };
            match ct.insert(flow, NOW) {
                Insert::New { remapped: false, .. } => {}
                other => panic!("prefill flow {i}: {other:?}"),
            }
        }
    }
}

/// A cheap xorshift64* generator for the index streams of the `spread` benches.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    /// Uniform in `0..n` (Lemire's multiply-shift on the high 32 bits).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        uniform_index((x >> 32) as u32, n)
    }
}

/// Number of distinct keys the `hot` variants cycle through.
pub const HOT: usize = 16;

// ---------------------------------------------------------------------------------
// Services

/// Filler service `i`: a TCP ClusterIP service on 10.250.x.y:(80 + i/65536), one endpoint,
/// no NodePort; never the ghost's 10.250.0.40:2368.
pub fn filler(i: usize) -> ServiceSpec {
    let (ip, port) = filler_key(i);
    ServiceSpec {
        name: format!("bench/svc-{i}"),
        protocol: Protocol::Tcp,
        cluster_ip: ip,
        port,
        node_port: None,
        endpoints: vec![SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 10 + (i % 200) as u8), 8080)],
    }
}

#[inline]
pub fn filler_key(i: usize) -> (Ipv4Addr, u16) {
    (Ipv4Addr::from(0x0afa_0000 + (i as u32 & 0xffff)), 80 + (i >> 16) as u16)
}

pub fn filler_table(n: usize) -> ServiceTable {
    ServiceTable::build((0..n).map(filler), |_, _| Arc::default())
}

/// The ghost service plus `n - 1` fillers.
pub fn ghost_and_fillers(n: usize) -> Vec<ServiceSpec> {
    std::iter::once(article::ghost()).chain((0..n.saturating_sub(1)).map(filler)).collect()
}

/// Number of new flows the new-flow benches put into one conntrack table before they
/// start a fresh one (untimed): the table grows from 0 to this many flows during each
/// chunk of a sample.
pub const NEW_FLOW_CHUNK: usize = 16_384;

/// Runs `iters` new NodePort flows (SYN from 172.16.240.1:sport, every one to the remote
/// endpoint) through `dp` and returns the time spent in the core, frame copy and source
/// rewrite included (see `baseline/copy_frame_new_sport`). A fresh conntrack is
/// installed, untimed, every `NEW_FLOW_CHUNK` flows so the source ports never repeat
/// within a table and the table never fills; within a chunk the table grows.
pub fn run_new_flows(dp: &mut Dataplane, t: &Tables, sports: &[u16], iters: u64) -> std::time::Duration {
    assert!(sports.len() >= NEW_FLOW_CHUNK);
    let syn = tcp(host_port_mac(), HOST_MAC, (CLIENT, sports[0]), (NODE1, NODE_PORT), true);
    let mut b = Buf::for_frame(&syn);
    let mut tr = Trace::off();
    let mut total = std::time::Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(NEW_FLOW_CHUNK);
        dp.conntrack = Conntrack::new(2 * NEW_FLOW_CHUNK, Timeouts::default());
        let new_before = dp.counters.get(Counter::CtNew);
        let vtep_before = dp.counters.get(Counter::ForwardVxlan);
        let start = std::time::Instant::now();
        for &sport in &sports[..n] {
            let mut p = b.load(black_box(&syn));
            set_source(p.data_mut(), CLIENT, sport);
            let a = dp.handle_port(0, t, PortId::HOST, &mut p, NOW, &mut tr);
            let _ = black_box((a, p.data()));
        }
        total += start.elapsed();
        // Every iteration was a new flow, DNATed and encapsulated (no drop, no join).
        assert_eq!(dp.counters.get(Counter::CtNew) - new_before, n as u64, "every iteration a new flow");
        assert_eq!(dp.counters.get(Counter::ForwardVxlan) - vtep_before, n as u64, "every new flow encapsulated");
        assert_eq!(dp.conntrack.len(), n);
        left -= n;
    }
    total
}

/// Checks one new-flow iteration does what the bench says: a SYN to the NodePort
/// becomes DNAT to 10.244.0.74:2368 + masquerade to 10.244.1.0 + VXLAN to centos7-2.
pub fn assert_new_flow(dp: &Dataplane, sport: u16) {
    let (a, out) =
        run_port(dp, PortId::HOST, &tcp(host_port_mac(), HOST_MAC, (CLIENT, sport), (NODE1, NODE_PORT), true));
    assert_encapped_tcp(a, &out, (VTEP1, sport), (EP2, TARGET_PORT));
    assert_eq!(out_ip(&out, true).payload()[13] & TCP_SYN, TCP_SYN);
}
