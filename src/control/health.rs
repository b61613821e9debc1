//! `healthCheckNodePort`: for each LoadBalancer service with `externalTrafficPolicy:
//! Local`, an HTTP server on the node IP and that port that tells the load balancer
//! whether this node has an endpoint of the service — 200 with its count, 503 without —
//! in kube-proxy's words (`pkg/proxy/healthcheck/service_health.go`): any path, headers
//! `Content-Type: application/json`, `X-Content-Type-Options: nosniff`,
//! `X-Load-Balancing-Endpoint-Weight: <count>`, and its JSON body.
//!
//! The count is read at request time from the tables the workers use: the service's
//! ready endpoints that are pods of this node (a `/32` route), each address once, as
//! kube-proxy's `LocalReadyEndpoints` (terminating endpoints do not count). So a pod
//! that comes or goes changes the answer without a resync; the book only follows the
//! services (`add`/`remove` from the service changes). hyper's HTTP/1.1 server owns the
//! protocol; the limits are the metrics server's (head size and time, connections at
//! once, a connection's life).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use crate::core::Dataplane;
use crate::core::nat::service::ServiceSpec;
use crate::core::route::RouteTarget;
use crate::core::tables::Tables;
use crate::wire::ipv4::{PROTO_TCP, PROTO_UDP};

/// hyper's read buffer, which bounds the request head (its smallest allowed size).
const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request head.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may last: a prober that stops reading frees its slot.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once per port; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// How long accepting waits after an error (EMFILE and the like) before it retries.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A service port by what finds it in the table: protocol number, cluster IP, port.
type PortKey = (u8, Ipv4Addr, u16);

/// What one health-check port answers for: a service and its ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Target {
    namespace: String,
    name: String,
    ports: BTreeSet<PortKey>,
}

struct Server {
    target: Arc<Mutex<Target>>,
    task: AbortHandle,
}

/// The health-check servers, by port.
#[derive(Default)]
pub struct HealthBook {
    servers: BTreeMap<u16, Server>,
}

impl Drop for HealthBook {
    fn drop(&mut self) {
        for s in self.servers.values() {
            s.task.abort();
        }
    }
}

fn key(s: &ServiceSpec) -> PortKey {
    (s.protocol.number(), s.cluster_ip, s.port)
}

/// `ns/name` of a spec (`ns/name:port` for a port of a multi-port service).
fn service_of(spec_name: &str) -> (&str, &str) {
    let svc = spec_name.split_once(':').map_or(spec_name, |(s, _)| s);
    svc.split_once('/').unwrap_or(("", svc))
}

impl HealthBook {
    /// A service port that has a health-check port now serves on it (the server is
    /// started for its first port). Needs a tokio runtime.
    pub fn add(&mut self, s: &ServiceSpec, node_ip: Ipv4Addr, dp: &Arc<Dataplane>) {
        let Some(port) = s.health_check_node_port else { return };
        let (namespace, name) = service_of(&s.name);
        if let Some(server) = self.servers.get(&port) {
            let mut t = server.target.lock().unwrap_or_else(PoisonError::into_inner);
            if (t.namespace.as_str(), t.name.as_str()) != (namespace, name) {
                tracing::error!(port, service = %s.name, holder = %format!("{}/{}", t.namespace, t.name),
                    "healthCheckNodePort already serves another service");
                return;
            }
            t.ports.insert(key(s));
            return;
        }
        let target = Target { namespace: namespace.into(), name: name.into(), ports: BTreeSet::from([key(s)]) };
        let target = Arc::new(Mutex::new(target));
        match listen(SocketAddrV4::new(node_ip, port)) {
            Ok(l) => {
                let task = tokio::spawn(accept_loop(l, target.clone(), dp.clone())).abort_handle();
                tracing::info!(port, service = %format!("{namespace}/{name}"), "health check on http://{node_ip}:{port}/");
                self.servers.insert(port, Server { target, task });
            }
            Err(e) => tracing::error!(port, service = %s.name, error = %e, "health check port not served"),
        }
    }

    /// A service port went (or lost its health-check port): its server stops with the
    /// service's last port.
    pub fn remove(&mut self, s: &ServiceSpec) {
        let Some(port) = s.health_check_node_port else { return };
        let Some(server) = self.servers.get(&port) else { return };
        let empty = {
            let mut t = server.target.lock().unwrap_or_else(PoisonError::into_inner);
            t.ports.remove(&key(s));
            t.ports.is_empty()
        };
        if empty && let Some(server) = self.servers.remove(&port) {
            server.task.abort();
        }
    }

