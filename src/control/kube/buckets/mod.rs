//! Several objects per etcd key. etcd takes a few thousand keys a second (per key:
//! a bolt write, a raft entry's share, a watch event per watcher), so one
//! key per object made 10,000 services 20,000 keys and seconds of writing. Objects are
//! stored in [`BUCKETS`] buckets instead: `<objects dir>buckets/NNNN` (four decimal
//! digits), its value a JSON array of the objects in their stored form, sorted by key.
//! A service's objects (its Service, Endpoints and EndpointSlices) share the bucket
//! `fnv1a32("ns/name") % 1024`, so applying a manifest writes each touched bucket once.
//!
//! The old layout, one object per key (`services/ns/name`, `endpoints/..`,
//! `endpointslices/..`), is still read; a write moves the objects it touches into their
//! bucket and deletes their old keys. When one object is in both, the later write wins.
//!
//! Owns the key layout, the node's [`Index`] of what each key holds (to turn a bucket's
//! new value into the objects that changed) and the [`Plan`] of a write (the buckets it
//! rewrites, each guarded by the revision the index saw). Pure: bytes in, changes out.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::value::RawValue;

use crate::api::kube::Object;

/// How many buckets the objects are spread over.
pub const BUCKETS: u32 = 1024;

/// The bucket of service `ns/name`: FNV-1a (32 bits) of its name, modulo [`BUCKETS`].
pub fn bucket_of(service: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in service.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h % BUCKETS
}

/// A bucket's key below the objects dir.
pub fn bucket_key(b: u32) -> String {
    format!("buckets/{b:04}")
}

/// What a key below the objects dir holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    Bucket(u32),
    /// One object (the old layout); its key (`services/ns/name`).
    Single(String),
}

pub fn slot(rel: &str) -> Slot {
    match rel.strip_prefix("buckets/").and_then(|n| n.parse::<u32>().ok()) {
        Some(b) if b < BUCKETS && rel.len() == "buckets/0000".len() => Slot::Bucket(b),
        _ => Slot::Single(rel.to_string()),
    }
}

/// Where the node last saw an object written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Single,
    Bucket(u32),
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    /// The key's mod revision (what a rewrite compares against).
    rev: i64,
    /// Object key -> its stored JSON.
    objects: BTreeMap<String, Box<[u8]>>,
}

/// What some events did to the node's objects: the last word on each object key
/// (`Some`: put, `None`: deleted).
#[derive(Debug, Default)]
pub struct Change(pub HashMap<String, Option<Object>>);

impl Change {
    fn put(&mut self, o: Object) {
        self.0.insert(o.key(), Some(o));
    }
    fn delete(&mut self, key: String) {
        self.0.insert(key, None);
    }
    /// The objects put and the keys deleted.
    pub fn split(self) -> (Vec<Object>, Vec<String>) {
        let (mut put, mut deleted) = (Vec::new(), Vec::new());
        for (k, o) in self.0 {
            match o {
                Some(o) => put.push(o),
                None => deleted.push(k),
            }
        }
        (put, deleted)
    }
}

/// What the node knows of the objects dir: each bucket's objects and revision, and
/// where each object lives.
#[derive(Debug, Default)]
pub struct Index {
    /// The store revision the index is at (of the list, or the last event).
    pub rev: i64,
    buckets: HashMap<u32, Bucket>,
    owner: HashMap<String, Owner>,
}

impl Index {
    /// A key (below the objects dir) put at `rev`. A value that does not decode is
    /// logged and leaves what the key held before (its revision moves on).
    pub fn put(&mut self, rel: &str, value: &[u8], rev: i64, ch: &mut Change) {
        self.rev = self.rev.max(rev);
        match slot(rel) {
            Slot::Bucket(b) => {
                if let Err(e) = self.put_bucket(b, value, rev, ch) {
                    tracing::warn!("ignoring stored objects {rel}: {e}");
                    self.buckets.entry(b).or_default().rev = rev;
                }
            }
            Slot::Single(_) => match serde_json::from_slice::<Object>(value) {
                Ok(o) => {
                    self.owner.insert(o.key(), Owner::Single);
                    ch.put(o);
                }
                Err(e) => tracing::warn!("ignoring stored object {rel}: {e}"),
            },
        }
    }

