//! The state journal's codec: the deltas of a node's runtime state (pods and services
//! added or removed over the API or from etcd), appended to `<socket>.state.journal`
//! after each change so that a change costs what it changed, not the whole state file.
//! Pure: ops in, bytes out; bytes in, the records that are whole and the first fault.
//!
//! The file: the 8-byte header `UCJRNL01`, then records, each
//!
//! ```text
//! len   u32 LE   bytes after this 8-byte prefix (8 + payload)
//! crc   u32 LE   CRC-32 (IEEE, as zlib) of those len bytes
//! seq   u64 LE   strictly increasing; the snapshot names the last seq it holds
//! payload        JSON array of ops: {"pod_put":{..}}, {"pod_del":"name"},
//!                {"service_put":{..}}, {"service_del":"name"}
//! ```
//!
//! A record is written with one `write` after the change and before the reply, so a
//! killed ucanal leaves whole records; a torn tail (a short, corrupt or out-of-order
//! record, e.g. a full disk mid-write) ends the journal there: what precedes it is
//! replayed, the fault is reported for the caller to log and count.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::PodSpec;
use crate::core::nat::service::ServiceSpec;

/// The journal file's first bytes.
pub const MAGIC: &[u8; 8] = b"UCJRNL01";
/// The largest record read back (a 100,000-service apply is ~20 MB).
pub const MAX_RECORD: u32 = 256 << 20;

/// One change of the persisted state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    PodPut(PodSpec),
    PodDel(String),
    ServicePut(ServiceSpec),
    ServiceDel(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub ops: Vec<Op>,
}

/// Where and why a journal stops being readable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Torn {
    #[error("no journal header (want {:?})", std::str::from_utf8(MAGIC).unwrap_or_default())]
    Header,
    #[error("record at byte {at}: {have} of {want} bytes (cut short)")]
    Short { at: usize, have: usize, want: usize },
    #[error("record at byte {at}: length {len} is out of range")]
    Length { at: usize, len: u32 },
    #[error("record at byte {at}: checksum mismatch")]
    Checksum { at: usize },
    #[error("record at byte {at}: sequence {seq} does not follow {prev}")]
    Sequence { at: usize, seq: u64, prev: u64 },
    #[error("record at byte {at}: {error}")]
    Payload { at: usize, error: String },
}

/// What a journal's bytes hold: the whole records, how many bytes they span (header
/// included), and the fault that ended it, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Journal {
    pub records: Vec<Record>,
    pub valid_len: usize,
    pub torn: Option<Torn>,
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// One record's bytes.
pub fn encode(seq: u64, ops: &[Op]) -> Vec<u8> {
    let payload = serde_json::to_vec(ops).unwrap_or_else(|_| b"[]".to_vec());
    let mut body = Vec::with_capacity(8 + payload.len());
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&payload);
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads a journal's bytes up to the first fault (never fails: an empty file is an
/// empty journal, anything else unreadable is reported in `torn`).
pub fn decode(bytes: &[u8]) -> Journal {
    let mut j = Journal::default();
    if bytes.is_empty() {
        return j;
    }
    if !bytes.starts_with(MAGIC) {
        j.torn = Some(Torn::Header);
        return j;
    }
    let mut at = MAGIC.len();
    j.valid_len = at;
    let mut prev = 0u64;
    while at < bytes.len() {
        match record_at(bytes, at, prev) {
            Ok((rec, next)) => {
                prev = rec.seq;
                j.records.push(rec);
                at = next;
                j.valid_len = at;
            }
            Err(t) => {
                j.torn = Some(t);
                break;
            }
        }
    }
    j
}

/// The record at `at` and where the next one starts.
fn record_at(b: &[u8], at: usize, prev: u64) -> Result<(Record, usize), Torn> {
    let have = b.len() - at;
    if have < 8 {
        return Err(Torn::Short { at, have, want: 8 });
    }
    let len = u32_at(b, at);
    if !(8..=MAX_RECORD).contains(&len) {
        return Err(Torn::Length { at, len });
    }
    let want = 8 + len as usize;
    if have < want {
        return Err(Torn::Short { at, have, want });
    }
    let body = &b[at + 8..at + want];
    if crc32(body) != u32_at(b, at + 4) {
        return Err(Torn::Checksum { at });
    }
    let seq = u64::from_le_bytes(body[..8].try_into().unwrap_or_default());
    if seq <= prev {
        return Err(Torn::Sequence { at, seq, prev });
    }
    let ops: Vec<Op> = serde_json::from_slice(&body[8..]).map_err(|e| Torn::Payload { at, error: e.to_string() })?;
    Ok((Record { seq, ops }, at + want))
}

/// The state a journal replays onto: pods in order, services by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    pub pods: Vec<PodSpec>,
    pub services: BTreeMap<String, ServiceSpec>,
}

impl Replay {
    pub fn apply(&mut self, op: Op) {
        match op {
            Op::PodPut(p) => match self.pods.iter_mut().find(|q| q.name == p.name) {
                Some(q) => *q = p,
                None => self.pods.push(p),
            },
            Op::PodDel(name) => self.pods.retain(|p| p.name != name),
            Op::ServicePut(s) => {
                self.services.insert(s.name.clone(), s);
            }
            Op::ServiceDel(name) => {
                self.services.remove(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests;
