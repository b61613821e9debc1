//! The node configuration file (TOML): the node, its API socket, dataplane knobs,
//! its peers (what a flannel lease holds), its pods and its services.
//!
//! Unknown fields are rejected, and every semantic check names the field it is about
//! (`pods[1].ip: 10.245.1.5 is outside node.pod_cidr 10.244.1.0/24`), so a bad config
//! is refused before anything is created.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::PodSpec;
use crate::api::Techniques;
use crate::core::Ipv4Net;
use crate::core::nat::conntrack::{Timeouts, UdpRule};
use crate::core::nat::service::ServiceSpec;
use crate::core::tables::{NodeInfo, Peer, VxlanAccept};
use crate::wire::MacAddr;

mod validate;

pub use validate::{check_pod, check_service};

/// A config error: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{problem}", field_prefix(field))]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() { String::new() } else { format!("{field}: ") }
}

fn err(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError { field: field.into(), problem: problem.into() }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub dataplane: DataplaneSection,
    #[serde(default)]
    pub conntrack: ConntrackSection,
    #[serde(default)]
    pub peers: Vec<Peer>,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Manifests applied at start, as `apply -f` would (a static lab's namespaces, pods
    /// and network policies, or services); each is read and checked when the config loads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<PathBuf>,
    /// Membership of a flannel cluster on etcd (peers then come from the leases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSection>,
}

/// `[cluster]`: where the flannel registry lives (flanneld's `--etcd-endpoints`,
/// `--etcd-prefix`) and the lifetime of this node's lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub etcd_endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Seconds (flannel: 24 h).
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: u64,
    /// Renew this many seconds before expiry (flannel: 60 min; at most half the TTL).
    #[serde(default = "default_renew_margin")]
    pub renew_margin: u64,
    /// Where the cluster's Kubernetes objects live (`<objects_prefix>/objects/...`).
    #[serde(default = "default_objects_prefix")]
    pub objects_prefix: String,
}

fn default_objects_prefix() -> String {
    "/ucanal".into()
}

fn default_prefix() -> String {
    "/coreos.com/network".into()
}
fn default_lease_ttl() -> u64 {
    24 * 3600
}
fn default_renew_margin() -> u64 {
    3600
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub name: String,
    /// The underlay interface (`ens33`).
    pub uplink: String,
    pub node_ip: Ipv4Addr,
    /// This node's pod subnet. Optional with `[cluster]`: the node then leases a free
    /// subnet from etcd as flanneld does (see [`Config::with_leased_pod_cidr`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<Ipv4Net>,
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub vtep_mac: MacAddr,
    /// Defaults to the pod CIDR's network address, as flannel assigns it.
    #[serde(default)]
    pub vtep_ip: Option<Ipv4Addr>,
    #[serde(default = "default_vni")]
    pub vni: u32,
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
    /// Which VXLAN senders are decapsulated: `any` (as the kernel's flannel.1, the
    /// default) or `peers` (only FDB peers, for their own pod subnet, to this node).
    #[serde(default = "default_vxlan_accept")]
    pub vxlan_accept: String,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    #[serde(default = "default_host_mac")]
    pub host_mac: MacAddr,
    #[serde(default = "default_gateway")]
    pub gateway: Ipv4Addr,
    /// The TAP connecting ucanal with the node's own stack.
    #[serde(default = "default_host_port")]
    pub host_port: String,
    /// MAC of the node's side of the host port (default 02:00 + node IP).
    #[serde(default)]
    pub host_port_mac: Option<MacAddr>,
    /// `lo-hi`: source ports for masquerading to the node IP towards the uplink.
    #[serde(default = "default_masquerade_ports")]
    pub masquerade_ports: String,
    /// Policy-routing table for steering NodePort and masquerade replies to ucanal.
    #[serde(default = "default_route_table")]
    pub route_table: u32,
}

fn default_vni() -> u32 {
    1
}
fn default_vxlan_port() -> u16 {
    8472
}
fn default_vxlan_accept() -> String {
    "any".into()
}
fn default_mtu() -> u16 {
    1450
}
fn default_host_mac() -> MacAddr {
    MacAddr::CALICO_HOST
}
fn default_gateway() -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 1, 1)
}
fn default_host_port() -> String {
    "ucanal0".into()
}
fn default_masquerade_ports() -> String {
    "61000-65534".into()
}
fn default_route_table() -> u32 {
    8472
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// The runtime API socket (root only).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// How long a connection may take to send a complete request (or to take an
    /// answer) before it is closed.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Connections served at once; when all are taken, the one idle the longest yields.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Streams (`trace --live`, `capture`) at once.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
}

