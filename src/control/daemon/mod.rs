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

mod cluster;
mod cni;
mod inspect;
mod maintenance;
mod node;
mod objects;
mod pods;
mod restart;
mod server;
mod services;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Mutex;

use super::config::{Config, ConfigError};
use crate::core::nat::conntrack::Conntrack;
use crate::core::nat::service::ServiceTable;
use crate::core::tables::{NodeInfo, Tables};
use crate::core::{Dataplane, PortId};
use crate::io::netlink::Steer;
use crate::io::observe::Observers;
use crate::io::stats::PortStats;
use crate::io::underlay::Underlay;
use crate::io::worker::{self, Control, WorkerConfig, WorkerHandle};
use crate::io::{clock, tap};

pub(crate) use server::send;

/// Counter blocks beyond the workers' own: one for the API task (dry-run traces,
/// endpoint flushes) and one for the maintenance thread, so that every block keeps
/// its single writer (see `core::counters`).
const CONTROL_BLOCKS: usize = 2;

/// Options of `ucanal run` that are not in the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub socket: Option<PathBuf>,
    pub metrics: Option<std::net::SocketAddr>,
    /// SIGTERM leaves the node steered and hands state to the next ucanal (see `restart`).
    pub keep_on_exit: bool,
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

fn setup(e: impl std::fmt::Display) -> RunError {
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
    Kube(#[from] crate::control::kube::KubeError),
    /// ucanal's IPAM: no free address, an address taken, the lease file unwritable.
    #[error("{0}")]
    Lease(#[from] super::leases::LeaseError),
}

pub struct Daemon {
    cfg: Config,
    node: NodeInfo,
    pub dp: Arc<Dataplane>,
    pub obs: Arc<Observers>,
    pub stats: Arc<PortStats>,
    workers: Vec<WorkerHandle>,
    pods: Vec<pods::PodState>,
    free_ports: Vec<u32>,
    next_port: u32,
    /// The service table the daemon changes and publishes clones of (copy-on-write
    /// shards), and where each service sits in it, by name.
    services: ServiceTable,
    service_names: std::collections::BTreeMap<String, services::Portal>,
    generation: u64,
    seed: u64,
    tx_ports: Vec<u16>,
    steers: BTreeSet<Steer>,
    /// Node-wide sysctls changed at start, with the value to put back on exit.
    restore_sysctls: Vec<(node::SysctlKey, String)>,
    /// With `--keep-on-exit`: where state and conntrack are handed over.
    keep: Option<restart::Paths>,
    /// Started from a previous ucanal's state: its kernel objects are adopted.
    adopted: bool,
    /// Pods of the previous ucanal's state are being attached: their TAPs exist, adopt them.
    restoring: bool,
    /// Membership of a cluster on etcd (`[cluster]`), once joined.
    membership: Option<cluster::Membership>,
    /// Kubernetes objects applied to this node (from `apply` or the etcd watch).
    kube: crate::control::kube::Store,
    /// Where `apply` writes when the node is in a cluster.
    objects: Option<crate::control::cluster::objects::ObjectStore>,
    /// CNI attachments' addresses (ucanal's default IPAM), kept in a state file.
    leases: super::leases::LeaseFile,
}

impl Daemon {
    /// The counter block the API task writes to.
    fn api_block(&self) -> usize {
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
    let state = keep.as_ref().and_then(|k| restart::load_state(&k.state));
    if let Some(st) = &state {
        tracing::info!(pods = st.pods.len(), services = st.services.len(), "resuming from the previous ucanal's state");
        cfg.pods = st.pods.clone();
        cfg.services = st.services.clone();
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(setup)?;
    rt.block_on(async move {
        let prefix = cfg.cluster.as_ref().map(|c| c.prefix.clone()).unwrap_or_default();
        let (daemon, joined) = start(cfg, keep, state).await?;
        let socket = daemon.cfg.api.socket.clone();
        let dp = daemon.dp.clone();
        let maintenance_block = dp.counters.workers() - 1;
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
        let listeners = match server::bind_socket(&socket).and_then(|f| Ok(vec![f, server::bind_abstract()?])) {
            Ok(l) => l,
            Err(e) => return Err(stop(setup(e)).await),
        };
        tracing::info!(socket = %socket.display(), "ready");
        if let Some(addr) = opts.metrics {
            let src = {
                let g = daemon.lock().await;
                super::metrics::Source { node: g.node.name.clone(), dp: g.dp.clone(), stats: g.stats.clone() }
            };
            if let Err(e) = super::metrics::serve(addr, src).await {
                return Err(stop(setup(format!("--metrics {addr}: {e}"))).await);
            }
        }
        let checkpoint = daemon.lock().await.keep.as_ref().map(|k| k.conntrack.clone());
        let sweeper = maintenance::Sweeper::spawn(dp, maintenance_block, checkpoint).map_err(setup)?;
        let server = tokio::spawn(server::serve(listeners, daemon.clone()));
        let sig = wait_for_signal().await;
        tracing::info!("stopping ({sig})");
        server.abort();
        sweeper.stop();
        let mut d = daemon.lock().await;
        if sig == "SIGTERM" && d.keep.is_some() {
            d.hand_over();
            let _ = std::fs::remove_file(&socket);
            tracing::info!("stopped; the node stays steered to ucanal, state handed over for the next one");
            return Ok(());
        }
        d.teardown().await;
        let _ = std::fs::remove_file(&socket);
        tracing::info!("stopped; everything ucanal created is removed");
        Ok(())
    })
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

fn workers_for(cfg: &Config) -> usize {
    if cfg.dataplane.workers > 0 {
        cfg.dataplane.workers
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        return clock::now().0 ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(b)
}

type Joined = Option<(crate::control::cluster::member::Member, tokio::sync::watch::Receiver<cluster::PeerSet>)>;

async fn start(
    cfg: Config,
    keep: Option<restart::Paths>,
    state: Option<restart::State>,
) -> Result<(Daemon, Joined), RunError> {
    let adopted = state.is_some();
    node::preflight(&cfg, keep.is_some()).await?;
    // The lease first: a subnet held by another node stops us before anything exists.
    let joined = cluster::join(&cfg, random_seed()).await?;
    let node = cfg.node_info();
    let lease_path = super::leases::LeaseFile::path_for(&cfg.api.socket);
    let leases = super::leases::LeaseFile::load(lease_path, node.pod_cidr, node.vtep_ip).map_err(setup)?;
    let n_workers = workers_for(&cfg);
    let tech = cfg.dataplane.techniques();
    let underlay = Underlay::open(node.node_ip, node.vxlan_port, n_workers, cfg.dataplane.source_ports, tech.udp_gro)
        .map_err(setup)?;
    let persist = if keep.is_some() { tap::Persist::Keep } else { tap::Persist::No };
    let host_fds = tap::open_with(&cfg.node.host_port, n_workers, tech.tap_offloads, persist).map_err(setup)?;

    let mut d = Daemon {
        node: node.clone(),
        dp: Arc::new(
            Dataplane::new(
                Tables::build(0, node.clone(), 0, &[], &[], ServiceTable::default()),
                Conntrack::new(cfg.conntrack.max, cfg.conntrack.timeouts),
                n_workers + CONTROL_BLOCKS,
            )
            .with_tap_offloads(tech.tap_offloads),
        ),
        obs: Arc::new(Observers::new(node.name.clone())),
        stats: Arc::new(PortStats::new(n_workers)),
        workers: Vec::new(),
        pods: Vec::new(),
        free_ports: Vec::new(),
        next_port: 1,
        services: ServiceTable::default(),
        service_names: Default::default(),
        generation: 0,
        seed: state.as_ref().map_or_else(random_seed, |s| s.seed),
        tx_ports: underlay.tx_ports.clone(),
        steers: BTreeSet::new(),
        restore_sysctls: state.as_ref().map(|s| node::sysctls_from_names(&s.restore_sysctls)).unwrap_or_default(),
        membership: None,
        kube: Default::default(),
        objects: None,
        leases,
        cfg: Config { pods: Vec::new(), ..cfg.clone() },
        keep,
        adopted,
        restoring: false,
    };
    for s in std::mem::take(&mut d.cfg.services) {
        // Checked by the config (or written by the ucanal before us): no clashes.
        d.service_names.insert(s.name.clone(), (s.protocol, s.cluster_ip, s.port));
        d.services.insert(crate::core::nat::service::Service::carrying(s, None));
    }
    if let Err(e) = d.configure_node().await {
        d.teardown().await;
        return Err(e);
    }
    d.rebuild();
    if let Some(k) = &d.keep {
        let (n, of) = restart::load_checkpoint(&d.dp, &k.conntrack);
        if of > 0 {
            tracing::info!("conntrack: {n} of {of} flows taken over from the previous ucanal");
        }
    }
    let tx = Arc::new(underlay.tx);
    let wcfg = WorkerConfig {
        batch: cfg.dataplane.batch,
        udp_gso: tech.udp_gso,
        gro: tech.gro,
        busy_poll_us: cfg.dataplane.busy_poll_us,
        sg_gso: cfg.dataplane.sg_gso,
        zerocopy: cfg.dataplane.zerocopy,
        relay: cfg.dataplane.relay,
        vxlan_port: node.vxlan_port,
    };
    let zc = if cfg.dataplane.zerocopy {
        for s in tx.iter() {
            if let Err(e) = crate::io::zerocopy::enable(std::os::fd::AsRawFd::as_raw_fd(s)) {
                d.teardown().await;
                return Err(setup(format!("SO_ZEROCOPY on a VXLAN socket: {e}")));
            }
        }
        Some(Arc::new(crate::io::zerocopy::Completions::new(tx.len())))
    } else {
        None
    };
    let pool = worker::TxPool { sockets: tx, zc };
    for (i, (rx, host_fd)) in underlay.rx.into_iter().zip(host_fds).enumerate() {
        match worker::spawn(i, d.dp.clone(), rx, pool.clone(), d.obs.clone(), d.stats.clone(), wcfg) {
            Ok(w) => {
                w.send(Control::AddPort { port: PortId::HOST, fd: host_fd });
                d.workers.push(w);
            }
            Err(e) => {
                d.teardown().await;
                return Err(setup(format!("starting worker {i}: {e}")));
            }
        }
    }
    d.restoring = d.adopted;
    for (i, p) in cfg.pods.iter().enumerate() {
        if let Err(e) = d.add_pod(p.clone()).await {
            d.teardown().await;
            return Err(setup(format!("pods[{i}] ({}): {e}", p.name)));
        }
    }
    d.restoring = false;
    d.save_state();
    tracing::info!(
        node = %node.name, adopted = d.adopted, workers = n_workers, batch = cfg.dataplane.batch, techniques = ?tech, pods = d.pods.len(), services = d.services.len(),
        source_ports = ?d.tx_ports, "dataplane up"
    );
    Ok((d, joined))
}
