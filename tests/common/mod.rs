//! Shared helpers of the integration tests: a lab (netns-scripts/lab.sh) with a
//! unique prefix that is torn down when the test ends, pass or fail, and small
//! wrappers to run commands inside its namespaces.
#![allow(dead_code)]

pub mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn ucanal_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ucanal"))
}

/// Tests that need root and namespaces run unless UCANAL_SKIP_NETNS=1 says otherwise;
/// anything missing is a failure that names it.
pub fn require_netns(tools: &[&str]) -> bool {
    if std::env::var("UCANAL_SKIP_NETNS").is_ok_and(|v| v == "1") {
        println!("skipped: UCANAL_SKIP_NETNS=1");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "this test needs root (network namespaces); run as root or set UCANAL_SKIP_NETNS=1 to skip");
    for t in ["ip", "python3"].iter().chain(tools) {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "this test needs `{t}` (see .ci/run for the packages to install)");
    }
    true
}

/// A lab from netns-scripts/lab.sh; `down` runs on drop.
pub struct Lab {
    pub prefix: String,
    up: bool,
}

impl Lab {
    /// A short prefix unique to this test run and test name.
    pub fn prefix_for(tag: &str) -> String {
        format!("{tag}{}-", std::process::id() % 10000)
    }

    pub fn up(tag: &str, args: &[&str]) -> Lab {
        Self::up_env(tag, args, &[])
    }

    /// `up` with extra environment for lab.sh (e.g. UCANAL_RUN_ARGS).
    pub fn up_env(tag: &str, args: &[&str], env: &[(&str, &str)]) -> Lab {
        let prefix = Self::prefix_for(tag);
        let mut lab = Lab { prefix: prefix.clone(), up: false };
        let argv: Vec<&str> = ["up", "--force"].iter().chain(args).copied().collect();
        let out = lab.script_env(&argv, env);
        assert!(out.status.success(), "lab.sh up {args:?} failed:\n{}{}", text(&out.stdout), text(&out.stderr));
        lab.up = true;
        lab
    }

    fn script(&self, args: &[&str]) -> Output {
        self.script_env(args, &[])
    }

    /// Runs another lab.sh command against this lab (`add-node`, `etcdctl`, ...).
    pub fn lab_sh(&self, args: &[&str]) -> Output {
        self.script(args)
    }

