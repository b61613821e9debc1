//! Issue 25: no restart can leave a node without its dataplane. CNI pods attached by the
//! plugin (run as a runtime runs it) on centos7-1 of a `--keep-on-exit` lab go through the
//! exact sequence that took a node down: a SIGKILL restart (the pods stay, pinging
//! throughout), a DEL afterwards (pod, route, lease and state entry gone), a SIGTERM
//! hand-over (succeeds, pinging throughout), a pod whose network namespace was deleted
//! behind ucanal's back (dropped at the next start with a warning, counted in `show
//! node`), and a cold `ucanal run` over what a SIGKILLed ucanal left (adopted, not
//! refused). ghost-ep2 pings ghost-ep1 through the node during every restart, and the
//! lab leaves nothing in the socket directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::Mutex;
use std::time::Duration;

use common::cni::{Netns, invoke};
use common::harness::Suite;
use common::{Lab, text};
use serde_json::{Value, json};

const KEEP: &str = "--keep-on-exit";
const NODE: &str = "centos7-1";
const GHOST_EP1: &str = "10.244.1.5";
const GHOST_EP2: &str = "10.244.0.74";
/// Ping interval of the probes that run during a restart (ms).
const PROBE_MS: u64 = 100;
/// Longest outage a probe may see: a hand-over forwards on (the old ucanal until the
/// new one has the fds); a SIGKILL pays for the new process's start.
const TERM_OUTAGE_MS: u64 = 1_000;
const KILL_OUTAGE_MS: u64 = 3_000;

fn main() -> ExitCode {
    let mut suite = Suite::new();
    let (kill, del, term, vanished, cold) = (
        "cni_pods_keep_connectivity_across_a_sigkill_restart",
        "del_after_the_sigkill_restart_removes_pod_route_lease_and_state_entry",
        "the_following_sigterm_hand_over_succeeds_and_keeps_connectivity",
        "a_pod_whose_netns_was_deleted_is_dropped_at_the_next_start_with_a_warning",
        "a_cold_start_over_a_dead_ucanals_leftovers_adopts_them",
    );
    suite
        .group("cni_restart_sequence", &["ping"], Fixture::up)
        .phase("attach_two_cni_pods", Fixture::attach)
        .phase_after(kill, &["attach_two_cni_pods"], Fixture::sigkill)
        .phase_after(del, &[kill], Fixture::del_after_kill)
        .phase_after(term, &[del], Fixture::sigterm)
        .phase_after(vanished, &[term], Fixture::vanished_netns)
        .phase_after(cold, &[vanished], Fixture::cold_over_leftovers)
        .phase_after("lab_down_leaves_nothing_in_the_socket_directory", &[cold], Fixture::nothing_left);
    suite.run()
}

/// The lab, the pods' namespaces, and the ADD results by pod name.
struct Fixture {
    lab: Lab,
    web: Netns,
    keep: Netns,
    gone: Mutex<Option<Netns>>,
    added: Mutex<Vec<(String, Value)>>,
}

impl Fixture {
    fn up() -> Fixture {
        let lab = Lab::up_env("tv", &[], &[("UCANAL_RUN_ARGS", KEEP)]);
        let (web, keep) = (Netns::new(lab.ns("cniw")), Netns::new(lab.ns("cnik")));
        let gone = Mutex::new(Some(Netns::new(lab.ns("cnig"))));
        Fixture { lab, web, keep, gone, added: Mutex::new(Vec::new()) }
    }

    fn sock(&self) -> PathBuf {
        self.lab.socket(NODE)
    }

    fn conf(&self) -> Value {
        json!({"cniVersion": "1.0.0", "name": "ucanal", "type": "ucanal-cni", "socket": self.sock()})
    }

    /// The plugin's `cmd` for pod `name` (container id `ctr-<name>`) in `netns`.
    fn plugin(&self, cmd: &str, name: &str, netns: &str) -> (i32, Value) {
        let (id, args) =
            (format!("ctr-{name}"), format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"));
        let env = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", args.as_str()),
            ("CNI_PATH", "/usr/lib/cni"),
        ];
        invoke(&env, &self.conf())
    }

