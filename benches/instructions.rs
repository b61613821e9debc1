//! Instructions per packet of the core's hot paths, counted by valgrind (cachegrind's
//! `I refs`): unlike a time, the count does not move with the load of the machine (this
//! project's machine is shared and has no hardware counters for `perf stat`).
//!
//! `cargo bench --bench instructions` runs itself under valgrind twice per path, with
//! `SHORT` and `LONG` packets after the same setup, and prints the difference per packet:
//! the setup (tables, flows, the frames) cancels out. Needs `valgrind` (fails loudly
//! without it). `-- NAME` runs only the paths whose name contains NAME.
//!
//! Paths (the frames of `benches/core.rs`, the frame copy of each iteration included):
//! - `established_nat_encap`: the client's ACK of an established NodePort flow
//!   (conntrack hit, DNAT + masquerade, encap), as `paths/established_nat_encap`.
//! - `decap_walk`: segments of a bulk transfer (1398 bytes, complete checksums) to a pod,
//!   each by the whole walk (`handle_vxlan`), per segment.
//! - `decap_run`: the same in reads of 16 segments through `handle_vxlan_run` (the first
//!   of a read takes the walk, the rest replay it), per segment.
//! - `new_flow_dnat`: the client's SYNs to the NodePort, a new source port each (conntrack
//!   miss, the service stage, insert, DNAT, masquerade, encap or delivery), as
//!   `paths/new_flow_dnat` without its chunks (the table grows to `LONG` flows).
//! - `new_flow_etp_local`: the same with `externalTrafficPolicy: Local` (candidates
//!   counted by route: this node's endpoint only, no masquerade), as
//!   `services/new_flow_etp_local`.
//! - `established_nat_encap_10k_policies`: `established_nat_encap` with 10,000
//!   NetworkPolicies over 1,000 pods in the snapshot (`benches/common/policy.rs`): an
//!   established packet does no policy work, so the count is `established_nat_encap`'s.
//! - `new_flow_policy_0` / `new_flow_policy_10000`: a new flow from ghost-ep3 to the
//!   ClusterIP, DNATed to ghost-ep1 (local), with 0 policies or 10,000 (ghost-ep1 selected
//!   by 100 of them, the client allowed): the policy stage's instructions per new flow
//!   are the difference (the conntrack table grows by one flow per packet in both).

#[allow(dead_code)]
mod common;
#[path = "common/policy.rs"]
mod world;

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;

use ucanal::core::tables::article::EP3_MAC;
use ucanal::core::trace::Trace;
use ucanal::core::{Action, PortId, RunMemo};

use common::*;

const SHORT: u64 = 2_000;
const LONG: u64 = 22_000;
const PATHS: [&str; 8] = [
    "established_nat_encap",
    "decap_walk",
    "decap_run",
    "new_flow_dnat",
    "new_flow_etp_local",
    "established_nat_encap_10k_policies",
    "new_flow_policy_0",
    "new_flow_policy_10000",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, one, path, n] = &args[..]
        && one == "--one"
    {
        run(path, n.parse().expect("a packet count"));
        return;
    }
    // `cargo test --benches` / `cargo bench -- --test`: run each path once, no valgrind.
    if test_mode() {
        for p in PATHS {
            run(p, 16);
        }
        return;
    }
    let filter = args.iter().skip(1).find(|a| !a.starts_with("--")).cloned().unwrap_or_default();
    let me = std::env::current_exe().expect("the bench's own path");
    for path in PATHS.iter().filter(|p| p.contains(filter.as_str())) {
        let count = |n: u64| -> u64 {
            let out = Command::new("valgrind")
                .args(["--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"])
                .arg(&me)
                .args(["--one", path, &n.to_string()])
                .output()
                .expect("valgrind is needed (apt-get install valgrind)");
            assert!(out.status.success(), "valgrind failed: {}", String::from_utf8_lossy(&out.stderr));
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err
                .lines()
                .find(|l| l.contains("I   refs:") || l.contains("I refs:"))
                .expect("valgrind printed no I refs");
            line.rsplit(':').next().unwrap().trim().replace(',', "").parse().expect("I refs is a number")
        };
        let (short, long) = (count(SHORT), count(LONG));
        let per = (long as f64 - short as f64) / (LONG - SHORT) as f64;
        println!("instructions/{path:<24} {per:>8.1} instructions per packet");
    }
}

