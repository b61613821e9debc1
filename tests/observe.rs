//! Issue "see the traffic": show (text and JSON), trace (synthetic and live), capture,
//! metrics, and the demo that walks the article.

mod common;

use std::process::{Command, ExitCode};
use std::time::Duration;

use common::harness::Suite;
use common::{Lab, text, wait_until};

fn json(lab: &Lab, node: &str, args: &[&str]) -> serde_json::Value {
    let out = lab.ucanal_ok(node, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ucanal {args:?} --json is not JSON ({e}):\n{out}"))
}

fn main() -> ExitCode {
    let mut suite = Suite::new();
    suite
        .group("show_trace_capture_metrics", &["curl", "tcpdump"], || {
            let lab = Lab::up_env("to", &[], &[("UCANAL_RUN_ARGS", "--metrics 127.0.0.1:9300")]);
            for _ in 0..6 {
                lab.curl("client", "http://172.16.240.131:31266/").expect("NodePort");
            }
            lab
        })
        .phase("listings_have_a_stable_json_form", listings_as_json)
        .phase("unknown_peer_counters_move_as_the_mode_says", unknown_peer_counters)
        .phase("synthetic_trace_walks_the_articles_order", synthetic_trace_order)
        .phase("synthetic_traces_enter_no_flow", synthetic_traces_enter_no_flow)
        .phase("live_trace_on_both_nodes", live_trace)
        .phase("capture_on_the_vxlan_port", capture_vxlan)
        .phase("capture_and_trace_errors_name_the_fault", errors_name_the_fault)
        .phase("prometheus_counters_move_with_traffic", prometheus);
    suite.netns_test("demo_walks_the_reference_and_leaves_nothing", &["curl", "tcpdump"], demo);
    suite.run()
}

/// Every listing has a stable JSON form.
fn listings_as_json(lab: &Lab) {
    let routes = json(lab, "centos7-1", &["show", "routes", "--json"]);
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "10.244.0.0/24" && r["gateway"] == "10.244.0.0" && r["dev"] == "flannel.1")
    );
    let neigh = json(lab, "centos7-1", &["show", "neigh", "--json"]);
    assert!(
        neigh
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["ip"] == "10.244.0.0" && r["lladdr"] == "32:a9:79:6d:0b:b1" && r["state"] == "PERMANENT")
    );
    let fdb = json(lab, "centos7-1", &["show", "fdb", "--json"]);
    assert_eq!(fdb[0]["mac"], "32:a9:79:6d:0b:b1");
    assert_eq!(fdb[0]["dst"], "172.16.240.132");
    let pods = json(lab, "centos7-1", &["show", "pods", "--json"]);
    assert_eq!(pods[0]["name"], "ghost-ep1");
    assert!(pods[0]["counts"]["rx_packets"].as_u64().unwrap() > 0);
    let svcs = json(lab, "centos7-1", &["show", "services", "--json"]);
    let ghost = &svcs.as_array().unwrap().iter().find(|s| s["name"] == "default/ghost").unwrap().clone();
    assert_eq!(
        (ghost["cluster_ip"].as_str(), ghost["port"].as_u64(), ghost["node_port"].as_u64()),
        (Some("10.250.0.40"), Some(2368), Some(31266))
    );
    let per_ep: u64 = ghost["endpoints"].as_array().unwrap().iter().map(|e| e["packets"].as_u64().unwrap()).sum();
    assert_eq!(per_ep, ghost["packets"].as_u64().unwrap(), "endpoint hits add up to the service's");
    let ct = json(lab, "centos7-1", &["show", "conntrack", "--json"]);
    let row = &ct.as_array().unwrap()[0];
    for k in ["proto", "timeout", "state", "original", "reply", "line"] {
        assert!(!row[k].is_null(), "conntrack row lacks {k}: {row}");
    }
    let counters = json(lab, "centos7-1", &["show", "counters", "--json"]);
    assert!(counters["decisions"]["service_dnat"].as_u64().unwrap() >= 6);
    for section in ["decisions", "drops"] {
        let all = counters[section].as_object().unwrap_or_else(|| panic!("no {section} object: {counters}"));
        assert!(all.values().all(serde_json::Value::is_u64), "{section} holds a non-counter: {counters}");
    }
    let node = json(lab, "centos7-1", &["show", "node", "--json"]);
    assert_eq!(node["node"]["vtep_ip"], "10.244.1.0");
}

