//! ICMP messages (RFC 792): echo identifiers for NAT, the errors ucanal emits
//! (time exceeded, fragmentation needed, port unreachable), and the embedded
//! ("quoted") packet of an error, which NAT must translate along with the outer one.

use std::net::Ipv4Addr;

use super::checksum;
use super::ipv4::{self, Ipv4Packet, Ipv4Repr, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use super::l4::{self, End, L4Ports};
use super::{WireError, need};

pub const HEADER_LEN: usize = 8;
pub(crate) const CHECKSUM: usize = 2;
pub(crate) const IDENT: usize = 4;
const NEXT_HOP_MTU: usize = 6;

pub const TYPE_ECHO_REPLY: u8 = 0;
pub const TYPE_DEST_UNREACH: u8 = 3;
pub const TYPE_ECHO_REQUEST: u8 = 8;
pub const TYPE_TIME_EXCEEDED: u8 = 11;
pub const TYPE_PARAM_PROBLEM: u8 = 12;

pub const CODE_PORT_UNREACH: u8 = 3;
pub const CODE_FRAG_NEEDED: u8 = 4;
pub const CODE_TTL_EXCEEDED: u8 = 0;

/// Linux quotes as much of the offending packet as fits in 576 bytes (RFC 1812 §4.3.2.3).
pub const MAX_ERROR_LEN: usize = 576;

/// True for the ICMP types that quote another packet.
pub fn is_error(icmp_type: u8) -> bool {
    matches!(icmp_type, TYPE_DEST_UNREACH | TYPE_TIME_EXCEEDED | TYPE_PARAM_PROBLEM | 4 | 5)
}

/// An ICMP error to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorRepr {
    pub icmp_type: u8,
    pub code: u8,
    /// Bytes 4..8 of the header: the next-hop MTU for "fragmentation needed", else 0.
    pub rest: u32,
}

impl ErrorRepr {
    pub fn frag_needed(mtu: u16) -> Self {
        ErrorRepr { icmp_type: TYPE_DEST_UNREACH, code: CODE_FRAG_NEEDED, rest: u32::from(mtu) }
    }
    pub fn ttl_exceeded() -> Self {
        ErrorRepr { icmp_type: TYPE_TIME_EXCEEDED, code: CODE_TTL_EXCEEDED, rest: 0 }
    }
    pub fn port_unreachable() -> Self {
        ErrorRepr { icmp_type: TYPE_DEST_UNREACH, code: CODE_PORT_UNREACH, rest: 0 }
    }
}

/// Writes a complete IPv4 + ICMP error packet about `offending` (an IPv4 packet) from
/// `src` into `out`, addressed to the offending packet's source. Returns the length
/// written. `out` must hold `MAX_ERROR_LEN` bytes.
pub fn emit_error(out: &mut [u8], src: Ipv4Addr, repr: ErrorRepr, offending: &[u8]) -> usize {
    let (orig_src, _) = ipv4::addrs(&offending[..ipv4::MIN_HEADER_LEN]);
    let quote = offending.len().min(MAX_ERROR_LEN - ipv4::MIN_HEADER_LEN - HEADER_LEN);
    let icmp_len = HEADER_LEN + quote;
    Ipv4Repr {
        src,
        dst: orig_src,
        protocol: PROTO_ICMP,
        ttl: 64,
        // Linux sends errors with TOS 0xc0 (internetwork control), RFC 1812 §4.3.2.5.
        tos: 0xc0,
        ident: 0,
        dont_fragment: false,
        payload_len: icmp_len,
    }
    .emit(out);
    let icmp = &mut out[ipv4::MIN_HEADER_LEN..ipv4::MIN_HEADER_LEN + icmp_len];
    icmp[0] = repr.icmp_type;
    icmp[1] = repr.code;
    icmp[CHECKSUM..CHECKSUM + 2].copy_from_slice(&[0, 0]);
    icmp[IDENT..IDENT + 4].copy_from_slice(&repr.rest.to_be_bytes());
    icmp[HEADER_LEN..].copy_from_slice(&offending[..quote]);
    let c = checksum::checksum(icmp);
    icmp[CHECKSUM..CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    ipv4::MIN_HEADER_LEN + icmp_len
}

/// The packet quoted inside an ICMP error: its addresses and the ports of its L4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embedded {
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ports: L4Ports,
}

