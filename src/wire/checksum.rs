//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Every rewrite in ucanal fixes checksums incrementally, so a NAT rewrite costs a
//! few additions instead of a pass over the payload. The full sum is used only when
//! ucanal builds a packet itself (ARP is checksum-free; ICMP errors, RSTs) or when it
//! must finish a checksum the pod left partial (offloads).

/// Sums `data` as big-endian 16-bit words into a 64-bit accumulator.
/// An odd trailing byte is padded with zero, as RFC 1071 says.
///
/// The one's-complement sum does not depend on byte order (RFC 1071 §2(B)): the bulk is
/// summed as native-endian 32-bit words into four independent 64-bit accumulators (no
/// byte swaps, no carries to propagate, and a loop the compiler vectorises), folded to
/// 16 bits and swapped once. This is the per-byte cost of userspace TSO and GRO.
#[inline]
pub fn sum(data: &[u8], acc: u64) -> u64 {
    if data.len() < 32 {
        return sum_be(data, acc);
    }
    let mut lanes = [0u64; 4];
    let mut blocks = data.chunks_exact(16);
    for b in &mut blocks {
        for (k, lane) in lanes.iter_mut().enumerate() {
            *lane += u64::from(u32::from_ne_bytes([b[4 * k], b[4 * k + 1], b[4 * k + 2], b[4 * k + 3]]));
        }
    }
    let rest = blocks.remainder();
    // The remainder as whole native words (zero-padded: a trailing odd byte stays the
    // high-order byte of its big-endian word, as padding at the end must).
    let mut tail = [0u8; 16];
    tail[..rest.len()].copy_from_slice(rest);
    for (k, lane) in lanes.iter_mut().enumerate() {
        *lane += u64::from(u32::from_ne_bytes([tail[4 * k], tail[4 * k + 1], tail[4 * k + 2], tail[4 * k + 3]]));
    }
    // Each lane holds at most len/16 words of 32 bits: no overflow below 2^32 x 16 bytes.
    let native = fold(lanes.iter().map(|&l| (l & 0xffff_ffff) + (l >> 32)).sum());
    acc + u64::from(u16::from_be(native))
}

/// The straightforward big-endian sum, for short inputs (and the reference in tests).
#[inline]
fn sum_be(data: &[u8], mut acc: u64) -> u64 {
    let mut pairs = data.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [b] = pairs.remainder() {
        acc += u64::from(*b) << 8;
    }
    acc
}

/// Folds an accumulator to 16 bits (not complemented).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for `data` (complemented fold).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// Partial sum of the IPv4 pseudo header (RFC 793 §3.1, RFC 768).
#[inline]
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], protocol: u8, l4_len: u16) -> u64 {
    let mut acc = u64::from(u16::from_be_bytes([src[0], src[1]]));
    acc += u64::from(u16::from_be_bytes([src[2], src[3]]));
    acc += u64::from(u16::from_be_bytes([dst[0], dst[1]]));
    acc += u64::from(u16::from_be_bytes([dst[2], dst[3]]));
    acc += u64::from(protocol);
    acc += u64::from(l4_len);
    acc
}

/// RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')` for one 16-bit word changing from `old` to `new`.
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let acc = u64::from(!check) + u64::from(!old) + u64::from(new);
    !fold(acc)
}

