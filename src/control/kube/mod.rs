//! Kubernetes objects on this node: the [`store`] of what is applied and the service
//! specs it makes, [`apply`] (`apply`/`delete` of manifests, and the updates the etcd
//! watch brings, as deltas of the service table), and the objects shared through etcd
//! ([`sync`], laid out in [`buckets`]).

pub mod apply;
pub mod buckets;
pub mod store;
pub mod sync;

pub use store::{Store, objects_of, service_of, spec_of};

/// The node's objects, and where `apply` writes them when the node is in a cluster.
#[derive(Default)]
pub struct KubeBook {
    pub store: Store,
    /// The cluster's objects in etcd, once the node joined one.
    pub shared: Option<sync::ObjectStore>,
}
