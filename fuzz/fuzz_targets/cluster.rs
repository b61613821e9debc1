//! The cluster's text parsers: flannel's network config, lease keys and values,
//! Kubernetes manifests (the one-pass decoder must answer exactly
//! as the general one), `apply` request lines and the object buckets stored in etcd.
//! Any bytes give a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucanal::control::kube::buckets::{Change, Index};
use ucanal::control::cluster::flannel;
use ucanal::api::{self, kube};
use ucanal::control::kube::Store;

fuzz_target!(|data: &[u8]| {
    let _ = flannel::NetworkConfig::parse(data);
    let _ = flannel::LeaseAttrs::parse("k", data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = flannel::parse_subnet_key(s);
        let _ = api::Request::decode(s);
        let fast = kube::parse_manifest(s);
        assert_eq!(fast, kube::parse_manifest_general(s), "the fast manifest decoder disagrees");
        if let Ok(objs) = fast {
            let mut st = Store::default();
            for svc in st.apply(objs, false) {
                let _ = st.specs(&svc);
            }
        }
    }
    let (mut ix, mut ch) = (Index::default(), Change::default());
    ix.put("buckets/0001", data, 2, &mut ch);
    let (put, _) = ch.split();
    let plan = ix.plan(&put, false);
    let _ = ix.plan(&put, true);
    for w in plan.buckets {
        ix.put(&format!("buckets/{:04}", w.bucket), w.value.as_deref().unwrap_or_default(), 3, &mut Change::default());
    }
    if let Ok(c) = flannel::NetworkConfig::parse(data) {
        let _ = c.allocate(std::iter::empty(), 0);
    }
});
