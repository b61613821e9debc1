//! Issue "services" (§3.2 of the article): ClusterIP and NodePort DNAT, masquerade,
//! conntrack, and the anchors' failures ucanal must not have. Two ucanal nodes.

mod common;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::harness::Suite;
use common::{Background, Lab, text, wait_until};

const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
while True:
    d, a = s.recvfrom(2048)
    s.sendto(d + b" from " + sys.argv[1].encode(), a)
"#;

fn pages(lab: &Lab, from: &str, url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let page = lab.curl(from, url).unwrap_or_else(|e| panic!("curl {url} from {from}: {e}"));
        *m.entry(page.split_whitespace().next().unwrap_or("").to_string()).or_insert(0) += 1;
    }
    m
}

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn main() -> ExitCode {
    let mut suite = Suite::new();
    suite
        .group("services_on_two_ucanal_nodes", &["curl"], Services::up)
        .phase("nodeport_reaches_both_endpoints_through_each_node", |s| nodeport(&s.lab))
        .phase_after("the_articles_conntrack_listing", &["nodeport_reaches_both_endpoints_through_each_node"], |s| {
            articles_conntrack(&s.lab)
        })
        .phase("clusterip_from_a_pod_and_from_the_node", |s| clusterip(&s.lab))
        .phase("pod_egress_is_masqueraded_to_the_node_ip", |s| egress_masquerade(&s.lab))
        .phase("a_udp_service_answers", |s| udp_service(&s.lab))
        .phase_after("both_datagrams_of_a_new_udp_flow_are_answered", &["a_udp_service_answers"], |s| dns_race(&s.lab))
        .phase_after("udp_flows_move_off_a_removed_endpoint_at_once", &["a_udp_service_answers"], |s| {
            endpoint_removal(&s.lab)
        })
        .phase("a_service_without_endpoints_refuses_at_once", |s| no_endpoints_refuse(&s.lab))
        .phase_after(
            "counters_moved_as_the_walk_says",
            &[
                "nodeport_reaches_both_endpoints_through_each_node",
                "pod_egress_is_masqueraded_to_the_node_ip",
                "a_service_without_endpoints_refuses_at_once",
            ],
            |s| counters_moved(&s.lab),
        );
    suite.run()
}

/// Two ucanal nodes, and a UDP echo server on 5353 in both ghost pods.
struct Services {
    lab: Lab,
    _echo: [Background; 2],
}

impl Services {
    fn up() -> Services {
        let lab = Lab::up("ts", &[]);
        let echo = ["ghost-ep1", "ghost-ep2"].map(|p| lab.background(p, &format!("exec python3 -c '{UDP_ECHO}' {p}")));
        Services { lab, _echo: echo }
    }
}

/// NodePort: 20 requests through each node reach both endpoints.
fn nodeport(lab: &Lab) {
    for node in ["172.16.240.131", "172.16.240.132"] {
        let p = pages(lab, "client", &format!("http://{node}:31266/"), 20);
        assert!(p.contains_key("ghost-ep1") && p.contains_key("ghost-ep2"), "NodePort via {node}: {p:?}");
    }
}

/// The article's conntrack listing, on centos7-1: reply tuple to the VTEP address.
fn articles_conntrack(lab: &Lab) {
    let ct = lab.ucanal_ok("centos7-1", &["show", "conntrack"]);
    assert!(
        ct.lines().any(|l| l.contains("src=172.16.240.1 dst=172.16.240.131")
            && l.contains("src=10.244.0.74 dst=10.244.1.0 sport=2368")),
        "{ct}"
    );
}

/// ClusterIP from a pod and from the node itself.
fn clusterip(lab: &Lab) {
    assert!(lab.curl("ghost-ep1", "http://10.250.0.40:2368/").unwrap().starts_with("ghost-ep"));
    assert!(lab.curl("centos7-1", "http://10.250.0.40:2368/").unwrap().starts_with("ghost-ep"));
    let p = pages(lab, "centos7-1", "http://10.250.0.40:2368/", 12);
    assert_eq!(p.len(), 2, "ClusterIP from the node reaches both endpoints: {p:?}");
}

/// Pod -> outside the cluster leaves masqueraded to the node IP (flannel ip-masq).
fn egress_masquerade(lab: &Lab) {
    let mut server = lab.spawn("client", "cd /tmp && exec python3 -m http.server 8080 --bind 172.16.240.1");
    assert!(wait_until(Duration::from_secs(5), || lab.curl("client", "http://172.16.240.1:8080/").is_ok()).is_some());
    lab.curl("ghost-ep1", "http://172.16.240.1:8080/").expect("pod reaches a server outside the cluster");
    let _ = server.kill();
    let log = text(&server.wait_with_output().unwrap().stderr);
    let seen: Vec<&str> =
        log.lines().filter(|l| l.contains("GET /")).map(|l| l.split_whitespace().next().unwrap_or("")).collect();
    assert_eq!(seen.last(), Some(&"172.16.240.131"), "the server saw the pod's request from {seen:?}");
}

/// Counters moved as the walk says.
fn counters_moved(lab: &Lab) {
    let c = lab.counters("centos7-1");
    for k in ["service_dnat", "service_masquerade", "egress_masquerade", "ct_hit_reply", "service_reject"] {
        assert!(c["decisions"][k].as_u64().unwrap() > 0, "counter {k} did not move: {c}");
    }
    let svc: serde_json::Value =
        serde_json::from_str(&lab.ucanal_ok("centos7-1", &["show", "services", "--json"])).unwrap();
    let ghost = svc.as_array().unwrap().iter().find(|s| s["name"] == "default/ghost").unwrap();
    assert!(ghost["packets"].as_u64().unwrap() >= 20, "{ghost}");
}