/// Sets `path` up and runs `n` packets through it.
fn run(path: &str, n: u64) {
    match path {
        "established_nat_encap" | "established_nat_encap_10k_policies" => {
            let dp = dataplane(vec![ucanal::core::tables::article::ghost()], 1024, 1);
            if path.ends_with("policies") {
                let mut t = (*dp.tables()).clone();
                t.policy = world::engine(10_000).table();
                dp.publish(t);
            }
            let sport = sports_for(&dp.tables(), CLIENT, (NODE1, NODE_PORT), EP2, 40000).next().unwrap();
            establish_nodeport(&dp, CLIENT, sport);
            let f = nodeport_ack(CLIENT, sport);
            let t = dp.tables();
            let mut b = Buf::for_frame(&f);
            let mut tr = Trace::off();
            for _ in 0..n {
                let mut p = b.load(black_box(&f));
                let a = dp.handle_port(0, &t, PortId::HOST, &mut p, NOW, &mut tr);
                assert!(matches!(a, Action::ToVtep { .. }));
                let _ = black_box(p.data());
            }
        }
        "decap_walk" | "decap_run" => {
            let dp = dataplane(vec![], 1024, 1);
            let segs = bulk_segments(16, false);
            let t = dp.tables();
            let mut b = Buf::for_frame(&segs[0]);
            let mut tr = Trace::off();
            let mut memo = RunMemo::default();
            let from = SocketAddrV4::new(NODE2, 45000);
            for i in 0..n {
                let k = (i % 16) as usize;
                if k == 0 {
                    memo.clear();
                }
                let mut p = b.load(black_box(&segs[k]));
                let a = if path == "decap_run" {
                    dp.handle_vxlan_run(0, &t, from, &mut p, NOW, &mut tr, &mut memo)
                } else {
                    dp.handle_vxlan(0, &t, from, &mut p, NOW, &mut tr)
                };
                assert_eq!(a, Action::ToPort(PortId(1)));
                let _ = black_box(p.data());
            }
        }
        "new_flow_dnat" | "new_flow_etp_local" => {
            let mut svc = ucanal::core::tables::article::ghost();
            svc.external_local = path == "new_flow_etp_local";
            let dp = dataplane(vec![svc], 2 * LONG as usize, 1);
            let syn = tcp(host_port_mac(), HOST_MAC, (CLIENT, 1024), (NODE1, NODE_PORT), true);
            let t = dp.tables();
            let mut b = Buf::for_frame(&syn);
            let mut tr = Trace::off();
            for i in 0..n {
                let mut p = b.load(black_box(&syn));
                set_source(p.data_mut(), CLIENT, 1024 + i as u16);
                let a = dp.handle_port(0, &t, PortId::HOST, &mut p, NOW, &mut tr);
                assert!(!matches!(a, Action::Drop(_)), "{a:?}");
                let _ = black_box(p.data());
            }
            assert_eq!(dp.counters.get(ucanal::core::Counter::CtNew), n, "every packet a new flow");
        }
        "new_flow_policy_0" | "new_flow_policy_10000" => {
            let policies = if path.ends_with("10000") { 10_000 } else { 0 };
            let vip = Ipv4Addr::new(10, 250, 0, 40);
            let dp = dataplane(vec![ucanal::core::tables::article::ghost()], 65_536, 1);
            let mut t = (*dp.tables()).clone();
            t.policy = world::engine(policies).table();
            dp.publish(t);
            let t = dp.tables();
            let sports: Vec<u16> = sports_for(&t, EP3, (vip, TARGET_PORT), EP1, 1024).take(n as usize).collect();
            assert_eq!(sports.len(), n as usize, "enough source ports for the count");
            let syn = tcp(EP3_MAC, HOST_MAC, (EP3, sports[0]), (vip, TARGET_PORT), true);
            let mut b = Buf::for_frame(&syn);
            let mut tr = Trace::off();
            for &sport in &sports {
                let mut p = b.load(black_box(&syn));
                set_source(p.data_mut(), EP3, sport);
                let a = dp.handle_port(0, &t, PortId(2), &mut p, NOW, &mut tr);
                assert_eq!(a, Action::ToPort(PortId(1)));
                let _ = black_box(p.data());
            }
        }
        other => panic!("no path {other}"),
    }
}
