//! The `apply` path's control-plane costs per manifest, at the issue's scale (the
//! table's own cost is `core`'s `services/update_one_publish`):
//! - `apply/parse_manifest`: a kubectl-style JSON List of 10,000 Services + Endpoints
//!   read into objects (what `ucanal apply -f` does before sending).
//! - `apply/decode_request`: one `apply` request of about 768 KB (one part) read by the
//!   daemon.
//! - `apply/watch_buckets`: the bucket values of those 10,000 services (as a node's
//!   watch receives them from etcd) turned into the node's objects.
//!
//! Each checks once, outside the timed loop, that it yields every object.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ucanal::api::kube;
use ucanal::api::{Command, Request};
use ucanal::control::kube::buckets::{Change, Index, bucket_key};

const N: usize = 10_000;

/// As netns-scripts/gen-services.py writes it.
fn manifest(n: usize) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| {
            let meta = format!(r#""metadata": {{"name": "svc-{i}", "namespace": "bench"}}"#);
            format!(
                r#"{{"apiVersion": "v1", "kind": "Service", {meta}, "spec": {{"type": "ClusterIP", "clusterIP": "10.250.{}.{}", "ports": [{{"port": 80, "protocol": "TCP"}}]}}}}, {{"apiVersion": "v1", "kind": "Endpoints", {meta}, "subsets": [{{"addresses": [{{"ip": "10.244.1.5"}}], "ports": [{{"port": 2368, "protocol": "TCP"}}]}}]}}"#,
                (i >> 8) & 255,
                i & 255
            )
        })
        .collect();
    format!(r#"{{"apiVersion": "v1", "kind": "List", "items": [{}]}}"#, items.join(", "))
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    g.sample_size(10);
    let text = manifest(N);
    let objs = kube::parse_manifest(&text).expect("manifest");
    assert_eq!(objs.len(), 2 * N);
    g.throughput(Throughput::Elements(2 * N as u64));
    g.bench_function("parse_manifest", |b| b.iter(|| black_box(kube::parse_manifest(&text).map(|o| o.len()))));

    let part = 2 * 2_400;
    let line = format!(r#"{{"op":"apply","delete":false,"more":true,"objects":{}}}"#, {
        serde_json::to_string(&objs[..part]).expect("json")
    });
    assert!(line.len() < 1 << 20);
    assert!(
        matches!(Request::decode(&line), Ok(Request::Command(Command::Apply { objects, .. })) if objects.len() == part)
    );
    g.throughput(Throughput::Elements(part as u64));
    g.bench_function("decode_request", |b| b.iter(|| black_box(Request::decode(&line).is_ok())));

    let plan = Index::default().plan(&objs, false);
    let values: Vec<(String, Vec<u8>)> =
        plan.buckets.into_iter().map(|w| (bucket_key(w.bucket), w.value.expect("a value"))).collect();
    let watch = || {
        let (mut ix, mut ch) = (Index::default(), Change::default());
        for (k, v) in &values {
            ix.put(k, v, 2, &mut ch);
        }
        ch
    };
    assert_eq!(watch().0.len(), 2 * N);
    g.throughput(Throughput::Elements(2 * N as u64));
    g.bench_function("watch_buckets", |b| b.iter(|| black_box(watch().0.len())));
    g.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
