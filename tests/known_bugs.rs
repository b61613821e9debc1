//! The known-bugs pack: one scenario per well-known kube-proxy/flannel failure that a
//! userspace dataplane must not have, each named after its issue, on a lab whose
//! centos7-1 is ucanal and whose centos7-2 is a kernel node (flannel.1 with the veth
//! defaults: checksum offload on, partial checksums on the wire).
//! - kubernetes#88986 (flannel#1282): SNATed traffic through VXLAN stalled 63 s (the
//!   kernel's VXLAN checksum offload with a double-NATed source): NodePort and node to
//!   ClusterIP through the tunnel, every connection within 1 s;
//! - kubernetes#56903: the DNS 5 s delays (two datagrams of a new UDP flow at once, the
//!   second lost in the conntrack insert race): 200 flows, every datagram answered;
//! - kubernetes#48370: a UDP service without endpoints, then one: the same socket is
//!   answered at once (no black-hole entry left by the empty time);
//! - kubernetes#59368: a UDP NodePort's endpoint replaced: the same client socket goes to
//!   the new endpoint at once;
//! - kubernetes#139628: a UDP service scaled to zero: the same socket is refused, nothing
//!   reaches the deleted endpoint;
//! - kubernetes#74383: `externalTrafficPolicy: Local`, a pod of another node to this
//!   node's NodePort: answered by this node's endpoint, the reply back the way it came;
//! - kubernetes#122740: a UDP flow through a NodePort keeps its endpoint across a restart
//!   (a hand-over) of ucanal.

mod common;

use std::process::ExitCode;
use std::time::Duration;

use common::harness::Suite;
use common::{Background, Lab, text};

const NODE1: &str = "172.16.240.131";
const KEEP: &str = "--keep-on-exit";

struct Bugs {
    lab: Lab,
    dir: tempfile::TempDir,
    _servers: Vec<Background>,
}

fn probe() -> String {
    common::repo().join("netns-scripts/udp-probe.py").display().to_string()
}

impl Bugs {
    fn up() -> Bugs {
        let lab = Lab::up_env("tb", &["--node2", "kernel"], &[("UCANAL_RUN_ARGS", KEEP)]);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = |n: &str| dir.path().join(n).display().to_string();
        let servers = vec![
            lab.background("ghost-ep1", &format!("exec python3 {} serve 5353 ghost-ep1 {}", probe(), log("ep1.log"))),
            lab.background("ghost-ep2", &format!("exec python3 {} serve 5353 ghost-ep2 {}", probe(), log("ep2.log"))),
            lab.background("ghost-ep2", &format!("exec python3 {} serve 5354 ghost-ep2 {}", probe(), log("gone.log"))),
        ];
        std::thread::sleep(Duration::from_millis(500));
        Bugs { lab, dir, _servers: servers }
    }

    /// `ucanal service set` on centos7-1: a UDP service with these endpoints.
    fn udp_service(&self, name: &str, vip: &str, node_port: Option<u16>, endpoints: &[&str]) {
        let np = node_port.map(|p| p.to_string());
        let mut args = vec!["service", "set", "--name", name, "--protocol", "udp", "--cluster-ip", vip, "--port", "53"];
        if let Some(np) = &np {
            args.extend(["--node-port", np]);
        }
        for e in endpoints {
            args.extend(["--endpoint", e]);
        }
        self.lab.ucanal_ok("centos7-1", &args);
    }

