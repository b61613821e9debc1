//! Startup of `ucanal run`: everything is checked before anything is created, the
//! node is configured (or adopted from a previous ucanal), then the workers start —
//! on fresh sockets and TAP queues, or on the fds a running predecessor hands over
//! (see `handover`). A failure at any step undoes the steps before it, except what a
//! predecessor still owns. The state file and the lease file are read once, when no
//! live predecessor can change them any more.
//!
//! No restart can leave the node without its dataplane: a start that finds the node
//! still steered by a ucanal that is gone (its host port there, nobody answering on the
//! API) adopts what it left instead of refusing, and every pod or service of the state
//! file (or a hand-over) that cannot be restored — its network namespace gone, its
//! address outside the pod CIDR now — is dropped with a warning naming it and where
//! it came from (its address lease released, counted in `show node`), never fatal.

use std::net::UdpSocket;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::control::cluster::membership::{self, Joined};
use crate::control::config::Config;
use crate::control::error::ControlError;
use crate::control::error::RunError;
use crate::control::handover::{self, HandoverError, Offer, Pending, Taken};
use crate::control::ipam::Ipam;
use crate::control::node::{self, Adopt, Leftovers, NodeBook};
use crate::control::persist::{self, Paths, Persist, SavedPod, State, statefile};
use crate::control::plane::Plane;
use crate::control::services::{ServiceBook, SteeredPort};
use crate::control::state::{Daemon, Lifecycle, StartMode};
use crate::core::tables::NodeInfo;
use crate::io::clock;
use crate::io::tap;
use crate::io::underlay::Underlay;
use crate::io::worker::{TxPool, WorkerConfig};

/// Longest wait for a predecessor that refused a hand-over to exit.
const PREDECESSOR_EXIT: Duration = Duration::from_secs(60);

/// A started daemon, with what `run` finishes: the cluster to follow, and a hand-over's
/// API listeners and the word that lets the old ucanal exit.
pub struct Started {
    pub daemon: Daemon,
    pub joined: Option<Joined>,
    pub handed: Option<Handed>,
}

/// What a hand-over leaves for `run`.
pub struct Handed {
    pub listeners: Vec<OwnedFd>,
    pub taken: Taken,
}

/// The fds the workers run on.
struct WorkerFds {
    rx: Vec<UdpSocket>,
    tx: Vec<UdpSocket>,
    tx_ports: Vec<u16>,
    host: Vec<OwnedFd>,
}

/// What the pods and services of a start come from.
struct Origin {
    from: StartMode,
    state: Option<State>,
    /// A ucanal that is gone left the node steered (its host port is there).
    leftovers: bool,
}

/// Where the pods a start attaches come from: a config's pod that cannot be attached is
/// a config error; a restored one is dropped with a warning naming where it came from.
#[derive(Debug, Clone)]
enum PodsFrom {
    Config,
    Restored(String),
}

/// With `--keep-on-exit`: a ucanal live on our socket is asked to hand over. A
/// refusal other than "not stopping" falls back to the cold start once it exited
/// (`Ok((None, true))`: there was one, and it did not hand over).
fn predecessor(cfg: &Config) -> Result<(Option<Pending>, bool), RunError> {
    let socket = &cfg.api.socket;
    match tokio::task::block_in_place(|| handover::ask(socket, handover::ask_for(cfg))) {
        Ok(p) => {
            if p.is_some() {
                tracing::info!("a running ucanal on {} accepted to hand over", socket.display());
            }
            Ok((p, false))
        }
        Err(e @ HandoverError::NotStopping(_)) => Err(e.into()),
        Err(e) => {
            tracing::warn!(
                "{e}; the running ucanal did not hand over (it runs without --keep-on-exit, or it is exiting): \
                 waiting for it to exit, then starting from its state file, or cold"
            );
            wait_predecessor(socket)?;
            Ok((None, true))
        }
    }
}

fn wait_predecessor(socket: &std::path::Path) -> Result<(), RunError> {
    if tokio::task::block_in_place(|| handover::wait_gone(socket, PREDECESSOR_EXIT)) {
        return Ok(());
    }
    Err(RunError::PredecessorStuck { socket: socket.to_path_buf(), wait: PREDECESSOR_EXIT })
}

