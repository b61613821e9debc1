//! Restarts and upgrades without a reset (`ucanal run --keep-on-exit`): what one
//! ucanal leaves for the next one, and how the next one picks it up.
//!
//! - The kernel stays steered: on SIGTERM the steering rules, the moved `local` rule,
//!   the host port and the pods' `eth0` stay (the TAPs are persistent, see
//!   `io::tap::Persist`); the next ucanal attaches its queues to the same devices
//!   (same ifindex, addresses and routes) and re-adds nothing it would first delete.
//! - Runtime state (pods, services, endpoints added over the API), the endpoint-choice
//!   hash seed and the sysctls to put back at the final teardown are kept in
//!   `<socket>.state` (JSON) and the journal of changes beside it (see `statefile`):
//!   each change appends what it changed, so a SIGKILL loses none.
//! - Conntrack goes to `<socket>.conntrack` (see `core::nat::checkpoint`): once a
//!   second while running and once more at SIGTERM after the workers stopped; the next
//!   ucanal loads it before its workers start. Flows begun after the last checkpoint of
//!   a killed ucanal are picked up mid-stream, as `nf_conntrack_tcp_loose` does, and
//!   with the same seed they go to the same endpoint.
//!
//! SIGINT (or SIGTERM without `--keep-on-exit`) removes everything, these files included.

mod files;
pub mod journal;
pub mod statefile;

use std::path::Path;

pub use files::{Paths, State, unix_now, write_atomic};
use journal::Op;
use statefile::{Source, StateFile};

use crate::api::StateFileStats;
use crate::core::Dataplane;
use crate::core::nat::checkpoint;
use crate::io::clock;

/// Writes every live flow of `dp` to `path`; returns how many.
pub fn write_checkpoint(dp: &Dataplane, path: &Path) -> std::io::Result<usize> {
    let flows = dp.conntrack.snapshot(clock::now());
    write_atomic(path, &checkpoint::encode(&flows, unix_now()))?;
    Ok(flows.len())
}

/// Loads the flows of a checkpoint into `dp`, less the time that passed since it
/// was written; returns (restored, in the file).
pub fn load_checkpoint(dp: &Dataplane, path: &Path) -> (usize, usize) {
    let Ok(b) = std::fs::read(path) else { return (0, 0) };
    load_checkpoint_bytes(dp, &b, &path.display().to_string())
}

/// Loads the flows of checkpoint bytes (from a file, or a hand-over named `what`).
pub fn load_checkpoint_bytes(dp: &Dataplane, b: &[u8], what: &str) -> (usize, usize) {
    let (flows, at) = match checkpoint::decode(b) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!("{what}: {e}; flows will be picked up mid-stream");
            return (0, 0);
        }
    };
    let elapsed = u32::try_from(unix_now().saturating_sub(at)).unwrap_or(u32::MAX);
    let now = clock::now();
    let n = flows
        .iter()
        .filter(|f| {
            dp.conntrack.restore(&checkpoint::Saved { remaining: f.remaining.saturating_sub(elapsed), ..**f }, now)
        })
        .count();
    (n, flows.len())
}

/// With `--keep-on-exit`: where this node's state goes, and the state file that keeps
/// it (gone once it is handed to a successor).
pub struct Persist {
    paths: Paths,
    statefile: Option<StateFile>,
}

impl Persist {
    /// `seq`: the last journal record of the state loaded at start (0 without one).
    pub fn new(paths: Paths, seq: u64) -> Persist {
        Persist { statefile: Some(StateFile::new(paths.clone(), seq)), paths }
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    pub fn seq(&self) -> u64 {
        self.statefile.as_ref().map_or(0, StateFile::seq)
    }

    /// Notes a change for the journal.
    pub fn record(&mut self, op: Op) {
        if let Some(sf) = &mut self.statefile {
            sf.record(op);
        }
    }

    /// Appends what was recorded as one record (see [`StateFile::flush`]).
    pub fn flush(&mut self, src: impl FnOnce() -> Source) {
        if let Some(sf) = &mut self.statefile {
            sf.flush(src);
        }
    }

    /// Writes the whole state now, with a fresh journal.
    pub fn snapshot(&mut self, src: Source) {
        if let Some(sf) = &mut self.statefile {
            sf.snapshot(src);
        }
    }

    /// Waits for a compaction still writing.
    pub fn finish(&mut self) {
        if let Some(sf) = &mut self.statefile {
            sf.finish();
        }
    }

    /// The state files are a successor's now: nothing more is written to them.
    pub fn hand_off(&mut self) {
        self.statefile = None;
    }

    pub fn stats(&self) -> Option<StateFileStats> {
        self.statefile.as_ref().map(StateFile::stats)
    }

    /// Removes every file (a final teardown).
    pub fn remove_files(&self) {
        self.paths.remove();
    }

    /// The conntrack checkpoint at SIGTERM, after the workers stopped.
    pub fn final_checkpoint(&self, dp: &Dataplane) {
        let path = &self.paths.conntrack;
        match write_checkpoint(dp, path) {
            Ok(n) => tracing::info!("conntrack: {n} flows handed over in {}", path.display()),
            Err(e) => tracing::error!("conntrack checkpoint {}: {e}", path.display()),
        }
    }
}
