//! Issue "ucanal core" (§3.1 of the article), end to end in network namespaces:
//! two ucanal nodes, pods on TAP, proxy-ARP, VXLAN on the LAN, runtime pods, bad input.

mod common;

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

use common::harness::Suite;
use common::{Lab, read_pcap, text, wait_until};

fn main() -> ExitCode {
    let mut suite = Suite::new();
    suite
        .group("two_ucanal_nodes", &["ping", "curl", "tcpdump"], || Lab::up("tc", &[]))
        .phase("pod_to_pod_ping_and_http", pod_to_pod)
        .phase("the_pods_view_is_calicos", the_pods_view)
        .phase("tables_read_like_the_kernel_tools", tables_like_the_kernel_tools)
        .phase("reaching_the_daemon", reaching_the_daemon)
        .phase("vxlan_on_the_lan", vxlan_on_the_lan)
        .phase("runtime_pods", runtime_pods)
        .phase("garbage_vxlan", garbage_vxlan);
    suite.run()
}

/// Pod to pod, both directions: ping and HTTP.
fn pod_to_pod(lab: &Lab) {
    assert!(lab.ping("ghost-ep1", "10.244.0.74", 3), "ping ghost-ep1 -> 10.244.0.74");
    assert!(lab.ping("ghost-ep2", "10.244.1.5", 3), "ping ghost-ep2 -> 10.244.1.5");
    assert!(
        lab.curl("ghost-ep1", "http://10.244.0.74:2368/").unwrap().contains("ghost-ep2"),
        "HTTP ghost-ep1 -> ghost-ep2"
    );
    assert!(
        lab.curl("ghost-ep2", "http://10.244.1.5:2368/").unwrap().contains("ghost-ep1"),
        "HTTP ghost-ep2 -> ghost-ep1"
    );
}

/// The pod's view is Calico's.
fn the_pods_view(lab: &Lab) {
    let routes = text(&lab.exec("ghost-ep1", &["ip", "route"]).stdout);
    assert!(routes.contains("default via 169.254.1.1 dev eth0"), "pod routes:\n{routes}");
    assert!(routes.contains("169.254.1.1 dev eth0 scope link"), "pod routes:\n{routes}");
    let neigh = text(&lab.exec("ghost-ep1", &["ip", "neigh"]).stdout);
    assert!(neigh.contains("169.254.1.1 dev eth0 lladdr ee:ee:ee:ee:ee:ee"), "pod neighbours:\n{neigh}");
    let addr = text(&lab.exec("ghost-ep1", &["ip", "-4", "addr", "show", "eth0"]).stdout);
    assert!(addr.contains("inet 10.244.1.5/32") && addr.contains("mtu 1450"), "pod eth0:\n{addr}");
}

/// ucanal's own tables read like the kernel tools of the article.
fn tables_like_the_kernel_tools(lab: &Lab) {
    let r = lab.ucanal_ok("centos7-1", &["show", "routes"]);
    assert!(r.contains("10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink"), "{r}");
    let n = lab.ucanal_ok("centos7-1", &["show", "neigh"]);
    assert!(n.contains("10.244.0.0 dev flannel.1 lladdr 32:a9:79:6d:0b:b1 PERMANENT"), "{n}");
    let f = lab.ucanal_ok("centos7-1", &["show", "fdb"]);
    assert!(f.contains("32:a9:79:6d:0b:b1 dev flannel.1 dst 172.16.240.132 self permanent"), "{f}");
}

/// One obvious way to reach a node's daemon: from inside the node's namespace with no
/// flag (its abstract socket), or `--node NAME` from anywhere; non-root is refused by name.
fn reaching_the_daemon(lab: &Lab) {
    use std::process::Command;
    let inside = lab.exec("centos7-1", &[common::ucanal_bin().to_str().unwrap(), "show", "routes"]);
    let r = text(&inside.stdout);
    assert!(inside.status.success(), "ucanal show routes inside centos7-1: {}", text(&inside.stderr));
    assert!(r.contains("10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink"), "centos7-1's routes:\n{r}");
    let inside2 = lab.exec("centos7-2", &[common::ucanal_bin().to_str().unwrap(), "show", "routes"]);
    assert!(text(&inside2.stdout).contains("10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink"), "centos7-2's routes");

    let by_node = |arg: &str| {
        Command::new(common::ucanal_bin())
            .env("LAB_PREFIX", &lab.prefix)
            .env_remove("UCANAL_SOCKET")
            .args(["--node", arg, "show", "node", "--json"])
            .output()
            .unwrap()
    };
    for arg in ["centos7-2".to_string(), lab.ns("centos7-2"), format!("/run/netns/{}", lab.ns("centos7-2"))] {
        let out = by_node(&arg);
        assert!(out.status.success(), "--node {arg}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("\"centos7-2\""),
            "--node {arg} reached another node: {}",
            text(&out.stdout)
        );
    }
    let out = by_node("no-such-node");
    assert!(!out.status.success() && text(&out.stderr).contains("no network namespace"), "{}", text(&out.stderr));

    // Not root: refused by name, on the abstract socket and on the socket file. The binary
    // is copied where any user may run it (the checkout may sit in root's home).
    let bin = std::env::temp_dir().join(format!("{}ucanal", lab.prefix));
    std::fs::copy(common::ucanal_bin(), &bin).unwrap();
    let nobody = |argv: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &lab.ns("centos7-1"), "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]);
        c.arg(&bin).args(argv).output().unwrap()
    };
    for argv in [vec!["show", "routes"], vec!["--socket", lab.socket("centos7-1").to_str().unwrap(), "show", "routes"]]
    {
        let out = nobody(&argv);
        let err = text(&out.stderr);
        assert!(
            !out.status.success() && err.contains("permission denied: the ucanal API is root-only"),
            "{argv:?}: {err}"
        );
    }
}

