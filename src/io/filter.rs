//! Packet filters for live traces and captures, in tcpdump's words:
//! `tcp and port 31266`, `host 10.244.0.74 or icmp`, `not arp`, `src net 10.244.0.0/16`.
//!
//! ```text
//! expr := and ("or" and)*        and := unary (["and"] unary)*   (juxtaposition means and)
//! unary := "not" unary | "(" expr ")" | prim
//! prim := tcp | udp | icmp | arp | ip | [src|dst] host A | [src|dst] net CIDR | [src|dst] port N | A
//! ```
//! A filter looks at an Ethernet frame; for VXLAN it is given the inner frame.
//!
//! A filter arrives over the API from whoever holds the socket, so its size and nesting
//! are bounded ([`MAX_LEN`], [`MAX_TOKENS`], [`MAX_DEPTH`]): parsing, matching and
//! dropping the tree recurse, and an unbounded tree would overflow a thread's stack.

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

/// Longest filter text accepted, in bytes.
pub const MAX_LEN: usize = 4096;
/// Most words (and parentheses) in a filter; this bounds the tree, and so the
/// recursion of `eval` and of dropping it, whatever its shape.
pub const MAX_TOKENS: usize = 256;
/// Deepest nesting of `not` and `(` accepted.
pub const MAX_DEPTH: usize = 32;

/// Why a filter does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("filter is {0} bytes, more than {MAX_LEN}")]
    TooLong(usize),
    #[error("filter has {0} words, more than {MAX_TOKENS}")]
    TooManyWords(usize),
    #[error("filter '{filter}': {fault}")]
    At { filter: String, fault: Fault },
}

/// What is wrong where a filter stops parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("nested deeper than {MAX_DEPTH} ('not' and '(')")]
    TooDeep,
    #[error("missing ')'")]
    MissingParen,
    #[error("filter ends too early")]
    Ends,
    /// A word that needs an argument (`src`, `host`, `port`...) and what it wants.
    #[error("'{0}' wants {1}")]
    Wants(&'static str, &'static str),
    #[error("net {net}: {why}")]
    Net { net: String, why: String },
    #[error("'{0}' is not a port")]
    Port(String),
    #[error("'{0}' is not an IPv4 address")]
    Address(String),
    #[error("unknown filter word '{0}'")]
    Word(String),
    #[error("'{0}' takes no src/dst")]
    NoDirection(String),
    #[error("unexpected '{0}'")]
    Unexpected(String),
}

struct Parser<'a> {
    toks: Vec<&'a str>,
    i: usize,
    depth: usize,
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
    fn expr(&mut self) -> Result<Node, Fault> {
        let mut n = self.and()?;
        while self.peek() == Some("or") {
            self.i += 1;
            n = Node::Or(Box::new(n), Box::new(self.and()?));
        }
        Ok(n)
    }
    fn and(&mut self) -> Result<Node, Fault> {
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
    fn unary(&mut self) -> Result<Node, Fault> {
        if matches!(self.peek(), Some("not" | "(")) {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(Fault::TooDeep);
            }
        }
        let n = match self.peek() {
            Some("not") => {
                self.i += 1;
                Node::Not(Box::new(self.unary()?))
            }
            Some("(") => {
                self.i += 1;
                let n = self.expr()?;
                if self.next() != Some(")") {
                    return Err(Fault::MissingParen);
                }
                n
            }
            _ => return self.prim(),
        };
        self.depth -= 1;
        Ok(n)
    }
    fn prim(&mut self) -> Result<Node, Fault> {
        let t = self.next().ok_or(Fault::Ends)?;
        let (dir, t) = match t {
            "src" => (Dir::Src, self.next().ok_or(Fault::Wants("src", "host, net, port or an address"))?),
            "dst" => (Dir::Dst, self.next().ok_or(Fault::Wants("dst", "host, net, port or an address"))?),
            t => (Dir::Either, t),
        };
        let node = match t {
            "tcp" => Node::Proto(PROTO_TCP),
            "udp" => Node::Proto(PROTO_UDP),
            "icmp" => Node::Proto(PROTO_ICMP),
            "arp" => Node::Arp,
            "ip" => Node::Ip,
            "host" => {
                let a = self.next().ok_or(Fault::Wants("host", "an address"))?;
                Node::Net(dir, host(a)?)
            }
            "net" => {
                let a = self.next().ok_or(Fault::Wants("net", "a prefix"))?;
                Node::Net(dir, a.parse().map_err(|why| Fault::Net { net: a.to_string(), why })?)
            }
            "port" => {
                let p = self.next().ok_or(Fault::Wants("port", "a number"))?;
                Node::Port(dir, p.parse().map_err(|_| Fault::Port(p.to_string()))?)
            }
            a => Node::Net(dir, host(a).map_err(|_| Fault::Word(a.to_string()))?),
        };
        if dir != Dir::Either && matches!(node, Node::Proto(_) | Node::Arp | Node::Ip) {
            return Err(Fault::NoDirection(t.to_string()));
        }
        Ok(node)
    }
}

