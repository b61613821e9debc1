//! The runtime API: the contract between the CLI, the CNI plugin and the daemon.

pub mod kube;
mod request;

pub use request::*;
