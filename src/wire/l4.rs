//! TCP (RFC 793), UDP (RFC 768) and ICMP echo (RFC 792) as NAT sees them: the ports
//! of a flow, and rewrites of an address and port that keep every checksum valid. The
//! headers themselves are the views of `tcp`, `udp` and `icmp`.
//!
//! Heads up: ICMP echo has one identifier, not two ports. ucanal's flow tuple puts the
//! identifier in the source-port slot of a request and the destination-port slot of a
//! reply (the other slot is 0), so a request's reply tuple is exactly the tuple of its
//! echo reply, and "rewrite the source port" of a request rewrites its identifier.

use std::net::Ipv4Addr;

use super::checksum;
use super::icmp::{self, IcmpPacket};
use super::ipv4::{self, Ipv4Packet, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use super::tcp::{self, TcpPacket};
use super::udp::{self, UdpPacket};
use super::{WireError, put16};

pub(crate) use super::be16;
pub use super::ports::{End, EndRewrite, L4Ports, Ports};
pub use super::tcp::MIN_HEADER_LEN as TCP_MIN_HEADER_LEN;
pub use super::tcp::{ACK as TCP_ACK, FIN as TCP_FIN, PSH as TCP_PSH, RST as TCP_RST, SYN as TCP_SYN};
pub use super::udp::HEADER_LEN as UDP_HEADER_LEN;

/// Reads ports (or the echo identifier) of an unfragmented or first-fragment payload.
/// ICMP errors are not flows and are reported as `Malformed` here; `icmp::embedded`
/// handles them.
pub fn ports(protocol: u8, l4: &[u8]) -> Result<L4Ports, WireError> {
    match protocol {
        PROTO_TCP => {
            let t = TcpPacket::new_checked(l4)?;
            Ok(L4Ports { sport: t.src_port(), dport: t.dst_port(), tcp_flags: t.flags() })
        }
        PROTO_UDP => {
            let u = UdpPacket::new_checked(l4)?;
            Ok(L4Ports { sport: u.src_port(), dport: u.dst_port(), tcp_flags: 0 })
        }
        PROTO_ICMP => IcmpPacket::new_checked(l4)?
            .echo_ports()
            .ok_or(WireError::Malformed { what: "icmp", why: "not an echo message" }),
        _ => Err(WireError::Malformed { what: "ipv4", why: "protocol without ports" }),
    }
}

/// Rewrites one end (address and port) of an IPv4 packet whose L4 header is present,
/// fixing the IPv4 header checksum and the L4 checksum incrementally. A packet that
/// does not parse is left as it is.
///
/// `csum_partial` says the L4 checksum field holds only the pseudo-header sum (see
/// `EndRewrite`).
pub fn rewrite(packet: &mut [u8], end: End, addr: Ipv4Addr, port: u16, csum_partial: bool) {
    if let Ok(mut ip) = Ipv4Packet::new_checked(packet) {
        rewrite_end(&mut ip, end, addr, port, csum_partial);
    }
}

/// Both ends of a NAT rewrite (an established flow's packets): the bytes `rewrite` of the
/// source and then of the destination would leave, with one checksum update each for
/// the IPv4 header and the L4 header instead of three. (Ones' complement updates chain:
/// folding after each term or once at the end gives the same field, zero included, as
/// the tests check against `rewrite`.) TCP and UDP with their whole header; anything
/// else goes through `rewrite` twice.
pub fn rewrite_both(packet: &mut [u8], src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), csum_partial: bool) {
    let Ok(ip) = Ipv4Packet::new_checked(&*packet) else { return };
    let (hl, l4_len) = (ip.header_len(), ip.total_len() - ip.header_len());
    let (csum_at, zero_is_none) = match ip.protocol() {
        PROTO_TCP if l4_len >= tcp::MIN_HEADER_LEN => (tcp::field::CHECKSUM, false),
        PROTO_UDP if l4_len >= udp::HEADER_LEN => (udp::field::CHECKSUM, true),
        _ => {
            rewrite(packet, End::Src, src.0, src.1, csum_partial);
            rewrite(packet, End::Dst, dst.0, dst.1, csum_partial);
            return;
        }
    };
    let words = |a: [u8; 4]| u64::from(u16::from_be_bytes([a[0], a[1]])) + u64::from(u16::from_be_bytes([a[2], a[3]]));
    let not_words =
        |a: [u8; 4]| u64::from(!u16::from_be_bytes([a[0], a[1]])) + u64::from(!u16::from_be_bytes([a[2], a[3]]));
    let (old_src, old_dst) = (ip.src().octets(), ip.dst().octets());
    let (new_src, new_dst) = (src.0.octets(), dst.0.octets());
    // The IPv4 header checksum: only addresses that change (as `set_src` / `set_dst`).
    let mut acc = u64::from(!be16(packet, ipv4::field::CHECKSUM));
    let mut moved = false;
    for (at, old, new) in [(ipv4::field::SRC, old_src, new_src), (ipv4::field::DST, old_dst, new_dst)] {
        if old != new {
            acc += not_words(old) + words(new);
            packet[at..at + 4].copy_from_slice(&new);
            moved = true;
        }
    }
    if moved {
        put16(packet, ipv4::field::CHECKSUM, !checksum::fold(acc));
    }
    // The L4 checksum: both addresses through the pseudo header, and both ports unless
    // the field is partial (see `EndRewrite::apply`).
    let l4 = &mut packet[hl..];
    let c = be16(l4, csum_at);
    if !(zero_is_none && c == 0) {
        let addrs = not_words(old_src) + words(new_src) + not_words(old_dst) + words(new_dst);
        let c = if csum_partial {
            checksum::fold(u64::from(c) + addrs)
        } else {
            let ports = u64::from(!be16(l4, tcp::field::SRC_PORT))
                + u64::from(src.1)
                + u64::from(!be16(l4, tcp::field::DST_PORT))
                + u64::from(dst.1);
            match !checksum::fold(u64::from(!c) + addrs + ports) {
                0 if zero_is_none => 0xffff,
                c => c,
            }
        };
        put16(l4, csum_at, c);
    }
    put16(l4, tcp::field::SRC_PORT, src.1);
    put16(l4, tcp::field::DST_PORT, dst.1);
}

