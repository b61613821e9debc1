//! kube-proxy's service policies with real packets (issue 20): the example — a
//! NodePort service with `externalTrafficPolicy: Local` and `sessionAffinity: ClientIP`,
//! endpoints on both nodes — applied as a manifest to two ucanal nodes, and the client
//! 172.16.240.1 curling each node's NodePort: every connection lands on that node's own
//! endpoint and the pod sees the client's address; a node without an endpoint of its own
//! drops; with `externalTrafficPolicy: Cluster` and affinity, one client's 50 connections
//! all reach one endpoint; a `healthCheckNodePort` answers 200 where the node has an
//! endpoint, 503 where it has none.

mod common;

use std::collections::BTreeMap;
use std::process::ExitCode;

use common::harness::Suite;
use common::{Lab, text};

/// The example, as kubectl prints it; `{}`s: name, NodePort, eTP, endpoints.
fn manifest(name: &str, node_port: u16, etp: &str, endpoints: &[&str]) -> String {
    let addresses: Vec<String> = endpoints.iter().map(|ip| format!("{{ip: {ip}}}")).collect();
    let vip = 50 + node_port % 10;
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  type: NodePort\n  clusterIP: 10.250.0.{vip}\n  externalTrafficPolicy: {etp}\n  \
         sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 10800}}}}\n  \
         ports: [{{port: 2368, nodePort: {node_port}, protocol: TCP}}]\n---\n\
         apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}, namespace: default}}\n\
         subsets: [{{addresses: [{}], ports: [{{port: 2368, protocol: TCP}}]}}]\n",
        addresses.join(", ")
    )
}

/// Applies a manifest to both nodes (a lab without etcd: each node its own objects).
fn apply(lab: &Lab, text_: &str) {
    let path = std::env::temp_dir().join(format!("ucanal-{}-{}.yaml", lab.prefix, text_.len()));
    std::fs::write(&path, text_).unwrap();
    for node in ["centos7-1", "centos7-2"] {
        lab.ucanal_ok(node, &["apply", "-f", path.to_str().unwrap()]);
    }
    let _ = std::fs::remove_file(&path);
}

/// The pods that answered `n` connections from the client, by name.
fn answers(lab: &Lab, url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let page = lab.curl("client", url).unwrap_or_else(|e| panic!("curl {url}: {e}"));
        *m.entry(page.split_whitespace().next().unwrap_or("").to_string()).or_insert(0) += 1;
    }
    m
}

fn main() -> ExitCode {
    let mut suite = Suite::new();
    suite
        .group("policies_on_two_ucanal_nodes", &["curl"], || Lab::up("tk", &[]))
        .phase("local_policy_keeps_the_client_and_each_nodes_endpoint", local_policy)
        .phase("a_node_without_a_local_endpoint_drops", no_local_endpoint)
        .phase("affinity_keeps_a_client_on_one_endpoint", affinity)
        .phase("health_check_node_port_answers_as_kube_proxy", health_check);
    suite
        .group("affinity_across_a_hand_over", &["curl"], || Lab::up_env("tv", &[], &[("UCANAL_RUN_ARGS", KEEP)]))
        .phase("the_affinity_table_is_handed_over_like_conntrack", affinity_hand_over);
    suite.run()
}

/// The example: both nodes' NodePorts, each to its own endpoint, unmasqueraded.
fn local_policy(lab: &Lab) {
    apply(lab, &manifest("ghost-local", 31267, "Local", &["10.244.0.74", "10.244.1.5"]));
    let one = answers(lab, "http://172.16.240.131:31267/", 10);
    assert_eq!(one, BTreeMap::from([("ghost-ep1".to_string(), 10)]), "through centos7-1");
    let two = answers(lab, "http://172.16.240.132:31267/", 10);
    assert_eq!(two, BTreeMap::from([("ghost-ep2".to_string(), 10)]), "through centos7-2");
    // The pod saw the client: the flows' reply tuples go to 172.16.240.1, not a node address.
    let ct: serde_json::Value =
        serde_json::from_str(&lab.ucanal_ok("centos7-1", &["show", "conntrack", "--json"])).unwrap();
    let flows: Vec<&serde_json::Value> =
        ct.as_array().unwrap().iter().filter(|e| e["original"]["dport"] == 31267).collect();
    assert!(!flows.is_empty(), "no NodePort flow in {ct}");
    for f in flows {
        assert_eq!(
            (f["reply"]["src"].as_str(), f["reply"]["dst"].as_str()),
            (Some("10.244.1.5"), Some("172.16.240.1")),
            "{f}"
        );
    }
    let c = lab.counters("centos7-1");
    assert!(c["decisions"]["service_affinity_hit"].as_u64().unwrap() >= 9, "{c}");
}

