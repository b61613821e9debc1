//! The daemon's state: a composition of books, each owning its data and invariants —
//! the node's kernel side ([`NodeBook`]), the running dataplane ([`Plane`]), the pods
//! ([`PodBook`]), the services ([`ServiceBook`]), the Kubernetes objects
//! ([`KubeBook`]), cluster membership, the CNI address leases ([`Ipam`]) and the state
//! file of `--keep-on-exit` ([`Persist`]) — with the read-only config and where the
//! daemon is in its life ([`Lifecycle`]). A request changes books through their
//! methods; `Daemon`'s own methods only compose them (publish a snapshot, save what
//! changed, tear everything down).

mod attach;
mod objects;
mod pods;
mod policy;
mod services;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::cluster::membership::Membership;
use super::config::Config;
use super::ipam::Ipam;
use super::kube::KubeBook;
use super::node::NodeBook;
use super::persist::journal::Op;
use super::persist::statefile::Source;
use super::persist::{Persist, State};
use super::plane::Plane;
use super::pods::PodBook;
use super::policy::PolicyBook;
use super::services::ServiceBook;
use crate::core::tables::Peer;

/// What a start takes over from the ucanal before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// Nothing: every kernel object is created here.
    Cold,
    /// A previous ucanal's state and kernel objects (rules, host port, pods' TAPs), left
    /// by `--keep-on-exit` or by a crash: adopted, not created anew.
    Resumed,
    /// A running predecessor's live fds (TAP queues, sockets), handed over.
    HandedOver,
}

impl StartMode {
    /// As `show node` names it.
    pub fn name(self) -> &'static str {
        match self {
            StartMode::Cold => "cold",
            StartMode::Resumed => "resumed",
            StartMode::HandedOver => "handed_over",
        }
    }
}

/// Where the daemon is in its life: one state, instead of flags that must agree.
pub enum Lifecycle {
    /// Attaching the node and the pods it starts with. With `from` other than `Cold`
    /// the pods' TAPs exist and are attached to; `handed` holds the queues a running
    /// predecessor handed over, by pod name.
    Starting { from: StartMode, handed: HashMap<String, Vec<OwnedFd>> },
    /// Up on the fds of a predecessor that still owns the node until it is told we
    /// run: a failure now must leave its rules, TAPs and files alone.
    TakingOver,
    /// Up, and the node is ours.
    Running { from: StartMode },
}

impl Lifecycle {
    /// A pod's TAP may exist already (a previous ucanal's): attach to it.
    pub fn adopting(&self) -> bool {
        matches!(self, Lifecycle::Starting { from: StartMode::Resumed | StartMode::HandedOver, .. })
    }

    /// A predecessor still owns the node.
    pub fn predecessor_owns(&self) -> bool {
        matches!(self, Lifecycle::Starting { from: StartMode::HandedOver, .. } | Lifecycle::TakingOver)
    }

    /// The queues handed over for pod `name`, if there are `queues` of them.
    pub fn take_handed(&mut self, name: &str, queues: usize) -> Option<Vec<OwnedFd>> {
        match self {
            Lifecycle::Starting { handed, .. } => handed.remove(name).filter(|f| f.len() == queues),
            _ => None,
        }
    }

    /// What the start took over.
    pub fn from(&self) -> StartMode {
        match self {
            Lifecycle::Starting { from, .. } | Lifecycle::Running { from } => *from,
            Lifecycle::TakingOver => StartMode::HandedOver,
        }
    }
}

/// One node's daemon: the books, the config, the lifecycle.
pub struct Daemon {
    pub(super) cfg: Arc<Config>,
    pub(super) life: Lifecycle,
    pub(super) node: NodeBook,
    pub(super) plane: Plane,
    pub(super) pods: PodBook,
    pub(super) services: ServiceBook,
    pub(super) kube: KubeBook,
    /// Membership of a cluster on etcd (`[cluster]`), once joined.
    pub(super) cluster: Option<Membership>,
    /// CNI attachments' addresses (ucanal's default IPAM).
    pub(super) ipam: Ipam,
    /// With `--keep-on-exit`: the state file and the conntrack checkpoint.
    pub(super) persist: Option<Persist>,
}

impl Daemon {
    /// A daemon of empty books, starting (see `daemon::start`).
    pub(super) fn new(
        cfg: Arc<Config>,
        from: StartMode,
        mut node: NodeBook,
        plane: Plane,
        services: ServiceBook,
        ipam: Ipam,
        persist: Option<Persist>,
    ) -> Daemon {
        node.start.mode = from.name().into();
        let info = node.info();
        let policy = PolicyBook::new(&info.name, info.pod_cidr);
        Daemon {
            cfg,
            life: Lifecycle::Starting { from, handed: HashMap::new() },
            node,
            plane,
            pods: PodBook::default(),
            services,
            kube: KubeBook::new(policy),
            cluster: None,
            ipam,
            persist,
        }
    }

    /// The start is done: the node is ours, or still the predecessor's until it hears
    /// we run (`took_over`).
    pub(super) fn started(&mut self) {
        self.node.start.mode = self.life.from().name().into();
        self.life = match self.life.from() {
            StartMode::HandedOver => Lifecycle::TakingOver,
            from => Lifecycle::Running { from },
        };
    }

