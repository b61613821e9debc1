//! When to masquerade, and to what: kube-proxy's KUBE-MARK-MASQ and
//! KUBE-POSTROUTING, and flannel's ip-masq rules, as pure functions.
//!
//! flannel's POSTROUTING rules, in the article's order (src/dst against the cluster
//! CIDR 10.244.0.0/16, node subnet 10.244.1.0/24):
//! ```text
//! RETURN      10.244.0.0/16   10.244.0.0/16     pod <-> pod: never
//! MASQUERADE  10.244.0.0/16  !224.0.0.0/4       pod -> outside
//! RETURN     !10.244.0.0/16   10.244.1.0/24     outside -> local pods
//! MASQUERADE !10.244.0.0/16   10.244.0.0/16     outside -> remote pods
//! ```
//! MASQUERADE takes the address of the egress interface, as `inet_select_addr` does:
//! the VTEP address (10.244.1.0) towards `flannel.1`, the node IP otherwise.

use std::net::Ipv4Addr;

use super::service::Via;
use crate::core::Ipv4Net;

/// Where a service packet comes from, as kube-proxy tells: a pod (the cluster CIDR, its
/// local-traffic detector by `--cluster-cidr`), this node (`fib saddr type local`: the
/// node IP; the VTEP address is in the cluster CIDR and counts as a pod, as in
/// kube-proxy's chains, where the pod rule comes first), or outside the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceClass {
    Pod,
    Node,
    Outside,
}

impl SourceClass {
    pub fn of(src: Ipv4Addr, cluster: Ipv4Net, node_ip: Ipv4Addr) -> SourceClass {
        if cluster.contains(src) {
            SourceClass::Pod
        } else if src == node_ip {
            SourceClass::Node
        } else {
            SourceClass::Outside
        }
    }
}

/// Which endpoints a service packet may reach: every usable one, or this node's only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Local,
}

/// kube-proxy's chains for a service packet, before the endpoint is known: its scope and
/// whether KUBE-MARK-MASQ marks it.
/// - cluster IP (`service-…`/`local-…` chain): the internal traffic policy's scope;
///   marked when the source is not a pod (`ip saddr != <cluster CIDR> jump mark`);
/// - NodePort, externalIP, load-balancer IP (`external-…` chain), `externalTrafficPolicy:
///   Cluster`: every endpoint, always marked; `Local`: a pod short-circuits to every
///   endpoint unmarked ("short-circuit pod traffic"), this node to every endpoint marked
///   ("masquerade local traffic", "short-circuit local traffic"), anyone else to this
///   node's endpoints, unmarked (the client's address is kept).
pub fn service_policy(via: Via, internal_local: bool, external_local: bool, from: SourceClass) -> (Scope, bool) {
    if !via.is_external() {
        let scope = if internal_local { Scope::Local } else { Scope::Cluster };
        return (scope, from != SourceClass::Pod);
    }
    if !external_local {
        return (Scope::Cluster, true);
    }
    match from {
        SourceClass::Pod => (Scope::Cluster, false),
        SourceClass::Node => (Scope::Cluster, true),
        SourceClass::Outside => (Scope::Local, false),
    }
}

/// The endpoint chain's own mark: a pod reaching itself through its service (hairpin)
/// is masqueraded (`ip saddr <endpoint> jump mark-for-masquerade`).
pub fn hairpin(src: Ipv4Addr, endpoint: Ipv4Addr) -> bool {
    src == endpoint
}

/// Where a packet leaves, for the masquerade address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    Vxlan,
    Pod,
    Host,
}

/// flannel's ip-masq rules for a packet with no KUBE mark. `local_subnet` is this
/// node's pod CIDR. Traffic to the node's own addresses never reaches POSTROUTING.
pub fn flannel_masquerades(src: Ipv4Addr, dst: Ipv4Addr, cluster: Ipv4Net, local_subnet: Ipv4Net) -> bool {
    if cluster.contains(src) {
        !cluster.contains(dst) && !dst.is_multicast()
    } else {
        !local_subnet.contains(dst) && cluster.contains(dst)
    }
}

/// The MASQUERADE source address for an egress.
pub fn source_for(egress: Egress, node_ip: Ipv4Addr, vtep_ip: Ipv4Addr) -> Ipv4Addr {
    match egress {
        Egress::Vxlan => vtep_ip,
        Egress::Pod | Egress::Host => node_ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn kube_proxy_chains() {
        let c = net("10.244.0.0/16");
        let node = ip("172.16.240.131");
        let (pod, me, out) = (ip("10.244.1.5"), node, ip("172.16.240.1"));
        assert_eq!(SourceClass::of(pod, c, node), SourceClass::Pod);
        assert_eq!(SourceClass::of(ip("10.244.1.0"), c, node), SourceClass::Pod, "the VTEP address is in the cluster");
        assert_eq!(SourceClass::of(me, c, node), SourceClass::Node);
        assert_eq!(SourceClass::of(out, c, node), SourceClass::Outside);
        let p = |via, itp, etp, src| service_policy(via, itp, etp, SourceClass::of(src, c, node));
        // Cluster IP: marked unless from a pod; iTP picks the scope, never the mark.
        assert_eq!(p(Via::ClusterIp, false, true, pod), (Scope::Cluster, false));
        assert_eq!(p(Via::ClusterIp, false, false, me), (Scope::Cluster, true));
        assert_eq!(p(Via::ClusterIp, true, false, out), (Scope::Local, true));
        // External with eTP Cluster: always marked, every endpoint; iTP does not apply.
        for via in [Via::NodePort, Via::ExternalIp, Via::LoadBalancer] {
            assert_eq!(p(via, true, false, pod), (Scope::Cluster, true));
            assert_eq!(p(via, false, true, pod), (Scope::Cluster, false), "short-circuit pod traffic");
            assert_eq!(p(via, false, true, me), (Scope::Cluster, true), "masquerade local traffic");
            assert_eq!(p(via, false, true, out), (Scope::Local, false), "the client's address kept");
        }
        assert!(hairpin(pod, pod) && !hairpin(out, pod));
    }

    #[test]
    fn flannel_rules_in_order() {
        let (c, l) = (net("10.244.0.0/16"), net("10.244.1.0/24"));
        assert!(!flannel_masquerades(ip("10.244.1.5"), ip("10.244.0.74"), c, l));
        assert!(flannel_masquerades(ip("10.244.1.5"), ip("172.16.240.1"), c, l));
        assert!(!flannel_masquerades(ip("10.244.1.5"), ip("224.0.0.251"), c, l));
        assert!(!flannel_masquerades(ip("172.16.240.1"), ip("10.244.1.5"), c, l));
        assert!(flannel_masquerades(ip("172.16.240.1"), ip("10.244.0.74"), c, l));
        assert!(!flannel_masquerades(ip("172.16.240.1"), ip("8.8.8.8"), c, l));
    }

    #[test]
    fn egress_address() {
        let (n, v) = (ip("172.16.240.131"), ip("10.244.1.0"));
        assert_eq!(source_for(Egress::Vxlan, n, v), v);
        assert_eq!(source_for(Egress::Host, n, v), n);
        assert_eq!(source_for(Egress::Pod, n, v), n);
    }
}