fn default_socket() -> PathBuf {
    PathBuf::from(crate::api::DEFAULT_SOCKET)
}
fn default_idle_timeout_ms() -> u64 {
    10_000
}
fn default_max_clients() -> usize {
    64
}
fn default_max_streams() -> usize {
    8
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            socket: default_socket(),
            idle_timeout_ms: default_idle_timeout_ms(),
            max_clients: default_max_clients(),
            max_streams: default_max_streams(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneSection {
    /// Worker threads (0 = one per CPU).
    #[serde(default)]
    pub workers: usize,
    /// TAP checksum/TSO offloads, userspace GSO/GRO, UDP GSO/GRO: the default of the four
    /// switches below, each of which can turn one technique off (or on) by itself.
    #[serde(default = "yes")]
    pub offloads: bool,
    /// `IFF_VNET_HDR` + `TUNSETOFFLOAD` on the TAPs: 64 KB TSO super-packets and partial
    /// checksums from pods, segmented in userspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap_offloads: Option<bool>,
    /// `UDP_SEGMENT`: a run of equal-size VXLAN datagrams in one send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_gso: Option<bool>,
    /// `UDP_GRO` on the VXLAN sockets: several datagrams of a flow in one receive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_gro: Option<bool>,
    /// Coalescing of consecutive TCP segments of a flow toward a pod into one GSO frame
    /// (needs `tap_offloads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gro: Option<bool>,
    /// Size of the pool of UDP sockets the outer source port is chosen from.
    #[serde(default = "default_source_ports")]
    pub source_ports: usize,
    /// Frames per batch at every boundary.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Microseconds a worker keeps polling after its last packet before it sleeps in
    /// epoll (0 = sleep at once). Trades CPU for latency: a packet that arrives while
    /// polling is handled without a thread wake-up.
    #[serde(default = "default_busy_poll_us")]
    pub busy_poll_us: u32,
    /// Userspace TSO scatter-gather: each VXLAN datagram leaves as its headers (built in
    /// scratch) plus its slice of the pod's super-packet in place; false copies every
    /// segment into scratch first.
    #[serde(default = "yes")]
    pub sg_gso: bool,
    /// A spike, off by default: `MSG_ZEROCOPY` on the VXLAN sends (`io::zerocopy`).
    #[serde(default)]
    pub zerocopy: bool,
    /// For measuring only: the pass-through relay (`core::relay`) instead of the
    /// dataplane's decisions: the ceiling of the TAP + UDP design (one pod, one peer).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relay: bool,
}

fn yes() -> bool {
    true
}
fn default_source_ports() -> usize {
    16
}
fn default_batch() -> usize {
    64
}
fn default_busy_poll_us() -> u32 {
    0
}

impl Default for DataplaneSection {
    fn default() -> Self {
        DataplaneSection {
            workers: 0,
            offloads: true,
            tap_offloads: None,
            udp_gso: None,
            udp_gro: None,
            gro: None,
            source_ports: default_source_ports(),
            batch: default_batch(),
            busy_poll_us: default_busy_poll_us(),
            sg_gso: true,
            zerocopy: false,
            relay: false,
        }
    }
}

impl DataplaneSection {
    /// Worker threads: as configured, else one per CPU.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 { self.workers } else { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) }
    }

    /// VXLAN source sockets: the pool's size, at least one.
    pub fn source_sockets(&self) -> usize {
        self.source_ports.max(1)
    }

    pub fn techniques(&self) -> Techniques {
        let tap_offloads = self.tap_offloads.unwrap_or(self.offloads);
        Techniques {
            tap_offloads,
            udp_gso: self.udp_gso.unwrap_or(self.offloads),
            udp_gro: self.udp_gro.unwrap_or(self.offloads),
            // Coalesced frames reach the pod as GSO frames, which only a TAP with offloads takes.
            gro: self.gro.unwrap_or(self.offloads) && tap_offloads,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackSection {
    #[serde(default = "default_ct_max")]
    pub max: usize,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// When a UDP flow becomes a stream: `current` (a reply seen and the flow older than
    /// two seconds, as today's kernels) or `linux_3_10` (the packet after a reply, as
    /// the article's kernel).
    #[serde(default)]
    pub udp_stream_rule: UdpRule,
}

fn default_ct_max() -> usize {
    262_144
}

impl Default for ConntrackSection {
    fn default() -> Self {
        ConntrackSection { max: default_ct_max(), timeouts: Timeouts::default(), udp_stream_rule: UdpRule::default() }
    }
}

pub fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a > 0 && a <= b).then_some((a, b))
}

impl Config {
    /// Reads and validates a config file.
    /// The objects of the `manifests` files, checked (a fault names the file and field).
    pub fn manifest_objects(&self) -> Result<Vec<crate::api::kube::Object>, ConfigError> {
        let mut out = Vec::new();
        for (i, m) in self.manifests.iter().enumerate() {
            let field = format!("manifests[{i}]");
            let text =
                std::fs::read_to_string(m).map_err(|e| err(&field, format!("cannot read {}: {e}", m.display())))?;
            out.extend(
                crate::api::kube::parse_manifest(&text).map_err(|e| err(&field, format!("{}: {e}", m.display())))?,
            );
        }
        Ok(out)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| err("", format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| {
            // toml's message already names the key and shows the line; keep it on one line.
            err("", e.to_string().trim().replace('\n', " ").replace("  ", " "))
        })?;
        c.validate()?;
        Ok(c)
    }

    /// The config with its API socket moved (`run --listen`): part of loading, before
    /// the config is shared read-only.
    pub fn listening_on(mut self, socket: Option<PathBuf>) -> Config {
        if let Some(s) = socket {
            self.api.socket = s;
        }
        self
    }

    /// The VTEP address (`None` while the pod CIDR is still to be leased).
    pub fn vtep_ip(&self) -> Option<Ipv4Addr> {
        self.node.vtep_ip.or(self.node.pod_cidr.map(|n| n.addr()))
    }

    /// The config with the pod CIDR this node leased from etcd, checked again in full.
    /// Every pod must fall inside the leased subnet: one outside is named with it.
    pub fn with_leased_pod_cidr(mut self, subnet: Ipv4Net) -> Result<Config, ConfigError> {
        for (i, p) in self.pods.iter().enumerate() {
            if !subnet.contains(p.ip) {
                return Err(err(
                    format!("pods[{i}].ip"),
                    format!("pod {} at {} is outside {subnet}, the subnet this node leased from etcd", p.name, p.ip),
                ));
            }
        }
        self.node.pod_cidr = Some(subnet);
        self.validate()?;
        Ok(self)
    }

    pub fn masquerade_ports(&self) -> (u16, u16) {
        parse_port_range(&self.node.masquerade_ports).unwrap_or((61000, 65534))
    }

    /// What the dataplane knows of the node; an error while the pod CIDR is still to be
    /// leased (the daemon leases it before it builds anything).
    pub fn node_info(&self) -> Result<NodeInfo, ConfigError> {
        let n = &self.node;
        let o = n.node_ip.octets();
        let (Some(pod_cidr), Some(vtep_ip)) = (n.pod_cidr, self.vtep_ip()) else {
            return Err(err("node.pod_cidr", "not configured and not leased from etcd yet"));
        };
        Ok(NodeInfo {
            name: n.name.clone(),
            uplink: n.uplink.clone(),
            node_ip: n.node_ip,
            pod_cidr,
            cluster_cidr: n.cluster_cidr,
            service_cidr: n.service_cidr,
            vtep_ip,
            vtep_mac: n.vtep_mac,
            vni: n.vni,
            vxlan_port: n.vxlan_port,
            mtu: n.mtu,
            host_mac: n.host_mac,
            host_port_mac: n.host_port_mac.unwrap_or(MacAddr([0x02, 0x00, o[0], o[1], o[2], o[3]])),
            gateway: n.gateway,
            masquerade_ports: self.masquerade_ports(),
            vxlan_accept: VxlanAccept::parse(&n.vxlan_accept).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests;