/// One end of a NAT rewrite of a parsed packet (also a packet quoted in an ICMP error):
/// the address, with the IPv4 header checksum, and the port or echo identifier, with
/// the L4 checksum when the L4 header holds one (a TCP header quoted short of its 20
/// bytes has only its ports rewritten, as netfilter's `tcp_manip_pkt` does).
pub(crate) fn rewrite_end<T: AsRef<[u8]> + AsMut<[u8]>>(
    ip: &mut Ipv4Packet<T>,
    end: End,
    addr: Ipv4Addr,
    port: u16,
    csum_partial: bool,
) {
    let old_addr = match end {
        End::Src => ip.src(),
        End::Dst => ip.dst(),
    };
    match end {
        End::Src => ip.set_src(addr),
        End::Dst => ip.set_dst(addr),
    }
    let protocol = ip.protocol();
    let r = EndRewrite { end, old_addr, new_addr: addr, port, csum_partial };
    let l4 = ip.payload_mut();
    match protocol {
        PROTO_TCP => match TcpPacket::new_quoted(&mut *l4) {
            Ok(mut t) => t.nat(&r),
            Err(_) => {
                if let Ok(mut p) = Ports::new_checked(l4) {
                    p.set(end, port);
                }
            }
        },
        PROTO_UDP => {
            if let Ok(mut u) = UdpPacket::new_quoted(l4) {
                u.nat(&r);
            }
        }
        PROTO_ICMP => {
            // Only the identifier is a "port"; the ICMP checksum has no pseudo header.
            if let Ok(mut i) = IcmpPacket::new_checked(l4) {
                i.nat(end, port);
            }
        }
        _ => {}
    }
}

/// Rewrites one end of the packet quoted in an ICMP error (`icmp` starts at the ICMP
/// header), keeping the quoted IPv4 header checksum valid. The quoted L4 checksum is
/// fixed when it was quoted (TCP: the whole 20-byte header, as netfilter's
/// `tcp_manip_pkt`). The ICMP checksum is left stale: call `fill_checksum` once after
/// all rewrites. A quote that does not parse (see `embedded`) is left as it is.
pub fn rewrite_embedded(icmp: &mut [u8], end: End, addr: Ipv4Addr, port: u16) {
    if icmp::quoted(icmp).is_err() {
        return;
    }
    if let Ok(mut ip) = Ipv4Packet::new_quoted(&mut icmp[icmp::HEADER_LEN..]) {
        rewrite_end(&mut ip, end, addr, port, false);
    }
}

/// Completes a partial TCP/UDP checksum (offload `NEEDS_CSUM`): the field holds the
/// pseudo-header sum; the result covers the whole L4 segment.
pub fn finish_partial_checksum(packet: &mut [u8]) {
    let Ok(mut ip) = Ipv4Packet::new_checked(packet) else { return };
    let protocol = ip.protocol();
    let l4 = ip.payload_mut();
    let (coff, zero_is_none) = match protocol {
        PROTO_TCP => (tcp::field::CHECKSUM, false),
        PROTO_UDP => (udp::field::CHECKSUM, true),
        _ => return,
    };
    if l4.len() < coff + 2 {
        return;
    }
    let mut c = !checksum::fold(checksum::sum(l4, 0));
    if zero_is_none && c == 0 {
        c = 0xffff;
    }
    put16(l4, coff, c);
}

