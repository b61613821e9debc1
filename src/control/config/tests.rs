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
    assert_eq!(c.vtep_ip(), Ipv4Addr::new(10, 244, 1, 0));
    assert_eq!((c.node.vni, c.node.vxlan_port, c.node.mtu), (1, 8472, 1450));
    assert_eq!(c.node.host_mac, MacAddr::CALICO_HOST);
    assert_eq!(c.pods[0].mac().to_string(), "0a:58:0a:f4:01:05");
    assert_eq!(c.pods[0].netns_path(), PathBuf::from("/run/netns/uc-ghost-ep1"));
    assert!(c.pods[0].port_name().starts_with("cali") && c.pods[0].port_name().len() == 15);
    assert_eq!(c.masquerade_ports(), (61000, 65534));
    assert_eq!(c.node_info().host_port_mac.to_string(), "02:00:ac:10:f0:83");
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
    assert_eq!(Config::parse(CENTOS7_1).unwrap().node_info().vxlan_accept, VxlanAccept::Any);
    let with =
        |v: &str| CENTOS7_1.replacen("vtep_mac = \"8a:40", &format!("vxlan_accept = \"{v}\"\nvtep_mac = \"8a:40"), 1);
    assert_eq!(Config::parse(&with("peers")).unwrap().node_info().vxlan_accept, VxlanAccept::Peers);
    assert_eq!(Config::parse(&with("any")).unwrap().node_info().vxlan_accept, VxlanAccept::Any);
    assert_eq!(
        Config::parse(&with("fdb")).unwrap_err().to_string(),
        "node.vxlan_accept: 'fdb' is neither 'any' nor 'peers'"
    );
}
