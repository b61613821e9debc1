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
//! | a pod's TAP without offloads            | finished here                                |
//! | the host port                           | finished here (GSO frames stay `NEEDS_CSUM`) |
//! | VXLAN                                   | finished here (GSO frames per segment, `gso`) |
//!
//! Heads up: one frame in 65 536 with a complete checksum has a field that equals the
//! pseudo-header sum by chance. Taking it as partial is harmless: finishing it writes
//! the same (correct) value, and a pod that receives it as `NEEDS_CSUM` would have
//! accepted it anyway.

use super::Packet;
use crate::wire::checksum;
use crate::wire::ethernet;
use crate::wire::ipv4::{PROTO_TCP, PROTO_UDP};
use crate::wire::l4;

/// Offset of the checksum field in a TCP / UDP header.
const TCP_CHECK: usize = 16;
const UDP_CHECK: usize = 6;

/// Whether the TCP/UDP checksum of `ip` (an unfragmented IPv4 packet, exactly its
/// total length, whose L4 header has been checked to be present) holds only the folded
/// pseudo-header sum. UDP's "no checksum" (0) is not partial.
#[inline]
pub fn is_partial(ip: &[u8]) -> bool {
    if ip.len() < 20 {
        return false;
    }
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let at = match ip[9] {
        PROTO_TCP => hl + TCP_CHECK,
        PROTO_UDP => hl + UDP_CHECK,
        _ => return false,
    };
    if ip.len() < at + 2 || hl < 20 {
        return false;
    }
    let field = l4::be16(ip, at);
    if field == 0 {
        return false;
    }
    let src: [u8; 4] = [ip[12], ip[13], ip[14], ip[15]];
    let dst: [u8; 4] = [ip[16], ip[17], ip[18], ip[19]];
    let l4_len = (ip.len() - hl) as u16;
    field == checksum::fold(checksum::pseudo_header_sum(src, dst, ip[9], l4_len))
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
