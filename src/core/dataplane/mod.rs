//! The packet walk: the article's §3.1 and §3.2 as one function per ingress.
//!
//! ```text
//! pod TAP / host port ──► L2 (proxy-ARP, MAC check) ─┐
//! UDP 8472 ──► VXLAN checks (VNI, inner MACs) ───────┤
//!                                                    ▼
//!   IPv4 checks ─► anti-spoofing ─► conntrack ─hit─► NAT from the entry
//!                                      │miss
//!                                      ▼
//!          KUBE-SERVICES / KUBE-NODEPORTS ─► endpoint ─► DNAT ─► MARK-MASQ / ip-masq
//!                                      ▼
//!          policy (cali-fw-* of a local sender, cali-tw-* of a local receiver) ─► insert
//!                                      ▼
//!   route ─► /32 pod: deliver │ peer subnet: neighbour ─► FDB ─► MTU ─► encap │ host stack
//! ```

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::counters::{Counter, Counters, DropReason};
use super::frag::reasm::{Pushed, Reassembler};
use super::nat::Tuple;
use super::nat::affinity::Affinity;
use super::nat::conntrack::{Conntrack, Dir, Hit, Insert, NAT_DNAT, NAT_SNAT, NewFlow, PortChoice};
use super::nat::masquerade::{self, Egress};
use super::nat::service::Via;
use super::policy::log::{LogQueue, LogRecord};
use super::route::{Hop, Matched, RouteTarget};
use super::tables::{PodPort, Tables, VxlanAccept};
use super::trace::{Admit, Defrag, MasqRule, PortRef, Step, Trace};
use super::{Action, HEADROOM, Ipv4Net, Now, Offload, Packet, PortId, frag, offload, proxy_arp, reject, vxlan};
use crate::wire::ethernet::{self, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, EthernetFrame};
use crate::wire::icmp::{self, ErrorRepr, IcmpPacket};
use crate::wire::ipv4::{self, Ipv4Packet, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use crate::wire::l4::{self, End};
use crate::wire::{MacAddr, vxlan as vxlan_wire};

/// The dataplane: the current table snapshot, the connection table and the counters.
/// Shared by all workers; every method takes `&self`.
pub struct Dataplane {
    tables: ArcSwap<Tables>,
    pub conntrack: Conntrack,
    /// Session affinity choices (`sessionAffinity: ClientIP`).
    pub affinity: Affinity,
    pub counters: Counters,
    /// The TAPs take `NEEDS_CSUM` frames (see `offload`); otherwise partial checksums
    /// are finished before delivery.
    tap_offloads: bool,
    /// Datagrams in reassembly (only fragments take this lock).
    frags: Mutex<Reassembler>,
    /// Records of `Log` policy rules, for the shell ([`Dataplane::poll_policy_log`]).
    pub policy_log: LogQueue,
}

/// Where a frame came in.
#[derive(Debug, Clone, Copy)]
pub(super) enum Origin<'t> {
    Pod(&'t PodPort),
    Host,
    /// Decapsulated: `subnet` is the sending peer's pod subnet (`None` for a sender with no
    /// FDB entry); `strict` when `vxlan_accept = peers`.
    Vxlan {
        subnet: Option<Ipv4Net>,
        strict: bool,
    },
}

impl Dataplane {
    pub fn new(tables: Tables, conntrack: Conntrack, workers: usize) -> Self {
        Dataplane {
            tables: ArcSwap::from_pointee(tables),
            conntrack,
            affinity: Affinity::default(),
            counters: Counters::new(workers),
            tap_offloads: true,
            frags: Mutex::new(Reassembler::new(frag::Limits::default())),
            policy_log: LogQueue::default(),
        }
    }

    /// Moves the queued records of `Log` policy rules to `out` (the shell writes them).
    pub fn poll_policy_log(&self, out: &mut Vec<LogRecord>) {
        self.policy_log.drain(out);
    }

    /// Says whether the TAPs were opened with offloads (the default is yes).
    pub fn with_tap_offloads(mut self, on: bool) -> Self {
        self.tap_offloads = on;
        self
    }

    /// The current snapshot. Workers take it once per batch.
    pub fn tables(&self) -> Arc<Tables> {
        self.tables.load_full()
    }

    /// Publishes a new snapshot; packets already in flight finish on the old one.
    pub fn publish(&self, t: Tables) {
        self.tables.store(Arc::new(t));
    }

    /// A frame (Ethernet) from a local port: a pod's TAP or the host port.
    pub fn handle_port(
        &self,
        worker: usize,
        t: &Tables,
        port: PortId,
        pkt: &mut Packet,
        now: Now,
        tr: &mut Trace,
    ) -> Action {
        let mut cx = Ctx { dp: self, t, w: worker, now, tr, rec: None };
        let from = if port.is_host() {
            cx.count(Counter::RxHost);
            Origin::Host
        } else {
            cx.count(Counter::RxPod);
            match t.pod(port) {
                Some(p) => Origin::Pod(p),
                None => return cx.drop(DropReason::PortGone),
            }
        };
        cx.tr.step(|| Step::Ingress { port: PortRef::of(t, port), len: pkt.len() });
        let Ok(eth) = EthernetFrame::new_checked(pkt.data()) else {
            return cx.drop(DropReason::EthTruncated);
        };
        let dst_mac = eth.dst();
        match eth.ethertype() {
            ETHERTYPE_IPV4 => {
                if dst_mac != t.node.host_mac {
                    return cx.drop(DropReason::EthNotForUs);
                }
                cx.ipv4(from, pkt)
            }
            ETHERTYPE_ARP => {
                if dst_mac != t.node.host_mac && dst_mac != MacAddr::BROADCAST {
                    return cx.drop(DropReason::EthNotForUs);
                }
                let must_be = match from {
                    Origin::Pod(p) => Some(p.ip),
                    _ => None,
                };
                match proxy_arp::answer(pkt.data_mut(), must_be, t.node.host_mac) {
                    Ok((len, a)) => {
                        pkt.truncate(len);
                        cx.count(Counter::ArpProxyReply);
                        cx.tr.step(|| Step::ProxyArp { who_has: a.who_has, tell: a.tell, answer: t.node.host_mac });
                        Action::ToPort(port)
                    }
                    Err(r) => cx.drop(r),
                }
            }
            ETHERTYPE_IPV6 => cx.drop(DropReason::Ipv6Unsupported),
            _ => cx.drop(DropReason::EthertypeUnsupported),
        }
    }

    /// A UDP datagram received on the VXLAN port from `from`.
    pub fn handle_vxlan(
        &self,
        worker: usize,
        t: &Tables,
        from: SocketAddrV4,
        pkt: &mut Packet,
        now: Now,
        tr: &mut Trace,
    ) -> Action {
        Ctx { dp: self, t, w: worker, now, tr, rec: None }.vxlan(from, pkt)
    }
}

impl Ctx<'_> {
    /// The VXLAN checks of flannel.1's receive path, then the IPv4 walk.
    fn vxlan(&mut self, from: SocketAddrV4, pkt: &mut Packet) -> Action {
        let t = self.t;
        self.count(Counter::RxVxlan);
        self.tr.step(|| Step::Ingress { port: PortRef::Vxlan { from }, len: pkt.len() });
        let vni = match vxlan_wire::parse(pkt.data()) {
            Ok(v) => v,
            Err(_) => return self.drop(DropReason::VxlanMalformed),
        };
        if vni != t.node.vni {
            return self.drop(DropReason::VxlanBadVni);
        }
        let peer = *from.ip();
        let strict = t.node.vxlan_accept == VxlanAccept::Peers;
        let subnet = t.fdb.peer_subnet(peer);
        if subnet.is_none() {
            if strict {
                return self.drop(DropReason::VxlanUnknownPeer);
            }
            self.count(Counter::VxlanFromUnknownPeer);
        }
        pkt.pull_front(vxlan_wire::HEADER_LEN);
        let Ok(eth) = EthernetFrame::new_checked(pkt.data()) else {
            return self.drop(DropReason::VxlanInnerMalformed);
        };
        // flannel.1 hands on only frames to its own MAC (anything else is PACKET_OTHERHOST,
        // which ip_rcv drops) and drops its own source MAC as a loop.
        if eth.dst() != t.node.vtep_mac {
            return self.drop(DropReason::VxlanInnerDmac);
        }
        let src_mac = eth.src();
        if src_mac == t.node.vtep_mac {
            return self.drop(DropReason::VxlanLoop);
        }
        if strict && t.fdb.lookup(src_mac) != Some(peer) {
            return self.drop(DropReason::VxlanFdbMismatch);
        }
        if eth.ethertype() != ETHERTYPE_IPV4 {
            return self.drop(DropReason::VxlanInnerMalformed);
        }
        self.count(Counter::Decap);
        self.tr.step(|| Step::Decap { vni, peer, peer_subnet: subnet, inner_src_mac: src_mac });
        self.ipv4(Origin::Vxlan { subnet, strict }, pkt)
    }
}

