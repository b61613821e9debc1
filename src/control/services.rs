//! Services and endpoints: the kube-proxy side of the control plane. [`ServiceBook`]
//! keeps the daemon's own copy of the service table (copy-on-write shards, see
//! [`crate::core::nat::service`]) and where each service sits in it, by name. A change
//! is a [`Delta`] — the services it replaces and the specs it puts — checked in full
//! before anything changes, applied to that copy (touching only those services'
//! entries) and published as a new snapshot. Then the UDP flows of removed endpoints
//! are flushed and the NodePort steering rules synced.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use super::config::{self, Config};
use super::error::ControlError;
use crate::core::nat::service::{Protocol, Service, ServiceSpec, ServiceTable};

/// Where a service sits in the table: its cluster IP:port.
type Portal = (Protocol, Ipv4Addr, u16);

fn portal(s: &ServiceSpec) -> Portal {
    (s.protocol, s.cluster_ip, s.port)
}

/// A checked change of the service table: the specs it removes (by name) and puts.
#[derive(Debug, Default)]
pub struct Delta {
    pub remove: BTreeSet<String>,
    pub put: Vec<ServiceSpec>,
}

/// The service table and the names in it.
#[derive(Default)]
pub struct ServiceBook {
    table: ServiceTable,
    names: BTreeMap<String, Portal>,
}

/// What applying a delta replaced.
pub struct Applied {
    /// The services removed or replaced, by name.
    pub old: HashMap<String, Service>,
    /// A NodePort came or went.
    pub node_ports_changed: bool,
}

impl ServiceBook {
    /// The services to start with (checked by the config, or written by the ucanal
    /// before us: no clashes).
    pub fn new(specs: Vec<ServiceSpec>) -> ServiceBook {
        let mut b = ServiceBook::default();
        for s in specs {
            b.names.insert(s.name.clone(), portal(&s));
            b.table.insert(Service::carrying(s, None));
        }
        b
    }

    pub fn table(&self) -> &ServiceTable {
        &self.table
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// The specs named `ns/name:...`: the ports of a multi-port service.
    pub fn ports_of<'a>(&'a self, service: &str) -> impl Iterator<Item = &'a String> + 'a {
        let ports = format!("{service}:");
        self.names.range(ports.clone()..).map(|(n, _)| n).take_while(move |n| n.starts_with(&ports))
    }

    /// The spec named `name`, as the table holds it.
    pub fn spec(&self, name: &str) -> Option<&ServiceSpec> {
        let (proto, ip, port) = *self.names.get(name)?;
        self.table.by_cluster_ip(proto.number(), ip, port).map(|s| &s.spec)
    }

    /// Every service spec, by name (the restart state).
    pub fn specs(&self) -> Vec<ServiceSpec> {
        self.names.keys().filter_map(|n| self.spec(n)).cloned().collect()
    }

    /// The NodePorts in use: (protocol number, port).
    pub fn node_ports(&self) -> impl Iterator<Item = (u8, u16)> + '_ {
        self.table.with_node_ports().filter_map(|s| s.spec.node_port.map(|np| (s.spec.protocol.number(), np)))
    }

    /// Checks a delta without changing anything: each spec valid, no two specs of the
    /// result sharing a cluster IP:port or a NodePort. Costs what the delta holds.
    pub fn check(&self, cfg: &Config, d: &Delta) -> Result<(), ControlError> {
        let mut portals: HashMap<Portal, &str> = HashMap::with_capacity(d.put.len());
        let mut node_ports: HashMap<(Protocol, u16), &str> = HashMap::new();
        let put: HashSet<&str> = d.put.iter().map(|s| s.name.as_str()).collect();
        let stays = |name: &str| !d.remove.contains(name) && !put.contains(name);
        for s in &d.put {
            config::check_service(cfg, s).map_err(|error| ControlError::Invalid { what: "service", error })?;
            if let Some(o) = portals.insert(portal(s), &s.name) {
                return Err(ControlError::ServiceClash(o.to_string()));
            }
            let p = s.protocol.number();
            if let Some(o) = self.table.by_cluster_ip(p, s.cluster_ip, s.port)
                && o.spec.name != s.name
                && stays(&o.spec.name)
            {
                return Err(ControlError::ServiceClash(o.spec.name.clone()));
            }
            if let Some(np) = s.node_port {
                if let Some(o) = node_ports.insert((s.protocol, np), &s.name) {
                    return Err(ControlError::ServiceClash(o.to_string()));
                }
                if let Some(o) = self.table.by_node_port(p, np)
                    && o.spec.name != s.name
                    && stays(&o.spec.name)
                {
                    return Err(ControlError::ServiceClash(o.spec.name.clone()));
                }
            }
        }
        Ok(())
    }

    /// Applies a checked delta to the table.
    pub fn apply(&mut self, d: Delta) -> Applied {
        let mut old: HashMap<String, Service> = HashMap::with_capacity(d.remove.len() + d.put.len());
        let names = d.remove.iter().map(String::as_str).chain(d.put.iter().map(|s| s.name.as_str()));
        for name in names.collect::<Vec<_>>() {
            if old.contains_key(name) {
                continue;
            }
            if let Some(s) = self.spec(name).cloned()
                && let Some(o) = self.table.remove(&s)
            {
                self.names.remove(name);
                old.insert(name.to_string(), o);
            }
        }
        let mut node_ports_changed = old.values().any(|o| o.spec.node_port.is_some());
        for s in d.put {
            node_ports_changed |= s.node_port.is_some();
            self.names.insert(s.name.clone(), portal(&s));
            let prev = old.get(&s.name);
            let svc = Service::carrying(s, prev);
            for gone in self.table.insert(svc) {
                // check() allows no displacement of a service that stays.
                tracing::error!(service = %gone.spec.name, "displaced from the service table");
                self.names.remove(&gone.spec.name);
            }
        }
        Applied { old, node_ports_changed }
    }
}
