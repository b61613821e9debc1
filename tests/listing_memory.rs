//! Issue 25: listings in bounded memory. The conntrack table of centos7-1 is filled to
//! 262,144 entries by a bounded flood of spoofed SYNs (netns-scripts/synflood.py, from
//! the lab's client to a NodePort; `max` is twice that, so that neither early drop nor
//! the pressure sweep thins it), then 8 `show conntrack --json` run at once: the daemon's
//! RSS grows by at most 64 MB while they run and is back within 16 MB of where it started
//! once they are done (rows are streamed from the snapshot to the socket, nothing is
//! buffered whole).

mod common;

use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use common::harness::Suite;
use common::*;

const NODE1: &str = "172.16.240.131";
const ENTRIES: u64 = 262_144;
/// The flood's bound.
const MAX_SYNS: u64 = 4 * ENTRIES;
const LISTINGS: usize = 8;
const MB: u64 = 1024 * 1024;
const GROWTH_MAX: u64 = 64 * MB;
const RETURN_WITHIN: u64 = 16 * MB;

fn main() -> ExitCode {
    let mut suite = Suite::new();
    suite
        .group("conntrack_listings_in_bounded_memory", &["curl"], || {
            Lab::up_env("tt", &[], &[("LAB_UCANAL_DATAPLANE", "[conntrack]\nmax = 524288")])
        })
        .phase("eight_listings_at_262144_entries_grow_rss_64_mb_at_most_and_give_it_back", eight_listings);
    suite.run()
}

fn rss(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("ucanal {pid}: {e}"));
    let kb = s.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS");
    kb.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
}

fn entries(lab: &Lab) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&lab.ucanal_ok("centos7-1", &["show", "node", "--json"])).unwrap();
    v["conntrack"]["entries"].as_u64().expect("conntrack.entries")
}

fn listing(lab: &Lab) -> Child {
    let line = format!(
        "{} --socket {} show conntrack --json | wc -c",
        ucanal_bin().display(),
        lab.socket("centos7-1").display()
    );
    std::process::Command::new("sh").args(["-c", &line]).stdout(Stdio::piped()).spawn().unwrap()
}

/// The flood's NodePort: its endpoints are free addresses of centos7-2's pod CIDR (the
/// SYNs end there as counted drops, no reply). A NodePort flow is masqueraded to the
/// node, so one endpoint holds at most 64,512 flows (one per source port): six of them.
const FLOOD_PORT: &str = "31800";
const FLOOD_ENDPOINTS: [&str; 6] =
    ["10.244.0.201:80", "10.244.0.202:80", "10.244.0.203:80", "10.244.0.204:80", "10.244.0.205:80", "10.244.0.206:80"];

fn eight_listings(lab: &Lab) {
    let mut svc = vec!["service", "set", "--name", "default/flood", "--cluster-ip", "10.250.0.60", "--port", "80"];
    svc.extend(["--node-port", FLOOD_PORT]);
    for ep in FLOOD_ENDPOINTS {
        svc.extend(["--endpoint", ep]);
    }
    lab.ucanal_ok("centos7-1", &svc);
    let pid = std::fs::read_to_string(lab.run_dir().join("centos7-1.pid")).unwrap().trim().to_string();
    // The node drops part of a flood it cannot keep up with: rounds of new sources until
    // the table holds ENTRIES, bounded at MAX_SYNS in all.
    let t = Instant::now();
    let (mut sent, mut round) = (0, 0);
    let mut n = entries(lab);
    while n < ENTRIES && sent < MAX_SYNS {
        round += 1;
        let want = (ENTRIES - n + 256).min(MAX_SYNS - sent);
        let flood = format!(
            "exec python3 {} {NODE1} {FLOOD_PORT} 60 {want} {round}",
            repo().join("netns-scripts/synflood.py").display()
        );
        let out = lab.exec("client", &["sh", "-c", &flood]);
        assert!(out.status.success(), "synflood.py: {}", text(&out.stderr));
        sent += text(&out.stdout).trim().parse::<u64>().unwrap_or(want);
        std::thread::sleep(Duration::from_millis(500));
        n = entries(lab);
    }
    println!("{sent} SYNs in {round} round(s), {:?}: {n} conntrack entries", t.elapsed());
    assert!(n >= ENTRIES, "the table holds {n} entries, not {ENTRIES}");
    let start = rss(&pid);
    let t = Instant::now();
    let mut running: Vec<Child> = (0..LISTINGS).map(|_| listing(lab)).collect();
    let mut peak = start;
    let mut sizes = Vec::new();
    while !running.is_empty() {
        peak = peak.max(rss(&pid));
        let mut i = 0;
        while i < running.len() {
            if running[i].try_wait().unwrap().is_some() {
                let out = running.swap_remove(i).wait_with_output().unwrap();
                sizes.push(text(&out.stdout).trim().parse::<u64>().unwrap_or(0));
            } else {
                i += 1;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(120), "the listings take more than 2 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = t.elapsed();
    let back = wait_until(Duration::from_secs(10), || rss(&pid) <= start + RETURN_WITHIN);
    let end = rss(&pid);
    println!(
        "{LISTINGS} listings of {n} entries at once in {took:?} ({} MB each): RSS {} MB at the start, peak {} MB (+{} MB), {} MB after",
        sizes.iter().max().unwrap_or(&0) / MB,
        start / MB,
        peak / MB,
        (peak - start) / MB,
        end / MB
    );
    // A row of `show conntrack --json` is well over 100 bytes: every listing was whole.
    assert!(sizes.iter().all(|&s| s > n * 100), "a listing came back short: {sizes:?} bytes");
    assert!(peak - start <= GROWTH_MAX, "RSS grew {} MB during the listings", (peak - start) / MB);
    assert!(back.is_some(), "RSS {} MB after the listings, {} MB at the start", end / MB, start / MB);
}