    /// The predecessor was told we run: the node is ours.
    pub(super) fn took_over(&mut self) {
        self.life = Lifecycle::Running { from: StartMode::HandedOver };
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    pub fn plane(&self) -> &Plane {
        &self.plane
    }

    /// Serves the health-check ports of every service (at start; later the service
    /// changes keep them).
    pub(crate) fn serve_health_checks(&mut self) {
        let node_ip = self.node.info().node_ip;
        for s in self.services.specs() {
            self.services.health.add(&s, node_ip, self.plane.dp());
        }
    }

    /// Publishes a new snapshot of the tables: the pods, the peers and the services now.
    pub(super) fn publish(&mut self) {
        let peers = self.peers();
        self.kube.policy.set_attached(self.pods.spec_refs());
        self.plane.set_policy(self.kube.policy.table());
        self.plane.publish(self.node.info(), &self.pods.ports(), &peers, self.services.table().clone());
        self.recheck_flows();
    }

    /// The peers the tables are built from: the config's, then the leases' that do not
    /// clash with one of them (the config wins; a clash is logged).
    fn peers(&self) -> Vec<Peer> {
        let mut out = self.cfg.peers.clone();
        if let Some(m) = &self.cluster {
            out.extend(m.lease_peers(&self.cfg.peers));
        }
        out
    }

    /// Notes a change for the state journal (nothing without `--keep-on-exit`).
    pub(super) fn record(&mut self, op: impl FnOnce() -> Op) {
        if let Some(p) = &mut self.persist {
            p.record(op());
        }
    }

    /// Writes what changed since the last call to the state journal; called after
    /// every change.
    pub(super) fn save_state(&mut self) {
        let Some(mut p) = self.persist.take() else { return };
        p.flush(|| self.state_source());
        self.persist = Some(p);
    }

    /// Writes the whole state file now, with a fresh journal (at start).
    pub(super) fn snapshot_state(&mut self) {
        let Some(mut p) = self.persist.take() else { return };
        p.snapshot(self.state_source());
        self.persist = Some(p);
    }

    /// Flushes the journal and waits for a compaction, before the files are handed on.
    pub(super) fn settle_state(&mut self) {
        self.save_state();
        if let Some(p) = &mut self.persist {
            p.finish();
        }
    }

    fn state_source(&self) -> Source {
        Source {
            seed: self.plane.seed(),
            pods: self.pods.saved(),
            services: self.services.table().clone(),
            restore_sysctls: self.node.sysctl_names(),
        }
    }

    /// What the next ucanal needs besides the kernel objects and conntrack (a hand-over).
    pub(super) fn state(&self) -> State {
        State {
            seed: self.plane.seed(),
            pods: self.pods.saved(),
            services: self.services.specs(),
            restore_sysctls: self.node.sysctl_names(),
            seq: self.persist.as_ref().map_or(0, Persist::seq),
            affinity: self.plane.dp().affinity.export(crate::io::clock::now()),
        }
    }

    /// What exists only in this process, not in the config file nor in etcd: the pods
    /// and services a teardown loses (by name).
    fn runtime_only(&self) -> (Vec<String>, Vec<String>) {
        let pods =
            self.pods.iter().map(|p| &p.spec).filter(|p| !self.cfg.pods.contains(p)).map(|p| p.name.clone()).collect();
        let from_etcd = |name: &str| {
            self.kube.shared.is_some()
                && self.kube.store.get(&format!("services/{}", crate::control::kube::service_of(name))).is_some()
        };
        let services = self
            .services
            .specs()
            .into_iter()
            .filter(|s| !self.cfg.services.contains(s) && !from_etcd(&s.name))
            .map(|s| s.name)
            .collect();
        (pods, services)
    }

    /// Stops the workers (closing every TAP queue, so the TAPs disappear), then removes
    /// what ucanal made of the node — unless a predecessor still owns it. Runtime
    /// changes go with it, and the log says which.
    pub async fn teardown(&mut self) {
        self.plane.stop();
        if self.life.predecessor_owns() {
            tracing::info!("the ucanal that was handing over keeps the node: nothing of it is removed");
            return;
        }
        let (pods, services) = self.runtime_only();
        if !pods.is_empty() || !services.is_empty() {
            tracing::warn!(
                "RUNTIME STATE LOST: {} pod(s) [{}] and {} service(s) [{}] added or changed over the API are \
                 removed with this ucanal and will not come back from the config file (only a SIGTERM of \
                 `ucanal run --keep-on-exit` keeps them for the next ucanal)",
                pods.len(),
                pods.join(" "),
                services.len(),
                services.join(" ")
            );
        }
        let pods = self.pods.drain();
        if self.persist.is_some() {
            // Persistent TAPs outlive their queues: remove the pods' TAPs explicitly.
            for p in &pods {
                if let Err(e) = super::pods::delete_tap(&p.spec.netns_path(), p.spec.ifname()) {
                    tracing::error!("cleanup: pod {} {}: {e}", p.spec.name, p.spec.ifname());
                }
            }
        }
        if let Err(e) = self.ipam.remove_if_empty() {
            tracing::error!("cleanup: {e}");
        }
        match &mut self.persist {
            Some(p) => {
                p.finish();
                p.remove_files();
            }
            // A state a `--keep-on-exit` run left: stale once the node is torn down.
            None => super::persist::Paths::for_socket(&self.cfg.api.socket).remove(),
        }
        self.node.teardown(&self.cfg).await;
    }

    /// SIGTERM with `--keep-on-exit`: stops the workers (the persistent TAPs stay, the
    /// rules stay), then writes the final checkpoint and the state.
    pub(super) fn leave_steered(&mut self) {
        self.plane.stop();
        if let Some(p) = &self.persist {
            p.final_checkpoint(self.plane.dp());
        }
        self.settle_state();
    }
}
