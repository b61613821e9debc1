//! The client side of `ucanal trace` and `ucanal capture`: sends the probe or opens
//! the live stream, and prints traces as numbered steps (in the kernel tools' words,
//! see `words`) or frames as a pcap file.

mod policy_words;
mod words;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

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

/// How long a live trace holds a packet before printing it, so that the packets of
/// several nodes (each on its own connection) come out in time order: the nodes' events
/// reach the client within this of each other. Only the machines' clocks can reorder more.
const LIVE_ORDER_WINDOW: Duration = Duration::from_millis(200);

/// Live traces from one or more nodes, printed in time order (each packet held for
/// [`LIVE_ORDER_WINDOW`]), each with its node and time of day.
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
    let mut order = TimeOrder::default();
    let mut n = 0;
    let mut print = |ev: TraceEvent| {
        n += 1;
        if json {
            println!("{}", serde_json::to_string(&ev).unwrap_or_default());
        } else {
            println!("--- {} {} (packet {n})\n{}", ev.node, time_of_day(ev.time), render_trace(&ev.steps, &ev.result));
        }
    };
    while open > 0 {
        match rx.recv_timeout(order.next_due(Instant::now()).unwrap_or(LIVE_ORDER_WINDOW)) {
            Ok(Ok(Some(ev))) => order.push(ev, Instant::now()),
            Ok(Ok(None)) => open -= 1,
            Ok(Err(e)) => {
                order.drain().for_each(&mut print);
                return Err(e);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        order.due(Instant::now()).for_each(&mut print);
    }
    order.drain().for_each(&mut print);
    Ok(if json { String::new() } else { format!("{n} packet(s) traced") })
}

/// Live events held for [`LIVE_ORDER_WINDOW`] after they arrived, given out by their
/// time: an event is due when it has been held that long, and then every held event
/// older than it goes first.
#[derive(Default)]
struct TimeOrder {
    held: Vec<(Instant, TraceEvent)>,
}

impl TimeOrder {
    fn push(&mut self, ev: TraceEvent, arrived: Instant) {
        self.held.push((arrived, ev));
    }

    /// How long until the oldest arrival is due.
    fn next_due(&self, now: Instant) -> Option<Duration> {
        self.held.iter().map(|(a, _)| (*a + LIVE_ORDER_WINDOW).saturating_duration_since(now)).min()
    }

    /// The events to print now, in time order.
    fn due(&mut self, now: Instant) -> std::vec::IntoIter<TraceEvent> {
        let Some(latest) =
            self.held.iter().filter(|(a, _)| now >= *a + LIVE_ORDER_WINDOW).map(|(_, e)| e.time).reduce(f64::max)
        else {
            return Vec::new().into_iter();
        };
        let (mut out, keep): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|(_, e)| e.time <= latest);
        self.held = keep;
        out.sort_by(|a, b| a.1.time.total_cmp(&b.1.time));
        out.into_iter().map(|(_, e)| e).collect::<Vec<_>>().into_iter()
    }

    /// Everything held, in time order.
    fn drain(&mut self) -> std::vec::IntoIter<TraceEvent> {
        let mut out: Vec<_> = self.held.drain(..).map(|(_, e)| e).collect();
        out.sort_by(|a, b| a.time.total_cmp(&b.time));
        out.into_iter()
    }
}

/// A Unix time as tcpdump prints it: the local time of day, to the microsecond.
fn time_of_day(t: f64) -> String {
    let secs = t.floor() as libc::time_t;
    let micros = ((t - t.floor()) * 1e6).round().min(999_999.0) as u32;
    // SAFETY: an all-zero `tm` is a valid value for localtime_r to overwrite.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals; localtime_r is the reentrant form.
    let ok = !unsafe { libc::localtime_r(&secs, &mut tm) }.is_null();
    let (h, m, s) = if ok { (tm.tm_hour, tm.tm_min, tm.tm_sec) } else { (0, 0, 0) };
    format!("{h:02}:{m:02}:{s:02}.{micros:06}")
}

