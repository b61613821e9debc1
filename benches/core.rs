//! Per-packet cost of the sans-IO core (DESIGN.md, "Performance: how it is measured").
//!
//! Groups:
//! - `baseline`: what every per-packet loop pays besides the core (restoring the frame).
//! - `paths`: one packet of each core path, one flow, everything hot (and the same
//!   encapsulation through the pass-through relay, `core::relay`, for scale).
//! - `services`: service lookup and new-flow DNAT with 10 .. 100 000 services, and one
//!   service changed and published on a 100 000-service table; a new flow under
//!   `externalTrafficPolicy: Local` and one sent by a session-affinity hit.
//! - `conntrack`: conntrack lookup and established-flow NAT with 1 000 .. 1 000 000 flows;
//!   a new flow into a full table of half-open flows (early drop).
//! - `multithread`: established-flow NAT + encap on 1 and 2 threads sharing one dataplane.
//! - `gso`: userspace TSO of a 64 KB super-packet into VXLAN datagrams.
//!
//! How the input is restored: the core rewrites the frame in place, so every timed
//! iteration first copies the pristine frame (42-66 bytes) into a buffer with headroom
//! and wraps it in a `Packet`. That copy is inside the timed loop; `baseline/copy_frame`
//! times exactly that copy alone (`baseline/copy_frame_new_sport` the copy plus the
//! source-port rewrite of the new-flow benches, `baseline/copy_frame_new_tuple` the copy
//! plus the flow draw and source rewrite of the `conntrack/established_nat_encap_*`
//! benches), so per-path figures can be read net of it. `iter_batched_ref` was not used: its per-batch setup keeps a vector
//! of inputs, so each iteration reads its frame from a different, colder buffer, and at a
//! few tens of nanoseconds per packet that costs more, less predictably, than a 64-byte
//! copy from L1.
//!
//! Every bench checks once, outside the timed loop, that its packet takes the path the
//! name says (the action, the rewritten bytes, the checksums), and after timing that no
//! timed packet was dropped (all drop counters still zero).

mod common;

use std::cell::OnceCell;
use std::hint::black_box;
use std::net::SocketAddrV4;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use ucanal::core::gso::{MAX_SEGMENTED, segment_headers, segment_vxlan};
use ucanal::core::nat::conntrack::{Conntrack, Dir, Insert, NAT_DNAT, NAT_SNAT, NewFlow, PortChoice, Timeouts};
use ucanal::core::nat::service::Service;
use ucanal::core::relay::{Relay, Relayed};
use ucanal::core::tables::Tables;
use ucanal::core::tables::article::{self, EP1_MAC};
use ucanal::core::trace::Trace;
use ucanal::core::{Action, Counter, Dataplane, DropReason, PortId, RunMemo};
use ucanal::wire::ipv4::{Ipv4Packet, PROTO_TCP};
use ucanal::wire::l4::{self, TCP_ACK, TCP_SYN};
use ucanal::wire::{MacAddr, arp, checksum};

use common::*;

/// No timed packet was dropped.
fn assert_no_drops(dp: &Dataplane) {
    for d in DropReason::ALL {
        assert_eq!(dp.counters.dropped(*d), 0, "a bench packet was dropped: {d}");
    }
}

// ---------------------------------------------------------------------------------
// baseline

