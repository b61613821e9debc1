//! The topology a lab file describes, read and checked: nodes with their pods, LANs,
//! etcd, manifests. Every check that can fail names the field and where it stands, and
//! they all run before the lab creates anything.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::error::TopologyError;
use super::read::{At, Fields, name, text};
use super::yaml::{Mark, Node as YNode};
use crate::core::Ipv4Net;
use crate::wire::MacAddr;

/// The lab's fixed frame (netns-scripts/lib.sh): the first LAN, its client, the absent
/// gateway, etcd's address, the cluster and service CIDRs and the uplink's name.
pub const LAN: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(172, 16, 240, 0), 24) {
    Some(n) => n,
    None => unreachable!(),
};
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 240, 1);
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 240, 2);
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 240, 10);
pub const CLUSTER_CIDR: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16) {
    Some(n) => n,
    None => unreachable!(),
};
pub const SERVICE_CIDR: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(10, 250, 0, 0), 16) {
    Some(n) => n,
    None => unreachable!(),
};
pub const UPLINK: &str = "ens33";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ucanal,
    Kernel,
}

impl Kind {
    pub fn word(self) -> &'static str {
        match self {
            Kind::Ucanal => "ucanal",
            Kind::Kernel => "kernel",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub mark: Mark,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<ContainerPort>,
    /// `None`: allocated by the lab (the next free address from the CIDR's .5; a leased
    /// node's pod is its subnet's .5 once the lease is known).
    pub ip: Option<Ipv4Addr>,
    pub ip_mark: Mark,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub mark: Mark,
    pub kind: Kind,
    pub ip: Ipv4Addr,
    pub ip_mark: Mark,
    pub mac: MacAddr,
    /// `None`: leased from etcd.
    pub pod_cidr: Option<Ipv4Net>,
    pub vtep_mac: MacAddr,
    /// ucanal config overrides: section -> lines `key = value` (TOML), with the mark
    /// of each key.
    pub config: BTreeMap<String, Vec<(String, Mark, String)>>,
    pub pods: Vec<Pod>,
}

/// One LAN: a bridge and the members on it (`member`, interface).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lan {
    pub name: String,
    pub mark: Mark,
    pub subnet: Ipv4Net,
    pub subnet_mark: Mark,
    pub endpoints: Vec<(String, String)>,
    pub endpoint_marks: Vec<Mark>,
}

/// A checked topology and what its manifests hold.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub topology: Topology,
    /// The manifests' paths, resolved against the file's directory.
    pub manifests: Vec<std::path::PathBuf>,
    /// The services the manifests define, one per service port (what a static lab puts
    /// in its nodes' configs and its kernel nodes' iptables).
    pub services: Vec<crate::core::nat::service::ServiceSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub name: String,
    pub etcd: bool,
    pub nodes: Vec<Node>,
    pub lans: Vec<Lan>,
    /// Manifest paths as written (relative to the topology file) and where.
    pub manifests: Vec<At<String>>,
}

impl Topology {
    pub fn from_yaml(root: &YNode) -> Result<Topology, TopologyError> {
        let f = Fields::of(root, "", &["name", "etcd", "topology", "manifests"])?;
        let n = f.text("name")?.ok_or_else(|| TopologyError::at(f.mark, "name", "missing"))?;
        name(&n.value, n.mark, "name")?;
        let etcd = f.bool("etcd")?.unwrap_or(false);
        let (t, tf) = f.required("topology")?;
        let t = Fields::of(t, &tf, &["nodes", "links"])?;
        let mut nodes = Vec::new();
        for (nname, mark, body, field) in t.map("nodes")? {
            name(&nname, mark, &field)?;
            nodes.push(read_node(nname, mark, body, &field, etcd)?);
        }
        if nodes.is_empty() {
            return Err(TopologyError::at(t.mark, &format!("{tf}.nodes"), "the lab has no node"));
        }
        let mut manifests = Vec::new();
        for (m, field) in f.seq("manifests")? {
            manifests.push(text(m, &field)?);
        }
        let links = t.seq("links")?;
        if links.is_empty() {
            return Err(TopologyError::at(t.mark, &format!("{tf}.links"), "the lab needs its LAN (client, nodes)"));
        }
        let mut lans = Vec::new();
        for (l, field) in links {
            lans.push(read_lan(l, &field, lans.is_empty())?);
        }
        let topo = Topology { name: n.value, etcd, nodes, lans, manifests };
        Ok(topo)
    }
}

