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
mod tests {
    use super::*;
    use crate::core::gso::segment_vxlan;
    use crate::wire::l4;
    use etherparse::PacketBuilder;

    const A: [u8; 4] = [10, 244, 0, 74];
    const B: [u8; 4] = [10, 244, 1, 5];
    const MAC_D: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05];
    const MAC_S: [u8; 6] = [0xee; 6];

    /// A data segment 10.244.0.74:5201 -> 10.244.1.5:40000 as it leaves decap, with TCP
    /// timestamps (the 12 option bytes Linux sends) and DF.
    fn seg(seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2(MAC_S, MAC_D)
            .ipv4(A, B, 62)
            .tcp(5201, 40000, seq, 502)
            .ack(7777)
            .options(&[
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Timestamp(1, 2),
            ])
            .unwrap();
        if psh {
            b = b.psh();
        }
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        // DF, as Linux sends TCP with path-MTU discovery; fix the IP checksum.
        v[14 + 6] |= 0x40;
        v[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&v[14..34]);
        v[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
        v
    }

    fn payload(n: usize, salt: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt)).collect()
    }

    /// `seg` with its checksum left partial, as a kernel peer's veth hands it on.
    fn partial_seg(seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
        let mut v = seg(seq, payload, psh);
        let len = (v.len() - L4) as u16;
        let ps = checksum::fold(checksum::pseudo_header_sum(A, B, PROTO_TCP, len));
        v[L4 + 16..L4 + 18].copy_from_slice(&ps.to_be_bytes());
        v
    }

    /// Coalesces `frames` the way the worker does (a frame is partial when decap found it
    /// so); returns the finished frames and offloads.
    fn coalesce(frames: &[Vec<u8>]) -> Vec<(Vec<u8>, Offload)> {
        let mut out = Vec::new();
        let mut cur: Option<(Vec<u8>, Run)> = None;
        for f in frames {
            let partial = crate::core::offload::is_partial(&f[ETH_LEN..]);
            let s = candidate(f, partial);
            if let (Some(s), Some((buf, run))) = (s, cur.as_mut())
                && run.accepts(buf, f, &s)
            {
                buf.extend_from_slice(&f[s.hdr_len..]);
                run.joined(&s);
                continue;
            }
            if let Some((mut buf, run)) = cur.take() {
                let o = run.finish(&mut buf);
                out.push((buf, o));
            }
            match s {
                Some(s) => cur = Some((f.clone(), Run::start(&s))),
                None => out.push((f.clone(), Offload { csum_partial: partial, gso_size: 0, frag_size: 0 })),
            }
        }
        if let Some((mut buf, run)) = cur.take() {
            let o = run.finish(&mut buf);
            out.push((buf, o));
        }
        out
    }

    /// The payloads of a coalesced frame, re-segmented the way the pod's TAP would (via
    /// our own segmenter, which the kernel's `tcp_gso_segment` semantics are tested against).
    fn resegment(frame: &[u8], o: Offload) -> Vec<Vec<u8>> {
        let mut dgram = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        dgram.extend_from_slice(frame);
        let mut out = vec![0u8; crate::core::gso::MAX_SEGMENTED];
        let s = segment_vxlan(&dgram, o.gso_size, &mut out).unwrap();
        (0..s.segments).map(|k| out[k * s.datagram_len + 8..((k + 1) * s.datagram_len).min(s.len)].to_vec()).collect()
    }

    #[test]
    fn consecutive_segments_become_one_gso_frame() {
        let mss = 1398;
        let (p1, p2, p3) = (payload(mss, 1), payload(mss, 2), payload(700, 3));
        let frames =
            vec![seg(1000, &p1, false), seg(1000 + mss as u32, &p2, false), seg(1000 + 2 * mss as u32, &p3, true)];
        let out = coalesce(&frames);
        assert_eq!(out.len(), 1);
        let (f, o) = &out[0];
        assert_eq!(*o, Offload { csum_partial: true, gso_size: mss as u16, frag_size: 0 });
        let hdr = 14 + 20 + 32;
        assert_eq!(f.len(), hdr + 2 * mss + 700);
        assert_eq!(&f[hdr..], [p1, p2, p3].concat().as_slice());
        // IP: total length and a valid header checksum; PSH from the last segment.
        assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, f.len() - 14);
        assert_eq!(checksum::checksum(&f[14..34]), 0);
        assert_ne!(f[34 + 13] & TCP_PSH, 0);
        // TCP checksum field: the pseudo-header sum; finishing it gives a valid checksum.
        let mut full = f[14..].to_vec();
        l4::finish_partial_checksum(&mut full);
        assert!(l4::verify_checksum(&full));
        // Re-segmented at the MSS, the pod's stack would see exactly the original segments.
        let back = resegment(f, *o);
        assert_eq!(back.len(), 3);
        // (but the IP ID, which the segmenter numbers up, and so the IP checksum).
        for (k, orig) in frames.iter().enumerate() {
            let (b, o) = (&back[k][14..], &orig[14..]);
            assert!(
                b.len() == o.len() && b[..4] == o[..4] && b[6..10] == o[6..10] && b[12..] == o[12..],
                "segment {k}"
            );
            assert_eq!(checksum::checksum(&b[..20]), 0, "segment {k} IP checksum");
        }
    }

    /// 46 full segments of a kernel peer's bulk transfer, each with a partial checksum:
    /// one 64 KB GSO frame (46 x 1398 + 52 header bytes = 64 360; a 47th would pass the
    /// IP length limit and starts the next run), whose segments the pod's stack would see
    /// with complete checksums.
    #[test]
    fn a_partial_64k_run_becomes_one_gso_frame() {
        let mss = 1398;
        let frames: Vec<Vec<u8>> =
            (0..47u32).map(|k| partial_seg(1 + k * mss as u32, &payload(mss, k as u8), false)).collect();
        assert!(frames.iter().all(|f| candidate(f, true).is_some_and(|s| s.partial)));
        // Taken as complete checksums, the same bytes are corrupt: never candidates.
        assert!(frames.iter().all(|f| candidate(f, false).is_none()));
        let out = coalesce(&frames);
        assert_eq!(out.len(), 2);
        let (f, o) = &out[0];
        assert_eq!(*o, Offload { csum_partial: true, gso_size: mss as u16, frag_size: 0 });
        let hdr = 14 + 20 + 32;
        assert_eq!(f.len(), hdr + 46 * mss);
        assert_eq!(f.len() - ETH_LEN, 64_360);
        let payloads: Vec<u8> = frames[..46].iter().flat_map(|s| s[hdr..].to_vec()).collect();
        assert_eq!(&f[hdr..], payloads.as_slice());
        let mut full = f[14..].to_vec();
        l4::finish_partial_checksum(&mut full);
        assert!(l4::verify_checksum(&full));
        let back = resegment(f, *o);
        assert_eq!(back.len(), 46);
        for (k, b) in back.iter().enumerate() {
            assert!(l4::verify_checksum(&b[14..]), "segment {k} leaves with a complete checksum");
            assert_eq!(&b[hdr..], &frames[k][hdr..]);
        }
        // The 47th: a run of one, still partial.
        assert_eq!(out[1], (frames[46].clone(), Offload { csum_partial: true, gso_size: 0, frag_size: 0 }));
    }

    #[test]
    fn a_corrupt_segment_breaks_a_partial_run_and_stays_corrupt() {
        let mss = 1000;
        let mut bad = seg(1 + mss as u32, &payload(mss, 2), false);
        bad[L4 + 16] ^= 0x01; // neither the pseudo-header sum nor a valid checksum
        let frames =
            vec![partial_seg(1, &payload(mss, 1), false), bad.clone(), partial_seg(2001, &payload(mss, 3), false)];
        let out = coalesce(&frames);
        assert_eq!(out.len(), 3);
        assert_eq!(out[1], (bad.clone(), Offload::default()), "delivered as it came: the pod drops it");
        assert!(!l4::verify_checksum(&out[1].0[14..]));
        assert_eq!(out[0].1, Offload { csum_partial: true, gso_size: 0, frag_size: 0 });
    }

    #[test]
    fn out_of_order_segment_starts_a_new_run() {
        let mss = 1000;
        let frames = vec![seg(1, &payload(mss, 1), false), seg(1 + 2 * mss as u32, &payload(mss, 2), false)];
        let out = coalesce(&frames);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(f, o)| *o == Offload::default() && frames.contains(f)));
    }

    #[test]
    fn a_larger_segment_after_a_short_one_does_not_join() {
        let frames = vec![seg(1, &payload(500, 1), false), seg(501, &payload(1000, 2), false)];
        assert_eq!(coalesce(&frames).len(), 2);
        // A short segment closes the run: nothing joins after it.
        let frames = vec![
            seg(1, &payload(1000, 1), false),
            seg(1001, &payload(500, 2), false),
            seg(1501, &payload(500, 3), false),
        ];
        let out = coalesce(&frames);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1.gso_size, 1000);
        assert_eq!(out[1].0, frames[2]);
    }

    #[test]
    fn psh_ends_the_run() {
        let frames = vec![seg(1, &payload(1000, 1), true), seg(1001, &payload(1000, 2), false)];
        let out = coalesce(&frames);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], (frames[0].clone(), Offload::default()));
    }

    #[test]
    fn header_differences_keep_segments_apart() {
        let base = seg(1, &payload(1000, 1), false);
        // window, ACK number, TTL, TOS, timestamp option: each differs in the second segment.
        let changes: [(usize, u8); 5] = [(34 + 14, 0x7f), (34 + 8, 0x55), (14 + 8, 1), (14 + 1, 0x10), (34 + 30, 9)];
        for (at, v) in changes {
            let mut second = seg(1001, &payload(1000, 2), false);
            second[at] ^= v;
            // Keep the checksums valid so only the header difference matters.
            second[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
            let c = checksum::checksum(&second[14..34]);
            second[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
            l4::fill_checksum(&mut second[14..]);
            assert!(candidate(&second, false).is_some(), "byte {at} still a candidate");
            assert_eq!(coalesce(&[base.clone(), second]).len(), 2, "byte {at} differs: no merge");
        }
    }

    #[test]
    fn non_candidates() {
        let good = seg(1, &payload(100, 1), false);
        assert!(candidate(&good, false).is_some());
        // Bad TCP checksum: never merged into a frame the pod trusts.
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 0xff;
        assert_eq!(candidate(&bad, false), None);
        // SYN, FIN, no payload, no DF, a fragment, trailing bytes, truncated, UDP.
        let mut syn = good.clone();
        syn[34 + 13] = 0x12;
        l4::fill_checksum(&mut syn[14..]);
        assert_eq!(candidate(&syn, false), None);
        let mut fin = good.clone();
        fin[34 + 13] = 0x11;
        l4::fill_checksum(&mut fin[14..]);
        assert_eq!(candidate(&fin, false), None);
        assert_eq!(candidate(&seg(1, &[], false), false), None);
        let mut nodf = good.clone();
        nodf[14 + 6] &= !0x40;
        nodf[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&nodf[14..34]);
        nodf[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(candidate(&nodf, false), None);
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0; 4]);
        assert_eq!(candidate(&trailing, false), None);
        for n in 0..good.len() {
            let _ = candidate(&good[..n], false);
            let _ = same_flow(&good, &good[..n]);
        }
        let mut udp = Vec::new();
        PacketBuilder::ethernet2(MAC_S, MAC_D).ipv4(A, B, 62).udp(53, 53).write(&mut udp, &[1, 2, 3]).unwrap();
        assert_eq!(candidate(&udp, false), None);
        assert!(!same_flow(&good, &udp));
    }

    #[test]
    fn same_flow_matches_addresses_and_ports_only() {
        let a = seg(1, &payload(100, 1), false);
        let mut fin = seg(101, &[], false);
        fin[34 + 13] = 0x11;
        assert!(same_flow(&a, &fin));
        let mut other = a.clone();
        other[34..36].copy_from_slice(&5202u16.to_be_bytes());
        assert!(!same_flow(&a, &other));
    }

    #[test]
    fn runs_stop_below_the_ip_length_limit() {
        let mss = 9000;
        let mut frames = Vec::new();
        for k in 0..8u32 {
            frames.push(seg(1 + k * mss as u32, &payload(mss, k as u8), false));
        }
        let out = coalesce(&frames);
        assert_eq!(out.len(), 2);
        let hdr = 14 + 20 + 32;
        // 7 x 9000 + 52 bytes of IP+TCP header fit in 65 535; 8 would not.
        assert_eq!(out[0].0.len(), hdr + 7 * mss);
        assert_eq!(out[1].0, frames[7]);
    }
}