/// Parses the embedded packet of an ICMP error message (`icmp` starts at the ICMP header).
/// Only 8 bytes of the embedded L4 header are guaranteed (RFC 792).
pub fn embedded(icmp: &[u8]) -> Result<Embedded, WireError> {
    need("icmp error", HEADER_LEN + ipv4::MIN_HEADER_LEN + 8, icmp.len())?;
    let inner = &icmp[HEADER_LEN..];
    if inner[0] >> 4 != 4 {
        return Err(WireError::Malformed { what: "icmp error", why: "quoted packet is not IPv4" });
    }
    let hl = usize::from(inner[0] & 0x0f) * 4;
    if hl < ipv4::MIN_HEADER_LEN {
        return Err(WireError::Malformed { what: "icmp error", why: "quoted IHL below 5" });
    }
    need("icmp error quote", hl + 8, inner.len())?;
    let (src, dst) = ipv4::addrs(&inner[..hl]);
    let protocol = inner[9];
    let l4b = &inner[hl..hl + 8];
    let ports = match protocol {
        PROTO_TCP | PROTO_UDP => L4Ports { sport: l4::be16(l4b, 0), dport: l4::be16(l4b, 2), tcp_flags: 0 },
        PROTO_ICMP => l4::ports(PROTO_ICMP, l4b)?,
        _ => return Err(WireError::Malformed { what: "icmp error", why: "quoted protocol without ports" }),
    };
    Ok(Embedded { protocol, src, dst, ports })
}

