//! Packets ucanal answers with instead of forwarding: ICMP errors (RFC 792,
//! RFC 1812 §4.3.2), among them the port unreachable with which a service without
//! endpoints refuses TCP and UDP alike, as kube-proxy's REJECT.
//!
//! Errors are built in place. An ICMP error quotes the offending IP packet, which is
//! already in the buffer right after its Ethernet header; the new Ethernet + IPv4 +
//! ICMP headers (42 bytes) are written into the 28 bytes of headroom before the old
//! Ethernet header plus the old header itself, so the quote is never copied.

use std::net::Ipv4Addr;

use super::Packet;
use crate::wire::ethernet::{self, ETHERTYPE_IPV4};
use crate::wire::icmp::{self, ErrorRepr};
use crate::wire::ipv4::{self, Ipv4Repr};
use crate::wire::{MacAddr, vxlan};

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
    icmp_error_ttl(pkt, src, repr, 64)
}

/// As [`icmp_error`], with the error's own TTL (64 is Linux's default; one more for an
/// error the node's stack forwards once before it leaves, so that it leaves with 64).
pub fn icmp_error_ttl(pkt: &mut Packet, src: Ipv4Addr, repr: ErrorRepr, ttl: u8) -> bool {
    if pkt.len() < ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN {
        return false;
    }
    let ip_len = pkt.len() - ethernet::HEADER_LEN;
    let quote = ip_len.min(icmp::MAX_ERROR_LEN - ipv4::MIN_HEADER_LEN - icmp::HEADER_LEN);
    // In place when the error and a VXLAN header fit above the floor; otherwise (a later
    // frame of a UDP GRO read, whose front is the frame before it) in the spare buffer.
    if pkt.headroom() < GROWTH + vxlan::HEADER_LEN {
        pkt.relocate(ethernet::HEADER_LEN + quote);
    }
    if pkt.headroom() < GROWTH {
        return false;
    }
    let ip_start = pkt.start() + ethernet::HEADER_LEN;
    let new_start = ip_start - NEW_HEADERS;
    let buf = pkt.buffer_mut();
    let (orig_src, _) = ipv4::addrs(&buf[ip_start..ip_start + ipv4::MIN_HEADER_LEN]);
    let icmp_len = icmp::HEADER_LEN + quote;
    let ip_at = new_start + ethernet::HEADER_LEN;
    Ipv4Repr {
        src,
        dst: orig_src,
        protocol: ipv4::PROTO_ICMP,
        ttl,
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

/// Puts back the hop the node's stack spent forwarding a packet into ucanal0 (its TTL
/// one higher, the header checksum updated): a packet addressed to the node itself that
/// the kernel's INPUT would have seen as it arrived. Returns false (packet untouched)
/// for a malformed header or a TTL that cannot go higher.
pub fn undo_host_hop(ip: &mut [u8]) -> bool {
    let Ok(mut p) = ipv4::Ipv4Packet::new_checked(ip) else { return false };
    let Some(ttl) = p.ttl().checked_add(1) else { return false };
    p.set_ttl(ttl);
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
    fn port_unreachable_for_a_syn_as_kube_proxys_reject() {
        // kube-proxy's REJECT answers a SYN with ICMP port unreachable (not a RST): the
        // whole SYN quoted, from the address given, TTL 64, TOS 0xc0.
        let mut v = syn_frame();
        let end = HEADROOM + 14 + 40;
        let syn = v[HEADROOM + 14..end].to_vec();
        let mut p = Packet::new(&mut v, HEADROOM, end);
        assert!(icmp_error(&mut p, Ipv4Addr::new(172, 16, 240, 131), ErrorRepr::port_unreachable()));
        let d = p.data();
        assert_eq!(d.len(), 14 + 20 + 8 + 40);
        assert_eq!(&d[12..14], &[0x08, 0x00]);
        // IPv4: TOS 0xc0, length 68, ID 0, no DF, TTL 64, ICMP.
        assert_eq!(&d[14..24], &[0x45, 0xc0, 0x00, 0x44, 0x00, 0x00, 0x00, 0x00, 0x40, 0x01]);
        let ip = ipv4::Ipv4Packet::new_checked(&d[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src(), ip.dst()), (Ipv4Addr::new(172, 16, 240, 131), Ipv4Addr::new(10, 244, 1, 5)));
        // ICMP 3/3, unused word zero, then the SYN byte for byte.
        assert_eq!(&d[34..36], &[3, 3]);
        assert_eq!(&d[38..42], &[0, 0, 0, 0]);
        assert_eq!(&d[42..], &syn[..]);
        assert!(icmp::IcmpPacket::new_checked(ip.payload()).unwrap().verify_checksum());
    }

    #[test]
    fn an_error_about_a_frame_behind_another_is_built_in_the_spare() {
        // Two frames back to back (as UDP GRO hands them, 8 bytes of VXLAN header in
        // front of the second): the error about the second may not touch the first.
        let syn = syn_frame();
        let frame = &syn[HEADROOM..HEADROOM + 14 + 40];
        let first: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
        let mut v = vec![0u8; HEADROOM];
        v.extend_from_slice(&first);
        v.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 1, 0]);
        v.extend_from_slice(frame);
        let second = HEADROOM + first.len();
        let mut spare = vec![0u8; HEADROOM + 14 + 65_535];
        let mut p = Packet::new(&mut v, second + 8, second + 8 + frame.len()).with_floor(second).with_spare(&mut spare);
        assert_eq!(p.headroom(), 8);
        assert!(icmp_error(&mut p, Ipv4Addr::new(10, 244, 1, 0), ErrorRepr::ttl_exceeded()));
        assert!(p.in_spare());
        let d = p.data();
        assert_eq!(d.len(), 14 + 20 + 8 + 40);
        assert_eq!(icmp::type_code(&d[14..]), Some((11, 0)));
        assert!(ipv4::Ipv4Packet::new_checked(&d[14..]).unwrap().verify_checksum());
        assert_eq!(&d[42..], &frame[14..], "the quote");
        // Room for the VXLAN header in front of it, and the first frame untouched.
        assert!(p.push_front(8));
        assert_eq!(&v[HEADROOM..second], &first[..]);
        // Without a spare buffer there is nowhere to build it: no error, nothing written.
        let mut p = Packet::new(&mut v, second + 8, second + 8 + frame.len()).with_floor(second);
        assert!(!icmp_error(&mut p, Ipv4Addr::new(10, 244, 1, 0), ErrorRepr::ttl_exceeded()));
        assert_eq!(&v[HEADROOM..second], &first[..]);
    }

    #[test]
    fn error_ttl_and_the_host_hop_undone() {
        let mut v = syn_frame();
        let end = HEADROOM + 14 + 40;
        let mut p = Packet::new(&mut v, HEADROOM, end);
        // The SYN as the node's stack forwarded it (TTL 63): the quote shows it as it arrived.
        {
            let ip = &mut p.data_mut()[14..];
            let mut h = ipv4::Ipv4Packet::new_checked(&mut *ip).unwrap();
            h.dec_ttl();
            assert!(undo_host_hop(ip));
            let h = ipv4::Ipv4Packet::new_checked(&*ip).unwrap();
            assert_eq!(h.ttl(), 64);
            assert!(h.verify_checksum());
        }
        assert!(icmp_error_ttl(&mut p, Ipv4Addr::new(172, 16, 240, 131), ErrorRepr::port_unreachable(), 65));
        let d = p.data();
        assert_eq!(d[14 + 8], 65);
        assert!(ipv4::Ipv4Packet::new_checked(&d[14..]).unwrap().verify_checksum());
        assert_eq!(d[42 + 8], 64, "quoted TTL");
        let mut top = [0x45u8, 0, 0, 20, 0, 0, 0, 0, 255, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        assert!(!undo_host_hop(&mut top), "TTL 255 cannot go higher");
        assert_eq!(top[8], 255);
        assert!(!undo_host_hop(&mut [0x45, 0, 0]));
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
