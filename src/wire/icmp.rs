//! ICMP messages (RFC 792): echo identifiers for NAT, the errors ucanal emits
//! (time exceeded, fragmentation needed, port unreachable), and the embedded
//! ("quoted") packet of an error, which NAT must translate along with the outer one.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |     Type      |     Code      |          Checksum             |
//! |  Identifier (echo) / unused   | Sequence (echo) / next-hop MTU |
//! |     Data (echo) / the offending IP header + 8 bytes (errors) ...
//! ```

use std::net::Ipv4Addr;

use super::checksum;
use super::ipv4::{self, Ipv4Packet, Ipv4Repr, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use super::ports::{End, L4Ports, Ports};
use super::{WireError, be16, need, put16};

pub const HEADER_LEN: usize = 8;

/// Byte offsets of the header fields.
pub mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    /// Echo: the identifier; errors: the first half of the "rest of header" word.
    pub const IDENT: usize = 4;
    /// Echo: the sequence number; "fragmentation needed": the next-hop MTU.
    pub const SEQ_NO: usize = 6;
    pub const REST: usize = 4;
    pub const NEXT_HOP_MTU: usize = 6;
}

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

/// A view over an ICMP message; `new_checked` guarantees the 8-byte header, so no
/// accessor can panic.
#[derive(Debug)]
pub struct IcmpPacket<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        need("icmp", HEADER_LEN, buf.as_ref().len())?;
        Ok(IcmpPacket { buf })
    }
    pub fn into_inner(self) -> T {
        self.buf
    }
    pub fn msg_type(&self) -> u8 {
        self.buf.as_ref()[field::TYPE]
    }
    pub fn code(&self) -> u8 {
        self.buf.as_ref()[field::CODE]
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), field::CHECKSUM)
    }
    pub fn echo_ident(&self) -> u16 {
        be16(self.buf.as_ref(), field::IDENT)
    }
    pub fn echo_seq_no(&self) -> u16 {
        be16(self.buf.as_ref(), field::SEQ_NO)
    }
    /// The next-hop MTU of a "fragmentation needed" message.
    pub fn next_hop_mtu(&self) -> u16 {
        be16(self.buf.as_ref(), field::NEXT_HOP_MTU)
    }
    /// What follows the header: echo data, or the packet an error quotes.
    pub fn data(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..]
    }
    pub fn is_error(&self) -> bool {
        is_error(self.msg_type())
    }
    /// The flow ports of an echo message (see `l4`): the identifier is the source port
    /// of a request and the destination port of a reply. None for anything else.
    pub fn echo_ports(&self) -> Option<L4Ports> {
        let id = self.echo_ident();
        match self.msg_type() {
            TYPE_ECHO_REQUEST => Some(L4Ports { sport: id, dport: 0, tcp_flags: 0 }),
            TYPE_ECHO_REPLY => Some(L4Ports { sport: 0, dport: id, tcp_flags: 0 }),
            _ => None,
        }
    }
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buf.as_ref(), 0)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    /// Sets the echo identifier, fixing the checksum; an unchanged value is not touched.
    pub fn set_echo_ident(&mut self, id: u16) {
        let old = self.echo_ident();
        if old != id {
            let c = checksum::update16(self.checksum(), old, id);
            put16(self.buf.as_mut(), field::CHECKSUM, c);
            put16(self.buf.as_mut(), field::IDENT, id);
        }
    }
    /// NAT of one end: only an echo message's identifier is a "port", and only at the
    /// end it identifies (the source of a request, the destination of a reply).
    pub fn nat(&mut self, end: End, port: u16) {
        let id_end = if self.msg_type() == TYPE_ECHO_REQUEST { End::Src } else { End::Dst };
        if end == id_end {
            self.set_echo_ident(port);
        }
    }
    /// Recomputes the checksum of the whole message.
    pub fn fill_checksum(&mut self) {
        put16(self.buf.as_mut(), field::CHECKSUM, 0);
        let c = checksum::checksum(self.buf.as_ref());
        put16(self.buf.as_mut(), field::CHECKSUM, c);
    }
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

    /// Writes the header into `message[..8]` and the checksum over the whole `message`
    /// (the quote already follows the header).
    pub fn emit(&self, message: &mut [u8]) {
        message[field::TYPE] = self.icmp_type;
        message[field::CODE] = self.code;
        message[field::REST..field::REST + 4].copy_from_slice(&self.rest.to_be_bytes());
        IcmpPacket { buf: message }.fill_checksum();
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
    icmp[HEADER_LEN..].copy_from_slice(&offending[..quote]);
    repr.emit(icmp);
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

/// Checks the quote of an error message (`icmp` starts at the ICMP header): an IPv4
/// header and the 8 bytes of its L4 header that RFC 792 guarantees. Returns the view
/// of the quoted packet.
pub(crate) fn quoted(icmp: &[u8]) -> Result<Ipv4Packet<&[u8]>, WireError> {
    need("icmp error", HEADER_LEN + ipv4::MIN_HEADER_LEN + 8, icmp.len())?;
    let ip = Ipv4Packet::new_quoted(&icmp[HEADER_LEN..])?;
    need("icmp error quote", ip.header_len() + 8, icmp.len() - HEADER_LEN)?;
    Ok(ip)
}

/// Parses the embedded packet of an ICMP error message (`icmp` starts at the ICMP header).
/// Only 8 bytes of the embedded L4 header are guaranteed (RFC 792).
pub fn embedded(icmp: &[u8]) -> Result<Embedded, WireError> {
    let ip = quoted(icmp)?;
    let protocol = ip.protocol();
    let l4 = ip.payload();
    let ports = match protocol {
        PROTO_TCP | PROTO_UDP => {
            let p = Ports::new_checked(l4)?;
            L4Ports { sport: p.src_port(), dport: p.dst_port(), tcp_flags: 0 }
        }
        PROTO_ICMP => IcmpPacket::new_checked(l4)?
            .echo_ports()
            .ok_or(WireError::Malformed { what: "icmp", why: "not an echo message" })?,
        _ => return Err(WireError::Malformed { what: "icmp error", why: "quoted protocol without ports" }),
    };
    Ok(Embedded { protocol, src: ip.src(), dst: ip.dst(), ports })
}

/// Recomputes the checksum of a whole ICMP message (at least its 8-byte header).
pub fn fill_checksum(icmp: &mut [u8]) {
    if let Ok(mut i) = IcmpPacket::new_checked(icmp) {
        i.fill_checksum();
    }
}

/// The next-hop MTU of a "fragmentation needed" message (0 if `icmp` is too short).
pub fn next_hop_mtu(icmp: &[u8]) -> u16 {
    IcmpPacket::new_checked(icmp).map(|i| i.next_hop_mtu()).unwrap_or(0)
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
    use crate::wire::l4::rewrite_embedded;
    use etherparse::PacketBuilder;

    fn big_df_tcp() -> Vec<u8> {
        let b = PacketBuilder::ipv4([10, 244, 1, 5], [10, 244, 0, 74], 64).tcp(40000, 2368, 1, 64240).ack(1);
        let mut out = Vec::new();
        b.write(&mut out, &[0x5a; 1460]).unwrap();
        out[6] = 0x40; // DF
        Ipv4Packet::new_checked(&mut out[..]).unwrap().fill_checksum();
        out
    }

    /// An echo request: identifier 0x1234, sequence 1, data "abcdefgh"; the checksum by hand (RFC 1071): 0800+1234+0001+6162+6364+6566+6768
    /// = 0x1abc9, folded 0xabca, complemented 0x5435.
    const ECHO: [u8; 16] = [8, 0, 0x54, 0x35, 0x12, 0x34, 0x00, 0x01, b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h'];

    #[test]
    fn echo_view() {
        let i = IcmpPacket::new_checked(&ECHO[..]).unwrap();
        assert_eq!((i.msg_type(), i.code(), i.checksum()), (TYPE_ECHO_REQUEST, 0, 0x5435));
        assert_eq!((i.echo_ident(), i.echo_seq_no(), i.data()), (0x1234, 1, &b"abcdefgh"[..]));
        assert!(i.verify_checksum());
        assert!(!i.is_error());
        assert_eq!(i.echo_ports(), Some(L4Ports { sport: 0x1234, dport: 0, tcp_flags: 0 }));
        assert!(IcmpPacket::new_checked(&ECHO[..7]).is_err());
    }

    #[test]
    fn echo_setters_keep_the_checksum_valid() {
        let mut e = ECHO;
        let mut i = IcmpPacket::new_checked(&mut e[..]).unwrap();
        i.set_echo_ident(0x4321);
        assert_eq!(i.echo_ident(), 0x4321);
        assert!(i.verify_checksum());
        // NAT of the destination end leaves a request's identifier alone.
        i.nat(End::Dst, 7);
        assert_eq!(i.echo_ident(), 0x4321);
        i.nat(End::Src, 7);
        assert_eq!(i.echo_ident(), 7);
        assert!(i.verify_checksum());
        // A reply's identifier is its destination port.
        e[0] = TYPE_ECHO_REPLY;
        let mut i = IcmpPacket::new_checked(&mut e[..]).unwrap();
        i.fill_checksum();
        assert_eq!(i.echo_ports().map(|p| p.dport), Some(7));
        i.nat(End::Dst, 9);
        assert!(i.verify_checksum() && i.echo_ident() == 9);
    }

    #[test]
    fn error_emit_matches_hand_built_bytes() {
        let mut m = [0u8; 12];
        m[8..].copy_from_slice(&[0x45, 0, 0, 0x1c]);
        ErrorRepr::frag_needed(1450).emit(&mut m);
        // 0304 + 0000 + 05aa + 4500 + 001c = 0x4dca -> checksum 0xb235.
        assert_eq!(m, [3, 4, 0xb2, 0x35, 0, 0, 0x05, 0xaa, 0x45, 0, 0, 0x1c]);
        let i = IcmpPacket::new_checked(&m[..]).unwrap();
        assert!(i.is_error() && i.verify_checksum());
        assert_eq!((i.next_hop_mtu(), i.data().len()), (1450, 4));
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
