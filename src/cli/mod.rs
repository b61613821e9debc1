//! The `ucanal` client: reaching a node's daemon ([`target`]), the requests each
//! command makes, and rendering what the daemon answers — the kernel tools' listings
//! ([`show`]), traces and captures ([`trace`]), kubectl-style manifests and tables
//! ([`kubectl`]). It speaks the API ([`crate::api`]) and nothing of the daemon.

pub mod kubectl;
pub mod policy;
pub mod show;
pub mod target;
pub mod trace;

use std::path::PathBuf;

use crate::api::Command;
use crate::api::codec::ClientError;
use crate::api::kube::KubeError;
use target::{ANSWER_WAIT, ReachError, Target};

/// Why a command failed (printed as `ucanal: <error>`, exit 1; a refused manifest 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Reach(#[from] ReachError),
    /// The daemon refused, or the connection failed.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// One part of a manifest sent in parts failed (the ones before it are held, not
    /// applied: the daemon drops them with the connection).
    #[error("part {part}/{of}: {source}")]
    Part { part: usize, of: usize, source: ClientError },
    /// The command line asks for something that cannot be (the message says why).
    #[error("{0}")]
    Usage(String),
    #[error("{}: {source}", path.display())]
    Manifest { path: PathBuf, source: KubeError },
    #[error("{what}: {source}")]
    File { what: String, source: std::io::Error },
    #[error("{0}")]
    Json(serde_json::Error),
    #[error("{0}")]
    Yaml(serde_yaml_ng::Error),
}

impl CliError {
    /// The process's exit code: 2 for a manifest refused before anything is sent (a
    /// field ucanal does not implement, a value the API server would refuse), as for a
    /// wrong config; 1 for anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Manifest { .. } => 2,
            _ => 1,
        }
    }
}

/// `ucanal pod|service|endpoint ...`: one command to one node; its message.
pub fn command(target: &Target, c: Command) -> Result<String, CliError> {
    Ok(target.client(Some(ANSWER_WAIT))?.command(c)?)
}

/// `<pod name>:<port>` (the name may be `namespace/name`), as `--pod` takes it.
pub fn parse_pod_port(s: &str) -> Result<(&str, u16), CliError> {
    let usage = |m: String| CliError::Usage(format!("--pod {s}: {m}"));
    let (name, port) = s.rsplit_once(':').ok_or_else(|| usage("want <pod name>:<port>".into()))?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| usage(format!("'{port}' is not a port")))?;
    if name.is_empty() {
        return Err(usage("the pod name is empty".into()));
    }
    Ok((name, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_port() {
        assert_eq!(parse_pod_port("default/web:2368").unwrap(), ("default/web", 2368));
        assert_eq!(parse_pod_port("ghost-ep1:80").unwrap(), ("ghost-ep1", 80));
        assert!(parse_pod_port("default/web").is_err());
        assert!(parse_pod_port("web:0").is_err());
        assert!(parse_pod_port(":80").is_err());
    }
}
