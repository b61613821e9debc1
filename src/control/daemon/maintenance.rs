//! Conntrack maintenance (and the session affinity table's): expired flows (and, over
//! 95 % of `max`, unassured flows past their grace second) are swept once a second on a
//! thread of its own, off the API's runtime, so a long sweep never delays an API answer and an API
//! request never delays a sweep. The sweep removes one key at a time (see
//! `Conntrack::sweep`), so workers never wait for a whole shard. With `--keep-on-exit`
//! the same thread writes the conntrack checkpoint after each sweep, for the ucanal
//! that follows a SIGKILL (see `restart`). The same pass re-checks flows against a
//! policy table that changed since the last pass (the daemon re-checks at once when it
//! publishes; this catches flows admitted while that table was being swapped), so an
//! established flow a new policy denies is cut within a second.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::core::{Counter, Dataplane};
use crate::io::clock;

const PERIOD: Duration = Duration::from_secs(1);

/// The sweeping thread; `stop` (or drop) ends it.
pub struct Sweeper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// Starts sweeping `dp`'s conntrack, counting into counter block `block`, which
    /// nothing else writes.
    pub fn spawn(dp: Arc<Dataplane>, block: usize, checkpoint: Option<PathBuf>) -> io::Result<Sweeper> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("ucanal-sweep".into()).spawn(move || {
            let mut policy_checked = 0;
            loop {
                match stopped.recv_timeout(PERIOD) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                let now = clock::now();
                let swept = dp.conntrack.sweep(now);
                dp.counters.add(block, Counter::CtExpired, swept.expired as u64);
                dp.counters.add(block, Counter::CtPressureDrop, swept.pressure as u64);
                // Session affinity records past their timeout leave, freeing room for new ones.
                dp.affinity.sweep(now);
                if let Some(r) = crate::core::policy::recheck::recheck(&dp, now, policy_checked, block) {
                    policy_checked = r.generation;
                }
                if let Some(path) = &checkpoint
                    && let Err(e) = crate::control::persist::write_checkpoint(&dp, path)
                {
                    tracing::warn!("conntrack checkpoint {}: {e}", path.display());
                }
            }
        })?;
        Ok(Sweeper { stop: Some(stop), thread: Some(thread) })
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.shutdown();
    }
}
