//! The node configuration file (TOML): the node, its API socket, dataplane knobs,
//! its peers (what a flannel lease holds), its pods and its services.
//!
//! Unknown fields are rejected, and every semantic check names the field it is about
//! (`pods[1].ip: 10.245.1.5 is outside node.pod_cidr 10.244.1.0/24`), so a bad config
//! is refused before anything is created.

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::Ipv4Net;
use crate::core::nat::conntrack::Timeouts;
use crate::core::nat::service::ServiceSpec;
use crate::core::tables::{NodeInfo, Peer};
use crate::wire::MacAddr;

/// A config error: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "{}: {}", self.field, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub name: String,
    /// The underlay interface (`ens33`).
    pub uplink: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
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
}

pub fn default_socket() -> PathBuf {
    PathBuf::from("/run/ucanal/ucanal.sock")
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection { socket: default_socket() }
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

/// The fast-path techniques in effect (`offloads` with the per-technique switches applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Techniques {
    pub tap_offloads: bool,
    pub udp_gso: bool,
    pub udp_gro: bool,
    pub gro: bool,
}

impl DataplaneSection {
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
}

fn default_ct_max() -> usize {
    262_144
}

impl Default for ConntrackSection {
    fn default() -> Self {
        ConntrackSection { max: default_ct_max(), timeouts: Timeouts::default() }
    }
}

/// A pod to attach: its namespace (`/run/netns/<netns>` or an absolute path) and IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The MAC of the pod's eth0 (default 0a:58 + pod IP, as the CNI bridge plugin does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
}

impl PodSpec {
    pub fn mac(&self) -> MacAddr {
        self.mac.unwrap_or_else(|| {
            let o = self.ip.octets();
            MacAddr([0x0a, 0x58, o[0], o[1], o[2], o[3]])
        })
    }
    /// The namespace file.
    pub fn netns_path(&self) -> PathBuf {
        if self.netns.starts_with('/') { PathBuf::from(&self.netns) } else { Path::new("/run/netns").join(&self.netns) }
    }
    /// Calico-style host-side name: `cali` + 11 hex digits of a hash of the pod name.
    pub fn port_name(&self) -> String {
        let h = crate::core::nat::mix64(
            self.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)),
        );
        format!("cali{:011x}", h & 0x0fff_ffff_ffff)
    }
}

pub fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a > 0 && a <= b).then_some((a, b))
}

