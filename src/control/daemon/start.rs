//! Startup of `ucanal run`: everything is checked before anything is created, the
//! node is configured (or adopted from a previous ucanal), then the workers start —
//! on fresh sockets and TAP queues, or on the fds a running predecessor hands over
//! (see `handover`). A failure at any step undoes the steps before it, except what a
//! predecessor still owns.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use super::{CONTROL_BLOCKS, Daemon, RunError, random_seed, setup, workers_for};
use crate::control::cluster::membership as cluster;
use crate::control::config::{Config, PodSpec};
use crate::control::handover::{self, Ask, HandoverError};
use crate::control::node;
use crate::control::persist as restart;
use crate::control::persist::statefile;
use crate::core::nat::conntrack::Conntrack;
use crate::core::nat::service::ServiceTable;
use crate::core::tables::{NodeInfo, Tables};
use crate::core::{Dataplane, PortId};
use crate::io::observe::Observers;
use crate::io::stats::PortStats;
use crate::io::tap;
use crate::io::underlay::Underlay;
use crate::io::worker::{self, WorkerConfig};

pub(crate) type Joined =
    Option<(crate::control::cluster::member::Member, tokio::sync::watch::Receiver<cluster::PeerSet>)>;

/// Longest wait for a predecessor that refused a hand-over to exit.
const PREDECESSOR_EXIT: Duration = Duration::from_secs(60);

/// What a hand-over leaves for `run`: the API listeners, and the word that lets the
/// old ucanal exit.
pub(crate) struct Handed {
    pub(crate) listeners: Vec<OwnedFd>,
    pub(crate) taken: handover::Taken,
}

/// The fds the workers run on.
struct WorkerFds {
    rx: Vec<UdpSocket>,
    tx: Vec<UdpSocket>,
    tx_ports: Vec<u16>,
    host: Vec<OwnedFd>,
}

fn ask_for(cfg: &Config) -> Ask {
    let tech = cfg.dataplane.techniques();
    Ask {
        version: handover::offer::VERSION,
        workers: workers_for(cfg),
        source_ports: cfg.dataplane.source_ports.max(1),
        tap_offloads: tech.tap_offloads,
        udp_gro: tech.udp_gro,
    }
}

/// With `--keep-on-exit`: a ucanal live on our socket is asked to hand over. A
/// refusal other than "not stopping" falls back to the cold start once it exited.
pub(crate) fn predecessor(cfg: &Config) -> Result<Option<handover::Pending>, RunError> {
    let socket = &cfg.api.socket;
    match tokio::task::block_in_place(|| handover::ask(socket, ask_for(cfg))) {
        Ok(p) => {
            if p.is_some() {
                tracing::info!("a running ucanal on {} accepted to hand over", socket.display());
            }
            Ok(p)
        }
        Err(e @ HandoverError::NotStopping(_)) => Err(setup(e)),
        Err(e) => {
            tracing::warn!("{e}; waiting for the old ucanal to exit, then starting cold");
            wait_predecessor(socket)?;
            Ok(None)
        }
    }
}

fn wait_predecessor(socket: &std::path::Path) -> Result<(), RunError> {
    if tokio::task::block_in_place(|| handover::wait_gone(socket, PREDECESSOR_EXIT)) {
        return Ok(());
    }
    Err(setup(format!("api.socket: the ucanal on {} did not exit within {PREDECESSOR_EXIT:?}", socket.display())))
}

fn open_fds(cfg: &Config, node: &NodeInfo, workers: usize, keep: bool) -> Result<WorkerFds, RunError> {
    let tech = cfg.dataplane.techniques();
    let u = Underlay::open(node.node_ip, node.vxlan_port, workers, cfg.dataplane.source_ports, tech.udp_gro)
        .map_err(setup)?;
    let persist = if keep { tap::Persist::Keep } else { tap::Persist::No };
    let host = tap::open_with(&cfg.node.host_port, workers, tech.tap_offloads, persist).map_err(setup)?;
    Ok(WorkerFds { rx: u.rx, tx: u.tx, tx_ports: u.tx_ports, host })
}

