//! Streaming requests (live trace, capture).

use tokio::net::unix::OwnedWriteHalf;

use super::api::Response;
use super::daemon::send;
use crate::io::observe::Observers;

pub async fn trace_live(_obs: &Observers, _filter: &str, _count: usize, _timeout_ms: u64, w: &mut OwnedWriteHalf) {
    let _ = send(w, &Response::error("live trace is not available in this build")).await;
}

pub async fn capture(_obs: &Observers, _port: &str, _filter: &str, _count: usize, _timeout_ms: u64, w: &mut OwnedWriteHalf) {
    let _ = send(w, &Response::error("capture is not available in this build")).await;
}