    /// A `udp-probe.py stream` from `member` for `secs`, with `change` run `at` seconds in:
    /// the results, and the Unix time the change was made.
    fn stream(
        &self,
        member: &str,
        dst: (&str, u16),
        sport: u16,
        secs: f64,
        at: f64,
        change: impl FnOnce(),
    ) -> (Vec<(f64, String)>, f64) {
        let out = self.dir.path().join(format!("stream-{sport}.json"));
        let line = format!("exec python3 {} stream {} {} {sport} {secs} {}", probe(), dst.0, dst.1, out.display());
        let mut child = self.lab.spawn(member, &line);
        std::thread::sleep(Duration::from_secs_f64(at));
        let t = unix_now();
        change();
        let status = child.wait().expect("udp-probe stream");
        assert!(status.success(), "udp-probe stream failed");
        let v: Vec<(f64, String)> = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        (v, t)
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Results before `t`, and from `t + settle` on.
fn split(v: &[(f64, String)], t: f64, settle: f64) -> (Vec<&str>, Vec<&str>) {
    let before = v.iter().filter(|(at, _)| *at < t).map(|(_, r)| r.as_str()).collect();
    let after = v.iter().filter(|(at, _)| *at >= t + settle).map(|(_, r)| r.as_str()).collect();
    (before, after)
}

fn main() -> ExitCode {
    let mut suite = Suite::new();
    suite
        .group("known_bugs_on_a_ucanal_node_beside_a_kernel_node", &["curl", "python3"], Bugs::up)
        .phase("kubernetes_88986_flannel_1282_snat_through_vxlan_never_stalls", vxlan_snat_no_stall)
        .phase("kubernetes_56903_both_datagrams_of_a_new_udp_flow_are_answered", dns_race)
        .phase("kubernetes_48370_a_udp_service_without_endpoints_then_one_answers_at_once", empty_then_one)
        .phase("kubernetes_59368_a_udp_nodeport_flow_moves_to_the_new_endpoint", endpoint_replaced)
        .phase("kubernetes_139628_a_udp_service_scaled_to_zero_refuses_the_flow", scaled_to_zero)
        .phase("kubernetes_74383_etp_local_from_a_pod_of_another_node_is_answered", etp_local_from_other_node)
        .phase("kubernetes_122740_a_udp_flow_keeps_its_endpoint_across_a_restart", flow_survives_restart);
    suite.run()
}

/// `curl` from `member`: (the answering pod, seconds).
fn timed_curl(lab: &Lab, member: &str, url: &str) -> (String, f64) {
    let out = lab.exec(member, &["curl", "-sS", "-m", "5", "-w", "\n%{time_total}", url]);
    assert!(out.status.success(), "curl {url} from {member}: {}", text(&out.stderr));
    let body = text(&out.stdout);
    let (page, secs) = body.rsplit_once('\n').unwrap_or(("", "99"));
    (page.split_whitespace().next().unwrap_or("").to_string(), secs.trim().parse().unwrap_or(99.0))
}

/// kubernetes#88986 / flannel#1282: the client through centos7-1's NodePort to both
/// endpoints (ghost-ep2 SNATed and encapsulated to the kernel peer, whose flannel.1 checks
/// the inner checksums), and centos7-1 itself to the ClusterIP: no connection waits for a
/// SYN retransmission (1 s), let alone 63 s.
fn vxlan_snat_no_stall(b: &Bugs) {
    let mut seen = std::collections::BTreeSet::new();
    let mut worst: f64 = 0.0;
    for _ in 0..30 {
        let (pod, secs) = timed_curl(&b.lab, "client", &format!("http://{NODE1}:31266/"));
        seen.insert(pod);
        worst = worst.max(secs);
    }
    for _ in 0..20 {
        let (_, secs) = timed_curl(&b.lab, "centos7-1", "http://10.250.0.40:2368/");
        worst = worst.max(secs);
    }
    println!("slowest of 50 connections: {worst:.3} s; endpoints {seen:?}");
    assert!(seen.contains("ghost-ep2"), "no connection went through VXLAN: {seen:?}");
    assert!(worst < 1.0, "a connection took {worst} s");
}

/// kubernetes#56903: 200 new flows to a UDP ClusterIP, each two datagrams back to back.
fn dns_race(b: &Bugs) {
    b.udp_service("kb/dns", "10.250.3.53", None, &["10.244.1.5:5353", "10.244.0.74:5353"]);
    let out = b.lab.exec("ghost-ep1", &["python3", &probe(), "race", "10.250.3.53", "53", "200"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(v["both"], 200, "{v}");
}

/// kubernetes#48370: refused while the service has no endpoint, answered from the moment
/// it has one, on the same socket.
fn empty_then_one(b: &Bugs) {
    b.udp_service("kb/empty", "10.250.3.54", None, &[]);
    let (v, t) = b.stream("ghost-ep1", ("10.250.3.54", 53), 40001, 4.0, 1.5, || {
        b.udp_service("kb/empty", "10.250.3.54", None, &["10.244.0.74:5353"]);
    });
    let (before, after) = split(&v, t, 0.3);
    assert!(!before.is_empty() && before.iter().all(|r| *r == "refused"), "{before:?}");
    assert!(after.len() >= 20 && after.iter().all(|r| *r == "ghost-ep2"), "{after:?}");
}

/// kubernetes#59368: the client's NodePort flow follows the endpoint replacement at once.
fn endpoint_replaced(b: &Bugs) {
    b.udp_service("kb/moving", "10.250.3.55", Some(30555), &["10.244.1.5:5353"]);
    let (v, t) = b.stream("client", (NODE1, 30555), 40002, 4.0, 1.5, || {
        b.udp_service("kb/moving", "10.250.3.55", Some(30555), &["10.244.0.74:5353"]);
    });
    let (before, after) = split(&v, t, 0.3);
    assert!(!before.is_empty() && before.iter().all(|r| *r == "ghost-ep1"), "{before:?}");
    assert!(after.len() >= 20 && after.iter().all(|r| *r == "ghost-ep2"), "{after:?}");
}

/// kubernetes#139628: scaled to zero, the flow is refused and its old endpoint gets
/// nothing more.
fn scaled_to_zero(b: &Bugs) {
    b.udp_service("kb/zero", "10.250.3.56", None, &["10.244.0.74:5354"]);
    let (v, t) = b.stream("ghost-ep1", ("10.250.3.56", 53), 40003, 4.0, 1.5, || {
        b.udp_service("kb/zero", "10.250.3.56", None, &[]);
    });
    let (before, after) = split(&v, t, 0.3);
    assert!(!before.is_empty() && before.iter().all(|r| *r == "ghost-ep2"), "{before:?}");
    assert!(after.len() >= 20 && after.iter().all(|r| *r == "refused"), "{after:?}");
    let log = std::fs::read_to_string(b.dir.path().join("gone.log")).unwrap_or_default();
    let late: Vec<&str> = log
        .lines()
        .filter(|l| l.split_whitespace().next().and_then(|x| x.parse::<f64>().ok()) > Some(t + 0.3))
        .collect();
    assert!(late.is_empty(), "the deleted endpoint still received: {late:?}");
}

/// kubernetes#74383: ghost-ep2 (a pod of the kernel node centos7-2) to centos7-1's
/// NodePort under `externalTrafficPolicy: Local`. flannel's ip-masq on centos7-2 makes it
/// the node's traffic, so centos7-1 keeps it on its own endpoint and the reply goes back
/// through centos7-1: every connection completes, on ghost-ep1.
fn etp_local_from_other_node(b: &Bugs) {
    let m = "apiVersion: v1\nkind: Service\nmetadata: {name: kb-local, namespace: default}\n\
             spec:\n  type: NodePort\n  clusterIP: 10.250.3.74\n  externalTrafficPolicy: Local\n  \
             ports: [{port: 2368, nodePort: 31274, protocol: TCP}]\n---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata: {name: kb-local, namespace: default}\n\
             subsets: [{addresses: [{ip: 10.244.1.5}, {ip: 10.244.0.74}], ports: [{port: 2368, protocol: TCP}]}]\n";
    let path = b.dir.path().join("kb-local.yaml");
    std::fs::write(&path, m).unwrap();
    b.lab.ucanal_ok("centos7-1", &["apply", "-f", path.to_str().unwrap()]);
    for _ in 0..10 {
        let (pod, secs) = timed_curl(&b.lab, "ghost-ep2", &format!("http://{NODE1}:31274/"));
        assert_eq!(pod, "ghost-ep1");
        assert!(secs < 1.0, "{secs} s");
    }
    let ct: serde_json::Value =
        serde_json::from_str(&b.lab.ucanal_ok("centos7-1", &["show", "conntrack", "--json"])).unwrap();
    let flows: Vec<&serde_json::Value> =
        ct.as_array().unwrap().iter().filter(|e| e["original"]["dport"] == 31274).collect();
    assert!(!flows.is_empty(), "{ct}");
    for f in flows {
        assert_eq!(f["reply"]["dst"], "172.16.240.132", "the reply goes back to centos7-2's address: {f}");
    }
}

/// kubernetes#122740: a UDP flow through a NodePort with two endpoints keeps its endpoint
/// while centos7-1's ucanal is restarted (SIGTERM: a hand-over).
fn flow_survives_restart(b: &Bugs) {
    b.udp_service("kb/kept", "10.250.3.57", Some(30557), &["10.244.1.5:5353", "10.244.0.74:5353"]);
    let (v, _) = b.stream("client", (NODE1, 30557), 40004, 6.0, 2.0, || {
        b.lab.restart("centos7-1", "TERM", KEEP);
    });
    let log = std::fs::read_to_string(b.lab.run_dir().join("centos7-1.log")).unwrap_or_default();
    assert!(log.contains("hand-over done"), "the restart was not a hand-over:\n{log}");
    let answered: std::collections::BTreeSet<&str> =
        v.iter().map(|(_, r)| r.as_str()).filter(|r| *r != "silent").collect();
    let silent = v.iter().filter(|(_, r)| r == "silent").count();
    println!("{} datagrams, {silent} unanswered, answered by {answered:?}", v.len());
    assert_eq!(answered.len(), 1, "the flow changed endpoint (or was refused): {answered:?}");
    assert!(answered.iter().all(|r| r.starts_with("ghost-ep")), "{answered:?}");
    assert!(silent <= 5, "{silent} datagrams lost over the restart");
}
