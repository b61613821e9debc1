//! Property tests: selectors print and parse back; the decoders take any value without
//! panicking; and the compiled chains (IP sets, per-peer classes, rules resolved on the
//! pod once) decide every flow exactly as a naive walk of the policies' rules does.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::decode::{decode, decode_all};
use super::ir::{self, Entity, PortAlt};
use super::model::{Pod, RuleAction};
use super::selector::{self, Selector};
use super::sets::{protocol_of, selects};
use super::stage::{self, Quiet};
use super::{Direction, PolicyEngine};
use crate::core::nat::Tuple;

fn key() -> impl Strategy<Value = String> {
    "k[a-z0-9]{0,3}(/[a-z]{1,3})?"
}
fn value() -> impl Strategy<Value = String> {
    "[a-z0-9' ]{0,4}"
}

fn selector_ast() -> impl Strategy<Value = Selector> {
    let leaf = prop_oneof![
        Just(Selector::All),
        key().prop_map(Selector::Has),
        (key(), value()).prop_map(|(k, v)| Selector::Eq(k, v)),
        (key(), value()).prop_map(|(k, v)| Selector::Ne(k, v)),
        (key(), prop::collection::btree_set(value(), 0..3)).prop_map(|(k, v)| Selector::In(k, v)),
        (key(), prop::collection::btree_set(value(), 0..3)).prop_map(|(k, v)| Selector::NotIn(k, v)),
        (key(), value()).prop_map(|(k, v)| Selector::Contains(k, v)),
        (key(), value()).prop_map(|(k, v)| Selector::StartsWith(k, v)),
        (key(), value()).prop_map(|(k, v)| Selector::EndsWith(k, v)),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Selector::Not(Box::new(e))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Selector::And),
            prop::collection::vec(inner, 2..4).prop_map(Selector::Or),
        ]
    })
}

/// JSON values shaped like policy manifests: the decoders' field names, any leaf.
fn manifest_like() -> impl Strategy<Value = serde_json::Value> {
    const KEYS: &[&str] = &[
        "apiVersion",
        "kind",
        "metadata",
        "name",
        "namespace",
        "labels",
        "spec",
        "podSelector",
        "namespaceSelector",
        "matchLabels",
        "matchExpressions",
        "key",
        "operator",
        "values",
        "ingress",
        "egress",
        "from",
        "to",
        "ports",
        "port",
        "endPort",
        "protocol",
        "ipBlock",
        "cidr",
        "except",
        "policyTypes",
        "order",
        "selector",
        "types",
        "action",
        "source",
        "destination",
        "nets",
        "notNets",
        "notPorts",
        "notSelector",
        "notProtocol",
        "status",
        "podIP",
        "nodeName",
        "containers",
        "containerPort",
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        (0u64..70000).prop_map(serde_json::Value::from),
        prop_oneof![
            Just("networking.k8s.io/v1"),
            Just("projectcalico.org/v3"),
            Just("v1"),
            Just("NetworkPolicy"),
            Just("GlobalNetworkPolicy"),
            Just("Namespace"),
            Just("Pod"),
            Just("TCP"),
            Just("SCTP"),
            Just("In"),
            Just("10.0.0.0/8"),
            Just("Allow"),
            Just("Pass"),
            Just("x"),
            Just("has(a) && b == 'c'"),
            Just("80:90"),
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(5, 64, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
            prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn selectors_print_and_parse_back(s in selector_ast()) {
        prop_assert_eq!(selector::parse(&s.to_string()), Ok(s));
    }

    #[test]
    fn selector_text_never_panics(t in "[a-z!&|(){}'\" ,=.in]{0,40}") {
        let _ = selector::parse(&t);
    }

    #[test]
    fn decoders_never_panic(mut v in manifest_like(), kind in prop::sample::select(&[
        ("networking.k8s.io/v1", "NetworkPolicy"), ("projectcalico.org/v3", "NetworkPolicy"),
        ("projectcalico.org/v3", "GlobalNetworkPolicy"), ("v1", "Namespace"), ("v1", "Pod")][..])) {
        if let Some(o) = v.as_object_mut() {
            o.insert("apiVersion".into(), kind.0.into());
            o.insert("kind".into(), kind.1.into());
        }
        if let Err(e) = decode(&v) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

// ---------------------------------------------------------------------------------
// The compiled chains against a naive walk.

const PODS: [(&str, &str); 6] = [("x", "a"), ("x", "b"), ("y", "a"), ("y", "c"), ("z", "b"), ("z", "c")];

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, 10 + i as u8)
}

fn world_yaml() -> String {
    let mut t = String::new();
    for ns in ["x", "y", "z"] {
        t += &format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n");
    }
    for (i, (ns, p)) in PODS.iter().enumerate() {
        t += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {p}, namespace: {ns}, labels: {{pod: {p}}}}}\n\
             spec: {{nodeName: n1, containers: [{{ports: [{{containerPort: 80, name: web}}, {{containerPort: 8{i}, protocol: UDP, name: dns}}]}}]}}\n\
             status: {{podIP: {}}}\n",
            pod_ip(i)
        );
    }
    t
}

