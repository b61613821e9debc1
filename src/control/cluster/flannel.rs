//! flannel's registry format, byte for byte: the network config at `<prefix>/config`,
//! the subnet lease keys `<prefix>/subnets/10.244.1.0-24` and their JSON values, and
//! the choice of a free subnet (flannel `pkg/subnet/config.go`, `pkg/lease`,
//! `pkg/subnet/etcd/local_manager.go`). Pure: text in, values out.
//!
//! Heads up: flanneld marshals `LeaseAttrs` with Go's `encoding/json`, so the field order
//! is the struct's (`PublicIP`, `PublicIPv6`, `BackendType`, `BackendData`) and a missing
//! IPv6 address is an explicit `null`. Other flannel nodes compare values, not bytes, but
//! `etcdctl get` output is what operators diff, so we write exactly what flanneld writes.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::core::Ipv4Net;
use crate::wire::MacAddr;

/// A fault in a flannel record, naming the record and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlannelError {
    #[error("network config: {0}")]
    Config(String),
    #[error("subnet key '{0}' is not <a.b.c.d>-<len>")]
    Key(String),
    #[error("lease {key}: {problem}")]
    Lease { key: String, problem: String },
    #[error("out of subnets in Network {network}: every /{len} between {min} and {max} is leased")]
    OutOfSubnets { network: Ipv4Net, len: u8, min: Ipv4Addr, max: Ipv4Addr },
}

/// flanneld's lease lifetime (`subnetTTL`).
pub const LEASE_TTL_SECS: u64 = 24 * 3600;
/// flanneld's default `--subnet-lease-renew-margin` (60 minutes before expiry).
pub const RENEW_MARGIN_SECS: u64 = 3600;

/// `<prefix>/config`, resolved with flannel's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub backend_type: String,
    pub vni: u32,
    pub port: u16,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    network: Option<String>,
    #[serde(default)]
    subnet_len: u8,
    subnet_min: Option<String>,
    subnet_max: Option<String>,
    backend: Option<RawBackend>,
}

#[derive(Deserialize)]
struct RawBackend {
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(rename = "VNI")]
    vni: Option<u32>,
    #[serde(rename = "Port")]
    port: Option<u16>,
}

fn cfg_err(s: impl Into<String>) -> FlannelError {
    FlannelError::Config(s.into())
}

fn ip_field(name: &str, v: &Option<String>) -> Result<Option<Ipv4Addr>, FlannelError> {
    v.as_deref().map(|s| s.parse().map_err(|_| cfg_err(format!("{name}: '{s}' is not an IPv4 address")))).transpose()
}

