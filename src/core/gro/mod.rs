//! Userspace GRO toward pods: consecutive TCP segments of one flow, decapsulated from
//! VXLAN in one receive batch, leave as one TCP/IPv4 super-packet written to the pod's
//! TAP with a GSO virtio header, so the pod's stack handles one packet instead of ~45.
//!
//! The rules follow the kernel's `inet_gro_receive` / `tcp_gro_receive`: a segment joins
//! a run only if everything but the IP length, ID and checksum and the TCP sequence
//! number, checksum and PSH flag is identical to the run's first segment (MACs, TOS, TTL,
//! DF, addresses, ports, ACK number, data offset, flags, window, options), its sequence
//! number is the one the run expects, and it is no larger than the first segment's
//! payload (the run's MSS). A short segment or one with PSH ends the run after joining it.
//! Only IPv4 without options, DF set, not a fragment, TCP with ACK or ACK|PSH and a
//! payload, and a TCP checksum that verifies, is a candidate: a corrupt segment is never
//! merged into a frame whose checksum the pod then trusts. A segment whose checksum is
//! partial (a kernel peer's veth hands them on so; see `offload`) is a candidate too:
//! its field must be exactly its pseudo-header sum, as the kernel's own GRO takes a
//! `CHECKSUM_PARTIAL` skb without verifying it.
//!
//! The finished frame carries the pseudo-header sum in the TCP checksum field
//! (`CHECKSUM_PARTIAL`), as the kernel's GRO leaves it; the pod's TAP is told so through
//! the virtio header (see `Offload`).

use super::Offload;
use crate::wire::checksum;
use crate::wire::ethernet::{self, ETHERTYPE_IPV4, HEADER_LEN as ETH_LEN};
use crate::wire::ipv4::{self, Ipv4Packet, PROTO_TCP};
use crate::wire::l4::Ports;
use crate::wire::tcp::{self, ACK as TCP_ACK, PSH as TCP_PSH, TcpPacket};

const IP_LEN: usize = ipv4::MIN_HEADER_LEN;
/// Where the TCP header starts in a candidate frame (Ethernet + IPv4 without options).
const L4: usize = ETH_LEN + IP_LEN;
/// The largest IPv4 total length.
const MAX_IP_TOTAL: usize = 65_535;

/// A frame toward a pod that may start or join a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Ethernet + IPv4 + TCP header bytes (the payload starts here).
    pub hdr_len: usize,
    pub payload_len: usize,
    pub seq: u32,
    pub psh: bool,
    /// The checksum field holds only the pseudo-header sum.
    pub partial: bool,
}

/// Whether `frame` (Ethernet + IPv4 + TCP, exactly its length) can be coalesced;
/// `partial` says its TCP checksum is partial (`Offload::csum_partial`).
pub fn candidate(frame: &[u8], partial: bool) -> Option<Segment> {
    if frame.len() < L4 + tcp::MIN_HEADER_LEN
        || frame[ethernet::field::ETHERTYPE..ETH_LEN] != ETHERTYPE_IPV4.to_be_bytes()
    {
        return None;
    }
    let ip = Ipv4Packet::new_checked(&frame[ETH_LEN..]).ok()?;
    // No options; TCP; flags exactly DF (MF and the reserved bit clear), offset 0; no
    // trailing bytes.
    if ip.header_len() != IP_LEN
        || ip.protocol() != PROTO_TCP
        || ip.header()[ipv4::field::FLAGS_FRAG..ipv4::field::TTL] != ipv4::FLAG_DF.to_be_bytes()
        || ip.total_len() != frame.len() - ETH_LEN
    {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let flags = tcp.flags();
    let reserved = ip.payload()[tcp::field::DATA_OFF] & 0x0f;
    if tcp.payload().is_empty() || (flags != TCP_ACK && flags != TCP_ACK | TCP_PSH) || reserved != 0 {
        return None;
    }
    let valid = if partial {
        let pseudo = checksum::pseudo_header_sum(ip.src().octets(), ip.dst().octets(), PROTO_TCP, tcp_len(&ip));
        tcp.checksum() == checksum::fold(pseudo)
    } else {
        tcp.verify_checksum(ip.src(), ip.dst())
    };
    if !ip.verify_checksum() || !valid {
        return None;
    }
    Some(Segment {
        hdr_len: L4 + tcp.header_len(),
        payload_len: tcp.payload().len(),
        seq: tcp.seq_number(),
        psh: flags & TCP_PSH != 0,
        partial,
    })
}

/// The TCP length of an IPv4 packet (for the pseudo header).
fn tcp_len(ip: &Ipv4Packet<&[u8]>) -> u16 {
    (ip.total_len() - ip.header_len()) as u16
}

/// Whether two frames belong to one TCP flow (addresses and ports), whatever else differs:
/// a segment of a flow with an open run that cannot join it must first flush the run, so
/// the pod sees the flow's bytes in order. `frame` need not be a candidate.
pub fn same_flow(first: &[u8], frame: &[u8]) -> bool {
    let flow = |f: &[u8]| {
        if f.get(ethernet::field::ETHERTYPE..ETH_LEN)? != ETHERTYPE_IPV4.to_be_bytes() {
            return None;
        }
        let ip = Ipv4Packet::new_quoted(f.get(ETH_LEN..)?).ok()?;
        let ports = Ports::new_checked(ip.payload()).ok()?;
        (ip.protocol() == PROTO_TCP).then(|| (ip.src(), ip.dst(), ports.src_port(), ports.dst_port()))
    };
    flow(frame).is_some_and(|f| Some(f) == flow(first))
}

/// An open run: its first segment's header lives in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub hdr_len: usize,
    /// The MSS of the run: the first segment's payload length.
    pub gso_size: usize,
    pub payload_len: usize,
    pub next_seq: u32,
    pub segments: usize,
    pub psh: bool,
    /// A short segment or PSH joined: nothing more may.
    pub closed: bool,
    /// The first segment's checksum is partial (what a run of one leaves with).
    pub partial: bool,
}

