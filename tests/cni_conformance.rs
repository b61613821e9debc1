//! Issue "CNI plugin": the plugin binary run exactly as a runtime runs it (the `CNI_*`
//! environment, the config on stdin), against a ucanal node of the lab, and every result
//! or error checked against the JSON shapes of the CNI spec (1.0.0 and 1.1.0).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;

use common::harness::Suite;
use common::{Lab, text};
use serde_json::{Value, json};

fn plugin_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ucanal-cni"))
}

/// One invocation: (exit status, stdout as JSON or Null when empty).
fn invoke(env: &[(&str, &str)], stdin: &Value) -> (i32, Value) {
    let mut c = Command::new(plugin_bin())
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ucanal-cni");
    c.stdin.take().unwrap().write_all(stdin.to_string().as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    let s = text(&out.stdout);
    let v = if s.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {s:?}"))
    };
    (out.status.code().unwrap_or(-1), v)
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().map(String::as_str).collect()
}

fn is_cidr(s: &Value) -> bool {
    s.as_str()
        .and_then(|s| s.split_once('/'))
        .is_some_and(|(a, l)| a.parse::<std::net::IpAddr>().is_ok() && l.parse::<u8>().is_ok_and(|l| l <= 128))
}

/// SPEC.md "Error": exactly cniVersion, code, msg, details; a non-zero exit.
fn assert_error(r: &(i32, Value), code: u64, version: &str) -> String {
    let (status, v) = r;
    assert_ne!(*status, 0, "an error exits non-zero: {v}");
    assert_eq!(keys(v), BTreeSet::from(["cniVersion", "code", "msg", "details"]), "{v}");
    assert_eq!(v["cniVersion"], version, "{v}");
    assert_eq!(v["code"].as_u64(), Some(code), "{v}");
    assert!(!v["msg"].as_str().unwrap().is_empty(), "{v}");
    v["details"].as_str().unwrap().to_string()
}

/// SPEC.md "ADD Success" for `version`: only the spec's keys, CIDRs where it says so,
/// `interface` indexes in range.
fn assert_result(r: &(i32, Value), version: &str) {
    let (status, v) = r;
    assert_eq!(*status, 0, "{v}");
    assert!(keys(v).is_subset(&BTreeSet::from(["cniVersion", "interfaces", "ips", "routes", "dns"])), "{v}");
    assert_eq!(v["cniVersion"], version);
    let v11 = version == "1.1.0";
    let ifaces = v["interfaces"].as_array().unwrap();
    for i in ifaces {
        let allowed: &[&str] =
            if v11 { &["name", "mac", "mtu", "sandbox", "socketPath", "pciID"] } else { &["name", "mac", "sandbox"] };
        assert!(keys(i).iter().all(|k| allowed.contains(k)), "{version} interface {i}");
        assert!(i["name"].is_string());
    }
    for ip in v["ips"].as_array().unwrap() {
        assert!(keys(ip).is_subset(&BTreeSet::from(["address", "gateway", "interface"])), "{ip}");
        assert!(is_cidr(&ip["address"]), "{ip}");
        assert!((ip["interface"].as_u64().unwrap() as usize) < ifaces.len(), "{ip}");
    }
    for rt in v["routes"].as_array().unwrap() {
        let allowed: &[&str] =
            if v11 { &["dst", "gw", "mtu", "advmss", "priority", "table", "scope"] } else { &["dst", "gw"] };
        assert!(keys(rt).iter().all(|k| allowed.contains(k)), "{version} route {rt}");
        assert!(is_cidr(&rt["dst"]), "{rt}");
    }
}

struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
        Netns(name)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
    fn ip(&self, args: &[&str]) -> String {
        text(&Command::new("ip").args(["-n", &self.0]).args(args).output().unwrap().stdout)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Removes the node daemons' lease files when the test ends.
struct Leases(Vec<PathBuf>);

impl Drop for Leases {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn conf(socket: &Path, version: &str) -> Value {
    json!({"cniVersion": version, "name": "ucanal", "type": "ucanal-cni", "socket": socket,
           "dns": {"nameservers": ["10.250.0.10"]}})
}

fn main() -> ExitCode {
    let mut suite = Suite::new();
    suite
        .group("cni_conformance", &[], Node::up)
        .phase("version", version)
        .phase("add_gives_the_specs_result_and_the_pod_view", add)
        .phase_after("a_second_add_is_an_error", &["add_gives_the_specs_result_and_the_pod_view"], |n| {
            assert_error(&invoke(&n.env("ADD"), &conf(&n.sock, "1.0.0")), 100, "1.0.0");
        })
        .phase_after("check_compares_with_prev_result", &["add_gives_the_specs_result_and_the_pod_view"], check)
        .phase_after("del_succeeds_also_when_nothing_is_left", &["check_compares_with_prev_result"], del)
        .phase("bad_configs_get_the_specs_codes", bad_configs)
        .phase("environment_faults_get_the_specs_codes", environment_faults)
        .phase_after("v1_1_0_status_and_gc", &["del_succeeds_also_when_nothing_is_left"], v1_1_0)
        .phase("leases_survive_a_restart", |n| leases_survive_a_restart(&n.lab, &n.sock, &n.env("ADD")))
        .phase("host_local_ipam_is_delegated_to", |n| host_local(&n.lab, &n.sock, &n.env("ADD")));
    suite.run()
}

/// A ucanal node of the lab, a namespace for the container, and the first ADD's result.
struct Node {
    ns: Netns,
    netns: String,
    _leases: Leases,
    sock: PathBuf,
    lab: Lab,
    added: OnceLock<Value>,
}

impl Node {
    fn up() -> Node {
        let lab = Lab::up("tn", &[]);
        let sock = lab.socket("centos7-1");
        let leases = Leases(vec![sock.with_file_name(format!("{}centos7-1.leases.json", lab.prefix))]);
        let ns = Netns::new(lab.ns("cni1"));
        let netns = ns.path();
        Node { ns, netns, _leases: leases, sock, lab, added: OnceLock::new() }
    }

    /// The runtime's environment for `cmd` on the container c0ffee01.
    fn env(&self, cmd: &'static str) -> Vec<(&'static str, &str)> {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c0ffee01"),
            ("CNI_NETNS", self.netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"),
            ("CNI_PATH", "/usr/lib/cni"),
        ]
    }

    /// The config with the first ADD's result as `prevResult`.
    fn with_prev(&self) -> Value {
        let mut c = conf(&self.sock, "1.0.0");
        c["prevResult"] = self.added.get().expect("the ADD's result").clone();
        c
    }
}

fn version(_: &Node) {
    let (st, v) = invoke(&[("CNI_COMMAND", "VERSION")], &json!({"cniVersion": "1.0.0"}));
    assert_eq!((st, keys(&v)), (0, BTreeSet::from(["cniVersion", "supportedVersions"])));
    assert_eq!(v["supportedVersions"], json!(["1.0.0", "1.1.0"]));
}

/// ADD: the result, and the pod view in the namespace.
fn add(n: &Node) {
    let (lab, ns, netns) = (&n.lab, &n.ns, &n.netns);
    let add = invoke(&n.env("ADD"), &conf(&n.sock, "1.0.0"));
    assert_result(&add, "1.0.0");
    let res = add.1.clone();
    let _ = n.added.set(res.clone());
    let ip = res["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.244.1.") && ip.ends_with("/32"), "{res}");
    assert_eq!(res["interfaces"][0]["sandbox"], netns.as_str());
    assert_eq!(res["dns"]["nameservers"], json!(["10.250.0.10"]));
    assert!(ns.ip(&["-4", "addr", "show", "eth0"]).contains(&format!("inet {ip} scope global eth0")));
    let routes = ns.ip(&["route"]);
    assert!(routes.contains("default via 169.254.1.1 dev eth0") && routes.contains("169.254.1.1 dev eth0 scope link"));
    let pods = lab.ucanal_ok("centos7-1", &["show", "pods"]);
    assert!(pods.lines().any(|l| l.starts_with("default/web ") && l.contains(netns.as_str())), "{pods}");
    assert!(lab.ping("cni1", "10.244.0.74", 2), "the CNI pod reaches ghost-ep2 over VXLAN");
}

/// CHECK against prevResult; then with a wrong prevResult; then with the gateway route
/// gone; then without prevResult.
fn check(n: &Node) {
    let with_prev = n.with_prev();
    assert_eq!(invoke(&n.env("CHECK"), &with_prev), (0, Value::Null));
    let mut wrong = with_prev.clone();
    wrong["prevResult"]["ips"][0]["address"] = json!("10.244.1.250/32");
    assert!(assert_error(&invoke(&n.env("CHECK"), &wrong), 103, "1.0.0").contains("10.244.1.250"));
    n.ns.ip(&["route", "del", "169.254.1.1", "dev", "eth0", "scope", "link"]);
    assert!(assert_error(&invoke(&n.env("CHECK"), &with_prev), 103, "1.0.0").contains("scope link"));
    assert_error(&invoke(&n.env("CHECK"), &conf(&n.sock, "1.0.0")), 7, "1.0.0");
}

/// DEL, and DEL again: both succeed with nothing on stdout; so does one without CNI_NETNS.
fn del(n: &Node) {
    let with_prev = n.with_prev();
    assert_eq!(invoke(&n.env("DEL"), &with_prev), (0, Value::Null));
    assert!(!n.ns.ip(&["link"]).contains("eth0"), "DEL removes the TAP");
    assert!(!n.lab.ucanal_ok("centos7-1", &["show", "pods"]).contains("default/web"));
    assert_eq!(invoke(&n.env("DEL"), &with_prev), (0, Value::Null));
    let del_no_netns: Vec<_> = n.env("DEL").into_iter().filter(|(k, _)| *k != "CNI_NETNS").collect();
    assert_eq!(invoke(&del_no_netns, &conf(&n.sock, "1.0.0")), (0, Value::Null));
}

/// Bad configs: malformed JSON, an unknown field, a missing name, an unknown cniVersion.
fn bad_configs(n: &Node) {
    let sock = &n.sock;
    let (st, v) = {
        let mut c = Command::new(plugin_bin())
            .env_clear()
            .envs(n.env("ADD"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(b"{\"cniVersion\": \"1.0.0\", ").unwrap();
        let o = c.wait_with_output().unwrap();
        (o.status.code().unwrap(), serde_json::from_slice::<Value>(&o.stdout).unwrap())
    };
    assert_error(&(st, v), 6, "1.0.0");
    let mut typo = conf(sock, "1.0.0");
    typo["sokcet"] = json!("/run/ucanal/x.sock");
    let d = assert_error(&invoke(&n.env("ADD"), &typo), 2, "1.0.0");
    assert!(d.contains("sokcet") && d.contains("/run/ucanal/x.sock"), "code 2 names key and value: {d}");
    let mut nameless = conf(sock, "1.0.0");
    nameless.as_object_mut().unwrap().remove("name");
    assert_error(&invoke(&n.env("ADD"), &nameless), 7, "1.0.0");
    assert!(assert_error(&invoke(&n.env("ADD"), &conf(sock, "0.2.0")), 1, "0.2.0").contains("0.2.0"));
    assert_error(&invoke(&n.env("ADD"), &conf(sock, "2.0.0")), 1, "2.0.0");
}

/// The daemon's socket when it is not there.
const ABSENT: &str = "/run/ucanal/ucanal-cni-test-absent.sock";

/// Environment faults: a missing netns, CNI_NETNS unset, a bad CNI_IFNAME; the daemon is
/// not there (ADD: try again later; DEL: success, nothing to detach).
fn environment_faults(n: &Node) {
    let sock = &n.sock;
    let mut gone = n.env("ADD");
    gone[2].1 = "/run/netns/ucanal-no-such-netns";
    assert_error(&invoke(&gone, &conf(sock, "1.0.0")), 3, "1.0.0");
    let unset: Vec<_> = n.env("ADD").into_iter().filter(|(k, _)| *k != "CNI_NETNS").collect();
    assert!(assert_error(&invoke(&unset, &conf(sock, "1.0.0")), 4, "1.0.0").contains("CNI_NETNS"));
    let mut bad_if = n.env("ADD");
    bad_if[3].1 = "this-name-is-too-long";
    assert!(assert_error(&invoke(&bad_if, &conf(sock, "1.0.0")), 4, "1.0.0").contains("CNI_IFNAME"));
    assert_error(&invoke(&n.env("ADD"), &conf(Path::new(ABSENT), "1.0.0")), 11, "1.0.0");
    // DEL is idempotent and best effort: with no daemon there is nothing to detach now.
    assert_eq!(invoke(&n.env("DEL"), &conf(Path::new(ABSENT), "1.0.0")), (0, Value::Null), "DEL, no daemon");
}

/// 1.1.0: the result carries mtu and the route scope; STATUS; GC removes what is not valid.
fn v1_1_0(n: &Node) {
    let (lab, sock) = (&n.lab, &n.sock);
    let add11 = invoke(&n.env("ADD"), &conf(sock, "1.1.0"));
    assert_result(&add11, "1.1.0");
    assert_eq!(add11.1["interfaces"][0]["mtu"], 1450);
    assert!(add11.1["routes"].as_array().unwrap().iter().any(|r| r["scope"] == 253));
    assert_eq!(invoke(&[("CNI_COMMAND", "STATUS")], &conf(sock, "1.1.0")), (0, Value::Null));
    assert_error(&invoke(&[("CNI_COMMAND", "STATUS")], &conf(Path::new(ABSENT), "1.0.0")), 50, "1.0.0");
    let mut gc = conf(sock, "1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c0ffee01", "ifname": "eth0"}]);
    assert_eq!(invoke(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")], &gc), (0, Value::Null));
    assert!(lab.ucanal_ok("centos7-1", &["show", "pods"]).contains("default/web"), "GC keeps valid attachments");
    gc["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(invoke(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")], &gc), (0, Value::Null));
    assert!(!lab.ucanal_ok("centos7-1", &["show", "pods"]).contains("default/web"), "GC removes stale ones");
}

