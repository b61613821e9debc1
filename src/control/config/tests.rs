//! Tests of the configuration file: parsing, defaults and validation errors.

use super::*;

pub const CENTOS7_1: &str = r#"
[node]
name = "centos7-1"
uplink = "ens33"
node_ip = "172.16.240.131"
pod_cidr = "10.244.1.0/24"
cluster_cidr = "10.244.0.0/16"
service_cidr = "10.250.0.0/16"
vtep_mac = "8a:40:90:1c:cf:7e"

[api]
socket = "/run/ucanal/uc-centos7-1.sock"

[[peers]]
name = "centos7-2"
subnet = "10.244.0.0/24"
public_ip = "172.16.240.132"
vtep_mac = "32:a9:79:6d:0b:b1"

[[pods]]
name = "ghost-ep1"
netns = "uc-ghost-ep1"
ip = "10.244.1.5"

[[services]]
name = "default/ghost"
protocol = "tcp"
cluster_ip = "10.250.0.40"
port = 2368
node_port = 31266
endpoints = ["10.244.0.74:2368", "10.244.1.5:2368"]
"#;

#[test]
fn article_node_parses_with_defaults() {
    let c = Config::parse(CENTOS7_1).unwrap();
    assert_eq!(c.vtep_ip(), Some(Ipv4Addr::new(10, 244, 1, 0)));
    assert_eq!((c.node.vni, c.node.vxlan_port, c.node.mtu), (1, 8472, 1450));
    assert_eq!(c.node.host_mac, MacAddr::CALICO_HOST);
    assert_eq!(c.pods[0].mac().to_string(), "0a:58:0a:f4:01:05");
    assert_eq!(c.pods[0].netns_path(), PathBuf::from("/run/netns/uc-ghost-ep1"));
    assert!(c.pods[0].port_name().starts_with("cali") && c.pods[0].port_name().len() == 15);
    assert_eq!(c.masquerade_ports(), (61000, 65534));
    assert_eq!(c.node_info().unwrap().host_port_mac.to_string(), "02:00:ac:10:f0:83");
}

fn bad(from: &str, to: &str) -> String {
    let text = CENTOS7_1.replacen(from, to, 1);
    assert_ne!(text, CENTOS7_1, "fixture did not contain {from}");
    Config::parse(&text).unwrap_err().to_string()
}

#[test]
fn techniques_follow_offloads_unless_switched_one_by_one() {
    let d = |extra: &str| {
        Config::parse(&CENTOS7_1.replacen("[api]", &format!("[dataplane]\n{extra}\n\n[api]"), 1))
            .unwrap()
            .dataplane
            .techniques()
    };
    let all = Techniques { tap_offloads: true, udp_gso: true, udp_gro: true, gro: true };
    assert_eq!(Config::parse(CENTOS7_1).unwrap().dataplane.techniques(), all);
    assert_eq!(d("gro = false"), Techniques { gro: false, ..all });
    assert_eq!(d("udp_gso = false"), Techniques { udp_gso: false, ..all });
    assert_eq!(d("offloads = false"), Techniques { tap_offloads: false, udp_gso: false, udp_gro: false, gro: false });
    assert_eq!(
        d("offloads = false\nudp_gro = true"),
        Techniques { tap_offloads: false, udp_gso: false, udp_gro: true, gro: false }
    );
    // Without TAP offloads there is no GSO frame to hand a pod: gro follows it off.
    assert_eq!(d("tap_offloads = false"), Techniques { tap_offloads: false, gro: false, ..all });
}

#[test]
fn errors_name_the_field() {
    assert!(
        bad("ip = \"10.244.1.5\"", "ip = \"10.245.1.5\"")
            .starts_with("pods[0].ip: 10.245.1.5 is outside node.pod_cidr")
    );
    assert!(bad("ip = \"10.244.1.5\"", "ip = \"10.244.1.0\"").starts_with("pods[0].ip:"));
    assert!(
        bad("subnet = \"10.244.0.0/24\"", "subnet = \"10.244.1.0/24\"")
            .starts_with("peers[0].subnet: 10.244.1.0/24 overlaps")
    );
    assert!(
        bad("vtep_mac = \"32:a9:79:6d:0b:b1\"", "vtep_mac = \"8a:40:90:1c:cf:7e\"").starts_with("peers[0].vtep_mac")
    );
    assert!(bad("cluster_ip = \"10.250.0.40\"", "cluster_ip = \"10.244.0.40\"").starts_with("services[0].cluster_ip"));
    assert!(
        bad("\"10.244.0.74:2368\", ", "\"10.244.1.5:2368\", ")
            .starts_with("services[0].endpoints[1]: 10.244.1.5:2368 is listed twice")
    );
    assert!(bad("pod_cidr = \"10.244.1.0/24\"", "pod_cidr = \"10.245.1.0/24\"").starts_with("node.pod_cidr"));
    assert!(bad("uplink = \"ens33\"", "uplink = \"a-very-long-interface-name\"").starts_with("node.uplink"));
    assert!(
        bad("node_port = 31266", "node_port = 62000")
            .starts_with("services[0].node_port: 62000 is inside node.masquerade_ports")
    );
    let unknown = bad("vtep_mac = \"8a:40:90:1c:cf:7e\"", "vtep_mac = \"8a:40:90:1c:cf:7e\"\nvtepmac = 1");
    assert!(unknown.contains("unknown field `vtepmac`"), "{unknown}");
    let mac = bad("vtep_mac = \"8a:40:90:1c:cf:7e\"", "vtep_mac = \"8a:40:90:1c:cf\"");
    assert!(mac.contains("not a MAC address"), "{mac}");
    let cidr = bad("pod_cidr = \"10.244.1.0/24\"", "pod_cidr = \"10.244.1.5/24\"");
    assert!(cidr.contains("host bits"), "{cidr}");
    let proto = bad("protocol = \"tcp\"", "protocol = \"sctp\"");
    assert!(proto.contains("sctp"), "{proto}");
}

