//! `ucanal check`: what `run` would check before creating anything, without creating
//! anything. The config file first (every field, as `run` loads it), then the machine:
//! the socket's directory, the lease file, `/dev/net/tun`, and — in the node's network
//! namespace — the uplink and the node IP, the host port, the pods' namespaces. Every
//! fault names the field and the path (or interface) it is about.

use std::path::{Path, PathBuf};

use super::config::{Config, ConfigError};
use super::ipam::{AddressTable, Ipam};
use super::node;
use crate::io::{netlink, sys};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Ok(String),
    /// `run` would refuse (exit 2 from `check`).
    Fault(ConfigError),
    /// Worth knowing; `run` goes on.
    Note(String),
}

/// The machine checks of `cfg`; the namespace checks run in `netns` (a path), else in
/// the namespace `check` runs in.
pub fn machine(cfg: &Config, netns: Option<&Path>) -> Vec<Finding> {
    let mut out = vec![socket_dir(cfg), lease_file(cfg)];
    out.push(if Path::new("/dev/net/tun").exists() {
        Finding::Ok("/dev/net/tun exists".into())
    } else {
        Finding::Fault(ConfigError { field: String::new(), problem: "/dev/net/tun does not exist (no TUN/TAP)".into() })
    });
    for (i, p) in cfg.pods.iter().enumerate() {
        let path = p.netns_path();
        out.push(if path.exists() {
            Finding::Ok(format!("pods[{i}] ({}): {} exists", p.name, path.display()))
        } else {
            Finding::Fault(ConfigError {
                field: format!("pods[{i}].netns"),
                problem: format!("{} does not exist", path.display()),
            })
        });
    }
    let cfg2 = cfg.clone();
    let in_ns = move || Ok(in_node_namespace(&cfg2));
    let found = match netns {
        Some(ns) => sys::in_netns(ns, in_ns),
        None => in_ns(),
    };
    match found {
        Ok(f) => out.extend(f),
        Err(e) => out.push(Finding::Fault(ConfigError {
            field: String::new(),
            problem: format!("{}: {e}", netns.map(Path::display).map(|d| d.to_string()).unwrap_or_default()),
        })),
    }
    out
}

/// The socket's directory, and whether a ucanal answers there already.
fn socket_dir(cfg: &Config) -> Finding {
    let socket = &cfg.api.socket;
    if let Err(e) = node::check_socket_dir(socket) {
        return Finding::Fault(e);
    }
    match node::live_ucanal(socket) {
        Some(at) if at == socket.display().to_string() => Finding::Note(format!(
            "api.socket: a ucanal answers on {at}: `run` refuses to start beside it (or, with --keep-on-exit, takes over once it is sent SIGTERM)"
        )),
        _ => Finding::Ok(format!("api.socket: {} can be bound", socket.display())),
    }
}

/// The CNI lease file beside the socket, if there is one, must read.
fn lease_file(cfg: &Config) -> Finding {
    let path: PathBuf = Ipam::path_for(&cfg.api.socket);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Finding::Ok(format!("{}: none yet", path.display()));
        }
        Err(e) => {
            return Finding::Fault(ConfigError {
                field: "api.socket".into(),
                problem: format!("{}: {e}", path.display()),
            });
        }
    };
    let (Some(pod_cidr), Some(vtep)) = (cfg.node.pod_cidr, cfg.vtep_ip()) else {
        return Finding::Note(format!("{}: read once the pod CIDR is leased from etcd", path.display()));
    };
    match AddressTable::parse(&text, pod_cidr, vtep) {
        Ok(t) => Finding::Ok(format!("{}: {} lease(s)", path.display(), t.iter().count())),
        Err(e) => {
            Finding::Fault(ConfigError { field: "api.socket".into(), problem: format!("{}: {e}", path.display()) })
        }
    }
}

/// The checks that need the node's network namespace.
fn in_node_namespace(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    match node::check_uplink(cfg) {
        Ok(Ok(())) => {
            out.push(Finding::Ok(format!("node.uplink: {} holds node.node_ip {}", cfg.node.uplink, cfg.node.node_ip)))
        }
        Ok(Err(mut e)) => {
            if e.field == "node.uplink" {
                e.problem.push_str(
                    " (the uplink, the host port and the API's @ucanal are checked in the node's namespace: \
                     run `ip netns exec NODE ucanal check ...` or give --netns NODE)",
                );
            }
            out.push(Finding::Fault(e));
            return out;
        }
        Err(e) => {
            out.push(Finding::Fault(ConfigError { field: "node.uplink".into(), problem: e.to_string() }));
            return out;
        }
    }
    let hp = cfg.node.host_port.clone();
    match netlink::with_handle(async |h| netlink::link_exists(h, &hp).await) {
        Ok(false) => out.push(Finding::Ok(format!("node.host_port: no interface {} yet", cfg.node.host_port))),
        Ok(true) => out.push(Finding::Note(match node::live_ucanal(&cfg.api.socket) {
            Some(at) => format!("node.host_port: {} is a running ucanal's (it answers on {at})", cfg.node.host_port),
            None => format!(
                "node.host_port: {} exists and no ucanal answers: a ucanal that is gone left it; `run` adopts it",
                cfg.node.host_port
            ),
        })),
        Err(e) => out.push(Finding::Fault(ConfigError { field: "node.host_port".into(), problem: e.to_string() })),
    }
    out
}
