//! What a worker is configured with, and the size its frame buffers are made for
//! (shared by the receive loop and the send side).

/// Largest frame a TAP hands over with TSO (64 KB) plus headers.
pub const FRAME_MAX: usize = 65_536 + 256;

#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    pub batch: usize,
    /// Send runs of equal-size VXLAN datagrams with `UDP_SEGMENT`.
    pub udp_gso: bool,
    /// Coalesce TCP segments toward pods into GSO frames (see `core::gro`).
    pub gro: bool,
    /// After handling packets, poll (epoll with no timeout) for this long before
    /// sleeping: a packet that arrives meanwhile costs no wake-up (0 = always sleep).
    pub busy_poll_us: u32,
    /// Segment TCP super-packets scatter-gather (headers in scratch, payload in place)
    /// rather than copying each segment into scratch.
    pub sg_gso: bool,
    /// `MSG_ZEROCOPY` on the VXLAN sends (the sockets have `SO_ZEROCOPY`; see `zerocopy`).
    pub zerocopy: bool,
    /// The pass-through relay instead of the dataplane (`core::relay`), for measuring.
    pub relay: bool,
    pub vxlan_port: u16,
    /// The host port's MTU (the node's `mtu`): frames over it need GSO metadata.
    pub host_mtu: u16,
}
