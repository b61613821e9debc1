//! Per-port packet and byte counters, kept by the shell (the core counts decisions,
//! the shell counts what crossed each port). Each worker owns a row per port and is
//! its only writer; readers sum the rows.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::core::PortId;

/// Ports a node may have: the host port, pods, and the VXLAN port.
pub const MAX_PORTS: usize = 1024;
/// The slot of the VXLAN port (the underlay sockets).
pub const VXLAN: usize = MAX_PORTS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PortCounts {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

#[repr(align(64))]
struct Row([AtomicU64; 4]);

pub struct PortStats {
    /// workers x (MAX_PORTS + 1) rows.
    rows: Box<[Row]>,
    workers: usize,
}

impl PortStats {
    pub fn new(workers: usize) -> Self {
        let n = workers.max(1) * (MAX_PORTS + 1);
        PortStats {
            rows: (0..n).map(|_| Row(std::array::from_fn(|_| AtomicU64::new(0)))).collect(),
            workers: workers.max(1),
        }
    }
    #[inline]
    fn bump(&self, worker: usize, slot: usize, i: usize, bytes: usize) {
        if slot > MAX_PORTS {
            return;
        }
        let r = &self.rows[(worker % self.workers) * (MAX_PORTS + 1) + slot].0;
        // Single writer per row: load+store, no locked instruction.
        r[i].store(r[i].load(Relaxed) + 1, Relaxed);
        r[i + 1].store(r[i + 1].load(Relaxed) + bytes as u64, Relaxed);
    }
    #[inline]
    pub fn rx(&self, worker: usize, slot: usize, bytes: usize) {
        self.bump(worker, slot, 0, bytes);
    }
    #[inline]
    pub fn tx(&self, worker: usize, slot: usize, bytes: usize) {
        self.bump(worker, slot, 2, bytes);
    }
    pub fn get(&self, slot: usize) -> PortCounts {
        let mut c = PortCounts::default();
        if slot > MAX_PORTS {
            return c;
        }
        for w in 0..self.workers {
            let r = &self.rows[w * (MAX_PORTS + 1) + slot].0;
            c.rx_packets += r[0].load(Relaxed);
            c.rx_bytes += r[1].load(Relaxed);
            c.tx_packets += r[2].load(Relaxed);
            c.tx_bytes += r[3].load(Relaxed);
        }
        c
    }
    /// Clears a slot (a port number is reused after its pod is gone).
    pub fn reset(&self, slot: usize) {
        if slot > MAX_PORTS {
            return;
        }
        for w in 0..self.workers {
            for a in &self.rows[w * (MAX_PORTS + 1) + slot].0 {
                a.store(0, Relaxed);
            }
        }
    }
}

pub fn slot(p: PortId) -> usize {
    p.0 as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_resets() {
        let s = PortStats::new(2);
        s.rx(0, 1, 100);
        s.rx(1, 1, 50);
        s.tx(1, VXLAN, 1500);
        assert_eq!(s.get(1), PortCounts { rx_packets: 2, rx_bytes: 150, tx_packets: 0, tx_bytes: 0 });
        assert_eq!(s.get(VXLAN).tx_bytes, 1500);
        s.reset(1);
        assert_eq!(s.get(1), PortCounts::default());
        s.rx(0, MAX_PORTS + 7, 1);
        assert_eq!(s.get(MAX_PORTS + 7), PortCounts::default());
    }
}
