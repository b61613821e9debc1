//! Packets ucanal answers with instead of forwarding: ICMP errors (RFC 792,
//! RFC 1812 §4.3.2) and the TCP RST of a refused connection (RFC 793 §3.4).
//!
//! Both are built in place. An ICMP error quotes the offending IP packet, which is
//! already in the buffer right after its Ethernet header; the new Ethernet + IPv4 +
//! ICMP headers (42 bytes) are written into the 28 bytes of headroom before the old
//! Ethernet header plus the old header itself, so the quote is never copied.

use std::net::Ipv4Addr;

use super::Packet;
use crate::wire::MacAddr;
use crate::wire::ethernet::{self, ETHERTYPE_IPV4};
use crate::wire::icmp::{self, ErrorRepr};
use crate::wire::ipv4::{self, Ipv4Repr, PROTO_TCP};
use crate::wire::tcp::{self, ACK as TCP_ACK, FIN as TCP_FIN, RST as TCP_RST, SYN as TCP_SYN, TcpPacket, TcpRepr};

const NEW_HEADERS: usize = ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + icmp::HEADER_LEN;
const GROWTH: usize = NEW_HEADERS - ethernet::HEADER_LEN;

/// True when an ICMP error may be sent about this IPv4 packet (RFC 1122 §3.2.2): never
/// about an ICMP error, a non-first fragment, or a non-unicast/unspecified source.
pub fn may_send_error_about(ip: &[u8]) -> bool {
    let Ok(p) = ipv4::Ipv4Packet::new_checked(ip) else { return false };
    if !p.has_l4_header() {
        return false;
    }
    let src = p.src();
    if src.is_unspecified() || src.is_broadcast() || src.is_multicast() || src.is_loopback() {
        return false;
    }
    if p.protocol() == ipv4::PROTO_ICMP {
        return p.payload().first().is_some_and(|t| !icmp::is_error(*t));
    }
    true
}

/// Replaces the frame in `pkt` (Ethernet + the offending IPv4 packet) with an ICMP error
/// from `src` to the offending packet's source. MACs are left for the caller's route.
/// Returns false (packet untouched) when there is not enough headroom.
pub fn icmp_error(pkt: &mut Packet, src: Ipv4Addr, repr: ErrorRepr) -> bool {
    if pkt.headroom() < GROWTH || pkt.len() < ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN {
        return false;
    }
    let ip_start = pkt.start() + ethernet::HEADER_LEN;
    let ip_len = pkt.len() - ethernet::HEADER_LEN;
    let quote = ip_len.min(icmp::MAX_ERROR_LEN - ipv4::MIN_HEADER_LEN - icmp::HEADER_LEN);
    let new_start = ip_start - NEW_HEADERS;
    let buf = pkt.buffer_mut();
    let (orig_src, _) = ipv4::addrs(&buf[ip_start..ip_start + ipv4::MIN_HEADER_LEN]);
    let icmp_len = icmp::HEADER_LEN + quote;
    let ip_at = new_start + ethernet::HEADER_LEN;
    Ipv4Repr {
        src,
        dst: orig_src,
        protocol: ipv4::PROTO_ICMP,
        ttl: 64,
        tos: 0xc0,
        ident: 0,
        dont_fragment: false,
        payload_len: icmp_len,
    }
    .emit(&mut buf[ip_at..ip_at + ipv4::MIN_HEADER_LEN]);
    let ic = ip_at + ipv4::MIN_HEADER_LEN;
    repr.emit(&mut buf[ic..ic + icmp_len]);
    ethernet::emit_header(&mut buf[new_start..], MacAddr::ZERO, MacAddr::ZERO, ETHERTYPE_IPV4);
    pkt.set_range(new_start, NEW_HEADERS + quote);
    pkt.offload = Default::default();
    true
}

