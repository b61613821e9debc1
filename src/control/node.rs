//! The node's kernel side: the checks before anything is created, the sysctls, the
//! host port with its routes, the steering rules that send NodePort and masquerade
//! replies to ucanal, and their removal.
//!
//! Heads up: `ip_forward` and `all.rp_filter` are node-wide; the values found at start
//! are remembered and put back by `teardown`, so a node looks as it did before ucanal.

use std::collections::BTreeSet;
use std::io;

use super::config::{Config, ConfigError};
use super::daemon::RunError;
use crate::api::PodSpec;
use crate::core::tables::NodeInfo;
use crate::io::netlink::{self, HostPort, Steer};
use crate::wire::ipv4::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// A sysctl key, as the path under /proc/sys.
type SysctlKey = &'static [&'static str];

const IP_FORWARD: SysctlKey = &["net", "ipv4", "ip_forward"];
const ALL_RP_FILTER: SysctlKey = &["net", "ipv4", "conf", "all", "rp_filter"];

/// The node as ucanal set it up: what it is, and what to undo.
pub struct NodeBook {
    info: NodeInfo,
    /// Where the pod CIDR came from (the config, or a lease in etcd), for `show node`.
    pod_cidr_from: String,
    /// The steering rules in place.
    steers: BTreeSet<Steer>,
    /// Node-wide sysctls changed at start, with the value to put back on exit.
    restore_sysctls: Vec<(SysctlKey, String)>,
}

impl NodeBook {
    /// `restore_sysctls`: what a previous ucanal changed, by name (its state).
    pub fn new(info: NodeInfo, pod_cidr_from: String, restore_sysctls: &[(String, String)]) -> NodeBook {
        let mut n = NodeBook { info, pod_cidr_from, steers: BTreeSet::new(), restore_sysctls: Vec::new() };
        n.adopt_sysctls(restore_sysctls);
        n
    }

    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    pub fn pod_cidr_from(&self) -> &str {
        &self.pod_cidr_from
    }

    /// The sysctls to put back at the final teardown, by name (for the state file).
    pub fn sysctl_names(&self) -> Vec<(String, String)> {
        self.restore_sysctls.iter().map(|(k, val)| (k.join("."), val.clone())).collect()
    }

    /// Takes over what a previous ucanal changed (unknown names are ignored).
    pub fn adopt_sysctls(&mut self, v: &[(String, String)]) {
        self.restore_sysctls = v
            .iter()
            .filter_map(|(n, val)| {
                [IP_FORWARD, ALL_RP_FILTER].into_iter().find(|k| k.join(".") == *n).map(|k| (k, val.clone()))
            })
            .collect();
    }

    /// Sysctls, host port addresses and routes, and (unless a live predecessor's
    /// rules steer on, `adopt_steers`) the steering rules for `node_ports`. `adopted`:
    /// the node was a previous ucanal's, its rules stay instead of being cleared.
    pub async fn configure(
        &mut self,
        cfg: &Config,
        adopted: bool,
        node_ports: impl Iterator<Item = (u8, u16)>,
    ) -> Result<(), RunError> {
        let n = &self.info;
        let hp = cfg.node.host_port.clone();
        let set = |k: &[&str], v: &str| netlink::sysctl(k, v).map_err(RunError::Kernel);
        let forward = netlink::sysctl_read(IP_FORWARD).map_err(RunError::Kernel)?;
        if forward != "1" {
            tracing::info!("enabling net.ipv4.ip_forward (the node forwards between its uplink and ucanal)");
            set(IP_FORWARD, "1")?;
            self.restore_sysctls.push((IP_FORWARD, forward));
        }
        let rp = netlink::sysctl_read(ALL_RP_FILTER).map_err(RunError::Kernel)?;
        if rp == "1" {
            tracing::info!("net.ipv4.conf.all.rp_filter 1 -> 2 (loose): replies from ucanal arrive on the host port");
            set(ALL_RP_FILTER, "2")?;
            self.restore_sysctls.push((ALL_RP_FILTER, rp));
        }
        set(&["net", "ipv4", "conf", &hp, "rp_filter"], "0")?;
        set(&["net", "ipv4", "conf", &hp, "accept_local"], "1")?;
        let _ = netlink::sysctl(&["net", "ipv6", "conf", &hp, "disable_ipv6"], "1");
        let (lo, hi) = n.masquerade_ports;
        if let Ok(r) = netlink::sysctl_read(&["net", "ipv4", "ip_local_port_range"]) {
            let v: Vec<u16> = r.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            if v.len() == 2 && v[0] <= hi && lo <= v[1] {
                tracing::warn!(
                    "net.ipv4.ip_local_port_range {}-{} overlaps node.masquerade_ports {lo}-{hi}: the node's own connections on those ports take a detour through ucanal",
                    v[0],
                    v[1]
                );
            }
        }
        let p = HostPort {
            name: hp.clone(),
            mac: n.host_port_mac,
            mtu: n.mtu,
            vtep_ip: n.vtep_ip,
            node_ip: n.node_ip,
            gateway: n.gateway,
            gateway_mac: n.host_mac,
            cluster_cidr: n.cluster_cidr,
            pod_cidr: n.pod_cidr,
            service_cidr: n.service_cidr,
            uplink_mtu: None,
            table: cfg.node.route_table,
        };
        let table = p.table;
        let uplink = cfg.node.uplink.clone();
        netlink::with_handle(async |h| {
            let mut p = p;
            p.uplink_mtu = netlink::link_view(h, &uplink).await?.mtu;
            // A previous ucanal that died without cleaning up may have left rules; one
            // that handed over left them on purpose, and they keep steering meanwhile.
            if !adopted {
                netlink::del_steers(h, table, None).await?;
            }
            netlink::configure_host_port(h, &p).await?;
            netlink::move_local_rule(h).await
        })
        .map_err(RunError::Kernel)?;
        self.sync_steers(cfg, node_ports).await.map_err(RunError::Kernel)
    }

