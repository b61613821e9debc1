//! The client side of `ucanal trace` and `ucanal capture`: sends the probe or opens
//! the live stream, and prints traces as numbered steps or frames as a pcap file.

mod policy_words;
mod words;

use super::target::{self as client, Target};
use crate::api::Request;
use crate::control::inspect::probe;

pub fn trace_probe(
    target: &Target,
    ingress: String,
    flags: Option<String>,
    flow: &[String],
    json: bool,
) -> Result<String, String> {
    let (proto, src, dst) = probe::parse_flow(flow)?;
    let p = probe::Probe { ingress, proto, src, dst, flags, ttl: 64 };
    let data = client::request(target, &Request::Trace { probe: p.clone() })?.data.unwrap_or_default();
    if json {
        return serde_json::to_string_pretty(&data).map_err(|e| e.to_string());
    }
    let ev: crate::io::observe::TraceEvent = serde_json::from_value(serde_json::json!({
        "node": data["node"], "time": 0.0, "steps": data["steps"], "result": data["result"],
    }))
    .map_err(|e| format!("unexpected trace from ucanal: {e}"))?;
    let head = format!(
        "trace on {}: {} {} -> {} in {} (dry run: the live tables are read, nothing is sent or changed)",
        ev.node, p.proto, p.src, p.dst, p.ingress
    );
    Ok(format!("{head}\n{}", render_trace(&ev)))
}

fn render_trace(ev: &crate::io::observe::TraceEvent) -> String {
    let mut s = String::new();
    for (i, step) in ev.steps.iter().enumerate() {
        s.push_str(&format!("{:>3}. {step}\n", i + 1));
    }
    s.push_str(&format!("  => {}", ev.result));
    s
}

/// Live traces from one or more nodes, printed as they arrive.
pub fn trace_live(targets: &[Target], filter: &str, count: usize, timeout: u64, json: bool) -> Result<String, String> {
    let (tx, rx) = std::sync::mpsc::channel::<Result<Option<crate::io::observe::TraceEvent>, String>>();
    for s in targets {
        let (tx, s, f) = (tx.clone(), s.clone(), filter.to_string());
        std::thread::spawn(move || {
            let req = Request::TraceLive { filter: f, count, timeout_ms: timeout * 1000 };
            let r = client::call(&s, &req, None, |r| {
                if let Some(d) = r.data {
                    match serde_json::from_value(d) {
                        Ok(ev) => {
                            let _ = tx.send(Ok(Some(ev)));
                        }
                        Err(e) => {
                            let _ = tx.send(Err(format!("unexpected trace from ucanal: {e}")));
                        }
                    }
                }
                true
            });
            let _ = tx.send(r.map(|_| None));
        });
    }
    drop(tx);
    let mut open = targets.len();
    let mut n = 0;
    while open > 0 {
        match rx.recv() {
            Ok(Ok(Some(ev))) => {
                n += 1;
                if json {
                    println!("{}", serde_json::to_string(&ev).unwrap_or_default());
                } else {
                    println!("--- {} (packet {n})\n{}", ev.node, render_trace(&ev));
                }
            }
            Ok(Ok(None)) => open -= 1,
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        }
    }
    Ok(if json { String::new() } else { format!("{n} packet(s) traced") })
}

pub fn capture(
    target: &Target,
    port: &str,
    path: &std::path::Path,
    count: usize,
    filter: &str,
    timeout: u64,
) -> Result<String, String> {
    use std::io::Write;
    let mut out: Box<dyn Write> = if path.as_os_str() == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?)
    };
    out.write_all(&crate::io::observe::pcap_header()).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    let mut n = 0;
    let mut werr = None;
    let req = Request::Capture { port: port.into(), filter: filter.into(), count, timeout_ms: timeout * 1000 };
    client::call(target, &req, None, |r| {
        let Some(d) = r.data else { return true };
        let (Some(sec), Some(usec), Some(hex)) = (d["sec"].as_u64(), d["usec"].as_u64(), d["hex"].as_str()) else {
            return true;
        };
        let Some(data) = crate::control::daemon::streams::unhex(hex) else { return true };
        let f = crate::io::observe::Frame { sec: sec as u32, usec: usec as u32, data };
        if let Err(e) = out.write_all(&crate::io::observe::pcap_record(&f)).and_then(|_| out.flush()) {
            werr = Some(e.to_string());
            return false;
        }
        n += 1;
        true
    })?;
    if let Some(e) = werr {
        return Err(format!("{}: {e}", path.display()));
    }
    Ok(if path.as_os_str() == "-" { String::new() } else { format!("{n} frame(s) written to {}", path.display()) })
}
