//! Worker threads: one per core, each owning one queue of every TAP and its own
//! `SO_REUSEPORT` VXLAN socket, so no two workers share a receive path. A worker
//! waits in epoll, drains up to a batch from a ready fd, hands each frame to the core
//! and executes the returned action. VXLAN sends of a batch leave in one `sendmmsg`
//! per source socket (with offloads, as UDP GSO super-datagrams).
//!
//! Tokio is not on this path: it would add a task wake-up per readiness event and gain
//! nothing here; the control plane runs on tokio and talks to workers through a
//! channel plus an eventfd.

use std::io;
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc;

use super::clock;
use super::observe::{Observers, Where};
use super::stats::{self, PortStats};
use super::sys::{self, Datagram, Parts, Received, RecvBatch};
use super::zerocopy::Completions;
use crate::core::frag::split;
use crate::core::relay::{Relay, Relayed};
use crate::core::tables::Tables;
use crate::core::{Action, Counter, Dataplane, DropReason, HEADROOM, Offload, Packet, PortId, vxlan};
use crate::core::{gro, gso};
use crate::wire::ethernet;
use crate::wire::ipv4::{Ipv4Packet, PROTO_UDP};
use crate::wire::tcp::{self, TcpPacket};
use crate::wire::udp;
use crate::wire::vnet::{self, VnetHdr};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// Largest frame a TAP hands over with TSO (64 KB) plus headers.
pub const FRAME_MAX: usize = 65_536 + 256;
const BUF_LEN: usize = HEADROOM + FRAME_MAX;

/// Limits of one UDP GSO send (`UDP_MAX_SEGMENTS`, IPv4 payload minus the UDP header).
const MAX_GSO_SEGMENTS: usize = 64;
const MAX_UDP_PAYLOAD: usize = 65_507;

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
    join: Option<std::thread::JoinHandle<()>>,
}

impl WorkerHandle {
    pub fn send(&self, c: Control) {
        if self.ctl.send(c).is_ok() {
            // A full counter (EAGAIN) still wakes the worker.
            let _ = self.wake.write(1);
        }
    }
    pub fn stop(&mut self) {
        self.send(Control::Stop);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    pub batch: usize,
    /// Send runs of equal-size VXLAN datagrams with `UDP_SEGMENT`.
    pub udp_gso: bool,
    /// Coalesce TCP segments toward pods into GSO frames (see `core::gro`).
    pub gro: bool,
    /// After handling packets, poll (epoll with no timeout) for this long before
    /// sleeping: a packet that arrives meanwhile costs no wake-up (0 = always sleep).
    pub busy_poll_us: u32,
    /// Segment TCP super-packets scatter-gather (headers in scratch, payload in place)
    /// rather than copying each segment into scratch.
    pub sg_gso: bool,
    /// `MSG_ZEROCOPY` on the VXLAN sends (the sockets have `SO_ZEROCOPY`; see `zerocopy`).
    pub zerocopy: bool,
    /// The pass-through relay instead of the dataplane (`core::relay`), for measuring.
    pub relay: bool,
    pub vxlan_port: u16,
}

/// Open GRO runs per worker (flows coalesced at once within one receive batch).
const GRO_RUNS: usize = 8;

/// A GRO run toward a port: its first frame stays in its receive buffer until a second
/// segment joins; from then on the run is built in a scratch buffer.
struct GroRun {
    port: PortId,
    /// The first frame: (receive slot, start, len).
    first: (usize, usize, usize),
    /// The scratch buffer holding the merged frame, once a segment joined.
    merged: Option<usize>,
    run: gro::Run,
}

/// Where a datagram waiting for the end-of-batch flush lives.
#[derive(Debug, Clone, Copy)]
enum From {
    /// A receive buffer of this batch.
    Buf(usize),
    /// A segmentation scratch buffer.
    Seg(usize),
    /// A scatter-gather UDP GSO run: segment headers in scratch buffer `seg` from
    /// `hdr_at`, payload in place in receive buffer `slot` (`start..start + len`).
    Sg { seg: usize, hdr_at: usize, hdr_len: usize, mss: usize, slot: usize },
}

struct Pending {
    from: From,
    start: usize,
    len: usize,
    to: SocketAddrV4,
    sock: usize,
    gso_size: u16,
}

/// Everything a worker writes to, apart from its buffers (so both can be borrowed).
struct Out {
    id: usize,
    dp: Arc<Dataplane>,
    ports: Vec<Option<OwnedFd>>,
    tx: Arc<Vec<UdpSocket>>,
    /// Completions of zero-copy sends, shared by the workers (`WorkerConfig::zerocopy`).
    zc: Option<Arc<Completions>>,
    pending: Vec<Pending>,
    cfg: WorkerConfig,
    stats: Arc<PortStats>,
    /// Scratch for userspace segmentation (GSO super-packet -> VXLAN datagrams).
    seg: Vec<Box<[u8]>>,
    seg_used: usize,
    /// Open GRO runs of this receive batch and their scratch buffers.
    gro: Vec<GroRun>,
    gro_bufs: Vec<Box<[u8]>>,
    gro_free: Vec<usize>,
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
        let batch = cfg.batch.max(1);
        let mut worker = Worker {
            epoll,
            wake: w,
            ctl: ctl_rx,
            rx,
            bufs: (0..batch).map(|_| vec![0u8; BUF_LEN].into_boxed_slice()).collect(),
            recv: RecvBatch::new(batch),
            received: Vec::with_capacity(batch),
            spare: vec![0u8; BUF_LEN].into_boxed_slice(),
            relay: None,
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
        };
        worker.run();
    })?;
    Ok(WorkerHandle { id, ctl, wake, join: Some(join) })
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
    obs: Arc<Observers>,
    out: Out,
}

