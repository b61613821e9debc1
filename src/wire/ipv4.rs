//! IPv4 headers (RFC 791).

use std::net::Ipv4Addr;

use super::checksum;
use super::{WireError, need};

pub const MIN_HEADER_LEN: usize = 20;

/// Byte offsets of the header fields.
pub mod field {
    /// Version (high nibble) and IHL, the header length in 32-bit words (low nibble).
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    /// Flags (3 bits) and fragment offset (13 bits).
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}
use field::*;

pub const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// A view over an IPv4 packet. `new_checked` guarantees that the header fits, that
/// IHL and total length are consistent, and that the buffer holds `total_len` bytes;
/// bytes after `total_len` (Ethernet padding) are ignored by `payload`. `new_quoted`
/// guarantees only the header (a packet quoted in an ICMP error, cut off after a few
/// bytes of its payload): `payload` is then what there is, up to `total_len`. Either
/// way no accessor can panic.
#[derive(Debug)]
pub struct Ipv4Packet<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let p = Self::new_quoted(buf)?;
        let (hl, total) = (p.header_len(), p.total_len());
        if total < hl {
            return Err(WireError::Malformed { what: "ipv4", why: "total length shorter than header" });
        }
        need("ipv4 total length", total, p.buf.as_ref().len())?;
        Ok(p)
    }

    /// A view that needs only a whole IPv4 header (version 4, IHL at least 5).
    pub fn new_quoted(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        need("ipv4", MIN_HEADER_LEN, b.len())?;
        if b[VER_IHL] >> 4 != 4 {
            return Err(WireError::Malformed { what: "ipv4", why: "version is not 4" });
        }
        let hl = usize::from(b[VER_IHL] & 0x0f) * 4;
        if hl < MIN_HEADER_LEN {
            return Err(WireError::Malformed { what: "ipv4", why: "IHL below 5" });
        }
        need("ipv4 header", hl, b.len())?;
        Ok(Ipv4Packet { buf })
    }

    /// Where the payload ends: `total_len`, or the buffer's end in a quote.
    fn payload_end(&self) -> usize {
        self.total_len().clamp(self.header_len(), self.buf.as_ref().len())
    }

    pub fn into_inner(self) -> T {
        self.buf
    }
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[VER_IHL] & 0x0f) * 4
    }
    pub fn tos(&self) -> u8 {
        self.buf.as_ref()[TOS]
    }
    pub fn total_len(&self) -> usize {
        let b = self.buf.as_ref();
        usize::from(u16::from_be_bytes([b[TOTAL_LEN], b[TOTAL_LEN + 1]]))
    }
    pub fn ident(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[IDENT], b[IDENT + 1]])
    }
    fn flags_frag(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[FLAGS_FRAG], b[FLAGS_FRAG + 1]])
    }
    pub fn dont_fragment(&self) -> bool {
        self.flags_frag() & FLAG_DF != 0
    }
    /// True for every fragment but an unfragmented packet.
    pub fn is_fragment(&self) -> bool {
        self.flags_frag() & (FLAG_MF | FRAG_OFFSET_MASK) != 0
    }
    /// True when this packet carries the L4 header (unfragmented, or the first fragment).
    pub fn has_l4_header(&self) -> bool {
        self.flags_frag() & FRAG_OFFSET_MASK == 0
    }
    pub fn ttl(&self) -> u8 {
        self.buf.as_ref()[TTL]
    }
    pub fn protocol(&self) -> u8 {
        self.buf.as_ref()[PROTOCOL]
    }
    pub fn checksum(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[CHECKSUM], b[CHECKSUM + 1]])
    }
    pub fn src(&self) -> Ipv4Addr {
        let b = self.buf.as_ref();
        Ipv4Addr::new(b[SRC], b[SRC + 1], b[SRC + 2], b[SRC + 3])
    }
    pub fn dst(&self) -> Ipv4Addr {
        let b = self.buf.as_ref();
        Ipv4Addr::new(b[DST], b[DST + 1], b[DST + 2], b[DST + 3])
    }
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(&self.buf.as_ref()[..self.header_len()], 0)) == 0xffff
    }
    /// The header bytes.
    pub fn header(&self) -> &[u8] {
        &self.buf.as_ref()[..self.header_len()]
    }
    /// The L4 bytes, up to `total_len`.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[self.header_len()..self.payload_end()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn set_check(&mut self, c: u16) {
        self.buf.as_mut()[CHECKSUM..CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    }
    pub fn set_src(&mut self, a: Ipv4Addr) {
        let old = self.src().octets();
        let new = a.octets();
        if old != new {
            let c = checksum::update32(self.checksum(), old, new);
            self.buf.as_mut()[SRC..SRC + 4].copy_from_slice(&new);
            self.set_check(c);
        }
    }
    pub fn set_dst(&mut self, a: Ipv4Addr) {
        let old = self.dst().octets();
        let new = a.octets();
        if old != new {
            let c = checksum::update32(self.checksum(), old, new);
            self.buf.as_mut()[DST..DST + 4].copy_from_slice(&new);
            self.set_check(c);
        }
    }
    fn set16(&mut self, at: usize, v: u16) {
        let b = self.buf.as_ref();
        let old = u16::from_be_bytes([b[at], b[at + 1]]);
        if old != v {
            let c = checksum::update16(self.checksum(), old, v);
            self.buf.as_mut()[at..at + 2].copy_from_slice(&v.to_be_bytes());
            self.set_check(c);
        }
    }
    /// Sets the total length (a segment cut from a larger packet), fixing the checksum.
    pub fn set_total_len(&mut self, len: u16) {
        self.set16(TOTAL_LEN, len);
    }
    /// Sets the identification, fixing the checksum.
    pub fn set_ident(&mut self, ident: u16) {
        self.set16(IDENT, ident);
    }
    /// Decrements the TTL by one (callers check `ttl() > 1` first).
    pub fn dec_ttl(&mut self) {
        let b = self.buf.as_ref();
        let old = u16::from_be_bytes([b[TTL], b[PROTOCOL]]);
        let new = old.wrapping_sub(0x0100);
        let c = checksum::update16(self.checksum(), old, new);
        self.buf.as_mut()[TTL] = (new >> 8) as u8;
        self.set_check(c);
    }
    pub fn set_ttl(&mut self, ttl: u8) {
        let b = self.buf.as_ref();
        let old = u16::from_be_bytes([b[TTL], b[PROTOCOL]]);
        let new = u16::from_be_bytes([ttl, b[PROTOCOL]]);
        let c = checksum::update16(self.checksum(), old, new);
        self.buf.as_mut()[TTL] = ttl;
        self.set_check(c);
    }
    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_check(0);
        let hl = self.header_len();
        let c = checksum::checksum(&self.buf.as_ref()[..hl]);
        self.set_check(c);
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, tl) = (self.header_len(), self.payload_end());
        &mut self.buf.as_mut()[hl..tl]
    }
    /// The header and the payload, split, for rewrites that touch both (L4 pseudo header).
    pub fn split_mut(&mut self) -> (&mut [u8], &mut [u8]) {
        let (hl, tl) = (self.header_len(), self.payload_end());
        let (h, rest) = self.buf.as_mut()[..tl].split_at_mut(hl);
        (h, rest)
    }
}