/// On the LAN, traffic between .131 and .132 is VXLAN on UDP 8472 with VNI 1.
fn vxlan_on_the_lan(lab: &Lab) {
    let pcap = format!("/tmp/{}vxlan.pcap", lab.prefix);
    let mut dump = lab.spawn("lan", &format!("exec tcpdump -i br0 -n -U -w {pcap} -c 6 udp port 8472"));
    // tcpdump needs a moment to attach.
    std::thread::sleep(Duration::from_millis(700));
    assert!(lab.ping("ghost-ep1", "10.244.0.74", 3));
    let done = wait_until(Duration::from_secs(5), || dump.try_wait().ok().flatten().is_some());
    if done.is_none() {
        let _ = dump.kill();
    }
    let _ = dump.wait();
    let frames = read_pcap(std::path::Path::new(&pcap));
    let _ = std::fs::remove_file(&pcap);
    assert!(frames.len() >= 4, "captured {} VXLAN frames, want the 3 pings and replies", frames.len());
    let mut directions = std::collections::HashSet::new();
    for f in &frames {
        let p = etherparse::SlicedPacket::from_ethernet(f).expect("outer frame parses");
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!("outer is not IPv4") };
        let (src, dst) = (ip.header().source_addr(), ip.header().destination_addr());
        let Some(etherparse::TransportSlice::Udp(udp)) = &p.transport else { panic!("outer is not UDP") };
        assert_eq!(udp.destination_port(), 8472, "VXLAN on UDP 8472");
        assert_ne!(udp.source_port(), 8472, "the outer source port comes from a flow hash");
        let payload = udp.payload();
        assert_eq!(&payload[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0], "VXLAN header with I flag and VNI 1");
        let inner = etherparse::SlicedPacket::from_ethernet(&payload[8..]).expect("inner frame parses");
        let Some(etherparse::LinkSlice::Ethernet2(eth)) = &inner.link else { panic!("inner is not Ethernet") };
        let Some(etherparse::NetSlice::Ipv4(iip)) = &inner.net else { panic!("inner is not IPv4") };
        let (isrc, idst) = (iip.header().source_addr(), iip.header().destination_addr());
        let pair = (src, dst, isrc, idst);
        let n1 = Ipv4Addr::new(172, 16, 240, 131);
        let n2 = Ipv4Addr::new(172, 16, 240, 132);
        let p1 = Ipv4Addr::new(10, 244, 1, 5);
        let p2 = Ipv4Addr::new(10, 244, 0, 74);
        assert!(pair == (n1, n2, p1, p2) || pair == (n2, n1, p2, p1), "unexpected outer/inner addresses {pair:?}");
        let (vtep1, vtep2) = ([0x8a, 0x40, 0x90, 0x1c, 0xcf, 0x7e], [0x32, 0xa9, 0x79, 0x6d, 0x0b, 0xb1]);
        if src == n1 {
            assert_eq!((eth.source(), eth.destination()), (vtep1, vtep2), "inner MACs as flannel sets them");
        } else {
            assert_eq!((eth.source(), eth.destination()), (vtep2, vtep1), "inner MACs as flannel sets them");
        }
        directions.insert(src);
    }
    assert_eq!(directions.len(), 2, "VXLAN seen in both directions");
}

