//! Pods: a TAP per pod created inside the pod's network namespace (it is the pod's
//! `eth0`, with its /32 address and the 169.254.1.1 gateway routes), one queue per
//! worker, and the port id the tables route to. [`PodBook`] owns the pods and their
//! port numbers; [`Tap`] makes a pod's TAP and removes it again if configuring it
//! fails. (Adding a pod, `state::pods`, checks everything it can before the TAP exists.)

use std::os::fd::OwnedFd;
use std::path::Path;

use super::error::ControlError;
use super::persist::SavedPod;
use crate::api::PodSpec;
use crate::core::PortId;
use crate::core::tables::{NodeInfo, PodPort};
use crate::io::{netlink, stats, sys, tap};

// What makes a pod a CNI attachment is saved with it: defined beside the state file.
pub use crate::control::persist::Attachment;

/// A pod on this node.
pub struct PodState {
    pub spec: PodSpec,
    pub port: PortId,
    /// The port's name in listings (Calico-style, see [`PodSpec::port_name`]).
    pub port_name: String,
    /// Set when the CNI plugin attached it.
    pub cni: Option<Attachment>,
}

/// The node's pods, in the order they were added, and the port numbers they hold.
/// Names and addresses are unique; a port number goes back to the free list only once
/// every worker let go of its queues.
#[derive(Default)]
pub struct PodBook {
    pods: Vec<PodState>,
    free_ports: Vec<u32>,
    next_port: u32,
}

impl PodBook {
    /// Whether `spec` can join the pods: a new name, a free address, room for one more.
    pub fn check_new(&self, spec: &PodSpec) -> Result<(), ControlError> {
        if self.pods.iter().any(|p| p.spec.name == spec.name) {
            return Err(ControlError::PodExists(spec.name.clone()));
        }
        if let Some(o) = self.pods.iter().find(|p| p.spec.ip == spec.ip) {
            return Err(ControlError::AddressInUse { ip: spec.ip, pod: o.spec.name.clone() });
        }
        // Port 0 is the host port.
        if self.pods.len() + 1 >= stats::MAX_PORTS {
            return Err(ControlError::TooManyPods(self.pods.len()));
        }
        Ok(())
    }

    pub fn insert(&mut self, spec: PodSpec, cni: Option<Attachment>) -> PortId {
        let port = match self.free_ports.pop() {
            Some(p) => PortId(p),
            None => {
                self.next_port += 1;
                PortId(self.next_port)
            }
        };
        self.pods.push(PodState { port_name: spec.port_name(), spec, port, cni });
        port
    }

    pub fn remove(&mut self, name: &str) -> Option<PodState> {
        let i = self.pods.iter().position(|p| p.spec.name == name)?;
        Some(self.pods.remove(i))
    }

    /// A removed pod's port number, free again (its queues are closed).
    pub fn release_port(&mut self, port: PortId) {
        self.free_ports.push(port.0);
    }

    /// Every pod, leaving the book empty.
    pub fn drain(&mut self) -> Vec<PodState> {
        std::mem::take(&mut self.pods)
    }

    pub fn get(&self, name: &str) -> Option<&PodState> {
        self.pods.iter().find(|p| p.spec.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PodState> {
        self.pods.iter()
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// The pod holding `ip`.
    pub fn holder_of(&self, ip: std::net::Ipv4Addr) -> Option<&PodState> {
        self.pods.iter().find(|p| p.spec.ip == ip)
    }

    /// The pod a CNI attachment made.
    pub fn attached(&self, container_id: &str, ifname: &str) -> Option<&PodState> {
        self.pods
            .iter()
            .find(|p| p.cni.as_ref().is_some_and(|c| c.container_id == container_id) && p.spec.ifname() == ifname)
    }

    pub fn names(&self) -> Vec<String> {
        self.pods.iter().map(|p| p.spec.name.clone()).collect()
    }

    /// The pods' specs, borrowed.
    pub fn spec_refs(&self) -> impl Iterator<Item = &PodSpec> {
        self.pods.iter().map(|p| &p.spec)
    }

    /// Every pod as the state keeps it, in order.
    pub fn saved(&self) -> Vec<SavedPod> {
        self.pods.iter().map(|p| SavedPod { pod: p.spec.clone(), cni: p.cni.clone() }).collect()
    }

    /// The pods as the tables route to them.
    pub fn ports(&self) -> Vec<PodPort> {
        self.pods
            .iter()
            .map(|p| PodPort {
                name: p.spec.name.clone(),
                netns: p.spec.netns.clone(),
                ip: p.spec.ip,
                mac: p.spec.mac(),
                port: p.port,
                ifname: p.port_name.clone(),
            })
            .collect()
    }
}

/// How a pod's TAP is made.
#[derive(Clone, Copy)]
pub struct Tap {
    pub queues: usize,
    pub offloads: bool,
    pub persist: tap::Persist,
    /// Attach to the TAP if it exists (a previous ucanal's).
    pub adopt: bool,
}

impl Tap {
    /// Creates the TAP inside the pod's namespace and gives it the pod's view (address,
    /// gateway routes); a persistent TAP this call created goes again if that fails.
    pub fn make(&self, spec: &PodSpec, node: &NodeInfo) -> Result<Vec<OwnedFd>, ControlError> {
        let (mac, mtu, ip, gw) = (spec.mac(), node.mtu, spec.ip, node.gateway);
        let Tap { queues, offloads, persist, adopt } = *self;
        let ifname = spec.ifname().to_string();
        let made = tokio::task::block_in_place(|| {
            sys::in_netns(&spec.netns_path(), move || {
                // TUNSETIFF would attach to an existing TAP of that name.
                if !adopt && netlink::with_handle(async |h| netlink::link_exists(h, &ifname).await)? {
                    return Ok(Made::Exists(ifname));
                }
                let fds = tap::open_with(&ifname, queues, offloads, persist)?;
                // Pods are IPv4 here; without this the kernel's IPv6 chatter is only counted drops.
                let _ = netlink::sysctl(&["net", "ipv6", "conf", &ifname, "disable_ipv6"], "1");
                let r = netlink::with_handle(async |h| netlink::configure_pod(h, &ifname, mac, mtu, ip, gw).await);
                if let Err(e) = r {
                    drop(fds);
                    if persist == tap::Persist::Keep && !adopt {
                        let _ = netlink::with_handle(async |h| netlink::delete_link(h, &ifname).await);
                    }
                    return Err(e);
                }
                Ok(Made::Fds(fds))
            })
        })?;
        match made {
            Made::Fds(fds) => Ok(fds),
            Made::Exists(ifname) => Err(ControlError::InterfaceExists(ifname)),
        }
    }
}

/// What happened in the pod's namespace.
enum Made {
    Fds(Vec<OwnedFd>),
    /// An interface of that name is there already.
    Exists(String),
}

/// Deletes a pod's (persistent) TAP.
pub fn delete_tap(netns: &Path, ifname: &str) -> std::io::Result<()> {
    if !netns.exists() {
        return Ok(());
    }
    let ifname = ifname.to_string();
    sys::in_netns(netns, move || netlink::with_handle(async |h| netlink::delete_link(h, &ifname).await))
}
