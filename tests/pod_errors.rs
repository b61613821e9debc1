//! A `pod add` that fails leaves nothing behind, even with `--keep-on-exit` (whose TAPs
//! are persistent and would outlive a failed attach): a node filled to the most pods
//! one ucanal serves refuses the next one *before* its TAP exists, and with a pod
//! removed the same name attaches (no leftover interface in the way).

mod common;

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use common::harness::Suite;
use common::{text, ucanal_bin, wait_until};
use ucanal::api::codec::{Client, ClientError};
use ucanal::api::{Command as Request, ErrorCode, PodSpec};

/// Pods a node takes: a port per pod below the port statistics' slots, the host port
/// being one (`io::stats::MAX_PORTS`).
const MOST_PODS: usize = ucanal::io::stats::MAX_PORTS - 1;

fn main() -> ExitCode {
    let mut suite = Suite::new();
    suite
        .group("a_failing_pod_add_leaves_no_tap", &[], Node::up)
        .phase("the_node_takes_its_most_pods", fill)
        .phase_after("one_more_is_refused_before_its_tap_exists", &["the_node_takes_its_most_pods"], one_more)
        .phase_after(
            "with_a_pod_removed_the_same_name_attaches",
            &["one_more_is_refused_before_its_tap_exists"],
            again,
        );
    suite.run()
}

/// A node namespace (an uplink) running `ucanal run --keep-on-exit` with one worker and
/// a /21 pod CIDR, and a pod namespace for every pod (one interface each); SIGINT and
/// both namespaces removed when dropped.
struct Node {
    node: String,
    pod: String,
    socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
    daemon: Option<Child>,
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().unwrap()
}

impl Node {
    fn up() -> Node {
        let tag = format!("tw{}-", std::process::id() % 10000);
        let dir = std::env::temp_dir();
        let mut n = Node {
            node: format!("{tag}node"),
            pod: format!("{tag}pod"),
            socket: PathBuf::from(format!("/run/ucanal/{tag}n.sock")),
            config: dir.join(format!("{tag}node.toml")),
            log: dir.join(format!("{tag}node.log")),
            daemon: None,
        };
        for ns in [&n.node, &n.pod] {
            assert!(ip(&["netns", "add", ns]).status.success(), "ip netns add {ns}");
        }
        let up = "ip link add ens33 type veth peer name ens33p && ip addr add 172.16.240.131/24 dev ens33 \
                  && ip link set ens33 up";
        assert!(ip(&["netns", "exec", &n.node, "sh", "-c", up]).status.success());
        let cfg = format!(
            "[node]\nname = \"centos7-1\"\nuplink = \"ens33\"\nnode_ip = \"172.16.240.131\"\n\
             pod_cidr = \"10.244.8.0/21\"\ncluster_cidr = \"10.244.0.0/16\"\nservice_cidr = \"10.250.0.0/16\"\n\
             vtep_mac = \"8a:40:90:1c:cf:7e\"\n\n[api]\nsocket = \"{}\"\n\n[dataplane]\nworkers = 1\n",
            n.socket.display()
        );
        std::fs::write(&n.config, cfg).unwrap();
        // A TAP queue per pod: more fds than the usual soft limit of 1024.
        let run = format!(
            "ulimit -n $(ulimit -Hn); exec {} run --config {} --keep-on-exit",
            ucanal_bin().display(),
            n.config.display()
        );
        let log = std::fs::File::create(&n.log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &n.node, "sh", "-c", &run])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        n.daemon = Some(child);
        let ready = wait_until(Duration::from_secs(15), || UnixStream::connect(&n.socket).is_ok());
        assert!(ready.is_some(), "ucanal did not start:\n{}", std::fs::read_to_string(&n.log).unwrap_or_default());
        n
    }

    fn client(&self) -> Client<UnixStream> {
        let s = UnixStream::connect(&self.socket).expect("API socket");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client::new(s, self.socket.display())
    }

    /// Pod `i`: interface `p<i>` in the pod namespace, address 10.244.8.0 + 1 + i.
    fn pod(&self, i: usize) -> PodSpec {
        let ip = u32::from(std::net::Ipv4Addr::new(10, 244, 8, 1)) + i as u32;
        PodSpec {
            name: format!("pod-{i}"),
            netns: self.pod.clone(),
            ip: ip.into(),
            mac: None,
            ifname: Some(format!("p{i}")),
            namespace: None,
            labels: Default::default(),
        }
    }

    /// The interfaces of the pod namespace, loopback aside.
    fn links(&self) -> Vec<String> {
        let out = text(&ip(&["-n", &self.pod, "-o", "link", "show"]).stdout);
        let names = out.lines().filter_map(|l| l.split(": ").nth(1)).map(|n| n.split('@').next().unwrap_or(n));
        names.filter(|n| *n != "lo").map(str::to_string).collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // SIGINT: the final teardown, the persistent TAPs included.
            let _ = Command::new("kill").args(["-INT", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.node, &self.pod] {
            let _ = ip(&["netns", "del", ns]);
        }
        // The lease file outlives a daemon by design (leases survive restarts): the test removes it.
        for f in [&self.config, &self.log, &self.socket.with_extension("leases.json")] {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn fill(n: &Node) {
    let t = Instant::now();
    let mut c = n.client();
    for i in 0..MOST_PODS {
        if let Err(e) = c.command(Request::PodAdd { pod: n.pod(i) }) {
            panic!("pod {i} of {MOST_PODS}: {e}");
        }
    }
    println!("{MOST_PODS} pods attached in {:?}", t.elapsed());
    assert_eq!(n.links().len(), MOST_PODS);
}

fn one_more(n: &Node) {
    let spec = n.pod(MOST_PODS);
    match n.client().command(Request::PodAdd { pod: spec.clone() }) {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::TooManyPods, "{e}");
        }
        other => panic!("pod {} was not refused: {other:?}", spec.name),
    }
    let links = n.links();
    let left = format!("p{MOST_PODS}");
    assert!(!links.contains(&left), "the refused pod's {left} is left in {}", n.pod);
    assert_eq!(links.len(), MOST_PODS, "interfaces in {}", n.pod);
}

fn again(n: &Node) {
    let mut c = n.client();
    c.command(Request::PodDel { name: n.pod(0).name }).expect("pod del");
    assert!(!n.links().contains(&"p0".to_string()), "pod-0's persistent TAP outlived pod del");
    let spec = n.pod(MOST_PODS);
    c.command(Request::PodAdd { pod: spec.clone() }).unwrap_or_else(|e| panic!("{} after a pod del: {e}", spec.name));
    assert!(n.links().contains(&format!("p{MOST_PODS}")));
}
