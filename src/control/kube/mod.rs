//! Kubernetes objects on this node: the [`store`] of what is applied and the service
//! specs it makes, the parts of a manifest sent in several requests, the `get` listing,
//! and the objects shared through etcd ([`sync`], laid out in [`buckets`]). Applying
//! them to the service table is the daemon's (`state::objects`).

pub mod buckets;
pub mod fields;
pub mod store;
pub mod sync;

pub use store::{Store, objects_of, service_of, spec_of};

use super::policy::PolicyBook;
use crate::api::ObjectKind;
use crate::api::kube::{Object, ObjectList};
use crate::control::error::ControlError;

/// The node's objects, and where `apply` writes them when the node is in a cluster.
pub struct KubeBook {
    pub store: Store,
    /// The cluster's objects in etcd, once the node joined one.
    pub shared: Option<sync::ObjectStore>,
    /// Network policy: the policy objects, the pods they select and this node's
    /// compiled table.
    pub policy: PolicyBook,
}

impl KubeBook {
    pub fn new(policy: PolicyBook) -> KubeBook {
        KubeBook { store: Store::default(), shared: None, policy }
    }
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
    pub fn add(&mut self, objects: Vec<Object>, delete: bool, more: bool) -> Result<Option<Vec<Object>>, ControlError> {
        let held = std::mem::take(self);
        if held.delete.is_some_and(|d| d != delete) {
            return Err(ControlError::MixedParts);
        }
        if held.objects.len() + objects.len() > MAX_HELD {
            return Err(ControlError::TooManyObjects(MAX_HELD));
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
pub fn listing(objs: &[std::sync::Arc<Object>], kind: ObjectKind) -> ObjectList {
    let items = objs
        .iter()
        .map(|o| &**o)
        .filter(|o| match kind.policy_dirs() {
            Some(dirs) => {
                matches!(o, Object::Policy { .. }) && dirs.iter().any(|d| o.key().starts_with(&format!("{d}/")))
            }
            None if kind == ObjectKind::Services => matches!(o, Object::Service { .. }),
            None => matches!(o, Object::Endpoints { .. } | Object::EndpointSlice { .. }),
        })
        .cloned()
        .collect();
    ObjectList::new(items)
}
