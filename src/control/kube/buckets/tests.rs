use super::*;

const SVC: &str = r#"{"kind":"Service","metadata":{"name":"ghost","namespace":"default"},"spec":{"type":"NodePort","clusterIP":"10.250.0.40","ports":[{"protocol":"TCP","port":2368,"nodePort":31266}]}}"#;
const EP: &str = r#"{"kind":"Endpoints","metadata":{"name":"ghost","namespace":"default"},"subsets":[{"addresses":[{"ip":"10.244.1.5"}],"ports":[{"port":2368,"protocol":"TCP"}]}]}"#;
const EP2: &str = r#"{"kind":"Endpoints","metadata":{"name":"ghost","namespace":"default"},"subsets":[{"addresses":[{"ip":"10.244.0.74"}],"ports":[{"port":2368,"protocol":"TCP"}]}]}"#;

fn obj(s: &str) -> Object {
    serde_json::from_str(s).unwrap()
}

fn keys(ch: Change) -> (Vec<String>, Vec<String>) {
    let (put, deleted) = ch.split();
    let mut put: Vec<String> = put.iter().map(Object::key).collect();
    let mut deleted = deleted;
    put.sort();
    deleted.sort();
    (put, deleted)
}

#[test]
fn the_layout_is_fixed() {
    // FNV-1a 32 of the service name, modulo 1024: every node and version agrees.
    assert_eq!(bucket_of("default/ghost"), 894);
    assert_eq!(bucket_of("bench/svc-0"), 385);
    assert_eq!(bucket_of("kube-system/dns"), 422);
    assert_eq!(bucket_key(894), "buckets/0894");
    assert_eq!(slot("buckets/0894"), Slot::Bucket(894));
    assert_eq!(slot("services/default/ghost"), Slot::Single("services/default/ghost".into()));
    for odd in ["buckets/1024", "buckets/894", "buckets/x", "buckets/00894"] {
        assert!(matches!(slot(odd), Slot::Single(_)), "{odd}");
    }
}

#[test]
fn a_bucket_put_yields_only_what_changed() {
    let mut ix = Index::default();
    let mut ch = Change::default();
    ix.put("buckets/0894", format!("[{SVC},{EP}]").as_bytes(), 5, &mut ch);
    assert_eq!(keys(ch), (vec!["endpoints/default/ghost".into(), "services/default/ghost".into()], vec![]));
    assert_eq!(ix.rev, 5);
    let mut ch = Change::default();
    ix.put("buckets/0894", format!("[{SVC},{EP2}]").as_bytes(), 6, &mut ch);
    let (put, deleted) = ch.split();
    assert_eq!((put, deleted.len()), (vec![obj(EP2)], 0), "the unchanged Service is not decoded again");
    let mut ch = Change::default();
    ix.put("buckets/0894", format!("[{SVC}]").as_bytes(), 7, &mut ch);
    assert_eq!(keys(ch), (vec![], vec!["endpoints/default/ghost".into()]));
    let mut ch = Change::default();
    ix.put("buckets/0894", b"not json", 8, &mut ch);
    assert!(ch.0.is_empty(), "a garbled value changes nothing");
    let mut ch = Change::default();
    ix.delete("buckets/0894", 9, &mut ch);
    assert_eq!(keys(ch), (vec![], vec!["services/default/ghost".into()]));
    assert_eq!(ix.rev, 9);
}

#[test]
fn old_one_object_keys_are_read_and_moved_by_a_write() {
    let mut ix = Index::default();
    let mut ch = Change::default();
    ix.put("services/default/ghost", SVC.as_bytes(), 3, &mut ch);
    ix.put("endpoints/default/ghost", EP.as_bytes(), 3, &mut ch);
    assert_eq!(ch.0.len(), 2);
    // A write of the Endpoints moves both of the service's... only the ones it names.
    let plan = ix.plan(&[obj(EP2)], false);
    assert_eq!(plan.singles, ["endpoints/default/ghost"]);
    assert_eq!(plan.buckets, vec![BucketWrite { bucket: 894, rev: 0, value: Some(format!("[{EP2}]").into_bytes()) }]);
    // As etcd reports that transaction: the bucket, then the old key's delete.
    let mut ch = Change::default();
    ix.put("buckets/0894", plan.buckets[0].value.as_deref().unwrap(), 10, &mut ch);
    ix.delete("endpoints/default/ghost", 10, &mut ch);
    assert_eq!(ch.split(), (vec![obj(EP2)], vec![]), "the moved object stays");
    let mut ch = Change::default();
    ix.delete("services/default/ghost", 11, &mut ch);
    assert_eq!(keys(ch), (vec![], vec!["services/default/ghost".into()]));
}

#[test]
fn plans_rewrite_each_touched_bucket_once_guarded_by_its_revision() {
    let mut ix = Index::default();
    let mut ch = Change::default();
    ix.put("buckets/0894", format!("[{EP}]").as_bytes(), 4, &mut ch);
    let plan = ix.plan(&[obj(SVC), obj(EP)], false);
    // Sorted by object key: endpoints/... before services/...
    let want = format!("[{EP},{}]", serde_json::to_string(&obj(SVC)).unwrap());
    assert_eq!(plan.buckets, vec![BucketWrite { bucket: 894, rev: 4, value: Some(want.into_bytes()) }]);
    assert!(plan.singles.is_empty());
    assert_eq!(ix.plan(&[obj(EP)], false), Plan::default(), "nothing to write when nothing changes");
    let del = ix.plan(&[obj(EP)], true);
    assert_eq!(del.buckets, vec![BucketWrite { bucket: 894, rev: 4, value: None }], "its last object: deleted");
    assert_eq!(ix.plan(&[obj(SVC)], true), Plan::default(), "deleting what is not there writes nothing");
    // Many services: one write per bucket, every object in the bucket of its service.
    let many: Vec<Object> = (0..3000)
        .map(|i| obj(&SVC.replace("\"ghost\"", &format!("\"s{i}\"")).replace("10.250.0.40", "10.250.1.1")))
        .collect();
    let plan = ix.plan(&many, false);
    assert!(plan.buckets.len() <= BUCKETS as usize && plan.buckets.len() > 900, "{}", plan.buckets.len());
    let mut ch = Change::default();
    for w in &plan.buckets {
        ix.put(&bucket_key(w.bucket), w.value.as_deref().unwrap(), 20, &mut ch);
    }
    assert_eq!(ch.0.len(), 3000);
    assert!(ix.plan(&many, false).buckets.is_empty(), "written, then seen: nothing left to write");
}
