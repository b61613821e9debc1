//! Streaming requests: live traces and captures. Each subscribes to the workers'
//! observation hooks, forwards events to the client as JSON lines, and unsubscribes
//! when the count is reached, the time is up, or the client goes away.

use std::time::Duration;

use tokio::net::unix::OwnedWriteHalf;

use super::send;
use crate::api::Response;
use crate::io::filter::Filter;
use crate::io::observe::{Event, Observers, PortSel};

async fn pump(
    obs: &Observers,
    id: u64,
    mut rx: tokio::sync::mpsc::Receiver<Event>,
    timeout_ms: u64,
    w: &mut OwnedWriteHalf,
) {
    let deadline = (timeout_ms > 0).then(|| tokio::time::Instant::now() + Duration::from_millis(timeout_ms));
    loop {
        let ev = match deadline {
            Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                Ok(e) => e,
                Err(_) => break,
            },
            None => rx.recv().await,
        };
        let Some(ev) = ev else { break };
        let data = match ev {
            Event::Trace(t) => serde_json::to_value(&t).unwrap_or_default(),
            Event::Frame(f) => serde_json::json!({ "sec": f.sec, "usec": f.usec, "hex": hex(&f.data) }),
        };
        if send(w, &Response::data(data)).await.is_err() {
            obs.remove(id);
            return;
        }
    }
    obs.remove(id);
    let _ = send(w, &Response::done()).await;
}

pub async fn trace_live(obs: &Observers, filter: &str, count: usize, timeout_ms: u64, w: &mut OwnedWriteHalf) {
    let f = match Filter::parse(filter) {
        Ok(f) => f,
        Err(e) => {
            let _ = send(w, &Response::error(e)).await;
            return;
        }
    };
    let (id, rx) = obs.trace(f, count);
    pump(obs, id, rx, timeout_ms, w).await;
}

pub async fn capture(obs: &Observers, port: &str, filter: &str, count: usize, timeout_ms: u64, w: &mut OwnedWriteHalf) {
    let f = match Filter::parse(filter) {
        Ok(f) => f,
        Err(e) => {
            let _ = send(w, &Response::error(e)).await;
            return;
        }
    };
    let (id, rx) = obs.capture(PortSel::parse(port), f, count);
    pump(obs, id, rx, timeout_ms, w).await;
}

pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[usize::from(x >> 4)] as char);
        s.push(D[usize::from(x & 15)] as char);
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_round_trip() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(super::hex(&b), "0001abff");
        assert_eq!(super::unhex("0001abff").unwrap(), b);
        assert!(super::unhex("0g").is_none());
        assert!(super::unhex("abc").is_none());
    }
}
