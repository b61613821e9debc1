//! How the CLI finds a node's daemon.
//!
//! A daemon listens on two sockets: its socket file (`api.socket`, `run --listen`) and
//! the abstract Unix socket `@ucanal`, which the kernel scopes to the daemon's network
//! namespace. So `ip netns exec NODE ucanal show routes` reaches NODE's daemon with no
//! flag, `--node NODE` enters the namespace itself, and `--socket PATH` names a file.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::codec::Client;
use crate::api::{ABSTRACT_SOCKET, DEFAULT_SOCKET};
use crate::io::sys;

/// How long a request waits for its answer (a stream waits as long as it runs).
pub const ANSWER_WAIT: Duration = Duration::from_secs(60);

/// Where the CLI reaches a daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A socket file.
    Socket(PathBuf),
    /// The daemon of a network namespace (a path such as /run/netns/NAME).
    Netns(PathBuf),
    /// The daemon of the namespace the CLI runs in; failing that, the default socket file.
    Here,
    /// A `--node` name that is no namespace: the paths tried, for the error.
    Unknown { arg: String, tried: Vec<PathBuf> },
}

/// Why no daemon could be reached.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    #[error("permission denied: the ucanal API is root-only")]
    RootOnly,
    #[error("no network namespace {} (--node takes a namespace, a lab node or a socket)", .0.display())]
    NoNetns(PathBuf),
    /// `--node NAME` matched nothing: what was tried, the prefix used, look-alikes.
    #[error("{}", unknown_node(arg, tried, similar))]
    NoNode { arg: String, tried: Vec<PathBuf>, similar: Vec<String> },
    #[error("cannot reach ucanal in network namespace {}: {source} (is `ucanal run` up there?)", ns.display())]
    Netns { ns: PathBuf, source: io::Error },
    #[error(
        "cannot reach ucanal at {}: {source} (is `ucanal run` up? set --node, --socket or UCANAL_SOCKET)",
        path.display()
    )]
    Socket { path: PathBuf, source: io::Error },
    #[error(
        "{0}; no ucanal listens in this network namespace either (@{ABSTRACT_SOCKET}): name one with --node NAME or --socket PATH"
    )]
    Nowhere(Box<ReachError>),
}

impl Target {
    /// A `--node` argument: a socket file, a network namespace path, a name under
    /// /run/netns, or a node name of the lab (the namespace `$LAB_PREFIX` + NAME,
    /// `uc-` + NAME by default).
    pub fn node(arg: &str) -> Target {
        use std::os::unix::fs::FileTypeExt;
        let p = Path::new(arg);
        if std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
            return Target::Socket(p.to_path_buf());
        }
        if arg.contains('/') {
            return Target::Netns(p.to_path_buf());
        }
        let named = Path::new("/run/netns").join(arg);
        if named.exists() {
            return Target::Netns(named);
        }
        let lab = Path::new("/run/netns").join(format!("{}{arg}", lab_prefix().0));
        if lab.exists() {
            return Target::Netns(lab);
        }
        Target::Unknown { arg: arg.to_string(), tried: vec![named, lab] }
    }

    /// The targets the global flags name: `--socket` (or `$UCANAL_SOCKET` when no
    /// `--node` is given) first, then each `--node`; `Here` when none is given.
    pub fn from_flags(socket: Option<&Path>, nodes: &[String]) -> Vec<Target> {
        let env = std::env::var_os("UCANAL_SOCKET").map(PathBuf::from).filter(|_| nodes.is_empty());
        let mut v: Vec<Target> = socket.map(Path::to_path_buf).or(env).map(Target::Socket).into_iter().collect();
        v.extend(nodes.iter().map(|n| Target::node(n)));
        if v.is_empty() {
            v.push(Target::Here);
        }
        v
    }

    /// A connection to the daemon; its reads wait at most `timeout` (`None`: forever).
    pub fn client(&self, timeout: Option<Duration>) -> Result<Client<UnixStream>, ReachError> {
        let s = self.connect()?;
        s.set_read_timeout(timeout).map_err(|source| ReachError::Socket { path: self.to_string().into(), source })?;
        Ok(Client::new(s, self))
    }

    fn connect(&self) -> Result<UnixStream, ReachError> {
        match self {
            Target::Socket(p) => connect_path(p),
            Target::Netns(ns) => sys::in_netns(ns, connect_abstract).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound if !ns.exists() => ReachError::NoNetns(ns.clone()),
                io::ErrorKind::PermissionDenied => ReachError::RootOnly,
                _ => ReachError::Netns { ns: ns.clone(), source: e },
            }),
            Target::Unknown { arg, tried } => {
                Err(ReachError::NoNode { arg: arg.clone(), tried: tried.clone(), similar: namespaces_like(arg) })
            }
            Target::Here => match connect_abstract() {
                Ok(s) => Ok(s),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(ReachError::RootOnly),
                Err(_) => connect_path(&socket_path(None)).map_err(|e| ReachError::Nowhere(Box::new(e))),
            },
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Socket(p) => write!(f, "{}", p.display()),
            Target::Netns(p) => write!(f, "@{ABSTRACT_SOCKET} in {}", p.display()),
            Target::Here => write!(f, "@{ABSTRACT_SOCKET}"),
            Target::Unknown { arg, .. } => write!(f, "--node {arg}"),
        }
    }
}

