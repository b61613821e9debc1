//! Reading manifests (YAML or JSON, `List`s included). The fast path decodes each
//! document in one pass of serde into [`Raw`] (the flat form every object is also read
//! back from, in `apply` requests and in etcd), with a hand dispatch on `kind`: no
//! `serde_json::Value` tree, no internally tagged enum, which serde buffers whole
//! before it looks at the tag.
//!
//! A manifest that does not decode this way goes through the general path
//! ([`parse_manifest_general`]), which names the faulty object; so the fast path only
//! ever answers with the very objects the general path gives (the `cluster` fuzz
//! target checks that).

use serde::Deserialize;

use super::{KubeError, Object, Raw, policy};

/// A document's objects (itself, or a `List`'s items), checked; `None` when anything
/// is off (the general path then finds and names it).
fn doc_objects(d: Raw, out: &mut Vec<Object>) -> Option<()> {
    if d.kind.as_deref().is_some_and(|k| k.ends_with("List")) {
        for it in d.items.unwrap_or_default() {
            let o = Object::try_from(it).ok()?;
            o.check().ok()?;
            out.push(o);
        }
        return Some(());
    }
    let o = Object::try_from(d).ok()?;
    o.check().ok()?;
    out.push(o);
    Some(())
}

/// The manifest's objects in one typed pass, or `None` (then the general path decides).
pub fn fast_manifest(text: &str) -> Option<Vec<Object>> {
    let mut out = Vec::new();
    if text.trim_start().starts_with('{') {
        let d: Raw = serde_json::from_str(text).ok()?;
        doc_objects(d, &mut out)?;
    } else {
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            // Through a Value, as the general path reads YAML: the same scalars give the
            // same types (a YAML `name: 123` is a number there, and refused).
            let v = serde_json::Value::deserialize(doc).ok()?;
            if v.is_null() {
                continue;
            }
            doc_objects(Raw::deserialize(v).ok()?, &mut out)?;
        }
    }
    Some(out)
}

/// Parses a manifest: YAML (one or more `---` documents) or JSON, each a Service,
/// Endpoints, EndpointSlice or a `List` of them. Fields ucanal does not use are ignored,
/// as kubectl output carries many. One typed pass when the manifest is right; the
/// general path otherwise, which names what is wrong.
pub fn parse_manifest(text: &str) -> Result<Vec<Object>, KubeError> {
    match fast_manifest(text) {
        Some(objs) => Ok(objs),
        None => parse_manifest_general(text),
    }
}

/// [`parse_manifest`] through a `serde_json::Value` per document: slower, and the
/// reference the fast path must agree with (every error comes from here).
pub fn parse_manifest_general(text: &str) -> Result<Vec<Object>, KubeError> {
    let mut out = Vec::new();
    let docs: Vec<serde_json::Value> = if text.trim_start().starts_with('{') {
        vec![serde_json::from_str(text).map_err(|e| KubeError::Syntax(e.to_string()))?]
    } else {
        let mut v = Vec::new();
        for d in serde_yaml_ng::Deserializer::from_str(text) {
            let doc = serde_json::Value::deserialize(d).map_err(|e| KubeError::Syntax(e.to_string()))?;
            if !doc.is_null() {
                v.push(doc);
            }
        }
        v
    };
    for d in docs {
        push_doc(d, &mut out, 0)?;
    }
    Ok(out)
}

fn push_doc(d: serde_json::Value, out: &mut Vec<Object>, depth: u8) -> Result<(), KubeError> {
    let kind = d.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
    if kind.ends_with("List") && depth == 0 {
        let items = d.get("items").and_then(|i| i.as_array()).cloned().unwrap_or_default();
        for it in items {
            push_doc(it, out, 1)?;
        }
        return Ok(());
    }
    if policy::is_policy(&d) {
        out.push(super::policy_object(d)?);
        return Ok(());
    }
    if !matches!(kind.as_str(), "Service" | "Endpoints" | "EndpointSlice" | "Policy") {
        return Err(KubeError::Kind(kind));
    }
    let name = d.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("?").to_string();
    let mut d = d;
    if kind == "Endpoints"
        && let Some(o) = d.as_object_mut()
    {
        o.entry("subsets").or_insert_with(|| serde_json::json!([]));
    }
    let obj: Object = serde_json::from_value(d).map_err(|e| KubeError::Object {
        kind: kind.clone(),
        name,
        problem: e.to_string(),
    })?;
    obj.check()?;
    out.push(obj);
    Ok(())
}
