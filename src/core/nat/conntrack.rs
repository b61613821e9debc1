//! Connection tracking for NATed flows, as netfilter's conntrack keeps it: each entry
//! holds the original and the reply tuple, and both tuples index the same entry, so a
//! reply is reverse-NATed from its entry without re-running any rule.
//!
//! Concurrency: the index is a sharded concurrent map (dashmap) from packed tuple to
//! `Arc<Entry>`; a lookup takes one shard's read lock, never a global one, and the
//! per-packet state update is atomics on the entry (no allocation, no write lock).
//! Insertion is where the anchors' bugs lived, so it is careful:
//! - the reply tuple is claimed first, with the shard's entry lock: a live entry with
//!   another original tuple means the port is taken and the next candidate is tried,
//!   so two live flows never share a tuple (the SNAT collision bug);
//! - a claim that finds the *same* original tuple, or an original key already inserted,
//!   joins that entry: two datagrams of one new UDP flow racing on two workers both
//!   pass, with the same NAT (the DNS 5 s bug).
//!
//! - a full table evicts a flow that may be dropped early (not ASSURED, or TCP already
//!   closing; see [`early_drop`]) instead of refusing the new flow, and so does a reply
//!   port space with every candidate port held; assured flows are never evicted.
//!
//! The reply tuple is unique per full tuple, as nf_nat's: the same masquerade port
//! serves flows to different destinations, so the port space is per destination.
//!
//! Only flows that ucanal NATs are tracked (plain pod-to-pod routing needs no state).
//!
//! Heads up: an expired entry stays in the map until `sweep` removes it, but every
//! lookup and insert treats it as absent, so expiry is exact to the second.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering::Relaxed};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;

use super::{Tuple, early_drop};
use crate::core::Now;
use crate::wire::ipv4::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::wire::l4::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// TCP conntrack states, numbered as `enum tcp_conntrack` in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    None = 0,
    SynSent = 1,
    SynRecv = 2,
    Established = 3,
    FinWait = 4,
    CloseWait = 5,
    LastAck = 6,
    TimeWait = 7,
    Close = 8,
    SynSent2 = 9,
}

impl TcpState {
    pub(super) fn from_u8(v: u8) -> TcpState {
        use TcpState::*;
        [None, SynSent, SynRecv, Established, FinWait, CloseWait, LastAck, TimeWait, Close, SynSent2]
            .get(usize::from(v))
            .copied()
            .unwrap_or(None)
    }
    /// The name `conntrack -L` prints.
    pub fn name(self) -> &'static str {
        use TcpState::*;
        match self {
            None => "NONE",
            SynSent => "SYN_SENT",
            SynRecv => "SYN_RECV",
            Established => "ESTABLISHED",
            FinWait => "FIN_WAIT",
            CloseWait => "CLOSE_WAIT",
            LastAck => "LAST_ACK",
            TimeWait => "TIME_WAIT",
            Close => "CLOSE",
            SynSent2 => "SYN_SENT2",
        }
    }
}

/// Direction of a packet relative to its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    Original,
    Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Syn = 0,
    SynAck = 1,
    Fin = 2,
    Ack = 3,
    Rst = 4,
    None = 5,
}

fn tcp_event(flags: u8) -> Event {
    if flags & TCP_RST != 0 {
        Event::Rst
    } else if flags & TCP_SYN != 0 {
        if flags & TCP_ACK != 0 { Event::SynAck } else { Event::Syn }
    } else if flags & TCP_FIN != 0 {
        Event::Fin
    } else if flags & TCP_ACK != 0 {
        Event::Ack
    } else {
        Event::None
    }
}