/// `ucanal capture`: frames crossing a port, written as a pcap file (`-`: stdout).
///
/// As `tcpdump -w`, a capture the daemon refuses (an unknown port, a bad filter) or
/// that cannot start leaves no file behind: the file is opened first (so a path that
/// cannot be written fails at once) but emptied and given its pcap header only when the
/// daemon answers with a frame or the end of the capture; a new file is removed again
/// on a failure before that, an existing one is left as it was.
pub fn capture(
    target: &Target,
    port: &str,
    path: &Path,
    count: usize,
    filter: &str,
    timeout: u64,
) -> Result<String, CliError> {
    let file_err = |source| CliError::File { what: path.display().to_string(), source };
    let mut out = if path.as_os_str() == "-" {
        let mut o = PcapOut { w: Box::new(std::io::stdout()), started: false, file: None };
        o.start().map_err(file_err)?;
        o
    } else {
        let existed = path.exists();
        let f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path).map_err(file_err)?;
        PcapOut { w: Box::new(f), started: false, file: Some((path, existed)) }
    };
    let mut n = 0;
    let mut werr = None;
    let s = Stream::Capture { port: port.into(), filter: filter.into(), count, timeout_ms: timeout * 1000 };
    let r = target.client(None).map_err(CliError::from).and_then(|mut c| {
        c.stream(s, |f: CapturedFrame| {
            let f = Frame { sec: f.sec, usec: f.usec, data: f.data };
            if let Err(e) = out.start().and_then(|()| out.w.write_all(&pcap_record(&f))).and_then(|()| out.w.flush()) {
                werr = Some(e);
                return false;
            }
            n += 1;
            true
        })
        .map_err(CliError::from)
    });
    if let Err(e) = r {
        out.abandon();
        return Err(e);
    }
    // The end of a capture that saw no frame: a valid, empty pcap.
    out.start().map_err(file_err)?;
    if let Some(e) = werr {
        return Err(file_err(e));
    }
    Ok(if path.as_os_str() == "-" { String::new() } else { format!("{n} frame(s) written to {}", path.display()) })
}

/// Where a capture goes: the pcap header is written when the capture has started.
struct PcapOut<'p> {
    w: Box<dyn Write>,
    started: bool,
    /// The file and whether it existed before this capture.
    file: Option<(&'p Path, bool)>,
}

impl PcapOut<'_> {
    /// Empties the file (a capture replaces what was there, as `tcpdump -w`) and writes
    /// the pcap header, once.
    fn start(&mut self) -> std::io::Result<()> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        if let Some((p, _)) = self.file {
            std::fs::OpenOptions::new().write(true).open(p)?.set_len(0)?;
        }
        self.w.write_all(&pcap_header())?;
        self.w.flush()
    }

    /// The capture failed before it started: a file this capture created goes.
    fn abandon(&mut self) {
        if let (false, Some((p, false))) = (self.started, self.file) {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(node: &str, time: f64) -> TraceEvent {
        TraceEvent { node: node.into(), time, steps: vec![], result: Outcome::Held }
    }

    #[test]
    fn live_events_of_several_nodes_come_out_in_time_order() {
        let t0 = Instant::now();
        let mut o = TimeOrder::default();
        // centos7-2's answer arrives first, centos7-1's earlier packet 50 ms later.
        o.push(event("centos7-2", 100.000_300), t0);
        o.push(event("centos7-1", 100.000_100), t0 + Duration::from_millis(50));
        assert_eq!(o.due(t0 + Duration::from_millis(100)).count(), 0, "held for the window");
        assert_eq!(o.next_due(t0 + Duration::from_millis(100)), Some(Duration::from_millis(100)));
        let out: Vec<_> = o.due(t0 + LIVE_ORDER_WINDOW).map(|e| e.node).collect();
        assert_eq!(out, ["centos7-1", "centos7-2"]);
        o.push(event("centos7-1", 101.0), t0);
        o.push(event("centos7-2", 100.5), t0);
        let rest: Vec<_> = o.drain().map(|e| e.time).collect();
        assert_eq!(rest, [100.5, 101.0]);
    }

    #[test]
    fn times_print_to_the_microsecond() {
        let t = time_of_day(1_700_000_000.000_042);
        assert_eq!(t.len(), "hh:mm:ss.uuuuuu".len(), "{t}");
        assert!(t.ends_with(".000042"), "{t}");
    }

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
