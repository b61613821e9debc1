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
//! - the entry count never exceeds `max`: an insert reserves its slot before it claims
//!   a tuple (one atomic update that fails at `max`) and gives it back if it joins or
//!   fails, so two workers inserting at once cannot both take the last slot;
//! - a full table evicts a flow that may be dropped early (not ASSURED, or TCP already
//!   closing; see [`early_drop`](super::early_drop) for which first) instead of refusing the new flow, and
//!   so does a reply port space with every candidate port held; assured flows are never
//!   evicted.
//!
//! UDP flows become streams (ASSURED, the long timeout) as the kernel's UDP tracker
//! decides, by the rule of the kernel chosen ([`UdpRule`], see [`udp`]).
//!
//! The reply tuple is unique per full tuple, as nf_nat's: the same masquerade port
//! serves flows to different destinations, so the port space is per destination.
//!
//! Only flows that ucanal NATs are tracked (plain pod-to-pod routing needs no state),
//! and flows that touch a local pod with network policy (their replies pass by their
//! entry; see `core::policy`).
//!
//! Heads up: an expired entry stays in the map until `sweep` removes it, but every
//! lookup and insert treats it as absent, so expiry is exact to the second.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering::Relaxed};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;

use super::Tuple;
use super::early_drop::candidates::{Candidates, GRACE_NS};
use crate::core::Now;
use crate::wire::ipv4::{PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

pub(super) mod filter;
mod policy;
mod state;
#[cfg(test)]
mod tests;
pub mod tombstone;
pub mod udp;

pub use state::{Dir, TcpState, Timeouts, Transition, tcp_transition};
pub use udp::UdpRule;

/// NAT applied to a flow.
pub const NAT_DNAT: u8 = 1;
pub const NAT_SNAT: u8 = 2;

pub(super) const SEEN_REPLY: u8 = 1;
pub(super) const ASSURED: u8 = 2;
/// Admitted mid-stream (a TCP pickup): a policy re-check needs both orientations allowed.
pub const POLICY_BOTH: u8 = 4;

/// SCTP flows (tracked for policy only, never NATed): the kernel's established timeout.
pub const SCTP_TIMEOUT: u32 = 210;

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
    /// When the flow was entered (`Now`, ns): UDP's stream rule and early drop's grace.
    pub(super) born: u64,
    /// The policy generation the flow was admitted (or last re-checked) under.
    pub policy_gen: AtomicU32,
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
    /// Admitted mid-stream: a policy re-check needs both orientations allowed.
    pub fn policy_both(&self) -> bool {
        self.flags.load(Relaxed) & POLICY_BOTH != 0
    }
    /// Marks the flow admitted under policy generation `generation` (`both`: a pickup).
    pub fn admitted(&self, generation: u32, both: bool) {
        self.policy_gen.store(generation, Relaxed);
        if both {
            self.flags.fetch_or(POLICY_BOTH, Relaxed);
        }
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
    /// Keys per bucket of the map, for lock-free misses (`filter`).
    pub(super) filter: filter::Filter,
    pub(super) entries: AtomicUsize,
    pub(super) max: usize,
    pub(super) candidates: Candidates,
    /// Flows cut by a policy change, kept as tombstones for a while.
    pub(super) tombstones: tombstone::Tombstones,
    pub timeouts: Timeouts,
    /// When a UDP flow becomes a stream (`[conntrack] udp_stream_rule`).
    pub udp_rule: UdpRule,
}

/// What one sweep removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Swept {
    /// Flows past their timeout.
    pub expired: usize,
    /// Unassured flows past the grace period, removed because the table was over
    /// [`PRESSURE_PERCENT`](super::early_drop::PRESSURE_PERCENT) full.
    pub pressure: usize,
}

impl Conntrack {
    pub fn new(max: usize, timeouts: Timeouts) -> Self {
        Conntrack {
            map: DashMap::with_hasher(ahash::RandomState::new()),
            filter: filter::Filter::new(),
            entries: AtomicUsize::new(0),
            max,
            candidates: Candidates::new(max),
            tombstones: tombstone::Tombstones::default(),
            timeouts,
            udp_rule: UdpRule::default(),
        }
    }

    /// Takes one slot of `max` for a new entry; false when the table is full. Every
    /// `true` is matched by a decrement when the entry goes (or by [`Conntrack::unreserve`]).
    pub(super) fn reserve(&self) -> bool {
        self.entries.fetch_update(Relaxed, Relaxed, |n| (n < self.max).then_some(n + 1)).is_ok()
    }

