//! The control plane: the config file, the runtime API on a Unix socket, and the
//! table snapshots it publishes to the dataplane. It never touches packets.

pub mod attach;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod etcd;
pub mod handover;
pub mod inspect;
pub mod ipam;
pub mod kube;
pub mod metrics;
pub mod node;
pub mod persist;
pub mod pods;
pub mod services;
