//! The NAT stage of the walk: conntrack first, then for a new flow the service stage
//! (`nat::candidates`: which service, which candidates, REJECT or DROP), the endpoint,
//! DNAT and the masquerade marks, or flannel's ip-masq; then the new flow's policy stage
//! (`policy.rs`) and its conntrack entry; ICMP errors about a NATed flow.

use super::*;
use crate::core::nat::candidates::{self, ServiceVerdict};
use crate::core::nat::service::Service;
use crate::core::trace::Pick;

/// What the rules decided for a new flow.
pub(super) struct Rule<'t> {
    reply_src: (Ipv4Addr, u16),
    reply_dst: Ipv4Addr,
    nat: u8,
    egress: Egress,
    /// The service and endpoint index, for their hit counters.
    svc_hit: Option<(&'t Service, usize, Via)>,
}

impl Rule<'_> {
    /// A flow that is not NATed: the reply tuple is the inverse of the original.
    fn plain(u: Tuple) -> Self {
        Rule { reply_src: (u.dst, u.dport), reply_dst: u.src, nat: 0, egress: Egress::Pod, svc_hit: None }
    }
}

impl<'a> Ctx<'a> {
    /// The NAT stage for a packet with ports: conntrack first, then the service rules
    /// and the masquerade rules for a new flow.
    pub(super) fn nat(&mut self, from: Origin, pkt: &mut Packet, u: &Tuple, tcp_flags: u8, hdr: Hdr) -> Nat {
        let ct = &self.dp.conntrack;
        let commit = !self.tr.dry_run;
        if let Some(hit) = ct.track(u, tcp_flags, self.now, commit) {
            return self.tracked(pkt, u, hit);
        }
        let u = *u;
        self.tr.step(|| Step::ConntrackMiss { tuple: u });
        if let Some(why) = ct.tombstone(&u, self.now, commit) {
            return Nat::Done(self.drop(policy::cut_reason(why)));
        }
        match from {
            // NAT happens where a flow enters the cluster; a peer never hands us a new one.
            Origin::Vxlan { strict: true, .. } => self.no_rule(pkt, u, tcp_flags),
            // As the kernel, `vxlan_accept = any` applies the rules to what flannel.1
            // decapsulates too (kube-proxy's PREROUTING, flannel's ip-masq); to this node's
            // pod subnet (the usual case) no rule applies: it holds no service IP, no node IP,
            // and no masquerade rule matches a local destination.
            Origin::Vxlan { .. } if self.t.node.pod_cidr.contains(u.dst) => self.no_rule(pkt, u, tcp_flags),
            // SCTP is never NATed (no service or masquerade rule has it); policy only.
            _ if u.proto == PROTO_SCTP => self.no_rule(pkt, u, tcp_flags),
            _ => self.new_flow(from, pkt, u, tcp_flags, hdr),
        }
    }

    /// A packet no NAT rule applies to: tracked for its policy when it touches a local
    /// pod with policy (its verdict is then its entry, and its replies pass by it),
    /// otherwise routed as it is.
    #[inline]
    fn no_rule(&mut self, pkt: &mut Packet, u: Tuple, tcp_flags: u8) -> Nat {
        if self.policed(&u) { self.enter(pkt, u, tcp_flags, Rule::plain(u)) } else { Nat::Untracked }
    }

    /// A new flow the rules may apply to. Out of line: `nat` stays small enough to be
    /// inlined into the walk, as the established path wants.
    #[inline(never)]
    fn new_flow(&mut self, from: Origin, pkt: &mut Packet, u: Tuple, tcp_flags: u8, hdr: Hdr) -> Nat {
        match self.rule(from, pkt, u, hdr) {
            Ok(rule) => self.enter(pkt, u, tcp_flags, rule),
            Err(Nat::Untracked) => self.no_rule(pkt, u, tcp_flags),
            Err(done) => done,
        }
    }