// The kernel's `tcp_conntracks[dir][event][state]` (nf_conntrack_proto_tcp.c), with
// sIV (invalid) and sIG (ignore) as sentinels; no transition leads back to sNO (0).
const IV: u8 = 0xfe;
const IG: u8 = 0xff;
const S_SS: u8 = 1;
const S_SR: u8 = 2;
const S_ES: u8 = 3;
const S_FW: u8 = 4;
const S_CW: u8 = 5;
const S_LA: u8 = 6;
const S_TW: u8 = 7;
const S_CL: u8 = 8;
const S_S2: u8 = 9;
#[rustfmt::skip]
const TCP_TABLE: [[[u8; 10]; 6]; 2] = [
    [   // ORIGINAL      sNO   sSS   sSR   sES   sFW   sCW   sLA   sTW   sCL   sS2
        /* syn    */ [S_SS, S_SS, IG,   IG,   IG,   IG,   IG,   S_SS, S_SS, S_S2],
        /* synack */ [IV,   IV,   S_SR, IV,   IV,   IV,   IV,   IV,   IV,   S_SR],
        /* fin    */ [IV,   IV,   S_FW, S_FW, S_LA, S_LA, S_LA, S_TW, S_CL, IV  ],
        /* ack    */ [S_ES, IV,   S_ES, S_ES, S_CW, S_CW, S_TW, S_TW, S_CL, IV  ],
        /* rst    */ [IV,   S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL],
        /* none   */ [IV,   IV,   IV,   IV,   IV,   IV,   IV,   IV,   IV,   IV  ],
    ],
    [   // REPLY         sNO   sSS   sSR   sES   sFW   sCW   sLA   sTW   sCL   sS2
        /* syn    */ [IV,   S_S2, IV,   IV,   IV,   IV,   IV,   S_SS, IV,   S_S2],
        /* synack */ [IV,   S_SR, IG,   IG,   IG,   IG,   IG,   IG,   IG,   S_SR],
        /* fin    */ [IV,   IV,   S_FW, S_FW, S_LA, S_LA, S_LA, S_TW, S_CL, IV  ],
        /* ack    */ [IV,   IG,   S_SR, S_ES, S_CW, S_CW, S_TW, S_TW, S_CL, IG  ],
        /* rst    */ [IV,   S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL],
        /* none   */ [IV,   IV,   IV,   IV,   IV,   IV,   IV,   IV,   IV,   IV  ],
    ],
];

/// The result of one packet on the TCP state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    To(TcpState),
    Ignore,
    Invalid,
}

pub fn tcp_transition(state: TcpState, dir: Dir, flags: u8) -> Transition {
    let d = match dir {
        Dir::Original => 0,
        Dir::Reply => 1,
    };
    match TCP_TABLE[d][tcp_event(flags) as usize][state as usize] {
        IV => Transition::Invalid,
        IG => Transition::Ignore,
        s => Transition::To(TcpState::from_u8(s)),
    }
}

/// Timeouts in seconds: kube-proxy's for established and close-wait, the kernel's defaults elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    pub tcp_established: u32,
    pub tcp_fin_wait: u32,
    pub tcp_close_wait: u32,
    pub tcp_last_ack: u32,
    pub tcp_time_wait: u32,
    pub tcp_close: u32,
    pub udp: u32,
    pub udp_stream: u32,
    pub icmp: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 86400,
            tcp_fin_wait: 120,
            tcp_close_wait: 3600,
            tcp_last_ack: 30,
            tcp_time_wait: 120,
            tcp_close: 10,
            udp: 30,
            udp_stream: 120,
            icmp: 30,
        }
    }
}

impl Timeouts {
    pub fn tcp(&self, s: TcpState) -> u32 {
        use TcpState::*;
        match s {
            None | SynSent | SynSent2 => self.tcp_syn_sent,
            SynRecv => self.tcp_syn_recv,
            Established => self.tcp_established,
            FinWait => self.tcp_fin_wait,
            CloseWait => self.tcp_close_wait,
            LastAck => self.tcp_last_ack,
            TimeWait => self.tcp_time_wait,
            Close => self.tcp_close,
        }
    }
}

/// NAT applied to a flow.
pub const NAT_DNAT: u8 = 1;
pub const NAT_SNAT: u8 = 2;

pub(super) const SEEN_REPLY: u8 = 1;
pub(super) const ASSURED: u8 = 2;

/// One tracked flow.
#[derive(Debug)]
pub struct Entry {
    pub original: Tuple,
    pub reply: Tuple,
    pub nat: u8,
    pub(super) state: AtomicU8,
    pub(super) flags: AtomicU8,
    /// Expiry, in `Now::secs()`.
    pub(super) deadline: AtomicU32,
}

impl Entry {
    pub fn tcp_state(&self) -> TcpState {
        TcpState::from_u8(self.state.load(Relaxed))
    }
    pub fn seen_reply(&self) -> bool {
        self.flags.load(Relaxed) & SEEN_REPLY != 0
    }
    pub fn assured(&self) -> bool {
        self.flags.load(Relaxed) & ASSURED != 0
    }
    pub fn deadline(&self) -> u32 {
        self.deadline.load(Relaxed)
    }
    pub fn is_live(&self, now: Now) -> bool {
        self.deadline.load(Relaxed) > now.secs()
    }
    /// The state name `conntrack -L` prints (TCP only).
    pub fn state_name(&self) -> Option<&'static str> {
        (self.original.proto == PROTO_TCP).then(|| self.tcp_state().name())
    }
    /// Seconds left before expiry.
    pub fn remaining(&self, now: Now) -> u32 {
        self.deadline().saturating_sub(now.secs())
    }
    /// DNAT target of the flow, if any.
    pub fn dnat_target(&self) -> Option<SocketAddrV4> {
        (self.nat & NAT_DNAT != 0).then(|| SocketAddrV4::new(self.reply.src, self.reply.sport))
    }
}

