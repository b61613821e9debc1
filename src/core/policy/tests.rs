//! The engine's semantics, flow by flow (the truth tables of `tests/netpol.rs` take the
//! same engine through the dataplane with real packets).

use std::net::Ipv4Addr;

use super::decode::decode_all;
use super::stage::{self, Denied, Quiet};
use super::table::Lookup;
use super::*;
use crate::core::nat::Tuple;
use crate::wire::ipv4::{PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

/// x, y, z with pods a, b, c, all on node n1: `10.244.1.(10 + 3 * ns + pod)`.
fn world() -> PolicyEngine {
    let mut e = PolicyEngine::new("n1", "10.244.1.0/24".parse().unwrap());
    let mut text = String::new();
    for (i, ns) in ["x", "y", "z"].iter().enumerate() {
        text += &format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n");
        for (j, pod) in ["a", "b", "c"].iter().enumerate() {
            text += &format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}\n\
                 spec:\n  nodeName: n1\n  containers:\n  - ports:\n    - {{containerPort: 80, name: serve-80-tcp}}\n    \
                 - {{containerPort: 81, name: serve-81-tcp}}\n    - {{containerPort: 81, protocol: UDP, name: serve-81-udp}}\n\
                 status: {{podIP: 10.244.1.{}}}\n",
                10 + 3 * i + j
            );
        }
    }
    for o in decode_all(&text).unwrap() {
        e.apply(o);
    }
    e
}

fn ip(pod: &str) -> Ipv4Addr {
    let (ns, p) = pod.split_once('/').unwrap();
    let i = "xyz".find(ns).unwrap() as u8;
    let j = "abc".find(p).unwrap() as u8;
    Ipv4Addr::new(10, 244, 1, 10 + 3 * i + j)
}

fn apply(e: &mut PolicyEngine, yaml: &str) {
    for o in decode_all(yaml).unwrap() {
        e.apply(o);
    }
}

fn flow(proto: u8, from: &str, to: &str, port: u16) -> Tuple {
    Tuple { proto, src: ip(from), dst: ip(to), sport: 40000, dport: port }
}

fn ok(e: &mut PolicyEngine, proto: u8, from: &str, to: &str, port: u16) -> Result<(), Denied> {
    stage::check(&e.table(), &flow(proto, from, to, port), false, &mut Quiet)
}

fn allowed(e: &mut PolicyEngine, from: &str, to: &str, port: u16) -> bool {
    ok(e, PROTO_TCP, from, to, port).is_ok()
}

#[test]
fn no_policy_nothing_enforced() {
    let mut e = world();
    assert!(e.table().is_empty());
    assert!(allowed(&mut e, "x/a", "y/b", 80));
}

#[test]
fn default_deny_ingress_isolates_the_namespace_only() {
    let mut e = world();
    apply(
        &mut e,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}",
    );
    assert_eq!(
        ok(&mut e, PROTO_TCP, "y/a", "x/b", 80),
        Err(Denied { dir: Direction::Ingress, verdict: Verdict::EndOfTier })
    );
    assert!(allowed(&mut e, "x/a", "y/b", 80), "egress of x is not isolated");
    assert!(allowed(&mut e, "y/a", "z/b", 80));
}

#[test]
fn peers_and_or_ports_and_named_ports() {
    let mut e = world();
    apply(
        &mut e,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - {namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}
    - {podSelector: {matchLabels: {pod: c}}}
    ports: [{port: serve-81-tcp}, {port: 90, endPort: 95}]
"#,
    );
    assert!(allowed(&mut e, "y/b", "x/a", 81), "ns AND pod in one peer");
    assert!(!allowed(&mut e, "y/a", "x/a", 81));
    assert!(!allowed(&mut e, "z/b", "x/a", 81));
    assert!(allowed(&mut e, "x/c", "x/a", 81), "a podSelector alone: the policy's namespace");
    assert!(!allowed(&mut e, "y/c", "x/a", 81));
    assert!(!allowed(&mut e, "y/b", "x/a", 80), "only the named port (81) and 90-95");
    assert!(allowed(&mut e, "y/b", "x/a", 93));
    assert!(!allowed(&mut e, "y/b", "x/a", 96));
    assert!(ok(&mut e, PROTO_UDP, "y/b", "x/a", 81).is_err(), "serve-81-tcp is TCP");
    assert!(allowed(&mut e, "y/b", "x/b", 80), "x/b is not selected");
}

#[test]
fn named_ports_on_egress_resolve_on_the_destination() {
    let mut e = world();
    apply(
        &mut e,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: y, labels: {pod: d}}
spec: {nodeName: n2, containers: [{ports: [{containerPort: 8080, name: serve-80-tcp}]}]}
status: {podIP: 10.244.2.9}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: [{ports: [{port: serve-80-tcp}]}]
"#,
    );
    let t = e.table();
    let to = |dst: Ipv4Addr, port| Tuple { proto: PROTO_TCP, src: ip("x/a"), dst, sport: 1, dport: port };
    assert!(stage::check(&t, &to(ip("y/b"), 80), false, &mut Quiet).is_ok());
    assert!(stage::check(&t, &to("10.244.2.9".parse().unwrap(), 8080), false, &mut Quiet).is_ok());
    assert!(stage::check(&t, &to("10.244.2.9".parse().unwrap(), 80), false, &mut Quiet).is_err());
    assert!(stage::check(&t, &to("8.8.8.8".parse().unwrap(), 80), false, &mut Quiet).is_err(), "no pod, no name");
}

