//! ucanal as a member of a flannel cluster on etcd: the etcd v3 client (over its JSON
//! gateway), flannel's registry format and lease handling, and the peer watch that keeps
//! the dataplane's peers in step with the leases. Control plane only: nothing here is
//! on the packet path, and an etcd outage leaves the last tables in place.

pub mod buckets;
pub mod etcd;
pub mod flannel;
pub mod gateway;
pub mod member;
pub mod objects;
pub mod registry;
