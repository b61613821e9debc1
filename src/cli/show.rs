//! `ucanal show`: the daemon's rows printed as the kernel tools users know print them
//! (`ip route`, `ip neigh`, `bridge fdb`, `conntrack -L`, `iptables -vnL`), or as
//! their stable JSON (`--json`, keys sorted; the schema README.md's "Listings"
//! documents). Both come from the same typed rows, so they always agree.

use std::fmt::Write;

use serde::Serialize;

use super::CliError;
use super::target::{ANSWER_WAIT, Target};
use crate::api::{
    ConntrackRow, CountersReport, FdbRow, NeighRow, NodeReport, PeerRow, PeersReport, PodRow, PodsReport, PolicyChain,
    Query, RouteRow, ServiceRow, Show,
};

/// `ucanal show WHAT [--json] [--all]`: one request. The big listings (conntrack,
/// services) are printed as their rows arrive, never held whole (see [`stream_json`]);
/// the others are returned as text.
pub fn show(target: &Target, what: Show, json: bool, all: bool) -> Result<String, CliError> {
    let mut c = target.client(Some(ANSWER_WAIT))?;
    let q = Query::Show { what };
    let text = match what {
        Show::Conntrack if json => {
            let n = stream_json(|each| c.query_rows::<ConntrackRow>(q, each))?;
            eprintln!("conntrack v1.4 (ucanal): {n} flow entries have been shown.");
            return Ok(String::new());
        }
        Show::Conntrack => {
            let mut out = Out::new();
            let n = c.query_rows::<ConntrackRow>(q, |r| out.line(&r.line))?;
            out.finish()?;
            eprintln!("conntrack v1.4 (ucanal): {n} flow entries have been shown.");
            return Ok(String::new());
        }
        Show::Services if json => {
            stream_json(|each| c.query_rows::<ServiceRow>(q, each))?;
            return Ok(String::new());
        }
        Show::Services => {
            let mut rows = Vec::new();
            c.query_rows::<ServiceRow>(q, |r| rows.push(r))?;
            services_text(&rows)
        }
        Show::Routes => render(c.query::<Vec<RouteRow>>(q)?, json, |r| routes_text(r))?,
        Show::Neigh => render(c.query::<Vec<NeighRow>>(q)?, json, |r| neigh_text(r))?,
        Show::Fdb => render(c.query::<Vec<FdbRow>>(q)?, json, |r| fdb_text(r))?,
        Show::Pods => {
            let p: PodsReport = c.query(q)?;
            render(p.pods, json, |r| pods_text(r, &p.node))?
        }
        Show::Counters => render(c.query::<CountersReport>(q)?, json, |r| counters_text(r, all))?,
        Show::Node => json_text(&c.query::<NodeReport>(q)?)?,
        Show::Peers => render(c.query::<PeersReport>(q)?, json, |r| peers_text(&r.peers))?,
        Show::Policy => return show_policy(target, json, None),
    };
    Ok(text.trim_end_matches('\n').to_string())
}

/// `ucanal pid`: the daemon's process id (as it reports it: after a hand-over that is
/// the successor's, whatever process bound the socket).
pub fn pid(target: &Target) -> Result<String, CliError> {
    let r: NodeReport = target.client(Some(ANSWER_WAIT))?.query(Query::Show { what: Show::Node })?;
    Ok(r.pid.to_string())
}

/// Standard output, buffered, keeping the first write error (a closed pipe ends the
/// process with SIGPIPE before that: see `main`).
struct Out {
    w: std::io::BufWriter<std::io::StdoutLock<'static>>,
    err: Option<std::io::Error>,
}

impl Out {
    fn new() -> Out {
        Out { w: std::io::BufWriter::with_capacity(64 << 10, std::io::stdout().lock()), err: None }
    }

    fn write(&mut self, s: &str) {
        if self.err.is_none()
            && let Err(e) = std::io::Write::write_all(&mut self.w, s.as_bytes())
        {
            self.err = Some(e);
        }
    }

    fn line(&mut self, s: &str) {
        self.write(s);
        self.write("\n");
    }

    fn finish(mut self) -> Result<(), CliError> {
        if let Some(e) = self.err.take() {
            return Err(CliError::File { what: "standard output".into(), source: e });
        }
        std::io::Write::flush(&mut self.w).map_err(|e| CliError::File { what: "standard output".into(), source: e })
    }
}