impl Worker {
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
        let observing = self.obs.active();
        let relay = self.relay(&t);
        for (slot, r) in self.received.iter().enumerate() {
            self.out.stats.rx(self.out.id, stats::VXLAN, r.len);
            let seg = if r.gro_size > 0 { usize::from(r.gro_size) } else { r.len };
            // With UDP GRO the kernel hands several datagrams of one flow back to back;
            // each is a VXLAN frame of its own.
            let mut off = 0;
            while off < r.len {
                let len = seg.min(r.len - off);
                let buf = &mut self.bufs[slot];
                let mut pkt = Packet::new(buf, HEADROOM + off, HEADROOM + off + len).with_spare(&mut self.spare);
                let a = match relay.map(|r| r.from_vxlan(&mut pkt)) {
                    Some(Relayed::Done(a)) => a,
                    _ => {
                        let w = Where::Vxlan { peer: r.from, local_port: self.out.cfg.vxlan_port, inbound: true };
                        let mut obs = if observing { self.obs.before(&t, w, pkt.data()) } else { Default::default() };
                        let a = self.out.dp.handle_vxlan(self.out.id, &t, r.from, &mut pkt, now, &mut obs.trace);
                        if observing {
                            Self::observe_after_with(&self.obs, &t, obs, &a, &pkt);
                        }
                        a
                    }
                };
                match a {
                    Action::ToPort(port)
                        if self.out.cfg.gro && pkt.offload.gso_size == 0 && pkt.offload.frag_size == 0 =>
                    {
                        let (start, len, partial) = (pkt.start(), pkt.len(), pkt.offload.csum_partial);
                        self.out.gro_push(&self.bufs, port, (slot, start, len), partial);
                    }
                    _ => self.out.execute(slot, a, &pkt),
                }
                off += len;
            }
        }
        self.out.gro_flush_all(&self.bufs);
        flush(&self.bufs, &mut self.out);
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

impl Out {
    fn execute(&mut self, slot: usize, a: Action, pkt: &Packet) {
        // One line per packet only when asked for (--log-level trace); otherwise this is
        // a single check of the global level.
        tracing::trace!(worker = self.id, len = pkt.len(), action = ?a, "packet");
        match a {
            Action::ToPort(port) if pkt.offload.frag_size > 0 => self.write_fragments(port, pkt),
            Action::ToPort(port) => self.write_port(port, pkt),
            Action::ToVtep { remote, flow_hash } => {
                let to = SocketAddrV4::new(remote, self.cfg.vxlan_port);
                let sock = vxlan::source_index(flow_hash, self.tx.len());
                if pkt.offload.gso_size > 0 && self.cfg.sg_gso {
                    self.segment_sg(to, sock, slot, pkt);
                } else if pkt.offload.gso_size > 0 {
                    self.segment(to, sock, pkt);
                } else if pkt.offload.frag_size > 0 {
                    // Always through the scratch buffer: the frame may live in the spare.
                    self.split(to, sock, pkt);
                } else {
                    self.pending.push(Pending {
                        from: From::Buf(slot),
                        start: pkt.start(),
                        len: pkt.len(),
                        to,
                        sock,
                        gso_size: 0,
                    });
                }
            }
            Action::Drop(_) | Action::Held => {}
        }
    }

