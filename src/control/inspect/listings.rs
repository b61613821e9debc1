//! `ucanal show`: the tables as the kernel tools users know print them (`ip route`,
//! `ip neigh`, `bridge fdb`, `conntrack -L`, `iptables -vnL`), and as stable JSON.
//!
//! The daemon answers with the JSON form; the CLI prints it as is (`--json`) or
//! renders the text form from it, so both always agree. The JSON schema of each
//! listing is documented in README.md ("Listings").

use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::core::route::RouteTarget;
use crate::core::tables::Tables;
use crate::core::{Counter, Counters, DropReason};

pub use super::conntrack::*;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    /// `default`, `a.b.c.d` (a /32) or `a.b.c.d/len`.
    pub dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    pub dev: String,
    /// `unicast` or `local`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub flags: Vec<String>,
    /// What ucanal does with it: `pod`, `peer`, `local`, `host`.
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

pub fn routes(t: &Tables, host_port: &str) -> Vec<RouteRow> {
    let mut rows = vec![RouteRow {
        dst: "default".into(),
        gateway: None,
        dev: host_port.into(),
        kind: "unicast".into(),
        scope: Some("link".into()),
        flags: vec![],
        target: "host".into(),
        pod: None,
    }];
    let mut peers: Vec<_> = t.routes.peers.iter().collect();
    peers.sort();
    for (net, peer) in peers {
        rows.push(RouteRow {
            dst: net.to_string(),
            gateway: Some(peer.gateway),
            dev: "flannel.1".into(),
            kind: "unicast".into(),
            scope: None,
            flags: vec!["onlink".into()],
            target: "peer".into(),
            pod: None,
        });
    }
    let mut pods: Vec<_> = t.pods().collect();
    pods.sort_by_key(|p| p.ip);
    for p in pods {
        rows.push(RouteRow {
            dst: p.ip.to_string(),
            gateway: None,
            dev: p.ifname.clone(),
            kind: "unicast".into(),
            scope: Some("link".into()),
            flags: vec![],
            target: "pod".into(),
            pod: Some(p.name.clone()),
        });
    }
    for a in [t.node.vtep_ip, t.node.node_ip] {
        rows.push(RouteRow {
            dst: a.to_string(),
            gateway: None,
            dev: host_port.into(),
            kind: "local".into(),
            scope: Some("host".into()),
            flags: vec![],
            target: "local".into(),
            pod: None,
        });
    }
    let _ = RouteTarget::Host;
    rows
}

