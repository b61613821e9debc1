//! Calico's proxy-ARP: a pod's `169.254.1.1` (its default gateway, which exists
//! nowhere) resolves to the host side of its link. Calico answers every request
//! from the pod this way (`proxy_arp=1` on a `cali*` veth with no address); ucanal
//! answers with [`crate::core::tables::NodeInfo::host_mac`].
//!
//! Like Linux, it never answers a probe (sender 0.0.0.0, RFC 5227 duplicate address
//! detection) nor a request for the asker's own address (gratuitous ARP).

use std::net::Ipv4Addr;

use super::DropReason;
use crate::wire::MacAddr;
use crate::wire::arp::{self, ArpPacket};
use crate::wire::ethernet::{self, EthernetFrame};

/// What was asked, for the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    pub who_has: Ipv4Addr,
    pub tell: Ipv4Addr,
}

/// Turns the ARP request in `frame` (Ethernet + ARP) into the proxy reply, in place.
/// `sender_must_be` is the pod's own address (anti-spoofing); `None` for the host port.
/// Returns the length of the reply frame.
pub fn answer(
    frame: &mut [u8],
    sender_must_be: Option<Ipv4Addr>,
    host_mac: MacAddr,
) -> Result<(usize, Answered), DropReason> {
    let arp_bytes = frame.get_mut(ethernet::HEADER_LEN..).ok_or(DropReason::ArpMalformed)?;
    let mut arp = ArpPacket::new_checked(arp_bytes).map_err(|_| DropReason::ArpMalformed)?;
    if arp.operation() != arp::OP_REQUEST {
        return Err(DropReason::ArpIgnored);
    }
    let (tell, who_has) = (arp.sender_ip(), arp.target_ip());
    if tell.is_unspecified() || tell == who_has {
        return Err(DropReason::ArpIgnored);
    }
    if sender_must_be.is_some_and(|ip| ip != tell) {
        return Err(DropReason::ArpSpoofed);
    }
    let requester = arp.sender_mac();
    arp.make_reply(host_mac);
    let mut eth = EthernetFrame::new_checked(&mut frame[..]).map_err(|_| DropReason::ArpMalformed)?;
    eth.set_dst(requester);
    eth.set_src(host_mac);
    Ok((ethernet::HEADER_LEN + arp::PACKET_LEN, Answered { who_has, tell }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::{ETHERTYPE_ARP, emit_header};

    const POD_MAC: MacAddr = MacAddr([0x3e, 0x0c, 0x94, 0x46, 0x7b, 0x98]);

    fn request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        // Padded to the 60-byte Ethernet minimum, as a kernel sends it.
        let mut f = vec![0u8; 60];
        emit_header(&mut f, MacAddr::BROADCAST, POD_MAC, ETHERTYPE_ARP);
        arp::emit(&mut f[14..], arp::OP_REQUEST, POD_MAC, sender, MacAddr::ZERO, target);
        f
    }

    #[test]
    fn answers_gateway_with_host_mac() {
        let mut f = request(Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(169, 254, 1, 1));
        let (len, a) = answer(&mut f, Some(Ipv4Addr::new(10, 244, 1, 5)), MacAddr::CALICO_HOST).unwrap();
        assert_eq!(len, 42);
        assert_eq!(a.who_has, Ipv4Addr::new(169, 254, 1, 1));
        let eth = EthernetFrame::new_checked(&f[..len]).unwrap();
        assert_eq!(eth.dst(), POD_MAC);
        assert_eq!(eth.src(), MacAddr::CALICO_HOST);
        let r = ArpPacket::new_checked(eth.payload()).unwrap();
        assert_eq!(r.operation(), arp::OP_REPLY);
        assert_eq!(r.sender_mac(), MacAddr::CALICO_HOST);
        assert_eq!(r.sender_ip(), Ipv4Addr::new(169, 254, 1, 1));
        assert_eq!(r.target_mac(), POD_MAC);
    }

    #[test]
    fn answers_any_address_like_calico() {
        let mut f = request(Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(172, 16, 240, 131));
        assert!(answer(&mut f, Some(Ipv4Addr::new(10, 244, 1, 5)), MacAddr::CALICO_HOST).is_ok());
    }

    #[test]
    fn refuses_probes_gratuitous_spoofed_and_replies() {
        let pod = Some(Ipv4Addr::new(10, 244, 1, 5));
        let mut probe = request(Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(answer(&mut probe, pod, MacAddr::CALICO_HOST), Err(DropReason::ArpIgnored));
        let mut garp = request(Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(answer(&mut garp, pod, MacAddr::CALICO_HOST), Err(DropReason::ArpIgnored));
        let mut spoof = request(Ipv4Addr::new(10, 244, 1, 99), Ipv4Addr::new(169, 254, 1, 1));
        assert_eq!(answer(&mut spoof, pod, MacAddr::CALICO_HOST), Err(DropReason::ArpSpoofed));
        let mut reply = request(Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(169, 254, 1, 1));
        reply[21] = 2;
        assert_eq!(answer(&mut reply, pod, MacAddr::CALICO_HOST), Err(DropReason::ArpIgnored));
        assert_eq!(answer(&mut reply[..30], pod, MacAddr::CALICO_HOST), Err(DropReason::ArpMalformed));
        // The host port may ask for anything.
        let mut host = request(Ipv4Addr::new(10, 244, 1, 0), Ipv4Addr::new(169, 254, 1, 1));
        assert!(answer(&mut host, None, MacAddr::CALICO_HOST).is_ok());
    }
}
