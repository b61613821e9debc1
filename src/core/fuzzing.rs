//! A harness that drives every packet entry point of the core with arbitrary bytes,
//! shared by the cargo-fuzz targets (`fuzz/`) and the property tests that run in CI.
//!
//! The first input byte picks the entry point (a pod port, another pod's port, the
//! host port, VXLAN from the known peer, VXLAN from a stranger) and, with its top bit,
//! `vxlan_accept = peers` instead of the default `any`; the rest is the frame.
//! The tables hold the article's lab with its NodePort service, a UDP service and a
//! service without endpoints, and conntrack holds established flows, so the reply,
//! NAT and reject paths are reachable too. Besides "never panics", the oracle checks
//! that whatever ucanal emits is well formed: an Ethernet frame (or VXLAN datagram)
//! within the buffer, and for IPv4 a header that parses with a valid checksum. With bit
//! 0x20 of the first byte a VXLAN datagram sits behind 64 bytes of another one, as a
//! later frame of a UDP GRO read, and the oracle checks that those bytes stay untouched.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use super::nat::conntrack::{Conntrack, Timeouts};
use super::nat::service::{Protocol, ServiceSpec, ServiceTable};
use super::tables::{Tables, article};
use super::trace::Trace;
use super::{Action, Dataplane, HEADROOM, Now, Packet, PortId};
use crate::wire::ethernet::{self, ETHERTYPE_IPV4, EthernetFrame};
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::vxlan;

/// Bytes of "the frame before" in front of an input selected with bit 0x20.
const BEHIND: usize = 64;

pub struct Harness {
    dp: Dataplane,
    t: Arc<Tables>,
    /// The same tables with `vxlan_accept = peers`.
    strict: Arc<Tables>,
    now: std::sync::atomic::AtomicU64,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Harness {
        let mut dns = article::ghost();
        dns.name = "kube-system/kube-dns".into();
        dns.protocol = Protocol::Udp;
        dns.cluster_ip = Ipv4Addr::new(10, 250, 0, 10);
        dns.port = 53;
        dns.node_port = Some(30053);
        let empty = ServiceSpec {
            name: "default/empty".into(),
            protocol: Protocol::Tcp,
            cluster_ip: Ipv4Addr::new(10, 250, 0, 99),
            port: 80,
            node_port: Some(30080),
            endpoints: vec![],
        };
        let svc = ServiceTable::build([article::ghost(), dns, empty], |_, _| Arc::default());
        let mut t = Tables::build(1, article::node1(), 7, &article::pods1(), &[article::peer2()], svc);
        t.vxlan_source_ports = vec![40000, 40001];
        let dp = Dataplane::new(t, Conntrack::new(4096, Timeouts::default()), 1);
        let mut strict = (*dp.tables()).clone();
        strict.node.vxlan_accept = super::tables::VxlanAccept::Peers;
        let h = Harness {
            t: dp.tables(),
            strict: Arc::new(strict),
            dp,
            now: std::sync::atomic::AtomicU64::new(1_000_000_000_000),
        };
        h.warm_up();
        h
    }

    pub fn dp(&self) -> &Dataplane {
        &self.dp
    }
    pub fn tables(&self) -> &Tables {
        &self.t
    }

    /// Puts established flows in conntrack by running real first packets through.
    fn warm_up(&self) {
        let check = |a: Action| assert!(!matches!(a, Action::Drop(_)), "warm-up packet dropped: {a:?}");
        use etherparse::PacketBuilder;
        let n = &self.t.node;
        for sport in 40000..40016u16 {
            let mut f = Vec::new();
            PacketBuilder::ethernet2(n.host_port_mac.0, n.host_mac.0)
                .ipv4([172, 16, 240, 1], n.node_ip.octets(), 64)
                .tcp(sport, 31266, 1, 64240)
                .syn()
                .write(&mut f, &[])
                .unwrap();
            check(self.run_on(2, &f));
            let mut f = Vec::new();
            PacketBuilder::ethernet2(article::EP1_MAC.0, n.host_mac.0)
                .ipv4([10, 244, 1, 5], [10, 250, 0, 10], 64)
                .udp(sport, 53)
                .write(&mut f, b"q")
                .unwrap();
            check(self.run_on(0, &f));
        }
    }

    /// Feeds `data[0]`-selected entry point with `data[1..]`; returns the decision.
    pub fn run(&self, data: &[u8]) -> Option<Action> {
        let (sel, frame) = data.split_first()?;
        Some(self.run_on(*sel, frame))
    }

