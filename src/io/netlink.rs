//! Kernel configuration through rtnetlink: the pod's view (`eth0` with a /32, the
//! routes to 169.254.1.1) and the node's view of ucanal (the host port, its routes,
//! the policy rules that steer NodePort traffic and masquerade replies to ucanal).
//!
//! No netfilter anywhere: steering is iproute2 policy routing. The `local` table's rule
//! moves from priority 0 to just after ucanal's rules, so that a packet from the uplink
//! to `<node IP>:<NodePort>` is forwarded to the host port instead of being delivered
//! to (and refused by) the node's stack.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::IpProtocol;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAttribute, RouteMetric, RouteProtocol, RouteScope};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange};
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};

use crate::core::Ipv4Net;
use crate::wire::MacAddr;

/// Priority of ucanal's steering rules; the `local` rule moves to `LOCAL_RULE_PRIORITY`.
pub const STEER_PRIORITY: u32 = 90;
pub const LOCAL_RULE_PRIORITY: u32 = 100;
const RT_TABLE_LOCAL: u32 = 255;

fn nl<T>(what: impl FnOnce() -> String, r: Result<T, rtnetlink::Error>) -> io::Result<T> {
    r.map_err(|e| io::Error::other(format!("{}: {e}", what())))
}

/// Opens an rtnetlink connection in the calling thread's network namespace and runs
/// `f` with it on a current-thread runtime.
/// Safe to call from async code (it steps out of the runtime for the duration).
pub fn with_handle<T>(f: impl AsyncFnOnce(&Handle) -> io::Result<T>) -> io::Result<T> {
    let run = move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            let task = tokio::spawn(conn);
            let r = f(&handle).await;
            task.abort();
            r
        })
    };
    if tokio::runtime::Handle::try_current().is_ok() { tokio::task::block_in_place(run) } else { run() }
}

pub async fn link_index(h: &Handle, name: &str) -> io::Result<u32> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(m.header.index),
        Ok(None) => Err(io::Error::new(io::ErrorKind::NotFound, format!("interface {name} not found"))),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
            Err(io::Error::new(io::ErrorKind::NotFound, format!("interface {name} not found")))
        }
        Err(e) => Err(io::Error::other(format!("looking up interface {name}: {e}"))),
    }
}

/// The IPv4 addresses on an interface.
pub async fn link_addrs(h: &Handle, index: u32) -> io::Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    let mut s = h.address().get().set_link_index_filter(index).execute();
    while let Some(m) = nl(|| "listing addresses".into(), s.try_next().await)? {
        for a in m.attributes {
            if let netlink_packet_route::address::AddressAttribute::Address(IpAddr::V4(v4)) = a {
                out.push(v4);
            }
        }
    }
    Ok(out)
}

async fn set_link(h: &Handle, index: u32, name: &str, mac: MacAddr, mtu: u16) -> io::Result<()> {
    // Setting even the same MAC is a NETDEV_CHANGEADDR: the kernel flushes the link's
    // neighbours (the permanent gateway entry too) and blackholes frames on their way
    // out. A link adopted from a running ucanal already matches: leave it alone.
    let mut links = h.link().get().match_index(index).execute();
    if let Some(m) = nl(|| format!("reading {name}"), links.try_next().await)? {
        let up = m.header.flags.contains(netlink_packet_route::link::LinkFlags::Up);
        let same_mac = m.attributes.iter().any(|a| matches!(a, LinkAttribute::Address(b) if b[..] == mac.0[..]));
        let same_mtu = m.attributes.iter().any(|a| matches!(a, LinkAttribute::Mtu(n) if *n == u32::from(mtu)));
        if up && same_mac && same_mtu {
            return Ok(());
        }
    }
    let msg = LinkUnspec::new_with_index(index).address(mac.0.to_vec()).mtu(u32::from(mtu)).up().build();
    nl(|| format!("setting {name} mac {mac} mtu {mtu} up"), h.link().set(msg).execute().await)
}

async fn add_addr(h: &Handle, index: u32, name: &str, ip: Ipv4Addr) -> io::Result<()> {
    nl(|| format!("adding {ip}/32 to {name}"), h.address().add(index, IpAddr::V4(ip), 32).replace().execute().await)
}