fn read_node(name: String, mark: Mark, body: &YNode, path: &str, etcd: bool) -> Result<Node, TopologyError> {
    let f = Fields::of(body, path, &["kind", "ip", "mac", "pod-cidr", "vtep-mac", "config", "pods"])?;
    let kind = f.text("kind")?.ok_or_else(|| TopologyError::at(f.mark, &format!("{path}.kind"), "missing"))?;
    let kind = match kind.value.as_str() {
        "ucanal" => Kind::Ucanal,
        "kernel" => Kind::Kernel,
        _ => return Err(kind.error(format!("'{}' is not a node kind (ucanal or kernel)", kind.value))),
    };
    let ip = f.ip("ip")?.ok_or_else(|| TopologyError::at(f.mark, &format!("{path}.ip"), "missing"))?;
    if !LAN.contains(ip.value)
        || [LAN.addr(), CLIENT_IP, GATEWAY_IP, ETCD_IP].contains(&ip.value)
        || ip.value.octets()[3] == 255
    {
        return Err(ip.error(format!(
            "{} is not a node address on the lab's LAN {LAN} (.1 is the client, .2 the absent gateway, .10 etcd)",
            ip.value
        )));
    }
    let pod_cidr = match f.text("pod-cidr")? {
        None => return Err(TopologyError::at(f.mark, &format!("{path}.pod-cidr"), "missing (a CIDR, or leased)")),
        Some(t) if t.value == "leased" => {
            if !etcd {
                return Err(t.error("leased needs etcd: true (the subnet is leased from etcd)"));
            }
            if kind == Kind::Kernel {
                return Err(t.error("a kernel node writes a fixed lease: give its CIDR"));
            }
            None
        }
        Some(_) => {
            let c = f.net("pod-cidr")?.expect("present");
            let len_ok = if etcd { c.value.prefix_len() == 24 } else { (17..=30).contains(&c.value.prefix_len()) };
            if !CLUSTER_CIDR.contains_net(&c.value) || !len_ok {
                let lens = if etcd { "a /24 (the network config's SubnetLen)" } else { "/17 to /30" };
                return Err(c.error(format!("{} must be {lens} inside the cluster CIDR {CLUSTER_CIDR}", c.value)));
            }
            Some(c.value)
        }
    };
    // Defaults: VMware's OUI and the node address's last three bytes; for the VTEP,
    // Kubernetes' 0a:58 and the VTEP address (the pod CIDR's network address), or the
    // node address while the subnet is not leased yet.
    let [_, b, c, d] = ip.value.octets();
    let mac = f.mac("mac")?.map_or(MacAddr([0x00, 0x0c, 0x29, b, c, d]), |m| m.value);
    let [a, b, c, d] = pod_cidr.map_or(ip.value.octets(), |p| p.addr().octets());
    let vtep_mac = f.mac("vtep-mac")?.map_or(MacAddr([0x0a, 0x58, a, b, c, d]), |m| m.value);
    let config = read_config(&f, kind)?;
    let mut pods = Vec::new();
    for (pname, mark, body, field) in f.map("pods")? {
        super::read::name(&pname, mark, &field)?;
        pods.push(read_pod(pname, mark, body, &field, pod_cidr)?);
    }
    if pod_cidr.is_none() && (pods.len() > 1 || pods.iter().any(|p| p.ip.is_some())) {
        let (_, m, _, field) = &f.map("pods")?[0];
        return Err(TopologyError::at(*m, field, "a leased node has one pod, at its subnet's .5 (give no ip)"));
    }
    Ok(Node { name, mark, kind, ip: ip.value, ip_mark: ip.mark, mac, pod_cidr, vtep_mac, config, pods })
}

/// Keys the lab itself writes into a node's config (from the topology's own fields).
const LAB_KEYS: &[(&str, &[&str])] = &[
    ("node", &["name", "uplink", "node_ip", "pod_cidr", "cluster_cidr", "service_cidr", "vtep_mac"]),
    ("api", &["socket"]),
    ("cluster", &["etcd_endpoints", "prefix"]),
];

