//! Deciding once per run: a first VXLAN datagram and a follower through
//! `handle_vxlan_run` and through the whole walk must decide, emit and count the same;
//! see `ucanal::core::fuzzing_run`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ucanal::core::fuzzing_run::RunHarness;

static H: OnceLock<RunHarness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let _ = H.get_or_init(RunHarness::new).run(data);
});