fn k8s_policy() -> impl Strategy<Value = String> {
    let peer = prop::sample::select(
        &[
            "{podSelector: {}}",
            "{podSelector: {matchLabels: {pod: a}}}",
            "{namespaceSelector: {matchLabels: {ns: y}}}",
            "{namespaceSelector: {}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}}",
            "{ipBlock: {cidr: 10.244.1.8/29, except: [10.244.1.12/30]}}",
            "{ipBlock: {cidr: 0.0.0.0/0}}",
        ][..],
    );
    let port = prop::sample::select(
        &[
            "{port: 80}",
            "{protocol: UDP}",
            "{port: web}",
            "{protocol: UDP, port: dns}",
            "{port: 79, endPort: 81}",
            "{protocol: SCTP}",
        ][..],
    );
    let rule = (prop::collection::vec(peer, 0..3), prop::collection::vec(port, 0..3));
    (
        prop::sample::select(&["x", "y", "z"][..]),
        prop::sample::select(&["{}", "{matchLabels: {pod: a}}", "{matchExpressions: [{key: pod, operator: NotIn, values: [b]}]}"][..]),
        prop::option::of(prop::collection::vec(rule.clone(), 0..3)),
        prop::option::of(prop::collection::vec(rule, 0..3)),
    )
        .prop_map(|(ns, sel, ing, eg)| {
            type Rules = Option<Vec<(Vec<&'static str>, Vec<&'static str>)>>;
            let rules = |rs: &Rules, peers: &str| -> Option<String> {
                rs.as_ref().map(|rs| {
                    let v: Vec<String> = rs
                        .iter()
                        .map(|(ps, ports)| format!("{{{peers}: [{}], ports: [{}]}}", ps.join(", "), ports.join(", ")))
                        .collect();
                    format!("[{}]", v.join(", "))
                })
            };
            let mut types = Vec::new();
            let mut spec = format!("podSelector: {sel}");
            if let Some(i) = rules(&ing, "from") {
                types.push("Ingress");
                spec += &format!(", ingress: {i}");
            }
            if let Some(e) = rules(&eg, "to") {
                types.push("Egress");
                spec += &format!(", egress: {e}");
            }
            if !types.is_empty() {
                spec += &format!(", policyTypes: [{}]", types.join(", "));
            }
            format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: k, namespace: {ns}}}\nspec: {{{spec}}}\n")
        })
}

