//! The mixed lab's bulk matrix: 3 MB each way, sha256-checked where it arrives, on every
//! path between a ucanal node (centos7-1, ghost-ep1) and a kernel node (centos7-2, ghost-ep2),
//! under every uplink setting the lab tests. A path through a service is forced to each
//! endpoint by setting the service's endpoints on both nodes (`lab.sh endpoints`), never
//! left to the flow hash. After every cell neither node's stack may have refused to forward
//! anything for its size (`IpFragFails` in `nstat`), and ucanal may have written nothing
//! over the host port's MTU without GSO metadata (`host_oversize`): issue 23's stall, where
//! a kernel peer's TSO super-packets reached `ucanal0` as plain frames.
//!
//! Every cell is a test of its own (a phase of `tests/common/harness.rs`): `cargo test
//! --release --test bulk_matrix -- nodeport` runs some. The cells of one setting are a group
//! sharing one lab and run one at a time, in order; a table of every cell that ran and its
//! result closes the run.

mod common;

use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use common::harness::Suite;
use common::{Lab, text};

/// Bytes moved by every cell, each way.
const BULK: usize = 3 << 20;
/// A cell that does not finish in this many seconds has stalled.
const STALL_SECS: &str = "20";

/// How the lab's uplinks (the client's eth0, both nodes' ens33) treat checksums and segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    /// The veth defaults: tx checksumming and TSO on (a kernel sender's checksums cross the
    /// wire partial, its TSO super-packets whole), GRO off.
    PartialTso,
    /// TSO off: the kernel segments before the wire, checksums still partial.
    PartialNoTso,
    /// The defaults with GRO on.
    PartialGro,
    /// `LAB_WIRE_CSUM=full`: tx checksumming off (so TSO too), complete checksums.
    FullCsum,
    /// `--offloads off`: no TSO, GSO or GRO on the lab's devices, none in ucanal.
    OffloadsOff,
}

impl Setting {
    const ALL: [Setting; 5] =
        [Setting::PartialTso, Setting::PartialNoTso, Setting::PartialGro, Setting::FullCsum, Setting::OffloadsOff];

    fn name(self) -> &'static str {
        match self {
            Setting::PartialTso => "csum-partial.tso-on",
            Setting::PartialNoTso => "csum-partial.tso-off",
            Setting::PartialGro => "csum-partial.tso-on.gro-on",
            Setting::FullCsum => "csum-full",
            Setting::OffloadsOff => "offloads-off",
        }
    }

    /// Whether a kernel sender's TSO super-packets cross the wire whole (issue 23's case).
    fn super_packets(self) -> bool {
        matches!(self, Setting::PartialTso | Setting::PartialGro)
    }

    fn up(self) -> Lab {
        let (args, env): (&[&str], &[(&str, &str)]) = match self {
            Setting::FullCsum => (&["--node2", "kernel"], &[("LAB_WIRE_CSUM", "full")]),
            Setting::OffloadsOff => (&["--node2", "kernel", "--offloads", "off"], &[]),
            _ => (&["--node2", "kernel"], &[]),
        };
        // Two settings' labs may be up at once: each its own prefix (`tb<setting><pid>-`).
        let index = Setting::ALL.iter().position(|s| *s == self).unwrap_or(0);
        let lab = Lab::up_env(&format!("tb{index}"), args, env);
        let features: &[&str] = match self {
            Setting::PartialNoTso => &["tso", "off"],
            Setting::PartialGro => &["gro", "on"],
            _ => &[],
        };
        if !features.is_empty() {
            for (ns, dev) in UPLINKS {
                let out = lab.exec(ns, &[&["ethtool", "-K", dev][..], features].concat());
                assert!(out.status.success(), "ethtool -K {dev} {features:?} in {ns}: {}", text(&out.stderr));
            }
        }
        lab
    }
}

