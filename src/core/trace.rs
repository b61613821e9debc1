//! The per-packet trace: the article's walk through `ip route`, `ip neigh`,
//! `bridge fdb`, the nat chains and conntrack, produced by the dataplane itself.
//!
//! The core pushes one [`Step`] at each decision when the trace is enabled; a
//! disabled trace costs a branch per decision and never allocates. A dry-run trace
//! (the synthetic `ucanal trace`) also keeps the core from changing conntrack or
//! counters, so the live tables are only read.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::Ipv4Net;
use super::nat::Tuple;
use super::nat::conntrack::Dir;
use super::nat::service::Via;
pub use super::policy::{Direction as PolicyDir, PolicyInfo, Verdict as PolicyVerdict};
use crate::wire::MacAddr;

/// Facts only: the words (`ip route`, `bridge fdb`, the KUBE-* chains, flannel.1) are
/// `control::show::trace`'s, so the core never formats text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Where the packet came in.
    Ingress { port: PortRef, len: usize },
    /// The IPv4 packet as parsed (the ports are the ICMP identifier for echo).
    Packet { proto: u8, src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, ttl: u8, tcp_flags: u8 },
    /// An ARP request answered by proxy.
    ProxyArp { who_has: Ipv4Addr, tell: Ipv4Addr, answer: MacAddr },
    /// VXLAN accepted (`peer_subnet`: the sender's pod subnet, if it is an FDB peer).
    Decap { vni: u32, peer: Ipv4Addr, peer_subnet: Option<Ipv4Net>, inner_src_mac: MacAddr },
    /// A tracked flow matched; `state` is the conntrack state (`None`: UDP or ICMP).
    Conntrack { dir: Dir, state: Option<String>, original: Tuple, reply: Tuple },
    /// No flow matched.
    ConntrackMiss { tuple: Tuple },
    /// A service rule matched (KUBE-SERVICES / KUBE-NODEPORTS): `dst:port` as matched.
    Service { name: String, via: Via, proto: u8, dst: Ipv4Addr, port: u16 },
    /// KUBE-SVC-*: the endpoint chosen (`index` of `of` candidates), by the flow hash or
    /// by session affinity; `candidates`: every endpoint this packet could go to (its
    /// traffic policy, the endpoints' conditions and source ranges applied), as
    /// kube-proxy's packet-flow tests list them; `masquerade`: KUBE-MARK-MASQ marks the
    /// flow; `terminating`: no ready endpoint in scope, these serve while terminating.
    Endpoint {
        endpoint: SocketAddrV4,
        index: usize,
        of: usize,
        #[serde(default)]
        candidates: Vec<SocketAddrV4>,
        #[serde(default)]
        masquerade: bool,
        #[serde(default)]
        by: Pick,
        #[serde(default)]
        terminating: bool,
    },
    /// KUBE-SEP-*: DNAT.
    Dnat { before: SocketAddrV4, after: SocketAddrV4 },
    /// Source NAT and the rule that asked for it.
    Masquerade { by: MasqRule, before: SocketAddrV4, after: SocketAddrV4 },
    /// A flow entered in conntrack (or, in a dry run, the one that would be).
    ConntrackNew { original: Tuple, reply: Tuple, state: Option<String>, how: Admit },
    /// A reply reverse-NATed from its flow's original tuple.
    ReverseNat { src: SocketAddrV4, dst: SocketAddrV4 },
    /// The route that matched.
    Route { dst: Ipv4Addr, route: RouteRef },
    /// The VTEP's neighbour entry used (the peer's flannel.1 address and MAC).
    Neighbour { ip: Ipv4Addr, mac: MacAddr },
    /// The VTEP's FDB entry used.
    Fdb { mac: MacAddr, dst: Ipv4Addr },
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
    Deliver { port: PortRef, dst_mac: MacAddr },
    /// An ICMP error ucanal sent in reply.
    Reply { icmp_type: u8, code: u8, to: Ipv4Addr },
    /// IP fragment reassembly (nf_defrag).
    Defrag { event: Defrag },
    /// The drop counter's name.
    Drop { reason: String },
    /// The policy stage of a new flow, one direction (`pod`: namespace, name): the rule
    /// that decided (its policy, with Calico's order, and its index in the policy's
    /// ingress or egress list) and Felix's chain for the pod's interface.
    Policy {
        dir: PolicyDir,
        pod: (String, String),
        verdict: PolicyVerdict,
        policy: Option<PolicyInfo>,
        rule: Option<usize>,
        chain: String,
    },
}

