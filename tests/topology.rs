//! Labs from topology files (netns-scripts/topologies/, docs/lab.md): the three-node
//! mixed lab (a kernel node between two ucanal nodes, a second LAN) where every pod
//! reaches every other; a file that does not validate, refused with its line and column
//! before anything is created; the graph of the article's lab. (The article lab and the
//! 16-node etcd cluster come from their files in every other lab test: `lab.sh up` and
//! `up --nodes N --etcd` go through topology files.)

mod common;

use std::process::{Command, ExitCode};

use common::harness::Suite;
use common::{Lab, repo, text};

const MIXED: &str = "netns-scripts/topologies/mixed.yaml";

fn main() -> ExitCode {
    let mut suite = Suite::new();
    suite
        .group("mixed_three_node_topology", &["ping", "curl", "iptables"], || {
            Lab::up("tw", &["--topology", repo().join(MIXED).to_str().unwrap()])
        })
        .phase("every_pod_reaches_every_other", every_pod_pings_every_other)
        .phase("the_service_from_the_manifest_answers_everywhere", service_everywhere)
        .phase("the_second_lan_joins_its_members", second_lan);
    suite.netns_test("a_broken_topology_is_refused_with_its_line_and_column", &[], broken_is_refused);
    suite.test("the_graph_of_the_article_lab", graph);
    suite.run()
}

const PODS: [(&str, &str); 4] =
    [("ghost-ep1", "10.244.1.5"), ("ghost-ep2", "10.244.0.74"), ("web-1", "10.244.2.5"), ("web-2", "10.244.2.6")];

fn every_pod_pings_every_other(lab: &Lab) {
    let mut failed = Vec::new();
    for (a, _) in PODS {
        for (b, ip) in PODS {
            if a != b && !lab.ping(a, ip, 2) {
                failed.push(format!("{a} -> {b} ({ip})"));
            }
        }
    }
    assert!(failed.is_empty(), "pings that failed: {failed:?}");
}

/// default/ghost from the topology's manifest, on the ucanal nodes' configs and the
/// kernel node's iptables alike.
fn service_everywhere(lab: &Lab) {
    for pod in ["ghost-ep1", "ghost-ep2", "web-1"] {
        let page = lab.curl(pod, "http://10.250.0.40:2368/").unwrap_or_else(|e| panic!("{pod}: {e}"));
        assert!(page.contains("ghost-ep"), "{pod}: {page}");
    }
    assert!(lab.curl("client", "http://172.16.240.132:31266/").is_ok(), "NodePort of the kernel node");
    assert!(lab.curl("client", "http://172.16.240.133:31266/").is_ok(), "NodePort of centos7-3");
}

fn second_lan(lab: &Lab) {
    let out = lab.exec("centos7-1", &["ping", "-c", "1", "-W", "2", "192.168.77.133"]);
    assert!(out.status.success(), "centos7-1 -> centos7-3 on backplane: {}", text(&out.stdout));
    let addr = text(&lab.exec("centos7-3", &["ip", "-4", "-o", "addr", "show", "dev", "eth1"]).stdout);
    assert!(addr.contains("192.168.77.133/24"), "{addr}");
}

fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let mut v: Vec<String> =
        text(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect();
    v.sort();
    v
}

/// A pod address outside its node's pod CIDR, on line 33 column 15 of the file: `up` says
/// so and creates nothing (the namespaces are the same before and after, no run dir).
fn broken_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text_in = std::fs::read_to_string(repo().join(MIXED)).unwrap();
    let broken = text_in.replace("          ip: 10.244.0.74\n", "          ip: 10.244.9.74\n");
    assert_ne!(broken, text_in);
    let line = broken.lines().position(|l| l.contains("10.244.9.74")).unwrap() + 1;
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, broken).unwrap();
    let prefix = Lab::prefix_for("tz");
    let before = namespaces();
    let out = Command::new(repo().join("netns-scripts/lab.sh"))
        .args(["up", "--topology"])
        .arg(&file)
        .env("LAB_PREFIX", &prefix)
        .env("UCANAL_BIN", common::ucanal_bin())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a broken topology came up: {err}");
    let want = format!("broken.yaml:{line}:15: topology.nodes.centos7-2.pods.ghost-ep2.ip");
    assert!(err.contains(&want), "want {want:?} in:\n{err}");
    assert!(err.contains("10.244.9.74 is not a pod address of the node's 10.244.0.0/24"), "{err}");
    assert_eq!(namespaces(), before, "nothing is created");
    assert!(!std::path::Path::new(&format!("/run/ucanal-lab/{prefix}")).exists(), "no run dir");
}

fn graph() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("article.svg");
    let out = Command::new(repo().join("netns-scripts/lab.sh"))
        .args(["graph", "netns-scripts/topologies/article.yaml", "--svg"])
        .arg(&svg)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dot = text(&out.stdout);
    for want in [
        "graph \"article\"",
        "\"centos7-1\" -- \"centos7-2\" [style=dashed",
        "\"pod ghost-ep1\"",
        "\"lan lan\"",
        "ens33 172.16.240.131",
    ] {
        assert!(dot.contains(want), "{want} in\n{dot}");
    }
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.contains("<svg") && drawn.contains("ghost&#45;ep1"), "{}", &drawn[..drawn.len().min(300)]);
    // The drawing in the docs is this one.
    let committed = std::fs::read_to_string(repo().join("docs/lab-article.svg")).expect("docs/lab-article.svg");
    assert!(committed.contains("<svg") && committed.contains("centos7&#45;2"));
}
