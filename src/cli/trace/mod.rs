//! The client side of `ucanal trace` and `ucanal capture`: sends the probe or opens
//! the live stream, and prints traces as numbered steps (in the kernel tools' words,
//! see `words`) or frames as a pcap file.

mod policy_words;
mod words;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use super::CliError;
use super::show::json_text;
use super::target::{ANSWER_WAIT, Target};
use crate::api::{CapturedFrame, Probe, ProbeProto, Query, Stream, TraceEvent, TraceReport};
use crate::core::trace::{Outcome, Step};
use crate::io::observe::{Frame, pcap_header, pcap_record};

/// Parses `tcp 172.16.240.1:40000 -> 172.16.240.131:31266` (the arrow is optional).
pub fn parse_flow(words: &[String]) -> Result<(ProbeProto, SocketAddrV4, SocketAddrV4), CliError> {
    let w: Vec<&str> = words.iter().map(String::as_str).filter(|w| *w != "->" && *w != "to").collect();
    let [proto, src, dst] = w.as_slice() else {
        return Err(CliError::Usage("want: <tcp|udp|icmp> <src ip:port> -> <dst ip:port>".into()));
    };
    let proto = ProbeProto::parse(proto)
        .ok_or_else(|| CliError::Usage(format!("protocol '{}': want tcp, udp or icmp", proto.to_ascii_lowercase())))?;
    let parse = |s: &str| -> Result<SocketAddrV4, CliError> {
        s.parse::<SocketAddrV4>()
            .or_else(|_| s.parse::<Ipv4Addr>().map(|ip| SocketAddrV4::new(ip, 0)))
            .map_err(|_| CliError::Usage(format!("'{s}' is not an address (want a.b.c.d:port)")))
    };
    Ok((proto, parse(src)?, parse(dst)?))
}

/// `ucanal trace --in ... <flow>`: the described packet through the node's live tables.
pub fn trace_probe(
    target: &Target,
    ingress: String,
    flags: Option<String>,
    flow: &[String],
    json: bool,
) -> Result<String, CliError> {
    let (proto, src, dst) = parse_flow(flow)?;
    let p = Probe { ingress, proto, src, dst, flags, ttl: 64 };
    let report: TraceReport = target.client(Some(ANSWER_WAIT))?.query(Query::Trace { probe: p.clone() })?;
    if json {
        return json_text(&report);
    }
    let head = format!(
        "trace on {}: {} {} -> {} in {} (dry run: the live tables are read, nothing is sent or changed)",
        report.node, p.proto, p.src, p.dst, p.ingress
    );
    Ok(format!("{head}\n{}", render_trace(&report.steps, &report.result)))
}

fn render_trace(steps: &[Step], result: &Outcome) -> String {
    let mut s = String::new();
    for (i, step) in steps.iter().enumerate() {
        s.push_str(&format!("{:>3}. {step}\n", i + 1));
    }
    s.push_str(&format!("  => {result}"));
    s
}

/// Live traces from one or more nodes, printed as they arrive.
pub fn trace_live(
    targets: &[Target],
    filter: &str,
    count: usize,
    timeout: u64,
    json: bool,
) -> Result<String, CliError> {
    let (tx, rx) = std::sync::mpsc::channel::<Result<Option<TraceEvent>, CliError>>();
    for t in targets {
        let (tx, t, filter) = (tx.clone(), t.clone(), filter.to_string());
        std::thread::spawn(move || {
            let s = Stream::TraceLive { filter, count, timeout_ms: timeout * 1000 };
            let r = t
                .client(None)
                .map_err(CliError::from)
                .and_then(|mut c| c.stream(s, |ev: TraceEvent| tx.send(Ok(Some(ev))).is_ok()).map_err(CliError::from));
            let _ = tx.send(r.map(|()| None));
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
                    println!("--- {} (packet {n})\n{}", ev.node, render_trace(&ev.steps, &ev.result));
                }
            }
            Ok(Ok(None)) => open -= 1,
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        }
    }
    Ok(if json { String::new() } else { format!("{n} packet(s) traced") })
}

/// `ucanal capture`: frames crossing a port, written as a pcap file (`-`: stdout).
pub fn capture(
    target: &Target,
    port: &str,
    path: &Path,
    count: usize,
    filter: &str,
    timeout: u64,
) -> Result<String, CliError> {
    let file_err = |source| CliError::File { what: path.display().to_string(), source };
    let mut out: Box<dyn Write> = if path.as_os_str() == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(std::fs::File::create(path).map_err(file_err)?)
    };
    out.write_all(&pcap_header()).and_then(|()| out.flush()).map_err(file_err)?;
    let mut n = 0;
    let mut werr = None;
    let s = Stream::Capture { port: port.into(), filter: filter.into(), count, timeout_ms: timeout * 1000 };
    target.client(None)?.stream(s, |f: CapturedFrame| {
        let f = Frame { sec: f.sec, usec: f.usec, data: f.data };
        if let Err(e) = out.write_all(&pcap_record(&f)).and_then(|_| out.flush()) {
            werr = Some(e);
            return false;
        }
        n += 1;
        true
    })?;
    if let Some(e) = werr {
        return Err(file_err(e));
    }
    Ok(if path.as_os_str() == "-" { String::new() } else { format!("{n} frame(s) written to {}", path.display()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_article_request() {
        let w: Vec<String> = "tcp 172.16.240.1:40000 -> 172.16.240.131:31266".split(' ').map(String::from).collect();
        let (p, s, d) = parse_flow(&w).unwrap();
        assert_eq!(p, ProbeProto::Tcp);
        assert_eq!(s, "172.16.240.1:40000".parse().unwrap());
        assert_eq!(d, "172.16.240.131:31266".parse().unwrap());
        assert!(parse_flow(&["sctp".into(), "1.2.3.4:1".into(), "1.2.3.4:2".into()]).is_err());
        assert!(parse_flow(&["tcp".into(), "1.2.3.4:1".into()]).is_err());
    }
}
