//! Issue "CNI plugin", end to end with a real runtime: podman (Debian's 4.3, CNI backend)
//! puts busybox containers on the lab's two ucanal nodes through `ucanal-cni`.
//!
//! Everything podman keeps lives in a temporary directory (storage root, runroot, tmpdir,
//! network config dir, containers.conf); the image is a rootfs built here from
//! busybox-static and imported (nothing is pulled); the conflists hold the ucanal plugin
//! only (no bridge, firewall or portmap: nothing is added to the root namespace). Every
//! container is removed when the test ends, pass or fail.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};
use std::sync::{Mutex, OnceLock};

use common::harness::Suite;
use common::{Lab, text};

const IMAGE: &str = "localhost/ucanal-busybox";

/// A private podman: its storage, state and network configs in `dir`.
struct Podman {
    dir: tempfile::TempDir,
    conf: PathBuf,
    ulimits: Vec<String>,
    /// What podman writes outside its private directories whatever its flags (libcni's
    /// result cache, the image blob-info cache of containers/image, runc's state root, the
    /// lock next to the default CNI config dir) and did not exist before: removed at the end.
    outside: Vec<PathBuf>,
}

/// Paths podman (with our private root, runroot, tmpdir and network config dir) still uses.
const OUTSIDE: &[&str] =
    &["/var/lib/cni", "/var/lib/containers", "/run/runc", "/run/libpod", "/run/containers", "/etc/cni/net.d/cni.lock"];

impl Podman {
    fn new(lab: &Lab) -> Podman {
        let dir = tempfile::Builder::new().prefix("ucanal-podman-").tempdir().unwrap();
        let d = dir.path();
        for sub in ["bin", "net", "root", "runroot", "tmp", "rootfs/bin", "rootfs/www", "rootfs/tmp", "rootfs/etc"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        // The plugin installed as an operator would: a CNI bin dir, IPAM plugins from Debian's.
        std::fs::copy(env!("CARGO_BIN_EXE_ucanal-cni"), d.join("bin/ucanal-cni")).unwrap();
        for (i, node) in ["centos7-1", "centos7-2"].iter().enumerate() {
            let list = serde_json::json!({
                "cniVersion": "1.0.0",
                "name": format!("ucanal-n{}", i + 1),
                "plugins": [{ "type": "ucanal-cni", "socket": lab.socket(node) }],
            });
            std::fs::write(d.join(format!("net/ucanal-n{}.conflist", i + 1)), list.to_string()).unwrap();
        }
        let conf = d.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{bin}\", \"/usr/lib/cni\"]\n\
                 network_config_dir = \"{net}\"\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n",
                bin = d.join("bin").display(),
                net = d.join("net").display()
            ),
        )
        .unwrap();
        let outside = OUTSIDE.iter().map(PathBuf::from).filter(|p| !p.exists()).collect();
        let p = Podman { conf, ulimits: ulimits(), outside, dir };
        p.import_busybox();
        p
    }

    fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .arg("--network-config-dir")
            .arg(d.join("net"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("running podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "podman {args:?} failed: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout).trim().to_string()
    }

    /// A rootfs of busybox-static and its applets, imported as an image.
    fn import_busybox(&self) {
        let root = self.dir.path().join("rootfs");
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("/bin/busybox (package busybox-static)");
        for a in ["sh", "ping", "wget", "httpd", "sleep", "cat", "echo", "ifconfig", "ip", "hostname", "timeout", "sed"]
        {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        let tar = self.dir.path().join("rootfs.tar");
        let st = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status().unwrap();
        assert!(st.success(), "tar of the busybox rootfs");
        self.ok(&["import", tar.to_str().unwrap(), IMAGE]);
    }

    /// `wget` in a container; the server may still be starting, so a few tries.
    fn wget(&self, container: &str, url: &str) -> String {
        let mut last = None;
        for _ in 0..20 {
            let out = self.run(&["exec", container, "timeout", "5", "wget", "-qO-", url]);
            if out.status.success() {
                return text(&out.stdout).trim().to_string();
            }
            last = Some(out);
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        let out = last.unwrap();
        panic!("wget {url} in {container}: {}{}", text(&out.stdout), text(&out.stderr));
    }

    /// `podman run -d` of an HTTP server answering its name on 2368, named default/<name> in ucanal.
    fn web(&self, name: &str, network: &str) -> String {
        let mut c = self.cmd();
        c.env("CNI_ARGS", "K8S_POD_NAMESPACE=default")
            .args(["run", "-d", "--name", name, "--network", network])
            .args(&self.ulimits)
            .args([IMAGE, "sh", "-c", &format!("echo {name} > /www/index.html; exec httpd -f -p 2368 -h /www")]);
        let out = c.output().unwrap();
        assert!(out.status.success(), "podman run {name}: {}", text(&out.stderr));
        self.ok(&["inspect", "-f", &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"), name])
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
        let _ = self.run(&["rmi", "-a", "-f"]);
        for p in &self.outside {
            let _ = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
        }
    }
}

/// `--ulimit` values below the current hard limits: without CAP_SYS_RESOURCE the OCI
/// runtime cannot raise them to podman's defaults.
fn ulimits() -> Vec<String> {
    let hard = |r| {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct we own.
        unsafe { libc::getrlimit(r, &mut l) };
        l.rlim_max.min(1024)
    };
    let (n, p) = (hard(libc::RLIMIT_NOFILE), hard(libc::RLIMIT_NPROC));
    vec!["--ulimit".into(), format!("nofile={n}:{n}"), "--ulimit".into(), format!("nproc={p}:{p}")]
}

/// The TAP queues the node's ucanal holds open (each pod's TAP, and the host port).
fn tap_fds(lab: &Lab, node: &str) -> usize {
    let pids = text(&Command::new("ip").args(["netns", "pids", &lab.ns(node)]).output().unwrap().stdout);
    let pid = pids
        .split_whitespace()
        .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "ucanal"))
        .unwrap_or_else(|| panic!("no ucanal process in {}", lab.ns(node)));
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l == Path::new("/dev/net/tun"))
        .count()
}

fn leases(lab: &Lab, node: &str) -> usize {
    let path = lab.socket(node).with_file_name(format!("{}{node}.leases.json", lab.prefix));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["leases"].as_object().unwrap().len()
}

fn conntrack(lab: &Lab, node: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&lab.ucanal_ok(node, &["show", "conntrack", "--json"])).unwrap();
    v.as_array().unwrap().clone()
}

