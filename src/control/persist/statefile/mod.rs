//! The state file of `--keep-on-exit`, written at the cost of what changed: a snapshot
//! (`<socket>.state`, the JSON of [`State`] with the last journal sequence it holds) and
//! a journal of deltas since (`<socket>.state.journal`, codec in
//! [`crate::control::persist::journal`]).
//!
//! - A change (pod or service put or removed, over the API or from etcd) is recorded as
//!   ops; when the request is done they go to the journal as one record, in one `write`
//!   before the reply: a killed ucanal loses no acknowledged change (no fsync: the file
//!   sits beside the socket, normally on tmpfs, and describes kernel state that does
//!   not outlive the machine either).
//! - Past [`JOURNAL_RATIO`] of the snapshot (and at least [`JOURNAL_MIN`]) the journal is
//!   compacted off the request path: it is set aside as `.journal.old`, a fresh one takes
//!   the next records, and a thread writes the new snapshot from a clone of the state
//!   (the service table's clone shares its shards), then removes the old journal.
//! - Loading reads the snapshot and replays both journals past its sequence. A torn
//!   tail ends its journal: what precedes it is replayed, the rest is logged and
//!   counted ([`TORN_TAILS`], in `show node`) and the start writes a fresh snapshot.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use super::files::{Paths, State, write_atomic};
use super::journal::{self, MAGIC, Op, Replay};
use crate::api::{PodSpec, StateFileStats};
use crate::core::nat::service::ServiceTable;

/// Compact when the journal outgrows this share of the snapshot ...
pub const JOURNAL_RATIO: u64 = 1;
/// ... and is at least this big.
pub const JOURNAL_MIN: u64 = 1 << 20;

/// Torn journal tails met at load since this ucanal started.
pub static TORN_TAILS: AtomicU64 = AtomicU64::new(0);

/// What a snapshot is written from, cheap to take under the daemon lock.
pub struct Source {
    pub seed: u64,
    pub pods: Vec<PodSpec>,
    pub services: ServiceTable,
    pub restore_sysctls: Vec<(String, String)>,
}

impl Source {
    fn into_state(self, seq: u64) -> State {
        let mut services: Vec<_> = self.services.iter().map(|s| s.spec.clone()).collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        State { seed: self.seed, pods: self.pods, services, restore_sysctls: self.restore_sysctls, seq }
    }
}

pub struct StateFile {
    paths: Paths,
    file: Option<File>,
    seq: u64,
    journal_bytes: u64,
    snapshot_bytes: u64,
    pending: Vec<Op>,
    compaction: Option<JoinHandle<io::Result<u64>>>,
    appends: u64,
    compactions: u64,
}

