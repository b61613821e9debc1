//! kube-proxy's packet-flow tables as a conformance suite. kube-proxy tests its rules with
//! tables of `{source, protocol, destination} -> {candidate endpoints | REJECT | DROP,
//! masquerade?}` (kubernetes/kubernetes `pkg/proxy/nftables/proxier_test.go`, traced by
//! `helpers_test.go`). `tests/kube-proxy/*.yaml` restates those tests as data — one file
//! per upstream test, naming it: the Services and EndpointSlices as kubectl-shaped
//! manifests (decoded by ucanal's own decoder), the probes and what kube-proxy expects —
//! in one world (`world.yaml`: kube-proxy's fake node, its pod and service CIDRs, its
//! external and blocked clients, with this node's pods and two peers so every endpoint is
//! routable).
//!
//! Each probe is a real frame (`ucanal trace`'s own builder) through the real entry point
//! of the dataplane in dry-run mode; the candidate set and the masquerade mark are read
//! from the trace's JSON (what `ucanal trace --json` prints) and its text.
//!
//! One trial per upstream test (tests/common/harness.rs), each printing its count.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use common::harness::Suite;
use serde::Deserialize;
use ucanal::api::kube;
use ucanal::api::{Probe, ProbeProto, TraceReport};
use ucanal::control::inspect::probe::{self, Ingress};
use ucanal::control::kube::Store;
use ucanal::core::nat::conntrack::{Conntrack, Timeouts};
use ucanal::core::nat::service::ServiceTable;
use ucanal::core::tables::{NodeInfo, Peer, PodPort, Tables, VxlanAccept};
use ucanal::core::trace::{Trace, outcome};
use ucanal::core::{Dataplane, HEADROOM, Ipv4Net, Now, Packet, PortId};
use ucanal::wire::MacAddr;