#[test]
fn vxlan_accept_defaults_to_the_kernels_any_and_names_a_bad_value() {
    use crate::core::tables::VxlanAccept;
    assert_eq!(Config::parse(CENTOS7_1).unwrap().node_info().unwrap().vxlan_accept, VxlanAccept::Any);
    let with =
        |v: &str| CENTOS7_1.replacen("vtep_mac = \"8a:40", &format!("vxlan_accept = \"{v}\"\nvtep_mac = \"8a:40"), 1);
    assert_eq!(Config::parse(&with("peers")).unwrap().node_info().unwrap().vxlan_accept, VxlanAccept::Peers);
    assert_eq!(Config::parse(&with("any")).unwrap().node_info().unwrap().vxlan_accept, VxlanAccept::Any);
    assert_eq!(
        Config::parse(&with("fdb")).unwrap_err().to_string(),
        "node.vxlan_accept: 'fdb' is neither 'any' nor 'peers'"
    );
}

const CLUSTER: &str = "[cluster]\netcd_endpoints = [\"http://172.16.240.10:2379\"]\n";

/// The article's node without `pod_cidr`: only a cluster member may leave it out.
fn without_pod_cidr(cluster: bool) -> String {
    let text = CENTOS7_1.replacen("pod_cidr = \"10.244.1.0/24\"\n", "", 1).replacen("[[peers]]", "[[xpeers]]", 1);
    // Peers come from the leases in a cluster; drop the static one with its keys.
    let text = match text.split_once("[[xpeers]]") {
        Some((head, tail)) => format!("{head}{}", &tail[tail.find("[[pods]]").unwrap()..]),
        None => text,
    };
    if cluster { format!("{text}\n{CLUSTER}") } else { text }
}

#[test]
fn pod_cidr_may_be_left_out_only_in_a_cluster() {
    let e = Config::parse(&without_pod_cidr(false)).unwrap_err().to_string();
    assert_eq!(
        e,
        "node.pod_cidr: missing: only a node with [cluster] may leave it out (it then leases a free subnet from etcd)"
    );
    let c = Config::parse(&without_pod_cidr(true)).unwrap();
    assert_eq!((c.node.pod_cidr, c.vtep_ip()), (None, None));
    assert!(c.node_info().unwrap_err().to_string().contains("not leased from etcd yet"));
    // A pod outside the cluster CIDR is refused at once; its subnet waits for the lease.
    let e = Config::parse(&without_pod_cidr(true).replacen("10.244.1.5", "10.245.1.5", 1)).unwrap_err();
    assert_eq!(e.to_string(), "pods[0].ip: 10.245.1.5 is outside node.cluster_cidr 10.244.0.0/16");
}

#[test]
fn leased_pod_cidr_is_checked_against_every_pod() {
    let c = Config::parse(&without_pod_cidr(true)).unwrap();
    let leased = c.clone().with_leased_pod_cidr("10.244.1.0/24".parse().unwrap()).unwrap();
    assert_eq!(leased.node.pod_cidr, Some("10.244.1.0/24".parse().unwrap()));
    assert_eq!(leased.vtep_ip(), Some(Ipv4Addr::new(10, 244, 1, 0)));
    assert_eq!(leased.node_info().unwrap().pod_cidr.to_string(), "10.244.1.0/24");
    let e = c.clone().with_leased_pod_cidr("10.244.7.0/24".parse().unwrap()).unwrap_err();
    assert_eq!(e.field, "pods[0].ip");
    assert_eq!(
        e.to_string(),
        "pods[0].ip: pod ghost-ep1 at 10.244.1.5 is outside 10.244.7.0/24, the subnet this node leased from etcd"
    );
    // The whole config is checked again with the subnet: a /31 is too small.
    let e = c.with_leased_pod_cidr("10.244.1.4/31".parse().unwrap()).unwrap_err();
    assert!(e.to_string().contains("too small for pods"), "{e}");
}
