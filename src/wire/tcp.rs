//! TCP headers (RFC 793 §3.1).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |          Source Port          |       Destination Port        |
//! |                        Sequence Number                        |
//! |                    Acknowledgment Number                      |
//! |  Data |       |C|E|U|A|P|R|S|F|                               |
//! | Offset|       |W|C|R|C|S|S|Y|I|            Window             |
//! |           Checksum            |         Urgent Pointer        |
//! |                    Options                    |    Padding    |
//! ```

use std::net::Ipv4Addr;

use super::checksum;
use super::ipv4::PROTO_TCP;
use super::ports::EndRewrite;
use super::{WireError, be16, need, put16};

pub const MIN_HEADER_LEN: usize = 20;

/// Byte offsets of the header fields.
pub mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    /// Data offset (high nibble); the low nibble is reserved.
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
}

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const CWR: u8 = 0x80;

/// A view over a TCP segment. `new_checked` guarantees the fixed header and that the
/// data offset lies between 20 bytes and the end of the buffer; `new_quoted` only the
/// fixed header (a header quoted in an ICMP error, where the options may be cut off).
/// Either way no accessor can panic.
#[derive(Debug)]
pub struct TcpPacket<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let p = Self::new_quoted(buf)?;
        let hl = p.header_len();
        if hl < MIN_HEADER_LEN || hl > p.buf.as_ref().len() {
            return Err(WireError::Malformed { what: "tcp", why: "bad data offset" });
        }
        Ok(p)
    }

    /// A view that needs only the 20-byte fixed header.
    pub fn new_quoted(buf: T) -> Result<Self, WireError> {
        need("tcp", MIN_HEADER_LEN, buf.as_ref().len())?;
        Ok(TcpPacket { buf })
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
    pub fn seq_number(&self) -> u32 {
        be32(self.buf.as_ref(), field::SEQ)
    }
    pub fn ack_number(&self) -> u32 {
        be32(self.buf.as_ref(), field::ACK)
    }
    /// The header length the data offset says, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[field::DATA_OFF] >> 4) * 4
    }
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[field::FLAGS]
    }
    pub fn window(&self) -> u16 {
        be16(self.buf.as_ref(), field::WINDOW)
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), field::CHECKSUM)
    }
    /// The segment's data: what follows the header (empty when a quote ends before it).
    pub fn payload(&self) -> &[u8] {
        let b = self.buf.as_ref();
        &b[self.header_len().clamp(MIN_HEADER_LEN, b.len())..]
    }
    /// Verifies the checksum over the pseudo header and the whole buffer.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.buf.as_ref();
        let acc = checksum::pseudo_header_sum(src.octets(), dst.octets(), PROTO_TCP, b.len() as u16);
        checksum::fold(checksum::sum(b, acc)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    fn set16(&mut self, at: usize, v: u16) {
        let old = be16(self.buf.as_ref(), at);
        if old != v {
            let c = checksum::update16(self.checksum(), old, v);
            put16(self.buf.as_mut(), field::CHECKSUM, c);
            put16(self.buf.as_mut(), at, v);
        }
    }
    fn set32(&mut self, at: usize, v: u32) {
        let old = be32(self.buf.as_ref(), at);
        if old != v {
            let c = checksum::update32(self.checksum(), old.to_be_bytes(), v.to_be_bytes());
            put16(self.buf.as_mut(), field::CHECKSUM, c);
            self.buf.as_mut()[at..at + 4].copy_from_slice(&v.to_be_bytes());
        }
    }
    pub fn set_src_port(&mut self, port: u16) {
        self.set16(field::SRC_PORT, port);
    }
    pub fn set_dst_port(&mut self, port: u16) {
        self.set16(field::DST_PORT, port);
    }
    pub fn set_seq_number(&mut self, seq: u32) {
        self.set32(field::SEQ, seq);
    }
    pub fn set_ack_number(&mut self, ack: u32) {
        self.set32(field::ACK, ack);
    }
    /// Sets the flags byte (the checksum covers it as the low half of a 16-bit word).
    pub fn set_flags(&mut self, flags: u8) {
        let b = self.buf.as_ref();
        let word = u16::from_be_bytes([b[field::DATA_OFF], flags]);
        self.set16(field::DATA_OFF, word);
    }
    /// Writes the checksum field as it is given (a partial sum, or a value computed elsewhere).
    pub fn set_checksum(&mut self, c: u16) {
        put16(self.buf.as_mut(), field::CHECKSUM, c);
    }
    /// Computes the full checksum over the pseudo header and the whole buffer.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let b = self.buf.as_ref();
        let acc = checksum::pseudo_header_sum(src.octets(), dst.octets(), PROTO_TCP, b.len() as u16);
        let c = !checksum::fold(checksum::sum(b, acc));
        self.set_checksum(c);
    }
    /// NAT of one end: the port and, through the pseudo header, the address.
    pub fn nat(&mut self, r: &EndRewrite) {
        r.apply(self.buf.as_mut(), field::CHECKSUM, false);
    }
    pub fn header_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len().clamp(MIN_HEADER_LEN, self.buf.as_ref().len());
        &mut self.buf.as_mut()[..hl]
    }
}