/// What a packet of a tracked flow becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub dir: Dir,
    /// The packet's new source and destination.
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub nat: u8,
    pub state: Option<TcpState>,
    pub invalid: bool,
}

impl Hit {
    fn of(e: &Entry, dir: Dir, invalid: bool) -> Hit {
        let (src, dst) = match dir {
            Dir::Original => ((e.reply.dst, e.reply.dport), (e.reply.src, e.reply.sport)),
            Dir::Reply => ((e.original.dst, e.original.dport), (e.original.src, e.original.sport)),
        };
        Hit { dir, src, dst, nat: e.nat, state: e.state_name().map(|_| e.tcp_state()), invalid }
    }
}

/// How to choose the source port of the reply tuple's destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortChoice {
    /// Try this port first (the original source port).
    pub keep: u16,
    /// Ports to search (inclusive); `keep` is used only inside it.
    pub lo: u16,
    pub hi: u16,
}

/// A new flow to enter: its original tuple, the packet's TCP flags, and its reply
/// tuple `reply_src -> (reply_dst, port)` with the port chosen by `ports`.
#[derive(Debug, Clone, Copy)]
pub struct NewFlow {
    pub original: Tuple,
    pub tcp_flags: u8,
    pub reply_src: (Ipv4Addr, u16),
    pub reply_dst: Ipv4Addr,
    pub nat: u8,
    pub ports: PortChoice,
}

/// What `insert` did.
#[derive(Debug, Clone)]
pub enum Insert {
    /// A new entry; `remapped` says the source port had to change, `evicted` that a
    /// flow was dropped early to make room.
    New {
        entry: Arc<Entry>,
        remapped: bool,
        evicted: bool,
    },
    /// A concurrent packet of the same flow inserted it first.
    Joined(Arc<Entry>),
    Full,
    Exhausted,
}

impl Insert {
    fn evicted(self, evicted: bool) -> Insert {
        match self {
            Insert::New { entry, remapped, evicted: e } => Insert::New { entry, remapped, evicted: e || evicted },
            other => other,
        }
    }
}

/// One reply-tuple port tried by `insert`.
enum Attempt {
    Done(Insert),
    /// A live flow holds the port.
    Taken(Arc<Entry>),
}

/// Candidate ports tried after `keep` before giving up (the kernel tries up to 128 too).
const MAX_PORT_TRIES: u32 = 128;

pub struct Conntrack {
    pub(super) map: DashMap<u128, Arc<Entry>, ahash::RandomState>,
    pub(super) entries: AtomicUsize,
    pub(super) max: usize,
    pub(super) candidates: early_drop::Candidates,
    pub timeouts: Timeouts,
}

