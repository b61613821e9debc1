//! `ucanal run`: one node's daemon, from start to stop.
//!
//! Startup ([`start`]) validates everything before it creates anything (config,
//! interfaces, namespaces, the socket), then creates the underlay sockets, the host
//! port with its routes and steering rules, and the pods; a failure at any step undoes
//! the steps before it. Then the API [`server`] and the conntrack sweep
//! ([`maintenance`]) run until SIGTERM/SIGINT, which remove everything ucanal created
//! and put back the sysctls it changed — unless `--keep-on-exit` asks SIGTERM to leave
//! the node steered for the next ucanal, or to hand it over to a successor that asks
//! (see `persist`, `handover`; SIGINT still removes everything).

mod follow;
pub mod maintenance;
pub mod server;
mod serving;
pub mod start;
pub mod streams;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};

use super::config::Config;
pub use super::error::{ControlError, RunError};
use super::handover::{self, Successor};
use super::state::Daemon;
pub use super::state::StartMode;
use serving::Serving;

/// How long a predecessor that just handed over may still hold the metrics port, and
/// how often binding it is tried meanwhile.
const METRICS_PORT_WAIT: Duration = Duration::from_secs(2);
const METRICS_PORT_POLL: Duration = Duration::from_millis(20);

/// Options of `ucanal run` that are not in the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub socket: Option<PathBuf>,
    pub metrics: Option<std::net::SocketAddr>,
    /// SIGTERM leaves the node steered and hands state to the next ucanal (see `persist`).
    pub keep_on_exit: bool,
    /// With `keep_on_exit`: how long SIGTERM keeps forwarding while waiting for a
    /// successor to take the fds over (see `handover`); zero exits at once.
    pub handover_wait: Duration,
}

/// Runs the daemon until SIGTERM/SIGINT. Blocks the calling thread.
pub fn run(config_path: &Path, opts: RunOptions) -> Result<(), RunError> {
    let cfg = Config::load(config_path).map_err(RunError::Config)?.listening_on(opts.socket.clone());
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(RunError::Kernel)?;
    rt.block_on(async move {
        let start::Started { daemon, joined, handed } = start::start(cfg, opts.keep_on_exit).await?;
        let cfg = daemon.config().clone();
        let socket = cfg.api.socket.clone();
        let (successors, mut asks) = mpsc::channel(4);
        let daemon = Arc::new(Mutex::new(daemon));
        if let (Some((member, rx)), Some(c)) = (joined, &cfg.cluster) {
            follow::objects(member.registry.client.clone(), &c.objects_prefix, daemon.clone());
            follow::peers(member, rx, daemon.clone(), c.prefix.clone());
        }
        let stop = |e: RunError| {
            let d = daemon.clone();
            let socket = socket.clone();
            async move {
                d.lock().await.teardown().await;
                let _ = std::fs::remove_file(&socket);
                e
            }
        };
        let listeners = match handed {
            Some(h) => {
                let ls = h
                    .listeners
                    .into_iter()
                    .map(|fd| tokio::net::UnixListener::from_std(std::os::unix::net::UnixListener::from(fd)));
                let ls = ls.collect::<std::io::Result<Vec<_>>>().map_err(RunError::Kernel);
                // Whatever happens next is ours to clean up: the old ucanal exits now.
                tokio::task::block_in_place(|| h.taken.running());
                daemon.lock().await.took_over();
                tracing::info!("hand-over done: the old ucanal's fds are ours");
                ls
            }
            None => {
                server::bind_socket(&socket).and_then(|f| Ok(vec![f, server::bind_abstract()?])).map_err(RunError::Bind)
            }
        };
        let listeners = match listeners {
            Ok(l) => l,
            Err(e) => return Err(stop(e).await),
        };
        if let Some(addr) = opts.metrics {
            let src = {
                let g = daemon.lock().await;
                let p = g.plane();
                super::metrics::Source { node: cfg.node.name.clone(), dp: p.dp().clone(), stats: p.stats().clone() }
            };
            if let Err(source) = serve_metrics(addr, src).await {
                return Err(stop(RunError::Metrics { addr, source }).await);
            }
        }
        let svc = Serving::start(listeners, daemon.clone(), successors).map_err(RunError::Kernel)?;
        tracing::info!(socket = %socket.display(), "ready");
        let mut signals = Signals::new();
        let mut not_stopping = handover::NotStopping::default();
        let sig = loop {
            tokio::select! {
                sig = signals.next() => break sig,
                Some(s) = asks.recv() => not_stopping.refuse(s, std::time::Instant::now()),
            }
        };
        tracing::info!("stopping ({})", sig.name());
        stop_after(sig, signals, asks, &daemon, svc, &socket, opts.handover_wait).await
    })
}

