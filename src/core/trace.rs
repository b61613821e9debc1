//! The per-packet trace: the article's walk through `ip route`, `ip neigh`,
//! `bridge fdb`, the nat chains and conntrack, produced by the dataplane itself.
//!
//! The core pushes one [`Step`] at each decision when the trace is enabled; a
//! disabled trace costs a branch per decision and never allocates. A dry-run trace
//! (the synthetic `ucanal trace`) also keeps the core from changing conntrack or
//! counters, so the live tables are only read.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::nat::Tuple;
use crate::wire::MacAddr;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Where the packet came in.
    Ingress {
        port: String,
        len: usize,
    },
    /// The IPv4 packet as parsed (the ports are the ICMP identifier for echo).
    Packet {
        proto: String,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        ttl: u8,
        flags: String,
    },
    /// An ARP request answered by proxy.
    ProxyArp {
        who_has: Ipv4Addr,
        tell: Ipv4Addr,
        answer: MacAddr,
    },
    /// VXLAN accepted (`peer_subnet`: the sender's pod subnet, if it is an FDB peer).
    Decap {
        vni: u32,
        peer: Ipv4Addr,
        peer_subnet: Option<String>,
        inner_src_mac: MacAddr,
    },
    /// A tracked flow matched.
    Conntrack {
        dir: String,
        state: String,
        original: String,
        reply: String,
    },
    /// No flow matched.
    ConntrackMiss {
        tuple: String,
    },
    /// A service rule matched (KUBE-SERVICES / KUBE-NODEPORTS).
    Service {
        name: String,
        via: String,
        rule: String,
    },
    /// KUBE-SVC-*: the endpoint chosen by the flow hash.
    Endpoint {
        endpoint: SocketAddrV4,
        index: usize,
        of: usize,
    },
    /// KUBE-SEP-*: DNAT.
    Dnat {
        before: SocketAddrV4,
        after: SocketAddrV4,
    },
    /// MASQUERADE (KUBE-POSTROUTING mark, or flannel's ip-masq rule).
    Masquerade {
        reason: String,
        before: SocketAddrV4,
        after: SocketAddrV4,
    },
    /// A flow entered in conntrack.
    ConntrackNew {
        original: String,
        reply: String,
        state: String,
    },
    /// A reply reverse-NATed from its flow's original tuple.
    ReverseNat {
        src: SocketAddrV4,
        dst: SocketAddrV4,
    },
    /// The route that matched.
    Route {
        dst: Ipv4Addr,
        route: String,
    },
    /// `ip neigh` entry used.
    Neighbour {
        ip: Ipv4Addr,
        mac: MacAddr,
        dev: String,
    },
    /// `bridge fdb` entry used.
    Fdb {
        mac: MacAddr,
        dst: Ipv4Addr,
        dev: String,
    },
    /// The outer headers the frame leaves with.
    Encap {
        vni: u32,
        outer_src: Ipv4Addr,
        outer_dst: Ipv4Addr,
        udp_sport: u16,
        udp_dport: u16,
        inner_src_mac: MacAddr,
        inner_dst_mac: MacAddr,
    },
    /// Out of a local port.
    Deliver {
        port: String,
        dst_mac: MacAddr,
    },
    /// An ICMP error (or TCP RST) ucanal sent in reply.
    Reply {
        what: String,
        to: Ipv4Addr,
    },
    /// IP fragment reassembly (nf_defrag).
    Defrag {
        what: String,
    },
    Drop {
        reason: String,
    },
}

/// A trace being recorded.
#[derive(Debug, Default, Clone)]
pub struct Trace {
    pub enabled: bool,
    /// Read the tables only: no conntrack change, no counter.
    pub dry_run: bool,
    pub steps: Vec<Step>,
}

impl Trace {
    /// A trace that records nothing (the fast path).
    pub const fn off() -> Self {
        Trace { enabled: false, dry_run: false, steps: Vec::new() }
    }
    pub fn on() -> Self {
        Trace { enabled: true, dry_run: false, steps: Vec::new() }
    }
    pub fn dry_run() -> Self {
        Trace { enabled: true, dry_run: true, steps: Vec::new() }
    }
    /// Records a step; the closure runs only when the trace is on.
    #[inline]
    pub fn step(&mut self, f: impl FnOnce() -> Step) {
        if self.enabled {
            self.steps.push(f());
        }
    }
}

