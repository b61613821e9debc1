//! The daemon's side of the CNI plugin: attachments (a pod made for a container id and
//! interface name), their address leases, DEL that succeeds when the pod is gone, CHECK's
//! view of an attachment, GC of attachments the runtime no longer knows, and STATUS.

use super::Daemon;
use crate::api::{CniAttach, CniPod, CniStatus, PodSpec};
use crate::control::error::ControlError;
use crate::control::ipam::AddressLease;
use crate::control::pods::{Attachment, PodState};

impl Daemon {
    fn cni_pod(&self, p: &PodState) -> CniPod {
        let node = self.node.info();
        CniPod {
            name: p.spec.name.clone(),
            container_id: p.cni.as_ref().map(|c| c.container_id.clone()).unwrap_or_default(),
            ifname: p.spec.ifname().to_string(),
            netns: p.spec.netns.clone(),
            ip: p.spec.ip,
            mac: p.spec.mac(),
            mtu: node.mtu,
            gateway: node.gateway,
        }
    }

    /// ADD: lease an address (or record the one the runtime or its IPAM chose), then
    /// attach the namespace as a pod; the lease goes again if the attachment fails.
    pub(crate) async fn cni_add(&mut self, a: CniAttach) -> Result<CniPod, ControlError> {
        if self.pods.attached(&a.container_id, &a.ifname).is_some() {
            return Err(ControlError::AlreadyAttached { container_id: a.container_id, ifname: a.ifname });
        }
        if self.pods.get(&a.name).is_some() {
            return Err(ControlError::PodExists(a.name));
        }
        let lease = AddressLease {
            ip: std::net::Ipv4Addr::UNSPECIFIED,
            network: a.network.clone(),
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
            name: a.name.clone(),
            netns: a.netns.clone(),
        };
        let pods = &self.pods;
        let ip = self.ipam.lease(lease, a.ip, |ip| pods.holder_of(ip).map(|p| format!("pod {}", p.spec.name)))?;
        let spec = PodSpec {
            name: a.name.clone(),
            netns: a.netns.clone(),
            ip,
            mac: a.mac,
            ifname: Some(a.ifname.clone()),
            namespace: None,
            labels: a.labels.clone(),
        };
        let cni = Attachment { network: a.network, container_id: a.container_id.clone() };
        if let Err(e) = self.add_pod(spec, Some(cni)).await {
            if let Err(r) = self.ipam.release(&a.container_id, &a.ifname) {
                tracing::error!("cni: releasing {ip} after a failed ADD: {r}");
            }
            return Err(e);
        }
        let p = self.pods.get(&a.name).ok_or_else(|| ControlError::NoPod(a.name.clone()))?;
        Ok(self.cni_pod(p))
    }

    /// DEL: detach and release; an attachment that is already gone is success.
    pub(crate) async fn cni_del(&mut self, container_id: &str, ifname: &str) -> Result<String, ControlError> {
        let mut msg = Vec::new();
        if let Some(name) = self.pods.attached(container_id, ifname).map(|p| p.spec.name.clone()) {
            msg.push(self.del_pod(&name).await?);
        }
        if let Some(l) = self.ipam.release(container_id, ifname)? {
            msg.push(format!("{} released", l.ip));
        }
        if msg.is_empty() {
            return Ok(format!("container {container_id} {ifname}: nothing attached (already deleted)"));
        }
        Ok(msg.join("; "))
    }

    pub(crate) fn cni_check(&self, container_id: &str, ifname: &str) -> Result<CniPod, ControlError> {
        let p = self.pods.attached(container_id, ifname).ok_or_else(|| ControlError::NotAttached {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        })?;
        Ok(self.cni_pod(p))
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
                self.ipam
                    .table()
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

    pub(crate) fn cni_status(&self) -> CniStatus {
        let t = self.ipam.table();
        CniStatus { free: t.free(|ip| self.pods.holder_of(ip).is_some()), leases: t.iter().count() }
    }
}
