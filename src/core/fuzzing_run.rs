//! A differential harness for deciding once per run (`Dataplane::handle_vxlan_run`),
//! shared by the `run` fuzz target and the property tests: two identical dataplanes (the
//! `fuzzing` lab, flows established the same way) take the same VXLAN datagrams, one
//! through `handle_vxlan_run` with one memo, the other each through the whole walk
//! (`handle_vxlan`). The oracle: the same actions, the same bytes, the same offload
//! state and the same counters (but `run_replayed`) after every datagram.
//!
//! Input: a selector byte (bit 0: from the known peer or a stranger; bits 1-2: how many
//! times the second datagram repeats, 1-4), the first datagram's length (one byte), the
//! first datagram, then the second. The second is typically the first with a few bytes
//! changed: the fuzzer looks for a change the replay misses.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::fuzzing::Harness;
use super::trace::Trace;
use super::{Action, Counter, DropReason, HEADROOM, Now, Offload, Packet, RunMemo};

pub struct RunHarness {
    run: Harness,
    walk: Harness,
    now: std::sync::atomic::AtomicU64,
}

impl Default for RunHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl RunHarness {
    pub fn new() -> RunHarness {
        RunHarness {
            run: Harness::new(),
            walk: Harness::new(),
            now: std::sync::atomic::AtomicU64::new(2_000_000_000_000),
        }
    }

    /// Runs one input (see the module docs); `None` when it is too short to split.
    /// Returns how many datagrams were replayed.
    pub fn run(&self, data: &[u8]) -> Option<u64> {
        let (&sel, rest) = data.split_first()?;
        let (&n, rest) = rest.split_first()?;
        let n = usize::from(n).min(rest.len());
        let (first, second) = rest.split_at(n);
        let peer = if sel & 1 == 0 { Ipv4Addr::new(172, 16, 240, 132) } else { Ipv4Addr::new(172, 16, 240, 9) };
        let from = SocketAddrV4::new(peer, 40000);
        let now = Now(self.now.fetch_add(50_000_000, std::sync::atomic::Ordering::Relaxed));
        let before = self.run.dp().counters.get(Counter::RunReplayed);
        let mut memo = RunMemo::default();
        let repeats = 1 + usize::from((sel >> 1) & 3);
        for frame in std::iter::once(first).chain(std::iter::repeat_n(second, repeats)) {
            let a = one(&self.run, from, frame, now, Some(&mut memo));
            let b = one(&self.walk, from, frame, now, None);
            assert_eq!(a, b, "the replay decided otherwise than the walk");
            for c in Counter::ALL.iter().filter(|c| **c != Counter::RunReplayed) {
                assert_eq!(self.run.dp().counters.get(*c), self.walk.dp().counters.get(*c), "counter {c}");
            }
            for d in DropReason::ALL {
                assert_eq!(self.run.dp().counters.dropped(*d), self.walk.dp().counters.dropped(*d), "drop {d}");
            }
        }
        Some(self.run.dp().counters.get(Counter::RunReplayed) - before)
    }
}

/// One datagram through `h`: by `handle_vxlan_run` with `memo`, else by the walk.
fn one(
    h: &Harness,
    from: SocketAddrV4,
    frame: &[u8],
    now: Now,
    memo: Option<&mut RunMemo>,
) -> (Action, Vec<u8>, Offload) {
    let mut buf = vec![0u8; HEADROOM + frame.len() + 16];
    buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
    let mut spare = vec![0u8; HEADROOM + 14 + 65_535];
    let mut pkt = Packet::new(&mut buf, HEADROOM, HEADROOM + frame.len()).with_spare(&mut spare);
    let mut tr = Trace::off();
    let t = h.tables();
    let a = match memo {
        Some(m) => h.dp().handle_vxlan_run(0, t, from, &mut pkt, now, &mut tr, m),
        None => h.dp().handle_vxlan(0, t, from, &mut pkt, now, &mut tr),
    };
    let out = match a {
        Action::Drop(_) | Action::Held => Vec::new(),
        _ => pkt.data().to_vec(),
    };
    (a, out, pkt.offload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tables::article;
    use proptest::prelude::*;

    /// One harness for the property tests, one test at a time (they compare counters).
    fn harness() -> std::sync::MutexGuard<'static, RunHarness> {
        static H: std::sync::OnceLock<std::sync::Mutex<RunHarness>> = std::sync::OnceLock::new();
        H.get_or_init(|| std::sync::Mutex::new(RunHarness::new())).lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A TCP segment of centos7-2's pod to ghost-ep1 (or, `reply`, of a NodePort flow the
    /// harness established, back to the client) as a VXLAN datagram.
    fn segment(seq: u32, reply: bool) -> Vec<u8> {
        use etherparse::PacketBuilder;
        let n = article::node1();
        let (dst, dport) = if reply { ([10, 244, 1, 0], 40003) } else { ([10, 244, 1, 5], 40000) };
        let mut f = Vec::new();
        PacketBuilder::ethernet2(article::peer2().vtep_mac.0, n.vtep_mac.0)
            .ipv4([10, 244, 0, 74], dst, 63)
            .tcp(2368, dport, seq, 64240)
            .ack(5)
            .write(&mut f, &[0x5a; 150])
            .unwrap();
        [&[0x08, 0, 0, 0, 0, 0, 1, 0][..], &f].concat()
    }

    /// The seed inputs: a run of segments (the second twice), plain and of a tracked flow.
    pub(crate) fn seeds() -> Vec<Vec<u8>> {
        [false, true]
            .iter()
            .map(|reply| {
                let (a, b) = (segment(1, *reply), segment(151, *reply));
                [&[2u8, a.len() as u8][..], &a, &b].concat()
            })
            .collect()
    }

    /// The seed corpus of the fuzz target is these seeds (fuzz/seeds/run).
    #[test]
    fn the_corpus_holds_the_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/run");
        for (i, s) in seeds().iter().enumerate() {
            if std::env::var_os("UCANAL_WRITE_SEEDS").is_some() {
                std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
            }
            let file = std::fs::read(dir.join(format!("seed-{i}"))).expect("fuzz/seeds/run");
            assert_eq!(&file, s, "seed-{i}");
        }
    }

    #[test]
    fn seeds_are_replayed() {
        let h = RunHarness::new();
        let s = seeds();
        assert_eq!(h.run(&s[0]), Some(2), "both repeats of the plain seed's second segment replayed");
        // The tracked flow's reply (the harness's flows are half open): as the walk, whatever it is.
        assert!(h.run(&s[1]).is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, .. ProptestConfig::default() })]

        /// A follower with a few bytes changed decides as the walk does.
        #[test]
        fn a_changed_follower_decides_as_the_walk(
            seed in 0usize..2,
            edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..4),
            sel in any::<u8>(),
        ) {
            let s = seeds()[seed].clone();
            let n = usize::from(s[1]);
            let mut input = s.clone();
            input[0] = sel;
            for (at, b) in edits {
                let i = 2 + n + usize::from(at) % (s.len() - 2 - n);
                input[i] = b;
            }
            let _ = harness().run(&input);
        }

        /// Anything at all: no panic, the same decisions.
        #[test]
        fn arbitrary_pairs(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = harness().run(&data);
        }
    }
}