fn pod_names(lab: &Lab, node: &str) -> BTreeSet<String> {
    let v: serde_json::Value = serde_json::from_str(&lab.ucanal_ok(node, &["show", "pods", "--json"])).unwrap();
    v.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
}

/// Removes the node daemons' lease files when dropped.
struct RemoveLeases(Vec<PathBuf>);

impl Drop for RemoveLeases {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn main() -> ExitCode {
    let mut suite = Suite::new();
    let web = "web_containers_get_addresses_on_both_nodes";
    suite
        .group("podman_containers_on_two_ucanal_nodes", &["podman", "runc", "tar", "curl"], Setup::up)
        .phase(web, web_containers)
        .phase_after("ping_and_http_across_vxlan", &[web], across_vxlan)
        .phase_after("a_container_reaches_a_cluster_ip", &[web], |s| {
            let page = s.podman().wget("web1", "http://10.250.0.40:2368/");
            assert!(page.starts_with("ghost-ep"), "{page}");
        })
        .phase_after("the_client_reaches_a_container_through_a_node_port", &[web], node_port)
        .phase_after("podman_rm_detaches", &[web], podman_rm)
        .phase("start_remove_loop_leaks_nothing", |s| start_remove_loop(&s.lab, &s.podman()))
        .phase("podman_leaves_nothing_outside_its_directory", leaves_nothing);
    suite.run()
}

/// The lab, a private podman on it, and what was there before.
struct Setup {
    /// Taken (and dropped: every container removed) by the last phase.
    pm: Mutex<Option<Podman>>,
    _leases: RemoveLeases,
    lab: Lab,
    etc_cni_before: String,
    taps_before: (usize, usize),
    /// The addresses of web1 (centos7-1) and web2 (centos7-2).
    ips: OnceLock<(String, String)>,
}

impl Setup {
    fn up() -> Setup {
        assert!(Path::new("/bin/busybox").exists(), "this test needs /bin/busybox (package busybox-static)");
        assert!(Path::new("/usr/lib/cni/host-local").exists(), "needs containernetworking-plugins");
        let etc_cni_before = text(&Command::new("ls").args(["-la", "/etc/cni/net.d"]).output().unwrap().stdout);
        let lab = Lab::up("tp", &[]);
        let leases = ["centos7-1", "centos7-2"]
            .iter()
            .map(|n| lab.socket(n).with_file_name(format!("{}{n}.leases.json", lab.prefix)))
            .collect();
        let pm = Podman::new(&lab);
        let taps_before = (tap_fds(&lab, "centos7-1"), tap_fds(&lab, "centos7-2"));
        Setup {
            pm: Mutex::new(Some(pm)),
            _leases: RemoveLeases(leases),
            lab,
            etc_cni_before,
            taps_before,
            ips: OnceLock::new(),
        }
    }

