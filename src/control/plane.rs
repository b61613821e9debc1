//! The running dataplane as the daemon holds it: the shared [`Dataplane`] (tables,
//! conntrack, counters), the worker threads with their queues, and what a snapshot of
//! the tables is built from besides the other books (the generation, the hash seed, the
//! VXLAN source ports). Publishing a snapshot and moving a port's queues in and out of
//! the workers happen here and nowhere else.
//!
//! Heads up: a port added before the workers start (a hand-over attaches the pods first,
//! so that they are in the tables before the first frame is read) waits in `pending`
//! and goes to the workers when they start.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use super::config::Config;
use crate::core::nat::service::{ServiceSpec, ServiceTable};
use crate::core::policy::PolicyTable;
use crate::core::tables::{NodeInfo, Peer, PodPort, Tables};
use crate::core::{Counter, Dataplane, PortId};
use crate::io::observe::Observers;
use crate::io::stats::{self, PortStats};
use crate::io::worker::{self, Control, Released, TxPool, WorkerConfig, WorkerHandle};
use crate::wire::ipv4::PROTO_UDP;

/// Counter blocks beyond the workers' own: one for the API task (dry-run traces,
/// endpoint flushes) and one for the maintenance thread, so that every block keeps its
/// single writer (see `core::counters`).
const CONTROL_BLOCKS: usize = 2;

/// How long a worker has to let go of a removed port's queue.
pub const RELEASE_WAIT: Duration = Duration::from_secs(5);

pub struct Plane {
    dp: Arc<Dataplane>,
    obs: Arc<Observers>,
    stats: Arc<PortStats>,
    workers: Vec<WorkerHandle>,
    /// The workers' configuration and VXLAN source sockets, once started.
    io: Option<(WorkerConfig, TxPool)>,
    /// Ports added before the workers start, with one queue per worker.
    pending: Vec<(PortId, Vec<OwnedFd>)>,
    tx_ports: Vec<u16>,
    generation: u64,
    /// The flow hash's seed: the endpoint a flow picks, kept across restarts.
    seed: u64,
    /// This node's compiled network policy, published with the rest.
    policy: PolicyTable,
}

impl Plane {
    /// An empty dataplane for `workers` worker threads (nothing runs yet).
    pub fn new(cfg: &Config, node: &NodeInfo, workers: usize, seed: u64) -> Plane {
        let mut ct = crate::core::nat::conntrack::Conntrack::new(cfg.conntrack.max, cfg.conntrack.timeouts);
        ct.udp_rule = cfg.conntrack.udp_stream_rule;
        let dp = Dataplane::new(
            Tables::build(0, node.clone(), 0, &[], &[], ServiceTable::default()),
            ct,
            workers + CONTROL_BLOCKS,
        )
        .with_tap_offloads(cfg.dataplane.techniques().tap_offloads);
        Plane {
            dp: Arc::new(dp),
            obs: Arc::new(Observers::new(node.name.clone())),
            stats: Arc::new(PortStats::new(workers)),
            workers: Vec::new(),
            io: None,
            pending: Vec::new(),
            tx_ports: Vec::new(),
            generation: 0,
            seed,
            policy: PolicyTable::default(),
        }
    }

    pub fn dp(&self) -> &Arc<Dataplane> {
        &self.dp
    }

    pub fn observers(&self) -> &Arc<Observers> {
        &self.obs
    }

