//! NetworkPolicy with real packets: the truth tables of `tests/netpol/upstream-e2e.yaml`
//! (the upstream e2e suite's cases, SCTP aside) on a lab of three ucanal nodes
//! (`netns-scripts/topologies/netpol.yaml`: namespaces x, y, z with pods a, b, c spread
//! over the nodes, each serving TCP and UDP on 80 and 81). Every step of a case (a policy
//! created, changed or deleted, a pod or a namespace relabelled) is applied to every node
//! with `ucanal apply|delete -f`, then all 72 ordered pairs of pods are probed on every
//! port and protocol the case expects, with real connections, at once; the answers must
//! be the table's. Between cases the case's policies are deleted and the world applied
//! again.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use common::harness::Suite;
use common::{Background, Lab, repo, text};
use serde::Deserialize;
use serde_json::Value;

const TOPOLOGY: &str = "netns-scripts/topologies/netpol.yaml";
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];
/// Each pod of the truth tables, where the topology puts it: address and node.
const PODS: [(&str, &str, &str); 9] = [
    ("x/a", "10.244.1.5", "node-1"),
    ("x/b", "10.244.2.5", "node-2"),
    ("x/c", "10.244.3.5", "node-3"),
    ("y/a", "10.244.2.9", "node-2"),
    ("y/b", "10.244.3.9", "node-3"),
    ("y/c", "10.244.1.9", "node-1"),
    ("z/a", "10.244.3.20", "node-3"),
    ("z/b", "10.244.1.20", "node-1"),
    ("z/c", "10.244.2.20", "node-2"),
];
/// How long a probe waits for an answer: a denied probe costs this much.
const PROBE_TIMEOUT: &str = "0.5";

fn lab_name(pod: &str) -> String {
    pod.replace('/', "-")
}

fn pod(id: &str) -> (&'static str, &'static str) {
    let p = PODS.iter().find(|p| p.0 == id).unwrap_or_else(|| panic!("no pod {id}"));
    (p.1, p.2)
}

struct World {
    lab: Lab,
    _servers: Vec<Background>,
    manifests: tempfile::TempDir,
}

/// A fixture's object as it is in the lab: a Pod gets the lab's name, node and address.
fn in_lab(mut v: Value) -> Value {
    if v["kind"] == "Pod" {
        let id = format!("{}/{}", v["metadata"]["namespace"].as_str().unwrap(), v["metadata"]["name"].as_str().unwrap());
        let (ip, node) = pod(&id);
        v["metadata"]["name"] = Value::from(lab_name(&id));
        v["spec"]["nodeName"] = Value::from(node);
        v["status"] = serde_json::json!({ "podIP": ip });
    }
    v
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

impl World {
    fn up() -> World {
        let topo = repo().join(TOPOLOGY);
        let lab = Lab::up("tn", &["--topology", topo.to_str().unwrap()]);
        let agent = repo().join("netns-scripts/netpol-agent.py");
        let servers =
            PODS.iter().map(|p| lab.background(&lab_name(p.0), &format!("exec python3 {} serve 80 81", agent.display()))).collect();
        for p in PODS {
            lab.wait_listening(&lab_name(p.0), 81);
        }
        let w = World { lab, _servers: servers, manifests: tempfile::tempdir().unwrap() };
        w.apply_world();
        w
    }

    fn apply_world(&self) {
        let world = std::fs::read_to_string(repo().join("tests/netpol/world.yaml")).unwrap();
        self.apply(docs(&world).into_iter().map(in_lab).collect(), false);
    }

    /// `ucanal apply|delete -f` of `objs` on every node.
    fn apply(&self, objs: Vec<Value>, delete: bool) {
        if objs.is_empty() {
            return;
        }
        let path = self.manifests.path().join("step.json");
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objs});
        std::fs::write(&path, serde_json::to_vec(&list).unwrap()).unwrap();
        for n in NODES {
            self.lab.ucanal_ok(n, &[if delete { "delete" } else { "apply" }, "-f", path.to_str().unwrap()]);
        }
    }

    /// Every pod probes every other on `targets` (port/protocol) at once: (from, to,
    /// port/proto) -> answered.
    fn probe(&self, targets: &[(u16, String)]) -> BTreeMap<(String, String, String), bool> {
        let agent = repo().join("netns-scripts/netpol-agent.py");
        let mut running = Vec::new();
        for from in PODS {
            let mut argv: Vec<String> = vec!["probe".into(), PROBE_TIMEOUT.into()];
            for to in PODS.iter().filter(|t| t.0 != from.0) {
                for (port, proto) in targets {
                    argv.push(format!("{}:{port}/{proto}", to.1));
                }
            }
            let child = Command::new("ip")
                .args(["netns", "exec", &self.lab.ns(&lab_name(from.0)), "python3"])
                .arg(&agent)
                .args(&argv)
                .stdout(Stdio::piped())
                .spawn()
                .expect("probe");
            running.push((from.0, child));
        }
        let mut out = BTreeMap::new();
        for (from, child) in running {
            let o = child.wait_with_output().unwrap();
            for line in text(&o.stdout).lines() {
                let (target, ok) = line.split_once(' ').unwrap();
                let (addr, what) = target.split_once(':').unwrap();
                let to = PODS.iter().find(|p| p.1 == addr).unwrap().0;
                out.insert((from.to_string(), to.to_string(), what.to_string()), ok == "1");
            }
        }
        out
    }
}

