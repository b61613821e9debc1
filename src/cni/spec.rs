//! The CNI protocol's words, as the spec writes them (containernetworking/cni SPEC.md,
//! versions 1.0.0 and 1.1.0): the invocation (the `CNI_*` environment), `CNI_ARGS`, the
//! network configuration on stdin and the error result (the success result is in
//! [`super::result`]).
//!
//! Everything here is pure: text in, a typed value or a [`CniError`] naming the fault
//! out. The fuzz target `cni` feeds arbitrary bytes to [`NetConf::parse`],
//! [`CniArgs::parse`] and [`Invocation::from_env`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use super::result::{CniResult, Dns, Interface, IpConfig, Route, SCOPE_LINK};

/// The spec versions this plugin speaks (the result shapes of both are written below).
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];

/// The well-known error codes (SPEC.md, "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// ucanal's own (100+): the node daemon refused the attachment.
    pub const DAEMON_REFUSED: u32 = 100;
    /// The pod CIDR has no free address.
    pub const NO_ADDRESS: u32 = 101;
    /// The delegated IPAM plugin could not be run or answered nonsense.
    pub const IPAM_FAILED: u32 = 102;
    /// CHECK found the attachment different from `prevResult`.
    pub const CHECK_MISMATCH: u32 = 103;
    /// The daemon answered something that is not its protocol.
    pub const BAD_DAEMON_REPLY: u32 = 104;
}

/// A CNI error result: `{"cniVersion", "code", "msg", "details"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{msg}: {details} (CNI error {code})")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: details.into() }
    }
    /// The JSON the runtime reads from stdout.
    pub fn to_json(&self, version: &str) -> Value {
        serde_json::json!({ "cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details })
    }
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
    /// Operations on one attachment (they need a container id and an interface name).
    pub fn is_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// `CNI_ARGS`: `KEY=VALUE;KEY=VALUE`. Unknown keys are an error unless `IgnoreUnknown`
/// is set, as the reference plugins do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    /// `IP=`: the address the runtime asks for (podman `--ip`).
    pub ip: Option<Ipv4Addr>,
    /// `MAC=`: the MAC the runtime asks for (podman `--mac-address`).
    pub mac: Option<String>,
    pub other: BTreeMap<String, String>,
}

const KNOWN_ARGS: &[&str] =
    &["IgnoreUnknown", "K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID", "IP", "MAC"];

impl CniArgs {
    pub fn parse(s: &str) -> Result<CniArgs, CniError> {
        let bad = |d: String| CniError::new(code::INVALID_ENV, "invalid CNI_ARGS", d);
        let mut a = CniArgs::default();
        let mut pairs = Vec::new();
        for part in s.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| bad(format!("CNI_ARGS: '{part}' is not KEY=VALUE")))?;
            if k.is_empty() {
                return Err(bad(format!("CNI_ARGS: '{part}' has an empty key")));
            }
            pairs.push((k.to_string(), v.to_string()));
        }
        let ignore_unknown =
            pairs.iter().any(|(k, v)| k == "IgnoreUnknown" && matches!(v.to_ascii_lowercase().as_str(), "1" | "true"));
        for (k, v) in pairs {
            match k.as_str() {
                "K8S_POD_NAME" if !v.is_empty() => a.pod_name = Some(v),
                "K8S_POD_NAMESPACE" if !v.is_empty() => a.pod_namespace = Some(v),
                "IP" => a.ip = Some(v.parse().map_err(|_| bad(format!("CNI_ARGS: IP={v} is not an IPv4 address")))?),
                "MAC" => a.mac = Some(v),
                _ if KNOWN_ARGS.contains(&k.as_str()) => {}
                _ if !ignore_unknown => {
                    return Err(bad(format!("CNI_ARGS: unknown key {k}={v} (set IgnoreUnknown=1 to ignore it)")));
                }
                _ => {
                    a.other.insert(k, v);
                }
            }
        }
        Ok(a)
    }

    /// The pod's name as ucanal lists it: `namespace/name`, else the name, else `None`.
    pub fn pod(&self) -> Option<String> {
        match (&self.pod_namespace, &self.pod_name) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            (None, Some(n)) => Some(n.clone()),
            _ => None,
        }
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    /// Empty for VERSION, STATUS and GC.
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

fn valid_container_id(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphanumeric())
        && c.all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'))
}

pub use crate::api::pod::valid_ifname;

