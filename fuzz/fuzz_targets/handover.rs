//! The hand-over offer decoder (bytes from the old ucanal's end of the API socket):
//! never panics, and whatever decodes re-encodes to the same bytes (the two reserved
//! header bytes aside).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucanal::control::handover::offer::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok((h, entries)) = decode(data) {
        assert_eq!(entries.len(), h.fds as usize);
        let again = encode(&entries, h.state_len as usize, h.conntrack_len as usize);
        assert_eq!(again.len(), data.len());
        assert_eq!(&again[..10], &data[..10]);
        assert_eq!(&again[12..], &data[12..]);
    }
});
