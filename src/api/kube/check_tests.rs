//! The checks every field passes: refused by name, or with the API server's words.

use super::super::*;

fn refused(manifest: &str) -> String {
    let e = parse_manifest(manifest).unwrap_err().to_string();
    assert_eq!(parse_manifest_general(manifest).unwrap_err().to_string(), e, "both decoders say the same");
    e
}

#[test]
fn api_server_values_are_refused_with_its_words() {
    let svc = |extra: &str| {
        format!("kind: Service\nmetadata: {{name: a}}\nspec: {{clusterIP: 10.250.0.9, ports: [{{port: 80}}], {extra}}}")
    };
    for t in ["0", "86401", "-5"] {
        let e = refused(&svc(&format!(
            "sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {t}}}}}"
        )));
        assert!(
            e.contains(&format!(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: {t}: must be greater than 0 and less than 86400"
            )),
            "{e}"
        );
    }
    parse_manifest(&svc("sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86400}}"))
        .unwrap();
    for (extra, names) in [
        ("sessionAffinity: Sticky", "spec.sessionAffinity: Unsupported value: \"Sticky\""),
        ("sessionAffinityConfig: {clientIP: {timeoutSeconds: 5}}", "spec.sessionAffinityConfig: Forbidden"),
        ("externalTrafficPolicy: Local", "spec.externalTrafficPolicy: Invalid value"),
        ("internalTrafficPolicy: Nearby", "spec.internalTrafficPolicy: Unsupported value"),
        ("loadBalancerSourceRanges: [10.0.0.0/8]", "spec.loadBalancerSourceRanges: Forbidden"),
        ("allocateLoadBalancerNodePorts: false", "spec.allocateLoadBalancerNodePorts: Forbidden"),
        ("healthCheckNodePort: 30000", "spec.healthCheckNodePort: Invalid value"),
    ] {
        let e = refused(&svc(extra));
        assert!(e.starts_with("Service default/a: ") && e.contains(names), "{extra}: {e}");
    }
}

#[test]
fn unimplemented_packet_fields_are_refused_by_name() {
    let svc = |spec: &str| format!("kind: Service\nmetadata: {{name: a}}\nspec: {{{spec}}}");
    for (spec, names) in [
        (
            "clusterIP: 10.250.0.9, ports: [{port: 80, protocol: SCTP}]",
            "spec.ports[0]: protocol SCTP is not implemented",
        ),
        (
            "clusterIP: 10.250.0.9, ipFamilies: [IPv4, IPv6], ports: [{port: 80}]",
            "spec.ipFamilies[1]: IPv6 is not implemented",
        ),
        (
            "clusterIP: 10.250.0.9, clusterIPs: [10.250.0.9, 'fd00::9'], ports: [{port: 80}]",
            "spec.clusterIPs[1]: a second cluster IP",
        ),
        ("clusterIP: 10.250.0.9, ipFamilyPolicy: RequireDualStack, ports: [{port: 80}]", "spec.ipFamilyPolicy"),
        (
            "clusterIP: 10.250.0.9, externalIPs: ['2001:db8::1'], ports: [{port: 80}]",
            "spec.externalIPs[0]: 2001:db8::1 is not an IPv4",
        ),
        (
            "clusterIP: 10.250.0.9, topologyKeys: [kubernetes.io/hostname], ports: [{port: 80}]",
            "unknown field `topologyKeys`",
        ),
        ("type: NodePort, clusterIP: 10.250.0.9, ports: [{port: 80}]", "spec.ports[0].nodePort is missing"),
        ("type: LoadBalancer, clusterIP: 10.250.0.9, ports: [{port: 80}]", "spec.ports[0].nodePort is missing"),
        ("clusterIP: 10.250.0.9, ports: [{port: 80, nodePort: 30000}]", "nodePort on a ClusterIP service"),
        (
            "type: LoadBalancer, clusterIP: 10.250.0.9, allocateLoadBalancerNodePorts: false, loadBalancerSourceRanges: [bogus], ports: [{port: 80}]",
            "spec.loadBalancerSourceRanges[0]",
        ),
    ] {
        let e = refused(&svc(spec));
        assert!(e.contains(names), "{spec}: {e}");
    }
    let e = refused(
        "kind: Service\nmetadata: {name: a}\nspec: {type: LoadBalancer, clusterIP: 10.250.0.9, allocateLoadBalancerNodePorts: false, ports: [{port: 80}]}\nstatus: {loadBalancer: {ingress: [{ip: 1.2.3.4, ipMode: Tunnel}]}}",
    );
    assert!(e.contains("status.loadBalancer.ingress[0].ipMode"), "{e}");
    let slice = |body: &str| {
        format!("kind: EndpointSlice\nmetadata: {{name: s, labels: {{kubernetes.io/service-name: a}}}}\n{body}")
    };
    for (body, names) in [
        ("addressType: IPv6\nendpoints: []\nports: []", "addressType: only IPv4"),
        ("addressType: FQDN\nendpoints: []\nports: []", "addressType: only IPv4"),
        (
            "endpoints: [{addresses: [10.244.1.5], hints: {forNodes: [{name: n1}]}}]\nports: []",
            "endpoints[0].hints.forNodes",
        ),
        (
            "endpoints: [{addresses: [10.244.1.5], conditions: {ready: true, healthy: true}}]\nports: []",
            "unknown field `healthy`",
        ),
        ("endpoints: []\nports: [{port: 80, protocol: SCTP}]", "ports[0]: protocol SCTP"),
    ] {
        let e = refused(&slice(body));
        assert!(e.starts_with("EndpointSlice ") && e.contains(names), "{body}: {e}");
    }
}

#[test]
fn the_fuzz_seeds_decode_as_the_fuzz_target_demands() {
    // fuzz/seeds/cluster/manifest-*: the one-pass decoder answers as the general one.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/cluster");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).expect("fuzz/seeds/cluster") {
        let path = e.expect("entry").path();
        if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("manifest-")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(parse_manifest(&text), parse_manifest_general(&text), "{}", path.display());
        seen += 1;
    }
    assert!(seen >= 5, "{seen} manifest seeds");
    let refused_seed = std::fs::read_to_string(dir.join("manifest-refused-fields")).unwrap();
    assert!(refused(&refused_seed).contains("timeoutSeconds: Invalid value: 86401"));
}
