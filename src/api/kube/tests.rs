use super::*;
use crate::api::ObjectKind;

const GHOST: &str = include_str!("../../../netns-scripts/manifests/ghost.yaml");

#[test]
fn bad_manifests_name_the_fault() {
    let e = |s: &str| parse_manifest(s).unwrap_err().to_string();
    assert!(e("kind: Pod\nmetadata: {name: x}").contains("kind 'Pod'"));
    assert!(
        e("kind: Service\nmetadata: {name: x}\nspec: {type: Balanced, clusterIP: 10.0.0.1, ports: [{port: 1}]}")
            .contains("Service default/x: spec.type: Unsupported value: \"Balanced\"")
    );
    assert!(e("kind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 1}]}").contains("does not allocate"));
    assert!(
        e("kind: Service\nmetadata: {name: x}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 1, protocol: SCTP}]}")
            .contains("SCTP")
    );
    assert!(
        e("kind: Service\nmetadata: {name: x}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 1, nodePort: 30000}]}")
            .contains("nodePort on a ClusterIP")
    );
    assert!(
        e("kind: Service\nmetadata: {name: 'a b'}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 1}]}").contains("DNS")
    );
    assert!(e("{").starts_with("manifest:"));
    assert!(e("a: [").starts_with("manifest:"));
}

#[test]
fn stored_form_round_trips() {
    for o in parse_manifest(GHOST).unwrap() {
        let j = serde_json::to_string(&o).unwrap();
        assert_eq!(parse_manifest(&j).unwrap(), vec![o]);
    }
}

#[test]
fn the_one_pass_decoder_agrees_with_the_general_one() {
    let list = r#"{"apiVersion":"v1","kind":"List","items":[
      {"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":"n","labels":{"app":"a"}},
       "spec":{"type":"NodePort","clusterIP":"10.250.0.9","ports":[{"name":"http","port":80,"nodePort":30080}]},"status":{}},
      {"apiVersion":"v1","kind":"Endpoints","metadata":{"name":"a","namespace":"n"}},
      {"kind":"EndpointSlice","metadata":{"name":"a-x","namespace":"n","labels":{"kubernetes.io/service-name":"a"}},
       "endpoints":[{"addresses":["10.244.1.9"],"conditions":{"ready":true}}],"ports":[{"name":"http","port":8080}]}]}"#;
    let yaml_docs = "---\nkind: Endpoints\nmetadata: {name: b}\nsubsets: []\n---\n---\nkind: Service\nmetadata: {name: b}\nspec: {clusterIP: 10.0.0.2, ports: [{port: 53, protocol: UDP}]}\n";
    for good in [GHOST, list, yaml_docs] {
        let fast = manifest::fast_manifest(good).expect("the fast path takes a right manifest");
        assert_eq!(Ok(fast), parse_manifest_general(good));
    }
    assert_eq!(
        parse_manifest(list).unwrap().iter().map(Object::kind).collect::<Vec<_>>(),
        ["Service", "Endpoints", "EndpointSlice"]
    );
    // Wrong ones leave the fast path, and the error names the object.
    for (bad, names) in [
        (
            r#"{"kind":"List","items":[{"kind":"Service","metadata":{"name":"x"},"spec":{"clusterIP":"10.0.0.1","ports":[{"port":"http"}]}}]}"#,
            "Service x: ",
        ),
        (
            r#"{"kind":"List","items":[{"kind":"EndpointSlice","metadata":{"name":"y"},"ports":[]}]}"#,
            "EndpointSlice y: missing field `endpoints`",
        ),
        ("kind: Service\nmetadata: {name: z}\n", "Service z: missing field `spec`"),
        (r#"{"kind":"List","items":[{"kind":"List","items":[]}]}"#, "kind 'List'"),
    ] {
        assert!(manifest::fast_manifest(bad).is_none(), "{bad}");
        let e = parse_manifest(bad).unwrap_err().to_string();
        assert!(e.contains(names), "{bad}: {e}");
        assert_eq!(parse_manifest(bad), parse_manifest_general(bad));
    }
}

const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
---
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: blue}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-z}
spec: {order: 100, selector: all(), ingress: [{action: Deny}]}
";

#[test]
fn policy_objects_are_kept_as_their_manifests_and_keyed_by_kind() {
    let objs = parse_manifest(POLICY).unwrap();
    let keys: Vec<String> = objs.iter().map(Object::key).collect();
    assert_eq!(keys, ["networkpolicies/x/allow-b", "namespaces/x", "globalnetworkpolicies.projectcalico.org/deny-z"]);
    for o in &objs {
        // The stored form reads back the same, through the fast path too.
        let json = serde_json::to_string(o).unwrap();
        assert_eq!(&parse_manifest(&json).unwrap()[0], o);
        assert_eq!(&parse_manifest_general(&json).unwrap()[0], o);
        o.check().unwrap();
    }
    assert!(ObjectKind::CalicoPolicies.policy_dirs().unwrap().iter().any(|d| keys[2].starts_with(d)));
}

#[test]
fn a_bad_policy_names_its_field_and_a_forged_stored_one_is_refused() {
    let bad = POLICY.replace("pod: b", "pod: 'b c'");
    let e = parse_manifest(&bad).unwrap_err();
    assert!(matches!(e, KubeError::Policy(_)), "{e}");
    assert!(e.to_string().contains("spec.ingress[0].from[0].podSelector.matchLabels"), "{e}");
    let forged = r#"{"kind":"Policy","metadata":{"name":"other","namespace":"x"},"manifest":{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}}"#;
    assert!(parse_manifest(forged).unwrap_err().to_string().contains("does not name"));
}