async fn add_route(h: &Handle, what: String, mut msg: netlink_packet_route::route::RouteMessage) -> io::Result<()> {
    // What `ip route add` uses, and does not print: the pod's `ip route` reads as Calico's.
    msg.header.protocol = RouteProtocol::Boot;
    nl(|| format!("adding route {what}"), h.route().add(msg).replace().execute().await)
}

/// The pod's view, exactly as Calico sets it up: `eth0` with `<ip>/32`, the gateway
/// as a link-scope route, and the default route through it.
pub async fn configure_pod(
    h: &Handle,
    ifname: &str,
    mac: MacAddr,
    mtu: u16,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
) -> io::Result<()> {
    let idx = link_index(h, ifname).await?;
    set_link(h, idx, ifname, mac, mtu).await?;
    add_addr(h, idx, ifname, ip).await?;
    let gw = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(gateway, 32)
        .output_interface(idx)
        .scope(RouteScope::Link)
        .build();
    add_route(h, format!("{gateway} dev {ifname} scope link"), gw).await?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).output_interface(idx).build();
    add_route(h, format!("default via {gateway} dev {ifname}"), default).await?;
    Ok(())
}

/// What the node's side of the host port needs.
#[derive(Debug, Clone)]
pub struct HostPort {
    pub name: String,
    pub mac: MacAddr,
    pub mtu: u16,
    pub vtep_ip: Ipv4Addr,
    pub node_ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub gateway_mac: MacAddr,
    pub cluster_cidr: Ipv4Net,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    /// The uplink's MTU: the kernel reaches a service IP by the default route on the
    /// uplink, so the node's own connections to a service offer the MSS of that MTU.
    pub uplink_mtu: Option<u32>,
    pub table: u32,
}

/// Configures the host port in the node's namespace: the VTEP address (as flannel.1
/// holds it), a permanent neighbour for the gateway, routes to the cluster and
/// service CIDRs, and the steering table's default route.
pub async fn configure_host_port(h: &Handle, p: &HostPort) -> io::Result<()> {
    let idx = link_index(h, &p.name).await?;
    set_link(h, idx, &p.name, p.mac, p.mtu).await?;
    add_addr(h, idx, &p.name, p.vtep_ip).await?;
    nl(
        || format!("adding neighbour {} lladdr {} dev {}", p.gateway, p.gateway_mac, p.name),
        h.neighbours().add(idx, IpAddr::V4(p.gateway)).link_layer_address(&p.gateway_mac.0).replace().execute().await,
    )?;
    // Node -> pods on this node from the node IP (as a cali route would), node ->
    // remote pods from the VTEP address (as flannel.1 would), node -> services.
    let routes = [(p.cluster_cidr, p.vtep_ip), (p.pod_cidr, p.node_ip), (p.service_cidr, p.node_ip)];
    for (net, src) in routes {
        let mut m = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.addr(), net.prefix_len())
            .gateway(p.gateway)
            .pref_source(src)
            .output_interface(idx)
            .onlink()
            .build();
        let mut what = format!("{net} via {} dev {} onlink src {src}", p.gateway, p.name);
        // The node's connections to a service advertise the MSS the kernel's route (the
        // uplink's) gives them; the node still sends at the host port's MTU, and every
        // endpoint sends at most its own (the pod MTU), so nothing larger comes back.
        if net == p.service_cidr
            && let Some(mss) = p.uplink_mtu.and_then(|m| m.checked_sub(40)).filter(|m| *m > 0)
        {
            m.attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Advmss(mss)]));
            what.push_str(&format!(" advmss {mss}"));
        }
        add_route(h, what, m).await?;
    }
    let steer = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(p.gateway)
        .output_interface(idx)
        .onlink()
        .table_id(p.table)
        .build();
    add_route(h, format!("default via {} dev {} onlink table {}", p.gateway, p.name, p.table), steer).await?;
    Ok(())
}

/// One steering rule: `iif <uplink> to <node_ip or dst> ipproto <proto> [dport lo-hi] lookup
/// <table>` (`dst`: an external address of a service, externalIP or load-balancer IP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Steer {
    pub proto: u8,
    pub dst: Option<Ipv4Addr>,
    pub ports: Option<(u16, u16)>,
}

fn ip_protocol(p: u8) -> IpProtocol {
    match p {
        6 => IpProtocol::Tcp,
        17 => IpProtocol::Udp,
        _ => IpProtocol::Icmp,
    }
}