const UPLINKS: [(&str, &str); 3] = [("client", "eth0"), ("centos7-1", "ens33"), ("centos7-2", "ens33")];
const NODES: [&str; 2] = ["centos7-1", "centos7-2"];

/// The two pods: ghost-ep1 on the ucanal node, ghost-ep2 on the kernel node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pod {
    Ep1,
    Ep2,
}

impl Pod {
    const ALL: [Pod; 2] = [Pod::Ep1, Pod::Ep2];
    fn name(self) -> &'static str {
        match self {
            Pod::Ep1 => "ghost-ep1",
            Pod::Ep2 => "ghost-ep2",
        }
    }
    fn ip(self) -> &'static str {
        match self {
            Pod::Ep1 => "10.244.1.5",
            Pod::Ep2 => "10.244.0.74",
        }
    }
    fn other(self) -> Pod {
        match self {
            Pod::Ep1 => Pod::Ep2,
            Pod::Ep2 => Pod::Ep1,
        }
    }
    /// The seed of the pod's download file: each pod serves different bytes, so the sum
    /// says which endpoint answered.
    fn seed(self) -> u32 {
        match self {
            Pod::Ep1 => 1,
            Pod::Ep2 => 2,
        }
    }
}

/// Who connects to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Pod to pod across the nodes, straight.
    Pod { from: Pod },
    /// The client to the NodePort on a node, the service forced to `ep`.
    NodePort { node: usize, ep: Pod },
    /// A pod to the ClusterIP, the service forced to `ep` (itself: hairpin).
    ClusterIp { from: Pod, ep: Pod },
}

impl Path {
    /// Every path, in the order the cells run (endpoint changes grouped).
    fn all() -> Vec<Path> {
        let mut v: Vec<Path> = Pod::ALL.iter().map(|&from| Path::Pod { from }).collect();
        for ep in Pod::ALL {
            v.extend((0..NODES.len()).map(|node| Path::NodePort { node, ep }));
            v.extend(Pod::ALL.iter().map(|&from| Path::ClusterIp { from, ep }));
        }
        v
    }
    fn name(self) -> String {
        match self {
            Path::Pod { from } => format!("pod.{}-{}", from.name(), from.other().name()),
            Path::NodePort { node, ep } => format!("nodeport.client-{}-{}", NODES[node], ep.name()),
            Path::ClusterIp { from, ep } => format!("clusterip.{}-{}", from.name(), ep.name()),
        }
    }
    /// The namespace the connection starts in.
    fn client(self) -> &'static str {
        match self {
            Path::Pod { from } | Path::ClusterIp { from, .. } => from.name(),
            Path::NodePort { .. } => "client",
        }
    }
    fn server(self) -> Pod {
        match self {
            Path::Pod { from } => from.other(),
            Path::NodePort { ep, .. } | Path::ClusterIp { ep, .. } => ep,
        }
    }
    fn forced(self) -> Option<Pod> {
        match self {
            Path::Pod { .. } => None,
            Path::NodePort { ep, .. } | Path::ClusterIp { ep, .. } => Some(ep),
        }
    }
    fn base_url(self) -> String {
        match self {
            Path::Pod { from } => format!("http://{}:2368", from.other().ip()),
            Path::NodePort { node, .. } => format!("http://172.16.240.13{}:31266", node + 1),
            Path::ClusterIp { .. } => "http://10.250.0.40:2368".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// GET the serving pod's file; summed by the connecting side.
    Download,
    /// PUT a file; summed by the serving pod (its answer names it).
    Upload,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Download => "download",
            Dir::Upload => "upload",
        }
    }
}

/// A lab of one setting and what the cells need to know about it.
struct Fixture {
    setting: Setting,
    lab: Lab,
    /// sha256 of each pod's download file (by `Pod::seed`) and of the upload file.
    sums: [String; 3],
    /// The endpoint the service is forced to now.
    forced: Mutex<Option<Pod>>,
}