impl Invocation {
    /// Reads and checks the environment (`get` is `std::env::var` in the plugin).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let bad = |var: &str, d: String| CniError::new(code::INVALID_ENV, format!("invalid {var}"), d);
        let cmd = get("CNI_COMMAND").unwrap_or_default();
        let command = Command::parse(&cmd).ok_or_else(|| {
            bad("CNI_COMMAND", format!("CNI_COMMAND='{cmd}' is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"))
        })?;
        let mut inv = Invocation {
            command,
            container_id: String::new(),
            netns: get("CNI_NETNS").filter(|s| !s.is_empty()).map(PathBuf::from),
            ifname: String::new(),
            args: CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?,
            path: get("CNI_PATH").unwrap_or_default().split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect(),
        };
        if !command.is_attachment() {
            return Ok(inv);
        }
        inv.container_id = get("CNI_CONTAINERID").unwrap_or_default();
        if !valid_container_id(&inv.container_id) {
            return Err(bad(
                "CNI_CONTAINERID",
                format!(
                    "CNI_CONTAINERID='{}' must start with a letter or digit, then letters, digits, _ . -",
                    inv.container_id
                ),
            ));
        }
        inv.ifname = get("CNI_IFNAME").unwrap_or_default();
        if !valid_ifname(&inv.ifname) {
            return Err(bad("CNI_IFNAME", format!("CNI_IFNAME='{}' is not an interface name", inv.ifname)));
        }
        if command != Command::Del {
            match &inv.netns {
                None => return Err(bad("CNI_NETNS", "CNI_NETNS is required for ADD and CHECK".into())),
                Some(p) if !p.is_absolute() => {
                    return Err(bad("CNI_NETNS", format!("CNI_NETNS='{}' is not an absolute path", p.display())));
                }
                _ => {}
            }
        }
        Ok(inv)
    }
}

/// The plugin's configuration, as the runtime derives it from the network's conflist.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    /// The node daemon's API socket (ucanal's own key; default /run/ucanal/ucanal.sock).
    pub socket: PathBuf,
    /// The `ipam` section: delegate addresses to this plugin (its `type`) instead of ucanal.
    pub ipam: Option<String>,
    pub dns: Option<Dns>,
    pub prev_result: Option<CniResult>,
    /// GC's `cni.dev/valid-attachments`: (container id, interface name).
    pub valid_attachments: Option<Vec<(String, String)>>,
    /// The pod's labels: `args.cni.labels` (`[{"key":..,"value":..}]`, CNI's conventions).
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Keys the plugin accepts; any other key is refused with code 2, naming it.
const KNOWN_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "socket",
    "ipam",
    "dns",
    "prevResult",
    "runtimeConfig",
    "args",
    "capabilities",
    "ipMasq",
    "disableCheck",
    "disableGC",
];

impl NetConf {
    /// The version a failed parse should still answer in (the input's, if it has one).
    pub fn version_of(bytes: &[u8]) -> String {
        serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string))
            .filter(|v| v.len() <= 32)
            .unwrap_or_else(|| "1.0.0".into())
    }

    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::new(code::DECODE_FAILURE, "decoding the network configuration", e.to_string()))?;
        let Value::Object(m) = v else {
            return Err(CniError::new(code::DECODE_FAILURE, "decoding the network configuration", "not a JSON object"));
        };
        let invalid = |d: String| CniError::new(code::INVALID_CONFIG, "invalid network configuration", d);
        let version = str_field(&m, "cniVersion")?.ok_or_else(|| invalid("cniVersion is missing".into()))?;
        if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!("cniVersion {version} is not supported (this plugin speaks {})", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        for (k, val) in &m {
            if !KNOWN_KEYS.contains(&k.as_str()) && !k.starts_with("cni.dev/") {
                return Err(CniError::new(code::UNSUPPORTED_FIELD, "unsupported field", format!("{k}: {val}")));
            }
        }
        let name = str_field(&m, "name")?.ok_or_else(|| invalid("name is missing".into()))?;
        if !valid_container_id(&name) {
            return Err(invalid(format!(
                "name '{name}' must start with a letter or digit, then letters, digits, _ . -"
            )));
        }
        let plugin_type = str_field(&m, "type")?.ok_or_else(|| invalid("type is missing".into()))?;
        let socket = match str_field(&m, "socket")? {
            Some(s) if s.starts_with('/') => PathBuf::from(s),
            Some(s) => return Err(invalid(format!("socket '{s}' is not an absolute path"))),
            None => PathBuf::from(crate::api::DEFAULT_SOCKET),
        };
        let ipam = match m.get("ipam") {
            None | Some(Value::Null) => None,
            Some(Value::Object(i)) if i.is_empty() => None,
            Some(Value::Object(i)) => match i.get("type").and_then(Value::as_str) {
                Some(t) if !t.is_empty() && !t.contains('/') && t != "." && t != ".." => Some(t.to_string()),
                _ => return Err(invalid(format!("ipam.type must name a plugin, got {}", Value::Object(i.clone())))),
            },
            Some(o) => return Err(invalid(format!("ipam must be an object, got {o}"))),
        };
        let dns = decode::<Dns>(&m, "dns")?;
        let prev_result = decode::<CniResult>(&m, "prevResult")?;
        let valid_attachments = decode::<Vec<Attachment>>(&m, "cni.dev/valid-attachments")?
            .map(|v| v.into_iter().map(|a| (a.container_id, a.ifname)).collect());
        let labels = match m.get("args").and_then(|a| a.pointer("/cni/labels")) {
            None | Some(Value::Null) => Default::default(),
            Some(l) => serde_json::from_value::<Vec<Label>>(l.clone())
                .map_err(|e| invalid(format!("args.cni.labels: {e}")))?
                .into_iter()
                .map(|l| (l.key, l.value))
                .collect(),
        };
        Ok(NetConf {
            cni_version: version,
            name,
            plugin_type,
            socket,
            ipam,
            dns,
            prev_result,
            valid_attachments,
            labels,
        })
    }
}

