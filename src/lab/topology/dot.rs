//! The topology as a Graphviz graph (`lab.sh graph FILE`): each node a box holding its
//! pods, each LAN a bridge with its members' interfaces and addresses, and the VXLAN
//! mesh between the nodes (every node is every other's peer, as flannel's leases make
//! them) as dashed edges.

use std::fmt::Write as _;

use super::check::extra_lan_ip;
use super::model::{CLIENT_IP, ETCD_IP, Kind, Topology};
use super::plan::pod_ips;

fn id(s: &str) -> String {
    format!("\"{}\"", s.replace('"', ""))
}

pub fn graph(t: &Topology) -> String {
    let mut o = format!("graph {} {{\n", id(&t.name));
    o += "  graph [fontname=\"Helvetica\" fontsize=11 compound=true nodesep=0.4 ranksep=0.8];\n";
    o += "  node [fontname=\"Helvetica\" fontsize=10];\n  edge [fontname=\"Helvetica\" fontsize=9];\n";
    let _ = writeln!(
        o,
        "  label={};",
        id(&format!("lab {} ({} nodes{})", t.name, t.nodes.len(), if t.etcd { ", etcd" } else { "" }))
    );
    for n in &t.nodes {
        let cidr = n.pod_cidr.map_or("leased".to_string(), |c| c.to_string());
        let color = if n.kind == Kind::Ucanal { "#dbeafe" } else { "#fde68a" };
        let _ = writeln!(o, "  subgraph {} {{", id(&format!("cluster_{}", n.name)));
        let _ = writeln!(
            o,
            "    style=filled; fillcolor=\"{color}\"; label={};",
            id(&format!("{} ({})", n.name, n.kind.word()))
        );
        let _ = writeln!(
            o,
            "    {} [shape=box style=\"rounded,filled\" fillcolor=white label={}];",
            id(&n.name),
            id(&format!("{}\\n{} pods {cidr}\\nVTEP {}", n.name, n.ip, n.vtep_mac))
        );
        for (p, ip) in n.pods.iter().zip(pod_ips(n)) {
            let ip = ip.map_or(format!("{cidr} .5"), |i| i.to_string());
            let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut label = format!("{}\\n{}/{}\\n{ip}", p.name, p.namespace, p.name);
            if !labels.is_empty() {
                label += &format!("\\n{}", labels.join(","));
            }
            let _ = writeln!(o, "    {} [shape=ellipse label={}];", id(&format!("pod {}", p.name)), id(&label));
            let _ = writeln!(o, "    {} -- {} [label=\"eth0\"];", id(&n.name), id(&format!("pod {}", p.name)));
        }
        o += "  }\n";
    }
    for (i, lan) in t.lans.iter().enumerate() {
        let lid = format!("lan {}", lan.name);
        let _ = writeln!(
            o,
            "  {} [shape=hexagon style=filled fillcolor=\"#e5e7eb\" label={}];",
            id(&lid),
            id(&format!("LAN {}\\n{}", lan.name, lan.subnet))
        );
        for (member, iface) in &lan.endpoints {
            let addr = match member.as_str() {
                "client" => CLIENT_IP.to_string(),
                "etcd" => ETCD_IP.to_string(),
                m => t
                    .nodes
                    .iter()
                    .find(|n| n.name == m)
                    .and_then(|n| if i == 0 { Some(n.ip) } else { extra_lan_ip(lan, n.ip) })
                    .map_or(String::new(), |a| a.to_string()),
            };
            if member == "client" || member == "etcd" {
                let _ = writeln!(
                    o,
                    "  {} [shape=box style=filled fillcolor=\"#f3f4f6\" label={}];",
                    id(member),
                    id(&format!("{member}\\n{addr}"))
                );
            }
            let _ = writeln!(o, "  {} -- {} [label={}];", id(member), id(&lid), id(&format!("{iface} {addr}")));
        }
    }
    for (i, a) in t.nodes.iter().enumerate() {
        for b in &t.nodes[i + 1..] {
            let _ = writeln!(
                o,
                "  {} -- {} [style=dashed color=\"#2563eb\" label=\"VXLAN\" constraint=false];",
                id(&a.name),
                id(&b.name)
            );
        }
    }
    o += "}\n";
    o
}