impl Fixture {
    fn up(setting: Setting) -> Fixture {
        let lab = setting.up();
        let run = lab.run_dir();
        let files = [run.join("www/ghost-ep1/bulk.bin"), run.join("www/ghost-ep2/bulk.bin"), run.join("upload.bin")];
        let sums = [1, 2, 3].map(|seed| {
            let file = files[seed - 1].display();
            let out = lab.sh(
                "client",
                &format!(
                    "python3 -c 'import random,sys; sys.stdout.buffer.write(random.Random({seed}).randbytes({BULK}))' \
                     >{file} && sha256sum {file}"
                ),
            );
            assert!(out.status.success(), "making {file}: {}", text(&out.stderr));
            text(&out.stdout).split_whitespace().next().unwrap().to_string()
        });
        let fx = Fixture { setting, lab, sums, forced: Mutex::new(None) };
        // Every cell then checks it did not move: IpFragFails stays 0 through the setting.
        assert_eq!(fx.frag_fails(), [0, 0], "IpFragFails of a fresh lab");
        fx
    }

    fn force(&self, ep: Pod) {
        let mut forced = self.forced.lock().unwrap_or_else(PoisonError::into_inner);
        if *forced != Some(ep) {
            let out = self.lab.lab_sh(&["endpoints", "default/ghost", &format!("{}:2368", ep.ip())]);
            assert!(out.status.success(), "lab.sh endpoints -> {}: {}", ep.name(), text(&out.stderr));
            *forced = Some(ep);
        }
    }

    /// `IpFragFails` of both nodes' stacks.
    fn frag_fails(&self) -> [u64; 2] {
        NODES.map(|node| {
            let out = self.lab.exec(node, &["nstat", "-asz", "IpFragFails"]);
            let s = text(&out.stdout);
            let n = s.lines().find_map(|l| l.strip_prefix("IpFragFails")).and_then(|l| l.split_whitespace().next());
            n.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("nstat in {node}: {s:?} {}", text(&out.stderr)))
        })
    }

    /// One transfer; `Err` says what went wrong.
    fn transfer(&self, path: Path, dir: Dir) -> Result<(), String> {
        let url = path.base_url();
        let server = path.server();
        let cmd = match dir {
            Dir::Download => {
                let file = self.lab.run_dir().join(format!("download.{}.bin", path.client()));
                let file = file.display();
                format!(
                    "curl -sS --fail -m {STALL_SECS} -o {file} -w '%{{size_download}}\\n' {url}/bulk.bin && sha256sum {file} && rm -f {file}"
                )
            }
            Dir::Upload => format!(
                "curl -sS --fail -m {STALL_SECS} -H Expect: -T {} {url}/upload",
                self.lab.run_dir().join("upload.bin").display()
            ),
        };
        let out = self.lab.sh(path.client(), &cmd);
        let got = text(&out.stdout);
        if !out.status.success() {
            return Err(format!("curl failed: {} (got {:?})", text(&out.stderr).trim(), got.trim()));
        }
        let words: Vec<&str> = got.split_whitespace().collect();
        let (want, ok) = match dir {
            // "<bytes>\n<sha256>  <file>"
            Dir::Download => {
                let want = &self.sums[(server.seed() - 1) as usize];
                (format!("{BULK} {want}"), words.len() >= 2 && words[..2] == [&BULK.to_string(), want.as_str()])
            }
            // "<sha256> <bytes> <pod>"
            Dir::Upload => {
                let want = format!("{} {BULK} {}", self.sums[2], server.name());
                (want.clone(), words.join(" ") == want)
            }
        };
        if ok { Ok(()) } else { Err(format!("got {:?}, want {want:?}", got.trim())) }
    }
}

/// One row of the closing table.
struct Row {
    name: String,
    ok: bool,
    secs: f64,
    /// `peer_tso` on the ucanal node during the cell: super-packets taken as GSO frames.
    tso: u64,
    note: String,
}

static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