fn open_fds(cfg: &Config, node: &NodeInfo, keep: bool, adopting: bool) -> Result<WorkerFds, RunError> {
    let (dp, tech) = (&cfg.dataplane, cfg.dataplane.techniques());
    let u = Underlay::open(node.node_ip, node.vxlan_port, dp.worker_count(), dp.source_sockets(), tech.udp_gro)
        .map_err(RunError::Kernel)?;
    let persist = match (keep, adopting) {
        (true, _) => tap::Persist::Keep,
        (false, true) => tap::Persist::Release,
        (false, false) => tap::Persist::No,
    };
    let host =
        tap::open_with(&cfg.node.host_port, dp.worker_count(), tech.tap_offloads, persist).map_err(RunError::Kernel)?;
    Ok(WorkerFds { rx: u.rx, tx: u.tx, tx_ports: u.tx_ports, host })
}

fn load_ipam(cfg: &Config, node: &NodeInfo) -> Result<Ipam, RunError> {
    Ok(Ipam::load(Ipam::path_for(&cfg.api.socket), node.pod_cidr, node.vtep_ip)?)
}

/// Starts the daemon of `cfg` (`keep_on_exit`: `run --keep-on-exit`).
pub async fn start(cfg: Config, keep_on_exit: bool) -> Result<Started, RunError> {
    let keep = keep_on_exit.then(|| Paths::for_socket(&cfg.api.socket));
    // A live predecessor on our socket: ask it to hand over (see `handover`).
    let (pending, passed_over) = if keep.is_some() { predecessor(&cfg)? } else { (None, false) };
    // A hand-over carries the state; otherwise it is the previous ucanal's file.
    let state = if pending.is_none() { keep.as_ref().and_then(statefile::load) } else { None };
    let config_pods = pending.is_none() && state.is_none();
    let leftovers = node::preflight(&cfg, if config_pods { &cfg.pods } else { &[] }, pending.is_some()).await?;
    if keep.is_none() {
        // Without --keep-on-exit nothing is handed on: what a ucanal run with it left
        // (state, journal, checkpoint) describes nothing this start keeps.
        Paths::for_socket(&cfg.api.socket).remove();
    }
    let origin = origin_of(&cfg, pending.is_some(), state, leftovers);
    if passed_over && origin.from == StartMode::Cold {
        tracing::warn!(
            "RUNTIME STATE LOST: the ucanal before left no state file (it ran without --keep-on-exit, or \
             stopped with SIGINT): starting cold from the config file; pods, services and endpoints it \
             had added over the API are gone"
        );
    }
    let pods = match &origin.state {
        Some(s) => s.pods.clone(),
        None => cfg.pods.iter().map(|p| SavedPod { pod: p.clone(), cni: None }).collect(),
    };
    let pods_from = match (&origin.state, &keep) {
        (Some(_), Some(k)) => PodsFrom::Restored(k.state.display().to_string()),
        _ => PodsFrom::Config,
    };
    // The lease first: a subnet held by another node stops us before anything exists,
    // and a node without a pod CIDR learns it here.
    let joined = membership::join(&cfg, random_seed()).await?;
    let (cfg, pod_cidr_from) = membership::settle_pod_cidr(cfg, &joined)?;
    let cfg = Arc::new(cfg);
    let info = cfg.node_info().map_err(RunError::Config)?;
    let mut d = assemble(&cfg, &info, pod_cidr_from, keep, &origin, pending.is_some())?;
    let (fds, pods, pods_from, handed) = match take_over(&mut d, &info, pending, pods, pods_from).await {
        Ok(x) => x,
        Err(e) => {
            d.teardown().await;
            return Err(e);
        }
    };
    if let Err(e) = run_pods(&mut d, fds, &pods, &pods_from, handed.is_some()).await {
        d.teardown().await;
        return Err(e);
    }
    d.started();
    d.snapshot_state();
    tracing::info!(
        node = %info.name, adopted = d.life.from() != StartMode::Cold, handed_over = handed.is_some(),
        workers = cfg.dataplane.worker_count(), batch = cfg.dataplane.batch, techniques = ?cfg.dataplane.techniques(),
        pods = d.pods.len(), services = d.services.len(), source_ports = ?d.plane.tx_ports(),
        pods_dropped = d.node.start.pods_dropped, services_dropped = d.node.start.services_dropped, "dataplane up"
    );
    Ok(Started { daemon: d, joined, handed })
}

