//! The receive half with real bytes and real fds (a Unix datagram pair stands for the
//! pod's TAP; nothing is sent on a network: the VXLAN sends are inspected while pending).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::net::UnixDatagram;

use super::*;
use crate::core::nat::conntrack::{Conntrack, Timeouts};
use crate::core::tables::article;
use crate::core::{Counter, Now};
use crate::wire::checksum;
use crate::wire::icmp;
use crate::wire::ipv4::{Ipv4Packet, PROTO_TCP};
use crate::wire::l4;
use etherparse::PacketBuilder;

const NODE2: Ipv4Addr = Ipv4Addr::new(172, 16, 240, 132);
const EP1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const EP2: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 74);
const NOW: Now = Now(1_000_000_000_000);

/// A worker on the article's node 1 with pod ep1's TAP replaced by `tap`.
fn worker(tap: UnixDatagram) -> Worker {
    let t = article::tables1(vec![]);
    let dp = Arc::new(Dataplane::new(t, Conntrack::new(1024, Timeouts::default()), 1));
    let loopback = || UdpSocket::bind("127.0.0.1:0").unwrap();
    let shell = Shell {
        epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap(),
        wake: Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap()),
        ctl: mpsc::channel().1,
        rx: loopback(),
    };
    let cfg = WorkerConfig {
        batch: 4,
        udp_gso: true,
        gro: true,
        busy_poll_us: 0,
        sg_gso: true,
        zerocopy: false,
        relay: false,
        vxlan_port: 8472,
        host_mtu: 1450,
    };
    let tx = TxPool { sockets: Arc::new(vec![loopback()]), zc: None };
    let stats = Arc::new(PortStats::new(1));
    let mut w = Worker::new(shell, 0, dp, tx, Arc::new(Observers::new("node1".into())), stats, cfg);
    w.out.ports = vec![None, Some(OwnedFd::from(tap))];
    w
}

/// A VXLAN datagram from node 2's flannel.1 around an inner IPv4 packet.
fn vxlan(inner: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    v.extend_from_slice(&article::node1().vtep_mac.0);
    v.extend_from_slice(&article::peer2().vtep_mac.0);
    v.extend_from_slice(&[0x08, 0x00]);
    v.extend_from_slice(inner);
    v
}

/// ep2 -> ep1 TCP ACK with `n` bytes of payload (a GRO candidate), DF, TTL 63.
fn tcp_segment(n: usize) -> Vec<u8> {
    let b = PacketBuilder::ipv4(EP2.octets(), EP1.octets(), 63).tcp(5000, 80, 1_000, 64240).ack(77);
    let mut v = Vec::new();
    let payload: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
    b.write(&mut v, &payload).unwrap();
    v[6] |= 0x40;
    Ipv4Packet::new_checked(&mut v[..]).unwrap().fill_checksum();
    v
}

/// ep2 -> ep1 UDP with TTL 1 (ucanal answers time exceeded), `n` bytes of payload.
fn udp_ttl1(n: usize, sport: u16) -> Vec<u8> {
    let b = PacketBuilder::ipv4(EP2.octets(), EP1.octets(), 1).udp(sport, 7000);
    let mut v = Vec::new();
    b.write(&mut v, &vec![0x5a; n]).unwrap();
    v
}

/// The datagrams left pending for `flush`, as bytes (all of them single buffers here).
fn pending(w: &Worker) -> Vec<Vec<u8>> {
    w.out
        .pending
        .iter()
        .map(|p| match tx::parts(&w.bufs, &w.out.seg, p) {
            sys::Parts::One(d) => d.to_vec(),
            sys::Parts::Interleaved { .. } => panic!("a scatter-gather send for an ICMP error"),
        })
        .collect()
}

