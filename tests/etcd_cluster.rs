//! Issue "a cluster on etcd", end to end: a real etcd (Debian's etcd-server) on the lab
//! LAN, nodes that find each other only through flannel's leases, a kernel node whose
//! lease is written by hand in flannel's format, nodes joining and leaving at runtime,
//! and an etcd outage the dataplane does not notice.

mod common;

use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::harness::Suite;
use common::{Lab, text, wait_until};

const PREFIX: &str = "/coreos.com/network";

fn etcdctl(lab: &Lab, args: &[&str]) -> String {
    let argv: Vec<&str> = ["etcdctl"].iter().chain(args).copied().collect();
    let out = lab.lab_sh(&argv);
    assert!(out.status.success(), "etcdctl {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

fn pingall(lab: &Lab) -> String {
    let out = lab.lab_sh(&["pingall"]);
    assert!(out.status.success(), "pingall: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

fn routes(lab: &Lab, node: &str) -> String {
    lab.ucanal_ok(node, &["show", "routes"])
}

/// Waits until no node in `ucanal_nodes` (and no kernel node in `kernel_nodes`) routes `subnet`.
fn wait_route_gone(lab: &Lab, ucanal_nodes: &[&str], kernel_nodes: &[&str], subnet: &str) -> Duration {
    wait_until(Duration::from_secs(15), || {
        ucanal_nodes.iter().all(|n| !routes(lab, n).contains(subnet))
            && kernel_nodes.iter().all(|n| !text(&lab.exec(n, &["ip", "route"]).stdout).contains(subnet))
    })
    .unwrap_or_else(|| panic!("{subnet} still routed somewhere"))
}

fn main() -> ExitCode {
    let mut suite = Suite::new();
    let service = "the_articles_service_reaches_every_node";
    suite
        .group("etcd_mixed_cluster", &["ping", "curl", "etcd", "etcdctl"], || {
            Lab::up("te", &["--nodes", "4", "--etcd", "--kernel", "4"])
        })
        .phase("ucanals_lease_is_flanneds_byte_for_byte", |lab| {
            let lease = etcdctl(lab, &["get", "--print-value-only", &format!("{PREFIX}/subnets/10.244.1.0-24")]);
            assert_eq!(
                lease.trim(),
                r#"{"PublicIP":"172.16.240.131","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}}"#
            );
        })
        .phase("status_shows_this_cluster_healthy", status_shows_this_cluster)
        .phase("every_pod_reaches_every_other", every_pod_reaches_every_other)
        .phase("hand_written_leases", hand_written_leases)
        .phase("join_and_leave", join_and_leave)
        .phase(service, the_articles_service)
        .phase_after("an_etcd_outage_goes_unnoticed_by_the_dataplane", &[service], outage);
    suite
        .group("etcd_sixteen_nodes", &["ping", "etcd", "etcdctl"], || Lab::up("tf", &["--nodes", "16", "--etcd"]))
        .phase("every_pod_reaches_every_other", |lab| assert_eq!(pingall(lab), "240/240"))
        .phase("a_17th_node_joins", seventeenth_joins)
        .phase_after("its_deleted_lease_takes_its_route_away", &["a_17th_node_joins"], seventeenth_leaves)
        .phase("a_node_reclaims_its_deleted_lease", reclaims_its_lease);
    let leased = "distinct_subnets_leased_from_etcd";
    suite
        .group("etcd_nodes_without_pod_cidr", &["ping", "etcd", "etcdctl"], AutoCidr::up)
        .phase(leased, AutoCidr::leased)
        .phase("a_restart_reuses_the_nodes_lease", |a| restart_reuses_lease(&a.lab))
        .phase_after("a_pod_outside_the_leased_subnet_stops_the_start", &[leased], AutoCidr::pod_outside);
    suite.run()
}

/// Every pod reaches every other, ucanal and kernel nodes alike; TCP both ways with the
/// kernel node, whose lease was written with etcdctl; node01's peers come from etcd.
fn every_pod_reaches_every_other(lab: &Lab) {
    assert_eq!(pingall(lab), "12/12");
    assert!(lab.curl("pod01", "http://10.244.4.5:2368/").unwrap().contains("pod04"));
    assert!(lab.curl("pod04", "http://10.244.1.5:2368/").unwrap().contains("pod01"));
    let peers = lab.ucanal_ok("node01", &["show", "peers"]);
    assert_eq!(peers.matches(" etcd ").count(), 3, "{peers}");
    assert!(peers.contains("/coreos.com/network/subnets/10.244.4.0-24"), "{peers}");
}

/// `ucanal apply -f` of the article's Service + Endpoints on one node reaches every node
/// through etcd: `curl 172.16.240.131:31266` (and .132) answers from both ghost pods.
fn the_articles_service(lab: &Lab) {
    let manifest = common::repo().join("netns-scripts/manifests/ghost.yaml");
    let m = lab.ucanal_ok("node02", &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(m.contains("2 object(s) written in etcd"), "{m}");
    wait_until(Duration::from_secs(5), || lab.ucanal_ok("node01", &["get", "services"]).contains("2368:31266/TCP"))
        .expect("node01 has default/ghost");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..16 {
        for ip in ["172.16.240.131", "172.16.240.132"] {
            let body = lab.curl("client", &format!("http://{ip}:31266/")).expect("NodePort answers");
            seen.insert(body.split_whitespace().next().unwrap_or_default().to_string());
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["pod01", "pod02"], "both endpoints answer");
    let e = lab.ucanal_ok("node03", &["get", "endpoints"]);
    assert!(e.contains("10.244.0.74:2368,10.244.1.5:2368"), "{e}");
}

/// A lease put by hand in flannel's format adds the peer; another backend's is ignored.
fn hand_written_leases(lab: &Lab) {
    let key = format!("{PREFIX}/subnets/10.244.9.0-24");
    let v = r#"{"PublicIP":"172.16.240.199","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:09:00"}}"#;
    etcdctl(lab, &["put", &key, v]);
    let hg = format!("{PREFIX}/subnets/10.244.10.0-24");
    etcdctl(lab, &["put", &hg, r#"{"PublicIP":"172.16.240.198","PublicIPv6":null,"BackendType":"host-gw"}"#]);
    wait_until(Duration::from_secs(5), || routes(lab, "node02").contains("10.244.9.0/24 via 10.244.9.0 dev flannel.1"))
        .expect("hand-written lease became a route");
    let f = lab.ucanal_ok("node02", &["show", "fdb"]);
    assert!(f.contains("0a:58:0a:f4:09:00 dev flannel.1 dst 172.16.240.199 self permanent"), "{f}");
    assert!(!routes(lab, "node02").contains("10.244.10.0"), "host-gw lease must be ignored");
    etcdctl(lab, &["del", &key]);
    etcdctl(lab, &["del", &hg]);
    wait_route_gone(lab, &["node01", "node02", "node03"], &["node04"], "10.244.9.0/24");
}

/// A node started at runtime is reachable from every pod; its deleted lease takes its
/// routes away everywhere.
fn join_and_leave(lab: &Lab) {
    let t = Instant::now();
    let out = lab.lab_sh(&["add-node"]);
    assert!(out.status.success(), "add-node: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "node05");
    wait_until(Duration::from_secs(10), || routes(lab, "node01").contains("10.244.5.0/24"))
        .expect("node01 routes to node05");
    println!("node05 start -> routed by node01: {:?}", t.elapsed());
    assert_eq!(pingall(lab), "20/20");
    let out = lab.lab_sh(&["remove-node", "node05"]);
    assert!(out.status.success(), "remove-node: {}", text(&out.stderr));
    let took = wait_route_gone(lab, &["node01", "node02", "node03"], &["node04"], "10.244.5.0/24");
    println!("node05 lease deleted -> routes gone everywhere: {took:?}");
}

/// etcd unreachable for a while: established and new TCP keep working, the outage is
/// counted, and a lease deleted meanwhile is gone everywhere once etcd is back.
fn outage(lab: &Lab) {
    let secs: u64 = std::env::var("UCANAL_ETCD_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    // A download that lasts through the outage: (secs + 6) s at 64 KB/s.
    let size = (secs + 6) * 64 * 1024;
    let www = format!("/run/ucanal-lab/{}/www/pod02/big", lab.prefix);
    std::fs::write(&www, vec![b'x'; size as usize]).expect("writing the download");
    let mut dl = lab.background(
        "pod01",
        "curl -sS -m 120 --limit-rate 64k -o /dev/null -w '%{size_download}' http://10.244.0.74:2368/big",
    );
    // node03 goes away without a word (its lease stays), then etcd drops off the LAN.
    let pid = std::fs::read_to_string(format!("/run/ucanal-lab/{}/node03.pid", lab.prefix)).expect("node03 pid");
    std::process::Command::new("kill").arg(pid.trim()).status().expect("kill node03");
    std::thread::sleep(Duration::from_millis(500));
    assert!(lab.lab_sh(&["etcd-cut"]).status.success());
    let t = Instant::now();
    etcdctl(lab, &["del", &format!("{PREFIX}/subnets/10.244.3.0-24")]);
    wait_until(Duration::from_secs(10), || {
        let v: serde_json::Value = serde_json::from_str(&lab.ucanal_ok("node01", &["show", "node"])).unwrap();
        v["peers"]["cluster"]["connected"] == false && v["peers"]["cluster"]["outages"].as_u64() >= Some(1)
    })
    .expect("node01 notices the outage");
    while t.elapsed() < Duration::from_secs(secs) {
        assert!(lab.curl("pod01", "http://10.244.4.5:2368/").unwrap().contains("pod04"), "new TCP during the outage");
        assert!(lab.ping("pod02", "10.244.1.5", 1), "ping during the outage");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(routes(lab, "node01").contains("10.244.3.0/24"), "last tables kept during the outage");
    // apply needs etcd: it fails naming it, and nothing changes.
    let manifest = common::repo().join("netns-scripts/manifests/ghost.yaml");
    let out = lab.ucanal("node01", &["delete", "-f", manifest.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out.stderr).contains("etcd is unreachable"), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("nothing applied"));
    assert!(lab.ucanal_ok("node01", &["get", "services"]).contains("ghost"), "nothing changed");
    assert!(lab.curl("client", "http://172.16.240.131:31266/").is_ok(), "NodePort during the outage");
    assert!(lab.lab_sh(&["etcd-heal"]).status.success());
    let took = wait_route_gone(lab, &["node01", "node02"], &["node04"], "10.244.3.0/24");
    println!("etcd back -> lease deleted during the outage gone everywhere: {took:?}");
    let out = wait_until(Duration::from_secs(60), || dl.0.try_wait().ok().flatten().is_some());
    assert!(out.is_some(), "download did not finish");
    let mut so = String::new();
    std::io::Read::read_to_string(dl.0.stdout.as_mut().unwrap(), &mut so).unwrap();
    assert_eq!(so.trim(), size.to_string(), "established TCP across the outage");
    assert!(lab.lab_sh(&["remove-node", "node03"]).status.success());
    assert_eq!(pingall(lab), "6/6");
}

/// Polls every node's routes until `done` holds on each; the sorted times since `t`
/// at which each node was first seen done (the polling round adds up to ~16 listings).
fn per_node(lab: &Lab, nodes: &[String], t: Instant, done: impl Fn(&str) -> bool) -> Vec<Duration> {
    let mut at: Vec<Option<Duration>> = vec![None; nodes.len()];
    while at.iter().any(Option::is_none) {
        assert!(t.elapsed() < Duration::from_secs(20), "not every node converged: {at:?}");
        for (i, n) in nodes.iter().enumerate() {
            if at[i].is_none() && done(&routes(lab, n)) {
                at[i] = Some(t.elapsed());
            }
        }
    }
    let mut v: Vec<Duration> = at.into_iter().flatten().collect();
    v.sort();
    v
}

fn sixteen() -> Vec<String> {
    (1..=16).map(|i| format!("node{i:02}")).collect()
}

/// A 17th node at runtime: every node routes to it, every pod reaches every other.
fn seventeenth_joins(lab: &Lab) {
    let t = Instant::now();
    let out = lab.lab_sh(&["add-node"]);
    assert!(out.status.success(), "add-node: {}", text(&out.stderr));
    let seen = per_node(lab, &sixteen(), t, |r| r.contains("10.244.17.0/24"));
    println!("node17 start -> routed, per node: median {:?} max {:?}", seen[seen.len() / 2], seen[seen.len() - 1]);
    assert_eq!(pingall(lab), "272/272");
}

/// node17 stops (its lease stays, as flanneld's does), then its lease is deleted: every
/// node drops the route.
fn seventeenth_leaves(lab: &Lab) {
    let pid = std::fs::read_to_string(format!("/run/ucanal-lab/{}/node17.pid", lab.prefix)).expect("node17 pid");
    std::process::Command::new("kill").arg(pid.trim()).status().expect("kill node17");
    wait_until(Duration::from_secs(10), || !std::path::Path::new(&format!("/proc/{}", pid.trim())).exists())
        .expect("node17 stops");
    let t = Instant::now();
    etcdctl(lab, &["del", &format!("{PREFIX}/subnets/10.244.17.0-24")]);
    let gone = per_node(lab, &sixteen(), t, |r| !r.contains("10.244.17.0/24"));
    assert!(lab.lab_sh(&["remove-node", "node17"]).status.success());
    println!(
        "node17 lease deleted -> route gone, per node: median {:?} max {:?}",
        gone[gone.len() / 2],
        gone[gone.len() - 1]
    );
}

/// A live node's lease deleted by someone else: node07 claims it again (and says so
/// loudly), so what must hold is that every node routes to node07 again at once.
fn reclaims_its_lease(lab: &Lab) {
    etcdctl(lab, &["del", &format!("{PREFIX}/subnets/10.244.7.0-24")]);
    let nodes = sixteen();
    let others: Vec<&str> = nodes.iter().map(String::as_str).filter(|n| *n != "node07").collect();
    let gone = wait_until(Duration::from_secs(10), || {
        text(&lab.lab_sh(&["etcdctl", "get", &format!("{PREFIX}/subnets/10.244.7.0-24")]).stdout).contains("10.244.7.0")
    });
    assert!(gone.is_some(), "node07 re-claims its lease");
    wait_until(Duration::from_secs(10), || others.iter().all(|n| routes(lab, n).contains("10.244.7.0/24")))
        .expect("every node routes to node07 again");
    let log = std::fs::read_to_string(format!("/run/ucanal-lab/{}/node07.log", lab.prefix)).unwrap();
    assert!(log.contains("THIS NODE'S LEASE WAS DELETED"), "node07 says so loudly");
}

/// The pod CIDR and its source, from `ucanal show node`.
fn node_cidr(lab: &Lab, node: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(&lab.ucanal_ok(node, &["show", "node"])).expect("show node JSON");
    let cidr = v["node"]["pod_cidr"].as_str().unwrap_or_default().to_string();
    (cidr, v["pod_cidr_from"].as_str().unwrap_or_default().to_string())
}

/// Nodes whose configs name no pod_cidr, and the subnets they leased.
struct AutoCidr {
    lab: Lab,
    subnets: OnceLock<std::collections::BTreeSet<String>>,
}

impl AutoCidr {
    fn up() -> AutoCidr {
        AutoCidr { lab: Lab::up("tl", &["--nodes", "3", "--etcd", "--auto-cidr"]), subnets: OnceLock::new() }
    }

    /// Each node leased a distinct free subnet from etcd, in flanneld's format, and says
    /// so in `show node`; their pods (added at each subnet's .5) ping each other.
    fn leased(&self) {
        let lab = &self.lab;
        let conf = std::fs::read_to_string(lab.run_dir().join("node01.toml")).expect("node01.toml");
        assert!(!conf.contains("pod_cidr"), "the lab left pod_cidr in: {conf}");
        let mut subnets = std::collections::BTreeSet::new();
        for n in ["node01", "node02", "node03"] {
            let (cidr, from) = node_cidr(lab, n);
            let key = format!("{PREFIX}/subnets/{}", cidr.replace('/', "-"));
            assert_eq!(from, format!("etcd lease {key} (none configured)"), "{n}");
            assert!(cidr.starts_with("10.244.") && cidr.ends_with(".0/24"), "{n}: {cidr}");
            // The lease is flanneld's, byte for byte, with this node's address.
            let ip = format!("172.16.240.{}", 130 + n[4..].parse::<u32>().unwrap());
            let lease = etcdctl(lab, &["get", "--print-value-only", &key]);
            assert!(
                lease.trim().starts_with(&format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","#))
            );
            subnets.insert(cidr);
        }
        assert_eq!(subnets.len(), 3, "distinct subnets: {subnets:?}");
        println!("leased: {subnets:?}");
        let _ = self.subnets.set(subnets);
        assert_eq!(pingall(lab), "6/6");
    }

    /// A pod outside the leased subnet: refused before anything is built, both named.
    fn pod_outside(&self) {
        let (lab, subnets) = (&self.lab, self.subnets.get().expect("the leased subnets"));
        let pid = std::fs::read_to_string(lab.run_dir().join("node03.pid")).expect("node03 pid");
        std::process::Command::new("kill").arg(pid.trim()).status().expect("kill node03");
        wait_until(Duration::from_secs(10), || !std::path::Path::new(&format!("/proc/{}", pid.trim())).exists())
            .expect("node03 stops");
        let conf3 = std::fs::read_to_string(lab.run_dir().join("node03.toml.in")).unwrap();
        let ip3 = conf3.lines().find_map(|l| l.strip_prefix("ip = \"")).map(|s| s.trim_end_matches('"').to_string());
        let ip3 = ip3.expect("node03's pod in its config");
        let bad = lab.run_dir().join("node03-bad.toml");
        std::fs::write(&bad, conf3.replace(&format!("ip = \"{ip3}\""), "ip = \"10.244.250.5\"")).unwrap();
        let out =
            lab.exec("node03", &[common::ucanal_bin().to_str().unwrap(), "run", "--config", bad.to_str().unwrap()]);
        let err = text(&out.stderr);
        let leased = subnets.iter().find(|s| ip3.starts_with(s.trim_end_matches("0/24"))).expect("node03's subnet");
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!(
                "pods[0].ip: pod pod03 at 10.244.250.5 is outside {leased}, the subnet this node leased from etcd"
            )),
            "{err}"
        );
    }
}

/// A restart (its config has the pod now, still no pod_cidr) reuses the node's lease.
fn restart_reuses_lease(lab: &Lab) {
    let (before, _) = node_cidr(lab, "node02");
    let ms = lab.restart("node02", "TERM", "");
    assert_eq!(node_cidr(lab, "node02").0, before, "node02 got its own lease back");
    let log = std::fs::read_to_string(lab.run_dir().join("node02.log")).unwrap();
    assert!(log.contains(&format!("found lease {before} for 172.16.240.132, reusing")), "{log}");
    println!("node02 restarted in {ms} ms on its lease {before}");
    assert_eq!(pingall(lab), "6/6");
}

/// `lab.sh status` on a cluster lab lists its own nodes (3 ucanal, node04 a kernel node
/// with flannel-lite) and etcd, not the two-node reference lab's, and says healthy.
fn status_shows_this_cluster(lab: &Lab) {
    let out = lab.lab_sh(&["status"]);
    let so = text(&out.stdout);
    assert!(out.status.success(), "status says degraded on a healthy cluster:\n{so}{}", text(&out.stderr));
    assert!(so.contains("etcd "), "{so}");
    assert!(!so.contains("centos7-1") && !so.contains("ghost-ep1"), "the reference lab's nodes and pods:\n{so}");
    assert_eq!(so.lines().filter(|l| l.starts_with("node ") && l.contains("mode ucanal")).count(), 3, "{so}");
    assert!(
        so.lines().any(|l| l.starts_with("node ") && l.contains("mode kernel") && l.contains("flannel-lite pid")),
        "{so}"
    );
}
