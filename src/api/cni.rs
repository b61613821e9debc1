//! What the CNI plugin and the daemon say to each other: the attachment asked for on
//! ADD, the attachment as the daemon made it, and STATUS.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::wire::MacAddr;

/// What the CNI plugin asks for on ADD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniAttach {
    /// The CNI network (the conflist's `name`).
    pub network: String,
    pub container_id: String,
    /// The interface to create in `netns` (`CNI_IFNAME`).
    pub ifname: String,
    /// The namespace path (`CNI_NETNS`).
    pub netns: String,
    /// How `show pods` names it: `namespace/name` from CNI_ARGS, else the container id.
    pub name: String,
    /// An address chosen by the runtime or a delegated IPAM plugin; `None`: the daemon allocates.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// The pod's labels (the network config's `args.cni.labels`, CNI's conventions).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// An attachment as the daemon made it (the answer to ADD and CHECK).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniPod {
    pub name: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub mtu: u16,
    pub gateway: Ipv4Addr,
}

/// STATUS: the addresses the node can still hand out, and the leases it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniStatus {
    pub free: usize,
    pub leases: usize,
}