impl Config {
    /// Reads and validates a config file.
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

    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.node.vtep_ip.unwrap_or(self.node.pod_cidr.addr())
    }

    pub fn masquerade_ports(&self) -> (u16, u16) {
        parse_port_range(&self.node.masquerade_ports).unwrap_or((61000, 65534))
    }

    pub fn node_info(&self) -> NodeInfo {
        let n = &self.node;
        let o = n.node_ip.octets();
        NodeInfo {
            name: n.name.clone(),
            uplink: n.uplink.clone(),
            node_ip: n.node_ip,
            pod_cidr: n.pod_cidr,
            cluster_cidr: n.cluster_cidr,
            service_cidr: n.service_cidr,
            vtep_ip: self.vtep_ip(),
            vtep_mac: n.vtep_mac,
            vni: n.vni,
            vxlan_port: n.vxlan_port,
            mtu: n.mtu,
            host_mac: n.host_mac,
            host_port_mac: n.host_port_mac.unwrap_or(MacAddr([0x02, 0x00, o[0], o[1], o[2], o[3]])),
            gateway: n.gateway,
            masquerade_ports: self.masquerade_ports(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = &self.node;
        if n.name.is_empty() {
            return Err(err("node.name", "must not be empty"));
        }
        check_ifname("node.uplink", &n.uplink)?;
        check_ifname("node.host_port", &n.host_port)?;
        check_unicast_ip("node.node_ip", n.node_ip)?;
        if !n.cluster_cidr.contains_net(&n.pod_cidr) {
            return Err(err(
                "node.pod_cidr",
                format!("{} is not inside node.cluster_cidr {}", n.pod_cidr, n.cluster_cidr),
            ));
        }
        if n.pod_cidr.prefix_len() > 30 {
            return Err(err("node.pod_cidr", format!("{} is too small for pods (want /30 or larger)", n.pod_cidr)));
        }
        if n.service_cidr.overlaps(&n.cluster_cidr) {
            return Err(err(
                "node.service_cidr",
                format!("{} overlaps node.cluster_cidr {}", n.service_cidr, n.cluster_cidr),
            ));
        }
        if n.cluster_cidr.contains(n.node_ip) || n.service_cidr.contains(n.node_ip) {
            return Err(err("node.node_ip", format!("{} is inside the cluster or service CIDR", n.node_ip)));
        }
        if !n.vtep_mac.is_unicast() {
            return Err(err("node.vtep_mac", format!("{} is not a unicast MAC", n.vtep_mac)));
        }
        if !n.host_mac.is_unicast() {
            return Err(err("node.host_mac", format!("{} is not a unicast MAC", n.host_mac)));
        }
        if let Some(m) = n.host_port_mac
            && (!m.is_unicast() || m == n.host_mac)
        {
            return Err(err("node.host_port_mac", format!("{m} must be unicast and differ from node.host_mac")));
        }
        if let Some(v) = n.vtep_ip
            && !n.pod_cidr.contains(v)
        {
            return Err(err("node.vtep_ip", format!("{v} is outside node.pod_cidr {}", n.pod_cidr)));
        }
        if n.vni == 0 || n.vni > 0x00ff_ffff {
            return Err(err("node.vni", format!("{} is not a 24-bit VNI (1..16777215)", n.vni)));
        }
        if n.vxlan_port == 0 {
            return Err(err("node.vxlan_port", "must not be 0"));
        }
        if !(576..=9000).contains(&n.mtu) {
            return Err(err("node.mtu", format!("{} is outside 576..9000", n.mtu)));
        }
        if n.gateway.is_unspecified() || n.cluster_cidr.contains(n.gateway) {
            return Err(err(
                "node.gateway",
                format!("{} must be an address outside the cluster (Calico uses 169.254.1.1)", n.gateway),
            ));
        }
        let Some((lo, hi)) = parse_port_range(&n.masquerade_ports) else {
            return Err(err(
                "node.masquerade_ports",
                format!("'{}' is not a port range lo-hi (e.g. 61000-65535)", n.masquerade_ports),
            ));
        };
        if lo < 1024 || hi - lo < 255 {
            return Err(err("node.masquerade_ports", format!("{lo}-{hi}: want at least 256 ports, all >= 1024")));
        }
        if hi == u16::MAX {
            return Err(err(
                "node.masquerade_ports",
                format!("{lo}-{hi}: end at 65534 at most (the kernel's FIB rules refuse a port range ending at 65535)"),
            ));
        }
        if n.route_table == 0 || (253..=255).contains(&n.route_table) {
            return Err(err("node.route_table", format!("{} is a reserved routing table", n.route_table)));
        }
        if self.api.socket.as_os_str().is_empty() || !self.api.socket.is_absolute() {
            return Err(err("api.socket", "must be an absolute path"));
        }
        if self.dataplane.source_ports == 0 || self.dataplane.source_ports > 1024 {
            return Err(err("dataplane.source_ports", "must be 1..1024"));
        }
        if self.dataplane.batch == 0 || self.dataplane.batch > 1024 {
            return Err(err("dataplane.batch", "must be 1..1024"));
        }
        if self.dataplane.gro == Some(true) && !self.dataplane.techniques().tap_offloads {
            return Err(err("dataplane.gro", "needs tap_offloads: coalesced frames go to the pod as GSO frames"));
        }
        if self.dataplane.busy_poll_us > 10_000 {
            return Err(err("dataplane.busy_poll_us", "must be 0 .. 10000 (10 ms)"));
        }
        if self.dataplane.workers > 256 {
            return Err(err("dataplane.workers", "must be 0 (one per CPU) .. 256"));
        }
        if self.conntrack.max == 0 {
            return Err(err("conntrack.max", "must be positive"));
        }

        let mut names = HashSet::new();
        let mut subnets: Vec<(usize, Ipv4Net)> = Vec::new();
        let mut macs = HashSet::from([n.vtep_mac]);
        let mut public = HashSet::from([n.node_ip]);
        for (i, p) in self.peers.iter().enumerate() {
            let f = |k: &str| format!("peers[{i}].{k}");
            if !names.insert(p.name.clone()) || p.name == n.name {
                return Err(err(f("name"), format!("'{}' is used twice (or is this node)", p.name)));
            }
            if !n.cluster_cidr.contains_net(&p.subnet) {
                return Err(err(
                    f("subnet"),
                    format!("{} is not inside node.cluster_cidr {}", p.subnet, n.cluster_cidr),
                ));
            }
            if p.subnet.overlaps(&n.pod_cidr) {
                return Err(err(f("subnet"), format!("{} overlaps this node's pod_cidr {}", p.subnet, n.pod_cidr)));
            }
            if let Some((j, _)) = subnets.iter().find(|(_, s)| s.overlaps(&p.subnet)) {
                return Err(err(f("subnet"), format!("{} overlaps peers[{j}].subnet", p.subnet)));
            }
            subnets.push((i, p.subnet));
            check_unicast_ip(&f("public_ip"), p.public_ip)?;
            if !public.insert(p.public_ip) {
                return Err(err(f("public_ip"), format!("{} is used twice (or is this node's IP)", p.public_ip)));
            }
            if !p.vtep_mac.is_unicast() || !macs.insert(p.vtep_mac) {
                return Err(err(f("vtep_mac"), format!("{} is not unicast or is used twice", p.vtep_mac)));
            }
        }

        let mut pod_names = HashSet::new();
        let mut pod_ips = HashSet::new();
        for (i, p) in self.pods.iter().enumerate() {
            check_pod(self, p)
                .map_err(|e| ConfigError { field: format!("pods[{i}].{}", e.field), problem: e.problem })?;
            if !pod_names.insert(p.name.clone()) {
                return Err(err(format!("pods[{i}].name"), format!("'{}' is used twice", p.name)));
            }
            if !pod_ips.insert(p.ip) {
                return Err(err(format!("pods[{i}].ip"), format!("{} is used twice", p.ip)));
            }
        }

        let mut svc_names = HashSet::new();
        let mut vips = HashSet::new();
        let mut node_ports = HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            check_service(self, s)
                .map_err(|e| ConfigError { field: format!("services[{i}].{}", e.field), problem: e.problem })?;
            if !svc_names.insert(s.name.clone()) {
                return Err(err(format!("services[{i}].name"), format!("'{}' is used twice", s.name)));
            }
            if !vips.insert((s.protocol, s.cluster_ip, s.port)) {
                return Err(err(
                    format!("services[{i}].cluster_ip"),
                    format!("{}:{}/{} is used twice", s.cluster_ip, s.port, s.protocol.name()),
                ));
            }
            if let Some(np) = s.node_port
                && !node_ports.insert((s.protocol, np))
            {
                return Err(err(
                    format!("services[{i}].node_port"),
                    format!("{np}/{} is used twice", s.protocol.name()),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a pod against the node (also used by the runtime `pod add`). Field paths
/// are relative to the pod.
pub fn check_pod(c: &Config, p: &PodSpec) -> Result<(), ConfigError> {
    if p.name.is_empty() || p.name.len() > 253 || p.name.chars().any(|ch| ch.is_whitespace() || ch == '/') {
        return Err(err("name", format!("'{}' is not a pod name", p.name)));
    }
    if p.netns.is_empty() || (!p.netns.starts_with('/') && p.netns.contains('/')) {
        return Err(err("netns", format!("'{}' is neither a name under /run/netns nor an absolute path", p.netns)));
    }
    if !c.node.pod_cidr.contains(p.ip) {
        return Err(err("ip", format!("{} is outside node.pod_cidr {}", p.ip, c.node.pod_cidr)));
    }
    let net = c.node.pod_cidr;
    let bcast = Ipv4Addr::from(u32::from(net.addr()) | !crate::core::mask(net.prefix_len()));
    if p.ip == c.vtep_ip() || p.ip == net.addr() || p.ip == bcast {
        return Err(err("ip", format!("{} is the VTEP, network or broadcast address of {net}", p.ip)));
    }
    if let Some(m) = p.mac
        && (!m.is_unicast() || m == c.node.host_mac)
    {
        return Err(err("mac", format!("{m} must be unicast and differ from node.host_mac")));
    }
    Ok(())
}

/// Checks a service against the node (also used by the runtime `service set`).
pub fn check_service(c: &Config, s: &ServiceSpec) -> Result<(), ConfigError> {
    if s.name.is_empty() || s.name.chars().any(char::is_whitespace) {
        return Err(err("name", format!("'{}' is not a service name (want namespace/name)", s.name)));
    }
    if !c.node.service_cidr.contains(s.cluster_ip) {
        return Err(err(
            "cluster_ip",
            format!("{} is outside node.service_cidr {}", s.cluster_ip, c.node.service_cidr),
        ));
    }
    if s.port == 0 {
        return Err(err("port", "must not be 0"));
    }
    if let Some(np) = s.node_port {
        if np == 0 {
            return Err(err("node_port", "must not be 0"));
        }
        let (lo, hi) = c.masquerade_ports();
        if (lo..=hi).contains(&np) {
            return Err(err("node_port", format!("{np} is inside node.masquerade_ports {lo}-{hi}")));
        }
    }
    let mut seen = HashSet::new();
    for (j, e) in s.endpoints.iter().enumerate() {
        check_endpoint(c, e).map_err(|p| err(format!("endpoints[{j}]"), p))?;
        if !seen.insert(*e) {
            return Err(err(format!("endpoints[{j}]"), format!("{e} is listed twice")));
        }
    }
    Ok(())
}

fn check_endpoint(c: &Config, e: &SocketAddrV4) -> Result<(), String> {
    if e.port() == 0 {
        return Err(format!("{e}: port 0"));
    }
    let ip = *e.ip();
    if ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_loopback()
        || c.node.service_cidr.contains(ip)
    {
        return Err(format!("{e} is not a usable endpoint address"));
    }
    Ok(())
}

fn check_ifname(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 15 || name.contains('/') || name.chars().any(char::is_whitespace) {
        return Err(err(field, format!("'{name}' is not an interface name (1-15 characters, no '/' or spaces)")));
    }
    Ok(())
}

fn check_unicast_ip(field: &str, ip: Ipv4Addr) -> Result<(), ConfigError> {
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
        return Err(err(field, format!("{ip} is not a unicast address")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const CENTOS7_1: &str = r#"
[node]
name = "centos7-1"
uplink = "ens33"
node_ip = "172.16.240.131"
pod_cidr = "10.244.1.0/24"
cluster_cidr = "10.244.0.0/16"
service_cidr = "10.250.0.0/16"
vtep_mac = "8a:40:90:1c:cf:7e"

[api]
socket = "/run/ucanal/uc-centos7-1.sock"

[[peers]]
name = "centos7-2"
subnet = "10.244.0.0/24"
public_ip = "172.16.240.132"
vtep_mac = "32:a9:79:6d:0b:b1"

[[pods]]
name = "ghost-ep1"
netns = "uc-ghost-ep1"
ip = "10.244.1.5"

[[services]]
name = "default/ghost"
protocol = "tcp"
cluster_ip = "10.250.0.40"
port = 2368
node_port = 31266
endpoints = ["10.244.0.74:2368", "10.244.1.5:2368"]
"#;

    #[test]
    fn article_node_parses_with_defaults() {
        let c = Config::parse(CENTOS7_1).unwrap();
        assert_eq!(c.vtep_ip(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!((c.node.vni, c.node.vxlan_port, c.node.mtu), (1, 8472, 1450));
        assert_eq!(c.node.host_mac, MacAddr::CALICO_HOST);
        assert_eq!(c.pods[0].mac().to_string(), "0a:58:0a:f4:01:05");
        assert_eq!(c.pods[0].netns_path(), PathBuf::from("/run/netns/uc-ghost-ep1"));
        assert!(c.pods[0].port_name().starts_with("cali") && c.pods[0].port_name().len() == 15);
        assert_eq!(c.masquerade_ports(), (61000, 65534));
        assert_eq!(c.node_info().host_port_mac.to_string(), "02:00:ac:10:f0:83");
    }

    fn bad(from: &str, to: &str) -> String {
        let text = CENTOS7_1.replacen(from, to, 1);
        assert_ne!(text, CENTOS7_1, "fixture did not contain {from}");
        Config::parse(&text).unwrap_err().to_string()
    }

    #[test]
    fn techniques_follow_offloads_unless_switched_one_by_one() {
        let d = |extra: &str| {
            Config::parse(&CENTOS7_1.replacen("[api]", &format!("[dataplane]\n{extra}\n\n[api]"), 1))
                .unwrap()
                .dataplane
                .techniques()
        };
        let all = Techniques { tap_offloads: true, udp_gso: true, udp_gro: true, gro: true };
        assert_eq!(Config::parse(CENTOS7_1).unwrap().dataplane.techniques(), all);
        assert_eq!(d("gro = false"), Techniques { gro: false, ..all });
        assert_eq!(d("udp_gso = false"), Techniques { udp_gso: false, ..all });
        assert_eq!(
            d("offloads = false"),
            Techniques { tap_offloads: false, udp_gso: false, udp_gro: false, gro: false }
        );
        assert_eq!(
            d("offloads = false\nudp_gro = true"),
            Techniques { tap_offloads: false, udp_gso: false, udp_gro: true, gro: false }
        );
        // Without TAP offloads there is no GSO frame to hand a pod: gro follows it off.
        assert_eq!(d("tap_offloads = false"), Techniques { tap_offloads: false, gro: false, ..all });
    }

    #[test]
    fn errors_name_the_field() {
        assert!(
            bad("ip = \"10.244.1.5\"", "ip = \"10.245.1.5\"")
                .starts_with("pods[0].ip: 10.245.1.5 is outside node.pod_cidr")
        );
        assert!(bad("ip = \"10.244.1.5\"", "ip = \"10.244.1.0\"").starts_with("pods[0].ip:"));
        assert!(
            bad("subnet = \"10.244.0.0/24\"", "subnet = \"10.244.1.0/24\"")
                .starts_with("peers[0].subnet: 10.244.1.0/24 overlaps")
        );
        assert!(
            bad("vtep_mac = \"32:a9:79:6d:0b:b1\"", "vtep_mac = \"8a:40:90:1c:cf:7e\"")
                .starts_with("peers[0].vtep_mac")
        );
        assert!(
            bad("cluster_ip = \"10.250.0.40\"", "cluster_ip = \"10.244.0.40\"").starts_with("services[0].cluster_ip")
        );
        assert!(
            bad("\"10.244.0.74:2368\", ", "\"10.244.1.5:2368\", ")
                .starts_with("services[0].endpoints[1]: 10.244.1.5:2368 is listed twice")
        );
        assert!(bad("pod_cidr = \"10.244.1.0/24\"", "pod_cidr = \"10.245.1.0/24\"").starts_with("node.pod_cidr"));
        assert!(bad("uplink = \"ens33\"", "uplink = \"a-very-long-interface-name\"").starts_with("node.uplink"));
        assert!(
            bad("node_port = 31266", "node_port = 62000")
                .starts_with("services[0].node_port: 62000 is inside node.masquerade_ports")
        );
        let unknown = bad("vtep_mac = \"8a:40:90:1c:cf:7e\"", "vtep_mac = \"8a:40:90:1c:cf:7e\"\nvtepmac = 1");
        assert!(unknown.contains("unknown field `vtepmac`"), "{unknown}");
        let mac = bad("vtep_mac = \"8a:40:90:1c:cf:7e\"", "vtep_mac = \"8a:40:90:1c:cf\"");
        assert!(mac.contains("not a MAC address"), "{mac}");
        let cidr = bad("pod_cidr = \"10.244.1.0/24\"", "pod_cidr = \"10.244.1.5/24\"");
        assert!(cidr.contains("host bits"), "{cidr}");
        let proto = bad("protocol = \"tcp\"", "protocol = \"sctp\"");
        assert!(proto.contains("sctp"), "{proto}");
    }
}
