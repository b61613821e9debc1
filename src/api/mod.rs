//! The runtime API: the contract between the daemon and its clients (the `ucanal` CLI,
//! the CNI plugin, a successor ucanal asking for a hand-over): typed requests, typed
//! replies, errors with codes, and the one JSON-lines codec all of them speak, over a
//! Unix socket only root may open.
//!
//! A leaf: it uses the value types of [`crate::core`] and [`crate::wire`] (a service
//! spec, a trace step, a MAC address) and nothing of `control`, `cli` or `io`, nor an
//! async runtime, so the daemon and every client depend on it and never on each other.
//!
//! - [`request`]: what a client asks, by kind ([`Command`], [`Query`], [`Stream`], a
//!   hand-over [`Ask`]).
//! - [`rows`], [`node`], [`trace`], [`cni`]: what the daemon answers.
//! - [`error`]: [`ApiError`] `{code, message}`; programs decide on the code.
//! - [`codec`]: lines in and out, and the blocking [`codec::Client`].
//! - [`kube`]: the Kubernetes objects `apply` carries and `get` lists.

pub mod cni;
pub mod codec;
pub mod error;
pub mod handover;
pub mod kube;
pub mod node;
pub mod pod;
pub mod request;
pub mod rows;
pub mod trace;

pub use cni::{CniAttach, CniPod, CniStatus};
pub use error::{ApiError, ErrorCode};
pub use handover::Ask;
pub use kube::ObjectList;
pub use node::{ConntrackSize, NodeReport, StateFileStats, Techniques};
pub use pod::PodSpec;
pub use request::{Command, EndpointRef, ObjectKind, Query, Request, Show, Stream};
pub use rows::*;
pub use trace::{CapturedFrame, Probe, ProbeProto, TraceEvent, TraceReport};

/// The abstract Unix socket every daemon also listens on. Abstract names belong to a
/// network namespace, so each node's daemon has its own `@ucanal`.
pub const ABSTRACT_SOCKET: &str = "ucanal";

/// The socket file a daemon listens on when its config names none.
pub const DEFAULT_SOCKET: &str = "/run/ucanal/ucanal.sock";
