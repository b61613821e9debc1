//! The cost of NetworkPolicy (see `common/policy.rs` for the world: 1,000 pods, N
//! policies whose selectors range over them, the article's node).
//!
//! Groups (all in `policy/`):
//! - `new_flow_clusterip_local/N` (N = 0, 100, 10,000): a new flow's first packet, a SYN
//!   from ghost-ep3 to the `default/ghost` ClusterIP that the flow hash sends to ghost-ep1
//!   (local): conntrack miss, service, endpoint, DNAT, the policy stage (ghost-ep1's
//!   ingress: with N > 0 it is selected and the client allowed), conntrack insert,
//!   delivery. A new source port every iteration; conntrack restarts empty (untimed)
//!   every `NEW_FLOW_CHUNK` flows, as `paths/new_flow_dnat`. The acceptance: the 10,000
//!   case at most 1.5x the 0 case.
//! - `decision/N`: the policy stage alone on that flow's final tuple (`stage::admit`).
//! - `established_nat_encap/N` (0, 10,000): the client's ACK of an established NodePort
//!   flow to the remote endpoint, as `paths/established_nat_encap`, with the policy
//!   table in the snapshot; `established_nodeport_local/N`: the same to ghost-ep1
//!   (local, policed when N > 0). Established packets do no policy work: these are flat.
//! - `relabel_one_pod_recompile/10000`: one peer pod's label changed (and back) and the
//!   node's table recompiled: the incremental path a label change takes.
//!
//! Read the new-flow rows net of `baseline/copy_frame_new_sport` (`--bench core`).

#[allow(dead_code)]
mod common;
#[path = "common/policy.rs"]
mod world;

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ucanal::core::nat::Tuple;
use ucanal::core::nat::conntrack::{Conntrack, Timeouts};
use ucanal::core::policy::model::{Object, Pod};
use ucanal::core::policy::stage::{self, Quiet};
use ucanal::core::tables::article::{self, EP3_MAC};
use ucanal::core::trace::Trace;
use ucanal::core::{Action, Counter, Dataplane, DropReason, PortId};
use ucanal::wire::ipv4::PROTO_TCP;

use common::*;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 40);

fn policed(n: usize) -> Dataplane {
    let mut t = tables(vec![article::ghost()]);
    t.policy = world::engine(n).table();
    Dataplane::new(t, Conntrack::new(2 * NEW_FLOW_CHUNK, Timeouts::default()), 1)
}

fn no_drops(dp: &Dataplane) {
    for d in DropReason::ALL {
        assert_eq!(dp.counters.dropped(*d), 0, "a bench packet was dropped: {d}");
    }
}

/// New flows ghost-ep3 -> ClusterIP, every one to ghost-ep1, timed as `run_new_flows`.
fn run_new_flows_local(dp: &mut Dataplane, sports: &[u16], iters: u64) -> std::time::Duration {
    let t = dp.tables();
    let syn = tcp(EP3_MAC, HOST_MAC, (EP3, sports[0]), (VIP, TARGET_PORT), true);
    let mut b = Buf::for_frame(&syn);
    let mut tr = Trace::off();
    let mut total = std::time::Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(NEW_FLOW_CHUNK);
        dp.conntrack = Conntrack::new(2 * NEW_FLOW_CHUNK, Timeouts::default());
        let local = dp.counters.get(Counter::ForwardLocal);
        let start = std::time::Instant::now();
        for &sport in &sports[..n] {
            let mut p = b.load(black_box(&syn));
            set_source(p.data_mut(), EP3, sport);
            let a = dp.handle_port(0, &t, PortId(2), &mut p, NOW, &mut tr);
            let _ = black_box((a, p.data()));
        }
        total += start.elapsed();
        assert_eq!(dp.counters.get(Counter::ForwardLocal) - local, n as u64, "every new flow delivered to ghost-ep1");
        assert_eq!(dp.conntrack.len(), n, "every iteration a new flow");
        left -= n;
    }
    total
}

