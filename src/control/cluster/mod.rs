//! ucanal as a member of a flannel cluster on etcd: flannel's registry format and lease
//! handling, and the peer watch that keeps the dataplane's peers in step with the
//! leases. Control plane only: nothing here is on the packet path, and an etcd outage
//! leaves the last tables in place.

pub mod flannel;
pub mod member;
pub mod membership;
pub mod registry;