/// What this start takes over: a hand-over, a previous ucanal's state, what a ucanal
/// that is gone left on the node, or nothing.
fn origin_of(cfg: &Config, pending: bool, state: Option<State>, leftovers: Leftovers) -> Origin {
    let leftovers = leftovers == Leftovers::HostPort;
    match (pending, state) {
        (true, _) => Origin { from: StartMode::HandedOver, state: None, leftovers: false },
        (false, Some(st)) => {
            tracing::info!(
                pods = st.pods.len(),
                services = st.services.len(),
                "resuming from the previous ucanal's state"
            );
            Origin { from: StartMode::Resumed, state: Some(st), leftovers }
        }
        (false, None) if leftovers => {
            tracing::warn!(
                "the node is still steered by a ucanal that is gone ({} exists, nobody answers on {}): \
                 adopting what it left (host port, rules, the config's pods' TAPs) instead of creating them",
                cfg.node.host_port,
                cfg.api.socket.display()
            );
            Origin { from: StartMode::Resumed, state: None, leftovers }
        }
        (false, None) => Origin { from: StartMode::Cold, state: None, leftovers: false },
    }
}

/// The daemon's books for `origin`. Taking over (`pending`), the services and the
/// leases come later: the predecessor may change them until it stops.
fn assemble(
    cfg: &Arc<Config>,
    info: &NodeInfo,
    pod_cidr_from: String,
    keep: Option<Paths>,
    origin: &Origin,
    pending: bool,
) -> Result<Daemon, RunError> {
    let st = origin.state.as_ref();
    let node = NodeBook::new(info.clone(), pod_cidr_from, st.map_or(&[], |s| &s.restore_sysctls));
    let plane = Plane::new(cfg, info, cfg.dataplane.worker_count(), st.map_or_else(random_seed, |s| s.seed));
    let (services, services_dropped) = match (pending, st, &keep) {
        (true, ..) => (ServiceBook::default(), 0),
        (false, Some(s), Some(k)) => ServiceBook::restored(cfg, s.services.clone(), &k.state.display().to_string()),
        _ => (ServiceBook::new(cfg.services.clone()), 0),
    };
    let ipam = if pending {
        Ipam::unread(Ipam::path_for(&cfg.api.socket), info.pod_cidr, info.vtep_ip)
    } else {
        load_ipam(cfg, info)?
    };
    let persist = keep.map(|k| Persist::new(k, st.map_or(0, |s| s.seq)));
    let mut d = Daemon::new(cfg.clone(), origin.from, node, plane, services, ipam, persist);
    d.node.start.adopted_leftovers = origin.leftovers;
    d.node.start.services_dropped = services_dropped;
    Ok(d)
}

