//! Packet filters for live traces and captures, in tcpdump's words:
//! `tcp and port 31266`, `host 10.244.0.74 or icmp`, `not arp`, `src net 10.244.0.0/16`.
//!
//! ```text
//! expr := and ("or" and)*        and := unary (["and"] unary)*   (juxtaposition means and)
//! unary := "not" unary | "(" expr ")" | prim
//! prim := tcp | udp | icmp | arp | ip | [src|dst] host A | [src|dst] net CIDR | [src|dst] port N | A
//! ```
//! A filter looks at an Ethernet frame; for VXLAN it is given the inner frame.

use std::net::Ipv4Addr;

use crate::core::Ipv4Net;
use crate::wire::ethernet::{ETHERTYPE_ARP, ETHERTYPE_IPV4, EthernetFrame};
use crate::wire::ipv4::{Ipv4Packet, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::wire::l4::Ports;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Src,
    Dst,
    Either,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    All,
    Proto(u8),
    Arp,
    Ip,
    Net(Dir, Ipv4Net),
    Port(Dir, u16),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    root: Node,
    text: String,
}

/// The IPv4 part of what a filter reads: protocol, addresses, ports.
type IpFacts = (u8, Ipv4Addr, Ipv4Addr, Option<(u16, u16)>);

/// What a filter reads of a frame, parsed once.
struct Facts {
    arp: bool,
    ip: Option<IpFacts>,
}

fn facts(frame: &[u8]) -> Facts {
    let Ok(eth) = EthernetFrame::new_checked(frame) else { return Facts { arp: false, ip: None } };
    match eth.ethertype() {
        ETHERTYPE_ARP => Facts { arp: true, ip: None },
        ETHERTYPE_IPV4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok().map(|p| {
                let ports = Ports::new_checked(p.payload())
                    .ok()
                    .filter(|_| matches!(p.protocol(), PROTO_TCP | PROTO_UDP) && p.has_l4_header())
                    .map(|l4| (l4.src_port(), l4.dst_port()));
                (p.protocol(), p.src(), p.dst(), ports)
            });
            Facts { arp: false, ip }
        }
        _ => Facts { arp: false, ip: None },
    }
}

impl Node {
    fn eval(&self, f: &Facts) -> bool {
        match self {
            Node::All => true,
            Node::Arp => f.arp,
            Node::Ip => f.ip.is_some(),
            Node::Proto(p) => f.ip.is_some_and(|(q, ..)| q == *p),
            Node::Net(d, n) => f.ip.is_some_and(|(_, s, t, _)| match d {
                Dir::Src => n.contains(s),
                Dir::Dst => n.contains(t),
                Dir::Either => n.contains(s) || n.contains(t),
            }),
            Node::Port(d, p) => f.ip.and_then(|(.., ports)| ports).is_some_and(|(s, t)| match d {
                Dir::Src => s == *p,
                Dir::Dst => t == *p,
                Dir::Either => s == *p || t == *p,
            }),
            Node::Not(n) => !n.eval(f),
            Node::And(a, b) => a.eval(f) && b.eval(f),
            Node::Or(a, b) => a.eval(f) || b.eval(f),
        }
    }
}

