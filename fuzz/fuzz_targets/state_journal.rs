//! The state journal decoder (a file a previous ucanal appended to, possibly torn by a
//! crash or a full disk): never panics, stops at the first fault, and what it read is
//! exactly the valid prefix: those bytes decode alone to the same records with no
//! fault, re-encoded records decode back the same, and replaying them cannot panic.
//! Inputs starting with `!` are framed first (each `\n`-separated piece a payload under
//! a valid length, CRC and sequence), so the JSON behind the checksum is reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucanal::control::persist::journal::{MAGIC, Replay, Torn, crc32, decode, encode};

fn framed(payloads: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for (i, p) in payloads.split(|b| *b == b'\n').enumerate() {
        let mut body = (i as u64 + 1).to_le_bytes().to_vec();
        body.extend_from_slice(p);
        out.extend((body.len() as u32).to_le_bytes());
        out.extend(crc32(&body).to_le_bytes());
        out.extend(body);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let owned;
    let data = match data.strip_prefix(b"!") {
        Some(p) => {
            owned = framed(p);
            let j = decode(&owned);
            // Framed records fail only on their JSON.
            assert!(j.torn.is_none() || matches!(j.torn, Some(Torn::Payload { .. })), "{:?}", j.torn);
            &owned[..]
        }
        None => data,
    };
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