/// One line saying what the dataplane did with the packet.
pub fn describe(t: &super::tables::Tables, a: &super::Action) -> String {
    use super::Action;
    match a {
        Action::ToPort(p) if p.is_host() => "to the host stack (host port)".into(),
        Action::ToPort(p) => match t.pod(*p) {
            Some(pod) => format!("to pod {} ({})", pod.name, pod.ifname),
            None => format!("to port {}", p.0),
        },
        Action::ToVtep { remote, flow_hash } => {
            format!("VXLAN to {remote}:{} from udp port {}", t.node.vxlan_port, t.vxlan_source_port(*flow_hash))
        }
        Action::Drop(r) => format!("drop: {} ({})", r.name(), r.help()),
        Action::Held => "held: a fragment waiting for the rest of its datagram".into(),
    }
}

pub(crate) fn tuple_str(t: &Tuple) -> String {
    format!("{} {}", super::nat::proto_name(t.proto), t)
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Step::*;
        match self {
            Ingress { port, len } => write!(f, "ingress     {port} ({len} bytes)"),
            Packet { proto, src, dst, sport, dport, ttl, flags } => {
                write!(f, "packet      {proto} {src}:{sport} -> {dst}:{dport} ttl {ttl}")?;
                if !flags.is_empty() {
                    write!(f, " [{flags}]")?;
                }
                Ok(())
            }
            ProxyArp { who_has, tell, answer } => {
                write!(f, "proxy-arp   who-has {who_has} tell {tell} -> {who_has} is-at {answer}")
            }
            Decap { vni, peer, peer_subnet: Some(subnet), inner_src_mac } => {
                write!(f, "vxlan-rx    vni {vni} from {peer} (fdb peer, subnet {subnet}), inner src {inner_src_mac}")
            }
            Decap { vni, peer, peer_subnet: None, inner_src_mac } => {
                write!(f, "vxlan-rx    vni {vni} from {peer} (no fdb entry), inner src {inner_src_mac}")
            }
            Conntrack { dir, state, original, reply } => {
                write!(
                    f,
                    "conntrack   hit {dir} {state}\n              original {original}\n              reply    {reply}"
                )
            }
            ConntrackMiss { tuple } => write!(f, "conntrack   miss {tuple}"),
            Service { name, via, rule } => write!(f, "service     {name} ({via}) matched: {rule}"),
            Endpoint { endpoint, index, of } => {
                write!(f, "endpoint    {endpoint} (#{} of {of}, by flow hash)", index + 1)
            }
            Dnat { before, after } => write!(f, "dnat        dst {before} -> {after}"),
            Masquerade { reason, before, after } => write!(f, "masquerade  src {before} -> {after} ({reason})"),
            ConntrackNew { original, reply, state } => {
                write!(f, "conntrack   new {state}\n              original {original}\n              reply    {reply}")
            }
            ReverseNat { src, dst } => write!(f, "reverse-nat now {src} -> {dst}"),
            Route { dst, route } => write!(f, "route       {dst}: {route}"),
            Neighbour { ip, mac, dev } => write!(f, "neighbour   {ip} dev {dev} lladdr {mac} PERMANENT"),
            Fdb { mac, dst, dev } => write!(f, "fdb         {mac} dev {dev} dst {dst} self permanent"),
            Encap { vni, outer_src, outer_dst, udp_sport, udp_dport, inner_src_mac, inner_dst_mac } => write!(
                f,
                "vxlan-tx    vni {vni}: outer {outer_src}:{udp_sport} -> {outer_dst}:{udp_dport} udp, inner {inner_src_mac} -> {inner_dst_mac}"
            ),
            Deliver { port, dst_mac } => write!(f, "deliver     {port} (dst mac {dst_mac})"),
            Reply { what, to } => write!(f, "reply       {what} to {to}"),
            Defrag { what } => write!(f, "defrag      {what}"),
            Drop { reason } => write!(f, "drop        {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_records_nothing() {
        let mut t = Trace::off();
        t.step(|| unreachable!("closure must not run when the trace is off"));
        assert!(t.steps.is_empty());
        let mut t = Trace::on();
        t.step(|| Step::Drop { reason: "no_fdb".into() });
        assert_eq!(t.steps[0].to_string(), "drop        no_fdb");
        let json = serde_json::to_string(&t.steps[0]).unwrap();
        assert_eq!(json, r#"{"step":"drop","reason":"no_fdb"}"#);
    }
}
