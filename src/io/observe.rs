//! Observation hooks on the worker path: live traces and packet capture.
//! When nothing observes, the cost is one relaxed atomic load per batch.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::core::tables::Tables;
use crate::core::trace::Trace;
use crate::core::Action;

pub struct Observers {
    pub node: String,
    active: AtomicBool,
}

impl Observers {
    pub fn new(node: String) -> Self {
        Observers { node, active: AtomicBool::new(false) }
    }
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Relaxed)
    }
    /// Called with each frame as it arrives; returns the trace to record with.
    pub fn before(&self, _ingress: String, _frame: &[u8]) -> Trace {
        Trace::off()
    }
    /// Called with the decision and the frame as it leaves.
    pub fn after(&self, _t: &Tables, _trace: Trace, _action: &Action, _frame: &[u8]) {}
}