impl NetworkConfig {
    /// Parses `<prefix>/config` and applies flannel's defaults and checks: `SubnetLen`
    /// 24 (or network + 2 for networks smaller than /22), `SubnetMin` the second subnet,
    /// `SubnetMax` the last, backend `udp` when none is named (which ucanal refuses).
    pub fn parse(text: &[u8]) -> Result<NetworkConfig, FlannelError> {
        let raw: RawConfig = serde_json::from_slice(text).map_err(|e| cfg_err(format!("not flannel JSON: {e}")))?;
        let net = raw.network.ok_or_else(|| cfg_err("Network is missing"))?;
        let network: Ipv4Net = net.parse().map_err(|e: String| cfg_err(format!("Network: {e}")))?;
        let plen = network.prefix_len();
        let subnet_len = if raw.subnet_len > 0 {
            if raw.subnet_len > 30 {
                return Err(cfg_err(format!("SubnetLen {} is over 30", raw.subnet_len)));
            }
            if raw.subnet_len < plen + 2 {
                return Err(cfg_err(format!("SubnetLen {} does not fit twice into {network}", raw.subnet_len)));
            }
            raw.subnet_len
        } else if plen > 28 {
            return Err(cfg_err(format!("Network {network} is smaller than a /28")));
        } else if plen <= 22 {
            24
        } else {
            plen + 2
        };
        let size = 1u32 << (32 - subnet_len);
        let base = u32::from(network.addr());
        let last = base | !crate::core::mask(plen);
        let subnet_min = ip_field("SubnetMin", &raw.subnet_min)?.unwrap_or(Ipv4Addr::from(base + size));
        let subnet_max = ip_field("SubnetMax", &raw.subnet_max)?.unwrap_or(Ipv4Addr::from(last - size + 1));
        for (name, ip) in [("SubnetMin", subnet_min), ("SubnetMax", subnet_max)] {
            if !network.contains(ip) {
                return Err(cfg_err(format!("{name} {ip} is not inside Network {network}")));
            }
        }
        let backend = raw.backend.unwrap_or(RawBackend { kind: None, vni: None, port: None });
        Ok(NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend_type: backend.kind.unwrap_or_else(|| "udp".into()),
            vni: backend.vni.unwrap_or(1),
            port: backend.port.unwrap_or(8472),
        })
    }

    /// flannel's `isSubnetConfigCompat`: the subnet lies in `SubnetMin..=SubnetMax` and
    /// has the configured length.
    pub fn compatible(&self, sn: Ipv4Net) -> bool {
        sn.prefix_len() == self.subnet_len && sn.addr() >= self.subnet_min && sn.addr() <= self.subnet_max
    }

    /// Up to 100 free subnets from `SubnetMin` upward, as flannel's `allocateSubnet`
    /// gathers them; the caller picks one at random.
    pub fn free_subnets<'a>(&self, taken: impl Iterator<Item = &'a Ipv4Net> + Clone) -> Vec<Ipv4Net> {
        let step = 1u64 << (32 - self.subnet_len);
        let mut out = Vec::new();
        let mut ip = u64::from(u32::from(self.subnet_min));
        while ip <= u64::from(u32::from(self.subnet_max)) && out.len() < 100 {
            if let Some(sn) = Ipv4Net::new(Ipv4Addr::from(ip as u32), self.subnet_len)
                && !taken.clone().any(|t| t.overlaps(&sn))
            {
                out.push(sn);
            }
            ip += step;
        }
        out
    }

    /// A free subnet chosen with `random` (any value) among [`Self::free_subnets`], as
    /// flanneld's `allocateSubnet` picks one at random from its bag; or the
    /// out-of-subnets error naming the network.
    pub fn allocate<'a>(
        &self,
        taken: impl Iterator<Item = &'a Ipv4Net> + Clone,
        random: u64,
    ) -> Result<Ipv4Net, FlannelError> {
        let free = self.free_subnets(taken);
        if free.is_empty() {
            return Err(FlannelError::OutOfSubnets {
                network: self.network,
                len: self.subnet_len,
                min: self.subnet_min,
                max: self.subnet_max,
            });
        }
        Ok(free[(random % free.len() as u64) as usize])
    }
}

/// The key of a subnet lease below `<prefix>/subnets/`: `10.244.1.0-24`.
pub fn subnet_key(sn: Ipv4Net) -> String {
    format!("{}-{}", sn.addr(), sn.prefix_len())
}

/// Parses the last path element of a lease key (`10.244.1.0-24`, or flannel's dual-stack
/// `10.244.1.0-24&fc00::-64`, whose IPv6 half ucanal ignores).
pub fn parse_subnet_key(key: &str) -> Result<Ipv4Net, FlannelError> {
    let bad = || FlannelError::Key(key.to_string());
    let last = key.rsplit('/').next().unwrap_or(key);
    let v4 = last.split('&').next().unwrap_or(last);
    let (a, l) = v4.split_once('-').ok_or_else(bad)?;
    let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let len: u8 = l.parse().map_err(|_| bad())?;
    let sn = Ipv4Net::new(addr, len).ok_or_else(bad)?;
    if sn.addr() != addr {
        return Err(bad());
    }
    Ok(sn)
}

