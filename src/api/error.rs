//! Errors across the API: a code that programs decide on, and a message for people.
//! No caller ever matches the message: the CNI plugin picks its CNI error code, and a
//! successor decides to retry a hand-over, by the [`ErrorCode`].

use serde::{Deserialize, Serialize};

/// What kind of refusal or failure a reply carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a request: unreadable JSON, an unknown `op`, a field missing or of the wrong
    /// type, a line over the size limit.
    BadRequest,
    /// A field's value breaks a rule (the message names the field).
    Invalid,
    /// The peer is not root.
    PermissionDenied,
    /// Too many connections at once; try again.
    Busy,
    /// No such pod, service, endpoint, attachment or port.
    NotFound,
    /// It exists already (a pod, an endpoint, an attachment, an interface).
    Exists,
    /// It clashes with something else (an address in use, a service's cluster IP:port
    /// or NodePort).
    Conflict,
    /// The pod CIDR has no free address.
    NoFreeAddress,
    /// The node serves as many pods as it can.
    TooManyPods,
    /// A kernel call (netlink, TAP, namespace) or a state file failed.
    Kernel,
    /// etcd could not be reached or refused: nothing was applied.
    Etcd,
    /// etcd failed after part of a write went through (applying again finishes it).
    EtcdPartial,
    /// Hand-over: this ucanal has not been asked to stop yet (a successor retries).
    NotStopping,
    /// Hand-over: the successor does not fit (another version or worker shape).
    HandoverRefused,
    /// Hand-over: this ucanal takes no successor.
    NoSuccessor,
    /// A failure no other code names (a reply that could not be written).
    Internal,
}

/// A refused or failed request, as the daemon answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl std::fmt::Display) -> ApiError {
        ApiError { code, message: message.to_string() }
    }
}
