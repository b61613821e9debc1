//! What a scrape reads and how it is encoded: a [`Collector`] over the live counters
//! (nothing is copied in the background), encoded by `prometheus-client` as
//! OpenMetrics text.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::Source;
use crate::core::Dataplane;
use crate::core::counters::{Counter, DropReason};
use crate::core::tables::Tables;
use crate::io::stats::{self, PortCounts};

pub fn render(src: &Source) -> String {
    let mut registry =
        Registry::with_prefix_and_labels("ucanal", [("node".into(), src.node.clone().into())].into_iter());
    registry.register_collector(Box::new(DataplaneCollector(src.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail, and the collector only fails on a write error.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "metrics encoding failed");
    }
    out
}

/// Reads the dataplane's live counters at each scrape.
struct DataplaneCollector(Source);

impl std::fmt::Debug for DataplaneCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataplaneCollector").field("node", &self.0.node).finish_non_exhaustive()
    }
}

/// HELP text is written as is: keep it on one line without the characters the text
/// format escapes.
fn help_text(s: &str) -> String {
    s.chars().map(|c| if c == '\n' || c == '\\' || c == '"' { ' ' } else { c }).collect()
}

/// One counter family: `name` without `_total` (the encoder appends it).
fn counter_family<'a, L: EncodeLabelSet + 'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, &help_text(help), None, MetricType::Counter)?;
    for (labels, v) in samples {
        m.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
    }
    Ok(())
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    enc.encode_descriptor(name, &help_text(help), None, MetricType::Gauge)?.encode_gauge(&v)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    enc.encode_descriptor(name, &help_text(help), None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let (src, tables) = (&self.0, self.0.dp.tables());
        encode_ports(&mut enc, src, &tables)?;
        encode_decisions(&mut enc, &src.dp)?;
        encode_conntrack(&mut enc, &src.dp)?;
        encode_services(&mut enc, &tables)?;
        encode_policy(&mut enc, &tables)
    }
}

/// Network policy: per rule, the new flows it matched (and their first packets'
/// bytes), like the packet counters of Felix's chains in `iptables -vnL`. A rule shared
/// by several pods' chains is one series (its counter is one).
fn encode_policy(enc: &mut DescriptorEncoder, tables: &Tables) -> std::fmt::Result {
    use crate::core::policy::Direction;
    let mut seen = std::collections::HashSet::new();
    let mut rules = Vec::new();
    for (_, ep) in tables.policy.endpoints() {
        for (dir, chain) in [(Direction::Ingress, &ep.ingress), (Direction::Egress, &ep.egress)] {
            for r in chain.rules.iter() {
                if !seen.insert(std::sync::Arc::as_ptr(&r.hits)) {
                    continue;
                }
                let policy = match &r.policy.namespace {
                    Some(ns) => format!("{ns}/{}", r.policy.name),
                    None => r.policy.name.clone(),
                };
                let labels = [
                    ("kind", crate::control::policy::kind_name(r.policy.kind).to_string()),
                    ("policy", policy),
                    ("direction", if dir == Direction::Ingress { "ingress" } else { "egress" }.to_string()),
                    ("rule", r.index.to_string()),
                    ("action", format!("{:?}", r.action)),
                ];
                rules.push((labels, r.hits.get()));
            }
        }
    }
    rules.sort_by(|a, b| a.0.cmp(&b.0));
    counter_family(
        enc,
        "policy_rule_flows",
        "New flows matched by each network policy rule (Felix's cali-tw-/cali-fw- chains)",
        rules.iter().map(|(l, (packets, _))| (&l[..], *packets)),
    )?;
    counter_family(
        enc,
        "policy_rule_first_packet_bytes",
        "Bytes of the first packets of the new flows matched by each network policy rule",
        rules.iter().map(|(l, (_, bytes))| (&l[..], *bytes)),
    )
}

