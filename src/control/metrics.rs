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
//! | `ucanal_endpoint_flows_total` | `service`, `endpoint` | new flows DNATed to each endpoint |
//!
//! The HTTP side is a minimal HTTP/1.1 server: `GET /metrics` answers the exposition,
//! `GET /` a pointer to it, anything else 404 (405 for other methods); one request per
//! connection, closed after the response.
//!
//! Security: the README documents `--metrics 127.0.0.1:9300` (loopback). The caller
//! may pass any address; binding a non-loopback one exposes the counters (pod names,
//! service names, endpoint addresses) to whoever can reach it, without authentication.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::core::Dataplane;
use crate::core::counters::{Counter, DropReason};
use crate::io::stats::{self, PortCounts, PortStats};

/// What the exporter reads at each scrape.
#[derive(Clone)]
pub struct Source {
    pub node: String,
    pub dp: Arc<Dataplane>,
    pub stats: Arc<PortStats>,
}

/// The `Content-Type` of what [`render`] produces (OpenMetrics text, ending in `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Largest request head read; longer ones get 431.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing the response may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// Binds `addr` and serves in a spawned task. Returns once bound; a bind failure is
/// an error naming the address. The caller decides the address: loopback by default
/// (see the module doc); a non-loopback one exposes the counters.
pub async fn serve(addr: SocketAddr, src: Source) -> io::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen for metrics on {addr}: {e}")))?;
    let local = listener.local_addr().unwrap_or(addr);
    if !local.ip().is_loopback() {
        tracing::warn!(addr = %local, "metrics served on a non-loopback address: counters are exposed without authentication");
    }
    tracing::info!(addr = %local, "metrics on http://{local}/metrics");
    tokio::spawn(accept_loop(listener, Arc::new(src)));
    Ok(())
}

async fn accept_loop(listener: TcpListener, src: Arc<Source>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let src = src.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = handle(stream, src).await {
                        tracing::debug!(error = %e, "metrics connection");
                    }
                });
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, "metrics accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Index,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Reads the request head: `None` when the client closed or timed out before sending
/// a complete one (nothing to answer), `Some(Err(()))` when it is too long.
async fn read_head(stream: &mut TcpStream) -> Option<Result<Vec<u8>, ()>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read = async {
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            if head_end(&buf) {
                return Some(Ok(()));
            }
            if buf.len() > MAX_HEAD {
                return Some(Err(()));
            }
        }
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Some(Ok(()))) => Some(Ok(buf)),
        Ok(Some(Err(()))) => Some(Err(())),
        _ => None,
    }
}

fn head_end(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n")
}

fn route(head: &[u8]) -> Route {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else { return Route::BadRequest };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics,
        ("GET", "/") => Route::Index,
        (_, "/metrics" | "/") => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

async fn handle(mut stream: TcpStream, src: Arc<Source>) -> io::Result<()> {
    let response = match read_head(&mut stream).await {
        None => return Ok(()),
        Some(Err(())) => {
            response("431 Request Header Fields Too Large", "text/plain; charset=utf-8", "request head too long\n")
        }
        Some(Ok(head)) => match route(&head) {
            Route::Metrics => {
                // Rendering walks every service and port: off the (single) runtime
                // worker so a large scrape never stalls the control API.
                let body = tokio::task::spawn_blocking(move || render(&src))
                    .await
                    .map_err(|e| io::Error::other(format!("render: {e}")))?;
                response("200 OK", CONTENT_TYPE, &body)
            }
            Route::Index => response("200 OK", "text/plain; charset=utf-8", "ucanal exporter: metrics at /metrics\n"),
            Route::NotFound => {
                response("404 Not Found", "text/plain; charset=utf-8", "not found; metrics at /metrics\n")
            }
            Route::MethodNotAllowed => response("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET\n"),
            Route::BadRequest => response("400 Bad Request", "text/plain; charset=utf-8", "bad request\n"),
        },
    };
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "writing the response timed out"))?
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        r.push_str("Allow: GET\r\n");
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

