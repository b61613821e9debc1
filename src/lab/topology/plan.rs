//! What lab.sh is given: lib.sh's arrays as bash assignments (the plan), pod addresses
//! allocated, manifests' services in lib.sh's one-line form; and, before that, each
//! ucanal node's config as the lab will write it, checked by ucanal's own config parser
//! so that an override it would refuse is named in the topology file, not at start.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::check::extra_lan_ip;
use super::error::TopologyError;
use super::model::{CLUSTER_CIDR, Kind, Node, SERVICE_CIDR, UPLINK};
use super::model::{Loaded, Pod};
use crate::control::config::Config;
use crate::core::nat::service::{Protocol, ServiceSpec};

/// Bash's single-quoted form of `s`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Every pod's address: its own, or (fixed CIDR) the next free one from the CIDR's .5;
/// `None` for a leased node's pod (its subnet's .5, known once leased).
pub fn pod_ips(n: &Node) -> Vec<Option<Ipv4Addr>> {
    let Some(cidr) = n.pod_cidr else { return vec![None; n.pods.len()] };
    let mut used: BTreeSet<Ipv4Addr> = n.pods.iter().filter_map(|p| p.ip).collect();
    let mut next = u32::from(cidr.addr()) + 5;
    n.pods
        .iter()
        .map(|p| {
            p.ip.or_else(|| {
                while used.contains(&Ipv4Addr::from(next)) {
                    next += 1;
                }
                let ip = Ipv4Addr::from(next);
                used.insert(ip);
                cidr.contains(ip).then_some(ip)
            })
        })
        .collect()
}

/// lib.sh's service line: `<ns/name> <tcp|udp> <cluster ip> <port> <node port|-> <ip:port,...>`.
pub fn service_line(s: &ServiceSpec) -> String {
    let proto = if s.protocol == Protocol::Udp { "udp" } else { "tcp" };
    let np = s.node_port.map_or("-".to_string(), |p| p.to_string());
    let eps: Vec<String> = s.endpoints.iter().map(ToString::to_string).collect();
    format!("{} {proto} {} {} {np} {}", s.name, s.cluster_ip, s.port, eps.join(","))
}

fn assoc<'a>(out: &mut String, name: &str, items: impl Iterator<Item = (&'a str, String)>) {
    let body: Vec<String> = items.map(|(k, v)| format!("[{k}]={}", quote(&v))).collect();
    let _ = writeln!(out, "declare -gA {name}=({})", body.join(" "));
}

fn list(out: &mut String, name: &str, items: impl Iterator<Item = String>) {
    let body: Vec<String> = items.map(|v| quote(&v)).collect();
    let _ = writeln!(out, "{name}=({})", body.join(" "));
}

