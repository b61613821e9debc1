//! The daemon's side of the CNI plugin: attachments (a pod made for a container id and
//! interface name), their address leases, DEL that succeeds when the pod is gone, CHECK's
//! view of an attachment, GC of attachments the runtime no longer knows, and STATUS.

use super::daemon::{ControlError, Daemon};
use super::pods::PodState;
use crate::api::{CniAttach, CniPod};
use crate::control::config::PodSpec;
use crate::control::ipam::Lease;

/// What makes a pod a CNI attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub network: String,
    pub container_id: String,
}

impl Daemon {
    fn attachment(&self, container_id: &str, ifname: &str) -> Option<&PodState> {
        self.pods
            .iter()
            .find(|p| p.cni.as_ref().is_some_and(|c| c.container_id == container_id) && p.spec.ifname() == ifname)
    }

    fn cni_pod(&self, p: &PodState) -> CniPod {
        CniPod {
            name: p.spec.name.clone(),
            container_id: p.cni.as_ref().map(|c| c.container_id.clone()).unwrap_or_default(),
            ifname: p.spec.ifname().to_string(),
            netns: p.spec.netns.clone(),
            ip: p.spec.ip,
            mac: p.spec.mac(),
            mtu: self.node.mtu,
            gateway: self.node.gateway,
        }
    }

    /// ADD: lease an address (or record the one the runtime or its IPAM chose), then
    /// attach the namespace as a pod; the lease goes again if the attachment fails.
    pub(crate) async fn cni_add(&mut self, a: CniAttach) -> Result<serde_json::Value, ControlError> {
        if self.attachment(&a.container_id, &a.ifname).is_some() {
            return Err(ControlError::AlreadyAttached { container_id: a.container_id, ifname: a.ifname });
        }
        if self.pods.iter().any(|p| p.spec.name == a.name) {
            return Err(ControlError::PodExists(a.name));
        }
        let pods = &self.pods;
        let lease = Lease {
            ip: std::net::Ipv4Addr::UNSPECIFIED,
            network: a.network.clone(),
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
            name: a.name.clone(),
            netns: a.netns.clone(),
        };
        let ip = self.leases.leases.allocate(lease, a.ip, |ip| {
            pods.iter().find(|p| p.spec.ip == ip).map(|p| format!("pod {}", p.spec.name))
        })?;
        if let Err(e) = self.leases.save() {
            self.leases.leases.release(&a.container_id, &a.ifname);
            return Err(e.into());
        }
        let spec =
            PodSpec { name: a.name.clone(), netns: a.netns.clone(), ip, mac: a.mac, ifname: Some(a.ifname.clone()) };
        if let Err(e) = self.add_pod(spec).await {
            self.leases.leases.release(&a.container_id, &a.ifname);
            let _ = self.leases.save();
            return Err(e);
        }
        let p = self.pods.last_mut().expect("add_pod pushed the pod");
        p.cni = Some(Attachment { network: a.network, container_id: a.container_id });
        let p = self.pods.last().expect("add_pod pushed the pod");
        Ok(serde_json::to_value(self.cni_pod(p)).unwrap_or_default())
    }

    /// DEL: detach and release; an attachment that is already gone is success.
    pub(crate) async fn cni_del(&mut self, container_id: &str, ifname: &str) -> Result<String, ControlError> {
        let mut msg = Vec::new();
        if let Some(name) = self.attachment(container_id, ifname).map(|p| p.spec.name.clone()) {
            msg.push(self.del_pod(&name).await?);
        }
        if let Some(l) = self.leases.leases.release(container_id, ifname) {
            self.leases.save()?;
            msg.push(format!("{} released", l.ip));
        }
        if msg.is_empty() {
            return Ok(format!("container {container_id} {ifname}: nothing attached (already deleted)"));
        }
        Ok(msg.join("; "))
    }

    pub(crate) fn cni_check(&self, container_id: &str, ifname: &str) -> Result<serde_json::Value, ControlError> {
        let p = self.attachment(container_id, ifname).ok_or_else(|| ControlError::NotAttached {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        })?;
        Ok(serde_json::to_value(self.cni_pod(p)).unwrap_or_default())
    }

    /// GC: every attachment of `network` (and every lease) not in `valid` goes.
    pub(crate) async fn cni_gc(&mut self, network: &str, valid: &[(String, String)]) -> Result<String, ControlError> {
        let keep = |cid: &str, ifname: &str| valid.iter().any(|(c, i)| c == cid && i == ifname);
        let mut stale: Vec<(String, String)> = self
            .pods
            .iter()
            .filter_map(|p| {
                p.cni
                    .as_ref()
                    .filter(|c| c.network == network)
                    .map(|c| (c.container_id.clone(), p.spec.ifname().to_string()))
            })
            .chain(
                self.leases
                    .leases
                    .iter()
                    .filter(|l| l.network == network)
                    .map(|l| (l.container_id.clone(), l.ifname.clone())),
            )
            .filter(|(c, i)| !keep(c, i))
            .collect();
        stale.sort();
        stale.dedup();
        for (c, i) in &stale {
            self.cni_del(c, i).await?;
        }
        Ok(format!("network {network}: {} stale attachment(s) removed", stale.len()))
    }

    pub(crate) fn cni_status(&self) -> serde_json::Value {
        let free = self.leases.leases.free(|ip| self.pods.iter().any(|p| p.spec.ip == ip));
        serde_json::json!({ "free": free, "leases": self.leases.leases.iter().count() })
    }
}
