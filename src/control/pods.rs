//! Pods: a TAP per pod created inside the pod's network namespace (it is the pod's
//! `eth0`, with its /32 address and the 169.254.1.1 gateway routes), one queue per
//! worker, and the port id the tables route to.

use std::os::fd::OwnedFd;
use std::time::Duration;

use super::daemon::{ControlError, Daemon};
use crate::control::config::{self, PodSpec};
use crate::core::{Counter, PortId};
use crate::io::netlink;
use crate::io::stats;
use crate::io::worker::Control;
use crate::io::{sys, tap};

pub(crate) struct PodState {
    pub(crate) spec: PodSpec,
    pub(crate) port: PortId,
    pub(crate) ifname: String,
    /// Set when the CNI plugin attached it.
    pub(crate) cni: Option<super::attach::Attachment>,
}

impl Daemon {
    fn alloc_port(&mut self) -> PortId {
        if let Some(p) = self.free_ports.pop() {
            return PortId(p);
        }
        self.next_port += 1;
        PortId(self.next_port - 1)
    }

    pub async fn add_pod(&mut self, spec: PodSpec) -> Result<String, ControlError> {
        config::check_pod(&self.cfg, &spec).map_err(|error| ControlError::Invalid { what: "pod", error })?;
        if self.pods.iter().any(|p| p.spec.name == spec.name) {
            return Err(ControlError::PodExists(spec.name));
        }
        if let Some(o) = self.pods.iter().find(|p| p.spec.ip == spec.ip) {
            return Err(ControlError::AddressInUse { ip: spec.ip, pod: o.spec.name.clone() });
        }
        let path = spec.netns_path();
        if !path.exists() {
            return Err(ControlError::NoNetns(path));
        }
        let (mac, mtu, ip, gw) = (spec.mac(), self.node.mtu, spec.ip, self.node.gateway);
        let queues = super::daemon::workers_for(&self.cfg);
        let offloads = self.cfg.dataplane.techniques().tap_offloads;
        let ifname = spec.ifname().to_string();
        // Pods restored from a previous ucanal's state keep their persistent TAP.
        let persist = if self.keep.is_some() { tap::Persist::Keep } else { tap::Persist::No };
        let adopt = self.restoring;
        // Handed over by a predecessor: the TAP never went away, its queues are open.
        let handed = if adopt { self.handed_pods.remove(&spec.name).filter(|f| f.len() == queues) } else { None };
        let fds: Vec<OwnedFd> = if let Some(fds) = handed {
            fds
        } else {
            tokio::task::block_in_place(|| {
                sys::in_netns(&path, move || {
                    // TUNSETIFF would attach to an existing TAP of that name: refuse instead (CNI: "MUST return an error").
                    if !adopt && netlink::with_handle(async |h| netlink::link_exists(h, &ifname).await)? {
                        let e = format!("an interface {ifname} already exists in the pod's namespace");
                        return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, e));
                    }
                    let fds = tap::open_with(&ifname, queues, offloads, persist)?;
                    // Pods are IPv4 here; without this the kernel's IPv6 chatter is only counted drops.
                    let _ = netlink::sysctl(&["net", "ipv6", "conf", &ifname, "disable_ipv6"], "1");
                    netlink::with_handle(async |h| netlink::configure_pod(h, &ifname, mac, mtu, ip, gw).await)?;
                    Ok(fds)
                })
            })?
        };
        if self.pods.len() + 1 >= stats::MAX_PORTS {
            return Err(ControlError::TooManyPods(self.pods.len()));
        }
        let port = self.alloc_port();
        self.stats.reset(stats::slot(port));
        if self.workers.is_empty() {
            // Attached before the workers start (a hand-over): they start with it.
            self.unstarted.push((port, fds));
        } else {
            for (w, fd) in self.workers.iter().zip(fds) {
                w.send(Control::AddPort { port, fd });
            }
        }
        let ifname = spec.port_name();
        let msg =
            format!("pod {} {} attached as {} in {} (port {ifname})", spec.name, spec.ip, spec.ifname(), spec.netns);
        self.pods.push(PodState { spec: spec.clone(), port, ifname, cni: None });
        self.journal(|| crate::control::persist::journal::Op::PodPut(spec.clone()));
        self.cfg.pods.push(spec);
        self.rebuild();
        tracing::info!("{msg}");
        Ok(msg)
    }

    pub async fn del_pod(&mut self, name: &str) -> Result<String, ControlError> {
        let i =
            self.pods.iter().position(|p| p.spec.name == name).ok_or_else(|| ControlError::NoPod(name.to_string()))?;
        let p = self.pods.remove(i);
        self.cfg.pods.retain(|s| s.name != name);
        self.journal(|| crate::control::persist::journal::Op::PodDel(name.to_string()));
        // Unroute first, then release the queues; the TAP goes with its last queue.
        self.rebuild();
        let mut acks = Vec::new();
        for w in &self.workers {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            w.send(Control::RemovePort { port: p.port, done: tx });
            acks.push(rx);
        }
        tokio::task::block_in_place(|| {
            for a in acks {
                let _ = a.recv_timeout(Duration::from_secs(5));
            }
        });
        self.free_ports.push(p.port.0);
        // A later pod with this address must not inherit its flows.
        let ip = p.spec.ip;
        let n = self
            .dp
            .conntrack
            .remove_where(|e| e.original.src == ip || e.original.dst == ip || e.reply.src == ip || e.reply.dst == ip);
        self.dp.counters.add(self.api_block(), Counter::CtFlushedPod, n as u64);
        let msg = format!("pod {name} detached; its {} is removed, {n} flow(s) flushed", p.spec.ifname());
        if self.keep.is_some() {
            tokio::task::block_in_place(|| delete_tap(&p.spec.netns_path(), p.spec.ifname()))?;
        }
        tracing::info!("{msg}");
        Ok(msg)
    }
}

/// Deletes a pod's (persistent) TAP.
pub(crate) fn delete_tap(netns: &std::path::Path, ifname: &str) -> std::io::Result<()> {
    if !netns.exists() {
        return Ok(());
    }
    let ifname = ifname.to_string();
    sys::in_netns(netns, move || netlink::with_handle(async |h| netlink::delete_link(h, &ifname).await))
}
