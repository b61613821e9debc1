//! The virtio-net header (`struct virtio_net_hdr`, virtio spec §5.1.6) that a TAP opened
//! with `IFF_VNET_HDR` puts before every frame. It carries checksum-offload and GSO
//! metadata: with `TUNSETOFFLOAD` a pod may hand ucanal a 64 KB TCP super-packet with
//! a partial checksum, and ucanal may hand one back. Little-endian on x86 and arm64.

use super::{WireError, need};

pub const HEADER_LEN: usize = 10;

pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        need("virtio-net header", HEADER_LEN, b.len())?;
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16::from_le_bytes([b[2], b[3]]),
            gso_size: u16::from_le_bytes([b[4], b[5]]),
            csum_start: u16::from_le_bytes([b[6], b[7]]),
            csum_offset: u16::from_le_bytes([b[8], b[9]]),
        })
    }
    pub fn emit(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }
    /// The GSO type without the ECN bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TSO super-packet header as a pod's kernel writes it: NEEDS_CSUM, TCPv4,
    /// 54 bytes of headers, MSS 1398, checksum at 34 + 16.
    const TSO: [u8; 10] = [0x01, 0x01, 54, 0, 0x76, 0x05, 34, 0, 16, 0];

    #[test]
    fn round_trip() {
        let h = VnetHdr::parse(&TSO).unwrap();
        assert!(h.needs_csum());
        assert_eq!(h.gso_kind(), GSO_TCPV4);
        assert_eq!((h.hdr_len, h.gso_size, h.csum_start, h.csum_offset), (54, 1398, 34, 16));
        let mut b = [0u8; 10];
        h.emit(&mut b);
        assert_eq!(b, TSO);
        assert!(VnetHdr::parse(&TSO[..9]).is_err());
    }
}
