use super::*;
use crate::core::policy::model::*;
use crate::core::policy::selector;

fn one(text: &str) -> Result<Object, DecodeError> {
    let mut v = decode_all(text)?;
    assert_eq!(v.len(), 1);
    Ok(v.remove(0))
}

/// The error's field and fault.
fn fault(text: &str) -> (String, Fault) {
    match one(text) {
        Err(DecodeError::Field { field, fault, .. }) => (field, fault),
        other => panic!("expected a field error, got {other:?}"),
    }
}

const EVERY_FIELD: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: a}
    matchExpressions: [{key: tier, operator: NotIn, values: [db]}]
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchExpressions: [{key: pod, operator: Exists}]}
    - ipBlock: {cidr: 10.244.1.5/24, except: [10.244.1.0/28]}
    ports:
    - {port: 80}
    - {protocol: UDP, port: serve-81-udp}
    - {protocol: SCTP, port: 8000, endPort: 9000}
  egress:
  - to: [{namespaceSelector: {}}]
"#;

#[test]
fn a_network_policy_with_every_field() {
    let Object::NetworkPolicy(p) = one(EVERY_FIELD).unwrap() else { panic!() };
    assert_eq!((p.namespace.as_str(), p.name.as_str()), ("x", "web"));
    assert!(p.ingress_type && p.egress_type, "egress rules default the Egress type in");
    let r = &p.ingress[0];
    assert_eq!(r.peers.len(), 3);
    let K8sPeer::IpBlock { cidr, except } = &r.peers[2] else { panic!() };
    assert_eq!(cidr.to_string(), "10.244.1.0/24", "host bits cleared as the API server's sloppy parse");
    assert_eq!(except[0].to_string(), "10.244.1.0/28");
    assert_eq!(r.ports[0], K8sPort { protocol: Protocol::Tcp, port: Some(PortRef::Number { port: 80, end: 80 }) });
    assert_eq!(r.ports[1].port, Some(PortRef::Name("serve-81-udp".into())));
    assert_eq!(r.ports[2].port, Some(PortRef::Number { port: 8000, end: 9000 }));
    assert_eq!(
        p.pod_selector.to_selector().to_string(),
        "pod == 'a' && tier not in {'db'}",
        "a LabelSelector is Calico's expression"
    );
}

#[test]
fn policy_types_default_as_the_api_server() {
    let np = |spec: &str| {
        let t = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec: {spec}"
        );
        let Object::NetworkPolicy(p) = one(&t).unwrap() else { panic!() };
        (p.ingress_type, p.egress_type)
    };
    assert_eq!(np("{podSelector: {}}"), (true, false));
    assert_eq!(np("{podSelector: {}, egress: []}"), (true, false), "an empty egress list is no egress rule");
    assert_eq!(np("{podSelector: {}, egress: [{}]}"), (true, true));
    assert_eq!(np("{podSelector: {}, policyTypes: [Egress]}"), (false, true));
    assert_eq!(np("{podSelector: {}, policyTypes: [Ingress, Egress]}"), (true, true));
}

#[test]
fn faults_name_their_field() {
    let np = |spec: &str| {
        fault(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec: {spec}"
        ))
    };
    let cases: &[(&str, &str)] = &[
        ("{}", "spec.podSelector"),
        ("{podSelector: {}, ingres: []}", "spec.ingres"),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        ("{podSelector: {}, ingress: [{from: [{}]}]}", "spec.ingress[0].from[0]"),
        (
            "{podSelector: {}, ingress: [{from: [{podSelector: {}, ipBlock: {cidr: 1.0.0.0/8}}]}]}",
            "spec.ingress[0].from[0]",
        ),
        ("{podSelector: {}, egress: [{ports: [{protocol: ICMP}]}]}", "spec.egress[0].ports[0].protocol"),
        ("{podSelector: {}, egress: [{ports: [{port: 0}]}]}", "spec.egress[0].ports[0].port"),
        ("{podSelector: {}, egress: [{ports: [{port: '80'}]}]}", "spec.egress[0].ports[0].port"),
        ("{podSelector: {}, egress: [{ports: [{port: http, endPort: 90}]}]}", "spec.egress[0].ports[0].endPort"),
        ("{podSelector: {}, egress: [{ports: [{port: 100, endPort: 90}]}]}", "spec.egress[0].ports[0].endPort"),
        ("{podSelector: {matchExpressions: [{key: a, operator: In}]}}", "spec.podSelector.matchExpressions[0].values"),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: Is}]}}",
            "spec.podSelector.matchExpressions[0].operator",
        ),
        ("{podSelector: {matchLabels: {'-bad': x}}}", "spec.podSelector.matchLabels.-bad"),
        ("{podSelector: {}, policyTypes: [Both]}", "spec.policyTypes[0]"),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 'fd00::/8'}}]}]}",
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
    ];
    for (spec, field) in cases {
        assert_eq!(np(spec).0, *field, "{spec}");
    }
    assert!(matches!(np("{podSelector: {}, ingres: []}").1, Fault::Unknown));
    assert!(matches!(
        np("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 'fd00::/8'}}]}]}").1,
        Fault::Unsupported(_)
    ));
    let e = one("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {}")
        .unwrap_err();
    assert_eq!(e.to_string(), "NetworkPolicy x/p: spec.podSelector is required");
}

