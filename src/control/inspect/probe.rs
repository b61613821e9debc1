//! The synthetic packet of `ucanal trace`: `--in <port> tcp 172.16.240.1:40000 ->
//! 172.16.240.131:31266` becomes a real frame (built with etherparse) as it would
//! arrive on that port, which the daemon runs through the live tables in dry-run mode.

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;

use crate::api::{Probe, ProbeProto};
use crate::core::tables::Tables;
use crate::wire::MacAddr;

/// Why a described packet cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("no port '{0}' (want host, vxlan[:peer] or a pod name)")]
    NoPort(String),
    #[error("'{0}' is not a peer address")]
    BadPeer(String),
    #[error("no peers: say --in vxlan:<peer IP>")]
    NoPeers,
    #[error("TCP flag '{0}': want S, A, F, R, P")]
    Flag(char),
    #[error("building the packet: {0}")]
    Build(String),
}

/// Where the probe enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    Port(crate::core::PortId),
    Vxlan(Ipv4Addr),
}

fn tcp_flags(s: &str) -> Result<(bool, bool, bool, bool, bool), ProbeError> {
    let mut f = (false, false, false, false, false);
    for c in s.chars() {
        match c.to_ascii_uppercase() {
            'S' => f.0 = true,
            'A' | '.' => f.1 = true,
            'F' => f.2 = true,
            'R' => f.3 = true,
            'P' => f.4 = true,
            _ => return Err(ProbeError::Flag(c)),
        }
    }
    Ok(f)
}

/// Where `p` enters, resolved against the tables.
pub fn ingress(p: &Probe, t: &Tables) -> Result<Ingress, ProbeError> {
    if p.ingress == "host" {
        return Ok(Ingress::Port(crate::core::PortId::HOST));
    }
    if let Some(ip) = p.ingress.strip_prefix("vxlan:") {
        let ip: Ipv4Addr = ip.parse().map_err(|_| ProbeError::BadPeer(ip.to_string()))?;
        return Ok(Ingress::Vxlan(ip));
    }
    if p.ingress == "vxlan" {
        let peer = t.peers.first().ok_or(ProbeError::NoPeers)?;
        return Ok(Ingress::Vxlan(peer.public_ip));
    }
    t.pods()
        .find(|pod| pod.name == p.ingress)
        .map(|pod| Ingress::Port(pod.port))
        .ok_or_else(|| ProbeError::NoPort(p.ingress.clone()))
}

/// The frame as it arrives: Ethernet for a port, VXLAN header + inner frame for vxlan.
pub fn frame(p: &Probe, t: &Tables) -> Result<Vec<u8>, ProbeError> {
    let ingress = ingress(p, t)?;
    let (src_mac, dst_mac): (MacAddr, MacAddr) = match ingress {
        Ingress::Port(port) if port.is_host() => (t.node.host_port_mac, t.node.host_mac),
        Ingress::Port(port) => (t.pod(port).map(|pod| pod.mac).unwrap_or_default(), t.node.host_mac),
        Ingress::Vxlan(peer) => {
            let mac = t.peers.iter().find(|x| x.public_ip == peer).map(|x| x.vtep_mac).unwrap_or_default();
            (mac, t.node.vtep_mac)
        }
    };
    let ip = PacketBuilder::ethernet2(src_mac.0, dst_mac.0).ipv4(p.src.ip().octets(), p.dst.ip().octets(), p.ttl);
    let build = |e: etherparse::err::packet::BuildWriteError| ProbeError::Build(e.to_string());
    let mut out = Vec::new();
    match p.proto {
        ProbeProto::Tcp => {
            let (syn, ack, fin, rst, psh) = tcp_flags(p.flags.as_deref().unwrap_or("S"))?;
            let mut b = ip.tcp(p.src.port(), p.dst.port(), 1000, 64240);
            if syn {
                b = b.syn();
            }
            if ack {
                b = b.ack(1);
            }
            if fin {
                b = b.fin();
            }
            if rst {
                b = b.rst();
            }
            if psh {
                b = b.psh();
            }
            b.write(&mut out, &[]).map_err(build)?;
        }
        ProbeProto::Udp => ip.udp(p.src.port(), p.dst.port()).write(&mut out, b"ucanal-trace").map_err(build)?,
        ProbeProto::Icmp => ip.icmpv4_echo_request(p.src.port(), 1).write(&mut out, b"ucanal-trace").map_err(build)?,
    }
    // Linux sets DF on TCP and on pings with PMTU discovery.
    out[14 + 6] |= 0x40;
    if let Ok(mut ip) = crate::wire::ipv4::Ipv4Packet::new_checked(&mut out[14..]) {
        ip.fill_checksum();
    }
    if let Ingress::Vxlan(_) = ingress {
        let mut v = vec![0u8; 8];
        crate::wire::vxlan::emit(&mut v, t.node.vni);
        v.extend_from_slice(&out);
        return Ok(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tables::article;

    #[test]
    fn builds_frames_for_each_ingress() {
        let t = article::tables1(vec![]);
        let mut p = Probe {
            ingress: "host".into(),
            proto: ProbeProto::Tcp,
            src: "172.16.240.1:40000".parse().unwrap(),
            dst: "172.16.240.131:31266".parse().unwrap(),
            flags: None,
            ttl: 64,
        };
        let f = frame(&p, &t).unwrap();
        assert_eq!(&f[..6], &t.node.host_mac.0);
        assert_eq!(f[14 + 20 + 13], 0x02);
        p.ingress = "ghost-ep1".into();
        assert_eq!(&frame(&p, &t).unwrap()[6..12], &article::EP1_MAC.0);
        p.ingress = "vxlan".into();
        let v = frame(&p, &t).unwrap();
        assert_eq!(&v[..8], &[8, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(&v[8..14], &t.node.vtep_mac.0);
        p.ingress = "nope".into();
        assert!(frame(&p, &t).is_err());
    }
}