/// After the first signal: SIGTERM with `--keep-on-exit` forwards on for `wait`,
/// handing over to a successor that asks; then the node is left steered (SIGTERM
/// with `--keep-on-exit`) or cleaned up.
async fn stop_after(
    sig: Signal,
    mut signals: Signals,
    mut asks: mpsc::Receiver<Successor>,
    daemon: &Arc<Mutex<Daemon>>,
    mut svc: Serving,
    socket: &Path,
    wait: Duration,
) -> Result<(), RunError> {
    let mut keep_on = sig == Signal::Term && daemon.lock().await.persist.is_some();
    if keep_on && !wait.is_zero() {
        tracing::info!("forwarding on for {:?}, waiting for a successor (ucanal run --keep-on-exit)", wait);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                s = signals.next() => {
                    keep_on = s == Signal::Term;
                    break;
                }
                Some(s) = asks.recv() => {
                    if hand_over(s, daemon, &mut svc).await {
                        return Ok(());
                    }
                }
            }
        }
        tracing::info!("no successor took over; exiting");
    }
    svc.pause();
    let mut d = daemon.lock().await;
    if keep_on {
        d.leave_steered();
        let _ = std::fs::remove_file(socket);
        drop(svc);
        tracing::info!("stopped; the node stays steered to ucanal, state handed over for the next one");
        return Ok(());
    }
    d.teardown().await;
    let _ = std::fs::remove_file(socket);
    tracing::info!("stopped; everything ucanal created is removed");
    Ok(())
}

/// Serves a successor's ask (see `handover`): the API server and the sweeper are paused
/// for the switch and start again if it fails. True: the successor runs on our fds,
/// exit without a teardown.
async fn hand_over(s: Successor, daemon: &Arc<Mutex<Daemon>>, svc: &mut Serving) -> bool {
    let own = handover::ask_for(daemon.lock().await.config());
    let Some(stream) = handover::accept(s, &own).await else { return false };
    let t0 = std::time::Instant::now();
    svc.pause();
    let mut g = daemon.lock().await;
    match handover::give(&mut g, &stream, svc.listeners(), own.workers) {
        Ok(flows) => {
            tracing::info!("hand-over: {flows} flows and every fd handed over in {:?}; exiting", t0.elapsed());
            true
        }
        Err(e) => {
            tracing::error!("hand-over failed after go ({e}); this ucanal forwards on");
            drop(g);
            if let Err(e) = svc.spawn() {
                tracing::error!("hand-over: restarting the API server: {e}");
            }
            false
        }
    }
}

/// Serves metrics on `addr`; a predecessor that just handed over may hold the port
/// for a moment longer, while it exits: retried for up to [`METRICS_PORT_WAIT`].
async fn serve_metrics(addr: std::net::SocketAddr, src: super::metrics::Source) -> std::io::Result<()> {
    let deadline = tokio::time::Instant::now() + METRICS_PORT_WAIT;
    loop {
        match super::metrics::serve(addr, src.clone()).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(METRICS_PORT_POLL).await;
            }
            r => return r,
        }
    }
}

/// The signals that stop the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Term,
    Int,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
        }
    }
}

/// SIGTERM and SIGINT, registered once, so none is missed between two waits.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        }
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Term,
            _ = self.int.recv() => Signal::Int,
        }
    }
}
