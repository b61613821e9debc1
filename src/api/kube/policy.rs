//! Policy objects among the manifests: `Namespace`, `Pod`, `NetworkPolicy`
//! (networking.k8s.io/v1) and Calico's `NetworkPolicy` / `GlobalNetworkPolicy`
//! (projectcalico.org/v3). They travel and are stored as their manifest (a
//! [`Object::Policy`]); the policy engine's decoders check them, naming the faulty field,
//! before anything is sent or stored, and read them where they apply.

use serde_json::Value;

use super::{KubeError, Meta, Object};
use crate::core::policy::decode::{self, DecodeError};
use crate::core::policy::model;

/// The directory of a policy kind in the store (its `kubectl get` name).
pub fn policy_dir(api: &str, kind: &str) -> Option<&'static str> {
    Some(match (api, kind) {
        ("v1", "Namespace") => "namespaces",
        ("v1", "Pod") => "pods",
        ("networking.k8s.io/v1", "NetworkPolicy") => "networkpolicies",
        ("projectcalico.org/v3", "NetworkPolicy") => "networkpolicies.projectcalico.org",
        ("projectcalico.org/v3", "GlobalNetworkPolicy") => "globalnetworkpolicies.projectcalico.org",
        _ => return None,
    })
}

/// Whether a manifest's `apiVersion`/`kind` is a policy object.
pub fn is_policy(v: &Value) -> bool {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    policy_dir(s("apiVersion"), s("kind")).is_some()
}

/// Decodes a policy manifest (every field checked) into the engine's object.
pub fn decode_policy(manifest: &Value) -> Result<model::Object, DecodeError> {
    decode::decode(manifest)
}

/// A policy manifest as a stored object: checked, named by what it decodes to.
pub fn policy_object(manifest: Value) -> Result<Object, KubeError> {
    let o = decode_policy(&manifest).map_err(KubeError::Policy)?;
    let metadata = meta_of(&o);
    Ok(Object::Policy { metadata, manifest })
}

/// The name and namespace (empty for cluster-wide kinds) of a decoded object.
fn meta_of(o: &model::Object) -> Meta {
    let (namespace, name) = match o {
        model::Object::Namespace(n) => (String::new(), n.name.clone()),
        model::Object::Pod(p) => (p.namespace.clone(), p.name.clone()),
        model::Object::NetworkPolicy(p) => (p.namespace.clone(), p.name.clone()),
        model::Object::Calico(p) => (p.namespace.clone().unwrap_or_default(), p.name.clone()),
    };
    Meta { name, namespace, labels: Default::default() }
}

/// The checks of a stored policy object: it decodes, and its name is its manifest's.
pub(super) fn check(metadata: &Meta, manifest: &Value) -> Result<(), KubeError> {
    let o = decode_policy(manifest).map_err(KubeError::Policy)?;
    let m = meta_of(&o);
    if m.name != metadata.name || m.namespace != metadata.namespace {
        return Err(KubeError::Object {
            kind: "Policy".into(),
            name: format!("{}/{}", metadata.namespace, metadata.name),
            problem: format!("metadata does not name its manifest's object {}", o.describe()),
        });
    }
    Ok(())
}

/// The store directory of a policy object's manifest.
pub(super) fn dir(manifest: &Value) -> &'static str {
    let s = |k: &str| manifest.get(k).and_then(Value::as_str).unwrap_or("");
    policy_dir(s("apiVersion"), s("kind")).unwrap_or("policies")
}