/// Prints the rows `read` hands over as one pretty JSON array (each row's keys sorted),
/// the same text [`json_text`] makes of the whole list, a row at a time; returns how
/// many rows there were.
fn stream_json<T: Serialize>(
    read: impl FnOnce(&mut dyn FnMut(T)) -> Result<usize, crate::api::codec::ClientError>,
) -> Result<usize, CliError> {
    let mut out = Out::new();
    let mut first = true;
    let mut bad = None;
    let n = read(&mut |row: T| {
        let pretty = serde_json::to_value(&row).and_then(|v| serde_json::to_string_pretty(&v));
        match pretty {
            Ok(p) => {
                out.write(if first { "[\n" } else { ",\n" });
                first = false;
                for (i, l) in p.lines().enumerate() {
                    if i > 0 {
                        out.write("\n");
                    }
                    out.write("  ");
                    out.write(l);
                }
            }
            Err(e) => bad = Some(e),
        }
    })?;
    if let Some(e) = bad {
        return Err(CliError::Json(e));
    }
    out.line(if first { "[]" } else { "\n]" });
    out.finish()?;
    Ok(n)
}

/// `ucanal show policy [--pod NS/NAME] [--json]`: the local pods' chains, as
/// `iptables -vnL` lists Felix's `cali-tw-*` / `cali-fw-*`.
pub fn show_policy(target: &Target, json: bool, pod: Option<&str>) -> Result<String, CliError> {
    let mut c = target.client(Some(ANSWER_WAIT))?;
    let mut chains: Vec<PolicyChain> = c.query(Query::Show { what: Show::Policy })?;
    if let Some(p) = pod {
        let (ns, name) = p.split_once('/').unwrap_or(("default", p));
        chains.retain(|c| c.namespace == ns && c.name == name);
        if chains.is_empty() {
            return Err(CliError::Usage(format!("show policy: no pod {ns}/{name} on this node")));
        }
    }
    let text = render(chains, json, |c| super::policy::chains_text(c))?;
    Ok(text.trim_end_matches('\n').to_string())
}

/// The rows as JSON, or as text.
fn render<T: Serialize>(rows: T, json: bool, text: impl FnOnce(&T) -> String) -> Result<String, CliError> {
    if json { json_text(&rows) } else { Ok(text(&rows)) }
}

/// Pretty JSON with the keys of every object sorted, as the listings have always
/// printed (a `serde_json::Value` sorts them).
pub fn json_text<T: Serialize>(v: &T) -> Result<String, CliError> {
    let v = serde_json::to_value(v).map_err(CliError::Json)?;
    serde_json::to_string_pretty(&v).map_err(CliError::Json)
}

pub fn routes_text(rows: &[RouteRow]) -> String {
    let mut s = String::new();
    for r in rows {
        if r.kind == "local" {
            s.push_str("local ");
        }
        s.push_str(&r.dst);
        if let Some(g) = r.gateway {
            let _ = write!(s, " via {g}");
        }
        let _ = write!(s, " dev {}", r.dev);
        if let Some(sc) = &r.scope {
            let _ = write!(s, " scope {sc}");
        }
        for f in &r.flags {
            let _ = write!(s, " {f}");
        }
        s.push('\n');
    }
    s
}

pub fn neigh_text(rows: &[NeighRow]) -> String {
    rows.iter().map(|r| format!("{} dev {} lladdr {} {}\n", r.ip, r.dev, r.lladdr, r.state)).collect()
}

pub fn fdb_text(rows: &[FdbRow]) -> String {
    rows.iter().map(|r| format!("{} dev {} dst {} {} {}\n", r.mac, r.dev, r.dst, r.flags.join(" "), r.state)).collect()
}

/// A table whose text columns are as wide as their widest cell (a CNI runtime's netns
/// path is 50 characters, a lab's namespace 15), as `ip -br` or `docker ps` align.
pub fn pods_text(rows: &[PodRow], node: &str) -> String {
    let head = ["NAME", "IP", "MAC", "PORT", "NETNS", "NODE"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| [r.name.clone(), r.ip.to_string(), r.mac.clone(), r.port.clone(), r.netns.clone(), node.to_string()])
        .collect();
    let mut w = head.map(str::len);
    for c in &cells {
        for (w, c) in w.iter_mut().zip(c) {
            *w = (*w).max(c.len());
        }
    }
    let line = |c: [&str; 6], rx: &dyn std::fmt::Display, tx: &dyn std::fmt::Display| {
        let mut l = String::new();
        for (c, w) in c.iter().zip(w) {
            let _ = write!(l, "{c:<w$} ");
        }
        format!("{l}{rx:>10} {tx:>10}\n")
    };
    let mut s = line(head, &"RX-PKTS", &"TX-PKTS");
    for (r, c) in rows.iter().zip(&cells) {
        s += &line(c.each_ref().map(String::as_str), &r.counts.rx_packets, &r.counts.tx_packets);
    }
    s
}

