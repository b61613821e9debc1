//! What a client asks: one JSON object per line, named by its `op`
//! (`{"op":"pod_del","name":"ghost-ep3"}`). Requests come in four kinds, which the server
//! serves differently: a [`Command`] changes the node and is answered with a message, a
//! [`Query`] reads it and is answered with data, a [`Stream`] keeps the connection and
//! answers with data lines until one says `done`, and a hand-over ask turns the
//! connection over to the hand-over exchange (see [`super::handover`]).

use std::net::SocketAddrV4;

use serde::{Deserialize, Serialize};

use super::cni::CniAttach;
use super::error::{ApiError, ErrorCode};
use super::handover::Ask;
use super::kube::Object;
use super::pod::PodSpec;
use super::trace::Probe;
use crate::core::nat::service::ServiceSpec;

/// One request line.
#[derive(Debug, Clone)]
pub enum Request {
    Command(Command),
    Query(Query),
    Stream(Stream),
    /// A successor ucanal asks this one to hand its fds over (`run --keep-on-exit`
    /// after SIGTERM); the rest of the exchange is on the same connection.
    Handover(Ask),
}

/// Changes the node; answered with a message (`CniAdd`: with a [`super::CniPod`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
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
        endpoint: EndpointRef,
    },
    EndpointDel {
        service: String,
        endpoint: EndpointRef,
    },
    /// Kubernetes objects (`ucanal apply -f` / `delete -f`): through etcd in a cluster.
    /// A manifest bigger than one request goes in parts on one connection, every part
    /// but the last with `more`: the daemon holds them and applies the whole manifest
    /// at its last part (one change of the table, one publish).
    Apply {
        objects: Vec<Object>,
        #[serde(default)]
        delete: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// CNI ADD: attach a container's network namespace as a pod (answers a [`super::CniPod`]).
    CniAdd {
        attach: CniAttach,
    },
    /// CNI DEL: detach and release the address; succeeds when already gone.
    CniDel {
        container_id: String,
        ifname: String,
    },
    /// CNI GC: detach every attachment of `network` that is not in `valid` (container id, ifname).
    CniGc {
        network: String,
        valid: Vec<(String, String)>,
    },
}

/// Reads the node; answered with data, of the type each variant names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Query {
    /// A table of the node (see [`Show`] for what each answers).
    Show { what: Show },
    /// `ucanal get services|endpoints`: the objects as stored ([`super::ObjectList`]).
    Get { what: ObjectKind },
    /// Runs a described packet through the live tables without sending it
    /// ([`super::TraceReport`]).
    Trace { probe: Probe },
    /// CNI CHECK: the attachment as the daemon holds it ([`super::CniPod`]).
    CniCheck { container_id: String, ifname: String },
    /// CNI STATUS: can the daemon serve an ADD ([`super::CniStatus`])?
    CniStatus,
}

/// Holds the connection and answers with data lines until `done`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Stream {
    /// The traces of the next `count` real packets matching `filter` ([`super::TraceEvent`] each).
    TraceLive { filter: String, count: usize, timeout_ms: u64 },
    /// Frames seen on a port (pod name, `vxlan` or `host`), as [`super::CapturedFrame`]s.
    Capture { port: String, filter: String, count: usize, timeout_ms: u64 },
}

/// The tables `show` lists, and what each answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Show {
    /// `Vec<RouteRow>`
    Routes,
    /// `Vec<NeighRow>`
    Neigh,
    /// `Vec<FdbRow>`
    Fdb,
    /// [`super::PodsReport`]: the pods and the node they are on.
    Pods,
    /// `Vec<ServiceRow>`
    Services,
    /// `Vec<ConntrackRow>`
    Conntrack,
    /// [`super::CountersReport`]
    Counters,
    /// [`super::NodeReport`]
    Node,
    /// [`super::PeersReport`]: peers with where each came from (config or an etcd
    /// lease), lease age and expiry.
    Peers,
    /// `Vec<PolicyChain>`: each local pod's effective policy, as Felix's chains.
    Policy,
}

/// The objects `get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Services,
    /// Endpoints and EndpointSlices.
    Endpoints,
    Namespaces,
    Pods,
    /// networking.k8s.io/v1 NetworkPolicies.
    NetworkPolicies,
    /// projectcalico.org/v3 NetworkPolicies and GlobalNetworkPolicies.
    CalicoPolicies,
}

impl ObjectKind {
    /// The store directories of a policy kind's objects (`None`: not a policy kind).
    pub fn policy_dirs(self) -> Option<&'static [&'static str]> {
        Some(match self {
            ObjectKind::Services | ObjectKind::Endpoints => return None,
            ObjectKind::Namespaces => &["namespaces"],
            ObjectKind::Pods => &["pods"],
            ObjectKind::NetworkPolicies => &["networkpolicies"],
            ObjectKind::CalicoPolicies => {
                &["networkpolicies.projectcalico.org", "globalnetworkpolicies.projectcalico.org"]
            }
        })
    }
}

