//! The egress half of a worker: executing the core's actions (TAP writes, VXLAN
//! datagrams queued for the end-of-batch `sendmmsg`, userspace segmentation), the GRO
//! runs toward pods, and the virtio-net header of each TAP write.

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use super::config::{FRAME_MAX, WorkerConfig};
use crate::core::frag::split;
use crate::core::{Action, Counter, Dataplane, DropReason, Offload, Packet, PortId, gro, gso, vxlan};
use crate::io::stats::{self, PortStats};
use crate::io::sys::{self, Datagram, Parts};
use crate::io::zerocopy::Completions;
use crate::wire::ethernet;
use crate::wire::ipv4::{Ipv4Packet, PROTO_UDP};
use crate::wire::tcp::{self, TcpPacket};
use crate::wire::udp;
use crate::wire::vnet::{self, VnetHdr};

/// Limits of one UDP GSO send (`UDP_MAX_SEGMENTS`, IPv4 payload minus the UDP header).
const MAX_GSO_SEGMENTS: usize = 64;
const MAX_UDP_PAYLOAD: usize = 65_507;

/// Open GRO runs per worker (flows coalesced at once within one receive batch).
pub(super) const GRO_RUNS: usize = 8;

/// A GRO run toward a port: its first frame stays in its receive buffer until a second
/// segment joins; from then on the run is built in a scratch buffer.
pub(super) struct GroRun {
    port: PortId,
    /// The first frame: (receive slot, start, len).
    first: (usize, usize, usize),
    /// The scratch buffer holding the merged frame, once a segment joined.
    merged: Option<usize>,
    run: gro::Run,
}

/// Where a datagram waiting for the end-of-batch flush lives.
#[derive(Debug, Clone, Copy)]
enum Held {
    /// A receive buffer of this batch.
    Buf(usize),
    /// A segmentation scratch buffer.
    Seg(usize),
    /// A scatter-gather UDP GSO run: segment headers in scratch buffer `seg` from
    /// `hdr_at`, payload in place in receive buffer `slot` (`start..start + len`).
    Sg { seg: usize, hdr_at: usize, hdr_len: usize, mss: usize, slot: usize },
}

pub(super) struct Pending {
    from: Held,
    start: usize,
    len: usize,
    to: SocketAddrV4,
    sock: usize,
    gso_size: u16,
}

/// Everything a worker writes to, apart from its buffers (so both can be borrowed).
pub(super) struct Out {
    pub(super) id: usize,
    pub(super) dp: Arc<Dataplane>,
    pub(super) ports: Vec<Option<OwnedFd>>,
    pub(super) tx: Arc<Vec<UdpSocket>>,
    /// Completions of zero-copy sends, shared by the workers (`WorkerConfig::zerocopy`).
    pub(super) zc: Option<Arc<Completions>>,
    pub(super) pending: Vec<Pending>,
    pub(super) cfg: WorkerConfig,
    pub(super) stats: Arc<PortStats>,
    /// Scratch for userspace segmentation (GSO super-packet -> VXLAN datagrams).
    pub(super) seg: Vec<Box<[u8]>>,
    pub(super) seg_used: usize,
    /// Open GRO runs of this receive batch and their scratch buffers.
    pub(super) gro: Vec<GroRun>,
    pub(super) gro_bufs: Vec<Box<[u8]>>,
    pub(super) gro_free: Vec<usize>,
}

