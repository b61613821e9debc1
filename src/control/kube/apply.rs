//! Kubernetes objects on this node: `apply`/`delete` of manifests (locally, or through
//! etcd when the node is in a cluster) and the updates the etcd watch brings. A batch of
//! objects is one delta of the service table: it costs the services it touches.

use std::collections::BTreeSet;

use crate::api::kube::{self, Object};
use crate::control::daemon::{ControlError, Daemon};
use crate::control::services::Delta;

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
        let r = self.respec(&touched).await;
        if let Err(e) = r {
            for (key, old) in undo.into_iter().rev() {
                match old {
                    Some(o) => self.kube.put(o),
                    None => self.kube.remove(&key),
                };
            }
            return Err(e);
        }
        let big = n >= 10_000;
        drop(undo);
        if big {
            settle_allocator();
        }
        Ok(format!(
            "{n} object(s) {}, {} service(s) changed",
            if delete { "deleted" } else { "applied" },
            touched.len()
        ))
    }

    /// Checks that objects would apply here (the same checks as `apply_objects`) without
    /// changing anything: a node writing to etcd refuses bad objects before every node
    /// sees them. Costs what the objects touch, not the table.
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
            for o in self.kube.slices_of(t) {
                st.put(o.clone());
            }
        }
        for o in objs {
            if delete {
                st.remove(&o.key());
            } else {
                st.put(o.clone());
            }
        }
        self.check_delta(&self.delta(&st, &touched))
    }

    /// The objects a `service`/`endpoint` request writes through etcd (`true`: delete
    /// them), or `None` when the service is the node's own (from its config).
    pub(crate) fn service_objects(
        &self,
        req: &crate::api::Request,
    ) -> Result<Option<(Vec<Object>, bool)>, ControlError> {
        use crate::api::Request;
        let name = match req {
            Request::ServiceSet { service } => &service.name,
            Request::ServiceDel { name } => name,
            Request::EndpointAdd { service, .. } | Request::EndpointDel { service, .. } => service,
            _ => return Ok(None),
        };
        let svc = kube::service_of(name);
        let from_etcd = self.kube.get(&format!("services/{svc}")).is_some();
        if !from_etcd && self.spec(name).is_some() {
            return Ok(None);
        }
        let current = || self.spec(name).cloned().ok_or_else(|| ControlError::NoService(name.to_string()));
        let (spec, delete) = match req {
            Request::ServiceSet { service } => (service.clone(), false),
            Request::ServiceDel { .. } => (current()?, true),
            Request::EndpointAdd { endpoint, .. } => {
                let mut s = current()?;
                if s.endpoints.contains(endpoint) {
                    return Err(ControlError::EndpointExists { service: name.clone(), endpoint: *endpoint });
                }
                s.endpoints.push(*endpoint);
                (s, false)
            }
            Request::EndpointDel { endpoint, .. } => {
                let mut s = current()?;
                if !s.endpoints.contains(endpoint) {
                    return Err(ControlError::NotAnEndpoint { service: name.clone(), endpoint: *endpoint });
                }
                s.endpoints.retain(|e| e != endpoint);
                (s, false)
            }
            _ => return Ok(None),
        };
        Ok(Some((kube::objects_of(&spec)?, delete)))
    }

    /// The change of the service table that makes the specs of `touched` services what
    /// `st` says: their present specs out, `st`'s in.
    fn delta(&self, st: &kube::Store, touched: &BTreeSet<String>) -> Delta {
        let mut d = Delta::default();
        for t in touched {
            if self.service_names.contains_key(t.as_str()) {
                d.remove.insert(t.clone());
            }
            let ports = format!("{t}:");
            let named = self.service_names.range(ports.clone()..).take_while(|(n, _)| n.starts_with(&ports));
            d.remove.extend(named.map(|(n, _)| n.clone()));
            d.put.extend(st.specs(t));
        }
        d
    }

    /// Recomputes the specs of `touched` services from the node's objects and publishes.
    async fn respec(&mut self, touched: &BTreeSet<String>) -> Result<(), ControlError> {
        let d = self.delta(&self.kube, touched);
        self.change_services(d).await
    }

    /// Applies what the etcd watch brought: a whole snapshot or a batch of changes.
    /// Objects that do not apply here are logged and left out, never half-applied.
    pub(crate) async fn objects_update(&mut self, batch: Vec<crate::control::kube::sync::ObjectUpdate>) {
        use crate::control::kube::sync::ObjectUpdate;
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
        // What the watch changed goes to the state journal too (with --keep-on-exit).
        self.save_state();
        if touched.len() >= 10_000 {
            settle_allocator();
        }
        tracing::info!(
            updates,
            services = touched.len(),
            table = self.services.len(),
            store_us = t1.as_micros() as u64,
            total_us = t.elapsed().as_micros() as u64,
            "objects from etcd applied"
        );
    }
}

/// A big apply frees hundreds of thousands of small temporaries at once; glibc keeps
/// them in its fast and unsorted bins and sorts them at the next allocation that misses,
/// which made the first change after a 100,000-service apply take 10-40 ms instead of
/// 0.6. Do that work here, as part of the big apply: consolidate every arena, then one
/// allocation too big for the small bins, which sorts this thread's unsorted bin.
fn settle_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only reorganises glibc's free lists; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
    drop(std::hint::black_box(Vec::<u8>::with_capacity(64 << 10)));
}

/// The most objects the parts of one manifest may hold in the daemon (20 times the
/// issue's 100,000 services with their Endpoints).
pub const MAX_HELD: usize = 4_000_000;

/// The parts of one manifest sent on one connection (`apply` with `more`), held until
/// the last arrives: then the whole manifest applies as one change.
#[derive(Debug, Default)]
pub struct Parts {
    objects: Vec<Object>,
    delete: Option<bool>,
    parts: usize,
}

impl Parts {
    /// Adds a part: the manifest's objects when it was the last one. A part that
    /// does not fit (too many objects, apply mixed with delete) drops what was held.
    pub fn add(&mut self, objects: Vec<Object>, delete: bool, more: bool) -> Result<Option<Vec<Object>>, String> {
        let held = std::mem::take(self);
        if held.delete.is_some_and(|d| d != delete) {
            return Err("the parts of one manifest mix apply and delete; nothing applied".into());
        }
        if held.objects.len() + objects.len() > MAX_HELD {
            return Err(format!("a manifest of more than {MAX_HELD} objects; nothing applied"));
        }
        let mut all = held.objects;
        if all.is_empty() {
            all = objects;
        } else {
            all.extend(objects);
        }
        if !more {
            return Ok(Some(all));
        }
        *self = Parts { objects: all, delete: Some(delete), parts: held.parts + 1 };
        Ok(None)
    }

    /// How many parts are held.
    pub fn held(&self) -> usize {
        self.parts
    }
}

/// `get services` / `get endpoints`: the objects as stored, from a snapshot of the
/// store (built without the daemon's lock).
pub(crate) fn listing(objs: &[std::sync::Arc<Object>], kind: &str) -> serde_json::Value {
    let items: Vec<&Object> = objs
        .iter()
        .map(|o| &**o)
        .filter(|o| match kind {
            "services" => matches!(o, Object::Service { .. }),
            _ => matches!(o, Object::Endpoints { .. } | Object::EndpointSlice { .. }),
        })
        .collect();
    serde_json::json!({ "kind": "List", "items": items })
}
