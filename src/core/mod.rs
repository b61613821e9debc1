//! The sans-IO dataplane: bytes and `now` in, an [`Action`] out.
//!
//! Nothing here makes a syscall, reads a clock or allocates on the path of an
//! established flow. It is not lock-free: every packet with ports (TCP, UDP, ICMP echo)
//! looks up conntrack, which takes the read lock of one dashmap shard when the key may be
//! tracked (a new flow takes that shard's write lock), except a VXLAN frame that replays
//! the decision of the frame before it in its run (`dataplane/run.rs`); the tables are read through arc-swap (lock-free) and the
//! counters are per-worker blocks (plain stores). The shell ([`crate::io`]) hands a frame in a
//! [`Packet`] (a buffer with headroom, rewritten in place) to one of the entry
//! points of [`Dataplane`] and executes the returned [`Action`] with one syscall.
//! The control plane replaces the read-mostly [`tables::Tables`] as a whole.

/// Frames captured in the lab, for unit tests.
#[cfg(test)]
pub(crate) mod captured;
pub mod counters;
mod dataplane;
pub mod fdb;
pub mod frag;
/// Fixtures for fuzz targets: only with the `testkit` feature (fuzz/, benches, tests).
#[cfg(any(test, feature = "testkit"))]
pub mod fuzzing;
/// The differential harness of deciding once per run (`run` fuzz target).
#[cfg(any(test, feature = "testkit"))]
pub mod fuzzing_run;
pub mod gro;
pub mod gso;
pub mod nat;
pub mod offload;
pub mod policy;
pub mod proxy_arp;
mod reject;
pub mod relay;
pub mod route;
pub mod tables;
pub mod trace;
pub mod vxlan;

use std::net::Ipv4Addr;

pub use counters::{Counter, Counters, DropReason};
pub use dataplane::{Dataplane, RunMemo};

/// Monotonic time in nanoseconds since an epoch the shell chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Now(pub u64);

impl Now {
    pub const fn from_secs(s: u64) -> Self {
        Now(s * 1_000_000_000)
    }
    pub fn secs(self) -> u32 {
        (self.0 / 1_000_000_000) as u32
    }
}

/// A local port: the host port (index 0) or a pod's TAP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct PortId(pub u32);

impl PortId {
    /// The port that connects ucanal with the node's own kernel stack (`ucanal0`).
    pub const HOST: PortId = PortId(0);
    pub fn is_host(self) -> bool {
        self == PortId::HOST
    }
}

/// What the shell does with a packet. Each variant is one syscall (or one batch slot).
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write the frame in the packet to a local port.
    ToPort(PortId),
    /// Send the packet (VXLAN header + inner frame) as one UDP datagram to
    /// `remote`:vxlan_port, from the outer source port that `flow_hash` selects.
    ToVtep { remote: Ipv4Addr, flow_hash: u32 },
    /// Count and forget.
    Drop(DropReason),
    /// Kept by the core: a fragment waiting for the rest of its datagram (`frag`).
    Held,
}

/// Room in front of a frame for the VXLAN header and for building an ICMP error in
/// place around a quoted packet.
pub const HEADROOM: usize = 64;

/// Offload metadata that travels with a frame (from/to a TAP's virtio-net header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offload {
    /// The L4 checksum field holds only the pseudo-header sum (CHECKSUM_PARTIAL).
    pub csum_partial: bool,
    /// A TCP super-packet to be segmented at this MSS (0 = a single packet).
    pub gso_size: u16,
    /// An IPv4 datagram to be fragmented at this total length on the way out (0 = as
    /// it is): a reassembled datagram (`frag`), or one over the VXLAN MTU without DF.
    pub frag_size: u16,
}

/// A frame in a caller-owned buffer with headroom: `buf[start..end]`.
///
/// The core writes only inside `buf[floor..]`: with UDP GRO several frames share one
/// receive buffer, and the bytes in front of a later frame are the earlier frame, which
/// the caller may still hold (a GRO run, a pending send). A reply that does not fit in
/// the headroom above the floor is built in the spare buffer instead (`relocate`).
pub struct Packet<'a> {
    buf: &'a mut [u8],
    start: usize,
    end: usize,
    /// The lowest index of `buf` the core may write.
    floor: usize,
    /// The frame lives in the spare buffer (reassembled, or a reply relocated there).
    in_spare: bool,
    pub offload: Offload,
    /// A second buffer (at least `HEADROOM` + 14 + 65 535 bytes) that the core may move
    /// the frame to: where a reassembled datagram is written.
    spare: Option<&'a mut [u8]>,
}

