//! A named counter for every decision and every drop reason.
//!
//! Each worker owns one cache-line-aligned block of counters and is its only
//! writer, so an increment is a plain load and store (no locked instruction);
//! readers (the `show counters` API, metrics) sum the blocks with relaxed loads.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal, $help:literal;)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum $name { $($(#[$vm])* $v,)* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v,)*];
            pub const COUNT: usize = [$($name::$v,)*].len();
            /// The stable name used in `show counters`, metrics and traces.
            pub fn name(self) -> &'static str { match self { $($name::$v => $s,)* } }
            /// One line saying what the counter counts.
            pub fn help(self) -> &'static str { match self { $($name::$v => $help,)* } }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.name()) }
        }
    };
}

named_enum!(
    /// Decisions: what happened to packets that were not dropped.
    Counter {
        RxPod => "rx_pod", "frames received from pod TAPs";
        RxHost => "rx_host", "frames received from the host port";
        RxVxlan => "rx_vxlan", "VXLAN datagrams received";
        ArpProxyReply => "arp_proxy_reply", "ARP requests answered with the host-side MAC (proxy-ARP)";
        ForwardLocal => "forward_local", "packets switched to a pod on this node by its /32 route";
        ForwardVxlan => "forward_vxlan", "packets encapsulated to a remote VTEP";
        ForwardHost => "forward_host", "packets handed to the node's own stack";
        Decap => "decap", "VXLAN datagrams accepted and decapsulated";
        VxlanFromUnknownPeer => "vxlan_from_unknown_peer", "VXLAN datagrams from an address with no FDB entry, decapsulated as flannel.1 does (vxlan_accept = any; with peers they are the drop vxlan_unknown_peer)";
        VxlanForeignSource => "vxlan_foreign_source", "decapsulated packets whose inner source is outside the sending peer's pod subnet, routed as flannel.1 does (vxlan_accept = any; with peers they are the drop vxlan_src_outside_subnet)";
        CsumPartial => "csum_partial", "decapsulated TCP/UDP packets whose checksum a kernel peer left partial (CHECKSUM_PARTIAL), taken as such";
        PeerTso => "peer_tso", "decapsulated TCP super-packets over the VXLAN MTU that a kernel peer's TSO left whole (a veth carries them so), passed on as GSO frames at the MTU's MSS";
        HostOversize => "host_oversize", "frames written to the host port over its MTU without GSO metadata: the node's stack cannot forward them (IpFragFails); stays 0";
        HostPunt => "host_punt", "steered packets that matched no service or flow, returned to the host stack";
        CtHitOriginal => "ct_hit_original", "packets of a tracked flow, original direction";
        CtHitReply => "ct_hit_reply", "packets of a tracked flow, reply direction (reverse NAT)";
        CtNew => "ct_new", "flows entered in the connection table";
        CtRaceJoined => "ct_race_joined", "packets of a new flow that found it inserted by a concurrent packet";
        CtPortRemapped => "ct_port_remapped", "new flows whose source port was changed to keep the reply tuple unique";
        CtEarlyDrop => "ct_early_drop", "flows not yet assured (or already closing) evicted to make room for a new one (the kernel's early_drop)";
        CtExpired => "ct_expired", "flows removed by timeout";
        CtPressureDrop => "ct_pressure_drop", "flows not yet assured (or closing) removed by the sweep while the table was over 95% full, once a second past their first (the kernel's gc early drop)";
        CtFlushedEndpoint => "ct_flushed_endpoint", "UDP flows removed because their endpoint was removed";
        CtFlushedPod => "ct_flushed_pod", "flows removed because a pod they involve was removed";
        ServiceDnat => "service_dnat", "new flows DNATed to a service endpoint";
        ServiceMasquerade => "service_masquerade", "new service flows masqueraded (KUBE-MARK-MASQ)";
        EgressMasquerade => "egress_masquerade", "new pod flows leaving the cluster masqueraded to the node IP";
        ServiceReject => "service_reject", "new flows to a service without endpoints, refused (ICMP port unreachable, as kube-proxy's REJECT)";
        IcmpErrorTranslated => "icmp_error_translated", "ICMP errors about a NATed flow, translated";
        IcmpTimeExceededSent => "icmp_time_exceeded_sent", "ICMP time exceeded sent";
        IcmpFragNeededSent => "icmp_frag_needed_sent", "ICMP fragmentation needed sent (DF packet over the VXLAN MTU)";
        IcmpUnreachableSent => "icmp_unreachable_sent", "ICMP destination/port unreachable sent";
        GsoSegmented => "gso_segmented", "TCP super-packets segmented in userspace";
        GroCoalesced => "gro_coalesced", "TCP segments coalesced into a super-packet towards a pod";
        RunReplayed => "run_replayed", "decapsulated frames decided by replaying the decision of the frame before them in their receive batch (same flow, only lengths, IDs, sequence numbers and checksums differ)";
        FragmentHeld => "fragment_held", "IP fragments held for reassembly (nf_defrag: every fragment is reassembled before NAT)";
        FragmentReassembled => "fragment_reassembled", "IP datagrams reassembled from their fragments, then NATed and routed whole";
        Fragmented => "fragmented", "IP datagrams fragmented on the way out (at the egress MTU or the largest fragment received)";
        ZerocopyDone => "zerocopy_done", "VXLAN sends with MSG_ZEROCOPY whose buffers the kernel released (zerocopy = true)";
        ZerocopyCopied => "zerocopy_copied", "MSG_ZEROCOPY sends the kernel copied anyway (SO_EE_CODE_ZEROCOPY_COPIED)";
        ZerocopyTimeout => "zerocopy_timeout", "flushes that stopped waiting for MSG_ZEROCOPY completions after 100 ms";
        ServiceAffinityHit => "service_affinity_hit", "new service flows sent to the client's endpoint by session affinity (sessionAffinity: ClientIP)";
        ServiceAffinityFull => "service_affinity_full", "new session-affinity choices not kept: the affinity table is at its bound";
        PolicyTracked => "policy_tracked", "new flows tracked (not NATed) because they touch a local pod with network policy";
        PolicyCut => "policy_cut", "flows cut because a policy change denies them (their packets are then dropped as policy_ingress / policy_egress)";
        PolicyLogged => "policy_logged", "records of Log rules queued for the log (one per new flow and Log rule)";
    }
);

