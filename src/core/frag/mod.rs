//! IPv4 fragments through NAT, as kube-proxy's conntrack does them: reassemble, NAT the
//! whole datagram, fragment again on the way out.
//!
//! Linux's conntrack cannot track a fragment (only the first carries the ports), so
//! `nf_defrag_ipv4` reassembles every fragment at PREROUTING, NAT rewrites the whole
//! datagram, and the forward path fragments it again at `min(egress MTU, largest
//! fragment received)` (`IPCB(skb)->frag_max_size`). ucanal does the same, so a
//! fragment of a NATed flow is never forwarded untranslated, and what leaves looks like
//! what a kernel node sends:
//!
//! - [`reasm::Reassembler`] holds fragments until their datagram is whole. Every
//!   fragment ucanal routes goes through it (as with conntrack loaded, whether the flow
//!   needs NAT or not: only the first fragment could tell). Bounded as the kernel's
//!   `ip_fragment.c` is: a datagram not complete 30 s (`ipfrag_time`) after its first
//!   fragment is dropped; at most [`Limits::datagrams`] datagrams and [`Limits::bytes`]
//!   payload bytes are held (the kernel's `ipfrag_high_thresh` is 4 MB) and at most
//!   [`Limits::fragments`] fragments per datagram; an exact duplicate is dropped alone,
//!   any other overlap drops the whole datagram (Linux since 4.19, RFC 5722 in spirit).
//!   Each refusal is a counted drop (`fragment_*`).
//! - The reassembled datagram goes through the walk like any packet, into a spare
//!   buffer the shell lends the [`super::Packet`] (`Packet::with_spare`), and leaves
//!   with [`super::Offload::frag_size`] set; the shell splits it with [`split`]
//!   (`for_each_fragment` toward a TAP, `split_vxlan` toward a VTEP).
//!
//! Heads up: fragments are the one path that takes a lock (the reassembler is shared
//! by the workers: the fragments of one datagram may arrive on different queues). A
//! packet that is not a fragment never touches it, and reassembly allocates only the
//! first time each of its slots is used.

/// The fuzz target's harness: fixtures for fuzzing and tests, never in the shipped library.
#[cfg(any(test, feature = "testkit"))]
pub mod fuzz;
pub mod reasm;
pub mod split;

#[cfg(test)]
mod tests;

/// The reassembler's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long the fragments of a datagram may take to arrive (ns from the first).
    pub timeout_ns: u64,
    /// Datagrams in reassembly at once (each may hold up to 64 KB).
    pub datagrams: usize,
    /// Payload bytes held at once, over all datagrams.
    pub bytes: usize,
    /// Fragments per datagram.
    pub fragments: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { timeout_ns: 30_000_000_000, datagrams: 64, bytes: 4 << 20, fragments: 64 }
    }
}