struct Ctx<'a> {
    dp: &'a Dataplane,
    t: &'a Tables,
    w: usize,
    now: Now,
    tr: &'a mut Trace,
    /// What the walk did, when its decision may be replayed on a run (`run`).
    rec: Option<Recorded>,
}

/// What `parse` found.
struct Parsed {
    hdr: Hdr,
    tuple: Option<Tuple>,
    tcp_flags: u8,
    icmp_error: bool,
    /// A TCP/UDP checksum left partial by a kernel peer.
    partial: bool,
    fragment: bool,
}

/// Facts of the IPv4 header read once at the start of the walk.
#[derive(Debug, Clone, Copy)]
struct Hdr {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    df: bool,
    total: usize,
}

impl<'a> Ctx<'a> {
    #[inline]
    fn count(&mut self, c: Counter) {
        if let Some(r) = &mut self.rec {
            r.counted(c);
        }
        if !self.tr.dry_run {
            self.dp.counters.inc(self.w, c);
        }
    }
    #[inline]
    fn count_drop(&mut self, r: DropReason) {
        if !self.tr.dry_run {
            self.dp.counters.drop(self.w, r);
        }
        self.tr.step(|| Step::Drop { reason: r.name().to_string() });
    }
    #[inline]
    fn drop(&mut self, r: DropReason) -> Action {
        self.count_drop(r);
        Action::Drop(r)
    }

