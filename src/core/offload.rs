//! Checksum offload state of a frame on its way through ucanal: partial checksums as a
//! normal input, and who finishes them.
//!
//! A kernel peer over a veth (default offloads) hands its VXLAN datagrams on with the
//! inner TCP/UDP checksum still `CHECKSUM_PARTIAL`: the field holds the folded
//! pseudo-header sum (`~tcp_v4_check(len, saddr, daddr, 0)`, `udp4_hwcsum`), and the
//! receiving kernel trusts the skb's state rather than the bytes. ucanal reads the
//! bytes from a UDP socket, so it recognises the state the way Wireshark and smoltcp do:
//! a TCP/UDP checksum field equal to the folded pseudo-header sum of its own packet
//! is partial. A field that is anything else is a complete checksum, right or wrong,
//! and is passed on untouched: a wrong one stays wrong, so no receiver takes it as
//! valid.
//!
//! A partial frame keeps its state ([`super::Offload::csum_partial`]) through NAT (the
//! rewrites update a partial field as the kernel's `inet_proto_csum_replace4` does:
//! pseudo-header words only, ports are covered when the sum is finished) and is
//! finished in software where the next hop cannot take it partial:
//!
//! | egress                                  | partial frame leaves as                      |
//! |-----------------------------------------|----------------------------------------------|
//! | a pod's TAP with offloads (`tap_offloads`) | `VIRTIO_NET_HDR_F_NEEDS_CSUM`, csum_start at L4, offset 16 (TCP) / 6 (UDP) |
//! | a pod's TAP without offloads            | finished here (GSO frames stay `NEEDS_CSUM`) |
//! | the host port                           | finished here (GSO frames stay `NEEDS_CSUM`) |
//! | VXLAN                                   | finished here (GSO frames per segment, `gso`) |
//!
//! ## Super-packets from a kernel peer
//!
//! A kernel peer's TCP hands `flannel.1` 64 KB super-packets (TSO); a physical NIC cuts
//! them into MSS-sized segments on the wire, but a veth with its default features
//! (`tx-udp_tnl-segmentation`, `tcp-segmentation-offload`) carries the encapsulated
//! super-packet across whole, and a plain UDP socket receives it as one datagram: its
//! inner IPv4 packet is longer than the VXLAN MTU, its checksum partial, and its segment
//! size (the skb's `gso_size`) lost, since the socket API has no word for it. ucanal takes
//! such a packet as what it is, a GSO frame ([`peer_tso_mss`]): it leaves for the host port
//! and pods with a GSO virtio header (the kernel segments it where it must: the node's
//! stack forwards GSO frames at any egress MTU), and by VXLAN segmented here. Written
//! without one, the node's stack could not forward it out of an uplink of 1500 bytes with
//! DF set (ICMP fragmentation needed to itself, `IpFragFails`), and the flow stalled.
//!
//! Heads up: the sender's real segment size is not in the bytes. The MSS of the VXLAN
//! MTU is the largest the sender's pod could have used (its `eth0` has that MTU); a sender
//! whose MSS is smaller (a peer that advertised less) gets its data resegmented larger,
//! never over the VXLAN MTU.
//!
//! Heads up: one frame in 65 536 with a complete checksum has a field that equals the
//! pseudo-header sum by chance. Taking it as partial is harmless: finishing it writes
//! the same (correct) value, and a pod that receives it as `NEEDS_CSUM` would have
//! accepted it anyway.

use super::Packet;
use crate::wire::checksum;
use crate::wire::ethernet;
use crate::wire::ipv4::{Ipv4Packet, PROTO_TCP, PROTO_UDP};
use crate::wire::l4;
use crate::wire::tcp::TcpPacket;
use crate::wire::udp::UdpPacket;

/// Whether the TCP/UDP checksum of `ip` (an unfragmented IPv4 packet, exactly its
/// total length) holds only the folded pseudo-header sum. UDP's "no checksum" (0) is
/// not partial.
#[inline]
pub fn is_partial(ip: &[u8]) -> bool {
    let Ok(p) = Ipv4Packet::new_checked(ip) else { return false };
    let field = match p.protocol() {
        PROTO_TCP => TcpPacket::new_checked(p.payload()).map(|t| t.checksum()),
        PROTO_UDP => UdpPacket::new_checked(p.payload()).map(|u| u.checksum()),
        _ => return false,
    };
    let Ok(field) = field else { return false };
    let l4_len = (p.total_len() - p.header_len()) as u16;
    field != 0
        && field
            == checksum::fold(checksum::pseudo_header_sum(p.src().octets(), p.dst().octets(), p.protocol(), l4_len))
}