pub fn routes_text(rows: &[RouteRow]) -> String {
    let mut s = String::new();
    for r in rows {
        if r.kind == "local" {
            s.push_str("local ");
        }
        s.push_str(&r.dst);
        if let Some(g) = r.gateway {
            let _ = write!(s, " via {g}");
        }
        let _ = write!(s, " dev {}", r.dev);
        if let Some(sc) = &r.scope {
            let _ = write!(s, " scope {sc}");
        }
        for f in &r.flags {
            let _ = write!(s, " {f}");
        }
        s.push('\n');
    }
    s
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighRow {
    pub ip: Ipv4Addr,
    pub dev: String,
    pub lladdr: String,
    pub state: String,
}

pub fn neigh(t: &Tables) -> Vec<NeighRow> {
    let mut rows: Vec<NeighRow> = t
        .neigh
        .entries()
        .into_iter()
        .map(|(ip, mac)| NeighRow { ip, dev: "flannel.1".into(), lladdr: mac.to_string(), state: "PERMANENT".into() })
        .collect();
    let mut pods: Vec<_> = t.pods().collect();
    pods.sort_by_key(|p| p.ip);
    rows.extend(pods.into_iter().map(|p| NeighRow {
        ip: p.ip,
        dev: p.ifname.clone(),
        lladdr: p.mac.to_string(),
        state: "PERMANENT".into(),
    }));
    rows
}

pub fn neigh_text(rows: &[NeighRow]) -> String {
    rows.iter().map(|r| format!("{} dev {} lladdr {} {}\n", r.ip, r.dev, r.lladdr, r.state)).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbRow {
    pub mac: String,
    pub dev: String,
    pub dst: Ipv4Addr,
    pub flags: Vec<String>,
    pub state: String,
}

pub fn fdb(t: &Tables) -> Vec<FdbRow> {
    t.fdb
        .entries()
        .into_iter()
        .map(|(mac, dst)| FdbRow {
            mac: mac.to_string(),
            dev: "flannel.1".into(),
            dst,
            flags: vec!["self".into()],
            state: "permanent".into(),
        })
        .collect()
}

pub fn fdb_text(rows: &[FdbRow]) -> String {
    rows.iter().map(|r| format!("{} dev {} dst {} {} {}\n", r.mac, r.dev, r.dst, r.flags.join(" "), r.state)).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRow {
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub netns: String,
    /// The pod's port, Calico-style name.
    pub port: String,
    pub port_index: u32,
    /// What crossed the pod's port (rx: from the pod).
    pub counts: crate::io::stats::PortCounts,
}

pub fn pods(t: &Tables, stats: &crate::io::stats::PortStats) -> Vec<PodRow> {
    let mut v: Vec<PodRow> = t
        .pods()
        .map(|p| PodRow {
            name: p.name.clone(),
            ip: p.ip,
            mac: p.mac.to_string(),
            netns: p.netns.clone(),
            port: p.ifname.clone(),
            port_index: p.port.0,
            counts: stats.get(crate::io::stats::slot(p.port)),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

pub fn pods_text(rows: &[PodRow], node: &str) -> String {
    let mut s = format!(
        "{:<20} {:<14} {:<18} {:<16} {:<20} {:<12} {:>10} {:>10}\n",
        "NAME", "IP", "MAC", "PORT", "NETNS", "NODE", "RX-PKTS", "TX-PKTS"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<20} {:<14} {:<18} {:<16} {:<20} {:<12} {:>10} {:>10}",
            r.name, r.ip, r.mac, r.port, r.netns, node, r.counts.rx_packets, r.counts.tx_packets
        );
    }
    s
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRow {
    pub endpoint: SocketAddrV4,
    /// New flows DNATed to this endpoint (iptables `pkts` of its KUBE-SEP rule).
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub name: String,
    pub protocol: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// New flows to the service (iptables `pkts` of its KUBE-SVC rule).
    pub packets: u64,
    pub bytes: u64,
    pub endpoints: Vec<EndpointRow>,
}

pub fn services(t: &Tables) -> Vec<ServiceRow> {
    let mut v: Vec<ServiceRow> = t
        .services
        .iter()
        .map(|s| {
            let (packets, bytes) = s.hits.get();
            ServiceRow {
                name: s.spec.name.clone(),
                protocol: s.spec.protocol.name().into(),
                cluster_ip: s.spec.cluster_ip,
                port: s.spec.port,
                node_port: s.spec.node_port,
                packets,
                bytes,
                endpoints: s
                    .spec
                    .endpoints
                    .iter()
                    .zip(&s.endpoint_hits)
                    .map(|(e, h)| {
                        let (packets, bytes) = h.get();
                        EndpointRow { endpoint: *e, packets, bytes }
                    })
                    .collect(),
            }
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// iptables' human byte counts: 142K, 3695K, 12M.
fn human(n: u64) -> String {
    match n {
        0..=99_999 => n.to_string(),
        100_000..=99_999_999 => format!("{}K", n / 1000),
        _ => format!("{}M", n / 1_000_000),
    }
}

/// `iptables -vnL -t nat` style: the service portals, then each service's endpoints.
pub fn services_text(rows: &[ServiceRow]) -> String {
    let mut s = String::from("Chain KUBE-SERVICES (ucanal service table)\n");
    let _ = writeln!(s, "{:>5} {:>5} {:<28} {:<4} {:<20} ", "pkts", "bytes", "target", "prot", "destination");
    for r in rows {
        let _ = writeln!(
            s,
            "{:>5} {:>5} {:<28} {:<4} {:<20} /* {}: cluster IP */ {} dpt:{}",
            r.packets,
            human(r.bytes),
            format!("SVC {}", r.name),
            r.protocol,
            r.cluster_ip,
            r.name,
            r.protocol,
            r.port
        );
    }
    let nodeports: Vec<_> = rows.iter().filter(|r| r.node_port.is_some()).collect();
    if !nodeports.is_empty() {
        s.push_str("\nChain KUBE-NODEPORTS\n");
        let _ = writeln!(s, "{:>5} {:>5} {:<28} {:<4} ", "pkts", "bytes", "target", "prot");
        for r in nodeports {
            let _ = writeln!(
                s,
                "{:>5} {:>5} {:<28} {:<4} /* {}: */ {} dpt:{}",
                "-",
                "-",
                format!("SVC {}", r.name),
                r.protocol,
                r.name,
                r.protocol,
                r.node_port.unwrap_or(0)
            );
        }
    }
    for r in rows {
        let _ = writeln!(s, "\nChain SVC {} ({} endpoints)", r.name, r.endpoints.len());
        let _ = writeln!(s, "{:>5} {:>5} {:<28} ", "pkts", "bytes", "target");
        if r.endpoints.is_empty() {
            let _ = writeln!(
                s,
                "{:>5} {:>5} {:<28} /* {} has no endpoints */ reject-with icmp-port-unreachable",
                "-", "-", "REJECT", r.name
            );
        }
        let n = r.endpoints.len();
        for (i, e) in r.endpoints.iter().enumerate() {
            let _ = writeln!(
                s,
                "{:>5} {:>5} {:<28} /* {}: */ flow hash 1/{n} ({:.5}) DNAT to:{}",
                e.packets,
                human(e.bytes),
                format!("SEP {}", e.endpoint),
                r.name,
                1.0 / n as f64,
                e.endpoint
            );
            let _ = i;
        }
    }
    s
}

pub fn counters(c: &Counters) -> serde_json::Value {
    let decisions: serde_json::Map<String, serde_json::Value> =
        Counter::ALL.iter().map(|k| (k.name().to_string(), json!(c.get(*k)))).collect();
    let drops: serde_json::Map<String, serde_json::Value> =
        DropReason::ALL.iter().map(|k| (k.name().to_string(), json!(c.dropped(*k)))).collect();
    json!({ "decisions": decisions, "drops": drops })
}

pub fn counters_text(v: &serde_json::Value, all: bool) -> String {
    let mut s = String::new();
    for (section, title) in [("decisions", "decisions"), ("drops", "drops")] {
        let _ = writeln!(s, "{title}:");
        if let Some(m) = v.get(section).and_then(|m| m.as_object()) {
            for (k, n) in m {
                let n = n.as_u64().unwrap_or(0);
                if all || n > 0 {
                    let _ = writeln!(s, "  {k:<28} {n}");
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tables::article;

    #[test]
    fn listings_read_like_the_kernel_tools() {
        let t = article::tables1(vec![article::ghost()]);
        let r = routes_text(&routes(&t, "ucanal0"));
        assert!(r.contains("10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink\n"), "{r}");
        assert!(r.contains("10.244.1.5 dev calif0e9df43659 scope link\n"), "{r}");
        assert!(r.starts_with("default dev ucanal0 scope link\n"));
        let n = neigh_text(&neigh(&t));
        assert!(n.starts_with("10.244.0.0 dev flannel.1 lladdr 32:a9:79:6d:0b:b1 PERMANENT\n"), "{n}");
        let f = fdb_text(&fdb(&t));
        assert_eq!(f, "32:a9:79:6d:0b:b1 dev flannel.1 dst 172.16.240.132 self permanent\n");
        let s = services_text(&services(&t));
        assert!(s.contains("/* default/ghost: cluster IP */ tcp dpt:2368"), "{s}");
        assert!(s.contains("tcp dpt:31266"), "{s}");
        assert!(s.contains("DNAT to:10.244.0.74:2368"), "{s}");
        // JSON round-trips.
        let j = serde_json::to_value(routes(&t, "ucanal0")).unwrap();
        let back: Vec<RouteRow> = serde_json::from_value(j).unwrap();
        assert_eq!(back.len(), 6);
    }

    #[test]
    fn iptables_style_numbers() {
        assert_eq!(human(240), "240");
        assert_eq!(human(142_000), "142K");
        assert_eq!(human(3_695_000), "3695K");
        assert_eq!(human(120_000_000), "120M");
    }
}
