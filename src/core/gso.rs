//! Userspace TSO for the VXLAN path: a pod with offloads hands ucanal a TCP/IPv4
//! super-packet of up to 64 KB with a partial checksum; the wire needs MSS-sized
//! segments with full checksums, each in its own VXLAN datagram. This lays the
//! datagrams out back to back, all the same size but the last, so the shell can send
//! them with one UDP GSO `sendmsg` (`UDP_SEGMENT` = the datagram size).
//!
//! Per segment, as the kernel's `tcp_gso_segment` does: IP total length and ID
//! (incremented), TCP sequence number advanced by the payload before it, FIN and PSH
//! only on the last segment, CWR only on the first, and full IP and TCP checksums.

use crate::wire::ipv4::{Ipv4Packet, PROTO_TCP};
use crate::wire::tcp::field as tcp_field;
use crate::wire::tcp::{CWR as TCP_CWR, FIN as TCP_FIN, PSH as TCP_PSH, TcpPacket};
use crate::wire::{checksum, ethernet, vxlan};

/// Room for 64 KB of payload plus per-segment headers at the smallest sane MSS.
pub const MAX_SEGMENTED: usize = 96 * 1024;
const MIN_MSS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segmented {
    /// Bytes written.
    pub len: usize,
    pub segments: usize,
    /// Size of every datagram but the last.
    pub datagram_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    #[error("super-packet is not TCP over IPv4 in VXLAN")]
    NotTcp,
    #[error("MSS {0} is below {MIN_MSS}")]
    BadMss(u16),
    #[error("segmented output does not fit")]
    TooBig,
}

/// Where the inner IPv4 header starts in a VXLAN datagram.
const IP_AT: usize = vxlan::HEADER_LEN + ethernet::HEADER_LEN;

/// A super-packet's layout and the header fields every segment derives from.
struct Super {
    h: Headers,
    ihl: usize,
    doff: usize,
    seq0: u32,
    id0: u16,
    flags0: u8,
}

/// Checks that `dgram` is TCP over IPv4 in VXLAN and lays out its segments at `mss`.
fn parse(dgram: &[u8], mss: u16) -> Result<Super, GsoError> {
    let mss_n = usize::from(mss);
    if mss_n < MIN_MSS {
        return Err(GsoError::BadMss(mss));
    }
    let ip = Ipv4Packet::new_checked(dgram.get(IP_AT..).ok_or(GsoError::NotTcp)?).map_err(|_| GsoError::NotTcp)?;
    if ip.protocol() != PROTO_TCP || ip.is_fragment() {
        return Err(GsoError::NotTcp);
    }
    let (ihl, total) = (ip.header_len(), ip.total_len());
    let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else { return Err(GsoError::NotTcp) };
    let doff = tcp.header_len();
    let hdr_len = IP_AT + ihl + doff;
    let h = Headers {
        hdr_len,
        segments: (total - ihl - doff).div_ceil(mss_n).max(1),
        mss: mss_n,
        payload_at: hdr_len,
        payload_end: IP_AT + total,
    };
    Ok(Super { h, ihl, doff, seq0: tcp.seq_number(), id0: ip.ident(), flags0: tcp.flags() })
}

/// Segment `k` of `segments` keeps FIN and PSH only if last, CWR only if first (as Linux's GSO).
fn segment_flags(flags0: u8, k: usize, segments: usize) -> u8 {
    let mut f = flags0;
    if k + 1 < segments {
        f &= !(TCP_FIN | TCP_PSH);
    }
    if k > 0 {
        f &= !TCP_CWR;
    }
    f
}