/// Ports: the host port (slot 0), pods by port number, the VXLAN underlay.
fn encode_ports(enc: &mut DescriptorEncoder, src: &Source, tables: &Tables) -> std::fmt::Result {
    let mut ports: Vec<(Vec<(&str, &str)>, PortCounts)> = Vec::new();
    ports.push((vec![("port", "host")], src.stats.get(0)));
    for p in tables.pods() {
        ports.push((vec![("port", p.name.as_str()), ("dev", p.ifname.as_str())], src.stats.get(stats::slot(p.port))));
    }
    ports.push((vec![("port", "vxlan")], src.stats.get(stats::VXLAN)));
    let by_direction = |pick: fn(&PortCounts) -> (u64, u64)| {
        ports.iter().flat_map(move |(labels, c)| {
            let (rx, tx) = pick(c);
            let with = |dir: &'static str| {
                let mut l = labels.clone();
                l.insert(1, ("direction", dir));
                l
            };
            [(with("rx"), rx), (with("tx"), tx)]
        })
    };
    counter_family(
        enc,
        "port_packets",
        "Packets that crossed each port (host, pods by name with their cali* device, vxlan underlay), by direction as seen by ucanal",
        by_direction(|c| (c.rx_packets, c.tx_packets)),
    )?;
    counter_family(
        enc,
        "port_bytes",
        "Bytes that crossed each port (host, pods by name with their cali* device, vxlan underlay), by direction as seen by ucanal",
        by_direction(|c| (c.rx_bytes, c.tx_bytes)),
    )?;

    Ok(())
}

/// Every decision counter and drop reason, zeros included.
fn encode_decisions(enc: &mut DescriptorEncoder, dp: &Dataplane) -> std::fmt::Result {
    let mut help = String::from("Dataplane decisions (packets, or flows for the ct_/service_/masquerade ones):");
    for c in Counter::ALL {
        help.push_str(&format!(" {}: {};", c.name(), c.help()));
    }
    help.pop();
    counter_family(
        enc,
        "decisions",
        &help,
        Counter::ALL.iter().map(|c| ([("decision", c.name())], dp.counters.get(*c))),
    )?;

    let mut help = String::from("Packets dropped, by reason:");
    for d in DropReason::ALL {
        help.push_str(&format!(" {}: {};", d.name(), d.help()));
    }
    help.pop();
    counter_family(
        enc,
        "drops",
        &help,
        DropReason::ALL.iter().map(|d| ([("reason", d.name())], dp.counters.dropped(*d))),
    )?;

    Ok(())
}

fn encode_conntrack(enc: &mut DescriptorEncoder, dp: &Dataplane) -> std::fmt::Result {
    gauge(
        enc,
        "conntrack_entries",
        "Entries in the connection table (live, plus expired ones not yet swept)",
        dp.conntrack.len() as u64,
    )?;
    gauge(enc, "conntrack_max", "Maximum entries in the connection table", dp.conntrack.max() as u64)?;
    counter(
        enc,
        "conntrack_expired",
        "Connection-table evictions: flows removed by timeout (the ct_expired decision)",
        dp.counters.get(Counter::CtExpired),
    )?;
    counter(
        enc,
        "conntrack_flushed",
        "UDP flows removed from the connection table because their endpoint was removed (the ct_flushed_endpoint decision)",
        dp.counters.get(Counter::CtFlushedEndpoint),
    )?;

    Ok(())
}

