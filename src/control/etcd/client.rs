//! The calls ucanal makes to etcd, each under a deadline, and the watch stream.
//!
//! Heads up: tonic's balanced channel queues a request while no endpoint is connected
//! (etcd partitioned away answers nothing, not even a reset), so every unary call runs
//! under [`REQUEST_TIMEOUT`] here: an unreachable etcd is an error in seconds, the
//! caller's backoff decides what next, and the dataplane keeps its last tables.

use std::future::Future;
use std::time::Duration;

use etcd_client::proto::{PbEvent, PbKeyValue};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, LeaseClient, PutOptions, Txn, TxnOp, WatchClient,
    WatchOptions,
};

use super::{EtcdError, KeyValue, Op, Unchanged, WatchEvent, WatchMessage, prefix_end};

/// Per-request deadline: etcd answers a healthy request in milliseconds; a partitioned
/// one must not stall the control plane for long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting to an endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on a connection (idle or not), and how long one may go unanswered
/// before the connection is dropped: a partition leaves a connection silent, not closed.
const PING_EVERY: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// TCP keep-alive on the connection, under the pings.
const TCP_KEEPALIVE: Duration = Duration::from_secs(10);
/// The largest answer accepted (tonic's default is 4 MiB): the list of every object
/// bucket of 100,000 services is ~25 MiB in one range answer, and a watch answer
/// carries every event of up to 1,000 revisions.
const MAX_MESSAGE: usize = 1 << 30;

#[derive(Clone)]
pub struct EtcdClient {
    endpoints: Vec<String>,
    kv: KvClient,
    lease: LeaseClient,
    watch: WatchClient,
}

impl EtcdClient {
    /// A client of the etcd cluster at `endpoints` (`http://ip:port`, tried in turn by
    /// the channel). Connecting is lazy: etcd may be down now and come later.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdClient, EtcdError> {
        for e in endpoints {
            let ok = e.strip_prefix("http://").is_some_and(|hp| hp.parse::<std::net::SocketAddr>().is_ok());
            if !ok {
                return Err(EtcdError::BadEndpoint(e.clone()));
            }
        }
        if endpoints.is_empty() {
            return Err(EtcdError::BadEndpoint(String::new()));
        }
        let endpoints: Vec<String> = endpoints.iter().map(|e| e.trim_end_matches('/').to_string()).collect();
        let opts = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(PING_EVERY, PING_TIMEOUT)
            .with_keep_alive_while_idle(true)
            .with_tcp_keepalive(TCP_KEEPALIVE);
        let client = Client::connect(&endpoints, Some(opts))
            .await
            .map_err(|e| EtcdError::Unreachable { endpoints: endpoints.join(","), reason: e.to_string() })?;
        Ok(EtcdClient {
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
            lease: client.lease_client(),
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            endpoints,
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> EtcdError {
        EtcdError::Unreachable { endpoints: self.endpoints.join(","), reason: reason.to_string() }
    }

    /// What the client library said, as ucanal's error: transport trouble and the
    /// gRPC codes that mean "no etcd to talk to" are an outage, the rest etcd's word.
    fn error(&self, e: etcd_client::Error) -> EtcdError {
        use tonic::Code;
        match e {
            etcd_client::Error::GRpcStatus(s) => match s.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                    self.unreachable(s.message())
                }
                code => EtcdError::Status { code: code as i32, message: s.message().to_string() },
            },
            other => self.unreachable(other),
        }
    }

