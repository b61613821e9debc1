//! A small etcd v3 client over the gRPC gateway (HTTP/1.1 + JSON, hyper): range, put,
//! create-if-absent, delete, lease grant/revoke/time-to-live and watch. It owns the
//! connection to etcd and the endpoint failover; the JSON is [`super::gateway`]'s.
//!
//! Why the gateway and not gRPC: etcd 3.4 serves it on the client port by default, and
//! the gRPC crates (tonic + prost) generate code from etcd's protos at build time with
//! `protoc`; the gateway needs only hyper, which builds anywhere the rest of ucanal does.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub mod gateway;

use gateway::{GatewayError, KeyValue, WatchMessage};

/// Why a call to etcd failed. Every message names etcd, so an operator reading
/// `ucanal apply` output knows which component is missing.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd is unreachable ({endpoints}): {reason}")]
    Unreachable { endpoints: String, reason: String },
    #[error("etcd at {endpoint} answered HTTP {status}: {body}")]
    Http { endpoint: String, status: u16, body: String },
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error("etcd endpoint '{0}' is not http://host:port")]
    BadEndpoint(String),
    /// A write of several transactions failed after some went through.
    #[error("{source}; {written} of {of} transactions were written before it (apply again to finish)")]
    Partial { written: usize, of: usize, source: Box<EtcdError> },
}

/// How long connecting to an endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle connections to etcd are closed after this.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Per-request deadline: etcd answers a healthy request in milliseconds; a partitioned
/// one must not stall the control plane for long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct EtcdClient {
    endpoints: Vec<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl EtcdClient {
    pub fn new(endpoints: &[String]) -> Result<EtcdClient, EtcdError> {
        for e in endpoints {
            let ok = e.strip_prefix("http://").is_some_and(|hp| hp.parse::<std::net::SocketAddr>().is_ok());
            if !ok {
                return Err(EtcdError::BadEndpoint(e.clone()));
            }
        }
        if endpoints.is_empty() {
            return Err(EtcdError::BadEndpoint(String::new()));
        }
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(CONNECT_TIMEOUT));
        conn.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build(conn);
        Ok(EtcdClient { endpoints: endpoints.iter().map(|e| e.trim_end_matches('/').to_string()).collect(), http })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> EtcdError {
        EtcdError::Unreachable { endpoints: self.endpoints.join(","), reason: reason.to_string() }
    }

    /// POSTs `body` to `path` on the first endpoint that answers; the response head.
    async fn send(&self, path: &str, body: &Value) -> Result<(String, hyper::Response<Incoming>), EtcdError> {
        let payload = Bytes::from(body.to_string());
        let mut last = String::from("no endpoint tried");
        for ep in &self.endpoints {
            let req = hyper::Request::post(format!("{ep}{path}"))
                .header("content-type", "application/json")
                .body(Full::new(payload.clone()))
                .map_err(|e| EtcdError::BadEndpoint(format!("{ep}: {e}")))?;
            match tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(req)).await {
                Ok(Ok(resp)) => return Ok((ep.clone(), resp)),
                Ok(Err(e)) => last = format!("{ep}: {e}"),
                Err(_) => last = format!("{ep}: no answer in {REQUEST_TIMEOUT:?}"),
            }
        }
        Err(self.unreachable(last))
    }

    /// A unary call: the whole answer body, or the error etcd or HTTP gave.
    async fn call(&self, path: &str, body: &Value) -> Result<Bytes, EtcdError> {
        let (ep, resp) = self.send(path, body).await?;
        let status = resp.status();
        let bytes = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| self.unreachable(format!("{ep}: answer not finished in {REQUEST_TIMEOUT:?}")))?
            .map_err(|e| self.unreachable(format!("{ep}: {e}")))?
            .to_bytes();
        if !status.is_success() {
            if let Some(e) = gateway::error_of(&bytes) {
                return Err(e.into());
            }
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            return Err(EtcdError::Http { endpoint: ep, status: status.as_u16(), body });
        }
        Ok(bytes)
    }

    /// One key, or every key starting with it when `prefix`; with the read revision.
    pub async fn get(&self, key: &str, prefix: bool) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let end = prefix.then(|| gateway::prefix_end(key.as_bytes()));
        let body = self.call("/v3/kv/range", &gateway::range_request(key.as_bytes(), end.as_deref())).await?;
        Ok(gateway::parse_range(&body)?)
    }

    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let body = self.call("/v3/kv/put", &gateway::put_request(key.as_bytes(), value, lease)).await?;
        Ok(gateway::parse_header(&body)?)
    }

    /// Puts `key` only if it does not exist; whether it was put.
    pub async fn create(&self, key: &str, value: &[u8], lease: i64) -> Result<bool, EtcdError> {
        let body = self.call("/v3/kv/txn", &gateway::create_if_absent_request(key.as_bytes(), value, lease)).await?;
        Ok(gateway::parse_txn(&body)?)
    }

    /// Applies several puts and deletes in one transaction (all or nothing).
    pub async fn txn(&self, ops: Vec<Value>) -> Result<i64, EtcdError> {
        let body = self.call("/v3/kv/txn", &serde_json::json!({ "success": ops })).await?;
        Ok(gateway::parse_header(&body)?)
    }

    /// A transaction that applies `ops` only if every comparison holds: whether they
    /// held, and the store revision after it.
    pub async fn txn_if(&self, compare: Vec<Value>, ops: Vec<Value>) -> Result<(bool, i64), EtcdError> {
        let body = self.call("/v3/kv/txn", &serde_json::json!({ "compare": compare, "success": ops })).await?;
        Ok((gateway::parse_txn(&body)?, gateway::parse_header(&body)?))
    }

    pub async fn delete(&self, key: &str) -> Result<i64, EtcdError> {
        let body = self.call("/v3/kv/deleterange", &gateway::range_request(key.as_bytes(), None)).await?;
        Ok(gateway::parse_header(&body)?)
    }

    /// A new etcd lease of `ttl` seconds: its ID and granted TTL.
    pub async fn grant(&self, ttl: u64) -> Result<(i64, i64), EtcdError> {
        let body = self.call("/v3/lease/grant", &serde_json::json!({ "TTL": ttl.to_string() })).await?;
        Ok(gateway::parse_lease(&body)?)
    }

    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &serde_json::json!({ "ID": id.to_string() })).await?;
        Ok(())
    }

    /// Seconds left on a lease (-1: gone).
    pub async fn time_to_live(&self, id: i64) -> Result<i64, EtcdError> {
        let body = self.call("/v3/lease/timetolive", &serde_json::json!({ "ID": id.to_string() })).await?;
        Ok(gateway::parse_lease(&body)?.1)
    }

    /// Starts watching every key under `prefix` from `start_revision`.
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, EtcdError> {
        let req = gateway::watch_request(prefix.as_bytes(), &gateway::prefix_end(prefix.as_bytes()), start_revision);
        let (ep, resp) = self.send("/v3/watch", &req).await?;
        if !resp.status().is_success() {
            return Err(EtcdError::Http { endpoint: ep, status: resp.status().as_u16(), body: String::new() });
        }
        Ok(WatchStream { endpoint: ep, body: resp.into_body(), buf: Vec::new() })
    }
}

