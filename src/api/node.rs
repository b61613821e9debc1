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
    /// The daemon's process id (what the upgrade procedure signals: `ucanal pid`).
    #[serde(default)]
    pub pid: u32,
    /// What the start restored, adopted and dropped.
    #[serde(default)]
    pub start: StartReport,
    /// The API's connections and what their limits did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiStats>,
}

/// What a start took over from the ucanal before it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartReport {
    /// `cold`, `resumed` (a previous ucanal's state and kernel objects), `handed_over`.
    pub mode: String,
    /// The start found the node still steered by a ucanal that was gone (host port, TAPs,
    /// rules) and adopted what it left.
    pub adopted_leftovers: bool,
    /// Pods of the state file (or a hand-over) that could not be restored (their network
    /// namespace is gone...): dropped with a warning, their address leases released.
    pub pods_dropped: u64,
    /// Services of the state file that could not be restored, dropped with a warning.
    pub services_dropped: u64,
}

/// The API server's connections (`[api]` limits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiStats {
    pub connections: usize,
    /// Of them, waiting for a request.
    pub idle: usize,
    pub streams: usize,
    pub max_connections: usize,
    pub max_streams: usize,
    pub idle_timeout_ms: u64,
    /// Connections closed for sending no complete request (or taking no answer) in time.
    pub idle_closed: u64,
    /// Idle connections closed to give their slot to a newer client.
    pub yielded: u64,
    /// Connections refused because every slot was busy.
    pub refused: u64,
    /// Streams refused because as many ran already.
    pub streams_refused: u64,
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
