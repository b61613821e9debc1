//! The semantic checks of a config: every one names the field it is about. The
//! node first, then the dataplane knobs, then peers, pods and services against the
//! node and each other. `check_pod` and `check_service` are also the runtime API's.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::{Config, ConfigError, PodSpec, err, parse_port_range};
use crate::core::Ipv4Net;
use crate::core::nat::service::ServiceSpec;
use crate::core::tables::VxlanAccept;

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_node()?;
        self.validate_knobs()?;
        self.validate_cluster()?;
        self.validate_peers()?;
        self.validate_pods()?;
        self.validate_services()?;
        self.manifest_objects().map(drop)
    }

    fn validate_node(&self) -> Result<(), ConfigError> {
        let n = &self.node;
        if n.name.is_empty() {
            return Err(err("node.name", "must not be empty"));
        }
        check_ifname("node.uplink", &n.uplink)?;
        check_ifname("node.host_port", &n.host_port)?;
        check_unicast_ip("node.node_ip", n.node_ip)?;
        self.validate_pod_cidr()?;
        if n.service_cidr.overlaps(&n.cluster_cidr) {
            return Err(err(
                "node.service_cidr",
                format!("{} overlaps node.cluster_cidr {}", n.service_cidr, n.cluster_cidr),
            ));
        }
        if n.cluster_cidr.contains(n.node_ip) || n.service_cidr.contains(n.node_ip) {
            return Err(err("node.node_ip", format!("{} is inside the cluster or service CIDR", n.node_ip)));
        }
        if !n.vtep_mac.is_unicast() {
            return Err(err("node.vtep_mac", format!("{} is not a unicast MAC", n.vtep_mac)));
        }
        if !n.host_mac.is_unicast() {
            return Err(err("node.host_mac", format!("{} is not a unicast MAC", n.host_mac)));
        }
        if let Some(m) = n.host_port_mac
            && (!m.is_unicast() || m == n.host_mac)
        {
            return Err(err("node.host_port_mac", format!("{m} must be unicast and differ from node.host_mac")));
        }
        if let (Some(v), Some(pc)) = (n.vtep_ip, n.pod_cidr)
            && !pc.contains(v)
        {
            return Err(err("node.vtep_ip", format!("{v} is outside node.pod_cidr {pc}")));
        }
        if n.vni == 0 || n.vni > 0x00ff_ffff {
            return Err(err("node.vni", format!("{} is not a 24-bit VNI (1..16777215)", n.vni)));
        }
        if n.vxlan_port == 0 {
            return Err(err("node.vxlan_port", "must not be 0"));
        }
        if VxlanAccept::parse(&n.vxlan_accept).is_none() {
            return Err(err("node.vxlan_accept", format!("'{}' is neither 'any' nor 'peers'", n.vxlan_accept)));
        }
        if !(576..=9000).contains(&n.mtu) {
            return Err(err("node.mtu", format!("{} is outside 576..9000", n.mtu)));
        }
        if n.gateway.is_unspecified() || n.cluster_cidr.contains(n.gateway) {
            return Err(err(
                "node.gateway",
                format!("{} must be an address outside the cluster (Calico uses 169.254.1.1)", n.gateway),
            ));
        }
        let Some((lo, hi)) = parse_port_range(&n.masquerade_ports) else {
            return Err(err(
                "node.masquerade_ports",
                format!("'{}' is not a port range lo-hi (e.g. 61000-65535)", n.masquerade_ports),
            ));
        };
        if lo < 1024 || hi - lo < 255 {
            return Err(err("node.masquerade_ports", format!("{lo}-{hi}: want at least 256 ports, all >= 1024")));
        }
        if hi == u16::MAX {
            return Err(err(
                "node.masquerade_ports",
                format!("{lo}-{hi}: end at 65534 at most (the kernel's FIB rules refuse a port range ending at 65535)"),
            ));
        }
        if n.route_table == 0 || (253..=255).contains(&n.route_table) {
            return Err(err("node.route_table", format!("{} is a reserved routing table", n.route_table)));
        }
        Ok(())
    }

    /// `node.pod_cidr`: inside the cluster CIDR and big enough; left out only in a
    /// cluster, whose etcd leases one (checked again once leased).
    fn validate_pod_cidr(&self) -> Result<(), ConfigError> {
        let n = &self.node;
        let Some(pc) = n.pod_cidr else {
            if self.cluster.is_none() {
                return Err(err(
                    "node.pod_cidr",
                    "missing: only a node with [cluster] may leave it out (it then leases a free subnet from etcd)",
                ));
            }
            return Ok(());
        };
        if !n.cluster_cidr.contains_net(&pc) {
            return Err(err("node.pod_cidr", format!("{pc} is not inside node.cluster_cidr {}", n.cluster_cidr)));
        }
        if pc.prefix_len() > 30 {
            return Err(err("node.pod_cidr", format!("{pc} is too small for pods (want /30 or larger)")));
        }
        Ok(())
    }

    /// The API socket and the dataplane and conntrack sections.
    fn validate_knobs(&self) -> Result<(), ConfigError> {
        if self.api.socket.as_os_str().is_empty() || !self.api.socket.is_absolute() {
            return Err(err("api.socket", "must be an absolute path"));
        }
        if !(100..=3_600_000).contains(&self.api.idle_timeout_ms) {
            return Err(err("api.idle_timeout_ms", "must be 100 .. 3600000 (an hour)"));
        }
        if !(2..=4096).contains(&self.api.max_clients) {
            return Err(err("api.max_clients", "must be 2 .. 4096"));
        }
        if self.api.max_streams == 0 || self.api.max_streams >= self.api.max_clients {
            return Err(err("api.max_streams", "must be 1 .. api.max_clients - 1 (a stream holds a connection)"));
        }
        if self.dataplane.source_ports == 0 || self.dataplane.source_ports > 1024 {
            return Err(err("dataplane.source_ports", "must be 1..1024"));
        }
        if self.dataplane.batch == 0 || self.dataplane.batch > 1024 {
            return Err(err("dataplane.batch", "must be 1..1024"));
        }
        if self.dataplane.gro == Some(true) && !self.dataplane.techniques().tap_offloads {
            return Err(err("dataplane.gro", "needs tap_offloads: coalesced frames go to the pod as GSO frames"));
        }
        if self.dataplane.busy_poll_us > 10_000 {
            return Err(err("dataplane.busy_poll_us", "must be 0 .. 10000 (10 ms)"));
        }
        if self.dataplane.workers > 256 {
            return Err(err("dataplane.workers", "must be 0 (one per CPU) .. 256"));
        }
        if self.conntrack.max == 0 {
            return Err(err("conntrack.max", "must be positive"));
        }
        Ok(())
    }

    /// `[cluster]`: where the etcd registry is and how long a lease lives.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let Some(c) = &self.cluster else { return Ok(()) };
        if c.etcd_endpoints.is_empty() {
            return Err(err("cluster.etcd_endpoints", "must name at least one etcd (http://host:port)"));
        }
        if let Some(e) = c.etcd_endpoints.iter().find(|e| {
            e.strip_prefix("http://").is_none_or(|hp| hp.trim_end_matches('/').parse::<SocketAddrV4>().is_err())
        }) {
            return Err(err("cluster.etcd_endpoints", format!("'{e}' is not http://a.b.c.d:port")));
        }
        if !c.prefix.starts_with('/') || c.prefix.len() < 2 {
            return Err(err("cluster.prefix", format!("'{}' is not an absolute key prefix", c.prefix)));
        }
        if c.lease_ttl < 10 {
            return Err(err("cluster.lease_ttl", "must be at least 10 seconds"));
        }
        Ok(())
    }

    /// Peers: inside the cluster, apart from this node and from each other.
    fn validate_peers(&self) -> Result<(), ConfigError> {
        let n = &self.node;
        let mut names = HashSet::new();
        let mut subnets: Vec<(usize, Ipv4Net)> = Vec::new();
        let mut macs = HashSet::from([n.vtep_mac]);
        let mut public = HashSet::from([n.node_ip]);
        for (i, p) in self.peers.iter().enumerate() {
            let f = |k: &str| format!("peers[{i}].{k}");
            if !names.insert(p.name.clone()) || p.name == n.name {
                return Err(err(f("name"), format!("'{}' is used twice (or is this node)", p.name)));
            }
            if !n.cluster_cidr.contains_net(&p.subnet) {
                return Err(err(
                    f("subnet"),
                    format!("{} is not inside node.cluster_cidr {}", p.subnet, n.cluster_cidr),
                ));
            }
            if let Some(pc) = n.pod_cidr
                && p.subnet.overlaps(&pc)
            {
                return Err(err(f("subnet"), format!("{} overlaps this node's pod_cidr {pc}", p.subnet)));
            }
            if let Some((j, _)) = subnets.iter().find(|(_, s)| s.overlaps(&p.subnet)) {
                return Err(err(f("subnet"), format!("{} overlaps peers[{j}].subnet", p.subnet)));
            }
            subnets.push((i, p.subnet));
            check_unicast_ip(&f("public_ip"), p.public_ip)?;
            if !public.insert(p.public_ip) {
                return Err(err(f("public_ip"), format!("{} is used twice (or is this node's IP)", p.public_ip)));
            }
            if !p.vtep_mac.is_unicast() || !macs.insert(p.vtep_mac) {
                return Err(err(f("vtep_mac"), format!("{} is not unicast or is used twice", p.vtep_mac)));
            }
        }
        Ok(())
    }

    fn validate_pods(&self) -> Result<(), ConfigError> {
        let mut pod_names = HashSet::new();
        let mut pod_ips = HashSet::new();
        for (i, p) in self.pods.iter().enumerate() {
            check_pod(self, p)
                .map_err(|e| ConfigError { field: format!("pods[{i}].{}", e.field), problem: e.problem })?;
            if !pod_names.insert(p.name.clone()) {
                return Err(err(format!("pods[{i}].name"), format!("'{}' is used twice", p.name)));
            }
            if !pod_ips.insert(p.ip) {
                return Err(err(format!("pods[{i}].ip"), format!("{} is used twice", p.ip)));
            }
        }
        Ok(())
    }

    fn validate_services(&self) -> Result<(), ConfigError> {
        let mut svc_names = HashSet::new();
        let mut vips = HashSet::new();
        let mut node_ports = HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            check_service(self, s)
                .map_err(|e| ConfigError { field: format!("services[{i}].{}", e.field), problem: e.problem })?;
            if !svc_names.insert(s.name.clone()) {
                return Err(err(format!("services[{i}].name"), format!("'{}' is used twice", s.name)));
            }
            if !vips.insert((s.protocol, s.cluster_ip, s.port)) {
                return Err(err(
                    format!("services[{i}].cluster_ip"),
                    format!("{}:{}/{} is used twice", s.cluster_ip, s.port, s.protocol.name()),
                ));
            }
            if let Some(np) = s.node_port
                && !node_ports.insert((s.protocol, np))
            {
                return Err(err(
                    format!("services[{i}].node_port"),
                    format!("{np}/{} is used twice", s.protocol.name()),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a pod against the node (also used by the runtime `pod add`). Field paths
/// are relative to the pod.
pub fn check_pod(c: &Config, p: &PodSpec) -> Result<(), ConfigError> {
    // `name` or `namespace/name`, as Kubernetes names a pod.
    let parts: Vec<&str> = p.name.split('/').collect();
    if p.name.len() > 253 || parts.len() > 2 || parts.iter().any(|s| s.is_empty() || s.chars().any(char::is_whitespace))
    {
        return Err(err("name", format!("'{}' is not a pod name (want name or namespace/name)", p.name)));
    }
    if let Some(i) = &p.ifname
        && !crate::api::pod::valid_ifname(i)
    {
        return Err(err("ifname", format!("'{i}' is not an interface name")));
    }
    if p.netns.is_empty() || (!p.netns.starts_with('/') && p.netns.contains('/')) {
        return Err(err("netns", format!("'{}' is neither a name under /run/netns nor an absolute path", p.netns)));
    }
    check_pod_ip(c, p.ip)?;
    if let Some(m) = p.mac
        && (!m.is_unicast() || m == c.node.host_mac)
    {
        return Err(err("mac", format!("{m} must be unicast and differ from node.host_mac")));
    }
    Ok(())
}

/// The pod's address against the pod CIDR; with the CIDR still to be leased, against
/// the cluster CIDR only (the leased subnet is checked once known).
fn check_pod_ip(c: &Config, ip: Ipv4Addr) -> Result<(), ConfigError> {
    let (Some(net), Some(vtep)) = (c.node.pod_cidr, c.vtep_ip()) else {
        if !c.node.cluster_cidr.contains(ip) {
            return Err(err("ip", format!("{ip} is outside node.cluster_cidr {}", c.node.cluster_cidr)));
        }
        return Ok(());
    };
    if !net.contains(ip) {
        return Err(err("ip", format!("{ip} is outside node.pod_cidr {net}")));
    }
    let bcast = Ipv4Addr::from(u32::from(net.addr()) | !crate::core::mask(net.prefix_len()));
    if ip == vtep || ip == net.addr() || ip == bcast {
        return Err(err("ip", format!("{ip} is the VTEP, network or broadcast address of {net}")));
    }
    Ok(())
}

/// Checks a service against the node (also used by the runtime `service set`).
pub fn check_service(c: &Config, s: &ServiceSpec) -> Result<(), ConfigError> {
    if s.name.is_empty() || s.name.chars().any(char::is_whitespace) {
        return Err(err("name", format!("'{}' is not a service name (want namespace/name)", s.name)));
    }
    if !c.node.service_cidr.contains(s.cluster_ip) {
        return Err(err(
            "cluster_ip",
            format!("{} is outside node.service_cidr {}", s.cluster_ip, c.node.service_cidr),
        ));
    }
    if s.port == 0 {
        return Err(err("port", "must not be 0"));
    }
    if let Some(np) = s.node_port {
        if np == 0 {
            return Err(err("node_port", "must not be 0"));
        }
        let (lo, hi) = c.masquerade_ports();
        if (lo..=hi).contains(&np) {
            return Err(err("node_port", format!("{np} is inside node.masquerade_ports {lo}-{hi}")));
        }
    }
    let mut seen = HashSet::new();
    for (j, e) in s.endpoints.iter().enumerate() {
        check_endpoint(c, &format!("endpoints[{j}]"), e)?;
        if !seen.insert(*e) {
            return Err(err(format!("endpoints[{j}]"), format!("{e} is listed twice")));
        }
    }
    for (j, e) in s.terminating.iter().enumerate() {
        check_endpoint(c, &format!("terminating[{j}]"), e)?;
    }
    if let Some(hc) = s.health_check_node_port {
        let (lo, hi) = c.masquerade_ports();
        if hc == 0 || (lo..=hi).contains(&hc) {
            return Err(err("health_check_node_port", format!("{hc} is 0 or inside node.masquerade_ports {lo}-{hi}")));
        }
    }
    s.check_policy(c.node.cluster_cidr, c.node.service_cidr).map_err(|e| err(e.field, e.problem))
}

fn check_endpoint(c: &Config, field: &str, e: &SocketAddrV4) -> Result<(), ConfigError> {
    if e.port() == 0 {
        return Err(err(field, format!("{e}: port 0")));
    }
    let ip = *e.ip();
    if ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_loopback()
        || c.node.service_cidr.contains(ip)
    {
        return Err(err(field, format!("{e} is not a usable endpoint address")));
    }
    Ok(())
}

fn check_ifname(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 15 || name.contains('/') || name.chars().any(char::is_whitespace) {
        return Err(err(field, format!("'{name}' is not an interface name (1-15 characters, no '/' or spaces)")));
    }
    Ok(())
}

fn check_unicast_ip(field: &str, ip: Ipv4Addr) -> Result<(), ConfigError> {
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
        return Err(err(field, format!("{ip} is not a unicast address")));
    }
    Ok(())
}