/// The messages of one watch, as the gateway streams them (JSON objects back to back).
pub struct WatchStream {
    endpoint: String,
    body: Incoming,
    buf: Vec<u8>,
}

impl WatchStream {
    /// The next message; an error when the stream ends or breaks (re-list and re-watch).
    pub async fn next(&mut self) -> Result<WatchMessage, EtcdError> {
        // The gateway ends each message with a newline: a big message (a transaction of
        // buckets, a MiB) arriving in many frames is parsed once, when it is whole, not
        // once per frame.
        let mut whole = true;
        loop {
            if whole && let Some((msg, used)) = split_message(&self.buf)? {
                self.buf.drain(..used);
                return Ok(msg);
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                        whole = data.contains(&b'\n') || self.buf.len() < 1 << 16;
                    }
                }
                Some(Err(e)) => {
                    return Err(EtcdError::Unreachable { endpoints: self.endpoint.clone(), reason: e.to_string() });
                }
                None => {
                    return Err(EtcdError::Unreachable {
                        endpoints: self.endpoint.clone(),
                        reason: "watch stream ended".into(),
                    });
                }
            }
        }
    }
}

/// The first complete JSON object of a watch stream buffer and the bytes it used, or
/// `None` when more bytes are needed.
pub fn split_message(buf: &[u8]) -> Result<Option<(WatchMessage, usize)>, GatewayError> {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<serde::de::IgnoredAny>();
    match it.next() {
        None => Ok(None),
        Some(Err(e)) if e.is_eof() => Ok(None),
        Some(Err(e)) => Err(GatewayError::Malformed(format!("watch stream: {e}"))),
        Some(Ok(_)) => {
            let end = it.byte_offset();
            Ok(Some((gateway::parse_watch(&buf[..end])?, end)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_splits_messages_across_chunks() {
        let two = br#"{"result":{"created":true}}
{"result":{"events":[{"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"3"}}]}}
"#;
        let (m, used) = split_message(two).unwrap().unwrap();
        assert_eq!(m, WatchMessage::Created);
        let rest = &two[used..];
        assert!(split_message(&rest[..20]).unwrap().is_none());
        assert!(matches!(split_message(rest).unwrap(), Some((WatchMessage::Events(e), _)) if e.len() == 1));
        assert!(split_message(b"  \n").unwrap().is_none());
        assert!(split_message(b"}{").is_err());
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(EtcdClient::new(&["http://127.0.0.1:2379".into()]).is_ok());
        for bad in ["127.0.0.1:2379", "https://127.0.0.1:2379", "http://etcd:2379"] {
            assert!(matches!(EtcdClient::new(&[bad.into()]), Err(EtcdError::BadEndpoint(_))), "{bad}");
        }
        assert!(EtcdClient::new(&[]).is_err());
    }
}