/// A VXLAN datagram from an address with no FDB entry: under the lab's default
/// `vxlan_accept = "any"` it is decapsulated as flannel.1 does and counted once as
/// `vxlan_from_unknown_peer`, never as `vxlan_unknown_peer` (the drop of the strict mode);
/// the known peer's datagrams count as neither.
fn unknown_peer_counters(lab: &Lab) {
    let before = lab.counters("centos7-1");
    let delta = |now: &serde_json::Value, section: &str, name: &str| {
        let get =
            |v: &serde_json::Value| v[section][name].as_u64().unwrap_or_else(|| panic!("no counter {section}.{name}"));
        get(now) - get(&before)
    };
    // From the known peer: the echo replies come back by VXLAN from 172.16.240.132.
    assert!(lab.ping("ghost-ep1", "10.244.0.74", 2), "ping ghost-ep1 -> ghost-ep2");
    // From a stranger (the client): VNI 1, an inner frame to no MAC of ours, so that each is
    // decapsulated and then dropped as flannel.1 drops it (`vxlan_inner_dmac`).
    let send = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(3):\n    \
                s.sendto(b'\\x08\\x00\\x00\\x00\\x00\\x00\\x01\\x00'+b'\\x00'*60,('172.16.240.131',8472))\n";
    let out = lab.exec("client", &["python3", "-c", send]);
    assert!(out.status.success(), "sending VXLAN from the client: {}", text(&out.stderr));
    let seen =
        wait_until(Duration::from_secs(3), || delta(&lab.counters("centos7-1"), "drops", "vxlan_inner_dmac") >= 3);
    assert!(seen.is_some(), "the three datagrams from the client never reached the inner MAC check");
    let after = lab.counters("centos7-1");
    assert_eq!(
        delta(&after, "decisions", "vxlan_from_unknown_peer"),
        3,
        "vxlan_from_unknown_peer counts the client's three datagrams and nothing from the peer"
    );
    assert_eq!(delta(&after, "drops", "vxlan_unknown_peer"), 0, "vxlan_unknown_peer is the strict mode's drop");
    assert!(delta(&after, "decisions", "decap") >= 2, "the peer's echo replies were decapsulated");
}

/// The trace of a client request to the NodePort, in the article's order, when the
/// endpoint is remote: service, endpoint, DNAT, masquerade to 10.244.1.0, route,
/// neighbour, FDB, VNI 1.
fn synthetic_trace_order(lab: &Lab) {
    let mut steps = None;
    for sport in 40000..40100 {
        let t = json(
            lab,
            "centos7-1",
            &["trace", "--json", "--in", "host", "tcp", &format!("172.16.240.1:{sport}"), "->", "172.16.240.131:31266"],
        );
        let s = t["steps"].as_array().unwrap().clone();
        if s.iter().any(|x| x["step"] == "endpoint" && x["endpoint"] == "10.244.0.74:2368") {
            steps = Some(s);
            break;
        }
    }
    let steps = steps.expect("some source port hashes to the remote endpoint");
    let kinds: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    let order = ["service", "endpoint", "dnat", "masquerade", "route", "neighbour", "fdb", "encap"];
    let pos: Vec<usize> = order
        .iter()
        .map(|k| kinds.iter().position(|x| x == k).unwrap_or_else(|| panic!("no {k} step in {kinds:?}")))
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "steps out of order: {kinds:?}");
    let step = |k: &str| steps.iter().find(|s| s["step"] == k).unwrap();
    assert_eq!(step("service")["name"], "default/ghost");
    assert_eq!(step("service")["via"], "NodePort");
    assert_eq!(step("dnat")["after"], "10.244.0.74:2368");
    assert!(step("masquerade")["after"].as_str().unwrap().starts_with("10.244.1.0:"));
    assert_eq!(
        step("route")["route"],
        serde_json::json!({"kind": "peer", "prefix": "10.244.0.0/24", "gateway": "10.244.0.0"})
    );
    assert_eq!(
        (step("neighbour")["ip"].as_str(), step("neighbour")["mac"].as_str()),
        (Some("10.244.0.0"), Some("32:a9:79:6d:0b:b1"))
    );
    assert_eq!(step("fdb")["dst"], "172.16.240.132");
    assert_eq!(step("encap")["vni"], 1);
    assert_eq!(step("encap")["outer_dst"], "172.16.240.132");
}

