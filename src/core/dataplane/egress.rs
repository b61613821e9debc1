//! The way out: the route's target (a pod, a peer by VXLAN, the host stack), TTL,
//! MTU, and the packets ucanal answers with (ICMP errors, among them the reject of a service
//! without endpoints).

use super::*;

impl Ctx<'_> {
    pub(super) fn egress(
        &mut self,
        from: Origin,
        pkt: &mut Packet,
        m: &Matched,
        hdr: Hdr,
        tracked: bool,
        original: Option<Tuple>,
    ) -> Action {
        let t = self.t;
        let node = &t.node;
        // ucanal is the router between pods and VXLAN; the node's stack routes the rest.
        let routed_here = !matches!(from, Origin::Host);
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
                if let Some(r) = &mut self.rec {
                    r.delivered(routed_here, !self.dp.tap_offloads, (pod.mac, node.host_mac));
                }
                if !matches!(from, Origin::Vxlan { .. }) {
                    self.count(Counter::ForwardLocal);
                }
                self.tr.step(|| Step::Deliver { port: PortRef::of(t, port), dst_mac: pod.mac });
                Action::ToPort(port)
            }
            RouteTarget::Peer { gateway, hop } => {
                // The kernel forwards a decapsulated packet back out of flannel.1 when its
                // route says so; `vxlan_accept = peers` refuses transit.
                if matches!(from, Origin::Vxlan { strict: true, .. }) {
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
                if matches!(from, Origin::Host) {
                    // Steered here (NodePort range, masquerade replies) but ours to answer:
                    // hand it back; arriving from the host port, the kernel delivers it locally.
                    self.count(Counter::HostPunt);
                } else {
                    self.count(Counter::ForwardHost);
                }
                offload::finish(pkt);
                set_macs(pkt, node.host_port_mac, node.host_mac);
                self.tr.step(|| Step::Deliver { port: PortRef::Host, dst_mac: node.host_port_mac });
                Action::ToPort(PortId::HOST)
            }
            RouteTarget::Host => {
                match from {
                    Origin::Host => return self.drop(DropReason::HostLoop),
                    Origin::Vxlan { strict: true, .. } if !tracked => return self.drop(DropReason::VxlanNotLocal),
                    _ => {}
                }
                self.count(Counter::ForwardHost);
                offload::finish(pkt);
                set_macs(pkt, node.host_port_mac, node.host_mac);
                if let Some(r) = &mut self.rec {
                    r.delivered(false, true, (node.host_port_mac, node.host_mac));
                }
                self.tr.step(|| Step::Deliver { port: PortRef::Host, dst_mac: node.host_port_mac });
                Action::ToPort(PortId::HOST)
            }
            RouteTarget::Unreachable => self.drop(DropReason::NoRoute),
        }
    }

    /// Neighbour -> FDB -> VXLAN header: flannel.1's transmit path.
    pub(super) fn encap_to_peer(&mut self, pkt: &mut Packet, gateway: Ipv4Addr, hop: Option<Hop>) -> Action {
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
        self.tr.step(|| Step::Neighbour { ip: gateway, mac });
        self.tr.step(|| Step::Fdb { mac, dst: remote });
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
    pub(super) fn dec_ttl(&mut self, pkt: &mut Packet, original: Option<Tuple>) -> Option<Action> {
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
    pub(super) fn send_error(
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
        self.tr.step(|| Step::Reply { icmp_type: repr.icmp_type, code: repr.code, to });
        self.route_generated(pkt)
    }

    /// A service without endpoints (`why`: `ServiceNoEndpoints`), or a cluster IP's other
    /// port or protocol (`NoService`), refuses at once with ICMP port unreachable, TCP and
    /// UDP alike, as kube-proxy's `REJECT` does, and as from where that rule runs: a
    /// ClusterIP in FORWARD (after routing: the quoted TTL one lower, sent from the node
    /// address), a NodePort in INPUT (the quote as the datagram arrived, sent from the
    /// address it reached). When the node's stack forwarded the packet into ucanal0, that
    /// hop is one the kernel's REJECT never sees: the error leaves with TTL 65, so that
    /// it reaches the wire with 64.
    pub(super) fn reject(&mut self, from: Origin, pkt: &mut Packet, hdr: Hdr, via: Via, why: DropReason) -> Action {
        let node = &self.t.node;
        let host_hop = matches!(from, Origin::Host) && hdr.src != node.node_ip && hdr.src != node.vtep_ip;
        let src = match via {
            // Forwarded, as kube-proxy's REJECT in FORWARD: a cluster IP, and the
            // externalIPs and load-balancer IPs routed to this node.
            Via::ClusterIp | Via::ExternalIp | Via::LoadBalancer => {
                if !matches!(from, Origin::Host)
                    && let Some(a) = self.dec_ttl(pkt, None)
                {
                    return a;
                }
                node.node_ip
            }
            Via::NodePort => {
                if host_hop {
                    reject::undo_host_hop(&mut pkt.data_mut()[ethernet::HEADER_LEN..]);
                }
                hdr.dst
            }
        };
        self.count_drop(why);
        if why == DropReason::ServiceNoEndpoints {
            self.count(Counter::ServiceReject);
        }
        let ttl = if host_hop { 65 } else { 64 };
        if !reject::may_send_error_about(&pkt.data()[ethernet::HEADER_LEN..])
            || !reject::icmp_error_ttl(pkt, src, ErrorRepr::port_unreachable(), ttl)
        {
            return Action::Drop(why);
        }
        self.count(Counter::IcmpUnreachableSent);
        self.tr.step(|| Step::Reply { icmp_type: 3, code: 3, to: hdr.src });
        self.route_generated(pkt)
    }

    /// Routes a packet ucanal built itself (no NAT, no TTL, no further errors).
    pub(super) fn route_generated(&mut self, pkt: &mut Packet) -> Action {
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