/// Segments `dgram` (VXLAN header + Ethernet + IPv4 + TCP + payload) at `mss` into `out`.
pub fn segment_vxlan(dgram: &[u8], mss: u16, out: &mut [u8]) -> Result<Segmented, GsoError> {
    let Super { h, ihl, doff, seq0, id0, flags0 } = parse(dgram, mss)?;
    let (ip_at, hdrs, mss_n) = (IP_AT, h.hdr_len, h.mss);
    let payload = &dgram[h.payload_at..h.payload_end];
    let segments = h.segments;
    let datagram_len = hdrs + mss_n;
    let len = hdrs * segments + payload.len();
    if len > out.len() {
        return Err(GsoError::TooBig);
    }
    let mut at = 0;
    for k in 0..segments {
        let chunk = &payload[(k * mss_n).min(payload.len())..((k + 1) * mss_n).min(payload.len())];
        let seg = &mut out[at..at + hdrs + chunk.len()];
        seg[..hdrs].copy_from_slice(&dgram[..hdrs]);
        seg[hdrs..].copy_from_slice(chunk);
        let mut ip = Ipv4Packet::new_quoted(&mut seg[ip_at..]).map_err(|_| GsoError::NotTcp)?;
        ip.set_total_len((ihl + doff + chunk.len()) as u16);
        ip.set_ident(id0.wrapping_add(k as u16));
        ip.fill_checksum();
        let (src, dst) = (ip.src(), ip.dst());
        let mut t = TcpPacket::new_checked(ip.payload_mut()).map_err(|_| GsoError::NotTcp)?;
        t.set_seq_number(seq0.wrapping_add((k * mss_n) as u32));
        t.set_flags(segment_flags(flags0, k, segments));
        t.fill_checksum(src, dst);
        at += hdrs + chunk.len();
    }
    Ok(Segmented { len, segments, datagram_len })
}

/// Per-segment headers for a scatter-gather send: segment `k` is `headers[k * hdr_len..]`
/// (`hdr_len` bytes) followed by the payload slice `payload(k)` of the super-packet
/// itself, so the payload is never copied in userspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    /// Bytes of one segment's headers (VXLAN + Ethernet + IPv4 + TCP).
    pub hdr_len: usize,
    pub segments: usize,
    pub mss: usize,
    /// Where the payload starts and ends in the super-packet.
    pub payload_at: usize,
    pub payload_end: usize,
}

impl Headers {
    /// Segment `k`'s payload range in the super-packet.
    pub fn payload(&self, k: usize) -> std::ops::Range<usize> {
        let start = (self.payload_at + k * self.mss).min(self.payload_end);
        start..(start + self.mss).min(self.payload_end)
    }
    /// Size of every datagram but the last.
    pub fn datagram_len(&self) -> usize {
        self.hdr_len + self.mss
    }
}

