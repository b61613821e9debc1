//! The policy stage through the walk, with real frames: enforced at the first packet of
//! a flow on its final tuple, the verdict kept in the flow's entry (replies pass, an
//! established packet does no policy work), a policy change cutting running flows by
//! generation, the trace's policy step, `Log` records, SCTP and ICMP errors.

use super::*;
use crate::core::policy::decode::decode_all;
use crate::core::policy::recheck::recheck;
use crate::core::policy::{PolicyEngine, Verdict};
use crate::wire::ipv4::PROTO_SCTP;

/// The article's pods with identities: ghost-ep1 and ghost-ep2 serve (app=ghost),
/// ghost-ep3 is a client (app=client); ep1 and ep3 are on this node.
const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: ghost-ep1, namespace: default, labels: {app: ghost}}
spec: {nodeName: centos7-1, containers: [{ports: [{containerPort: 2368, name: http}]}]}
status: {podIP: 10.244.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: ghost-ep3, namespace: default, labels: {app: client}}
spec: {nodeName: centos7-1}
status: {podIP: 10.244.1.7}
---
apiVersion: v1
kind: Pod
metadata: {name: ghost-ep2, namespace: default, labels: {app: ghost}}
spec: {nodeName: centos7-2, containers: [{ports: [{containerPort: 2368, name: http}]}]}
status: {podIP: 10.244.0.74}
"#;

/// Ghost pods take ingress from clients only, on their named port.
const GHOST_FROM_CLIENTS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ghost-from-clients, namespace: default}
spec:
  podSelector: {matchLabels: {app: ghost}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: http}]}]
"#;

const DENY_ALL: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ghost-from-clients, namespace: default}
spec: {podSelector: {}}
"#;

fn engine(policies: &str) -> PolicyEngine {
    let mut e = PolicyEngine::new("centos7-1", "10.244.1.0/24".parse().unwrap());
    for o in decode_all(PODS).unwrap().into_iter().chain(decode_all(policies).unwrap()) {
        e.apply(o);
    }
    e
}

fn policed_lab(e: &mut PolicyEngine) -> Lab {
    let mut t = article::tables1(vec![article::ghost()]);
    t.vxlan_source_ports = vec![40001, 40002, 40003];
    t.policy = e.table();
    Lab::with_tables(t)
}

fn publish(lab: &Lab, e: &mut PolicyEngine) {
    let mut t = (*lab.dp.tables()).clone();
    t.policy = e.table();
    lab.dp.publish(t);
}