    fn run_on(&self, sel: u8, frame: &[u8]) -> Action {
        // With bit 0x20 of the selector a VXLAN datagram comes as a later frame of a UDP
        // GRO read: the bytes in front of it are the frame before, which the walk may never
        // write (its headroom is the VXLAN header it pulls, as in the worker).
        let behind = if sel & 0x20 != 0 && (sel & 0x7f) % 5 >= 3 { BEHIND } else { 0 };
        let start = HEADROOM + behind;
        let mut buf = vec![0u8; start + frame.len() + 16];
        buf[HEADROOM..start].fill(0xa5);
        buf[start..start + frame.len()].copy_from_slice(frame);
        // A spare buffer, so fragments reach the reassembler (and reassembled datagrams
        // the rest of the walk).
        let mut spare = vec![0u8; HEADROOM + ethernet::HEADER_LEN + 65_535];
        let floor = if behind > 0 { start } else { 0 };
        let mut pkt = Packet::new(&mut buf, start, start + frame.len()).with_floor(floor).with_spare(&mut spare);
        // Time moves on a little with every input, so expiry paths are reached as well.
        let now = Now(self.now.fetch_add(50_000_000, std::sync::atomic::Ordering::Relaxed));
        let mut tr = Trace::off();
        let t = if sel & 0x80 != 0 { &self.strict } else { &self.t };
        let a = match (sel & 0x7f) % 5 {
            0 => self.dp.handle_port(0, t, PortId(1), &mut pkt, now, &mut tr),
            1 => self.dp.handle_port(0, t, PortId(2), &mut pkt, now, &mut tr),
            2 => self.dp.handle_port(0, t, PortId::HOST, &mut pkt, now, &mut tr),
            3 => self.dp.handle_vxlan(
                0,
                t,
                SocketAddrV4::new(Ipv4Addr::new(172, 16, 240, 132), 40000),
                &mut pkt,
                now,
                &mut tr,
            ),
            _ => self.dp.handle_vxlan(
                0,
                t,
                SocketAddrV4::new(Ipv4Addr::new(172, 16, 240, 9), 40000),
                &mut pkt,
                now,
                &mut tr,
            ),
        };
        check_output(&a, pkt.data());
        assert!(buf[HEADROOM..start].iter().all(|b| *b == 0xa5), "the walk wrote below its floor: {a:?}");
        if sel % 64 == 63 {
            self.dp.conntrack.sweep(now);
        }
        a
    }
}