    pub fn stats(&self) -> &Arc<PortStats> {
        &self.stats
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The seed of a previous ucanal (its flows keep their endpoints).
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    pub fn tx_ports(&self) -> &[u16] {
        &self.tx_ports
    }

    /// Running worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The counter block the API task writes to.
    pub fn api_block(&self) -> usize {
        self.dp.counters.workers() - CONTROL_BLOCKS
    }

    /// The counter block of the maintenance thread.
    pub fn maintenance_block(&self) -> usize {
        self.dp.counters.workers() - 1
    }

    /// The policy the next snapshot carries.
    pub fn set_policy(&mut self, policy: PolicyTable) {
        self.policy = policy;
    }

    /// Publishes a new snapshot of the tables: a clone of the service table is a
    /// reference per shard, not a copy of the services.
    pub fn publish(&mut self, node: &NodeInfo, pods: &[PodPort], peers: &[Peer], services: ServiceTable) {
        self.generation += 1;
        let mut t = Tables::build(self.generation, node.clone(), self.seed, pods, peers, services);
        t.vxlan_source_ports = self.tx_ports.clone();
        t.policy = self.policy.clone();
        self.dp.publish(t);
    }

    /// Starts one worker per VXLAN receive socket, each with its queue of the host port
    /// and of every port added so far.
    pub fn start(
        &mut self,
        wcfg: WorkerConfig,
        pool: TxPool,
        tx_ports: Vec<u16>,
        rx: Vec<UdpSocket>,
        host: Vec<OwnedFd>,
    ) -> io::Result<()> {
        self.io = Some((wcfg, pool));
        self.tx_ports = tx_ports;
        let mut ports: Vec<Vec<(PortId, OwnedFd)>> = host.into_iter().map(|fd| vec![(PortId::HOST, fd)]).collect();
        for (port, queues) in std::mem::take(&mut self.pending) {
            for (w, fd) in ports.iter_mut().zip(queues) {
                w.push((port, fd));
            }
        }
        self.spawn(rx, ports)
    }

    /// The VXLAN source sockets' ports, before the workers start (a hand-over's).
    pub fn set_tx_ports(&mut self, tx_ports: Vec<u16>) {
        self.tx_ports = tx_ports;
    }

    fn spawn(&mut self, rx: Vec<UdpSocket>, ports: Vec<Vec<(PortId, OwnedFd)>>) -> io::Result<()> {
        let Some((wcfg, pool)) = self.io.clone() else { return Err(io::Error::other("no worker configuration")) };
        for (i, (rx, ports)) in rx.into_iter().zip(ports).enumerate() {
            let w = worker::spawn(i, self.dp.clone(), rx, pool.clone(), self.obs.clone(), self.stats.clone(), wcfg)
                .map_err(|e| io::Error::new(e.kind(), format!("starting worker {i}: {e}")))?;
            for (port, fd) in ports {
                w.send(Control::AddPort { port, fd });
            }
            self.workers.push(w);
        }
        Ok(())
    }

    /// Gives each worker its queue of a new port (its counters start at zero).
    pub fn add_port(&mut self, port: PortId, queues: Vec<OwnedFd>) {
        self.stats.reset(stats::slot(port));
        if self.workers.is_empty() {
            self.pending.push((port, queues));
            return;
        }
        for (w, fd) in self.workers.iter().zip(queues) {
            w.send(Control::AddPort { port, fd });
        }
    }

    /// Takes a port's queues back from every worker (the TAP goes with its last
    /// queue); `Err` with the workers that did not let go in time.
    pub fn remove_port(&mut self, port: PortId) -> Result<(), Vec<usize>> {
        let mut acks = Vec::new();
        for w in &self.workers {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            w.send(Control::RemovePort { port, done: tx });
            acks.push(rx);
        }
        let late: Vec<usize> = tokio::task::block_in_place(|| {
            acks.into_iter()
                .enumerate()
                .filter(|(_, a)| a.recv_timeout(RELEASE_WAIT).is_err())
                .map(|(i, _)| i)
                .collect()
        });
        if late.is_empty() { Ok(()) } else { Err(late) }
    }

    /// Stops every worker (their queues close).
    pub fn stop(&mut self) {
        for w in &mut self.workers {
            w.stop();
        }
        self.workers.clear();
    }

    /// Stops every worker and takes their fds back (a hand-over).
    pub fn release(&mut self) -> Vec<Released> {
        let r = self.workers.iter_mut().filter_map(|w| w.release()).collect();
        self.workers.clear();
        r
    }

    /// Starts the workers again on the fds they gave back (a failed hand-over).
    pub fn resume(&mut self, released: Vec<Released>) -> io::Result<()> {
        let (rx, ports): (Vec<_>, Vec<_>) = released
            .into_iter()
            .map(|r| {
                let ports: Vec<(PortId, OwnedFd)> =
                    r.ports.into_iter().enumerate().filter_map(|(i, f)| f.map(|f| (PortId(i as u32), f))).collect();
                (r.rx, ports)
            })
            .unzip();
        self.spawn(rx, ports)
    }

    /// The VXLAN source sockets (to hand over).
    pub fn tx_sockets(&self) -> Arc<Vec<UdpSocket>> {
        self.io.as_ref().map(|w| w.1.sockets.clone()).unwrap_or_default()
    }

    /// Drops every flow to or from `ip` (a pod that went: a later pod with its address
    /// must not inherit them); how many.
    pub fn flush_address(&self, ip: Ipv4Addr) -> usize {
        let n = self
            .dp
            .conntrack
            .remove_where(|e| e.original.src == ip || e.original.dst == ip || e.reply.src == ip || e.reply.dst == ip);
        self.dp.counters.add(self.api_block(), Counter::CtFlushedPod, n as u64);
        n
    }

    /// UDP flows to removed endpoints are dropped from conntrack at once, so their
    /// next datagram picks a remaining endpoint (kube-proxy's `conntrack -D`, without
    /// the window in which the client black-holes). TCP flows are left to fail.
    pub fn flush_endpoints(&self, s: &ServiceSpec, removed: &[SocketAddrV4]) {
        if removed.is_empty() || s.protocol.number() != PROTO_UDP {
            return;
        }
        let n = self.dp.conntrack.remove_where(|e| {
            e.original.proto == PROTO_UDP
                && e.dnat_target().is_some_and(|t| removed.contains(&t))
                && (e.original.dst == s.cluster_ip
                    || Some(e.original.dport) == s.node_port
                    || s.external_ips.contains(&e.original.dst)
                    || s.load_balancer_ips.contains(&e.original.dst))
        });
        self.dp.counters.add(self.api_block(), Counter::CtFlushedEndpoint, n as u64);
        tracing::info!(service = %s.name, flows = n, "flushed UDP flows of removed endpoints");
    }

    /// Forgets the session-affinity records of a service port (it went, or lost its
    /// affinity): kube-proxy deletes those affinity sets at once.
    pub fn forget_affinity(&self, s: &ServiceSpec) -> usize {
        self.dp.affinity.forget_service(crate::core::nat::service::spec_key(s))
    }
}