fn synack(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), mac: MacAddr) -> Vec<u8> {
    let b = eth(mac, HOST_MAC).ipv4(src.0.octets(), dst.0.octets(), 64).tcp(src.1, dst.1, 5000, 64240).syn().ack(1001);
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

#[test]
fn ingress_is_checked_on_the_receivers_node_and_replies_pass() {
    let mut e = engine(GHOST_FROM_CLIENTS);
    let mut lab = policed_lab(&mut e);
    // ghost-ep2 (not a client) from centos7-2 over VXLAN: denied, counted, no entry.
    let syn = tcp(vtep2_mac(), vtep1_mac(), (EP2, 40000), (EP1, 2368), true, &[]);
    assert_eq!(lab.vxlan(NODE2, &from_node2(&syn[14..])), Action::Drop(DropReason::PolicyIngress));
    assert_eq!(lab.dropped(DropReason::PolicyIngress), 1);
    assert!(lab.dp.conntrack.entries(NOW).is_empty(), "a denied flow leaves no entry");
    // ghost-ep3 (a client, same node) to ghost-ep1's named port: allowed and tracked.
    let syn = tcp(EP3_MAC, HOST_MAC, (EP3, 40001), (EP1, 2368), true, &[]);
    assert_eq!(lab.port(PortId(2), &syn), Action::ToPort(PortId(1)));
    assert_checksums(&lab.out_ip());
    assert_eq!(lab.count(Counter::PolicyTracked), 1, "not NATed, tracked for its policy");
    // The rule's counters: one new flow, its first packet's bytes (IP), kept by the engine.
    let hits = e.rule_hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(
        (hits[0].0.name.as_str(), hits[0].1, hits[0].2),
        ("ghost-from-clients", crate::core::policy::Direction::Ingress, 0)
    );
    assert_eq!(hits[0].3, (1, syn.len() as u64 - 14));
    let entries = lab.dp.conntrack.entries(NOW);
    assert_eq!((entries.len(), entries[0].nat), (1, 0));
    // The SYN-ACK is a reply: it passes by the entry, though nothing allows ep1 -> ep3.
    assert_eq!(lab.port(PortId(1), &synack((EP1, 2368), (EP3, 40001), EP1_MAC)), Action::ToPort(PortId(2)));
    assert_eq!(lab.count(Counter::CtHitReply), 1);
    // Another port of ep1: not its named port.
    let syn = tcp(EP3_MAC, HOST_MAC, (EP3, 40002), (EP1, 80), true, &[]);
    assert_eq!(lab.port(PortId(2), &syn), Action::Drop(DropReason::PolicyIngress));
}

#[test]
fn egress_is_checked_on_the_senders_node() {
    let mut e = engine(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: c, namespace: default}\n\
         spec: {podSelector: {matchLabels: {app: client}}, egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]}",
    );
    let mut lab = policed_lab(&mut e);
    let syn = tcp(EP3_MAC, HOST_MAC, (EP3, 40000), (EP2, 2368), true, &[]);
    assert_eq!(lab.port(PortId(2), &syn), Action::Drop(DropReason::PolicyEgress));
    // ep1 is not isolated: its traffic is untracked, as without policy.
    let f = ping(EP1_MAC, EP1, EP2, 64, 1);
    assert!(matches!(lab.port(PortId(1), &f), Action::ToVtep { .. }));
    assert!(lab.dp.conntrack.entries(NOW).is_empty());
}

#[test]
fn policy_applies_to_the_endpoint_after_dnat() {
    let mut e = engine(GHOST_FROM_CLIENTS);
    let mut lab = policed_lab(&mut e);
    // The client reaches the ClusterIP; the flow hash picks ghost-ep1 (local).
    let sport = sport_for(&lab, EP3, (VIP, 2368), EP1);
    let syn = tcp(EP3_MAC, HOST_MAC, (EP3, sport), (VIP, 2368), true, &[]);
    assert_eq!(lab.port(PortId(2), &syn), Action::ToPort(PortId(1)));
    assert_eq!(lab.out_ip().dst(), EP1);
    // From outside through the NodePort: the source before SNAT is the client, no pod.
    let sport = sport_for(&lab, CLIENT, (NODE1, 31266), EP1);
    let host_mac = article::node1().host_port_mac;
    let syn = tcp(host_mac, HOST_MAC, (CLIENT, sport), (NODE1, 31266), true, &[]);
    assert_eq!(lab.port(PortId::HOST, &syn), Action::Drop(DropReason::PolicyIngress));
    // An ipBlock for the client's network lets it in.
    for o in decode_all(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: lan, namespace: default}\n\
         spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 172.16.240.0/24}}]}]}",
    )
    .unwrap()
    {
        e.apply(o);
    }
    publish(&lab, &mut e);
    assert_eq!(lab.port(PortId::HOST, &syn), Action::ToPort(PortId(1)));
}

#[test]
fn the_pods_own_node_always_passes() {
    let mut e = engine(DENY_ALL);
    let mut lab = policed_lab(&mut e);
    let host_mac = article::node1().host_port_mac;
    // kubelet's probe from the node's address.
    let probe = tcp(host_mac, HOST_MAC, (NODE1, 50000), (EP1, 2368), true, &[]);
    assert_eq!(lab.port(PortId::HOST, &probe), Action::ToPort(PortId(1)));
    // The probe's answer is a reply of its tracked flow, back to the host port.
    assert_eq!(lab.port(PortId(1), &synack((EP1, 2368), (NODE1, 50000), EP1_MAC)), Action::ToPort(PortId::HOST));
    // Through the host from elsewhere: not the node itself.
    let other = tcp(host_mac, HOST_MAC, (CLIENT, 50000), (EP1, 2368), true, &[]);
    assert_eq!(lab.port(PortId::HOST, &other), Action::Drop(DropReason::PolicyIngress));
}