/// An endpoint by address, or by a pod of the node and a port (the daemon resolves
/// the pod's address, so there is no second round trip and no race).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, expecting = "an endpoint a.b.c.d:port, or {\"pod\": \"<pod name>\", \"port\": <port>}")]
pub enum EndpointRef {
    Address(SocketAddrV4),
    Pod { pod: String, port: u16 },
}

impl std::fmt::Display for EndpointRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointRef::Address(a) => write!(f, "{a}"),
            EndpointRef::Pod { pod, port } => write!(f, "{pod}:{port}"),
        }
    }
}

/// Every `op`, with its kind: what the decoder reads first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    PodAdd,
    PodDel,
    ServiceSet,
    ServiceDel,
    EndpointAdd,
    EndpointDel,
    Apply,
    CniAdd,
    CniDel,
    CniGc,
    Show,
    Get,
    Trace,
    CniCheck,
    CniStatus,
    TraceLive,
    Capture,
    Handover,
}

/// The hand-over ask on the wire.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum HandoverLine {
    Handover { ask: Ask },
}

impl Serialize for Request {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Request::Command(c) => c.serialize(s),
            Request::Query(q) => q.serialize(s),
            Request::Stream(x) => x.serialize(s),
            Request::Handover(ask) => HandoverLine::Handover { ask: *ask }.serialize(s),
        }
    }
}