/// Stops and starts a node's ucanal (SIGTERM, then the same command line), as the lab does;
/// the host port of the old one must be gone first (after a SIGKILL the kernel takes a moment),
/// and the old pid file too (else the wait may judge the new daemon by the old pid).
fn restart_ucanal(lab: &Lab, node: &str) {
    let script = format!(
        ". {}/netns-scripts/lib.sh; lab_init; lab_ucanal_stop {node}; \
         for i in $(seq 100); do ip -n {ns} link show ucanal0 >/dev/null 2>&1 || break; sleep 0.1; done; \
         rm -f \"$LAB_RUN_DIR/{node}.pid\"; lab_ucanal_start {node}; lab_ucanal_wait {node}",
        common::repo().display(),
        ns = lab.ns(node)
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .env("LAB_PREFIX", &lab.prefix)
        .env("UCANAL_BIN", common::ucanal_bin())
        .env_remove("UCANAL_RUN_ARGS")
        .output()
        .unwrap();
    assert!(out.status.success(), "restarting ucanal on {node}: {}", text(&out.stderr));
}

/// The default IPAM's leases outlive the daemon: after a restart a new attachment gets
/// another address, and the old one is released by its DEL.
fn leases_survive_a_restart(lab: &Lab, sock: &Path, add_env: &[(&str, &str)]) {
    let (ns_a, ns_b) = (Netns::new(lab.ns("cnia")), Netns::new(lab.ns("cnib")));
    let (pa, pb) = (ns_a.path(), ns_b.path());
    let mut a = add_env.to_vec();
    (a[1].1, a[2].1, a[4].1) = ("persist-a", pa.as_str(), "K8S_POD_NAME=a");
    let mut b = add_env.to_vec();
    (b[1].1, b[2].1, b[4].1) = ("persist-b", pb.as_str(), "K8S_POD_NAME=b");
    let ra = invoke(&a, &conf(sock, "1.0.0"));
    assert_result(&ra, "1.0.0");
    restart_ucanal(lab, "centos7-1");
    let rb = invoke(&b, &conf(sock, "1.0.0"));
    assert_result(&rb, "1.0.0");
    assert_ne!(ra.1["ips"][0]["address"], rb.1["ips"][0]["address"], "a live address handed out twice");
    let leases = sock.with_file_name(format!("{}centos7-1.leases.json", lab.prefix));
    let held = |ip: &Value| {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&leases).unwrap()).unwrap();
        v["leases"].as_object().unwrap().contains_key(ip.as_str().unwrap().split('/').next().unwrap())
    };
    assert!(held(&ra.1["ips"][0]["address"]) && held(&rb.1["ips"][0]["address"]));
    for e in [&mut a, &mut b] {
        e[0].1 = "DEL";
        assert_eq!(invoke(e, &conf(sock, "1.0.0")), (0, Value::Null));
    }
    assert!(!held(&ra.1["ips"][0]["address"]) && !held(&rb.1["ips"][0]["address"]), "DEL released both");
}