fn new_daemon(
    cfg: &Config,
    node: &NodeInfo,
    keep: Option<restart::Paths>,
    state: Option<&restart::State>,
    leases: crate::control::ipam::LeaseFile,
    workers: usize,
) -> Daemon {
    let tech = cfg.dataplane.techniques();
    Daemon {
        node: node.clone(),
        dp: Arc::new(
            Dataplane::new(
                Tables::build(0, node.clone(), 0, &[], &[], ServiceTable::default()),
                Conntrack::new(cfg.conntrack.max, cfg.conntrack.timeouts),
                workers + CONTROL_BLOCKS,
            )
            .with_tap_offloads(tech.tap_offloads),
        ),
        obs: Arc::new(Observers::new(node.name.clone())),
        stats: Arc::new(PortStats::new(workers)),
        workers: Vec::new(),
        pods: Vec::new(),
        free_ports: Vec::new(),
        next_port: 1,
        services: ServiceTable::default(),
        service_names: Default::default(),
        generation: 0,
        seed: state.map_or_else(random_seed, |s| s.seed),
        tx_ports: Vec::new(),
        steers: Default::default(),
        restore_sysctls: state.map(|s| node::sysctls_from_names(&s.restore_sysctls)).unwrap_or_default(),
        membership: None,
        kube: Default::default(),
        objects: None,
        leases,
        cfg: Config { pods: Vec::new(), ..cfg.clone() },
        adopted: state.is_some(),
        keep: keep.clone(),
        restoring: false,
        wio: None,
        handing: false,
        handed_pods: HashMap::new(),
        unstarted: Vec::new(),
        successors: None,
        pod_cidr_from: String::new(),
        statefile: keep.map(|k| statefile::StateFile::new(k, state.map_or(0, |s| s.seq))),
    }
}

pub(crate) async fn start(
    cfg: Config,
    keep: Option<restart::Paths>,
    state: Option<restart::State>,
    pending: Option<handover::Pending>,
) -> Result<(Daemon, Joined, Option<Handed>), RunError> {
    node::preflight(&cfg, keep.is_some(), pending.is_some()).await?;
    // The lease first: a subnet held by another node stops us before anything exists,
    // and a node without a pod CIDR learns it here.
    let joined = cluster::join(&cfg, random_seed()).await?;
    let (cfg, pod_cidr_from) = cluster::settle_pod_cidr(cfg, &joined)?;
    let node = cfg.node_info().map_err(RunError::Config)?;
    let lease_path = crate::control::ipam::LeaseFile::path_for(&cfg.api.socket);
    let leases = crate::control::ipam::LeaseFile::load(lease_path, node.pod_cidr, node.vtep_ip).map_err(setup)?;
    let n_workers = workers_for(&cfg);
    // Taking over, the predecessor's sockets and queues come later, at `go`.
    let fresh = if pending.is_none() { Some(open_fds(&cfg, &node, n_workers, keep.is_some())?) } else { None };
    let mut d = new_daemon(&cfg, &node, keep, state.as_ref(), leases, n_workers);
    d.pod_cidr_from = pod_cidr_from;
    let specs = std::mem::take(&mut d.cfg.services);
    set_services(&mut d, specs);
    d.adopted |= pending.is_some();
    d.handing = pending.is_some();
    if let Err(e) = d.configure_node().await {
        d.teardown().await;
        return Err(e);
    }
    let (fds, pods, handed) = match take_over(&mut d, &cfg, fresh, pending).await {
        Ok(x) => x,
        Err(e) => {
            d.teardown().await;
            return Err(e);
        }
    };
    d.tx_ports = fds.tx_ports.clone();
    d.rebuild();
    d.restoring = d.adopted;
    // Handed-over pods are in the tables before the first worker reads a frame.
    let mut r = if handed.is_some() { add_pods(&mut d, &pods).await } else { Ok(()) };
    r = r.and_then(|()| run_workers(&mut d, &cfg, fds));
    if r.is_ok() && handed.is_none() {
        r = add_pods(&mut d, &pods).await;
    }
    if let Err(e) = r {
        d.teardown().await;
        return Err(e);
    }
    d.restoring = false;
    d.handed_pods.clear();
    d.snapshot_state();
    let tech = cfg.dataplane.techniques();
    tracing::info!(
        node = %node.name, adopted = d.adopted, handed_over = handed.is_some(), workers = n_workers, batch = cfg.dataplane.batch, techniques = ?tech, pods = d.pods.len(), services = d.services.len(),
        source_ports = ?d.tx_ports, "dataplane up"
    );
    Ok((d, joined, handed))
}

/// The services to start with (checked by the config, or written by the ucanal
/// before us: no clashes).
fn set_services(d: &mut Daemon, specs: Vec<crate::core::nat::service::ServiceSpec>) {
    d.services = ServiceTable::default();
    d.service_names.clear();
    for s in specs {
        d.service_names.insert(s.name.clone(), (s.protocol, s.cluster_ip, s.port));
        d.services.insert(crate::core::nat::service::Service::carrying(s, None));
    }
}

