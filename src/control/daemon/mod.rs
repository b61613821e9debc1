//! `ucanal run`: one node's daemon, the control plane of one node.
//!
//! Startup validates everything before it creates anything (config, interfaces,
//! namespaces, the socket), then creates the underlay sockets, the host port with its
//! routes and steering rules, and the pods; a failure at any step undoes the steps
//! before it. Runtime changes (pods, services, endpoints) rebuild the table snapshot
//! and publish it. SIGTERM/SIGINT remove everything ucanal created and put back the
//! sysctls it changed — unless `--keep-on-exit` asks SIGTERM to leave the node steered
//! for the next ucanal (see `restart`; SIGINT still removes everything).
//!
//! The rooms: `node` (kernel side: checks, sysctls, host port, steering rules,
//! teardown), `pods`, `services`, `inspect` (listings and the synthetic trace),
//! `server` (the API socket), `maintenance` (the conntrack sweep, on its own thread) and
//! `cni` (attachments made by the CNI plugin, with their address leases), `cluster`
//! (membership of a flannel cluster on etcd: subnet lease, peers) and `objects`
//! (Kubernetes objects from `apply` or the etcd watch).

pub(crate) mod maintenance;
pub(crate) mod server;
pub(crate) mod start;
pub mod streams;

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Mutex;

use super::cluster::membership as cluster;
use super::config::{Config, ConfigError};
use super::handover;
use super::persist::{self as restart, statefile};
use super::{node, pods, services};
use crate::core::nat::service::ServiceTable;
use crate::core::tables::NodeInfo;
use crate::core::{Dataplane, PortId};
use crate::io::clock;
use crate::io::netlink::Steer;
use crate::io::observe::Observers;
use crate::io::stats::PortStats;
use crate::io::worker::{self, WorkerConfig, WorkerHandle};

pub(crate) use server::send;

/// Counter blocks beyond the workers' own: one for the API task (dry-run traces,
/// endpoint flushes) and one for the maintenance thread, so that every block keeps
/// its single writer (see `core::counters`).
pub(crate) const CONTROL_BLOCKS: usize = 2;

/// Options of `ucanal run` that are not in the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub socket: Option<PathBuf>,
    pub metrics: Option<std::net::SocketAddr>,
    /// SIGTERM leaves the node steered and hands state to the next ucanal (see `restart`).
    pub keep_on_exit: bool,
    /// With `keep_on_exit`: how long SIGTERM keeps forwarding while waiting for a
    /// successor to take the fds over (see `handover`); zero exits at once.
    pub handover_wait: std::time::Duration,
}

/// An error of startup, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config is wrong (exit 2).
    #[error("config error: {0}")]
    Config(ConfigError),
    /// The machine is not as the config says, or a kernel call failed (exit 1).
    #[error("{0}")]
    Setup(String),
}

pub(crate) fn setup(e: impl std::fmt::Display) -> RunError {
    RunError::Setup(e.to_string())
}

