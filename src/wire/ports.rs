//! The ends of a flow as NAT names them, apart from any header's view: the two ports
//! every TCP and UDP header starts with, which end a rewrite touches, and the
//! checksum-keeping rewrite of one end. A leaf: `tcp`, `udp`, `icmp` and `l4` all use
//! it, and it uses none of them (so the views and the dispatcher form no cycle).

use std::net::Ipv4Addr;

use super::checksum;
use super::{WireError, be16, need, put16};

/// Where TCP and UDP keep their ports (the same first four bytes in both).
pub(crate) const SRC_PORT: usize = 0;
pub(crate) const DST_PORT: usize = 2;

/// The flow-identifying part of an L4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4Ports {
    pub sport: u16,
    pub dport: u16,
    /// TCP flags; 0 for UDP and ICMP.
    pub tcp_flags: u8,
}

/// The two ports every TCP and UDP header starts with: all that an ICMP error must
/// quote of one (RFC 792 guarantees 8 bytes), and all a flow hash needs.
#[derive(Debug)]
pub struct Ports<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ports<T> {
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        need("l4 ports", 4, buf.as_ref().len())?;
        Ok(Ports { buf })
    }
    pub fn src_port(&self) -> u16 {
        be16(self.buf.as_ref(), SRC_PORT)
    }
    pub fn dst_port(&self) -> u16 {
        be16(self.buf.as_ref(), DST_PORT)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ports<T> {
    /// Writes one port; a checksum, if the buffer holds one, is the caller's.
    pub fn set(&mut self, end: End, port: u16) {
        let at = match end {
            End::Src => SRC_PORT,
            End::Dst => DST_PORT,
        };
        put16(self.buf.as_mut(), at, port);
    }
}

/// Which end of the flow a rewrite touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Src,
    Dst,
}

/// What NAT changes at one end of a TCP or UDP flow: the address (which the checksum
/// covers through the pseudo header) and the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndRewrite {
    pub end: End,
    pub old_addr: Ipv4Addr,
    pub new_addr: Ipv4Addr,
    pub port: u16,
    /// The checksum field holds only the pseudo-header sum (a pod sent with checksum
    /// offload): it is updated the way the kernel updates a CHECKSUM_PARTIAL field, and
    /// port changes need no update.
    pub csum_partial: bool,
}

impl EndRewrite {
    /// Applies the rewrite to the fixed header `l4` of a TCP or UDP packet (the callers'
    /// views checked its length) whose checksum is at `csum_at`. `zero_is_none`: UDP,
    /// where a checksum of 0 means "none" and a computed 0 is sent as 0xffff.
    pub(crate) fn apply(&self, l4: &mut [u8], csum_at: usize, zero_is_none: bool) {
        let port_at = match self.end {
            End::Src => SRC_PORT,
            End::Dst => DST_PORT,
        };
        let (old_addr, new_addr) = (self.old_addr.octets(), self.new_addr.octets());
        let old_port = be16(l4, port_at);
        let mut c = be16(l4, csum_at);
        if !(zero_is_none && c == 0) {
            if self.csum_partial {
                c = !checksum::update32(!c, old_addr, new_addr);
            } else {
                c = checksum::update32(c, old_addr, new_addr);
                c = checksum::update16(c, old_port, self.port);
                if zero_is_none && c == 0 {
                    c = 0xffff;
                }
            }
            put16(l4, csum_at, c);
        }
        put16(l4, port_at, self.port);
    }
}
