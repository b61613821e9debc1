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

pub mod journal;
pub mod statefile;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::control::config::PodSpec;
use crate::core::Dataplane;
use crate::core::nat::checkpoint;
use crate::core::nat::service::ServiceSpec;
use crate::io::clock;

/// Where one node's state lives: beside its API socket (a 0700 directory).
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub(crate) state: PathBuf,
    pub(crate) conntrack: PathBuf,
    /// The deltas since the snapshot, and the journal set aside while one is compacted.
    pub(crate) journal: PathBuf,
    pub(crate) journal_old: PathBuf,
}

impl Paths {
    pub(crate) fn for_socket(socket: &Path) -> Paths {
        let with = |ext: &str| {
            let mut s = socket.as_os_str().to_owned();
            s.push(ext);
            PathBuf::from(s)
        };
        Paths {
            state: with(".state"),
            conntrack: with(".conntrack"),
            journal: with(".state.journal"),
            journal_old: with(".state.journal.old"),
        }
    }

    pub(crate) fn remove(&self) {
        for p in [&self.state, &self.conntrack, &self.journal, &self.journal_old] {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What survives a restart besides the kernel objects and conntrack.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct State {
    pub(crate) seed: u64,
    pub(crate) pods: Vec<PodSpec>,
    pub(crate) services: Vec<ServiceSpec>,
    /// Node-wide sysctls to put back at the final teardown: (name under net.ipv4, value).
    pub(crate) restore_sysctls: Vec<(String, String)>,
    /// The last journal record this state holds (see `statefile`).
    #[serde(default)]
    pub(crate) seq: u64,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Writes `bytes` to `path` atomically (a temporary file renamed over it), mode 0600.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// Writes every live flow of `dp` to `path`; returns how many.
pub(crate) fn write_checkpoint(dp: &Dataplane, path: &Path) -> std::io::Result<usize> {
    let flows = dp.conntrack.snapshot(clock::now());
    write_atomic(path, &checkpoint::encode(&flows, unix_now()))?;
    Ok(flows.len())
}

/// Loads the flows of a checkpoint into `dp`, less the time that passed since it
/// was written; returns (restored, in the file).
pub(crate) fn load_checkpoint(dp: &Dataplane, path: &Path) -> (usize, usize) {
    let Ok(b) = std::fs::read(path) else { return (0, 0) };
    load_checkpoint_bytes(dp, &b, &path.display().to_string())
}

/// Loads the flows of checkpoint bytes (from a file, or a hand-over named `what`).
pub(crate) fn load_checkpoint_bytes(dp: &Dataplane, b: &[u8], what: &str) -> (usize, usize) {
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

impl super::daemon::Daemon {
    /// Writes what changed since the last call to the state journal (with
    /// `--keep-on-exit`); called after every change.
    pub(crate) fn save_state(&mut self) {
        let Some(mut sf) = self.statefile.take() else { return };
        sf.flush(|| self.state_source());
        self.statefile = Some(sf);
    }

    /// Writes the whole state file now, with a fresh journal (at start).
    pub(crate) fn snapshot_state(&mut self) {
        let Some(mut sf) = self.statefile.take() else { return };
        sf.snapshot(self.state_source());
        self.statefile = Some(sf);
    }

    /// Flushes the journal and waits for a compaction, before the files are handed on.
    pub(crate) fn settle_state(&mut self) {
        self.save_state();
        if let Some(sf) = &mut self.statefile {
            sf.finish();
        }
    }

    /// Notes a change for the state journal (nothing without `--keep-on-exit`).
    pub(crate) fn journal(&mut self, op: impl FnOnce() -> crate::control::persist::journal::Op) {
        if let Some(sf) = &mut self.statefile {
            sf.record(op());
        }
    }

    fn state_source(&self) -> statefile::Source {
        statefile::Source {
            seed: self.seed,
            pods: self.cfg.pods.clone(),
            services: self.services.clone(),
            restore_sysctls: super::node::sysctl_names(&self.restore_sysctls),
        }
    }

    /// What the next ucanal needs besides the kernel objects and conntrack.
    pub(crate) fn state(&self) -> State {
        State {
            seed: self.seed,
            pods: self.cfg.pods.clone(),
            services: self.specs(),
            restore_sysctls: super::node::sysctl_names(&self.restore_sysctls),
            seq: self.statefile.as_ref().map_or(0, |s| s.seq()),
        }
    }

    /// SIGTERM with `--keep-on-exit`: stops the workers (the persistent TAPs stay,
    /// the rules stay), then writes the final checkpoint and the state.
    pub(crate) fn hand_over(&mut self) {
        for w in &mut self.workers {
            w.stop();
        }
        self.workers.clear();
        if let Some(k) = &self.keep {
            match write_checkpoint(&self.dp, &k.conntrack) {
                Ok(n) => tracing::info!("conntrack: {n} flows handed over in {}", k.conntrack.display()),
                Err(e) => tracing::error!("conntrack checkpoint {}: {e}", k.conntrack.display()),
            }
        }
        self.settle_state();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_sit_beside_the_socket() {
        let p = Paths::for_socket(Path::new("/run/ucanal/node1.sock"));
        assert_eq!(p.state, Path::new("/run/ucanal/node1.sock.state"));
        assert_eq!(p.conntrack, Path::new("/run/ucanal/node1.sock.conntrack"));
    }

    #[test]
    fn paths_name_the_journals() {
        let p = Paths::for_socket(Path::new("/run/ucanal/node1.sock"));
        assert_eq!(p.journal, Path::new("/run/ucanal/node1.sock.state.journal"));
        assert_eq!(p.journal_old, Path::new("/run/ucanal/node1.sock.state.journal.old"));
    }
}
