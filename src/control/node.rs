//! The node's kernel side: the checks before anything is created, the sysctls, the
//! host port with its routes, the steering rules that send NodePort and masquerade
//! replies to ucanal, and their removal.
//!
//! Heads up: `ip_forward` and `all.rp_filter` are node-wide; the values found at start
//! are remembered and put back by `teardown`, so a node looks as it did before ucanal.

use std::collections::BTreeSet;
use std::io;

use super::daemon::{Daemon, RunError, setup};
use crate::control::config::{Config, ConfigError};
use crate::io::netlink::{self, HostPort, Steer};
use crate::wire::ipv4::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// A sysctl key, as the path under /proc/sys.
pub(crate) type SysctlKey = &'static [&'static str];

const IP_FORWARD: SysctlKey = &["net", "ipv4", "ip_forward"];
const ALL_RP_FILTER: SysctlKey = &["net", "ipv4", "conf", "all", "rp_filter"];

/// The sysctls remembered for the final teardown, by name (for the state file).
pub(crate) fn sysctl_names(v: &[(SysctlKey, String)]) -> Vec<(String, String)> {
    v.iter().map(|(k, val)| (k.join("."), val.clone())).collect()
}

/// The inverse of [`sysctl_names`]; unknown names are ignored.
pub(crate) fn sysctls_from_names(v: &[(String, String)]) -> Vec<(SysctlKey, String)> {
    v.iter()
        .filter_map(|(n, val)| {
            [IP_FORWARD, ALL_RP_FILTER].into_iter().find(|k| k.join(".") == *n).map(|k| (k, val.clone()))
        })
        .collect()
}

/// Checks the machine against the config before anything is created. With `keep`
/// (`--keep-on-exit`) an existing host port is a previous ucanal's, to be adopted;
/// `handing`: that ucanal is live on our socket and hands over (see `handover`).
pub(crate) async fn preflight(cfg: &Config, keep: bool, handing: bool) -> Result<(), RunError> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(setup("/dev/net/tun is missing (is the tun module loaded?)"));
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
    .map_err(setup)?;
    let Some(idx) = uplink_idx else {
        return Err(RunError::Config(ConfigError {
            field: "node.uplink".into(),
            problem: format!("interface {uplink} not found"),
        }));
    };
    let addrs = netlink::with_handle(async |h| netlink::link_addrs(h, idx).await).map_err(setup)?;
    if !addrs.contains(&node_ip) {
        return Err(RunError::Config(ConfigError {
            field: "node.node_ip".into(),
            problem: format!("{node_ip} is not an address of {uplink} (it has {addrs:?})"),
        }));
    }
    if exists && !keep {
        return Err(RunError::Config(ConfigError {
            field: "node.host_port".into(),
            problem: format!("an interface named {host_port} already exists (is another ucanal running?)"),
        }));
    }
    for (i, p) in cfg.pods.iter().enumerate() {
        if !p.netns_path().exists() {
            return Err(RunError::Config(ConfigError {
                field: format!("pods[{i}].netns"),
                problem: format!("{} does not exist", p.netns_path().display()),
            }));
        }
    }
    if !handing && cfg.api.socket.exists() && std::os::unix::net::UnixStream::connect(&cfg.api.socket).is_ok() {
        return Err(RunError::Config(ConfigError {
            field: "api.socket".into(),
            problem: format!("another ucanal is listening on {}", cfg.api.socket.display()),
        }));
    }
    Ok(())
}

impl Daemon {
    /// The node's kernel side: sysctls, host port addresses and routes, steering rules.
    pub(crate) async fn configure_node(&mut self) -> Result<(), RunError> {
        let n = &self.node;
        let hp = self.cfg.node.host_port.clone();
        let set = |k: &[&str], v: &str| netlink::sysctl(k, v).map_err(setup);
        let forward = netlink::sysctl_read(IP_FORWARD).map_err(setup)?;
        if forward != "1" {
            tracing::info!("enabling net.ipv4.ip_forward (the node forwards between its uplink and ucanal)");
            set(IP_FORWARD, "1")?;
            self.restore_sysctls.push((IP_FORWARD, forward));
        }
        let rp = netlink::sysctl_read(ALL_RP_FILTER).map_err(setup)?;
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
            table: self.cfg.node.route_table,
        };
        let table = p.table;
        let adopted = self.adopted;
        let uplink = self.cfg.node.uplink.clone();
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
        .map_err(setup)?;
        self.sync_steers().await.map_err(setup)
    }

    /// The steering rules the current services need: NodePorts, and the replies to
    /// flows masqueraded to the node IP.
    fn wanted_steers(&self) -> BTreeSet<Steer> {
        let (lo, hi) = self.node.masquerade_ports;
        let mut s = BTreeSet::from([
            Steer { proto: PROTO_TCP, ports: Some((lo, hi)) },
            Steer { proto: PROTO_UDP, ports: Some((lo, hi)) },
            Steer { proto: PROTO_ICMP, ports: None },
        ]);
        for svc in self.services.with_node_ports().map(|s| &s.spec) {
            if let Some(np) = svc.node_port {
                s.insert(Steer { proto: svc.protocol.number(), ports: Some((np, np)) });
            }
        }
        s
    }

    pub(crate) async fn sync_steers(&mut self) -> io::Result<()> {
        let want = self.wanted_steers();
        let add: Vec<Steer> = want.difference(&self.steers).copied().collect();
        let del: Vec<Steer> = self.steers.difference(&want).copied().collect();
        if add.is_empty() && del.is_empty() {
            return Ok(());
        }
        let (uplink, ip, table) = (self.node.uplink.clone(), self.node.node_ip, self.cfg.node.route_table);
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

    /// Stops the workers (closing every TAP queue, so the TAPs disappear), removes the
    /// steering rules (the host port's routes go with the host port) and puts back the
    /// node-wide sysctls that `configure_node` changed.
    pub async fn teardown(&mut self) {
        for w in &mut self.workers {
            w.stop();
        }
        self.workers.clear();
        if self.handing {
            tracing::info!("the ucanal that was handing over keeps the node: nothing of it is removed");
            return;
        }
        if self.keep.is_some() {
            // Persistent TAPs outlive their queues: remove the pods' TAPs explicitly.
            for p in std::mem::take(&mut self.pods) {
                if let Err(e) = super::pods::delete_tap(&p.spec.netns_path(), p.spec.ifname()) {
                    tracing::error!("cleanup: pod {} {}: {e}", p.spec.name, p.spec.ifname());
                }
            }
        }
        self.pods.clear();
        if let Some(sf) = &mut self.statefile {
            sf.finish();
        }
        if let Some(k) = &self.keep {
            k.remove();
        }
        let table = self.cfg.node.route_table;
        let hp = self.cfg.node.host_port.clone();
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