    /// The ports served now.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.keys().copied().collect()
    }
}

/// Binds with SO_REUSEADDR and SO_REUSEPORT, so a successor (a restart or a hand-over)
/// binds while its predecessor still serves.
fn listen(addr: SocketAddrV4) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(addr).into())?;
    s.listen(64)?;
    TcpListener::from_std(s.into())
}

async fn accept_loop(l: TcpListener, target: Arc<Mutex<Target>>, dp: Arc<Dataplane>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        match l.accept().await {
            Ok((stream, _)) => {
                let (target, dp) = (target.clone(), dp.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        let t = target.lock().unwrap_or_else(PoisonError::into_inner).clone();
                        let count = local_ready_endpoints(&dp.tables(), &t.ports);
                        async move { Ok::<_, Infallible>(response(&t.namespace, &t.name, count)) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        // Go's canonical header names, as kube-proxy sends them.
                        .title_case_headers(true)
                        .header_read_timeout(IO_TIMEOUT)
                        .max_buf_size(MAX_HEAD)
                        .serve_connection(TokioIo::new(stream), service);
                    if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                        tracing::debug!(error = %e, "health check connection");
                    }
                });
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, "health check accept");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// kube-proxy's `LocalReadyEndpoints` for one service: its ready endpoints that are
/// pods of this node, each address once.
fn local_ready_endpoints(t: &Tables, ports: &BTreeSet<PortKey>) -> usize {
    let mut ips = BTreeSet::new();
    for (proto, ip, port) in ports {
        if !matches!(*proto, PROTO_TCP | PROTO_UDP) {
            continue;
        }
        let Some(s) = t.services.by_cluster_ip(*proto, *ip, *port) else { continue };
        for e in &s.spec.endpoints {
            if matches!(t.routes.lookup(*e.ip()).target, RouteTarget::Pod(_)) {
                ips.insert(*e.ip());
            }
        }
    }
    ips.len()
}

/// kube-proxy's JSON body (as its encoder prints it, tab-indented).
fn body(namespace: &str, name: &str, count: usize) -> String {
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": true\n}}",
        serde_json::Value::from(namespace),
        serde_json::Value::from(name)
    )
}

/// The answer kube-proxy's health-check server gives, to any method and path.
fn response(namespace: &str, name: &str, count: usize) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body(namespace, name, count))));
    *r.status_mut() = if count > 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("X-Content-Type-Options", HeaderValue::from_static("nosniff"));
    h.insert("X-Load-Balancing-Endpoint-Weight", HeaderValue::from(count));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::nat::service::{Service, ServiceTable};
    use crate::core::tables::article;

    #[test]
    fn answers_as_kube_proxy() {
        let r = response("default", "ghost", 1);
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-load-balancing-endpoint-weight"], "1");
        let b = body("default", "ghost", 1);
        assert_eq!(
            b,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"ghost\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["localEndpoints"], 1);
        let none = response("a", "b", 0);
        assert_eq!(none.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(none.headers()["x-load-balancing-endpoint-weight"], "0");
    }

    #[test]
    fn counts_this_nodes_ready_endpoints_once() {
        // ghost on centos7-1: 10.244.1.5 is a pod here, 10.244.0.74 is not; a second port
        // with the same local pod counts it once; terminating ones do not count.
        let mut g = article::ghost();
        g.terminating = vec!["10.244.1.7:2368".parse().unwrap()];
        let mut second = article::ghost();
        second.name = "default/ghost:b".into();
        second.port = 2369;
        second.node_port = None;
        let mut t = article::tables1(vec![]);
        t.services = ServiceTable::build([g.clone(), second.clone()], |_, _| Arc::default());
        let ports = BTreeSet::from([key(&g), key(&second)]);
        assert_eq!(local_ready_endpoints(&t, &ports), 1);
        t.services
            .insert(Service::carrying(ServiceSpec { endpoints: vec!["10.244.0.74:2368".parse().unwrap()], ..g }, None));
        t.services.remove(&second);
        assert_eq!(local_ready_endpoints(&t, &ports), 0);
        assert_eq!(service_of("ns1/svc1:http"), ("ns1", "svc1"));
    }
}
