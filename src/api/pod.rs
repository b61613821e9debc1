//! A pod as the API and the config file name it: its network namespace, address and
//! interface.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::wire::MacAddr;

/// A pod to attach: its namespace (`/run/netns/<netns>` or an absolute path) and IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The MAC of the pod's eth0 (default 0a:58 + pod IP, as the CNI bridge plugin does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// The interface's name inside the pod (default `eth0`; CNI's `CNI_IFNAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// The pod's Kubernetes namespace, for network policy (default: the `ns` of a name
    /// `ns/name`, as CNI names pods, else `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The pod's labels, for network policy (a Pod object applied later replaces them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A Linux interface name: 1-15 bytes, no `/`, `:` or whitespace, not `.` or `..`.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

impl PodSpec {
    /// The interface's name inside the pod.
    pub fn ifname(&self) -> &str {
        self.ifname.as_deref().unwrap_or("eth0")
    }
    pub fn mac(&self) -> MacAddr {
        self.mac.unwrap_or_else(|| {
            let o = self.ip.octets();
            MacAddr([0x0a, 0x58, o[0], o[1], o[2], o[3]])
        })
    }
    /// The pod's Kubernetes namespace and name: its `namespace` and name, else `ns/name`
    /// as CNI names pods (`K8S_POD_NAMESPACE/K8S_POD_NAME`), else in `default`.
    pub fn kube_id(&self) -> (&str, &str) {
        match &self.namespace {
            Some(ns) => (ns, &self.name),
            None => self.name.split_once('/').unwrap_or(("default", &self.name)),
        }
    }
    /// The namespace file.
    pub fn netns_path(&self) -> PathBuf {
        if self.netns.starts_with('/') { PathBuf::from(&self.netns) } else { Path::new("/run/netns").join(&self.netns) }
    }
    /// Calico-style host-side name: `cali` + 11 hex digits of a hash of the pod name.
    pub fn port_name(&self) -> String {
        let h = crate::core::nat::mix64(
            self.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)),
        );
        format!("cali{:011x}", h & 0x0fff_ffff_ffff)
    }
}