/// The lab prefix `--node` tries (`$LAB_PREFIX`, else the lab's default `uc-`), and
/// whether it was set.
fn lab_prefix() -> (String, bool) {
    match std::env::var("LAB_PREFIX") {
        Ok(p) => (p, true),
        Err(_) => ("uc-".into(), false),
    }
}

/// Namespaces under /run/netns whose name ends in `-<arg>` (the same node of a lab
/// with another prefix), sorted.
fn namespaces_like(arg: &str) -> Vec<String> {
    let tail = format!("-{arg}");
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(&tail))
        .collect();
    v.sort();
    v
}

/// The message for a `--node` that matched nothing.
fn unknown_node(arg: &str, tried: &[PathBuf], similar: &[String]) -> String {
    let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    let (prefix, set) = lab_prefix();
    let whence =
        if set { format!("LAB_PREFIX={prefix}") } else { format!("LAB_PREFIX unset, the lab's default {prefix}") };
    let mut m = format!("--node {arg}: no network namespace {} ({whence})", tried.join(" nor "));
    if !similar.is_empty() {
        let prefixes: Vec<&str> = similar.iter().filter_map(|n| n.strip_suffix(arg)).collect();
        m += &format!(
            "; there are {}: give the namespace (--node {}) or its lab's prefix (LAB_PREFIX={} ucanal --node {arg} ...)",
            similar.join(", "),
            similar[0],
            prefixes.first().copied().unwrap_or_default()
        );
    } else {
        m += "; is the lab up (netns-scripts/lab.sh status)? --node also takes a namespace path or a socket file";
    }
    m
}

/// The socket path: `--socket`, else `$UCANAL_SOCKET`, else the default.
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("UCANAL_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

fn connect_path(p: &Path) -> Result<UnixStream, ReachError> {
    UnixStream::connect(p).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => ReachError::RootOnly,
        _ => ReachError::Socket { path: p.to_path_buf(), source: e },
    })
}

fn connect_abstract() -> io::Result<UnixStream> {
    UnixStream::connect_addr(&SocketAddr::from_abstract_name(ABSTRACT_SOCKET)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_name_targets_in_order() {
        let nodes = vec!["/run/netns/x".to_string()];
        let t = Target::from_flags(Some(Path::new("/tmp/a.sock")), &nodes);
        assert_eq!(t, vec![Target::Socket("/tmp/a.sock".into()), Target::Netns("/run/netns/x".into())]);
        assert_eq!(Target::from_flags(None, &nodes), vec![Target::Netns("/run/netns/x".into())]);
    }

    #[test]
    fn an_unknown_node_names_what_was_tried() {
        let arg = "ucanal-test-no-such-node";
        let t = Target::node(arg);
        let Target::Unknown { tried, .. } = &t else { panic!("{t:?}") };
        assert_eq!(tried[0], Path::new("/run/netns").join(arg));
        assert!(tried[1].to_string_lossy().ends_with(&format!("-{arg}")), "{tried:?}");
        let e = t.connect().unwrap_err().to_string();
        assert!(e.contains(&format!("no network namespace /run/netns/{arg} nor /run/netns/")), "{e}");
        assert!(e.contains("LAB_PREFIX"), "{e}");
        let similar = vec!["ud-centos7-1".to_string()];
        let m = unknown_node("centos7-1", &tried[..1], &similar);
        assert!(m.contains("there are ud-centos7-1: give the namespace (--node ud-centos7-1)"), "{m}");
        assert!(m.contains("LAB_PREFIX=ud- ucanal --node centos7-1"), "{m}");
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let e = Target::Netns("/run/netns/ucanal-no-such-ns".into()).connect().unwrap_err();
        assert!(matches!(&e, ReachError::NoNetns(p) if p == Path::new("/run/netns/ucanal-no-such-ns")), "{e}");
        assert!(e.to_string().contains("no network namespace /run/netns/ucanal-no-such-ns"), "{e}");
    }
}