/// A reachability table: (from, to) -> reachable, `-` cells left out.
fn table(s: &str) -> BTreeMap<(String, String), bool> {
    let mut lines = s.lines().filter(|l| !l.trim().is_empty());
    let cols: Vec<&str> = lines.next().unwrap().split_whitespace().skip(1).collect();
    let mut t = BTreeMap::new();
    for l in lines {
        let mut cells = l.split_whitespace();
        let from = cells.next().unwrap();
        for (to, c) in cols.iter().zip(cells) {
            if c != "-" {
                t.insert((from.to_string(), to.to_string()), c == ".");
            }
        }
    }
    t
}

/// Runs one case; its mismatches.
fn run_case(w: &World, case: &Value) -> Vec<String> {
    let name = case["name"].as_str().unwrap();
    let mut bad = Vec::new();
    let mut policies = Vec::new();
    for (i, step) in case["steps"].as_array().unwrap().iter().enumerate() {
        let list = |k: &str| -> Vec<Value> { step[k].as_array().cloned().unwrap_or_default().into_iter().map(in_lab).collect() };
        let (apply, delete) = (list("apply"), list("delete"));
        policies.extend(apply.iter().filter(|o| o["kind"] != "Pod" && o["kind"] != "Namespace").cloned());
        w.apply(delete, true);
        w.apply(apply, false);
        let probes: Vec<&Value> =
            step["probes"].as_array().unwrap().iter().filter(|p| p["protocol"] != "SCTP").collect();
        let targets: Vec<(u16, String)> =
            probes.iter().map(|p| (p["port"].as_u64().unwrap() as u16, p["protocol"].as_str().unwrap().to_string())).collect();
        let got = w.probe(&targets);
        for p in probes {
            let what = format!("{}/{}", p["port"], p["protocol"].as_str().unwrap());
            for ((from, to), want) in table(p["reachability"].as_str().unwrap()) {
                let have = got.get(&(from.clone(), to.clone(), what.clone())).copied();
                if have != Some(want) {
                    bad.push(format!("{name} step {i} {what}: {from} -> {to} expected {want}, got {have:?}"));
                }
            }
        }
    }
    w.apply(policies, true);
    w.apply_world();
    bad
}

fn upstream_cases(w: &World) {
    let text_in = std::fs::read_to_string(repo().join("tests/netpol/upstream-e2e.yaml")).unwrap();
    let cases: Vec<Value> = docs(&text_in)
        .into_iter()
        .filter(|c| !c["requires"].as_array().is_some_and(|r| r.iter().any(|x| x == "SCTP")))
        .collect();
    let updates = cases.iter().filter(|c| c["steps"].as_array().is_some_and(|s| s.len() > 1)).count();
    let t = Instant::now();
    let mut bad = Vec::new();
    for c in &cases {
        let t1 = Instant::now();
        let b = run_case(w, c);
        println!("{:>6.1} s  {}  {}", t1.elapsed().as_secs_f64(), if b.is_empty() { "ok  " } else { "FAIL" }, c["name"]);
        bad.extend(b);
    }
    println!(
        "{} upstream cases ({updates} with updates) probed with real packets on 3 nodes in {:.1} s",
        cases.len(),
        t.elapsed().as_secs_f64()
    );
    assert!(cases.len() >= 20, "only {} cases", cases.len());
    assert!(bad.is_empty(), "{} mismatches:\n{}", bad.len(), bad.join("\n"));
}

fn main() -> ExitCode {
    let mut suite = Suite::new();
    suite.group("netpol_three_ucanal_nodes", &["python3"], World::up).phase("upstream_e2e_truth_tables", upstream_cases);
    suite.run()
}