    /// The steering rules the services' NodePorts need, and the replies to flows
    /// masqueraded to the node IP.
    fn wanted_steers(&self, node_ports: impl Iterator<Item = (u8, u16)>) -> BTreeSet<Steer> {
        let (lo, hi) = self.info.masquerade_ports;
        let mut s = BTreeSet::from([
            Steer { proto: PROTO_TCP, ports: Some((lo, hi)) },
            Steer { proto: PROTO_UDP, ports: Some((lo, hi)) },
            Steer { proto: PROTO_ICMP, ports: None },
        ]);
        s.extend(node_ports.map(|(proto, np)| Steer { proto, ports: Some((np, np)) }));
        s
    }

    /// Adds and removes steering rules until they are what `node_ports` need.
    pub async fn sync_steers(&mut self, cfg: &Config, node_ports: impl Iterator<Item = (u8, u16)>) -> io::Result<()> {
        let want = self.wanted_steers(node_ports);
        let add: Vec<Steer> = want.difference(&self.steers).copied().collect();
        let del: Vec<Steer> = self.steers.difference(&want).copied().collect();
        if add.is_empty() && del.is_empty() {
            return Ok(());
        }
        let (uplink, ip, table) = (self.info.uplink.clone(), self.info.node_ip, cfg.node.route_table);
        tokio::task::block_in_place(|| {
            netlink::with_handle(async |h| {
                for s in &add {
                    netlink::add_steer(h, &uplink, ip, table, *s).await?;
                }
                if !del.is_empty() {
                    netlink::del_steers(h, table, Some(&del)).await?;
                }
                Ok(())
            })
        })?;
        self.steers = want;
        Ok(())
    }

    /// The rules a predecessor that handed over left in place: they steer what its
    /// services (now ours) need.
    pub fn adopt_steers(&mut self, node_ports: impl Iterator<Item = (u8, u16)>) {
        self.steers = self.wanted_steers(node_ports);
    }

    /// Removes the steering rules (the host port's routes go with the host port), the
    /// host port itself, and puts back the node-wide sysctls `configure` changed.
    pub async fn teardown(&mut self, cfg: &Config) {
        let table = cfg.node.route_table;
        let hp = cfg.node.host_port.clone();
        let r = tokio::task::block_in_place(|| {
            netlink::with_handle(async |h| {
                netlink::del_steers(h, table, None).await?;
                netlink::restore_local_rule(h).await?;
                // Normally gone with its last queue; make sure.
                netlink::delete_link(h, &hp).await
            })
        });
        if let Err(e) = r {
            tracing::error!("cleanup: {e}");
        }
        self.steers.clear();
        for (key, value) in self.restore_sysctls.drain(..).rev() {
            match netlink::sysctl(key, &value) {
                Ok(()) => tracing::info!("restored net.{} = {value}", key[1..].join(".")),
                Err(e) => tracing::error!("cleanup: restoring net.{} = {value}: {e}", key[1..].join(".")),
            }
        }
    }
}

/// Checks the machine against the config before anything is created. With `keep`
/// (`--keep-on-exit`) an existing host port is a previous ucanal's, to be adopted;
/// `handing`: that ucanal is live on our socket and hands over (see `handover`).
/// `pods`: the pods to attach (their namespaces must exist).
pub async fn preflight(cfg: &Config, pods: &[PodSpec], keep: bool, handing: bool) -> Result<(), RunError> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(RunError::NoTun);
    }
    let uplink = cfg.node.uplink.clone();
    let host_port = cfg.node.host_port.clone();
    let node_ip = cfg.node.node_ip;
    let (uplink_idx, exists) = netlink::with_handle(async |h| {
        let idx = match netlink::link_index(h, &uplink).await {
            Ok(i) => Some(i),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok((idx, netlink::link_exists(h, &host_port).await?))
    })
    .map_err(RunError::Kernel)?;
    let conflict = |field: String, problem: String| RunError::Config(ConfigError { field, problem });
    let Some(idx) = uplink_idx else {
        return Err(conflict("node.uplink".into(), format!("interface {uplink} not found")));
    };
    let addrs = netlink::with_handle(async |h| netlink::link_addrs(h, idx).await).map_err(RunError::Kernel)?;
    if !addrs.contains(&node_ip) {
        return Err(conflict(
            "node.node_ip".into(),
            format!("{node_ip} is not an address of {uplink} (it has {addrs:?})"),
        ));
    }
    if exists && !keep {
        return Err(conflict(
            "node.host_port".into(),
            format!("an interface named {host_port} already exists (is another ucanal running?)"),
        ));
    }
    for (i, p) in pods.iter().enumerate() {
        if !p.netns_path().exists() {
            return Err(conflict(format!("pods[{i}].netns"), format!("{} does not exist", p.netns_path().display())));
        }
    }
    if !handing && cfg.api.socket.exists() && std::os::unix::net::UnixStream::connect(&cfg.api.socket).is_ok() {
        return Err(conflict(
            "api.socket".into(),
            format!("another ucanal is listening on {}", cfg.api.socket.display()),
        ));
    }
    Ok(())
}