named_enum!(
    /// Every reason a packet is dropped.
    DropReason {
        EthTruncated => "eth_truncated", "frame shorter than an Ethernet header";
        EthNotForUs => "eth_not_for_us", "unicast frame to a MAC that is not the host side";
        EthertypeUnsupported => "ethertype_unsupported", "neither IPv4 nor ARP";
        Ipv6Unsupported => "ipv6_unsupported", "IPv6 (ucanal is IPv4-only, as the lab)";
        ArpMalformed => "arp_malformed", "ARP that is not a well-formed Ethernet/IPv4 packet";
        ArpIgnored => "arp_ignored", "ARP replies, gratuitous ARP and probes (nothing to answer)";
        ArpSpoofed => "arp_spoofed", "ARP from a pod with a sender IP that is not the pod's";
        Ipv4Malformed => "ipv4_malformed", "IPv4 header fails its length/version checks";
        Ipv4BadChecksum => "ipv4_bad_checksum", "IPv4 header checksum wrong";
        Ipv4Martian => "ipv4_martian", "source or destination that is never valid (0/8, 127/8, multicast source, broadcast)";
        SpoofedSource => "spoofed_source", "pod sent with a source IP that is not its own (Calico RPF check)";
        L4Malformed => "l4_malformed", "TCP/UDP/ICMP header truncated or inconsistent";
        TtlExceeded => "ttl_exceeded", "TTL ran out here (ICMP time exceeded sent)";
        NoRoute => "no_route", "destination inside the cluster with no route (no pod, no peer subnet)";
        NoNeighbour => "no_neighbour", "peer route without a neighbour entry (never flooded)";
        NoFdb => "no_fdb", "neighbour MAC without an FDB entry (never flooded)";
        TooBig => "too_big", "DF packet over the VXLAN MTU (ICMP fragmentation needed sent)";
        VxlanMalformed => "vxlan_malformed", "datagram too short for a VXLAN header, or flags/reserved bits wrong";
        VxlanBadVni => "vxlan_bad_vni", "VNI is not this node's";
        VxlanUnknownPeer => "vxlan_unknown_peer", "datagram from an address with no FDB entry (vxlan_accept = peers)";
        VxlanInnerMalformed => "vxlan_inner_malformed", "inner frame truncated or not IPv4";
        VxlanInnerDmac => "vxlan_inner_dmac", "inner destination MAC is not this VTEP's (the kernel drops it as PACKET_OTHERHOST)";
        VxlanLoop => "vxlan_loop", "inner source MAC is this VTEP's own (the kernel's vxlan driver drops it as a loop)";
        VxlanFdbMismatch => "vxlan_fdb_mismatch", "inner source MAC does not belong to the sending peer (vxlan_accept = peers)";
        VxlanSrcOutsideSubnet => "vxlan_src_outside_subnet", "inner source outside the sending peer's pod subnet (vxlan_accept = peers)";
        VxlanNotLocal => "vxlan_not_local", "inner destination is not on this node (vxlan_accept = peers: no transit)";
        FragmentOverlap => "fragment_overlap", "fragment overlapping one held, or disagreeing about the length (an exact duplicate is dropped alone, else its whole datagram)";
        FragmentTimeout => "fragment_timeout", "datagrams whose fragments did not all arrive within 30 s (ipfrag_time), dropped";
        FragmentLimit => "fragment_limit", "fragment refused: reassembly datagram, memory or fragment-count limit reached";
        FragmentMalformed => "fragment_malformed", "fragment that cannot be reassembled (past 65 535 bytes, or not a multiple of 8 bytes before the last)";
        CtInvalid => "ct_invalid", "TCP packet that cannot start a tracked flow (conntrack INVALID)";
        CtFull => "ct_full", "new flow refused: the connection table is at its maximum";
        SnatExhausted => "snat_exhausted", "no free source port for masquerade";
        NoService => "no_service", "packet to a cluster IP on a port or protocol no service has (ICMP port unreachable sent)";
        ServiceNoEndpoints => "service_no_endpoints", "new flow to a service without endpoints (refused)";
        HostLoop => "host_loop", "packet from the host port that would go back to it";
        PortGone => "port_gone", "the destination port was removed while the packet was in flight";
        TxError => "tx_error", "the kernel refused to send the packet";
        GsoUnsupported => "gso_unsupported", "super-packet of a kind ucanal does not segment";
        NoLocalEndpoint => "no_local_endpoint", "new flow whose traffic policy is Local (externalTrafficPolicy from outside, internalTrafficPolicy) with no endpoint on this node";
        LbSourceRange => "lb_source_range", "new flow to a load-balancer IP from a source outside its loadBalancerSourceRanges";
        UnallocatedClusterIp => "unallocated_cluster_ip", "packet to an address of the service CIDR that no service has";
        PolicyIngress => "policy_ingress", "new flow (or a cut flow's packet) denied by the receiving pod's ingress policy (cali-tw-*)";
        PolicyEgress => "policy_egress", "new flow (or a cut flow's packet) denied by the sending pod's egress policy (cali-fw-*)";
        PolicyUncomputable => "policy_uncomputable", "new flow whose policy verdict cannot be computed (policy not yet in sync, or a TCP connection not seen from its start that the policy allows one way only): dropped, never let through";
    }
);

