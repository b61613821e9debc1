//! Bounded reassembly of IPv4 datagrams from their fragments (RFC 791 §3.2), with the
//! limits and the overlap rule of Linux's `ip_fragment.c` (see the module above).

use super::Limits;
use crate::core::{DropReason, Now};
use crate::wire::checksum;
use crate::wire::ethernet::HEADER_LEN as ETH_LEN;

/// The largest IPv4 datagram.
const MAX_DATAGRAM: usize = 65_535;

/// What identifies a datagram's fragments (RFC 791: source, destination, protocol, ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    id: u16,
}

/// One datagram being reassembled. Its buffers are allocated the first time the slot is
/// used and kept for the next datagram: after warm-up, reassembly allocates nothing.
struct Slot {
    key: Key,
    live: bool,
    since: Now,
    /// The payload bytes at their offsets.
    data: Vec<u8>,
    /// Received payload ranges, sorted, never overlapping.
    ranges: Vec<(usize, usize)>,
    /// The payload length, once the last fragment (MF clear) arrived.
    total: Option<usize>,
    got: usize,
    /// The first fragment's Ethernet and IPv4 headers (offset 0), once it arrived.
    eth: [u8; ETH_LEN],
    header: [u8; 60],
    hl: usize,
    /// The largest fragment seen (IPv4 total length): the size to re-fragment at.
    max_frag: usize,
}

/// What became of a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Kept until the rest of its datagram arrives.
    Held,
    /// Its datagram is whole: Ethernet + IPv4 written to `out[..len]`; `max_frag` is the
    /// largest fragment's IPv4 total length.
    Complete { len: usize, max_frag: u16 },
    /// Refused (and, for an overlap or an inconsistent length, its datagram dropped too).
    Dropped(DropReason),
}

/// [`Pushed`] plus the datagrams that timed out meanwhile (each a counted drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub pushed: Pushed,
    pub expired: u32,
}

/// Datagrams in reassembly.
pub struct Reassembler {
    limits: Limits,
    slots: Vec<Slot>,
    /// Payload bytes held by live datagrams.
    bytes: usize,
}

impl Reassembler {
    pub fn new(limits: Limits) -> Self {
        Reassembler { limits, slots: Vec::new(), bytes: 0 }
    }

    /// (datagrams, payload bytes) held now.
    pub fn held(&self) -> (usize, usize) {
        (self.slots.iter().filter(|s| s.live).count(), self.bytes)
    }

    /// Adds the fragment `frame` (Ethernet + IPv4, exactly its total length; the header
    /// already checked, MF or a fragment offset set). On completion the datagram is
    /// written to `out` (which must hold 14 + 65 535 bytes).
    pub fn push(&mut self, frame: &[u8], now: Now, out: &mut [u8]) -> Outcome {
        let expired = self.expire(now);
        let pushed = self.insert(frame, now, out);
        Outcome { pushed, expired }
    }

    /// Frees datagrams older than the timeout; returns how many.
    pub fn expire(&mut self, now: Now) -> u32 {
        let mut n = 0;
        for s in self.slots.iter_mut().filter(|s| s.live) {
            if now.0.saturating_sub(s.since.0) > self.limits.timeout_ns {
                s.live = false;
                self.bytes -= s.got;
                n += 1;
            }
        }
        n
    }

