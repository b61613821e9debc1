//! The service stage of a new flow: what kube-proxy's rules decide for `(protocol,
//! source, destination, port)` before any endpoint is picked, and the pick itself.
//!
//! In kube-proxy's order (`pkg/proxy/nftables/proxier.go`):
//! 1. dispatch — `service-ips` (cluster IPs, externalIPs, load-balancer IPs), then
//!    `service-nodeports` on the node IP;
//! 2. `firewall-ips` — a load-balancer IP with `loadBalancerSourceRanges` drops other
//!    sources (the ranges, and the load-balancer IPs themselves when a range holds the
//!    node IP, pass); it runs before DNAT, so it drops even when there is no endpoint;
//! 3. `no-endpoint-services` / `no-endpoint-nodeports` — a service with no usable
//!    endpoint anywhere REJECTs; one whose traffic policy leaves this packet none DROPs;
//! 4. `cluster-ips-check` — no service matched: a cluster IP (another port, another
//!    protocol) REJECTs, any other address of the service CIDR DROPs.
//!
//! The candidates are `CategorizeEndpoints` (`pkg/proxy/topology.go`): in the packet's
//! scope (every endpoint, or this node's — a pod `/32` on this node, `Tables::routes`)
//! the ready endpoints, or if the scope has none its serving-and-terminating ones
//! (KEP-1669); never a not-serving one (those are not in the spec at all). The endpoint
//! is then the client's live session-affinity choice if it is a candidate, else the
//! flow hash's.
//!
//! Cost: a lookup or two per new flow, as before; a candidate set with every endpoint is
//! a slice of the spec (no copy); a `Local` one is counted with one route lookup per
//! endpoint; nothing allocates unless the trace is on.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::affinity::{Affinity, Recorded};
use super::masquerade::{self, Scope, SourceClass};
use super::service::{Service, ServiceSpec, Via, spec_key};
use super::{Tuple, uniform_index};
use crate::core::counters::DropReason;
use crate::core::route::{RouteTable, RouteTarget};
use crate::core::tables::Tables;
use crate::core::trace::Pick;
use crate::core::{Ipv4Net, Now};
use crate::wire::ipv4::{PROTO_TCP, PROTO_UDP};

/// The service a packet matched, and by which address.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'t> {
    pub service: &'t Service,
    pub via: Via,
}

/// What the service stage decided for a new flow.
#[derive(Debug, Clone, Copy)]
pub enum ServiceVerdict<'t> {
    /// No service address: the packet is not kube-proxy's.
    NoService,
    /// Refused with ICMP port unreachable (`reject`): a service without endpoints
    /// (`service_no_endpoints`), or a cluster IP's port that no service has (`no_service`).
    Reject(Option<Matched<'t>>, DropReason),
    /// Dropped: no endpoint on this node for a `Local` policy (`no_local_endpoint`), a
    /// source outside `loadBalancerSourceRanges` (`lb_source_range`), an unallocated
    /// address of the service CIDR (`unallocated_cluster_ip`).
    Drop(Option<Matched<'t>>, DropReason),
    /// The packet goes to one of `candidates`; `mark`: KUBE-MARK-MASQ before the
    /// endpoint chain (which adds its own mark for a hairpin).
    Endpoints { matched: Matched<'t>, candidates: Candidates<'t>, mark: bool },
}

impl<'t> ServiceVerdict<'t> {
    /// The service matched, if any.
    pub fn matched(&self) -> Option<Matched<'t>> {
        match self {
            ServiceVerdict::NoService => None,
            ServiceVerdict::Reject(m, _) | ServiceVerdict::Drop(m, _) => *m,
            ServiceVerdict::Endpoints { matched, .. } => Some(*matched),
        }
    }
}

/// The service stage for a new flow's first packet.
pub fn decide<'t>(t: &'t Tables, u: &Tuple) -> ServiceVerdict<'t> {
    let (svc, node) = (&t.services, &t.node);
    let matched = match u.proto {
        PROTO_TCP | PROTO_UDP => svc
            .by_cluster_ip(u.proto, u.dst, u.dport)
            .map(|service| Matched { service, via: Via::ClusterIp })
            // External addresses are never inside the cluster CIDR (`check_policy`): a
            // pod-to-pod packet pays no second lookup.
            .or_else(|| {
                (!node.cluster_cidr.contains(u.dst))
                    .then(|| svc.by_external(u.proto, u.dst, u.dport))
                    .flatten()
                    .map(|(service, via)| Matched { service, via })
            })
            .or_else(|| {
                (u.dst == node.node_ip)
                    .then(|| svc.by_node_port(u.proto, u.dport))
                    .flatten()
                    .map(|service| Matched { service, via: Via::NodePort })
            }),
        _ => None,
    };
    let Some(m) = matched else {
        if !node.service_cidr.contains(u.dst) {
            return ServiceVerdict::NoService;
        }
        return if svc.has_cluster_ip(u.dst) {
            ServiceVerdict::Reject(None, DropReason::NoService)
        } else {
            ServiceVerdict::Drop(None, DropReason::UnallocatedClusterIp)
        };
    };
    let s = &m.service.spec;
    if m.via == Via::LoadBalancer && !source_allowed(s, u.src, node.node_ip) {
        return ServiceVerdict::Drop(Some(m), DropReason::LbSourceRange);
    }
    if !s.has_endpoints() {
        return ServiceVerdict::Reject(Some(m), DropReason::ServiceNoEndpoints);
    }
    let from = SourceClass::of(u.src, node.cluster_cidr, node.node_ip);
    let (scope, mark) = masquerade::service_policy(m.via, s.internal_local, s.external_local, from);
    let candidates = Candidates::new(s, scope, &t.routes);
    if candidates.is_empty() {
        return ServiceVerdict::Drop(Some(m), DropReason::NoLocalEndpoint);
    }
    ServiceVerdict::Endpoints { matched: m, candidates, mark }
}

