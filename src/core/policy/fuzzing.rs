//! The fuzz harness of the policy decoders (`fuzz/fuzz_targets/policy.rs`): any text
//! gives objects or an error naming a field, never a panic; the objects it gives are fed
//! to an engine of a small world, compiled, and walked by a few flows, which must not
//! panic either, and a selector's text form parses back to the same selector.

use std::net::Ipv4Addr;

use super::PolicyEngine;
use super::decode::decode_all;
use super::model::{Namespace, Pod};
use super::selector;
use super::stage::{self, Quiet};
use crate::core::nat::Tuple;

/// Runs one input through the decoders, the engine and the walk.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(sel) = selector::parse(text) {
        let again = selector::parse(&sel.to_string());
        assert_eq!(again.as_ref(), Ok(&sel), "a selector's text form parses back to it");
    }
    let Ok(objects) = decode_all(text) else { return };
    let mut e = PolicyEngine::new("n1", "10.244.1.0/24".parse().unwrap());
    for (i, ns) in ["x", "y"].iter().enumerate() {
        e.upsert_namespace(Namespace::new(ns, [("ns".to_string(), ns.to_string())].into()));
        e.upsert_pod(Pod {
            namespace: ns.to_string(),
            name: "a".into(),
            labels: [("pod".to_string(), "a".to_string())].into(),
            ip: Some(Ipv4Addr::new(10, 244, 1, 10 + i as u8)),
            node: Some("n1".into()),
            ports: Vec::new(),
        });
    }
    for o in objects {
        e.apply(o);
    }
    let t = e.table();
    for proto in [1, 6, 17, 132] {
        for (src, dst) in [
            ([10, 244, 1, 10], [10, 244, 1, 11]),
            ([10, 244, 1, 11], [10, 244, 1, 10]),
            ([8, 8, 8, 8], [10, 244, 1, 10]),
        ] {
            let f = Tuple { proto, src: src.into(), dst: dst.into(), sport: 40000, dport: 80 };
            let _ = stage::admit(&t, &f, proto == 6, |_| false, &mut Quiet);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds() -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/policy");
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .expect("fuzz/seeds/policy")
            .map(|e| e.unwrap().path())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect();
        v.sort();
        v
    }

    /// The seed corpus runs clean and decodes (the seeds are good input to mutate).
    #[test]
    fn the_seeds_decode_and_run() {
        let seeds = seeds();
        assert!(seeds.len() >= 6);
        for (name, s) in seeds {
            run(&s);
            let text = std::str::from_utf8(&s).unwrap();
            if name.starts_with("selector-") {
                selector::parse(text.trim()).unwrap_or_else(|e| panic!("{name}: {e}"));
            } else {
                assert!(!decode_all(text).unwrap_or_else(|e| panic!("{name}: {e}")).is_empty(), "{name}");
            }
        }
    }

    #[test]
    fn truncations_and_flips_of_the_seeds_never_panic() {
        for (_, s) in seeds() {
            for cut in (0..s.len()).step_by(7) {
                run(&s[..cut]);
            }
            for i in (0..s.len()).step_by(11) {
                let mut m = s.clone();
                m[i] ^= 0x20;
                run(&m);
            }
        }
    }
}