const NOW: Now = Now(1_000_000_000_000);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct World {
    node: NodeDef,
    peers: Vec<PeerDef>,
    /// Pods of this node that are not endpoints (the clients).
    pods: Vec<PodDef>,
    /// Names for sources and destinations (`pod`, `node`, `external`, `blocked`).
    roles: BTreeMap<String, Ipv4Addr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeDef {
    name: String,
    node_ip: Ipv4Addr,
    pod_cidr: Ipv4Net,
    cluster_cidr: Ipv4Net,
    service_cidr: Ipv4Net,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerDef {
    name: String,
    subnet: Ipv4Net,
    public_ip: Ipv4Addr,
    vtep_mac: MacAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PodDef {
    name: String,
    ip: Ipv4Addr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    /// The upstream test this file restates.
    upstream: String,
    scenarios: Vec<Scenario>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    name: String,
    manifests: String,
    probes: Vec<ProbeDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeDef {
    name: String,
    from: String,
    to: String,
    #[serde(default = "tcp")]
    proto: String,
    want: Want,
    #[serde(default)]
    masq: bool,
}

fn tcp() -> String {
    "tcp".into()
}

/// kube-proxy's `output`: the candidate endpoints, or `REJECT`, `DROP`, or `none` (no
/// rule of kube-proxy's applies; upstream's empty output).
#[derive(Deserialize)]
#[serde(untagged)]
enum Want {
    Endpoints(Vec<SocketAddrV4>),
    Verdict(String),
}

impl Want {
    fn text(&self) -> String {
        match self {
            Want::Endpoints(v) => {
                let mut v: Vec<String> = v.iter().map(ToString::to_string).collect();
                v.sort();
                v.join(", ")
            }
            Want::Verdict(s) => s.clone(),
        }
    }
}

fn main() -> ExitCode {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kube-proxy");
    let world: Arc<World> = Arc::new(read_yaml(&dir.join("world.yaml")));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/kube-proxy")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("world.yaml"))
        .collect();
    files.sort();
    let fixtures: Vec<Fixture> = files.iter().map(|f| read_yaml(f)).collect();
    let total: usize = fixtures.iter().flat_map(|f| &f.scenarios).map(|s| s.probes.len()).sum();
    let mut suite = Suite::new();
    suite.test("holds_at_least_80_probes", move || {
        println!("kube-proxy packet-flow conformance: {total} probes (pkg/proxy/nftables/proxier_test.go)");
        assert!(total >= 80, "the suite holds {total} probes, fewer than 80");
    });
    // One trial per upstream test, named after it.
    for fx in fixtures {
        let world = world.clone();
        suite.test(&fx.upstream.clone(), move || {
            let (n, failures) = run_fixture(&world, &fx);
            println!("{:<48} {n:>3} probes, {} as kube-proxy expects", fx.upstream, n - failures.len());
            assert!(
                failures.is_empty(),
                "{} of {n} probes differ from kube-proxy:\n{}",
                failures.len(),
                failures.join("\n")
            );
        });
    }
    suite.run()
}

/// Every probe of one upstream test; how many, and how each that differs does.
fn run_fixture(world: &World, fx: &Fixture) -> (usize, Vec<String>) {
    let (mut n, mut failures) = (0, Vec::new());
    for sc in &fx.scenarios {
        let dp = Dataplane::new(tables(world, sc), Conntrack::new(1024, Timeouts::default()), 1);
        for (i, p) in sc.probes.iter().enumerate() {
            n += 1;
            if let Err(e) = run(world, &dp, p, i) {
                failures.push(format!("{} / {}: {e}", sc.name, p.name));
            }
        }
    }
    (n, failures)
}

fn read_yaml<T: for<'de> Deserialize<'de>>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The world with this scenario's objects: every endpoint address in this node's pod
/// CIDR is a pod on this node (a `/32` route, ucanal's locality), every other one is on a
/// peer.
fn tables(w: &World, sc: &Scenario) -> Tables {
    let objs = kube::parse_manifest(&sc.manifests).unwrap_or_else(|e| panic!("{}: {e}", sc.name));
    check_node_names(w, sc);
    let mut st = Store::default();
    let services = st.apply(objs, false);
    let specs: Vec<_> = services.iter().flat_map(|s| st.specs(s)).collect();
    let mut local: Vec<Ipv4Addr> = w.pods.iter().map(|p| p.ip).collect();
    let eps = specs.iter().flat_map(|s| s.all_endpoints()).map(|e| *e.ip());
    local.extend(eps.filter(|ip| w.node.pod_cidr.contains(*ip)));
    local.sort();
    local.dedup();
    let pods: Vec<PodPort> = local
        .iter()
        .enumerate()
        .map(|(i, ip)| PodPort {
            name: w.pods.iter().find(|p| p.ip == *ip).map_or_else(|| format!("pod-{ip}"), |p| p.name.clone()),
            netns: format!("pod-{ip}"),
            ip: *ip,
            mac: MacAddr([0x3e, 0, 0, 0, (i >> 8) as u8, i as u8]),
            port: PortId(i as u32 + 1),
            ifname: format!("cali{:011x}", i + 1),
        })
        .collect();
    let peers: Vec<Peer> = w
        .peers
        .iter()
        .map(|p| Peer { name: p.name.clone(), subnet: p.subnet, public_ip: p.public_ip, vtep_mac: p.vtep_mac })
        .collect();
    let n = &w.node;
    let node = NodeInfo {
        name: n.name.clone(),
        uplink: "eth0".into(),
        node_ip: n.node_ip,
        pod_cidr: n.pod_cidr,
        cluster_cidr: n.cluster_cidr,
        service_cidr: n.service_cidr,
        vtep_ip: n.pod_cidr.addr(),
        vtep_mac: "8a:40:90:1c:cf:7e".parse().unwrap(),
        vni: 1,
        vxlan_port: 8472,
        mtu: 1450,
        host_mac: MacAddr::CALICO_HOST,
        host_port_mac: "02:00:c0:a8:00:02".parse().unwrap(),
        gateway: Ipv4Addr::new(169, 254, 1, 1),
        masquerade_ports: (61000, 65534),
        vxlan_accept: VxlanAccept::Any,
    };
    let table = ServiceTable::build(specs, |_, _| Arc::default());
    let mut t = Tables::build(1, node, 0x5eed, &pods, &peers, table);
    t.vxlan_source_ports = vec![49152, 49153];
    t
}

/// The fixtures keep kube-proxy's `nodeName`s: an endpoint on this node must be in its
/// pod CIDR (where ucanal's locality, the pod's route, puts it) and one elsewhere not.
fn check_node_names(w: &World, sc: &Scenario) {
    for doc in serde_yaml_ng::Deserializer::from_str(&sc.manifests) {
        let v = serde_json::Value::deserialize(doc).expect("yaml");
        let items = if v["kind"] == "List" { v["items"].as_array().cloned().unwrap_or_default() } else { vec![v] };
        for o in items.iter().filter(|o| o["kind"] == "EndpointSlice") {
            for e in o["endpoints"].as_array().into_iter().flatten() {
                let (Some(node), Some(ip)) = (e["nodeName"].as_str(), e["addresses"][0].as_str()) else { continue };
                let ip: Ipv4Addr = ip.parse().expect("ipv4");
                assert_eq!(
                    node == w.node.name,
                    w.node.pod_cidr.contains(ip),
                    "{}: endpoint {ip} on {node} is not where the world puts it",
                    sc.name
                );
            }
        }
    }
}

fn addr(w: &World, s: &str, port: u16) -> Result<SocketAddrV4, String> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("port in '{s}'"))?),
        None => (s, port),
    };
    let ip = w
        .roles
        .get(host)
        .copied()
        .map_or_else(|| host.parse().map_err(|_| format!("'{host}' is no address or role")), Ok)?;
    Ok(SocketAddrV4::new(ip, port))
}

