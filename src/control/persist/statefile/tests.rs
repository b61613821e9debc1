//! The state file on disk: appends cost the change, compaction keeps every change, a
//! torn tail is counted and ignored.

use super::*;
use crate::core::nat::service::{Protocol, Service, ServiceSpec};

fn spec(i: u32) -> ServiceSpec {
    ServiceSpec {
        name: format!("default/s{i:06}"),
        protocol: Protocol::Tcp,
        cluster_ip: std::net::Ipv4Addr::from(0x0afa_0000 + i),
        port: 80,
        node_port: None,
        endpoints: vec!["10.244.1.5:80".parse().unwrap()],
    }
}

fn table(n: u32) -> ServiceTable {
    let mut t = ServiceTable::default();
    for i in 0..n {
        t.insert(Service::carrying(spec(i), None));
    }
    t
}

fn source(t: &ServiceTable) -> Source {
    Source { seed: 7, pods: vec![], services: t.clone(), restore_sysctls: vec![("ip_forward".into(), "0".into())] }
}

fn paths(dir: &std::path::Path) -> Paths {
    Paths::for_socket(&dir.join("n.sock"))
}

#[test]
fn appends_cost_the_change_and_replay_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    let mut t = table(1000);
    let mut sf = StateFile::new(p.clone(), 0);
    sf.snapshot(source(&t));
    let snap = std::fs::metadata(&p.state).unwrap().len();
    assert!(snap > 100_000, "{snap}");
    // One more service: the snapshot is untouched, the journal grows by one record.
    t.insert(Service::carrying(spec(1000), None));
    sf.record(Op::ServicePut(spec(1000)));
    sf.flush(|| unreachable!("no compaction for one record"));
    assert_eq!(std::fs::metadata(&p.state).unwrap().len(), snap);
    let j = std::fs::metadata(&p.journal).unwrap().len();
    assert!(j < 300, "one record, {j} bytes");
    sf.record(Op::ServiceDel(spec(3).name));
    sf.flush(|| unreachable!());
    let st = load(&p).unwrap();
    assert_eq!((st.seq, st.seed, st.services.len()), (2, 7, 1000));
    assert!(st.services.iter().any(|s| s.name == "default/s001000"));
    assert!(!st.services.iter().any(|s| s.name == "default/s000003"));
    assert!(st.services.windows(2).all(|w| w[0].name < w[1].name), "sorted by name");
}

#[test]
fn compaction_runs_off_the_request_and_keeps_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    let mut t = table(10);
    let mut sf = StateFile::new(p.clone(), 0);
    sf.snapshot(source(&t));
    // Records until the journal passes JOURNAL_MIN: a compaction starts in the background.
    let mut i = 10;
    while sf.compaction.is_none() {
        t.insert(Service::carrying(spec(i), None));
        sf.record(Op::ServicePut(spec(i)));
        sf.flush(|| source(&t));
        i += 1;
    }
    // Changes go on while it runs: they land in the fresh journal.
    for _ in 0..5 {
        t.insert(Service::carrying(spec(i), None));
        sf.record(Op::ServicePut(spec(i)));
        sf.flush(|| source(&t));
        i += 1;
    }
    let st = load(&p).unwrap();
    assert_eq!(st.services.len() as u32, i, "mid-compaction, old journal + new journal replay");
    sf.finish();
    assert!(!p.journal_old.exists());
    assert_eq!(sf.compactions, 1);
    assert!(std::fs::metadata(&p.journal).unwrap().len() < 2_000);
    let st = load(&p).unwrap();
    assert_eq!(st.services.len() as u32, i, "after compaction");
    assert_eq!(st.seq, sf.seq());
}

#[test]
fn a_torn_tail_is_counted_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    let t = table(3);
    let mut sf = StateFile::new(p.clone(), 0);
    sf.snapshot(source(&t));
    sf.record(Op::ServiceDel(spec(0).name));
    sf.flush(|| unreachable!());
    sf.record(Op::ServiceDel(spec(1).name));
    sf.flush(|| unreachable!());
    drop(sf);
    // The second record loses its last bytes (a write cut short).
    let mut b = std::fs::read(&p.journal).unwrap();
    b.truncate(b.len() - 3);
    std::fs::write(&p.journal, &b).unwrap();
    let before = TORN_TAILS.load(Ordering::Relaxed);
    let st = load(&p).unwrap();
    assert!(TORN_TAILS.load(Ordering::Relaxed) > before, "counted");
    let names: Vec<&str> = st.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["default/s000001", "default/s000002"], "the whole first record replayed");
    assert_eq!(st.seq, 1);
    // The next start snapshots and starts a fresh journal: the tail is gone for good.
    let mut sf = StateFile::new(p.clone(), st.seq);
    sf.snapshot(source(&t));
    assert_eq!(std::fs::read(&p.journal).unwrap(), MAGIC);
    // No snapshot: nothing to replay onto.
    std::fs::remove_file(&p.state).unwrap();
    assert!(load(&p).is_none());
}