#[test]
fn namespaces_and_pods() {
    let Object::Namespace(n) = one("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {ns: x}}").unwrap()
    else {
        panic!()
    };
    assert_eq!(n.labels.get(NAMESPACE_NAME_LABEL).map(String::as_str), Some("x"), "the API server's name label");
    let pod = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  nodeName: node-1
  containers:
  - name: c80
    image: agnhost
    ports: [{containerPort: 80, name: serve-80-tcp}, {containerPort: 81, protocol: UDP, name: serve-81-udp}]
status: {podIP: 10.244.1.5}
"#;
    let Object::Pod(p) = one(pod).unwrap() else { panic!() };
    assert_eq!(p.ip, Some("10.244.1.5".parse().unwrap()));
    assert_eq!(p.node.as_deref(), Some("node-1"));
    assert_eq!(p.named_port("serve-81-udp", Protocol::Udp), Some(81));
    assert_eq!(p.named_port("serve-81-udp", Protocol::Tcp), None);
    let bad = pod.replace("serve-80-tcp", "Serve_80");
    assert_eq!(fault(&bad).0, "spec.containers[0].ports[0].name");
    let bad = pod.replace("10.244.1.5", "10.244.1.500");
    assert_eq!(fault(&bad).0, "status.podIP");
    assert_eq!(fault("apiVersion: v1\nkind: Namespace\nmetadata: {name: X}").0, "metadata.name");
    assert_eq!(fault("apiVersion: v1\nkind: Service\nmetadata: {name: s}").0, "kind");
}

const CALICO: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-db}
spec:
  order: 10.5
  selector: role == 'db' && !has(debug)
  namespaceSelector: env in {'prod', 'staging'}
  types: [Ingress, Egress]
  ingress:
  - action: Log
  - action: Allow
    protocol: TCP
    source: {selector: role == 'api', namespaceSelector: all(), nets: [10.244.0.0/16], notNets: [10.244.9.0/24]}
    destination: {ports: [5432, '6000:6010', postgres], notPorts: [5433]}
  - action: Pass
    notProtocol: UDP
  - action: Deny
  egress:
  - action: Allow
    protocol: 17
    destination: {notSelector: app == 'x', ports: [53]}
"#;

#[test]
fn a_calico_global_policy() {
    let Object::Calico(p) = one(CALICO).unwrap() else { panic!() };
    assert_eq!((p.namespace.as_deref(), p.name.as_str(), p.order), (None, "deny-db", Some(10.5)));
    assert_eq!(p.selector, selector::parse("role == 'db' && !has(debug)").unwrap());
    assert_eq!(p.ingress.len(), 4);
    let r = &p.ingress[1];
    assert_eq!(r.protocol, Some(IpProto(6)));
    assert_eq!(
        r.destination.ports,
        vec![CalicoPort::Range(5432, 5432), CalicoPort::Range(6000, 6010), CalicoPort::Name("postgres".into())]
    );
    assert_eq!(p.ingress[2].not_protocol, Some(IpProto(17)));
    assert_eq!(p.egress[0].protocol, Some(IpProto(17)));
    let types = |spec: &str| {
        let t = format!("apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: p}}\nspec: {spec}");
        let Object::Calico(p) = one(&t).unwrap() else { panic!() };
        assert_eq!(p.namespace.as_deref(), Some("default"));
        (p.ingress_type, p.egress_type)
    };
    assert_eq!(types("{}"), (true, false));
    assert_eq!(types("{egress: [{action: Allow}]}"), (false, true));
    assert_eq!(types("{ingress: [{action: Deny}], egress: [{action: Allow}]}"), (true, true));
}

#[test]
fn calico_refuses_what_it_does_not_enforce_by_name() {
    let gnp = |spec: &str| {
        fault(&format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: p}}\nspec: {spec}"
        ))
    };
    let cases: &[(&str, &str, bool)] = &[
        ("{tier: security}", "spec.tier", true),
        ("{ingress: [{action: Allow, icmp: {type: 8}}]}", "spec.ingress[0].icmp", true),
        ("{ingress: [{action: Allow, http: {methods: [GET]}}]}", "spec.ingress[0].http", true),
        (
            "{ingress: [{action: Allow, source: {serviceAccounts: {names: [a]}}}]}",
            "spec.ingress[0].source.serviceAccounts",
            true,
        ),
        ("{serviceAccountSelector: 'a == \"b\"'}", "spec.serviceAccountSelector", true),
        ("{preDNAT: true}", "spec.preDNAT", true),
        ("{ingress: [{action: Allow, ipVersion: 6}]}", "spec.ingress[0].ipVersion", true),
        ("{ingress: [{action: Accept}]}", "spec.ingress[0].action", false),
        ("{ingress: [{action: Allow, destination: {ports: [80]}}]}", "spec.ingress[0].destination.ports", false),
        (
            "{ingress: [{action: Allow, protocol: TCP, destination: {ports: ['90:80']}}]}",
            "spec.ingress[0].destination.ports[0]",
            false,
        ),
        ("{selector: 'app = web'}", "spec.selector", false),
        ("{ingress: [{action: Allow, protocol: XTP}]}", "spec.ingress[0].protocol", false),
        ("{order: high}", "spec.order", false),
    ];
    for (spec, field, unsupported) in cases {
        let (f, fault) = gnp(spec);
        assert_eq!(f, *field, "{spec}");
        assert_eq!(matches!(fault, Fault::Unsupported(_)), *unsupported, "{spec}: {fault}");
    }
    // A disabled host-endpoint option is no refusal.
    assert!(
        one("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\nspec: {preDNAT: false}")
            .is_ok()
    );
    let e = fault(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {}",
    );
    assert_eq!(e.0, "metadata.namespace");
}

#[test]
fn lists_and_json() {
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {}\n",
        serde_json::to_string(&serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}
        }))
        .unwrap()
    );
    assert_eq!(decode_all(&list).unwrap().len(), 1);
    let json = r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "z"}}"#;
    assert!(matches!(decode_all(json).unwrap()[0], Object::Namespace(_)));
    assert!(matches!(decode_all("a: [").unwrap_err(), DecodeError::Syntax(_)));
}
