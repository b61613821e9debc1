//! NetworkPolicy truth tables, cluster-free: the cases of `tests/netpol/*.yaml` (the
//! upstream e2e suite's, cyclonus-style generated ones, Calico's) run against three ucanal
//! dataplanes in this process with real packets (see `netpol/cluster.rs`). For every step
//! of a case (policies applied or deleted, pods and namespaces relabelled) each expected
//! table is probed: every ordered pair of the nine pods (a pod to itself is loopback and
//! never reaches ucanal), by pod address and, for TCP and UDP, through the server's
//! ClusterIP. A denial must be a policy drop on the right node (egress on the client's,
//! ingress on the server's); an answer is never lost. Connections opened in one step are
//! tried again after the next change: one the new policy denies must be cut.
//!
//! One trial per case (`netpol::<file>::<case>`). `tests/netpol/generate.py` writes the
//! fixtures; nothing here computes an expectation.

#[path = "netpol/cluster.rs"]
mod cluster;
mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;

use common::harness::Suite;

use cluster::{Cluster, Outcome, objects};
use ucanal::core::DropReason;
use ucanal::core::policy::decode;
use ucanal::core::policy::model::Object;

const PODS: [&str; 9] = ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"];

struct Probe {
    proto: u8,
    port: u16,
    /// (client, server) -> reachable.
    table: BTreeMap<(String, String), bool>,
}

struct Step {
    apply: Vec<Object>,
    delete: Vec<Object>,
    probes: Vec<Probe>,
}

struct Case {
    name: String,
    upstream: String,
    steps: Vec<Step>,
}

fn proto_number(s: &str) -> u8 {
    match s {
        "TCP" => 6,
        "UDP" => 17,
        "SCTP" => 132,
        _ => panic!("fixture protocol {s}"),
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "TCP",
        17 => "UDP",
        _ => "SCTP",
    }
}

fn table(text: &str) -> BTreeMap<(String, String), bool> {
    let mut t = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut cols = line.split_whitespace();
        let from = cols.next().unwrap().to_string();
        for (to, mark) in PODS.iter().zip(cols) {
            match mark {
                "." => t.insert((from.clone(), to.to_string()), true),
                "X" => t.insert((from.clone(), to.to_string()), false),
                "-" => None,
                m => panic!("fixture mark {m}"),
            };
        }
    }
    assert_eq!(t.len(), 72, "a table of 9 x 9 pairs, the diagonal aside");
    t
}

fn manifests(v: &serde_json::Value, key: &str) -> Vec<Object> {
    v.get(key)
        .and_then(|l| l.as_array())
        .map(|l| l.iter().map(|m| decode::decode(m).unwrap_or_else(|e| panic!("fixture manifest: {e}"))).collect())
        .unwrap_or_default()
}

fn load(file: &str) -> Vec<Case> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netpol").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut cases = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("fixture field {k}")).to_string();
        let steps = v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|st| Step {
                apply: manifests(st, "apply"),
                delete: manifests(st, "delete"),
                probes: st["probes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| Probe {
                        proto: proto_number(p["protocol"].as_str().unwrap()),
                        port: p["port"].as_u64().unwrap() as u16,
                        table: table(p["reachability"].as_str().unwrap()),
                    })
                    .collect(),
            })
            .collect();
        cases.push(Case { name: s("name"), upstream: s("upstream"), steps });
    }
    cases
}

/// A connection that worked, to be tried again after the next change.
struct Open {
    client: &'static str,
    server: &'static str,
    dst: Ipv4Addr,
    proto: u8,
    port: u16,
    sport: u16,
}

#[derive(Default)]
struct Tally {
    probes: usize,
    reopened: usize,
    failures: Vec<String>,
}

/// The result of a probe against its expectation, `None` when right.
fn judge(cl: &Cluster, o: Outcome, want: bool, client: &str, server: &str) -> Option<String> {
    match (o, want) {
        (Outcome::Connected, true) => None,
        (Outcome::Refused { node, reason }, false) => {
            let right = match reason {
                DropReason::PolicyEgress => node == cl.pod(client).node,
                DropReason::PolicyIngress => node == cl.pod(server).node,
                _ => false,
            };
            (!right).then(|| format!("denied, but as {reason} on node-{}", node + 1))
        }
        (Outcome::Connected, false) => Some("connected, expected denied".into()),
        (Outcome::Refused { node, reason }, true) => {
            Some(format!("refused ({reason} on node-{}), expected reachable", node + 1))
        }
        (Outcome::ReplyLost { node, reason }, _) => {
            Some(format!("the answer was lost ({reason} on node-{})", node + 1))
        }
    }
}

