//! Issue "throughput": the fast-path techniques keep every byte intact, in both
//! directions, with offloads on (TSO from the pod segmented in userspace, UDP GSO/GRO,
//! GRO toward the pod) and with the switch that turns them off; and
//! netns-scripts/bench.sh runs end to end (a short smoke run) and writes its table.

mod common;

use std::process::ExitCode;

use common::harness::Suite;
use common::{Lab, text};

/// 24 MiB of pseudo-random bytes (not compressible, not a pattern that a bug could keep).
const BULK_MB: u32 = 24;

fn main() -> ExitCode {
    let mut suite = Suite::new();
    let tools = ["curl", "sha256sum", "ss"];
    suite
        .group("bulk_data_intact_with_offloads_on", &tools, || Bulk::up("to", &[]))
        .phase("the_techniques_are_on", |b| techniques(&b.lab, true))
        .phase("downloads_intact", Bulk::downloads)
        .phase("upload_intact", Bulk::upload)
        .phase_after("the_techniques_were_on_the_path", &["downloads_intact", "upload_intact"], |b| on_the_path(&b.lab))
        .phase("no_segmentation_transmit_or_checksum_drop", |b| {
            let drops = b.lab.counters("centos7-1")["drops"].clone();
            for d in ["gso_unsupported", "tx_error", "ipv4_bad_checksum"] {
                assert_eq!(drops[d].as_u64(), Some(0), "centos7-1 drop {d}: {drops}");
            }
        });
    suite
        .group("bulk_data_intact_with_offloads_off", &tools, || Bulk::up("tf", &["--offloads", "off"]))
        .phase("the_techniques_are_off", |b| techniques(&b.lab, false))
        .phase("pods_have_no_tso", |b| {
            let feats = text(&b.lab.exec("ghost-ep1", &["ethtool", "-k", "eth0"]).stdout);
            assert!(feats.contains("tcp-segmentation-offload: off"), "{feats}");
        })
        .phase("downloads_intact", Bulk::downloads)
        .phase("upload_intact", Bulk::upload)
        .phase("nothing_segmented_or_coalesced", |b| {
            for node in ["centos7-1", "centos7-2"] {
                let lab = &b.lab;
                assert_eq!(
                    lab.counter(node, "decisions", "gso_segmented"),
                    0,
                    "{node}: nothing to segment with offloads off"
                );
                assert_eq!(
                    lab.counter(node, "decisions", "gro_coalesced"),
                    0,
                    "{node}: no coalescing with offloads off"
                );
            }
        });
    suite.netns_test("bench_script_smoke_run", &["iperf3", "ping", "curl", "iptables"], bench_script_smoke_run);
    suite.run()
}

/// A lab whose pods both serve the same 24 MiB file (the NodePort picks either
/// endpoint), and its SHA-256.
struct Bulk {
    lab: Lab,
    file: String,
    want: String,
}

impl Bulk {
    fn up(tag: &str, args: &[&str]) -> Bulk {
        let lab = Lab::up(tag, args);
        let run_dir = format!("/run/ucanal-lab/{}", lab.prefix);
        let file = format!("{run_dir}/www/ghost-ep2/bulk.bin");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "python3 -c 'import random,sys; r=random.Random(4472); sys.stdout.buffer.write(r.randbytes({BULK_MB}<<20))' >{file} \
                 && cp {file} {run_dir}/www/ghost-ep1/bulk.bin && sha256sum {file}"
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "making the bulk file: {}", text(&out.stderr));
        let want = text(&out.stdout).split_whitespace().next().unwrap().to_string();
        Bulk { lab, file, want }
    }

    /// Downloads pod to pod both ways and through the NodePort of each node (the server
    /// pod's kernel hands ucanal 64 KB TSO frames with offloads on); the SHA-256 at the
    /// receiver must equal the sender's.
    fn downloads(&self) {
        let (lab, want) = (&self.lab, &self.want);
        for (who, url) in [
            ("ghost-ep1", "http://10.244.0.74:2368/bulk.bin"),
            ("ghost-ep2", "http://10.244.1.5:2368/bulk.bin"),
            ("client", "http://172.16.240.131:31266/bulk.bin"),
            ("client", "http://172.16.240.132:31266/bulk.bin"),
        ] {
            let out = lab.sh(who, &format!("curl -sS -m 60 {url} | sha256sum"));
            assert!(out.status.success(), "curl {url} from {who}: {}", text(&out.stderr));
            let got = text(&out.stdout);
            assert!(got.starts_with(want.as_str()), "{who} <- {url}: sha256 {got} != {want}");
        }
    }

    /// Upload ghost-ep1 -> ghost-ep2: a sink that hashes what it reads.
    fn upload(&self) {
        let (lab, want, file) = (&self.lab, &self.want, &self.file);
        let sink = "import hashlib,socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); \
                    s.bind(('0.0.0.0',7001)); s.listen(1); s.settimeout(60); c,_=s.accept(); c.settimeout(60); h=hashlib.sha256(); \
                    [h.update(b) for b in iter(lambda: c.recv(1<<20), b'')]; print(h.hexdigest(), flush=True)";
        let server = lab.spawn("ghost-ep2", &format!("python3 -c \"{sink}\""));
        let ready = common::wait_until(std::time::Duration::from_secs(5), || {
            text(&lab.sh("ghost-ep2", "ss -Hltn 'sport = :7001'").stdout).contains("LISTEN")
        });
        assert!(ready.is_some(), "upload sink did not start");
        let send = format!(
            "python3 -c 'import socket,sys; s=socket.create_connection((\"10.244.0.74\",7001),timeout=60); \
             s.sendall(open(sys.argv[1],\"rb\").read()); s.close()' {file}"
        );
        let out = lab.sh("ghost-ep1", &send);
        assert!(out.status.success(), "upload: {}", text(&out.stderr));
        let got = server.wait_with_output().unwrap();
        assert!(
            text(&got.stdout).starts_with(want.as_str()),
            "upload sha256 {} != {want}; sink said {}",
            text(&got.stdout),
            text(&got.stderr)
        );
    }
}