/// An `ipam` section delegates to Debian's host-local: its address, released on DEL.
fn host_local(lab: &Lab, sock: &Path, add_env: &[(&str, &str)]) {
    let data = tempfile::tempdir().unwrap();
    let mut c = conf(sock, "1.0.0");
    c["name"] = json!("ucanal-hl");
    c["ipam"] = json!({"type": "host-local", "dataDir": data.path(),
                       "ranges": [[{"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.200", "rangeEnd": "10.244.1.201"}]]});
    let mut e = add_env.to_vec();
    e[1].1 = "hostlocal1";
    let add = invoke(&e, &c);
    assert_result(&add, "1.0.0");
    assert_eq!(add.1["ips"][0]["address"], "10.244.1.200/32", "{}", add.1);
    let lease = data.path().join("ucanal-hl/10.244.1.200");
    assert!(text(&std::fs::read(&lease).unwrap()).starts_with("hostlocal1"));
    assert!(lab.ucanal_ok("centos7-1", &["show", "pods"]).contains("10.244.1.200"));
    let mut check = c.clone();
    check["prevResult"] = add.1.clone();
    e[0].1 = "CHECK";
    assert_eq!(invoke(&e, &check), (0, Value::Null));
    e[0].1 = "DEL";
    assert_eq!(invoke(&e, &check), (0, Value::Null));
    assert!(!lease.exists(), "DEL released the host-local lease");
    assert_eq!(invoke(&e, &check), (0, Value::Null));
    // A delegate's error comes back as it wrote it (host-local: unknown subnet field).
    c["ipam"]["ranges"] = json!([[{"subnet": "not-a-subnet"}]]);
    e[0].1 = "ADD";
    let (st, v) = invoke(&e, &c);
    assert_ne!(st, 0);
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()) && v["code"].is_u64(), "{v}");
}