/// iptables' human byte counts: 142K, 3695K, 12M.
fn human(n: u64) -> String {
    match n {
        0..=99_999 => n.to_string(),
        100_000..=99_999_999 => format!("{}K", n / 1000),
        _ => format!("{}M", n / 1_000_000),
    }
}

/// `iptables -vnL -t nat` style: the service portals, then each service's endpoints.
/// As iptables counts, a flow to the cluster IP counts on its KUBE-SERVICES line, one
/// through the NodePort on its KUBE-NODEPORTS line, and either on the service's chain.
pub fn services_text(rows: &[ServiceRow]) -> String {
    let mut s = String::from("Chain KUBE-SERVICES (ucanal service table)\n");
    let _ = writeln!(s, "{:>5} {:>5} {:<28} {:<4} {:<20} ", "pkts", "bytes", "target", "prot", "destination");
    for r in rows {
        let _ = writeln!(
            s,
            "{:>5} {:>5} {:<28} {:<4} {:<20} /* {}: cluster IP */ {} dpt:{}",
            r.packets.saturating_sub(r.node_port_packets),
            human(r.bytes.saturating_sub(r.node_port_bytes)),
            format!("SVC {}", r.name),
            r.protocol,
            r.cluster_ip,
            r.name,
            r.protocol,
            r.port
        );
    }
    let nodeports: Vec<_> = rows.iter().filter(|r| r.node_port.is_some()).collect();
    if !nodeports.is_empty() {
        s.push_str("\nChain KUBE-NODEPORTS\n");
        let _ = writeln!(s, "{:>5} {:>5} {:<28} {:<4} ", "pkts", "bytes", "target", "prot");
        for r in nodeports {
            let _ = writeln!(
                s,
                "{:>5} {:>5} {:<28} {:<4} /* {}: */ {} dpt:{}",
                r.node_port_packets,
                human(r.node_port_bytes),
                format!("SVC {}", r.name),
                r.protocol,
                r.name,
                r.protocol,
                r.node_port.unwrap_or(0)
            );
        }
    }
    for r in rows {
        let _ = writeln!(s, "\nChain SVC {} ({} endpoints)", r.name, r.endpoints.len());
        let _ = writeln!(s, "{:>5} {:>5} {:<28} ", "pkts", "bytes", "target");
        if r.endpoints.is_empty() {
            let _ = writeln!(
                s,
                "{:>5} {:>5} {:<28} /* {} has no endpoints */ reject-with icmp-port-unreachable",
                "-", "-", "REJECT", r.name
            );
        }
        let n = r.endpoints.len();
        for e in &r.endpoints {
            let _ = writeln!(
                s,
                "{:>5} {:>5} {:<28} /* {}: */ flow hash 1/{n} ({:.5}) DNAT to:{}",
                e.packets,
                human(e.bytes),
                format!("SEP {}", e.endpoint),
                r.name,
                1.0 / n as f64,
                e.endpoint
            );
        }
    }
    s
}

pub fn counters_text(c: &CountersReport, all: bool) -> String {
    let mut s = String::new();
    for (title, m) in [("decisions", &c.decisions), ("drops", &c.drops)] {
        let _ = writeln!(s, "{title}:");
        for (k, n) in m {
            if all || *n > 0 {
                let _ = writeln!(s, "  {k:<28} {n}");
            }
        }
    }
    s
}