/// `ucanal pod add` of a third pod on centos7-2 makes it reachable from ghost-ep1
/// within a second; `pod del` makes it unreachable and removes its TAP.
fn runtime_pods(lab: &Lab) {
    let ns = lab.ns("ghost-ep3");
    assert!(std::process::Command::new("ip").args(["netns", "add", &ns]).status().unwrap().success());
    let _ = lab.exec("ghost-ep3", &["ip", "link", "set", "lo", "up"]);
    let before = std::time::Instant::now();
    lab.ucanal_ok("centos7-2", &["pod", "add", "--name", "ghost-ep3", "--netns", &ns, "--ip", "10.244.0.80"]);
    let reachable = wait_until(Duration::from_secs(3), || {
        lab.exec("ghost-ep1", &["ping", "-c1", "-W", "0.3", "10.244.0.80"]).status.success()
    });
    let took = before.elapsed();
    assert!(reachable.is_some(), "ghost-ep3 never became reachable");
    assert!(took <= Duration::from_millis(1000), "ghost-ep3 reachable only after {took:?}");
    assert!(lab.ucanal_ok("centos7-2", &["show", "pods"]).contains("ghost-ep3"));

    lab.ucanal_ok("centos7-2", &["pod", "del", "--name", "ghost-ep3"]);
    let tap_gone =
        wait_until(Duration::from_secs(2), || !lab.exec("ghost-ep3", &["ip", "link", "show", "eth0"]).status.success());
    assert!(tap_gone.is_some(), "the TAP (eth0) of ghost-ep3 is still there after pod del");
    assert!(
        !lab.exec("ghost-ep1", &["ping", "-c1", "-W", "1", "10.244.0.80"]).status.success(),
        "ghost-ep3 still answers"
    );
    assert!(!lab.ucanal_ok("centos7-2", &["show", "pods"]).contains("ghost-ep3"));
    // Errors name the fault.
    let out = lab.ucanal("centos7-2", &["pod", "del", "--name", "ghost-ep3"]);
    assert!(!out.status.success() && text(&out.stderr).contains("no pod ghost-ep3"), "{}", text(&out.stderr));
    let out = lab.ucanal("centos7-2", &["pod", "add", "--name", "x", "--netns", &ns, "--ip", "10.244.9.9"]);
    assert!(!out.status.success() && text(&out.stderr).contains("outside node.pod_cidr"), "{}", text(&out.stderr));
    let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).status();
}

/// Truncated and garbage datagrams to 8472 are counted drops and traffic keeps flowing.
fn garbage_vxlan(lab: &Lab) {
    let before = lab.counters("centos7-1");
    let send = |from: &str, payloads: &str| {
        let py = format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor p in [{payloads}]:\n    s.sendto(p,('172.16.240.131',8472))\n"
        );
        let out = lab.exec(from, &["python3", "-c", &py]);
        assert!(out.status.success(), "sending garbage: {}", text(&out.stderr));
    };
    // From the known peer: truncated header, reserved bits, wrong VNI, truncated inner frame.
    send(
        "centos7-2",
        r"b'\x08\x00', b'\x08\x00\x00\x01\x00\x00\x01\x00'+b'x'*40, b'\x08\x00\x00\x00\x00\x00\x07\x00'+b'x'*60, b'\x08\x00\x00\x00\x00\x00\x01\x00'+b'\x8a'*10",
    );
    // From a stranger: well-formed header, unknown sender (decapsulated, as flannel.1 does,
    // and counted), an inner frame to no MAC of ours (dropped, as flannel.1 does).
    send("client", r"b'\x08\x00\x00\x00\x00\x00\x01\x00'+b'\x00'*60");
    let after = lab.counters("centos7-1");
    let delta = |name: &str| after["drops"][name].as_u64().unwrap() - before["drops"][name].as_u64().unwrap();
    let stranger = |a: &serde_json::Value| {
        a["decisions"]["vxlan_from_unknown_peer"].as_u64().unwrap()
            - before["decisions"]["vxlan_from_unknown_peer"].as_u64().unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(2), || {
            let a = lab.counters("centos7-1");
            let d = |n: &str| a["drops"][n].as_u64().unwrap() - before["drops"][n].as_u64().unwrap();
            d("vxlan_malformed") >= 2
                && d("vxlan_bad_vni") >= 1
                && d("vxlan_inner_malformed") >= 1
                && d("vxlan_inner_dmac") >= 1
                && stranger(&a) >= 1
        })
        .is_some(),
        "garbage not counted: malformed {} bad_vni {} inner {} inner_dmac {} from_unknown_peer {}",
        delta("vxlan_malformed"),
        delta("vxlan_bad_vni"),
        delta("vxlan_inner_malformed"),
        delta("vxlan_inner_dmac"),
        stranger(&after)
    );
    assert!(lab.ping("ghost-ep1", "10.244.0.74", 2), "traffic flows after garbage");
    assert!(lab.curl("ghost-ep2", "http://10.244.1.5:2368/").is_ok(), "HTTP flows after garbage");
}
