//! Restarts and upgrades without a reset (`ucanal run --keep-on-exit`): what one
//! ucanal leaves for the next one, and how the next one picks it up.
//!
//! - The kernel stays steered: on SIGTERM the steering rules, the moved `local` rule,
//!   the host port and the pods' `eth0` stay (the TAPs are persistent, see
//!   `io::tap::Persist`); the next ucanal attaches its queues to the same devices
//!   (same ifindex, addresses and routes) and re-adds nothing it would first delete.
//! - Runtime state (pods, services, endpoints added over the API), the endpoint-choice
//!   hash seed and the sysctls to put back at the final teardown are kept in
//!   `<socket>.state` (JSON), rewritten after every change, so a SIGKILL loses none.
//! - Conntrack goes to `<socket>.conntrack` (see `core::nat::checkpoint`): once a
//!   second while running and once more at SIGTERM after the workers stopped; the next
//!   ucanal loads it before its workers start. Flows begun after the last checkpoint of
//!   a killed ucanal are picked up mid-stream, as `nf_conntrack_tcp_loose` does, and
//!   with the same seed they go to the same endpoint.
//!
//! SIGINT (or SIGTERM without `--keep-on-exit`) removes everything, these files included.

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
pub(super) struct Paths {
    pub(super) state: PathBuf,
    pub(super) conntrack: PathBuf,
}

impl Paths {
    pub(super) fn for_socket(socket: &Path) -> Paths {
        let with = |ext: &str| {
            let mut s = socket.as_os_str().to_owned();
            s.push(ext);
            PathBuf::from(s)
        };
        Paths { state: with(".state"), conntrack: with(".conntrack") }
    }

    pub(super) fn remove(&self) {
        let _ = std::fs::remove_file(&self.state);
        let _ = std::fs::remove_file(&self.conntrack);
    }
}

/// What survives a restart besides the kernel objects and conntrack.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) seed: u64,
    pub(super) pods: Vec<PodSpec>,
    pub(super) services: Vec<ServiceSpec>,
    /// Node-wide sysctls to put back at the final teardown: (name under net.ipv4, value).
    pub(super) restore_sysctls: Vec<(String, String)>,
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Writes `bytes` to `path` atomically (a temporary file renamed over it), mode 0600.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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

pub(super) fn load_state(path: &Path) -> Option<State> {
    let b = std::fs::read(path).ok()?;
    match serde_json::from_slice(&b) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("{}: unreadable ({e}); starting from the config alone", path.display());
            None
        }
    }
}

pub(super) fn save_state(path: &Path, s: &State) {
    let r = serde_json::to_vec_pretty(s).map_err(std::io::Error::other).and_then(|b| write_atomic(path, &b));
    if let Err(e) = r {
        tracing::error!("saving {}: {e}", path.display());
    }
}

/// Writes every live flow of `dp` to `path`; returns how many.
pub(super) fn write_checkpoint(dp: &Dataplane, path: &Path) -> std::io::Result<usize> {
    let flows = dp.conntrack.snapshot(clock::now());
    write_atomic(path, &checkpoint::encode(&flows, unix_now()))?;
    Ok(flows.len())
}

/// Loads the flows of a checkpoint into `dp`, less the time that passed since it
/// was written; returns (restored, in the file).
pub(super) fn load_checkpoint(dp: &Dataplane, path: &Path) -> (usize, usize) {
    let Ok(b) = std::fs::read(path) else { return (0, 0) };
    load_checkpoint_bytes(dp, &b, &path.display().to_string())
}

/// Loads the flows of checkpoint bytes (from a file, or a hand-over named `what`).
pub(super) fn load_checkpoint_bytes(dp: &Dataplane, b: &[u8], what: &str) -> (usize, usize) {
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

impl super::Daemon {
    /// Rewrites the state file (with `--keep-on-exit`); called after every change.
    pub(super) fn save_state(&self) {
        let Some(k) = &self.keep else { return };
        save_state(&k.state, &self.state());
    }

    /// What the next ucanal needs besides the kernel objects and conntrack.
    pub(super) fn state(&self) -> State {
        State {
            seed: self.seed,
            pods: self.cfg.pods.clone(),
            services: self.specs(),
            restore_sysctls: super::node::sysctl_names(&self.restore_sysctls),
        }
    }

    /// SIGTERM with `--keep-on-exit`: stops the workers (the persistent TAPs stay,
    /// the rules stay), then writes the final checkpoint and the state.
    pub(super) fn hand_over(&mut self) {
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
        self.save_state();
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
    fn state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock.state");
        let s = State {
            seed: 42,
            pods: vec![],
            services: vec![],
            restore_sysctls: vec![("ip_forward".into(), "0".into())],
        };
        save_state(&path, &s);
        assert_eq!(load_state(&path), Some(s));
        std::fs::write(&path, b"{ not json").unwrap();
        assert_eq!(load_state(&path), None);
    }
}
