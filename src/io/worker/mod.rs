//! Worker threads: one per core, each owning one queue of every TAP and its own
//! `SO_REUSEPORT` VXLAN socket, so no two workers share a receive path. A worker
//! waits in epoll, drains up to a batch from a ready fd, hands each frame to the core
//! and executes the returned action. VXLAN sends of a batch leave in one `sendmmsg`
//! per source socket (with offloads, as UDP GSO super-datagrams).
//!
//! Tokio is not on this path: it would add a task wake-up per readiness event and gain
//! nothing here; the control plane runs on tokio and talks to workers through a
//! channel plus an eventfd.
//!
//! This file is the receive half and the thread's life; `tx` the egress half.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc;

use super::clock;
use super::observe::{Observers, Where};
use super::stats::{self, PortStats};
use super::sys::{self, Received, RecvBatch};
use super::zerocopy::Completions;
use crate::core::relay::{Relay, Relayed};
use crate::core::tables::Tables;
use crate::core::{Action, Dataplane, DropReason, HEADROOM, Offload, Packet, PortId, RunMemo};
use crate::wire::vnet::{self, VnetHdr};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

mod config;
mod tx;

pub use config::{FRAME_MAX, WorkerConfig};
use tx::{GRO_RUNS, Out, flush};

const BUF_LEN: usize = HEADROOM + FRAME_MAX;

const TOKEN_WAKE: u64 = 0;
const TOKEN_UDP: u64 = 1;
const TOKEN_PORT0: u64 = 2;

/// The VXLAN source sockets, shared by the workers.
#[derive(Clone)]
pub struct TxPool {
    pub sockets: Arc<Vec<UdpSocket>>,
    /// Completions of zero-copy sends (`WorkerConfig::zerocopy`).
    pub zc: Option<Arc<Completions>>,
}

/// Messages from the control plane.
pub enum Control {
    /// A new port: this worker's queue of its TAP.
    AddPort {
        port: PortId,
        fd: OwnedFd,
    },
    /// Forget a port; `done` is signalled once the worker no longer uses the fd.
    RemovePort {
        port: PortId,
        done: mpsc::SyncSender<()>,
    },
    Stop,
}

pub struct WorkerHandle {
    pub id: usize,
    ctl: mpsc::Sender<Control>,
    wake: Arc<EventFd>,
    join: Option<std::thread::JoinHandle<Released>>,
}

/// What a stopped worker gives back: its VXLAN socket and its queue of every port
/// (indexed by port id), still open, for a successor process (see the daemon's
/// hand-over). Frames waiting in them stay queued in the kernel.
pub struct Released {
    pub rx: UdpSocket,
    pub ports: Vec<Option<OwnedFd>>,
}

impl WorkerHandle {
    pub fn send(&self, c: Control) {
        if self.ctl.send(c).is_ok() {
            // A full counter (EAGAIN) still wakes the worker.
            let _ = self.wake.write(1);
        }
    }
    pub fn stop(&mut self) {
        let _ = self.release();
    }

    /// Stops the worker and returns its fds instead of closing them (None if it
    /// had already stopped, or its thread panicked).
    pub fn release(&mut self) -> Option<Released> {
        self.send(Control::Stop);
        self.join.take().and_then(|j| j.join().ok())
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn spawn(
    id: usize,
    dp: Arc<Dataplane>,
    rx: UdpSocket,
    tx: TxPool,
    obs: Arc<Observers>,
    stats: Arc<PortStats>,
    cfg: WorkerConfig,
) -> io::Result<WorkerHandle> {
    let (ctl, ctl_rx) = mpsc::channel();
    let wake = Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?);
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(&*wake, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_WAKE))?;
    epoll.add(&rx, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_UDP))?;
    let w = wake.clone();
    let join = std::thread::Builder::new().name(format!("ucanal-w{id}")).spawn(move || {
        let mut worker = Worker::new(Shell { epoll, wake: w, ctl: ctl_rx, rx }, id, dp, tx, obs, stats, cfg);
        worker.run();
        Released { rx: worker.rx, ports: std::mem::take(&mut worker.out.ports) }
    })?;
    Ok(WorkerHandle { id, ctl, wake, join: Some(join) })
}

/// The worker's own fds and control channel.
struct Shell {
    epoll: Epoll,
    wake: Arc<EventFd>,
    ctl: mpsc::Receiver<Control>,
    rx: UdpSocket,
}

struct Worker {
    epoll: Epoll,
    wake: Arc<EventFd>,
    ctl: mpsc::Receiver<Control>,
    rx: UdpSocket,
    bufs: Vec<Box<[u8]>>,
    recv: RecvBatch,
    received: Vec<Received>,
    /// Where the core writes a reassembled datagram (`Packet::with_spare`).
    spare: Box<[u8]>,
    /// The relay of the current tables and their generation (`WorkerConfig::relay`).
    relay: Option<(u64, Option<Relay>)>,
    /// The decision of the run of VXLAN frames being received (`Dataplane::handle_vxlan_run`).
    memo: RunMemo,
    obs: Arc<Observers>,
    out: Out,
}

