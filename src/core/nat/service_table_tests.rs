use super::*;
use crate::core::nat::service::Protocol;
use crate::wire::ipv4::{PROTO_TCP, PROTO_UDP};

use crate::core::tables::article::ghost;

#[test]
fn lookups() {
    let t = ServiceTable::build([ghost()], |_, _| Arc::default());
    let s = t.by_cluster_ip(PROTO_TCP, Ipv4Addr::new(10, 250, 0, 40), 2368).unwrap();
    assert_eq!(s.spec.name, "default/ghost");
    assert_eq!(s.endpoint_hits.len(), 2);
    assert!(t.by_cluster_ip(PROTO_UDP, Ipv4Addr::new(10, 250, 0, 40), 2368).is_none());
    assert!(t.by_cluster_ip(PROTO_TCP, Ipv4Addr::new(10, 250, 0, 40), 80).is_none());
    assert!(t.by_node_port(PROTO_TCP, 31266).is_some());
    assert!(t.by_node_port(PROTO_UDP, 31266).is_none());
}

fn svc(name: &str, ip: [u8; 4], port: u16, node_port: Option<u16>) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        protocol: Protocol::Tcp,
        cluster_ip: Ipv4Addr::from(ip),
        port,
        node_port,
        endpoints: vec!["10.244.1.5:2368".parse().unwrap()],
        ..ServiceSpec::default()
    }
}

fn filled(n: u32) -> ServiceTable {
    let specs = (0..n).map(|i| svc(&format!("bench/svc-{i}"), [10, 250, (i >> 8) as u8, i as u8], 80, None));
    ServiceTable::build(specs, |_, _| Arc::default())
}

#[test]
fn insert_replace_remove_one_service() {
    let mut t = filled(1000);
    assert_eq!(t.len(), 1000);
    assert!(t.insert(Service::carrying(ghost(), None)).is_empty());
    assert_eq!(t.len(), 1001);
    assert_eq!(t.by_node_port(PROTO_TCP, 31266).unwrap().spec.name, "default/ghost");
    // Same cluster IP:port, another NodePort: the old NodePort entry goes.
    let mut g2 = ghost();
    g2.node_port = Some(31267);
    let old = t.insert(Service::carrying(g2.clone(), None));
    assert_eq!(old.len(), 1);
    assert_eq!(t.len(), 1001);
    assert!(t.by_node_port(PROTO_TCP, 31266).is_none());
    assert_eq!(t.by_node_port(PROTO_TCP, 31267).unwrap().spec, g2);
    // Removing by a spec of another name leaves it; by its own spec takes it out.
    let mut other = g2.clone();
    other.name = "default/other".into();
    assert!(t.remove(&other).is_none());
    assert_eq!(t.remove(&g2).unwrap().spec, g2);
    assert!(t.by_cluster_ip(PROTO_TCP, Ipv4Addr::new(10, 250, 0, 40), 2368).is_none());
    assert!(t.by_node_port(PROTO_TCP, 31267).is_none());
    assert_eq!(t.len(), 1000);
    assert_eq!(t.iter().count(), 1000);
    assert!(t.remove(&g2).is_none());
}

#[test]
fn a_nodeport_taken_over_evicts_its_holder() {
    let mut t = ServiceTable::default();
    t.insert(Service::carrying(ghost(), None));
    let thief = svc("default/thief", [10, 250, 0, 41], 80, Some(31266));
    let out = t.insert(Service::carrying(thief, None));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].spec.name, "default/ghost");
    assert_eq!(t.len(), 1);
    assert!(t.by_cluster_ip(PROTO_TCP, Ipv4Addr::new(10, 250, 0, 40), 2368).is_none());
    assert_eq!(t.by_node_port(PROTO_TCP, 31266).unwrap().spec.name, "default/thief");
    assert_eq!(t.with_node_ports().count(), 1);
}

