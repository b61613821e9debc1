//! Where one node's state lives, what it holds, and how a file of it is written.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::api::PodSpec;
use crate::core::nat::service::ServiceSpec;

/// Where one node's state lives: beside its API socket (a 0700 directory).
#[derive(Debug, Clone)]
pub struct Paths {
    pub state: PathBuf,
    pub conntrack: PathBuf,
    /// The deltas since the snapshot, and the journal set aside while one is compacted.
    pub journal: PathBuf,
    pub journal_old: PathBuf,
}

impl Paths {
    pub fn for_socket(socket: &Path) -> Paths {
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

    pub fn remove(&self) {
        for p in [&self.state, &self.conntrack, &self.journal, &self.journal_old] {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What survives a restart besides the kernel objects and conntrack.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub seed: u64,
    pub pods: Vec<PodSpec>,
    pub services: Vec<ServiceSpec>,
    /// Node-wide sysctls to put back at the final teardown: (name under net.ipv4, value).
    pub restore_sysctls: Vec<(String, String)>,
    /// The last journal record this state holds (see `statefile`).
    #[serde(default)]
    pub seq: u64,
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Writes `bytes` to `path` atomically (a temporary file renamed over it), mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
