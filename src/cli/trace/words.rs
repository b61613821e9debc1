//! The trace's words: each [`Step`] the core records (facts only) printed as the
//! kernel tools and chains it stands for (`ip route`, `ip neigh`, `bridge fdb`, the
//! KUBE-* chains, flannel.1), one numbered line per step in `ucanal trace`.

use std::fmt;

use crate::core::nat::conntrack::Dir;
use crate::core::nat::proto_name;
use crate::core::nat::service::Via;
use crate::core::trace::{Admit, MasqRule, Outcome, Pick, PortRef, RouteRef, Step};
use crate::wire::tcp;

/// The kernel's name of the VXLAN device ucanal stands in for.
const VTEP_DEV: &str = "flannel.1";

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Host => write!(f, "host port"),
            PortRef::Pod { ifname, name } => write!(f, "{ifname} (pod {name})"),
            PortRef::Port { id } => write!(f, "port {id}"),
            PortRef::Vxlan { from } => write!(f, "vxlan from {from}"),
        }
    }
}

impl fmt::Display for RouteRef {
    /// `ip route` wording.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteRef::Link { dst, port: PortRef::Pod { ifname, .. } } => write!(f, "{dst} dev {ifname} scope link"),
            RouteRef::Link { dst, port } => write!(f, "{dst} dev {port} scope link"),
            RouteRef::Peer { prefix, gateway } => write!(f, "{prefix} via {gateway} dev {VTEP_DEV} onlink"),
            RouteRef::Local { dst } => write!(f, "local {dst} (this node, to the host stack)"),
            RouteRef::Host => write!(f, "default: the host stack (outside the cluster)"),
            RouteRef::Unreachable { prefix } => write!(f, "unreachable (inside {prefix} but no pod or peer route)"),
        }
    }
}

impl fmt::Display for Outcome {
    /// The last line of a trace: what became of the packet.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::ToPort { port: PortRef::Host } => write!(f, "to the host stack (host port)"),
            Outcome::ToPort { port: PortRef::Pod { ifname, name } } => write!(f, "to pod {name} ({ifname})"),
            Outcome::ToPort { port } => write!(f, "to {port}"),
            Outcome::ToVtep { remote, dport, sport } => write!(f, "VXLAN to {remote}:{dport} from udp port {sport}"),
            Outcome::Drop { reason, help } => write!(f, "drop: {reason} ({help})"),
            Outcome::Held => write!(f, "held: a fragment waiting for the rest of its datagram"),
        }
    }
}