    /// Writes a datagram to a TAP as fragments of `frag_size` bytes at most, each frame
    /// gathered from its headers and a slice of the datagram (no copy).
    fn write_fragments(&mut self, port: PortId, pkt: &Packet) {
        let Some(fd) = self.ports.get(port.0 as usize).and_then(|f| f.as_ref()).map(|f| f.as_raw_fd()) else {
            self.dp.counters.drop(self.id, DropReason::PortGone);
            return;
        };
        let frame = pkt.data();
        let (eth, ip) = frame.split_at(14.min(frame.len()));
        let vh = [0u8; vnet::HEADER_LEN];
        let mut failed = 0;
        let r = split::for_each_fragment(ip, usize::from(pkt.offload.frag_size), |h, p| {
            match sys::writev(fd, &[&vh, eth, h, p]) {
                Ok(_) => self.stats.tx(self.id, stats::slot(port), eth.len() + h.len() + p.len()),
                Err(_) => failed += 1,
            }
        });
        match r {
            Ok(_) => self.dp.counters.inc(self.id, Counter::Fragmented),
            Err(_) => failed += 1,
        }
        for _ in 0..failed {
            self.dp.counters.drop(self.id, DropReason::TxError);
        }
    }

    fn write_port(&mut self, port: PortId, pkt: &Packet) {
        self.write_frame(port, pkt.data(), &pkt.offload);
    }

    fn write_frame(&self, port: PortId, frame: &[u8], offload: &Offload) {
        let Some(fd) = self.ports.get(port.0 as usize).and_then(|f| f.as_ref()) else {
            self.dp.counters.drop(self.id, DropReason::PortGone);
            return;
        };
        let mut hdr = [0u8; vnet::HEADER_LEN];
        vnet_for(offload, frame).emit(&mut hdr);
        match sys::writev(fd.as_raw_fd(), &[&hdr, frame]) {
            Ok(_) => self.stats.tx(self.id, stats::slot(port), frame.len()),
            Err(e) => {
                self.dp.counters.drop(self.id, DropReason::TxError);
                tracing::debug!(port = port.0, "TAP write: {e}");
            }
        }
    }

    /// A free segmentation scratch buffer.
    fn scratch(&mut self) -> usize {
        if self.seg_used == self.seg.len() {
            self.seg.push(vec![0u8; gso::MAX_SEGMENTED].into_boxed_slice());
        }
        self.seg_used
    }

    /// Segments a TCP super-packet (already NATed and encapsulated) into VXLAN
    /// datagrams of one MSS each, in a scratch buffer, queued as one UDP GSO send.
    fn segment(&mut self, to: SocketAddrV4, sock: usize, pkt: &Packet) {
        let i = self.scratch();
        match gso::segment_vxlan(pkt.data(), pkt.offload.gso_size, &mut self.seg[i]) {
            Ok(out) => {
                self.dp.counters.inc(self.id, Counter::GsoSegmented);
                self.queue_run(i, out.len, out.datagram_len, to, sock);
            }
            Err(_) => self.dp.counters.drop(self.id, DropReason::GsoUnsupported),
        }
    }

    /// Segments a TCP super-packet scatter-gather: only the segments' headers are
    /// written (to a scratch buffer); each datagram is sent as its header plus its slice
    /// of the super-packet where it lies, in UDP GSO runs.
    fn segment_sg(&mut self, to: SocketAddrV4, sock: usize, slot: usize, pkt: &Packet) {
        let i = self.scratch();
        let h = match gso::segment_headers(pkt.data(), pkt.offload.gso_size, &mut self.seg[i]) {
            Ok(h) => h,
            Err(_) => return self.dp.counters.drop(self.id, DropReason::GsoUnsupported),
        };
        self.dp.counters.inc(self.id, Counter::GsoSegmented);
        self.seg_used += 1;
        let per_send = self.per_send(h.datagram_len());
        let base = pkt.start();
        let mut k = 0;
        while k < h.segments {
            let n = per_send.min(h.segments - k);
            let (first, last) = (h.payload(k), h.payload(k + n - 1));
            let gso_size = if n > 1 { h.datagram_len() as u16 } else { 0 };
            self.pending.push(Pending {
                from: From::Sg { seg: i, hdr_at: k * h.hdr_len, hdr_len: h.hdr_len, mss: h.mss, slot },
                start: base + first.start,
                len: last.end - first.start,
                to,
                sock,
                gso_size,
            });
            k += n;
        }
    }

