//! Who may hold an API connection, and for how long: no client can lock the API out.
//!
//! - A connection waits at most `idle` (default 10 s) for each complete request (and
//!   for each answer to be taken): an idle or a slow client is told so and closed.
//! - At most `clients` connections at once; when all are taken, an idle connection
//!   gives its slot to the newcomer (it is told so and closed): the one idle the
//!   longest of the client process holding the most idle connections, so a process
//!   hoarding connections (a hung plugin, a forgotten `socat` loop, a flood of them)
//!   loses its own first and a one-shot `ucanal` or CNI call gets in. A newcomer is
//!   refused only when every connection is busy with a request or a stream.
//! - Streams (`trace --live`, `capture`) are the only long-lived kind: at most
//!   `streams` at once, and a streaming connection is never idle.
//!
//! The book is a mutex over a small map, touched once per request: never on the packet
//! path, and never held across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::api::ApiStats;

/// The limits of `[api]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub clients: usize,
    pub streams: usize,
    pub idle: Duration,
}

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Doing {
    /// Waiting for a request since then: may be asked to yield.
    Idle(Instant),
    Request,
    Stream,
}

struct Conn {
    doing: Doing,
    /// The client process (its pid from the socket's credentials; 0 unknown).
    peer: u32,
    /// Wakes the connection's task when it must give its slot up.
    yield_now: Arc<Notify>,
}

#[derive(Default)]
struct Book {
    next: u64,
    conns: HashMap<u64, Conn>,
    streams: usize,
}

impl Book {
    /// The idle connection to give up: of the process with the most idle connections
    /// (the earliest idle one breaks a tie), the one idle the longest.
    fn victim(&self) -> Option<u64> {
        let mut by_peer: HashMap<u32, (usize, Instant, u64)> = HashMap::new();
        for (id, c) in &self.conns {
            let Doing::Idle(since) = c.doing else { continue };
            let e = by_peer.entry(c.peer).or_insert((0, since, *id));
            e.0 += 1;
            if since < e.1 {
                (e.1, e.2) = (since, *id);
            }
        }
        by_peer.into_values().max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1))).map(|(_, _, id)| id)
    }
}

/// The connection slots of one API server (every listener together).
pub struct Slots {
    limits: Limits,
    book: Mutex<Book>,
    idle_closed: AtomicU64,
    yielded: AtomicU64,
    refused: AtomicU64,
    streams_refused: AtomicU64,
}

/// Why a connection or a stream was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every connection is serving a request or a stream.
    Busy(usize),
    /// As many streams as allowed run already.
    Streams(usize),
}