/// Why an API request was refused or failed; the daemon's state is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A field of the request is wrong (`what` is `pod` or `service`).
    #[error("{what}.{error}")]
    Invalid { what: &'static str, error: ConfigError },
    #[error("pod {0} exists already")]
    PodExists(String),
    #[error("{ip} is already pod {pod}'s address")]
    AddressInUse { ip: Ipv4Addr, pod: String },
    #[error("pod.netns: {0} does not exist")]
    NoNetns(PathBuf),
    #[error("this node has {0} pods, the most one ucanal serves")]
    TooManyPods(usize),
    #[error("no pod {0}")]
    NoPod(String),
    #[error("no service {0}")]
    NoService(String),
    #[error("service {0} already uses that cluster IP:port or NodePort")]
    ServiceClash(String),
    #[error("{endpoint} is already an endpoint of {service}")]
    EndpointExists { service: String, endpoint: SocketAddrV4 },
    #[error("{endpoint} is not an endpoint of {service}")]
    NotAnEndpoint { service: String, endpoint: SocketAddrV4 },
    /// The probe of a synthetic trace does not fit the tables.
    #[error("{0}")]
    Probe(String),
    /// A kernel call (netlink, TAP, namespace) failed.
    #[error("{0}")]
    Kernel(#[from] std::io::Error),
    #[error("container {container_id} already has {ifname} attached")]
    AlreadyAttached { container_id: String, ifname: String },
    #[error("container {container_id} has no {ifname} attached on this node")]
    NotAttached { container_id: String, ifname: String },
    /// A service that cannot be written as Kubernetes objects (`service set` in a cluster).
    #[error("{0}")]
    Kube(#[from] crate::api::kube::KubeError),
    /// ucanal's IPAM: no free address, an address taken, the lease file unwritable.
    #[error("{0}")]
    Lease(#[from] super::ipam::LeaseError),
}

pub struct Daemon {
    pub(crate) cfg: Config,
    pub(crate) node: NodeInfo,
    pub dp: Arc<Dataplane>,
    pub obs: Arc<Observers>,
    pub stats: Arc<PortStats>,
    pub(crate) workers: Vec<WorkerHandle>,
    pub(crate) pods: Vec<pods::PodState>,
    pub(crate) free_ports: Vec<u32>,
    pub(crate) next_port: u32,
    /// The service table the daemon changes and publishes clones of (copy-on-write
    /// shards), and where each service sits in it, by name.
    pub(crate) services: ServiceTable,
    pub(crate) service_names: std::collections::BTreeMap<String, services::Portal>,
    pub(crate) generation: u64,
    pub(crate) seed: u64,
    pub(crate) tx_ports: Vec<u16>,
    pub(crate) steers: BTreeSet<Steer>,
    /// Node-wide sysctls changed at start, with the value to put back on exit.
    pub(crate) restore_sysctls: Vec<(node::SysctlKey, String)>,
    /// With `--keep-on-exit`: where state and conntrack are handed over.
    pub(crate) keep: Option<restart::Paths>,
    /// Started from a previous ucanal's state: its kernel objects are adopted.
    pub(crate) adopted: bool,
    /// Pods of the previous ucanal's state are being attached: their TAPs exist, adopt them.
    pub(crate) restoring: bool,
    /// Membership of a cluster on etcd (`[cluster]`), once joined.
    pub(crate) membership: Option<cluster::Membership>,
    /// Kubernetes objects applied to this node (from `apply` or the etcd watch).
    pub(crate) kube: crate::api::kube::Store,
    /// Where `apply` writes when the node is in a cluster.
    pub(crate) objects: Option<crate::control::kube::sync::ObjectStore>,
    /// CNI attachments' addresses (ucanal's default IPAM), kept in a state file.
    pub(crate) leases: super::ipam::LeaseFile,
    /// The workers' configuration and VXLAN source sockets, once started.
    pub(crate) wio: Option<(WorkerConfig, worker::TxPool)>,
    /// Taking over from a predecessor that still owns the node: a failed start must
    /// not remove its rules, TAPs or files.
    pub(crate) handing: bool,
    /// Pods' TAP queues handed over by the predecessor, by pod name.
    pub(crate) handed_pods: HashMap<String, Vec<std::os::fd::OwnedFd>>,
    /// Pods attached before the workers start, with one queue per worker.
    pub(crate) unstarted: Vec<(PortId, Vec<std::os::fd::OwnedFd>)>,
    /// Where the API server passes a successor's hand-over ask.
    pub(crate) successors: Option<tokio::sync::mpsc::Sender<handover::Successor>>,
    /// Where the pod CIDR came from (the config, or a lease in etcd), for `show node`.
    pub(crate) pod_cidr_from: String,
    /// With `--keep-on-exit`: the state snapshot and its journal of changes.
    pub(crate) statefile: Option<statefile::StateFile>,
}

impl Daemon {
    /// The counter block the API task writes to.
    pub(crate) fn api_block(&self) -> usize {
        self.dp.counters.workers() - CONTROL_BLOCKS
    }
}

/// Runs the daemon until SIGTERM/SIGINT. Blocks the calling thread.
pub fn run(config_path: &std::path::Path, opts: RunOptions) -> Result<(), RunError> {
    let mut cfg = Config::load(config_path).map_err(RunError::Config)?;
    if let Some(s) = &opts.socket {
        cfg.api.socket = s.clone();
    }
    let keep = opts.keep_on_exit.then(|| restart::Paths::for_socket(&cfg.api.socket));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(setup)?;
    rt.block_on(async move {
        // A live predecessor on our socket: ask it to hand over (see `handover`).
        let pending = if keep.is_some() { start::predecessor(&cfg)? } else { None };
        let state = keep.as_ref().and_then(statefile::load);
        if let Some(st) = &state {
            tracing::info!(pods = st.pods.len(), services = st.services.len(), "resuming from the previous ucanal's state");
            cfg.pods = st.pods.clone();
            cfg.services = st.services.clone();
        }
        let prefix = cfg.cluster.as_ref().map(|c| c.prefix.clone()).unwrap_or_default();
        let (mut daemon, joined, handed) = start::start(cfg, keep, state, pending).await?;
        let socket = daemon.cfg.api.socket.clone();
        let maintenance_block = daemon.dp.counters.workers() - 1;
        let (successors, mut asks) = tokio::sync::mpsc::channel(4);
        daemon.successors = Some(successors);
        let daemon = Arc::new(Mutex::new(daemon));
        if let Some((member, rx)) = joined {
            cluster::spawn(member, rx, daemon.clone(), prefix);
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
                let ls = h.listeners.into_iter().map(|fd| {
                    tokio::net::UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))
                });
                let ls = ls.collect::<std::io::Result<Vec<_>>>().map_err(setup);
                // Whatever happens next is ours to clean up: the old ucanal exits now.
                tokio::task::block_in_place(|| h.taken.running());
                daemon.lock().await.handing = false;
                tracing::info!("hand-over done: the old ucanal's fds are ours");
                ls
            }
            None => server::bind_socket(&socket).and_then(|f| Ok(vec![f, server::bind_abstract()?])).map_err(setup),
        };
        let listeners = match listeners {
            Ok(l) => l,
            Err(e) => return Err(stop(e).await),
        };
        if let Some(addr) = opts.metrics {
            let src = {
                let g = daemon.lock().await;
                super::metrics::Source { node: g.node.name.clone(), dp: g.dp.clone(), stats: g.stats.clone() }
            };
            if let Err(e) = serve_metrics(addr, src).await {
                return Err(stop(setup(format!("--metrics {addr}: {e}"))).await);
            }
        }
        let svc = handover::Services::start(listeners, daemon.clone(), maintenance_block).map_err(setup)?;
        tracing::info!(socket = %socket.display(), "ready");
        let mut signals = Signals::new();
        let sig = loop {
            tokio::select! {
                sig = signals.next() => break sig,
                Some(s) = asks.recv() => handover::refuse(s, &format!("{} (send it SIGTERM first)", handover::NOT_STOPPING)),
            }
        };
        tracing::info!("stopping ({sig})");
        stop_after(sig, signals, asks, &daemon, svc, &socket, opts.handover_wait).await
    })
}

