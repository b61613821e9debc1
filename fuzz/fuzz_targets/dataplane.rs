//! Every packet entry point of the core (pod ports, host port, VXLAN from a peer and
//! from a stranger), selected by the first byte; see `ucanal::core::fuzzing`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ucanal::core::fuzzing::Harness;

static H: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let _ = H.get_or_init(Harness::new).run(data);
});
