//! The runtime API: JSON lines over a Unix socket that only root may open.
//!
//! One request per line, one response per line (streams — live trace, capture —
//! send several `data` lines and end with a line whose `done` is true).

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::PodSpec;
use crate::core::nat::service::ServiceSpec;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    PodAdd {
        pod: PodSpec,
    },
    PodDel {
        name: String,
    },
    ServiceSet {
        service: ServiceSpec,
    },
    ServiceDel {
        name: String,
    },
    EndpointAdd {
        service: String,
        endpoint: SocketAddrV4,
    },
    EndpointDel {
        service: String,
        endpoint: SocketAddrV4,
    },
    /// Kubernetes objects (`ucanal apply -f` / `delete -f`): through etcd in a cluster.
    Apply {
        objects: Vec<crate::control::kube::Object>,
        #[serde(default)]
        delete: bool,
    },
    /// `ucanal get services|endpoints`: the objects as stored.
    Get {
        what: String,
    },
    Show {
        what: Show,
    },
    /// Runs a described packet through the live tables without sending it.
    Trace {
        probe: super::probe::Probe,
    },
    /// Streams the traces of the next `count` real packets matching `filter`.
    TraceLive {
        filter: String,
        count: usize,
        timeout_ms: u64,
    },
    /// Streams frames seen on a port (pod name, `vxlan` or `host`) as pcap records.
    Capture {
        port: String,
        filter: String,
        count: usize,
        timeout_ms: u64,
    },
    /// A successor ucanal asks this one to hand its fds over (`run --keep-on-exit`
    /// after SIGTERM); the rest of the exchange is on the same connection.
    Handover {
        ask: super::daemon::handover::Ask,
    },
    /// CNI ADD: attach a container's network namespace as a pod (answers a [`CniPod`]).
    CniAdd {
        attach: CniAttach,
    },
    /// CNI DEL: detach and release the address; succeeds when already gone.
    CniDel {
        container_id: String,
        ifname: String,
    },
    /// CNI CHECK: the attachment as the daemon holds it (answers a [`CniPod`]).
    CniCheck {
        container_id: String,
        ifname: String,
    },
    /// CNI GC: detach every attachment of `network` that is not in `valid` (container id, ifname).
    CniGc {
        network: String,
        valid: Vec<(String, String)>,
    },
    /// CNI STATUS: can the daemon serve an ADD (answers `{"free": n}`)?
    CniStatus,
}

/// What the CNI plugin asks for on ADD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniAttach {
    /// The CNI network (the conflist's `name`).
    pub network: String,
    pub container_id: String,
    /// The interface to create in `netns` (`CNI_IFNAME`).
    pub ifname: String,
    /// The namespace path (`CNI_NETNS`).
    pub netns: String,
    /// How `show pods` names it: `namespace/name` from CNI_ARGS, else the container id.
    pub name: String,
    /// An address chosen by the runtime or a delegated IPAM plugin; `None`: the daemon allocates.
    #[serde(default)]
    pub ip: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    pub mac: Option<crate::wire::MacAddr>,
}

/// An attachment as the daemon made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniPod {
    pub name: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub ip: std::net::Ipv4Addr,
    pub mac: crate::wire::MacAddr,
    pub mtu: u16,
    pub gateway: std::net::Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Show {
    Routes,
    Neigh,
    Fdb,
    Pods,
    Services,
    Conntrack,
    Counters,
    Node,
    /// Peers with where each came from (config or an etcd lease), lease age and expiry.
    Peers,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// Last line of a stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Self {
        Response { ok: true, message: Some(message.into()), ..Default::default() }
    }
    pub fn data(v: serde_json::Value) -> Self {
        Response { ok: true, data: Some(v), ..Default::default() }
    }
    pub fn error(e: impl std::fmt::Display) -> Self {
        Response { ok: false, error: Some(e.to_string()), ..Default::default() }
    }
    pub fn done() -> Self {
        Response { ok: true, done: true, ..Default::default() }
    }
}

/// The abstract Unix socket every daemon also listens on. Abstract names belong to a
/// network namespace, so each node's daemon has its own `@ucanal`.
pub const ABSTRACT_SOCKET: &str = "ucanal";

/// The socket path: `--socket`, else `$UCANAL_SOCKET`, else the default.
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("UCANAL_SOCKET").map(PathBuf::from))
        .unwrap_or_else(super::config::default_socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable() {
        let r: Request = serde_json::from_str(r#"{"op":"pod_del","name":"ghost-ep3"}"#).unwrap();
        assert!(matches!(r, Request::PodDel { name } if name == "ghost-ep3"));
        let r: Request = serde_json::from_str(r#"{"op":"show","what":"conntrack"}"#).unwrap();
        assert!(matches!(r, Request::Show { what: Show::Conntrack }));
        let r: Request =
            serde_json::from_str(r#"{"op":"pod_add","pod":{"name":"p","netns":"uc-p","ip":"10.244.0.80"}}"#).unwrap();
        assert!(matches!(r, Request::PodAdd { .. }));
        assert!(serde_json::from_str::<Request>(r#"{"op":"pod_del","name":"x","extra":1}"#).is_err());
        let r: Request = serde_json::from_str(r#"{"op":"cni_del","container_id":"c1","ifname":"eth0"}"#).unwrap();
        assert!(matches!(r, Request::CniDel { container_id, ifname } if container_id == "c1" && ifname == "eth0"));
        let r: Request = serde_json::from_str(
            r#"{"op":"cni_add","attach":{"network":"ucanal","container_id":"c1","ifname":"eth0","netns":"/run/netns/c1","name":"default/web"}}"#,
        )
        .unwrap();
        assert!(matches!(r, Request::CniAdd { attach } if attach.ip.is_none() && attach.name == "default/web"));
        assert_eq!(serde_json::to_string(&Response::ok("done")).unwrap(), r#"{"ok":true,"message":"done"}"#);
    }
}
