//! The shell's clock: the one place time is read. The core is handed `Now`.

use std::sync::OnceLock;
use std::time::Instant;

use crate::core::Now;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Monotonic nanoseconds since the first call in this process.
pub fn now() -> Now {
    Now(EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64)
}
