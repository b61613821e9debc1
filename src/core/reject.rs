//! Packets ucanal answers with instead of forwarding: ICMP errors (RFC 792,
//! RFC 1812 §4.3.2) and the TCP RST of a refused connection (RFC 793 §3.4).
//!
//! Both are built in place. An ICMP error quotes the offending IP packet, which is
//! already in the buffer right after its Ethernet header; the new Ethernet + IPv4 +
//! ICMP headers (42 bytes) are written into the 28 bytes of headroom before the old
//! Ethernet header plus the old header itself, so the quote is never copied.

use std::net::Ipv4Addr;

use super::Packet;
use crate::wire::ethernet::{self, ETHERTYPE_IPV4};
use crate::wire::icmp::{self, ErrorRepr};
use crate::wire::ipv4::{self, Ipv4Repr, PROTO_TCP};
use crate::wire::l4::{self, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::wire::{MacAddr, checksum};

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
    buf[ic] = repr.icmp_type;
    buf[ic + 1] = repr.code;
    buf[ic + 2..ic + 4].copy_from_slice(&[0, 0]);
    buf[ic + 4..ic + 8].copy_from_slice(&repr.rest.to_be_bytes());
    let c = checksum::checksum(&buf[ic..ic + icmp_len]);
    buf[ic + 2..ic + 4].copy_from_slice(&c.to_be_bytes());
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
    if ip.protocol() != PROTO_TCP || ip.payload().len() < l4::TCP_MIN_HEADER_LEN {
        return false;
    }
    let tcp = ip.payload();
    let flags = tcp[13];
    if flags & TCP_RST != 0 {
        return false;
    }
    let (src, dst) = (ip.src(), ip.dst());
    let (sport, dport) = (l4::be16(tcp, 0), l4::be16(tcp, 2));
    let seq = u32::from_be_bytes(tcp[4..8].try_into().unwrap());
    let ack = u32::from_be_bytes(tcp[8..12].try_into().unwrap());
    let data_off = usize::from(tcp[12] >> 4) * 4;
    let seg_len =
        tcp.len().saturating_sub(data_off) as u32 + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
    // RFC 793: with an ACK, the RST takes its seq from it; otherwise seq 0 and ACK seq+len.
    let (r_seq, r_ack, r_flags) =
        if flags & TCP_ACK != 0 { (ack, 0, TCP_RST) } else { (0, seq.wrapping_add(seg_len), TCP_RST | TCP_ACK) };

    let buf = pkt.data_mut();
    let ipb = &mut buf[ethernet::HEADER_LEN..ethernet::HEADER_LEN + 40];
    Ipv4Repr {
        src: dst,
        dst: src,
        protocol: PROTO_TCP,
        ttl: 64,
        tos: 0,
        ident: 0,
        dont_fragment: true,
        payload_len: 20,
    }
    .emit(&mut ipb[..20]);
    let t = &mut ipb[20..40];
    t[0..2].copy_from_slice(&dport.to_be_bytes());
    t[2..4].copy_from_slice(&sport.to_be_bytes());
    t[4..8].copy_from_slice(&r_seq.to_be_bytes());
    t[8..12].copy_from_slice(&r_ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = r_flags;
    t[14..20].copy_from_slice(&[0; 6]);
    l4::fill_checksum(ipb);
    pkt.truncate(ethernet::HEADER_LEN + 40);
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
        assert!(l4::verify_checksum(&d[14..]));
        let t = ip.payload();
        assert_eq!((l4::be16(t, 0), l4::be16(t, 2)), (2368, 40000));
        assert_eq!(t[13], TCP_RST | TCP_ACK);
        assert_eq!(u32::from_be_bytes(t[8..12].try_into().unwrap()), 7778);
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
        assert_eq!(checksum::fold(checksum::sum(ip.payload(), 0)), 0xffff);
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