impl Request {
    /// Reads a request line. The `op` is looked up first, which names the kind; an
    /// `apply` (up to a MiB of objects) is then read in one typed pass, since serde
    /// would buffer the whole line (every object as a generic tree) to find the tag of
    /// an internally tagged enum.
    pub fn decode(line: &str) -> Result<Request, ApiError> {
        #[derive(Deserialize)]
        struct Tag {
            op: Op,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ApplyLine {
            #[serde(rename = "op")]
            _op: serde::de::IgnoredAny,
            objects: Vec<Object>,
            #[serde(default)]
            delete: bool,
            #[serde(default)]
            more: bool,
        }
        let bad = |e: serde_json::Error| ApiError::new(ErrorCode::BadRequest, format!("bad request: {e}"));
        let op = serde_json::from_str::<Tag>(line).map_err(bad)?.op;
        Ok(match op {
            Op::Apply => {
                let a: ApplyLine = serde_json::from_str(line).map_err(bad)?;
                Request::Command(Command::Apply { objects: a.objects, delete: a.delete, more: a.more })
            }
            Op::PodAdd
            | Op::PodDel
            | Op::ServiceSet
            | Op::ServiceDel
            | Op::EndpointAdd
            | Op::EndpointDel
            | Op::CniAdd
            | Op::CniDel
            | Op::CniGc => Request::Command(serde_json::from_str(line).map_err(bad)?),
            Op::Show | Op::Get | Op::Trace | Op::CniCheck | Op::CniStatus => {
                Request::Query(serde_json::from_str(line).map_err(bad)?)
            }
            Op::TraceLive | Op::Capture => Request::Stream(serde_json::from_str(line).map_err(bad)?),
            Op::Handover => {
                let HandoverLine::Handover { ask } = serde_json::from_str(line).map_err(bad)?;
                Request::Handover(ask)
            }
        })
    }
}

impl From<Command> for Request {
    fn from(c: Command) -> Request {
        Request::Command(c)
    }
}

impl From<Query> for Request {
    fn from(q: Query) -> Request {
        Request::Query(q)
    }
}

impl From<Stream> for Request {
    fn from(s: Stream) -> Request {
        Request::Stream(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(line: &str) -> Request {
        Request::decode(line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn wire_format_is_stable() {
        let r = decode(r#"{"op":"pod_del","name":"ghost-ep3"}"#);
        assert!(matches!(r, Request::Command(Command::PodDel { name }) if name == "ghost-ep3"));
        let r = decode(r#"{"op":"show","what":"conntrack"}"#);
        assert!(matches!(r, Request::Query(Query::Show { what: Show::Conntrack })));
        let r = decode(r#"{"op":"pod_add","pod":{"name":"p","netns":"uc-p","ip":"10.244.0.80"}}"#);
        assert!(matches!(r, Request::Command(Command::PodAdd { .. })));
        let e = Request::decode(r#"{"op":"pod_del","name":"x","extra":1}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.starts_with("bad request: unknown field `extra`"), "{e}");
        let r = decode(r#"{"op":"cni_del","container_id":"c1","ifname":"eth0"}"#);
        assert!(
            matches!(r, Request::Command(Command::CniDel { container_id, ifname }) if container_id == "c1" && ifname == "eth0")
        );
        let r = decode(
            r#"{"op":"cni_add","attach":{"network":"ucanal","container_id":"c1","ifname":"eth0","netns":"/run/netns/c1","name":"default/web"}}"#,
        );
        assert!(
            matches!(r, Request::Command(Command::CniAdd { attach }) if attach.ip.is_none() && attach.name == "default/web")
        );
        let r = decode(r#"{"op":"get","what":"endpoints"}"#);
        assert!(matches!(r, Request::Query(Query::Get { what: ObjectKind::Endpoints })));
        let r = decode(r#"{"op":"capture","port":"vxlan","filter":"","count":1,"timeout_ms":0}"#);
        assert!(matches!(r, Request::Stream(Stream::Capture { count: 1, .. })));
        let ask = r#"{"op":"handover","ask":{"version":1,"workers":2,"source_ports":16,"tap_offloads":true,"udp_gro":false}}"#;
        assert!(matches!(decode(ask), Request::Handover(Ask { workers: 2, udp_gro: false, .. })));
        let e = Request::decode(r#"{"op":"nope"}"#).unwrap_err();
        assert!(e.message.contains("unknown variant `nope`"), "{e}");
        assert!(Request::decode(r#"{"op":"handover","ask":{"version":"one"}}"#).is_err());
    }

    #[test]
    fn every_request_round_trips() {
        let objs =
            r#"[{"kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"10.0.0.1","ports":[{"port":1}]}}]"#;
        let lines = [
            r#"{"op":"pod_add","pod":{"name":"p","netns":"uc-p","ip":"10.244.0.80"}}"#.to_string(),
            r#"{"op":"pod_del","name":"p"}"#.into(),
            r#"{"op":"service_set","service":{"name":"s","protocol":"udp","cluster_ip":"10.250.0.10","port":53,"endpoints":[]}}"#.into(),
            r#"{"op":"service_del","name":"s"}"#.into(),
            r#"{"op":"endpoint_add","service":"s","endpoint":"10.244.1.5:53"}"#.into(),
            r#"{"op":"endpoint_del","service":"s","endpoint":{"pod":"default/web","port":2368}}"#.into(),
            format!(r#"{{"op":"apply","objects":{objs},"delete":true,"more":true}}"#),
            r#"{"op":"cni_add","attach":{"network":"n","container_id":"c","ifname":"eth0","netns":"/x","name":"c","ip":null,"mac":null}}"#.into(),
            r#"{"op":"cni_del","container_id":"c","ifname":"eth0"}"#.into(),
            r#"{"op":"cni_gc","network":"n","valid":[["c","eth0"]]}"#.into(),
            r#"{"op":"show","what":"peers"}"#.into(),
            r#"{"op":"get","what":"services"}"#.into(),
            r#"{"op":"trace","probe":{"ingress":"host","proto":"icmp","src":"1.2.3.4:1","dst":"5.6.7.8:0","flags":null,"ttl":64}}"#.into(),
            r#"{"op":"cni_check","container_id":"c","ifname":"eth0"}"#.into(),
            r#"{"op":"cni_status"}"#.into(),
            r#"{"op":"trace_live","filter":"tcp","count":3,"timeout_ms":0}"#.into(),
            r#"{"op":"capture","port":"host","filter":"","count":3,"timeout_ms":5}"#.into(),
            r#"{"op":"handover","ask":{"version":1,"workers":1,"source_ports":1,"tap_offloads":false,"udp_gro":false}}"#.into(),
        ];
        for l in &lines {
            let once = serde_json::to_string(&decode(l)).unwrap();
            let twice = serde_json::to_string(&decode(&once)).unwrap();
            assert_eq!(once, twice, "{l}");
            // Objects come back in their stored form (defaults filled in); the rest as sent.
            if !l.contains("\"apply\"") {
                let (a, b): (serde_json::Value, serde_json::Value) =
                    (serde_json::from_str(l).unwrap(), serde_json::from_str(&once).unwrap());
                assert_eq!(a, b, "{l}");
            }
        }
    }

    #[test]
    fn apply_lines_decode_in_one_pass_as_the_enum_would() {
        let objs =
            r#"[{"kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"10.0.0.1","ports":[{"port":1}]}}]"#;
        for (line, delete, more) in [
            (format!(r#"{{"op":"apply","objects":{objs}}}"#), false, false),
            (format!(r#"{{"objects":{objs}, "op": "apply", "delete":true,"more":true}}"#), true, true),
        ] {
            let fast = decode(&line);
            let general: Command = serde_json::from_str(&line).unwrap();
            for r in [fast, Request::Command(general)] {
                assert!(
                    matches!(&r, Request::Command(Command::Apply { objects, delete: d, more: m })
                        if objects.len() == 1 && *d == delete && *m == more && objects[0].key() == "services/default/a"),
                    "{r:?}"
                );
            }
        }
        let bad = r#"{"op":"apply","objects":[],"extra":1}"#;
        assert!(Request::decode(bad).is_err() && serde_json::from_str::<Command>(bad).is_err());
    }
}