/// RFC 1624 update for a 32-bit field (an IPv4 address) changing from `old` to `new`.
#[inline]
pub fn update32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let acc = u64::from(!check)
        + u64::from(!u16::from_be_bytes([old[0], old[1]]))
        + u64::from(!u16::from_be_bytes([old[2], old[3]]))
        + u64::from(u16::from_be_bytes([new[0], new[1]]))
        + u64::from(u16::from_be_bytes([new[2], new[3]]));
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_sum_equals_the_plain_big_endian_sum() {
        // Every length 0..600 and offsets that misalign the bulk loop, odd tails included.
        let data: Vec<u8> = (0..700u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for off in 0..5 {
            for len in 0..600 {
                let d = &data[off..off + len];
                assert_eq!(fold(sum(d, 0x1_2345)), fold(sum_be(d, 0x1_2345)), "offset {off} length {len}");
            }
        }
        // All-ones words: the largest carries.
        let ones = vec![0xffu8; 65_536];
        assert_eq!(fold(sum(&ones, 0)), fold(sum_be(&ones, 0)));
    }

    /// The worked example of RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(&[0xab], 0)), 0xab00);
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56], 0)), 0x1234 + 0x5600);
    }

    /// A real IPv4 header (ping 10.244.1.5 -> 10.244.0.74): the checksum over the
    /// header including its checksum field folds to 0xffff.
    #[test]
    fn ipv4_header_verifies() {
        let hdr = [
            0x45, 0x00, 0x00, 0x54, 0x3a, 0x1c, 0x40, 0x00, 0x40, 0x01, 0xe9, 0x87, 0x0a, 0xf4, 0x01, 0x05, 0x0a, 0xf4,
            0x00, 0x4a,
        ];
        let mut h = hdr;
        h[10] = 0;
        h[11] = 0;
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(fold(sum(&h, 0)), 0xffff);
    }

    /// The differential tests below check `sum`/`checksum`, the pseudo-header sum and the
    /// RFC 1624 updates against an independent implementation (etherparse's
    /// `Sum16BitWords`) over random buffers of 0..4 KB starting at byte offsets 0..15 of
    /// their allocation (so every alignment of the wide loop is hit).
    /// (etherparse sums native-endian words: its result is the field in native byte order.)
    fn etherparse_checksum(d: &[u8], pseudo: [u8; 12]) -> u16 {
        etherparse::checksum::Sum16BitWords::new().add_slice(&pseudo).add_slice(d).ones_complement().to_be()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn agrees_with_etherparse(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            skip in 0usize..16,
            src in proptest::prelude::any::<[u8; 4]>(),
            dst in proptest::prelude::any::<[u8; 4]>(),
            protocol in proptest::prelude::any::<u8>(),
        ) {
            let d = &data[skip.min(data.len())..];
            proptest::prop_assert_eq!(checksum(d), etherparse_checksum(d, [0; 12]));
            let len = d.len() as u16;
            let pseudo = [
                src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], 0, protocol, (len >> 8) as u8, len as u8,
            ];
            let ours = !fold(sum(d, pseudo_header_sum(src, dst, protocol, len)));
            proptest::prop_assert_eq!(ours, etherparse_checksum(d, pseudo));
        }

        #[test]
        fn incremental_update_agrees_with_etherparse(
            mut data in proptest::collection::vec(proptest::prelude::any::<u8>(), 8..1500),
            at in 0usize..1500,
            word in proptest::prelude::any::<u16>(),
            addr in proptest::prelude::any::<[u8; 4]>(),
        ) {
            let at = (at % (data.len() - 4)) & !1;
            let before = checksum(&data);
            let old16 = u16::from_be_bytes([data[at], data[at + 1]]);
            data[at..at + 2].copy_from_slice(&word.to_be_bytes());
            let after16 = update16(before, old16, word);
            let old32: [u8; 4] = data[at..at + 4].try_into().unwrap();
            data[at..at + 4].copy_from_slice(&addr);
            let after32 = update32(after16, old32, addr);
            let full = etherparse_checksum(&data, [0; 12]);
            // RFC 1624 keeps the one's-complement value: 0x0000 and 0xffff are the same number.
            proptest::prop_assert!(after32 == full || (after32, full) == (0, 0xffff) || (after32, full) == (0xffff, 0));
        }
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut h = [
            0x45, 0x00, 0x00, 0x54, 0x3a, 0x1c, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 0xac, 0x10, 0xf0, 0x01, 0xac, 0x10,
            0xf0, 0x83,
        ];
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        // DNAT 172.16.240.131 -> 10.244.0.74.
        let new = [10, 244, 0, 74];
        let updated = update32(c, [172, 16, 240, 131], new);
        h[16..20].copy_from_slice(&new);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(updated, checksum(&h));
        // TTL 64 -> 63 as a 16-bit word update (ttl, protocol).
        let c2 = update16(updated, 0x4001, 0x3f01);
        h[8] = 0x3f;
        assert_eq!(c2, checksum(&h));
    }
}