impl Out {
    pub(super) fn execute(&mut self, slot: usize, a: Action, pkt: &Packet) {
        // One line per packet only when asked for (--log-level trace); otherwise this is
        // a single check of the global level.
        tracing::trace!(worker = self.id, len = pkt.len(), action = ?a, "packet");
        match a {
            Action::ToPort(port) => self.write_to_port(port, pkt.data(), &pkt.offload),
            Action::ToVtep { remote, flow_hash } => {
                let to = SocketAddrV4::new(remote, self.cfg.vxlan_port);
                let sock = vxlan::source_index(flow_hash, self.tx.len());
                if pkt.offload.gso_size > 0 && self.cfg.sg_gso && !pkt.in_spare() {
                    self.segment_sg(to, sock, slot, pkt);
                } else if pkt.offload.gso_size > 0 {
                    self.segment(to, sock, pkt);
                } else if pkt.offload.frag_size > 0 {
                    // Always through the scratch buffer: the frame may live in the spare.
                    self.split(to, sock, pkt);
                } else if pkt.in_spare() {
                    // The spare is the next packet's: keep a copy (only replies and
                    // reassembled datagrams live there).
                    let i = self.scratch();
                    self.seg[i][..pkt.len()].copy_from_slice(pkt.data());
                    self.queue_run(i, pkt.len(), pkt.len(), to, sock);
                } else {
                    self.pending.push(Pending {
                        from: Held::Buf(slot),
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

    /// Writes a frame to a local port (as fragments when it carries a fragment size).
    pub(super) fn write_to_port(&mut self, port: PortId, frame: &[u8], offload: &Offload) {
        if offload.frag_size > 0 {
            self.write_fragments(port, frame, offload.frag_size);
        } else {
            self.write_frame(port, frame, offload);
        }
    }

    /// Writes a datagram to a TAP as fragments of `frag_size` bytes at most, each frame
    /// gathered from its headers and a slice of the datagram (no copy).
    fn write_fragments(&mut self, port: PortId, frame: &[u8], frag_size: u16) {
        let Some(fd) = self.ports.get(port.0 as usize).and_then(|f| f.as_ref()).map(|f| f.as_raw_fd()) else {
            self.dp.counters.drop(self.id, DropReason::PortGone);
            return;
        };
        let (eth, ip) = frame.split_at(14.min(frame.len()));
        let vh = [0u8; vnet::HEADER_LEN];
        let mut failed = 0;
        let r = split::for_each_fragment(ip, usize::from(frag_size), |h, p| match sys::writev(fd, &[&vh, eth, h, p]) {
            Ok(_) => self.stats.tx(self.id, stats::slot(port), eth.len() + h.len() + p.len()),
            Err(_) => failed += 1,
        });
        match r {
            Ok(_) => self.dp.counters.inc(self.id, Counter::Fragmented),
            Err(_) => failed += 1,
        }
        for _ in 0..failed {
            self.dp.counters.drop(self.id, DropReason::TxError);
        }
    }

    fn write_frame(&self, port: PortId, frame: &[u8], offload: &Offload) {
        let Some(fd) = self.ports.get(port.0 as usize).and_then(|f| f.as_ref()) else {
            self.dp.counters.drop(self.id, DropReason::PortGone);
            return;
        };
        let vh = vnet_for(offload, frame);
        if port.is_host() && oversize_without_gso(&vh, frame, self.cfg.host_mtu) {
            self.dp.counters.inc(self.id, Counter::HostOversize);
        }
        let mut hdr = [0u8; vnet::HEADER_LEN];
        vh.emit(&mut hdr);
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
                from: Held::Sg { seg: i, hdr_at: k * h.hdr_len, hdr_len: h.hdr_len, mss: h.mss, slot },
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
            self.pending.push(Pending { from: Held::Seg(i), start, len: n, to, sock, gso_size });
            start += n;
        }
    }
}

impl Out {
    /// A decapsulated frame toward `port`, at `bufs[slot][start..start + len]`: joins an
    /// open run of its flow, or flushes that run and starts one, or (not a candidate)
    /// goes out at once after any run of its flow. `partial`: its checksum is partial.
    pub(super) fn gro_push(&mut self, bufs: &[Box<[u8]>], port: PortId, at: (usize, usize, usize), partial: bool) {
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

    /// Writes the open run of `frame`'s flow toward `port`, if there is one: `frame` is
    /// about to go out on its own and must not overtake it.
    pub(super) fn gro_flush_flow(&mut self, bufs: &[Box<[u8]>], port: PortId, frame: &[u8]) {
        let open = self.gro.iter().position(|r| r.port == port && gro::same_flow(self.run_bytes(bufs, r), frame));
        if let Some(i) = open {
            self.gro_flush(bufs, i);
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

    pub(super) fn gro_flush_all(&mut self, bufs: &[Box<[u8]>]) {
        while !self.gro.is_empty() {
            self.gro_flush(bufs, 0);
        }
    }
}

/// Sends the batch's VXLAN datagrams: one `sendmmsg` per source socket, straight from
/// the pending list (nothing collected or allocated per batch).
pub(super) fn flush(bufs: &[Box<[u8]>], out: &mut Out) {
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
        let parts = |p: &Pending| parts(bufs, seg, p);
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

/// Where a pending datagram's bytes are.
pub(super) fn parts<'b>(bufs: &'b [Box<[u8]>], seg: &'b [Box<[u8]>], p: &Pending) -> Parts<'b> {
    match p.from {
        Held::Buf(s) => Parts::One(&bufs[s][p.start..p.start + p.len]),
        Held::Seg(s) => Parts::One(&seg[s][p.start..p.start + p.len]),
        Held::Sg { seg: s, hdr_at, hdr_len, mss, slot } => Parts::Interleaved {
            headers: &seg[s][hdr_at..],
            hdr_len,
            payload: &bufs[slot][p.start..p.start + p.len],
            mss,
        },
    }
}

/// Whether the node's stack gets a frame it cannot forward out of an interface of the host
/// port's MTU: longer than `mtu` (IPv4) with no GSO metadata to segment it by.
fn oversize_without_gso(vh: &VnetHdr, frame: &[u8], mtu: u16) -> bool {
    vh.gso_kind() == vnet::GSO_NONE && frame.len() > ethernet::HEADER_LEN + usize::from(mtu)
}

/// The virtio-net header for a frame written to a TAP: GSO metadata (from the ingress
/// TAP, a GRO run, or a peer's super-packet), or "checksum partial" for a frame whose
/// checksum a pod or a kernel peer left to be finished.
pub(super) fn vnet_for(o: &Offload, frame: &[u8]) -> VnetHdr {
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
        let (doff, cwr) = TcpPacket::new_checked(ip.payload())
            .map(|t| (t.header_len(), t.flags() & tcp::CWR != 0))
            .unwrap_or((tcp::MIN_HEADER_LEN, false));
        // CWR belongs on the first segment only: a TSO device without ECN support would
        // copy it to every one (the kernel's own TCP says SKB_GSO_TCP_ECN then, too).
        h.gso_type = vnet::GSO_TCPV4 | if cwr { vnet::GSO_ECN } else { 0 };
        h.gso_size = o.gso_size;
        h.hdr_len = (l4 + doff) as u16;
    }
    h
}
