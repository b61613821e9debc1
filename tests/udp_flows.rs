//! Issue 25: UDP conntrack as the kernels users run today keep it (`nf_conntrack_proto_udp.c`:
//! a flow that has seen a reply becomes a stream, ASSURED with the 120 s timeout, only when
//! a packet comes more than 2 s after its first; until then its timeout is the 30 s one).
//! 20,000 one-shot DNS-like flows (one request and one reply each, a new source port each)
//! from ghost-ep1 through a UDP ClusterIP to ghost-ep2: every entry is replied, none is
//! assured, and none has more than 30 s to live — early drop can evict them under pressure.
//! (`udp_stream_rule = "linux_3_10"` gives the article's kernel, which assures on the reply.)

mod common;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::harness::Suite;
use common::*;

const FLOWS: u32 = 20_000;
const CLUSTER_IP: &str = "10.250.0.53";
const FIRST_PORT: u32 = 20_000;
/// The kernel's `nf_conntrack_udp_timeout` (unreplied, and replied but not yet a stream).
const UDP_TIMEOUT: u64 = 30;

fn main() -> ExitCode {
    let mut suite = Suite::new();
    suite
        .group("udp_one_shot_flows", &[], || Lab::up("ti", &[]))
        .phase("twenty_thousand_one_shot_flows_stay_unassured_with_30_s", one_shot_flows);
    suite.run()
}

/// The requests: one socket per source port, one datagram, its answer (at most 60 s in all).
fn client_py() -> String {
    format!(
        "import socket,time\nend=time.monotonic()+60\nok=0\n\
         for p in range({FIRST_PORT},{FIRST_PORT}+{FLOWS}):\n\
         \x20   if time.monotonic()>end: break\n\
         \x20   s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('0.0.0.0',p)); s.settimeout(1)\n\
         \x20   s.sendto(b'q%d' % p,('{CLUSTER_IP}',53))\n\
         \x20   try:\n\
         \x20       s.recv(64); ok+=1\n\
         \x20   except socket.timeout: pass\n\
         \x20   s.close()\n\
         print(ok)\n"
    )
}

fn one_shot_flows(lab: &Lab) {
    let echo = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',5353))\n\
                while True:\n    d,a=s.recvfrom(512)\n    s.sendto(d,a)\n";
    let _server = lab.background("ghost-ep2", &format!("exec python3 -c \"{echo}\""));
    lab.ucanal_ok(
        "centos7-1",
        &["service", "set", "--name", "default/dns", "--protocol", "udp", "--cluster-ip", CLUSTER_IP, "--port", "53"]
            .into_iter()
            .chain(["--endpoint", "10.244.0.74:5353"])
            .collect::<Vec<_>>(),
    );
    // The readiness probe from a port below the flows' (its repeats make a stream).
    let probe = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',19999))\n\
                 s.settimeout(0.5)\ns.sendto(b'x',('10.250.0.53',53))\ns.recv(8)\n";
    let ready =
        wait_until(Duration::from_secs(10), || lab.exec("ghost-ep1", &["python3", "-c", probe]).status.success());
    assert!(ready.is_some(), "the UDP ClusterIP does not answer");
    let t = Instant::now();
    let out = lab.exec("ghost-ep1", &["python3", "-c", &client_py()]);
    let answered: u32 = text(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("client: {}", text(&out.stderr)));
    let took = t.elapsed();
    let rows: serde_json::Value =
        serde_json::from_str(&lab.ucanal_ok("centos7-1", &["show", "conntrack", "--json"])).expect("conntrack JSON");
    let ours: Vec<&serde_json::Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["proto"] == "udp" && r["original"]["dst"] == CLUSTER_IP)
        .filter(|r| {
            r["original"]["sport"].as_u64().is_some_and(|p| (FIRST_PORT..FIRST_PORT + FLOWS).contains(&(p as u32)))
        })
        .collect();
    let assured = ours.iter().filter(|r| r["assured"] == true).count();
    let unreplied = ours.iter().filter(|r| r["unreplied"] == true).count();
    let longest = ours.iter().filter_map(|r| r["timeout"].as_u64()).max().unwrap_or(0);
    println!(
        "{FLOWS} one-shot UDP flows in {took:?}: {answered} answered; {} entries, {assured} assured, {unreplied} unreplied, longest timeout {longest} s",
        ours.len()
    );
    if let Some(r) = ours.first() {
        println!("  e.g. {}", r["line"].as_str().unwrap_or_default());
    }
    assert!(answered >= FLOWS * 99 / 100, "only {answered} of {FLOWS} requests were answered");
    assert!(ours.len() as u32 >= answered, "{} entries for {answered} answered flows", ours.len());
    assert_eq!(assured, 0, "one-shot flows assured (the 3.10 rule, not today's kernel's)");
    assert!(longest <= UDP_TIMEOUT, "a one-shot flow has {longest} s to live, more than {UDP_TIMEOUT} s");
    assert!(unreplied as u32 <= FLOWS - answered, "{unreplied} entries unreplied, {answered} answered");
}