/// The fields of a 20-byte header (no options) that ucanal emits itself (a RST).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    pub flags: u8,
    pub window: u16,
}

impl TcpRepr {
    /// Writes the header into `segment[..20]` and the checksum over the whole `segment`
    /// (header and whatever payload follows it) with the pseudo header of `src`, `dst`.
    pub fn emit(&self, segment: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr) {
        let h = &mut segment[..MIN_HEADER_LEN];
        put16(h, field::SRC_PORT, self.src_port);
        put16(h, field::DST_PORT, self.dst_port);
        h[field::SEQ..field::SEQ + 4].copy_from_slice(&self.seq_number.to_be_bytes());
        h[field::ACK..field::ACK + 4].copy_from_slice(&self.ack_number.to_be_bytes());
        h[field::DATA_OFF] = ((MIN_HEADER_LEN / 4) as u8) << 4;
        h[field::FLAGS] = self.flags;
        put16(h, field::WINDOW, self.window);
        put16(h, field::URGENT, 0);
        TcpPacket { buf: segment }.fill_checksum(src, dst);
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(172, 16, 240, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(172, 16, 240, 131);

    /// The TCP header of a SYN 172.16.240.1:40000 -> 172.16.240.131:31266, seq 1000,
    /// window 64240, as etherparse builds it (checksum computed by etherparse).
    fn syn() -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv4(SRC.octets(), DST.octets(), 64).tcp(40000, 31266, 1000, 64240).syn();
        let mut out = Vec::new();
        b.write(&mut out, &[]).unwrap();
        out.split_off(20)
    }

    #[test]
    fn parse() {
        let s = syn();
        assert_eq!(s[..14], [0x9c, 0x40, 0x7a, 0x22, 0, 0, 0x03, 0xe8, 0, 0, 0, 0, 0x50, 0x02]);
        let t = TcpPacket::new_checked(&s[..]).unwrap();
        assert_eq!((t.src_port(), t.dst_port()), (40000, 31266));
        assert_eq!((t.seq_number(), t.ack_number()), (1000, 0));
        assert_eq!((t.header_len(), t.flags(), t.window()), (20, SYN, 64240));
        assert!(t.payload().is_empty());
        assert!(t.verify_checksum(SRC, DST));
    }

    #[test]
    fn emit_matches_etherparse() {
        let mut b = [0u8; 20];
        TcpRepr { src_port: 40000, dst_port: 31266, seq_number: 1000, ack_number: 0, flags: SYN, window: 64240 }
            .emit(&mut b, SRC, DST);
        assert_eq!(b[..], syn()[..]);
    }

    #[test]
    fn setters_keep_the_checksum_valid() {
        let mut s = syn();
        let mut t = TcpPacket::new_checked(&mut s[..]).unwrap();
        t.set_src_port(61000);
        t.set_dst_port(2368);
        t.set_seq_number(0xdead_beef);
        t.set_ack_number(7);
        t.set_flags(SYN | ACK);
        assert!(t.verify_checksum(SRC, DST));
        assert_eq!((t.src_port(), t.dst_port(), t.seq_number(), t.ack_number()), (61000, 2368, 0xdead_beef, 7));
        assert_eq!((t.flags(), t.header_len()), (SYN | ACK, 20));
        let before = t.checksum();
        t.set_src_port(61000);
        assert_eq!(t.checksum(), before, "an unchanged value is not touched");
    }

    #[test]
    fn malformed() {
        let s = syn();
        assert!(TcpPacket::new_checked(&s[..19]).is_err());
        let mut bad = s.clone();
        bad[12] = 0x40; // 16 bytes: below the fixed header
        assert!(TcpPacket::new_checked(&bad[..]).is_err());
        bad[12] = 0x60; // 24 bytes: beyond the buffer
        assert!(TcpPacket::new_checked(&bad[..]).is_err());
        // A quote keeps the fixed header only; nothing panics.
        let q = TcpPacket::new_quoted(&bad[..]).unwrap();
        assert_eq!((q.header_len(), q.payload().len()), (24, 0));
        assert!(TcpPacket::new_quoted(&s[..8]).is_err());
    }
}
