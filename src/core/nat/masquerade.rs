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

/// KUBE-MARK-MASQ for a service flow: always for NodePort (externalTrafficPolicy
/// Cluster), for ClusterIP when the source is outside the cluster CIDR, and for a
/// hairpin (a pod reaching itself through its service).
pub fn service_marks(via: Via, src: Ipv4Addr, endpoint: Ipv4Addr, cluster: Ipv4Net) -> bool {
    via == Via::NodePort || !cluster.contains(src) || src == endpoint
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
    fn kube_mark_masq() {
        let c = net("10.244.0.0/16");
        assert!(service_marks(Via::NodePort, ip("10.244.1.5"), ip("10.244.0.74"), c));
        assert!(service_marks(Via::ClusterIp, ip("172.16.240.131"), ip("10.244.0.74"), c));
        assert!(!service_marks(Via::ClusterIp, ip("10.244.1.5"), ip("10.244.0.74"), c));
        assert!(service_marks(Via::ClusterIp, ip("10.244.1.5"), ip("10.244.1.5"), c));
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
