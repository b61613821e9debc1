//! The synthetic packet of `ucanal trace`: `--in <port> tcp 172.16.240.1:40000 ->
//! 172.16.240.131:31266` becomes a real frame (built with etherparse) as it would
//! arrive on that port, which the daemon runs through the live tables in dry-run mode.

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::PacketBuilder;
use serde::{Deserialize, Serialize};

use crate::core::tables::Tables;
use crate::wire::MacAddr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// `host`, a pod name, or `vxlan:<peer public IP>`.
    pub ingress: String,
    /// `tcp`, `udp` or `icmp`.
    pub proto: String,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// TCP flags: `S` (default), `SA`, `A`, `F`, `R`, `PA`.
    #[serde(default)]
    pub flags: Option<String>,
    #[serde(default = "default_ttl")]
    pub ttl: u8,
}

fn default_ttl() -> u8 {
    64
}

/// Where the probe enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    Port(crate::core::PortId),
    Vxlan(Ipv4Addr),
}

/// Parses `tcp 172.16.240.1:40000 -> 172.16.240.131:31266` (the arrow is optional).
pub fn parse_flow(words: &[String]) -> Result<(String, SocketAddrV4, SocketAddrV4), String> {
    let w: Vec<&str> = words.iter().map(String::as_str).filter(|w| *w != "->" && *w != "to").collect();
    let [proto, src, dst] = w.as_slice() else {
        return Err("want: <tcp|udp|icmp> <src ip:port> -> <dst ip:port>".into());
    };
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "icmp") {
        return Err(format!("protocol '{proto}': want tcp, udp or icmp"));
    }
    let parse = |s: &str| -> Result<SocketAddrV4, String> {
        s.parse::<SocketAddrV4>()
            .or_else(|_| s.parse::<Ipv4Addr>().map(|ip| SocketAddrV4::new(ip, 0)))
            .map_err(|_| format!("'{s}' is not an address (want a.b.c.d:port)"))
    };
    Ok((proto, parse(src)?, parse(dst)?))
}

fn tcp_flags(s: &str) -> Result<(bool, bool, bool, bool, bool), String> {
    let mut f = (false, false, false, false, false);
    for c in s.chars() {
        match c.to_ascii_uppercase() {
            'S' => f.0 = true,
            'A' | '.' => f.1 = true,
            'F' => f.2 = true,
            'R' => f.3 = true,
            'P' => f.4 = true,
            _ => return Err(format!("TCP flag '{c}': want S, A, F, R, P")),
        }
    }
    Ok(f)
}

impl Probe {
    /// Resolves the ingress against the tables.
    pub fn ingress(&self, t: &Tables) -> Result<Ingress, String> {
        if self.ingress == "host" {
            return Ok(Ingress::Port(crate::core::PortId::HOST));
        }
        if let Some(ip) = self.ingress.strip_prefix("vxlan:") {
            let ip: Ipv4Addr = ip.parse().map_err(|_| format!("'{ip}' is not a peer address"))?;
            return Ok(Ingress::Vxlan(ip));
        }
        if self.ingress == "vxlan" {
            let p = t.peers.first().ok_or("no peers: say --in vxlan:<peer IP>")?;
            return Ok(Ingress::Vxlan(p.public_ip));
        }
        t.pods()
            .find(|p| p.name == self.ingress)
            .map(|p| Ingress::Port(p.port))
            .ok_or_else(|| format!("no port '{}' (want host, vxlan[:peer] or a pod name)", self.ingress))
    }

    /// The frame as it arrives: Ethernet for a port, VXLAN header + inner frame for vxlan.
    pub fn frame(&self, t: &Tables) -> Result<Vec<u8>, String> {
        let ingress = self.ingress(t)?;
        let (src_mac, dst_mac): (MacAddr, MacAddr) = match ingress {
            Ingress::Port(p) if p.is_host() => (t.node.host_port_mac, t.node.host_mac),
            Ingress::Port(p) => (t.pod(p).map(|p| p.mac).unwrap_or_default(), t.node.host_mac),
            Ingress::Vxlan(peer) => {
                let mac = t.peers.iter().find(|p| p.public_ip == peer).map(|p| p.vtep_mac).unwrap_or_default();
                (mac, t.node.vtep_mac)
            }
        };
        let ip = PacketBuilder::ethernet2(src_mac.0, dst_mac.0).ipv4(
            self.src.ip().octets(),
            self.dst.ip().octets(),
            self.ttl,
        );
        let mut out = Vec::new();
        match self.proto.as_str() {
            "tcp" => {
                let (syn, ack, fin, rst, psh) = tcp_flags(self.flags.as_deref().unwrap_or("S"))?;
                let mut b = ip.tcp(self.src.port(), self.dst.port(), 1000, 64240);
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
                b.write(&mut out, &[]).map_err(|e| e.to_string())?;
            }
            "udp" => {
                ip.udp(self.src.port(), self.dst.port()).write(&mut out, b"ucanal-trace").map_err(|e| e.to_string())?
            }
            _ => ip
                .icmpv4_echo_request(self.src.port(), 1)
                .write(&mut out, b"ucanal-trace")
                .map_err(|e| e.to_string())?,
        }
        // Linux sets DF on TCP and on pings with PMTU discovery.
        out[14 + 6] |= 0x40;
        if let Ok(mut p) = crate::wire::ipv4::Ipv4Packet::new_checked(&mut out[14..]) {
            p.fill_checksum();
        }
        if let Ingress::Vxlan(_) = ingress {
            let mut v = vec![0u8; 8];
            crate::wire::vxlan::emit(&mut v, t.node.vni);
            v.extend_from_slice(&out);
            return Ok(v);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tables::article;

    #[test]
    fn parses_the_article_request() {
        let w: Vec<String> = "tcp 172.16.240.1:40000 -> 172.16.240.131:31266".split(' ').map(String::from).collect();
        let (p, s, d) = parse_flow(&w).unwrap();
        assert_eq!(p, "tcp");
        assert_eq!(s, "172.16.240.1:40000".parse().unwrap());
        assert_eq!(d, "172.16.240.131:31266".parse().unwrap());
        assert!(parse_flow(&["sctp".into(), "1.2.3.4:1".into(), "1.2.3.4:2".into()]).is_err());
        assert!(parse_flow(&["tcp".into(), "1.2.3.4:1".into()]).is_err());
    }

    #[test]
    fn builds_frames_for_each_ingress() {
        let t = article::tables1(vec![]);
        let mut p = Probe {
            ingress: "host".into(),
            proto: "tcp".into(),
            src: "172.16.240.1:40000".parse().unwrap(),
            dst: "172.16.240.131:31266".parse().unwrap(),
            flags: None,
            ttl: 64,
        };
        let f = p.frame(&t).unwrap();
        assert_eq!(&f[..6], &t.node.host_mac.0);
        assert_eq!(f[14 + 20 + 13], 0x02);
        p.ingress = "ghost-ep1".into();
        assert_eq!(&p.frame(&t).unwrap()[6..12], &article::EP1_MAC.0);
        p.ingress = "vxlan".into();
        let v = p.frame(&t).unwrap();
        assert_eq!(&v[..8], &[8, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(&v[8..14], &t.node.vtep_mac.0);
        p.ingress = "nope".into();
        assert!(p.frame(&t).is_err());
    }
}
