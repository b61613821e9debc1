//! `Log` rules: one structured record per new flow that matched one, queued for the
//! shell to write (the core neither formats nor writes). Bounded: a full queue loses the
//! record and says so in a counter, it never blocks or grows without end.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::Verdict;
use super::ir::PolicyInfo;
use super::table::Direction;
use crate::core::nat::Tuple;

/// One `Log` rule matched by a new flow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogRecord {
    /// When (the shell's clock, nanoseconds).
    pub now: u64,
    pub dir: Direction,
    /// The local pod (namespace, name).
    pub pod: (String, String),
    pub policy: PolicyInfo,
    /// The rule's index in its policy's ingress or egress list.
    pub rule: usize,
    /// The flow's final tuple (after DNAT, before SNAT).
    pub tuple: Tuple,
    /// What that direction of the flow came to.
    pub verdict: Verdict,
}

/// Records waiting for the shell.
#[derive(Debug)]
pub struct LogQueue {
    q: Mutex<VecDeque<LogRecord>>,
    cap: usize,
    lost: AtomicU64,
}

impl Default for LogQueue {
    fn default() -> Self {
        LogQueue::new(4096)
    }
}

impl LogQueue {
    pub fn new(cap: usize) -> Self {
        LogQueue { q: Mutex::new(VecDeque::new()), cap, lost: AtomicU64::new(0) }
    }

    /// Queues a record (new flows only: never on an established flow's path).
    pub fn push(&self, r: LogRecord) {
        let mut q = self.q.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= self.cap {
            self.lost.fetch_add(1, Relaxed);
            return;
        }
        q.push_back(r);
    }

    /// Moves every queued record to `out`.
    pub fn drain(&self, out: &mut Vec<LogRecord>) {
        let mut q = self.q.lock().unwrap_or_else(|e| e.into_inner());
        out.extend(q.drain(..));
    }

    /// Records lost to a full queue.
    pub fn lost(&self) -> u64 {
        self.lost.load(Relaxed)
    }
}