#[test]
fn an_established_flow_does_no_policy_work_until_a_change_cuts_it() {
    let mut e = engine(GHOST_FROM_CLIENTS);
    let mut lab = policed_lab(&mut e);
    let syn = tcp(EP3_MAC, HOST_MAC, (EP3, 40000), (EP1, 2368), true, &[]);
    assert_eq!(lab.port(PortId(2), &syn), Action::ToPort(PortId(1)));
    assert_eq!(lab.port(PortId(1), &synack((EP1, 2368), (EP3, 40000), EP1_MAC)), Action::ToPort(PortId(2)));
    let ack = tcp(EP3_MAC, HOST_MAC, (EP3, 40000), (EP1, 2368), false, b"GET /");
    assert_eq!(lab.port(PortId(2), &ack), Action::ToPort(PortId(1)));
    let checked = lab.dp.tables().policy.generation();
    // Deny everything: published, but flows are only re-checked by `recheck`: the
    // established flow's packets pass by their entry, with no policy walk.
    e.apply(decode_all(DENY_ALL).unwrap().remove(0));
    publish(&lab, &mut e);
    let (a, tr) = lab.traced_port(PortId(2), &ack);
    assert_eq!(a, Action::ToPort(PortId(1)));
    assert!(!tr.steps.iter().any(|s| matches!(s, Step::Policy { .. })), "no policy step on an established packet");
    // A new connection is denied at once.
    let syn2 = tcp(EP3_MAC, HOST_MAC, (EP3, 40009), (EP1, 2368), true, &[]);
    assert_eq!(lab.port(PortId(2), &syn2), Action::Drop(DropReason::PolicyIngress));
    // The re-check cuts the running flow: its next packets are dropped both ways.
    let r = recheck(&lab.dp, NOW, checked, 0).unwrap();
    assert_eq!((r.checked, r.cut), (1, 1));
    assert_eq!(lab.count(Counter::PolicyCut), 1);
    assert_eq!(recheck(&lab.dp, NOW, r.generation, 0), None, "nothing to do for the same generation");
    let before = lab.dropped(DropReason::PolicyIngress);
    assert_eq!(lab.port(PortId(2), &ack), Action::Drop(DropReason::PolicyIngress));
    let data = tcp(EP1_MAC, HOST_MAC, (EP1, 2368), (EP3, 40000), false, b"HTTP/1.1");
    assert_eq!(lab.port(PortId(1), &data), Action::Drop(DropReason::PolicyIngress), "nor can ep1 restart it");
    assert_eq!(lab.dropped(DropReason::PolicyIngress), before + 2);
    // Allowed again: a new generation; a new connection passes.
    e.apply(decode_all(GHOST_FROM_CLIENTS).unwrap().remove(0));
    publish(&lab, &mut e);
    assert_eq!(
        lab.port(PortId(2), &tcp(EP3_MAC, HOST_MAC, (EP3, 40010), (EP1, 2368), true, &[])),
        Action::ToPort(PortId(1))
    );
    let r = recheck(&lab.dp, NOW, r.generation, 0).unwrap();
    assert_eq!(r.cut, 0, "allowed flows stay; the cut one stays cut");
}