struct Parser<'a> {
    toks: Vec<&'a str>,
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.toks.get(self.i).copied()
    }
    fn next(&mut self) -> Option<&'a str> {
        let t = self.peek();
        self.i += 1;
        t
    }
    fn expr(&mut self) -> Result<Node, String> {
        let mut n = self.and()?;
        while self.peek() == Some("or") {
            self.i += 1;
            n = Node::Or(Box::new(n), Box::new(self.and()?));
        }
        Ok(n)
    }
    fn and(&mut self) -> Result<Node, String> {
        let mut n = self.unary()?;
        loop {
            match self.peek() {
                Some("and") => self.i += 1,
                // tcpdump reads `tcp port 80` as `tcp and port 80`.
                Some(t) if t != "or" && t != ")" => {}
                _ => return Ok(n),
            }
            n = Node::And(Box::new(n), Box::new(self.unary()?));
        }
    }
    fn unary(&mut self) -> Result<Node, String> {
        match self.peek() {
            Some("not") => {
                self.i += 1;
                Ok(Node::Not(Box::new(self.unary()?)))
            }
            Some("(") => {
                self.i += 1;
                let n = self.expr()?;
                if self.next() != Some(")") {
                    return Err("missing ')'".into());
                }
                Ok(n)
            }
            _ => self.prim(),
        }
    }
    fn prim(&mut self) -> Result<Node, String> {
        let t = self.next().ok_or("filter ends too early")?;
        let (dir, t) = match t {
            "src" => (Dir::Src, self.next().ok_or("'src' wants host, net, port or an address")?),
            "dst" => (Dir::Dst, self.next().ok_or("'dst' wants host, net, port or an address")?),
            t => (Dir::Either, t),
        };
        let node = match t {
            "tcp" => Node::Proto(PROTO_TCP),
            "udp" => Node::Proto(PROTO_UDP),
            "icmp" => Node::Proto(PROTO_ICMP),
            "arp" => Node::Arp,
            "ip" => Node::Ip,
            "host" => {
                let a = self.next().ok_or("'host' wants an address")?;
                Node::Net(dir, host(a)?)
            }
            "net" => {
                let a = self.next().ok_or("'net' wants a prefix")?;
                Node::Net(dir, a.parse().map_err(|e: String| format!("net {a}: {e}"))?)
            }
            "port" => {
                let p = self.next().ok_or("'port' wants a number")?;
                Node::Port(dir, p.parse().map_err(|_| format!("'{p}' is not a port"))?)
            }
            a => Node::Net(dir, host(a).map_err(|_| format!("unknown filter word '{a}'"))?),
        };
        if dir != Dir::Either && matches!(node, Node::Proto(_) | Node::Arp | Node::Ip) {
            return Err(format!("'{t}' takes no src/dst"));
        }
        Ok(node)
    }
}

fn host(a: &str) -> Result<Ipv4Net, String> {
    let ip: Ipv4Addr = a.parse().map_err(|_| format!("'{a}' is not an IPv4 address"))?;
    Ok(Ipv4Net::new(ip, 32).unwrap())
}

impl Filter {
    pub fn parse(s: &str) -> Result<Filter, String> {
        let spaced = s.replace('(', " ( ").replace(')', " ) ");
        let toks: Vec<&str> = spaced.split_whitespace().collect();
        if toks.is_empty() {
            return Ok(Filter { root: Node::All, text: String::new() });
        }
        let owned: Vec<String> = toks.iter().map(|t| t.to_ascii_lowercase()).collect();
        let toks: Vec<&str> = owned.iter().map(String::as_str).collect();
        let mut p = Parser { toks, i: 0 };
        let root = p.expr().map_err(|e| format!("filter '{s}': {e}"))?;
        if let Some(t) = p.peek() {
            return Err(format!("filter '{s}': unexpected '{t}'"));
        }
        Ok(Filter { root, text: s.to_string() })
    }
    pub fn matches(&self, frame: &[u8]) -> bool {
        self.root == Node::All || self.root.eval(&facts(frame))
    }
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn syn(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, dst, 64)
            .tcp(sport, dport, 1, 1)
            .syn()
            .write(&mut v, &[])
            .unwrap();
        v
    }

    #[test]
    fn tcpdump_words() {
        let f = syn([172, 16, 240, 1], 40000, [172, 16, 240, 131], 31266);
        let yes = [
            "",
            "tcp",
            "port 31266",
            "dst port 31266",
            "src port 40000",
            "host 172.16.240.1",
            "src 172.16.240.1",
            "net 172.16.240.0/24",
            "tcp and port 31266",
            "udp or port 31266",
            "not udp",
            "(udp or tcp) and dst host 172.16.240.131",
            "port 2368 or port 31266",
            "TCP AND PORT 31266",
            "tcp port 31266",
            "tcp port 80 or tcp port 31266",
        ];
        for e in yes {
            assert!(Filter::parse(e).unwrap().matches(&f), "{e}");
        }
        let no = [
            "udp",
            "port 80",
            "src port 31266",
            "dst host 172.16.240.1",
            "icmp",
            "arp",
            "not tcp",
            "tcp and not port 31266",
        ];
        for e in no {
            assert!(!Filter::parse(e).unwrap().matches(&f), "{e}");
        }
        for bad in ["port", "host 1.2.3", "tcp and", "(tcp", "src tcp", "frobnicate", "net 10.0.0.1/8", "tcp or"] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
        assert!(!Filter::parse("tcp").unwrap().matches(&[1, 2, 3]));
    }
}