/// `loadBalancerSourceRanges`: no ranges let everyone in; otherwise a source in a
/// range, or one of the load-balancer IPs when a range holds the node IP (a node's own
/// connection to a VIP it carries may loop back with the VIP as source).
pub fn source_allowed(s: &ServiceSpec, src: Ipv4Addr, node_ip: Ipv4Addr) -> bool {
    let in_ranges = |a: Ipv4Addr| s.source_ranges.iter().any(|r: &Ipv4Net| r.contains(a));
    s.source_ranges.is_empty() || in_ranges(src) || (in_ranges(node_ip) && s.load_balancer_ips.contains(&src))
}

/// The endpoints a packet may go to: a slice of the spec, filtered to this node's pods
/// for a `Local` scope.
#[derive(Debug, Clone, Copy)]
pub struct Candidates<'t> {
    list: &'t [SocketAddrV4],
    /// The position of `list[0]` in [`ServiceSpec::all_endpoints`] (hit counters).
    base: usize,
    local: Option<&'t RouteTable>,
    n: usize,
    /// The scope had no ready endpoint: these are serving and terminating.
    fallback: bool,
}

fn is_local(routes: &RouteTable, ep: &SocketAddrV4) -> bool {
    matches!(routes.lookup(*ep.ip()).target, RouteTarget::Pod(_))
}

impl<'t> Candidates<'t> {
    /// `CategorizeEndpoints` for one scope: ready endpoints, else serving-and-terminating.
    pub fn new(s: &'t ServiceSpec, scope: Scope, routes: &'t RouteTable) -> Candidates<'t> {
        let ready = &s.endpoints[..];
        let terminating = &s.terminating[..];
        match scope {
            Scope::Cluster if !ready.is_empty() => {
                Candidates { list: ready, base: 0, local: None, n: ready.len(), fallback: false }
            }
            Scope::Cluster => {
                Candidates { list: terminating, base: ready.len(), local: None, n: terminating.len(), fallback: true }
            }
            Scope::Local => {
                let n = ready.iter().filter(|e| is_local(routes, e)).count();
                if n > 0 {
                    return Candidates { list: ready, base: 0, local: Some(routes), n, fallback: false };
                }
                let n = terminating.iter().filter(|e| is_local(routes, e)).count();
                Candidates { list: terminating, base: ready.len(), local: Some(routes), n, fallback: true }
            }
        }
    }
    pub fn len(&self) -> usize {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    /// Whether these are serving-and-terminating endpoints (no ready one in scope).
    pub fn terminating(&self) -> bool {
        self.fallback
    }
    /// The candidates with their hit-counter positions, in spec order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, SocketAddrV4)> + 't {
        let (base, local) = (self.base, self.local);
        self.list
            .iter()
            .enumerate()
            .filter(move |(_, e)| local.is_none_or(|r| is_local(r, e)))
            .map(move |(i, e)| (base + i, *e))
    }
    /// The `k`-th candidate (`k < len`) and its hit-counter position.
    #[inline]
    pub fn nth(&self, k: usize) -> (usize, SocketAddrV4) {
        match self.local {
            None => (self.base + k, self.list[k]),
            Some(_) => self.iter().nth(k).unwrap_or((self.base, self.list[0])),
        }
    }
    /// Where `ep` is among the candidates, if it is one.
    pub fn position(&self, ep: SocketAddrV4) -> Option<(usize, usize)> {
        self.iter().enumerate().find(|(_, (_, e))| *e == ep).map(|(k, (hit, _))| (k, hit))
    }
    /// Every candidate (for the trace).
    pub fn to_vec(&self) -> Vec<SocketAddrV4> {
        self.iter().map(|(_, e)| e).collect()
    }
}

/// The endpoint chosen for a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub endpoint: SocketAddrV4,
    /// Its position among the candidates.
    pub index: usize,
    /// Its position in [`ServiceSpec::all_endpoints`] (its hit counter).
    pub hit: usize,
    pub by: Pick,
    /// A new affinity record could not be kept: the table is full.
    pub affinity_full: bool,
}

/// Picks the endpoint: the client's live affinity choice when it is a candidate (and
/// then its record lives another timeout), else the flow hash's (recorded when the
/// service has affinity). `commit: false` (a dry-run trace) changes nothing.
pub fn choose(
    c: &Candidates,
    s: &Service,
    src: Ipv4Addr,
    flow_hash: u32,
    aff: &Affinity,
    now: Now,
    commit: bool,
) -> Choice {
    let timeout = s.spec.affinity_timeout;
    let key = spec_key(&s.spec);
    if let Some(timeout) = timeout
        && let Some(ep) = aff.lookup(src, key, now)
        && let Some((index, hit)) = c.position(ep)
    {
        if commit {
            aff.refresh(src, key, timeout, now);
        }
        return Choice { endpoint: ep, index, hit, by: Pick::Affinity, affinity_full: false };
    }
    let index = uniform_index(flow_hash, c.len());
    let (hit, endpoint) = c.nth(index);
    let affinity_full = match timeout {
        Some(timeout) if commit => aff.record(src, key, endpoint, timeout, now) == Recorded::Full,
        _ => false,
    };
    Choice { endpoint, index, hit, by: Pick::Hash, affinity_full }
}

#[cfg(test)]
#[path = "candidates_tests.rs"]
mod tests;