#[test]
fn the_trace_names_direction_policy_rule_and_chain() {
    let mut e = engine(GHOST_FROM_CLIENTS);
    let mut lab = policed_lab(&mut e);
    let syn = tcp(EP3_MAC, HOST_MAC, (EP3, 40000), (EP1, 2368), true, &[]);
    let (a, tr) = lab.traced_port(PortId(2), &syn);
    assert_eq!(a, Action::ToPort(PortId(1)));
    let kinds: Vec<&str> = tr.steps.iter().map(step_kind).collect();
    assert_eq!(kinds, ["ingress", "packet", "miss", "policy", "new", "route", "deliver"]);
    let Step::Policy { dir, pod, verdict, policy, rule, chain } = &tr.steps[3] else { panic!() };
    assert_eq!((*dir, *verdict, *rule), (crate::core::policy::Direction::Ingress, Verdict::Allow, Some(0)));
    assert_eq!(pod, &("default".to_string(), "ghost-ep1".to_string()));
    assert_eq!(policy.as_ref().unwrap().name, "ghost-from-clients");
    assert_eq!(policy.as_ref().unwrap().order.as_deref(), Some("1000"));
    assert_eq!(chain, "cali-tw-calif0e9df43659");
    // A denied one, in a dry run: the end of the tier, nothing counted.
    let syn = tcp(vtep2_mac(), vtep1_mac(), (EP2, 40000), (EP1, 2368), true, &[]);
    let mut tr = Trace::dry_run();
    let a = lab.run(
        &from_node2(&syn[14..]),
        |dp, t, p, tr| dp.handle_vxlan(0, t, SocketAddrV4::new(NODE2, 45000), p, NOW, tr),
        &mut tr,
    );
    assert_eq!(a, Action::Drop(DropReason::PolicyIngress));
    assert!(tr.steps.iter().any(|s| matches!(s, Step::Policy { verdict: Verdict::EndOfTier, .. })));
    assert_eq!(lab.dropped(DropReason::PolicyIngress), 0, "a dry run counts nothing");
}

#[test]
fn a_log_rule_writes_one_record_per_new_flow() {
    let mut e = engine(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: audit}\n\
         spec: {order: 5, selector: app == 'ghost', ingress: [{action: Log, protocol: TCP}, {action: Allow}]}",
    );
    let mut lab = policed_lab(&mut e);
    let syn = tcp(EP3_MAC, HOST_MAC, (EP3, 40000), (EP1, 2368), true, &[]);
    assert_eq!(lab.port(PortId(2), &syn), Action::ToPort(PortId(1)));
    let ack = tcp(EP3_MAC, HOST_MAC, (EP3, 40000), (EP1, 2368), false, &[]);
    assert_eq!(lab.port(PortId(2), &ack), Action::ToPort(PortId(1)));
    let mut logs = Vec::new();
    lab.dp.poll_policy_log(&mut logs);
    assert_eq!(logs.len(), 1, "the new flow, not its later packets");
    assert_eq!((logs[0].policy.name.as_str(), logs[0].rule, logs[0].verdict), ("audit", 0, Verdict::Allow));
    assert_eq!((logs[0].tuple.src, logs[0].tuple.dport), (EP3, 2368));
    assert_eq!(lab.count(Counter::PolicyLogged), 1);
}

#[test]
fn not_in_sync_drops_as_not_computable() {
    let mut e = engine("");
    e.set_in_sync(false);
    let mut lab = policed_lab(&mut e);
    let f = ping(EP1_MAC, EP1, EP2, 64, 1);
    assert_eq!(lab.port(PortId(1), &f), Action::Drop(DropReason::PolicyUncomputable));
}

/// An SCTP INIT: the common header (ports, tag 0, CRC32c left 0: ucanal never NATs
/// SCTP, so it never rewrites it) and one INIT chunk.
fn sctp(src_mac: MacAddr, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    l4.extend_from_slice(&[0; 8]);
    l4.extend_from_slice(&[1, 0, 0, 20, 0, 0, 0, 1, 0, 0, 0x10, 0, 0, 1, 0, 1, 0, 0, 0, 1]);
    let mut v = Vec::new();
    etherparse::Ethernet2Header { source: src_mac.0, destination: HOST_MAC.0, ether_type: etherparse::EtherType::IPV4 }
        .write(&mut v)
        .unwrap();
    v.extend_from_slice(&ipv4_header(PROTO_SCTP, src.0, dst.0, l4.len()));
    v.extend_from_slice(&l4);
    v
}

fn ipv4_header(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, payload: usize) -> Vec<u8> {
    let mut h =
        etherparse::Ipv4Header::new(payload as u16, 64, etherparse::IpNumber(proto), src.octets(), dst.octets())
            .unwrap();
    h.header_checksum = h.calc_header_checksum();
    let mut v = Vec::new();
    h.write(&mut v).unwrap();
    v
}