    /// Datagrams per UDP GSO send. A zero-copy send pins each piece of user memory as
    /// a page fragment of one skb, at most `MAX_SKB_FRAGS` (17) of them, or the send
    /// fails with EMSGSIZE: a scatter-gather segment is up to 3 fragments (its header
    /// and a payload slice across a page boundary), so zero-copy runs are 4 datagrams.
    fn per_send(&self, datagram_len: usize) -> usize {
        match (self.cfg.udp_gso, self.zc.is_some()) {
            (false, _) => 1,
            (true, true) => 4,
            (true, false) => (MAX_UDP_PAYLOAD / datagram_len).clamp(1, MAX_GSO_SEGMENTS),
        }
    }

    /// Fragments a datagram (encapsulated) into VXLAN datagrams, one fragment each.
    fn split(&mut self, to: SocketAddrV4, sock: usize, pkt: &Packet) {
        let i = self.scratch();
        match split::split_vxlan(pkt.data(), usize::from(pkt.offload.frag_size), &mut self.seg[i]) {
            Ok(out) => {
                self.dp.counters.inc(self.id, Counter::Fragmented);
                self.queue_run(i, out.len, out.datagram_len, to, sock);
            }
            Err(_) => self.dp.counters.drop(self.id, DropReason::TxError),
        }
    }

    /// Queues scratch buffer `i` (`len` bytes of datagrams of `datagram_len` but the
    /// last) in UDP GSO sends of at most 64 segments and 65507 bytes.
    fn queue_run(&mut self, i: usize, len: usize, datagram_len: usize, to: SocketAddrV4, sock: usize) {
        self.seg_used += 1;
        let per_send = self.per_send(datagram_len);
        let chunk = per_send * datagram_len;
        let mut start = 0;
        while start < len {
            let n = chunk.min(len - start);
            let gso_size = if n > datagram_len { datagram_len as u16 } else { 0 };
            self.pending.push(Pending { from: From::Seg(i), start, len: n, to, sock, gso_size });
            start += n;
        }
    }
}

impl Out {
    /// A decapsulated frame toward `port`, at `bufs[slot][start..start + len]`: joins an
    /// open run of its flow, or flushes that run and starts one, or (not a candidate)
    /// goes out at once after any run of its flow. `partial`: its checksum is partial.
    fn gro_push(&mut self, bufs: &[Box<[u8]>], port: PortId, at: (usize, usize, usize), partial: bool) {
        let (slot, start, len) = at;
        let frame = &bufs[slot][start..start + len];
        let seg = gro::candidate(frame, partial);
        let open = self.gro.iter().position(|r| r.port == port && gro::same_flow(self.run_bytes(bufs, r), frame));
        if let (Some(i), Some(s)) = (open, seg.as_ref()) {
            let r = &self.gro[i];
            if r.run.accepts(self.run_bytes(bufs, r), frame, s) {
                self.gro_join(bufs, i, frame, s);
                return;
            }
        }
        if let Some(i) = open {
            self.gro_flush(bufs, i);
        }
        match seg {
            Some(s) => {
                if self.gro.len() == GRO_RUNS {
                    self.gro_flush(bufs, 0);
                }
                self.gro.push(GroRun { port, first: at, merged: None, run: gro::Run::start(&s) });
            }
            None => self.write_frame(port, frame, &Offload { csum_partial: partial, gso_size: 0, frag_size: 0 }),
        }
    }

    /// The run's frame so far (its first frame until a segment joined).
    fn run_bytes<'b>(&'b self, bufs: &'b [Box<[u8]>], r: &GroRun) -> &'b [u8] {
        match r.merged {
            Some(m) => &self.gro_bufs[m][..r.run.len()],
            None => &bufs[r.first.0][r.first.1..r.first.1 + r.first.2],
        }
    }

    fn gro_join(&mut self, bufs: &[Box<[u8]>], i: usize, frame: &[u8], s: &gro::Segment) {
        let m = match self.gro[i].merged {
            Some(m) => m,
            None => {
                let m = self.gro_free.pop().unwrap_or_else(|| {
                    self.gro_bufs.push(vec![0u8; FRAME_MAX].into_boxed_slice());
                    self.gro_bufs.len() - 1
                });
                let (slot, start, len) = self.gro[i].first;
                self.gro_bufs[m][..len].copy_from_slice(&bufs[slot][start..start + len]);
                self.gro[i].merged = Some(m);
                m
            }
        };
        let r = &mut self.gro[i];
        let end = r.run.len();
        self.gro_bufs[m][end..end + s.payload_len].copy_from_slice(&frame[s.hdr_len..]);
        r.run.joined(s);
        self.dp.counters.inc(self.id, Counter::GroCoalesced);
    }