    fn ipv4(&mut self, from: Origin, pkt: &mut Packet) -> Action {
        let t = self.t;
        let Parsed { hdr, tuple, tcp_flags, icmp_error, partial, fragment } = match self.parse(from, pkt) {
            Ok(p) => p,
            Err(a) => return a,
        };
        // Drop Ethernet padding: the VXLAN payload and the pod must not see it.
        pkt.truncate(ethernet::HEADER_LEN + hdr.total);
        if partial {
            pkt.offload.csum_partial = true;
            self.count(Counter::CsumPartial);
            if let Some(r) = &mut self.rec {
                r.partial = true;
            }
            // (A reassembled datagram leaves as fragments again, never as a GSO frame.)
            if hdr.total > usize::from(t.node.mtu) && pkt.offload.frag_size == 0 {
                self.peer_super_packet(pkt);
            }
        }
        if fragment {
            return self.defrag(from, pkt);
        }

        let mut tracked = false;
        // By reference: a copy of the tuple `parse` just wrote stalls on store forwarding.
        if let Some(u) = &tuple {
            match self.nat(from, pkt, u, tcp_flags, hdr) {
                Nat::Untracked => {}
                Nat::Tracked => tracked = true,
                Nat::Done(a) => return a,
            }
        } else if icmp_error {
            tracked = self.translate_icmp_error(pkt, hdr);
        }
        // No flow to carry a verdict: a pod's policy decides for this packet alone.
        if !tracked
            && tuple.is_none()
            && let Some(a) = self.police_stateless(hdr)
        {
            return a;
        }
        // The destination after NAT, read where `parse` found a whole header (not through
        // `new_checked`: its result goes through memory, a store-forwarding stall here).
        let dst = pkt
            .data()
            .get(ethernet::HEADER_LEN..ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN)
            .map_or(hdr.dst, |h| ipv4::addrs(h).1);
        let m = t.routes.lookup(dst);
        self.tr.step(|| Step::Route { dst, route: route_ref(t, &m) });
        self.egress(from, pkt, &m, hdr, tracked, tuple)
    }