fn calico_policy() -> impl Strategy<Value = String> {
    let entity = prop::sample::select(
        &[
            "{}",
            "{selector: pod == 'a'}",
            "{selector: \"pod in {'b', 'c'}\", namespaceSelector: ns != 'x'}",
            "{namespaceSelector: all()}",
            "{nets: [10.244.1.8/29], notNets: [10.244.1.10/32]}",
            "{notSelector: has(pod) && pod == 'b'}",
        ][..],
    );
    let rule = (
        prop::sample::select(&["Allow", "Deny", "Pass", "Log"][..]),
        prop::sample::select(&["", "protocol: TCP, ", "protocol: UDP, ", "notProtocol: TCP, "][..]),
        entity.clone(),
        entity,
        prop::sample::select(&["", "ports: [80]", "notPorts: ['81:90']", "ports: [web]"][..]),
    )
        .prop_map(|(a, p, s, d, ports)| {
            let d = if p.starts_with("protocol") && !ports.is_empty() {
                if d == "{}" { format!("{{{ports}}}") } else { format!("{}, {ports}}}", &d[..d.len() - 1]) }
            } else {
                d.to_string()
            };
            format!("{{action: {a}, {p}source: {s}, destination: {d}}}")
        });
    (
        prop::sample::select(&["", "order: 10, ", "order: 1000, ", "order: 2000, "][..]),
        prop::bool::ANY,
        prop::sample::select(&["all()", "pod == 'a'", "ns == 'x'", "projectcalico.org/namespace in {'x', 'y'}"][..]),
        prop::collection::vec(rule.clone(), 0..3),
        prop::collection::vec(rule, 0..3),
        prop::sample::select(&["", "types: [Ingress], ", "types: [Egress], ", "types: [Ingress, Egress], "][..]),
    )
        .prop_map(|(order, global, sel, ing, eg, types)| {
            let (kind, meta) = if global { ("GlobalNetworkPolicy", "{name: c}") } else { ("NetworkPolicy", "{name: c, namespace: y}") };
            format!(
                "apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata: {meta}\nspec: {{{order}{types}selector: \"{sel}\", ingress: [{}], egress: [{}]}}\n",
                ing.join(", "),
                eg.join(", ")
            )
        })
}

/// Whether the entity holds for address `a` (a pod of the world, or none) and port.
fn entity_holds(
    e: &Entity,
    a: Ipv4Addr,
    pod: Option<&Pod>,
    ns_labels: &super::model::Labels,
    proto: u8,
    port: u16,
) -> bool {
    let in_set = |s: &ir::SetKey| pod.is_some_and(|p| selects(s, p, ns_labels));
    let alt = e.alts.iter().any(|x| {
        x.set.as_ref().is_none_or(in_set)
            && (x.nets.is_empty() || x.nets.iter().any(|n| n.contains(a)))
            && !x.not_nets.iter().any(|n| n.contains(a))
    });
    let port_ok = |p: &PortAlt| match p {
        PortAlt::Range { proto: pp, lo, hi } => pp.is_none_or(|pp| pp == proto) && (*lo..=*hi).contains(&port),
        PortAlt::Named { proto: pp, name } => {
            *pp == proto && pod.and_then(|p| p.named_port(name, protocol_of(*pp)?)) == Some(port)
        }
    };
    let has_ports = matches!(proto, 6 | 17 | 132);
    let ported = !e.ports.is_empty() || !e.not_ports.is_empty();
    alt && !e.not_set.as_ref().is_some_and(in_set)
        && (!ported || has_ports)
        && (e.ports.is_empty() || e.ports.iter().any(port_ok))
        && !e.not_ports.iter().any(port_ok)
}