impl Worker {
    fn new(
        sh: Shell,
        id: usize,
        dp: Arc<Dataplane>,
        tx: TxPool,
        obs: Arc<Observers>,
        stats: Arc<PortStats>,
        cfg: WorkerConfig,
    ) -> Worker {
        let batch = cfg.batch.max(1);
        Worker {
            epoll: sh.epoll,
            wake: sh.wake,
            ctl: sh.ctl,
            rx: sh.rx,
            bufs: (0..batch).map(|_| vec![0u8; BUF_LEN].into_boxed_slice()).collect(),
            recv: RecvBatch::new(batch),
            received: Vec::with_capacity(batch),
            spare: vec![0u8; BUF_LEN].into_boxed_slice(),
            relay: None,
            memo: RunMemo::default(),
            obs,
            out: Out {
                id,
                dp,
                ports: Vec::new(),
                tx: tx.sockets,
                zc: tx.zc,
                pending: Vec::with_capacity(batch),
                cfg,
                stats,
                seg: Vec::new(),
                seg_used: 0,
                gro: Vec::with_capacity(GRO_RUNS),
                gro_bufs: Vec::new(),
                gro_free: Vec::new(),
            },
        }
    }

    fn run(&mut self) {
        let mut events = vec![EpollEvent::empty(); 64];
        let budget = u64::from(self.out.cfg.busy_poll_us) * 1000;
        // When the last event was handled (monotonic ns); polling goes on until `budget` after it.
        let mut last_busy = 0u64;
        loop {
            let polling = budget > 0 && clock::now().0.saturating_sub(last_busy) < budget;
            let timeout = if polling { EpollTimeout::ZERO } else { EpollTimeout::from(1000u16) };
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => {
                    tracing::error!(worker = self.out.id, "epoll_wait: {e}");
                    return;
                }
            };
            if n == 0 {
                if polling {
                    std::hint::spin_loop();
                }
                continue;
            }
            if budget > 0 {
                last_busy = clock::now().0;
            }
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_WAKE => {
                        // Non-blocking: a counter already read (EAGAIN) is fine.
                        let _ = self.wake.read();
                        if !self.control() {
                            return;
                        }
                    }
                    TOKEN_UDP => self.udp_rx(),
                    t => self.tap_rx(PortId((t - TOKEN_PORT0) as u32)),
                }
            }
        }
    }

    /// Applies control messages; false on Stop.
    fn control(&mut self) -> bool {
        while let Ok(c) = self.ctl.try_recv() {
            match c {
                Control::AddPort { port, fd } => {
                    let i = port.0 as usize;
                    let ev = EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_PORT0 + u64::from(port.0));
                    if let Err(e) = self.epoll.add(&fd, ev) {
                        tracing::error!(worker = self.out.id, port = port.0, "epoll add: {e}");
                    }
                    if self.out.ports.len() <= i {
                        self.out.ports.resize_with(i + 1, || None);
                    }
                    self.out.ports[i] = Some(fd);
                }
                Control::RemovePort { port, done } => {
                    if let Some(fd) = self.out.ports.get_mut(port.0 as usize).and_then(Option::take) {
                        let _ = self.epoll.delete(&fd);
                    }
                    let _ = done.send(());
                }
                Control::Stop => return false,
            }
        }
        true
    }

    fn tap_rx(&mut self, port: PortId) {
        let Some(fd) = self.out.ports.get(port.0 as usize).and_then(|f| f.as_ref()).map(|f| f.as_raw_fd()) else {
            return;
        };
        let t = self.out.dp.tables();
        let now = clock::now();
        let observing = self.obs.active();
        let relay = self.relay(&t);
        for slot in 0..self.bufs.len() {
            let buf = &mut self.bufs[slot];
            let n = match sys::read(fd, &mut buf[HEADROOM - vnet::HEADER_LEN..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(worker = self.out.id, port = port.0, "TAP read: {e}");
                    break;
                }
            };
            if n < vnet::HEADER_LEN {
                continue;
            }
            self.out.stats.rx(self.out.id, stats::slot(port), n - vnet::HEADER_LEN);
            let vh = VnetHdr::parse(&buf[HEADROOM - vnet::HEADER_LEN..HEADROOM]).unwrap_or_default();
            let mut pkt = Packet::new(buf, HEADROOM, HEADROOM - vnet::HEADER_LEN + n).with_spare(&mut self.spare);
            pkt.offload = offload_from(&vh);
            if pkt.offload.gso_size > 0 && vh.gso_kind() != vnet::GSO_TCPV4 {
                self.out.dp.counters.drop(self.out.id, DropReason::GsoUnsupported);
                continue;
            }
            if let Some(Relayed::Done(a)) = relay.map(|r| r.from_pod(&mut pkt)) {
                self.out.execute(slot, a, &pkt);
                continue;
            }
            let mut obs =
                if observing { self.obs.before(&t, Where::Port(port), pkt.data()) } else { Default::default() };
            let a = self.out.dp.handle_port(self.out.id, &t, port, &mut pkt, now, &mut obs.trace);
            if observing {
                Self::observe_after_with(&self.obs, &t, obs, &a, &pkt);
            }
            self.out.execute(slot, a, &pkt);
        }
        flush(&self.bufs, &mut self.out);
    }

    fn udp_rx(&mut self) {
        let t = self.out.dp.tables();
        let now = clock::now();
        if let Err(e) = self.recv.recv(self.rx.as_raw_fd(), &mut self.bufs, HEADROOM, &mut self.received) {
            tracing::warn!(worker = self.out.id, "recvmmsg: {e}");
            return;
        }
        self.handle_received(&t, now);
        flush(&self.bufs, &mut self.out);
    }

    /// The datagrams of `received` (in `bufs`) through the core; GRO runs written out,
    /// VXLAN sends left pending for `flush`.
    fn handle_received(&mut self, t: &Tables, now: crate::core::Now) {
        let observing = self.obs.active();
        let relay = self.relay(t);
        self.memo.clear();
        for (slot, r) in self.received.iter().enumerate() {
            self.out.stats.rx(self.out.id, stats::VXLAN, r.len);
            let seg = if r.gro_size > 0 { usize::from(r.gro_size) } else { r.len };
            // With UDP GRO the kernel hands several datagrams of one flow back to back;
            // each is a VXLAN frame of its own. A zero-length datagram goes through once
            // too, so the core counts it (vxlan_malformed) instead of it vanishing.
            let mut off = 0;
            loop {
                let len = seg.min(r.len - off);
                let buf = &mut self.bufs[slot];
                // The frames before this one may still be held (GRO run, pending send).
                let floor = if off == 0 { 0 } else { HEADROOM + off };
                let mut pkt = Packet::new(buf, HEADROOM + off, HEADROOM + off + len)
                    .with_floor(floor)
                    .with_spare(&mut self.spare);
                let a = match relay.map(|r| r.from_vxlan(&mut pkt)) {
                    Some(Relayed::Done(a)) => a,
                    _ => {
                        let w = Where::Vxlan { peer: r.from, local_port: self.out.cfg.vxlan_port, inbound: true };
                        let mut obs = if observing { self.obs.before(t, w, pkt.data()) } else { Default::default() };
                        let memo = &mut self.memo;
                        let a =
                            self.out.dp.handle_vxlan_run(self.out.id, t, r.from, &mut pkt, now, &mut obs.trace, memo);
                        if observing {
                            Self::observe_after_with(&self.obs, t, obs, &a, &pkt);
                        }
                        a
                    }
                };
                match a {
                    Action::ToPort(port)
                        if self.out.cfg.gro
                            && pkt.offload.gso_size == 0
                            && pkt.offload.frag_size == 0
                            && !pkt.in_spare() =>
                    {
                        let (start, len, partial) = (pkt.start(), pkt.len(), pkt.offload.csum_partial);
                        self.out.gro_push(&self.bufs, port, (slot, start, len), partial);
                    }
                    Action::ToPort(port) if self.out.cfg.gro => {
                        // One that cannot join a run (a peer's super-packet, a reassembled
                        // datagram, a reply in the spare) leaves after its flow's open run.
                        let (start, end, offload) = (pkt.start(), pkt.start() + pkt.len(), pkt.offload);
                        let frame = if pkt.in_spare() { &self.spare[start..end] } else { &self.bufs[slot][start..end] };
                        self.out.gro_flush_flow(&self.bufs, port, frame);
                        self.out.write_to_port(port, frame, &offload);
                    }
                    _ => self.out.execute(slot, a, &pkt),
                }
                off += len;
                if len == 0 || off >= r.len {
                    break;
                }
            }
        }
        self.out.gro_flush_all(&self.bufs);
    }
}

impl Worker {
    /// The relay for these tables when the worker runs as one (built once per snapshot).
    fn relay(&mut self, t: &Tables) -> Option<Relay> {
        if !self.out.cfg.relay {
            return None;
        }
        match self.relay {
            Some((g, r)) if g == t.generation => r,
            _ => {
                let r = Relay::from_tables(t)
                    .inspect_err(|e| tracing::warn!(worker = self.out.id, "relay off for this snapshot: {e}"))
                    .ok();
                self.relay = Some((t.generation, r));
                r
            }
        }
    }

    fn observe_after_with(o: &Observers, t: &Tables, obs: super::observe::Observation, a: &Action, pkt: &Packet) {
        let src_port = match a {
            Action::ToVtep { flow_hash, .. } => t.vxlan_source_port(*flow_hash),
            _ => 0,
        };
        o.after(t, obs, a, pkt.data(), pkt.offload.gso_size, src_port);
    }
}

fn offload_from(vh: &VnetHdr) -> Offload {
    Offload {
        csum_partial: vh.needs_csum(),
        gso_size: if vh.gso_kind() != vnet::GSO_NONE { vh.gso_size } else { 0 },
        frag_size: 0,
    }
}

#[cfg(test)]
mod tests;