async fn add_pods(d: &mut Daemon, pods: &[PodSpec]) -> Result<(), RunError> {
    for (i, p) in pods.iter().enumerate() {
        d.add_pod(p.clone()).await.map_err(|e| setup(format!("pods[{i}] ({}): {e}", p.name)))?;
    }
    Ok(())
}

/// The fds, pods and conntrack to start with: fresh ones and the checkpoint file, or
/// the predecessor's (`go`). A predecessor that fails at `go` is waited for, then the
/// start goes on cold.
async fn take_over(
    d: &mut Daemon,
    cfg: &Config,
    fresh: Option<WorkerFds>,
    pending: Option<handover::Pending>,
) -> Result<(WorkerFds, Vec<PodSpec>, Option<Handed>), RunError> {
    let mut pods = cfg.pods.clone();
    let fds = match (fresh, pending) {
        (Some(f), _) => f,
        (None, Some(p)) => match tokio::task::block_in_place(|| p.go()) {
            Ok((offer, taken)) => {
                let (n, of) = restart::load_checkpoint_bytes(&d.dp, &offer.conntrack, "hand-over");
                tracing::info!("conntrack: {n} of {of} flows handed over by the previous ucanal");
                d.seed = offer.state.seed;
                d.restore_sysctls = node::sysctls_from_names(&offer.state.restore_sysctls);
                set_services(d, offer.state.services);
                d.handed_pods = offer.pods;
                // CNI leases may have changed after our first read.
                let lease_path = crate::control::ipam::LeaseFile::path_for(&cfg.api.socket);
                d.leases = crate::control::ipam::LeaseFile::load(lease_path, d.node.pod_cidr, d.node.vtep_ip)
                    .map_err(setup)?;
                let tx_ports = offer.tx.iter().map(|s| s.local_addr().map(|a| a.port()).unwrap_or(0)).collect();
                let fds = WorkerFds { rx: offer.rx, tx: offer.tx, tx_ports, host: offer.host };
                let handed = Handed { listeners: offer.listeners, taken };
                return Ok((fds, offer.state.pods, Some(handed)));
            }
            Err(e) => {
                tracing::warn!("{e}; waiting for the old ucanal to exit, then starting cold");
                wait_predecessor(&cfg.api.socket)?;
                d.handing = false;
                if let Some(st) = d.keep.as_ref().and_then(statefile::load) {
                    d.seed = st.seed;
                    d.restore_sysctls = node::sysctls_from_names(&st.restore_sysctls);
                    set_services(d, st.services);
                    pods = st.pods;
                }
                open_fds(cfg, &d.node, workers_for(cfg), d.keep.is_some())?
            }
        },
        (None, None) => unreachable!("start opens fresh fds when nobody hands over"),
    };
    if let Some(k) = &d.keep {
        let (n, of) = restart::load_checkpoint(&d.dp, &k.conntrack);
        if of > 0 {
            tracing::info!("conntrack: {n} of {of} flows taken over from the previous ucanal");
        }
    }
    Ok((fds, pods, None))
}

/// Starts one worker per VXLAN receive socket, each with its queue of the host port.
fn run_workers(d: &mut Daemon, cfg: &Config, fds: WorkerFds) -> Result<(), RunError> {
    let tech = cfg.dataplane.techniques();
    let wcfg = WorkerConfig {
        batch: cfg.dataplane.batch,
        udp_gso: tech.udp_gso,
        gro: tech.gro,
        busy_poll_us: cfg.dataplane.busy_poll_us,
        sg_gso: cfg.dataplane.sg_gso,
        zerocopy: cfg.dataplane.zerocopy,
        relay: cfg.dataplane.relay,
        vxlan_port: d.node.vxlan_port,
    };
    let tx = Arc::new(fds.tx);
    let zc = if cfg.dataplane.zerocopy {
        for s in tx.iter() {
            crate::io::zerocopy::enable(std::os::fd::AsRawFd::as_raw_fd(s))
                .map_err(|e| setup(format!("SO_ZEROCOPY on a VXLAN socket: {e}")))?;
        }
        Some(Arc::new(crate::io::zerocopy::Completions::new(tx.len())))
    } else {
        None
    };
    d.wio = Some((wcfg, worker::TxPool { sockets: tx, zc }));
    let mut ports: Vec<Vec<(PortId, OwnedFd)>> = fds.host.into_iter().map(|fd| vec![(PortId::HOST, fd)]).collect();
    for (port, queues) in std::mem::take(&mut d.unstarted) {
        for (w, fd) in ports.iter_mut().zip(queues) {
            w.push((port, fd));
        }
    }
    d.spawn_workers(fds.rx, ports).map_err(setup)
}
