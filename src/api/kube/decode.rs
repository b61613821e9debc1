//! The fast decoding of objects: one pass of serde into flat typed structs, with a
//! hand dispatch on `kind` (no `serde_json::Value` tree, no internally tagged enum, which
//! serde buffers whole before it looks at the tag). It is used for manifests, for the
//! `apply` requests the daemon reads and for the objects stored in etcd.
//!
//! A manifest that does not decode this way goes through the general path
//! ([`super::parse_manifest_general`]), which names the faulty object; so the fast path
//! only ever answers with the very objects the general path gives (the `cluster` fuzz
//! target checks that).

use serde::Deserialize;

use super::{EndpointPort, Meta, Object, ServiceBody, SliceEndpoint, Subset};

/// Every field any object kind (or a `List`) has, flat: `kind` says which apply.
#[derive(Deserialize)]
pub(super) struct Raw {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<Meta>,
    #[serde(default)]
    spec: Option<ServiceBody>,
    #[serde(default)]
    subsets: Option<Vec<Subset>>,
    #[serde(default)]
    endpoints: Option<Vec<SliceEndpoint>>,
    #[serde(default)]
    ports: Option<Vec<EndpointPort>>,
    #[serde(default)]
    items: Option<Vec<Raw>>,
}

/// Why a [`Raw`] is not an object (the general path says it better, naming the object).
#[derive(Debug)]
pub struct NotAnObject(&'static str);

impl std::fmt::Display for NotAnObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl TryFrom<Raw> for Object {
    type Error = NotAnObject;
    fn try_from(r: Raw) -> Result<Object, NotAnObject> {
        let metadata = r.metadata.ok_or(NotAnObject("missing field `metadata`"))?;
        match r.kind.as_deref() {
            Some("Service") => {
                Ok(Object::Service { metadata, spec: r.spec.ok_or(NotAnObject("missing field `spec`"))? })
            }
            Some("Endpoints") => Ok(Object::Endpoints { metadata, subsets: r.subsets.unwrap_or_default() }),
            Some("EndpointSlice") => Ok(Object::EndpointSlice {
                metadata,
                endpoints: r.endpoints.ok_or(NotAnObject("missing field `endpoints`"))?,
                ports: r.ports.ok_or(NotAnObject("missing field `ports`"))?,
            }),
            _ => Err(NotAnObject("kind is not Service, Endpoints or EndpointSlice")),
        }
    }
}

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
pub(super) fn fast_manifest(text: &str) -> Option<Vec<Object>> {
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
