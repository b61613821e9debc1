//! CHECK (SPEC.md "CHECK"): the attachment the daemon holds must match the ADD's
//! result (`prevResult`), and the container's namespace must still hold the pod view
//! ucanal made: the interface up with its MAC, `<ip>/32`, `169.254.1.1 dev <if> scope
//! link` and `default via 169.254.1.1 dev <if>`. Later chained plugins may add routes
//! and addresses; only missing or changed ones are faults.

use std::net::Ipv4Addr;
use std::path::Path;

use super::spec::CniResult;
use crate::api::CniPod;
use crate::io::netlink::{self, LinkView};
use crate::wire::MacAddr;

/// Where an attachment differs from what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("prevResult has no interface {0}")]
    NoInterface(String),
    #[error("prevResult puts {ifname} in {sandbox:?}, CNI_NETNS is {netns}")]
    Sandbox { ifname: String, sandbox: Option<String>, netns: String },
    #[error("ucanal attached {ifname} in {attached}, CNI_NETNS is {netns}")]
    Netns { ifname: String, attached: String, netns: String },
    #[error("prevResult gives {ifname} mac {prev}, ucanal holds {held}")]
    Mac { ifname: String, prev: String, held: MacAddr },
    #[error("prevResult gives {ifname} address {prev}, ucanal holds {held}")]
    Address { ifname: String, prev: Ipv4Addr, held: Ipv4Addr },
    #[error("prevResult has no address for {0}")]
    NoAddress(String),
    #[error("{0} is down")]
    Down(String),
    #[error("{ifname} has mac {found:?}, want {want}")]
    LinkMac { ifname: String, found: Option<String>, want: MacAddr },
    #[error("{ifname} lacks {ip}/32 (it has {found:?})")]
    LinkAddress { ifname: String, ip: Ipv4Addr, found: Vec<(Ipv4Addr, u8)> },
    #[error("route {gateway} dev {ifname} scope link is missing")]
    GatewayRoute { ifname: String, gateway: Ipv4Addr },
    #[error("route default via {gateway} dev {ifname} is missing")]
    DefaultRoute { ifname: String, gateway: Ipv4Addr },
}

/// The daemon's attachment against the ADD's result.
pub fn against_prev(prev: &CniResult, pod: &CniPod, netns: &str) -> Result<(), Mismatch> {
    let ifname = || pod.ifname.clone();
    let iface = prev.interfaces.iter().find(|i| i.name == pod.ifname).ok_or_else(|| Mismatch::NoInterface(ifname()))?;
    if iface.sandbox.as_deref() != Some(netns) {
        return Err(Mismatch::Sandbox { ifname: ifname(), sandbox: iface.sandbox.clone(), netns: netns.into() });
    }
    if pod.netns != netns {
        return Err(Mismatch::Netns { ifname: ifname(), attached: pod.netns.clone(), netns: netns.into() });
    }
    if let Some(m) = &iface.mac
        && !m.eq_ignore_ascii_case(&pod.mac.to_string())
    {
        return Err(Mismatch::Mac { ifname: ifname(), prev: m.clone(), held: pod.mac });
    }
    match prev.address_of(&pod.ifname) {
        Some(ip) if ip == pod.ip => Ok(()),
        Some(ip) => Err(Mismatch::Address { ifname: ifname(), prev: ip, held: pod.ip }),
        None => Err(Mismatch::NoAddress(ifname())),
    }
}

/// Reads the interface inside the container's namespace.
pub fn read_view(netns: &Path, ifname: &str) -> std::io::Result<LinkView> {
    let name = ifname.to_string();
    crate::io::sys::in_netns(netns, move || netlink::with_handle(async |h| netlink::link_view(h, &name).await))
}

