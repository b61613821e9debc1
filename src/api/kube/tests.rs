use super::*;
use crate::core::tables::article;

const GHOST: &str = include_str!("../../../netns-scripts/manifests/ghost.yaml");

#[test]
fn the_articles_ghost_manifest_makes_the_articles_service() {
    let objs = parse_manifest(GHOST).unwrap();
    assert_eq!(objs.iter().map(Object::kind).collect::<Vec<_>>(), ["Service", "Endpoints"]);
    let mut st = Store::default();
    let touched = st.apply(objs, false);
    assert_eq!(touched.into_iter().collect::<Vec<_>>(), ["default/ghost"]);
    assert_eq!(st.specs("default/ghost"), vec![article::ghost()]);
}

#[test]
fn json_multi_port_and_slices() {
    let svc = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"dns","namespace":"kube-system"},
      "spec":{"clusterIP":"10.250.0.10","ports":[{"name":"dns","port":53,"protocol":"UDP"},{"name":"dns-tcp","port":53,"protocol":"TCP"}]}}"#;
    let slice = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-abcde
  namespace: kube-system
  labels: {kubernetes.io/service-name: dns}
addressType: IPv4
endpoints:
- addresses: [10.244.1.9]
  conditions: {ready: true}
- addresses: [10.244.2.9]
  conditions: {ready: false}
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
"#;
    let mut st = Store::default();
    st.apply(parse_manifest(svc).unwrap(), false);
    st.apply(parse_manifest(slice).unwrap(), false);
    let specs = st.specs("kube-system/dns");
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[0].name, "kube-system/dns:dns");
    assert_eq!(
        (specs[0].protocol, specs[0].endpoints.clone()),
        (Protocol::Udp, vec!["10.244.1.9:53".parse().unwrap()])
    );
    assert_eq!(specs[1].protocol, Protocol::Tcp);
    assert!(spec_of("kube-system/dns:dns-tcp", "kube-system/dns") && !spec_of("kube-system/dnsx", "kube-system/dns"));
    // Deleting the Service leaves no spec, whatever endpoints remain.
    st.apply(parse_manifest(svc).unwrap(), true);
    assert!(st.specs("kube-system/dns").is_empty());
}

#[test]
fn bad_manifests_name_the_fault() {
    let e = |s: &str| parse_manifest(s).unwrap_err().to_string();
    assert!(e("kind: Pod\nmetadata: {name: x}").contains("kind 'Pod'"));
    assert!(
        e("kind: Service\nmetadata: {name: x}\nspec: {type: LoadBalancer, clusterIP: 10.0.0.1, ports: [{port: 1}]}")
            .contains("Service default/x: spec.type LoadBalancer")
    );
    assert!(e("kind: Service\nmetadata: {name: x}\nspec: {clusterIP: None, ports: [{port: 1}]}").contains("clusterIP"));
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
fn service_set_writes_objects_that_make_the_same_spec() {
    let mut g = article::ghost();
    g.endpoints = vec!["10.244.1.5:2368".parse().unwrap(), "10.244.0.74:8080".parse().unwrap()];
    let objs = objects_of(&g).unwrap();
    assert_eq!(objs.iter().map(Object::key).collect::<Vec<_>>(), ["services/default/ghost", "endpoints/default/ghost"]);
    let mut st = Store::default();
    st.apply(objs, false);
    g.endpoints.sort();
    assert_eq!(st.specs("default/ghost"), vec![g.clone()]);
    // Stored as JSON and read back (what every node's watch does), still the same.
    let back: Vec<Object> =
        serde_json::from_str(&serde_json::to_string(&st.iter().collect::<Vec<_>>()).unwrap()).unwrap();
    let mut st2 = Store::default();
    st2.apply(back, false);
    assert_eq!(st2.specs("default/ghost"), vec![g.clone()]);
    g.name = "default/ghost:http".into();
    assert!(matches!(objects_of(&g), Err(KubeError::Object { problem, .. }) if problem.contains("multi-port")));
    g.name = "ghost".into();
    assert!(objects_of(&g).is_err());
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
        let fast = decode::fast_manifest(good).expect("the fast path takes a right manifest");
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
        assert!(decode::fast_manifest(bad).is_none(), "{bad}");
        let e = parse_manifest(bad).unwrap_err().to_string();
        assert!(e.contains(names), "{bad}: {e}");
        assert_eq!(parse_manifest(bad), parse_manifest_general(bad));
    }
}