type Overrides = BTreeMap<String, Vec<(String, Mark, String)>>;

fn read_config(f: &Fields<'_>, kind: Kind) -> Result<Overrides, TopologyError> {
    let mut out = BTreeMap::new();
    let sections = f.map("config")?;
    if kind == Kind::Kernel
        && let Some((_, m, _, field)) = sections.first()
    {
        return Err(TopologyError::at(*m, field, "a kernel node has no ucanal config"));
    }
    for (section, mark, body, field) in sections {
        let YNodeMap(entries) = map_of(body, &field)?;
        let mut lines = Vec::new();
        for (key, kmark, value) in entries {
            let kfield = format!("{field}.{key}");
            let ok_key =
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok_key || LAB_KEYS.iter().any(|(s, ks)| *s == section && ks.contains(&key.as_str())) {
                return Err(TopologyError::at(
                    *kmark,
                    &kfield,
                    "set by the lab from the topology (or not a config key)",
                ));
            }
            lines.push((key.clone(), *kmark, format!("{key} = {}", toml_value(value, &kfield)?)));
        }
        let ok_section = section.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if !ok_section || section == "peers" || section == "pods" || section == "services" {
            return Err(TopologyError::at(mark, &field, "not a config section the lab lets a topology set"));
        }
        out.insert(section, lines);
    }
    Ok(out)
}

struct YNodeMap<'a>(&'a [(String, Mark, YNode)]);

fn map_of<'a>(n: &'a YNode, field: &str) -> Result<YNodeMap<'a>, TopologyError> {
    match &n.value {
        super::yaml::Value::Map(e) => Ok(YNodeMap(e)),
        _ => Err(TopologyError::at(n.mark, field, "must be a mapping")),
    }
}

/// A YAML value as TOML: numbers and booleans as they are, other text quoted, lists of them.
fn toml_value(n: &YNode, field: &str) -> Result<String, TopologyError> {
    use super::yaml::Value;
    match &n.value {
        Value::Scalar { text, quoted } => {
            let bare = !quoted && (text == "true" || text == "false" || text.parse::<i64>().is_ok());
            Ok(if bare { text.clone() } else { toml::Value::String(text.clone()).to_string() })
        }
        Value::Seq(items) => {
            let v: Result<Vec<String>, _> = items.iter().map(|i| toml_value(i, field)).collect();
            Ok(format!("[{}]", v?.join(", ")))
        }
        Value::Map(_) => {
            Err(TopologyError::at(n.mark, field, "a config value is a number, true/false, text or a list"))
        }
    }
}

fn read_pod(name: String, mark: Mark, body: &YNode, path: &str, cidr: Option<Ipv4Net>) -> Result<Pod, TopologyError> {
    let f = Fields::of(body, path, &["namespace", "labels", "containerPorts", "ip"])?;
    let namespace = match f.text("namespace")? {
        Some(ns) => {
            super::read::name(&ns.value, ns.mark, &ns.field)?;
            ns.value
        }
        None => "default".into(),
    };
    let mut labels = BTreeMap::new();
    for (k, m, v, field) in f.map("labels")? {
        let v = text(v, &field)?;
        let ok = |s: &str, max| s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if k.is_empty() || !ok(&k, 253) || !ok(&v.value, 63) {
            return Err(TopologyError::at(m, &field, "not a Kubernetes label (name and value: a-z, 0-9, -_./)"));
        }
        labels.insert(k, v.value);
    }
    let mut ports = Vec::new();
    for (p, field) in f.seq("containerPorts")? {
        let pf = Fields::of(p, &field, &["name", "containerPort", "protocol"])?;
        let port = pf.parsed("containerPort", "a port (1-65535)", |s| s.parse::<u16>().ok().filter(|p| *p > 0))?;
        let port = port.ok_or_else(|| TopologyError::at(pf.mark, &format!("{field}.containerPort"), "missing"))?;
        let protocol = pf.text("protocol")?.map_or(Ok("TCP".to_string()), |t| match t.value.as_str() {
            "TCP" | "UDP" | "SCTP" => Ok(t.value.clone()),
            _ => Err(t.error("protocol is TCP, UDP or SCTP")),
        })?;
        let pname = pf.text("name")?;
        if let Some(n) = &pname {
            super::read::name(&n.value, n.mark, &n.field)?;
        }
        ports.push(ContainerPort { name: pname.map(|n| n.value), port: port.value, protocol });
    }
    let ip = f.ip("ip")?;
    if let (Some(ip), Some(c)) = (&ip, cidr) {
        let last = Ipv4Addr::from(u32::from(c.addr()) | (u32::MAX >> c.prefix_len()));
        if !c.contains(ip.value) || ip.value == c.addr() || ip.value == last {
            return Err(ip.error(format!("{} is not a pod address of the node's {c}", ip.value)));
        }
    }
    let ip_mark = ip.as_ref().map_or(mark, |i| i.mark);
    Ok(Pod { name, mark, namespace, labels, ports, ip: ip.map(|i| i.value), ip_mark })
}