/// Endpoints on centos7-2 only: centos7-1's NodePort drops (no RST, no ICMP), counted;
/// centos7-2's answers.
fn no_local_endpoint(lab: &Lab) {
    apply(lab, &manifest("ghost-remote", 31268, "Local", &["10.244.0.74"]));
    let before = lab.counter("centos7-1", "drops", "no_local_endpoint");
    let out = lab.exec("client", &["curl", "-sS", "-m", "2", "http://172.16.240.131:31268/"]);
    assert!(!out.status.success(), "answered: {}", text(&out.stdout));
    assert!(text(&out.stderr).contains("timed out"), "a drop times out, it is not refused: {}", text(&out.stderr));
    assert!(lab.counter("centos7-1", "drops", "no_local_endpoint") > before);
    assert_eq!(answers(lab, "http://172.16.240.132:31268/", 3), BTreeMap::from([("ghost-ep2".to_string(), 3)]));
}

/// `externalTrafficPolicy: Cluster` with affinity: 50 connections of one client, one
/// endpoint (without affinity, `services.rs` shows the same NodePort spreading).
fn affinity(lab: &Lab) {
    apply(lab, &manifest("ghost-sticky", 31269, "Cluster", &["10.244.0.74", "10.244.1.5"]));
    let seen = answers(lab, "http://172.16.240.131:31269/", 50);
    assert_eq!(seen.len(), 1, "one client, one endpoint: {seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 50);
}

const KEEP: &str = "--keep-on-exit";

/// A SIGTERM restart hands the affinity records to the successor with the conntrack
/// flows: the client's first connection after it is an affinity hit (a lost record would
/// make it a hash pick, no hit) and lands where the client was.
fn affinity_hand_over(lab: &Lab) {
    apply(lab, &manifest("ghost-kept", 31270, "Cluster", &["10.244.0.74", "10.244.1.5"]));
    let before = answers(lab, "http://172.16.240.131:31270/", 5);
    assert_eq!(before.len(), 1, "{before:?}");
    lab.restart("centos7-1", "TERM", KEEP);
    let log = std::fs::read_to_string(lab.run_dir().join("centos7-1.log")).unwrap_or_default();
    assert!(log.contains("hand-over done"), "the restart was not a hand-over:\n{log}");
    let hits = lab.counter("centos7-1", "decisions", "service_affinity_hit");
    let after = answers(lab, "http://172.16.240.131:31270/", 1);
    assert_eq!(after.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>());
    assert_eq!(
        lab.counter("centos7-1", "decisions", "service_affinity_hit"),
        hits + 1,
        "the first connection was not an affinity hit"
    );
}

/// A LoadBalancer with `externalTrafficPolicy: Local` and its `healthCheckNodePort`,
/// endpoint on centos7-1 only: 200 there, 503 on centos7-2, kube-proxy's JSON; gone with
/// the service.
fn health_check(lab: &Lab) {
    let m = "apiVersion: v1\nkind: Service\nmetadata: {name: ghost-lb, namespace: default}\n\
             spec:\n  type: LoadBalancer\n  clusterIP: 10.250.0.60\n  externalTrafficPolicy: Local\n  \
             healthCheckNodePort: 30999\n  allocateLoadBalancerNodePorts: false\n  ports: [{port: 2368, protocol: TCP}]\n\
             status: {loadBalancer: {ingress: [{ip: 192.168.99.60}]}}\n---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata: {name: ghost-lb, namespace: default}\n\
             subsets: [{addresses: [{ip: 10.244.1.5}], ports: [{port: 2368, protocol: TCP}]}]\n";
    apply(lab, m);
    let check = |node: &str| {
        let out = lab.exec("client", &["curl", "-sS", "-m", "3", "-i", &format!("http://{node}:30999/healthz")]);
        assert!(out.status.success(), "curl {node}:30999: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let here = check("172.16.240.131");
    assert!(here.starts_with("HTTP/1.1 200"), "{here}");
    assert!(here.contains("X-Load-Balancing-Endpoint-Weight: 1"), "{here}");
    let body: serde_json::Value = serde_json::from_str(here.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"service": {"namespace": "default", "name": "ghost-lb"}, "localEndpoints": 1, "serviceProxyHealthy": true})
    );
    let there = check("172.16.240.132");
    assert!(there.starts_with("HTTP/1.1 503") && there.contains("\"localEndpoints\": 0"), "{there}");
    // Deleted: nothing listens any more.
    let path = std::env::temp_dir().join(format!("ucanal-{}-lb.yaml", lab.prefix));
    std::fs::write(&path, m).unwrap();
    lab.ucanal_ok("centos7-1", &["delete", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    let out = lab.exec("client", &["curl", "-sS", "-m", "3", "http://172.16.240.131:30999/"]);
    // curl's exit 7: the connection refused (an RST from the node's stack), not a timeout.
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
}
