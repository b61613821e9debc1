//! The VXLAN header (RFC 7348 §5), as the Linux vxlan driver writes and accepts it.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//! Linux (`vxlan_rcv`) drops a datagram whose I flag is clear or which carries any
//! flag or reserved bit it did not parse; without GBP/RCO extensions that means the
//! first word must be exactly 0x08000000 and the last byte 0. ucanal is as strict.

use super::{WireError, need};

pub const HEADER_LEN: usize = 8;
const FLAG_I: u8 = 0x08;
/// The IANA port is 4789; flannel (and the Linux default) use 8472.
pub const FLANNEL_PORT: u16 = 8472;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const OVERHEAD: usize = 50;

/// Parses a VXLAN header and returns the VNI.
pub fn parse(datagram: &[u8]) -> Result<u32, WireError> {
    need("vxlan", HEADER_LEN, datagram.len())?;
    if datagram[0] & FLAG_I == 0 {
        return Err(WireError::Malformed { what: "vxlan", why: "I flag clear" });
    }
    if datagram[0] != FLAG_I || datagram[1..4] != [0, 0, 0] || datagram[7] != 0 {
        return Err(WireError::Malformed { what: "vxlan", why: "reserved bits set" });
    }
    Ok(u32::from_be_bytes([0, datagram[4], datagram[5], datagram[6]]))
}

/// Writes the 8-byte header for `vni` (24 bits) into `buf`.
pub fn emit(buf: &mut [u8], vni: u32) {
    buf[..4].copy_from_slice(&[FLAG_I, 0, 0, 0]);
    let v = vni.to_be_bytes();
    buf[4..8].copy_from_slice(&[v[1], v[2], v[3], 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header flannel.1 (VNI 1) puts on every frame.
    const VNI1: [u8; 8] = [0x08, 0, 0, 0, 0, 0, 0x01, 0];

    #[test]
    fn round_trip() {
        assert_eq!(parse(&VNI1), Ok(1));
        let mut b = [0xffu8; 8];
        emit(&mut b, 1);
        assert_eq!(b, VNI1);
        emit(&mut b, 0x00ab_cdef);
        assert_eq!(parse(&b), Ok(0x00ab_cdef));
    }

    #[test]
    fn strict_like_linux() {
        let mut b = VNI1;
        b[0] = 0;
        assert!(parse(&b).is_err());
        b = VNI1;
        b[0] = 0x88; // G flag (GBP) not configured
        assert!(parse(&b).is_err());
        b = VNI1;
        b[7] = 1;
        assert!(parse(&b).is_err());
        assert!(parse(&VNI1[..7]).is_err());
    }
}
