//! Adding and removing pods: the book, the TAP, the workers' queues and the tables,
//! in the order that leaves nothing behind when a step fails.

use super::Daemon;
use crate::api::PodSpec;
use crate::control::config;
use crate::control::error::ControlError;
use crate::control::persist::journal::Op;
use crate::control::plane::RELEASE_WAIT;
use crate::control::pods::{Attachment, Tap, delete_tap};
use crate::io::tap;

impl Daemon {
    /// Attaches a pod (`cni`: the CNI attachment it makes): its TAP, its queues, its
    /// route. Nothing is left behind when it fails.
    pub async fn add_pod(&mut self, spec: PodSpec, cni: Option<Attachment>) -> Result<String, ControlError> {
        config::check_pod(&self.cfg, &spec).map_err(|error| ControlError::Invalid { what: "pod", error })?;
        self.pods.check_new(&spec)?;
        let path = spec.netns_path();
        if !path.exists() {
            return Err(ControlError::NoNetns(path));
        }
        let queues = self.cfg.dataplane.worker_count();
        // Handed over by a predecessor: the TAP never went away, its queues are open.
        let fds = match self.life.take_handed(&spec.name, queues) {
            Some(fds) => fds,
            None => {
                let tap = Tap {
                    queues,
                    offloads: self.cfg.dataplane.techniques().tap_offloads,
                    // Pods survive a restart with --keep-on-exit in their persistent TAP.
                    persist: if self.persist.is_some() { tap::Persist::Keep } else { tap::Persist::No },
                    adopt: self.life.adopting(),
                };
                tap.make(&spec, self.node.info())?
            }
        };
        let msg = format!(
            "pod {} {} attached as {} in {} (port {})",
            spec.name,
            spec.ip,
            spec.ifname(),
            spec.netns,
            spec.port_name()
        );
        let port = self.pods.insert(spec.clone(), cni);
        self.plane.add_port(port, fds);
        self.record(|| Op::PodPut(spec));
        self.publish();
        tracing::info!("{msg}");
        Ok(msg)
    }

    /// Detaches a pod: unrouted first, then its queues released (the TAP goes with its
    /// last queue), its flows flushed.
    pub async fn del_pod(&mut self, name: &str) -> Result<String, ControlError> {
        let p = self.pods.remove(name).ok_or_else(|| ControlError::NoPod(name.to_string()))?;
        self.record(|| Op::PodDel(name.to_string()));
        self.publish();
        let released = self.plane.remove_port(p.port);
        if released.is_ok() {
            self.pods.release_port(p.port);
        }
        let n = self.plane.flush_address(p.spec.ip);
        if self.persist.is_some() {
            tokio::task::block_in_place(|| delete_tap(&p.spec.netns_path(), p.spec.ifname()))?;
        }
        if let Err(workers) = released {
            return Err(ControlError::WorkerStuck { pod: name.to_string(), workers, wait: RELEASE_WAIT });
        }
        let msg = format!("pod {name} detached; its {} is removed, {n} flow(s) flushed", p.spec.ifname());
        tracing::info!("{msg}");
        Ok(msg)
    }
}
