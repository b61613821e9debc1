//! The packet views on their own: parsers must not panic, and rewrites of a packet
//! that parsed must keep its IPv4 header checksum valid.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use ucanal::wire::{arp, icmp, ipv4, l4, vnet, vxlan};

fuzz_target!(|data: &[u8]| {
    let _ = vxlan::parse(data);
    let _ = vnet::VnetHdr::parse(data);
    let _ = arp::ArpPacket::new_checked(data).map(|a| (a.operation(), a.sender_ip(), a.target_ip()));
    let _ = icmp::embedded(data);
    for proto in [1u8, 6, 17] {
        let _ = l4::ports(proto, data);
    }
    let mut buf = data.to_vec();
    if let Ok(ip) = ipv4::Ipv4Packet::new_checked(&buf[..]) {
        if !ip.verify_checksum() || !ip.has_l4_header() || l4::ports(ip.protocol(), ip.payload()).is_err() {
            return;
        }
        let total = ip.total_len();
        l4::rewrite(&mut buf[..total], l4::End::Src, Ipv4Addr::new(10, 244, 1, 0), 61000, false);
        l4::rewrite(&mut buf[..total], l4::End::Dst, Ipv4Addr::new(10, 244, 0, 74), 2368, false);
        assert!(ipv4::Ipv4Packet::new_checked(&buf[..]).unwrap().verify_checksum());
    }
});