/// The exposition text of one scrape (OpenMetrics, ending in `# EOF`).
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
        let src = &self.0;
        let dp = &src.dp;
        let tables = dp.tables();

        // Ports: the host port (slot 0), pods by port number, the VXLAN underlay.
        let mut ports: Vec<(Vec<(&str, &str)>, PortCounts)> = Vec::new();
        ports.push((vec![("port", "host")], src.stats.get(0)));
        for p in tables.pods() {
            ports.push((
                vec![("port", p.name.as_str()), ("dev", p.ifname.as_str())],
                src.stats.get(stats::slot(p.port)),
            ));
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
            &mut enc,
            "port_packets",
            "Packets that crossed each port (host, pods by name with their cali* device, vxlan underlay), by direction as seen by ucanal",
            by_direction(|c| (c.rx_packets, c.tx_packets)),
        )?;
        counter_family(
            &mut enc,
            "port_bytes",
            "Bytes that crossed each port (host, pods by name with their cali* device, vxlan underlay), by direction as seen by ucanal",
            by_direction(|c| (c.rx_bytes, c.tx_bytes)),
        )?;

        let mut help = String::from("Dataplane decisions (packets, or flows for the ct_/service_/masquerade ones):");
        for c in Counter::ALL {
            help.push_str(&format!(" {}: {};", c.name(), c.help()));
        }
        help.pop();
        counter_family(
            &mut enc,
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
            &mut enc,
            "drops",
            &help,
            DropReason::ALL.iter().map(|d| ([("reason", d.name())], dp.counters.dropped(*d))),
        )?;

        gauge(
            &mut enc,
            "conntrack_entries",
            "Entries in the connection table (live, plus expired ones not yet swept)",
            dp.conntrack.len() as u64,
        )?;
        gauge(&mut enc, "conntrack_max", "Maximum entries in the connection table", dp.conntrack.max() as u64)?;
        counter(
            &mut enc,
            "conntrack_expired",
            "Connection-table evictions: flows removed by timeout (the ct_expired decision)",
            dp.counters.get(Counter::CtExpired),
        )?;
        counter(
            &mut enc,
            "conntrack_flushed",
            "UDP flows removed from the connection table because their endpoint was removed (the ct_flushed_endpoint decision)",
            dp.counters.get(Counter::CtFlushedEndpoint),
        )?;

        // Services: the NAT counters count new flows and their first packet, like
        // `iptables -vnL -t nat`.
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
            &mut enc,
            "service_flows",
            "New flows matched by each service (NAT rules see a connection's first packet only, like iptables -vnL -t nat)",
            services.iter().map(|(l, (packets, _))| (&l[..], *packets)),
        )?;
        counter_family(
            &mut enc,
            "service_first_packet_bytes",
            "Bytes of the first packets of the new flows matched by each service",
            services.iter().map(|(l, (_, bytes))| (&l[..], *bytes)),
        )?;
        let endpoints = tables.services.iter().flat_map(|s| {
            s.spec
                .endpoints
                .iter()
                .zip(&s.endpoint_hits)
                .map(move |(ep, h)| ([("service", s.spec.name.clone()), ("endpoint", ep.to_string())], h.get().0))
        });
        counter_family(&mut enc, "endpoint_flows", "New flows DNATed to each service endpoint", endpoints)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::nat::conntrack::{Conntrack, Timeouts};
    use crate::core::tables::article;

    fn source() -> Source {
        let dp = Dataplane::new(article::tables1(vec![article::ghost()]), Conntrack::new(1000, Timeouts::default()), 2);
        Source { node: "centos7-1".into(), dp: Arc::new(dp), stats: Arc::new(PortStats::new(1)) }
    }

    fn bumped() -> Source {
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
        ghost.endpoint_hits[1].hit(60);
        src
    }

    /// Checks the text is well-formed exposition: every family declared with HELP
    /// and TYPE before its samples, every sample `name{labels} value`, `# EOF` last.
    fn check_exposition(text: &str) {
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

    #[test]
    fn routes_requests() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?foo=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\n\n"), Route::Index);
        assert_eq!(route(b"GET /nope HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET http://x/metrics HTTP/1.1\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics HTTP/1.1 extra\r\n\r\n"), Route::BadRequest);
    }

    fn free_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    async fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn serves_over_http() {
        let addr = free_port();
        serve(addr, bumped()).await.unwrap();

        let r = get(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")), "{r}");
        assert!(r.contains("Connection: close\r\n"));
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())), "{head}");
        assert!(body.lines().any(|l| l == r#"ucanal_decisions_total{node="centos7-1",decision="decap"} 1"#), "{body}");
        check_exposition(body);

        let r = get(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");

        let r = get(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.contains("/metrics"), "{r}");

        let r = get(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");

        let r = get(addr, b"garbage\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");

        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        let r = get(addr, &big).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");

        // A client that sends nothing and closes gets nothing, and the server goes on.
        drop(TcpStream::connect(addr).await.unwrap());
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty());
        let r = get(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    }

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let e = serve(addr, source()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
