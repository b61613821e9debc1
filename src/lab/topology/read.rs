//! Typed reads of the marked YAML tree: each names the field it reads (its path in the
//! file) and where it stands when the value is not what the field takes.

use std::net::Ipv4Addr;

use super::error::TopologyError;
use super::yaml::{Mark, Node, Value};
use crate::core::Ipv4Net;
use crate::wire::MacAddr;

/// A field's value and where it is, for the checks that come after reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At<T> {
    pub value: T,
    pub mark: Mark,
    pub field: String,
}

impl<T> At<T> {
    pub fn error(&self, problem: impl Into<String>) -> TopologyError {
        TopologyError::at(self.mark, &self.field, problem)
    }
}

/// A mapping being read: every key must be one of `allowed`.
pub struct Fields<'a> {
    pub path: String,
    pub mark: Mark,
    entries: &'a [(String, Mark, Node)],
}

impl<'a> Fields<'a> {
    pub fn of(node: &'a Node, path: &str, allowed: &[&str]) -> Result<Fields<'a>, TopologyError> {
        let Value::Map(entries) = &node.value else {
            return Err(TopologyError::at(node.mark, path, "must be a mapping (key: value lines)"));
        };
        for (k, m, _) in entries {
            if !allowed.contains(&k.as_str()) {
                let field = join(path, k);
                return Err(TopologyError::at(*m, &field, format!("unknown field (known: {})", allowed.join(", "))));
            }
        }
        Ok(Fields { path: path.to_string(), mark: node.mark, entries })
    }

    pub fn get(&self, key: &str) -> Option<(&'a Node, String)> {
        self.entries.iter().find(|(k, _, _)| k == key).map(|(k, _, n)| (n, join(&self.path, k)))
    }

    pub fn required(&self, key: &str) -> Result<(&'a Node, String), TopologyError> {
        self.get(key).ok_or_else(|| TopologyError::at(self.mark, &join(&self.path, key), "missing"))
    }

    pub fn text(&self, key: &str) -> Result<Option<At<String>>, TopologyError> {
        self.get(key).map(|(n, f)| text(n, &f)).transpose()
    }

    pub fn parsed<T>(
        &self,
        key: &str,
        what: &str,
        f: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<At<T>>, TopologyError> {
        let Some(t) = self.text(key)? else { return Ok(None) };
        match f(&t.value) {
            Some(value) => Ok(Some(At { value, mark: t.mark, field: t.field })),
            None => Err(t.error(format!("'{}' is not {what}", t.value))),
        }
    }

    pub fn ip(&self, key: &str) -> Result<Option<At<Ipv4Addr>>, TopologyError> {
        self.parsed(key, "an IPv4 address", |s| s.parse().ok())
    }
    pub fn net(&self, key: &str) -> Result<Option<At<Ipv4Net>>, TopologyError> {
        let Some(t) = self.text(key)? else { return Ok(None) };
        let value = t.value.parse::<Ipv4Net>().map_err(|e| t.error(e))?;
        Ok(Some(At { value, mark: t.mark, field: t.field }))
    }
    pub fn mac(&self, key: &str) -> Result<Option<At<MacAddr>>, TopologyError> {
        let m = self.parsed(key, "a MAC address", |s| s.parse::<MacAddr>().ok())?;
        match m {
            Some(m) if !m.value.is_unicast() => Err(m.error("must be a unicast MAC address")),
            m => Ok(m),
        }
    }
    pub fn bool(&self, key: &str) -> Result<Option<bool>, TopologyError> {
        let Some((n, f)) = self.get(key) else { return Ok(None) };
        match &n.value {
            Value::Scalar { text, quoted: false } if text == "true" => Ok(Some(true)),
            Value::Scalar { text, quoted: false } if text == "false" => Ok(Some(false)),
            _ => Err(TopologyError::at(n.mark, &f, "must be true or false")),
        }
    }

    /// A mapping's entries in file order (name, its mark, value), or none.
    pub fn map(&self, key: &str) -> Result<Vec<(String, Mark, &'a Node, String)>, TopologyError> {
        let Some((n, f)) = self.get(key) else { return Ok(Vec::new()) };
        match &n.value {
            Value::Map(entries) => Ok(entries.iter().map(|(k, m, v)| (k.clone(), *m, v, join(&f, k))).collect()),
            _ => Err(TopologyError::at(n.mark, &f, "must be a mapping")),
        }
    }

    pub fn seq(&self, key: &str) -> Result<Vec<(&'a Node, String)>, TopologyError> {
        let Some((n, f)) = self.get(key) else { return Ok(Vec::new()) };
        match &n.value {
            Value::Seq(items) => Ok(items.iter().enumerate().map(|(i, v)| (v, format!("{f}[{i}]"))).collect()),
            _ => Err(TopologyError::at(n.mark, &f, "must be a list")),
        }
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

pub fn text(n: &Node, field: &str) -> Result<At<String>, TopologyError> {
    match &n.value {
        Value::Scalar { text, .. } => Ok(At { value: text.clone(), mark: n.mark, field: field.to_string() }),
        _ => Err(TopologyError::at(n.mark, field, "must be a single value")),
    }
}

/// A name the lab turns into a network namespace (after the lab's prefix): a DNS label.
pub fn name(value: &str, mark: Mark, field: &str) -> Result<(), TopologyError> {
    let ok = !value.is_empty()
        && value.len() <= 40
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(TopologyError::at(mark, field, format!("'{value}' is not a name (a-z, 0-9 and '-', at most 40)")))
    }
}