impl<'a> Packet<'a> {
    /// The frame is `buf[start..end]`; `start` bytes are headroom.
    pub fn new(buf: &'a mut [u8], start: usize, end: usize) -> Self {
        assert!(start <= end && end <= buf.len(), "packet range outside its buffer");
        Packet { buf, start, end, floor: 0, in_spare: false, offload: Offload::default(), spare: None }
    }
    /// Forbids writes below `buf[floor]` (the end of a frame the caller still holds).
    pub fn with_floor(mut self, floor: usize) -> Self {
        assert!(floor <= self.start, "floor above the frame");
        self.floor = floor;
        self
    }
    /// The frame is in the spare buffer, not in the buffer it came in: the caller may not
    /// refer to it by its place in its receive buffer, and the next packet reuses the spare.
    pub fn in_spare(&self) -> bool {
        self.in_spare
    }
    /// Lends the packet a spare buffer (see `frag`); without one, fragments are dropped.
    pub fn with_spare(mut self, spare: &'a mut [u8]) -> Self {
        self.spare = Some(spare);
        self
    }
    /// The frame, and the spare buffer to write into.
    pub(crate) fn data_and_spare(&mut self) -> (&[u8], Option<&mut [u8]>) {
        (&self.buf[self.start..self.end], self.spare.as_deref_mut())
    }
    /// Makes the frame written to the spare buffer at `HEADROOM` (`len` bytes) the packet;
    /// the old buffer becomes the spare.
    pub(crate) fn use_spare(&mut self, len: usize) {
        if let Some(spare) = self.spare.as_mut() {
            std::mem::swap(&mut self.buf, spare);
            self.start = HEADROOM;
            self.end = HEADROOM + len;
            self.floor = 0;
            self.in_spare = true;
        }
    }
    /// Moves the first `keep` bytes of the frame to the spare buffer at `HEADROOM` (for a
    /// reply that needs more room in front than the floor leaves); false without a spare
    /// or when the frame is there already. A copy, but only of what a reply keeps.
    pub(crate) fn relocate(&mut self, keep: usize) -> bool {
        let keep = keep.min(self.len());
        let Some(spare) = self.spare.as_deref_mut() else { return false };
        if self.in_spare || spare.len() < HEADROOM + keep {
            return false;
        }
        spare[HEADROOM..HEADROOM + keep].copy_from_slice(&self.buf[self.start..self.start + keep]);
        self.use_spare(keep);
        true
    }
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
    /// Bytes the frame may grow at the front (down to the floor).
    pub fn headroom(&self) -> usize {
        self.start - self.floor
    }
    pub fn start(&self) -> usize {
        self.start
    }
    /// Grows the frame at the front by `n` bytes; false when the headroom is too small.
    pub fn push_front(&mut self, n: usize) -> bool {
        if self.headroom() < n {
            return false;
        }
        self.start -= n;
        true
    }
    /// Drops `n` bytes from the front (callers have checked the length).
    pub fn pull_front(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }
    /// Cuts the frame to `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.end = self.start + len.min(self.len());
    }
    /// Moves the frame to `buf[start..start+len]` without copying: the caller has
    /// written a new frame there (ICMP errors are built around the quoted packet).
    pub fn set_range(&mut self, start: usize, len: usize) {
        assert!(start + len <= self.buf.len(), "packet range outside its buffer");
        self.start = start;
        self.end = start + len;
    }
    /// The whole buffer, for building a frame in front of the current one: writes stay
    /// within `start() - headroom()..` (the floor).
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        self.buf
    }
}

/// An IPv4 prefix such as `10.244.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Net {
    /// A prefix with its host bits cleared; `None` if `len > 32`.
    pub const fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        if len > 32 {
            return None;
        }
        Some(Ipv4Net { addr: Ipv4Addr::from_bits(addr.to_bits() & mask(len)), len })
    }
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    pub fn prefix_len(&self) -> u8 {
        self.len
    }
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & mask(self.len) == u32::from(self.addr)
    }
    pub fn overlaps(&self, o: &Ipv4Net) -> bool {
        self.contains(o.addr) || o.contains(self.addr)
    }
    pub fn contains_net(&self, o: &Ipv4Net) -> bool {
        o.len >= self.len && self.contains(o.addr)
    }
}

pub(crate) const fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len as u32) }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = s.split_once('/').ok_or_else(|| format!("'{s}' is not a prefix (want a.b.c.d/len)"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("'{a}' is not an IPv4 address"))?;
        let len: u8 = l.parse().map_err(|_| format!("'{l}' is not a prefix length"))?;
        let net = Ipv4Net::new(addr, len).ok_or_else(|| format!("prefix length {len} is over 32"))?;
        if net.addr != addr {
            return Err(format!("'{s}' has host bits set (did you mean {net}?)"));
        }
        Ok(net)
    }
}

impl serde::Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let n: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        assert!(n.contains(Ipv4Addr::new(10, 244, 1, 5)));
        assert!(!n.contains(Ipv4Addr::new(10, 245, 0, 1)));
        assert!(n.contains_net(&"10.244.1.0/24".parse().unwrap()));
        assert!("10.244.1.5/24".parse::<Ipv4Net>().unwrap_err().contains("host bits"));
        assert!("10.244.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("0.0.0.0/0".parse::<Ipv4Net>().unwrap().contains(Ipv4Addr::new(1, 2, 3, 4)));
    }

    #[test]
    fn packet_headroom() {
        let mut b = [0u8; 100];
        let mut p = Packet::new(&mut b, HEADROOM, 80);
        assert_eq!(p.len(), 16);
        assert!(p.push_front(8));
        assert_eq!(p.len(), 24);
        p.pull_front(8);
        assert!(!p.push_front(HEADROOM + 1));
        p.truncate(4);
        assert_eq!(p.len(), 4);
    }
}
