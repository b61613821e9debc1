//! The CNI result types (SPEC.md section 5, "ADD Success"): what ADD prints, what
//! `prevResult` carries, and what an IPAM plugin answers (without `interfaces`). Fields
//! 1.1.0 added are dropped when the result is written for 1.0.0.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The success result of ADD (SPEC.md "ADD Success"); also `prevResult` and what an
/// IPAM plugin returns (without `interfaces`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// 1.1.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(rename = "socketPath", default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR notation (`10.244.1.7/32`).
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    // 1.1.0 only, from here on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// Route scope `link` (253), as `ip route` numbers it.
pub const SCOPE_LINK: u32 = 253;

impl CniResult {
    /// The result as `version` writes it: 1.0.0 has no interface `mtu`, `socketPath`,
    /// `pciID` nor route `mtu`, `advmss`, `priority`, `table`, `scope`.
    pub fn for_version(mut self, version: &str) -> CniResult {
        self.cni_version = version.to_string();
        if version == "1.0.0" {
            for i in &mut self.interfaces {
                (i.mtu, i.socket_path, i.pci_id) = (None, None, None);
            }
            for r in &mut self.routes {
                (r.mtu, r.advmss, r.priority, r.table, r.scope) = (None, None, None, None, None);
            }
        }
        self
    }

    /// The first IPv4 address of the result (an IPAM plugin's answer), without its prefix length.
    pub fn first_ipv4(&self) -> Option<Ipv4Addr> {
        self.ips.iter().find_map(|i| i.address.split_once('/').and_then(|(a, _)| a.parse().ok()))
    }

    /// The address the result gives an interface (by name), for CHECK.
    pub fn address_of(&self, ifname: &str) -> Option<Ipv4Addr> {
        let idx = self.interfaces.iter().position(|i| i.name == ifname)?;
        self.ips.iter().filter(|i| i.interface == Some(idx)).find_map(|i| i.address.split_once('/')?.0.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::spec::CniError;

    #[test]
    fn result_shapes_per_version() {
        let r = CniResult {
            interfaces: vec![Interface { name: "eth0".into(), mtu: Some(1450), ..Default::default() }],
            routes: vec![Route { dst: "169.254.1.1/32".into(), scope: Some(SCOPE_LINK), ..Default::default() }],
            ..Default::default()
        };
        let v10 = serde_json::to_value(r.clone().for_version("1.0.0")).unwrap();
        assert_eq!(
            v10,
            serde_json::json!({"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"routes":[{"dst":"169.254.1.1/32"}]})
        );
        let v11 = serde_json::to_value(r.for_version("1.1.0")).unwrap();
        assert_eq!(v11["interfaces"][0]["mtu"], 1450);
        assert_eq!(v11["routes"][0]["scope"], 253);
        let e = CniError::new(7, "invalid network configuration", "name is missing");
        assert_eq!(
            e.to_json("1.0.0"),
            serde_json::json!({"cniVersion":"1.0.0","code":7,"msg":"invalid network configuration","details":"name is missing"})
        );
    }
}