/// The namespace's view against the pod view ucanal configures.
pub fn against_view(v: &LinkView, pod: &CniPod) -> Result<(), Mismatch> {
    let ifname = || pod.ifname.clone();
    if !v.up {
        return Err(Mismatch::Down(ifname()));
    }
    if v.mac != Some(pod.mac) {
        return Err(Mismatch::LinkMac { ifname: ifname(), found: v.mac.map(|m| m.to_string()), want: pod.mac });
    }
    if !v.addrs.contains(&(pod.ip, 32)) {
        return Err(Mismatch::LinkAddress { ifname: ifname(), ip: pod.ip, found: v.addrs.clone() });
    }
    let gateway = pod.gateway;
    if !v.routes.iter().any(|r| r.dst == gateway && r.len == 32 && r.gateway.is_none() && r.link_scope) {
        return Err(Mismatch::GatewayRoute { ifname: ifname(), gateway });
    }
    if !v.routes.iter().any(|r| r.len == 0 && r.dst == Ipv4Addr::UNSPECIFIED && r.gateway == Some(gateway)) {
        return Err(Mismatch::DefaultRoute { ifname: ifname(), gateway });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::spec::{Interface, IpConfig};
    use crate::io::netlink::RouteView;

    fn pod() -> CniPod {
        CniPod {
            name: "default/web".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/c1".into(),
            ip: Ipv4Addr::new(10, 244, 1, 7),
            mac: "0a:58:0a:f4:01:07".parse().unwrap(),
            mtu: 1450,
            gateway: Ipv4Addr::new(169, 254, 1, 1),
        }
    }

    fn prev() -> CniResult {
        CniResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("0a:58:0a:f4:01:07".into()),
                sandbox: Some("/run/netns/c1".into()),
                ..Default::default()
            }],
            ips: vec![IpConfig { address: "10.244.1.7/32".into(), gateway: None, interface: Some(0) }],
            ..Default::default()
        }
    }

    fn view() -> LinkView {
        LinkView {
            index: 2,
            up: true,
            mac: Some(pod().mac),
            mtu: Some(1450),
            addrs: vec![(pod().ip, 32)],
            routes: vec![
                RouteView { dst: Ipv4Addr::UNSPECIFIED, len: 0, gateway: Some(pod().gateway), link_scope: false },
                RouteView { dst: pod().gateway, len: 32, gateway: None, link_scope: true },
            ],
        }
    }

    #[test]
    fn prev_result_matches_or_names_the_difference() {
        assert_eq!(against_prev(&prev(), &pod(), "/run/netns/c1"), Ok(()));
        let mut p = prev();
        p.ips[0].address = "10.244.1.8/32".into();
        assert!(against_prev(&p, &pod(), "/run/netns/c1").unwrap_err().to_string().contains("10.244.1.8"));
        assert!(against_prev(&prev(), &pod(), "/run/netns/other").is_err());
        let mut p = prev();
        p.interfaces[0].mac = Some("0a:58:0a:f4:01:99".into());
        assert!(against_prev(&p, &pod(), "/run/netns/c1").unwrap_err().to_string().contains("mac"));
        let mut p = prev();
        p.interfaces[0].name = "net1".into();
        assert!(against_prev(&p, &pod(), "/run/netns/c1").unwrap_err().to_string().contains("no interface eth0"));
    }

    #[test]
    fn namespace_view_matches_or_names_the_difference() {
        assert_eq!(against_view(&view(), &pod()), Ok(()));
        let mut v = view();
        v.routes.remove(1);
        assert!(against_view(&v, &pod()).unwrap_err().to_string().contains("scope link"));
        let mut v = view();
        v.routes.remove(0);
        assert!(against_view(&v, &pod()).unwrap_err().to_string().contains("default via"));
        let mut v = view();
        v.addrs = vec![(pod().ip, 24)];
        assert!(against_view(&v, &pod()).unwrap_err().to_string().contains("/32"));
        let mut v = view();
        v.up = false;
        assert!(against_view(&v, &pod()).is_err());
        // A later plugin's extra route is not a fault.
        let mut v = view();
        v.routes.push(RouteView { dst: Ipv4Addr::new(10, 0, 0, 0), len: 8, gateway: None, link_scope: true });
        assert_eq!(against_view(&v, &pod()), Ok(()));
    }
}
