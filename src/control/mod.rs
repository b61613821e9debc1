//! The control plane: the config file, the runtime API on a Unix socket, and the
//! table snapshots it publishes to the dataplane. It never touches packets.

pub mod api;
pub mod client;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod journal;
pub mod kube;
pub mod kubectl;
pub mod leases;
pub mod metrics;
pub mod probe;
pub mod show;
pub mod stream;
pub mod tracecmd;