/// ICMP port unreachable from `src` to `dst`, quoting `quote` (an IP packet's first 28 bytes).
fn port_unreachable(src: Ipv4Addr, dst: Ipv4Addr, quote: &[u8]) -> Vec<u8> {
    let mut err = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
    err.extend_from_slice(&quote[..28]);
    let ck = !checksum::fold(checksum::sum(&err, 0));
    err[2..4].copy_from_slice(&ck.to_be_bytes());
    let mut ip = ipv4_header(1, src, dst, err.len());
    ip.extend_from_slice(&err);
    ip
}

#[test]
fn sctp_flows_are_policed_and_their_replies_pass() {
    let mut e = engine(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: s, namespace: default}\n\
         spec: {podSelector: {matchLabels: {app: ghost}}, ingress: [{ports: [{protocol: SCTP, port: 81}]}]}",
    );
    let mut lab = policed_lab(&mut e);
    assert_eq!(lab.port(PortId(2), &sctp(EP3_MAC, (EP3, 5000), (EP1, 81))), Action::ToPort(PortId(1)));
    let out = lab.out().to_vec();
    assert_eq!(&out[14 + 20..], &sctp(EP3_MAC, (EP3, 5000), (EP1, 81))[14 + 20..], "SCTP bytes untouched");
    assert_eq!(lab.port(PortId(1), &sctp(EP1_MAC, (EP1, 81), (EP3, 5000))), Action::ToPort(PortId(2)), "the reply");
    assert_eq!(lab.port(PortId(2), &sctp(EP3_MAC, (EP3, 5000), (EP1, 80))), Action::Drop(DropReason::PolicyIngress));
    // TCP on 81 stays isolated (SCTP-only rules isolate for TCP too).
    let syn = tcp(EP3_MAC, HOST_MAC, (EP3, 40000), (EP1, 81), true, &[]);
    assert_eq!(lab.port(PortId(2), &syn), Action::Drop(DropReason::PolicyIngress));
}

#[test]
fn icmp_errors_pass_when_related_and_are_judged_alone_otherwise() {
    let mut e = engine(GHOST_FROM_CLIENTS);
    let mut lab = policed_lab(&mut e);
    // ep1 sends UDP to ep2: egress is free, the flow is tracked (ep1 has policy).
    let dgram = udp(EP1_MAC, (EP1, 5353), (EP2, 53), b"q");
    assert!(matches!(lab.port(PortId(1), &dgram), Action::ToVtep { .. }));
    // ep2's port unreachable about it comes back: related, it passes.
    let ip = port_unreachable(EP2, EP1, &dgram[14..]);
    assert_eq!(lab.vxlan(NODE2, &from_node2(&ip)), Action::ToPort(PortId(1)));
    // An error about nothing ep1 sent: ep2 is no client, ep1's ingress denies it.
    let stray = udp(EP1_MAC, (EP1, 5354), (EP2, 53), b"q");
    let ip = port_unreachable(EP2, EP1, &stray[14..]);
    assert_eq!(lab.vxlan(NODE2, &from_node2(&ip)), Action::Drop(DropReason::PolicyIngress));
}

#[test]
fn a_mid_stream_pickup_needs_both_orientations() {
    // ep3 (client) is ingress-isolated with no rule: ep1 -> ep3 would be denied.
    let mut e = engine(&format!(
        "{GHOST_FROM_CLIENTS}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: c, namespace: default}}\nspec: {{podSelector: {{matchLabels: {{app: client}}}}}}"
    ));
    let mut lab = policed_lab(&mut e);
    // A SYN ep3 -> ep1 opens the connection: allowed.
    assert_eq!(
        lab.port(PortId(2), &tcp(EP3_MAC, HOST_MAC, (EP3, 40000), (EP1, 2368), true, &[])),
        Action::ToPort(PortId(1))
    );
    // An ACK of a connection never seen: either end may have opened it: not computable.
    let ack = tcp(EP3_MAC, HOST_MAC, (EP3, 40001), (EP1, 2368), false, &[]);
    assert_eq!(lab.port(PortId(2), &ack), Action::Drop(DropReason::PolicyUncomputable));
}