impl Run {
    pub fn start(s: &Segment) -> Run {
        Run {
            hdr_len: s.hdr_len,
            gso_size: s.payload_len,
            payload_len: s.payload_len,
            next_seq: s.seq.wrapping_add(s.payload_len as u32),
            segments: 1,
            psh: s.psh,
            closed: s.psh,
            partial: s.partial,
        }
    }

    /// Whether `frame` (a candidate, described by `s`) may join this run, whose first
    /// segment's headers are `first[..self.hdr_len]`.
    pub fn accepts(&self, first: &[u8], frame: &[u8], s: &Segment) -> bool {
        if self.closed
            || s.hdr_len != self.hdr_len
            || s.seq != self.next_seq
            || s.payload_len > self.gso_size
            || self.hdr_len + self.payload_len + s.payload_len > ETH_LEN + MAX_IP_TOTAL
            || first.len() < self.hdr_len
        {
            return false;
        }
        let (a, b) = (&first[..self.hdr_len], &frame[..s.hdr_len]);
        let same = |at: usize, range: std::ops::Range<usize>| {
            a[at + range.start..at + range.end] == b[at + range.start..at + range.end]
        };
        let (ip, tcp) = (ETH_LEN, L4);
        use crate::wire::{ipv4::field as i, tcp::field as t};
        // Ethernet; IP version/IHL/TOS; flags/fragment, TTL, protocol; addresses.
        a[..ip] == b[..ip]
            && same(ip, i::VER_IHL..i::TOTAL_LEN)
            && same(ip, i::FLAGS_FRAG..i::CHECKSUM)
            && same(ip, i::SRC..IP_LEN)
            // TCP ports; ACK number; data offset; flags but PSH; window; urgent pointer; options.
            && same(tcp, t::SRC_PORT..t::SEQ)
            && same(tcp, t::ACK..t::FLAGS)
            && (a[tcp + t::FLAGS] | TCP_PSH) == (b[tcp + t::FLAGS] | TCP_PSH)
            && same(tcp, t::WINDOW..t::CHECKSUM)
            && a[tcp + t::URGENT..] == b[tcp + t::URGENT..]
    }

    /// Accounts for a segment the caller appended after the run's bytes.
    pub fn joined(&mut self, s: &Segment) {
        self.payload_len += s.payload_len;
        self.next_seq = s.seq.wrapping_add(s.payload_len as u32);
        self.segments += 1;
        self.psh |= s.psh;
        self.closed = s.psh || s.payload_len < self.gso_size;
    }

    /// The offload of a run that stayed one segment: the segment's own.
    pub fn single(&self) -> Offload {
        Offload { csum_partial: self.partial, gso_size: 0, frag_size: 0 }
    }

    /// The frame's length: headers plus every joined payload.
    pub fn len(&self) -> usize {
        self.hdr_len + self.payload_len
    }

    pub fn is_empty(&self) -> bool {
        self.payload_len == 0
    }

    /// Makes `frame[..self.len()]` (the first segment's headers followed by every payload)
    /// one TCP super-packet: IP total length and checksum, PSH when any segment had it,
    /// the pseudo-header sum in the TCP checksum field. Returns the offload metadata for
    /// the TAP write. A run of one segment is left as it is.
    pub fn finish(&self, frame: &mut [u8]) -> Offload {
        if self.segments < 2 {
            return self.single();
        }
        let total = self.len() - ETH_LEN;
        let Ok(mut ip) = Ipv4Packet::new_quoted(&mut frame[ETH_LEN..self.len()]) else { return Offload::default() };
        ip.set_total_len(total as u16);
        let (src, dst) = (ip.src(), ip.dst());
        let Ok(mut tcp) = TcpPacket::new_quoted(ip.payload_mut()) else { return Offload::default() };
        if self.psh {
            tcp.set_flags(tcp.flags() | TCP_PSH);
        }
        let pseudo =
            checksum::fold(checksum::pseudo_header_sum(src.octets(), dst.octets(), PROTO_TCP, (total - IP_LEN) as u16));
        tcp.set_checksum(pseudo);
        Offload { csum_partial: true, gso_size: self.gso_size as u16, frag_size: 0 }
    }
}

#[cfg(test)]
mod tests;