fn baseline(c: &mut Criterion) {
    let mut g = c.benchmark_group("baseline");
    // The largest frame of the `paths` group (the VXLAN datagram of `decap`, 66 bytes).
    let dgram = from_node2(&ping(MacAddr::ZERO, EP2, EP1, 63)[14..]);
    let mut b = Buf::for_frame(&dgram);
    g.bench_function("copy_frame", |bn| {
        bn.iter(|| {
            let p = b.load(black_box(&dgram));
            black_box(p.data());
        })
    });
    // The new-flow loops (`run_new_flows`) also rewrite the source port, walking a
    // list of ports in chunks.
    let syn = tcp(host_port_mac(), HOST_MAC, (CLIENT, 1024), (NODE1, NODE_PORT), true);
    let sports: Vec<u16> = (1024..1024 + NEW_FLOW_CHUNK as u16).collect();
    let mut b = Buf::for_frame(&syn);
    g.bench_function("copy_frame_new_sport", |bn| {
        bn.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(NEW_FLOW_CHUNK);
                let start = Instant::now();
                for &sport in &sports[..n] {
                    let mut p = b.load(black_box(&syn));
                    set_source(p.data_mut(), CLIENT, sport);
                    black_box(p.data());
                }
                total += start.elapsed();
                left -= n;
            }
            total
        })
    });
    // The `conntrack/established_nat_encap_*` loops draw a flow index and rewrite the
    // source address and port to that flow's.
    let ack = nodeport_ack(CLIENT, 40000);
    let mut b = Buf::for_frame(&ack);
    let mut rng = Rng::new(7);
    g.bench_function("copy_frame_new_tuple", |bn| {
        bn.iter(|| {
            let (src, sport) = Population::client(rng.below(1_000_000));
            let mut p = b.load(black_box(&ack));
            set_source(p.data_mut(), src, sport);
            black_box(p.data());
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------
// paths

/// Times `frame` into `port` of `dp`: copy in, `handle_port`, nothing else.
fn time_port(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    dp: &Dataplane,
    port: PortId,
    frame: &[u8],
) {
    let t = dp.tables();
    let mut b = Buf::for_frame(frame);
    let mut tr = Trace::off();
    g.bench_function(name, |bn| {
        bn.iter(|| {
            let mut p = b.load(black_box(frame));
            let a = dp.handle_port(0, &t, port, &mut p, NOW, &mut tr);
            let _ = black_box((a, p.data()));
        })
    });
    assert_no_drops(dp);
}

fn paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("paths");

    // proxy_arp_reply: ghost-ep1 asks for its gateway 169.254.1.1 and gets ee:ee:ee:ee:ee:ee.
    {
        let dp = dataplane(vec![], 1024, 1);
        let f = arp_request(EP1_MAC, EP1, GATEWAY);
        let (a, out) = run_port(&dp, PortId(1), &f);
        assert_eq!(a, Action::ToPort(PortId(1)));
        assert_eq!(&out[..6], &EP1_MAC.0);
        let r = arp::ArpPacket::new_checked(&out[14..]).unwrap();
        assert_eq!((r.operation(), r.sender_mac(), r.sender_ip()), (arp::OP_REPLY, HOST_MAC, GATEWAY));
        time_port(&mut g, "proxy_arp_reply", &dp, PortId(1), &f);
        assert_eq!(
            dp.counters.get(Counter::ArpProxyReply),
            dp.counters.get(Counter::RxPod),
            "every timed frame answered"
        );
    }

    // local_switch: ping 10.244.1.5 -> 10.244.1.7 by the /32 host route, port 1 -> port 2.
    {
        let dp = dataplane(vec![], 1024, 1);
        let f = ping(EP1_MAC, EP1, EP3, 64);
        let (a, out) = run_port(&dp, PortId(1), &f);
        assert_eq!(a, Action::ToPort(PortId(2)));
        assert_eq!(&out[..6], &article::EP3_MAC.0);
        let ip = out_ip(&out, false);
        assert_eq!((ip.src(), ip.dst(), ip.ttl()), (EP1, EP3, 63));
        assert_checksums(&ip);
        time_port(&mut g, "local_switch", &dp, PortId(1), &f);
        assert_eq!(
            dp.counters.get(Counter::ForwardLocal),
            dp.counters.get(Counter::RxPod),
            "every timed frame switched"
        );
    }

    // relay_encap: the same ping through the pass-through relay (fixed headers, no
    // decisions): what `encap` costs above it is the dataplane's walk.
    {
        let t = Tables::build(1, article::node1(), 1, &article::pods1()[..1], &[article::peer2()], Default::default());
        let relay = Relay::from_tables(&t).unwrap();
        let f = ping(EP1_MAC, EP1, EP2, 64);
        let mut b = Buf::for_frame(&f);
        let mut p = b.load(&f);
        assert!(matches!(relay.from_pod(&mut p), Relayed::Done(Action::ToVtep { remote, .. }) if remote == NODE2));
        assert_eq!(&p.data()[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0]);
        g.bench_function("relay_encap", |bn| {
            bn.iter(|| {
                let mut p = b.load(black_box(&f));
                let r = relay.from_pod(&mut p);
                let _ = black_box((r, p.data()));
            })
        });
    }

    // encap: ping 10.244.1.5 -> 10.244.0.74: route -> neighbour -> FDB -> VXLAN to centos7-2.
    {
        let dp = dataplane(vec![], 1024, 1);
        let f = ping(EP1_MAC, EP1, EP2, 64);
        let (a, out) = run_port(&dp, PortId(1), &f);
        assert!(matches!(a, Action::ToVtep { remote, .. } if remote == NODE2), "{a:?}");
        assert_eq!(&out[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0]);
        let ip = out_ip(&out, true);
        assert_eq!((ip.src(), ip.dst(), ip.ttl()), (EP1, EP2, 63));
        assert_checksums(&ip);
        time_port(&mut g, "encap", &dp, PortId(1), &f);
        assert_eq!(
            dp.counters.get(Counter::ForwardVxlan),
            dp.counters.get(Counter::RxPod),
            "every timed frame encapsulated"
        );
    }

    // decap: VXLAN from centos7-2 with 10.244.0.74 -> 10.244.1.5 inside, to ghost-ep1.
    {
        let dp = dataplane(vec![], 1024, 1);
        let dgram = from_node2(&ping(MacAddr::ZERO, EP2, EP1, 63)[14..]);
        let (a, out) = run_vxlan(&dp, NODE2, &dgram);
        assert_eq!(a, Action::ToPort(PortId(1)));
        assert_eq!(&out[..6], &EP1_MAC.0);
        let ip = out_ip(&out, false);
        assert_eq!((ip.src(), ip.dst(), ip.ttl()), (EP2, EP1, 62));
        assert_checksums(&ip);
        let t = dp.tables();
        let mut b = Buf::for_frame(&dgram);
        let mut tr = Trace::off();
        let from = SocketAddrV4::new(NODE2, 45000);
        g.bench_function("decap", |bn| {
            bn.iter(|| {
                let mut p = b.load(black_box(&dgram));
                let a = dp.handle_vxlan(0, &t, from, &mut p, NOW, &mut tr);
                let _ = black_box((a, p.data()));
            })
        });
        assert_no_drops(&dp);
        assert_eq!(
            dp.counters.get(Counter::Decap),
            dp.counters.get(Counter::RxVxlan),
            "every timed datagram decapsulated"
        );
    }

    // decap_tcp_partial: a 1398-byte data segment of a kernel peer's bulk transfer whose
    // checksum its veth left partial (the field holds the pseudo-header sum): recognised,
    // delivered to ghost-ep1 as NEEDS_CSUM. decap_tcp_full: the same segment with a
    // complete checksum, for comparison.
    for (name, partial) in [("decap_tcp_partial", true), ("decap_tcp_full", false)] {
        let dp = dataplane(vec![], 1024, 1);
        let payload: Vec<u8> = (0..1398u32).map(|i| (i * 7) as u8).collect();
        let mut inner = Vec::new();
        PacketBuilder::ipv4(EP2.octets(), EP1.octets(), 63)
            .tcp(TARGET_PORT, 40000, 5000, 64240)
            .ack(1001)
            .write(&mut inner, &payload)
            .unwrap();
        if partial {
            let ps = checksum::fold(checksum::pseudo_header_sum(EP2.octets(), EP1.octets(), 6, 20 + 1398));
            inner[36..38].copy_from_slice(&ps.to_be_bytes());
        }
        let dgram = from_node2(&inner);
        let t = dp.tables();
        let mut b = Buf::for_frame(&dgram);
        let mut tr = Trace::off();
        let from = SocketAddrV4::new(NODE2, 45000);
        let mut p = b.load(&dgram);
        assert_eq!(dp.handle_vxlan(0, &t, from, &mut p, NOW, &mut tr), Action::ToPort(PortId(1)));
        assert_eq!(p.offload.csum_partial, partial);
        let mut ip = p.data()[14..].to_vec();
        if partial {
            l4::finish_partial_checksum(&mut ip);
        }
        assert!(l4::verify_checksum(&ip));
        g.bench_function(name, |bn| {
            bn.iter(|| {
                let mut p = b.load(black_box(&dgram));
                let a = dp.handle_vxlan(0, &t, from, &mut p, NOW, &mut tr);
                let _ = black_box((a, p.data(), p.offload));
            })
        });
        assert_no_drops(&dp);
        let want = if partial { dp.counters.get(Counter::Decap) } else { 0 };
        assert_eq!(dp.counters.get(Counter::CsumPartial), want, "every timed segment taken as partial (or none)");
    }

    // decap_run_16 / decap_walk_16: one UDP GRO read of 16 segments of a bulk transfer
    // (complete checksums) to ghost-ep1, per read (16 frames). `run`: through
    // `handle_vxlan_run`, the first segment takes the walk and the 15 after it replay its
    // decision; `walk`: each segment takes the walk (`handle_vxlan`).
    for (name, run) in [("decap_run_16", true), ("decap_walk_16", false)] {
        let dp = dataplane(vec![], 1024, 1);
        let segs = bulk_segments(16, false);
        let t = dp.tables();
        let mut b = Buf::for_frame(&segs[0]);
        let mut tr = Trace::off();
        let from = SocketAddrV4::new(NODE2, 45000);
        let mut memo = RunMemo::default();
        let mut read = |memo: &mut RunMemo, tr: &mut Trace| {
            memo.clear();
            for s in &segs {
                let mut p = b.load(black_box(s));
                let a = if run {
                    dp.handle_vxlan_run(0, &t, from, &mut p, NOW, tr, memo)
                } else {
                    dp.handle_vxlan(0, &t, from, &mut p, NOW, tr)
                };
                let _ = black_box((a, p.data()));
            }
        };
        read(&mut memo, &mut tr);
        assert_eq!(dp.counters.get(Counter::Decap), 16);
        assert_eq!(dp.counters.get(Counter::RunReplayed), if run { 15 } else { 0 });
        g.bench_function(name, |bn| bn.iter(|| read(&mut memo, &mut tr)));
        assert_no_drops(&dp);
        assert_eq!(
            dp.counters.get(Counter::Decap),
            dp.counters.get(Counter::RxVxlan),
            "every timed segment decapsulated"
        );
    }

    // new_flow_dnat: SYN 172.16.240.1:sport -> 172.16.240.131:31266 (default/ghost's
    // NodePort), a new source port every iteration, every port one whose flow hashes to
    // the remote endpoint: conntrack miss, KUBE-NODEPORTS, endpoint, conntrack insert,
    // DNAT to 10.244.0.74:2368, masquerade to 10.244.1.0, encap. The conntrack table grows
    // during the run: each chunk of NEW_FLOW_CHUNK flows starts from an empty table (a
    // fresh one is installed untimed between chunks; its max is twice the chunk, so it
    // never fills). Read net of `baseline/copy_frame_new_sport`.
    {
        let mut dp = dataplane(vec![article::ghost()], 2 * NEW_FLOW_CHUNK, 1);
        let t = dp.tables();
        let sports: Vec<u16> = sports_for(&t, CLIENT, (NODE1, NODE_PORT), EP2, 1024).collect();
        assert_new_flow(&dp, sports[0]);
        g.bench_function("new_flow_dnat", |bn| bn.iter_custom(|iters| run_new_flows(&mut dp, &t, &sports, iters)));
        assert_no_drops(&dp);
    }

    // established_nat_encap: the client's ACKs of one established NodePort flow whose
    // endpoint is remote: conntrack hit -> DNAT + masquerade from the entry -> encap.
    {
        let dp = dataplane(vec![article::ghost()], 1024, 1);
        let sport = sports_for(&dp.tables(), CLIENT, (NODE1, NODE_PORT), EP2, 40000).next().unwrap();
        establish_nodeport(&dp, CLIENT, sport);
        let f = nodeport_ack(CLIENT, sport);
        let hits = dp.counters.get(Counter::CtHitOriginal);
        let (a, out) = run_port(&dp, PortId::HOST, &f);
        assert_encapped_tcp(a, &out, (VTEP1, sport), (EP2, TARGET_PORT));
        assert_eq!(dp.counters.get(Counter::CtHitOriginal), hits + 1, "a conntrack hit, not a new flow");
        let new = dp.counters.get(Counter::CtNew);
        time_port(&mut g, "established_nat_encap", &dp, PortId::HOST, &f);
        assert_eq!(dp.counters.get(Counter::CtNew), new, "no timed packet started a flow");
    }
    g.finish();
}

// ---------------------------------------------------------------------------------
// services

fn services(c: &mut Criterion) {
    let mut g = c.benchmark_group("services");
    // Tables are built on first use (a filtered run skips them).
    for real in [10, 1_000, 100_000] {
        let n = size(real);
        let cell = OnceCell::new();
        let table = || {
            cell.get_or_init(|| {
                let table = filler_table(n);
                assert_eq!(table.len(), n);
                for i in (0..n).step_by((n / 1000).max(1)).chain([n - 1]) {
                    let (ip, port) = filler_key(i);
                    let s = table.by_cluster_ip(PROTO_TCP, ip, port).expect("service found");
                    assert_eq!((s.spec.cluster_ip, s.spec.port), (ip, port));
                }
                table
            })
        };
        // Both variants draw indices from the same generator; `hot` keeps them to the
        // first HOT services, `spread` spreads them over the whole table. The lookup
        // also reads the service it found (its endpoint count), as the dataplane does.
        for (variant, range) in [("lookup_hot", HOT.min(n)), ("lookup_spread", n)] {
            let mut rng = Rng::new(0x5eed);
            g.bench_function(BenchmarkId::new(variant, n), |bn| {
                let table = table();
                bn.iter(|| {
                    let (ip, port) = filler_key(rng.below(range));
                    black_box(table.by_cluster_ip(PROTO_TCP, ip, port).map(|s| s.spec.endpoints.len()))
                })
            });
        }
    }
    // One service added or removed on a 100 000-service table, then published: the
    // control plane's copy changes (copy-on-write: one shard copied) and the clone the
    // workers get replaces the previous one (dropped here, as the last worker drops it).
    let n = size(100_000);
    g.bench_function(BenchmarkId::new("update_one_publish", n), |bn| {
        let mut master = filler_table(n);
        let mut published = master.clone();
        let extra = filler(n);
        let mut present = false;
        bn.iter(|| {
            if present {
                assert!(master.remove(&extra).is_some());
            } else {
                assert!(master.insert(Service::carrying(extra.clone(), None)).is_empty());
            }
            present = !present;
            published = master.clone();
            black_box(published.len())
        })
    });
    // New-flow DNAT (as `paths/new_flow_dnat`) with the ghost among 10 / 100 000 services.
    for real in [10, 100_000] {
        let n = size(real);
        let mut state: Option<(Dataplane, Arc<Tables>, Vec<u16>)> = None;
        g.bench_function(BenchmarkId::new("new_flow_dnat", n), |bn| {
            let (dp, t, sports) = state.get_or_insert_with(|| {
                let dp = dataplane(ghost_and_fillers(n), 2 * NEW_FLOW_CHUNK, 1);
                let t = dp.tables();
                assert_eq!(t.services.len(), n);
                let sports: Vec<u16> = sports_for(&t, CLIENT, (NODE1, NODE_PORT), EP2, 1024).collect();
                assert_new_flow(&dp, sports[0]);
                (dp, t, sports)
            });
            bn.iter_custom(|iters| run_new_flows(dp, t, sports, iters))
        });
        if let Some((dp, ..)) = &state {
            assert_no_drops(dp);
        }
    }
    g.finish();
}

/// New NodePort flows under kube-proxy's policies (issue 20), each against
/// `paths/new_flow_dnat` (eTP Cluster, no affinity): `new_flow_etp_local` — the client's
/// SYN to the NodePort with `externalTrafficPolicy: Local`, candidates counted by route
/// (this node's ghost-ep1), DNAT without masquerade, delivered to the pod;
/// `new_flow_affinity_hit` — `sessionAffinity: ClientIP` with the client's record on the
/// remote endpoint: looked up, refreshed, DNAT + masquerade + encap.
fn policies(c: &mut Criterion) {
    let mut g = c.benchmark_group("services");
    {
        let mut svc = article::ghost();
        svc.external_local = true;
        let mut dp = dataplane(vec![svc], 2 * NEW_FLOW_CHUNK, 1);
        let t = dp.tables();
        let sports: Vec<u16> = (1024..1024 + NEW_FLOW_CHUNK as u16).collect();
        let (a, out) =
            run_port(&dp, PortId::HOST, &tcp(host_port_mac(), HOST_MAC, (CLIENT, 999), (NODE1, NODE_PORT), true));
        assert_eq!(a, Action::ToPort(PortId(1)), "to ghost-ep1");
        let ip = out_ip(&out, false);
        assert_eq!((ip.src(), ip.dst()), (CLIENT, EP1), "DNAT, the client's address kept");
        g.bench_function("new_flow_etp_local", |bn| {
            bn.iter_custom(|iters| run_new_flows_to(&mut dp, &t, &sports, iters, Counter::ForwardLocal))
        });
        assert_no_drops(&dp);
        assert_eq!(dp.counters.get(Counter::ServiceMasquerade), 0);
    }
    {
        let mut svc = article::ghost();
        svc.affinity_timeout = Some(10_800);
        let key = ucanal::core::nat::service::spec_key(&svc);
        let mut dp = dataplane(vec![svc], 2 * NEW_FLOW_CHUNK, 1);
        let t = dp.tables();
        dp.affinity.record(CLIENT, key, SocketAddrV4::new(EP2, TARGET_PORT), 10_800, NOW);
        let sports: Vec<u16> = (1024..1024 + NEW_FLOW_CHUNK as u16).collect();
        assert_new_flow(&dp, 999);
        let hits = dp.counters.get(Counter::ServiceAffinityHit);
        assert_eq!(hits, 1, "sent by its affinity record");
        g.bench_function("new_flow_affinity_hit", |bn| {
            bn.iter_custom(|iters| run_new_flows_to(&mut dp, &t, &sports, iters, Counter::ForwardVxlan))
        });
        assert_no_drops(&dp);
        assert_eq!(dp.counters.get(Counter::ServiceAffinityHit), dp.counters.get(Counter::CtNew), "every flow a hit");
        assert_eq!(dp.affinity.len(), 1);
    }
    g.finish();
}

// ---------------------------------------------------------------------------------
// conntrack

fn conntrack(c: &mut Criterion) {
    let mut g = c.benchmark_group("conntrack");
    for real in [1_000, 100_000, 1_000_000] {
        let n = size(real);
        // Built once per size, on first use (a filtered run skips it), dropped before the
        // next size is built: a dataplane with the ghost service and `n` established
        // NodePort flows (see `Population`).
        let cell: OnceCell<Dataplane> = OnceCell::new();
        let dp = || {
            cell.get_or_init(|| {
                let dp = dataplane(vec![article::ghost()], 2 * n + 1024, 1);
                Population::fill(&dp.conntrack, n);
                assert_eq!(dp.conntrack.len(), n);
                for i in [0, 1, n / 2, n - 1] {
                    let u = Population::original(i);
                    let h = dp.conntrack.track(&u, TCP_ACK, NOW, false).expect("prefilled flow found");
                    assert_eq!(
                        (h.dir, h.src, h.dst),
                        (Dir::Original, (VTEP1, u.sport), (Population::endpoint(i), TARGET_PORT))
                    );
                }
                dp
            })
        };

        // Conntrack::track alone, original direction, ESTABLISHED + ACK (no state change).
        for (variant, range) in [("track_hot", HOT.min(n)), ("track_spread", n)] {
            let mut rng = Rng::new(0x5eed);
            g.bench_function(BenchmarkId::new(variant, n), |bn| {
                let ct = &dp().conntrack;
                bn.iter(|| {
                    let u = Population::original(rng.below(range));
                    black_box(ct.track(&u, TCP_ACK, NOW, true))
                })
            });
        }

        // Established NodePort flows through the whole dataplane (as
        // `paths/established_nat_encap`, but over the population: the frame's source is
        // rewritten to flow i's each iteration; read net of `baseline/copy_frame_new_tuple`).
        if real == 100_000 {
            continue;
        }
        for (variant, range) in [("established_nat_encap_hot", HOT.min(n)), ("established_nat_encap_spread", n)] {
            let mut rng = Rng::new(0x5eed);
            let tmpl = nodeport_ack(CLIENT, 40000);
            let mut b = Buf::for_frame(&tmpl);
            let mut tr = Trace::off();
            g.bench_function(BenchmarkId::new(variant, n), |bn| {
                let dp = dp();
                let t = dp.tables();
                for i in [0, n - 1] {
                    let (src, sport) = Population::client(i);
                    let (a, out) = run_port(dp, PortId::HOST, &nodeport_ack(src, sport));
                    assert_encapped_tcp(a, &out, (VTEP1, sport), (Population::endpoint(i), TARGET_PORT));
                }
                bn.iter(|| {
                    let (src, sport) = Population::client(rng.below(range));
                    let mut p = b.load(black_box(&tmpl));
                    set_source(p.data_mut(), src, sport);
                    let a = dp.handle_port(0, &t, PortId::HOST, &mut p, NOW, &mut tr);
                    let _ = black_box((a, p.data()));
                })
            });
            if let Some(dp) = cell.get() {
                assert_no_drops(dp);
                assert_eq!(dp.counters.get(Counter::CtNew), 0, "every timed packet hit an existing flow");
            }
        }
    }
    g.finish();
}

/// A new SYN into a table at its maximum, full of half-open flows (a SYN flood): every
/// insert evicts the oldest unassured flow (early drop). Flows cycle through `2n`
/// tuples, so the one inserted is always one evicted `n` inserts ago.
fn conntrack_full(c: &mut Criterion) {
    let mut g = c.benchmark_group("conntrack");
    for real in [1_000, 100_000] {
        let n = size(real);
        let ct = Conntrack::new(n, Timeouts::default());
        Population::fill(&ct, n);
        let syn = |i: usize| {
            let u = Population::original(i);
            NewFlow {
                original: u,
                tcp_flags: TCP_SYN,
                reply_src: (Population::endpoint(i), TARGET_PORT),
                reply_dst: VTEP1,
                nat: NAT_DNAT | NAT_SNAT,
                ports: PortChoice { keep: u.sport, lo: 1024, hi: u16::MAX },
            }
        };
        let mut k = 0usize;
        let mut not_evicting = 0usize;
        g.bench_function(BenchmarkId::new("insert_full_table_early_drop", n), |bn| {
            bn.iter(|| {
                let i = (n + k) % (2 * n);
                k += 1;
                match black_box(ct.insert(syn(i), NOW)) {
                    Insert::New { evicted: true, .. } => {}
                    _ => not_evicting += 1,
                }
            })
        });
        assert_eq!(not_evicting, 0, "every timed insert evicted a half-open flow");
        assert_eq!(ct.len(), n);
        assert!(ct.candidates_len() <= 2 * n);
    }
    g.finish();
}

// ---------------------------------------------------------------------------------
// multithread

/// Established flows per thread; thread k owns flows k*FLOWS..(k+1)*FLOWS of the population.
const FLOWS_PER_THREAD: usize = 512;

fn multithread(c: &mut Criterion) {
    let mut g = c.benchmark_group("multithread");
    const MAX_THREADS: usize = 2;
    let dp = Arc::new(dataplane(vec![article::ghost()], 4 * FLOWS_PER_THREAD * MAX_THREADS, MAX_THREADS));
    Population::fill(&dp.conntrack, FLOWS_PER_THREAD * MAX_THREADS);
    // Each thread cycles through the ACK frames of its own flows.
    let frames: Vec<Vec<Vec<u8>>> = (0..MAX_THREADS)
        .map(|k| {
            (k * FLOWS_PER_THREAD..(k + 1) * FLOWS_PER_THREAD)
                .map(|i| {
                    let (src, sport) = Population::client(i);
                    let f = nodeport_ack(src, sport);
                    if i % 97 == 0 {
                        let (a, out) = run_port(&dp, PortId::HOST, &f);
                        assert_encapped_tcp(a, &out, (VTEP1, sport), (Population::endpoint(i), TARGET_PORT));
                    }
                    f
                })
                .collect()
        })
        .collect();

    for threads in 1..=MAX_THREADS {
        // One element = one packet on each thread, so criterion's elements/s is the
        // aggregate packet rate.
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(BenchmarkId::new("established_nat_encap", format!("{threads}_threads")), |bn| {
            bn.iter_custom(|iters| {
                let barrier = Barrier::new(threads);
                std::thread::scope(|s| {
                    let handles: Vec<_> = (0..threads)
                        .map(|k| {
                            let (dp, frames, barrier) = (&dp, &frames[k], &barrier);
                            s.spawn(move || {
                                let t = dp.tables();
                                let mut b = Buf::for_frame(&frames[0]);
                                let mut tr = Trace::off();
                                barrier.wait();
                                let start = Instant::now();
                                for j in 0..iters as usize {
                                    let f = &frames[j % FLOWS_PER_THREAD];
                                    let mut p = b.load(black_box(f));
                                    let a = dp.handle_port(k, &t, PortId::HOST, &mut p, NOW, &mut tr);
                                    let _ = black_box((a, p.data()));
                                }
                                start.elapsed()
                            })
                        })
                        .collect();
                    // All threads start together at the barrier; the wall time is the slowest.
                    handles.into_iter().map(|h| h.join().unwrap()).max().unwrap_or(Duration::ZERO)
                })
            })
        });
    }
    assert_no_drops(&dp);
    assert_eq!(dp.counters.get(Counter::CtNew), 0);
    g.finish();
}

// ---------------------------------------------------------------------------------
// gso

/// A VXLAN datagram carrying a maximal TCP/IPv4 super-packet (total length 65 535) from
/// ghost-ep1 to 10.244.0.74, as a pod with TSO hands it over, after encap.
fn super_packet(payload_len: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(article::node1().vtep_mac.0, article::peer2().vtep_mac.0)
        .ipv4(EP1.octets(), EP2.octets(), 63)
        .tcp(40000, 5201, 1_000_000, 64240)
        .ack(77)
        .psh();
    let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
    let mut v = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    b.write(&mut v, &payload).unwrap();
    v
}

fn gso(c: &mut Criterion) {
    let mut g = c.benchmark_group("gso");
    let payload = 65_535 - 20 - 20;
    // MSS for the overlay MTU of 1450 (IPv4 + TCP headers without options).
    let mss: u16 = 1450 - 40;
    let sp = super_packet(payload);
    let mut out = vec![0u8; MAX_SEGMENTED];
    let s = segment_vxlan(&sp, mss, &mut out).unwrap();
    let hdrs = 8 + 14 + 20 + 20;
    assert_eq!(s.segments, payload.div_ceil(usize::from(mss)));
    assert_eq!(s.len, s.segments * hdrs + payload);
    for k in 0..s.segments {
        let d = &out[k * s.datagram_len..((k + 1) * s.datagram_len).min(s.len)];
        let ip = Ipv4Packet::new_checked(&d[22..]).unwrap();
        assert!(ip.verify_checksum() && l4::verify_checksum(&d[22..]), "segment {k} checksums");
    }
    g.throughput(Throughput::Bytes(payload as u64));
    g.bench_function(format!("segment_vxlan_64k_mss{mss}_{}segs", s.segments), |bn| {
        bn.iter(|| black_box(segment_vxlan(black_box(&sp), mss, &mut out)))
    });
    // The scatter-gather form: headers only, checksums over the payload where it lies.
    let mut hdrs_out = vec![0u8; 8192];
    let h = segment_headers(&sp, mss, &mut hdrs_out).unwrap();
    assert_eq!(h.segments, s.segments);
    g.bench_function(format!("segment_headers_64k_mss{mss}_{}segs", h.segments), |bn| {
        bn.iter(|| black_box(segment_headers(black_box(&sp), mss, &mut hdrs_out)))
    });
    g.finish();
}

criterion_group!(benches, baseline, paths, services, policies, conntrack, conntrack_full, multithread, gso);
criterion_main!(benches);