    /// A packet of a tracked flow: rewritten from its entry.
    fn tracked(&mut self, pkt: &mut Packet, u: &Tuple, hit: Hit) -> Nat {
        {
            self.count(if hit.dir == Dir::Original { Counter::CtHitOriginal } else { Counter::CtHitReply });
            self.tr.step(|| {
                let (original, reply) = match hit.dir {
                    Dir::Original => (
                        *u,
                        Tuple { proto: u.proto, src: hit.dst.0, dst: hit.src.0, sport: hit.dst.1, dport: hit.src.1 },
                    ),
                    Dir::Reply => (
                        Tuple { proto: u.proto, src: hit.dst.0, dst: hit.src.0, sport: hit.dst.1, dport: hit.src.1 },
                        *u,
                    ),
                };
                Step::Conntrack { dir: hit.dir, state: hit.state.map(|s| s.name().into()), original, reply }
            });
            if hit.nat != 0 {
                apply(pkt, &hit);
            }
            if let Some(r) = &mut self.rec {
                r.hit = Some(hit);
            }
            if hit.dir == Dir::Reply {
                self.tr.step(|| Step::ReverseNat { src: sock(hit.src), dst: sock(hit.dst) });
            }
            Nat::Tracked
        }
    }

    /// The rules for a new flow: a service (DNAT, and masquerade when marked) or
    /// flannel's ip-masq; `Err` when the packet is answered here or needs no NAT.
    fn rule(&mut self, from: Origin, pkt: &mut Packet, u: Tuple, hdr: Hdr) -> Result<Rule<'a>, Nat> {
        let t = self.t;
        let node = &t.node;
        match candidates::decide(t, &u) {
            ServiceVerdict::NoService => {}
            v => return self.service(from, pkt, u, hdr, v),
        }
        let eg = match t.routes.lookup(u.dst).target {
            RouteTarget::Host if !matches!(from, Origin::Host) => Egress::Host,
            RouteTarget::Peer { .. } => Egress::Vxlan,
            _ => return Err(Nat::Untracked),
        };
        if !masquerade::flannel_masquerades(u.src, u.dst, node.cluster_cidr, node.pod_cidr) {
            return Err(Nat::Untracked);
        }
        Ok(Rule {
            reply_src: (u.dst, u.dport),
            reply_dst: masquerade::source_for(eg, node.node_ip, node.vtep_ip),
            nat: NAT_SNAT,
            egress: eg,
            svc_hit: None,
        })
    }

    /// A packet the service stage claimed: refused, dropped, or DNATed to the endpoint
    /// picked among its candidates (masqueraded when kube-proxy marks it, or when
    /// flannel's ip-masq applies to the new destination).
    fn service(
        &mut self,
        from: Origin,
        pkt: &mut Packet,
        u: Tuple,
        hdr: Hdr,
        v: ServiceVerdict<'a>,
    ) -> Result<Rule<'a>, Nat> {
        let t = self.t;
        let node = &t.node;
        if let Some(m) = v.matched() {
            self.tr.step(|| Step::Service {
                name: m.service.spec.name.clone(),
                via: m.via,
                proto: u.proto,
                dst: u.dst,
                port: u.dport,
            });
        }
        let (s, via, candidates, mark) = match v {
            ServiceVerdict::Endpoints { matched, candidates, mark } => (matched.service, matched.via, candidates, mark),
            ServiceVerdict::Reject(m, why) => {
                // A cluster IP's other port is refused where kube-proxy's nftables
                // `cluster-ips-check` refuses it: in forward, as a forwarded packet.
                let via = m.map_or(Via::ClusterIp, |m| m.via);
                return Err(Nat::Done(self.reject(from, pkt, hdr, via, why)));
            }
            ServiceVerdict::Drop(_, why) => return Err(Nat::Done(self.drop(why))),
            ServiceVerdict::NoService => return Err(Nat::Untracked),
        };
        let commit = !self.tr.dry_run;
        let c = candidates::choose(&candidates, s, u.src, u.hash(t.hash_seed), &self.dp.affinity, self.now, commit);
        if c.by == Pick::Affinity {
            self.count(Counter::ServiceAffinityHit);
        }
        if c.affinity_full {
            self.count(Counter::ServiceAffinityFull);
        }
        let ep = c.endpoint;
        let marked = mark || masquerade::hairpin(u.src, *ep.ip());
        self.tr.step(|| Step::Endpoint {
            endpoint: ep,
            index: c.index,
            of: candidates.len(),
            candidates: candidates.to_vec(),
            masquerade: marked,
            by: c.by,
            terminating: candidates.terminating(),
        });
        let eg = egress_of(t.routes.lookup(*ep.ip()).target);
        let masq = marked || masquerade::flannel_masquerades(u.src, *ep.ip(), node.cluster_cidr, node.pod_cidr);
        Ok(Rule {
            reply_src: (*ep.ip(), ep.port()),
            reply_dst: if masq { masquerade::source_for(eg, node.node_ip, node.vtep_ip) } else { u.src },
            nat: NAT_DNAT | if masq { NAT_SNAT } else { 0 },
            egress: eg,
            svc_hit: Some((s, c.hit, via)),
        })
    }

    /// Enters a new flow in conntrack (unless dry-run) and rewrites its first packet.
    fn enter(&mut self, pkt: &mut Packet, u: Tuple, tcp_flags: u8, rule: Rule) -> Nat {
        let Rule { reply_src, reply_dst, nat, egress, svc_hit } = rule;
        // A new flow's first packet is no decision to replay (`run`).
        self.not_replayable();
        if !self.dp.conntrack.can_start(&u, tcp_flags) {
            return Nat::Done(self.drop(DropReason::CtInvalid));
        }
        // The policy stage, on the final tuple: after DNAT, before SNAT.
        let fin = Tuple { dst: reply_src.0, dport: reply_src.1, ..u };
        let mark = match self.police(&fin, tcp_flags, pkt.len() - ethernet::HEADER_LEN) {
            Ok(m) => m,
            Err(a) => return Nat::Done(a),
        };
        let ct = &self.dp.conntrack;
        let node = &self.t.node;
        // Not NATed: the reply tuple is the inverse, its port kept (or the flow refused).
        let ports = if nat == 0 {
            PortChoice { keep: u.sport, lo: u.sport, hi: u.sport }
        } else {
            port_choice(u, nat, egress, node.masquerade_ports)
        };
        let entry_hit = if self.tr.dry_run {
            // Show what would be entered, without entering it.
            let reply =
                Tuple { proto: u.proto, src: reply_src.0, dst: reply_dst, sport: reply_src.1, dport: ports.keep };
            self.trace_new(u, reply, nat, None, Admit::WouldBe);
            original_hit(&reply, nat)
        } else {
            match ct.insert(NewFlow { original: u, tcp_flags, reply_src, reply_dst, nat, ports }, self.now) {
                Insert::New { entry, remapped, evicted } => {
                    mark.on(&entry);
                    self.count(Counter::CtNew);
                    if nat == 0 {
                        self.count(Counter::PolicyTracked);
                    }
                    if evicted {
                        self.count(Counter::CtEarlyDrop);
                    }
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
                    if let Some((s, i, via)) = svc_hit {
                        let len = pkt.len() - ethernet::HEADER_LEN;
                        s.hits.hit(len);
                        if via == Via::NodePort {
                            s.node_port_hits.hit(len);
                        }
                        s.endpoint_hits[i].hit(len);
                    }
                    self.trace_new(u, entry.reply, nat, entry.state_name(), Admit::Entered);
                    original_hit(&entry.reply, nat)
                }
                Insert::Joined(entry) => {
                    self.count(Counter::CtRaceJoined);
                    self.tr.step(|| Step::ConntrackNew {
                        original: u,
                        reply: entry.reply,
                        state: entry.state_name().map(Into::into),
                        how: Admit::Joined,
                    });
                    original_hit(&entry.reply, entry.nat)
                }
                Insert::Full => return Nat::Done(self.drop(DropReason::CtFull)),
                Insert::Exhausted => return Nat::Done(self.drop(DropReason::SnatExhausted)),
            }
        };
        if nat != 0 {
            apply(pkt, &entry_hit);
        }
        Nat::Tracked
    }

    pub(super) fn trace_new(&mut self, u: Tuple, reply: Tuple, nat: u8, state: Option<&str>, how: Admit) {
        self.tr.step(|| Step::ConntrackNew { original: u, reply, state: state.map(Into::into), how });
        if nat & NAT_DNAT != 0 {
            self.tr.step(|| Step::Dnat {
                before: SocketAddrV4::new(u.dst, u.dport),
                after: SocketAddrV4::new(reply.src, reply.sport),
            });
        }
        if nat & NAT_SNAT != 0 {
            let by = if nat & NAT_DNAT != 0 { MasqRule::ServiceMark } else { MasqRule::FlannelIpMasq };
            self.tr.step(|| Step::Masquerade {
                by,
                before: SocketAddrV4::new(u.src, u.sport),
                after: SocketAddrV4::new(reply.dst, reply.dport),
            });
        }
    }

    /// ICMP errors about a NATed flow: the quoted packet and the outer addresses are
    /// translated as a packet of that flow would be (netfilter's
    /// `nf_nat_icmp_reply_translation`). Returns whether a flow matched.
    pub(super) fn translate_icmp_error(&mut self, pkt: &mut Packet, hdr: Hdr) -> bool {
        self.not_replayable();
        let Ok(ip) = Ipv4Packet::new_checked(&pkt.data()[ethernet::HEADER_LEN..]) else { return false };
        let icmp_at = ethernet::HEADER_LEN + ip.header_len();
        let Ok(emb) = icmp::embedded(&pkt.data()[icmp_at..]) else { return false };
        // The tuple of a packet going the way the error goes.
        let k =
            Tuple { proto: emb.protocol, src: emb.dst, dst: emb.src, sport: emb.ports.dport, dport: emb.ports.sport };
        // No flow: an error about the node's own traffic; routing takes it to the host.
        let Some(hit) = self.dp.conntrack.track(&k, 0, self.now, false) else { return false };
        // A flow tracked for policy alone: related, nothing to translate.
        if hit.nat == 0 {
            return true;
        }
        {
            let total = ethernet::HEADER_LEN + hdr.total;
            let icmp_bytes = &mut pkt.data_mut()[icmp_at..total];
            l4::rewrite_embedded(icmp_bytes, End::Src, hit.dst.0, hit.dst.1);
            l4::rewrite_embedded(icmp_bytes, End::Dst, hit.src.0, hit.src.1);
            icmp::fill_checksum(icmp_bytes);
        }
        // The outer header is changed as a packet of the flow going this way would be,
        // whoever sent the error: in the reply direction a DNATed flow's error comes from
        // the address the client reached (the service IP, even when a router on the way
        // sent it) and a SNATed flow's error goes to the client; in the original direction
        // the other way round (`nf_nat_icmp_reply_translation`'s "change outer").
        let (src_nat, dst_nat) = match hit.dir {
            Dir::Reply => (NAT_DNAT, NAT_SNAT),
            Dir::Original => (NAT_SNAT, NAT_DNAT),
        };
        if let Ok(mut ip) = Ipv4Packet::new_checked(&mut pkt.data_mut()[ethernet::HEADER_LEN..]) {
            if hit.nat & dst_nat != 0 || hdr.dst == k.dst {
                ip.set_dst(hit.dst.0);
            }
            if hit.nat & src_nat != 0 || hdr.src == k.src {
                ip.set_src(hit.src.0);
            }
        }
        self.count(Counter::IcmpErrorTranslated);
        self.tr.step(|| Step::ReverseNat { src: sock(hit.src), dst: sock(hit.dst) });
        true
    }
}

pub(super) fn egress_of(target: RouteTarget) -> Egress {
    match target {
        RouteTarget::Peer { .. } => Egress::Vxlan,
        RouteTarget::Pod(_) => Egress::Pod,
        _ => Egress::Host,
    }
}

/// The source ports a new flow may take: the MASQUERADE range towards the uplink
/// (replies to those are steered back to ucanal), otherwise netfilter's classes
/// (1-511, 600-1023, 1024-65535) so a privileged port stays privileged.
pub(super) fn port_choice(u: Tuple, nat: u8, egress: Egress, masq: (u16, u16)) -> PortChoice {
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
pub(super) fn original_hit(reply: &Tuple, nat: u8) -> Hit {
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
pub(super) fn apply(pkt: &mut Packet, h: &Hit) {
    let partial = pkt.offload.csum_partial;
    l4::rewrite_both(&mut pkt.data_mut()[ethernet::HEADER_LEN..], h.src, h.dst, partial);
}