/// The segment size of `ip` (an unfragmented IPv4 packet with a partial checksum, exactly
/// its total length) when it is a TCP super-packet over `mtu`: the MSS at `mtu` with this
/// packet's IP and TCP headers (options included), as the sender's TCP computes its own.
/// `None` for anything else (not TCP, within the MTU, no room for payload at `mtu`).
#[inline]
pub fn peer_tso_mss(ip: &[u8], mtu: u16) -> Option<u16> {
    let p = Ipv4Packet::new_checked(ip).ok()?;
    if p.protocol() != PROTO_TCP || p.is_fragment() || p.total_len() <= usize::from(mtu) {
        return None;
    }
    let tcp = TcpPacket::new_checked(p.payload()).ok()?;
    let mss = usize::from(mtu).checked_sub(p.header_len() + tcp.header_len())?;
    (mss > 0).then_some(mss as u16)
}

/// Finishes a partial checksum of a single (non-GSO) frame in software; a GSO frame
/// is left partial (its segments are finished one by one where it is segmented).
#[inline]
pub fn finish(pkt: &mut Packet) {
    if pkt.offload.csum_partial && pkt.offload.gso_size == 0 {
        l4::finish_partial_checksum(&mut pkt.data_mut()[ethernet::HEADER_LEN..]);
        pkt.offload.csum_partial = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::HEADROOM;
    use etherparse::PacketBuilder;

    /// The SYN-ACK 10.244.0.74:2368 -> 10.244.1.5:40000 with its checksum field as a
    /// kernel with tx checksumming leaves it: the folded pseudo-header sum.
    fn partial_syn_ack() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ipv4([10, 244, 0, 74], [10, 244, 1, 5], 64)
            .tcp(2368, 40000, 7000, 65160)
            .syn()
            .ack(1001)
            .write(&mut v, &[])
            .unwrap();
        let ps = checksum::fold(checksum::pseudo_header_sum([10, 244, 0, 74], [10, 244, 1, 5], PROTO_TCP, 20));
        v[36..38].copy_from_slice(&ps.to_be_bytes());
        v
    }

    #[test]
    fn partial_full_and_corrupt_are_told_apart() {
        let p = partial_syn_ack();
        // 0a f4 + 00 4a + 0a f4 + 01 05 + protocol 6 + length 20 = 17 51: the bytes on the wire.
        assert_eq!(&p[36..38], &[0x17, 0x51]);
        assert!(is_partial(&p));
        let mut full = p.clone();
        l4::finish_partial_checksum(&mut full);
        assert!(l4::verify_checksum(&full));
        assert!(!is_partial(&full));
        let mut corrupt = full.clone();
        corrupt[36] ^= 0x40;
        assert!(!is_partial(&corrupt) && !l4::verify_checksum(&corrupt));
        // UDP: partial, and "no checksum" (0) which is not.
        let mut u = Vec::new();
        PacketBuilder::ipv4([10, 244, 0, 74], [10, 244, 1, 5], 64).udp(53, 40000).write(&mut u, b"answer").unwrap();
        let ps = checksum::fold(checksum::pseudo_header_sum([10, 244, 0, 74], [10, 244, 1, 5], PROTO_UDP, 14));
        u[26..28].copy_from_slice(&ps.to_be_bytes());
        assert!(is_partial(&u));
        u[26..28].copy_from_slice(&[0, 0]);
        assert!(!is_partial(&u));
        // Truncated or not TCP/UDP: never partial, never a panic.
        for n in 0..p.len() {
            assert!(!is_partial(&p[..n]) || n == p.len());
        }
    }

    #[test]
    fn finish_completes_single_frames_only() {
        let ip = partial_syn_ack();
        let mut buf = vec![0u8; HEADROOM + 14 + ip.len()];
        buf[HEADROOM + 12..HEADROOM + 14].copy_from_slice(&[0x08, 0x00]);
        buf[HEADROOM + 14..].copy_from_slice(&ip);
        let len = buf.len();
        let mut pkt = Packet::new(&mut buf, HEADROOM, len);
        pkt.offload.csum_partial = true;
        pkt.offload.gso_size = 1398;
        finish(&mut pkt);
        assert!(pkt.offload.csum_partial, "a GSO frame stays partial");
        pkt.offload.gso_size = 0;
        finish(&mut pkt);
        assert!(!pkt.offload.csum_partial);
        assert!(l4::verify_checksum(&pkt.data()[14..]));
    }
}
