//! A bad config is refused with a message naming the field, a non-zero exit code,
//! and nothing left behind (no TAP, no route, no rule).

mod common;

use std::process::{Command, ExitCode};

use common::harness::Suite;
use common::{text, ucanal_bin};

const GOOD: &str = r#"
[node]
name = "centos7-1"
uplink = "ens33"
node_ip = "172.16.240.131"
pod_cidr = "10.244.1.0/24"
cluster_cidr = "10.244.0.0/16"
service_cidr = "10.250.0.0/16"
vtep_mac = "8a:40:90:1c:cf:7e"

[api]
socket = "/run/ucanal/SOCKET.sock"

[[pods]]
name = "ghost-ep1"
netns = "POD"
ip = "10.244.1.5"
"#;

fn run(cfg: &str, ns: &str) -> std::process::Output {
    let path = std::env::temp_dir().join(format!("ucanal-cfg-{}-{}.toml", std::process::id(), cfg.len()));
    std::fs::write(&path, cfg).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(ucanal_bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    out
}

fn main() -> ExitCode {
    let mut suite = Suite::new();
    suite.test("check_names_the_field", check_names_the_field);
    let mut group = suite.group("bad_config_leaves_nothing_behind", &[], Namespaces::up);
    for (name, edit, want) in CASES {
        group = group.phase(name, move |n: &Namespaces| refused_cleanly(n, edit, want));
    }
    drop(group);
    suite.run()
}

/// `ucanal check` needs no privileges: the same validation, offline.
fn check_names_the_field() {
    let cases = [
        ("ip = \"10.244.1.5\"", "ip = \"10.245.1.5\"", "pods[0].ip: 10.245.1.5 is outside node.pod_cidr 10.244.1.0/24"),
        ("vtep_mac = \"8a:40:90:1c:cf:7e\"", "vtep_mac = \"8a:40:90\"", "not a MAC address"),
        ("uplink = \"ens33\"", "uplink = \"ens33\"\ncolour = \"blue\"", "unknown field `colour`"),
        ("pod_cidr = \"10.244.1.0/24\"", "pod_cidr = \"10.244.1.0/33\"", "prefix length 33 is over 32"),
        ("[api]", "[dataplane]\ntap_offloads = false\ngro = true\n\n[api]", "dataplane.gro: needs tap_offloads"),
        ("[api]", "[dataplane]\nbusy_poll_us = 20000\n\n[api]", "dataplane.busy_poll_us: must be 0 .. 10000"),
        ("[api]", "[dataplane]\nbatch = 0\n\n[api]", "dataplane.batch: must be 1..1024"),
    ];
    for (from, to, want) in cases {
        let cfg = GOOD.replace(from, to);
        let path = std::env::temp_dir().join(format!("ucanal-check-{}-{}.toml", std::process::id(), want.len()));
        std::fs::write(&path, &cfg).unwrap();
        let out = Command::new(ucanal_bin()).args(["check", "--config"]).arg(&path).output().unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(out.status.code(), Some(2), "exit code for {want}");
        let err = text(&out.stderr);
        assert!(err.contains("config error") && err.contains(want), "want {want:?}, got {err}");
    }
}

/// How a case changes the good config (given the pod's namespace name).
type Edit = fn(&str, &str) -> String;

/// The bad configs `ucanal run` must refuse: (phase, the change, what the error says).
const CASES: [(&str, Edit, &str); 5] = [
    // Semantic errors found before anything is created.
    ("pod_ip_outside_pod_cidr", |g, _| g.replace("ip = \"10.244.1.5\"", "ip = \"10.245.1.5\""), "pods[0].ip"),
    (
        "uplink_not_found",
        |g, _| g.replace("uplink = \"ens33\"", "uplink = \"eth9\""),
        "node.uplink: interface eth9 not found",
    ),
    (
        "node_ip_not_on_the_uplink",
        |g, _| g.replace("node_ip = \"172.16.240.131\"", "node_ip = \"172.16.240.99\""),
        "node.node_ip: 172.16.240.99 is not an address of ens33",
    ),
    (
        "pod_netns_missing",
        |g, pod| g.replace(&format!("netns = \"{pod}\""), "netns = \"no-such-netns\""),
        "pods[0].netns: /run/netns/no-such-netns does not exist",
    ),
    // A failure after the host port and rules were created: the pod's eth0 exists.
    ("failure_after_the_host_port_and_rules_were_made", |g, _| g.to_string(), "eth0"),
];

/// A node namespace with its uplink, a pod namespace whose eth0 is already taken, and
/// what both looked like before any `ucanal run`; both removed when dropped.
struct Namespaces {
    tag: String,
    node: String,
    pod: String,
    good: String,
    node_before: String,
    pod_with_eth0: String,
}

fn sh(ns: &str, line: &str) -> std::process::Output {
    Command::new("ip").args(["netns", "exec", ns, "sh", "-c", line]).output().unwrap()
}

fn snapshot(ns: &str) -> String {
    text(&sh(ns, "ip -o link; ip route show table all; ip rule").stdout)
}

impl Namespaces {
    fn up() -> Namespaces {
        let tag = format!("tb{}-", std::process::id() % 10000);
        let (node, pod) = (format!("{tag}node"), format!("{tag}pod"));
        for n in [&node, &pod] {
            assert!(Command::new("ip").args(["netns", "add", n]).status().unwrap().success());
        }
        let mut ns = Namespaces {
            good: String::new(),
            node_before: String::new(),
            pod_with_eth0: String::new(),
            tag,
            node,
            pod,
        };
        assert!(sh(&ns.node, "ip link add ens33 type veth peer name ens33p && ip addr add 172.16.240.131/24 dev ens33 && ip link set ens33 up").status.success());
        ns.good = GOOD.replace("SOCKET", &format!("{}n", ns.tag)).replace("POD", &ns.pod);
        ns.node_before = snapshot(&ns.node);
        assert!(sh(&ns.pod, "ip link add eth0 type veth peer name eth0p").status.success());
        ns.pod_with_eth0 = snapshot(&ns.pod);
        ns
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in [&self.node, &self.pod] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// `ucanal run` with the edited config fails naming the fault and changes neither namespace.
fn refused_cleanly(n: &Namespaces, edit: Edit, want: &str) {
    let out = run(&edit(&n.good, &n.pod), &n.node);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "ucanal run accepted a bad config ({want})");
    assert!(err.contains(want), "want {want:?} in: {err}");
    assert_eq!(snapshot(&n.node), n.node_before, "node namespace changed after: {err}");
    assert_eq!(snapshot(&n.pod), n.pod_with_eth0, "pod namespace changed after: {err}");
    assert!(!std::path::Path::new(&format!("/run/ucanal/{}n.sock", n.tag)).exists(), "socket left behind");
}