    fn add(&self, name: &str, ns: &Netns) -> String {
        let (st, v) = self.plugin("ADD", name, &ns.path());
        assert_eq!(st, 0, "ADD {name}: {v}");
        let ip = v["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
        self.added.lock().unwrap().push((name.to_string(), v));
        ip
    }

    fn ip_of(&self, name: &str) -> String {
        let added = self.added.lock().unwrap();
        let v = &added.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} was not added")).1;
        v["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string()
    }

    /// Whether the node's lease file holds `ip`.
    fn leased(&self, ip: &str) -> bool {
        let path = self.sock().with_file_name(format!("{}{NODE}.leases.json", self.lab.prefix));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|_| "{}".into())).unwrap();
        v["leases"].as_object().is_some_and(|l| l.contains_key(ip))
    }

    fn pods(&self) -> String {
        self.lab.ucanal_ok(NODE, &["show", "pods"])
    }

    fn node_json(&self) -> Value {
        serde_json::from_str(&self.lab.ucanal_ok(NODE, &["show", "node", "--json"])).expect("show node JSON")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.lab.run_dir().join(format!("{NODE}.log"))).unwrap_or_default()
    }

    fn attach(&self) {
        self.add("web", &self.web);
        self.add("keep", &self.keep);
        let pods = self.pods();
        assert!(pods.contains("default/web") && pods.contains("default/keep"), "{pods}");
        for ns in ["cniw", "cnik"] {
            assert!(self.lab.ping(ns, GHOST_EP2, 2), "{ns} reaches ghost-ep2 over VXLAN");
        }
    }

    /// Restarts the node's ucanal with `sig` while the CNI pods and ghost-ep2 ping through
    /// it; every probe's longest outage stays under `limit_ms`.
    fn restart_pinging(&self, sig: &str, limit_ms: u64, pingers: &[(&str, &str)]) {
        let probes: Vec<Probe> = pingers.iter().map(|(from, to)| Probe::start(&self.lab, from, to, 8)).collect();
        std::thread::sleep(Duration::from_secs(1));
        let ms = self.lab.restart(NODE, sig, KEEP);
        println!("{sig} restart of {NODE}: {ms} ms until the new ucanal answered");
        for p in probes {
            let r = p.finish();
            println!(
                "  {sig}: {} -> {}: {} of {} answered, longest outage {} ms",
                r.from, r.to, r.got, r.sent, r.outage_ms
            );
            assert!(r.got > 0 && r.outage_ms <= limit_ms, "{sig}: {} -> {} went dark: {r:?}", r.from, r.to);
        }
    }

    fn sigkill(&self) {
        self.restart_pinging(
            "KILL",
            KILL_OUTAGE_MS,
            &[("cniw", GHOST_EP2), ("cnik", GHOST_EP2), ("ghost-ep2", GHOST_EP1)],
        );
        let pods = self.pods();
        assert!(pods.contains("default/web") && pods.contains("default/keep"), "a SIGKILL lost a CNI pod:\n{pods}");
        assert_eq!(self.node_json()["start"]["mode"], "resumed");
    }

    /// DEL after the SIGKILL restart: the plugin finds the attachment the new ucanal read
    /// back, so the pod, its route, its lease and (once written) its state entry go.
    fn del_after_kill(&self) {
        let ip = self.ip_of("web");
        assert_eq!(self.plugin("DEL", "web", &self.web.path()), (0, Value::Null));
        assert!(!self.pods().contains("default/web"), "DEL left the pod");
        let routes = self.lab.ucanal_ok(NODE, &["show", "routes"]);
        assert!(
            !routes.lines().any(|l| l.starts_with(&format!("{ip} ")) || l.starts_with(&format!("{ip}/32"))),
            "{routes}"
        );
        assert!(!self.web.ip(&["link"]).contains("eth0"), "DEL removes the TAP");
        assert!(!self.leased(&ip), "DEL released the lease of {ip}");
        assert!(self.lab.ping("cnik", GHOST_EP2, 2), "the other CNI pod still forwards");
    }

    fn sigterm(&self) {
        self.restart_pinging("TERM", TERM_OUTAGE_MS, &[("cnik", GHOST_EP2), ("ghost-ep2", GHOST_EP1)]);
        assert_eq!(self.node_json()["start"]["mode"], "handed_over");
        let pods = self.pods();
        assert!(pods.contains("default/keep") && !pods.contains("default/web"), "{pods}");
    }

    /// A third pod's namespace is deleted behind ucanal's back; the next (SIGKILL) start
    /// reads it from the state file, drops it with a warning and releases its lease; the
    /// pod deleted before is not read back (its state entry is gone).
    fn vanished_netns(&self) {
        let (gone_ip, gone_path) = {
            let guard = self.gone.lock().unwrap();
            let ns = guard.as_ref().unwrap();
            (self.add("gone", ns), ns.path())
        };
        assert!(self.lab.ping("cnig", GHOST_EP2, 2));
        drop(self.gone.lock().unwrap().take());
        self.restart_pinging("KILL", KILL_OUTAGE_MS, &[("cnik", GHOST_EP2), ("ghost-ep2", GHOST_EP1)]);
        let node = self.node_json();
        assert_eq!(node["start"]["pods_dropped"], 1, "{}", node["start"]);
        let pods = self.pods();
        assert!(!pods.contains("default/gone") && !pods.contains("default/web"), "{pods}");
        assert!(pods.contains("default/keep"), "{pods}");
        let log = self.log();
        let warned =
            log.lines().any(|l| l.contains("WARN") && l.contains("default/gone") && l.contains("cannot be restored"));
        assert!(warned, "no warning naming the dropped pod in the log:\n{log}");
        assert!(!self.leased(&gone_ip), "the dropped pod's lease is released");
        assert_eq!(self.plugin("DEL", "gone", &gone_path).0, 0, "the runtime's DEL of the dropped pod still succeeds");
    }

    /// SIGKILL, then a cold `ucanal run` (no `--keep-on-exit`): the host port and the pods'
    /// TAPs of the dead one are there; it adopts them, says so, and forwards.
    fn cold_over_leftovers(&self) {
        let lab = &self.lab;
        let script = format!(
            ". {}/netns-scripts/lib.sh; lab_init; pid=$(lab_ucanal_pid {NODE}) || exit 3; kill -KILL \"$pid\"; \
             while _lab_pid_alive \"$pid\"; do sleep 0.05; done; rm -f \"$LAB_RUN_DIR/{NODE}.pid\"; \
             LAB_KEEP_LOG=1 lab_ucanal_start {NODE}; lab_ucanal_wait {NODE}",
            common::repo().display()
        );
        let out = Command::new("bash")
            .args(["-c", &script])
            .env("LAB_PREFIX", &lab.prefix)
            .env("UCANAL_BIN", common::ucanal_bin())
            .env_remove("UCANAL_RUN_ARGS")
            .output()
            .unwrap();
        assert!(out.status.success(), "a cold start over the leftovers failed: {}\n{}", text(&out.stderr), self.log());
        let node = self.node_json();
        assert_eq!(node["start"]["adopted_leftovers"], true, "{}", node["start"]);
        assert!(self.log().contains("adopting what it left"), "the start says it adopts");
        assert!(lab.ping("ghost-ep2", GHOST_EP1, 3), "the adopting ucanal forwards to ghost-ep1");
        assert!(lab.curl("client", "http://172.16.240.131:31266/").is_ok(), "the NodePort answers after adoption");
        assert_eq!(self.plugin("DEL", "keep", &self.keep.path()).0, 0);
    }

    /// The lab's own `down` (the ucanal is stopped, its files removed): nothing of this
    /// lab is left in the socket directory.
    fn nothing_left(&self) {
        let out = self.lab.lab_sh(&["down"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let left: Vec<String> = std::fs::read_dir("/run/ucanal")
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let ours: Vec<&String> = left.iter().filter(|f| f.starts_with(&self.lab.prefix)).collect();
        assert!(ours.is_empty(), "left in /run/ucanal: {ours:?}");
        assert!(!Path::new(&format!("/run/ucanal-lab/{}", self.lab.prefix)).exists());
    }
}

/// A `ping -i 0.1` running for a fixed time in a lab namespace (killed if dropped early).
struct Probe {
    from: String,
    to: String,
    child: Option<Child>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Debug)]