/// One probe through the dataplane; `Err` says how ucanal differs from kube-proxy.
fn run(w: &World, dp: &Dataplane, p: &ProbeDef, i: usize) -> Result<(), String> {
    let t = dp.tables();
    let src = addr(w, &p.from, 40000 + i as u16)?;
    let dst = addr(w, &p.to, 0)?;
    let ingress = if let Some(pod) = t.pods().find(|q| q.ip == *src.ip()) {
        pod.name.clone()
    } else if let Some(peer) = t.peers.iter().find(|q| q.subnet.contains(*src.ip())) {
        format!("vxlan:{}", peer.public_ip)
    } else {
        "host".into()
    };
    let proto = ProbeProto::parse(&p.proto).ok_or_else(|| format!("protocol {}", p.proto))?;
    let probe = Probe { ingress, proto, src, dst, flags: None, ttl: 64 };
    let frame = probe::frame(&probe, &t).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; HEADROOM + frame.len() + 64];
    buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(&frame);
    let mut pkt = Packet::new(&mut buf, HEADROOM, HEADROOM + frame.len());
    let mut tr = Trace::dry_run();
    let a = match probe::ingress(&probe, &t).map_err(|e| e.to_string())? {
        Ingress::Port(port) => dp.handle_port(0, &t, port, &mut pkt, NOW, &mut tr),
        Ingress::Vxlan(peer) => dp.handle_vxlan(0, &t, SocketAddrV4::new(peer, 45000), &mut pkt, NOW, &mut tr),
    };
    // What `ucanal trace --json` answers.
    let report = TraceReport { node: t.node.name.clone(), steps: tr.steps, result: outcome(&t, &a) };
    let (got, masq) = observed(&report)?;
    let want = p.want.text();
    let masq_matters = matches!(p.want, Want::Endpoints(_));
    if got != want || (masq_matters && masq != p.masq) {
        let steps: Vec<String> = report.steps.iter().map(ToString::to_string).collect();
        return Err(format!(
            "{src} -> {dst} {}: kube-proxy {want} (masq {}), ucanal {got} (masq {masq})\n    {}",
            p.proto,
            p.masq,
            steps.join("\n    ")
        ));
    }
    Ok(())
}

/// What the trace says, as kube-proxy's tests write it: the sorted candidates and the
/// mark, read from its JSON (and checked in its text), or the verdict.
fn observed(report: &TraceReport) -> Result<(String, bool), String> {
    let json = serde_json::to_value(report).map_err(|e| e.to_string())?;
    let steps = json["steps"].as_array().ok_or("steps are no array")?;
    if let Some((i, e)) = steps.iter().enumerate().find(|(_, s)| s["step"] == "endpoint") {
        let mut c: Vec<String> = e["candidates"]
            .as_array()
            .ok_or("no candidates")?
            .iter()
            .map(|v| v.as_str().unwrap_or("?").to_string())
            .collect();
        let text = report.steps[i].to_string();
        if let Some(missing) = c.iter().find(|x| !text.contains(&format!(" {x}"))) {
            return Err(format!("the text does not name candidate {missing}: {text}"));
        }
        c.sort();
        return Ok((c.join(", "), e["masquerade"].as_bool().ok_or("no masquerade")?));
    }
    let replied = steps.iter().any(|s| s["step"] == "reply" && s["icmp_type"] == 3 && s["code"] == 3);
    let dropped: Vec<&str> =
        steps.iter().filter(|s| s["step"] == "drop").filter_map(|s| s["reason"].as_str()).collect();
    let verdict = match dropped.first().copied() {
        Some("service_no_endpoints" | "no_service") if replied => "REJECT",
        Some("service_no_endpoints" | "no_service") => return Err("a REJECT without its ICMP port unreachable".into()),
        Some("no_local_endpoint" | "lb_source_range" | "unallocated_cluster_ip") => "DROP",
        _ if steps.iter().any(|s| s["step"] == "service") => return Err("a service matched but decided nothing".into()),
        _ => "none",
    };
    Ok((verdict.into(), false))
}