/// A cell: the endpoint forced, the transfer, then the checks of both nodes' stacks and of
/// ucanal's host port. Returns the `peer_tso` count of the cell and its seconds.
fn cell(fx: &Fixture, path: Path, dir: Dir) -> Result<(u64, f64), String> {
    if let Some(ep) = path.forced() {
        fx.force(ep);
    }
    let counters = || ["peer_tso", "host_oversize"].map(|name| fx.lab.counter("centos7-1", "decisions", name));
    let (fails, before) = (fx.frag_fails(), counters());
    let t0 = Instant::now();
    let moved = fx.transfer(path, dir);
    let secs = t0.elapsed().as_secs_f64();
    let after = counters();
    let (tso, oversize) = (after[0] - before[0], after[1] - before[1]);
    moved?;
    let fails_after = fx.frag_fails();
    if fails_after != fails {
        return Err(format!("IpFragFails of (centos7-1, centos7-2) went from {fails:?} to {fails_after:?}"));
    }
    if oversize != 0 {
        return Err(format!("ucanal wrote {oversize} frames over the host port's MTU without GSO (host_oversize)"));
    }
    let issue_path = matches!(path, Path::NodePort { node: 0, ep: Pod::Ep2 }) && dir == Dir::Download;
    if fx.setting.super_packets() && issue_path && tso == 0 {
        return Err("no TSO super-packet reached ucanal: the cell no longer takes issue 23's path".into());
    }
    Ok((tso, secs))
}

/// Runs a cell, records its row for the table, and fails the phase with its reason.
fn run_cell(fx: &Fixture, name: String, path: Path, dir: Dir) {
    let r = cell(fx, path, dir);
    let (ok, (tso, secs), note) = match &r {
        Ok(v) => (true, *v, String::new()),
        Err(e) => (false, (0, 0.0), e.clone()),
    };
    ROWS.lock().unwrap_or_else(PoisonError::into_inner).push(Row { name, ok, secs, tso, note });
    if let Err(e) = r {
        panic!("{e}");
    }
}

fn print_table(names: &[String]) {
    let rows = ROWS.lock().unwrap_or_else(PoisonError::into_inner);
    let width = names.iter().map(String::len).max().unwrap_or(10);
    println!("\nbulk matrix: {BULK} bytes per cell, sha256 at the receiving side");
    println!("{:width$}  {:7}  {:>7}  {:>9}  {:>8}", "cell", "result", "seconds", "Mbit/s", "peer_tso");
    for r in names.iter().filter_map(|name| rows.iter().find(|r| &r.name == name)) {
        let name = &r.name;
        if r.ok {
            let mbit = BULK as f64 * 8.0 / r.secs / 1e6;
            println!("{name:width$}  {:7}  {:>7.3}  {mbit:>9.0}  {:>8}", "ok", r.secs, r.tso);
        } else {
            println!("{name:width$}  {:7}  {}", "FAILED", r.note);
        }
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    println!(
        "{} cells: {} ok, {failed} failed ({} not run)",
        rows.len(),
        rows.len() - failed,
        names.len() - rows.len()
    );
}

fn main() -> ExitCode {
    let mut suite = Suite::new();
    let mut names = Vec::new();
    for setting in Setting::ALL {
        let tools = &["curl", "ethtool", "iptables", "nstat", "sha256sum"];
        let mut group = suite.group(setting.name(), tools, move || Fixture::up(setting));
        for path in Path::all() {
            for dir in [Dir::Download, Dir::Upload] {
                let phase = format!("{}::{}", path.name(), dir.name());
                let name = format!("{}::{phase}", setting.name());
                names.push(name.clone());
                group = group.phase(&phase, move |fx| run_cell(fx, name, path, dir));
            }
        }
    }
    let code = suite.run();
    if !ROWS.lock().unwrap_or_else(PoisonError::into_inner).is_empty() {
        print_table(&names);
    }
    code
}
