//! Policy objects from their manifests (YAML or JSON, as `kubectl get -o yaml` and
//! `calicoctl get -o yaml` print them): every field read through a cursor that knows its
//! path, so an error names the field (`spec.ingress[0].from[1].ipBlock.except[0]`) and
//! what is wrong with it. A field that would change what is enforced and that ucanal
//! does not implement is refused by name ([`Fault::Unsupported`]); an unknown field in a
//! policy is refused as a typo would be ([`Fault::Unknown`]). Pure: text in, objects out.

mod calico;
mod cursor;
mod k8s;

use serde::Deserialize;
use serde_json::Value;

pub use cursor::Fault;
use cursor::{FieldError, field, root};

use super::model::Object;

/// A manifest that does not decode: which object, which field, what fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("manifest: {0}")]
    Syntax(String),
    #[error("{object}: {field} {fault}")]
    Field { object: String, field: String, fault: Fault },
}

impl DecodeError {
    /// The faulty field's path (`None` for a syntax error).
    pub fn field(&self) -> Option<&str> {
        match self {
            DecodeError::Field { field, .. } => Some(field),
            DecodeError::Syntax(_) => None,
        }
    }
    pub fn fault(&self) -> Option<&Fault> {
        match self {
            DecodeError::Field { fault, .. } => Some(fault),
            DecodeError::Syntax(_) => None,
        }
    }
}

/// One object from its manifest.
pub fn decode(v: &Value) -> Result<Object, DecodeError> {
    let root = root(v);
    let name = describe(v);
    let named = |e: FieldError| DecodeError::Field { object: name.clone(), field: e.field, fault: e.fault };
    let api = field(root, "apiVersion", |a| a.str()).map_err(named)?.unwrap_or("");
    let kind = field(root, "kind", |a| a.str()).map_err(named)?.unwrap_or("");
    match (api, kind) {
        ("v1", "Namespace") => k8s::namespace(root).map(Object::Namespace),
        ("v1", "Pod") => k8s::pod(root).map(Object::Pod),
        ("networking.k8s.io/v1", "NetworkPolicy") => k8s::network_policy(root).map(Object::NetworkPolicy),
        ("projectcalico.org/v3", "NetworkPolicy" | "GlobalNetworkPolicy") => {
            calico::policy(root, kind == "GlobalNetworkPolicy").map(Object::Calico)
        }
        _ => Err(FieldError {
            field: "kind".into(),
            fault: Fault::Unsupported(format!(
                "'{kind}' of '{api}' is not a policy object (Namespace, Pod, NetworkPolicy of networking.k8s.io/v1 \
                 or projectcalico.org/v3, GlobalNetworkPolicy)"
            )),
        }),
    }
    .map_err(named)
}

/// `Kind namespace/name` of a manifest, for its errors (what can be read of it).
fn describe(v: &Value) -> String {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str);
    let kind = s("/kind").unwrap_or("object");
    match (s("/metadata/namespace"), s("/metadata/name")) {
        (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
        (None, Some(n)) => format!("{kind} {n}"),
        _ => kind.to_string(),
    }
}

/// Every object of a manifest: YAML documents or one JSON value, `List`s unpacked.
pub fn decode_all(text: &str) -> Result<Vec<Object>, DecodeError> {
    let syntax = |e: &dyn std::fmt::Display| DecodeError::Syntax(e.to_string());
    let docs: Vec<Value> = if text.trim_start().starts_with('{') {
        vec![serde_json::from_str(text).map_err(|e| syntax(&e))?]
    } else {
        let mut v = Vec::new();
        for d in serde_yaml_ng::Deserializer::from_str(text) {
            let doc = Value::deserialize(d).map_err(|e| syntax(&e))?;
            if !doc.is_null() {
                v.push(doc);
            }
        }
        v
    };
    let mut out = Vec::new();
    for d in &docs {
        match d.get("items").and_then(Value::as_array) {
            Some(items) if d.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) => {
                for it in items {
                    out.push(decode(it)?);
                }
            }
            _ => out.push(decode(d)?),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
