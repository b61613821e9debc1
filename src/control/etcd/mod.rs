//! ucanal's etcd v3 client, on etcd's native gRPC API through the `etcd-client` crate
//! (tonic + prost, etcd's own protos): range, put, create-if-absent, guarded
//! transactions, delete, lease grant/revoke/keep-alive/time-to-live and watch. It owns
//! the connection to etcd (one HTTP/2 connection per endpoint, requests multiplexed on
//! it), the per-request deadline and the mapping of what etcd or the transport said to
//! [`EtcdError`]; the types here are what the rest of the daemon sees of etcd, so no
//! other module depends on the crate.
//!
//! Heads up: etcd treats a key that does not exist as having version, create and mod
//! revision 0 in a comparison — create-if-absent is `version == 0`, and a bucket
//! rewrite guarded by `mod_revision == 0` creates it.

mod client;

pub use client::{EtcdClient, WatchStream};

/// Why a call to etcd failed. Every message names etcd, so an operator reading
/// `ucanal apply` output knows which component is missing.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd is unreachable ({endpoints}): {reason}")]
    Unreachable { endpoints: String, reason: String },
    /// etcd answered with a gRPC error of its own (a lease not found, a request too big).
    #[error("etcd: {message} (gRPC code {code})")]
    Status { code: i32, message: String },
    #[error("etcd endpoint '{0}' is not http://host:port")]
    BadEndpoint(String),
    /// A write of several transactions failed after some went through.
    #[error("{source}; {written} of {of} transactions were written before it (apply again to finish)")]
    Partial { written: usize, of: usize, source: Box<EtcdError> },
}

/// One key as etcd stores it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The etcd lease the key is attached to (0: none).
    pub lease: i64,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

impl Op {
    /// The bytes it puts on the wire (key and value), for sizing transactions.
    pub fn size(&self) -> usize {
        match self {
            Op::Put { key, value } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
        }
    }
}

/// A transaction's guard: the key was last modified at `mod_revision` (0: it does not
/// exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unchanged {
    pub key: String,
    pub mod_revision: i64,
}

/// One change a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    /// The key and the revision of the delete (its value is gone).
    Delete {
        key: Vec<u8>,
        mod_revision: i64,
    },
}

/// One message of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    Created,
    Events(Vec<WatchEvent>),
    /// The start revision is older than the compaction horizon: re-list.
    Compacted {
        compact_revision: i64,
    },
    /// The server ended the watch for another reason.
    Canceled(String),
}

impl WatchMessage {
    /// What one watch response means, in the order etcd's own clientv3 reads it: a
    /// compaction first (etcd cancels such a watch and says up to where it compacted),
    /// then any other cancel, then creation, then events.
    pub fn of(created: bool, canceled: bool, compact_revision: i64, reason: &str, events: Vec<WatchEvent>) -> Self {
        if compact_revision > 0 {
            WatchMessage::Compacted { compact_revision }
        } else if canceled {
            WatchMessage::Canceled(reason.to_string())
        } else if created && events.is_empty() {
            WatchMessage::Created
        } else {
            WatchMessage::Events(events)
        }
    }
}

/// The end of the range holding every key that starts with `prefix` (clientv3's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff incremented.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn watch_messages_read_as_clientv3_does() {
        let put = WatchEvent::Put(KeyValue { key: b"foo".to_vec(), value: b"bar".to_vec(), ..Default::default() });
        assert_eq!(WatchMessage::of(true, false, 0, "", vec![]), WatchMessage::Created);
        assert_eq!(WatchMessage::of(false, false, 0, "", vec![put.clone()]), WatchMessage::Events(vec![put]));
        // etcd 3.4 sends a compacted start revision as canceled with the horizon.
        assert_eq!(WatchMessage::of(false, true, 4, "", vec![]), WatchMessage::Compacted { compact_revision: 4 });
        assert_eq!(
            WatchMessage::of(false, true, 0, "permission denied", vec![]),
            WatchMessage::Canceled("permission denied".into())
        );
    }

    #[test]
    fn ops_are_sized_by_their_bytes() {
        assert_eq!(Op::Put { key: "/k".into(), value: vec![0; 10] }.size(), 12);
        assert_eq!(Op::Delete { key: "/k".into() }.size(), 2);
    }
}