/// `show node` reports the four techniques all on, or all off.
fn techniques(lab: &Lab, on: bool) {
    let node =
        serde_json::from_str::<serde_json::Value>(&lab.ucanal_ok("centos7-1", &["show", "node", "--json"])).unwrap();
    assert_eq!(
        node["techniques"],
        serde_json::json!({"tap_offloads": on, "udp_gso": on, "udp_gro": on, "gro": on}),
        "{node}"
    );
}

/// The techniques were on the path: pods handed over TSO super-packets that ucanal
/// segmented, segments toward pods were coalesced, and decided once per run.
fn on_the_path(lab: &Lab) {
    for node in ["centos7-1", "centos7-2"] {
        let segmented = lab.counter(node, "decisions", "gso_segmented");
        let coalesced = lab.counter(node, "decisions", "gro_coalesced");
        assert!(segmented > 0 && coalesced > 0, "{node}: gso_segmented {segmented}, gro_coalesced {coalesced}");
        let (replayed, decap) =
            (lab.counter(node, "decisions", "run_replayed"), lab.counter(node, "decisions", "decap"));
        assert!(replayed > 0 && replayed < decap, "{node}: run_replayed {replayed} of decap {decap}");
    }
}

/// netns-scripts/bench.sh runs end to end (a short smoke run), writes its table and its
/// JSON, and leaves nothing behind.
fn bench_script_smoke_run() {
    let id = std::process::id() % 10000;
    let json = std::env::temp_dir().join(format!("ucanal-bench-{id}.json"));
    let out = std::process::Command::new(common::repo().join("netns-scripts/bench.sh"))
        .args(["--duration", "1", "--ping-count", "20", "--variants", "default,offloads-off", "--json"])
        .arg(&json)
        .env("BENCH_KERNEL_PREFIX", format!("tk{id}-"))
        .env("BENCH_UCANAL_PREFIX", format!("tu{id}-"))
        .env("BENCH_RELAY_PREFIX", format!("tr{id}-"))
        .env("UCANAL_BIN", common::ucanal_bin())
        .output()
        .expect("running bench.sh");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "bench.sh failed:\n{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("ucanal/kernel") && stdout.contains("TCP client->NodePort->pod"), "{stdout}");
    assert!(stdout.contains("ucanal/ceiling") && stdout.contains("CPU seconds per GB"), "{stdout}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(r["variants"].as_array().unwrap().len(), 2, "{r}");
    for v in r["variants"].as_array().unwrap() {
        let rows = v["rows"].as_array().unwrap();
        let tests: Vec<&str> = rows.iter().map(|x| x["test"].as_str().unwrap()).collect();
        assert_eq!(tests, ["tcp-pod-1", "tcp-pod-4", "tcp-nodeport", "ping"]);
        for row in rows {
            for k in ["kernel_median", "ucanal_median", "ratio"] {
                assert!(row[k].as_f64().is_some_and(|x| x > 0.0), "{k} in {row}");
            }
            // The ceiling (the relay) has every row but NodePort, which needs NAT.
            let nodeport = row["test"] == "tcp-nodeport";
            assert_eq!(row["ceiling_median"].as_f64().is_some_and(|x| x > 0.0), !nodeport, "ceiling in {row}");
            if row["unit"] == "Gbit/s" {
                for lab in ["kernel", "ucanal"] {
                    let cpu = row["cpu_s_per_gb"][lab].as_f64();
                    assert!(cpu.is_some_and(|x| x > 0.0), "CPU s/GB of {lab} in {row}");
                }
            }
        }
    }
    // Nothing left behind: no namespace with either prefix.
    let ns = text(&std::process::Command::new("ip").args(["netns", "list"]).output().unwrap().stdout);
    for p in ["tk", "tu", "tr"] {
        assert!(!ns.contains(&format!("{p}{id}-")), "left behind:\n{ns}");
    }
}
