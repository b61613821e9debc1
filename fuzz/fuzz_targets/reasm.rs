//! The IPv4 reassembler (`ucanal::core::frag`): arbitrary fragment sequences, overlaps,
//! timeouts and limits; see `ucanal::core::frag::fuzz` for the input format and oracle.
//! Seeds: `cargo fuzz run reasm fuzz/corpus/reasm fuzz/seeds/reasm`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ucanal::core::frag::fuzz::run(data);
});