fn read_lan(l: &YNode, path: &str, first: bool) -> Result<Lan, TopologyError> {
    let f = Fields::of(l, path, &["name", "subnet", "endpoints"])?;
    let n = f.text("name")?.ok_or_else(|| TopologyError::at(f.mark, &format!("{path}.name"), "missing"))?;
    name(&n.value, n.mark, &n.field)?;
    let subnet_mark = f.get("subnet").map_or(n.mark, |(s, _)| s.mark);
    let subnet = match f.net("subnet")? {
        None if first => LAN,
        None => return Err(TopologyError::at(f.mark, &format!("{path}.subnet"), "missing")),
        Some(s) if first && s.value != LAN => return Err(s.error(format!("the lab's first LAN is {LAN}"))),
        Some(s) if !first && (s.value.prefix_len() < 16 || s.value.prefix_len() > 29) => {
            return Err(s.error("a LAN is a /16 to /29"));
        }
        Some(s) => s.value,
    };
    let mut endpoints = Vec::new();
    let mut seen = BTreeSet::new();
    for (e, field) in f.seq("endpoints")? {
        let e = text(e, &field)?;
        let Some((member, iface)) = e.value.split_once(':') else {
            return Err(e.error(format!("'{}' is not member:interface", e.value)));
        };
        let iface_ok = !iface.is_empty()
            && iface.len() <= 15
            && iface.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !iface_ok {
            return Err(e.error(format!("'{iface}' is not an interface name (at most 15 characters)")));
        }
        if !seen.insert(member.to_string()) {
            return Err(e.error(format!("{member} is on this LAN twice")));
        }
        endpoints.push((member.to_string(), iface.to_string(), e.mark, e.field.clone()));
    }
    lan_endpoints(&endpoints, first, f.mark, path)?;
    let endpoint_marks = endpoints.iter().map(|e| e.2).collect();
    let endpoints = endpoints.into_iter().map(|(m, i, _, _)| (m, i)).collect();
    Ok(Lan { name: n.value, mark: n.mark, subnet, subnet_mark, endpoints, endpoint_marks })
}

/// One LAN's member list: the first LAN holds the client (and etcd); an extra LAN, nodes
/// only. (That the members are nodes is checked with the whole file.)
pub fn lan_endpoints(
    eps: &[(String, String, Mark, String)],
    first: bool,
    mark: Mark,
    path: &str,
) -> Result<(), TopologyError> {
    for (member, iface, m, field) in eps {
        let fixed = match member.as_str() {
            "client" | "etcd" if !first => {
                return Err(TopologyError::at(*m, field, format!("{member} is on the lab's first LAN only")));
            }
            "client" | "etcd" => "eth0",
            _ if first => UPLINK,
            _ => continue,
        };
        if iface != fixed {
            return Err(TopologyError::at(*m, field, format!("{member}'s interface on the lab's LAN is {fixed}")));
        }
    }
    if first && !eps.iter().any(|e| e.0 == "client") {
        return Err(TopologyError::at(
            mark,
            &format!("{path}.endpoints"),
            "the lab's LAN holds the client (client:eth0)",
        ));
    }
    Ok(())
}
