//! The API server: the Unix socket (root only), one task per client, requests
//! dispatched by kind — commands and queries to the daemon under its lock, streams
//! (live trace, capture) on the client's own connection without holding it, a
//! successor's hand-over ask to `run`. Lines are read and written through
//! [`crate::api::codec`].
//!
//! Whoever holds the socket cannot turn it against the daemon: a request line is at
//! most [`MAX_REQUEST`] bytes (a longer one is answered with an error and the
//! connection closed, never buffered); a connection gets `[api] idle_timeout_ms` for
//! each request and each answer, idle connections yield their slots to newcomers and
//! streams have a limit of their own (see [`super::slots`]); the big listings are
//! streamed, never built whole (see [`super::listing`]); accept errors (the open-file
//! limit) back off up to a second and are logged at most once a second, and a panic in
//! a client's task is logged and ends that connection only: the dataplane threads
//! never see it.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, mpsc};

use crate::api::codec::{self, MAX_REQUEST};
use crate::api::{ABSTRACT_SOCKET, ApiError, Ask, Command, ErrorCode, Query, Request, Show};
use crate::control::error::{BindError, ControlError};
use crate::control::handover::Successor;
use crate::control::inspect::{self, listings};
use crate::control::kube::sync::Written;
use crate::control::kube::{Parts, listing};
use crate::control::state::Daemon;

use super::listing::{self, Sent};
use super::slots::{Refusal, Slot, Slots};

/// How long a connection that is closed gets to read why.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);
/// Read and write timeouts of a successor's connection, once `run` serves it.
const HANDOVER_IO_WAIT: Duration = Duration::from_secs(10);

/// What every client task reaches: the daemon, and where a successor's ask goes.
#[derive(Clone)]
pub struct Shared {
    pub daemon: Arc<Mutex<Daemon>>,
    pub successors: mpsc::Sender<Successor>,
    /// The connection slots (every listener's, together).
    pub slots: Arc<Slots>,
}

/// Binds the API socket: mode 0600 in a 0700 directory. A live daemon on the path
/// is an error; a stale socket file is replaced.
pub fn bind_socket(path: &Path) -> Result<UnixListener, BindError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source: io::Error| BindError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::Busy(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    // Create it unreadable for others from the first instant.
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let l = l.map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(l)
}

/// Binds `@ucanal`, the abstract socket of this network namespace. Abstract sockets
/// have no file mode: `serve_client` refuses peers that are not root by their
/// credentials, as it does on the socket file.
pub fn bind_abstract() -> Result<UnixListener, BindError> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(ABSTRACT_SOCKET).map_err(BindError::Abstract)?;
    let l = std::os::unix::net::UnixListener::bind_addr(&addr).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse { BindError::AbstractBusy } else { BindError::Abstract(e) }
    })?;
    l.set_nonblocking(true).map_err(BindError::Abstract)?;
    UnixListener::from_std(l).map_err(BindError::Abstract)
}

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

/// The peer's uid is root (or ours).
fn peer_allowed(stream: &UnixStream) -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    stream.peer_cred().map(|c| c.uid() == 0 || c.uid() == euid).unwrap_or(false)
}