impl Conntrack {
    pub fn new(max: usize, timeouts: Timeouts) -> Self {
        Conntrack {
            map: DashMap::with_hasher(ahash::RandomState::new()),
            entries: AtomicUsize::new(0),
            max,
            candidates: early_drop::Candidates::new(max),
            timeouts,
        }
    }
    /// Live-or-expired entries not yet swept.
    pub fn len(&self) -> usize {
        self.entries.load(Relaxed)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn max(&self) -> usize {
        self.max
    }
    /// Keys queued as early-drop candidates (bounded; see [`early_drop`]).
    pub fn candidates_len(&self) -> usize {
        self.candidates.len()
    }

    fn initial(&self, t: &Tuple, tcp_flags: u8) -> Option<(TcpState, u32)> {
        match t.proto {
            PROTO_TCP => match tcp_transition(TcpState::None, Dir::Original, tcp_flags) {
                Transition::To(s) => Some((s, self.timeouts.tcp(s))),
                _ => None,
            },
            PROTO_UDP => Some((TcpState::None, self.timeouts.udp)),
            PROTO_ICMP => Some((TcpState::None, self.timeouts.icmp)),
            _ => None,
        }
    }

    /// True when a packet with these TCP flags may start a tracked flow (a SYN, or an
    /// ACK picked up mid-stream as the kernel's `nf_conntrack_tcp_loose` allows).
    pub fn can_start(&self, t: &Tuple, tcp_flags: u8) -> bool {
        self.initial(t, tcp_flags).is_some()
    }

    /// Looks a packet up and, when `commit`, advances its flow's state and timeout.
    /// No allocation, no write lock: one shard read lock and a few atomics.
    #[inline]
    pub fn track(&self, t: &Tuple, tcp_flags: u8, now: Now, commit: bool) -> Option<Hit> {
        let r = self.map.get(&t.key())?;
        let e: &Entry = &r;
        if !e.is_live(now) {
            return None;
        }
        let dir = if e.original == *t { Dir::Original } else { Dir::Reply };
        let mut invalid = false;
        let timeout = match t.proto {
            PROTO_TCP => {
                let mut new_state = e.tcp_state();
                let upd = e.state.fetch_update(Relaxed, Relaxed, |cur| {
                    match tcp_transition(TcpState::from_u8(cur), dir, tcp_flags) {
                        Transition::To(s) => {
                            new_state = s;
                            (s as u8 != cur && commit).then_some(s as u8)
                        }
                        Transition::Ignore => {
                            new_state = TcpState::from_u8(cur);
                            None
                        }
                        Transition::Invalid => {
                            invalid = true;
                            new_state = TcpState::from_u8(cur);
                            None
                        }
                    }
                });
                // ASSURED on reaching ESTABLISHED, or (a flow picked up mid-stream, which
                // starts there) on its first valid answer, as the kernel's tcp_packet does.
                if commit
                    && new_state == TcpState::Established
                    && (upd.is_ok() || dir == Dir::Reply)
                    && !invalid
                    && !e.assured()
                {
                    e.flags.fetch_or(ASSURED, Relaxed);
                }
                self.timeouts.tcp(new_state)
            }
            PROTO_UDP => {
                if e.seen_reply() || dir == Dir::Reply {
                    self.timeouts.udp_stream
                } else {
                    self.timeouts.udp
                }
            }
            _ => self.timeouts.icmp,
        };
        if commit {
            if dir == Dir::Reply && !e.seen_reply() {
                let extra = if t.proto == PROTO_UDP { ASSURED } else { 0 };
                e.flags.fetch_or(SEEN_REPLY | extra, Relaxed);
            }
            if !invalid {
                let d = now.secs().saturating_add(timeout);
                // Store only when it moves, so a busy flow does not dirty the line every packet.
                if e.deadline.load(Relaxed) != d {
                    e.deadline.store(d, Relaxed);
                }
            }
        }
        Some(Hit::of(e, dir, invalid))
    }

    /// Enters a new flow. See the module docs for the races this resolves. A full
    /// table, or a reply-tuple port space with no free port, gives up a flow that may
    /// be dropped early (see [`early_drop`]) rather than refusing the new one.
    pub fn insert(&self, flow: NewFlow, now: Now) -> Insert {
        let Some((state, timeout)) = self.initial(&flow.original, flow.tcp_flags) else {
            return Insert::Exhausted;
        };
        let mut evicted = false;
        if self.entries.load(Relaxed) >= self.max {
            // A live entry for this very flow (inserted a moment ago by another worker) is not "new".
            if let Some(e) = self.map.get(&flow.original.key()).filter(|e| e.is_live(now)) {
                return Insert::Joined(e.clone());
            }
            if !self.early_drop(now) {
                return Insert::Full;
            }
            evicted = true;
        }
        let ports = flow.ports;
        let span = u32::from(ports.hi.saturating_sub(ports.lo)) + 1;
        let start = flow.original.hash(0x5eed) % span;
        let keep_ok = (ports.lo..=ports.hi).contains(&ports.keep);
        let candidates = keep_ok
            .then_some(ports.keep)
            .into_iter()
            .chain((0..MAX_PORT_TRIES.min(span)).map(|i| ports.lo + ((start + i) % span) as u16));
        let mut victim: Option<Arc<Entry>> = None;
        for port in candidates {
            match self.try_port(&flow, port, state, timeout, now) {
                Attempt::Done(r) => return r.evicted(evicted),
                Attempt::Taken(holder) => {
                    if victim.is_none() && early_drop::can_early_drop(&holder) {
                        victim = Some(holder);
                    }
                }
            }
        }
        // Every candidate port is held by a live flow: give up one that may go.
        if let Some(v) = victim {
            let port = v.reply.dport;
            if self.remove_entry(&v)
                && let Attempt::Done(r) = self.try_port(&flow, port, state, timeout, now)
            {
                return r.evicted(true);
            }
        }
        Insert::Exhausted
    }

    /// Claims the reply tuple with destination port `port`, then publishes the original.
    fn try_port(&self, flow: &NewFlow, port: u16, state: TcpState, timeout: u32, now: Now) -> Attempt {
        let NewFlow { original, reply_src, reply_dst, nat, ports, .. } = *flow;
        let reply = Tuple { proto: original.proto, src: reply_src.0, dst: reply_dst, sport: reply_src.1, dport: port };
        let entry = Arc::new(Entry {
            original,
            reply,
            nat,
            state: AtomicU8::new(state as u8),
            flags: AtomicU8::new(0),
            deadline: AtomicU32::new(now.secs().saturating_add(timeout)),
        });
        // 1. Claim the reply tuple.
        match self.map.entry(reply.key()) {
            MapEntry::Occupied(mut o) => {
                let cur = o.get();
                if cur.is_live(now) {
                    if cur.original == original {
                        return Attempt::Done(Insert::Joined(cur.clone()));
                    }
                    return Attempt::Taken(cur.clone()); // taken by another live flow: next port
                }
                self.forget_replaced(cur, reply.key());
                o.insert(entry.clone());
            }
            MapEntry::Vacant(v) => {
                v.insert(entry.clone());
            }
        }
        // 2. Publish the original tuple (the reply claim's lock is released).
        let reply_taken_is_ours = |m: &Arc<Entry>| Arc::ptr_eq(m, &entry);
        match self.map.entry(original.key()) {
            MapEntry::Occupied(mut o) => {
                let cur = o.get().clone();
                if cur.is_live(now) && !Arc::ptr_eq(&cur, &entry) {
                    drop(o);
                    self.map.remove_if(&reply.key(), |_, m| reply_taken_is_ours(m));
                    return Attempt::Done(Insert::Joined(cur));
                }
                self.forget_replaced(&cur, original.key());
                o.insert(entry.clone());
            }
            MapEntry::Vacant(v) => {
                v.insert(entry.clone());
            }
        }
        self.entries.fetch_add(1, Relaxed);
        self.candidates.push(original.key(), |k| {
            self.map.get(&k).is_some_and(|e| e.original.key() == k && e.is_live(now) && early_drop::can_early_drop(&e))
        });
        Attempt::Done(Insert::New { remapped: port != ports.keep, evicted: false, entry })
    }

    /// Bookkeeping when an expired entry's key is overwritten: the entry count follows
    /// original keys.
    pub(super) fn forget_replaced(&self, old: &Arc<Entry>, key: u128) {
        if old.original.key() == key {
            self.entries.fetch_sub(1, Relaxed);
        }
    }

    /// Removes expired entries; returns how many flows were removed.
    ///
    /// Heads up: this never write-locks a whole shard. It finds the expired keys under
    /// each shard's read lock (workers keep reading), then removes them one key at a
    /// time, re-checking expiry under that key's write lock, so a flow refreshed in
    /// between survives and a worker waits at most for one removal.
    pub fn sweep(&self, now: Now) -> usize {
        let expired: Vec<u128> = self.map.iter().filter(|r| !r.is_live(now)).map(|r| *r.key()).collect();
        let mut removed = 0;
        for k in expired {
            if let Some((k, e)) = self.map.remove_if(&k, |_, e| !e.is_live(now))
                && e.original.key() == k
            {
                removed += 1;
            }
        }
        self.entries.fetch_sub(removed, Relaxed);
        removed
    }

    /// Removes the flows matching `pred` (both keys); returns how many.
    pub fn remove_where(&self, pred: impl Fn(&Entry) -> bool) -> usize {
        let mut removed = 0;
        self.map.retain(|k, e| {
            if !pred(e) {
                return true;
            }
            if e.original.key() == *k {
                removed += 1;
            }
            false
        });
        self.entries.fetch_sub(removed, Relaxed);
        removed
    }

    /// Live entries, one per flow, ordered by original tuple for stable listings.
    pub fn entries(&self, now: Now) -> Vec<Arc<Entry>> {
        let mut v: Vec<Arc<Entry>> = self
            .map
            .iter()
            .filter(|r| r.original.key() == *r.key() && r.is_live(now))
            .map(|r| r.value().clone())
            .collect();
        v.sort_by_key(|e| (e.original.proto, e.original.src, e.original.dst, e.original.sport, e.original.dport));
        v
    }
}

/// One line of `conntrack -L`:
/// `tcp      6 86397 ESTABLISHED src=.. dst=.. sport=.. dport=.. src=.. dst=.. sport=.. dport=.. [ASSURED] mark=0 use=1`
pub fn format_entry(e: &Entry, now: Now) -> String {
    let p = e.original.proto;
    let mut s = format!("{:<8} {} {} ", super::proto_name(p), p, e.remaining(now));
    if let Some(st) = e.state_name() {
        s.push_str(st);
        s.push(' ');
    }
    s.push_str(&e.original.to_string());
    if !e.seen_reply() {
        s.push_str(" [UNREPLIED]");
    }
    s.push(' ');
    s.push_str(&e.reply.to_string());
    if e.assured() {
        s.push_str(" [ASSURED]");
    }
    s.push_str(" mark=0 use=1");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::l4::TCP_PSH;

    fn client() -> Tuple {
        Tuple {
            proto: PROTO_TCP,
            src: Ipv4Addr::new(172, 16, 240, 1),
            dst: Ipv4Addr::new(172, 16, 240, 131),
            sport: 40000,
            dport: 31266,
        }
    }
    const EP: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 0, 74), 2368);
    const MASQ: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);
    const ALL: PortChoice = PortChoice { keep: 40000, lo: 1024, hi: 65535 };

    fn new_nodeport(ct: &Conntrack, t: Tuple, now: Now) -> Arc<Entry> {
        match ct.insert(
            NewFlow {
                original: t,
                tcp_flags: TCP_SYN,
                reply_src: EP,
                reply_dst: MASQ,
                nat: NAT_DNAT | NAT_SNAT,
                ports: PortChoice { keep: t.sport, ..ALL },
            },
            now,
        ) {
            Insert::New { entry, .. } => entry,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn article_nodeport_flow_and_its_listing() {
        let ct = Conntrack::new(16, Timeouts::default());
        let now = Now::from_secs(100);
        let e = new_nodeport(&ct, client(), now);
        assert_eq!(e.reply.to_string(), "src=10.244.0.74 dst=10.244.1.0 sport=2368 dport=40000");
        assert_eq!(e.tcp_state(), TcpState::SynSent);
        // Original direction: DNAT + SNAT.
        let h = ct.track(&client(), TCP_SYN, now, true).unwrap();
        assert_eq!((h.dir, h.src, h.dst), (Dir::Original, (MASQ, 40000), EP));
        // SYN-ACK from the endpoint to the masquerade address: reverse NAT.
        let h = ct.track(&e.reply, TCP_SYN | TCP_ACK, now, true).unwrap();
        assert_eq!(h.dir, Dir::Reply);
        assert_eq!(h.src, (Ipv4Addr::new(172, 16, 240, 131), 31266));
        assert_eq!(h.dst, (Ipv4Addr::new(172, 16, 240, 1), 40000));
        assert_eq!(e.tcp_state(), TcpState::SynRecv);
        ct.track(&client(), TCP_ACK, now, true).unwrap();
        assert_eq!(e.tcp_state(), TcpState::Established);
        assert!(e.assured());
        assert_eq!(e.remaining(now), 86400);
        assert_eq!(
            format_entry(&e, now),
            "tcp      6 86400 ESTABLISHED src=172.16.240.1 dst=172.16.240.131 sport=40000 dport=31266 \
             src=10.244.0.74 dst=10.244.1.0 sport=2368 dport=40000 [ASSURED] mark=0 use=1"
        );
    }

    #[test]
    fn tcp_close_sequence_and_timeouts() {
        let ct = Conntrack::new(16, Timeouts::default());
        let now = Now::from_secs(10);
        let e = new_nodeport(&ct, client(), now);
        ct.track(&e.reply, TCP_SYN | TCP_ACK, now, true);
        ct.track(&client(), TCP_ACK, now, true);
        ct.track(&client(), TCP_ACK | TCP_PSH, now, true);
        assert_eq!(e.tcp_state(), TcpState::Established);
        ct.track(&client(), TCP_FIN | TCP_ACK, now, true);
        assert_eq!(e.tcp_state(), TcpState::FinWait);
        ct.track(&e.reply, TCP_ACK, now, true);
        assert_eq!(e.tcp_state(), TcpState::CloseWait);
        assert_eq!(e.remaining(now), 3600);
        ct.track(&e.reply, TCP_FIN | TCP_ACK, now, true);
        assert_eq!(e.tcp_state(), TcpState::LastAck);
        ct.track(&client(), TCP_ACK, now, true);
        assert_eq!(e.tcp_state(), TcpState::TimeWait);
        assert_eq!(e.remaining(now), 120);
        // After TIME_WAIT expires the flow is gone and a new SYN starts afresh.
        let later = Now::from_secs(10 + 121);
        assert!(ct.track(&client(), TCP_SYN, later, true).is_none());
        assert_eq!(ct.sweep(later), 1);
        assert!(ct.is_empty());
    }

    #[test]
    fn rst_closes_and_invalid_does_not_move_state() {
        let ct = Conntrack::new(16, Timeouts::default());
        let now = Now::from_secs(10);
        let e = new_nodeport(&ct, client(), now);
        // A SYN-ACK in the original direction is invalid: state unchanged.
        let h = ct.track(&client(), TCP_SYN | TCP_ACK, now, true).unwrap();
        assert!(h.invalid);
        assert_eq!(e.tcp_state(), TcpState::SynSent);
        ct.track(&e.reply, TCP_RST, now, true);
        assert_eq!(e.tcp_state(), TcpState::Close);
        assert_eq!(e.remaining(now), 10);
        // A FIN cannot start a flow; an ACK can (loose pickup), a SYN can.
        assert!(!ct.can_start(&client(), TCP_FIN));
        assert!(ct.can_start(&client(), TCP_ACK));
        assert!(ct.can_start(&client(), TCP_SYN));
    }

    #[test]
    fn udp_unreplied_then_stream() {
        let ct = Conntrack::new(16, Timeouts::default());
        let now = Now::from_secs(0);
        let dns = Tuple {
            proto: PROTO_UDP,
            src: Ipv4Addr::new(10, 244, 1, 5),
            dst: Ipv4Addr::new(10, 250, 0, 10),
            sport: 53000,
            dport: 53,
        };
        let Insert::New { entry: e, .. } = ct.insert(
            NewFlow {
                original: dns,
                tcp_flags: 0,
                reply_src: (Ipv4Addr::new(10, 244, 0, 74), 53),
                reply_dst: dns.src,
                nat: NAT_DNAT,
                ports: PortChoice { keep: 53000, ..ALL },
            },
            now,
        ) else {
            panic!()
        };
        assert_eq!(e.remaining(now), 30);
        assert!(format_entry(&e, now).contains("[UNREPLIED]"));
        ct.track(&e.reply, 0, now, true).unwrap();
        assert!(e.seen_reply() && e.assured());
        assert_eq!(e.remaining(now), 120);
        assert!(!format_entry(&e, now).contains("UNREPLIED"));
    }

    #[test]
    fn snat_keeps_port_when_free_and_never_shares_a_tuple() {
        let ct = Conntrack::new(1024, Timeouts::default());
        let now = Now::from_secs(1);
        // Two clients with the same source port to the same endpoint, masqueraded to
        // the same address: the second must get another port.
        let a = client();
        let b = Tuple { src: Ipv4Addr::new(172, 16, 240, 9), ..client() };
        let Insert::New { entry: ea, remapped: ra, .. } = ct.insert(
            NewFlow {
                original: a,
                tcp_flags: TCP_SYN,
                reply_src: EP,
                reply_dst: MASQ,
                nat: NAT_SNAT | NAT_DNAT,
                ports: ALL,
            },
            now,
        ) else {
            panic!()
        };
        let Insert::New { entry: eb, remapped: rb, .. } = ct.insert(
            NewFlow {
                original: b,
                tcp_flags: TCP_SYN,
                reply_src: EP,
                reply_dst: MASQ,
                nat: NAT_SNAT | NAT_DNAT,
                ports: ALL,
            },
            now,
        ) else {
            panic!()
        };
        assert!(!ra && rb);
        assert_eq!(ea.reply.dport, 40000);
        assert_ne!(eb.reply.dport, 40000);
        assert_ne!(ea.reply, eb.reply);
        // Many more flows colliding on the same port all stay unique.
        let mut seen = std::collections::HashSet::new();
        seen.insert(ea.reply);
        seen.insert(eb.reply);
        for i in 10..200u8 {
            let t = Tuple { src: Ipv4Addr::new(172, 16, 241, i), ..client() };
            match ct.insert(
                NewFlow {
                    original: t,
                    tcp_flags: TCP_SYN,
                    reply_src: EP,
                    reply_dst: MASQ,
                    nat: NAT_SNAT | NAT_DNAT,
                    ports: ALL,
                },
                now,
            ) {
                Insert::New { entry, .. } => assert!(seen.insert(entry.reply), "duplicate reply tuple"),
                other => panic!("{other:?}"),
            }
        }
        // Each reply tuple maps back to its own flow.
        let h = ct.track(&eb.reply, TCP_SYN | TCP_ACK, now, true).unwrap();
        assert_eq!(h.dst, (b.src, b.sport));
    }

    #[test]
    fn restricted_range_is_respected() {
        let ct = Conntrack::new(16, Timeouts::default());
        let now = Now::from_secs(1);
        let range = PortChoice { keep: 40000, lo: 61000, hi: 61001 };
        for i in 0..2u8 {
            let t = Tuple { src: Ipv4Addr::new(10, 244, 1, 5 + i), ..client() };
            let Insert::New { entry, remapped, .. } = ct.insert(
                NewFlow {
                    original: t,
                    tcp_flags: TCP_SYN,
                    reply_src: (t.dst, t.dport),
                    reply_dst: Ipv4Addr::new(172, 16, 240, 131),
                    nat: NAT_SNAT,
                    ports: range,
                },
                now,
            ) else {
                panic!()
            };
            assert!(remapped);
            assert!((61000..=61001).contains(&entry.reply.dport));
            // Established and assured: never given up for a new flow.
            ct.track(&entry.reply, TCP_SYN | TCP_ACK, now, true).unwrap();
            ct.track(&t, TCP_ACK, now, true).unwrap();
        }
        let t = Tuple { src: Ipv4Addr::new(10, 244, 1, 9), ..client() };
        assert!(matches!(
            ct.insert(
                NewFlow {
                    original: t,
                    tcp_flags: TCP_SYN,
                    reply_src: (t.dst, t.dport),
                    reply_dst: Ipv4Addr::new(172, 16, 240, 131),
                    nat: NAT_SNAT,
                    ports: range
                },
                now
            ),
            Insert::Exhausted
        ));
    }

    #[test]
    fn full_table_of_assured_flows_refuses_new_flows_only() {
        let ct = Conntrack::new(1, Timeouts::default());
        let now = Now::from_secs(1);
        let e = new_nodeport(&ct, client(), now);
        ct.track(&e.reply, TCP_SYN | TCP_ACK, now, true).unwrap();
        ct.track(&client(), TCP_ACK, now, true).unwrap();
        let other = Tuple { sport: 40001, ..client() };
        assert!(matches!(
            ct.insert(
                NewFlow {
                    original: other,
                    tcp_flags: TCP_SYN,
                    reply_src: EP,
                    reply_dst: MASQ,
                    nat: NAT_DNAT,
                    ports: ALL
                },
                now
            ),
            Insert::Full
        ));
        assert!(ct.track(&e.reply, TCP_SYN | TCP_ACK, now, true).is_some());
        assert!(matches!(
            ct.insert(
                NewFlow {
                    original: client(),
                    tcp_flags: TCP_SYN,
                    reply_src: EP,
                    reply_dst: MASQ,
                    nat: NAT_DNAT,
                    ports: ALL
                },
                now
            ),
            Insert::Joined(_)
        ));
    }

    #[test]
    fn concurrent_inserts_of_one_flow_join() {
        // The DNS race: many threads insert the same new UDP flow at once; all must
        // come back with the same entry and the table must hold one flow.
        let ct = Arc::new(Conntrack::new(1024, Timeouts::default()));
        let dns = Tuple {
            proto: PROTO_UDP,
            src: Ipv4Addr::new(10, 244, 1, 5),
            dst: Ipv4Addr::new(10, 250, 0, 10),
            sport: 53000,
            dport: 53,
        };
        for round in 0..50u16 {
            let t = Tuple { sport: 50000 + round, ..dns };
            let barrier = Arc::new(std::sync::Barrier::new(4));
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let (ct, barrier) = (ct.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        match ct.insert(
                            NewFlow {
                                original: t,
                                tcp_flags: 0,
                                reply_src: (Ipv4Addr::new(10, 244, 0, 74), 53),
                                reply_dst: t.src,
                                nat: NAT_DNAT,
                                ports: PortChoice { keep: t.sport, ..ALL },
                            },
                            Now::from_secs(1),
                        ) {
                            Insert::New { entry, .. } | Insert::Joined(entry) => entry.reply,
                            other => panic!("{other:?}"),
                        }
                    })
                })
                .collect();
            let replies: Vec<Tuple> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            assert!(replies.windows(2).all(|w| w[0] == w[1]), "{replies:?}");
        }
        assert_eq!(ct.len(), 50);
        assert_eq!(ct.entries(Now::from_secs(1)).len(), 50);
    }

    #[test]
    fn remove_where_flushes_both_keys() {
        let ct = Conntrack::new(16, Timeouts::default());
        let now = Now::from_secs(1);
        let e = new_nodeport(&ct, client(), now);
        assert_eq!(ct.remove_where(|x| x.dnat_target() == Some(SocketAddrV4::new(EP.0, EP.1))), 1);
        assert!(ct.track(&client(), TCP_ACK, now, true).is_none());
        assert!(ct.track(&e.reply, TCP_ACK, now, true).is_none());
        assert_eq!(ct.len(), 0);
    }

    #[test]
    fn dry_run_changes_nothing() {
        let ct = Conntrack::new(16, Timeouts::default());
        let now = Now::from_secs(1);
        let e = new_nodeport(&ct, client(), now);
        ct.track(&e.reply, TCP_SYN | TCP_ACK, Now::from_secs(50), false).unwrap();
        assert_eq!(e.tcp_state(), TcpState::SynSent);
        assert!(!e.seen_reply());
        assert_eq!(e.deadline(), 121);
    }
}