/// Like [`segment_vxlan`], but writes only the headers of every segment to `out`
/// (checksums computed over the payload where it lies): the scatter-gather form.
pub fn segment_headers(dgram: &[u8], mss: u16, out: &mut [u8]) -> Result<Headers, GsoError> {
    let Super { h, ihl, doff, seq0, id0, flags0 } = parse(dgram, mss)?;
    let (ip_at, hdrs, mss_n) = (IP_AT, h.hdr_len, h.mss);
    if hdrs * h.segments > out.len() {
        return Err(GsoError::TooBig);
    }
    for k in 0..h.segments {
        let chunk = &dgram[h.payload(k)];
        let seg = &mut out[k * hdrs..(k + 1) * hdrs];
        seg.copy_from_slice(&dgram[..hdrs]);
        let mut ip = Ipv4Packet::new_quoted(&mut seg[ip_at..]).map_err(|_| GsoError::NotTcp)?;
        ip.set_total_len((ihl + doff + chunk.len()) as u16);
        ip.set_ident(id0.wrapping_add(k as u16));
        ip.fill_checksum();
        let (src, dst) = (ip.src().octets(), ip.dst().octets());
        let t = &mut seg[ip_at + ihl..];
        t[tcp_field::SEQ..tcp_field::SEQ + 4].copy_from_slice(&seq0.wrapping_add((k * mss_n) as u32).to_be_bytes());
        t[tcp_field::FLAGS] = segment_flags(flags0, k, h.segments);
        t[tcp_field::CHECKSUM..tcp_field::CHECKSUM + 2].copy_from_slice(&[0, 0]);
        let acc = checksum::pseudo_header_sum(src, dst, PROTO_TCP, (doff + chunk.len()) as u16);
        // The header is an even number of bytes, so the payload's words line up.
        let c = !checksum::fold(checksum::sum(chunk, checksum::sum(&t[..doff], acc)));
        t[tcp_field::CHECKSUM..tcp_field::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn super_packet(payload_len: usize, fin: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([0x8a, 0x40, 0x90, 0x1c, 0xcf, 0x7e], [0x32, 0xa9, 0x79, 0x6d, 0x0b, 0xb1])
            .ipv4([10, 244, 1, 5], [10, 244, 0, 74], 63)
            .tcp(40000, 5201, 1_000_000, 64240)
            .ack(77)
            .psh();
        let b = if fin { b.fin() } else { b };
        let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
        let mut v = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        b.write(&mut v, &payload).unwrap();
        v
    }

    #[test]
    fn segments_like_the_kernel() {
        let sp = super_packet(5000, true);
        let mut out = vec![0u8; MAX_SEGMENTED];
        let s = segment_vxlan(&sp, 1398, &mut out).unwrap();
        assert_eq!(s.segments, 4);
        let hdrs = 8 + 14 + 20 + 20;
        assert_eq!(s.datagram_len, hdrs + 1398);
        assert_eq!(s.len, 4 * hdrs + 5000);
        let mut reassembled = Vec::new();
        for k in 0..4 {
            let start = k * s.datagram_len;
            let end = (start + s.datagram_len).min(s.len);
            let d = &out[start..end];
            assert_eq!(&d[..22], &sp[..22], "VXLAN and inner Ethernet headers copied");
            let ip = Ipv4Packet::new_checked(&d[22..]).unwrap();
            assert!(ip.verify_checksum());
            let t = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(t.verify_checksum(ip.src(), ip.dst()));
            assert_eq!(t.seq_number(), 1_000_000 + (k * 1398) as u32);
            let last = k == 3;
            assert_eq!(t.flags() & TCP_FIN != 0, last);
            assert_eq!(t.flags() & TCP_PSH != 0, last);
            assert_eq!(ip.ident(), Ipv4Packet::new_checked(&sp[22..]).unwrap().ident().wrapping_add(k as u16));
            reassembled.extend_from_slice(t.payload());
        }
        assert_eq!(reassembled, sp[hdrs..]);
    }

    #[test]
    fn scatter_gather_headers_give_the_same_datagrams() {
        for (len, fin) in [(5000, true), (1398 * 3, false), (10, false), (65_000, false)] {
            let sp = super_packet(len, fin);
            let mut whole = vec![0u8; MAX_SEGMENTED];
            let s = segment_vxlan(&sp, 1398, &mut whole).unwrap();
            let mut hdrs = vec![0u8; 8192];
            let h = segment_headers(&sp, 1398, &mut hdrs).unwrap();
            assert_eq!((h.segments, h.datagram_len()), (s.segments, s.datagram_len));
            let mut joined = Vec::new();
            for k in 0..h.segments {
                joined.extend_from_slice(&hdrs[k * h.hdr_len..(k + 1) * h.hdr_len]);
                joined.extend_from_slice(&sp[h.payload(k)]);
            }
            assert_eq!(joined, whole[..s.len], "{len} bytes: the same bytes as the copying segmentation");
        }
    }

    #[test]
    fn refuses_what_it_cannot_segment() {
        let mut out = vec![0u8; MAX_SEGMENTED];
        assert_eq!(segment_vxlan(&super_packet(100, false), 100, &mut out), Err(GsoError::BadMss(100)));
        assert_eq!(segment_vxlan(&[0u8; 30], 1400, &mut out), Err(GsoError::NotTcp));
        let mut small = vec![0u8; 100];
        assert_eq!(segment_vxlan(&super_packet(5000, false), 1398, &mut small), Err(GsoError::TooBig));
    }
}