async fn serve_client(stream: UnixStream, s: Shared, slot: Slot) {
    // Root only, twice over: the socket is 0600 and the peer must be uid 0 (or us).
    let allowed = peer_allowed(&stream);
    let (r, mut w) = stream.into_split();
    if !allowed {
        let _ = w.write_all(&codec::error_line(ControlError::PermissionDenied.into())).await;
        return;
    }
    let d = &s.daemon;
    let deadline = slot.idle_limit();
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    let mut parts = Parts::default();
    loop {
        slot.idle();
        let read = tokio::select! {
            read = tokio::time::timeout(deadline, read_request(&mut r, &mut buf)) => read,
            () = slot.yielded() => return close(&mut w, ControlError::Yielded).await,
        };
        match read {
            Ok(Ok(Some(()))) => {}
            Ok(Ok(None)) => return,
            Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::warn!("api: {e}");
                let _ = w.write_all(&codec::error_line(ApiError::new(ErrorCode::BadRequest, e))).await;
                return;
            }
            Ok(Err(_)) => return,
            Err(_) => {
                slot.timed_out();
                return close(&mut w, ControlError::Idle(deadline)).await;
            }
        }
        slot.busy();
        let answer = match codec::decode_request(&buf) {
            Err(e) => codec::error_line(e),
            Ok(Request::Handover(ask)) => return pass_successor(r, w, ask, &s).await,
            Ok(Request::Stream(st)) => {
                let Ok(_stream) = slot.stream() else {
                    let e = ControlError::TooManyStreams(slot_streams(&s));
                    if send(&mut w, &codec::error_line(e.into()), deadline).await {
                        continue;
                    }
                    return;
                };
                let (obs, t) = {
                    let g = d.lock().await;
                    (g.plane().observers().clone(), g.plane().dp().tables())
                };
                let known = |port: &str| {
                    let known = matches!(port, "host" | "vxlan" | "flannel.1")
                        || t.pods().any(|p| p.name == port || p.ifname == port);
                    if known { Ok(()) } else { Err(t.pods().map(|p| p.name.clone()).collect()) }
                };
                crate::control::daemon::streams::serve(st, &obs, known, &mut w).await;
                continue;
            }
            Ok(Request::Query(Query::Show { what })) if listing::streamed(what) => {
                match listing::serve(d, what, &mut w, deadline).await {
                    Sent::Done => continue,
                    Sent::Stalled => return,
                }
            }
            Ok(Request::Command(Command::Apply { objects, delete, more })) => match parts.add(objects, delete, more) {
                Ok(None) => codec::message_line(Ok(format!("part {} held", parts.held()))),
                Ok(Some(objects)) => apply(d, objects, delete).await,
                Err(e) => codec::error_line(e.into()),
            },
            Ok(Request::Command(
                c @ (Command::ServiceSet { .. }
                | Command::ServiceDel { .. }
                | Command::EndpointAdd { .. }
                | Command::EndpointDel { .. }),
            )) => service_command(d, c).await,
            Ok(Request::Command(c)) => command(d, c).await,
            Ok(Request::Query(Query::Show { what: Show::Node })) => {
                let mut report = d.lock().await.node_report();
                report.api = Some(s.slots.stats());
                codec::reply_line(Ok(report))
            }
            Ok(Request::Query(q)) => query(d, q).await,
        };
        if !send(&mut w, &answer, deadline).await {
            slot.timed_out();
            return;
        }
    }
}

fn slot_streams(s: &Shared) -> usize {
    s.slots.limits().streams
}

/// Writes an answer; false when the client did not take it within `deadline`.
async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, answer: &[u8], deadline: Duration) -> bool {
    matches!(tokio::time::timeout(deadline, w.write_all(answer)).await, Ok(Ok(())))
}

/// Tells a connection why it is closed (if it reads within a second).
async fn close(w: &mut tokio::net::unix::OwnedWriteHalf, why: ControlError) {
    let _ = tokio::time::timeout(REFUSAL_WAIT, w.write_all(&codec::error_line(why.into()))).await;
}

/// A successor's hand-over ask: the connection goes to `run`, which answers it.
async fn pass_successor(
    r: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut w: tokio::net::unix::OwnedWriteHalf,
    ask: Ask,
    s: &Shared,
) {
    if s.successors.is_closed() {
        let _ = w.write_all(&codec::error_line(ControlError::NoSuccessor.into())).await;
        return;
    }
    let stream = r.into_inner().reunite(w).map_err(io::Error::other).and_then(|s| s.into_std());
    let stream = match stream.and_then(|s| s.set_nonblocking(false).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("hand-over: {e}");
            return;
        }
    };
    let _ = stream.set_read_timeout(Some(HANDOVER_IO_WAIT));
    let _ = stream.set_write_timeout(Some(HANDOVER_IO_WAIT));
    let _ = s.successors.send(Successor { stream, ask }).await;
}