/// Configures the node, then gets the fds, pods and conntrack to start with: fresh
/// ones and the checkpoint file, or the predecessor's (`go`). A predecessor that fails
/// at `go` is waited for, then the start goes on from its state file.
async fn take_over(
    d: &mut Daemon,
    info: &NodeInfo,
    pending: Option<Pending>,
    pods: Vec<SavedPod>,
    pods_from: PodsFrom,
) -> Result<(WorkerFds, Vec<SavedPod>, PodsFrom, Option<Handed>), RunError> {
    let cfg = d.cfg.clone();
    let keep = d.persist.is_some();
    let adopting = d.life.from() != StartMode::Cold;
    let Some(p) = pending else {
        // The host port first: configuring the node configures it.
        let fds = open_fds(&cfg, info, keep, adopting)?;
        let node_ports: Vec<SteeredPort> = d.services.node_ports().collect();
        let adopt = if adopting { Adopt::Gone } else { Adopt::Nothing };
        d.node.configure(&cfg, adopt, node_ports.into_iter()).await?;
        load_checkpoint_file(d);
        return Ok((fds, pods, pods_from, None));
    };
    // A live predecessor's host port, rules and NodePort steering stay as they are; its
    // NodePorts are adopted after `go`.
    d.node.configure(&cfg, Adopt::Live, std::iter::empty()).await?;
    match tokio::task::block_in_place(|| p.go()) {
        Ok((offer, taken)) => {
            let Offer { listeners, rx, tx, host, pods: handed_pods, state, conntrack } = offer;
            let (n, of) = persist::load_checkpoint_bytes(d.plane.dp(), &conntrack, "hand-over");
            tracing::info!("conntrack: {n} of {of} flows handed over by the previous ucanal");
            let kept = d.plane.dp().affinity.import(&state.affinity, clock::now());
            tracing::info!("session affinity: {kept} of {} records handed over", state.affinity.len());
            d.plane.set_seed(state.seed);
            d.node.adopt_sysctls(&state.restore_sysctls);
            let (services, dropped) = ServiceBook::restored(&cfg, state.services, "the hand-over");
            d.services = services;
            d.node.start.services_dropped = dropped;
            d.node.adopt_steers(d.services.node_ports());
            d.life = Lifecycle::Starting { from: StartMode::HandedOver, handed: handed_pods };
            d.ipam = load_ipam(&cfg, info)?;
            if let Some(p) = &mut d.persist {
                *p = Persist::new(p.paths().clone(), state.seq);
            }
            let tx_ports = tx.iter().map(|s| s.local_addr().map(|a| a.port()).unwrap_or(0)).collect();
            let from = PodsFrom::Restored("the hand-over".into());
            Ok((WorkerFds { rx, tx, tx_ports, host }, state.pods, from, Some(Handed { listeners, taken })))
        }
        Err(e) => {
            tracing::warn!("{e}; waiting for the old ucanal to exit, then starting cold");
            wait_predecessor(&cfg.api.socket)?;
            // Its TAPs and rules are left for us, as after a restart.
            d.life = Lifecycle::Starting { from: StartMode::Resumed, handed: Default::default() };
            let mut pods: Vec<SavedPod> = cfg.pods.iter().map(|p| SavedPod { pod: p.clone(), cni: None }).collect();
            let mut from = PodsFrom::Config;
            if let Some(paths) = d.persist.as_ref().map(|p| p.paths().clone())
                && let Some(st) = statefile::load(&paths)
            {
                let origin = paths.state.display().to_string();
                d.plane.set_seed(st.seed);
                d.node.adopt_sysctls(&st.restore_sysctls);
                let (services, dropped) = ServiceBook::restored(&cfg, st.services, &origin);
                d.services = services;
                d.node.start.services_dropped = dropped;
                if let Some(p) = &mut d.persist {
                    *p = Persist::new(p.paths().clone(), st.seq);
                }
                pods = st.pods;
                from = PodsFrom::Restored(origin);
            } else {
                d.services = ServiceBook::new(cfg.services.clone());
            }
            d.node.take_existing_steers(&cfg).await.map_err(RunError::Kernel)?;
            d.node.sync_steers(&cfg, d.services.node_ports()).await.map_err(RunError::Kernel)?;
            d.ipam = load_ipam(&cfg, info)?;
            let fds = open_fds(&cfg, info, keep, true)?;
            load_checkpoint_file(d);
            Ok((fds, pods, from, None))
        }
    }
}

/// The conntrack checkpoint a previous ucanal left (with `--keep-on-exit`).
fn load_checkpoint_file(d: &Daemon) {
    if let Some(p) = &d.persist {
        let (n, of) = persist::load_checkpoint(d.plane.dp(), &p.paths().conntrack);
        if of > 0 {
            tracing::info!("conntrack: {n} of {of} flows taken over from the previous ucanal");
        }
    }
}