pub async fn add_steer(h: &Handle, uplink: &str, node_ip: Ipv4Addr, table: u32, s: Steer) -> io::Result<()> {
    let mut req = h
        .rule()
        .add()
        .v4()
        .input_interface(uplink)
        .destination_prefix(s.dst.unwrap_or(node_ip), 32)
        .table_id(table)
        .action(RuleAction::ToTable)
        .priority(STEER_PRIORITY);
    req.message_mut().attributes.push(RuleAttribute::IpProtocol(ip_protocol(s.proto)));
    if let Some((lo, hi)) = s.ports {
        req.message_mut().attributes.push(RuleAttribute::DestinationPortRange(RulePortRange { start: lo, end: hi }));
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        Err(e) => Err(io::Error::other(format!(
            "adding rule iif {uplink} to {} {s:?} lookup {table}: {e}",
            s.dst.unwrap_or(node_ip)
        ))),
    }
}

async fn rules(h: &Handle) -> io::Result<Vec<RuleMessage>> {
    nl(|| "listing rules".into(), h.rule().get(IpVersion::V4).execute().try_collect().await)
}

fn rule_table(m: &RuleMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| if let RuleAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(u32::from(m.header.table))
}

fn rule_priority(m: &RuleMessage) -> u32 {
    m.attributes.iter().find_map(|a| if let RuleAttribute::Priority(p) = a { Some(*p) } else { None }).unwrap_or(0)
}

