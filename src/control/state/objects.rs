//! Kubernetes objects on this node: `apply`/`delete` of manifests (locally, or through
//! etcd when the node is in a cluster) and the updates the etcd watch brings. A batch of
//! objects is one delta of the service table: it costs the services it touches.

use std::collections::{BTreeSet, HashMap};

use super::Daemon;
use crate::api::Command;
use crate::api::kube::Object;
use crate::control::error::ControlError;
use crate::control::kube::Store;
use crate::control::kube::sync::ObjectUpdate;
use crate::control::services::Delta;

impl Daemon {
    /// Applies (or deletes) objects on this node only; nothing changes on an error.
    pub async fn apply_objects(&mut self, objs: Vec<Object>, delete: bool) -> Result<String, ControlError> {
        let n = objs.len();
        let mut undo: Vec<(String, Option<Object>)> = Vec::with_capacity(n);
        let mut touched = BTreeSet::new();
        let policy: Vec<Object> = objs.iter().filter(|o| matches!(o, Object::Policy { .. })).cloned().collect();
        for o in objs {
            if !matches!(o, Object::Policy { .. }) {
                touched.insert(o.service());
            }
            let key = o.key();
            let old = if delete { self.kube.store.remove(&key) } else { self.kube.store.put(o) };
            undo.push((key, old));
        }
        let r = self.respec(&touched).await;
        if let Err(e) = r {
            for (key, old) in undo.into_iter().rev() {
                match old {
                    Some(o) => self.kube.store.put(o),
                    None => self.kube.store.remove(&key),
                };
            }
            return Err(e);
        }
        if self.policy_objects(&policy, delete) {
            self.publish();
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
        let mut st = Store::default();
        let mut touched = BTreeSet::new();
        for o in objs {
            touched.insert(o.service());
        }
        for t in &touched {
            for kind in ["services", "endpoints"] {
                if let Some(o) = self.kube.store.get(&format!("{kind}/{t}")) {
                    st.put(o.clone());
                }
            }
            for o in self.kube.store.slices_of(t) {
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
        self.services.check(&self.cfg, &self.delta(&st, &touched))
    }

    /// The objects a `service`/`endpoint` command writes through etcd (`true`: delete
    /// them), or `None` when the service is the node's own (from its config).
    pub(crate) fn service_objects(&self, c: &Command) -> Result<Option<(Vec<Object>, bool)>, ControlError> {
        let name = match c {
            Command::ServiceSet { service } => &service.name,
            Command::ServiceDel { name } => name,
            Command::EndpointAdd { service, .. } | Command::EndpointDel { service, .. } => service,
            _ => return Ok(None),
        };
        let from_etcd = self.kube.store.get(&format!("services/{}", crate::control::kube::service_of(name))).is_some();
        if !from_etcd && self.services.contains(name) {
            return Ok(None);
        }
        let (spec, delete) = match c {
            Command::ServiceSet { service } => (service.clone(), false),
            Command::ServiceDel { .. } => {
                (self.services.spec(name).cloned().ok_or_else(|| ControlError::NoService(name.to_string()))?, true)
            }
            Command::EndpointAdd { endpoint, .. } => (self.with_endpoint(name, endpoint, true)?, false),
            Command::EndpointDel { endpoint, .. } => (self.with_endpoint(name, endpoint, false)?, false),
            _ => return Ok(None),
        };
        Ok(Some((crate::control::kube::objects_of(&spec)?, delete)))
    }

    /// The change of the service table that makes the specs of `touched` services what
    /// `st` says: their present specs out, `st`'s in.
    fn delta(&self, st: &Store, touched: &BTreeSet<String>) -> Delta {
        let mut d = Delta::default();
        for t in touched {
            if self.services.contains(t) {
                d.remove.insert(t.clone());
            }
            d.remove.extend(self.services.ports_of(t).cloned());
            d.put.extend(st.specs(t));
        }
        d
    }

    /// Recomputes the specs of `touched` services from the node's objects and publishes.
    async fn respec(&mut self, touched: &BTreeSet<String>) -> Result<(), ControlError> {
        let d = self.delta(&self.kube.store, touched);
        self.change_services(d).await
    }

    /// Applies what the etcd watch brought: a whole snapshot or a batch of changes.
    /// Objects that do not apply here are logged and left out, never half-applied.
    pub(crate) async fn objects_update(&mut self, batch: Vec<ObjectUpdate>) {
        let t = std::time::Instant::now();
        let updates = batch.len();
        let mut touched = BTreeSet::new();
        // Policy objects touched (key -> the object as last seen, to delete it by).
        let mut policy: HashMap<String, Object> = HashMap::new();
        let is_policy = |o: &Object| matches!(o, Object::Policy { .. });
        for u in batch {
            match u {
                ObjectUpdate::Snapshot(objs) => {
                    touched = self.kube.store.services();
                    let old = std::mem::take(&mut self.kube.store);
                    policy.extend(old.iter().filter(|o| is_policy(o)).map(|o| (o.key(), o.clone())));
                    for o in objs {
                        if is_policy(&o) {
                            policy.insert(o.key(), o.clone());
                        } else {
                            touched.insert(o.service());
                        }
                        self.kube.store.put(o);
                    }
                }
                ObjectUpdate::Changes { put, deleted } => {
                    for k in deleted {
                        match self.kube.store.get(&k).filter(|o| is_policy(o)) {
                            Some(o) => {
                                policy.insert(k.clone(), o.clone());
                                self.kube.store.remove_key(&k);
                            }
                            None => touched.extend(self.kube.store.remove_key(&k)),
                        }
                    }
                    for o in put {
                        if is_policy(&o) {
                            policy.insert(o.key(), o.clone());
                        } else {
                            touched.insert(o.service());
                        }
                        self.kube.store.put(o);
                    }
                }
            }
        }
        touched.retain(|t| !policy.contains_key(t));
        if !policy.is_empty() {
            let (mut put, mut gone) = (Vec::new(), Vec::new());
            for (k, o) in policy {
                match self.kube.store.get(&k) {
                    Some(now) => put.push(now.clone()),
                    None => gone.push(o),
                }
            }
            self.policy_objects(&gone, true);
            self.policy_objects(&put, false);
            self.publish();
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
