//! ucanal is a userspace Canal-style container-network dataplane. One process per
//! node does what a Canal node does in the kernel: it owns one TAP per pod (the pod's
//! `eth0`) and answers its ARP by proxy (Calico), routes by `/32` host routes and
//! remote pod subnets, encapsulates to peers over VXLAN byte-compatibly with flannel's
//! `flannel.1`, and implements kube-proxy's ClusterIP/NodePort DNAT and masquerade with
//! its own connection tracking — no netfilter rule anywhere.
//!
//! The crate has four rooms: [`wire`] (packet views and in-place rewrites), [`core`]
//! (the sans-IO dataplane: bytes and `now` in, an [`core::Action`] out), [`io`] (the
//! shell: TAPs, sockets, worker threads, netlink) and [`control`] (config, the runtime
//! API, table snapshots); [`cni`] is the CNI plugin that puts a container runtime's
//! containers on it, [`lab`] reads the lab's topology files.

pub mod api;
pub mod cli;
pub mod cni;
pub mod control;
pub mod core;
pub mod io;
pub mod lab;
pub mod wire;