    /// Writes run `i` to its port and forgets it.
    fn gro_flush(&mut self, bufs: &[Box<[u8]>], i: usize) {
        let r = self.gro.remove(i);
        match r.merged {
            Some(m) => {
                let len = r.run.len();
                let offload = r.run.finish(&mut self.gro_bufs[m][..len]);
                self.write_frame(r.port, &self.gro_bufs[m][..len], &offload);
                self.gro_free.push(m);
            }
            None => {
                let (slot, start, len) = r.first;
                self.write_frame(r.port, &bufs[slot][start..start + len], &r.run.single());
            }
        }
    }

    fn gro_flush_all(&mut self, bufs: &[Box<[u8]>]) {
        while !self.gro.is_empty() {
            self.gro_flush(bufs, 0);
        }
    }
}

/// Sends the batch's VXLAN datagrams: one `sendmmsg` per source socket, straight from
/// the pending list (nothing collected or allocated per batch).
fn flush(bufs: &[Box<[u8]>], out: &mut Out) {
    if out.pending.is_empty() {
        return;
    }
    out.pending.sort_by_key(|p| p.sock);
    let mut i = 0;
    while i < out.pending.len() {
        let sock = out.pending[i].sock;
        let j = i + out.pending[i..].iter().take_while(|p| p.sock == sock).count();
        let batch = &out.pending[i..j];
        let seg = &out.seg;
        let parts = |p: &Pending| match p.from {
            From::Buf(s) => Parts::One(&bufs[s][p.start..p.start + p.len]),
            From::Seg(s) => Parts::One(&seg[s][p.start..p.start + p.len]),
            From::Sg { seg: s, hdr_at, hdr_len, mss, slot } => Parts::Interleaved {
                headers: &seg[s][hdr_at..],
                hdr_len,
                payload: &bufs[slot][p.start..p.start + p.len],
                mss,
            },
        };
        let fd = out.tx[sock].as_raw_fd();
        let flags = if out.zc.is_some() { libc::MSG_ZEROCOPY } else { 0 };
        let sent = sys::send_batch_flags(
            fd,
            batch.iter().map(|p| Datagram { data: parts(p), to: p.to, gso_size: p.gso_size }),
            flags,
        );
        let ok = *sent.as_ref().unwrap_or(&0);
        if let Some(zc) = &out.zc {
            // The buffers are the kernel's until it says it is done with them.
            let d = zc.wait(fd, sock, zc.issued(sock, ok));
            out.dp.counters.add(out.id, Counter::ZerocopyDone, d.done);
            out.dp.counters.add(out.id, Counter::ZerocopyCopied, d.copied);
            if d.timed_out {
                out.dp.counters.inc(out.id, Counter::ZerocopyTimeout);
            }
        }
        for p in &batch[..ok] {
            out.stats.tx(out.id, stats::VXLAN, parts(p).bytes());
        }
        match sent {
            Ok(n) if n == batch.len() => {}
            Ok(n) => {
                for _ in n..batch.len() {
                    out.dp.counters.drop(out.id, DropReason::TxError);
                }
            }
            Err(e) => {
                tracing::debug!(worker = out.id, "sendmmsg: {e}");
                for _ in 0..batch.len() {
                    out.dp.counters.drop(out.id, DropReason::TxError);
                }
            }
        }
        i = j;
    }
    out.pending.clear();
    out.seg_used = 0;
}

/// The virtio-net header for a frame written to a TAP: GSO metadata kept from the
/// ingress TAP, or "checksum partial" for a pod that offloaded its checksum.
fn vnet_for(o: &Offload, frame: &[u8]) -> VnetHdr {
    let mut h = VnetHdr::default();
    if !(o.csum_partial || o.gso_size > 0) {
        return h;
    }
    let Some(Ok(ip)) = frame.get(ethernet::HEADER_LEN..).map(Ipv4Packet::new_checked) else { return h };
    let l4 = ethernet::HEADER_LEN + ip.header_len();
    h.flags = vnet::F_NEEDS_CSUM;
    h.csum_start = l4 as u16;
    h.csum_offset = if ip.protocol() == PROTO_UDP { udp::field::CHECKSUM } else { tcp::field::CHECKSUM } as u16;
    if o.gso_size > 0 {
        let doff = TcpPacket::new_checked(ip.payload()).map(|t| t.header_len()).unwrap_or(tcp::MIN_HEADER_LEN);
        h.gso_type = vnet::GSO_TCPV4;
        h.gso_size = o.gso_size;
        h.hdr_len = (l4 + doff) as u16;
    }
    h
}
