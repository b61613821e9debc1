//! The policy decoders (NetworkPolicy, Calico NetworkPolicy / GlobalNetworkPolicy,
//! Namespace, Pod manifests) and Calico's selector parser: any bytes give objects or an
//! error naming the field, never a panic; decoded policies compile and decide flows.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ucanal::core::policy::fuzzing::run(data);
});