/// A command under the daemon's lock; what it changed goes to the state journal.
async fn command(d: &Arc<Mutex<Daemon>>, c: Command) -> Vec<u8> {
    let mut d = d.lock().await;
    let answer = match c {
        Command::PodAdd { pod } => codec::message_line(d.add_pod(pod, None).await.map_err(Into::into)),
        Command::PodDel { name } => codec::message_line(d.del_pod(&name).await.map_err(Into::into)),
        Command::ServiceSet { service } => codec::message_line(d.set_service(service).await.map_err(Into::into)),
        Command::ServiceDel { name } => codec::message_line(d.del_service(&name).await.map_err(Into::into)),
        Command::EndpointAdd { service, endpoint } => {
            codec::message_line(d.endpoint(&service, &endpoint, true).await.map_err(Into::into))
        }
        Command::EndpointDel { service, endpoint } => {
            codec::message_line(d.endpoint(&service, &endpoint, false).await.map_err(Into::into))
        }
        Command::Apply { objects, delete, .. } => {
            codec::message_line(d.apply_objects(objects, delete).await.map_err(Into::into))
        }
        Command::CniAdd { attach } => codec::reply_line(d.cni_add(attach).await.map_err(Into::into)),
        Command::CniDel { container_id, ifname } => {
            codec::message_line(d.cni_del(&container_id, &ifname).await.map_err(Into::into))
        }
        Command::CniGc { network, valid } => codec::message_line(d.cni_gc(&network, &valid).await.map_err(Into::into)),
    };
    d.save_state();
    answer
}

/// A query. The big listings read a snapshot taken under the lock and are built
/// without it, so 100 000 services or a full conntrack table never hold up an update.
async fn query(d: &Arc<Mutex<Daemon>>, q: Query) -> Vec<u8> {
    match q {
        Query::Show { what } => match what {
            // Streamed by `serve_client` (see `listing`); answered whole only if asked here.
            Show::Services => {
                let t = d.lock().await.plane().dp().tables();
                codec::reply_line(Ok(listings::services(&t)))
            }
            Show::Conntrack => {
                let dp = d.lock().await.plane().dp().clone();
                codec::reply_line(Ok(inspect::conntrack_rows(&dp)))
            }
            Show::Routes => codec::reply_line(Ok(d.lock().await.routes())),
            Show::Neigh => codec::reply_line(Ok(d.lock().await.neigh())),
            Show::Fdb => codec::reply_line(Ok(d.lock().await.fdb())),
            Show::Pods => codec::reply_line(Ok(d.lock().await.pods_report())),
            Show::Counters => codec::reply_line(Ok(d.lock().await.counters())),
            Show::Node => codec::reply_line(Ok(d.lock().await.node_report())),
            Show::Peers => codec::reply_line(Ok(d.lock().await.peers_report())),
            Show::Policy => codec::reply_line(Ok(d.lock().await.policy_chains())),
        },
        Query::Get { what } => {
            let objs = d.lock().await.kube.store.snapshot();
            codec::reply_line(Ok(listing(&objs, what)))
        }
        Query::Trace { probe } => codec::reply_line(d.lock().await.trace(&probe).map_err(Into::into)),
        Query::CniCheck { container_id, ifname } => {
            codec::reply_line(d.lock().await.cni_check(&container_id, &ifname).map_err(Into::into))
        }
        Query::CniStatus => codec::reply_line(Ok(d.lock().await.cni_status())),
    }
}

