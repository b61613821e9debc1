use std::path::Path;

use super::*;

const ARTICLE: &str = include_str!("../../../netns-scripts/topologies/article.yaml");
const MIXED: &str = include_str!("../../../netns-scripts/topologies/mixed.yaml");
const CLUSTER: &str = include_str!("../../../netns-scripts/topologies/cluster-16.yaml");

fn dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/netns-scripts/topologies"))
}

fn err(text: &str) -> TopologyError {
    load_str(text, dir()).unwrap_err()
}

#[test]
fn the_article_lab_plans_lib_sh_s_own_arrays() {
    let l = load_str(ARTICLE, dir()).unwrap();
    let p = plan::bash(&l);
    for line in [
        "LAB_NODES=('centos7-1' 'centos7-2')",
        "declare -gA LAB_NODE_IP=([centos7-1]='172.16.240.131' [centos7-2]='172.16.240.132')",
        "declare -gA LAB_NODE_SUBNET=([centos7-1]='10.244.1.0/24' [centos7-2]='10.244.0.0/24')",
        "declare -gA LAB_NODE_VTEP_MAC=([centos7-1]='8a:40:90:1c:cf:7e' [centos7-2]='32:a9:79:6d:0b:b1')",
        "declare -gA LAB_POD_IP=([ghost-ep1]='10.244.1.5' [ghost-ep2]='10.244.0.74')",
        "LAB_SERVICES=('default/ghost tcp 10.250.0.40 2368 31266 10.244.0.74:2368,10.244.1.5:2368')",
        "declare -gA LAB_POD_LABELS=([ghost-ep1]='app=ghost' [ghost-ep2]='app=ghost')",
        "LAB_TOPOLOGY_ETCD=0",
    ] {
        assert!(p.lines().any(|l| l == line), "{line}\n{p}");
    }
}

#[test]
fn the_mixed_lab_allocates_and_overrides() {
    let l = load_str(MIXED, dir()).unwrap();
    let p = plan::bash(&l);
    assert!(p.contains("[web-1]='10.244.2.5' [web-2]='10.244.2.6'"), "{p}");
    assert!(p.contains("[centos7-3]='workers = 1'"), "{p}");
    assert!(p.contains("LAB_LAN_MEMBERS=('backplane centos7-1 eth1 192.168.77.131/24' 'backplane centos7-3 eth1 192.168.77.133/24')"), "{p}");
    assert!(p.contains("[centos7-2]='kernel'"));
    assert!(p.contains("[web-1]='shop'") && p.contains("[web-1]='http:2368/TCP'"), "{p}");
    let g = dot::graph(&l.topology);
    assert!(g.contains("\"centos7-1\" -- \"centos7-2\" [style=dashed"), "{g}");
    assert!(g.contains("\"lan backplane\""), "{g}");
    assert!(g.contains("eth1 192.168.77.133"), "{g}");
}

#[test]
fn the_cluster_lab_goes_through_etcd() {
    let l = load_str(CLUSTER, dir()).unwrap();
    assert_eq!(l.topology.nodes.len(), 16);
    let p = plan::bash(&l);
    assert!(p.contains("LAB_TOPOLOGY_ETCD=1") && p.contains("LAB_CLUSTER_AUTO=0"));
    assert!(p.contains("[node02]='10.244.0.0/24'") && p.contains("[pod02]='10.244.0.74'"));
    assert!(p.contains("LAB_SERVICES=()"));
}

#[test]
fn errors_name_the_field_where_it_stands() {
    let bad_ip = ARTICLE.replace("ip: 172.16.240.132", "ip: 172.16.240.300");
    let e = err(&bad_ip);
    assert_eq!((e.mark.line, e.mark.col, e.field.as_str()), (23, 11, "topology.nodes.centos7-2.ip"), "{e}");
    let e = err(&ARTICLE.replace("kind: ucanal\n      ip: 172.16.240.132", "kind: ucanl\n      ip: 172.16.240.132"));
    assert_eq!((e.mark.line, e.field.as_str()), (22, "topology.nodes.centos7-2.kind"), "{e}");
    assert!(e.problem.contains("ucanal or kernel"));
    let e = err(&ARTICLE.replace("      vtep-mac: 32:a9", "      vtepmac: 32:a9"));
    assert_eq!((e.mark.line, e.mark.col, e.field.as_str()), (26, 7, "topology.nodes.centos7-2.vtepmac"), "{e}");
    let e = err(&ARTICLE.replace("ip: 10.244.0.74", "ip: 10.244.1.5"));
    assert_eq!(e.field, "topology.nodes.centos7-2.pods.ghost-ep2.ip", "{e}");
    let e = err(&ARTICLE.replace("[client:eth0, centos7-1:ens33, centos7-2:ens33]", "[client:eth0, centos7-1:ens33]"));
    assert_eq!(e.field, "topology.links[0].endpoints", "{e}");
    let e = err(&ARTICLE.replace("  - ../manifests/ghost.yaml", "  - ../manifests/nope.yaml"));
    assert_eq!((e.mark.line, e.field.as_str()), (39, "manifests[0]"), "{e}");
    let e = err(&MIXED.replace("dataplane: {workers: 1}", "dataplane: {wrokers: 1}"));
    assert_eq!(e.field, "topology.nodes.centos7-3.config.dataplane.wrokers", "{e}");
    assert_eq!((e.mark.line, e.mark.col), (35, 21), "{e}");
    assert!(e.problem.starts_with("unknown field `wrokers`, expected one of `workers`"), "{e}");
    let e = err(&MIXED.replace("pod-cidr: 10.244.2.0/24", "pod-cidr: leased"));
    assert!(e.problem.contains("etcd: true"), "{e}");
    let e = err("name: x\ntopology:\n  nodes: {a: {kind: ucanal\n");
    assert_eq!(e.field, "(syntax)", "{e}");
    assert!(e.to_string().starts_with(&format!("{}:{}: (syntax): ", e.mark.line, e.mark.col)), "{e}");
}

#[test]
fn overlapping_subnets_are_refused() {
    let e = err(&ARTICLE
        .replace("pod-cidr: 10.244.0.0/24", "pod-cidr: 10.244.1.0/25")
        .replace("ip: 10.244.0.74", "ip: 10.244.1.74"));
    assert_eq!(e.field, "topology.nodes.centos7-2.pod-cidr", "{e}");
    assert!(e.problem.contains("overlaps centos7-1's"), "{e}");
}
