//! The cluster's text parsers: flannel's network config, lease keys and values, every
//! etcd gateway answer and Kubernetes manifests. Any bytes give a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucanal::control::cluster::{etcd, flannel, gateway};
use ucanal::control::kube;

fuzz_target!(|data: &[u8]| {
    let _ = flannel::NetworkConfig::parse(data);
    let _ = flannel::LeaseAttrs::parse("k", data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = flannel::parse_subnet_key(s);
        if let Ok(objs) = kube::parse_manifest(s) {
            let mut st = kube::Store::default();
            for svc in st.apply(objs, false) {
                let _ = st.specs(&svc);
            }
        }
    }
    let _ = gateway::parse_range(data);
    let _ = gateway::parse_lease(data);
    let _ = gateway::parse_txn(data);
    let _ = gateway::parse_watch(data);
    let _ = etcd::split_message(data);
    if let Ok(c) = flannel::NetworkConfig::parse(data) {
        let _ = c.allocate(std::iter::empty(), 0);
    }
});