fn new_flows(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy");
    for n in [0, 100, size(10_000)] {
        let mut dp = policed(n);
        let t = dp.tables();
        let sports: Vec<u16> = sports_for(&t, EP3, (VIP, TARGET_PORT), EP1, 1024).take(NEW_FLOW_CHUNK).collect();
        // One untimed flow: delivered to ghost-ep1, and (with policies) by its policy.
        let (a, _) = run_port(&dp, PortId(2), &tcp(EP3_MAC, HOST_MAC, (EP3, sports[0]), (VIP, TARGET_PORT), true));
        assert_eq!(a, Action::ToPort(PortId(1)));
        assert_eq!(t.policy.is_empty(), n == 0);
        g.bench_function(BenchmarkId::new("new_flow_clusterip_local", n), |bn| {
            bn.iter_custom(|iters| run_new_flows_local(&mut dp, &sports, iters))
        });
        no_drops(&dp);
        let fin = Tuple { proto: PROTO_TCP, src: EP3, dst: EP1, sport: 40000, dport: TARGET_PORT };
        assert!(stage::admit(&t.policy, &fin, false, |_| false, &mut Quiet).is_ok());
        g.bench_function(BenchmarkId::new("decision", n), |bn| {
            bn.iter(|| stage::admit(black_box(&t.policy), black_box(&fin), false, |_| false, &mut Quiet))
        });
    }
    g.finish();
}

/// Times `frame` (a packet of an established flow) from the host port.
fn time_established(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    dp: &Dataplane,
    frame: &[u8],
) {
    let new = dp.counters.get(Counter::CtNew);
    let t = dp.tables();
    let mut b = Buf::for_frame(frame);
    let mut tr = Trace::off();
    g.bench_function(id, |bn| {
        bn.iter(|| {
            let mut p = b.load(black_box(frame));
            let a = dp.handle_port(0, &t, PortId::HOST, &mut p, NOW, &mut tr);
            let _ = black_box((a, p.data()));
        })
    });
    assert_eq!(dp.counters.get(Counter::CtNew), new, "no timed packet started a flow");
    no_drops(dp);
}

fn established(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy");
    for n in [0, size(10_000)] {
        // To the remote endpoint, as `paths/established_nat_encap`.
        let dp = policed(n);
        let sport = sports_for(&dp.tables(), CLIENT, (NODE1, NODE_PORT), EP2, 40000).next().unwrap();
        establish_nodeport(&dp, CLIENT, sport);
        let f = nodeport_ack(CLIENT, sport);
        time_established(&mut g, BenchmarkId::new("established_nat_encap", n), &dp, &f);
        // To ghost-ep1 (local; policed, the client allowed, when n > 0).
        let dp = policed(n);
        let sport = sports_for(&dp.tables(), CLIENT, (NODE1, NODE_PORT), EP1, 40000).next().unwrap();
        let syn = tcp(host_port_mac(), HOST_MAC, (CLIENT, sport), (NODE1, NODE_PORT), true);
        let (a, out) = run_port(&dp, PortId::HOST, &syn);
        assert_eq!(a, Action::ToPort(PortId(1)));
        // The server answers whom it sees (the NodePort flow is masqueraded).
        let seen = out_ip(&out, false);
        let (masq, masq_port) = (seen.src(), l4_ports(&seen).0);
        let mut synack = vec![0u8; 14];
        ucanal::wire::ethernet::emit_header(&mut synack, HOST_MAC, article::EP1_MAC, 0x0800);
        synack.extend_from_slice(&tcp_ip((EP1, TARGET_PORT), (masq, masq_port), true, true));
        assert_eq!(run_port(&dp, PortId(1), &synack).0, Action::ToPort(PortId::HOST));
        let f = nodeport_ack(CLIENT, sport);
        assert_eq!(run_port(&dp, PortId::HOST, &f).0, Action::ToPort(PortId(1)));
        time_established(&mut g, BenchmarkId::new("established_nodeport_local", n), &dp, &f);
    }
    g.finish();
}

fn relabel(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy");
    let n = size(10_000);
    let mut e = world::engine(n);
    let _ = e.table();
    let base = e.pod("ns-0", "p-0").cloned().unwrap();
    let flipped = Pod {
        labels: [("app".to_string(), "app-0".to_string()), ("role".to_string(), "role-1".to_string())].into(),
        ..base.clone()
    };
    let before = e.table().generation();
    e.apply(Object::Pod(flipped.clone()));
    assert!(e.table().generation() > before, "the relabel recompiles ghost-ep1");
    let mut flip = false;
    g.bench_function(BenchmarkId::new("relabel_one_pod_recompile", n), |bn| {
        bn.iter(|| {
            flip = !flip;
            e.apply(Object::Pod(if flip { base.clone() } else { flipped.clone() }));
            black_box(e.table())
        })
    });
    g.finish();
}

criterion_group!(benches, new_flows, established, relabel);
criterion_main!(benches);
