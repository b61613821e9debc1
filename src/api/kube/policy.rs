//! Policy objects among the manifests: `Namespace`, `Pod`, `NetworkPolicy`
//! (networking.k8s.io/v1) and Calico's `NetworkPolicy` / `GlobalNetworkPolicy`
//! (projectcalico.org/v3). They travel and are stored as their manifest (a
//! `Object::Policy`); the policy engine's decoders check them, naming the faulty field,
//! before anything is sent or stored, and read them where they apply.

use serde_json::Value;

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

/// The namespace (empty for cluster-wide kinds) and name of a decoded object.
pub fn ident(o: &model::Object) -> (String, String) {
    match o {
        model::Object::Namespace(n) => (String::new(), n.name.clone()),
        model::Object::Pod(p) => (p.namespace.clone(), p.name.clone()),
        model::Object::NetworkPolicy(p) => (p.namespace.clone(), p.name.clone()),
        model::Object::Calico(p) => (p.namespace.clone().unwrap_or_default(), p.name.clone()),
    }
}

/// The store directory of a policy object's manifest.
pub fn dir(manifest: &Value) -> &'static str {
    let s = |k: &str| manifest.get(k).and_then(Value::as_str).unwrap_or("");
    policy_dir(s("apiVersion"), s("kind")).unwrap_or("policies")
}
