//! The runtime API: JSON lines over a Unix socket that only root may open.
//!
//! One request per line, one response per line (streams — live trace, capture —
//! send several `data` lines and end with a line whose `done` is true).

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::control::config::PodSpec;
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
    /// A manifest bigger than one request goes in parts on one connection, every part
    /// but the last with `more`: the daemon holds them and applies the whole manifest
    /// at its last part (one change of the table, one publish).
    Apply {
        objects: Vec<crate::api::kube::Object>,
        #[serde(default)]
        delete: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
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
        probe: crate::control::inspect::probe::Probe,
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
        ask: crate::control::handover::Ask,
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

/// Reads a request line. An `apply` (up to a MiB of objects) is read in one typed
/// pass: its `op` is looked up first, since serde would buffer the whole line (every
/// object as a generic tree) to find the tag of an internally tagged enum.
pub fn decode_request(line: &str) -> serde_json::Result<Request> {
    #[derive(Deserialize)]
    struct Op<'a> {
        #[serde(borrow)]
        op: std::borrow::Cow<'a, str>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ApplyLine {
        #[serde(rename = "op")]
        _op: serde::de::IgnoredAny,
        objects: Vec<crate::api::kube::Object>,
        #[serde(default)]
        delete: bool,
        #[serde(default)]
        more: bool,
    }
    if serde_json::from_str::<Op>(line).is_ok_and(|o| o.op == "apply") {
        let a: ApplyLine = serde_json::from_str(line)?;
        return Ok(Request::Apply { objects: a.objects, delete: a.delete, more: a.more });
    }
    serde_json::from_str(line)
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
        .unwrap_or_else(crate::control::config::default_socket)
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

    #[test]
    fn apply_lines_decode_in_one_pass_as_the_enum_would() {
        let objs =
            r#"[{"kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"10.0.0.1","ports":[{"port":1}]}}]"#;
        for (line, delete, more) in [
            (format!(r#"{{"op":"apply","objects":{objs}}}"#), false, false),
            (format!(r#"{{"objects":{objs}, "op": "apply", "delete":true,"more":true}}"#), true, true),
        ] {
            let fast = decode_request(&line).unwrap();
            let general: Request = serde_json::from_str(&line).unwrap();
            for r in [fast, general] {
                assert!(
                    matches!(&r, Request::Apply { objects, delete: d, more: m }
                        if objects.len() == 1 && *d == delete && *m == more && objects[0].key() == "services/default/a"),
                    "{r:?}"
                );
            }
        }
        let bad = r#"{"op":"apply","objects":[],"extra":1}"#;
        assert!(decode_request(bad).is_err() && serde_json::from_str::<Request>(bad).is_err());
        assert!(matches!(decode_request(r#"{"op":"show","what":"node"}"#), Ok(Request::Show { what: Show::Node })));
        assert!(decode_request(r#"{"op":"nope"}"#).is_err());
    }
}