/// Felix's walk, naively: every rule of every policy selecting the pod, in order.
fn naive(e: &PolicyEngine, dir: Direction, me: usize, f: &Tuple) -> bool {
    let (ns, name) = PODS[me];
    let Some(keys) = e.local_pods().find(|(id, _)| id.0 == ns && id.1 == name).map(|(_, k)| k.clone()) else {
        return true;
    };
    let mut pols: Vec<&ir::Policy> = keys.iter().filter_map(|k| e.policy(k)).collect();
    pols.sort_by(|a, b| a.sort_key().0.total_cmp(&b.sort_key().0).then(a.sort_key().1.cmp(&b.sort_key().1)));
    let rules: Vec<&ir::Rule> = pols
        .iter()
        .filter_map(|p| if dir == Direction::Ingress { p.ingress.as_ref() } else { p.egress.as_ref() })
        .flatten()
        .collect();
    let isolated =
        pols.iter().any(|p| if dir == Direction::Ingress { p.ingress.is_some() } else { p.egress.is_some() });
    if !isolated {
        return true;
    }
    let pod_at = |a: Ipv4Addr| (0..PODS.len()).find(|i| pod_ip(*i) == a);
    let labels = |i: usize| -> (Pod, super::model::Labels) {
        let (ns, name) = PODS[i];
        (
            e.pod(ns, name).unwrap().clone(),
            [("ns".to_string(), ns.to_string()), ("kubernetes.io/metadata.name".to_string(), ns.to_string())].into(),
        )
    };
    let (src, dst) = (pod_at(f.src).map(labels), pod_at(f.dst).map(labels));
    let empty = super::model::Labels::new();
    for r in rules {
        let proto_ok = r.proto.is_none_or(|p| p == f.proto) && r.not_proto != Some(f.proto);
        let s = entity_holds(
            &r.src,
            f.src,
            src.as_ref().map(|x| &x.0),
            src.as_ref().map_or(&empty, |x| &x.1),
            f.proto,
            f.sport,
        );
        let d = entity_holds(
            &r.dst,
            f.dst,
            dst.as_ref().map(|x| &x.0),
            dst.as_ref().map_or(&empty, |x| &x.1),
            f.proto,
            f.dport,
        );
        if proto_ok && s && d {
            match r.action {
                RuleAction::Log => continue,
                RuleAction::Deny => return false,
                RuleAction::Allow | RuleAction::Pass => return true,
            }
        }
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn compiled_chains_decide_as_a_naive_walk(
        k8s in prop::collection::vec(k8s_policy(), 0..3),
        cal in prop::collection::vec(calico_policy(), 0..3),
    ) {
        let mut e = PolicyEngine::new("n1", "10.244.1.0/24".parse().unwrap());
        for o in decode_all(&world_yaml()).unwrap() {
            e.apply(o);
        }
        // Same names on purpose: a later manifest replaces an earlier one.
        for (i, text) in k8s.iter().chain(&cal).enumerate() {
            let text = text.replace("name: k,", &format!("name: k{i},")).replace("name: c", &format!("name: c{i}"));
            match decode_all(&text) {
                Ok(objs) => objs.into_iter().for_each(|o| e.apply(o)),
                Err(err) => prop_assert!(false, "generated manifest does not decode: {err}\n{text}"),
            }
        }
        let t = e.table();
        let outside = Ipv4Addr::new(8, 8, 8, 8);
        let addrs: BTreeSet<Ipv4Addr> = (0..PODS.len()).map(pod_ip).chain([outside]).collect();
        for src in &addrs {
            for dst in &addrs {
                if src == dst || (*src == outside && *dst == outside) {
                    continue;
                }
                for (proto, dport) in [(6, 80), (6, 81), (17, 80), (17, 81), (132, 80), (1, 0)] {
                    let f = Tuple { proto, src: *src, dst: *dst, sport: 40000, dport };
                    let got = stage::check(&t, &f, false, &mut Quiet).is_ok();
                    let me = |a: Ipv4Addr| (0..PODS.len()).find(|i| pod_ip(*i) == a);
                    let want = me(f.src).is_none_or(|i| naive(&e, Direction::Egress, i, &f))
                        && me(f.dst).is_none_or(|i| naive(&e, Direction::Ingress, i, &f));
                    prop_assert_eq!(got, want, "{:?}\n{:#?}", f, k8s.iter().chain(&cal).collect::<Vec<_>>());
                }
            }
        }
    }
}
