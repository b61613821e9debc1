//! The big listings (`show conntrack`, `show services`), streamed from the snapshot to
//! the socket as they are written: the reply is the same one JSON line as any query's
//! (`{"ok":true,"data":[row,...]}`), but it is never built whole. The daemon holds the
//! snapshot (for conntrack one pointer per flow, sorted) and one chunk of rows at a
//! time; a client that stops reading holds its chunk until the API deadline closes it.
//!
//! What a listing allocated is handed back to the kernel when the last one running
//! ends: a table of 262,144 flows listed by eight clients at once costs tens of MB
//! while they run, and the daemon's resident size returns to where it was.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Mutex;

use crate::api::Show;
use crate::control::inspect::{conntrack, listings};
use crate::control::state::Daemon;
use crate::io::clock;

/// Bytes of rows written per `write`.
const CHUNK: usize = 64 << 10;
/// A listing of at least this many rows gives its memory back when it ends.
const BIG: usize = 10_000;

/// Listings running now (the last one to end trims the allocator).
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// How a streamed listing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Done,
    /// The client took no chunk within the deadline, or went away: close the connection.
    Stalled,
}

/// The listings that are streamed (the others are small and answered whole).
pub fn streamed(what: Show) -> bool {
    matches!(what, Show::Conntrack | Show::Services)
}

/// Streams listing `what` to `w`; each chunk must be taken within `deadline`.
pub async fn serve(d: &Arc<Mutex<Daemon>>, what: Show, w: &mut OwnedWriteHalf, deadline: Duration) -> Sent {
    let _running = Running::enter();
    match what {
        Show::Conntrack => {
            let dp = d.lock().await.plane().dp().clone();
            let now = clock::now();
            // One pointer per flow: the entries themselves are the table's.
            let entries = dp.conntrack.entries(now);
            let n = entries.len();
            let sent = write_rows(w, entries.iter().map(|e| conntrack::conntrack_row(e, now)), deadline).await;
            drop(entries);
            settle(n);
            sent
        }
        _ => {
            let t = d.lock().await.plane().dp().tables();
            let mut services: Vec<_> = t.services.iter().collect();
            services.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
            let n = services.len();
            let sent = write_rows(w, services.into_iter().map(listings::service_row), deadline).await;
            settle(n);
            sent
        }
    }
}

/// Writes `{"ok":true,"data":[` rows `]}` and a newline, a chunk at a time.
async fn write_rows<T: Serialize>(w: &mut OwnedWriteHalf, rows: impl Iterator<Item = T>, deadline: Duration) -> Sent {
    let mut buf = Vec::with_capacity(CHUNK + (CHUNK >> 2));
    buf.extend_from_slice(br#"{"ok":true,"data":["#);
    for (i, row) in rows.enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        // Rows are plain structs of strings and numbers: serialising cannot fail.
        if let Err(e) = serde_json::to_writer(&mut buf, &row) {
            tracing::error!("api: a listing row could not be written ({e}); connection closed");
            return Sent::Stalled;
        }
        if buf.len() >= CHUNK {
            if flush(w, &buf, deadline).await == Sent::Stalled {
                return Sent::Stalled;
            }
            buf.clear();
        }
    }
    buf.extend_from_slice(b"]}\n");
    flush(w, &buf, deadline).await
}

async fn flush(w: &mut OwnedWriteHalf, buf: &[u8], deadline: Duration) -> Sent {
    match tokio::time::timeout(deadline, w.write_all(buf)).await {
        Ok(Ok(())) => Sent::Done,
        _ => Sent::Stalled,
    }
}

/// Counts a running listing.
struct Running;

impl Running {
    fn enter() -> Running {
        RUNNING.fetch_add(1, Ordering::Relaxed);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// After a big listing, when no other listing runs: glibc keeps freed chunks in its
/// arenas; give them back to the kernel.
fn settle(rows: usize) {
    if rows < BIG || RUNNING.load(Ordering::Relaxed) > 1 {
        return;
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only reorganises glibc's free lists; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}