    fn podman(&self) -> PodmanRef<'_> {
        PodmanRef(self.pm.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn ips(&self) -> &(String, String) {
        self.ips.get().expect("web1 and web2 started")
    }
}

/// The private podman, while it is there.
struct PodmanRef<'a>(std::sync::MutexGuard<'a, Option<Podman>>);

impl std::ops::Deref for PodmanRef<'_> {
    type Target = Podman;
    fn deref(&self) -> &Podman {
        self.0.as_ref().expect("podman was already removed")
    }
}

/// web1 on centos7-1 and web2 on centos7-2 get addresses of their nodes and are pods there.
fn web_containers(s: &Setup) {
    let pm = s.podman();
    let ip1 = pm.web("web1", "ucanal-n1");
    let ip2 = pm.web("web2", "ucanal-n2");
    assert!(ip1.starts_with("10.244.1.") && ip2.starts_with("10.244.0."), "{ip1} {ip2}");
    let _ = s.ips.set((ip1, ip2));
    assert!(pod_names(&s.lab, "centos7-1").contains("default/web1"));
    assert!(pod_names(&s.lab, "centos7-2").contains("default/web2"));
}

/// Across VXLAN: ping and HTTP both ways.
fn across_vxlan(s: &Setup) {
    let (pm, (ip1, ip2)) = (s.podman(), s.ips());
    pm.ok(&["exec", "web1", "ping", "-c", "2", "-W", "2", ip2]);
    pm.ok(&["exec", "web2", "ping", "-c", "2", "-W", "2", ip1]);
    assert_eq!(pm.wget("web1", &format!("http://{ip2}:2368/")), "web2");
    assert_eq!(pm.wget("web2", &format!("http://{ip1}:2368/")), "web1");
    let vx = s.lab.counter("centos7-1", "decisions", "forward_vxlan");
    assert!(vx > 0, "centos7-1 encapsulated nothing");
}

/// The lab client reaches web2 through a NodePort on either node; the endpoint names the pod.
fn node_port(s: &Setup) {
    let (lab, (_, ip2)) = (&s.lab, s.ips());
    let svc = ["service", "set", "--name", "default/web", "--cluster-ip", "10.250.0.50", "--port", "2368"];
    lab.ucanal_ok("centos7-1", &[&svc[..], &["--node-port", "31080", "--endpoint", &format!("{ip2}:2368")]].concat());
    lab.ucanal_ok("centos7-2", &[&svc[..], &["--node-port", "31080"]].concat());
    lab.ucanal_ok("centos7-2", &["endpoint", "add", "--service", "default/web", "--pod", "default/web2:2368"]);
    for node in ["172.16.240.131", "172.16.240.132"] {
        assert_eq!(lab.curl("client", &format!("http://{node}:31080/")).unwrap().trim(), "web2", "via {node}");
    }
}

