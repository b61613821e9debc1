//! `show node`: what the node is, how its dataplane runs, and how full its tables are.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::rows::PeersReport;
use crate::core::tables::NodeInfo;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: NodeInfo,
    /// Where the pod CIDR came from: the config, or a lease in etcd.
    pub pod_cidr_from: String,
    /// The generation of the published tables.
    pub generation: u64,
    pub workers: usize,
    pub offloads: bool,
    pub techniques: Techniques,
    pub batch: usize,
    pub vxlan_source_ports: Vec<u16>,
    pub services: usize,
    pub conntrack: ConntrackSize,
    pub peers: PeersReport,
    /// With `--keep-on-exit`: the state file and its journal.
    pub state_file: Option<StateFileStats>,
}

/// The fast-path techniques in effect (`offloads` with the per-technique switches applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Techniques {
    pub tap_offloads: bool,
    pub udp_gso: bool,
    pub udp_gro: bool,
    pub gro: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackSize {
    pub entries: usize,
    pub max: usize,
}

/// The state file of `--keep-on-exit`: its snapshot, its journal and their upkeep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFileStats {
    pub path: PathBuf,
    /// The last journal record written.
    pub seq: u64,
    pub snapshot_bytes: u64,
    pub journal_bytes: u64,
    pub appends: u64,
    pub compactions: u64,
    pub compacting: bool,
    pub torn_tails_at_load: u64,
}