/// `apply`: in a cluster the objects are checked here, then written to etcd without
/// holding the daemon lock (every node, this one included, applies them from its watch);
/// with etcd unreachable the request fails naming etcd and nothing changes.
async fn apply(d: &Arc<Mutex<Daemon>>, objects: Vec<crate::api::kube::Object>, delete: bool) -> Vec<u8> {
    let store = d.lock().await.kube.shared.clone();
    let Some(store) = store else { return command(d, Command::Apply { objects, delete, more: false }).await };
    let t = std::time::Instant::now();
    if let Err(e) = d.lock().await.check_objects(&objects, delete) {
        return codec::error_line(e.into());
    }
    let checked = t.elapsed();
    let r = store.write(&objects, delete).await;
    tracing::info!(
        objects = objects.len(),
        check_ms = checked.as_millis() as u64,
        write_ms = (t.elapsed() - checked).as_millis() as u64,
        "apply through etcd"
    );
    let r = r.map_err(|e| ControlError::from(e).into());
    codec::message_line(r.map(|w| match (w, delete) {
        (Written::Changed(n), false) => format!("{n} object(s) written in etcd"),
        (Written::Changed(n), true) => format!("{n} object(s) deleted in etcd"),
        (Written::Unchanged(n), false) => format!("{n} object(s) unchanged in etcd (nothing written)"),
        (Written::Unchanged(n), true) => format!("{n} object(s) already absent from etcd (nothing deleted)"),
    }))
}

/// `service set|del`, `endpoint add|del`: in a cluster, a service that came from etcd
/// (or a new one) changes through etcd as its Service and Endpoints objects, as `apply`
/// would write them; services of the node's config, and every service without a
/// cluster, change on the node alone.
async fn service_command(d: &Arc<Mutex<Daemon>>, c: Command) -> Vec<u8> {
    let plan = {
        let g = d.lock().await;
        if g.kube.shared.is_some() { g.service_objects(&c) } else { Ok(None) }
    };
    match plan {
        Ok(Some((objects, delete))) => apply(d, objects, delete).await,
        Ok(None) => command(d, c).await,
        Err(e) => codec::error_line(e.into()),
    }
}

/// Accepts API clients on every listener until aborted, one task each.
pub async fn serve(listeners: Vec<UnixListener>, s: Shared) {
    // A JoinSet aborts its tasks when dropped, so aborting `serve` closes every listener.
    let mut loops = tokio::task::JoinSet::new();
    for l in listeners {
        loops.spawn(accept_loop(l, s.clone()));
    }
    while loops.join_next().await.is_some() {}
}

/// Accepts API clients on one listener until aborted, one task each, in the slots
/// every listener shares (see [`Slots`]).
async fn accept_loop(listener: UnixListener, s: Shared) {
    let mut backoff = Backoff::default();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                backoff.reset();
                let peer = stream.peer_cred().ok().and_then(|c| c.pid()).map_or(0, |p| p as u32);
                let slot = match s.slots.admit(peer) {
                    Ok(slot) => slot,
                    Err(why) => {
                        tokio::spawn(refuse(stream, why));
                        continue;
                    }
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let r = std::panic::AssertUnwindSafe(serve_client(stream, s, slot)).catch_unwind().await;
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
                });
            }
            Err(e) => backoff.wait(&e).await,
        }
    }
}

/// One connection too many (every slot busy): told so, without waiting for it to speak.
async fn refuse(stream: UnixStream, why: Refusal) {
    let (_, mut w) = stream.into_split();
    let e = match why {
        Refusal::Busy(n) => ControlError::Busy(n),
        Refusal::Streams(n) => ControlError::TooManyStreams(n),
    };
    let _ = tokio::time::timeout(REFUSAL_WAIT, w.write_all(&codec::error_line(e.into()))).await;
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
    const LOG_EVERY: Duration = Duration::from_secs(1);

    fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }

    async fn wait(&mut self, e: &io::Error) {
        self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MAX);
        if self.logged.is_none_or(|t| t.elapsed() >= Self::LOG_EVERY) {
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
