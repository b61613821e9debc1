//! The listings `show` answers: one row type per table, in the shape `ucanal show
//! --json` prints (the schema README.md's "Listings" documents). The daemon fills them
//! from its snapshot; the CLI prints them as is or renders the kernel tools' text from
//! them, so both forms always agree.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::core::Ipv4Net;

/// `ip route`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    /// `default`, `a.b.c.d` (a /32) or `a.b.c.d/len`.
    pub dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    pub dev: String,
    /// `unicast` or `local`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub flags: Vec<String>,
    /// What ucanal does with it: `pod`, `peer`, `local`, `host`.
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// `ip neigh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighRow {
    pub ip: Ipv4Addr,
    pub dev: String,
    pub lladdr: String,
    pub state: String,
}

/// `bridge fdb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbRow {
    pub mac: String,
    pub dev: String,
    pub dst: Ipv4Addr,
    pub flags: Vec<String>,
    pub state: String,
}

/// `show pods`: the node's pods and the node's name (one request for the table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodsReport {
    pub node: String,
    pub pods: Vec<PodRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRow {
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub netns: String,
    /// The pod's port, Calico-style name.
    pub port: String,
    pub port_index: u32,
    /// What crossed the pod's port (rx: from the pod).
    pub counts: PortCounts,
}

/// Frames and bytes that crossed a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PortCounts {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// `iptables -vnL -t nat`: a service's portal and its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub name: String,
    pub protocol: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// New flows to the service (iptables `pkts` of its KUBE-SVC rule).
    pub packets: u64,
    pub bytes: u64,
    /// Those of them that came through the NodePort (its KUBE-NODEPORTS rule); the others
    /// came to the cluster IP (its KUBE-SERVICES rule).
    #[serde(default)]
    pub node_port_packets: u64,
    #[serde(default)]
    pub node_port_bytes: u64,
    pub endpoints: Vec<EndpointRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRow {
    pub endpoint: SocketAddrV4,
    /// New flows DNATed to this endpoint (iptables `pkts` of its KUBE-SEP rule).
    pub packets: u64,
    pub bytes: u64,
}

/// `conntrack -L`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackRow {
    pub proto: String,
    pub protonum: u8,
    /// Seconds to expiry.
    pub timeout: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    pub original: TupleRow,
    pub reply: TupleRow,
    pub unreplied: bool,
    pub assured: bool,
    pub dnat: bool,
    pub snat: bool,
    /// The line as `conntrack -L` prints it.
    pub line: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TupleRow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

/// `show counters`: every decision and drop counter by name, zeros included.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CountersReport {
    pub decisions: BTreeMap<String, u64>,
    pub drops: BTreeMap<String, u64>,
}

/// `show peers`: every peer with where it came from, and the node's membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersReport {
    pub peers: Vec<PeerRow>,
    /// `None` outside a cluster.
    pub cluster: Option<ClusterStatus>,
}

/// A peer, from the config or an etcd lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRow {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: String,
    /// `config` or `etcd`.
    pub source: String,
    /// The lease key, `-` for a config peer.
    pub lease: String,
    pub age_secs: u64,
    pub expires_secs: Option<u64>,
}

/// What the node knows of its membership of a cluster on etcd.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub connected: bool,
    pub own_subnet: Option<Ipv4Net>,
    pub own_expires: Option<u64>,
    /// Times etcd went away (each outage once), watch re-lists, and leases skipped
    /// (another backend, unparsable, or conflicting with this node).
    pub outages: u64,
    pub relists: u64,
    pub ignored: u64,
    pub own_lease_lost: u64,
    pub last_error: Option<String>,
}

/// `show policy`: a local pod's effective policy, Felix's two chains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChain {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    /// `cali-tw-<host-side interface>`: to the pod.
    pub ingress_chain: String,
    /// `cali-fw-<host-side interface>`: from the pod.
    pub egress_chain: String,
    /// Some policy selects the pod for ingress (else its profile allows).
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    /// Ingress rules, then egress rules, each in the order they are walked.
    pub rules: Vec<PolicyRuleRow>,
}

/// One rule of a chain, with the new flows that matched it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRuleRow {
    /// `ingress` or `egress`.
    pub dir: String,
    /// `network_policy`, `calico_network_policy` or `global_network_policy`.
    pub kind: String,
    /// `namespace/name` (a global policy: `name`).
    pub policy: String,
    /// Calico's order (a Kubernetes policy: 1000; none: last).
    pub order: Option<String>,
    /// The rule's index in the policy's ingress or egress list.
    pub rule: usize,
    /// `Allow`, `Deny`, `Log` or `Pass`.
    pub action: String,
    pub packets: u64,
    pub bytes: u64,
}