    fn insert(&mut self, frame: &[u8], now: Now, out: &mut [u8]) -> Pushed {
        let Some(ip) = frame.get(ETH_LEN..) else { return Pushed::Dropped(DropReason::FragmentMalformed) };
        if ip.len() < 20 {
            return Pushed::Dropped(DropReason::FragmentMalformed);
        }
        let hl = usize::from(ip[0] & 0x0f) * 4;
        let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let frag = u16::from_be_bytes([ip[6], ip[7]]);
        let mf = frag & 0x2000 != 0;
        let off = usize::from(frag & 0x1fff) * 8;
        if hl < 20 || total_len > ip.len() || total_len <= hl {
            return Pushed::Dropped(DropReason::FragmentMalformed);
        }
        let payload = &ip[hl..total_len];
        let end = off + payload.len();
        // Every fragment but the last carries a multiple of 8 bytes; the whole fits 64 KB.
        if (mf && payload.len() % 8 != 0) || hl + end > MAX_DATAGRAM {
            return Pushed::Dropped(DropReason::FragmentMalformed);
        }
        let key = Key {
            src: [ip[12], ip[13], ip[14], ip[15]],
            dst: [ip[16], ip[17], ip[18], ip[19]],
            proto: ip[9],
            id: u16::from_be_bytes([ip[4], ip[5]]),
        };
        let i = match self.slots.iter().position(|s| s.live && s.key == key) {
            Some(i) => i,
            None => match self.start(key, now) {
                Some(i) => i,
                None => return Pushed::Dropped(DropReason::FragmentLimit),
            },
        };
        if self.bytes + payload.len() > self.limits.bytes {
            return Pushed::Dropped(DropReason::FragmentLimit);
        }
        let s = &mut self.slots[i];
        // The last fragment fixes the length; nothing may lie beyond it, nor may a second
        // "last" disagree (Linux discards the whole queue).
        let beyond = s.ranges.last().is_some_and(|r| r.1 > end);
        let inconsistent = match s.total {
            Some(t) => end > t || (!mf && end != t),
            None => !mf && beyond,
        };
        if inconsistent {
            return self.kill(i, DropReason::FragmentOverlap);
        }
        if s.ranges.iter().any(|&(a, b)| a == off && b == end) {
            // An exact duplicate (a retransmission): dropped alone.
            return Pushed::Dropped(DropReason::FragmentOverlap);
        }
        if s.ranges.iter().any(|&(a, b)| off < b && a < end) {
            return self.kill(i, DropReason::FragmentOverlap);
        }
        if s.ranges.len() == self.limits.fragments {
            return self.kill(i, DropReason::FragmentLimit);
        }
        let at = s.ranges.partition_point(|r| r.0 < off);
        s.ranges.insert(at, (off, end));
        s.data[off..end].copy_from_slice(payload);
        s.got += payload.len();
        self.bytes += payload.len();
        s.max_frag = s.max_frag.max(total_len);
        if !mf {
            s.total = Some(end);
        }
        if off == 0 {
            s.eth.copy_from_slice(&frame[..ETH_LEN]);
            s.header[..hl].copy_from_slice(&ip[..hl]);
            s.hl = hl;
        }
        match s.total {
            Some(t) if s.got == t && s.hl > 0 => self.complete(i, out),
            _ => Pushed::Held,
        }
    }

    /// A slot for a new datagram: a free one, or a new one within the limits.
    fn start(&mut self, key: Key, now: Now) -> Option<usize> {
        let i = match self.slots.iter().position(|s| !s.live) {
            Some(i) => i,
            None if self.slots.len() < self.limits.datagrams => {
                self.slots.push(Slot {
                    key,
                    live: false,
                    since: now,
                    data: vec![0; MAX_DATAGRAM],
                    ranges: Vec::with_capacity(self.limits.fragments),
                    total: None,
                    got: 0,
                    eth: [0; ETH_LEN],
                    header: [0; 60],
                    hl: 0,
                    max_frag: 0,
                });
                self.slots.len() - 1
            }
            None => return None,
        };
        let s = &mut self.slots[i];
        s.key = key;
        s.live = true;
        s.since = now;
        s.ranges.clear();
        s.total = None;
        s.got = 0;
        s.hl = 0;
        s.max_frag = 0;
        Some(i)
    }

    fn kill(&mut self, i: usize, why: DropReason) -> Pushed {
        let s = &mut self.slots[i];
        s.live = false;
        self.bytes -= s.got;
        Pushed::Dropped(why)
    }

    /// Writes the whole datagram: the first fragment's headers with the total length
    /// set, MF and the offset cleared, and a new header checksum.
    fn complete(&mut self, i: usize, out: &mut [u8]) -> Pushed {
        let s = &mut self.slots[i];
        s.live = false;
        self.bytes -= s.got;
        let (hl, t) = (s.hl, s.got);
        let len = ETH_LEN + hl + t;
        if hl + t > MAX_DATAGRAM || out.len() < len {
            return Pushed::Dropped(DropReason::FragmentMalformed);
        }
        out[..ETH_LEN].copy_from_slice(&s.eth);
        let ip = &mut out[ETH_LEN..len];
        ip[..hl].copy_from_slice(&s.header[..hl]);
        ip[2..4].copy_from_slice(&((hl + t) as u16).to_be_bytes());
        ip[6] &= 0xc0; // keep the reserved and DF bits; MF and the offset go
        ip[7] = 0;
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&ip[..hl]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip[hl..].copy_from_slice(&s.data[..t]);
        Pushed::Complete { len, max_frag: s.max_frag as u16 }
    }
}
