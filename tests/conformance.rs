//! The differential conformance suite (netns-scripts/conformance.sh): the same scenarios,
//! packet for packet, through a kernel centos7-1 and a ucanal centos7-1, compared header
//! field by header field. The test asserts what holds today:
//! - at least 30 scenarios, covering every row of the semantics the suite names, each of
//!   which captured frames (none compares nothing);
//! - every difference is explained in one line (none "unexplained");
//! - every scenario listed in `MUST_MATCH` is identical to the kernel;
//! - at least 95% of the scenarios are identical to the kernel.
//!
//! - docs/conformance.md shows this run's table and README.md its score (they are generated
//!   by `netns-scripts/conformance.sh --doc`, never edited by hand).
//!
//! What differs is reported by the suite's table (docs/conformance.md), each difference with
//! its reason: egress masquerade ports from ucanal's own range (the node's stack shares the
//! node IP).

mod common;

use std::process::{Command, ExitCode};
use std::sync::OnceLock;

use common::harness::Suite;

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

fn main() -> ExitCode {
    let mut suite = Suite::new();
    let ran = "the_suite_runs_and_removes_its_labs";
    suite
        .group("conformance_with_the_kernel", &["iptables", "iptables-save", "conntrack", "ethtool"], Run::suite)
        .phase(ran, Run::ran)
        .phase_after("at_least_30_scenarios_each_capturing_frames", &[ran], |r| {
            let rows = r.rows();
            assert!(rows.len() >= 30, "only {} scenarios", rows.len());
            for r in rows {
                let seen: u64 =
                    r["kernel_frames"].as_object().expect("frame counts").values().filter_map(|v| v.as_u64()).sum();
                assert!(seen > 0, "{}: no frame captured in the kernel lab; the scenario compares nothing", r["name"]);
            }
        })
        .phase_after("every_difference_is_explained", &[ran], |r| {
            let unexplained: Vec<_> = r
                .rows()
                .iter()
                .filter(|r| r["result"] == "differs" && r["explanation"].is_null())
                .map(|r| format!("{}: {:?}", r["name"], r["details"]))
                .collect();
            assert!(unexplained.is_empty(), "differences without an explanation:\n{}", unexplained.join("\n"));
        })
        .phase_after("the_scenarios_that_match_the_kernel_still_do", &[ran], |r| {
            for name in MUST_MATCH {
                let row = r.rows().iter().find(|x| x["name"] == *name).unwrap_or_else(|| panic!("no scenario {name}"));
                assert_eq!(row["result"], "same", "{name} differs from the kernel: {:?}", row["details"]);
            }
        })
        .phase_after("at_least_95_percent_identical", &[ran], |r| {
            let rows = r.rows();
            println!("score {}% ({} of {})", r.report()["score"], r.report()["same"], r.report()["total"]);
            let same = rows.iter().filter(|r| r["result"] == "same").count();
            assert!(same * 100 >= rows.len() * 95, "{same} of {} identical: under 95%", rows.len());
        })
        .phase_after("the_docs_show_this_runs_table_and_score", &[ran], |r| {
            let check = Command::new("python3")
                .arg(common::repo().join("netns-scripts/conformance/doc.py"))
                .arg("check")
                .arg(&r.json)
                .output()
                .expect("running netns-scripts/conformance/doc.py");
            assert!(
                check.status.success(),
                "docs/conformance.md or README.md does not show this run's results:\n{}{}",
                common::text(&check.stdout),
                common::text(&check.stderr)
            );
        });
    suite.run()
}

/// One run of netns-scripts/conformance.sh, and its JSON report.
struct Run {
    prefixes: [String; 2],
    _dir: tempfile::TempDir,
    json: std::path::PathBuf,
    out: std::process::Output,
    report: OnceLock<serde_json::Value>,
}

impl Run {
    fn suite() -> Run {
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
        Run { prefixes: [kp, up], _dir: dir, json, out, report: OnceLock::new() }
    }

    /// The suite exited 0, printed its table, removed both labs and wrote its report.
    fn ran(&self) {
        let table = common::text(&self.out.stdout);
        println!("{table}");
        assert!(self.out.status.success(), "conformance.sh failed:\n{table}{}", common::text(&self.out.stderr));
        for p in &self.prefixes {
            let left = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
            assert!(!common::text(&left.stdout).contains(p.as_str()), "namespaces {p}* left behind");
        }
        let text = std::fs::read_to_string(&self.json).expect("the suite's JSON");
        let _ = self.report.set(serde_json::from_str(&text).expect("JSON"));
    }

    fn report(&self) -> &serde_json::Value {
        self.report.get().expect("the suite's report")
    }

    fn rows(&self) -> &Vec<serde_json::Value> {
        self.report()["scenarios"].as_array().expect("scenarios")
    }
}