struct ProbeResult {
    from: String,
    to: String,
    sent: u64,
    got: u64,
    /// The longest run of unanswered probes, in ms (one missed probe = 100 ms).
    outage_ms: u64,
}

impl Probe {
    fn start(lab: &Lab, from: &str, to: &str, secs: u32) -> Probe {
        let line = format!("exec ping -n -i 0.1 -W 1 -w {secs} {to}");
        Probe { from: from.into(), to: to.into(), child: Some(lab.spawn(from, &line)) }
    }

    fn finish(mut self) -> ProbeResult {
        let out = self.child.take().expect("a running probe").wait_with_output().unwrap();
        let s = text(&out.stdout);
        let seqs: std::collections::BTreeSet<u64> = s
            .lines()
            .filter_map(|l| l.split("icmp_seq=").nth(1))
            .filter_map(|r| r.split_whitespace().next()?.parse().ok())
            .collect();
        let sent = s
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let (mut longest, mut run) = (0u64, 0u64);
        for seq in 1..=sent {
            run = if seqs.contains(&seq) { 0 } else { run + 1 };
            longest = longest.max(run);
        }
        let (from, to) = (std::mem::take(&mut self.from), std::mem::take(&mut self.to));
        ProbeResult { from, to, sent, got: seqs.len() as u64, outage_ms: longest * PROBE_MS }
    }
}
