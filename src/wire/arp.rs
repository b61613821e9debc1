//! ARP for IPv4 over Ethernet (RFC 826). Only this combination exists on a pod link.

use std::net::Ipv4Addr;

use super::{MacAddr, WireError, need};

pub const PACKET_LEN: usize = 28;
const HTYPE: usize = 0;
const PTYPE: usize = 2;
const HLEN: usize = 4;
const PLEN: usize = 5;
const OPER: usize = 6;
const SHA: usize = 8;
const SPA: usize = 14;
const THA: usize = 18;
const TPA: usize = 24;

pub const OP_REQUEST: u16 = 1;
pub const OP_REPLY: u16 = 2;

/// A view over an Ethernet/IPv4 ARP packet.
pub struct ArpPacket<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Checks the length and that the packet is Ethernet (1) / IPv4 (0x0800) with 6/4 byte addresses.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        need("arp", PACKET_LEN, b.len())?;
        if u16::from_be_bytes([b[HTYPE], b[HTYPE + 1]]) != 1
            || u16::from_be_bytes([b[PTYPE], b[PTYPE + 1]]) != 0x0800
            || b[HLEN] != 6
            || b[PLEN] != 4
        {
            return Err(WireError::Malformed { what: "arp", why: "not Ethernet/IPv4" });
        }
        Ok(ArpPacket { buf })
    }
    pub fn operation(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[OPER], b[OPER + 1]])
    }
    pub fn sender_mac(&self) -> MacAddr {
        MacAddr(self.buf.as_ref()[SHA..SHA + 6].try_into().unwrap())
    }
    pub fn sender_ip(&self) -> Ipv4Addr {
        ip_at(self.buf.as_ref(), SPA)
    }
    pub fn target_mac(&self) -> MacAddr {
        MacAddr(self.buf.as_ref()[THA..THA + 6].try_into().unwrap())
    }
    pub fn target_ip(&self) -> Ipv4Addr {
        ip_at(self.buf.as_ref(), TPA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Turns this request into the reply `target_ip is-at mac`, in place (RFC 826
    /// "swap hardware and protocol fields, putting the local hardware and protocol
    /// addresses in the sender fields").
    pub fn make_reply(&mut self, mac: MacAddr) {
        let b = self.buf.as_mut();
        let mut requester = [0u8; 10];
        requester.copy_from_slice(&b[SHA..SHA + 10]);
        let target_ip: [u8; 4] = b[TPA..TPA + 4].try_into().unwrap();
        b[OPER..OPER + 2].copy_from_slice(&OP_REPLY.to_be_bytes());
        b[SHA..SHA + 6].copy_from_slice(&mac.0);
        b[SPA..SPA + 4].copy_from_slice(&target_ip);
        b[THA..THA + 10].copy_from_slice(&requester);
    }
}

/// Writes a complete ARP packet into the first 28 bytes of `buf`.
pub fn emit(buf: &mut [u8], op: u16, sha: MacAddr, spa: Ipv4Addr, tha: MacAddr, tpa: Ipv4Addr) {
    buf[HTYPE..HTYPE + 2].copy_from_slice(&1u16.to_be_bytes());
    buf[PTYPE..PTYPE + 2].copy_from_slice(&0x0800u16.to_be_bytes());
    buf[HLEN] = 6;
    buf[PLEN] = 4;
    buf[OPER..OPER + 2].copy_from_slice(&op.to_be_bytes());
    buf[SHA..SHA + 6].copy_from_slice(&sha.0);
    buf[SPA..SPA + 4].copy_from_slice(&spa.octets());
    buf[THA..THA + 6].copy_from_slice(&tha.0);
    buf[TPA..TPA + 4].copy_from_slice(&tpa.octets());
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "who-has 169.254.1.1 tell 10.244.1.5", as the pod ghost-ep1 sends it.
    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x3e, 0x0c, 0x94, 0x46, 0x7b, 0x98, 0x0a, 0xf4, 0x01, 0x05,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xa9, 0xfe, 0x01, 0x01,
    ];

    #[test]
    fn parse_request() {
        let a = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(a.operation(), OP_REQUEST);
        assert_eq!(a.sender_mac().to_string(), "3e:0c:94:46:7b:98");
        assert_eq!(a.sender_ip(), Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(a.target_ip(), Ipv4Addr::new(169, 254, 1, 1));
    }

    #[test]
    fn reply_in_place() {
        let mut b = REQUEST;
        ArpPacket::new_checked(&mut b[..]).unwrap().make_reply(MacAddr::CALICO_HOST);
        let a = ArpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(a.operation(), OP_REPLY);
        assert_eq!(a.sender_mac(), MacAddr::CALICO_HOST);
        assert_eq!(a.sender_ip(), Ipv4Addr::new(169, 254, 1, 1));
        assert_eq!(a.target_mac().to_string(), "3e:0c:94:46:7b:98");
        assert_eq!(a.target_ip(), Ipv4Addr::new(10, 244, 1, 5));
        let mut e = [0u8; 28];
        emit(
            &mut e,
            OP_REPLY,
            MacAddr::CALICO_HOST,
            Ipv4Addr::new(169, 254, 1, 1),
            "3e:0c:94:46:7b:98".parse().unwrap(),
            Ipv4Addr::new(10, 244, 1, 5),
        );
        assert_eq!(e, b);
    }

    #[test]
    fn rejects_non_ipv4_and_truncated() {
        let mut b = REQUEST;
        b[2] = 0x86;
        b[3] = 0xdd;
        assert!(ArpPacket::new_checked(&b[..]).is_err());
        assert!(ArpPacket::new_checked(&REQUEST[..27]).is_err());
    }
}
