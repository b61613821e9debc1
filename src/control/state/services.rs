//! Changing services and endpoints: a checked delta of the service book, published,
//! journaled, the UDP flows of removed endpoints flushed and the NodePort steering
//! synced.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddrV4;

use super::Daemon;
use crate::api::EndpointRef;
use crate::control::error::ControlError;
use crate::control::persist::journal::Op;
use crate::control::services::Delta;
use crate::core::nat::service::ServiceSpec;

impl Daemon {
    /// Checks and applies a delta, publishes, flushes the UDP flows of endpoints that
    /// went away and syncs the NodePort steering rules. Nothing changes on a refused
    /// delta.
    pub(crate) async fn change_services(&mut self, d: Delta) -> Result<(), ControlError> {
        self.services.check(&self.cfg, &d)?;
        if let Some(p) = &mut self.persist {
            let put: HashSet<&str> = d.put.iter().map(|s| s.name.as_str()).collect();
            for name in d.remove.iter().filter(|n| !put.contains(n.as_str())) {
                p.record(Op::ServiceDel(name.clone()));
            }
            for s in &d.put {
                p.record(Op::ServicePut(s.clone()));
            }
        }
        let a = self.services.apply(d);
        self.publish();
        for o in a.old.values() {
            let now = self.services.spec(&o.spec.name);
            let gone: Vec<SocketAddrV4> =
                o.spec.endpoints.iter().filter(|e| now.is_none_or(|n| !n.endpoints.contains(e))).copied().collect();
            self.plane.flush_endpoints(&o.spec, &gone);
        }
        if a.node_ports_changed {
            self.node.sync_steers(&self.cfg, self.services.node_ports()).await?;
        }
        Ok(())
    }

    /// Sets a service on this node (in a cluster, only a service of the node's config
    /// comes here: the others go through etcd). The answer says what was set — its
    /// NodePort too — and where it holds: this node only, for how long.
    pub async fn set_service(&mut self, s: ServiceSpec) -> Result<String, ControlError> {
        let node_port = match s.node_port {
            Some(np) => format!(", NodePort {}:{np}", self.cfg.node.node_ip),
            None => String::new(),
        };
        let msg = format!(
            "service {} {}:{}/{}{node_port} with {} endpoint(s): {}",
            s.name,
            s.cluster_ip,
            s.port,
            s.protocol.name(),
            s.endpoints.len(),
            self.scope_of_runtime_service()
        );
        self.change_services(Delta { remove: BTreeSet::new(), put: vec![s] }).await?;
        Ok(msg)
    }

    /// Where a service changed on this node alone holds, in the words of a reply.
    fn scope_of_runtime_service(&self) -> &'static str {
        match (self.kube.shared.is_some(), self.persist.is_some()) {
            (true, _) => "on this node only (a service of this node's config file; the cluster's go through etcd)",
            (false, true) => "on this node only (no [cluster] shares it: every node takes its own `service set`)",
            (false, false) => {
                "on this node only (no [cluster] shares it: every node takes its own `service set`), until this \
                 ucanal stops (`run --keep-on-exit` keeps runtime changes across restarts)"
            }
        }
    }

    pub async fn del_service(&mut self, name: &str) -> Result<String, ControlError> {
        if self.services.spec(name).is_none() {
            return Err(ControlError::NoService(name.to_string()));
        }
        self.change_services(Delta { remove: BTreeSet::from([name.to_string()]), put: vec![] }).await?;
        Ok(format!("service {name} removed"))
    }

    /// The service with `ep` added (or removed): checked against what it has.
    pub(crate) fn with_endpoint(
        &self,
        service: &str,
        ep: &EndpointRef,
        add: bool,
    ) -> Result<ServiceSpec, ControlError> {
        let ep = self.resolve(ep)?;
        let mut s = self.services.spec(service).cloned().ok_or_else(|| ControlError::NoService(service.to_string()))?;
        if add {
            if s.endpoints.contains(&ep) {
                return Err(ControlError::EndpointExists { service: service.to_string(), endpoint: ep });
            }
            s.endpoints.push(ep);
        } else {
            let before = s.endpoints.len();
            s.endpoints.retain(|e| *e != ep);
            if s.endpoints.len() == before {
                return Err(ControlError::NotAnEndpoint { service: service.to_string(), endpoint: ep });
            }
        }
        Ok(s)
    }

    /// An endpoint's address: as given, or the address of a pod of this node.
    fn resolve(&self, ep: &EndpointRef) -> Result<SocketAddrV4, ControlError> {
        match ep {
            EndpointRef::Address(a) => Ok(*a),
            EndpointRef::Pod { pod, port } => match self.pods.get(pod) {
                Some(p) => Ok(SocketAddrV4::new(p.spec.ip, *port)),
                None => Err(ControlError::NoPodHere { name: pod.clone(), pods: self.pods.names() }),
            },
        }
    }

    pub async fn endpoint(&mut self, service: &str, ep: &EndpointRef, add: bool) -> Result<String, ControlError> {
        let s = self.with_endpoint(service, ep, add)?;
        self.set_service(s).await
    }
}