/// Rewrites one end of the packet quoted in an ICMP error (`icmp` starts at the ICMP
/// header), keeping the quoted IPv4 header checksum valid. The quoted L4 checksum is
/// fixed when it was quoted. The ICMP checksum is left stale: call `fill_checksum` once
/// after all rewrites.
pub fn rewrite_embedded(icmp: &mut [u8], end: End, addr: Ipv4Addr, port: u16) {
    let inner = &mut icmp[HEADER_LEN..];
    let hl = usize::from(inner[0] & 0x0f) * 4;
    let protocol = inner[9];
    let (aoff, poff) = match end {
        End::Src => (ipv4::SRC_OFFSET, 0),
        End::Dst => (ipv4::DST_OFFSET, 2),
    };
    let old_addr: [u8; 4] = inner[aoff..aoff + 4].try_into().unwrap();
    let new = addr.octets();
    let c = checksum::update32(l4::be16(inner, ipv4::CHECKSUM_OFFSET), old_addr, new);
    inner[ipv4::CHECKSUM_OFFSET..ipv4::CHECKSUM_OFFSET + 2].copy_from_slice(&c.to_be_bytes());
    inner[aoff..aoff + 4].copy_from_slice(&new);
    let l4b = &mut inner[hl..];
    match protocol {
        PROTO_TCP | PROTO_UDP => {
            let old_port = l4::be16(l4b, poff);
            let coff = if protocol == PROTO_TCP { 16 } else { 6 };
            if l4b.len() >= coff + 2 && !(protocol == PROTO_UDP && l4::be16(l4b, coff) == 0) {
                let mut c = checksum::update32(l4::be16(l4b, coff), old_addr, new);
                c = checksum::update16(c, old_port, port);
                l4b[coff..coff + 2].copy_from_slice(&c.to_be_bytes());
            }
            l4b[poff..poff + 2].copy_from_slice(&port.to_be_bytes());
        }
        PROTO_ICMP => {
            let id_end = if l4b[0] == TYPE_ECHO_REQUEST { End::Src } else { End::Dst };
            if end == id_end {
                let old = l4::be16(l4b, IDENT);
                let c = checksum::update16(l4::be16(l4b, CHECKSUM), old, port);
                l4b[CHECKSUM..CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
                l4b[IDENT..IDENT + 2].copy_from_slice(&port.to_be_bytes());
            }
        }
        _ => {}
    }
}

/// Recomputes the checksum of a whole ICMP message.
pub fn fill_checksum(icmp: &mut [u8]) {
    icmp[CHECKSUM..CHECKSUM + 2].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(icmp);
    icmp[CHECKSUM..CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
}

/// The next-hop MTU of a "fragmentation needed" message.
pub fn next_hop_mtu(icmp: &[u8]) -> u16 {
    l4::be16(icmp, NEXT_HOP_MTU)
}

/// Convenience for tests and the trace: the ICMP type and code of an IPv4 packet.
pub fn type_code(packet: &[u8]) -> Option<(u8, u8)> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    if ip.protocol() != PROTO_ICMP || ip.payload().len() < 2 {
        return None;
    }
    Some((ip.payload()[0], ip.payload()[1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn big_df_tcp() -> Vec<u8> {
        let b = PacketBuilder::ipv4([10, 244, 1, 5], [10, 244, 0, 74], 64).tcp(40000, 2368, 1, 64240).ack(1);
        let mut out = Vec::new();
        b.write(&mut out, &[0x5a; 1460]).unwrap();
        out[6] = 0x40; // DF
        Ipv4Packet::new_checked(&mut out[..]).unwrap().fill_checksum();
        out
    }

    #[test]
    fn frag_needed_as_linux_sends_it() {
        let off = big_df_tcp();
        let mut out = [0u8; MAX_ERROR_LEN];
        let n = emit_error(&mut out, Ipv4Addr::new(172, 16, 240, 131), ErrorRepr::frag_needed(1450), &off);
        assert_eq!(n, MAX_ERROR_LEN);
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.dst(), Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(type_code(&out[..n]), Some((3, 4)));
        assert_eq!(next_hop_mtu(ip.payload()), 1450);
        assert_eq!(checksum::fold(checksum::sum(ip.payload(), 0)), 0xffff);
        let e = embedded(ip.payload()).unwrap();
        assert_eq!(
            (e.src, e.dst, e.ports.sport, e.ports.dport),
            (Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 0, 74), 40000, 2368)
        );
    }

    #[test]
    fn embedded_rewrite_keeps_quoted_header_valid() {
        let off = big_df_tcp();
        let mut out = [0u8; MAX_ERROR_LEN];
        let n = emit_error(&mut out, Ipv4Addr::new(10, 244, 0, 1), ErrorRepr::port_unreachable(), &off);
        let icmp = &mut out[20..n];
        rewrite_embedded(icmp, End::Src, Ipv4Addr::new(172, 16, 240, 1), 41000);
        rewrite_embedded(icmp, End::Dst, Ipv4Addr::new(172, 16, 240, 131), 31266);
        fill_checksum(icmp);
        assert_eq!(checksum::fold(checksum::sum(icmp, 0)), 0xffff);
        let inner = Ipv4Packet::new_checked(&icmp[8..]).map(|p| p.verify_checksum());
        // The quote is truncated, so check the header alone.
        assert!(inner.is_err() || inner.unwrap());
        assert_eq!(checksum::fold(checksum::sum(&icmp[8..28], 0)), 0xffff);
        let e = embedded(icmp).unwrap();
        assert_eq!(
            (e.src, e.ports.sport, e.dst, e.ports.dport),
            (Ipv4Addr::new(172, 16, 240, 1), 41000, Ipv4Addr::new(172, 16, 240, 131), 31266)
        );
    }

    #[test]
    fn embedded_rejects_short_quotes() {
        assert!(embedded(&[3, 3, 0, 0, 0, 0, 0, 0, 0x45]).is_err());
        let mut m = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[0x46; 28]);
        assert!(embedded(&m).is_err());
    }
}