/// kube-dns as a UDP ClusterIP service to both echo servers; both answer.
fn udp_service(lab: &Lab) {
    lab.ucanal_ok(
        "centos7-1",
        &[
            "service",
            "set",
            "--name",
            "kube-system/kube-dns",
            "--protocol",
            "udp",
            "--cluster-ip",
            "10.250.0.10",
            "--port",
            "53",
            "--endpoint",
            "10.244.0.74:5353",
            "--endpoint",
            "10.244.1.5:5353",
        ],
    );
    // Both endpoints answer before the measurements start.
    let probe = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(0.5)\ns.sendto(b'x',(\"10.250.0.10\",53))\nprint(s.recvfrom(99)[0].decode())";
    let up = wait_until(Duration::from_secs(5), || {
        let o = lab.exec("ghost-ep1", &["python3", "-c", probe]);
        o.status.success()
    });
    assert!(up.is_some(), "the UDP service never answered");
}

/// The DNS pattern: two datagrams of each new flow, back to back, both answered, 50
/// flows out of 50.
fn dns_race(lab: &Lab) {
    let dns = r#"
import socket
ok = 0
for i in range(50):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(b"A?", ("10.250.0.10", 53))
    s.sendto(b"AAAA?", ("10.250.0.10", 53))
    got = set()
    try:
        for _ in range(2):
            got.add(s.recvfrom(2048)[0].split()[0])
    except socket.timeout:
        pass
    ok += got == {b"A?", b"AAAA?"}
    s.close()
print(ok)
"#;
    let out = lab.exec("ghost-ep1", &["python3", "-c", dns]);
    assert_eq!(
        text(&out.stdout).trim(),
        "50",
        "flows whose two datagrams were both answered (stderr: {})",
        text(&out.stderr)
    );
}

/// A client sending steadily keeps being answered after its endpoint is removed.
fn endpoint_removal(lab: &Lab) {
    let steady = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    t = time.time()
    s.sendto(b"ping", ("10.250.0.10", 53))
    try:
        print("%.3f %s" % (t, s.recvfrom(2048)[0].decode().split()[-1]), flush=True)
    except socket.timeout:
        print("%.3f timeout" % t, flush=True)
    time.sleep(0.05)
"#;
    let client = lab.spawn("ghost-ep1", &format!("exec python3 -c '{steady}' 4"));
    std::thread::sleep(Duration::from_millis(1500));
    // The flow is pinned to one endpoint; find which from the daemon and remove it.
    let ct: serde_json::Value =
        serde_json::from_str(&lab.ucanal_ok("centos7-1", &["show", "conntrack", "--json"])).unwrap();
    let flow = ct
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["proto"] == "udp" && e["original"]["dst"] == "10.250.0.10")
        .max_by_key(|e| e["timeout"].as_u64())
        .expect("the steady UDP flow in conntrack")
        .clone();
    let ep_ip = flow["reply"]["src"].as_str().unwrap().to_string();
    let (gone, remaining) =
        if ep_ip == "10.244.0.74" { ("ghost-ep2", "ghost-ep1") } else { ("ghost-ep1", "ghost-ep2") };
    let removed_at = now_s();
    lab.ucanal_ok(
        "centos7-1",
        &["endpoint", "del", "--service", "kube-system/kube-dns", "--endpoint", &format!("{ep_ip}:5353")],
    );
    let out = client.wait_with_output().unwrap();
    let lines: Vec<(f64, String)> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(t, w)| (t.parse().unwrap(), w.to_string())))
        .collect();
    assert!(
        lines.iter().any(|(t, w)| *t < removed_at && w == gone),
        "before removal the flow went to {gone}: {lines:?}"
    );
    let first_moved = lines.iter().find(|(t, w)| *t >= removed_at && w == remaining).map(|(t, _)| t - removed_at);
    let moved = first_moved.unwrap_or_else(|| panic!("never answered by {remaining} after removal: {lines:?}"));
    assert!(moved < 1.0, "traffic moved to {remaining} only after {moved:.3} s");
    let after: Vec<_> = lines.iter().filter(|(t, _)| *t >= removed_at + 1.0).collect();
    assert!(!after.is_empty() && after.iter().all(|(_, w)| w == remaining), "after the move: {after:?}");
    assert!(lab.counter("centos7-1", "decisions", "ct_flushed_endpoint") >= 1);
}

/// A service with no endpoints: connection refused, at once.
fn no_endpoints_refuse(lab: &Lab) {
    lab.ucanal_ok(
        "centos7-1",
        &[
            "service",
            "set",
            "--name",
            "default/empty",
            "--cluster-ip",
            "10.250.0.50",
            "--port",
            "80",
            "--node-port",
            "30080",
        ],
    );
    let start = Instant::now();
    let err = lab.curl("ghost-ep1", "http://10.250.0.50:80/").expect_err("a service without endpoints answered");
    let took = start.elapsed();
    assert!(err.to_lowercase().contains("connection refused") || err.contains("Couldn't connect"), "{err}");
    assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    // Through the NodePort from outside too.
    let start = Instant::now();
    let err = lab.curl("client", "http://172.16.240.131:30080/").expect_err("NodePort without endpoints answered");
    assert!(err.to_lowercase().contains("connection refused") || err.contains("Couldn't connect"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(1), "NodePort refusal took {:?}", start.elapsed());
    lab.ucanal_ok("centos7-1", &["service", "del", "--name", "default/empty"]);
}