/// `podman rm` detaches: the pods, their TAPs and their addresses are gone.
fn podman_rm(s: &Setup) {
    let lab = &s.lab;
    s.podman().ok(&["rm", "-f", "-t", "0", "web1", "web2"]);
    assert!(!pod_names(lab, "centos7-1").contains("default/web1"));
    assert!(!pod_names(lab, "centos7-2").contains("default/web2"));
    assert_eq!((tap_fds(lab, "centos7-1"), tap_fds(lab, "centos7-2")), s.taps_before, "TAP queues left open");
    assert_eq!((leases(lab, "centos7-1"), leases(lab, "centos7-2")), (0, 0), "addresses not freed");
}

/// Podman removed: nothing of it left outside its private directory, /etc/cni unchanged.
fn leaves_nothing(s: &Setup) {
    let pm = s.pm.lock().unwrap_or_else(|e| e.into_inner()).take().expect("podman");
    let outside = pm.outside.clone();
    drop(pm);
    let left: Vec<_> = outside.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "podman left {left:?} behind");
    let etc_cni_after = text(&Command::new("ls").args(["-la", "/etc/cni/net.d"]).output().unwrap().stdout);
    assert_eq!(s.etc_cni_before, etc_cni_after, "/etc/cni changed");
}

/// Containers started and removed in a loop on one node, each opening a flow through
/// the ClusterIP: no TAP, address or conntrack entry is left behind.
/// `UCANAL_CNI_LOOP` sets the count (default 10; the figure is 50).
fn start_remove_loop(lab: &Lab, pm: &Podman) {
    let n: usize = std::env::var("UCANAL_CNI_LOOP").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let node = "centos7-2";
    let before = (tap_fds(lab, node), leases(lab, node), pod_names(lab, node).len(), conntrack(lab, node).len());
    let other_before = conntrack(lab, "centos7-1").len();
    let flushed_before = lab.counter(node, "decisions", "ct_flushed_pod");
    let mut ips = BTreeSet::new();
    for i in 0..n {
        let mut c = pm.cmd();
        c.args(["run", "--rm", "--name", &format!("loop{i}"), "--network", "ucanal-n2"]).args(&pm.ulimits).args([
            IMAGE,
            "sh",
            "-c",
            "ifconfig eth0 | sed -n 's/.*inet addr:\\([0-9.]*\\).*/\\1/p'; timeout 5 wget -qO- http://10.250.0.40:2368/",
        ]);
        let out = c.output().unwrap();
        let s = text(&out.stdout);
        assert!(out.status.success() && s.contains("ghost-ep"), "loop {i}: {s}{}", text(&out.stderr));
        ips.insert(s.lines().next().unwrap_or_default().to_string());
    }
    let after = (tap_fds(lab, node), leases(lab, node), pod_names(lab, node).len(), conntrack(lab, node).len());
    let other_after = conntrack(lab, "centos7-1").len();
    let flushed = lab.counter(node, "decisions", "ct_flushed_pod") - flushed_before;
    println!(
        "{n} containers started and removed on {node}: (TAP fds, leases, pods, conntrack entries) before {before:?} after {after:?}; \
         {} distinct addresses; {flushed} flows flushed at DEL; centos7-1 conntrack {other_before} -> {other_after}",
        ips.len()
    );
    assert!(flushed >= n as u64, "each container's ClusterIP flow is flushed when it goes ({flushed} of {n})");
    assert_eq!((after.0, after.1, after.2), (before.0, before.1, before.2), "TAP, lease or pod leaked");
    assert!(after.3 <= before.3, "conntrack grew from {} to {}", before.3, after.3);
    let left: Vec<_> = conntrack(lab, node)
        .into_iter()
        .filter(|e| ips.iter().any(|ip| !ip.is_empty() && e.to_string().contains(&format!("\"{ip}\""))))
        .collect();
    assert!(left.is_empty(), "conntrack entries of removed containers: {left:?}");
}
