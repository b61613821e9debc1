//! Ethernet II frames (IEEE 802.3, no VLAN tags: pods and VTEPs never tag).

use super::{MacAddr, WireError, need};

pub const HEADER_LEN: usize = 14;
/// Byte offsets of the header fields.
pub mod field {
    pub const DST: usize = 0;
    pub const SRC: usize = 6;
    pub const ETHERTYPE: usize = 12;
}
use field::*;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// A view over an Ethernet II frame.
pub struct EthernetFrame<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        need("ethernet", HEADER_LEN, buf.as_ref().len())?;
        Ok(EthernetFrame { buf })
    }
    pub fn dst(&self) -> MacAddr {
        MacAddr(self.buf.as_ref()[DST..DST + 6].try_into().unwrap())
    }
    pub fn src(&self) -> MacAddr {
        MacAddr(self.buf.as_ref()[SRC..SRC + 6].try_into().unwrap())
    }
    pub fn ethertype(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[ETHERTYPE], b[ETHERTYPE + 1]])
    }
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst(&mut self, m: MacAddr) {
        self.buf.as_mut()[DST..DST + 6].copy_from_slice(&m.0);
    }
    pub fn set_src(&mut self, m: MacAddr) {
        self.buf.as_mut()[SRC..SRC + 6].copy_from_slice(&m.0);
    }
    pub fn set_ethertype(&mut self, t: u16) {
        self.buf.as_mut()[ETHERTYPE..ETHERTYPE + 2].copy_from_slice(&t.to_be_bytes());
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut()[HEADER_LEN..]
    }
}

/// Writes an Ethernet header into the first 14 bytes of `buf`.
pub fn emit_header(buf: &mut [u8], dst: MacAddr, src: MacAddr, ethertype: u16) {
    buf[DST..DST + 6].copy_from_slice(&dst.0);
    buf[SRC..SRC + 6].copy_from_slice(&src.0);
    buf[ETHERTYPE..ETHERTYPE + 2].copy_from_slice(&ethertype.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first 14 bytes of an ARP request from pod 10.244.1.5 (3e:0c:94:46:7b:98).
    const FRAME: [u8; 14] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3e, 0x0c, 0x94, 0x46, 0x7b, 0x98, 0x08, 0x06];

    #[test]
    fn parse() {
        let f = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(f.dst(), MacAddr::BROADCAST);
        assert_eq!(f.src().to_string(), "3e:0c:94:46:7b:98");
        assert_eq!(f.ethertype(), ETHERTYPE_ARP);
        assert!(f.payload().is_empty());
    }

    #[test]
    fn emit_and_set() {
        let mut b = [0u8; 14];
        emit_header(&mut b, MacAddr::BROADCAST, "3e:0c:94:46:7b:98".parse().unwrap(), ETHERTYPE_ARP);
        assert_eq!(b, FRAME);
        let mut f = EthernetFrame::new_checked(&mut b[..]).unwrap();
        f.set_dst(MacAddr::CALICO_HOST);
        f.set_ethertype(ETHERTYPE_IPV4);
        assert_eq!(f.dst(), MacAddr::CALICO_HOST);
        assert_eq!(f.ethertype(), ETHERTYPE_IPV4);
    }

    #[test]
    fn truncated() {
        assert!(matches!(
            EthernetFrame::new_checked(&FRAME[..13]),
            Err(WireError::Truncated { need: 14, have: 13, .. })
        ));
    }
}
