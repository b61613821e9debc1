//! Deciding once per run: the frames that UDP GRO hands over back to back are mostly one
//! flow's segments, and the walk decides the same for all of them. The first frame of a
//! run takes the whole walk with a recorder on (the counters it bumped, the conntrack hit
//! it applied, the TTL, checksum finish and MACs of its delivery); a frame that follows
//! it is compared in the fields the walk reads and, when they are equal, gets the recorded
//! rewrites without a lookup: the kernel's flannel.1 does the same by running its
//! forwarding path once per GRO-merged packet.
//!
//! A follower must match the first frame in everything but the fields that vary within
//! a flow (IP total length, ID and checksum; TCP sequence, ACK number, window, checksum
//! and payload; UDP length and checksum):
//!
//! | compared | bytes of the VXLAN payload |
//! |---|---|
//! | the sender (IP and port), tables snapshot, `now` | - |
//! | VXLAN header, inner Ethernet header | 0..22 |
//! | IPv4 version/IHL (5, no options), TOS | 22..24 |
//! | IPv4 flags/fragment offset (not a fragment), TTL, protocol | 28..32 |
//! | IPv4 addresses, L4 ports | 34..46 |
//! | TCP data offset and flags | 54..56 |
//!
//! and must itself be well formed where the walk would check it: its IPv4 header
//! checksum verifies, its total length fits the frame and the VXLAN MTU and holds the L4
//! header (a UDP length within it), and its checksum is partial exactly when the first
//! frame's was. (A peer's super-packet over the MTU takes the walk, which marks it for GSO.)
//! Anything else takes the whole walk, and starts a new run.
//!
//! Only these decisions are replayed: TCP or UDP, delivered to a pod or the host port;
//! TCP without SYN, FIN or RST; a tracked flow only ESTABLISHED (TCP; its state cannot
//! move on an ACK) and never an invalid hit. A new flow's first packet, ICMP, fragments,
//! ICMP errors, drops, replies and encapsulation always take the walk; so does every
//! frame while tracing (the trace shows the walk). A replayed frame skips the conntrack
//! lookup: its flow's state and deadline are what the first frame left (same flags,
//! same `now`), as the kernel's conntrack sees a GRO-merged packet once.

use super::*;
use crate::core::nat::conntrack::TcpState;
use crate::wire::ipv4::field as ip;
use crate::wire::{checksum, tcp, udp};

/// Where the inner IPv4 header and the L4 header start in a VXLAN payload.
const IP: usize = vxlan_wire::HEADER_LEN + ethernet::HEADER_LEN;
const L4: usize = IP + ipv4::MIN_HEADER_LEN;
/// The compared prefix: up to the TCP flags.
const KEY_LEN: usize = L4 + tcp::field::WINDOW;
impl Ctx<'_> {
    /// This walk's decision is not one to replay (a new flow, a fragment, an ICMP error).
    pub(super) fn not_replayable(&mut self) {
        if let Some(r) = &mut self.rec {
            r.replayable = false;
        }
    }
}

/// The decision of the last frame of a receive batch that took the whole walk, for the
/// frames that follow it (see the module docs). Owned by a worker, reused batch after
/// batch: no allocation.
#[derive(Debug, Clone)]
pub struct RunMemo {
    valid: bool,
    /// The tables snapshot (its address and generation) and the time of the decision.
    tables: (usize, u64),
    now: Now,
    from: SocketAddrV4,
    key: [u8; KEY_LEN],
    /// The pseudo-header sum of the run's addresses and protocol (its length left out).
    pseudo: u64,
    action: Action,
    rec: Recorded,
}

impl Default for RunMemo {
    fn default() -> Self {
        RunMemo {
            valid: false,
            tables: (0, 0),
            now: Now(0),
            from: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            key: [0; KEY_LEN],
            pseudo: 0,
            action: Action::Held,
            rec: Recorded::new(),
        }
    }
}

impl RunMemo {
    /// Forgets the decision (the next frame takes the whole walk).
    pub fn clear(&mut self) {
        self.valid = false;
    }

    /// Whether a decision is held (for tests).
    pub fn holds(&self) -> bool {
        self.valid
    }

    /// Keeps the walk's decision when it is one to replay; `first_len` is the length
    /// of the first frame as it arrived (its prefix is in `key`).
    fn learn(&mut self, t: &Tables, from: SocketAddrV4, now: Now, first_len: usize, action: Action, rec: Recorded) {
        let k = &self.key;
        let proto = k[IP + ip::PROTOCOL];
        let l4_min = if proto == PROTO_TCP { KEY_LEN } else { L4 + udp::HEADER_LEN };
        let tcp_ok = |h: Option<Hit>| {
            let flags = k[L4 + tcp::field::FLAGS];
            flags & (tcp::SYN | tcp::FIN | tcp::RST) == 0
                && h.is_none_or(|h| h.state == Some(TcpState::Established) && !h.invalid)
        };
        self.valid = matches!(action, Action::ToPort(_))
            && rec.replayable
            && rec.delivery.is_some()
            && first_len >= l4_min
            && k[IP] == 0x45
            // Not a fragment: MF and the offset clear.
            && u16::from_be_bytes([k[IP + ip::FLAGS_FRAG], k[IP + ip::FLAGS_FRAG + 1]]) & 0x3fff == 0
            && match proto {
                PROTO_TCP => tcp_ok(rec.hit),
                PROTO_UDP => rec.hit.is_none_or(|h| !h.invalid),
                _ => false,
            };
        if self.valid {
            self.tables = tables_id(t);
            self.now = now;
            self.from = from;
            let addr = |at: usize| [k[at], k[at + 1], k[at + 2], k[at + 3]];
            self.pseudo = checksum::pseudo_header_sum(addr(IP + ip::SRC), addr(IP + ip::DST), proto, 0);
            self.action = action;
            self.rec = rec;
        }
    }

