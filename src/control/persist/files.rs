//! Where one node's state lives, what it holds, and how a file of it is written.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::api::PodSpec;
use crate::core::nat::affinity::AffinityRecord;
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

    /// Removes every file, and the temporary files a write cut short left (see
    /// [`write_atomic`]).
    pub fn remove(&self) {
        for p in [&self.state, &self.conntrack, &self.journal, &self.journal_old] {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_file(tmp_of(p));
        }
    }
}

/// What makes a pod a CNI attachment (saved with the pod, so DEL works after any restart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub network: String,
    pub container_id: String,
}

/// A pod as the state keeps it: its spec and, when the CNI plugin attached it, the
/// attachment (so that DEL finds it after any restart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SavedPodForm")]
pub struct SavedPod {
    pub pod: PodSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<Attachment>,
}

/// What a saved pod reads from: this form, or a bare spec (state files written before
/// attachments were kept).
#[derive(Deserialize)]
#[serde(untagged)]
enum SavedPodForm {
    Saved {
        pod: PodSpec,
        #[serde(default)]
        cni: Option<Attachment>,
    },
    Bare(PodSpec),
}

impl From<SavedPodForm> for SavedPod {
    fn from(f: SavedPodForm) -> SavedPod {
        match f {
            SavedPodForm::Saved { pod, cni } => SavedPod { pod, cni },
            SavedPodForm::Bare(pod) => SavedPod { pod, cni: None },
        }
    }
}

/// What survives a restart besides the kernel objects and conntrack.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub seed: u64,
    pub pods: Vec<SavedPod>,
    pub services: Vec<ServiceSpec>,
    /// Node-wide sysctls to put back at the final teardown: (name under net.ipv4, value).
    pub restore_sysctls: Vec<(String, String)>,
    /// The last journal record this state holds (see `statefile`).
    #[serde(default)]
    pub seq: u64,
    /// Session-affinity records, with the seconds each has left: handed to a successor
    /// with the conntrack flows. The state file leaves them out (written on every
    /// change, it would rewrite a table of up to 262,144 records), so a restart from
    /// files starts with none: established flows keep their endpoint by conntrack, a
    /// client's next connection is hashed anew.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinity: Vec<AffinityRecord>,
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Where [`write_atomic`] writes before the rename.
fn tmp_of(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Writes `bytes` to `path` atomically (a temporary file renamed over it), mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = tmp_of(path);
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
    fn a_saved_pod_keeps_its_attachment_and_old_files_still_read() {
        let pod = PodSpec {
            name: "default/web".into(),
            netns: "cni-1".into(),
            ip: [10, 244, 1, 50].into(),
            mac: None,
            ifname: None,
            namespace: None,
            labels: Default::default(),
        };
        let saved = SavedPod {
            pod: pod.clone(),
            cni: Some(Attachment { network: "ucanal".into(), container_id: "c0ffee".into() }),
        };
        let j = serde_json::to_string(&saved).unwrap();
        assert_eq!(
            j,
            r#"{"pod":{"name":"default/web","netns":"cni-1","ip":"10.244.1.50"},"cni":{"network":"ucanal","container_id":"c0ffee"}}"#
        );
        assert_eq!(serde_json::from_str::<SavedPod>(&j).unwrap(), saved);
        let old = r#"{"name":"default/web","netns":"cni-1","ip":"10.244.1.50"}"#;
        assert_eq!(serde_json::from_str::<SavedPod>(old).unwrap(), SavedPod { pod, cni: None });
    }

    #[test]
    fn paths_name_the_journals() {
        let p = Paths::for_socket(Path::new("/run/ucanal/node1.sock"));
        assert_eq!(p.journal, Path::new("/run/ucanal/node1.sock.state.journal"));
        assert_eq!(p.journal_old, Path::new("/run/ucanal/node1.sock.state.journal.old"));
    }
}
