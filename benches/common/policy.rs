//! The policy benches' world: the article's node (centos7-1 with ghost-ep1 and ghost-ep3,
//! the `default/ghost` service) in a cluster of 1,000 more pods in 10 namespaces, and N
//! Kubernetes NetworkPolicies whose selectors range over those pods:
//!
//! - pod `p-k` is in `ns-(k % 10)` with labels `app=app-(k % 100)`, `role=role-(k % 50)`;
//! - policy `np-i` is in `ns-(i % 10)`, selects `app=app-(i % 100)` and allows ingress on
//!   2368 from `role=role-(i % 50)` of its namespace;
//! - ghost-ep1 (the server, local) is `ns-0/ghost-ep1` with `app=app-0`; ghost-ep3 (the
//!   client, local) is `ns-0/ghost-ep3` with `role=role-0`. With N = 100 one policy selects
//!   the server, with N = 10,000 a hundred do; every one of them allows the client.
//!
//! Also one policy letting the outside client (172.16.240.0/24) reach the server, so the
//! NodePort benches' flows are allowed when there are policies.

use std::net::Ipv4Addr;

use ucanal::core::policy::PolicyEngine;
use ucanal::core::policy::model::{
    ContainerPort, K8sPeer, K8sPort, K8sRule, LabelSelector, Labels, Namespace, NetworkPolicy, Object, Pod, PortRef,
    Protocol,
};

pub const PODS: usize = 1_000;
pub const NAMESPACES: usize = 10;

fn labels(kv: &[(&str, String)]) -> Labels {
    kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn pod(ns: String, name: String, labels: Labels, ip: Ipv4Addr, node: &str) -> Object {
    Object::Pod(Pod {
        namespace: ns,
        name,
        labels,
        ip: Some(ip),
        node: Some(node.into()),
        ports: vec![ContainerPort { name: Some("http".into()), port: 2368, protocol: Protocol::Tcp }],
    })
}

fn sel(k: &str, v: String) -> LabelSelector {
    LabelSelector { match_labels: labels(&[(k, v)]), match_expressions: Vec::new() }
}

/// Policy `np-i`.
pub fn policy(i: usize) -> Object {
    Object::NetworkPolicy(NetworkPolicy {
        namespace: format!("ns-{}", i % NAMESPACES),
        name: format!("np-{i}"),
        pod_selector: sel("app", format!("app-{}", i % 100)),
        ingress_type: true,
        egress_type: false,
        ingress: vec![K8sRule {
            peers: vec![K8sPeer::Pods { pods: Some(sel("role", format!("role-{}", i % 50))), namespaces: None }],
            ports: vec![K8sPort { protocol: Protocol::Tcp, port: Some(PortRef::Number { port: 2368, end: 2368 }) }],
        }],
        egress: Vec::new(),
    })
}

/// The engine of centos7-1 with the world and `n` policies (plus the outside client's
/// when `n > 0`).
pub fn engine(n: usize) -> PolicyEngine {
    let mut e = PolicyEngine::new("centos7-1", "10.244.1.0/24".parse().unwrap());
    for k in 0..NAMESPACES {
        e.apply(Object::Namespace(Namespace::new(&format!("ns-{k}"), Labels::new())));
    }
    for k in 0..PODS {
        let ip = Ipv4Addr::new(10, 244, 2 + (k / 250) as u8, (k % 250) as u8 + 2);
        let l = labels(&[("app", format!("app-{}", k % 100)), ("role", format!("role-{}", k % 50))]);
        e.apply(pod(format!("ns-{}", k % NAMESPACES), format!("p-{k}"), l, ip, &format!("node-{}", 2 + k / 250)));
    }
    e.apply(pod(
        "ns-0".into(),
        "ghost-ep1".into(),
        labels(&[("app", "app-0".into())]),
        Ipv4Addr::new(10, 244, 1, 5),
        "centos7-1",
    ));
    e.apply(pod(
        "ns-0".into(),
        "ghost-ep3".into(),
        labels(&[("role", "role-0".into())]),
        Ipv4Addr::new(10, 244, 1, 7),
        "centos7-1",
    ));
    e.apply(pod(
        "ns-0".into(),
        "ghost-ep2".into(),
        labels(&[("app", "app-0".into())]),
        Ipv4Addr::new(10, 244, 0, 74),
        "centos7-2",
    ));
    for i in 0..n {
        e.apply(policy(i));
    }
    if n > 0 {
        e.apply(Object::NetworkPolicy(NetworkPolicy {
            namespace: "ns-0".into(),
            name: "outside-clients".into(),
            pod_selector: sel("app", "app-0".into()),
            ingress_type: true,
            egress_type: false,
            ingress: vec![K8sRule {
                peers: vec![K8sPeer::IpBlock { cidr: "172.16.240.0/24".parse().unwrap(), except: Vec::new() }],
                ports: Vec::new(),
            }],
            egress: Vec::new(),
        }));
    }
    e
}