/// `SYN,ACK`: the flags a trace line names.
fn tcp_flag_names(flags: u8) -> String {
    let names = [(tcp::SYN, "SYN"), (tcp::ACK, "ACK"), (tcp::FIN, "FIN"), (tcp::RST, "RST"), (tcp::PSH, "PSH")];
    names.iter().filter(|(b, _)| flags & b != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(",")
}

/// The conntrack state a line shows: TCP's, else the protocol's name as `conntrack -L` does.
fn state_or_proto(state: &Option<String>, proto: u8) -> String {
    state.clone().unwrap_or_else(|| proto_name(proto).to_uppercase())
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Step::*;
        match self {
            Ingress { port, len } => write!(f, "ingress     {port} ({len} bytes)"),
            Packet { proto, src, dst, sport, dport, ttl, tcp_flags } => {
                write!(f, "packet      {} {src}:{sport} -> {dst}:{dport} ttl {ttl}", proto_name(*proto))?;
                let flags = tcp_flag_names(*tcp_flags);
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
                let dir = match dir {
                    Dir::Original => "original",
                    Dir::Reply => "reply",
                };
                let (p, state) = (proto_name(original.proto), state_or_proto(state, original.proto));
                write!(
                    f,
                    "conntrack   hit {dir} {state}\n              original {p} {original}\n              reply    {p} {reply}"
                )
            }
            ConntrackMiss { tuple } => write!(f, "conntrack   miss {} {tuple}", proto_name(tuple.proto)),
            Service { name, via, proto, dst, port } => {
                let p = proto_name(*proto);
                match via {
                    Via::ClusterIp => {
                        write!(f, "service     {name} (cluster IP) matched: KUBE-SERVICES {p} dst {dst} dpt:{port}")
                    }
                    Via::NodePort => write!(f, "service     {name} (NodePort) matched: KUBE-NODEPORTS {p} dpt:{port}"),
                    Via::ExternalIp => {
                        write!(f, "service     {name} (external IP) matched: KUBE-SERVICES {p} dst {dst} dpt:{port}")
                    }
                    Via::LoadBalancer => {
                        write!(
                            f,
                            "service     {name} (load-balancer IP) matched: KUBE-SERVICES {p} dst {dst} dpt:{port}"
                        )
                    }
                }
            }
            Endpoint { endpoint, index, of, candidates, masquerade, by, terminating } => {
                let by = match by {
                    Pick::Hash => "flow hash",
                    Pick::Affinity => "session affinity",
                };
                write!(f, "endpoint    {endpoint} (#{} of {of}, by {by})", index + 1)?;
                if !candidates.is_empty() {
                    let list: Vec<String> = candidates.iter().map(ToString::to_string).collect();
                    write!(f, "; candidates {}", list.join(" "))?;
                    if *terminating {
                        write!(f, " (serving, terminating: no ready endpoint)")?;
                    }
                    let masq = if *masquerade { "KUBE-MARK-MASQ" } else { "not marked for masquerade" };
                    write!(f, "; {masq}")?;
                }
                Ok(())
            }
            Dnat { before, after } => write!(f, "dnat        dst {before} -> {after}"),
            Masquerade { by, before, after } => {
                let rule = match by {
                    MasqRule::ServiceMark => "KUBE-MARK-MASQ 0x4000, KUBE-POSTROUTING MASQUERADE",
                    MasqRule::FlannelIpMasq => "flannel ip-masq",
                };
                write!(f, "masquerade  src {before} -> {after} ({rule})")
            }
            ConntrackNew { original, reply, state, how } => {
                let state = match how {
                    Admit::Entered => state_or_proto(state, original.proto),
                    Admit::Joined => "joined (inserted by a concurrent packet)".into(),
                    Admit::WouldBe => "would be new".into(),
                };
                let p = proto_name(original.proto);
                write!(
                    f,
                    "conntrack   new {state}\n              original {p} {original}\n              reply    {p} {reply}"
                )
            }
            ReverseNat { src, dst } => write!(f, "reverse-nat now {src} -> {dst}"),
            Route { dst, route } => write!(f, "route       {dst}: {route}"),
            Neighbour { ip, mac } => write!(f, "neighbour   {ip} dev {VTEP_DEV} lladdr {mac} PERMANENT"),
            Fdb { mac, dst } => write!(f, "fdb         {mac} dev {VTEP_DEV} dst {dst} self permanent"),
            Encap { vni, outer_src, outer_dst, udp_sport, udp_dport, inner_src_mac, inner_dst_mac } => write!(
                f,
                "vxlan-tx    vni {vni}: outer {outer_src}:{udp_sport} -> {outer_dst}:{udp_dport} udp, inner {inner_src_mac} -> {inner_dst_mac}"
            ),
            Deliver { port, dst_mac } => write!(f, "deliver     {port} (dst mac {dst_mac})"),
            Reply { icmp_type, code, to } => write!(f, "reply       icmp type {icmp_type} code {code} to {to}"),
            Defrag { event: crate::core::trace::Defrag::Held } => {
                write!(f, "defrag      a fragment, held until its datagram is whole")
            }
            Defrag { event: crate::core::trace::Defrag::WouldHold } => {
                write!(f, "defrag      a fragment: would be held for reassembly")
            }
            Defrag { event: crate::core::trace::Defrag::Reassembled { bytes } } => {
                write!(f, "defrag      the last fragment: datagram reassembled ({bytes} bytes)")
            }
            Drop { reason } => write!(f, "drop        {reason}"),
            Policy { dir, pod, verdict, policy, rule, chain } => {
                super::policy_words::policy_step(f, *dir, pod, *verdict, policy.as_ref(), *rule, chain)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;
    use crate::core::Ipv4Net;
    use crate::core::nat::Tuple;
    use crate::core::trace::Defrag;

    #[test]
    fn steps_read_as_the_kernel_tools() {
        let t = Tuple {
            proto: 6,
            src: Ipv4Addr::new(172, 16, 240, 1),
            dst: Ipv4Addr::new(172, 16, 240, 131),
            sport: 40000,
            dport: 31266,
        };
        let lines = [
            (
                Step::ConntrackMiss { tuple: t },
                "conntrack   miss tcp src=172.16.240.1 dst=172.16.240.131 sport=40000 dport=31266",
            ),
            (
                Step::Service { name: "default/ghost".into(), via: Via::NodePort, proto: 6, dst: t.dst, port: 31266 },
                "service     default/ghost (NodePort) matched: KUBE-NODEPORTS tcp dpt:31266",
            ),
            (
                Step::Route {
                    dst: Ipv4Addr::new(10, 244, 0, 74),
                    route: RouteRef::Peer {
                        prefix: "10.244.0.0/24".parse::<Ipv4Net>().unwrap(),
                        gateway: Ipv4Addr::new(10, 244, 0, 0),
                    },
                },
                "route       10.244.0.74: 10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink",
            ),
            (
                Step::Masquerade {
                    by: MasqRule::ServiceMark,
                    before: SocketAddrV4::new(t.src, 40000),
                    after: SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 0), 61000),
                },
                "masquerade  src 172.16.240.1:40000 -> 10.244.1.0:61000 (KUBE-MARK-MASQ 0x4000, KUBE-POSTROUTING MASQUERADE)",
            ),
            (
                Step::Defrag { event: Defrag::Reassembled { bytes: 3000 } },
                "defrag      the last fragment: datagram reassembled (3000 bytes)",
            ),
            (Step::Drop { reason: "no_fdb".into() }, "drop        no_fdb"),
            (
                Step::Endpoint {
                    endpoint: "10.244.1.5:2368".parse().unwrap(),
                    index: 1,
                    of: 2,
                    candidates: vec!["10.244.0.74:2368".parse().unwrap(), "10.244.1.5:2368".parse().unwrap()],
                    masquerade: true,
                    by: Pick::Hash,
                    terminating: false,
                },
                "endpoint    10.244.1.5:2368 (#2 of 2, by flow hash); candidates 10.244.0.74:2368 10.244.1.5:2368; KUBE-MARK-MASQ",
            ),
            (
                Step::Endpoint {
                    endpoint: "10.244.1.5:2368".parse().unwrap(),
                    index: 0,
                    of: 1,
                    candidates: vec!["10.244.1.5:2368".parse().unwrap()],
                    masquerade: false,
                    by: Pick::Affinity,
                    terminating: true,
                },
                "endpoint    10.244.1.5:2368 (#1 of 1, by session affinity); candidates 10.244.1.5:2368 (serving, terminating: no ready endpoint); not marked for masquerade",
            ),
            (
                Step::Service {
                    name: "ns1/svc1".into(),
                    via: Via::LoadBalancer,
                    proto: 6,
                    dst: Ipv4Addr::new(1, 2, 3, 4),
                    port: 80,
                },
                "service     ns1/svc1 (load-balancer IP) matched: KUBE-SERVICES tcp dst 1.2.3.4 dpt:80",
            ),
        ];
        for (step, want) in lines {
            assert_eq!(step.to_string(), want);
        }
        let vx = Outcome::ToVtep { remote: Ipv4Addr::new(172, 16, 240, 132), dport: 8472, sport: 50123 };
        assert_eq!(vx.to_string(), "VXLAN to 172.16.240.132:8472 from udp port 50123");
    }
}