    /// Runs one call under the request deadline.
    async fn call<T>(&self, f: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, EtcdError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
            Ok(r) => r.map_err(|e| self.error(e)),
            Err(_) => Err(self.unreachable(format!("no answer in {REQUEST_TIMEOUT:?}"))),
        }
    }

    /// One key, or every key starting with it when `prefix`; with the read revision.
    pub async fn get(&self, key: &str, prefix: bool) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let opts = prefix.then(|| GetOptions::new().with_range(prefix_end(key.as_bytes())));
        let mut kv = self.kv.clone();
        let mut r = self.call(kv.get(key, opts)).await?;
        let rev = r.header().map_or(0, |h| h.revision());
        Ok((std::mem::take(&mut r.0.kvs).into_iter().map(key_value).collect(), rev))
    }

    /// Puts `key`; the store revision after it.
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let mut kv = self.kv.clone();
        let r = self.call(kv.put(key, value, Some(PutOptions::new().with_lease(lease)))).await?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    /// Puts `key` only if it does not exist (`version == 0`, flannel's `createSubnet`);
    /// whether it was put.
    pub async fn create(&self, key: &str, value: &[u8], lease: i64) -> Result<bool, EtcdError> {
        let txn = Txn::new().when([Compare::version(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
        let mut kv = self.kv.clone();
        Ok(self.call(kv.txn(txn)).await?.succeeded())
    }

    /// A transaction that applies `ops` only if every key is still at its revision:
    /// whether they held, and the store revision after it.
    pub async fn txn_if(&self, guards: Vec<Unchanged>, ops: Vec<Op>) -> Result<(bool, i64), EtcdError> {
        let when: Vec<Compare> =
            guards.into_iter().map(|g| Compare::mod_revision(g.key, CompareOp::Equal, g.mod_revision)).collect();
        let then: Vec<TxnOp> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(key, value, None),
                Op::Delete { key } => TxnOp::delete(key, None),
            })
            .collect();
        let mut kv = self.kv.clone();
        let r = self.call(kv.txn(Txn::new().when(when).and_then(then))).await?;
        Ok((r.succeeded(), r.header().map_or(0, |h| h.revision())))
    }

    pub async fn delete(&self, key: &str) -> Result<i64, EtcdError> {
        let mut kv = self.kv.clone();
        let r = self.call(kv.delete(key, None)).await?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    /// A new etcd lease of `ttl` seconds: its ID and granted TTL.
    pub async fn grant(&self, ttl: u64) -> Result<(i64, i64), EtcdError> {
        let mut lease = self.lease.clone();
        let r = self.call(lease.grant(i64::try_from(ttl).unwrap_or(i64::MAX), None)).await?;
        Ok((r.id(), r.ttl()))
    }

    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        let mut lease = self.lease.clone();
        self.call(lease.revoke(id)).await?;
        Ok(())
    }

    /// Seconds left on a lease (-1: gone).
    pub async fn time_to_live(&self, id: i64) -> Result<i64, EtcdError> {
        let mut lease = self.lease.clone();
        Ok(self.call(lease.time_to_live(id, None)).await?.ttl())
    }

    /// Refreshes a lease to its granted TTL (one LeaseKeepAlive round trip): the TTL it
    /// has now, 0 when the lease is gone (expired or revoked).
    pub async fn keep_alive(&self, id: i64) -> Result<i64, EtcdError> {
        let mut lease = self.lease.clone();
        let once = async move {
            let (mut keeper, mut stream) = lease.keep_alive(id).await?;
            keeper.keep_alive().await?;
            stream.message().await
        };
        match self.call(once).await? {
            Some(r) => Ok(r.ttl().max(0)),
            None => Err(self.unreachable("lease keep-alive stream ended")),
        }
    }

    /// Starts watching every key under `prefix` from `start_revision`.
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, EtcdError> {
        let opts = WatchOptions::new().with_range(prefix_end(prefix.as_bytes())).with_start_revision(start_revision);
        let mut w = self.watch.clone();
        let inner = self.call(w.watch(prefix, Some(opts))).await?;
        Ok(WatchStream { endpoints: self.endpoints.join(","), inner })
    }
}

fn key_value(kv: PbKeyValue) -> KeyValue {
    KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        lease: kv.lease,
    }
}

/// mvccpb's event type: 0 PUT, 1 DELETE.
fn watch_event(e: PbEvent) -> Option<WatchEvent> {
    let kv = key_value(e.kv.unwrap_or_default());
    match e.r#type {
        0 => Some(WatchEvent::Put(kv)),
        1 => Some(WatchEvent::Delete { key: kv.key, mod_revision: kv.mod_revision }),
        _ => None,
    }
}

/// The messages of one watch.
pub struct WatchStream {
    endpoints: String,
    /// Holds the request half too: dropping it would end the watch on etcd's side.
    inner: etcd_client::WatchStream,
}

impl WatchStream {
    /// The next message; an error when the stream ends or breaks (re-list and re-watch).
    pub async fn next(&mut self) -> Result<WatchMessage, EtcdError> {
        let broken = |reason: String| EtcdError::Unreachable { endpoints: self.endpoints.clone(), reason };
        let r = match self.inner.message().await {
            Ok(Some(r)) => r.0,
            Ok(None) => return Err(broken("watch stream ended".into())),
            Err(e) => return Err(broken(e.to_string())),
        };
        let mut events = Vec::with_capacity(r.events.len());
        for e in r.events {
            let kind = e.r#type;
            events.push(watch_event(e).ok_or_else(|| broken(format!("watch event of unknown type {kind}")))?);
        }
        Ok(WatchMessage::of(r.created, r.canceled, r.compact_revision, &r.cancel_reason, events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_are_checked() {
        assert!(EtcdClient::connect(&["http://127.0.0.1:2379".into()]).await.is_ok());
        for bad in ["127.0.0.1:2379", "https://127.0.0.1:2379", "http://etcd:2379"] {
            assert!(matches!(EtcdClient::connect(&[bad.into()]).await, Err(EtcdError::BadEndpoint(_))), "{bad}");
        }
        assert!(EtcdClient::connect(&[]).await.is_err());
    }

    #[test]
    fn events_keep_their_kind_and_revisions() {
        let kv =
            PbKeyValue { key: b"k".to_vec(), value: b"v".to_vec(), mod_revision: 7, lease: 3, ..Default::default() };
        let put = watch_event(PbEvent { r#type: 0, kv: Some(kv.clone()), prev_kv: None }).unwrap();
        assert!(matches!(put, WatchEvent::Put(k) if k.value == b"v" && k.lease == 3 && k.mod_revision == 7));
        let del = watch_event(PbEvent { r#type: 1, kv: Some(kv), prev_kv: None }).unwrap();
        assert_eq!(del, WatchEvent::Delete { key: b"k".to_vec(), mod_revision: 7 });
        assert!(watch_event(PbEvent { r#type: 9, kv: None, prev_kv: None }).is_none());
    }
}