#[test]
fn a_published_snapshot_never_changes_and_shares_untouched_shards() {
    let mut master = filled(20_000);
    let published = master.clone();
    let added = svc("bench/svc-new", [10, 250, 200, 1], 8080, Some(30000));
    master.insert(Service::carrying(added.clone(), None));
    master.remove(&svc("bench/svc-7", [10, 250, 0, 7], 80, None)).unwrap();
    // The snapshot still answers as it did.
    assert_eq!(published.len(), 20_000);
    assert!(published.by_cluster_ip(PROTO_TCP, Ipv4Addr::new(10, 250, 200, 1), 8080).is_none());
    assert!(published.by_cluster_ip(PROTO_TCP, Ipv4Addr::new(10, 250, 0, 7), 80).is_some());
    assert!(published.by_node_port(PROTO_TCP, 30000).is_none());
    assert_eq!(master.by_node_port(PROTO_TCP, 30000).unwrap().spec, added);
    // Only the shards the two changes touched were copied.
    let copied = master.by_vip.shards.iter().zip(&published.by_vip.shards).filter(|(a, b)| !Arc::ptr_eq(a, b));
    assert!(copied.count() <= 2);
    let np_copied =
        master.by_node_port.shards.iter().zip(&published.by_node_port.shards).filter(|(a, b)| !Arc::ptr_eq(a, b));
    assert_eq!(np_copied.count(), 1);
    // A miss copies nothing.
    let again = master.clone();
    assert!(master.remove(&svc("bench/none", [10, 250, 255, 255], 1, None)).is_none());
    assert!(master.by_vip.shards.iter().zip(&again.by_vip.shards).all(|(a, b)| Arc::ptr_eq(a, b)));
}

#[test]
fn external_addresses_and_cluster_ips_are_indexed_and_cleaned_up() {
    let mut t = ServiceTable::default();
    assert!(t.by_external(PROTO_TCP, Ipv4Addr::new(1, 2, 3, 4), 2368).is_none());
    let mut g = ghost();
    g.external_ips = vec![Ipv4Addr::new(192, 168, 99, 11)];
    g.load_balancer_ips = vec![Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8)];
    t.insert(Service::carrying(g.clone(), None));
    let (s, via) = t.by_external(PROTO_TCP, Ipv4Addr::new(192, 168, 99, 11), 2368).unwrap();
    assert_eq!((s.spec.name.as_str(), via), ("default/ghost", Via::ExternalIp));
    assert_eq!(t.by_external(PROTO_TCP, Ipv4Addr::new(5, 6, 7, 8), 2368).unwrap().1, Via::LoadBalancer);
    assert!(t.by_external(PROTO_UDP, Ipv4Addr::new(1, 2, 3, 4), 2368).is_none(), "protocol is part of the key");
    assert!(t.by_external(PROTO_TCP, Ipv4Addr::new(1, 2, 3, 4), 80).is_none(), "so is the port");
    assert!(t.has_cluster_ip(g.cluster_ip));
    // A second port on the same cluster IP: the IP stays known until both are gone.
    let mut dns = svc("default/ghost:dns", [10, 250, 0, 40], 53, None);
    dns.protocol = Protocol::Udp;
    t.insert(Service::carrying(dns.clone(), None));
    // The service changes: an external address dropped, another added.
    g.load_balancer_ips = vec![Ipv4Addr::new(9, 10, 11, 12)];
    assert_eq!(t.insert(Service::carrying(g.clone(), None)).len(), 1, "the old version goes");
    assert!(t.by_external(PROTO_TCP, Ipv4Addr::new(1, 2, 3, 4), 2368).is_none());
    assert!(t.by_external(PROTO_TCP, Ipv4Addr::new(9, 10, 11, 12), 2368).is_some());
    assert!(t.remove(&g).is_some());
    assert!(t.by_external(PROTO_TCP, Ipv4Addr::new(192, 168, 99, 11), 2368).is_none());
    assert!(t.has_cluster_ip(g.cluster_ip), "the dns port still has it");
    assert!(t.remove(&dns).is_some());
    assert!(!t.has_cluster_ip(g.cluster_ip));
    assert!(t.is_empty());
}

#[test]
fn an_external_address_taken_over_evicts_its_holder() {
    let mut t = ServiceTable::default();
    let mut a = svc("default/a", [10, 250, 0, 1], 80, None);
    a.external_ips = vec![Ipv4Addr::new(192, 168, 99, 1)];
    t.insert(Service::carrying(a, None));
    let mut b = svc("default/b", [10, 250, 0, 2], 80, None);
    b.load_balancer_ips = vec![Ipv4Addr::new(192, 168, 99, 1)];
    let out = t.insert(Service::carrying(b, None));
    assert_eq!(out.iter().map(|s| s.spec.name.as_str()).collect::<Vec<_>>(), ["default/a"]);
    assert_eq!(t.len(), 1);
    assert!(!t.has_cluster_ip(Ipv4Addr::new(10, 250, 0, 1)));
    assert_eq!(t.by_external(PROTO_TCP, Ipv4Addr::new(192, 168, 99, 1), 80).unwrap().0.spec.name, "default/b");
}
