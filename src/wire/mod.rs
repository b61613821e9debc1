//! Packet views and in-place rewrites.
//!
//! Each type here is a view over a byte buffer: its length is checked once, in
//! `new_checked` (or, for a packet quoted in an ICMP error, `new_quoted`, which needs
//! only the header), so the accessors that follow cannot panic. Field offsets are
//! named constants. Setters that change a covered field fix the checksum
//! incrementally (RFC 1624) and skip the work when the value does not change.
//! Building whole packets for tests and for the synthetic trace uses etherparse.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod l4;
pub mod ports;
pub mod tcp;
pub mod udp;
pub mod vnet;
pub mod vxlan;

use std::fmt;
use std::str::FromStr;

/// What is wrong with a packet, named so that a drop counter or an error message
/// can say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{what}: truncated, need {need} bytes, have {have}")]
    Truncated { what: &'static str, need: usize, have: usize },
    #[error("{what}: malformed ({why})")]
    Malformed { what: &'static str, why: &'static str },
    #[error("{what}: bad checksum")]
    BadChecksum { what: &'static str },
}

/// Reads a big-endian 16-bit field (callers' views have checked the length).
#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Writes a big-endian 16-bit field (callers' views have checked the length).
#[inline]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn need(what: &'static str, need: usize, have: usize) -> Result<(), WireError> {
    if have < need { Err(WireError::Truncated { what, need, have }) } else { Ok(()) }
}

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);
    /// The host-side MAC Calico gives every workload interface.
    pub const CALICO_HOST: MacAddr = MacAddr([0xee; 6]);

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && *self != MacAddr::ZERO
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a MAC address (want six hex pairs separated by ':')")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(|| MacParseError(s.to_string()))?;
            if p.len() != 2 {
                return Err(MacParseError(s.to_string()));
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| MacParseError(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(MacParseError(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m: MacAddr = "8a:40:90:1c:cf:7e".parse().unwrap();
        assert_eq!(m.0, [0x8a, 0x40, 0x90, 0x1c, 0xcf, 0x7e]);
        assert_eq!(m.to_string(), "8a:40:90:1c:cf:7e");
        assert!(m.is_unicast());
        assert!(MacAddr::BROADCAST.is_multicast());
        for bad in
            ["8a:40:90:1c:cf", "8a:40:90:1c:cf:7e:00", "8a-40-90-1c-cf-7e", "zz:40:90:1c:cf:7e", "8a:4:90:1c:cf:7e0"]
        {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
