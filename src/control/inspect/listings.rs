//! The listings `show` answers, built from the published snapshot (never from the
//! daemon's books, which updates change): the tables as the kernel tools users know
//! list them (`ip route`, `ip neigh`, `bridge fdb`, `iptables -vnL`), in the rows of
//! [`crate::api::rows`]. The CLI prints them as JSON or renders the text.

use crate::api::{CountersReport, EndpointRow, FdbRow, NeighRow, PodRow, PortCounts, RouteRow, ServiceRow};
use crate::core::PortId;
use crate::core::tables::Tables;
use crate::core::{Counter, Counters, DropReason};
use crate::io::stats::{self, PortStats};

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
    rows
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

pub fn pods(t: &Tables, stats: &PortStats) -> Vec<PodRow> {
    let mut v: Vec<PodRow> = t
        .pods()
        .map(|p| PodRow {
            name: p.name.clone(),
            ip: p.ip,
            mac: p.mac.to_string(),
            netns: p.netns.clone(),
            port: p.ifname.clone(),
            port_index: p.port.0,
            counts: port_counts(stats, p.port),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

pub fn services(t: &Tables) -> Vec<ServiceRow> {
    let mut v: Vec<ServiceRow> = t
        .services
        .iter()
        .map(|s| {
            let (packets, bytes) = s.hits.get();
            let (node_port_packets, node_port_bytes) = s.node_port_hits.get();
            ServiceRow {
                name: s.spec.name.clone(),
                protocol: s.spec.protocol.name().into(),
                cluster_ip: s.spec.cluster_ip,
                port: s.spec.port,
                node_port: s.spec.node_port,
                packets,
                bytes,
                node_port_packets,
                node_port_bytes,
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

pub fn counters(c: &Counters) -> CountersReport {
    CountersReport {
        decisions: Counter::ALL.iter().map(|k| (k.name().to_string(), c.get(*k))).collect(),
        drops: DropReason::ALL.iter().map(|k| (k.name().to_string(), c.dropped(*k))).collect(),
    }
}

/// What crossed a port, as the API lists it.
fn port_counts(s: &PortStats, port: PortId) -> PortCounts {
    let c = s.get(stats::slot(port));
    PortCounts { rx_packets: c.rx_packets, rx_bytes: c.rx_bytes, tx_packets: c.tx_packets, tx_bytes: c.tx_bytes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tables::article;

    #[test]
    fn listings_hold_the_articles_tables() {
        let t = article::tables1(vec![article::ghost()]);
        let r = routes(&t, "ucanal0");
        assert_eq!(r.len(), 6);
        assert_eq!((r[0].dst.as_str(), r[0].dev.as_str(), r[0].target.as_str()), ("default", "ucanal0", "host"));
        let peer = r.iter().find(|r| r.target == "peer").unwrap();
        assert_eq!((peer.dst.as_str(), peer.gateway), ("10.244.0.0/24", Some("10.244.0.0".parse().unwrap())));
        let pod = r.iter().find(|r| r.target == "pod").unwrap();
        assert_eq!((pod.dst.as_str(), pod.dev.as_str()), ("10.244.1.5", "calif0e9df43659"));
        let n = neigh(&t);
        assert_eq!((n[0].ip, n[0].lladdr.as_str()), ("10.244.0.0".parse().unwrap(), "32:a9:79:6d:0b:b1"));
        let f = fdb(&t);
        assert_eq!((f[0].mac.as_str(), f[0].dst), ("32:a9:79:6d:0b:b1", "172.16.240.132".parse().unwrap()));
        let s = services(&t);
        assert_eq!((s[0].name.as_str(), s[0].node_port, s[0].endpoints.len()), ("default/ghost", Some(31266), 2));
        let c = counters(&Counters::new(1));
        assert_eq!((c.decisions.len(), c.drops.len()), (Counter::ALL.len(), DropReason::ALL.len()));
    }
}