#[test]
fn ip_block_except_and_other_peers() {
    let mut e = world();
    apply(
        &mut e,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.244.1.0/24, except: [10.244.1.16/30]}}]
"#,
    );
    // z/a = .16, z/b = .17: excepted; y/c = .15 not.
    assert!(allowed(&mut e, "x/a", "y/c", 80));
    assert!(!allowed(&mut e, "x/a", "z/a", 80));
    apply(
        &mut e,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: q, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: a}}}]}]",
    );
    assert!(allowed(&mut e, "x/a", "z/a", 80), "an excepted address passes when another peer allows it");
    assert!(!allowed(&mut e, "x/a", "z/b", 80));
}

#[test]
fn sctp_only_still_isolates_for_tcp() {
    let mut e = world();
    apply(
        &mut e,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{protocol: SCTP, port: 81}]}]}",
    );
    assert!(!allowed(&mut e, "y/a", "x/a", 81));
    assert!(ok(&mut e, PROTO_SCTP, "y/a", "x/a", 81).is_ok());
    assert!(ok(&mut e, PROTO_ICMP, "y/a", "x/a", 0).is_err(), "a ported rule matches no ICMP");
}

const CALICO_ORDERED: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: first}
spec:
  order: 100
  selector: ns == 'x'
  ingress:
  - action: Log
    protocol: TCP
  - action: Deny
    source: {selector: pod == 'c'}
  - action: Pass
    source: {namespaceSelector: ns == 'z'}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
"#;

#[test]
fn calico_order_deny_pass_and_log() {
    let mut e = world();
    // The Pod label ns is not set: the GNP selects by the pods' labels, so give x's pods one.
    apply(&mut e, CALICO_ORDERED);
    assert!(allowed(&mut e, "y/c", "x/a", 80), "the GNP selects no pod (pods have no ns label): Kubernetes' allows y");
    apply(&mut e, &CALICO_ORDERED.replace("selector: ns == 'x'", "selector: projectcalico.org/namespace == 'x'"));
    let d = |e: &mut PolicyEngine, from| ok(e, PROTO_TCP, from, "x/a", 80);
    assert_eq!(d(&mut e, "y/c"), Err(Denied { dir: Direction::Ingress, verdict: Verdict::Deny }), "order 100 first");
    assert!(d(&mut e, "y/a").is_ok(), "then the Kubernetes policy at 1000");
    assert!(d(&mut e, "z/a").is_ok(), "Pass: end of tier, the namespace profile allows");
    assert_eq!(d(&mut e, "x/b"), Err(Denied { dir: Direction::Ingress, verdict: Verdict::EndOfTier }));
    // Log goes on, and is seen.
    struct Logs(Vec<RuleAction>);
    impl stage::Observer for Logs {
        fn matched(&mut self, _: Direction, _: &table::EndpointPolicy, r: &table::Compiled) {
            self.0.push(r.action);
        }
    }
    use model::RuleAction;
    let mut l = Logs(Vec::new());
    assert!(stage::check(&e.table(), &flow(PROTO_TCP, "y/a", "x/a", 80), false, &mut l).is_ok());
    assert_eq!(l.0, [RuleAction::Log, RuleAction::Allow]);
}

#[test]
fn from_the_node_itself_always_passes_ingress() {
    let mut e = world();
    apply(
        &mut e,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}",
    );
    let t = e.table();
    let probe = Tuple { proto: PROTO_TCP, src: "172.16.0.1".parse().unwrap(), dst: ip("x/a"), sport: 1, dport: 80 };
    assert!(stage::check(&t, &probe, true, &mut Quiet).is_ok());
    assert!(stage::check(&t, &probe, false, &mut Quiet).is_err());
}