/// The value of a lease: what flanneld's `LeaseAttrs` holds for the vxlan backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAttrs {
    pub public_ip: Ipv4Addr,
    pub backend_type: String,
    /// `BackendData` of a vxlan lease; `None` for other backends (which ucanal ignores).
    pub vxlan: Option<VxlanData>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanData {
    pub vni: u32,
    pub vtep_mac: MacAddr,
}

#[derive(Deserialize)]
struct RawLease {
    #[serde(rename = "PublicIP")]
    public_ip: String,
    #[serde(rename = "BackendType", default)]
    backend_type: String,
    #[serde(rename = "BackendData", default)]
    backend_data: Option<serde_json::Value>,
}

impl LeaseAttrs {
    pub fn vxlan(public_ip: Ipv4Addr, vni: u32, vtep_mac: MacAddr) -> LeaseAttrs {
        LeaseAttrs { public_ip, backend_type: "vxlan".into(), vxlan: Some(VxlanData { vni, vtep_mac }) }
    }

    /// The JSON flanneld writes (see the module's heads-up about byte identity).
    pub fn to_json(&self) -> String {
        let mut s = format!(r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"#, self.public_ip);
        // Backend names are flannel's own words (`vxlan`, `host-gw`): JSON-escape anyway.
        s.push_str(&serde_json::Value::from(self.backend_type.as_str()).to_string());
        if let Some(v) = self.vxlan {
            let _ = write!(s, r#","BackendData":{{"VNI":{},"VtepMAC":"{}"}}"#, v.vni, v.vtep_mac);
        }
        s.push('}');
        s
    }

    /// Parses a lease value; `key` only names the lease in errors. A lease of another
    /// backend parses (with `vxlan: None`) so the caller can count and ignore it.
    pub fn parse(key: &str, value: &[u8]) -> Result<LeaseAttrs, FlannelError> {
        let bad = |p: String| FlannelError::Lease { key: key.to_string(), problem: p };
        let raw: RawLease = serde_json::from_slice(value).map_err(|e| bad(format!("not flannel JSON: {e}")))?;
        let public_ip: Ipv4Addr =
            raw.public_ip.parse().map_err(|_| bad(format!("PublicIP '{}' is not an IPv4 address", raw.public_ip)))?;
        let vxlan = if raw.backend_type == "vxlan" {
            let d = raw.backend_data.ok_or_else(|| bad("vxlan lease without BackendData".into()))?;
            let mac =
                d.get("VtepMAC").and_then(|m| m.as_str()).ok_or_else(|| bad("BackendData.VtepMAC missing".into()))?;
            let vtep_mac: MacAddr =
                mac.parse().map_err(|_| bad(format!("BackendData.VtepMAC '{mac}' is not a MAC")))?;
            let vni = match d.get("VNI") {
                None | Some(serde_json::Value::Null) => 1,
                Some(v) => v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n < 1 << 24)
                    .ok_or_else(|| bad(format!("BackendData.VNI {v} is not a 24-bit number")))?,
            };
            Some(VxlanData { vni, vtep_mac })
        } else {
            None
        };
        Ok(LeaseAttrs { public_ip, backend_type: raw.backend_type, vxlan })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What flanneld v0.26 wrote for the article's centos7-1 (etcdctl get output).
    const ARTICLE_LEASE: &str = r#"{"PublicIP":"172.16.240.131","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"8a:40:90:1c:cf:7e"}}"#;

    #[test]
    fn lease_value_is_flanneld_bytes() {
        let l = LeaseAttrs::vxlan(Ipv4Addr::new(172, 16, 240, 131), 1, "8a:40:90:1c:cf:7e".parse().unwrap());
        assert_eq!(l.to_json(), ARTICLE_LEASE);
        assert_eq!(LeaseAttrs::parse("k", ARTICLE_LEASE.as_bytes()).unwrap(), l);
    }

    #[test]
    fn lease_parse_accepts_older_flannel_and_other_backends() {
        // flannel 0.x before PublicIPv6 and VNI in BackendData (the docs' example).
        let old = r#"{"PublicIP":"10.37.7.195","BackendType":"vxlan","BackendData":{"VtepMAC":"82:4b:b6:2f:54:4e"}}"#;
        let l = LeaseAttrs::parse("k", old.as_bytes()).unwrap();
        assert_eq!(l.vxlan.unwrap().vni, 1);
        let hg = r#"{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendType":"host-gw"}"#;
        let l = LeaseAttrs::parse("k", hg.as_bytes()).unwrap();
        assert_eq!((l.backend_type.as_str(), l.vxlan), ("host-gw", None));
    }

    #[test]
    fn lease_errors_name_key_and_field() {
        let e = LeaseAttrs::parse("/x/10.244.1.0-24", br#"{"PublicIP":"nope","BackendType":"vxlan"}"#);
        assert_eq!(e.unwrap_err().to_string(), "lease /x/10.244.1.0-24: PublicIP 'nope' is not an IPv4 address");
        let e = LeaseAttrs::parse("k", br#"{"PublicIP":"1.2.3.4","BackendType":"vxlan","BackendData":{}}"#);
        assert!(e.unwrap_err().to_string().contains("VtepMAC missing"));
        let e = LeaseAttrs::parse(
            "k",
            br#"{"PublicIP":"1.2.3.4","BackendType":"vxlan","BackendData":{"VNI":16777216,"VtepMAC":"02:00:00:00:00:01"}}"#,
        );
        assert!(e.unwrap_err().to_string().contains("24-bit"));
        assert!(LeaseAttrs::parse("k", b"\xff").is_err());
    }

    #[test]
    fn subnet_keys_round_trip() {
        let sn: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        assert_eq!(subnet_key(sn), "10.244.1.0-24");
        assert_eq!(parse_subnet_key("/coreos.com/network/subnets/10.244.1.0-24").unwrap(), sn);
        assert_eq!(parse_subnet_key("10.244.1.0-24&fc00::-64").unwrap(), sn);
        for bad in ["10.244.1.0", "10.244.1.5-24", "10.244.1.0-33", "x-24", ""] {
            assert!(parse_subnet_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_defaults_follow_flannel() {
        let c = NetworkConfig::parse(br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!((c.backend_type.as_str(), c.vni, c.port), ("vxlan", 1, 8472));
        let c = NetworkConfig::parse(br#"{"Network":"10.1.0.0/24"}"#).unwrap();
        assert_eq!((c.subnet_len, c.backend_type.as_str()), (26, "udp"));
        assert_eq!((c.subnet_min, c.subnet_max), (Ipv4Addr::new(10, 1, 0, 64), Ipv4Addr::new(10, 1, 0, 192)));
        let c = NetworkConfig::parse(
            br#"{"Network":"10.244.0.0/16","SubnetLen":25,"SubnetMin":"10.244.8.0","SubnetMax":"10.244.9.128","Backend":{"Type":"vxlan","VNI":4096,"Port":4789}}"#,
        )
        .unwrap();
        assert_eq!((c.subnet_len, c.vni, c.port), (25, 4096, 4789));
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = |s: &str| NetworkConfig::parse(s.as_bytes()).unwrap_err().to_string();
        assert_eq!(e(r#"{}"#), "network config: Network is missing");
        assert!(e(r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#).contains("SubnetLen 31 is over 30"));
        assert!(e(r#"{"Network":"10.244.0.0/16","SubnetLen":17}"#).contains("does not fit twice"));
        assert!(e(r#"{"Network":"10.244.0.0/29"}"#).contains("smaller than a /28"));
        assert!(
            e(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0"}"#).contains("SubnetMin 10.245.0.0 is not inside")
        );
        assert!(e(r#"{"Network":"10.244.0.1/16"}"#).contains("host bits"));
    }

    #[test]
    fn allocation_over_the_full_range_is_random_among_the_free() {
        // A /24 cut in /26s: SubnetMin .64 .. SubnetMax .192, flannel's defaults.
        let c = NetworkConfig::parse(br#"{"Network":"10.1.0.0/24"}"#).unwrap();
        let all: Vec<Ipv4Net> = ["10.1.0.64/26", "10.1.0.128/26", "10.1.0.192/26"].map(|s| s.parse().unwrap()).into();
        assert_eq!(c.free_subnets(std::iter::empty()), all);
        let picked: std::collections::BTreeSet<Ipv4Net> =
            (0..3).map(|r| c.allocate(std::iter::empty(), r).unwrap()).collect();
        assert_eq!(picked.len(), 3, "each random value a different free subnet: {picked:?}");
        assert_eq!(c.allocate(std::iter::empty(), u64::MAX).unwrap(), all[(u64::MAX % 3) as usize]);
        // A /16: the bag holds the first 100 free /24s from SubnetMin, as flanneld's does.
        let c = NetworkConfig::parse(br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        let taken: Vec<Ipv4Net> = vec!["10.244.1.0/24".parse().unwrap(), "10.244.3.0/24".parse().unwrap()];
        let free = c.free_subnets(taken.iter());
        assert_eq!(free.len(), 100);
        assert_eq!((free[0].to_string(), free[1].to_string()), ("10.244.2.0/24".into(), "10.244.4.0/24".into()));
        assert_eq!(free[99].to_string(), "10.244.102.0/24");
        for r in 0..500 {
            let sn = c.allocate(taken.iter(), r * 7919).unwrap();
            assert!(c.compatible(sn) && !taken.iter().any(|t| t.overlaps(&sn)), "{sn}");
        }
        // SubnetMin/SubnetMax bound the range; a lease of another size still blocks what it overlaps.
        let c = NetworkConfig::parse(
            br#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.8.0","SubnetMax":"10.244.10.0","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let wide: Vec<Ipv4Net> = vec!["10.244.8.0/23".parse().unwrap()];
        assert_eq!(c.free_subnets(wide.iter()), vec!["10.244.10.0/24".parse().unwrap()]);
        let e = c.allocate(["10.244.8.0/22".parse().unwrap()].iter(), 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "out of subnets in Network 10.244.0.0/16: every /24 between 10.244.8.0 and 10.244.10.0 is leased"
        );
    }

    #[test]
    fn allocation_skips_taken_and_runs_out() {
        let c = NetworkConfig::parse(br#"{"Network":"10.1.0.0/24"}"#).unwrap();
        let taken: Vec<Ipv4Net> = vec!["10.1.0.64/26".parse().unwrap(), "10.1.0.192/26".parse().unwrap()];
        assert_eq!(c.free_subnets(taken.iter()), vec!["10.1.0.128/26".parse().unwrap()]);
        assert_eq!(c.allocate(taken.iter(), 7).unwrap(), "10.1.0.128/26".parse().unwrap());
        let all: Vec<Ipv4Net> = vec!["10.1.0.0/24".parse().unwrap()];
        assert!(matches!(c.allocate(all.iter(), 0), Err(FlannelError::OutOfSubnets { .. })));
        // Taken one by one, the last error names the network and the range.
        let one_by_one: Vec<Ipv4Net> = c.free_subnets(std::iter::empty()).into_iter().collect();
        assert_eq!(
            c.allocate(one_by_one.iter(), 3).unwrap_err().to_string(),
            "out of subnets in Network 10.1.0.0/24: every /26 between 10.1.0.64 and 10.1.0.192 is leased"
        );
        assert!(c.compatible("10.1.0.128/26".parse().unwrap()));
        assert!(!c.compatible("10.1.0.0/26".parse().unwrap()) && !c.compatible("10.1.0.128/25".parse().unwrap()));
    }
}
