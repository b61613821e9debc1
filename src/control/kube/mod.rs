//! Kubernetes objects on this node: applied locally or shared through etcd.

pub mod apply;
pub mod buckets;
pub mod sync;