    fn script_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(repo().join("netns-scripts/lab.sh"))
            .args(args)
            .env("LAB_PREFIX", &self.prefix)
            .env("UCANAL_BIN", ucanal_bin())
            .env_remove("UCANAL_RUN_ARGS")
            .envs(env.iter().copied())
            .output()
            .expect("running netns-scripts/lab.sh")
    }

    /// `lab.sh restart NODE SIG` with `UCANAL_RUN_ARGS=run_args`: milliseconds from the
    /// signal until the new ucanal answers.
    pub fn restart(&self, node: &str, sig: &str, run_args: &str) -> u64 {
        self.restart_env(node, sig, &[("UCANAL_RUN_ARGS", run_args)])
    }

    /// `restart` with extra environment for lab.sh (UCANAL_RUN_ARGS, LAB_UCANAL_DATAPLANE).
    pub fn restart_env(&self, node: &str, sig: &str, env: &[(&str, &str)]) -> u64 {
        let out = self.script_env(&["restart", node, sig], env);
        assert!(out.status.success(), "lab.sh restart {node} {sig} failed: {}", text(&out.stderr));
        // "54 ms from SIGTERM to the new ucanal of centos7-1 answering (pid ...)"
        let said = text(&out.stdout);
        said.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("lab.sh restart printed {said:?}"))
    }

    /// The lab's run directory (configs, logs, pid files).
    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/ucanal-lab/{}", self.prefix))
    }

    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn socket(&self, node: &str) -> PathBuf {
        PathBuf::from(format!("/run/ucanal/{}{node}.sock", self.prefix))
    }

    /// Runs `argv` in namespace `name` (without the prefix).
    pub fn exec(&self, name: &str, argv: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", &self.ns(name)]).args(argv).output().expect("ip netns exec")
    }

    /// Waits (up to 10 s) until something listens on TCP `port` in namespace `name`.
    pub fn wait_listening(&self, name: &str, port: u16) {
        let filter = format!("sport = :{port}");
        let listening = || !text(&self.exec(name, &["ss", "-ltnH", &filter]).stdout).trim().is_empty();
        assert!(wait_until(Duration::from_secs(10), listening).is_some(), "nothing listens on {name}:{port}");
    }

    /// Runs a shell line in namespace `name`.
    pub fn sh(&self, name: &str, line: &str) -> Output {
        self.exec(name, &["sh", "-c", line])
    }

    /// Like `spawn`, killed (and reaped) when the guard drops.
    pub fn background(&self, name: &str, line: &str) -> Background {
        Background(self.spawn(name, line))
    }

    pub fn spawn(&self, name: &str, line: &str) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(name), "sh", "-c", line])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning in a namespace")
    }

    /// `ucanal --socket <node's socket> args...`
    pub fn ucanal(&self, node: &str, args: &[&str]) -> Output {
        Command::new(ucanal_bin()).arg("--socket").arg(self.socket(node)).args(args).output().expect("running ucanal")
    }

    /// Like `ucanal`, but the command must succeed; returns stdout.
    pub fn ucanal_ok(&self, node: &str, args: &[&str]) -> String {
        let out = self.ucanal(node, args);
        assert!(out.status.success(), "ucanal {args:?} on {node} failed: {}", text(&out.stderr));
        text(&out.stdout)
    }

    pub fn counters(&self, node: &str) -> serde_json::Value {
        serde_json::from_str(&self.ucanal_ok(node, &["show", "counters", "--json"])).expect("counters JSON")
    }

    pub fn counter(&self, node: &str, section: &str, name: &str) -> u64 {
        self.counters(node)[section][name].as_u64().unwrap_or_else(|| panic!("no counter {section}.{name}"))
    }

    pub fn ping(&self, from: &str, to: &str, count: u32) -> bool {
        self.exec(from, &["ping", "-c", &count.to_string(), "-W", "1", "-i", "0.2", to]).status.success()
    }

    pub fn curl(&self, from: &str, url: &str) -> Result<String, String> {
        let out = self.exec(from, &["curl", "-sS", "-m", "5", url]);
        if out.status.success() { Ok(text(&out.stdout)) } else { Err(text(&out.stderr)) }
    }

    pub fn down(&mut self) {
        if self.up {
            let out = self.script(&["down"]);
            assert!(out.status.success(), "lab.sh down failed: {}", text(&out.stderr));
            self.up = false;
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.up {
            let _ = self.script(&["down"]);
        }
    }
}

/// A process that lives as long as the guard.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs netns-scripts/`name` with a lab prefix of its own (`LAB_PREFIX`) and the built
/// ucanal; afterwards no namespace or lab process of that prefix may be left, pass or fail.
pub fn run_lab_script(name: &str, prefix: &str, args: &[&str]) -> Output {
    let out = Command::new(repo().join("netns-scripts").join(name))
        .args(args)
        .env("LAB_PREFIX", prefix)
        .env("UCANAL_BIN", ucanal_bin())
        .env_remove("UCANAL_RUN_ARGS")
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let left = wait_until(Duration::from_secs(5), || {
        !text(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).contains(prefix)
    });
    assert!(left.is_some(), "{name} left namespaces {prefix}* behind");
    let procs =
        text(&Command::new("pgrep").args(["-af", &format!("/run/ucanal-lab/{prefix}")]).output().unwrap().stdout);
    assert!(procs.trim().is_empty(), "{name} left processes: {procs}");
    out
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls `f` every 50 ms until it is true or `timeout` passes; returns the time it took.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a classic pcap file: the frames (LINKTYPE_ETHERNET).
pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(b.len() >= 24, "pcap shorter than its header");
    let le = match &b[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        m => panic!("not a pcap file (magic {m:02x?})"),
    };
    let u32_at = |i: usize| {
        let a: [u8; 4] = b[i..i + 4].try_into().unwrap();
        if le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) }
    };
    assert_eq!(u32_at(20), 1, "pcap link type is not Ethernet");
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= b.len() {
        let incl = u32_at(i + 8) as usize;
        i += 16;
        if i + incl > b.len() {
            break;
        }
        out.push(b[i..i + incl].to_vec());
        i += incl;
    }
    out
}