/// Services: the NAT counters count new flows and their first packet, like
/// `iptables -vnL -t nat`.
fn encode_services(enc: &mut DescriptorEncoder, tables: &Tables) -> std::fmt::Result {
    let services: Vec<_> = tables
        .services
        .iter()
        .map(|s| {
            let labels = [
                ("service", s.spec.name.clone()),
                ("protocol", s.spec.protocol.name().to_string()),
                ("cluster_ip", s.spec.cluster_ip.to_string()),
                ("port", s.spec.port.to_string()),
            ];
            (labels, s.hits.get())
        })
        .collect();
    counter_family(
        enc,
        "service_flows",
        "New flows matched by each service (NAT rules see a connection's first packet only, like iptables -vnL -t nat)",
        services.iter().map(|(l, (packets, _))| (&l[..], *packets)),
    )?;
    counter_family(
        enc,
        "service_first_packet_bytes",
        "Bytes of the first packets of the new flows matched by each service",
        services.iter().map(|(l, (_, bytes))| (&l[..], *bytes)),
    )?;
    // KUBE-NODEPORTS: the flows that came through a service's NodePort (a subset of the above).
    let node_ports: Vec<_> = tables
        .services
        .iter()
        .filter_map(|s| {
            let np = s.spec.node_port?;
            let labels = [
                ("service", s.spec.name.clone()),
                ("protocol", s.spec.protocol.name().to_string()),
                ("node_port", np.to_string()),
            ];
            Some((labels, s.node_port_hits.get().0))
        })
        .collect();
    counter_family(
        enc,
        "service_node_port_flows",
        "New flows matched by each service's NodePort (KUBE-NODEPORTS), counted in service_flows too",
        node_ports.iter().map(|(l, n)| (&l[..], *n)),
    )?;
    let endpoints = tables.services.iter().flat_map(|s| {
        s.spec
            .endpoints
            .iter()
            .zip(&s.endpoint_hits)
            .map(move |(ep, h)| ([("service", s.spec.name.clone()), ("endpoint", ep.to_string())], h.get().0))
    });
    counter_family(enc, "endpoint_flows", "New flows DNATed to each service endpoint", endpoints)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{bumped, check_exposition, source};
    use super::*;

    #[test]
    fn renders_live_values() {
        let text = render(&bumped());
        for want in [
            r#"ucanal_decisions_total{node="centos7-1",decision="decap"} 1"#,
            r#"ucanal_decisions_total{node="centos7-1",decision="rx_pod"} 0"#,
            r#"ucanal_drops_total{node="centos7-1",reason="no_fdb"} 1"#,
            r#"ucanal_drops_total{node="centos7-1",reason="gso_unsupported"} 0"#,
            r#"ucanal_port_packets_total{node="centos7-1",port="ghost-ep1",direction="rx",dev="calif0e9df43659"} 1"#,
            r#"ucanal_port_bytes_total{node="centos7-1",port="ghost-ep1",direction="rx",dev="calif0e9df43659"} 100"#,
            r#"ucanal_port_bytes_total{node="centos7-1",port="ghost-ep1",direction="tx",dev="calif0e9df43659"} 60"#,
            r#"ucanal_port_packets_total{node="centos7-1",port="ghost-ep3",direction="rx",dev="cali0000000003"} 0"#,
            r#"ucanal_port_bytes_total{node="centos7-1",port="host",direction="rx"} 42"#,
            r#"ucanal_port_bytes_total{node="centos7-1",port="vxlan",direction="tx"} 1500"#,
            r#"ucanal_conntrack_entries{node="centos7-1"} 0"#,
            r#"ucanal_conntrack_max{node="centos7-1"} 1000"#,
            r#"ucanal_conntrack_expired_total{node="centos7-1"} 3"#,
            r#"ucanal_conntrack_flushed_total{node="centos7-1"} 0"#,
            r#"ucanal_service_flows_total{node="centos7-1",service="default/ghost",protocol="tcp",cluster_ip="10.250.0.40",port="2368"} 2"#,
            r#"ucanal_service_first_packet_bytes_total{node="centos7-1",service="default/ghost",protocol="tcp",cluster_ip="10.250.0.40",port="2368"} 134"#,
            r#"ucanal_service_node_port_flows_total{node="centos7-1",service="default/ghost",protocol="tcp",node_port="31266"} 1"#,
            r#"ucanal_endpoint_flows_total{node="centos7-1",service="default/ghost",endpoint="10.244.1.5:2368"} 1"#,
            r#"ucanal_endpoint_flows_total{node="centos7-1",service="default/ghost",endpoint="10.244.0.74:2368"} 0"#,
            "# TYPE ucanal_decisions counter",
            "# TYPE ucanal_conntrack_entries gauge",
        ] {
            assert!(text.lines().any(|l| l == want), "missing {want} in\n{text}");
        }
        let help = text.lines().find(|l| l.starts_with("# HELP ucanal_decisions ")).unwrap();
        assert!(help.contains("decap: VXLAN datagrams accepted and decapsulated"), "{help}");
        assert!(text.lines().any(|l| l.starts_with("# HELP ucanal_conntrack_expired ") && l.contains("evictions")));
        check_exposition(&text);
    }

    #[test]
    fn every_counter_and_drop_reason_is_exported() {
        let text = render(&source());
        let decisions = text.lines().filter(|l| l.starts_with("ucanal_decisions_total{")).count();
        let drops = text.lines().filter(|l| l.starts_with("ucanal_drops_total{")).count();
        assert_eq!(decisions, Counter::ALL.len());
        assert_eq!(drops, DropReason::ALL.len());
        // host + 2 pods + vxlan, rx and tx.
        assert_eq!(text.lines().filter(|l| l.starts_with("ucanal_port_packets_total{")).count(), 8);
        check_exposition(&text);
    }

    #[test]
    fn reads_at_scrape_time() {
        let src = source();
        let before = render(&src);
        assert!(before.contains(r#"decision="ct_new"} 0"#));
        src.dp.counters.inc(0, Counter::CtNew);
        assert!(render(&src).contains(r#"decision="ct_new"} 1"#));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut src = source();
        src.node = "odd\"node\\".into();
        let text = render(&src);
        assert!(text.contains(r#"ucanal_conntrack_max{node="odd\"node\\"} 1000"#), "{text}");
        check_exposition(&text);
    }
}
