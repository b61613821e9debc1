//! The CLI's side of the runtime API, and how it finds a node's daemon.
//!
//! A daemon listens on two sockets: its socket file (`api.socket`, `run --listen`) and
//! the abstract Unix socket `@ucanal`, which the kernel scopes to the daemon's network
//! namespace. So `ip netns exec NODE ucanal show routes` reaches NODE's daemon with no
//! flag, `--node NODE` enters the namespace itself, and `--socket PATH` names a file.

use std::io::{self, BufRead, BufReader, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::{self, Request, Response};
use crate::io::sys;

/// Where the CLI reaches a daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A socket file.
    Socket(PathBuf),
    /// The daemon of a network namespace (a path such as /run/netns/NAME).
    Netns(PathBuf),
    /// The daemon of the namespace the CLI runs in; failing that, the default socket file.
    Here,
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
        let prefix = std::env::var("LAB_PREFIX").unwrap_or_else(|_| "uc-".into());
        let lab = Path::new("/run/netns").join(format!("{prefix}{arg}"));
        Target::Netns(if lab.exists() { lab } else { named })
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

    fn connect(&self) -> Result<UnixStream, String> {
        match self {
            Target::Socket(p) => connect_path(p),
            Target::Netns(ns) => {
                let ns_name = ns.display().to_string();
                sys::in_netns(ns, connect_abstract).map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound if !ns.exists() => {
                        format!("no network namespace {ns_name} (--node takes a namespace, a lab node or a socket)")
                    }
                    io::ErrorKind::PermissionDenied => root_only(),
                    _ => format!("cannot reach ucanal in network namespace {ns_name}: {e} (is `ucanal run` up there?)"),
                })
            }
            Target::Here => match connect_abstract() {
                Ok(s) => Ok(s),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(root_only()),
                Err(_) => {
                    let default = api::socket_path(None);
                    connect_path(&default).map_err(|e| {
                        format!(
                            "{e}; no ucanal listens in this network namespace either (@{}): name one with \
                             --node NAME or --socket PATH",
                            api::ABSTRACT_SOCKET
                        )
                    })
                }
            },
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Socket(p) => write!(f, "{}", p.display()),
            Target::Netns(p) => write!(f, "@{} in {}", api::ABSTRACT_SOCKET, p.display()),
            Target::Here => write!(f, "@{}", api::ABSTRACT_SOCKET),
        }
    }
}

fn root_only() -> String {
    "permission denied: the ucanal API is root-only".into()
}

fn connect_path(p: &Path) -> Result<UnixStream, String> {
    UnixStream::connect(p).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => root_only(),
        _ => format!(
            "cannot reach ucanal at {}: {e} (is `ucanal run` up? set --node, --socket or UCANAL_SOCKET)",
            p.display()
        ),
    })
}

fn connect_abstract() -> io::Result<UnixStream> {
    UnixStream::connect_addr(&SocketAddr::from_abstract_name(api::ABSTRACT_SOCKET)?)
}

/// Sends one request and calls `each` with every response line until the last one
/// (a non-stream response, an error, or a stream's `done`). `each` returns false to stop.
pub fn call(
    target: &Target,
    req: &Request,
    timeout: Option<Duration>,
    mut each: impl FnMut(Response) -> bool,
) -> Result<(), String> {
    let mut s = target.connect()?;
    s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    // A daemon that refuses the peer answers and closes before reading: the write may
    // fail, and the refusal is still there to read.
    let sent = s.write_all(line.as_bytes()).map_err(|e| format!("sending to {target}: {e}"));
    let streaming = matches!(req, Request::TraceLive { .. } | Request::Capture { .. });
    let mut answered = false;
    for l in BufReader::new(s).lines() {
        answered = true;
        let l = l.map_err(|e| format!("reading from {target}: {e}"))?;
        let r: Response = serde_json::from_str(&l).map_err(|e| format!("bad response from ucanal: {e}"))?;
        let last = !streaming || r.done || !r.ok;
        if !r.ok {
            return Err(r.error.unwrap_or_else(|| "unknown error".into()));
        }
        if !each(r) || last {
            return Ok(());
        }
    }
    if !answered {
        sent?;
    }
    Ok(())
}

/// One request, one response.
pub fn request(target: &Target, req: &Request) -> Result<Response, String> {
    let mut out = None;
    call(target, req, Some(Duration::from_secs(60)), |r| {
        out = Some(r);
        false
    })?;
    out.ok_or_else(|| "ucanal closed the connection without answering".into())
}

/// One connection for several requests, one response each (the parts of a manifest).
pub struct Session {
    target: String,
    r: BufReader<UnixStream>,
}

impl Session {
    pub fn open(target: &Target) -> Result<Session, String> {
        let s = target.connect()?;
        s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
        Ok(Session { target: target.to_string(), r: BufReader::new(s) })
    }

    /// Sends one request line (JSON, ending in a newline) and reads its response; an
    /// error response is `Err`.
    pub fn call_line(&mut self, line: &[u8]) -> Result<Response, String> {
        let sent = self.r.get_mut().write_all(line).map_err(|e| format!("sending to {}: {e}", self.target));
        let mut answer = String::new();
        match self.r.read_line(&mut answer) {
            Ok(0) => return Err(sent.err().unwrap_or_else(|| "ucanal closed the connection without answering".into())),
            Ok(_) => {}
            Err(e) => return Err(format!("reading from {}: {e}", self.target)),
        }
        let r: Response = serde_json::from_str(&answer).map_err(|e| format!("bad response from ucanal: {e}"))?;
        if !r.ok {
            return Err(r.error.unwrap_or_else(|| "unknown error".into()));
        }
        Ok(r)
    }
}

/// `<pod name>:<port>` (the name may be `namespace/name`).
pub fn parse_pod_port(s: &str) -> Result<(&str, u16), String> {
    let (name, port) = s.rsplit_once(':').ok_or_else(|| format!("--pod {s}: want <pod name>:<port>"))?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| format!("--pod {s}: '{port}' is not a port"))?;
    if name.is_empty() {
        return Err(format!("--pod {s}: the pod name is empty"));
    }
    Ok((name, port))
}

/// The endpoint `<pod name>:<port>` names: the pod's address, looked up in the daemon's pods.
pub fn pod_endpoint(target: &Target, s: &str) -> Result<std::net::SocketAddrV4, String> {
    let (name, port) = parse_pod_port(s)?;
    let data = request(target, &Request::Show { what: crate::api::Show::Pods })?.data.unwrap_or_default();
    let rows: Vec<crate::control::inspect::listings::PodRow> =
        serde_json::from_value(data).map_err(|e| format!("unexpected listing from ucanal: {e}"))?;
    let pod = rows.iter().find(|r| r.name == name).ok_or_else(|| {
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        format!("no pod {name} on this node (it has {names:?})")
    })?;
    Ok(std::net::SocketAddrV4::new(pod.ip, port))
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
    fn a_missing_namespace_is_named() {
        let e = Target::Netns("/run/netns/ucanal-no-such-ns".into()).connect().unwrap_err();
        assert!(e.contains("no network namespace /run/netns/ucanal-no-such-ns"), "{e}");
    }

    #[test]
    fn pod_port() {
        assert_eq!(parse_pod_port("default/web:2368"), Ok(("default/web", 2368)));
        assert_eq!(parse_pod_port("ghost-ep1:80"), Ok(("ghost-ep1", 80)));
        assert!(parse_pod_port("default/web").is_err());
        assert!(parse_pod_port("web:0").is_err());
        assert!(parse_pod_port(":80").is_err());
    }
}
