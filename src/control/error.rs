//! The daemon's errors: why it could not start ([`RunError`], with the exit code it maps
//! to) and why a request was refused ([`ControlError`], which crosses the API as an
//! [`ApiError`] whose code the client decides on).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use super::cluster::registry::RegistryError;
use super::config::ConfigError;
use super::etcd::EtcdError;
use super::handover::HandoverError;
use super::inspect::probe::ProbeError;
use super::ipam::IpamError;
use crate::api::kube::KubeError;
use crate::api::{ABSTRACT_SOCKET, ApiError, ErrorCode};

/// An error of startup.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config is wrong (exit 2).
    #[error("config error: {0}")]
    Config(ConfigError),
    #[error("/dev/net/tun is missing (is the tun module loaded?)")]
    NoTun,
    /// A kernel call (netlink, a sysctl, a TAP, a socket, a thread) failed.
    #[error("{0}")]
    Kernel(io::Error),
    #[error("{0}")]
    Etcd(#[from] EtcdError),
    #[error("joining the cluster: {0}")]
    Join(#[from] RegistryError),
    #[error("{0}")]
    Handover(#[from] HandoverError),
    #[error("api.socket: the ucanal on {} did not exit within {wait:?}", socket.display())]
    PredecessorStuck { socket: PathBuf, wait: Duration },
    #[error("{0}")]
    Ipam(#[from] IpamError),
    #[error("{0}")]
    Bind(#[from] BindError),
    /// A pod of the config or of the previous ucanal's state could not be attached.
    #[error("pods[{index}] ({name}): {source}")]
    Pod { index: usize, name: String, source: ControlError },
    #[error("--metrics {addr}: {source}")]
    Metrics { addr: SocketAddr, source: io::Error },
}

impl RunError {
    /// `ucanal run`'s exit status: 2 for a config error, 1 for any other failure.
    pub fn exit_code(&self) -> u8 {
        if matches!(self, RunError::Config(_)) { 2 } else { 1 }
    }
}

/// Why an API socket cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("api.socket: another ucanal is listening on {}", .0.display())]
    Busy(PathBuf),
    #[error("api.socket {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("api: abstract socket @{ABSTRACT_SOCKET}: another ucanal is running in this network namespace")]
    AbstractBusy,
    #[error("api: abstract socket @{ABSTRACT_SOCKET}: {0}")]
    Abstract(io::Error),
}

/// Why an API request was refused or failed; the daemon's state is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A field of the request is wrong (`what` is `pod` or `service`).
    #[error("{what}.{error}")]
    Invalid { what: &'static str, error: ConfigError },
    #[error("pod {0} exists already")]
    PodExists(String),
    #[error("{ip} is already pod {pod}'s address")]
    AddressInUse { ip: Ipv4Addr, pod: String },
    #[error("pod.netns: {} does not exist", .0.display())]
    NoNetns(PathBuf),
    /// TUNSETIFF would attach to an existing TAP of that name (CNI: "MUST return an error").
    #[error("an interface {0} already exists in the pod's namespace")]
    InterfaceExists(String),
    #[error("this node has {0} pods, the most one ucanal serves")]
    TooManyPods(usize),
    #[error("no pod {0}")]
    NoPod(String),
    /// `endpoint add --pod`: no pod of that name on the node.
    #[error("no pod {name} on this node (it has {pods:?})")]
    NoPodHere { name: String, pods: Vec<String> },
    #[error("no service {0}")]
    NoService(String),
    #[error("service {0} already uses that cluster IP:port or NodePort")]
    ServiceClash(String),
    #[error("{endpoint} is already an endpoint of {service}")]
    EndpointExists { service: String, endpoint: SocketAddrV4 },
    #[error("{endpoint} is not an endpoint of {service}")]
    NotAnEndpoint { service: String, endpoint: SocketAddrV4 },
    /// The probe of a synthetic trace does not fit the tables.
    #[error("{0}")]
    Probe(#[from] ProbeError),
    /// A `trace --live` or `capture` filter that does not parse.
    #[error("{0}")]
    Filter(#[from] crate::io::filter::FilterError),
    #[error("no port '{port}' (want host, vxlan or a pod: {pods:?})")]
    NoPort { port: String, pods: Vec<String> },
    /// A kernel call (netlink, TAP, namespace) failed.
    #[error("{0}")]
    Kernel(#[from] io::Error),
    /// A pod is out of the tables, but a worker kept its queue past the wait: its port
    /// number is not reused.
    #[error("pod {pod} detached, but worker(s) {workers:?} did not release its queues within {wait:?}")]
    WorkerStuck { pod: String, workers: Vec<usize>, wait: Duration },
    #[error("container {container_id} already has {ifname} attached")]
    AlreadyAttached { container_id: String, ifname: String },
    #[error("container {container_id} has no {ifname} attached on this node")]
    NotAttached { container_id: String, ifname: String },
    /// A service that cannot be written as Kubernetes objects (`service set` in a cluster).
    #[error("{0}")]
    Kube(#[from] KubeError),
    /// ucanal's IPAM: no free address, an address taken, the lease file unwritable.
    #[error("{0}")]
    Ipam(#[from] IpamError),
    #[error("the parts of one manifest mix apply and delete; nothing applied")]
    MixedParts,
    #[error("a manifest of more than {0} objects; nothing applied")]
    TooManyObjects(usize),
    /// etcd failed before anything was written.
    #[error("{0}; nothing applied")]
    Etcd(EtcdError),
    /// etcd failed after some transactions went through.
    #[error("{0}")]
    EtcdPartial(EtcdError),
    #[error("permission denied: the ucanal API is root-only")]
    PermissionDenied,
    #[error("too many API connections (at most {0}); try again")]
    Busy(usize),
    #[error("hand-over: this ucanal takes no successor")]
    NoSuccessor,
}

impl From<EtcdError> for ControlError {
    fn from(e: EtcdError) -> ControlError {
        match e {
            e @ EtcdError::Partial { .. } => ControlError::EtcdPartial(e),
            e => ControlError::Etcd(e),
        }
    }
}

impl ControlError {
    pub fn code(&self) -> ErrorCode {
        use ControlError::*;
        match self {
            Invalid { .. } | NoNetns(_) | Probe(_) | Filter(_) | Kube(_) | MixedParts | TooManyObjects(_) => {
                ErrorCode::Invalid
            }
            PodExists(_) | InterfaceExists(_) | EndpointExists { .. } | AlreadyAttached { .. } => ErrorCode::Exists,
            AddressInUse { .. } | ServiceClash(_) => ErrorCode::Conflict,
            TooManyPods(_) => ErrorCode::TooManyPods,
            NoPod(_) | NoPodHere { .. } | NoService(_) | NotAnEndpoint { .. } | NoPort { .. } | NotAttached { .. } => {
                ErrorCode::NotFound
            }
            Kernel(_) => ErrorCode::Kernel,
            WorkerStuck { .. } => ErrorCode::Internal,
            Ipam(IpamError::Exhausted(_)) => ErrorCode::NoFreeAddress,
            Ipam(IpamError::InUse(..)) => ErrorCode::Conflict,
            Ipam(IpamError::Outside(..) | IpamError::Reserved(..)) => ErrorCode::Invalid,
            Ipam(IpamError::File { .. } | IpamError::Unreadable { .. }) => ErrorCode::Kernel,
            Etcd(_) => ErrorCode::Etcd,
            EtcdPartial(_) => ErrorCode::EtcdPartial,
            PermissionDenied => ErrorCode::PermissionDenied,
            Busy(_) => ErrorCode::Busy,
            NoSuccessor => ErrorCode::NoSuccessor,
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        ApiError::new(e.code(), e)
    }
}
