//! The API server: the Unix socket (root only), one task per client, requests
//! dispatched to the daemon under its lock; streams (live trace, capture) are served
//! on the client's own connection without holding it.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

use super::Daemon;
use crate::control::api::{self, Request, Response};

/// Binds the API socket: mode 0600 in a 0700 directory. A live daemon on the path
/// is an error; a stale socket file is replaced.
pub(super) fn bind_socket(path: &std::path::Path) -> io::Result<UnixListener> {
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

pub(super) async fn serve_client(stream: UnixStream, d: Arc<Mutex<Daemon>>) {
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
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let _ = send(&mut w, &Response::error(format!("bad request: {e}"))).await;
                continue;
            }
        };
        match req {
            Request::TraceLive { filter, count, timeout_ms } => {
                let obs = d.lock().await.obs.clone();
                crate::control::stream::trace_live(&obs, &filter, count, timeout_ms, &mut w).await;
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
                crate::control::stream::capture(&obs, &port, &filter, count, timeout_ms, &mut w).await;
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
    let mut d = d.lock().await;
    let r = match req {
        Request::PodAdd { pod } => d.add_pod(pod).await,
        Request::PodDel { name } => d.del_pod(&name).await,
        Request::ServiceSet { service } => d.set_service(service).await,
        Request::ServiceDel { name } => d.del_service(&name).await,
        Request::EndpointAdd { service, endpoint } => d.endpoint(&service, endpoint, true).await,
        Request::EndpointDel { service, endpoint } => d.endpoint(&service, endpoint, false).await,
        Request::Show { what } => return Response::data(d.show(what)),
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
        Request::TraceLive { .. } | Request::Capture { .. } => {
            return Response::error("streams are served per connection");
        }
    };
    match r {
        Ok(m) => Response::ok(m),
        Err(e) => Response::error(e),
    }
}

/// Binds `@ucanal`, the abstract socket of this network namespace. Abstract sockets
/// have no file mode: `serve_client` refuses peers that are not root by their
/// credentials, as it does on the socket file.
pub(super) fn bind_abstract() -> io::Result<UnixListener> {
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
pub(super) async fn serve(listeners: Vec<UnixListener>, d: Arc<Mutex<Daemon>>) {
    // A JoinSet aborts its tasks when dropped, so aborting `serve` closes every listener.
    let mut loops = tokio::task::JoinSet::new();
    for l in listeners {
        loops.spawn(accept_loop(l, d.clone()));
    }
    while loops.join_next().await.is_some() {}
}

async fn accept_loop(listener: UnixListener, d: Arc<Mutex<Daemon>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let d = d.clone();
                tokio::spawn(async move { serve_client(stream, d).await });
            }
            Err(e) => tracing::warn!("accept: {e}"),
        }
    }
}
