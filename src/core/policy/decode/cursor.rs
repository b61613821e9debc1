//! The decoders' cursor: a value and its path in the object, so that every fault names
//! its field (`spec.ingress[0].from[1].ipBlock.except[0]`), and the API's value checks
//! (names, labels, ports, CIDRs) every decoder shares.

use serde_json::{Map, Value};

use crate::core::policy::model::Labels;

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Missing,
    /// Of the wrong JSON type: the type wanted.
    Type(&'static str),
    /// Not a field of the object.
    Unknown,
    /// A field (or value) ucanal does not enforce, refused rather than ignored.
    Unsupported(String),
    /// A value that does not validate.
    Invalid(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Missing => f.write_str("is required"),
            Fault::Type(t) => write!(f, "must be {t}"),
            Fault::Unknown => f.write_str("is not a field of this object"),
            Fault::Unsupported(why) => write!(f, "is not supported by ucanal: {why}"),
            Fault::Invalid(why) => f.write_str(why),
        }
    }
}

/// A fault at a path, before the object it belongs to is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub field: String,
    pub fault: Fault,
}

pub(crate) type Res<T> = Result<T, FieldError>;

/// A value and where it is in the object.
#[derive(Clone, Copy)]
pub(crate) struct At<'v, 'p> {
    pub v: &'v Value,
    path: &'p str,
}

impl<'v> At<'v, '_> {
    pub fn err(&self, fault: Fault) -> FieldError {
        FieldError { field: self.path.to_string(), fault }
    }
    pub fn invalid(&self, why: impl Into<String>) -> FieldError {
        self.err(Fault::Invalid(why.into()))
    }
    pub fn path(&self) -> &str {
        self.path
    }
    pub fn obj(&self) -> Res<&'v Map<String, Value>> {
        self.v.as_object().ok_or_else(|| self.err(Fault::Type("an object")))
    }
    pub fn str(&self) -> Res<&'v str> {
        self.v.as_str().ok_or_else(|| self.err(Fault::Type("a string")))
    }
    pub fn bool(&self) -> Res<bool> {
        self.v.as_bool().ok_or_else(|| self.err(Fault::Type("true or false")))
    }
    pub fn list(&self) -> Res<&'v [Value]> {
        self.v.as_array().map(Vec::as_slice).ok_or_else(|| self.err(Fault::Type("a list")))
    }
    /// Refuses any key not in `known`, and any in `unsupported` (with its reason).
    pub fn keys(&self, known: &[&str], unsupported: &[(&str, &str)]) -> Res<()> {
        for (k, v) in self.obj()? {
            if let Some((_, why)) = unsupported.iter().find(|(u, _)| u == k)
                && !is_empty(v)
            {
                return Err(FieldError { field: join(self.path, k), fault: Fault::Unsupported((*why).into()) });
            }
            if !known.contains(&k.as_str()) && !unsupported.iter().any(|(u, _)| u == k) {
                return Err(FieldError { field: join(self.path, k), fault: Fault::Unknown });
            }
        }
        Ok(())
    }
}

/// A null, `false`, empty string, list or object: what an unset field looks like.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) => false,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// Runs `f` on the field `key` of `at` (absent and null are `None`), with the field's path.
pub(crate) fn field<'v, T>(at: At<'v, '_>, key: &str, f: impl FnOnce(At<'v, '_>) -> Res<T>) -> Res<Option<T>> {
    match at.v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let path = join(at.path, key);
            f(At { v, path: &path }).map(Some)
        }
    }
}

/// As [`field`], for a required field.
pub(crate) fn required<'v, T>(at: At<'v, '_>, key: &str, f: impl FnOnce(At<'v, '_>) -> Res<T>) -> Res<T> {
    field(at, key, f)?.ok_or_else(|| FieldError { field: join(at.path, key), fault: Fault::Missing })
}

/// Runs `f` on each item of the list `at`, with `path[i]`.
pub(crate) fn items<'v, T>(at: At<'v, '_>, mut f: impl FnMut(At<'v, '_>) -> Res<T>) -> Res<Vec<T>> {
    let mut out = Vec::new();
    for (i, v) in at.list()?.iter().enumerate() {
        let path = format!("{}[{i}]", at.path);
        out.push(f(At { v, path: &path })?);
    }
    Ok(out)
}

