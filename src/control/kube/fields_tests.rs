//! Every Service / EndpointSlice field kube-proxy reads, as the specs it makes.

use std::net::SocketAddrV4;

use crate::api::kube::{Object, parse_manifest};
use crate::control::kube::{Store, objects_of};
use crate::core::nat::service::{Protocol, ServiceSpec};

fn specs_of(manifest: &str, service: &str) -> Vec<ServiceSpec> {
    let mut st = Store::default();
    st.apply(parse_manifest(manifest).unwrap_or_else(|e| panic!("{e}")), false);
    st.specs(service)
}

const LB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {app: web}, annotations: {note: x}}
spec:
  type: LoadBalancer
  clusterIP: 10.250.0.80
  clusterIPs: [10.250.0.80]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http, nodePort: 30080, protocol: TCP, appProtocol: http}
  externalIPs: [192.168.99.11]
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  healthCheckNodePort: 30999
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  loadBalancerSourceRanges: [" 203.0.113.0/25", 192.168.0.1/24]
  loadBalancerIP: 1.2.3.4
  loadBalancerClass: example.com/lb
  allocateLoadBalancerNodePorts: true
  trafficDistribution: PreferClose
  publishNotReadyAddresses: false
status:
  loadBalancer:
    ingress:
    - {ip: 1.2.3.4, ipMode: VIP, ports: [{port: 80, protocol: TCP}]}
    - {ip: 5.6.7.8, ipMode: Proxy}
    - {hostname: lb.example.com}
  conditions: []
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP, appProtocol: http}]
endpoints:
- addresses: [10.244.1.5, 10.244.1.55]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: centos7-1
  zone: z1
  hints: {forZones: [{name: z1}]}
  targetRef: {kind: Pod, name: web-1, namespace: shop}
- addresses: [10.244.0.74]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: centos7-2
- addresses: [10.244.0.75]
  conditions: {ready: false, serving: false, terminating: true}
- addresses: [10.244.0.76]
  conditions: {ready: false}
"#;

#[test]
fn a_load_balancer_service_with_every_field() {
    let specs = specs_of(LB, "shop/web");
    assert_eq!(specs.len(), 1);
    let s = &specs[0];
    let want = ServiceSpec {
        name: "shop/web".into(),
        protocol: Protocol::Tcp,
        cluster_ip: "10.250.0.80".parse().unwrap(),
        port: 80,
        node_port: Some(30080),
        // The first address only, as kube-proxy; serving+terminating falls back; not
        // serving and not ready (unset serving, not terminating) never.
        endpoints: vec!["10.244.1.5:8080".parse().unwrap()],
        terminating: vec!["10.244.0.74:8080".parse().unwrap()],
        external_ips: vec!["192.168.99.11".parse().unwrap()],
        // VIP-mode ingress only: the Proxy-mode and hostname ones are the LB's business.
        load_balancer_ips: vec!["1.2.3.4".parse().unwrap()],
        // Trimmed, host bits cleared, as kube-proxy parses them.
        source_ranges: vec!["203.0.113.0/25".parse().unwrap(), "192.168.0.0/24".parse().unwrap()],
        external_local: true,
        internal_local: true,
        affinity_timeout: Some(600),
        health_check_node_port: Some(30999),
    };
    assert_eq!(s, &want);
    // Stored (JSON, as etcd holds it) and read back: the same spec.
    let objs = parse_manifest(LB).unwrap();
    let back: Vec<Object> = serde_json::from_str(&serde_json::to_string(&objs).unwrap()).unwrap();
    let mut st = Store::default();
    st.apply(back, false);
    assert_eq!(st.specs("shop/web"), specs);
}

#[test]
fn affinity_defaults_and_policies_apply_where_kube_proxy_applies_them() {
    let m = "kind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.250.0.9, sessionAffinity: ClientIP, ports: [{port: 80}]}";
    assert_eq!(specs_of(m, "default/a")[0].affinity_timeout, Some(10_800));
    let m =
        "kind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.250.0.9, sessionAffinity: None, ports: [{port: 80}]}";
    assert_eq!(specs_of(m, "default/a")[0].affinity_timeout, None);
    // eTP Local on a ClusterIP service with externalIPs: externally accessible, so Local.
    let m = "kind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.250.0.9, externalIPs: [192.168.99.9], externalTrafficPolicy: Local, ports: [{port: 80}]}";
    assert!(specs_of(m, "default/a")[0].external_local);
}

