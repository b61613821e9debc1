//! The CNI plugin (`ucanal-cni`): what a container runtime runs to put a container on
//! ucanal. It speaks the CNI spec 1.0.0 and 1.1.0 ([`spec`]), turns each command into a
//! request to the node's ucanal daemon ([`plugin`]), delegates addresses to an IPAM
//! plugin when the config has an `ipam` section ([`delegate`]), and checks a live attachment
//! against the ADD's result ([`check`]). The daemon does the work: it creates the TAP in
//! the container's namespace and owns it, as it does for `ucanal pod add`.

pub mod check;
pub mod delegate;
pub mod plugin;
pub mod result;
pub mod spec;