#[test]
fn a_label_change_recompiles_what_it_affects_only() {
    let mut e = world();
    apply(
        &mut e,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {role: client}}}]}]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: q, namespace: y}\nspec: {podSelector: {}}",
    );
    let before = e.table();
    assert!(!allowed(&mut e, "x/b", "x/a", 80));
    let ptr = |t: &PolicyTable, pod: &str| match t.lookup(ip(pod)) {
        Lookup::Policed(ep) => ep as *const _,
        _ => std::ptr::null(),
    };
    // x/b becomes a client: only x/a (whose rule names the set) is recompiled.
    apply(
        &mut e,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x, labels: {pod: b, role: client}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.244.1.11}",
    );
    let after = e.table();
    assert!(after.generation() > before.generation());
    assert_ne!(ptr(&before, "x/a"), ptr(&after, "x/a"));
    for pod in ["y/a", "y/b", "y/c"] {
        assert_eq!(ptr(&before, pod), ptr(&after, pod), "{pod} was not recompiled");
    }
    assert!(allowed(&mut e, "x/b", "x/a", 80));
    // A namespace relabel: y's pods lose nothing here; a policy that names ns labels sees it.
    apply(
        &mut e,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]}",
    );
    assert!(!allowed(&mut e, "z/a", "x/a", 80));
    apply(&mut e, "apiVersion: v1\nkind: Namespace\nmetadata: {name: z, labels: {team: blue}}");
    assert!(allowed(&mut e, "z/a", "x/a", 80));
    // Deleting the policies frees the pods again.
    for o in decode_all("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: q, namespace: y}\nspec: {podSelector: {}}").unwrap() {
        e.delete(&o);
    }
    assert!(e.table().is_empty());
}

#[test]
fn a_peer_walks_only_the_rules_that_name_it() {
    let mut e = world();
    // 2000 policies on x/a, each allowing one label value nobody has, and one allowing y/b.
    let mut text = String::new();
    for i in 0..2000 {
        text += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: x}}\n\
             spec: {{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{app: v{i}}}}}}}]}}]}}\n"
        );
    }
    text += "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: yb, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]}\n";
    apply(&mut e, &text);
    let t = e.table();
    let Lookup::Policed(ep) = t.lookup(ip("x/a")) else { panic!() };
    assert_eq!(ep.ingress.rules.len(), 2001);
    struct Count(usize);
    impl stage::Observer for Count {
        fn matched(&mut self, _: Direction, _: &table::EndpointPolicy, _: &table::Compiled) {
            self.0 += 1;
        }
    }
    let class_len = |peer: &str| {
        let c = ep.ingress.classes.get(&u32::from(ip(peer))).copied().unwrap_or(0);
        ep.ingress.class_rules[c as usize].len()
    };
    assert_eq!(class_len("y/b"), 1, "y/b's class holds the one rule that names it");
    assert_eq!(class_len("z/c"), 0, "a peer no rule names walks nothing");
    let mut c = Count(0);
    assert!(stage::check(&t, &flow(PROTO_TCP, "y/b", "x/a", 80), false, &mut c).is_ok());
    assert_eq!(c.0, 1, "one rule matched, none other walked to a match");
    assert!(stage::check(&t, &flow(PROTO_TCP, "z/c", "x/a", 80), false, &mut Quiet).is_err());
}

#[test]
fn not_in_sync_is_not_computable() {
    let mut e = world();
    e.set_in_sync(false);
    let t = e.table();
    assert!(matches!(t.lookup(ip("x/a")), Lookup::Pending));
    assert_eq!(
        stage::check(&t, &flow(PROTO_TCP, "x/a", "y/a", 80), false, &mut Quiet),
        Err(Denied { dir: Direction::Egress, verdict: Verdict::Uncomputable })
    );
    assert!(matches!(t.lookup("10.9.9.9".parse().unwrap()), Lookup::Free), "not a local pod");
    e.set_in_sync(true);
    assert!(e.table().is_empty());
}

#[test]
fn a_pickup_needs_both_orientations() {
    let mut e = world();
    apply(
        &mut e,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
    );
    let t = e.table();
    let local = |_| false;
    let fwd = flow(PROTO_TCP, "x/b", "x/a", 80);
    assert!(stage::admit(&t, &fwd, true, local, &mut Quiet).is_ok(), "b->a allowed, a->b free");
    let rev = flow(PROTO_TCP, "x/a", "x/c", 80);
    assert!(stage::admit(&t, &rev, false, local, &mut Quiet).is_ok(), "a SYN a->c: egress is free");
    assert_eq!(
        stage::admit(&t, &rev, true, local, &mut Quiet),
        Err(Denied { dir: Direction::Ingress, verdict: Verdict::Ambiguous }),
        "mid-stream a->c: c->a would be denied, so which end opened it matters"
    );
}

#[test]
fn a_pods_chains_list_its_rules_in_walk_order() {
    let mut e = world();
    apply(
        &mut e,
        CALICO_ORDERED.replace("selector: ns == 'x'", "selector: projectcalico.org/namespace == 'x'").as_str(),
    );
    let c = e.chains("x", "a").unwrap();
    assert!(c.ingress_isolated && !c.egress_isolated);
    let rows: Vec<(&str, usize, model::RuleAction)> =
        c.rules.iter().map(|r| (r.policy.name.as_str(), r.rule, r.action)).collect();
    use model::RuleAction::*;
    assert_eq!(rows, [("first", 0, Log), ("first", 1, Deny), ("first", 2, Pass), ("allow-y", 0, Allow)]);
    assert_eq!(e.chains("x", "nope"), None);
    let free = e.chains("x", "a").map(|c| c.rules.len());
    assert_eq!(free, Some(4));
}
