//! The API server: the Unix socket (root only), one task per client, requests
//! dispatched to the daemon under its lock; streams (live trace, capture) are served
//! on the client's own connection without holding it.
//!
//! Whoever holds the socket cannot turn it against the daemon: a request line is at
//! most [`MAX_REQUEST`] bytes (a longer one is answered with an error and the
//! connection closed, never buffered), at most [`MAX_CLIENTS`] connections are served
//! at once (one more is told so and closed), accept errors (the open-file limit) back
//! off up to a second and are logged at most once a second, and a panic in a client's
//! task is logged and ends that connection only: the dataplane threads never see it.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, Semaphore};

use super::Daemon;
use crate::api::{self, Request, Response};

/// Binds the API socket: mode 0600 in a 0700 directory. A live daemon on the path
/// is an error; a stale socket file is replaced.
pub(crate) fn bind_socket(path: &std::path::Path) -> io::Result<UnixListener> {
    bind_socket_in(path).map_err(|e| {
        if e.to_string().starts_with("api.socket") {
            e
        } else {
            io::Error::new(e.kind(), format!("api.socket {}: {e}", path.display()))
        }
    })
}

fn bind_socket_in(path: &std::path::Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("api.socket: another ucanal is listening on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // Create it unreadable for others from the first instant.
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let l = l.map_err(|e| io::Error::new(e.kind(), format!("api.socket {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Longest request line, in bytes (a service with thousands of endpoints fits).
pub const MAX_REQUEST: usize = 1 << 20;
/// API connections served at once.
pub const MAX_CLIENTS: usize = 64;

/// Reads one request line of at most [`MAX_REQUEST`] bytes. `Ok(None)` at the end of
/// the stream; an error names an oversized line.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<Option<()>> {
    buf.clear();
    let n = (&mut *r).take(MAX_REQUEST as u64 + 1).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if n > MAX_REQUEST {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("request longer than {MAX_REQUEST} bytes; connection closed"),
        ));
    }
    Ok(Some(()))
}

pub(crate) async fn serve_client(stream: UnixStream, d: Arc<Mutex<Daemon>>) {
    // Root only, twice over: the socket is 0600 and the peer must be uid 0 (or us).
    let allowed = stream.peer_cred().map(|c| c.uid() == 0 || c.uid() == unsafe_geteuid()).unwrap_or(false);
    let (r, mut w) = stream.into_split();
    if !allowed {
        let _ = w
            .write_all(
                format!(
                    "{}\n",
                    serde_json::to_string(&Response::error("permission denied: the ucanal API is root-only"))
                        .unwrap_or_default()
                )
                .as_bytes(),
            )
            .await;
        return;
    }
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    let mut parts = crate::control::kube::apply::Parts::default();
    loop {
        match read_request(&mut r, &mut buf).await {
            Ok(Some(())) => {}
            Ok(None) => return,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::warn!("api: {e}");
                let _ = send(&mut w, &Response::error(e.to_string())).await;
                return;
            }
            Err(_) => return,
        }
        let line = String::from_utf8_lossy(&buf);
        let req: Request = match api::decode_request(&line) {
            Ok(r) => r,
            Err(e) => {
                let _ = send(&mut w, &Response::error(format!("bad request: {e}"))).await;
                continue;
            }
        };
        match req {
            Request::TraceLive { filter, count, timeout_ms } => {
                let obs = d.lock().await.obs.clone();
                crate::control::daemon::streams::trace_live(&obs, &filter, count, timeout_ms, &mut w).await;
            }
            Request::Capture { port, filter, count, timeout_ms } => {
                let (obs, t) = {
                    let g = d.lock().await;
                    (g.obs.clone(), g.dp.tables())
                };
                let known = matches!(port.as_str(), "host" | "vxlan" | "flannel.1")
                    || t.pods().any(|p| p.name == port || p.ifname == port);
                if !known {
                    let names: Vec<&str> = t.pods().map(|p| p.name.as_str()).collect();
                    let _ = send(
                        &mut w,
                        &Response::error(format!("no port '{port}' (want host, vxlan or a pod: {names:?})")),
                    )
                    .await;
                    continue;
                }
                crate::control::daemon::streams::capture(&obs, &port, &filter, count, timeout_ms, &mut w).await;
            }
            req @ (Request::ServiceSet { .. }
            | Request::ServiceDel { .. }
            | Request::EndpointAdd { .. }
            | Request::EndpointDel { .. }) => {
                let resp = service_request(&d, req).await;
                if send(&mut w, &resp).await.is_err() {
                    return;
                }
            }
            Request::Handover { ask } => {
                pass_successor(r, w, ask, &d).await;
                return;
            }
            Request::Apply { objects, delete, more } => {
                let resp = match parts.add(objects, delete, more) {
                    Ok(None) => Response::ok(format!("part {} held", parts.held())),
                    Ok(Some(objects)) => apply(&d, objects, delete).await,
                    Err(e) => Response::error(e),
                };
                if send(&mut w, &resp).await.is_err() {
                    return;
                }
            }
            req => {
                let resp = handle(&d, req).await;
                if send(&mut w, &resp).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A successor's hand-over ask: the connection goes to `run`, which answers it.
async fn pass_successor(
    r: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut w: tokio::net::unix::OwnedWriteHalf,
    ask: crate::control::handover::Ask,
    d: &Arc<Mutex<Daemon>>,
) {
    let to = d.lock().await.successors.clone();
    let Some(to) = to else {
        let _ = send(&mut w, &Response::error("hand-over: this ucanal takes no successor")).await;
        return;
    };
    let stream = r.into_inner().reunite(w).map_err(io::Error::other).and_then(|s| s.into_std());
    let stream = match stream.and_then(|s| s.set_nonblocking(false).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("hand-over: {e}");
            return;
        }
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let _ = to.send(crate::control::handover::Successor { stream, ask }).await;
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

pub(crate) async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> io::Result<()> {
    let mut s = serde_json::to_string(r).unwrap_or_else(|_| r#"{"ok":false,"error":"unserialisable"}"#.into());
    s.push('\n');
    w.write_all(s.as_bytes()).await
}

async fn handle(d: &Arc<Mutex<Daemon>>, req: Request) -> Response {
    // The big listings read a snapshot taken under the lock and are built without it,
    // so 100 000 services or a full conntrack table never hold up an update.
    match &req {
        Request::Show { what: crate::api::Show::Services } => {
            let t = d.lock().await.dp.tables();
            return Response::data(
                serde_json::to_value(crate::control::inspect::listings::services(&t)).unwrap_or_default(),
            );
        }
        Request::Show { what: crate::api::Show::Conntrack } => {
            let dp = d.lock().await.dp.clone();
            let now = crate::io::clock::now();
            let rows = crate::control::inspect::listings::conntrack(&dp.conntrack.entries(now), now);
            return Response::data(serde_json::to_value(rows).unwrap_or_default());
        }
        Request::Get { what } => {
            let objs = d.lock().await.kube.snapshot();
            return Response::data(crate::control::kube::apply::listing(&objs, what));
        }
        _ => {}
    }
    let mut d = d.lock().await;
    let r = match req {
        Request::PodAdd { pod } => d.add_pod(pod).await,
        Request::PodDel { name } => d.del_pod(&name).await,
        Request::ServiceSet { service } => d.set_service(service).await,
        Request::ServiceDel { name } => d.del_service(&name).await,
        Request::EndpointAdd { service, endpoint } => d.endpoint(&service, endpoint, true).await,
        Request::EndpointDel { service, endpoint } => d.endpoint(&service, endpoint, false).await,
        Request::Show { what } => return Response::data(d.show(what)),
        Request::Get { what } => {
            return Response::data(crate::control::kube::apply::listing(&d.kube.snapshot(), &what));
        }
        Request::Apply { objects, delete, .. } => d.apply_objects(objects, delete).await,
        Request::Trace { probe } => return d.trace(&probe).map(Response::data).unwrap_or_else(Response::error),
        Request::CniAdd { attach } => {
            return d.cni_add(attach).await.map(Response::data).unwrap_or_else(Response::error);
        }
        Request::CniDel { container_id, ifname } => d.cni_del(&container_id, &ifname).await,
        Request::CniCheck { container_id, ifname } => {
            return d.cni_check(&container_id, &ifname).map(Response::data).unwrap_or_else(Response::error);
        }
        Request::CniGc { network, valid } => d.cni_gc(&network, &valid).await,
        Request::CniStatus => return Response::data(d.cni_status()),
        Request::TraceLive { .. } | Request::Capture { .. } | Request::Handover { .. } => {
            return Response::error("streams are served per connection");
        }
    };
    match r {
        Ok(m) => {
            d.save_state();
            Response::ok(m)
        }
        Err(e) => Response::error(e),
    }
}

/// `apply`: in a cluster the objects are checked here, then written to etcd without
/// holding the daemon lock (every node, this one included, applies them from its watch);
/// with etcd unreachable the request fails naming etcd and nothing changes.
async fn apply(d: &Arc<Mutex<Daemon>>, objects: Vec<crate::api::kube::Object>, delete: bool) -> Response {
    let store = d.lock().await.objects.clone();
    let Some(store) = store else { return handle(d, Request::Apply { objects, delete, more: false }).await };
    let t = std::time::Instant::now();
    if let Err(e) = d.lock().await.check_objects(&objects, delete) {
        return Response::error(e);
    }
    let checked = t.elapsed();
    let r = store.write(&objects, delete).await;
    tracing::info!(
        objects = objects.len(),
        check_ms = checked.as_millis() as u64,
        write_ms = (t.elapsed() - checked).as_millis() as u64,
        "apply through etcd"
    );
    match r {
        Ok(n) => Response::ok(format!("{n} object(s) {} in etcd", if delete { "deleted" } else { "written" })),
        Err(e @ crate::control::etcd::EtcdError::Partial { .. }) => Response::error(e),
        Err(e) => Response::error(format!("{e}; nothing applied")),
    }
}

/// `service set|del`, `endpoint add|del`: in a cluster, a service that came from etcd
/// (or a new one) changes through etcd as its Service and Endpoints objects, as `apply`
/// would write them; services of the node's config, and every service without a
/// cluster, change on the node alone.
async fn service_request(d: &Arc<Mutex<Daemon>>, req: Request) -> Response {
    let plan = {
        let g = d.lock().await;
        g.objects.is_some().then(|| g.service_objects(&req)).transpose()
    };
    match plan {
        Ok(Some(Some((objects, delete)))) => apply(d, objects, delete).await,
        Ok(_) => handle(d, req).await,
        Err(e) => Response::error(e),
    }
}

/// Binds `@ucanal`, the abstract socket of this network namespace. Abstract sockets
/// have no file mode: `serve_client` refuses peers that are not root by their
/// credentials, as it does on the socket file.
pub(crate) fn bind_abstract() -> io::Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(api::ABSTRACT_SOCKET)?;
    let l = std::os::unix::net::UnixListener::bind_addr(&addr).map_err(|e| {
        let why = if e.kind() == io::ErrorKind::AddrInUse {
            "another ucanal is running in this network namespace".to_string()
        } else {
            e.to_string()
        };
        io::Error::new(e.kind(), format!("api: abstract socket @{}: {why}", api::ABSTRACT_SOCKET))
    })?;
    l.set_nonblocking(true)?;
    UnixListener::from_std(l)
}

/// Accepts API clients on every listener until aborted, one task each.
pub(crate) async fn serve(listeners: Vec<UnixListener>, d: Arc<Mutex<Daemon>>) {
    // A JoinSet aborts its tasks when dropped, so aborting `serve` closes every listener.
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut loops = tokio::task::JoinSet::new();
    for l in listeners {
        loops.spawn(accept_loop(l, d.clone(), slots.clone()));
    }
    while loops.join_next().await.is_some() {}
}

/// Accepts API clients on one listener until aborted, one task each; `slots` bounds
/// the connections of every listener together to [`MAX_CLIENTS`].
async fn accept_loop(listener: UnixListener, d: Arc<Mutex<Daemon>>, slots: Arc<Semaphore>) {
    let mut backoff = Backoff::default();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                backoff.reset();
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tokio::spawn(refuse(stream));
                    continue;
                };
                let d = d.clone();
                tokio::spawn(async move {
                    let r = std::panic::AssertUnwindSafe(serve_client(stream, d)).catch_unwind().await;
                    if let Err(p) = r {
                        let what = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned());
                        tracing::error!(
                            "api: a client task panicked ({}); that connection is closed, the dataplane runs on",
                            what.unwrap_or_default()
                        );
                    }
                    drop(slot);
                });
            }
            Err(e) => backoff.wait(&e).await,
        }
    }
}

/// One connection too many: told so, without waiting for it to speak.
async fn refuse(stream: UnixStream) {
    let (_, mut w) = stream.into_split();
    let msg = format!("too many API connections (at most {MAX_CLIENTS}); try again");
    let _ = tokio::time::timeout(Duration::from_secs(1), send(&mut w, &Response::error(msg))).await;
}

/// Accept errors (EMFILE past the open-file limit, ENFILE, ENOMEM) do not go away by
/// retrying at once: wait 10 ms doubling to 1 s, and log at most once a second.
#[derive(Default)]
struct Backoff {
    delay: Duration,
    logged: Option<Instant>,
    suppressed: u64,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }

    async fn wait(&mut self, e: &io::Error) {
        self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MAX);
        if self.logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(
                "api accept: {e} ({} more since the last report); retrying in {:?}",
                self.suppressed,
                self.delay
            );
            self.logged = Some(Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        tokio::time::sleep(self.delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_oversized_request_is_refused_without_buffering_it() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            let chunk = vec![b'x'; 1 << 16];
            for _ in 0..64 {
                if b.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let mut r = BufReader::new(a);
        let mut buf = Vec::new();
        let e = read_request(&mut r, &mut buf).await.unwrap_err();
        assert!(e.to_string().contains("longer than 1048576 bytes"), "{e}");
        assert!(buf.len() <= MAX_REQUEST + 1);
        drop(r);
        let _ = writer.await;
    }

    #[tokio::test]
    async fn requests_are_lines() {
        let mut r = BufReader::new(&b"{\"a\":1}\nlast"[..]);
        let mut buf = Vec::new();
        assert!(read_request(&mut r, &mut buf).await.unwrap().is_some());
        assert_eq!(buf, b"{\"a\":1}");
        assert!(read_request(&mut r, &mut buf).await.unwrap().is_some());
        assert_eq!(buf, b"last");
        assert!(read_request(&mut r, &mut buf).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_to_a_second() {
        let mut b = Backoff::default();
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        let t0 = tokio::time::Instant::now();
        for _ in 0..10 {
            b.wait(&e).await;
        }
        // 10+20+...+640 ms, then 1 s, 1 s, 1 s: never a spin.
        assert!(t0.elapsed() >= Duration::from_millis(1270 + 3000), "{:?}", t0.elapsed());
        assert_eq!(b.delay, Backoff::MAX);
        b.reset();
        b.wait(&e).await;
        assert_eq!(b.delay, Backoff::FIRST);
    }
}
