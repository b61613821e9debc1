//! UDP headers (RFC 768).
//!
//! ```text
//!  0      7 8     15 16    23 24    31
//! |     Source      |   Destination   |
//! |      Port       |      Port       |
//! |     Length      |    Checksum     |
//! ```
//!
//! Heads up: a checksum of 0 means "none" (RFC 768); a computed 0 is sent as 0xffff.

use std::net::Ipv4Addr;

use super::checksum;
use super::ipv4::PROTO_UDP;
use super::ports::EndRewrite;
use super::{WireError, be16, need, put16};

pub const HEADER_LEN: usize = 8;

/// Byte offsets of the header fields.
pub mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// A view over a UDP datagram. `new_checked` guarantees the header and a length field
/// between 8 and the buffer's length; `new_quoted` only the header (a header quoted in
/// an ICMP error, whose datagram may be cut off). Either way no accessor can panic.
#[derive(Debug)]
pub struct UdpPacket<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let p = Self::new_quoted(buf)?;
        let len = usize::from(p.len());
        if len < HEADER_LEN || len > p.buf.as_ref().len() {
            return Err(WireError::Malformed { what: "udp", why: "length field disagrees with IP" });
        }
        Ok(p)
    }

    /// A view that needs only the 8-byte header.
    pub fn new_quoted(buf: T) -> Result<Self, WireError> {
        need("udp", HEADER_LEN, buf.as_ref().len())?;
        Ok(UdpPacket { buf })
    }

    pub fn into_inner(self) -> T {
        self.buf
    }
    pub fn src_port(&self) -> u16 {
        be16(self.buf.as_ref(), field::SRC_PORT)
    }
    pub fn dst_port(&self) -> u16 {
        be16(self.buf.as_ref(), field::DST_PORT)
    }
    /// The length field: header and payload.
    pub fn len(&self) -> u16 {
        be16(self.buf.as_ref(), field::LENGTH)
    }
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), field::CHECKSUM)
    }
    /// The payload up to the length field (what there is of it, in a quote).
    pub fn payload(&self) -> &[u8] {
        let b = self.buf.as_ref();
        &b[HEADER_LEN..usize::from(self.len()).clamp(HEADER_LEN, b.len())]
    }
    /// Verifies the checksum over the pseudo header and the whole buffer; 0 ("none") passes.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.buf.as_ref();
        if self.checksum() == 0 {
            return true;
        }
        let acc = checksum::pseudo_header_sum(src.octets(), dst.octets(), PROTO_UDP, b.len() as u16);
        checksum::fold(checksum::sum(b, acc)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    fn set_port(&mut self, at: usize, port: u16) {
        let old = be16(self.buf.as_ref(), at);
        let c = self.checksum();
        if old != port && c != 0 {
            let c = checksum::update16(c, old, port);
            put16(self.buf.as_mut(), field::CHECKSUM, if c == 0 { 0xffff } else { c });
        }
        put16(self.buf.as_mut(), at, port);
    }
    pub fn set_src_port(&mut self, port: u16) {
        self.set_port(field::SRC_PORT, port);
    }
    pub fn set_dst_port(&mut self, port: u16) {
        self.set_port(field::DST_PORT, port);
    }
    /// NAT of one end: the port and, through the pseudo header, the address (a datagram
    /// without a checksum keeps none).
    pub fn nat(&mut self, r: &EndRewrite) {
        r.apply(self.buf.as_mut(), field::CHECKSUM, true);
    }
    /// Writes the checksum field as it is given.
    pub fn set_checksum(&mut self, c: u16) {
        put16(self.buf.as_mut(), field::CHECKSUM, c);
    }
    /// Computes the full checksum over the pseudo header and the whole buffer.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let b = self.buf.as_ref();
        let acc = checksum::pseudo_header_sum(src.octets(), dst.octets(), PROTO_UDP, b.len() as u16);
        let c = !checksum::fold(checksum::sum(b, acc));
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }
}

/// A UDP header to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
}

impl UdpRepr {
    /// Writes the header into `datagram[..8]` (length: the whole `datagram`) and the
    /// checksum over it with the pseudo header of `src`, `dst`.
    pub fn emit(&self, datagram: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr) {
        let len = datagram.len() as u16;
        let h = &mut datagram[..HEADER_LEN];
        put16(h, field::SRC_PORT, self.src_port);
        put16(h, field::DST_PORT, self.dst_port);
        put16(h, field::LENGTH, len);
        UdpPacket { buf: datagram }.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 10);
    const QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00";

    /// A DNS query 10.244.1.5:53000 -> 10.250.0.10:53 as etherparse builds it.
    fn dns() -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv4(SRC.octets(), DST.octets(), 64).udp(53000, 53);
        let mut out = Vec::new();
        b.write(&mut out, QUERY).unwrap();
        out.split_off(20)
    }

    #[test]
    fn parse() {
        let d = dns();
        assert_eq!(d[..6], [0xcf, 0x08, 0x00, 0x35, 0x00, 0x14]);
        let u = UdpPacket::new_checked(&d[..]).unwrap();
        assert_eq!((u.src_port(), u.dst_port(), u.len()), (53000, 53, 20));
        assert_eq!(u.payload(), QUERY);
        assert!(u.verify_checksum(SRC, DST));
    }

    #[test]
    fn emit_matches_etherparse() {
        let mut b = vec![0u8; 8];
        b.extend_from_slice(QUERY);
        UdpRepr { src_port: 53000, dst_port: 53 }.emit(&mut b, SRC, DST);
        assert_eq!(b, dns());
    }

    #[test]
    fn setters_keep_the_checksum_valid_or_absent() {
        let mut d = dns();
        let mut u = UdpPacket::new_checked(&mut d[..]).unwrap();
        u.set_src_port(61000);
        u.set_dst_port(5353);
        assert_eq!((u.src_port(), u.dst_port()), (61000, 5353));
        assert!(u.verify_checksum(SRC, DST));
        u.set_checksum(0);
        u.set_src_port(1);
        assert_eq!(u.checksum(), 0, "no checksum stays no checksum");
    }

    #[test]
    fn malformed() {
        let d = dns();
        assert!(UdpPacket::new_checked(&d[..7]).is_err());
        assert!(UdpPacket::new_checked(&d[..19]).is_err(), "length field beyond the buffer");
        let mut bad = d.clone();
        bad[5] = 7;
        assert!(UdpPacket::new_checked(&bad[..]).is_err(), "length field below the header");
        // A quote keeps the header only; nothing panics.
        let q = UdpPacket::new_quoted(&d[..10]).unwrap();
        assert_eq!((q.len(), q.payload().len()), (20, 2));
        let q = UdpPacket::new_quoted(&bad[..]).unwrap();
        assert!(q.payload().is_empty());
    }
}
