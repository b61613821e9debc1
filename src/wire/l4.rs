//! TCP (RFC 793), UDP (RFC 768) and ICMP echo (RFC 792) as NAT sees them: ports,
//! flags, and rewrites of an address or port that keep every checksum valid.
//!
//! Heads up: ICMP echo has one identifier, not two ports. ucanal's flow tuple puts the
//! identifier in the source-port slot of a request and the destination-port slot of a
//! reply (the other slot is 0), so a request's reply tuple is exactly the tuple of its
//! echo reply, and "rewrite the source port" of a request rewrites its identifier.

use std::net::Ipv4Addr;

use super::checksum;
use super::icmp;
use super::ipv4::{self, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use super::{WireError, need};

pub const TCP_MIN_HEADER_LEN: usize = 20;
pub const UDP_HEADER_LEN: usize = 8;

const SPORT: usize = 0;
const DPORT: usize = 2;
const TCP_FLAGS: usize = 13;
const TCP_CHECKSUM: usize = 16;
const UDP_LEN: usize = 4;
const UDP_CHECKSUM: usize = 6;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// The flow-identifying part of an L4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4Ports {
    pub sport: u16,
    pub dport: u16,
    /// TCP flags; 0 for UDP and ICMP.
    pub tcp_flags: u8,
}

/// Reads ports (or the echo identifier) of an unfragmented or first-fragment payload.
/// ICMP errors are not flows and are reported as `Malformed` here; `icmp::ErrorView`
/// handles them.
pub fn ports(protocol: u8, l4: &[u8]) -> Result<L4Ports, WireError> {
    match protocol {
        PROTO_TCP => {
            need("tcp", TCP_MIN_HEADER_LEN, l4.len())?;
            let off = usize::from(l4[12] >> 4) * 4;
            if off < TCP_MIN_HEADER_LEN || off > l4.len() {
                return Err(WireError::Malformed { what: "tcp", why: "bad data offset" });
            }
            Ok(L4Ports { sport: be16(l4, SPORT), dport: be16(l4, DPORT), tcp_flags: l4[TCP_FLAGS] })
        }
        PROTO_UDP => {
            need("udp", UDP_HEADER_LEN, l4.len())?;
            let len = usize::from(be16(l4, UDP_LEN));
            if len < UDP_HEADER_LEN || len > l4.len() {
                return Err(WireError::Malformed { what: "udp", why: "length field disagrees with IP" });
            }
            Ok(L4Ports { sport: be16(l4, SPORT), dport: be16(l4, DPORT), tcp_flags: 0 })
        }
        PROTO_ICMP => {
            need("icmp", icmp::HEADER_LEN, l4.len())?;
            let id = be16(l4, icmp::IDENT);
            match l4[0] {
                icmp::TYPE_ECHO_REQUEST => Ok(L4Ports { sport: id, dport: 0, tcp_flags: 0 }),
                icmp::TYPE_ECHO_REPLY => Ok(L4Ports { sport: 0, dport: id, tcp_flags: 0 }),
                _ => Err(WireError::Malformed { what: "icmp", why: "not an echo message" }),
            }
        }
        _ => Err(WireError::Malformed { what: "ipv4", why: "protocol without ports" }),
    }
}

/// Which end of the flow a rewrite touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Src,
    Dst,
}