impl Slots {
    pub fn new(limits: Limits) -> Arc<Slots> {
        Arc::new(Slots {
            limits,
            book: Mutex::new(Book::default()),
            idle_closed: AtomicU64::new(0),
            yielded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            streams_refused: AtomicU64::new(0),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection of client process `peer`, idle from now; when none is
    /// free, an idle connection is told to yield and its slot is this one's (see the
    /// module docs for which).
    pub fn admit(self: &Arc<Self>, peer: u32) -> Result<Slot, Refusal> {
        let mut b = self.book();
        if b.conns.len() >= self.limits.clients {
            let Some(id) = b.victim() else {
                self.refused.fetch_add(1, Relaxed);
                return Err(Refusal::Busy(self.limits.clients));
            };
            if let Some(c) = b.conns.remove(&id) {
                c.yield_now.notify_one();
                self.yielded.fetch_add(1, Relaxed);
            }
        }
        b.next += 1;
        let id = b.next;
        let yield_now = Arc::new(Notify::new());
        b.conns.insert(id, Conn { doing: Doing::Idle(Instant::now()), peer, yield_now: yield_now.clone() });
        Ok(Slot { slots: self.clone(), id, yield_now })
    }

    fn set(&self, id: u64, doing: Doing) {
        if let Some(c) = self.book().conns.get_mut(&id) {
            c.doing = doing;
        }
    }

    pub fn stats(&self) -> ApiStats {
        let b = self.book();
        ApiStats {
            connections: b.conns.len(),
            idle: b.conns.values().filter(|c| matches!(c.doing, Doing::Idle(_))).count(),
            streams: b.streams,
            max_connections: self.limits.clients,
            max_streams: self.limits.streams,
            idle_timeout_ms: self.limits.idle.as_millis() as u64,
            idle_closed: self.idle_closed.load(Relaxed),
            yielded: self.yielded.load(Relaxed),
            refused: self.refused.load(Relaxed),
            streams_refused: self.streams_refused.load(Relaxed),
        }
    }
}

/// One connection's slot; dropping it frees the slot.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    yield_now: Arc<Notify>,
}

impl Slot {
    /// Waiting for the next request: from now on this connection may be asked to yield.
    pub fn idle(&self) {
        self.slots.set(self.id, Doing::Idle(Instant::now()));
    }

    /// A request arrived: the connection keeps its slot until it is idle again.
    pub fn busy(&self) {
        self.slots.set(self.id, Doing::Request);
    }

    /// Resolves when a newer client took this slot (the connection must close).
    pub async fn yielded(&self) {
        self.yield_now.notified().await
    }

    /// The deadline for a request or an answer.
    pub fn idle_limit(&self) -> Duration {
        self.slots.limits.idle
    }

    /// Counts a connection closed for idling past the deadline.
    pub fn timed_out(&self) {
        self.slots.idle_closed.fetch_add(1, Relaxed);
    }

    /// Admission for a stream on this connection; the guard gives the stream slot back.
    pub fn stream(&self) -> Result<StreamGuard, Refusal> {
        let mut b = self.slots.book();
        if b.streams >= self.slots.limits.streams {
            self.slots.streams_refused.fetch_add(1, Relaxed);
            return Err(Refusal::Streams(self.slots.limits.streams));
        }
        b.streams += 1;
        if let Some(c) = b.conns.get_mut(&self.id) {
            c.doing = Doing::Stream;
        }
        Ok(StreamGuard { slots: self.slots.clone() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.book().conns.remove(&self.id);
    }
}

/// A running stream's place among the `streams` allowed.
pub struct StreamGuard {
    slots: Arc<Slots>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut b = self.slots.book();
        b.streams = b.streams.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(clients: usize, streams: usize) -> Arc<Slots> {
        Slots::new(Limits { clients, streams, idle: Duration::from_secs(10) })
    }

    #[test]
    fn the_oldest_idle_connection_yields_to_a_newcomer() {
        let s = slots(2, 1);
        let a = s.admit(1).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let b = s.admit(1).unwrap();
        // Full of idle connections: the oldest (a) is told to yield.
        let c = s.admit(1).unwrap();
        let st = s.stats();
        assert_eq!((st.connections, st.yielded), (2, 1));
        assert!(futures::FutureExt::now_or_never(a.yielded()).is_some(), "a was asked to go");
        assert!(futures::FutureExt::now_or_never(b.yielded()).is_none());
        // Busy connections never yield: with both busy a newcomer is refused.
        b.busy();
        c.busy();
        assert_eq!(s.admit(1).err(), Some(Refusal::Busy(2)));
        assert_eq!(s.stats().refused, 1);
        // a's slot was taken from it: dropping it frees nobody else's.
        drop(a);
        assert_eq!(s.stats().connections, 2);
        c.idle();
        let d = s.admit(1).unwrap();
        drop((b, d));
        assert_eq!(s.stats().connections, 0);
    }

    #[test]
    fn a_process_hoarding_connections_gives_its_own_up_first() {
        let s = slots(4, 1);
        let mine = s.admit(7).unwrap();
        let hog: Vec<Slot> = (0..3).map(|_| s.admit(666).unwrap()).collect();
        // However many the hog opens, my older idle connection is never the one to go.
        let mut more = Vec::new();
        for _ in 0..100 {
            more.push(s.admit(666).unwrap());
        }
        assert!(futures::FutureExt::now_or_never(mine.yielded()).is_none());
        assert!(hog.iter().all(|h| futures::FutureExt::now_or_never(h.yielded()).is_some()));
        // A newcomer of mine gets in too (a hog connection yields).
        let mine2 = s.admit(7).unwrap();
        assert!(futures::FutureExt::now_or_never(mine.yielded()).is_none());
        drop((mine2, more));
    }

    #[test]
    fn streams_have_their_own_limit_and_are_never_idle() {
        let s = slots(2, 1);
        let a = s.admit(1).unwrap();
        let g = a.stream().unwrap();
        let b = s.admit(1).unwrap();
        assert_eq!(b.stream().err(), Some(Refusal::Streams(1)));
        // The stream's connection is not idle: the newcomer takes b's slot, not a's.
        let _c = s.admit(1).unwrap();
        assert!(futures::FutureExt::now_or_never(b.yielded()).is_some());
        assert!(futures::FutureExt::now_or_never(a.yielded()).is_none());
        drop(g);
        assert_eq!(s.stats().streams, 0);
        assert!(a.stream().is_ok());
    }
}