/// One of `args.cni.labels`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Label {
    key: String,
    value: String,
}

#[derive(Deserialize)]
struct Attachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

fn str_field(m: &Map<String, Value>, k: &str) -> Result<Option<String>, CniError> {
    match m.get(k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(o) => Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            format!("{k} must be a string, got {o}"),
        )),
    }
}

fn decode<T: serde::de::DeserializeOwned>(m: &Map<String, Value>, k: &str) -> Result<Option<T>, CniError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| CniError::new(code::DECODE_FAILURE, format!("decoding {k}"), e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn invocation_from_env() {
        let e = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;FOO=bar"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ];
        let i = Invocation::from_env(env(&e)).unwrap();
        assert_eq!(i.command, Command::Add);
        assert_eq!(i.args.pod().as_deref(), Some("default/web"));
        assert_eq!(i.path.len(), 2);
        let missing = Invocation::from_env(env(&e[..2])).unwrap_err();
        assert_eq!(missing.code, code::INVALID_ENV);
        assert!(missing.details.contains("CNI_IFNAME"), "{missing}");
        let no_ns = [e[0], e[1], e[3]];
        assert!(Invocation::from_env(env(&no_ns)).unwrap_err().details.contains("CNI_NETNS"));
        let del = [("CNI_COMMAND", "DEL"), e[1], e[3]];
        assert!(Invocation::from_env(env(&del)).unwrap().netns.is_none());
        let bad_id = [e[0], ("CNI_CONTAINERID", "-x"), e[2], e[3]];
        assert!(Invocation::from_env(env(&bad_id)).unwrap_err().details.contains("CNI_CONTAINERID"));
        assert!(Invocation::from_env(env(&[("CNI_COMMAND", "LIST")])).unwrap_err().details.contains("CNI_COMMAND"));
    }

    #[test]
    fn cni_args() {
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        assert_eq!(CniArgs::parse("K8S_POD_NAME=web").unwrap().pod().as_deref(), Some("web"));
        assert_eq!(CniArgs::parse("IP=10.244.1.9").unwrap().ip, Some(Ipv4Addr::new(10, 244, 1, 9)));
        assert!(CniArgs::parse("FOO=bar").unwrap_err().details.contains("FOO=bar"));
        assert!(CniArgs::parse("IgnoreUnknown=true;FOO=bar").is_ok());
        assert!(CniArgs::parse("novalue").is_err());
        assert!(CniArgs::parse("IP=300.1.1.1").is_err());
    }

    #[test]
    fn netconf_parses_and_names_faults() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"ucanal","type":"ucanal-cni","socket":"/run/ucanal/n1.sock",
                 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]]},"dns":{"nameservers":["10.250.0.10"]}}"#,
        )
        .unwrap();
        assert_eq!(c.ipam.as_deref(), Some("host-local"));
        assert_eq!(c.socket, PathBuf::from("/run/ucanal/n1.sock"));
        assert_eq!(c.dns.unwrap().nameservers, ["10.250.0.10"]);
        let e = |b: &[u8]| NetConf::parse(b).unwrap_err();
        assert_eq!(e(b"{").code, code::DECODE_FAILURE);
        assert_eq!(e(b"[]").code, code::DECODE_FAILURE);
        assert_eq!(e(br#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#).code, code::INCOMPATIBLE_VERSION);
        let u = e(br#"{"cniVersion":"1.0.0","name":"n","type":"t","sokcet":"/x"}"#);
        assert_eq!((u.code, u.details.as_str()), (code::UNSUPPORTED_FIELD, r#"sokcet: "/x""#));
        assert_eq!(e(br#"{"cniVersion":"1.0.0","type":"t"}"#).code, code::INVALID_CONFIG);
        assert_eq!(e(br#"{"cniVersion":"1.0.0","name":"n","type":"t","socket":"rel"}"#).code, code::INVALID_CONFIG);
        assert_eq!(
            e(br#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"../x"}}"#).code,
            code::INVALID_CONFIG
        );
        assert_eq!(NetConf::version_of(br#"{"cniVersion":"9.9.9"}"#), "9.9.9");
    }
}