/// Rewrites one end (address and port) of an IPv4 packet whose L4 header is present,
/// fixing the IPv4 header checksum and the L4 checksum incrementally.
///
/// `csum_partial` says the L4 checksum field holds only the pseudo-header sum (a pod
/// sent with checksum offload): then the pseudo-header part is updated the way the
/// kernel updates a CHECKSUM_PARTIAL field, and port changes need no update.
pub fn rewrite(packet: &mut [u8], end: End, addr: Ipv4Addr, port: u16, csum_partial: bool) {
    let hl = usize::from(packet[0] & 0x0f) * 4;
    let protocol = packet[9];
    let (aoff, poff) = match end {
        End::Src => (ipv4::SRC_OFFSET, SPORT),
        End::Dst => (ipv4::DST_OFFSET, DPORT),
    };
    let old_addr: [u8; 4] = packet[aoff..aoff + 4].try_into().unwrap();
    let new_addr = addr.octets();
    let (hdr, l4) = packet.split_at_mut(hl);
    if old_addr != new_addr {
        let c = checksum::update32(be16(hdr, ipv4::CHECKSUM_OFFSET), old_addr, new_addr);
        hdr[ipv4::CHECKSUM_OFFSET..ipv4::CHECKSUM_OFFSET + 2].copy_from_slice(&c.to_be_bytes());
        hdr[aoff..aoff + 4].copy_from_slice(&new_addr);
    }
    match protocol {
        PROTO_TCP | PROTO_UDP => {
            let coff = if protocol == PROTO_TCP { TCP_CHECKSUM } else { UDP_CHECKSUM };
            let old_port = be16(l4, poff);
            let udp_no_checksum = protocol == PROTO_UDP && be16(l4, coff) == 0;
            if !udp_no_checksum {
                let mut c = be16(l4, coff);
                if csum_partial {
                    c = !checksum::update32(!c, old_addr, new_addr);
                } else {
                    c = checksum::update32(c, old_addr, new_addr);
                    c = checksum::update16(c, old_port, port);
                    if protocol == PROTO_UDP && c == 0 {
                        c = 0xffff;
                    }
                }
                l4[coff..coff + 2].copy_from_slice(&c.to_be_bytes());
            }
            l4[poff..poff + 2].copy_from_slice(&port.to_be_bytes());
        }
        PROTO_ICMP => {
            // Only the identifier is a "port"; the ICMP checksum has no pseudo header.
            let is_request = l4[0] == icmp::TYPE_ECHO_REQUEST;
            let id_end = if is_request { End::Src } else { End::Dst };
            if end == id_end {
                let old = be16(l4, icmp::IDENT);
                if old != port {
                    let c = checksum::update16(be16(l4, icmp::CHECKSUM), old, port);
                    l4[icmp::CHECKSUM..icmp::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
                    l4[icmp::IDENT..icmp::IDENT + 2].copy_from_slice(&port.to_be_bytes());
                }
            }
        }
        _ => {}
    }
}

/// Completes a partial TCP/UDP checksum (offload `NEEDS_CSUM`): the field holds the
/// pseudo-header sum; the result covers the whole L4 segment.
pub fn finish_partial_checksum(packet: &mut [u8]) {
    let hl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(be16(packet, 2)).min(packet.len());
    let protocol = packet[9];
    let coff = match protocol {
        PROTO_TCP => TCP_CHECKSUM,
        PROTO_UDP => UDP_CHECKSUM,
        _ => return,
    };
    let l4 = &mut packet[hl..total];
    if l4.len() < coff + 2 {
        return;
    }
    let mut c = !checksum::fold(checksum::sum(l4, 0));
    if protocol == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    l4[coff..coff + 2].copy_from_slice(&c.to_be_bytes());
}

/// Computes and writes the full TCP/UDP checksum of a packet built by ucanal.
pub fn fill_checksum(packet: &mut [u8]) {
    let hl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(be16(packet, 2));
    let protocol = packet[9];
    let (src, dst) = ipv4::addrs(&packet[..hl]);
    let coff = if protocol == PROTO_TCP { TCP_CHECKSUM } else { UDP_CHECKSUM };
    let l4 = &mut packet[hl..total];
    l4[coff..coff + 2].copy_from_slice(&[0, 0]);
    let acc = checksum::pseudo_header_sum(src.octets(), dst.octets(), protocol, l4.len() as u16);
    let mut c = !checksum::fold(checksum::sum(l4, acc));
    if protocol == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    l4[coff..coff + 2].copy_from_slice(&c.to_be_bytes());
}

/// Verifies a TCP/UDP checksum (UDP checksum 0 means "none" and passes).
pub fn verify_checksum(packet: &[u8]) -> bool {
    let hl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(be16(packet, 2));
    let protocol = packet[9];
    let (src, dst) = ipv4::addrs(&packet[..hl]);
    let l4 = &packet[hl..total];
    if protocol == PROTO_UDP && l4.len() >= 8 && be16(l4, UDP_CHECKSUM) == 0 {
        return true;
    }
    let acc = checksum::pseudo_header_sum(src.octets(), dst.octets(), protocol, l4.len() as u16);
    checksum::fold(checksum::sum(l4, acc)) == 0xffff
}

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[cfg(test)]
mod tests {
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
