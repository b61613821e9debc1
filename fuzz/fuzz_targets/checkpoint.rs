//! The conntrack checkpoint decoder (a file a previous ucanal wrote, possibly cut short
//! by a crash): never panics, and whatever decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucanal::core::nat::checkpoint::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok((flows, at)) = decode(data) {
        let again = encode(&flows, at);
        assert_eq!(decode(&again).map(|(f, _)| f), Ok(flows));
        assert_eq!(&again[..4], &data[..4]);
    }
});
