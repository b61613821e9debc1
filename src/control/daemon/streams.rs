//! Streaming requests: live traces and captures. Each subscribes to the workers'
//! observation hooks, sends the events to the client as reply lines, and unsubscribes
//! when the count is reached, the time is up, or the client goes away.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;

use crate::api::codec::{self, Reply};
use crate::api::{CapturedFrame, Stream, TraceEvent};
use crate::control::error::ControlError;
use crate::io::filter::Filter;
use crate::io::observe::{Event, Observers, PortSel};

/// Serves a stream until its end; `known_port` says whether a capture's port exists
/// (`Err` with the ports there are).
pub async fn serve(
    s: Stream,
    obs: &Observers,
    known_port: impl FnOnce(&str) -> Result<(), Vec<String>>,
    w: &mut OwnedWriteHalf,
) {
    let (filter, count, timeout_ms) = match &s {
        Stream::TraceLive { filter, count, timeout_ms } | Stream::Capture { filter, count, timeout_ms, .. } => {
            (filter.as_str(), *count, *timeout_ms)
        }
    };
    if let Stream::Capture { port, .. } = &s
        && let Err(pods) = known_port(port)
    {
        return refuse(w, ControlError::NoPort { port: port.clone(), pods }).await;
    }
    let f = match Filter::parse(filter) {
        Ok(f) => f,
        Err(e) => return refuse(w, ControlError::Filter(e)).await,
    };
    let (id, rx) = match &s {
        Stream::TraceLive { .. } => obs.trace(f, count),
        Stream::Capture { port, .. } => obs.capture(PortSel::parse(port), f, count),
    };
    pump(obs, id, rx, timeout_ms, w).await;
}

async fn refuse(w: &mut OwnedWriteHalf, e: ControlError) {
    let _ = w.write_all(&codec::error_line(e.into())).await;
}

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
        let line = match ev {
            Event::Trace(t) => {
                codec::line(&Reply::data(TraceEvent { node: t.node, time: t.time, steps: t.steps, result: t.result }))
            }
            Event::Frame(f) => codec::line(&Reply::data(CapturedFrame { sec: f.sec, usec: f.usec, data: f.data })),
        };
        if w.write_all(&line).await.is_err() {
            obs.remove(id);
            return;
        }
    }
    obs.remove(id);
    let _ = w.write_all(&codec::line(&Reply::<()>::done())).await;
}