/// A synthetic trace is a dry run: twenty traced new flows to the NodePort, each of which
/// the trace says would be entered, leave conntrack as they found it (source ports apart
/// from the other phase's traces, so that each phase checks its own).
fn synthetic_traces_enter_no_flow(lab: &Lab) {
    let probes = 41000..41020u16;
    let flows = || json(lab, "centos7-1", &["show", "conntrack", "--json"]).as_array().expect("conntrack rows").clone();
    let before = flows();
    for sport in probes.clone() {
        let from = format!("172.16.240.1:{sport}");
        let t =
            json(lab, "centos7-1", &["trace", "--json", "--in", "host", "tcp", &from, "->", "172.16.240.131:31266"]);
        let steps = t["steps"].as_array().expect("trace steps");
        assert!(
            steps.iter().any(|s| s["step"] == "conntrack_new" && s["how"] == "would_be"),
            "the trace from {from} shows no flow it would enter: {t}"
        );
    }
    let after = flows();
    let entered: Vec<&str> = after
        .iter()
        .filter(|e| {
            e["original"]["src"] == "172.16.240.1"
                && e["original"]["sport"].as_u64().is_some_and(|p| probes.contains(&(p as u16)))
        })
        .map(|e| e["line"].as_str().unwrap_or("?"))
        .collect();
    assert!(
        entered.is_empty(),
        "{} of the {} traced flows were entered in conntrack, e.g.\n{}",
        entered.len(),
        probes.len(),
        entered[..entered.len().min(3)].join("\n")
    );
    assert!(
        after.len() <= before.len(),
        "conntrack grew from {} to {} rows over the traces",
        before.len(),
        after.len()
    );
}