    /// A partial TCP packet from a peer over the VXLAN MTU is a super-packet its TSO left
    /// whole (see `offload`): it goes on as a GSO frame. Never replayed: a run's segments
    /// are not super-packets.
    fn peer_super_packet(&mut self, pkt: &mut Packet) {
        let ip = &pkt.data()[ethernet::HEADER_LEN..];
        if let Some(mss) = offload::peer_tso_mss(ip, self.t.node.mtu) {
            pkt.offload.gso_size = mss;
            self.count(Counter::PeerTso);
            self.not_replayable();
        }
    }

    /// The IPv4 checks of the walk (header, martians, anti-spoofing, the peer's subnet)
    /// and the facts the rest of it needs; `Err` is the drop.
    fn parse(&mut self, from: Origin, pkt: &Packet) -> Result<Parsed, Action> {
        let hdr;
        let mut tuple = None;
        let mut tcp_flags = 0;
        let mut icmp_error = false;
        let mut partial = false;
        let mut fragment = false;
        {
            let Ok(ip) = Ipv4Packet::new_checked(&pkt.data()[ethernet::HEADER_LEN..]) else {
                return Err(self.drop(match from {
                    Origin::Vxlan { .. } => DropReason::VxlanInnerMalformed,
                    _ => DropReason::Ipv4Malformed,
                }));
            };
            if !ip.verify_checksum() {
                return Err(self.drop(DropReason::Ipv4BadChecksum));
            }
            hdr = Hdr {
                src: ip.src(),
                dst: ip.dst(),
                proto: ip.protocol(),
                df: ip.dont_fragment(),
                total: ip.total_len(),
            };
            if is_martian(hdr.src, hdr.dst) {
                return Err(self.drop(DropReason::Ipv4Martian));
            }
            match from {
                Origin::Pod(p) if hdr.src != p.ip => return Err(self.drop(DropReason::SpoofedSource)),
                Origin::Vxlan { subnet: Some(subnet), strict } if !subnet.contains(hdr.src) => {
                    if strict {
                        return Err(self.drop(DropReason::VxlanSrcOutsideSubnet));
                    }
                    self.count(Counter::VxlanForeignSource);
                }
                _ => {}
            }
            if ip.is_fragment() {
                fragment = true;
            } else {
                let payload = ip.payload();
                match hdr.proto {
                    PROTO_TCP | PROTO_UDP => match l4::ports(hdr.proto, payload) {
                        Ok(p) => {
                            // A kernel peer's veth hands its checksums on partial.
                            partial = matches!(from, Origin::Vxlan { .. })
                                && offload::is_partial(&pkt.data()[ethernet::HEADER_LEN..][..hdr.total]);
                            tcp_flags = p.tcp_flags;
                            tuple = Some(Tuple {
                                proto: hdr.proto,
                                src: hdr.src,
                                dst: hdr.dst,
                                sport: p.sport,
                                dport: p.dport,
                            });
                        }
                        Err(_) => return Err(self.drop(DropReason::L4Malformed)),
                    },
                    // SCTP's common header starts with the ports: a flow for policy (never NATed).
                    PROTO_SCTP if payload.len() >= 12 => {
                        tuple = Some(Tuple {
                            proto: PROTO_SCTP,
                            src: hdr.src,
                            dst: hdr.dst,
                            sport: u16::from_be_bytes([payload[0], payload[1]]),
                            dport: u16::from_be_bytes([payload[2], payload[3]]),
                        });
                    }
                    PROTO_ICMP => {
                        let Ok(message) = IcmpPacket::new_checked(payload) else {
                            return Err(self.drop(DropReason::L4Malformed));
                        };
                        if message.is_error() {
                            icmp_error = true;
                        } else if let Some(p) = message.echo_ports() {
                            tuple = Some(Tuple {
                                proto: PROTO_ICMP,
                                src: hdr.src,
                                dst: hdr.dst,
                                sport: p.sport,
                                dport: p.dport,
                            });
                        }
                    }
                    _ => {}
                }
            }
            let ttl = ip.ttl();
            self.tr.step(|| {
                let (sport, dport) = tuple.map(|u| (u.sport, u.dport)).unwrap_or((0, 0));
                Step::Packet { proto: hdr.proto, src: hdr.src, dst: hdr.dst, sport, dport, ttl, tcp_flags }
            });
        }
        Ok(Parsed { hdr, tuple, tcp_flags, icmp_error, partial, fragment })
    }

