//! A ucanal node and a kernel node (flannel.1, cali veth with proxy_arp, kube-proxy
//! iptables) talk to each other: ucanal's VXLAN is byte-compatible with flannel.1.

mod common;

use common::Lab;

#[test]
fn ucanal_node_with_kernel_node() {
    if !common::require_netns(&["ping", "curl", "iptables"]) {
        return;
    }
    let lab = Lab::up("tm", &["--node2", "kernel"]);
    assert!(lab.ping("ghost-ep1", "10.244.0.74", 3), "ping ucanal pod -> kernel pod");
    assert!(lab.ping("ghost-ep2", "10.244.1.5", 3), "ping kernel pod -> ucanal pod");
    assert!(
        lab.curl("ghost-ep1", "http://10.244.0.74:2368/").unwrap().contains("ghost-ep2"),
        "HTTP ucanal pod -> kernel pod"
    );
    assert!(
        lab.curl("ghost-ep2", "http://10.244.1.5:2368/").unwrap().contains("ghost-ep1"),
        "HTTP kernel pod -> ucanal pod"
    );

    // NodePort on the ucanal node reaches ghost-ep2 on the kernel node (masqueraded to
    // 10.244.1.0 over VXLAN, as the article's conntrack shows).
    let mut pages = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let page = lab.curl("client", "http://172.16.240.131:31266/").expect("NodePort on centos7-1");
        *pages.entry(page.split_whitespace().next().unwrap_or("").to_string()).or_insert(0) += 1;
    }
    assert!(pages.contains_key("ghost-ep2") && pages.contains_key("ghost-ep1"), "NodePort pages {pages:?}");
    let ct = lab.ucanal_ok("centos7-1", &["show", "conntrack"]);
    assert!(ct.contains("src=10.244.0.74 dst=10.244.1.0 sport=2368"), "{ct}");
    // And the kernel node's own NodePort (iptables) reaches the ucanal node's pod.
    let mut seen = false;
    for _ in 0..20 {
        seen |= lab
            .curl("client", "http://172.16.240.132:31266/")
            .expect("NodePort on the kernel node")
            .contains("ghost-ep1");
    }
    assert!(seen, "the kernel node's NodePort never reached ghost-ep1 on the ucanal node");
}