/// A port of this node as a step names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PortRef {
    /// ucanal0, the node stack's side.
    Host,
    Pod {
        ifname: String,
        name: String,
    },
    /// A port with no pod (left by a removed pod).
    Port {
        id: u32,
    },
    /// The VXLAN socket, from a peer.
    Vxlan {
        from: SocketAddrV4,
    },
}

/// The route that matched, as `ip route` would show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouteRef {
    /// A pod's /32 on its port.
    Link { dst: Ipv4Addr, port: PortRef },
    /// A peer's pod subnet through the VTEP.
    Peer { prefix: Ipv4Net, gateway: Ipv4Addr },
    /// One of this node's own addresses.
    Local { dst: Ipv4Addr },
    /// Outside the cluster: the node's stack.
    Host,
    /// Inside a cluster prefix with no pod or peer route.
    Unreachable { prefix: Ipv4Net },
}

/// Which rule asked for the masquerade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MasqRule {
    /// kube-proxy: KUBE-MARK-MASQ, then KUBE-POSTROUTING's MASQUERADE.
    ServiceMark,
    /// flannel's ip-masq rule (a pod leaving the cluster network).
    FlannelIpMasq,
}

/// How a new service flow's endpoint was picked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pick {
    /// The flow hash over the candidates (kube-proxy: a random pick).
    #[default]
    Hash,
    /// The client's live session-affinity choice.
    Affinity,
}

/// How a flow came into conntrack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Admit {
    Entered,
    /// A concurrent packet of the same flow inserted it first.
    Joined,
    /// A dry run: what would be entered.
    WouldBe,
}

/// What reassembly did with a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Defrag {
    Held,
    /// A dry run: it would be held.
    WouldHold,
    /// The last fragment: the datagram (IP bytes) is whole.
    Reassembled {
        bytes: usize,
    },
}

/// What the dataplane did with the packet, in the words of [`super::Action`] and the tables.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    ToPort { port: PortRef },
    ToVtep { remote: Ipv4Addr, dport: u16, sport: u16 },
    Drop { reason: String, help: String },
    Held,
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

impl PortRef {
    pub fn of(t: &super::tables::Tables, port: super::PortId) -> PortRef {
        match t.pod(port) {
            _ if port.is_host() => PortRef::Host,
            Some(p) => PortRef::Pod { ifname: p.ifname.clone(), name: p.name.clone() },
            None => PortRef::Port { id: port.0 },
        }
    }
}

/// What the dataplane did with the packet.
pub fn outcome(t: &super::tables::Tables, a: &super::Action) -> Outcome {
    use super::Action;
    match a {
        Action::ToPort(p) => Outcome::ToPort { port: PortRef::of(t, *p) },
        Action::ToVtep { remote, flow_hash } => {
            Outcome::ToVtep { remote: *remote, dport: t.node.vxlan_port, sport: t.vxlan_source_port(*flow_hash) }
        }
        Action::Drop(r) => Outcome::Drop { reason: r.name().into(), help: r.help().into() },
        Action::Held => Outcome::Held,
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
        let json = serde_json::to_string(&t.steps[0]).unwrap();
        assert_eq!(json, r#"{"step":"drop","reason":"no_fdb"}"#);
    }
}
