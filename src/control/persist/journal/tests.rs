//! The journal codec against fixed bytes (the CRCs computed with zlib, not this code).

use super::*;
use crate::api::PodSpec;
use crate::control::pods::Attachment;

/// seq 1, `[{"pod_del":"a"}]`: len 25, crc 0x2dbf2e17 (python3 zlib.crc32).
const ONE: &str = "19000000172ebf2d01000000000000005b7b22706f645f64656c223a2261227d5d";
/// seq 7, `[{"service_del":"default/ghost"},{"pod_del":"x"}]`.
const SEVEN: &str = "39000000cae6a8bf07000000000000005b7b22736572766963655f64656c223a2264656661756c742f67686f7374227d2c7b22706f645f64656c223a2278227d5d";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn file(records: &[&str]) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    for r in records {
        b.extend(hex(r));
    }
    b
}

fn ghost() -> ServiceSpec {
    serde_json::from_str(
        r#"{"name":"default/ghost","protocol":"tcp","cluster_ip":"10.250.0.40","port":2368,"node_port":31266,"endpoints":["10.244.0.74:2368"]}"#,
    )
    .unwrap()
}

#[test]
fn crc32_is_zlibs() {
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    assert_eq!(crc32(b""), 0);
}

#[test]
fn records_encode_to_fixed_bytes() {
    assert_eq!(encode(1, &[Op::PodDel("a".into())]), hex(ONE));
    assert_eq!(encode(7, &[Op::ServiceDel("default/ghost".into()), Op::PodDel("x".into())]), hex(SEVEN));
}

#[test]
fn a_journal_decodes_and_replays() {
    let b = file(&[ONE, SEVEN]);
    let j = decode(&b);
    assert_eq!((j.torn.clone(), j.valid_len, j.records.len()), (None, b.len(), 2));
    assert_eq!(
        j.records[1],
        Record { seq: 7, ops: vec![Op::ServiceDel("default/ghost".into()), Op::PodDel("x".into())] }
    );
    let pod = PodSpec {
        name: "x".into(),
        netns: "ns".into(),
        ip: "10.244.1.5".parse().unwrap(),
        mac: None,
        ifname: None,
        namespace: None,
        labels: Default::default(),
    };
    let mut r = Replay::default();
    r.apply(Op::PodPut(SavedPod { pod: pod.clone(), cni: None }));
    r.apply(Op::ServicePut(ghost()));
    let cni = Attachment { network: "ucanal".into(), container_id: "c0ffee01".into() };
    let moved = PodSpec { ip: "10.244.1.6".parse().unwrap(), ..pod.clone() };
    r.apply(Op::PodPut(SavedPod { pod: moved, cni: Some(cni.clone()) }));
    assert_eq!(r.pods.len(), 1, "a put of the same name replaces");
    assert_eq!(r.pods[0].pod.ip.to_string(), "10.244.1.6");
    assert_eq!(r.pods[0].cni.as_ref(), Some(&cni), "the attachment is replayed with the pod");
    for rec in j.records {
        for op in rec.ops {
            r.apply(op);
        }
    }
    assert_eq!(r, Replay::default(), "the deletes undo the puts");
    // A service put round-trips through its record.
    let b = [MAGIC.to_vec(), encode(3, &[Op::ServicePut(ghost())])].concat();
    assert_eq!(decode(&b).records[0].ops, vec![Op::ServicePut(ghost())]);
    assert_eq!(decode(&[]), Journal::default(), "an empty file is an empty journal");
    assert_eq!(decode(MAGIC).valid_len, 8);
}

#[test]
fn a_torn_tail_ends_the_journal_where_it_starts() {
    let whole = file(&[ONE, SEVEN]);
    let first = 8 + hex(ONE).len();
    // Cut anywhere inside the second record: the first stays, the fault names the byte.
    for cut in first + 1..whole.len() {
        let j = decode(&whole[..cut]);
        assert_eq!((j.records.len(), j.valid_len), (1, first), "cut at {cut}");
        assert!(matches!(j.torn, Some(Torn::Short { at, .. }) if at == first), "cut at {cut}: {:?}", j.torn);
    }
    // One flipped bit in the payload: checksum.
    let mut b = whole.clone();
    *b.last_mut().unwrap() ^= 0x01;
    assert_eq!(decode(&b).torn, Some(Torn::Checksum { at: first }));
    assert_eq!(decode(&b).torn.unwrap().to_string(), "record at byte 41: checksum mismatch");
    // A record replayed twice (same seq): out of order.
    let j = decode(&file(&[SEVEN, ONE]));
    assert_eq!(j.torn, Some(Torn::Sequence { at: 8 + hex(SEVEN).len(), seq: 1, prev: 7 }));
    // Garbage length, zero length, wrong header, JSON that is not ops.
    let mut b = MAGIC.to_vec();
    b.extend([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    assert_eq!(decode(&b).torn, Some(Torn::Length { at: 8, len: u32::MAX }));
    assert_eq!(decode(&file(&["0000000000000000"])).torn, Some(Torn::Length { at: 8, len: 0 }));
    assert_eq!(decode(b"UCJRNL0").torn, Some(Torn::Header));
    let mut bad = 9u64.to_le_bytes().to_vec();
    bad.extend(br#"[{"pod_zap":1}]"#);
    let mut b = MAGIC.to_vec();
    b.extend((bad.len() as u32).to_le_bytes());
    b.extend(crc32(&bad).to_le_bytes());
    b.extend(&bad);
    assert!(matches!(decode(&b).torn, Some(Torn::Payload { at: 8, .. })));
}

#[test]
fn the_seed_corpus_decodes_as_named() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/state_journal");
    let read = |n: &str| decode(&std::fs::read(dir.join(n)).unwrap());
    let whole = read("pods-and-services");
    assert_eq!((whole.records.len(), whole.torn), (3, None));
    let mut r = Replay::default();
    for op in whole.records[..2].iter().flat_map(|r| r.ops.clone()) {
        r.apply(op);
    }
    assert_eq!((r.pods[0].pod.name.as_str(), r.services["default/ghost"].node_port), ("ghost-ep1", Some(31266)));
    let attached = read("cni-attachment");
    let Op::PodPut(p) = &attached.records[0].ops[0] else { panic!("{attached:?}") };
    assert_eq!(
        (p.pod.name.as_str(), p.cni.as_ref().map(|c| c.container_id.as_str())),
        ("default/web", Some("c0ffee01"))
    );
    assert_eq!(read("empty-journal"), Journal { records: vec![], valid_len: 8, torn: None });
    assert!(matches!(read("torn-short").torn, Some(Torn::Short { .. })));
    assert_eq!(read("torn-short").records.len(), 2);
    assert!(matches!(read("bad-checksum").torn, Some(Torn::Checksum { .. })));
    assert!(matches!(read("out-of-order").torn, Some(Torn::Sequence { seq: 4, prev: 5, .. })));
    assert_eq!(read("bad-header").torn, Some(Torn::Header));
    assert!(matches!(read("not-ops").torn, Some(Torn::Payload { .. })));
    assert!(matches!(read("huge-length").torn, Some(Torn::Length { len: u32::MAX, .. })));
}