/// The override lines of one section of a node's config.
fn section(n: &Node, s: &str) -> String {
    n.config
        .get(s)
        .map(|l| l.iter().map(|(_, _, line)| line.as_str()).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// Sections the lab does not write itself, as whole tables.
fn other_tables(n: &Node) -> String {
    let mut s = String::new();
    for sec in n.config.keys().filter(|k| !["node", "api", "dataplane", "cluster"].contains(&k.as_str())) {
        let _ = write!(s, "\n[{sec}]\n{}\n", section(n, sec));
    }
    s
}

pub fn bash(l: &Loaded) -> String {
    let t = &l.topology;
    let mut o = String::from("# the plan of a topology file (ucanal topology plan), for netns-scripts/lib.sh\n");
    let _ = writeln!(o, "LAB_TOPOLOGY_NAME={}", quote(&t.name));
    let _ = writeln!(o, "LAB_TOPOLOGY_ETCD={}", u8::from(t.etcd));
    let _ = writeln!(o, "LAB_CLUSTER_AUTO={}", u8::from(t.nodes.iter().all(|n| n.pod_cidr.is_none())));
    let nodes = || t.nodes.iter();
    list(&mut o, "LAB_NODES", nodes().map(|n| n.name.clone()));
    assoc(&mut o, "LAB_NODE_IP", nodes().map(|n| (n.name.as_str(), n.ip.to_string())));
    assoc(&mut o, "LAB_NODE_MAC", nodes().map(|n| (n.name.as_str(), n.mac.to_string())));
    assoc(
        &mut o,
        "LAB_NODE_SUBNET",
        nodes().map(|n| (n.name.as_str(), n.pod_cidr.map_or(String::new(), |c| c.to_string()))),
    );
    assoc(&mut o, "LAB_NODE_VTEP_MAC", nodes().map(|n| (n.name.as_str(), n.vtep_mac.to_string())));
    assoc(&mut o, "LAB_NODE_MODE", nodes().map(|n| (n.name.as_str(), n.kind.word().to_string())));
    for (var, sec) in [("NODE", "node"), ("DATAPLANE", "dataplane"), ("API", "api"), ("CLUSTER", "cluster")] {
        assoc(&mut o, &format!("LAB_NODE_CONF_{var}"), nodes().map(|n| (n.name.as_str(), section(n, sec))));
    }
    assoc(&mut o, "LAB_NODE_CONF_TABLES", nodes().map(|n| (n.name.as_str(), other_tables(n))));
    let pods: Vec<(&Node, &Pod, Option<Ipv4Addr>)> =
        nodes().flat_map(|n| n.pods.iter().zip(pod_ips(n)).map(move |(p, ip)| (n, p, ip))).collect();
    list(&mut o, "LAB_PODS", pods.iter().map(|(_, p, _)| p.name.clone()));
    assoc(
        &mut o,
        "LAB_POD_IP",
        pods.iter().map(|(_, p, ip)| (p.name.as_str(), ip.map_or(String::new(), |i| i.to_string()))),
    );
    assoc(&mut o, "LAB_POD_NODE", pods.iter().map(|(n, p, _)| (p.name.as_str(), n.name.clone())));
    assoc(&mut o, "LAB_POD_NAMESPACE", pods.iter().map(|(_, p, _)| (p.name.as_str(), p.namespace.clone())));
    assoc(
        &mut o,
        "LAB_POD_LABELS",
        pods.iter().map(|(_, p, _)| {
            (p.name.as_str(), p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
        }),
    );
    assoc(
        &mut o,
        "LAB_POD_PORTS",
        pods.iter().map(|(_, p, _)| {
            let ports =
                p.ports.iter().map(|c| format!("{}:{}/{}", c.name.as_deref().unwrap_or(""), c.port, c.protocol));
            (p.name.as_str(), ports.collect::<Vec<_>>().join(","))
        }),
    );
    // A cluster lab's services go through etcd (`apply` of the manifests once it is up).
    let static_services = if t.etcd { Vec::new() } else { l.services.iter().map(service_line).collect() };
    list(&mut o, "LAB_SERVICES", static_services.into_iter());
    list(&mut o, "LAB_MANIFESTS", l.manifests.iter().map(|p| p.display().to_string()));
    list(&mut o, "LAB_LANS", t.lans.iter().skip(1).map(|l| l.name.clone()));
    let members = t.lans.iter().skip(1).flat_map(|lan| {
        lan.endpoints.iter().filter_map(move |(m, iface)| {
            let n = t.nodes.iter().find(|n| n.name == *m)?;
            let ip = extra_lan_ip(lan, n.ip)?;
            Some(format!("{} {m} {iface} {ip}/{}", lan.name, lan.subnet.prefix_len()))
        })
    });
    list(&mut o, "LAB_LAN_MEMBERS", members);
    o
}

/// Each ucanal node's config as the lab writes it (lib.sh's `lab_ucanal_config` and
/// cluster-lib.sh's `lab_cluster_ucanal_config`), for ucanal's parser to check.
fn config_text(l: &Loaded, n: &Node) -> String {
    let t = &l.topology;
    let mut s = format!(
        "[node]\nname = \"{}\"\nuplink = \"{UPLINK}\"\nnode_ip = \"{}\"\ncluster_cidr = \"{CLUSTER_CIDR}\"\n\
         service_cidr = \"{SERVICE_CIDR}\"\nvtep_mac = \"{}\"\n",
        n.name, n.ip, n.vtep_mac
    );
    if let Some(c) = n.pod_cidr {
        let _ = writeln!(s, "pod_cidr = \"{c}\"");
    }
    let _ = write!(s, "{}\n[api]\nsocket = \"/run/ucanal/check.sock\"\n{}\n", section(n, "node"), section(n, "api"));
    // A cluster lab's nodes run one worker each (cluster-lib.sh).
    let workers = if t.etcd { "workers = 1\n" } else { "" };
    let _ = write!(s, "[dataplane]\n{workers}{}\n", section(n, "dataplane"));
    if t.etcd {
        let _ = write!(s, "[cluster]\netcd_endpoints = [\"http://172.16.240.10:2379\"]\n{}\n", section(n, "cluster"));
    }
    s += &other_tables(n);
    if !t.etcd {
        for p in t.nodes.iter().filter(|p| p.name != n.name) {
            let c = p.pod_cidr.map_or(String::new(), |c| c.to_string());
            let _ = write!(
                s,
                "\n[[peers]]\nname = \"{}\"\nsubnet = \"{c}\"\npublic_ip = \"{}\"\nvtep_mac = \"{}\"\n",
                p.name, p.ip, p.vtep_mac
            );
        }
        for s2 in &l.services {
            let np = s2.node_port.map_or(String::new(), |p| format!("node_port = {p}\n"));
            let eps: Vec<String> = s2.endpoints.iter().map(|e| format!("\"{e}\"")).collect();
            let proto = if s2.protocol == Protocol::Udp { "udp" } else { "tcp" };
            let _ = write!(
                s,
                "\n[[services]]\nname = \"{}\"\nprotocol = \"{proto}\"\ncluster_ip = \"{}\"\nport = {}\n{np}endpoints = [{}]\n",
                s2.name,
                s2.cluster_ip,
                s2.port,
                eps.join(", ")
            );
        }
    }
    for (p, ip) in n.pods.iter().zip(pod_ips(n)) {
        if let Some(ip) = ip {
            let _ = write!(s, "\n[[pods]]\nname = \"{}\"\nnetns = \"lab-{}\"\nip = \"{ip}\"\n", p.name, p.name);
        }
    }
    s
}

/// Checks every ucanal node's config; a problem is named at the override it comes from
/// when one does, else at the node (or the manifest that made the service).
pub fn check_configs(l: &Loaded) -> Result<(), TopologyError> {
    for n in &l.topology.nodes {
        let field = format!("topology.nodes.{}", n.name);
        for (p, ip) in n.pods.iter().zip(pod_ips(n)) {
            if ip.is_none() && n.pod_cidr.is_some() {
                return Err(TopologyError::at(
                    p.mark,
                    &format!("{field}.pods.{}.ip", p.name),
                    "no free address left in the pod CIDR",
                ));
            }
        }
        if n.kind != Kind::Ucanal {
            continue;
        }
        let Err(e) = Config::parse(&config_text(l, n)) else { continue };
        // toml's message quotes the generated file (its line, the text, a caret): what
        // follows the caret is what is wrong.
        let full = e.to_string();
        let msg = full.rfind('^').map_or(full.as_str(), |i| full[i..].trim_start_matches('^').trim()).to_string();
        let culprit = n.config.iter().flat_map(|(sec, lines)| lines.iter().map(move |(k, m, _)| (sec, k, m))).find(
            |(sec, k, _)| {
                e.field == format!("{sec}.{k}")
                    || e.field == **k
                    || msg.contains(&format!("`{k}`"))
                    || msg.contains(&format!("{sec}.{k}"))
            },
        );
        return Err(match culprit {
            Some((sec, k, m)) => TopologyError::at(*m, &format!("{field}.config.{sec}.{k}"), msg),
            None if msg.contains("services") => match l.topology.manifests.first() {
                Some(m) => m.error(format!("as {}'s config: {msg}", n.name)),
                None => TopologyError::at(n.mark, &field, msg),
            },
            None => TopologyError::at(n.mark, &field, format!("the node's config would not load: {msg}")),
        });
    }
    Ok(())
}