#[test]
fn services_that_make_no_dataplane_state() {
    let eps =
        "\n---\nkind: Endpoints\nmetadata: {name: a}\nsubsets: [{addresses: [{ip: 10.244.1.5}], ports: [{port: 80}]}]";
    for spec in [
        "clusterIP: None, ports: [{port: 80}]",
        "clusterIP: None",
        "type: ExternalName, externalName: db.example.com",
        "type: ExternalName, externalName: db.example.com, clusterIP: 10.250.0.9, ports: [{port: 80}]",
    ] {
        let m = format!("kind: Service\nmetadata: {{name: a}}\nspec: {{{spec}}}{eps}");
        assert!(specs_of(&m, "default/a").is_empty(), "{spec}");
    }
    let m = format!(
        "kind: Service\nmetadata: {{name: a, labels: {{service.kubernetes.io/service-proxy-name: other}}}}\nspec: {{clusterIP: 10.250.0.9, ports: [{{port: 80}}]}}{eps}"
    );
    assert!(specs_of(&m, "default/a").is_empty(), "another proxy's");
    // A slice labelled headless is not read.
    let m = "kind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.250.0.9, ports: [{port: 80}]}\n---\nkind: EndpointSlice\nmetadata: {name: a-1, labels: {kubernetes.io/service-name: a, service.kubernetes.io/headless: ''}}\nendpoints: [{addresses: [10.244.1.5]}]\nports: [{port: 80}]";
    assert!(specs_of(m, "default/a")[0].endpoints.is_empty());
}

#[test]
fn not_ready_addresses_and_publish_not_ready() {
    let m = |publish: bool| {
        format!(
            "kind: Service\nmetadata: {{name: a}}\nspec: {{clusterIP: 10.250.0.9, publishNotReadyAddresses: {publish}, ports: [{{port: 80}}]}}\n---\n\
             kind: Endpoints\nmetadata: {{name: a}}\nsubsets: [{{addresses: [{{ip: 10.244.1.5, nodeName: n1, hostname: h}}], notReadyAddresses: [{{ip: 10.244.1.6}}], ports: [{{port: 80}}]}}]\n---\n\
             kind: EndpointSlice\nmetadata: {{name: a-1, labels: {{kubernetes.io/service-name: a}}}}\nendpoints: [{{addresses: [10.244.1.7], conditions: {{ready: false, serving: false, terminating: true}}}}]\nports: [{{port: 80}}]"
        )
    };
    let s = &specs_of(&m(false), "default/a")[0];
    assert_eq!((s.endpoints.len(), s.terminating.len()), (1, 0), "not-ready addresses carry nothing");
    let s = &specs_of(&m(true), "default/a")[0];
    let all: Vec<SocketAddrV4> =
        ["10.244.1.5:80", "10.244.1.6:80", "10.244.1.7:80"].iter().map(|e| e.parse().unwrap()).collect();
    assert_eq!(s.endpoints, all, "publishNotReadyAddresses: every listed endpoint is ready");
}

#[test]
fn service_set_through_etcd_keeps_every_field() {
    let mut g = specs_of(LB, "shop/web").remove(0);
    g.terminating.clear();
    g.internal_local = false;
    let objs = objects_of(&g).unwrap();
    let mut st = Store::default();
    st.apply(objs.clone(), false);
    let mut got = st.specs("shop/web");
    assert_eq!(got.len(), 1);
    // The inverse writes the endpoints with their own ports.
    got[0].endpoints.sort();
    assert_eq!(got[0], g);
    // As manifests they decode the same (the apply path).
    let text = serde_json::to_string(&objs).unwrap();
    assert_eq!(parse_manifest(&format!("{{\"kind\":\"List\",\"items\":{text}}}")).unwrap(), objs);
    g.terminating = vec!["10.244.0.74:8080".parse().unwrap()];
    assert!(objects_of(&g).unwrap_err().to_string().contains("terminating"));
}

#[test]
fn the_fuzz_seeds_make_their_specs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/cluster");
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    assert_eq!(specs_of(&read("manifest-lb-every-field"), "shop/web").len(), 1);
    let s = specs_of(&read("manifest-terminating-slices"), "ns1/svc1").remove(0);
    assert!(s.external_local && s.endpoints.len() == 5 && s.terminating.is_empty(), "publishNotReadyAddresses: {s:?}");
}