const SLOTS: usize = Counter::COUNT + DropReason::COUNT;

#[repr(align(64))]
struct Block([AtomicU64; SLOTS]);

/// Counters for `workers` writers, plus one slot for the control plane.
pub struct Counters {
    blocks: Box<[Block]>,
}

impl Counters {
    pub fn new(workers: usize) -> Self {
        let blocks = (0..workers.max(1)).map(|_| Block(std::array::from_fn(|_| AtomicU64::new(0)))).collect();
        Counters { blocks }
    }
    pub fn workers(&self) -> usize {
        self.blocks.len()
    }
    #[inline]
    fn bump(&self, worker: usize, slot: usize, n: u64) {
        // Heads up: only worker `worker` writes its block, so load+store is not a lost
        // update; it avoids a locked instruction per packet.
        let c = &self.blocks[worker % self.blocks.len()].0[slot];
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub fn inc(&self, worker: usize, c: Counter) {
        self.bump(worker, c as usize, 1);
    }
    #[inline]
    pub fn add(&self, worker: usize, c: Counter, n: u64) {
        self.bump(worker, c as usize, n);
    }
    #[inline]
    pub fn drop(&self, worker: usize, d: DropReason) {
        self.bump(worker, Counter::COUNT + d as usize, 1);
    }
    pub fn get(&self, c: Counter) -> u64 {
        self.sum(c as usize)
    }
    pub fn dropped(&self, d: DropReason) -> u64 {
        self.sum(Counter::COUNT + d as usize)
    }
    fn sum(&self, slot: usize) -> u64 {
        self.blocks.iter().map(|b| b.0[slot].load(Relaxed)).sum()
    }
    /// Every counter with its name, decisions first, zeros included.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut v: Vec<_> = Counter::ALL.iter().map(|c| ("decision", c.name(), self.get(*c))).collect();
        v.extend(DropReason::ALL.iter().map(|d| ("drop", d.name(), self.dropped(*d))));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_snake_case() {
        let mut names: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.extend(DropReason::ALL.iter().map(|d| d.name()));
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(n, names.len());
        assert!(names.iter().all(|s| s.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())));
    }

    #[test]
    fn sums_across_workers() {
        let c = Counters::new(3);
        c.inc(0, Counter::RxPod);
        c.inc(2, Counter::RxPod);
        c.add(1, Counter::RxPod, 5);
        c.drop(1, DropReason::NoFdb);
        assert_eq!(c.get(Counter::RxPod), 7);
        assert_eq!(c.dropped(DropReason::NoFdb), 1);
        assert_eq!(c.dropped(DropReason::NoRoute), 0);
    }
}
