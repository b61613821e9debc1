//! Prometheus metrics (opt-in, `--metrics ADDR`).
//!
//! A [`Collector`] reads the live counters at scrape time (nothing is copied in the
//! background) and `prometheus-client` encodes them in the OpenMetrics text format.
//! Every series carries a `node` label (a registry-wide const label); every family
//! is prefixed `ucanal_`:
//!
//! | family | labels | what |
//! | --- | --- | --- |
//! | `ucanal_port_packets_total`, `ucanal_port_bytes_total` | `port`, `direction`, `dev` (pods) | frames that crossed each port: `host`, each pod by name, `vxlan` |
//! | `ucanal_decisions_total` | `decision` | every decision counter, zeros included |
//! | `ucanal_drops_total` | `reason` | every drop reason, zeros included |
//! | `ucanal_conntrack_entries`, `ucanal_conntrack_max` | | connection-table size and limit (gauges) |
//! | `ucanal_conntrack_expired_total`, `ucanal_conntrack_flushed_total` | | flows evicted by timeout, UDP flows flushed with their endpoint |
//! | `ucanal_service_flows_total`, `ucanal_service_first_packet_bytes_total` | `service`, `protocol`, `cluster_ip`, `port` | new flows per service and the bytes of their first packets (iptables-style NAT counters) |
//! | `ucanal_service_node_port_flows_total` | `service`, `protocol`, `node_port` | those of them that came through the NodePort (KUBE-NODEPORTS) |
//! | `ucanal_endpoint_flows_total` | `service`, `endpoint` | new flows DNATed to each endpoint |
//! | `ucanal_policy_rule_flows_total`, `ucanal_policy_rule_first_packet_bytes_total` | `kind`, `policy`, `direction`, `rule`, `action` | new flows matched by each network policy rule |
//!
//! The HTTP side is hyper's HTTP/1.1 server: `GET /metrics` answers the exposition,
//! `GET /` a pointer to it, anything else 404 (405 for other methods).
//!
//! Security: the README documents `--metrics 127.0.0.1:9300` (loopback). The caller
//! may pass any address; binding a non-loopback one exposes the counters (pod names,
//! service names, endpoint addresses) to whoever can reach it, without authentication.
//!
//! `exposition` owns what a scrape reads and how it is encoded; `http` the server.

mod exposition;
mod http;

use std::sync::Arc;

use crate::core::Dataplane;
use crate::io::stats::PortStats;

pub use exposition::render;
pub use http::serve;

/// What the exporter reads at each scrape.
#[derive(Clone)]
pub struct Source {
    pub node: String,
    pub dp: Arc<Dataplane>,
    pub stats: Arc<PortStats>,
}

/// The `Content-Type` of what [`render`] produces (OpenMetrics text, ending in `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Fixtures shared by the tests of both halves.
#[cfg(test)]
mod testing {
    use super::*;
    use crate::core::counters::{Counter, DropReason};
    use crate::core::nat::conntrack::{Conntrack, Timeouts};
    use crate::core::tables::article;
    use crate::io::stats;

    pub(super) fn source() -> Source {
        let dp = Dataplane::new(article::tables1(vec![article::ghost()]), Conntrack::new(1000, Timeouts::default()), 2);
        Source { node: "centos7-1".into(), dp: Arc::new(dp), stats: Arc::new(PortStats::new(1)) }
    }

    pub(super) fn bumped() -> Source {
        let src = source();
        src.dp.counters.inc(0, Counter::Decap);
        src.dp.counters.inc(1, Counter::CtExpired);
        src.dp.counters.add(0, Counter::CtExpired, 2);
        src.dp.counters.drop(1, DropReason::NoFdb);
        src.stats.rx(0, 1, 100);
        src.stats.tx(0, 1, 60);
        src.stats.tx(0, stats::VXLAN, 1500);
        src.stats.rx(0, 0, 42);
        let t = src.dp.tables();
        let ghost = t.services.iter().next().unwrap();
        ghost.hits.hit(60);
        ghost.hits.hit(74);
        ghost.node_port_hits.hit(74);
        ghost.endpoint_hits[1].hit(60);
        src
    }

    /// Checks the text is well-formed exposition: every family declared with HELP
    /// and TYPE before its samples, every sample `name{labels} value`, `# EOF` last.
    pub(super) fn check_exposition(text: &str) {
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF");
        let mut family: Option<(String, String)> = None;
        for line in &lines[..lines.len() - 1] {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty());
                family = Some((name.to_string(), String::new()));
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect("TYPE name type");
                let f = family.as_mut().expect("TYPE after HELP");
                assert_eq!(f.0, name);
                assert!(ty == "counter" || ty == "gauge", "{line}");
                f.1 = ty.to_string();
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line}");
            let (fam, ty) = family.as_ref().expect("sample after its family");
            let name_end = line.find(['{', ' ']).expect("name");
            let name = &line[..name_end];
            assert!(
                name.starts_with("ucanal_") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{line}"
            );
            let want = if ty == "counter" { format!("{fam}_total") } else { fam.clone() };
            assert_eq!(name, want, "{line}");
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(r) = rest.strip_prefix('{') {
                let mut r = r;
                loop {
                    let eq = r.find("=\"").expect("label=\"");
                    let key = &r[..eq];
                    assert!(!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                    r = &r[eq + 2..];
                    let mut end = None;
                    let mut esc = false;
                    for (i, c) in r.char_indices() {
                        match (esc, c) {
                            (true, _) => esc = false,
                            (false, '\\') => esc = true,
                            (false, '"') => {
                                end = Some(i);
                                break;
                            }
                            _ => {}
                        }
                    }
                    let end = end.expect("closing quote");
                    labels.push(key.to_string());
                    r = &r[end + 1..];
                    if let Some(more) = r.strip_prefix(',') {
                        r = more;
                    } else {
                        r = r.strip_prefix('}').expect("closing brace");
                        break;
                    }
                }
                rest = r;
            }
            assert_eq!(labels.first().map(String::as_str), Some("node"), "node label first: {line}");
            let value = rest.strip_prefix(' ').expect("space before value");
            assert!(value.parse::<f64>().is_ok(), "value in {line}");
        }
    }
}