    /// The follower's IPv4 total length when `d` (a VXLAN payload) may take the
    /// recorded decision.
    fn follows(&self, t: &Tables, from: SocketAddrV4, now: Now, d: &[u8]) -> Option<usize> {
        if !self.valid || self.tables != tables_id(t) || self.now != now || self.from != from {
            return None;
        }
        let k = &self.key;
        let proto = k[IP + ip::PROTOCOL];
        let tcp = proto == PROTO_TCP;
        if d.len() < if tcp { KEY_LEN } else { L4 + udp::HEADER_LEN }
            || d[..IP + ip::TOTAL_LEN] != k[..IP + ip::TOTAL_LEN]
            || d[IP + ip::FLAGS_FRAG..IP + ip::CHECKSUM] != k[IP + ip::FLAGS_FRAG..IP + ip::CHECKSUM]
            || d[IP + ip::SRC..L4 + 4] != k[IP + ip::SRC..L4 + 4]
            || (tcp && d[L4 + tcp::field::DATA_OFF..KEY_LEN] != k[L4 + tcp::field::DATA_OFF..KEY_LEN])
        {
            return None;
        }
        let total = usize::from(u16::from_be_bytes([d[IP + ip::TOTAL_LEN], d[IP + ip::TOTAL_LEN + 1]]));
        let l4_len = total.checked_sub(ipv4::MIN_HEADER_LEN)?;
        let l4_ok = if tcp {
            l4_len >= usize::from(k[L4 + tcp::field::DATA_OFF] >> 4) * 4
        } else {
            (udp::HEADER_LEN..=l4_len).contains(&usize::from(u16::from_be_bytes([
                d[L4 + udp::field::LENGTH],
                d[L4 + udp::field::LENGTH + 1],
            ])))
        };
        // A follower over the MTU may be a peer's super-packet, which the walk marks for GSO.
        if !l4_ok
            || IP + total > d.len()
            || total > usize::from(t.node.mtu)
            || checksum::fold(checksum::sum(&d[IP..L4], 0)) != 0xffff
        {
            return None;
        }
        // `offload::is_partial` with the addresses' part of the pseudo header summed once.
        let at = L4 + if tcp { tcp::field::CHECKSUM } else { udp::field::CHECKSUM };
        let field = u16::from_be_bytes([d[at], d[at + 1]]);
        let partial = field != 0 && field == checksum::fold(self.pseudo + l4_len as u64);
        (partial == self.rec.partial).then_some(total)
    }
}

/// A tables snapshot: its address (unique while the caller holds it) and generation.
fn tables_id(t: &Tables) -> (usize, u64) {
    (std::ptr::from_ref(t) as usize, t.generation)
}

impl Dataplane {
    /// [`Dataplane::handle_vxlan`] for the frames of one receive batch, in order: a frame
    /// that follows one of the same flow takes that frame's decision (see the module
    /// docs). `memo` belongs to the calling worker and lives across its batches;
    /// everything a replay would decide differently is compared, so a stale memo only
    /// costs the whole walk.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_vxlan_run(
        &self,
        worker: usize,
        t: &Tables,
        from: SocketAddrV4,
        pkt: &mut Packet,
        now: Now,
        tr: &mut Trace,
        memo: &mut RunMemo,
    ) -> Action {
        if tr.enabled || tr.dry_run || pkt.offload != Offload::default() || pkt.in_spare() {
            memo.valid = false;
            return self.handle_vxlan(worker, t, from, pkt, now, tr);
        }
        if let Some(total) = memo.follows(t, from, now, pkt.data()) {
            return self.replay(worker, memo, pkt, total);
        }
        let first_len = pkt.len();
        let n = first_len.min(KEY_LEN);
        memo.key[..n].copy_from_slice(&pkt.data()[..n]);
        let mut cx = Ctx { dp: self, t, w: worker, now, tr, rec: Some(Recorded::new()) };
        let a = cx.vxlan(from, pkt);
        match cx.rec {
            Some(rec) => memo.learn(t, from, now, first_len, a, rec),
            None => memo.valid = false,
        }
        a
    }

    /// The recorded decision applied to a follower (`total`: its IPv4 total length).
    fn replay(&self, worker: usize, memo: &RunMemo, pkt: &mut Packet, total: usize) -> Action {
        let rec = &memo.rec;
        pkt.pull_front(vxlan_wire::HEADER_LEN);
        pkt.truncate(ethernet::HEADER_LEN + total);
        pkt.offload.csum_partial = rec.partial;
        if let Some(hit) = &rec.hit {
            nat::apply(pkt, hit);
        }
        if let Some(d) = &rec.delivery {
            if d.dec_ttl
                && let Ok(mut ip) = Ipv4Packet::new_checked(&mut pkt.data_mut()[ethernet::HEADER_LEN..])
            {
                ip.dec_ttl();
            }
            if d.finish {
                offload::finish(pkt);
            }
            set_macs(pkt, d.macs.0, d.macs.1);
        }
        for c in &rec.counters[..rec.counted] {
            self.counters.inc(worker, *c);
        }
        self.counters.inc(worker, Counter::RunReplayed);
        memo.action
    }
}
