//! The pass-through relay: the ceiling of the TAP + UDP design, for measuring.
//!
//! It moves a node's traffic through the same TAPs, VXLAN sockets, offloads (TSO,
//! userspace GSO, UDP GSO/GRO, GRO toward the pod) and batches as the dataplane, but
//! with no decisions: every IPv4 frame from the one pod is encapsulated to the one
//! peer with fixed headers, and every VXLAN datagram is decapsulated to the one pod.
//! No route, neighbour, FDB, service or conntrack lookup, no NAT, no TTL, no source
//! check. What ucanal costs above this relay is ucanal's; what this relay costs above
//! the kernel's veth path is the design's (the copies across the user/kernel boundary).
//!
//! Only what the design itself needs is kept: the wire gets finished checksums (as
//! from the dataplane), a kernel peer's partial checksum is recognised (`offload`),
//! and the outer source port follows the inner flow so multi-stream traffic spreads
//! over the receiver's sockets as it does with the dataplane. Frames that are not IPv4
//! (ARP) go to the dataplane, so the pod still finds its gateway.

use std::net::Ipv4Addr;

use super::tables::Tables;
use super::{Action, Packet, PortId, offload};
use crate::wire::ethernet::{self, ETHERTYPE_IPV4};
use crate::wire::{MacAddr, vxlan};

/// The fixed headers of a node with exactly one pod and one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay {
    /// The snapshot it was built from (rebuilt when the tables change).
    pub generation: u64,
    vni: u32,
    vtep_mac: MacAddr,
    peer: Ipv4Addr,
    peer_mac: MacAddr,
    pod: PortId,
    pod_mac: MacAddr,
    host_mac: MacAddr,
    hash_seed: u64,
}

/// Why the tables do not describe a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("the relay needs exactly one pod on the node, there are {0}")]
    Pods(usize),
    #[error("the relay needs exactly one peer node, there are {0}")]
    Peers(usize),
}

/// What the relay did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed {
    /// Done: execute this action.
    Done(Action),
    /// Not IPv4 in the expected shape (ARP, a bad VXLAN header): give it to the dataplane.
    Dataplane,
}

impl Relay {
    /// The relay of a node with one pod and one peer.
    pub fn from_tables(t: &Tables) -> Result<Relay, RelayError> {
        let pods = t.pods().count();
        let (1, Some(pod)) = (pods, t.pods().next()) else { return Err(RelayError::Pods(pods)) };
        let [peer] = t.peers.as_slice() else { return Err(RelayError::Peers(t.peers.len())) };
        Ok(Relay {
            generation: t.generation,
            vni: t.node.vni,
            vtep_mac: t.node.vtep_mac,
            peer: peer.public_ip,
            peer_mac: peer.vtep_mac,
            pod: pod.port,
            pod_mac: pod.mac,
            host_mac: t.node.host_mac,
            hash_seed: t.hash_seed,
        })
    }

    /// A frame from the pod: IPv4 leaves to the peer as flannel.1 would send it.
    #[inline]
    pub fn from_pod(&self, pkt: &mut Packet) -> Relayed {
        if !is_ipv4(pkt.data()) {
            return Relayed::Dataplane;
        }
        set_macs(pkt, self.peer_mac, self.vtep_mac);
        offload::finish(pkt);
        let flow_hash = flow_hash(&pkt.data()[ethernet::HEADER_LEN..], self.hash_seed);
        if !pkt.push_front(vxlan::HEADER_LEN) {
            return Relayed::Dataplane;
        }
        vxlan::emit(pkt.data_mut(), self.vni);
        Relayed::Done(Action::ToVtep { remote: self.peer, flow_hash })
    }

    /// A VXLAN datagram: the inner IPv4 frame goes to the pod.
    #[inline]
    pub fn from_vxlan(&self, pkt: &mut Packet) -> Relayed {
        let d = pkt.data();
        if d.len() < vxlan::HEADER_LEN || !is_ipv4(&d[vxlan::HEADER_LEN..]) {
            return Relayed::Dataplane;
        }
        pkt.pull_front(vxlan::HEADER_LEN);
        let ip = &pkt.data()[ethernet::HEADER_LEN..];
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if total < 20 || total > ip.len() {
            return Relayed::Dataplane;
        }
        pkt.truncate(ethernet::HEADER_LEN + total);
        pkt.offload.csum_partial = offload::is_partial(&pkt.data()[ethernet::HEADER_LEN..]);
        set_macs(pkt, self.pod_mac, self.host_mac);
        Relayed::Done(Action::ToPort(self.pod))
    }
}

/// Ethernet + a minimal IPv4 header.
#[inline]
fn is_ipv4(frame: &[u8]) -> bool {
    frame.len() >= ethernet::HEADER_LEN + 20
        && frame[ethernet::field::ETHERTYPE..ethernet::HEADER_LEN] == ETHERTYPE_IPV4.to_be_bytes()
        && frame[ethernet::HEADER_LEN] >> 4 == 4
}

#[inline]
fn set_macs(pkt: &mut Packet, dst: MacAddr, src: MacAddr) {
    let d = pkt.data_mut();
    d[ethernet::field::DST..ethernet::field::SRC].copy_from_slice(&dst.0);
    d[ethernet::field::SRC..ethernet::field::ETHERTYPE].copy_from_slice(&src.0);
}

