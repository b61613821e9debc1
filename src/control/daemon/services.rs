//! Services and endpoints: the kube-proxy side of the control plane. Every change
//! publishes a new table snapshot, flushes UDP flows of removed endpoints and syncs
//! the NodePort steering rules.

use std::net::SocketAddrV4;
use std::sync::Arc;

use super::{ControlError, Daemon};
use crate::control::config;
use crate::core::Counter;
use crate::core::nat::service::{Hits, ServiceSpec, ServiceTable};
use crate::core::tables::{PodPort, Tables};
use crate::wire::ipv4::PROTO_UDP;

impl Daemon {
    /// Builds and publishes a new snapshot from the current pods, peers and services.
    pub(super) fn rebuild(&mut self) {
        self.generation += 1;
        let pods: Vec<PodPort> = self
            .pods
            .iter()
            .map(|p| PodPort {
                name: p.spec.name.clone(),
                netns: p.spec.netns.clone(),
                ip: p.spec.ip,
                mac: p.spec.mac(),
                port: p.port,
                ifname: p.ifname.clone(),
            })
            .collect();
        let hits = &mut self.hits;
        let services = ServiceTable::build(self.cfg.services.iter().cloned(), |name, ep| {
            hits.entry((name.to_string(), ep)).or_insert_with(|| Arc::new(Hits::default())).clone()
        });
        let mut t = Tables::build(self.generation, self.node.clone(), self.seed, &pods, &self.all_peers(), services);
        t.vxlan_source_ports = self.tx_ports.clone();
        self.dp.publish(t);
    }

    pub async fn set_service(&mut self, s: ServiceSpec) -> Result<String, ControlError> {
        config::check_service(&self.cfg, &s).map_err(|error| ControlError::Invalid { what: "service", error })?;
        let clash = self.cfg.services.iter().find(|o| {
            o.name != s.name
                && ((o.protocol, o.cluster_ip, o.port) == (s.protocol, s.cluster_ip, s.port)
                    || (s.node_port.is_some() && (o.protocol, o.node_port) == (s.protocol, s.node_port)))
        });
        if let Some(o) = clash {
            return Err(ControlError::ServiceClash(o.name.clone()));
        }
        let old = self.cfg.services.iter().position(|o| o.name == s.name);
        let removed: Vec<SocketAddrV4> = match old {
            Some(i) => self.cfg.services[i].endpoints.iter().filter(|e| !s.endpoints.contains(e)).copied().collect(),
            None => Vec::new(),
        };
        let msg = format!(
            "service {} {}:{}/{} with {} endpoint(s)",
            s.name,
            s.cluster_ip,
            s.port,
            s.protocol.name(),
            s.endpoints.len()
        );
        match old {
            Some(i) => self.cfg.services[i] = s.clone(),
            None => self.cfg.services.push(s.clone()),
        }
        self.rebuild();
        self.flush_endpoints(&s, &removed);
        self.sync_steers().await?;
        Ok(msg)
    }

    pub async fn del_service(&mut self, name: &str) -> Result<String, ControlError> {
        let i = self
            .cfg
            .services
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| ControlError::NoService(name.to_string()))?;
        let s = self.cfg.services.remove(i);
        self.hits.retain(|(n, _), _| n != name);
        self.rebuild();
        self.flush_endpoints(&s, &s.endpoints);
        self.sync_steers().await?;
        Ok(format!("service {name} removed"))
    }

    pub async fn endpoint(&mut self, service: &str, ep: SocketAddrV4, add: bool) -> Result<String, ControlError> {
        let mut s = self
            .cfg
            .services
            .iter()
            .find(|s| s.name == service)
            .cloned()
            .ok_or_else(|| ControlError::NoService(service.to_string()))?;
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
            self.hits.remove(&(service.to_string(), Some(ep)));
        }
        self.set_service(s).await
    }

    /// UDP flows to removed endpoints are dropped from conntrack at once, so their
    /// next datagram picks a remaining endpoint (kube-proxy's `conntrack -D`, without
    /// the window in which the client black-holes). TCP flows are left to fail.
    pub(super) fn flush_endpoints(&self, s: &ServiceSpec, removed: &[SocketAddrV4]) {
        if removed.is_empty() || s.protocol.number() != PROTO_UDP {
            return;
        }
        let n = self.dp.conntrack.remove_where(|e| {
            e.original.proto == PROTO_UDP
                && e.dnat_target().is_some_and(|t| removed.contains(&t))
                && (e.original.dst == s.cluster_ip || Some(e.original.dport) == s.node_port)
        });
        self.dp.counters.add(self.api_block(), Counter::CtFlushedEndpoint, n as u64);
        tracing::info!(service = %s.name, flows = n, "flushed UDP flows of removed endpoints");
    }
}