impl StateFile {
    /// `seq`: the last sequence of the state loaded at start (0 without one).
    pub fn new(paths: Paths, seq: u64) -> StateFile {
        StateFile {
            paths,
            file: None,
            seq,
            journal_bytes: 0,
            snapshot_bytes: 0,
            pending: Vec::new(),
            compaction: None,
            appends: 0,
            compactions: 0,
        }
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn record(&mut self, op: Op) {
        self.pending.push(op);
    }

    /// Writes the whole state now and starts a fresh journal (at start, and when the
    /// journal cannot be appended to).
    pub fn snapshot(&mut self, src: Source) {
        self.finish();
        self.pending.clear();
        let st = src.into_state(self.seq);
        let r = serde_json::to_vec(&st).map_err(io::Error::other).and_then(|b| {
            write_atomic(&self.paths.state, &b)?;
            Ok(b.len() as u64)
        });
        match r.and_then(|n| self.fresh_journal().map(|()| n)) {
            Ok(n) => {
                self.snapshot_bytes = n;
                let _ = std::fs::remove_file(&self.paths.journal_old);
            }
            Err(e) => {
                self.file = None;
                tracing::error!("saving {}: {e}", self.paths.state.display());
            }
        }
    }

    fn fresh_journal(&mut self) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        // A new file, not the old one truncated: whoever still holds the old one (a
        // predecessor that just handed over) writes into nothing that is read.
        match std::fs::remove_file(&self.paths.journal) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.paths.journal)?;
        f.write_all(MAGIC)?;
        self.file = Some(f);
        self.journal_bytes = MAGIC.len() as u64;
        Ok(())
    }

    /// Appends what was recorded since the last flush as one record; compacts in the
    /// background once the journal outgrows the snapshot. `src` is called only then.
    pub fn flush(&mut self, src: impl FnOnce() -> Source) {
        self.reap(false);
        if self.pending.is_empty() {
            return;
        }
        let Some(f) = self.file.as_mut() else {
            // No journal to append to (a failed write): the whole state, now.
            return self.snapshot(src());
        };
        self.seq += 1;
        let rec = journal::encode(self.seq, &self.pending);
        self.pending.clear();
        if let Err(e) = f.write_all(&rec) {
            tracing::error!("appending to {}: {e}; writing the whole state instead", self.paths.journal.display());
            self.file = None;
            return self.snapshot(src());
        }
        self.appends += 1;
        self.journal_bytes += rec.len() as u64;
        if self.compaction.is_none() && self.journal_bytes > (self.snapshot_bytes * JOURNAL_RATIO).max(JOURNAL_MIN) {
            self.compact(src());
        }
    }

    /// Sets the journal aside, starts a fresh one and writes the snapshot on a thread.
    fn compact(&mut self, src: Source) {
        if self.paths.journal_old.exists() {
            // An earlier compaction did not finish: nothing may replace its journal.
            return self.snapshot(src);
        }
        if let Err(e) =
            std::fs::rename(&self.paths.journal, &self.paths.journal_old).and_then(|()| self.fresh_journal())
        {
            tracing::error!("compacting {}: {e}; writing the whole state instead", self.paths.journal.display());
            return self.snapshot(src);
        }
        let (seq, paths) = (self.seq, self.paths.clone());
        let spawned = std::thread::Builder::new().name("ucanal-state".into()).spawn(move || {
            let t = std::time::Instant::now();
            let b = serde_json::to_vec(&src.into_state(seq)).map_err(io::Error::other)?;
            write_atomic(&paths.state, &b)?;
            std::fs::remove_file(&paths.journal_old)?;
            tracing::info!(bytes = b.len(), seq, ms = t.elapsed().as_millis() as u64, "state file compacted");
            Ok(b.len() as u64)
        });
        match spawned {
            Ok(h) => self.compaction = Some(h),
            Err(e) => tracing::error!("compacting {}: no thread: {e}", self.paths.state.display()),
        }
    }

    /// Collects a finished compaction (`wait`: waits for a running one).
    fn reap(&mut self, wait: bool) {
        if !wait && self.compaction.as_ref().is_none_or(|h| !h.is_finished()) {
            return;
        }
        let Some(h) = self.compaction.take() else { return };
        match h.join() {
            Ok(Ok(n)) => {
                self.snapshot_bytes = n;
                self.compactions += 1;
            }
            // The old journal stays, and is replayed at the next start.
            Ok(Err(e)) => tracing::error!("compacting {}: {e}", self.paths.state.display()),
            Err(_) => tracing::error!("compacting {}: the thread panicked", self.paths.state.display()),
        }
    }

    /// Waits for a running compaction (before the files are handed on or removed).
    pub fn finish(&mut self) {
        self.reap(true);
    }

    pub fn stats(&self) -> StateFileStats {
        StateFileStats {
            path: self.paths.state.clone(),
            seq: self.seq,
            snapshot_bytes: self.snapshot_bytes,
            journal_bytes: self.journal_bytes,
            appends: self.appends,
            compactions: self.compactions,
            compacting: self.compaction.is_some(),
            torn_tails_at_load: TORN_TAILS.load(Ordering::Relaxed),
        }
    }
}

/// The state left by the previous ucanal: the snapshot, then both journals replayed
/// past its sequence. `None` without a readable snapshot.
pub fn load(paths: &Paths) -> Option<State> {
    let b = match std::fs::read(&paths.state) {
        Ok(b) => b,
        Err(_) => {
            if paths.journal.exists() {
                tracing::warn!("{}: a journal without its snapshot; ignored", paths.journal.display());
            }
            return None;
        }
    };
    let mut st: State = match serde_json::from_slice(&b) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("{}: unreadable ({e}); starting from the config alone", paths.state.display());
            return None;
        }
    };
    let mut replay = Replay {
        pods: std::mem::take(&mut st.pods),
        services: std::mem::take(&mut st.services).into_iter().map(|s| (s.name.clone(), s)).collect(),
    };
    let (mut records, from) = (0, st.seq);
    for path in [&paths.journal_old, &paths.journal] {
        let Ok(bytes) = std::fs::read(path) else { continue };
        let j = journal::decode(&bytes);
        if let Some(t) = &j.torn {
            TORN_TAILS.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "{}: torn tail ignored: {t} ({} bytes from byte {} not replayed)",
                path.display(),
                bytes.len() - j.valid_len,
                j.valid_len
            );
        }
        for r in j.records {
            if r.seq <= st.seq {
                continue;
            }
            st.seq = r.seq;
            records += 1;
            for op in r.ops {
                replay.apply(op);
            }
        }
    }
    st.pods = replay.pods;
    st.services = replay.services.into_values().collect();
    tracing::info!("{}: snapshot at {from} and {records} journal record(s) after it", paths.state.display());
    Some(st)
}

#[cfg(test)]
mod tests;