/// Publishes the first tables, then attaches the pods and starts the workers: handed
/// over pods first (they are in the tables before the first worker reads a frame),
/// otherwise the workers first.
async fn run_pods(
    d: &mut Daemon,
    fds: WorkerFds,
    pods: &[SavedPod],
    from: &PodsFrom,
    handed: bool,
) -> Result<(), RunError> {
    d.plane.set_tx_ports(fds.tx_ports.clone());
    d.publish();
    d.serve_health_checks();
    match d.cfg.manifest_objects() {
        Ok(objs) if !objs.is_empty() => {
            if let Err(e) = d.apply_objects(objs, false).await {
                tracing::error!("the config's manifests do not apply: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::error!("config: {e}"),
    }
    if handed {
        add_pods(d, pods, from).await?;
    }
    run_workers(d, fds)?;
    if !handed {
        add_pods(d, pods, from).await?;
    }
    Ok(())
}

async fn add_pods(d: &mut Daemon, pods: &[SavedPod], from: &PodsFrom) -> Result<(), RunError> {
    for (index, p) in pods.iter().enumerate() {
        let Err(source) = d.add_pod(p.pod.clone(), p.cni.clone()).await else { continue };
        match from {
            PodsFrom::Config => return Err(RunError::Pod { index, name: p.pod.name.clone(), source }),
            PodsFrom::Restored(origin) => drop_restored_pod(d, p, &source, origin),
        }
    }
    Ok(())
}

/// A pod of the state file (or a hand-over) that cannot be attached again: dropped with
/// a warning naming it and where it came from; its address lease and whatever is left
/// of its TAP go with it.
fn drop_restored_pod(d: &mut Daemon, p: &SavedPod, e: &ControlError, origin: &str) {
    let kind = match &p.cni {
        Some(c) => format!("CNI attachment of container {} ({})", c.container_id, c.network),
        None if d.cfg.pods.iter().any(|c| c.name == p.pod.name) => "from the config".into(),
        None => "added over the API".into(),
    };
    tracing::warn!("{origin}: pod {} ({}, {kind}) cannot be restored: {e}; dropped", p.pod.name, p.pod.ip);
    if let Some(c) = &p.cni {
        match d.ipam.release(&c.container_id, p.pod.ifname()) {
            Ok(Some(l)) => tracing::warn!("{origin}: pod {}: its address lease {} is released", p.pod.name, l.ip),
            Ok(None) => {}
            Err(r) => tracing::error!("{origin}: pod {}: releasing {}: {r}", p.pod.name, p.pod.ip),
        }
    }
    if let Err(r) =
        tokio::task::block_in_place(|| crate::control::pods::delete_tap(&p.pod.netns_path(), p.pod.ifname()))
    {
        tracing::warn!("{origin}: pod {}: removing what is left of its {}: {r}", p.pod.name, p.pod.ifname());
    }
    d.node.start.pods_dropped += 1;
}

/// Starts one worker per VXLAN receive socket, each with its queue of the host port.
fn run_workers(d: &mut Daemon, fds: WorkerFds) -> Result<(), RunError> {
    let dp = &d.cfg.dataplane;
    let tech = dp.techniques();
    let wcfg = WorkerConfig {
        batch: dp.batch,
        udp_gso: tech.udp_gso,
        gro: tech.gro,
        busy_poll_us: dp.busy_poll_us,
        sg_gso: dp.sg_gso,
        zerocopy: dp.zerocopy,
        relay: dp.relay,
        vxlan_port: d.node.info().vxlan_port,
        host_mtu: d.node.info().mtu,
    };
    let tx = Arc::new(fds.tx);
    let zc = if dp.zerocopy {
        for s in tx.iter() {
            crate::io::zerocopy::enable(std::os::fd::AsRawFd::as_raw_fd(s)).map_err(|e| {
                RunError::Kernel(std::io::Error::new(e.kind(), format!("SO_ZEROCOPY on a VXLAN socket: {e}")))
            })?;
        }
        Some(Arc::new(crate::io::zerocopy::Completions::new(tx.len())))
    } else {
        None
    };
    d.plane.start(wcfg, TxPool { sockets: tx, zc }, fds.tx_ports, fds.rx, fds.host).map_err(RunError::Kernel)
}

/// A seed for the flow hash, from the kernel's randomness.
pub fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        return clock::now().0 ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(b)
}