    /// A fragment: held until its datagram is whole; the whole datagram then takes the
    /// walk from the start, and leaves to be fragmented again (see `frag`).
    fn defrag(&mut self, from: Origin, pkt: &mut Packet) -> Action {
        self.not_replayable();
        if self.tr.dry_run {
            self.tr.step(|| Step::Defrag { event: Defrag::WouldHold });
            return Action::Held;
        }
        let now = self.now;
        let outcome = {
            let (frame, spare) = pkt.data_and_spare();
            let Some(spare) = spare else { return self.drop(DropReason::FragmentLimit) };
            let mut r = self.dp.frags.lock().unwrap_or_else(|e| e.into_inner());
            r.push(frame, now, &mut spare[HEADROOM..])
        };
        for _ in 0..outcome.expired {
            self.dp.counters.drop(self.w, DropReason::FragmentTimeout);
        }
        self.count(Counter::FragmentHeld);
        match outcome.pushed {
            Pushed::Held => {
                self.tr.step(|| Step::Defrag { event: Defrag::Held });
                Action::Held
            }
            Pushed::Dropped(r) => self.drop(r),
            Pushed::Complete { len, max_frag } => {
                self.count(Counter::FragmentReassembled);
                pkt.use_spare(len);
                pkt.offload = Offload { frag_size: max_frag, ..Offload::default() };
                self.tr.step(|| Step::Defrag { event: Defrag::Reassembled { bytes: len - ethernet::HEADER_LEN } });
                self.ipv4(from, pkt)
            }
        }
    }
}

#[inline]
fn set_macs(pkt: &mut Packet, dst: MacAddr, src: MacAddr) {
    let d = pkt.data_mut();
    d[ethernet::field::DST..ethernet::field::SRC].copy_from_slice(&dst.0);
    d[ethernet::field::SRC..ethernet::field::ETHERTYPE].copy_from_slice(&src.0);
}

fn sock(a: (Ipv4Addr, u16)) -> SocketAddrV4 {
    SocketAddrV4::new(a.0, a.1)
}

/// Addresses never routed: "this network", loopback, multicast/broadcast sources,
/// and multicast/broadcast destinations (ucanal does not route multicast).
fn is_martian(src: Ipv4Addr, dst: Ipv4Addr) -> bool {
    let bad_src = src.octets()[0] == 0 || src.is_loopback() || src.is_multicast() || src.is_broadcast();
    let bad_dst = dst.octets()[0] == 0 || dst.is_loopback() || dst.is_multicast() || dst.is_broadcast();
    bad_src || bad_dst
}

/// The inner flow hash that picks the outer UDP source port, over the L3/L4 headers
/// as Linux's `skb_get_hash` does.
///
/// Read from the bytes at their fixed offsets (the walk has checked the header): this
/// runs for every encapsulated packet, and parsed views cost a copy through memory.
fn inner_flow_hash(ip: &[u8], seed: u64) -> u32 {
    if ip.len() < ipv4::MIN_HEADER_LEN {
        return 0;
    }
    let (src, dst) = ipv4::addrs(ip);
    let proto = ip[9];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    // Ports only when the packet carries its L4 header (not a non-first fragment).
    let first = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
    let (sport, dport) = match ip.get(ihl..ihl + 4) {
        Some(p) if first && matches!(proto, PROTO_TCP | PROTO_UDP) => {
            (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]))
        }
        _ => (0, 0),
    };
    Tuple { proto, src, dst, sport, dport }.hash(seed)
}

mod egress;
mod nat;
mod policy;
mod run;
mod steps;

pub use run::RunMemo;
use steps::{Nat, Recorded, route_ref};

#[cfg(test)]
mod tests;