fn run_case(world: &[Object], case: &Case, tally: &mut Tally) {
    let mut cl = Cluster::new(world);
    let mut sport = 20000u16;
    let mut open: Vec<Open> = Vec::new();
    for (i, step) in case.steps.iter().enumerate() {
        cl.apply(&step.apply, &step.delete);
        let fail = |t: &mut Tally, what: String| {
            t.failures.push(format!("{} [step {}]: {what}\n    ({})", case.name, i + 1, case.upstream))
        };
        // The connections of the step before, under the new policy.
        for c in std::mem::take(&mut open) {
            let Some(p) = step.probes.iter().find(|p| p.proto == c.proto && p.port == c.port) else { continue };
            let want = p.table[&(c.client.to_string(), c.server.to_string())];
            tally.reopened += 1;
            let r = cl.again(c.client, c.dst, c.proto, c.port, c.sport);
            let wrong = match (r, want) {
                (Ok(()), true) | (Err((_, DropReason::PolicyIngress | DropReason::PolicyEgress)), false) => false,
                // A TCP connection not tracked from its start (neither end had policy):
                // picked up mid-stream, it passes only if both orientations are allowed.
                (Err((_, DropReason::PolicyUncomputable)), _) => c.proto != 6,
                _ => true,
            };
            if wrong {
                let what = format!(
                    "running {} {} -> {} ({}:{}) after the change: {r:?}, expected {}",
                    proto_name(c.proto),
                    c.client,
                    c.server,
                    c.dst,
                    c.port,
                    if want { "to pass" } else { "to be cut" }
                );
                fail(tally, what);
            }
        }
        for p in &step.probes {
            for client in PODS {
                for server in PODS.iter().filter(|s| **s != client) {
                    let want = p.table[&(client.to_string(), server.to_string())];
                    let mut targets = vec![("pod", cl.pod(server).port.ip)];
                    if p.proto != 132 {
                        targets.push(("service", cl.pod(server).service));
                    }
                    for (via, dst) in targets {
                        sport += 1;
                        tally.probes += 1;
                        let o = cl.probe(client, dst, server, p.proto, p.port, sport);
                        if let Some(why) = judge(&cl, o, want, client, server) {
                            let what = format!(
                                "{} {client} -> {server}:{} via {via} {dst}: {why}",
                                proto_name(p.proto),
                                p.port
                            );
                            fail(tally, what);
                        }
                        if o == Outcome::Connected {
                            open.push(Open { client, server, dst, proto: p.proto, port: p.port, sport });
                        }
                    }
                }
            }
        }
    }
}

fn world() -> Vec<Object> {
    objects(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netpol/world.yaml")).unwrap())
}

/// A trial name from a case's name.
fn trial_name(file: &str, case: &str) -> String {
    let stem = file.trim_end_matches(".yaml").replace('-', "_");
    let mut name: String =
        case.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    while name.contains("__") {
        name = name.replace("__", "_");
    }
    format!("{stem}::{}", name.trim_matches('_'))
}

/// One trial per case of `file`, and one that counts them (`at_least`).
fn add_file(suite: &mut Suite, world: &Arc<Vec<Object>>, file: &'static str, at_least: usize) {
    let cases = load(file);
    let n = cases.len();
    suite.test(&format!("{}::cases", file.trim_end_matches(".yaml").replace('-', "_")), move || {
        assert!(n >= at_least, "{file}: {n} cases, want at least {at_least}");
    });
    let mut seen = std::collections::BTreeSet::new();
    for case in cases {
        let world = world.clone();
        // The suite's UDP and SCTP contexts repeat the TCP titles: their context tells them apart.
        let mut name = trial_name(file, &case.name);
        if let Some(proto) = case.upstream.split("client using ").nth(1).and_then(|r| r.split_whitespace().next()) {
            name = format!("{name}_{}", proto.to_lowercase());
        }
        assert!(seen.insert(name.clone()), "two cases named {name}");
        suite.test(&name, move || {
            let mut t = Tally::default();
            run_case(&world, &case, &mut t);
            assert!(
                t.failures.is_empty(),
                "{} of {} probes wrong ({} running connections re-tried):\n{}",
                t.failures.len(),
                t.probes,
                t.reopened,
                t.failures.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
            );
        });
    }
}

fn main() -> ExitCode {
    let world = Arc::new(world());
    let mut suite = Suite::new();
    add_file(&mut suite, &world, "upstream-e2e.yaml", 48);
    add_file(&mut suite, &world, "cyclonus.yaml", 100);
    add_file(&mut suite, &world, "calico.yaml", 10);
    suite.test("the_world_is_three_nodes_of_three_pods", the_world_is_three_nodes_of_three_pods);
    suite.test("a_wrong_expectation_is_caught", a_wrong_expectation_is_caught);
    suite.run()
}

fn the_world_is_three_nodes_of_three_pods() {
    let world =
        objects(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netpol/world.yaml")).unwrap());
    let cl = Cluster::new(&world);
    assert_eq!((cl.attached(0), cl.attached(1), cl.attached(2)), (3, 3, 3));
    assert_eq!(cl.services(), 9 * 4);
    // Without policy, everything connects (and nothing is tracked for policy).
    for client in PODS {
        for server in PODS.iter().filter(|s| **s != client) {
            let dst = cl.pod(server).port.ip;
            assert_eq!(cl.probe(client, dst, server, 6, 80, 30000), Outcome::Connected, "{client} -> {server}");
        }
    }
}

/// The harness is not vacuous: a wrong expectation, or a step that should cut a running
/// connection, is caught.
fn a_wrong_expectation_is_caught() {
    let world =
        objects(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netpol/world.yaml")).unwrap());
    let mut cases = load("upstream-e2e.yaml");
    let mut case = cases.remove(0);
    assert!(case.name.contains("default-deny-ingress"));
    let key = ("y/a".to_string(), "x/a".to_string());
    let flipped = !case.steps[0].probes[0].table[&key];
    case.steps[0].probes[0].table.insert(key, flipped);
    let mut t = Tally::default();
    run_case(&world, &case, &mut t);
    assert_eq!(t.failures.len(), 2, "by pod address and through the service: {:?}", t.failures);
    // A second step with the same expectation as the first: connections made in the first
    // (allowed) are cut by the deny of the second, and must be.
    let mut case = load("upstream-e2e.yaml").into_iter().find(|c| c.name == "should enforce updated policy").unwrap();
    let allow_all_again = case.steps[0].probes[0].table.clone();
    case.steps[1].probes[0].table = allow_all_again;
    let mut t = Tally::default();
    run_case(&world, &case, &mut t);
    assert!(t.failures.iter().any(|f| f.contains("running") && f.contains("expected to pass")), "{:?}", t.failures);
}
