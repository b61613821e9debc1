//! A bad config is refused with a message naming the field, a non-zero exit code,
//! and nothing left behind (no TAP, no route, no rule).

mod common;

use std::process::Command;

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

/// `ucanal check` needs no privileges: the same validation, offline.
#[test]
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

#[test]
fn bad_config_leaves_nothing_behind() {
    if !common::require_netns(&[]) {
        return;
    }
    let tag = format!("tb{}-", std::process::id() % 10000);
    let (node, pod) = (format!("{tag}node"), format!("{tag}pod"));
    struct Cleanup(Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = Command::new("ip").args(["netns", "del", n]).status();
            }
        }
    }
    let _cleanup = Cleanup(vec![node.clone(), pod.clone()]);
    for n in [&node, &pod] {
        assert!(Command::new("ip").args(["netns", "add", n]).status().unwrap().success());
    }
    let sh = |ns: &str, line: &str| Command::new("ip").args(["netns", "exec", ns, "sh", "-c", line]).output().unwrap();
    assert!(sh(&node, "ip link add ens33 type veth peer name ens33p && ip addr add 172.16.240.131/24 dev ens33 && ip link set ens33 up").status.success());
    let good = GOOD.replace("SOCKET", &format!("{tag}n")).replace("POD", &pod);
    let snapshot = |ns: &str| text(&sh(ns, "ip -o link; ip route show table all; ip rule").stdout);
    let (node_before, pod_before) = (snapshot(&node), snapshot(&pod));

    let cases: Vec<(String, &str)> = vec![
        // Semantic errors found before anything is created.
        (good.replace("ip = \"10.244.1.5\"", "ip = \"10.245.1.5\""), "pods[0].ip"),
        (good.replace("uplink = \"ens33\"", "uplink = \"eth9\""), "node.uplink: interface eth9 not found"),
        (
            good.replace("node_ip = \"172.16.240.131\"", "node_ip = \"172.16.240.99\""),
            "node.node_ip: 172.16.240.99 is not an address of ens33",
        ),
        (
            good.replace(&format!("netns = \"{pod}\""), "netns = \"no-such-netns\""),
            "pods[0].netns: /run/netns/no-such-netns does not exist",
        ),
        // A failure after the host port and rules were created: the pod's eth0 exists.
        (good.clone(), "eth0"),
    ];
    assert!(sh(&pod, "ip link add eth0 type veth peer name eth0p").status.success());
    let pod_with_eth0 = snapshot(&pod);
    for (cfg, want) in &cases {
        let out = run(cfg, &node);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "ucanal run accepted a bad config ({want})");
        assert!(err.contains(want), "want {want:?} in: {err}");
        assert_eq!(snapshot(&node), node_before, "node namespace changed after: {err}");
        assert_eq!(snapshot(&pod), pod_with_eth0, "pod namespace changed after: {err}");
        assert!(!std::path::Path::new(&format!("/run/ucanal/{tag}n.sock")).exists(), "socket left behind");
    }
    let _ = pod_before;
}
