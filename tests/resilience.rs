//! A full conntrack recovers and the API cannot be turned against the daemon (issue 11):
//! a 10 s SYN flood against `max = 1000`, and the nested-filter, oversized-request and
//! open-file-exhaustion probes, each followed by proof that the node still forwards.

mod common;

use std::time::{Duration, Instant};

use common::*;

const NODE1: &str = "172.16.240.131";

fn script(name: &str) -> String {
    repo().join("netns-scripts").join(name).display().to_string()
}

fn nodeport_answers(lab: &Lab, timeout_s: &str) -> bool {
    lab.exec("client", &["curl", "-sS", "-o", "/dev/null", "-m", timeout_s, &format!("http://{NODE1}:31266/")])
        .status
        .success()
}

#[test]
fn a_syn_flood_cannot_keep_new_connections_out() {
    if !require_netns(&["curl"]) {
        return;
    }
    let lab = Lab::up_env("tx", &[], &[("LAB_UCANAL_DATAPLANE", "[conntrack]\nmax = 1000")]);
    let dir = tempfile::tempdir().unwrap();
    let _ep1 = lab.background("ghost-ep1", &format!("exec python3 {} serve 7000 ghost-ep1", script("lines.py")));
    let _ep2 = lab.background("ghost-ep2", &format!("exec python3 {} serve 7000 ghost-ep2", script("lines.py")));
    lab.ucanal_ok(
        "centos7-1",
        &["service", "set", "--name", "default/lines", "--cluster-ip", "10.250.0.50", "--port", "7000"]
            .into_iter()
            .chain(["--node-port", "31700", "--endpoint", "10.244.1.5:7000", "--endpoint", "10.244.0.74:7000"])
            .collect::<Vec<_>>(),
    );
    assert!(wait_until(Duration::from_secs(10), || nodeport_answers(&lab, "2")).is_some());
    // Both echo servers listening before the established connections start (either may be chosen).
    lab.wait_listening("ghost-ep1", 7000);
    lab.wait_listening("ghost-ep2", 7000);
    let out = dir.path().join("lines.json");
    let mut established = lab
        .spawn("client", &format!("exec python3 {} client {NODE1} 31700 2 16 {}", script("lines.py"), out.display()));
    std::thread::sleep(Duration::from_secs(2));

    // 10 s of SYNs from 198.18.0.0/15 to the NodePort, at most 2 million.
    let flood = lab.spawn("client", &format!("exec python3 {} {NODE1} 31266 10 2000000", script("synflood.py")));
    let started = Instant::now();
    let (mut ok, mut tried) = (0, 0);
    while started.elapsed() < Duration::from_secs(10) {
        tried += 1;
        if nodeport_answers(&lab, "1") {
            ok += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let flood = flood.wait_with_output().unwrap();
    let sent = text(&flood.stdout);
    let after = wait_until(Duration::from_secs(5), || nodeport_answers(&lab, "1"));
    let early = lab.counter("centos7-1", "decisions", "ct_early_drop");
    println!(
        "flood: {} SYNs sent; new connections during it: {ok}/{tried}; first success after it: {after:?}; ct_early_drop {early}",
        sent.trim()
    );
    assert!(after.is_some_and(|d| d < Duration::from_secs(1)), "no new connection within 1 s of the flood's end");
    assert!(early > 0, "the table never filled (flood too weak?)");

    assert!(established.wait().unwrap().success());
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for (i, c) in v.as_array().unwrap().iter().enumerate() {
        println!("established connection {i}: {c}");
        assert!(c["reset"].is_null(), "established connection {i} reset: {c}");
        assert_eq!(c["lost_or_reordered"], 0, "{c}");
        assert_eq!(c["sent"], c["echoed"], "{c}");
    }
}

fn daemon_pid(lab: &Lab) -> String {
    std::fs::read_to_string(lab.run_dir().join("centos7-1.pid")).unwrap().trim().to_string()
}

fn alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn api_probes_leave_the_daemon_up_and_forwarding() {
    if !require_netns(&["curl", "prlimit"]) {
        return;
    }
    let lab = Lab::up("ta", &[]);
    let pid = daemon_pid(&lab);
    let sock = lab.socket("centos7-1");

    // 1. Nested filters (the 3500 '(' and 10000 'not'): refused by name.
    for f in [format!("{}tcp{}", "(".repeat(3500), ")".repeat(3500)), "not ".repeat(10_000) + "tcp"] {
        let out = lab.ucanal("centos7-1", &["trace", "--live", "--filter", &f, "--count", "1", "--timeout", "1"]);
        assert!(!out.status.success());
        let e = text(&out.stderr);
        assert!(e.contains("more than 4096") || e.contains("nested"), "{e}");
    }
    assert!(alive(&pid) && nodeport_answers(&lab, "3"), "daemon down after nested filters");

    // 2. An oversized request: 2 MiB without a newline, answered with an error.
    let py = format!(
        "import socket\ns=socket.socket(socket.AF_UNIX)\ns.connect('{}')\ntry:\n    s.sendall(b'x'*(2<<20))\n\
         except OSError:\n    pass\nprint(s.makefile().readline())",
        sock.display()
    );
    let out = std::process::Command::new("python3").args(["-c", &py]).output().unwrap();
    assert!(text(&out.stdout).contains("longer than 1048576 bytes"), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(alive(&pid) && nodeport_answers(&lab, "3"), "daemon down after an oversized request");

    // 3. Open-file exhaustion: the daemon's limit lowered to 64 files, 300 idle clients.
    let cpu = |pid: &str| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    assert!(std::process::Command::new("prlimit").args(["--pid", &pid, "--nofile=64:"]).status().unwrap().success());
    let log_before = std::fs::metadata(lab.run_dir().join("centos7-1.log")).unwrap().len();
    let hog = format!(
        "import socket,time\nss=[]\nfor i in range(300):\n    s=socket.socket(socket.AF_UNIX)\n    s.connect('{}')\n    ss.append(s)\ntime.sleep(5)\n",
        sock.display()
    );
    let cpu0 = cpu(&pid);
    let mut h = std::process::Command::new("python3").args(["-c", &hog]).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let ticks = cpu(&pid) - cpu0;
    let _ = h.wait();
    let log_growth = std::fs::metadata(lab.run_dir().join("centos7-1.log")).unwrap().len() - log_before;
    println!("open-file exhaustion: {ticks} CPU ticks in 4 s, log grew {log_growth} bytes");
    let log = std::fs::read(lab.run_dir().join("centos7-1.log")).unwrap();
    let new = text(&log[log_before as usize..]);
    assert!(new.contains("api accept:"), "the limit was never reached (no accept error logged):\n{new}");
    assert!(ticks < 100, "the accept loop spins: {ticks} ticks in 4 s");
    assert!(log_growth < 20_000, "accept errors flood the log: {log_growth} bytes");
    assert!(alive(&pid) && nodeport_answers(&lab, "3"), "daemon down after open-file exhaustion");
    assert!(std::process::Command::new("prlimit").args(["--pid", &pid, "--nofile=1024:"]).status().unwrap().success());
    assert!(
        wait_until(Duration::from_secs(5), || lab.ucanal("centos7-1", &["show", "pods"]).status.success()).is_some(),
        "the API does not answer once files are free again"
    );
    // Zero-length datagrams to 8472 are a counted drop.
    let before = lab.counter("centos7-1", "drops", "vxlan_malformed");
    let send = format!(
        "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor i in range(5):\n    s.sendto(b'', ('{NODE1}', 8472))\n"
    );
    assert!(lab.exec("client", &["python3", "-c", &send]).status.success());
    assert!(
        wait_until(Duration::from_secs(3), || lab.counter("centos7-1", "drops", "vxlan_malformed") == before + 5)
            .is_some(),
        "zero-length datagrams not counted"
    );
    // `ucanal show pods | head -1` ends quietly.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{} --socket {} show pods | head -1", ucanal_bin().display(), sock.display()))
        .output()
        .unwrap();
    assert!(!text(&out.stderr).contains("panicked"), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 1);
}