/// The steering rule `m` is, `dst` `None` when it steers the node IP.
fn rule_steer(m: &RuleMessage, node_ip: Ipv4Addr) -> Option<Steer> {
    let proto = m.attributes.iter().find_map(|a| match a {
        RuleAttribute::IpProtocol(IpProtocol::Tcp) => Some(6),
        RuleAttribute::IpProtocol(IpProtocol::Udp) => Some(17),
        RuleAttribute::IpProtocol(IpProtocol::Icmp) => Some(1),
        _ => None,
    })?;
    let ports = m.attributes.iter().find_map(|a| match a {
        RuleAttribute::DestinationPortRange(r) => Some((r.start, r.end)),
        _ => None,
    });
    let dst = m.attributes.iter().find_map(|a| match a {
        RuleAttribute::Destination(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    Some(Steer { proto, dst: dst.filter(|d| *d != node_ip), ports })
}

/// The steering rules to `table` there are now.
pub async fn list_steers(h: &Handle, table: u32, node_ip: Ipv4Addr) -> io::Result<Vec<Steer>> {
    Ok(rules(h).await?.iter().filter(|m| rule_table(m) == table).filter_map(|m| rule_steer(m, node_ip)).collect())
}

/// Removes steering rules (all of them for `table` when `only` is `None`).
pub async fn del_steers(h: &Handle, table: u32, node_ip: Ipv4Addr, only: Option<&[Steer]>) -> io::Result<usize> {
    let mut n = 0;
    for m in rules(h).await? {
        if rule_table(&m) != table {
            continue;
        }
        if let Some(set) = only
            && !rule_steer(&m, node_ip).is_some_and(|s| set.contains(&s))
        {
            continue;
        }
        nl(|| format!("deleting rule to table {table}"), h.rule().del(m).execute().await)?;
        n += 1;
    }
    Ok(n)
}

/// Moves the `local` table's rule from priority 0 to `LOCAL_RULE_PRIORITY` (idempotent).
pub async fn move_local_rule(h: &Handle) -> io::Result<()> {
    let local = RT_TABLE_LOCAL;
    let existing = rules(h).await?;
    if !existing.iter().any(|m| rule_table(m) == local && rule_priority(m) == LOCAL_RULE_PRIORITY) {
        let r = h
            .rule()
            .add()
            .v4()
            .table_id(local)
            .action(RuleAction::ToTable)
            .priority(LOCAL_RULE_PRIORITY)
            .execute()
            .await;
        nl(|| format!("adding rule pref {LOCAL_RULE_PRIORITY} lookup local"), r)?;
    }
    for m in existing {
        if rule_table(&m) == local && rule_priority(&m) == 0 {
            nl(|| "deleting rule pref 0 lookup local".into(), h.rule().del(m).execute().await)?;
        }
    }
    Ok(())
}

/// Puts the `local` rule back at priority 0 (idempotent).
pub async fn restore_local_rule(h: &Handle) -> io::Result<()> {
    let local = RT_TABLE_LOCAL;
    let existing = rules(h).await?;
    if !existing.iter().any(|m| rule_table(m) == local && rule_priority(m) == 0) {
        let r = h.rule().add().v4().table_id(local).action(RuleAction::ToTable).priority(0).execute().await;
        nl(|| "adding rule pref 0 lookup local".into(), r)?;
    }
    for m in existing {
        if rule_table(&m) == local && rule_priority(&m) == LOCAL_RULE_PRIORITY {
            nl(|| format!("deleting rule pref {LOCAL_RULE_PRIORITY} lookup local"), h.rule().del(m).execute().await)?;
        }
    }
    Ok(())
}

/// Deletes a link by name if it exists.
pub async fn delete_link(h: &Handle, name: &str) -> io::Result<()> {
    match link_index(h, name).await {
        Ok(idx) => nl(|| format!("deleting {name}"), h.link().del(idx).execute().await),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// True when an interface exists (for preflight checks).
pub async fn link_exists(h: &Handle, name: &str) -> io::Result<bool> {
    match link_index(h, name).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The interface's MAC address.
pub async fn link_mac(h: &Handle, name: &str) -> io::Result<Option<MacAddr>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    let m = nl(|| format!("reading {name}"), links.try_next().await)?;
    Ok(m.and_then(|m| {
        m.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::Address(b) if b.len() == 6 => Some(MacAddr(b.try_into().unwrap())),
            _ => None,
        })
    }))
}

/// Writes a sysctl (path components under /proc/sys, so interface names may contain
/// dots) in the calling thread's network namespace.
pub fn sysctl(key: &[&str], value: &str) -> io::Result<()> {
    let path = format!("/proc/sys/{}", key.join("/"));
    std::fs::write(&path, value).map_err(|e| io::Error::new(e.kind(), format!("sysctl {}={value}: {e}", key.join("."))))
}

pub fn sysctl_read(key: &[&str]) -> io::Result<String> {
    let path = format!("/proc/sys/{}", key.join("/"));
    std::fs::read_to_string(&path).map(|s| s.trim().to_string())
}

/// An interface as `ip addr` and `ip route` show it, for CNI CHECK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkView {
    pub index: u32,
    pub up: bool,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    /// (address, prefix length)
    pub addrs: Vec<(Ipv4Addr, u8)>,
    /// Main-table IPv4 routes out of this interface.
    pub routes: Vec<RouteView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteView {
    pub dst: Ipv4Addr,
    pub len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub link_scope: bool,
}

/// Reads `ifname`'s flags, MAC, MTU, IPv4 addresses and main-table routes in the calling
/// thread's namespace. `NotFound` when there is no such interface.
pub async fn link_view(h: &Handle, ifname: &str) -> io::Result<LinkView> {
    use netlink_packet_route::address::AddressAttribute;
    use netlink_packet_route::link::LinkFlags;
    use netlink_packet_route::route::RouteAddress;
    let index = link_index(h, ifname).await?;
    let mut v = LinkView { index, ..Default::default() };
    let mut links = h.link().get().match_index(index).execute();
    if let Some(m) = nl(|| format!("reading {ifname}"), links.try_next().await)? {
        v.up = m.header.flags.contains(LinkFlags::Up);
        for a in m.attributes {
            match a {
                LinkAttribute::Address(b) if b.len() == 6 => v.mac = b.try_into().ok().map(MacAddr),
                LinkAttribute::Mtu(n) => v.mtu = Some(n),
                _ => {}
            }
        }
    }
    let mut s = h.address().get().set_link_index_filter(index).execute();
    while let Some(m) = nl(|| "listing addresses".into(), s.try_next().await)? {
        for a in &m.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                v.addrs.push((*ip, m.header.prefix_len));
            }
        }
    }
    let mut s = h.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    while let Some(m) = nl(|| "listing routes".into(), s.try_next().await)? {
        if m.header.table != netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        let mut r = RouteView {
            dst: Ipv4Addr::UNSPECIFIED,
            len: m.header.destination_prefix_length,
            gateway: None,
            link_scope: m.header.scope == RouteScope::Link,
        };
        let mut oif = None;
        for a in m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => r.dst = d,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => r.gateway = Some(g),
                RouteAttribute::Oif(i) => oif = Some(i),
                _ => {}
            }
        }
        if oif == Some(index) {
            v.routes.push(r);
        }
    }
    Ok(v)
}