/// The flow hash of the addresses, protocol and (for an unfragmented packet) the
/// first four bytes of L4, without parsing beyond that: picks the source socket.
#[inline]
fn flow_hash(ip: &[u8], seed: u64) -> u32 {
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let word = |at: usize| ip.get(at..at + 4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let ports = if ip[6] & 0x3f == 0 && ip[7] == 0 { word(hl) } else { 0 };
    let a = (u64::from(word(12)) << 32) | u64::from(word(16));
    let b = (u64::from(ports) << 8) | u64::from(ip[9]);
    let x = super::nat::mix64(a ^ seed) ^ super::nat::mix64(b ^ seed.rotate_left(32));
    (super::nat::mix64(x) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::HEADROOM;
    use crate::core::tables::article::*;
    use etherparse::PacketBuilder;

    fn one_pod_tables() -> Tables {
        let mut pods = pods1();
        pods.truncate(1);
        Tables::build(7, node1(), 0x1234_5678, &pods, &[peer2()], Default::default())
    }

    fn tcp_frame(dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16) -> Vec<u8> {
        let b =
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], dst_mac).ipv4(src, dst, 64).tcp(sport, 5201, 1, 64240).ack(1);
        let mut v = Vec::new();
        b.write(&mut v, b"payload").unwrap();
        v
    }

    #[test]
    fn needs_one_pod_and_one_peer() {
        assert_eq!(Relay::from_tables(&tables1(vec![])), Err(RelayError::Pods(2)));
        let t = Tables::build(1, node1(), 1, &pods1()[..1], &[], Default::default());
        assert_eq!(Relay::from_tables(&t), Err(RelayError::Peers(0)));
        assert_eq!(Relay::from_tables(&one_pod_tables()).unwrap().generation, 7);
    }

    #[test]
    fn encaps_to_the_peer_and_decaps_to_the_pod() {
        let r = Relay::from_tables(&one_pod_tables()).unwrap();
        let f = tcp_frame(MacAddr::CALICO_HOST.0, [10, 244, 1, 5], [10, 244, 0, 74], 40000);
        let mut b = vec![0u8; HEADROOM + f.len()];
        b[HEADROOM..].copy_from_slice(&f);
        let mut p = Packet::new(&mut b, HEADROOM, HEADROOM + f.len());
        let Relayed::Done(Action::ToVtep { remote, .. }) = r.from_pod(&mut p) else { panic!("not encapsulated") };
        assert_eq!(remote, peer2().public_ip);
        let d = p.data().to_vec();
        assert_eq!(d[..8], [0x08, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(d[8..14], peer2().vtep_mac.0);
        assert_eq!(d[14..20], node1().vtep_mac.0);
        assert_eq!(d[22..], f[14..], "the IPv4 packet is untouched");

        // The same datagram arriving at the peer's relay goes to its pod.
        let mut b2 = vec![0u8; HEADROOM + d.len()];
        b2[HEADROOM..].copy_from_slice(&d);
        let mut p2 = Packet::new(&mut b2, HEADROOM, HEADROOM + d.len());
        assert_eq!(r.from_vxlan(&mut p2), Relayed::Done(Action::ToPort(PortId(1))));
        assert_eq!(p2.data()[..6], EP1_MAC.0);
        assert_eq!(p2.data()[6..12], MacAddr::CALICO_HOST.0);
        assert_eq!(p2.data()[12..], f[12..]);
        assert!(!p2.offload.csum_partial);
    }

    #[test]
    fn arp_and_garbage_go_to_the_dataplane() {
        let r = Relay::from_tables(&one_pod_tables()).unwrap();
        let mut arp = vec![0u8; HEADROOM + 42];
        arp[HEADROOM + 12..HEADROOM + 14].copy_from_slice(&[0x08, 0x06]);
        let mut p = Packet::new(&mut arp, HEADROOM, HEADROOM + 42);
        assert_eq!(r.from_pod(&mut p), Relayed::Dataplane);
        let mut short = vec![0u8; HEADROOM + 10];
        let mut p = Packet::new(&mut short, HEADROOM, HEADROOM + 10);
        assert_eq!(r.from_vxlan(&mut p), Relayed::Dataplane);
    }

    #[test]
    fn flows_spread_over_sockets() {
        let r = Relay::from_tables(&one_pod_tables()).unwrap();
        let mut seen = std::collections::HashSet::new();
        for sport in 40000..40016 {
            let f = tcp_frame(MacAddr::CALICO_HOST.0, [10, 244, 1, 5], [10, 244, 0, 74], sport);
            let mut b = vec![0u8; HEADROOM + f.len()];
            b[HEADROOM..].copy_from_slice(&f);
            let mut p = Packet::new(&mut b, HEADROOM, HEADROOM + f.len());
            if let Relayed::Done(Action::ToVtep { flow_hash, .. }) = r.from_pod(&mut p) {
                seen.insert(crate::core::vxlan::source_index(flow_hash, 16));
            }
        }
        assert!(seen.len() >= 6, "16 flows on {} of 16 sockets", seen.len());
    }
}
