//! The state journal decoder (a file a previous ucanal appended to, possibly torn by a
//! crash or a full disk): never panics, stops at the first fault, and what it read is
//! exactly the valid prefix: those bytes decode alone to the same records with no
//! fault, re-encoded records decode back the same, and replaying them cannot panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucanal::control::journal::{MAGIC, Replay, decode, encode};

fuzz_target!(|data: &[u8]| {
    let j = decode(data);
    assert!(j.valid_len <= data.len());
    assert_eq!(j.torn.is_none(), j.valid_len == data.len());
    let prefix = decode(&data[..j.valid_len]);
    assert_eq!((&prefix.records, prefix.torn.is_none()), (&j.records, true));
    let mut again = if j.records.is_empty() { Vec::new() } else { MAGIC.to_vec() };
    for r in &j.records {
        again.extend(encode(r.seq, &r.ops));
    }
    assert_eq!(decode(&again).records, j.records);
    let mut replay = Replay::default();
    for r in j.records {
        for op in r.ops {
            replay.apply(op);
        }
    }
});