/// Fields of a header that ucanal emits itself.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    pub tos: u8,
    pub ident: u16,
    pub dont_fragment: bool,
    pub payload_len: usize,
}

impl Ipv4Repr {
    /// Writes a 20-byte header with a valid checksum into `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        let total = (MIN_HEADER_LEN + self.payload_len) as u16;
        buf[VER_IHL] = 0x45;
        buf[TOS] = self.tos;
        buf[TOTAL_LEN..TOTAL_LEN + 2].copy_from_slice(&total.to_be_bytes());
        buf[IDENT..IDENT + 2].copy_from_slice(&self.ident.to_be_bytes());
        let ff: u16 = if self.dont_fragment { FLAG_DF } else { 0 };
        buf[FLAGS_FRAG..FLAGS_FRAG + 2].copy_from_slice(&ff.to_be_bytes());
        buf[TTL] = self.ttl;
        buf[PROTOCOL] = self.protocol;
        buf[CHECKSUM..CHECKSUM + 2].copy_from_slice(&[0, 0]);
        buf[SRC..SRC + 4].copy_from_slice(&self.src.octets());
        buf[DST..DST + 4].copy_from_slice(&self.dst.octets());
        let c = checksum::checksum(&buf[..MIN_HEADER_LEN]);
        buf[CHECKSUM..CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// Reads the source and destination addresses out of a raw header (callers have checked the length).
pub fn addrs(header: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    (
        Ipv4Addr::new(header[SRC], header[SRC + 1], header[SRC + 2], header[SRC + 3]),
        Ipv4Addr::new(header[DST], header[DST + 1], header[DST + 2], header[DST + 3]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ping from 10.244.1.5 to 10.244.0.74: IPv4 header (DF, TTL 64, ICMP) + 8 bytes echo.
    const PING: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x3a, 0x1c, 0x40, 0x00, 0x40, 0x01, 0xe9, 0xbf, 0x0a, 0xf4, 0x01, 0x05, 0x0a, 0xf4,
        0x00, 0x4a, 0x08, 0x00, 0xf7, 0xfe, 0x00, 0x01, 0x00, 0x00,
    ];

    fn fixed() -> [u8; 28] {
        let mut p = PING;
        Ipv4Packet::new_checked(&mut p[..]).unwrap().fill_checksum();
        p
    }

    #[test]
    fn parse() {
        let p = fixed();
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src(), Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(ip.dst(), Ipv4Addr::new(10, 244, 0, 74));
        assert_eq!(ip.protocol(), PROTO_ICMP);
        assert_eq!(ip.ttl(), 64);
        assert!(ip.dont_fragment());
        assert!(!ip.is_fragment());
        assert_eq!(ip.payload().len(), 8);
    }

    #[test]
    fn rewrites_keep_checksum_valid() {
        let mut p = fixed();
        let mut ip = Ipv4Packet::new_checked(&mut p[..]).unwrap();
        ip.dec_ttl();
        ip.set_src(Ipv4Addr::new(10, 244, 1, 0));
        ip.set_dst(Ipv4Addr::new(172, 16, 240, 1));
        ip.set_ident(0xbeef);
        ip.set_total_len(24);
        assert_eq!((ip.ttl(), ip.ident(), ip.total_len()), (63, 0xbeef, 24));
        assert!(ip.verify_checksum());
        ip.set_ttl(65);
        assert_eq!(ip.ttl(), 65);
        assert!(ip.verify_checksum());
    }

    #[test]
    fn emit_matches_parse() {
        let mut b = [0u8; 28];
        Ipv4Repr {
            src: Ipv4Addr::new(10, 244, 1, 5),
            dst: Ipv4Addr::new(10, 244, 0, 74),
            protocol: PROTO_ICMP,
            ttl: 64,
            tos: 0,
            ident: 0x3a1c,
            dont_fragment: true,
            payload_len: 8,
        }
        .emit(&mut b);
        assert_eq!(b[..20], fixed()[..20]);
    }

    #[test]
    fn malformed() {
        let p = fixed();
        let mut bad = p;
        bad[0] = 0x65;
        assert!(Ipv4Packet::new_checked(&bad[..]).is_err());
        bad = p;
        bad[0] = 0x44;
        assert!(Ipv4Packet::new_checked(&bad[..]).is_err());
        bad = p;
        bad[3] = 0x40; // total length beyond the buffer
        assert!(Ipv4Packet::new_checked(&bad[..]).is_err());
        bad = p;
        bad[3] = 0x10; // total length shorter than the header
        assert!(Ipv4Packet::new_checked(&bad[..]).is_err());
        assert!(Ipv4Packet::new_checked(&p[..19]).is_err());
        // A quote needs only the header; its payload is what there is.
        let q = Ipv4Packet::new_quoted(&p[..24]).unwrap();
        assert_eq!((q.header_len(), q.total_len(), q.payload().len()), (20, 28, 4));
        assert!(Ipv4Packet::new_checked(&p[..24]).is_err());
        bad = p;
        bad[3] = 0x10;
        assert!(Ipv4Packet::new_quoted(&bad[..]).unwrap().payload().is_empty());
        bad[0] = 0x46;
        assert!(Ipv4Packet::new_quoted(&bad[..20]).is_err(), "options beyond the buffer");
        // Trailing Ethernet padding is fine and ignored.
        let mut padded = [0u8; 46];
        padded[..28].copy_from_slice(&p);
        assert_eq!(Ipv4Packet::new_checked(&padded[..]).unwrap().payload().len(), 8);
    }
}
