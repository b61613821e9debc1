//! Kubernetes objects shared through etcd: `ucanal apply` writes them under
//! `<objects prefix>/objects/<kind>/<ns>/<name>` (JSON, ucanal's stored form), and every
//! node lists then watches that directory, as kube-proxy watches the API server. Owns the
//! key layout and the sync loop; the objects are [`crate::control::kube`]'s.

use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use super::etcd::{EtcdClient, EtcdError};
use super::gateway::{self, WatchEvent, WatchMessage};
use crate::control::kube::Object;

/// etcd's default `--max-txn-ops`: the most operations one transaction may carry.
const TXN_OPS: usize = 128;
const TXNS_IN_FLIGHT: usize = 8;

/// What the sync loop hands the daemon.
#[derive(Debug)]
pub enum ObjectUpdate {
    /// Everything stored (after a (re)connect): replaces the node's objects.
    Snapshot(Vec<Object>),
    /// Changes of one watch message: objects put, keys (`services/ns/name`) deleted.
    Changes { put: Vec<Object>, deleted: Vec<String> },
}

#[derive(Clone)]
pub struct ObjectStore {
    pub client: EtcdClient,
    dir: String,
}

impl ObjectStore {
    pub fn new(client: EtcdClient, prefix: &str) -> ObjectStore {
        ObjectStore { client, dir: format!("{}/objects/", prefix.trim_end_matches('/')) }
    }

    /// Writes (or deletes) the objects, in transactions of at most 128 operations. The
    /// first failure stops it: with etcd unreachable nothing is written.
    pub async fn write(&self, objs: &[Object], delete: bool) -> Result<usize, EtcdError> {
        use futures::StreamExt as _;
        let bodies: Vec<Vec<serde_json::Value>> = objs
            .chunks(TXN_OPS)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|o| {
                        let key = format!("{}{}", self.dir, o.key());
                        if delete {
                            json!({ "request_delete_range": gateway::range_request(key.as_bytes(), None) })
                        } else {
                            let value = serde_json::to_vec(o).unwrap_or_default();
                            json!({ "request_put": gateway::put_request(key.as_bytes(), &value, 0) })
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let txns = bodies.into_iter().map(|ops| {
            let c = self.client.clone();
            async move { c.txn(ops).await }
        });
        // Several transactions in flight: etcd orders them, and distinct keys do not care.
        let mut results = futures::stream::iter(txns).buffer_unordered(TXNS_IN_FLIGHT);
        while let Some(r) = results.next().await {
            r?;
        }
        Ok(objs.len())
    }

    fn parse(&self, key: &[u8], value: &[u8]) -> Option<Object> {
        match serde_json::from_slice::<Object>(value) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!("ignoring stored object {}: {e}", String::from_utf8_lossy(key));
                None
            }
        }
    }

    async fn session(&self, tx: &mpsc::Sender<ObjectUpdate>) -> Result<(), EtcdError> {
        let (kvs, rev) = self.client.get(&self.dir, true).await?;
        let objs = kvs.iter().filter_map(|kv| self.parse(&kv.key, &kv.value)).collect();
        if tx.send(ObjectUpdate::Snapshot(objs)).await.is_err() {
            return Ok(());
        }
        let mut stream = self.client.watch(&self.dir, rev + 1).await?;
        loop {
            let msg = tokio::select! {
                m = stream.next() => m?,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {
                    self.client.get(&self.dir, false).await?;
                    continue;
                }
            };
            match msg {
                WatchMessage::Created => {}
                WatchMessage::Events(evs) => {
                    let (mut put, mut deleted) = (Vec::new(), Vec::new());
                    for ev in evs {
                        match ev {
                            WatchEvent::Put(kv) => put.extend(self.parse(&kv.key, &kv.value)),
                            WatchEvent::Delete { key, .. } => {
                                let k = String::from_utf8_lossy(&key);
                                deleted.extend(k.strip_prefix(&self.dir).map(str::to_string));
                            }
                        }
                    }
                    if tx.send(ObjectUpdate::Changes { put, deleted }).await.is_err() {
                        return Ok(());
                    }
                }
                WatchMessage::Compacted { .. } => return Ok(()),
                WatchMessage::Canceled(why) => {
                    return Err(EtcdError::Unreachable { endpoints: self.dir.clone(), reason: why });
                }
            }
        }
    }

    /// Lists and watches until the receiver goes away; reconnects with backoff.
    pub async fn sync(self, tx: mpsc::Sender<ObjectUpdate>) {
        let mut backoff = Duration::from_millis(100);
        while !tx.is_closed() {
            match self.session(&tx).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!("objects watch: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
