//! Memory per conntrack flow at 1 000 000 flows (DESIGN.md, "Performance: how it is
//! measured"; the target is <= 200 bytes per flow).
//!
//! A counting global allocator wraps the system allocator and keeps the live heap bytes
//! (bytes requested and not yet freed) in an atomic. The bench creates an empty
//! `Conntrack`, reads the counter, inserts 1 000 000 NAT flows through
//! `Conntrack::insert` (established NodePort flows, DNAT + masquerade, each with a
//! distinct original and reply tuple) and reads it again:
//! bytes per flow = (live after - live before) / flows.
//!
//! That is the heap the table asks for. The allocator's own overhead (glibc rounds each
//! allocation up and adds a header) comes on top; the resident-set growth over the same
//! inserts is printed next to it for that reason, but the figure of record is the
//! counted one.
//!
//! `cargo bench --bench memory` runs it at 1 000 000 flows and writes the figure to
//! `target/criterion/memory_per_flow.txt`; in test mode (`cargo test --benches`,
//! `cargo bench -- --test`) it runs with 10 000 flows, checks the arithmetic and writes
//! nothing.

#[allow(dead_code)]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use ucanal::core::nat::conntrack::{Conntrack, Entry, Timeouts};

use common::Population;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every method forwards to the System allocator with the caller's arguments unchanged;
// the counting around it touches only atomics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller upholds GlobalAlloc's contract for these arguments; we pass them on.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller upholds GlobalAlloc's contract for these arguments; we pass them on.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` was allocated by System with layout `l` (every allocation above goes to System).
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds GlobalAlloc's contract for these arguments; we pass them on.
        let q = unsafe { System.realloc(p, l, new_size) };
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Relaxed);
            grew(new_size);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Resident set size in bytes, from /proc/self/statm (0 where unavailable).
fn rss() -> usize {
    let page = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<usize>().ok()))
        .map_or(0, |pages| pages * page)
}

fn main() {
    let flows = if common::test_mode() { 10_000 } else { 1_000_000 };
    let ct = Conntrack::new(2 * flows, Timeouts::default());
    let live0 = LIVE.load(Relaxed);
    let rss0 = rss();
    let start = Instant::now();
    let mut checkpoints = Vec::new();
    for step in 1..=4 {
        Population::fill_range(&ct, (step - 1) * flows / 4..step * flows / 4);
        checkpoints.push((step * flows / 4, LIVE.load(Relaxed) - live0));
    }
    let took = start.elapsed();
    assert_eq!(ct.len(), flows);
    let live1 = LIVE.load(Relaxed);
    let rss1 = rss();
    let per_flow = (live1 - live0) as f64 / flows as f64;

    let entry = std::mem::size_of::<Entry>();
    println!("memory: {per_flow:.1} bytes per flow at {flows} flows");
    println!(
        "  heap requested: {:.1} MB for {flows} flows; each flow is one Arc<Entry> allocation of {} bytes \
         (Entry {entry} + Arc counts 16) and two index slots (original and reply key) in the sharded hash map",
        (live1 - live0) as f64 / 1e6,
        entry + 16
    );
    for (n, bytes) in &checkpoints {
        println!("  at {n:>8} flows: {:.1} bytes per flow (hash tables grow by doubling)", *bytes as f64 / *n as f64);
    }
    println!(
        "  resident set growth: {:.1} bytes per flow (includes malloc's per-allocation overhead); peak live heap {:.1} MB",
        rss1.saturating_sub(rss0) as f64 / flows as f64,
        PEAK.load(Relaxed) as f64 / 1e6
    );
    println!("  insert: {:.0} ns per flow (one pass, single thread)", took.as_nanos() as f64 / flows as f64);

    if common::test_mode() {
        assert!(per_flow > entry as f64, "a flow costs at least its entry");
        return;
    }
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("criterion");
    std::fs::create_dir_all(&dir).expect("create target/criterion");
    let path = dir.join("memory_per_flow.txt");
    std::fs::write(&path, format!("memory: {per_flow:.1} bytes per flow at {flows} flows\n"))
        .expect("write memory_per_flow.txt");
    println!("  written to {}", path.display());
    drop(ct);
}
