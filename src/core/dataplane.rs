//! The packet walk: the article's §3.1 and §3.2 as one function per ingress.
//!
//! ```text
//! pod TAP / host port ──► L2 (proxy-ARP, MAC check) ─┐
//! UDP 8472 ──► VXLAN checks (VNI, FDB peer, MACs) ───┤
//!                                                    ▼
//!   IPv4 checks ─► anti-spoofing ─► conntrack ─hit─► NAT from the entry
//!                                      │miss
//!                                      ▼
//!          KUBE-SERVICES / KUBE-NODEPORTS ─► endpoint ─► DNAT ─► MARK-MASQ / ip-masq
//!                                      ▼
//!   route ─► /32 pod: deliver │ peer subnet: neighbour ─► FDB ─► MTU ─► encap │ host stack
//! ```

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::counters::{Counter, Counters, DropReason};
use super::frag::reasm::{Pushed, Reassembler};
use super::nat::conntrack::{Conntrack, Dir, Hit, Insert, NAT_DNAT, NAT_SNAT, NewFlow, PortChoice};
use super::nat::masquerade::{self, Egress};
use super::nat::service::Via;
use super::nat::{Tuple, pick};
use super::route::{Hop, Matched, RouteTarget};
use super::tables::{PodPort, Tables};
use super::trace::{Step, Trace, tuple_str};
use super::{Action, HEADROOM, Ipv4Net, Now, Offload, Packet, PortId, frag, offload, proxy_arp, reject, vxlan};
use crate::wire::ethernet::{self, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, EthernetFrame};
use crate::wire::icmp::{self, ErrorRepr, IcmpPacket};
use crate::wire::ipv4::{Ipv4Packet, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::wire::l4::{self, End, Ports};
use crate::wire::tcp;
use crate::wire::{MacAddr, vxlan as vxlan_wire};

/// The dataplane: the current table snapshot, the connection table and the counters.
/// Shared by all workers; every method takes `&self`.
pub struct Dataplane {
    tables: ArcSwap<Tables>,
    pub conntrack: Conntrack,
    pub counters: Counters,
    /// The TAPs take `NEEDS_CSUM` frames (see `offload`); otherwise partial checksums
    /// are finished before delivery.
    tap_offloads: bool,
    /// Datagrams in reassembly (only fragments take this lock).
    frags: Mutex<Reassembler>,
}

/// Where a frame came in.
#[derive(Debug, Clone, Copy)]
enum From<'t> {
    Pod(&'t PodPort),
    Host,
    Vxlan { subnet: Ipv4Net },
}

/// What the NAT stage decided.
enum Nat {
    /// Not a NATed flow: route as is.
    Untracked,
    /// A tracked flow, rewritten; `original` is the tuple before NAT.
    Tracked,
    /// The packet was answered or dropped here.
    Done(Action),
}

impl Dataplane {
    pub fn new(tables: Tables, conntrack: Conntrack, workers: usize) -> Self {
        Dataplane {
            tables: ArcSwap::from_pointee(tables),
            conntrack,
            counters: Counters::new(workers),
            tap_offloads: true,
            frags: Mutex::new(Reassembler::new(frag::Limits::default())),
        }
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
        let mut cx = Ctx { dp: self, t, w: worker, now, tr };
        let from = if port.is_host() {
            cx.count(Counter::RxHost);
            From::Host
        } else {
            cx.count(Counter::RxPod);
            match t.pod(port) {
                Some(p) => From::Pod(p),
                None => return cx.drop(DropReason::PortGone),
            }
        };
        cx.tr.step(|| Step::Ingress { port: port_name(t, port), len: pkt.len() });
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
                    From::Pod(p) => Some(p.ip),
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
        let mut cx = Ctx { dp: self, t, w: worker, now, tr };
        cx.count(Counter::RxVxlan);
        cx.tr.step(|| Step::Ingress { port: format!("vxlan from {from}"), len: pkt.len() });
        let vni = match vxlan_wire::parse(pkt.data()) {
            Ok(v) => v,
            Err(_) => return cx.drop(DropReason::VxlanMalformed),
        };
        if vni != t.node.vni {
            return cx.drop(DropReason::VxlanBadVni);
        }
        let peer = *from.ip();
        let Some(subnet) = t.fdb.peer_subnet(peer) else {
            return cx.drop(DropReason::VxlanUnknownPeer);
        };
        pkt.pull_front(vxlan_wire::HEADER_LEN);
        let Ok(eth) = EthernetFrame::new_checked(pkt.data()) else {
            return cx.drop(DropReason::VxlanInnerMalformed);
        };
        if eth.dst() != t.node.vtep_mac {
            return cx.drop(DropReason::VxlanInnerDmac);
        }
        let src_mac = eth.src();
        if t.fdb.lookup(src_mac) != Some(peer) {
            return cx.drop(DropReason::VxlanFdbMismatch);
        }
        if eth.ethertype() != ETHERTYPE_IPV4 {
            return cx.drop(DropReason::VxlanInnerMalformed);
        }
        cx.count(Counter::Decap);
        cx.tr.step(|| Step::Decap { vni, peer, peer_subnet: subnet.to_string(), inner_src_mac: src_mac });
        cx.ipv4(From::Vxlan { subnet }, pkt)
    }
}

fn port_name(t: &Tables, port: PortId) -> String {
    match t.pod(port) {
        _ if port.is_host() => "host port".to_string(),
        Some(p) => format!("{} (pod {})", p.ifname, p.name),
        None => format!("port {}", port.0),
    }
}

struct Ctx<'a> {
    dp: &'a Dataplane,
    t: &'a Tables,
    w: usize,
    now: Now,
    tr: &'a mut Trace,
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
    fn count(&self, c: Counter) {
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

    fn ipv4(&mut self, from: From, pkt: &mut Packet) -> Action {
        let t = self.t;
        let hdr;
        let mut tuple = None;
        let mut tcp_flags = 0;
        let mut icmp_error = false;
        let mut partial = false;
        let mut fragment = false;
        {
            let Ok(ip) = Ipv4Packet::new_checked(&pkt.data()[ethernet::HEADER_LEN..]) else {
                return self.drop(match from {
                    From::Vxlan { .. } => DropReason::VxlanInnerMalformed,
                    _ => DropReason::Ipv4Malformed,
                });
            };
            if !ip.verify_checksum() {
                return self.drop(DropReason::Ipv4BadChecksum);
            }
            hdr = Hdr {
                src: ip.src(),
                dst: ip.dst(),
                proto: ip.protocol(),
                df: ip.dont_fragment(),
                total: ip.total_len(),
            };
            if is_martian(hdr.src, hdr.dst) {
                return self.drop(DropReason::Ipv4Martian);
            }
            match from {
                From::Pod(p) if hdr.src != p.ip => return self.drop(DropReason::SpoofedSource),
                From::Vxlan { subnet, .. } if !subnet.contains(hdr.src) => {
                    return self.drop(DropReason::VxlanSrcOutsideSubnet);
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
                            partial = matches!(from, From::Vxlan { .. })
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
                        Err(_) => return self.drop(DropReason::L4Malformed),
                    },
                    PROTO_ICMP => {
                        let Ok(message) = IcmpPacket::new_checked(payload) else {
                            return self.drop(DropReason::L4Malformed);
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
                Step::Packet {
                    proto: super::nat::proto_name(hdr.proto).to_string(),
                    src: hdr.src,
                    dst: hdr.dst,
                    sport,
                    dport,
                    ttl,
                    flags: tcp_flag_names(tcp_flags),
                }
            });
        }
        // Drop Ethernet padding: the VXLAN payload and the pod must not see it.
        pkt.truncate(ethernet::HEADER_LEN + hdr.total);
        if partial {
            pkt.offload.csum_partial = true;
            self.count(Counter::CsumPartial);
        }
        if fragment {
            return self.defrag(from, pkt);
        }

        let mut tracked = false;
        if let Some(u) = tuple {
            match self.nat(from, pkt, u, tcp_flags, hdr) {
                Nat::Untracked => {}
                Nat::Tracked => tracked = true,
                Nat::Done(a) => return a,
            }
        } else if icmp_error {
            tracked = self.translate_icmp_error(pkt, hdr);
        }
        let dst = Ipv4Packet::new_checked(&pkt.data()[ethernet::HEADER_LEN..]).map(|ip| ip.dst()).unwrap_or(hdr.dst);
        let m = t.routes.lookup(dst);
        self.tr.step(|| Step::Route { dst, route: describe_route(t, &m) });
        self.egress(from, pkt, m, hdr, tracked, tuple)
    }

    /// A fragment: held until its datagram is whole; the whole datagram then takes the
    /// walk from the start, and leaves to be fragmented again (see `frag`).
    fn defrag(&mut self, from: From, pkt: &mut Packet) -> Action {
        if self.tr.dry_run {
            self.tr.step(|| Step::Defrag { what: "a fragment: would be held for reassembly".into() });
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
                self.tr.step(|| Step::Defrag { what: "a fragment, held until its datagram is whole".into() });
                Action::Held
            }
            Pushed::Dropped(r) => self.drop(r),
            Pushed::Complete { len, max_frag } => {
                self.count(Counter::FragmentReassembled);
                pkt.use_spare(len);
                pkt.offload = Offload { frag_size: max_frag, ..Offload::default() };
                self.tr.step(|| Step::Defrag {
                    what: format!("the last fragment: datagram reassembled ({} bytes)", len - ethernet::HEADER_LEN),
                });
                self.ipv4(from, pkt)
            }
        }
    }

    /// The NAT stage for a packet with ports: conntrack first, then the service rules
    /// and the masquerade rules for a new flow.
    fn nat(&mut self, from: From, pkt: &mut Packet, u: Tuple, tcp_flags: u8, hdr: Hdr) -> Nat {
        let t = self.t;
        let ct = &self.dp.conntrack;
        let commit = !self.tr.dry_run;
        if let Some(hit) = ct.track(&u, tcp_flags, self.now, commit) {
            self.count(if hit.dir == Dir::Original { Counter::CtHitOriginal } else { Counter::CtHitReply });
            self.tr.step(|| {
                let (original, reply) = match hit.dir {
                    Dir::Original => (
                        u,
                        Tuple { proto: u.proto, src: hit.dst.0, dst: hit.src.0, sport: hit.dst.1, dport: hit.src.1 },
                    ),
                    Dir::Reply => (
                        Tuple { proto: u.proto, src: hit.dst.0, dst: hit.src.0, sport: hit.dst.1, dport: hit.src.1 },
                        u,
                    ),
                };
                Step::Conntrack {
                    dir: format!("{:?}", hit.dir).to_lowercase(),
                    state: hit
                        .state
                        .map(|s| s.name())
                        .unwrap_or(if u.proto == PROTO_UDP { "UDP" } else { "ICMP" })
                        .to_string(),
                    original: tuple_str(&original),
                    reply: tuple_str(&reply),
                }
            });
            apply(pkt, &hit);
            if hit.dir == Dir::Reply {
                self.tr.step(|| Step::ReverseNat { src: sock(hit.src), dst: sock(hit.dst) });
            }
            return Nat::Tracked;
        }
        self.tr.step(|| Step::ConntrackMiss { tuple: tuple_str(&u) });
        if matches!(from, From::Vxlan { .. }) {
            // NAT happens where a flow enters the cluster; a peer never hands us a new one.
            return Nat::Untracked;
        }

        let node = &t.node;
        let service = match u.proto {
            PROTO_TCP | PROTO_UDP => {
                t.services.by_cluster_ip(u.proto, u.dst, u.dport).map(|s| (s, Via::ClusterIp)).or_else(|| {
                    (u.dst == node.node_ip)
                        .then(|| t.services.by_node_port(u.proto, u.dport))
                        .flatten()
                        .map(|s| (s, Via::NodePort))
                })
            }
            _ => None,
        };

        let (reply_src, reply_dst, nat, egress, svc_hit);
        if let Some((s, via)) = service {
            self.tr.step(|| Step::Service {
                name: s.spec.name.clone(),
                via: match via {
                    Via::ClusterIp => "cluster IP".into(),
                    Via::NodePort => "NodePort".into(),
                },
                rule: match via {
                    Via::ClusterIp => format!(
                        "KUBE-SERVICES {} dst {} dpt:{}",
                        s.spec.protocol.name(),
                        s.spec.cluster_ip,
                        s.spec.port
                    ),
                    Via::NodePort => format!("KUBE-NODEPORTS {} dpt:{}", s.spec.protocol.name(), u.dport),
                },
            });
            let n = s.spec.endpoints.len();
            if n == 0 {
                return Nat::Done(self.reject_no_endpoints(pkt, hdr));
            }
            let i = pick(u.hash(t.hash_seed), n);
            let ep = s.spec.endpoints[i];
            self.tr.step(|| Step::Endpoint { endpoint: ep, index: i, of: n });
            let eg = egress_of(t.routes.lookup(*ep.ip()).target);
            let masq = masquerade::service_marks(via, u.src, *ep.ip(), node.cluster_cidr)
                || masquerade::flannel_masquerades(u.src, *ep.ip(), node.cluster_cidr, node.pod_cidr);
            reply_src = (*ep.ip(), ep.port());
            reply_dst = if masq { masquerade::source_for(eg, node.node_ip, node.vtep_ip) } else { u.src };
            nat = NAT_DNAT | if masq { NAT_SNAT } else { 0 };
            egress = eg;
            svc_hit = Some((s, i));
        } else {
            if matches!(u.proto, PROTO_TCP | PROTO_UDP) && node.service_cidr.contains(u.dst) {
                self.count_drop(DropReason::NoService);
                return Nat::Done(self.send_error(
                    pkt,
                    ErrorRepr::port_unreachable(),
                    Some(u.dst),
                    None,
                    Counter::IcmpUnreachableSent,
                    DropReason::NoService,
                ));
            }
            let eg = match t.routes.lookup(u.dst).target {
                RouteTarget::Host if !matches!(from, From::Host) => Egress::Host,
                RouteTarget::Peer { .. } => Egress::Vxlan,
                _ => return Nat::Untracked,
            };
            if !masquerade::flannel_masquerades(u.src, u.dst, node.cluster_cidr, node.pod_cidr) {
                return Nat::Untracked;
            }
            reply_src = (u.dst, u.dport);
            reply_dst = masquerade::source_for(eg, node.node_ip, node.vtep_ip);
            nat = NAT_SNAT;
            egress = eg;
            svc_hit = None;
        }

        if !ct.can_start(&u, tcp_flags) {
            return Nat::Done(self.drop(DropReason::CtInvalid));
        }
        let ports = port_choice(u, nat, egress, node.masquerade_ports);
        let entry_hit = if self.tr.dry_run {
            // Show what would be entered, without entering it.
            let reply =
                Tuple { proto: u.proto, src: reply_src.0, dst: reply_dst, sport: reply_src.1, dport: ports.keep };
            self.trace_new(u, reply, nat, "would be new");
            Hit {
                dir: Dir::Original,
                src: (reply.dst, reply.dport),
                dst: (reply.src, reply.sport),
                nat,
                state: None,
                invalid: false,
            }
        } else {
            match ct.insert(NewFlow { original: u, tcp_flags, reply_src, reply_dst, nat, ports }, self.now) {
                Insert::New { entry, remapped } => {
                    self.count(Counter::CtNew);
                    if remapped {
                        self.count(Counter::CtPortRemapped);
                    }
                    if nat & NAT_DNAT != 0 {
                        self.count(Counter::ServiceDnat);
                    }
                    if nat & NAT_SNAT != 0 {
                        self.count(if svc_hit.is_some() {
                            Counter::ServiceMasquerade
                        } else {
                            Counter::EgressMasquerade
                        });
                    }
                    if let Some((s, i)) = svc_hit {
                        s.hits.hit(pkt.len() - ethernet::HEADER_LEN);
                        s.endpoint_hits[i].hit(pkt.len() - ethernet::HEADER_LEN);
                    }
                    let state = entry.state_name().unwrap_or("").to_string();
                    self.trace_new(u, entry.reply, nat, &state);
                    original_hit(&entry.reply, nat)
                }
                Insert::Joined(entry) => {
                    self.count(Counter::CtRaceJoined);
                    self.tr.step(|| Step::ConntrackNew {
                        original: tuple_str(&u),
                        reply: tuple_str(&entry.reply),
                        state: "joined (inserted by a concurrent packet)".into(),
                    });
                    original_hit(&entry.reply, entry.nat)
                }
                Insert::Full => return Nat::Done(self.drop(DropReason::CtFull)),
                Insert::Exhausted => return Nat::Done(self.drop(DropReason::SnatExhausted)),
            }
        };
        apply(pkt, &entry_hit);
        Nat::Tracked
    }

    fn trace_new(&mut self, u: Tuple, reply: Tuple, nat: u8, state: &str) {
        self.tr.step(|| Step::ConntrackNew {
            original: tuple_str(&u),
            reply: tuple_str(&reply),
            state: state.to_string(),
        });
        if nat & NAT_DNAT != 0 {
            self.tr.step(|| Step::Dnat {
                before: SocketAddrV4::new(u.dst, u.dport),
                after: SocketAddrV4::new(reply.src, reply.sport),
            });
        }
        if nat & NAT_SNAT != 0 {
            let reason = if nat & NAT_DNAT != 0 {
                "KUBE-MARK-MASQ 0x4000, KUBE-POSTROUTING MASQUERADE"
            } else {
                "flannel ip-masq"
            };
            self.tr.step(|| Step::Masquerade {
                reason: reason.into(),
                before: SocketAddrV4::new(u.src, u.sport),
                after: SocketAddrV4::new(reply.dst, reply.dport),
            });
        }
    }

    /// ICMP errors about a NATed flow: the quoted packet and the outer addresses are
    /// translated as a packet of that flow would be (netfilter's
    /// `nf_nat_icmp_reply_translation`). Returns whether a flow matched.
    fn translate_icmp_error(&mut self, pkt: &mut Packet, hdr: Hdr) -> bool {
        let Ok(ip) = Ipv4Packet::new_checked(&pkt.data()[ethernet::HEADER_LEN..]) else { return false };
        let icmp_at = ethernet::HEADER_LEN + ip.header_len();
        let Ok(emb) = icmp::embedded(&pkt.data()[icmp_at..]) else { return false };
        // The tuple of a packet going the way the error goes.
        let k =
            Tuple { proto: emb.protocol, src: emb.dst, dst: emb.src, sport: emb.ports.dport, dport: emb.ports.sport };
        // No flow: an error about the node's own traffic; routing takes it to the host.
        let Some(hit) = self.dp.conntrack.track(&k, 0, self.now, false) else { return false };
        {
            let total = ethernet::HEADER_LEN + hdr.total;
            let icmp_bytes = &mut pkt.data_mut()[icmp_at..total];
            icmp::rewrite_embedded(icmp_bytes, End::Src, hit.dst.0, hit.dst.1);
            icmp::rewrite_embedded(icmp_bytes, End::Dst, hit.src.0, hit.src.1);
            icmp::fill_checksum(icmp_bytes);
        }
        if let Ok(mut ip) = Ipv4Packet::new_checked(&mut pkt.data_mut()[ethernet::HEADER_LEN..]) {
            if hdr.dst == k.dst {
                ip.set_dst(hit.dst.0);
            }
            if hdr.src == k.src {
                ip.set_src(hit.src.0);
            }
        }
        self.count(Counter::IcmpErrorTranslated);
        self.tr.step(|| Step::ReverseNat { src: sock(hit.src), dst: sock(hit.dst) });
        true
    }

    fn egress(
        &mut self,
        from: From,
        pkt: &mut Packet,
        m: Matched,
        hdr: Hdr,
        tracked: bool,
        original: Option<Tuple>,
    ) -> Action {
        let t = self.t;
        let node = &t.node;
        // ucanal is the router between pods and VXLAN; the node's stack routes the rest.
        let routed_here = !matches!(from, From::Host);
        match m.target {
            RouteTarget::Pod(port) => {
                let Some(pod) = t.pod(port) else { return self.drop(DropReason::PortGone) };
                if routed_here && let Some(a) = self.dec_ttl(pkt, original) {
                    return a;
                }
                if !self.dp.tap_offloads {
                    offload::finish(pkt);
                }
                if pkt.offload.frag_size > 0 {
                    pkt.offload.frag_size = pkt.offload.frag_size.min(node.mtu);
                }
                set_macs(pkt, pod.mac, node.host_mac);
                if !matches!(from, From::Vxlan { .. }) {
                    self.count(Counter::ForwardLocal);
                }
                self.tr.step(|| Step::Deliver { port: format!("{} (pod {})", pod.ifname, pod.name), dst_mac: pod.mac });
                Action::ToPort(port)
            }
            RouteTarget::Peer { gateway, hop } => {
                if matches!(from, From::Vxlan { .. }) {
                    return self.drop(DropReason::VxlanNotLocal);
                }
                let mtu = node.mtu;
                if pkt.offload.gso_size == 0 && hdr.total > usize::from(mtu) {
                    if hdr.df && pkt.offload.frag_size == 0 {
                        self.count_drop(DropReason::TooBig);
                        return self.send_error(
                            pkt,
                            ErrorRepr::frag_needed(node.mtu),
                            None,
                            original,
                            Counter::IcmpFragNeededSent,
                            DropReason::TooBig,
                        );
                    }
                    // Without DF, Linux fragments at the egress MTU (a reassembled datagram at
                    // the largest fragment received, if smaller).
                    offload::finish(pkt);
                    let size = pkt.offload.frag_size;
                    pkt.offload.frag_size = if size == 0 { mtu } else { size.min(mtu) };
                }
                if routed_here && let Some(a) = self.dec_ttl(pkt, original) {
                    return a;
                }
                self.encap_to_peer(pkt, gateway, hop)
            }
            RouteTarget::Local => {
                if matches!(from, From::Host) {
                    // Steered here (NodePort range, masquerade replies) but ours to answer:
                    // hand it back; arriving from the host port, the kernel delivers it locally.
                    self.count(Counter::HostPunt);
                } else {
                    self.count(Counter::ForwardHost);
                }
                offload::finish(pkt);
                set_macs(pkt, node.host_port_mac, node.host_mac);
                self.tr.step(|| Step::Deliver { port: "host port".into(), dst_mac: node.host_port_mac });
                Action::ToPort(PortId::HOST)
            }
            RouteTarget::Host => {
                match from {
                    From::Host => return self.drop(DropReason::HostLoop),
                    From::Vxlan { .. } if !tracked => return self.drop(DropReason::VxlanNotLocal),
                    _ => {}
                }
                self.count(Counter::ForwardHost);
                offload::finish(pkt);
                set_macs(pkt, node.host_port_mac, node.host_mac);
                self.tr.step(|| Step::Deliver { port: "host port".into(), dst_mac: node.host_port_mac });
                Action::ToPort(PortId::HOST)
            }
            RouteTarget::Unreachable => self.drop(DropReason::NoRoute),
        }
    }

    /// Neighbour -> FDB -> VXLAN header: flannel.1's transmit path.
    fn encap_to_peer(&mut self, pkt: &mut Packet, gateway: Ipv4Addr, hop: Option<Hop>) -> Action {
        let t = self.t;
        let node = &t.node;
        // The route carries the neighbour and FDB entries resolved at build time; without
        // them, the lookups name which one is missing.
        let (mac, remote) = match hop {
            Some(h) => (h.mac, h.remote),
            None => {
                let Some(mac) = t.neigh.lookup(gateway) else { return self.drop(DropReason::NoNeighbour) };
                let Some(remote) = t.fdb.lookup(mac) else { return self.drop(DropReason::NoFdb) };
                (mac, remote)
            }
        };
        self.tr.step(|| Step::Neighbour { ip: gateway, mac, dev: "flannel.1".into() });
        self.tr.step(|| Step::Fdb { mac, dst: remote, dev: "flannel.1".into() });
        // The wire needs finished checksums (GSO frames get them per segment).
        offload::finish(pkt);
        let flow_hash = inner_flow_hash(&pkt.data()[ethernet::HEADER_LEN..], t.hash_seed);
        if !vxlan::encap(pkt, node.vni, node.vtep_mac, mac) {
            return self.drop(DropReason::TxError);
        }
        self.count(Counter::ForwardVxlan);
        self.tr.step(|| Step::Encap {
            vni: node.vni,
            outer_src: node.node_ip,
            outer_dst: remote,
            udp_sport: t.vxlan_source_port(flow_hash),
            udp_dport: node.vxlan_port,
            inner_src_mac: node.vtep_mac,
            inner_dst_mac: mac,
        });
        Action::ToVtep { remote, flow_hash }
    }

    /// Decrements the TTL, or answers with ICMP time exceeded when it runs out.
    fn dec_ttl(&mut self, pkt: &mut Packet, original: Option<Tuple>) -> Option<Action> {
        let mut ip = Ipv4Packet::new_checked(&mut pkt.data_mut()[ethernet::HEADER_LEN..]).ok()?;
        if ip.ttl() > 1 {
            ip.dec_ttl();
            return None;
        }
        self.count_drop(DropReason::TtlExceeded);
        Some(self.send_error(
            pkt,
            ErrorRepr::ttl_exceeded(),
            None,
            original,
            Counter::IcmpTimeExceededSent,
            DropReason::TtlExceeded,
        ))
    }

    /// Replaces the packet with an ICMP error about it and routes the error. The
    /// packet is first put back into its pre-NAT form, so the sender recognises its
    /// own packet in the quote. `src` defaults to the node IP (the VTEP address when
    /// the error leaves by VXLAN, as Linux picks the egress device's address).
    /// `why` is the (already counted) reason the packet itself goes no further.
    fn send_error(
        &mut self,
        pkt: &mut Packet,
        repr: ErrorRepr,
        src: Option<Ipv4Addr>,
        original: Option<Tuple>,
        sent: Counter,
        why: DropReason,
    ) -> Action {
        if let Some(o) = original {
            let ip = &mut pkt.data_mut()[ethernet::HEADER_LEN..];
            l4::rewrite(ip, End::Src, o.src, o.sport, false);
            l4::rewrite(ip, End::Dst, o.dst, o.dport, false);
        }
        if !reject::may_send_error_about(&pkt.data()[ethernet::HEADER_LEN..]) {
            return Action::Drop(why);
        }
        let node_ip = self.t.node.node_ip;
        if !reject::icmp_error(pkt, src.unwrap_or(node_ip), repr) {
            return Action::Drop(why);
        }
        self.count(sent);
        let to = Ipv4Packet::new_checked(&pkt.data()[ethernet::HEADER_LEN..])
            .map(|ip| ip.dst())
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        self.tr.step(|| Step::Reply { what: format!("icmp type {} code {}", repr.icmp_type, repr.code), to });
        self.route_generated(pkt)
    }

    /// A service without endpoints refuses at once: TCP RST, else ICMP port unreachable.
    fn reject_no_endpoints(&mut self, pkt: &mut Packet, hdr: Hdr) -> Action {
        self.count_drop(DropReason::ServiceNoEndpoints);
        self.count(Counter::ServiceReject);
        if hdr.proto == PROTO_TCP {
            if reject::tcp_reset(pkt) {
                self.count(Counter::TcpResetSent);
                self.tr.step(|| Step::Reply { what: "tcp rst".into(), to: hdr.src });
                return self.route_generated(pkt);
            }
            return Action::Drop(DropReason::ServiceNoEndpoints);
        }
        self.send_error(
            pkt,
            ErrorRepr::port_unreachable(),
            Some(hdr.dst),
            None,
            Counter::IcmpUnreachableSent,
            DropReason::ServiceNoEndpoints,
        )
    }

    /// Routes a packet ucanal built itself (no NAT, no TTL, no further errors).
    fn route_generated(&mut self, pkt: &mut Packet) -> Action {
        let t = self.t;
        let node = &t.node;
        let Ok(dst) = Ipv4Packet::new_checked(&pkt.data()[ethernet::HEADER_LEN..]).map(|ip| ip.dst()) else {
            return Action::Drop(DropReason::TxError);
        };
        match t.routes.lookup(dst).target {
            RouteTarget::Pod(port) => match t.pod(port) {
                Some(pod) => {
                    set_macs(pkt, pod.mac, node.host_mac);
                    Action::ToPort(port)
                }
                None => Action::Drop(DropReason::PortGone),
            },
            RouteTarget::Peer { gateway, hop } => {
                if let Ok(mut ip) = Ipv4Packet::new_checked(&mut pkt.data_mut()[ethernet::HEADER_LEN..])
                    && ip.src() == node.node_ip
                {
                    ip.set_src(node.vtep_ip);
                }
                self.encap_to_peer(pkt, gateway, hop)
            }
            RouteTarget::Local | RouteTarget::Host => {
                set_macs(pkt, node.host_port_mac, node.host_mac);
                Action::ToPort(PortId::HOST)
            }
            RouteTarget::Unreachable => Action::Drop(DropReason::NoRoute),
        }
    }
}

impl Tables {
    /// The outer UDP source port a flow hash selects (0 when the pool is unknown).
    pub fn vxlan_source_port(&self, flow_hash: u32) -> u16 {
        let ports = &self.vxlan_source_ports;
        if ports.is_empty() { 0 } else { ports[vxlan::source_index(flow_hash, ports.len())] }
    }
}

fn egress_of(target: RouteTarget) -> Egress {
    match target {
        RouteTarget::Peer { .. } => Egress::Vxlan,
        RouteTarget::Pod(_) => Egress::Pod,
        _ => Egress::Host,
    }
}

/// The source ports a new flow may take: the MASQUERADE range towards the uplink
/// (replies to those are steered back to ucanal), otherwise netfilter's classes
/// (1-511, 600-1023, 1024-65535) so a privileged port stays privileged.
fn port_choice(u: Tuple, nat: u8, egress: Egress, masq: (u16, u16)) -> PortChoice {
    let keep = u.sport;
    if u.proto == PROTO_ICMP {
        return PortChoice { keep, lo: 0, hi: u16::MAX };
    }
    if nat & NAT_SNAT != 0 && egress == Egress::Host {
        return PortChoice { keep, lo: masq.0, hi: masq.1 };
    }
    match keep {
        0..=511 => PortChoice { keep, lo: 1, hi: 511 },
        512..=1023 => PortChoice { keep, lo: 600, hi: 1023 },
        _ => PortChoice { keep, lo: 1024, hi: u16::MAX },
    }
}

/// The rewrite of a new flow's first packet, from its reply tuple.
fn original_hit(reply: &Tuple, nat: u8) -> Hit {
    Hit {
        dir: Dir::Original,
        src: (reply.dst, reply.dport),
        dst: (reply.src, reply.sport),
        nat,
        state: None,
        invalid: false,
    }
}

/// Applies a flow's rewrite to both ends of the packet.
#[inline]
fn apply(pkt: &mut Packet, h: &Hit) {
    let partial = pkt.offload.csum_partial;
    let ip = &mut pkt.data_mut()[ethernet::HEADER_LEN..];
    l4::rewrite(ip, End::Src, h.src.0, h.src.1, partial);
    l4::rewrite(ip, End::Dst, h.dst.0, h.dst.1, partial);
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
fn inner_flow_hash(ip: &[u8], seed: u64) -> u32 {
    let Ok(p) = Ipv4Packet::new_checked(ip) else { return 0 };
    let ports = Ports::new_checked(p.payload()).ok().filter(|_| p.has_l4_header());
    let (sport, dport) = match ports {
        Some(ports) if matches!(p.protocol(), PROTO_TCP | PROTO_UDP) => (ports.src_port(), ports.dst_port()),
        _ => (0, 0),
    };
    Tuple { proto: p.protocol(), src: p.src(), dst: p.dst(), sport, dport }.hash(seed)
}

fn tcp_flag_names(f: u8) -> String {
    let names = [(tcp::SYN, "SYN"), (tcp::ACK, "ACK"), (tcp::FIN, "FIN"), (tcp::RST, "RST"), (tcp::PSH, "PSH")];
    names.iter().filter(|(b, _)| f & b != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(",")
}

/// `ip route` wording of the matched route.
fn describe_route(t: &Tables, m: &Matched) -> String {
    match m.target {
        RouteTarget::Pod(p) => match t.pod(p) {
            Some(pod) => format!("{} dev {} scope link", m.prefix.addr(), pod.ifname),
            None => format!("{} dev port{} scope link", m.prefix.addr(), p.0),
        },
        RouteTarget::Peer { gateway, .. } => format!("{} via {} dev flannel.1 onlink", m.prefix, gateway),
        RouteTarget::Local => format!("local {} (this node, to the host stack)", m.prefix.addr()),
        RouteTarget::Host => "default: the host stack (outside the cluster)".into(),
        RouteTarget::Unreachable => format!("unreachable (inside {} but no pod or peer route)", m.prefix),
    }
}

#[cfg(test)]
#[path = "dataplane_tests.rs"]
mod tests;
