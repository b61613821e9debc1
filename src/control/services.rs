//! Services and endpoints: the kube-proxy side of the control plane. The daemon keeps
//! its own copy of the service table (copy-on-write shards, see
//! [`crate::core::nat::service`]); a change is a delta — the services it replaces and
//! the specs it puts — checked in full before anything changes, applied to that copy
//! (touching only those services' entries) and published as a new snapshot. Then the
//! UDP flows of removed endpoints are flushed and the NodePort steering rules synced.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};

use super::daemon::{ControlError, Daemon};
use crate::control::config;
use crate::core::Counter;
use crate::core::nat::service::{Protocol, Service, ServiceSpec};
use crate::core::tables::{PodPort, Tables};
use crate::wire::ipv4::PROTO_UDP;

/// Where a service sits in the table: its cluster IP:port.
pub(crate) type Portal = (Protocol, Ipv4Addr, u16);

fn portal(s: &ServiceSpec) -> Portal {
    (s.protocol, s.cluster_ip, s.port)
}

/// A checked change of the service table: the specs it removes (by name) and puts.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    pub remove: BTreeSet<String>,
    pub put: Vec<ServiceSpec>,
}

impl Daemon {
    /// Publishes a new snapshot: the current pods and peers, and a clone of the
    /// daemon's service table (a reference per shard, not a copy of the services).
    pub(crate) fn rebuild(&mut self) {
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
        let services = self.services.clone();
        let mut t = Tables::build(self.generation, self.node.clone(), self.seed, &pods, &self.all_peers(), services);
        t.vxlan_source_ports = self.tx_ports.clone();
        self.dp.publish(t);
    }

    /// The spec named `name`, as the table holds it.
    pub(crate) fn spec(&self, name: &str) -> Option<&ServiceSpec> {
        let (proto, ip, port) = *self.service_names.get(name)?;
        self.services.by_cluster_ip(proto.number(), ip, port).map(|s| &s.spec)
    }

    /// Every service spec, by name (the restart state).
    pub(crate) fn specs(&self) -> Vec<ServiceSpec> {
        self.service_names.keys().filter_map(|n| self.spec(n)).cloned().collect()
    }

    /// Checks a delta without changing anything: each spec valid, no two specs of the
    /// result sharing a cluster IP:port or a NodePort. Costs what the delta holds.
    pub(crate) fn check_delta(&self, d: &Delta) -> Result<(), ControlError> {
        let mut portals: HashMap<Portal, &str> = HashMap::with_capacity(d.put.len());
        let mut node_ports: HashMap<(Protocol, u16), &str> = HashMap::new();
        let put: std::collections::HashSet<&str> = d.put.iter().map(|s| s.name.as_str()).collect();
        let stays = |name: &str| !d.remove.contains(name) && !put.contains(name);
        for s in &d.put {
            config::check_service(&self.cfg, s).map_err(|error| ControlError::Invalid { what: "service", error })?;
            if let Some(o) = portals.insert(portal(s), &s.name) {
                return Err(ControlError::ServiceClash(o.to_string()));
            }
            let p = s.protocol.number();
            if let Some(o) = self.services.by_cluster_ip(p, s.cluster_ip, s.port)
                && o.spec.name != s.name
                && stays(&o.spec.name)
            {
                return Err(ControlError::ServiceClash(o.spec.name.clone()));
            }
            if let Some(np) = s.node_port {
                if let Some(o) = node_ports.insert((s.protocol, np), &s.name) {
                    return Err(ControlError::ServiceClash(o.to_string()));
                }
                if let Some(o) = self.services.by_node_port(p, np)
                    && o.spec.name != s.name
                    && stays(&o.spec.name)
                {
                    return Err(ControlError::ServiceClash(o.spec.name.clone()));
                }
            }
        }
        Ok(())
    }

    /// Checks and applies a delta, publishes, flushes the UDP flows of endpoints that
    /// went away and syncs the NodePort steering rules. Nothing changes on a refused
    /// delta.
    pub(crate) async fn change_services(&mut self, d: Delta) -> Result<(), ControlError> {
        self.check_delta(&d)?;
        self.journal_delta(&d);
        let mut old: HashMap<String, Service> = HashMap::with_capacity(d.remove.len() + d.put.len());
        let names = d.remove.iter().map(String::as_str).chain(d.put.iter().map(|s| s.name.as_str()));
        for name in names.collect::<Vec<_>>() {
            if old.contains_key(name) {
                continue;
            }
            if let Some(s) = self.spec(name).cloned()
                && let Some(o) = self.services.remove(&s)
            {
                self.service_names.remove(name);
                old.insert(name.to_string(), o);
            }
        }
        let mut steers_changed = old.values().any(|o| o.spec.node_port.is_some());
        for s in d.put {
            steers_changed |= s.node_port.is_some();
            self.service_names.insert(s.name.clone(), portal(&s));
            let prev = old.get(&s.name);
            let svc = Service::carrying(s, prev);
            for gone in self.services.insert(svc) {
                // check_delta allows no displacement of a service that stays.
                tracing::error!(service = %gone.spec.name, "displaced from the service table");
                self.service_names.remove(&gone.spec.name);
            }
        }
        self.rebuild();
        for o in old.values() {
            let now = self.spec(&o.spec.name);
            let gone: Vec<SocketAddrV4> =
                o.spec.endpoints.iter().filter(|e| now.is_none_or(|n| !n.endpoints.contains(e))).copied().collect();
            self.flush_endpoints(&o.spec, &gone);
        }
        if steers_changed {
            self.sync_steers().await?;
        }
        Ok(())
    }

    /// Notes a checked delta for the state journal: what it removes, what it puts.
    fn journal_delta(&mut self, d: &Delta) {
        use crate::control::persist::journal::Op;
        let Some(sf) = &mut self.statefile else { return };
        let put: std::collections::HashSet<&str> = d.put.iter().map(|s| s.name.as_str()).collect();
        for name in d.remove.iter().filter(|n| !put.contains(n.as_str())) {
            sf.record(Op::ServiceDel(name.clone()));
        }
        for s in &d.put {
            sf.record(Op::ServicePut(s.clone()));
        }
    }

    pub async fn set_service(&mut self, s: ServiceSpec) -> Result<String, ControlError> {
        let msg = format!(
            "service {} {}:{}/{} with {} endpoint(s)",
            s.name,
            s.cluster_ip,
            s.port,
            s.protocol.name(),
            s.endpoints.len()
        );
        self.change_services(Delta { remove: BTreeSet::new(), put: vec![s] }).await?;
        Ok(msg)
    }

    pub async fn del_service(&mut self, name: &str) -> Result<String, ControlError> {
        if self.spec(name).is_none() {
            return Err(ControlError::NoService(name.to_string()));
        }
        self.change_services(Delta { remove: BTreeSet::from([name.to_string()]), put: vec![] }).await?;
        Ok(format!("service {name} removed"))
    }

    pub async fn endpoint(&mut self, service: &str, ep: SocketAddrV4, add: bool) -> Result<String, ControlError> {
        let mut s = self.spec(service).cloned().ok_or_else(|| ControlError::NoService(service.to_string()))?;
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
        self.set_service(s).await
    }

    /// UDP flows to removed endpoints are dropped from conntrack at once, so their
    /// next datagram picks a remaining endpoint (kube-proxy's `conntrack -D`, without
    /// the window in which the client black-holes). TCP flows are left to fail.
    pub(crate) fn flush_endpoints(&self, s: &ServiceSpec, removed: &[SocketAddrV4]) {
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
