//! The packet views on their own: parsers must not panic, and rewrites of a packet
//! that parsed must keep its IPv4 header checksum valid.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use ucanal::wire::{arp, icmp, ipv4, l4, tcp, udp, vnet, vxlan};

fuzz_target!(|data: &[u8]| {
    let _ = vxlan::parse(data);
    let _ = vnet::VnetHdr::parse(data);
    let _ = arp::ArpPacket::new_checked(data).map(|a| (a.operation(), a.sender_ip(), a.target_ip()));
    let _ = icmp::embedded(data);
    for proto in [1u8, 6, 17] {
        let _ = l4::ports(proto, data);
    }
    let (a, b) = (Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 0, 74));
    for t in [tcp::TcpPacket::new_checked(data), tcp::TcpPacket::new_quoted(data)].into_iter().flatten() {
        let _ = (t.src_port(), t.dst_port(), t.seq_number(), t.ack_number(), t.flags(), t.window(), t.payload());
        let _ = t.verify_checksum(a, b);
    }
    for u in [udp::UdpPacket::new_checked(data), udp::UdpPacket::new_quoted(data)].into_iter().flatten() {
        let _ = (u.src_port(), u.dst_port(), u.len(), u.payload(), u.verify_checksum(a, b));
    }
    if let Ok(i) = icmp::IcmpPacket::new_checked(data) {
        let _ = (i.echo_ports(), i.next_hop_mtu(), i.data(), i.verify_checksum());
    }
    if let Ok(q) = ipv4::Ipv4Packet::new_quoted(data) {
        let _ = (q.payload(), q.header());
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
