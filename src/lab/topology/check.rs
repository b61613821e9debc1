//! The checks across fields: names, addresses and subnets unique, every node on the
//! lab's LAN, LAN members that exist, extra LANs that fit.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::error::TopologyError;
use super::model::{CLUSTER_CIDR, Lan, SERVICE_CIDR, Topology, UPLINK};
use crate::core::Ipv4Net;

/// Names a lab keeps for itself: the first LAN's bridge, the client, etcd.
const RESERVED: &[&str] = &["lan", "client", "etcd"];

/// The address a node gets on an extra LAN: the LAN's network address plus the last
/// byte of its address on the lab's LAN (node .131 is .131 on every LAN).
pub fn extra_lan_ip(lan: &Lan, node_ip: Ipv4Addr) -> Option<Ipv4Addr> {
    let host = u32::from(node_ip.octets()[3]);
    let size = 1u32 << (32 - lan.subnet.prefix_len());
    (host > 0 && host < size - 1).then(|| Ipv4Addr::from(u32::from(lan.subnet.addr()) + host))
}

pub fn whole(t: &Topology) -> Result<(), TopologyError> {
    let mut names: BTreeMap<&str, &str> = RESERVED.iter().map(|r| (*r, "the lab")).collect();
    unique_names(t, &mut names)?;
    let mut ips: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
    let mut cidrs: Vec<(Ipv4Net, &str)> = Vec::new();
    let mut macs: BTreeMap<String, &str> = BTreeMap::new();
    for n in &t.nodes {
        let field = format!("topology.nodes.{}", n.name);
        if let Some(other) = ips.insert(n.ip, &n.name) {
            return Err(TopologyError::at(n.ip_mark, &format!("{field}.ip"), format!("{} is {other}'s too", n.ip)));
        }
        for (mac, what) in [(n.mac.to_string(), "mac"), (n.vtep_mac.to_string(), "vtep-mac")] {
            if let Some(other) = macs.insert(mac.clone(), &n.name) {
                return Err(TopologyError::at(n.mark, &format!("{field}.{what}"), format!("{mac} is {other}'s too")));
            }
        }
        if let Some(c) = n.pod_cidr {
            if let Some((_, other)) = cidrs.iter().find(|(o, _)| o.overlaps(&c)) {
                return Err(TopologyError::at(n.mark, &format!("{field}.pod-cidr"), format!("{c} overlaps {other}'s")));
            }
            cidrs.push((c, &n.name));
        }
        for p in &n.pods {
            if let Some(ip) = p.ip
                && let Some(other) = ips.insert(ip, &p.name)
            {
                return Err(TopologyError::at(
                    p.ip_mark,
                    &format!("{field}.pods.{}.ip", p.name),
                    format!("{ip} is {other}'s too"),
                ));
            }
        }
    }
    let leased = t.nodes.iter().filter(|n| n.pod_cidr.is_none()).count();
    if leased != 0 && leased != t.nodes.len() {
        let n = t.nodes.iter().find(|n| n.pod_cidr.is_none()).expect("one is leased");
        return Err(TopologyError::at(
            n.mark,
            &format!("topology.nodes.{}.pod-cidr", n.name),
            "leased for some nodes only: the lab leases every node's subnet or none",
        ));
    }
    lans(t)
}

fn unique_names<'a>(t: &'a Topology, names: &mut BTreeMap<&'a str, &'a str>) -> Result<(), TopologyError> {
    for n in &t.nodes {
        if let Some(other) = names.insert(&n.name, "a node") {
            return Err(TopologyError::at(
                n.mark,
                &format!("topology.nodes.{}", n.name),
                format!("the name is {other}'s"),
            ));
        }
        for p in &n.pods {
            if let Some(other) = names.insert(&p.name, "a node or another pod") {
                let field = format!("topology.nodes.{}.pods.{}", n.name, p.name);
                return Err(TopologyError::at(
                    p.mark,
                    &field,
                    format!("the name is {other}'s (a pod is a namespace of the lab)"),
                ));
            }
        }
    }
    for l in t.lans.iter().skip(1) {
        let ns = format!("lan-{}", l.name);
        if t.nodes.iter().any(|n| n.name == ns || n.pods.iter().any(|p| p.name == ns)) {
            return Err(TopologyError::at(
                l.mark,
                "topology.links.name",
                format!("the LAN's namespace {ns} is a node's or pod's name"),
            ));
        }
    }
    Ok(())
}

fn lans(t: &Topology) -> Result<(), TopologyError> {
    let first = &t.lans[0];
    for n in &t.nodes {
        if !first.endpoints.iter().any(|(m, _)| *m == n.name) {
            return Err(TopologyError::at(
                first.mark,
                "topology.links[0].endpoints",
                format!("{} is not on the lab's LAN ({}:{UPLINK})", n.name, n.name),
            ));
        }
    }
    let has_etcd = first.endpoints.iter().any(|(m, _)| m == "etcd");
    if has_etcd != t.etcd {
        let why = if t.etcd {
            "etcd: true puts etcd on the lab's LAN (etcd:eth0)"
        } else {
            "etcd is on the LAN but etcd is not true"
        };
        return Err(TopologyError::at(first.mark, "topology.links[0].endpoints", why));
    }
    let mut seen: Vec<(&str, Ipv4Net)> = vec![(first.name.as_str(), first.subnet)];
    for (i, l) in t.lans.iter().enumerate().skip(1) {
        let field = format!("topology.links[{i}]");
        if let Some((other, _)) = seen.iter().find(|(n, s)| *n == l.name || s.overlaps(&l.subnet)) {
            return Err(TopologyError::at(
                l.mark,
                &format!("{field}.name"),
                format!("same name or subnet as LAN {other}"),
            ));
        }
        if l.subnet.overlaps(&CLUSTER_CIDR) || l.subnet.overlaps(&SERVICE_CIDR) {
            return Err(TopologyError::at(
                l.subnet_mark,
                &format!("{field}.subnet"),
                "overlaps the cluster or service CIDR",
            ));
        }
        seen.push((&l.name, l.subnet));
        for ((member, iface), m) in l.endpoints.iter().zip(&l.endpoint_marks) {
            let efield = format!("{field}.endpoints");
            let Some(n) = t.nodes.iter().find(|n| n.name == *member) else {
                return Err(TopologyError::at(*m, &efield, format!("{member} is not a node of the topology")));
            };
            if iface == UPLINK || iface == "lo" {
                return Err(TopologyError::at(*m, &efield, format!("{iface} is taken (the uplink, loopback)")));
            }
            if extra_lan_ip(l, n.ip).is_none() {
                return Err(TopologyError::at(
                    *m,
                    &efield,
                    format!("{} has no address .{} on {}", n.name, n.ip.octets()[3], l.subnet),
                ));
            }
            let clash = t.lans[1..i].iter().any(|o| o.endpoints.iter().any(|(om, oi)| om == member && oi == iface));
            if clash {
                return Err(TopologyError::at(*m, &efield, format!("{member} already has {iface} on another LAN")));
            }
        }
    }
    for (l, lan) in t.lans.iter().enumerate() {
        for ((member, _), m) in lan.endpoints.iter().zip(&lan.endpoint_marks) {
            let known =
                t.nodes.iter().any(|n| n.name == *member) || (l == 0 && (member == "client" || member == "etcd"));
            if !known {
                return Err(TopologyError::at(
                    *m,
                    &format!("topology.links[{l}].endpoints"),
                    format!("{member} is not a node of the topology"),
                ));
            }
        }
    }
    Ok(())
}