/// The oracle: an emitted frame is well formed.
fn check_output(a: &Action, out: &[u8]) {
    let frame = match a {
        Action::Drop(_) | Action::Held => return,
        Action::ToPort(_) => out,
        Action::ToVtep { .. } => {
            assert!(vxlan::parse(out).is_ok(), "emitted VXLAN header does not parse");
            &out[vxlan::HEADER_LEN..]
        }
    };
    let eth = EthernetFrame::new_checked(frame).expect("emitted frame shorter than Ethernet");
    if eth.ethertype() == ETHERTYPE_IPV4 {
        let ip = Ipv4Packet::new_checked(&frame[ethernet::HEADER_LEN..]).expect("emitted IPv4 does not parse");
        assert!(ip.verify_checksum(), "emitted IPv4 header checksum is wrong");
        assert_eq!(frame.len(), ethernet::HEADER_LEN + ip.total_len(), "emitted frame carries trailing bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn harness() -> &'static Harness {
        static H: std::sync::OnceLock<Harness> = std::sync::OnceLock::new();
        H.get_or_init(Harness::new)
    }

    /// Valid frames of every kind the lab carries, to mutate from.
    fn seeds() -> Vec<Vec<u8>> {
        use etherparse::PacketBuilder;
        let n = article::node1();
        let mut v = Vec::new();
        let mut f = Vec::new();
        PacketBuilder::ethernet2(article::EP1_MAC.0, n.host_mac.0)
            .ipv4([10, 244, 1, 5], [10, 244, 0, 74], 64)
            .tcp(1, 2, 3, 4)
            .syn()
            .write(&mut f, b"x")
            .unwrap();
        v.push([&[0u8][..], &f].concat());
        f.clear();
        PacketBuilder::ethernet2(n.host_port_mac.0, n.host_mac.0)
            .ipv4([172, 16, 240, 1], [172, 16, 240, 131], 64)
            .tcp(40003, 31266, 3, 4)
            .ack(5)
            .write(&mut f, b"GET /")
            .unwrap();
        v.push([&[2u8][..], &f].concat());
        f.clear();
        PacketBuilder::ethernet2(n.vtep_mac.0, n.vtep_mac.0)
            .ipv4([10, 244, 0, 74], [10, 244, 1, 0], 63)
            .tcp(2368, 40003, 3, 4)
            .ack(5)
            .write(&mut f, b"ok")
            .unwrap();
        f[..6].copy_from_slice(&n.vtep_mac.0);
        f[6..12].copy_from_slice(&article::peer2().vtep_mac.0);
        v.push([&[3u8, 0x08, 0, 0, 0, 0, 0, 1, 0][..], &f].concat());
        f.clear();
        PacketBuilder::ethernet2(article::EP1_MAC.0, n.host_mac.0)
            .ipv4([10, 244, 1, 5], [10, 250, 0, 10], 1)
            .udp(40001, 53)
            .write(&mut f, b"q")
            .unwrap();
        v.push([&[0u8][..], &f].concat());
        f.clear();
        PacketBuilder::ethernet2(article::EP1_MAC.0, n.host_mac.0)
            .ipv4([10, 244, 1, 5], [172, 16, 240, 1], 64)
            .icmpv4_echo_request(9, 1)
            .write(&mut f, b"ping")
            .unwrap();
        v.push([&[0u8][..], &f].concat());
        f.clear();
        // VXLAN from a stranger (no FDB entry), a source outside every pod subnet, to a pod
        // on the peer: flannel.1 routes it back out by VXLAN (vxlan_accept = any).
        PacketBuilder::ethernet2(article::peer2().vtep_mac.0, n.vtep_mac.0)
            .ipv4([10, 244, 7, 7], [10, 244, 0, 74], 64)
            .icmpv4_echo_request(9, 1)
            .write(&mut f, b"transit")
            .unwrap();
        v.push([&[4u8, 0x08, 0, 0, 0, 0, 0, 1, 0][..], &f].concat());
        // A kernel peer's TSO super-packet as a veth carries it (captured in the lab), to
        // the VTEP address: a GSO frame to the host port.
        v.push([&[3u8][..], crate::core::captured::nodeport_tso::TSO].concat());
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, .. ProptestConfig::default() })]

        /// Any bytes into any entry point: no panic, well-formed output.
        #[test]
        fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = harness().run(&data);
        }

        /// Valid frames with a few bytes changed reach the deep paths.
        #[test]
        fn mutated_frames(seed in 0usize..7, edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..6), cut in any::<u16>()) {
            let mut f = seeds()[seed].clone();
            for (at, b) in edits {
                let i = 1 + usize::from(at) % (f.len() - 1);
                f[i] = b;
            }
            let keep = 1 + usize::from(cut) % f.len();
            let _ = harness().run(&f[..keep.max(f.len() / 2)]);
        }
    }

    #[test]
    fn seeds_are_forwarded() {
        // The seeds themselves take the forwarding paths (not drops), so mutations start deep.
        let h = Harness::new();
        let kinds: Vec<Action> = seeds().iter().map(|s| h.run(s).unwrap()).collect();
        assert!(matches!(kinds[0], Action::ToVtep { .. }), "{:?}", kinds[0]);
        assert!(
            matches!(kinds[1], Action::ToVtep { .. } | Action::ToPort(PortId(1))),
            "NodePort flow forwarded: {:?}",
            kinds[1]
        );
        assert!(matches!(kinds[2], Action::ToPort(PortId::HOST)), "{:?}", kinds[2]);
        assert!(matches!(kinds[3], Action::ToPort(PortId(1))), "TTL 1 answers time exceeded: {:?}", kinds[3]);
        assert!(matches!(kinds[4], Action::ToPort(PortId::HOST)), "{:?}", kinds[4]);
        assert!(matches!(kinds[5], Action::ToVtep { .. }), "transit from a stranger: {:?}", kinds[5]);
        assert_eq!(kinds[6], Action::ToPort(PortId::HOST), "a peer's super-packet");
        assert_eq!(h.dp().counters.get(crate::core::Counter::PeerTso), 1);
        let mut strict = seeds()[5].clone();
        strict[0] |= 0x80;
        assert_eq!(h.run(&strict), Some(Action::Drop(crate::core::DropReason::VxlanUnknownPeer)));
        // The same, each as a later frame of a GRO read, in a fresh harness (the floor is
        // checked in `run`): the same decisions.
        let h = Harness::new();
        for (s, k) in seeds().iter().zip(&kinds) {
            // 40 = 5 * 8: the same entry point (`(sel & 0x7f) % 5`), bit 0x20 set, 0x80 not.
            let later = [&[s[0] + 40][..], &s[1..]].concat();
            assert_eq!(h.run(&later).map(|a| std::mem::discriminant(&a)), Some(std::mem::discriminant(k)));
        }
    }
}