/// A live trace on both nodes sees the request and the reply.
fn live_trace(lab: &Lab) {
    let live = Command::new(common::ucanal_bin())
        .arg("--socket")
        .arg(lab.socket("centos7-1"))
        .args([
            "trace",
            "--live",
            "--json",
            "--count",
            "2",
            "--timeout",
            "10",
            "--filter",
            "tcp port 2368 or tcp port 31266",
            "--node",
        ])
        .arg(lab.socket("centos7-2"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    lab.curl("ghost-ep1", "http://10.244.0.74:2368/").unwrap();
    let out = text(&live.wait_with_output().unwrap().stdout);
    let events: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 4, "2 packets on each node: {out}");
    assert!(events.iter().any(|e| e["node"] == "centos7-1") && events.iter().any(|e| e["node"] == "centos7-2"));
}

/// A capture on the vxlan port, read back by tcpdump.
fn capture_vxlan(lab: &Lab) {
    let pcap = format!("/tmp/{}cap.pcap", lab.prefix);
    let cap = Command::new(common::ucanal_bin())
        .arg("--socket")
        .arg(lab.socket("centos7-1"))
        .args(["capture", "--port", "vxlan", "-w", &pcap, "--count", "4", "--filter", "tcp", "--timeout", "10"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    lab.curl("ghost-ep1", "http://10.244.0.74:2368/").unwrap();
    assert!(cap.wait_with_output().unwrap().status.success());
    let read = Command::new("tcpdump").args(["-nr", &pcap]).output().unwrap();
    let _ = std::fs::remove_file(&pcap);
    let dump = text(&read.stdout);
    assert!(read.status.success(), "tcpdump -r: {}", text(&read.stderr));
    assert!(dump.contains("172.16.240.132.8472") && dump.contains("instance 1"), "VXLAN in the capture:\n{dump}");
    assert!(
        dump.contains("10.244.1.5.") && dump.contains("10.244.0.74.2368: Flags [S]"),
        "inner TCP flow in the capture:\n{dump}"
    );
}

/// Errors name the fault.
fn errors_name_the_fault(lab: &Lab) {
    let bad = lab.ucanal("centos7-1", &["capture", "--port", "nosuchpod", "-w", "/dev/null"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("no port 'nosuchpod'"));
    // As `tcpdump -w`: a refused capture leaves no (empty) file, and one that was there as it was.
    let dir = tempfile::tempdir().unwrap();
    let (new, old) = (dir.path().join("x.pcap"), dir.path().join("old.pcap"));
    std::fs::write(&old, b"an earlier capture").unwrap();
    for f in [&new, &old] {
        let bad = lab.ucanal("centos7-1", &["capture", "--port", "bogus", "-w", f.to_str().unwrap()]);
        assert!(!bad.status.success() && text(&bad.stderr).contains("no port 'bogus'"), "{}", text(&bad.stderr));
    }
    assert!(!new.exists(), "a refused capture left {}", new.display());
    assert_eq!(std::fs::read(&old).unwrap(), b"an earlier capture");
    let bad = lab.ucanal("centos7-1", &["trace", "--live", "--filter", "tcp and", "--count", "1"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("filter"));
}

/// Prometheus text whose counters move with traffic; not reachable from outside the node.
fn prometheus(lab: &Lab) {
    let scrape = || {
        let o = lab.exec("centos7-1", &["curl", "-sS", "-m", "5", "http://127.0.0.1:9300/metrics"]);
        assert!(o.status.success(), "metrics: {}", text(&o.stderr));
        text(&o.stdout)
    };
    let value = |body: &str, series: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no series {series}"))
    };
    let before = scrape();
    assert!(
        before.contains("# TYPE ucanal_decisions counter") || before.contains("# TYPE ucanal_decisions_total counter"),
        "{before}"
    );
    let decap = "ucanal_decisions_total{node=\"centos7-1\",decision=\"decap\"}";
    let flows = "ucanal_service_flows_total{node=\"centos7-1\",service=\"default/ghost\"";
    for _ in 0..4 {
        lab.curl("client", "http://172.16.240.131:31266/").unwrap();
    }
    assert!(lab.ping("ghost-ep1", "10.244.0.74", 2));
    let after = scrape();
    assert!(value(&after, decap) > value(&before, decap), "decap counter did not move");
    assert_eq!(value(&after, flows), value(&before, flows) + 4.0, "service flow counter");
    // All four came through the NodePort: KUBE-NODEPORTS counts them, as iptables does.
    let np = "ucanal_service_node_port_flows_total{node=\"centos7-1\",service=\"default/ghost\"";
    assert_eq!(value(&after, np), value(&before, np) + 4.0, "NodePort flow counter");
    // Not reachable from outside the node: it listens on the node's loopback only.
    assert!(!lab.exec("client", &["curl", "-s", "-m", "2", "http://172.16.240.131:9300/metrics"]).status.success());
}

/// netns-scripts/demo.sh walks the article and removes everything it made.
fn demo() {
    let prefix = Lab::prefix_for("td");
    let out = common::run_lab_script("demo.sh", &prefix, &[]);
    let so = text(&out.stdout);
    assert!(out.status.success(), "demo.sh failed:\n{so}\n{}", text(&out.stderr));
    assert!(so.contains("demo: every step showed what the kernel reference shows"), "{so}");
    assert!(!so.contains("MISSING"), "{so}");
}