/// As [`items`] on the field `key` (absent = empty).
pub(crate) fn list_field<'v, T>(at: At<'v, '_>, key: &str, f: impl FnMut(At<'v, '_>) -> Res<T>) -> Res<Vec<T>> {
    Ok(field(at, key, |a| items(a, f))?.unwrap_or_default())
}

/// A DNS-1123 label (a namespace's name): 1-63 of `a-z0-9-`, alphanumeric at both ends.
pub(crate) fn check_dns_label(at: At, s: &str) -> Res<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok { Ok(()) } else { Err(at.invalid(format!("'{s}' is not a DNS-1123 label (a-z, 0-9, '-', at most 63)"))) }
}

/// A DNS-1123 subdomain (an object's name): dot-separated labels, at most 253.
pub(crate) fn check_dns_subdomain(at: At, s: &str) -> Res<()> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok { Ok(()) } else { Err(at.invalid(format!("'{s}' is not a DNS-1123 subdomain"))) }
}

/// A label name or value part: at most 63 of `A-Za-z0-9-_.`, alphanumeric at both ends.
fn label_part_ok(s: &str) -> bool {
    s.len() <= 63
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && s.bytes().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|c| c.is_ascii_alphanumeric())
}

/// `metadata.labels` (or `matchLabels`): keys `[prefix/]name`, values at most 63.
pub(crate) fn labels(at: At) -> Res<Labels> {
    let mut out = Labels::new();
    for (k, v) in at.obj()? {
        let path = join(at.path(), k);
        let here = At { v, path: &path };
        let (prefix, name) = match k.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        if name.is_empty() || !label_part_ok(name) || prefix.is_some_and(|p| check_dns_subdomain(here, p).is_err()) {
            return Err(here.invalid(format!("'{k}' is not a label key ([prefix/]name, name at most 63)")));
        }
        let value = here.str()?;
        if !label_part_ok(value) {
            return Err(here.invalid(format!("'{value}' is not a label value (at most 63 of A-Za-z0-9-_.)")));
        }
        out.insert(k.clone(), value.to_string());
    }
    Ok(out)
}

/// An IANA service name (a named port): 1-15 of `a-z0-9-`, a letter, no `--`.
pub(crate) fn check_port_name(at: At, s: &str) -> Res<()> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && s.bytes().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok { Ok(()) } else { Err(at.invalid(format!("'{s}' is not a port name (IANA service name)"))) }
}

/// A port number 1..65535 (a JSON number, or a string of digits where the API allows).
pub(crate) fn port_number(at: At) -> Res<u16> {
    match at.v.as_u64() {
        Some(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Some(n) => Err(at.invalid(format!("{n} is not a port (1-65535)"))),
        None => Err(at.err(Fault::Type("a port number"))),
    }
}

/// An IPv4 CIDR; host bits are allowed and cleared (as the API server's sloppy parse).
pub(crate) fn cidr(at: At) -> Res<crate::core::Ipv4Net> {
    let s = at.str()?;
    if s.contains(':') {
        return Err(at.err(Fault::Unsupported(format!("'{s}' is IPv6 (ucanal is IPv4-only)"))));
    }
    let (a, l) = s.split_once('/').ok_or_else(|| at.invalid(format!("'{s}' is not a CIDR (a.b.c.d/len)")))?;
    let addr: std::net::Ipv4Addr = a.parse().map_err(|_| at.invalid(format!("'{a}' is not an IPv4 address")))?;
    let len: u8 = l.parse().map_err(|_| at.invalid(format!("'{l}' is not a prefix length")))?;
    crate::core::Ipv4Net::new(addr, len).ok_or_else(|| at.invalid(format!("prefix length {len} is over 32")))
}

/// The root of a decode, for the modules' own entry points and tests.
pub(crate) fn root(v: &Value) -> At<'_, 'static> {
    At { v, path: "" }
}
