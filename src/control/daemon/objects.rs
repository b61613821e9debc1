//! Kubernetes objects on this node: `apply`/`delete` of manifests (locally, or through
//! etcd when the node is in a cluster) and the updates the etcd watch brings. A batch of
//! objects costs one table rebuild, however many services it touches.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddrV4;

use super::{ControlError, Daemon};
use crate::control::config;
use crate::control::kube::{self, Object};
use crate::core::nat::service::ServiceSpec;

impl Daemon {
    /// Applies (or deletes) objects on this node only; nothing changes on an error.
    pub async fn apply_objects(&mut self, objs: Vec<Object>, delete: bool) -> Result<String, ControlError> {
        let n = objs.len();
        let mut undo: Vec<(String, Option<Object>)> = Vec::with_capacity(n);
        let mut touched = BTreeSet::new();
        for o in objs {
            touched.insert(o.service());
            let key = o.key();
            let old = if delete { self.kube.remove(&key) } else { self.kube.put(o) };
            undo.push((key, old));
        }
        if let Err(e) = self.respec(&touched).await {
            for (key, old) in undo.into_iter().rev() {
                match old {
                    Some(o) => self.kube.put(o),
                    None => self.kube.remove(&key),
                };
            }
            return Err(e);
        }
        Ok(format!(
            "{n} object(s) {}, {} service(s) changed",
            if delete { "deleted" } else { "applied" },
            touched.len()
        ))
    }

    /// Checks that objects would apply here (the same checks as `apply_objects`) without
    /// changing anything: a node writing to etcd refuses bad objects before every node
    /// sees them.
    pub fn check_objects(&self, objs: &[Object], delete: bool) -> Result<(), ControlError> {
        let mut st = kube::Store::default();
        let mut touched = BTreeSet::new();
        for o in objs {
            touched.insert(o.service());
        }
        for t in &touched {
            for kind in ["services", "endpoints"] {
                if let Some(o) = self.kube.get(&format!("{kind}/{t}")) {
                    st.put(o.clone());
                }
            }
        }
        for o in
            self.kube.iter().filter(|o| matches!(o, Object::EndpointSlice { .. }) && touched.contains(&o.service()))
        {
            st.put(o.clone());
        }
        for o in objs {
            if delete {
                st.remove(&o.key());
            } else {
                st.put(o.clone());
            }
        }
        self.new_services(&st, &touched).map(|_| ())
    }

    /// The services after replacing those of `touched` with what `st` makes of them.
    fn new_services(&self, st: &kube::Store, touched: &BTreeSet<String>) -> Result<Vec<ServiceSpec>, ControlError> {
        let mut new: Vec<ServiceSpec> =
            self.cfg.services.iter().filter(|s| !touched.contains(kube::service_of(&s.name))).cloned().collect();
        let mut vips: HashMap<(u8, std::net::Ipv4Addr, u16), usize> = HashMap::with_capacity(new.len());
        let mut nps: HashMap<(u8, u16), usize> = HashMap::new();
        for (i, s) in new.iter().enumerate() {
            vips.insert((s.protocol.number(), s.cluster_ip, s.port), i);
            if let Some(np) = s.node_port {
                nps.insert((s.protocol.number(), np), i);
            }
        }
        for t in touched {
            for s in st.specs(t) {
                config::check_service(&self.cfg, &s)
                    .map_err(|error| ControlError::Invalid { what: "service", error })?;
                let i = new.len();
                let p = s.protocol.number();
                if let Some(j) = vips.insert((p, s.cluster_ip, s.port), i) {
                    return Err(ControlError::ServiceClash(new[j].name.clone()));
                }
                if let Some(np) = s.node_port
                    && let Some(j) = nps.insert((p, np), i)
                {
                    return Err(ControlError::ServiceClash(new[j].name.clone()));
                }
                new.push(s);
            }
        }
        Ok(new)
    }

    /// Recomputes the specs of `touched` services from the node's objects and publishes.
    async fn respec(&mut self, touched: &BTreeSet<String>) -> Result<(), ControlError> {
        let new = self.new_services(&self.kube, touched)?;
        let now: HashMap<&str, &ServiceSpec> =
            new.iter().filter(|s| touched.contains(kube::service_of(&s.name))).map(|s| (s.name.as_str(), s)).collect();
        let removed: Vec<(ServiceSpec, Vec<SocketAddrV4>)> = self
            .cfg
            .services
            .iter()
            .filter(|s| touched.contains(kube::service_of(&s.name)))
            .map(|old| {
                let n = now.get(old.name.as_str());
                let gone = old.endpoints.iter().filter(|e| n.is_none_or(|n| !n.endpoints.contains(e))).copied();
                (old.clone(), gone.collect())
            })
            .filter(|(_, gone): &(ServiceSpec, Vec<SocketAddrV4>)| !gone.is_empty())
            .collect();
        // Counters of services and endpoints that are gone go with them.
        self.hits.retain(|(n, ep), _| {
            !touched.contains(kube::service_of(n))
                || now.get(n.as_str()).is_some_and(|s| ep.is_none_or(|e| s.endpoints.contains(&e)))
        });
        self.cfg.services = new;
        self.rebuild();
        for (s, gone) in &removed {
            self.flush_endpoints(s, gone);
        }
        self.sync_steers().await?;
        Ok(())
    }

    /// Applies what the etcd watch brought: a whole snapshot or a batch of changes.
    /// Objects that do not apply here are logged and left out, never half-applied.
    pub(super) async fn objects_update(&mut self, batch: Vec<crate::control::cluster::objects::ObjectUpdate>) {
        use crate::control::cluster::objects::ObjectUpdate;
        let t = std::time::Instant::now();
        let updates = batch.len();
        let mut touched = BTreeSet::new();
        for u in batch {
            match u {
                ObjectUpdate::Snapshot(objs) => {
                    touched = self.kube.services();
                    self.kube = kube::Store::default();
                    for o in objs {
                        touched.insert(o.service());
                        self.kube.put(o);
                    }
                }
                ObjectUpdate::Changes { put, deleted } => {
                    for k in deleted {
                        touched.extend(self.kube.remove_key(&k));
                    }
                    for o in put {
                        touched.insert(o.service());
                        self.kube.put(o);
                    }
                }
            }
        }
        let t1 = t.elapsed();
        if let Err(e) = self.respec(&touched).await {
            tracing::error!("objects from etcd do not apply here: {e}; keeping the previous services");
        }
        tracing::info!(
            updates,
            services = touched.len(),
            store_ms = t1.as_millis() as u64,
            total_ms = t.elapsed().as_millis() as u64,
            "objects from etcd applied"
        );
    }

    /// `get services` / `get endpoints`: the objects as stored.
    pub(super) fn get_objects(&self, kind: &str) -> serde_json::Value {
        let items: Vec<&Object> = self
            .kube
            .iter()
            .filter(|o| match kind {
                "services" => matches!(o, Object::Service { .. }),
                _ => matches!(o, Object::Endpoints { .. } | Object::EndpointSlice { .. }),
            })
            .collect();
        serde_json::json!({ "kind": "List", "items": items })
    }
}
