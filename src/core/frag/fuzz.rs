//! A harness that drives the reassembler with arbitrary fragment sequences, shared by
//! the cargo-fuzz target `reasm` (`fuzz/`) and the tests that run its seed corpus.
//!
//! The input is a list of 5-byte records, one fragment each: `[sel, off_hi, off_lo,
//! len, dt]`. `sel & 3` picks one of four datagrams (its IP ID), `sel & 0x80` sets MF,
//! `(sel >> 2) & 7` adds 0-7 bytes to a payload of `len * 8`; `off_*` is the 13-bit
//! fragment offset; `dt` advances the clock by `dt * 250 ms`. A fragment's payload bytes
//! are a function of (datagram, position), so the oracle knows every byte a complete
//! datagram must hold. Besides "never panics", it checks that a reassembled datagram is
//! a valid unfragmented IPv4 header over exactly those bytes, that the limits hold
//! after every fragment, and that fragmenting the datagram again and reassembling the
//! pieces gives it back.

use super::Limits;
use super::reasm::{Pushed, Reassembler};
use super::split::for_each_fragment;
use crate::core::Now;
use crate::wire::checksum;
use crate::wire::ipv4::{self, Ipv4Packet};

const ETH: [u8; 14] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];

fn pattern(id: u16, at: usize) -> u8 {
    (at as u32).wrapping_mul(2_654_435_761).wrapping_add(u32::from(id) * 77).to_be_bytes()[1]
}

/// One fragment of datagram `id` as an Ethernet frame.
fn fragment(id: u16, off8: u16, len: usize, mf: bool) -> Vec<u8> {
    let total = 20 + len;
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&ETH);
    f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8]);
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&((off8 & 0x1fff) | if mf { 0x2000 } else { 0 }).to_be_bytes());
    f.extend_from_slice(&[64, 17, 0, 0, 10, 244, 1, 5, 10, 250, 0, 10]);
    let c = checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let base = usize::from(off8 & 0x1fff) * 8;
    f.extend((0..len).map(|i| pattern(id, base + i)));
    f
}

/// Checks a reassembled datagram (IPv4 bytes) against the pattern of its ID.
fn check_whole(ip: &[u8]) -> u16 {
    let p = Ipv4Packet::new_checked(ip).expect("reassembled IPv4 does not parse");
    assert!(p.verify_checksum(), "reassembled header checksum");
    assert!(!p.is_fragment(), "reassembled datagram still a fragment");
    assert_eq!(p.total_len(), ip.len(), "total length");
    let id = p.ident();
    for (i, b) in p.payload().iter().enumerate() {
        assert_eq!(*b, pattern(id, i), "byte {i} of datagram {id}");
    }
    id
}

/// Runs one input; panics when the oracle finds a fault. Returns how many datagrams
/// completed.
pub fn run(data: &[u8]) -> usize {
    let mut completed = 0;
    let limits = Limits { datagrams: 3, bytes: 16 * 1024, fragments: 16, ..Limits::default() };
    let mut r = Reassembler::new(limits);
    let mut out = vec![0u8; 14 + 65_535];
    let mut now = Now(1_000_000_000_000);
    for rec in data.chunks_exact(5) {
        let id = u16::from(rec[0] & 3) + 0x100;
        let mf = rec[0] & 0x80 != 0;
        let len = usize::from(rec[3]) * 8 + usize::from((rec[0] >> 2) & 7);
        let off8 = u16::from_be_bytes([rec[1], rec[2]]);
        now = Now(now.0 + u64::from(rec[4]) * 250_000_000);
        let o = r.push(&fragment(id, off8, len, mf), now, &mut out);
        let (datagrams, bytes) = r.held();
        assert!(datagrams <= limits.datagrams && bytes <= limits.bytes, "limits broken: {datagrams} {bytes}");
        if let Pushed::Complete { len, max_frag } = o.pushed {
            let whole = out[14..len].to_vec();
            assert_eq!(check_whole(&whole), id);
            round_trip(&whole, usize::from(max_frag).max(28) + usize::from(rec[4]));
            completed += 1;
        }
    }
    completed
}

/// Fragments `ip` at `size` and reassembles the pieces: the same datagram comes back.
fn round_trip(ip: &[u8], size: usize) {
    let mut r = Reassembler::new(Limits::default());
    let mut out = vec![0u8; 14 + 65_535];
    let mut back = None;
    let n = for_each_fragment(ip, size, |h, p| {
        let f = [&ETH[..], h, p].concat();
        if let Pushed::Complete { len, .. } = r.push(&f, Now(1), &mut out).pushed {
            back = Some(out[14..len].to_vec());
        }
    })
    .expect("fragmenting a reassembled datagram");
    if n > 1 {
        let back = back.expect("the fragments of a datagram reassemble");
        let (a, b) = (Ipv4Packet::new_checked(&back[..]).unwrap(), Ipv4Packet::new_checked(ip).unwrap());
        assert_eq!(a.payload(), b.payload());
        assert_eq!(a.header()[..ipv4::field::FLAGS_FRAG], b.header()[..ipv4::field::FLAGS_FRAG]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed corpus of the fuzz target (fuzz/seeds/reasm) runs clean.
    #[test]
    fn seed_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/reasm");
        let mut n = 0;
        let mut completed = 0;
        for e in std::fs::read_dir(&dir).expect("fuzz/seeds/reasm") {
            completed += run(&std::fs::read(e.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(completed >= 3, "{completed} seeds complete a datagram");
        assert!(n >= 5, "{n} seeds");
    }

    /// Pseudo-random inputs (a few thousand), as a smoke run of the fuzz target.
    #[test]
    fn random_inputs() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut completed = 0;
        for _ in 0..3000 {
            let records = 1 + next() % 24;
            // Small offsets and lengths, so the fragments of a datagram meet.
            let data: Vec<u8> = (0..records)
                .flat_map(|_| {
                    let r = next();
                    let dt = if r % 50 == 0 { 200 } else { 0 };
                    [(r >> 8) as u8 & 0x83, 0, (r >> 16) as u8 % 24, (r >> 24) as u8 % 8, dt]
                })
                .collect();
            completed += run(&data);
        }
        assert!(completed > 200, "{completed} datagrams completed");
    }
}