/// Replaces a TCP segment (Ethernet + IPv4 + TCP) with the RST that refuses it, sent
/// from the segment's destination. Returns false if the segment is not TCP or is a RST.
pub fn tcp_reset(pkt: &mut Packet) -> bool {
    let data = pkt.data();
    let Ok(ip) = ipv4::Ipv4Packet::new_checked(&data[ethernet::HEADER_LEN..]) else { return false };
    if ip.protocol() != PROTO_TCP {
        return false;
    }
    let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else { return false };
    let flags = tcp.flags();
    if flags & TCP_RST != 0 {
        return false;
    }
    let (src, dst) = (ip.src(), ip.dst());
    let seg_len = tcp.payload().len() as u32 + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
    // RFC 793: with an ACK, the RST takes its seq from it; otherwise seq 0 and ACK seq+len.
    let (seq_number, ack_number, flags) = if flags & TCP_ACK != 0 {
        (tcp.ack_number(), 0, TCP_RST)
    } else {
        (0, tcp.seq_number().wrapping_add(seg_len), TCP_RST | TCP_ACK)
    };
    let rst = TcpRepr { src_port: tcp.dst_port(), dst_port: tcp.src_port(), seq_number, ack_number, flags, window: 0 };

    let len = ipv4::MIN_HEADER_LEN + tcp::MIN_HEADER_LEN;
    let ipb = &mut pkt.data_mut()[ethernet::HEADER_LEN..ethernet::HEADER_LEN + len];
    Ipv4Repr {
        src: dst,
        dst: src,
        protocol: PROTO_TCP,
        ttl: 64,
        tos: 0,
        ident: 0,
        dont_fragment: true,
        payload_len: tcp::MIN_HEADER_LEN,
    }
    .emit(&mut ipb[..ipv4::MIN_HEADER_LEN]);
    rst.emit(&mut ipb[ipv4::MIN_HEADER_LEN..], dst, src);
    pkt.truncate(ethernet::HEADER_LEN + len);
    pkt.offload = Default::default();
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::HEADROOM;
    use etherparse::PacketBuilder;

    fn syn_frame() -> Vec<u8> {
        let b = PacketBuilder::ethernet2([0x3e, 0x0c, 0x94, 0x46, 0x7b, 0x98], [0xee; 6])
            .ipv4([10, 244, 1, 5], [10, 250, 0, 40], 64)
            .tcp(40000, 2368, 7777, 64240)
            .syn();
        let mut v = vec![0u8; HEADROOM];
        b.write(&mut v, &[]).unwrap();
        v.resize(v.len() + 128, 0);
        v
    }

    #[test]
    fn rst_for_a_syn() {
        let mut v = syn_frame();
        let end = HEADROOM + 14 + 40;
        let mut p = Packet::new(&mut v, HEADROOM, end);
        assert!(tcp_reset(&mut p));
        let d = p.data();
        assert_eq!(d.len(), 54);
        let ip = ipv4::Ipv4Packet::new_checked(&d[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src(), Ipv4Addr::new(10, 250, 0, 40));
        assert_eq!(ip.dst(), Ipv4Addr::new(10, 244, 1, 5));
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.verify_checksum(ip.src(), ip.dst()));
        assert_eq!((t.src_port(), t.dst_port()), (2368, 40000));
        assert_eq!(t.flags(), TCP_RST | TCP_ACK);
        assert_eq!((t.seq_number(), t.ack_number()), (0, 7778));
        // A RST is never answered.
        assert!(!tcp_reset(&mut p));
    }

    #[test]
    fn icmp_error_built_around_the_quote() {
        let mut v = syn_frame();
        let end = HEADROOM + 14 + 40;
        let mut p = Packet::new(&mut v, HEADROOM, end);
        assert!(may_send_error_about(&p.data()[14..]));
        assert!(icmp_error(&mut p, Ipv4Addr::new(172, 16, 240, 131), ErrorRepr::ttl_exceeded()));
        let d = p.data().to_vec();
        assert_eq!(d.len(), 14 + 20 + 8 + 40);
        let ip = ipv4::Ipv4Packet::new_checked(&d[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.dst(), Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(icmp::type_code(&d[14..]), Some((11, 0)));
        assert!(icmp::IcmpPacket::new_checked(ip.payload()).unwrap().verify_checksum());
        let e = icmp::embedded(ip.payload()).unwrap();
        assert_eq!((e.dst, e.ports.dport), (Ipv4Addr::new(10, 250, 0, 40), 2368));
        // Never an error about an error.
        assert!(!may_send_error_about(&d[14..]));
    }

    #[test]
    fn no_headroom_no_error() {
        let mut v = syn_frame();
        let mut p = Packet::new(&mut v[HEADROOM - 10..], 10, 10 + 54);
        assert!(!icmp_error(&mut p, Ipv4Addr::new(172, 16, 240, 131), ErrorRepr::ttl_exceeded()));
        assert_eq!(p.len(), 54);
    }
}