/// An ICMP time exceeded to ep2 from node 1's VTEP quoting `quoted` (as it arrived).
fn assert_time_exceeded(dgram: &[u8], quoted: &[u8]) {
    assert_eq!(&dgram[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0], "VXLAN header");
    let ip = Ipv4Packet::new_checked(&dgram[8 + 14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!((ip.src(), ip.dst()), (Ipv4Addr::new(10, 244, 1, 0), EP2));
    assert_eq!(icmp::type_code(&dgram[8 + 14..]), Some((11, 0)));
    assert_eq!(checksum::fold(checksum::sum(ip.payload(), 0)), 0xffff, "ICMP checksum");
    assert_eq!(&ip.payload()[8..], quoted, "the quote is the offending packet, byte for byte");
}

#[test]
fn replies_built_for_a_later_gro_frame_leave_earlier_frames_intact() {
    // One UDP GRO read of three VXLAN frames back to back (the kernel coalesces equal
    // sizes, the last may be shorter): a TCP segment that GRO holds by reference until
    // the end of the batch, then two UDP datagrams with TTL 1 that ucanal answers with
    // time exceeded, each built in front of its own frame.
    let (tap, pod) = UnixDatagram::pair().unwrap();
    pod.set_nonblocking(true).unwrap();
    let mut w = worker(tap);
    let a = vxlan(&tcp_segment(150));
    let b_inner = udp_ttl1(a.len() - 8 - 14 - 28, 6000);
    let b = vxlan(&b_inner);
    assert_eq!(b.len(), a.len());
    let c_inner = udp_ttl1(100, 6001);
    let c = vxlan(&c_inner);
    let all = [&a[..], &b[..], &c[..]].concat();
    w.bufs[0][HEADROOM..HEADROOM + all.len()].copy_from_slice(&all);
    w.received = vec![Received { len: all.len(), from: SocketAddrV4::new(NODE2, 8472), gro_size: a.len() as u16 }];

    let t = w.out.dp.tables();
    w.handle_received(&t, NOW);
    assert_eq!(w.out.dp.counters.get(Counter::IcmpTimeExceededSent), 2);

    // The segment reached the pod whole: TTL one lower, every checksum right, the
    // payload as sent.
    let mut got = vec![0u8; 4096];
    let n = pod.recv(&mut got).unwrap();
    let frame = &got[vnet::HEADER_LEN..n];
    assert_eq!(frame.len(), a.len() - 8);
    let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
    assert!(ip.verify_checksum(), "IPv4 header checksum of the segment");
    assert_eq!((ip.protocol(), ip.ttl()), (PROTO_TCP, 62));
    let whole: Vec<u8> = ip.header().iter().chain(ip.payload()).copied().collect();
    assert!(l4::verify_checksum(&whole), "TCP checksum of the segment");
    assert_eq!(&frame[14 + 20..], &a[8 + 14 + 20..], "TCP header and payload untouched");
    assert!(pod.recv(&mut got).is_err(), "one frame toward the pod");

    // Both errors wait for the end-of-batch send, each one whole.
    let sends = pending(&w);
    assert_eq!(sends.len(), 2);
    assert_time_exceeded(&sends[0], &b_inner);
    assert_time_exceeded(&sends[1], &c_inner);
    w.out.pending.clear();
}

/// A worker on node 1 whose service `default/ghost` has ghost-ep2 as its only endpoint,
/// with the host port's queue replaced by `host`.
fn worker_with_host_port(host: UnixDatagram) -> Worker {
    let mut w = worker(UnixDatagram::pair().unwrap().0);
    let mut ghost = article::ghost();
    ghost.endpoints.retain(|e| *e.ip() == EP2);
    w.out.dp.publish(article::tables1(vec![ghost]));
    w.out.ports[0] = Some(OwnedFd::from(host));
    w
}

/// The host port's side: every frame written to it, as (virtio-net header, frame).
fn written(host: &UnixDatagram) -> Vec<([u8; vnet::HEADER_LEN], Vec<u8>)> {
    let mut got = vec![0u8; 70_000];
    let mut out = Vec::new();
    while let Ok(n) = host.recv(&mut got) {
        out.push((got[..vnet::HEADER_LEN].try_into().unwrap(), got[vnet::HEADER_LEN..n].to_vec()));
    }
    out
}

/// `dgrams` from centos7-2, one receive batch (one datagram per slot).
fn receive(w: &mut Worker, dgrams: &[&[u8]]) {
    w.received.clear();
    for (slot, d) in dgrams.iter().enumerate() {
        w.bufs[slot][HEADROOM..HEADROOM + d.len()].copy_from_slice(d);
        w.received.push(Received { len: d.len(), from: SocketAddrV4::new(NODE2, 8472), gro_size: 0 });
    }
    let t = w.out.dp.tables();
    w.handle_received(&t, NOW);
}

/// A frame the node's stack forwards into `ucanal0`, through the core as the TAP read does.
fn from_host(w: &Worker, frame: &[u8]) -> Action {
    let mut buf = vec![0u8; HEADROOM + frame.len()];
    buf[HEADROOM..].copy_from_slice(frame);
    let mut pkt = Packet::new(&mut buf, HEADROOM, HEADROOM + frame.len());
    let t = w.out.dp.tables();
    w.out.dp.handle_port(0, &t, PortId::HOST, &mut pkt, NOW, &mut crate::core::trace::Trace::off())
}

#[test]
fn a_kernel_peers_super_packet_is_written_to_the_host_port_with_a_gso_header() {
    use crate::core::captured::nodeport_tso as cap;
    let (host, node) = UnixDatagram::pair().unwrap();
    node.set_nonblocking(true).unwrap();
    let mut w = worker_with_host_port(host);
    // The captured download: handshake and request, then two reply datagrams in one batch,
    // a segment and the super-packet after it.
    assert!(matches!(from_host(&w, cap::SYN), Action::ToVtep { .. }));
    receive(&mut w, &[cap::SYN_ACK]);
    assert!(matches!(from_host(&w, cap::ACK), Action::ToVtep { .. }));
    assert!(matches!(from_host(&w, cap::GET), Action::ToVtep { .. }));
    assert_eq!(written(&node).len(), 1, "the SYN-ACK");
    receive(&mut w, &[cap::SEGMENT, cap::TSO]);

    let frames = written(&node);
    assert_eq!(frames.len(), 2, "the segment, then the super-packet: in order, neither merged nor held");
    let (seg_hdr, seg) = &frames[0];
    assert_eq!(*seg_hdr, [0; 10], "a finished single frame");
    assert_eq!(seg.len(), 14 + 1450);
    assert_eq!(&seg[14 + 20 + 4..14 + 20 + 8], &cap::SEGMENT[22 + 20 + 4..22 + 20 + 8], "seq 3002 first");
    // NEEDS_CSUM; GSO TCPv4; 66 bytes of headers (Ethernet, IPv4, TCP with timestamps);
    // MSS 1398 (0x0576, the VXLAN MTU's); checksum at 34 + 16. Little-endian.
    let (tso_hdr, tso) = &frames[1];
    assert_eq!(*tso_hdr, [0x01, 0x01, 66, 0, 0x76, 0x05, 34, 0, 16, 0]);
    assert_eq!(tso.len(), 14 + 2848);
    assert_eq!(&tso[14 + 52..], &cap::TSO[cap::VXLAN_PAYLOAD_AT..], "the payload, whole");
    assert_eq!(w.out.dp.counters.get(Counter::HostOversize), 0);
    assert_eq!(w.out.dp.counters.get(Counter::PeerTso), 1);

    // The same frame written without its GSO metadata is what the node cannot forward:
    // counted.
    w.out.write_to_port(PortId::HOST, tso, &Offload::default());
    assert_eq!(w.out.dp.counters.get(Counter::HostOversize), 1);
    assert_eq!(written(&node)[0].0, [0; 10]);
}

#[test]
fn a_gso_frame_with_cwr_says_ecn() {
    use crate::core::captured::nodeport_tso as cap;
    let mut frame = cap::TSO[8..].to_vec();
    let gso = Offload { csum_partial: true, gso_size: 1398, frag_size: 0 };
    let mut hdr = [0u8; 10];
    tx::vnet_for(&gso, &frame).emit(&mut hdr);
    assert_eq!(hdr, [0x01, 0x01, 66, 0, 0x76, 0x05, 34, 0, 16, 0]);
    frame[14 + 20 + 13] |= crate::wire::tcp::CWR;
    tx::vnet_for(&gso, &frame).emit(&mut hdr);
    assert_eq!(hdr[1], vnet::GSO_TCPV4 | vnet::GSO_ECN);
    // A single frame keeps only its checksum state.
    tx::vnet_for(&Offload { csum_partial: true, ..Offload::default() }, &frame).emit(&mut hdr);
    assert_eq!(hdr, [0x01, 0, 0, 0, 0, 0, 34, 0, 16, 0]);
}