/// Computes and writes the full TCP/UDP checksum of a packet built by ucanal.
pub fn fill_checksum(packet: &mut [u8]) {
    let Ok(mut ip) = Ipv4Packet::new_checked(packet) else { return };
    let (src, dst, protocol) = (ip.src(), ip.dst(), ip.protocol());
    let l4 = ip.payload_mut();
    match protocol {
        PROTO_TCP => {
            if let Ok(mut t) = TcpPacket::new_quoted(l4) {
                t.fill_checksum(src, dst);
            }
        }
        PROTO_UDP => {
            if let Ok(mut u) = UdpPacket::new_quoted(l4) {
                u.fill_checksum(src, dst);
            }
        }
        _ => {}
    }
}

/// Verifies a TCP/UDP checksum (UDP checksum 0 means "none" and passes).
pub fn verify_checksum(packet: &[u8]) -> bool {
    let Ok(ip) = Ipv4Packet::new_checked(packet) else { return false };
    let (src, dst, l4) = (ip.src(), ip.dst(), ip.payload());
    match ip.protocol() {
        PROTO_TCP => TcpPacket::new_quoted(l4).is_ok_and(|t| t.verify_checksum(src, dst)),
        PROTO_UDP => UdpPacket::new_quoted(l4).is_ok_and(|u| u.verify_checksum(src, dst)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// `rewrite_both` leaves the bytes `rewrite` of each end leaves: TCP and UDP
        /// (complete, partial, UDP without checksum), ICMP echo, short L4 headers, any
        /// addresses and ports, unchanged ones included.
        #[test]
        fn rewrite_both_is_rewrite_of_each_end(
            proto in prop::sample::select(vec![PROTO_TCP, PROTO_UDP, PROTO_ICMP]),
            l4_len in 0usize..48,
            body in proptest::collection::vec(any::<u8>(), 48),
            ends in any::<([u8; 4], u16, [u8; 4], u16)>(),
            keep in any::<(bool, bool)>(),
            csum in any::<u16>(),
            partial in any::<bool>(),
        ) {
            let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0, 10, 244, 0, 74, 172, 16, 240, 1];
            p[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            p.extend_from_slice(&body[..l4_len]);
            Ipv4Packet::new_checked(&mut p[..]).unwrap().fill_checksum();
            let at = if proto == PROTO_UDP { 26 } else { 36 };
            if p.len() >= at + 2 {
                p[at..at + 2].copy_from_slice(&csum.to_be_bytes());
            }
            let (sa, sp, da, dp) = ends;
            let src = (if keep.0 { Ipv4Addr::new(10, 244, 0, 74) } else { Ipv4Addr::from(sa) }, sp);
            let dst = (if keep.1 { Ipv4Addr::new(172, 16, 240, 1) } else { Ipv4Addr::from(da) }, dp);
            let mut a = p.clone();
            rewrite(&mut a, End::Src, src.0, src.1, partial);
            rewrite(&mut a, End::Dst, dst.0, dst.1, partial);
            let mut b = p;
            rewrite_both(&mut b, src, dst, partial);
            prop_assert_eq!(a, b);
        }
    }

    use super::*;
    use etherparse::PacketBuilder;

    fn tcp_syn() -> Vec<u8> {
        let b = PacketBuilder::ipv4([172, 16, 240, 1], [172, 16, 240, 131], 64).tcp(40000, 31266, 1000, 64240).syn();
        let mut out = Vec::new();
        b.write(&mut out, &[]).unwrap();
        out
    }

    fn udp_dns() -> Vec<u8> {
        let b = PacketBuilder::ipv4([10, 244, 1, 5], [10, 250, 0, 10], 64).udp(53000, 53);
        let mut out = Vec::new();
        b.write(&mut out, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00").unwrap();
        out
    }

    #[test]
    fn ports_of_tcp_udp_icmp() {
        let p = tcp_syn();
        let l4 = ports(PROTO_TCP, &p[20..]).unwrap();
        assert_eq!((l4.sport, l4.dport), (40000, 31266));
        assert_eq!(l4.tcp_flags, TCP_SYN);
        let u = udp_dns();
        let l4 = ports(PROTO_UDP, &u[20..]).unwrap();
        assert_eq!((l4.sport, l4.dport), (53000, 53));
        let echo = [8, 0, 0, 0, 0x12, 0x34, 0, 1];
        assert_eq!(ports(PROTO_ICMP, &echo).unwrap().sport, 0x1234);
        let reply = [0, 0, 0, 0, 0x12, 0x34, 0, 1];
        assert_eq!(ports(PROTO_ICMP, &reply).unwrap().dport, 0x1234);
        assert!(ports(PROTO_ICMP, &[3, 3, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(ports(PROTO_TCP, &p[20..30]).is_err());
        let mut bad = u.clone();
        bad[25] = 200; // UDP length beyond the datagram
        assert!(ports(PROTO_UDP, &bad[20..]).is_err());
    }

    #[test]
    fn dnat_and_snat_keep_checksums_valid() {
        let mut p = tcp_syn();
        assert!(verify_checksum(&p));
        rewrite(&mut p, End::Dst, Ipv4Addr::new(10, 244, 0, 74), 2368, false);
        rewrite(&mut p, End::Src, Ipv4Addr::new(10, 244, 1, 0), 40000, false);
        let ip = ipv4::Ipv4Packet::new_checked(&p[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.dst(), Ipv4Addr::new(10, 244, 0, 74));
        assert_eq!(ports(PROTO_TCP, ip.payload()).unwrap().dport, 2368);
        assert!(verify_checksum(&p));

        let mut u = udp_dns();
        rewrite(&mut u, End::Dst, Ipv4Addr::new(10, 244, 0, 74), 5353, false);
        assert!(verify_checksum(&u));
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let mut u = udp_dns();
        u[26] = 0;
        u[27] = 0;
        rewrite(&mut u, End::Src, Ipv4Addr::new(172, 16, 240, 131), 61000, false);
        assert_eq!(&u[26..28], &[0, 0]);
        assert_eq!(ports(PROTO_UDP, &u[20..]).unwrap().sport, 61000);
    }

    #[test]
    fn partial_checksum_follows_the_kernel_rule() {
        // Build the partial form: checksum field = folded pseudo-header sum.
        let mut p = tcp_syn();
        let set_partial = |p: &mut Vec<u8>| {
            let (s, d) = ipv4::addrs(&p[..20]);
            let len = (p.len() - 20) as u16;
            let ps = checksum::fold(checksum::pseudo_header_sum(s.octets(), d.octets(), PROTO_TCP, len));
            p[36..38].copy_from_slice(&ps.to_be_bytes());
        };
        set_partial(&mut p);
        rewrite(&mut p, End::Dst, Ipv4Addr::new(10, 244, 0, 74), 2368, true);
        let mut expect = p.clone();
        set_partial(&mut expect);
        assert_eq!(p[36..38], expect[36..38]);
        finish_partial_checksum(&mut p);
        assert!(verify_checksum(&p));
    }

    #[test]
    fn ports_view_reads_and_writes_the_first_four_bytes() {
        let mut q = [0x9c, 0x40, 0x7a, 0x22, 0, 0, 0x03, 0xe8];
        let mut p = Ports::new_checked(&mut q[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (40000, 31266));
        p.set(End::Dst, 2368);
        p.set(End::Src, 61000);
        assert_eq!(q, [0xee, 0x48, 0x09, 0x40, 0, 0, 0x03, 0xe8]);
        assert!(Ports::new_checked(&q[..3]).is_err());
    }

    #[test]
    fn short_or_malformed_packets_are_left_alone() {
        let p = tcp_syn();
        for n in 0..p.len() {
            let mut cut = p[..n].to_vec();
            rewrite(&mut cut, End::Src, Ipv4Addr::new(10, 244, 1, 0), 1, false);
            finish_partial_checksum(&mut cut);
            fill_checksum(&mut cut);
            assert!(!verify_checksum(&cut));
            assert_eq!(cut, p[..n], "length {n}");
        }
    }

    #[test]
    fn icmp_identifier_is_the_port() {
        let b = PacketBuilder::ipv4([10, 244, 1, 5], [172, 16, 240, 1], 64).icmpv4_echo_request(0x1234, 1);
        let mut p = Vec::new();
        b.write(&mut p, b"abcdefgh").unwrap();
        rewrite(&mut p, End::Src, Ipv4Addr::new(172, 16, 240, 131), 0x4321, false);
        assert_eq!(ports(PROTO_ICMP, &p[20..]).unwrap().sport, 0x4321);
        assert_eq!(checksum::fold(checksum::sum(&p[20..], 0)), 0xffff);
        // A destination rewrite of a request leaves the identifier alone.
        rewrite(&mut p, End::Dst, Ipv4Addr::new(172, 16, 240, 2), 0x9999, false);
        assert_eq!(ports(PROTO_ICMP, &p[20..]).unwrap().sport, 0x4321);
        assert!(ipv4::Ipv4Packet::new_checked(&p[..]).unwrap().verify_checksum());
    }
}