pub fn peers_text(rows: &[PeerRow]) -> String {
    let mut s = format!(
        "{:<18} {:<15} {:<17} {:<6} {:>8} {:>9}  {}\n",
        "SUBNET", "PUBLIC-IP", "VTEP-MAC", "SOURCE", "AGE", "EXPIRES", "LEASE"
    );
    for r in rows {
        let exp = r.expires_secs.map(|e| format!("{e}s")).unwrap_or_else(|| "-".into());
        s += &format!(
            "{:<18} {:<15} {:<17} {:<6} {:>7}s {:>9}  {}\n",
            r.subnet.to_string(),
            r.public_ip.to_string(),
            r.vtep_mac,
            r.source,
            r.age_secs,
            exp,
            r.lease
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::inspect::listings::{fdb, neigh, routes, services};
    use crate::core::tables::article;

    #[test]
    fn listings_read_like_the_kernel_tools() {
        let t = article::tables1(vec![article::ghost()]);
        let r = routes_text(&routes(&t, "ucanal0"));
        assert!(r.contains("10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink\n"), "{r}");
        assert!(r.contains("10.244.1.5 dev calif0e9df43659 scope link\n"), "{r}");
        assert!(r.starts_with("default dev ucanal0 scope link\n"));
        let n = neigh_text(&neigh(&t));
        assert!(n.starts_with("10.244.0.0 dev flannel.1 lladdr 32:a9:79:6d:0b:b1 PERMANENT\n"), "{n}");
        let f = fdb_text(&fdb(&t));
        assert_eq!(f, "32:a9:79:6d:0b:b1 dev flannel.1 dst 172.16.240.132 self permanent\n");
        let s = services_text(&services(&t));
        assert!(s.contains("/* default/ghost: cluster IP */ tcp dpt:2368"), "{s}");
        assert!(s.contains("tcp dpt:31266"), "{s}");
        assert!(s.contains("DNAT to:10.244.0.74:2368"), "{s}");
        // JSON round-trips.
        let j = serde_json::to_value(routes(&t, "ucanal0")).unwrap();
        let back: Vec<RouteRow> = serde_json::from_value(j).unwrap();
        assert_eq!(back.len(), 6);
    }

    #[test]
    fn node_port_flows_count_on_kube_nodeports_as_iptables_does() {
        let t = article::tables1(vec![article::ghost()]);
        let mut rows = services(&t);
        // Two requests through the NodePort, one to the cluster IP (60-byte SYNs).
        (rows[0].packets, rows[0].bytes, rows[0].node_port_packets, rows[0].node_port_bytes) = (3, 180, 2, 120);
        let s = services_text(&rows);
        let line = |needle: &str| s.lines().find(|l| l.contains(needle)).unwrap_or_default().to_string();
        let cip = line("cluster IP */");
        let np = line("tcp dpt:31266");
        assert!(cip.trim_start().starts_with("1    60 "), "{s}");
        assert!(np.trim_start().starts_with("2   120 "), "{s}");
    }

    #[test]
    fn pods_stay_aligned_with_long_netns_paths() {
        let row = |name: &str, netns: &str| PodRow {
            name: name.into(),
            ip: "10.244.1.9".parse().unwrap(),
            mac: "0a:58:0a:f4:01:09".into(),
            netns: netns.into(),
            port: "cali0123456789a".into(),
            port_index: 3,
            counts: Default::default(),
        };
        let rows = [
            row("ghost-ep1", "uc-ghost-ep1"),
            row("default/web1", "/run/netns/netns-5b6a0a56-8f8a-4a53-9d1e-d4c4b5f0a8f2"),
        ];
        let t = pods_text(&rows, "centos7-1");
        let col = |l: &str| l.find("centos7-1").or_else(|| l.find("NODE"));
        let cols: Vec<_> = t.lines().map(col).collect();
        assert!(cols.iter().all(|c| c.is_some() && *c == cols[0]), "NODE column moves:\n{t}");
        let ends: Vec<_> = t.lines().map(str::len).collect();
        assert!(ends.iter().all(|e| *e == ends[0]), "counters do not line up:\n{t}");
    }

    #[test]
    fn iptables_style_numbers() {
        assert_eq!(human(240), "240");
        assert_eq!(human(142_000), "142K");
        assert_eq!(human(3_695_000), "3695K");
        assert_eq!(human(120_000_000), "120M");
    }

    #[test]
    fn counters_list_what_moved_unless_all() {
        let mut c = CountersReport::default();
        c.decisions.insert("decap".into(), 3);
        c.decisions.insert("encap".into(), 0);
        c.drops.insert("no_fdb".into(), 1);
        assert_eq!(
            counters_text(&c, false),
            "decisions:\n  decap                        3\ndrops:\n  no_fdb                       1\n"
        );
        assert!(counters_text(&c, true).contains("  encap                        0\n"));
    }
}