    /// A key (below the objects dir) deleted at `rev`.
    pub fn delete(&mut self, rel: &str, rev: i64, ch: &mut Change) {
        self.rev = self.rev.max(rev);
        match slot(rel) {
            Slot::Bucket(b) => {
                for k in self.buckets.remove(&b).map(|o| o.objects.into_keys()).into_iter().flatten() {
                    if self.owner.get(&k) == Some(&Owner::Bucket(b)) {
                        self.owner.remove(&k);
                        ch.delete(k);
                    }
                }
            }
            Slot::Single(k) => {
                // An object since moved into a bucket stays.
                if !matches!(self.owner.get(&k), Some(Owner::Bucket(_))) {
                    self.owner.remove(&k);
                    ch.delete(k);
                }
            }
        }
    }

    /// Only the objects that differ from what the bucket held are decoded and put.
    fn put_bucket(&mut self, b: u32, value: &[u8], rev: i64, ch: &mut Change) -> Result<(), serde_json::Error> {
        let items: Vec<&RawValue> = serde_json::from_slice(value)?;
        let old = self.buckets.remove(&b).unwrap_or_default();
        let same: HashMap<&[u8], &str> = old.objects.iter().map(|(k, v)| (&v[..], k.as_str())).collect();
        let mut new = Bucket { rev, objects: BTreeMap::new() };
        for raw in items {
            let bytes = raw.get().as_bytes();
            if let Some(k) = same.get(bytes).filter(|k| self.owner.get(**k) == Some(&Owner::Bucket(b))) {
                new.objects.insert(k.to_string(), bytes.into());
                continue;
            }
            match serde_json::from_str::<Object>(raw.get()) {
                Ok(o) => {
                    let k = o.key();
                    self.owner.insert(k.clone(), Owner::Bucket(b));
                    new.objects.insert(k, bytes.into());
                    ch.put(o);
                }
                Err(e) => tracing::warn!("ignoring an object in {}: {e}", bucket_key(b)),
            }
        }
        for k in old.objects.keys().filter(|k| !new.objects.contains_key(*k)) {
            if self.owner.get(k) == Some(&Owner::Bucket(b)) {
                self.owner.remove(k);
                ch.delete(k.clone());
            }
        }
        self.buckets.insert(b, new);
        Ok(())
    }

    /// The writes that put (or delete) `objs`: every bucket whose content changes,
    /// whole, and the old-layout keys of the objects touched.
    pub fn plan(&self, objs: &[Object], delete: bool) -> Plan {
        let mut touched: BTreeMap<u32, BTreeMap<String, Box<[u8]>>> = BTreeMap::new();
        let mut singles = BTreeSet::new();
        let content = |b: u32| self.buckets.get(&b).map(|x| x.objects.clone()).unwrap_or_default();
        for o in objs {
            let k = o.key();
            let nb = bucket_of(&o.service());
            match self.owner.get(&k) {
                Some(Owner::Single) => {
                    singles.insert(k.clone());
                }
                Some(Owner::Bucket(ob)) if delete || *ob != nb => {
                    touched.entry(*ob).or_insert_with(|| content(*ob)).remove(&k);
                }
                _ => {}
            }
            if !delete {
                let json = serde_json::to_vec(o).unwrap_or_default().into_boxed_slice();
                touched.entry(nb).or_insert_with(|| content(nb)).insert(k, json);
            }
        }
        let mut buckets = Vec::new();
        for (b, objects) in touched {
            let now = self.buckets.get(&b);
            if now.map_or(objects.is_empty(), |n| n.objects == objects) {
                continue;
            }
            let value = (!objects.is_empty()).then(|| join(objects.values()));
            buckets.push(BucketWrite { bucket: b, rev: now.map_or(0, |n| n.rev), value });
        }
        Plan { buckets, singles: singles.into_iter().collect() }
    }
}

fn join<'a>(items: impl Iterator<Item = &'a Box<[u8]>>) -> Vec<u8> {
    let mut v = vec![b'['];
    for (i, o) in items.enumerate() {
        if i > 0 {
            v.push(b',');
        }
        v.extend_from_slice(o);
    }
    v.push(b']');
    v
}

/// One bucket rewritten: only if its mod revision is still `rev` (0: absent); `None`
/// deletes it (its last object went).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketWrite {
    pub bucket: u32,
    pub rev: i64,
    pub value: Option<Vec<u8>>,
}

/// What a write sends to etcd.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub buckets: Vec<BucketWrite>,
    /// Old-layout keys (`services/ns/name`) to delete.
    pub singles: Vec<String>,
}

#[cfg(test)]
mod tests;
