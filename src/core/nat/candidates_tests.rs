//! The service stage on the article's node centos7-1 (ghost-ep1 10.244.1.5 is local,
//! ghost-ep2 10.244.0.74 is on centos7-2), each rule against kube-proxy's.

use super::*;
use crate::core::tables::{Tables, article};
use crate::wire::ipv4::PROTO_ICMP;

const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 16, 240, 1);
const NODE1: Ipv4Addr = Ipv4Addr::new(172, 16, 240, 131);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 40);
const LB: Ipv4Addr = Ipv4Addr::new(1, 2, 3, 4);
const EXT: Ipv4Addr = Ipv4Addr::new(192, 168, 99, 11);

fn ep(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}
const EP1: &str = "10.244.1.5:2368";
const EP2: &str = "10.244.0.74:2368";

fn tables(f: impl FnOnce(&mut ServiceSpec)) -> Tables {
    let mut g = article::ghost();
    g.external_ips = vec![EXT];
    g.load_balancer_ips = vec![LB];
    f(&mut g);
    article::tables1(vec![g])
}

fn tcp(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Tuple {
    Tuple { proto: PROTO_TCP, src, dst, sport: 40000, dport }
}

/// The verdict as kube-proxy's tests write it: candidates (sorted) and the mark, or
/// REJECT / DROP with the reason.
fn flow(t: &Tables, u: Tuple) -> String {
    match decide(t, &u) {
        ServiceVerdict::NoService => "-".into(),
        ServiceVerdict::Reject(_, r) => format!("REJECT {r}"),
        ServiceVerdict::Drop(_, r) => format!("DROP {r}"),
        ServiceVerdict::Endpoints { candidates, mark, .. } => {
            let mut v: Vec<String> = candidates.to_vec().iter().map(ToString::to_string).collect();
            v.sort();
            format!("{}{}", v.join(", "), if mark { " masq" } else { "" })
        }
    }
}

#[test]
fn external_traffic_policy_cluster_marks_and_uses_every_endpoint() {
    let t = tables(|_| {});
    let both = format!("{EP2}, {EP1}");
    for dst in [(NODE1, 31266), (EXT, 2368), (LB, 2368)] {
        assert_eq!(flow(&t, tcp(CLIENT, dst.0, dst.1)), format!("{both} masq"), "{dst:?}");
        assert_eq!(flow(&t, tcp(POD, dst.0, dst.1)), format!("{both} masq"), "{dst:?}");
    }
    assert_eq!(flow(&t, tcp(POD, VIP, 2368)), both);
    assert_eq!(flow(&t, tcp(CLIENT, VIP, 2368)), format!("{both} masq"), "from outside the cluster CIDR");
    assert_eq!(flow(&t, tcp(NODE1, VIP, 2368)), format!("{both} masq"));
}

#[test]
fn external_traffic_policy_local_keeps_the_client_and_this_nodes_endpoints() {
    let t = tables(|g| g.external_local = true);
    let both = format!("{EP2}, {EP1}");
    for dst in [(NODE1, 31266), (EXT, 2368), (LB, 2368)] {
        assert_eq!(flow(&t, tcp(CLIENT, dst.0, dst.1)), EP1, "outside: local only, unmarked, {dst:?}");
        assert_eq!(flow(&t, tcp(POD, dst.0, dst.1)), both, "short-circuit pod traffic, {dst:?}");
        assert_eq!(flow(&t, tcp(NODE1, dst.0, dst.1)), format!("{both} masq"), "this node, {dst:?}");
    }
    assert_eq!(flow(&t, tcp(CLIENT, VIP, 2368)), format!("{both} masq"), "eTP does not apply to a cluster IP");
    // The other node's view: no endpoint of its own.
    let t = tables(|g| {
        g.external_local = true;
        g.endpoints = vec![ep(EP2)];
    });
    assert_eq!(flow(&t, tcp(CLIENT, NODE1, 31266)), "DROP no_local_endpoint");
    assert_eq!(flow(&t, tcp(CLIENT, LB, 2368)), "DROP no_local_endpoint");
    assert_eq!(flow(&t, tcp(POD, NODE1, 31266)), EP2, "pods still reach it");
    // No endpoint anywhere: REJECT, whatever the policy.
    let t = tables(|g| {
        g.external_local = true;
        g.endpoints.clear();
    });
    assert_eq!(flow(&t, tcp(CLIENT, NODE1, 31266)), "REJECT service_no_endpoints");
    assert_eq!(flow(&t, tcp(POD, VIP, 2368)), "REJECT service_no_endpoints");
}

#[test]
fn internal_traffic_policy_local_limits_the_cluster_ip_only() {
    let t = tables(|g| g.internal_local = true);
    assert_eq!(flow(&t, tcp(POD, VIP, 2368)), EP1);
    assert_eq!(flow(&t, tcp(NODE1, VIP, 2368)), format!("{EP1} masq"), "iTP never changes the mark");
    assert_eq!(flow(&t, tcp(CLIENT, NODE1, 31266)), format!("{EP2}, {EP1} masq"), "nor NodePort traffic");
    let t = tables(|g| {
        g.internal_local = true;
        g.endpoints = vec![ep(EP2)];
    });
    assert_eq!(flow(&t, tcp(POD, VIP, 2368)), "DROP no_local_endpoint");
}

#[test]
fn terminating_endpoints_serve_only_where_the_scope_has_no_ready_one() {
    // Ready on centos7-2, serving-and-terminating here.
    let t = tables(|g| {
        g.external_local = true;
        g.endpoints = vec![ep(EP2)];
        g.terminating = vec![ep(EP1)];
    });
    assert_eq!(flow(&t, tcp(POD, VIP, 2368)), EP2, "the cluster scope has a ready one");
    assert_eq!(flow(&t, tcp(CLIENT, NODE1, 31266)), EP1, "the local scope has only a terminating one");
    let v = decide(&t, &tcp(CLIENT, NODE1, 31266));
    assert!(matches!(v, ServiceVerdict::Endpoints { candidates, .. } if candidates.terminating()));
    // Only terminating endpoints: the cluster scope falls back to all of them.
    let t = tables(|g| {
        g.terminating = std::mem::take(&mut g.endpoints);
    });
    assert_eq!(flow(&t, tcp(POD, VIP, 2368)), format!("{EP2}, {EP1}"));
    // Terminating on the other node only: pods reach it, outside traffic with eTP Local drops.
    let t = tables(|g| {
        g.external_local = true;
        g.endpoints.clear();
        g.terminating = vec![ep(EP2)];
    });
    assert_eq!(flow(&t, tcp(POD, VIP, 2368)), EP2);
    assert_eq!(flow(&t, tcp(CLIENT, LB, 2368)), "DROP no_local_endpoint");
}

#[test]
fn load_balancer_source_ranges() {
    let t = tables(|g| g.source_ranges = vec!["203.0.113.0/25".parse().unwrap()]);
    let allowed = Ipv4Addr::new(203, 0, 113, 2);
    let blocked = Ipv4Addr::new(203, 0, 113, 130);
    assert_eq!(flow(&t, tcp(allowed, LB, 2368)), format!("{EP2}, {EP1} masq"));
    assert_eq!(flow(&t, tcp(blocked, LB, 2368)), "DROP lb_source_range");
    assert_eq!(flow(&t, tcp(POD, LB, 2368)), "DROP lb_source_range", "pods are sources like any other");
    assert_eq!(flow(&t, tcp(NODE1, LB, 2368)), "DROP lb_source_range", "the node only when a range holds it");
    assert_eq!(flow(&t, tcp(LB, LB, 2368)), "DROP lb_source_range");
    assert_eq!(flow(&t, tcp(blocked, NODE1, 31266)), format!("{EP2}, {EP1} masq"), "NodePorts bypass the ranges");
    assert_eq!(flow(&t, tcp(blocked, EXT, 2368)), format!("{EP2}, {EP1} masq"), "so do externalIPs");
    // A range holding the node IP lets the node and the LB IP itself in.
    let t = tables(|g| g.source_ranges = vec!["172.16.240.0/24".parse().unwrap()]);
    assert_eq!(flow(&t, tcp(NODE1, LB, 2368)), format!("{EP2}, {EP1} masq"));
    assert_eq!(flow(&t, tcp(LB, LB, 2368)), format!("{EP2}, {EP1} masq"));
    // Firewalled before DNAT: a blocked source is dropped even with no endpoint.
    let t = tables(|g| {
        g.source_ranges = vec!["203.0.113.0/25".parse().unwrap()];
        g.endpoints.clear();
    });
    assert_eq!(flow(&t, tcp(blocked, LB, 2368)), "DROP lb_source_range");
    assert_eq!(flow(&t, tcp(allowed, LB, 2368)), "REJECT service_no_endpoints");
}

#[test]
fn addresses_of_the_service_cidr_without_a_service() {
    let t = tables(|_| {});
    assert_eq!(flow(&t, tcp(POD, VIP, 80)), "REJECT no_service", "a cluster IP's other port");
    let udp = Tuple { proto: PROTO_UDP, ..tcp(POD, VIP, 2368) };
    assert_eq!(flow(&t, udp), "REJECT no_service", "its other protocol");
    let ping = Tuple { proto: PROTO_ICMP, src: POD, dst: VIP, sport: 7, dport: 0 };
    assert_eq!(flow(&t, ping), "REJECT no_service", "any protocol (ip daddr @cluster-ips reject)");
    assert_eq!(flow(&t, tcp(POD, Ipv4Addr::new(10, 250, 0, 41), 2368)), "DROP unallocated_cluster_ip");
    assert_eq!(flow(&t, tcp(POD, Ipv4Addr::new(10, 244, 0, 74), 2368)), "-", "pod to pod is not kube-proxy's");
    assert_eq!(flow(&t, tcp(POD, Ipv4Addr::new(8, 8, 8, 8), 53)), "-");
    assert_eq!(flow(&t, tcp(CLIENT, NODE1, 31267)), "-", "another port of the node");
}

#[test]
fn affinity_sticks_a_client_to_its_endpoint_until_the_timeout() {
    let t = tables(|g| g.affinity_timeout = Some(10));
    let s = t.services.by_cluster_ip(PROTO_TCP, VIP, 2368).unwrap();
    let aff = Affinity::new(64);
    let (c, _) = match decide(&t, &tcp(CLIENT, VIP, 2368)) {
        ServiceVerdict::Endpoints { candidates, mark, .. } => (candidates, mark),
        v => panic!("{v:?}"),
    };
    let now = Now::from_secs(100);
    // The first flow picks by hash and is recorded; every later one follows it, whatever its hash.
    let first = choose(&c, s, CLIENT, 1, &aff, now, true);
    assert_eq!(first.by, Pick::Hash);
    for h in [0u32, u32::MAX / 3, u32::MAX / 2, u32::MAX] {
        let c2 = choose(&c, s, CLIENT, h, &aff, Now::from_secs(105), true);
        assert_eq!((c2.endpoint, c2.by), (first.endpoint, Pick::Affinity));
    }
    // Refreshed at 105: still there at 114, gone at 115.
    assert_eq!(choose(&c, s, CLIENT, u32::MAX, &aff, Now::from_secs(114), false).by, Pick::Affinity);
    let late = choose(&c, s, CLIENT, u32::MAX, &aff, Now::from_secs(125), false);
    assert_eq!(late.by, Pick::Hash);
    // A dry run records nothing.
    let other = Ipv4Addr::new(172, 16, 240, 9);
    choose(&c, s, other, 0, &aff, now, false);
    assert_eq!(aff.lookup(other, spec_key(&s.spec), now), None);
    // A record whose endpoint is no longer a candidate is not followed (and is replaced).
    let local = Candidates::new(&s.spec, Scope::Local, &t.routes);
    aff.record(CLIENT, spec_key(&s.spec), ep(EP2), 10, now);
    let c3 = choose(&local, s, CLIENT, 0, &aff, now, true);
    assert_eq!((c3.endpoint, c3.by), (ep(EP1), Pick::Hash));
    assert_eq!(aff.lookup(CLIENT, spec_key(&s.spec), now), Some(ep(EP1)));
    // Without affinity nothing is looked up or kept.
    let t = tables(|_| {});
    let s = t.services.by_cluster_ip(PROTO_TCP, VIP, 2368).unwrap();
    let aff = Affinity::new(64);
    assert_eq!(choose(&c, s, CLIENT, 7, &aff, now, true).by, Pick::Hash);
    assert!(aff.is_empty());
}

#[test]
fn hash_picks_are_the_same_as_before_for_every_endpoint() {
    // With all endpoints as candidates the pick is `uniform_index(hash, n)` over the spec, as
    // before candidate sets existed: established flows' endpoints do not move.
    let t = tables(|_| {});
    let s = t.services.by_cluster_ip(PROTO_TCP, VIP, 2368).unwrap();
    let c = Candidates::new(&s.spec, Scope::Cluster, &t.routes);
    let aff = Affinity::new(1);
    for h in (0..64u32).map(|i| i.wrapping_mul(0x9e37_79b9)) {
        let k = uniform_index(h, 2);
        let got = choose(&c, s, CLIENT, h, &aff, Now::from_secs(1), true);
        assert_eq!((got.endpoint, got.index, got.hit), (s.spec.endpoints[k], k, k));
    }
    // A local scope indexes its own members and keeps their hit counters.
    let local = Candidates::new(&s.spec, Scope::Local, &t.routes);
    assert_eq!((local.len(), local.nth(0)), (1, (1, ep(EP1))));
    assert_eq!(local.position(ep(EP1)), Some((0, 1)));
    assert_eq!(local.position(ep(EP2)), None);
}

mod properties {
    //! The service stage against a model written the way kube-proxy's rules read
    //! (`CategorizeEndpoints`, then the chain each kind of address goes to), on random
    //! services: endpoint conditions and places, both policies, source ranges, sources.
    use super::*;
    use proptest::prelude::*;

    /// This node's pods (ghost-ep1, ghost-ep3) and three of centos7-2's.
    const POOL: [&str; 5] = ["10.244.1.5:80", "10.244.1.7:80", "10.244.0.74:80", "10.244.0.75:80", "10.244.0.76:80"];
    const LOCAL: usize = 2;

    fn model(states: &[u8], etp: bool, itp: bool, ranged: bool, via: Via, src: Ipv4Addr) -> String {
        let pick = |f: &dyn Fn(usize, u8) -> bool| -> Vec<String> {
            (0..POOL.len()).filter(|i| f(*i, states[*i])).map(|i| POOL[i].to_string()).collect()
        };
        let ready = pick(&|_, s| s == 1);
        let cluster = if ready.is_empty() { pick(&|_, s| s == 2) } else { ready.clone() };
        let local_ready = pick(&|i, s| i < LOCAL && s == 1);
        let local = if local_ready.is_empty() { pick(&|i, s| i < LOCAL && s == 2) } else { local_ready };
        let (is_pod, is_node) = (src.octets()[0] == 10, src == NODE1);
        if via == Via::LoadBalancer && ranged && !(src.octets()[..3] == [172, 16, 240] && src.octets()[3] < 16) {
            return "DROP lb_source_range".into();
        }
        if cluster.is_empty() {
            return "REJECT service_no_endpoints".into();
        }
        let (set, mark) = match via {
            Via::ClusterIp => (if itp { local } else { cluster }, !is_pod),
            _ if !etp => (cluster, true),
            _ if is_pod => (cluster, false),
            _ if is_node => (cluster, true),
            _ => (local, false),
        };
        if set.is_empty() {
            return "DROP no_local_endpoint".into();
        }
        let mut set = set;
        set.sort();
        format!("{}{}", set.join(", "), if mark { " masq" } else { "" })
    }

    fn table(states: &[u8], etp: bool, itp: bool, ranged: bool) -> Tables {
        tables(|g| {
            g.port = 80;
            g.endpoints.clear();
            for (i, s) in states.iter().enumerate() {
                match s {
                    1 => g.endpoints.push(POOL[i].parse().unwrap()),
                    2 => g.terminating.push(POOL[i].parse().unwrap()),
                    _ => {}
                }
            }
            g.external_local = etp;
            g.internal_local = itp;
            if ranged {
                g.source_ranges = vec!["172.16.240.0/28".parse().unwrap()];
            }
        })
    }

    fn target(via: Via) -> (Ipv4Addr, u16) {
        match via {
            Via::ClusterIp => (VIP, 80),
            Via::NodePort => (NODE1, 31266),
            Via::ExternalIp => (EXT, 80),
            Via::LoadBalancer => (LB, 80),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

        #[test]
        fn verdicts_are_kube_proxys(
            states in proptest::collection::vec(0u8..3, POOL.len()),
            etp in any::<bool>(), itp in any::<bool>(), ranged in any::<bool>(),
            via in prop_oneof![Just(Via::ClusterIp), Just(Via::NodePort), Just(Via::ExternalIp), Just(Via::LoadBalancer)],
            src in prop_oneof![Just(POD), Just(NODE1), Just(CLIENT), Just(Ipv4Addr::new(203, 0, 113, 2))],
        ) {
            let t = table(&states, etp, itp, ranged);
            let (dst, port) = target(via);
            prop_assert_eq!(flow(&t, tcp(src, dst, port)), model(&states, etp, itp, ranged, via, src));
        }

        #[test]
        fn the_pick_is_a_candidate_and_affinity_holds(
            states in proptest::collection::vec(0u8..3, POOL.len()),
            etp in any::<bool>(), hashes in proptest::collection::vec(any::<u32>(), 1..8),
        ) {
            let mut t = table(&states, etp, false, false);
            let mut spec = t.services.by_cluster_ip(PROTO_TCP, VIP, 80).unwrap().spec.clone();
            spec.affinity_timeout = Some(60);
            t.services.insert(Service::carrying(spec, None));
            let s = t.services.by_cluster_ip(PROTO_TCP, VIP, 80).unwrap();
            let ServiceVerdict::Endpoints { candidates, .. } = decide(&t, &tcp(CLIENT, NODE1, 31266)) else {
                return Ok(());
            };
            let aff = Affinity::new(16);
            let now = Now::from_secs(10);
            // A dry run keeps nothing.
            choose(&candidates, s, CLIENT, hashes[0], &aff, now, false);
            prop_assert!(aff.is_empty());
            let first = choose(&candidates, s, CLIENT, hashes[0], &aff, now, true);
            prop_assert!(candidates.to_vec().contains(&first.endpoint));
            prop_assert_eq!(candidates.nth(first.index), (first.hit, first.endpoint));
            prop_assert_eq!(s.spec.all_endpoints().nth(first.hit), Some(&first.endpoint));
            for h in &hashes[1..] {
                let again = choose(&candidates, s, CLIENT, *h, &aff, now, true);
                prop_assert_eq!((again.endpoint, again.by), (first.endpoint, Pick::Affinity));
            }
        }
    }
}