fn host(a: &str) -> Result<Ipv4Net, Fault> {
    let ip: Ipv4Addr = a.parse().map_err(|_| Fault::Address(a.to_string()))?;
    Ok(Ipv4Net::new(ip, 32).unwrap())
}

impl Filter {
    pub fn parse(s: &str) -> Result<Filter, FilterError> {
        if s.len() > MAX_LEN {
            return Err(FilterError::TooLong(s.len()));
        }
        let spaced = s.replace('(', " ( ").replace(')', " ) ");
        let toks: Vec<&str> = spaced.split_whitespace().collect();
        if toks.is_empty() {
            return Ok(Filter { root: Node::All, text: String::new() });
        }
        if toks.len() > MAX_TOKENS {
            return Err(FilterError::TooManyWords(toks.len()));
        }
        let owned: Vec<String> = toks.iter().map(|t| t.to_ascii_lowercase()).collect();
        let toks: Vec<&str> = owned.iter().map(String::as_str).collect();
        let mut p = Parser { toks, i: 0, depth: 0 };
        let at = |fault| FilterError::At { filter: s.to_string(), fault };
        let root = p.expr().map_err(at)?;
        if let Some(t) = p.peek() {
            return Err(at(Fault::Unexpected(t.to_string())));
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

    #[test]
    fn deep_or_huge_filters_are_refused_by_name_not_by_a_stack_overflow() {
        let f = syn([172, 16, 240, 1], 40000, [172, 16, 240, 131], 31266);
        // The issue's probes: ~3500 '(' and ~10000 'not'.
        let parens = format!("{}tcp{}", "(".repeat(3500), ")".repeat(3500));
        let e = Filter::parse(&parens).unwrap_err();
        assert!(matches!(e, FilterError::TooLong(_) | FilterError::TooManyWords(_)), "{e}");
        let nots = "not ".repeat(10_000) + "tcp";
        assert_eq!(Filter::parse(&nots).unwrap_err(), FilterError::TooLong(40_003));
        let nots = "not ".repeat(40) + "tcp";
        let e = Filter::parse(&nots).unwrap_err();
        assert!(matches!(e, FilterError::At { fault: Fault::TooDeep, .. }), "{e}");
        assert!(e.to_string().contains("nested deeper than 32"), "{e}");
        let parens = format!("{}tcp{}", "(".repeat(33), ")".repeat(33));
        assert!(matches!(Filter::parse(&parens), Err(FilterError::At { fault: Fault::TooDeep, .. })));
        let long_and = vec!["tcp"; 300].join(" and ");
        assert_eq!(Filter::parse(&long_and).unwrap_err(), FilterError::TooManyWords(599));
        // Right at the limits it parses and matches.
        let ok = format!("{}{}tcp{}", "not not ".repeat(8), "(".repeat(16), ")".repeat(16));
        assert!(Filter::parse(&ok).unwrap().matches(&f));
        let siblings = vec!["(tcp)"; 32].join(" and ");
        assert!(Filter::parse(&siblings).unwrap().matches(&f), "depth is nesting, not count");
        let wide = vec!["tcp"; 100].join(" and ");
        assert!(Filter::parse(&wide).unwrap().matches(&f));
    }
}