/// After the first signal: SIGTERM with `--keep-on-exit` forwards on for `wait`,
/// handing over to a successor that asks; then the node is left steered (SIGTERM
/// with `--keep-on-exit`) or cleaned up.
async fn stop_after(
    sig: &'static str,
    mut signals: Signals,
    mut asks: tokio::sync::mpsc::Receiver<handover::Successor>,
    daemon: &Arc<Mutex<Daemon>>,
    mut svc: handover::Services,
    socket: &std::path::Path,
    wait: std::time::Duration,
) -> Result<(), RunError> {
    let mut keep_on = sig == "SIGTERM" && daemon.lock().await.keep.is_some();
    if keep_on && !wait.is_zero() {
        tracing::info!("forwarding on for {:?}, waiting for a successor (ucanal run --keep-on-exit)", wait);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                s = signals.next() => {
                    keep_on = s == "SIGTERM";
                    break;
                }
                Some(s) = asks.recv() => {
                    if handover::serve(s, daemon, &mut svc).await == handover::Outcome::Handed {
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
        d.hand_over();
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

/// Serves metrics on `addr`; a predecessor that just handed over may hold the port
/// for a moment longer, while it exits: retried for up to 2 s.
async fn serve_metrics(addr: std::net::SocketAddr, src: super::metrics::Source) -> std::io::Result<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let s = super::metrics::Source { node: src.node.clone(), dp: src.dp.clone(), stats: src.stats.clone() };
        match super::metrics::serve(addr, s).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            r => return r,
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

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

pub(crate) fn workers_for(cfg: &Config) -> usize {
    if cfg.dataplane.workers > 0 {
        cfg.dataplane.workers
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

pub(crate) fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        return clock::now().0 ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(b)
}