    /// Gives back a slot taken by [`Conntrack::reserve`] that no entry used.
    pub(super) fn unreserve(&self) {
        self.entries.fetch_sub(1, Relaxed);
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
    /// Keys queued as early-drop candidates (bounded; see [`early_drop`](super::early_drop)).
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
            PROTO_SCTP => Some((TcpState::None, SCTP_TIMEOUT)),
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
        let key = t.key();
        if !self.filter.may_contain(key) {
            return None;
        }
        let r = self.map.get(&key)?;
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
                let v = self.udp_rule.verdict(e.seen_reply(), now.0.saturating_sub(e.born));
                if commit && v.assure && !e.assured() {
                    e.flags.fetch_or(ASSURED, Relaxed);
                }
                if v.stream_timeout { self.timeouts.udp_stream } else { self.timeouts.udp }
            }
            PROTO_SCTP => SCTP_TIMEOUT,
            _ => self.timeouts.icmp,
        };
        let mut first_answer = false;
        if commit {
            // As the kernel, after the packet's own handling: the first reply is still
            // handled as unreplied.
            if dir == Dir::Reply && !e.seen_reply() {
                e.flags.fetch_or(SEEN_REPLY, Relaxed);
                first_answer = !e.assured();
            }
            if !invalid {
                let d = now.secs().saturating_add(timeout);
                // Store only when it moves, so a busy flow does not dirty the line every packet.
                if e.deadline.load(Relaxed) != d {
                    e.deadline.store(d, Relaxed);
                }
            }
        }
        let hit = Hit::of(e, dir, invalid);
        if first_answer {
            // Once per flow, during its setup: never on an established flow's path.
            let (key, born) = (e.original.key(), e.born);
            drop(r);
            self.candidates.answered(key, born, |k| self.still_candidate(k, now));
        }
        Some(hit)
    }

    /// Whether a queued key still names a live flow that may be dropped early.
    fn still_candidate(&self, k: u128, now: Now) -> bool {
        self.map.get(&k).is_some_and(|e| e.original.key() == k && e.is_live(now) && e.can_early_drop())
    }

    /// Enters a new flow. See the module docs for the races this resolves. A full
    /// table, or a reply-tuple port space with no free port, gives up a flow that may
    /// be dropped early (see [`early_drop`](super::early_drop)) rather than refusing the new one.
    pub fn insert(&self, flow: NewFlow, now: Now) -> Insert {
        let Some((state, timeout)) = self.initial(&flow.original, flow.tcp_flags) else {
            return Insert::Exhausted;
        };
        let mut evicted = false;
        let mut tries = 0;
        while !self.reserve() {
            // A live entry for this very flow (inserted a moment ago by another worker) is not "new".
            if let Some(e) = self.map.get(&flow.original.key()).filter(|e| e.is_live(now)) {
                return Insert::Joined(e.clone());
            }
            // The slot an eviction frees may go to another worker's insert: a few rounds.
            tries += 1;
            if tries > 4 || !self.early_drop(now) {
                return Insert::Full;
            }
            evicted = true;
        }
        let r = self.insert_reserved(&flow, state, timeout, now).evicted(evicted);
        if !matches!(r, Insert::New { .. }) {
            self.unreserve();
        }
        r
    }

    /// [`Conntrack::insert`] with its slot reserved: the reply tuple's port, then the entry.
    fn insert_reserved(&self, flow: &NewFlow, state: TcpState, timeout: u32, now: Now) -> Insert {
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
            match self.try_port(flow, port, state, timeout, now) {
                Attempt::Done(r) => return r,
                Attempt::Taken(holder) => {
                    if victim.is_none() && holder.can_early_drop() {
                        victim = Some(holder);
                    }
                }
            }
        }
        // Every candidate port is held by a live flow: give up one that may go.
        if let Some(v) = victim {
            let port = v.reply.dport;
            if self.remove_entry(&v)
                && let Attempt::Done(r) = self.try_port(flow, port, state, timeout, now)
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
            born: now.0,
            policy_gen: AtomicU32::new(0),
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
                self.filter.add(reply.key());
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
                    if self.map.remove_if(&reply.key(), |_, m| reply_taken_is_ours(m)).is_some() {
                        self.filter.sub(reply.key());
                    }
                    return Attempt::Done(Insert::Joined(cur));
                }
                self.forget_replaced(&cur, original.key());
                o.insert(entry.clone());
            }
            MapEntry::Vacant(v) => {
                self.filter.add(original.key());
                v.insert(entry.clone());
            }
        }
        // The slot was reserved by `insert`.
        self.candidates.push(original.key(), now.0, |k| self.still_candidate(k, now));
        Attempt::Done(Insert::New { remapped: port != ports.keep, evicted: false, entry })
    }

    /// Bookkeeping when an expired entry's key is overwritten: the entry count follows
    /// original keys.
    pub(super) fn forget_replaced(&self, old: &Arc<Entry>, key: u128) {
        if old.original.key() == key {
            self.entries.fetch_sub(1, Relaxed);
        }
    }

    /// Removes expired entries and, while the table is over
    /// [`PRESSURE_PERCENT`](super::early_drop::PRESSURE_PERCENT) full, every flow that may be dropped early and is
    /// older than [`GRACE_NS`] (as the kernel's gc worker over 95 %).
    ///
    /// Heads up: this never write-locks a whole shard. It finds the keys under each
    /// shard's read lock (workers keep reading), then removes them one key at a time,
    /// re-checking under that key's write lock, so a flow refreshed in between survives
    /// and a worker waits at most for one removal.
    pub fn sweep(&self, now: Now) -> Swept {
        let pressure = self.under_pressure();
        let grace_cut = now.0.saturating_sub(GRACE_NS);
        let mut expired = Vec::new();
        let mut doomed = Vec::new();
        for r in self.map.iter() {
            if !r.is_live(now) {
                expired.push(*r.key());
            } else if pressure && r.original.key() == *r.key() && r.born <= grace_cut && r.value().can_early_drop() {
                doomed.push(r.value().clone());
            }
        }
        let mut removed = 0;
        for k in expired {
            if let Some((k, e)) = self.map.remove_if(&k, |_, e| !e.is_live(now)) {
                self.filter.sub(k);
                if e.original.key() == k {
                    removed += 1;
                }
            }
        }
        self.entries.fetch_sub(removed, Relaxed);
        let pressure = doomed.iter().filter(|e| e.can_early_drop() && self.remove_entry(e)).count();
        self.tombstones.sweep(now);
        Swept { expired: removed, pressure }
    }

    /// Removes the flows matching `pred` (both keys); returns how many.
    pub fn remove_where(&self, pred: impl Fn(&Entry) -> bool) -> usize {
        let mut removed = 0;
        self.map.retain(|k, e| {
            if !pred(e) {
                return true;
            }
            self.filter.sub(*k);
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
