//! The differential conformance suite (netns-scripts/conformance.sh): the same scenarios,
//! packet for packet, through a kernel centos7-1 and a ucanal centos7-1, compared header
//! field by header field. The test asserts what holds today:
//! - at least 30 scenarios, covering every row of the semantics the suite names, each of
//!   which captured frames (none compares nothing);
//! - every difference is explained in one line (none "unexplained");
//! - every scenario listed in `MUST_MATCH` is identical to the kernel;
//! - at least 95% of the scenarios are identical to the kernel.
//!
//! What differs is reported by the suite's table (README "Conformance with the kernel"),
//! each difference with its reason: egress masquerade ports from ucanal's own range (the
//! node's stack shares the node IP).

mod common;

use std::process::Command;

/// Scenarios that are identical to the kernel today; a regression in any fails the test.
const MUST_MATCH: &[&str] = &[
    "arp-gateway",
    "arp-remote-pod",
    "arp-same-node-pod",
    "arp-outside-address",
    "arp-probe-own-address",
    "arp-lan-node",
    "arp-lan-pod-address",
    "ping-pod-to-remote-pod",
    "ping-remote-pod-to-pod",
    "ping-same-node",
    "ping-node-ip",
    "ping-vtep-address",
    "ping-remote-vtep",
    "pod-rst-across-nodes",
    "ttl1-pod-to-remote",
    "ttl1-vxlan-in",
    "df-oversize-nodeport",
    "fragments-nodeport-no-df",
    "fragments-request-clusterip",
    "fragments-reply-clusterip",
    "nodeport-syn-remote",
    "nodeport-syn-local",
    "nodeport-udp-remote",
    "nodeport-from-pod",
    "clusterip-tcp-from-pod",
    "clusterip-tcp-same-node",
    "clusterip-udp-from-pod",
    "clusterip-tcp-from-node",
    "clusterip-udp-from-node",
    "hairpin-tcp",
    "hairpin-udp",
    "no-endpoints-tcp-clusterip",
    "no-endpoints-udp-clusterip",
    "no-endpoints-tcp-nodeport",
    "no-endpoints-udp-nodeport",
    "egress-masq-icmp",
    "nodeport-icmp-error",
    "clusterip-icmp-error-ttl",
    "vxlan-unknown-vni",
    "vxlan-unknown-peer",
    "vxlan-foreign-subnet",
    "vxlan-inner-dmac-other",
    "vxlan-inner-smac-own",
    "vxlan-transit-to-peer",
    "vxlan-transit-to-outside",
    "vxlan-to-clusterip",
    "spoofed-pod-source",
    "vxlan-partial-csum-udp",
    "vxlan-partial-csum-tcp",
    "vxlan-bad-full-csum",
    "dns-race",
    "tcp-fin-nodeport",
    "tcp-rst-nodeport",
    "udp-removed-endpoint",
];

#[test]
fn conformance_with_the_kernel() {
    if !common::require_netns(&["iptables", "iptables-save", "conntrack", "ethtool"]) {
        return;
    }
    let tag = std::process::id() % 10000;
    let (kp, up) = (format!("tk{tag}-"), format!("tu{tag}-"));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let json = dir.path().join("conformance.json");
    let out = Command::new(common::repo().join("netns-scripts/conformance.sh"))
        .arg("--json")
        .arg(&json)
        .env("CONF_KERNEL_PREFIX", &kp)
        .env("CONF_UCANAL_PREFIX", &up)
        .env("UCANAL_BIN", common::ucanal_bin())
        .env_remove("UCANAL_RUN_ARGS")
        .output()
        .expect("running netns-scripts/conformance.sh");
    let table = common::text(&out.stdout);
    println!("{table}");
    assert!(out.status.success(), "conformance.sh failed:\n{table}{}", common::text(&out.stderr));
    for p in [&kp, &up] {
        let left = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
        assert!(!common::text(&left.stdout).contains(p.as_str()), "namespaces {p}* left behind");
    }

    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the suite's JSON")).expect("JSON");
    let rows = rep["scenarios"].as_array().expect("scenarios");
    assert!(rows.len() >= 30, "only {} scenarios", rows.len());
    for r in rows {
        let seen: u64 = r["kernel_frames"].as_object().expect("frame counts").values().filter_map(|v| v.as_u64()).sum();
        assert!(seen > 0, "{}: no frame captured in the kernel lab; the scenario compares nothing", r["name"]);
    }
    let unexplained: Vec<_> = rows
        .iter()
        .filter(|r| r["result"] == "differs" && r["explanation"].is_null())
        .map(|r| format!("{}: {:?}", r["name"], r["details"]))
        .collect();
    assert!(unexplained.is_empty(), "differences without an explanation:\n{}", unexplained.join("\n"));
    for name in MUST_MATCH {
        let r = rows.iter().find(|r| r["name"] == *name).unwrap_or_else(|| panic!("no scenario {name}"));
        assert_eq!(r["result"], "same", "{name} differs from the kernel: {:?}", r["details"]);
    }
    println!("score {}% ({} of {})", rep["score"], rep["same"], rep["total"]);
    let same = rows.iter().filter(|r| r["result"] == "same").count();
    assert!(same * 100 >= rows.len() * 95, "{same} of {} identical: under 95%", rows.len());
}
