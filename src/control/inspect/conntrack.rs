//! `conntrack -L`: the connection table as the kernel tool lists it, as the rows of
//! `show conntrack`.

use crate::api::{ConntrackRow, TupleRow};
use crate::core::Now;
use crate::core::nat::conntrack::{self, Entry};
use crate::core::nat::proto_name;

fn tuple_row(t: &crate::core::nat::Tuple) -> TupleRow {
    TupleRow { src: t.src, dst: t.dst, sport: t.sport, dport: t.dport }
}

pub fn conntrack(entries: &[std::sync::Arc<Entry>], now: Now) -> Vec<ConntrackRow> {
    entries
        .iter()
        .map(|e| ConntrackRow {
            proto: proto_name(e.original.proto).into(),
            protonum: e.original.proto,
            timeout: e.remaining(now),
            state: e.state_name().map(str::to_string),
            original: tuple_row(&e.original),
            reply: tuple_row(&e.reply),
            unreplied: !e.seen_reply(),
            assured: e.assured(),
            dnat: e.nat & conntrack::NAT_DNAT != 0,
            snat: e.nat & conntrack::NAT_SNAT != 0,
            line: conntrack_line(e, now),
        })
        .collect()
}

/// One line of `conntrack -L`, with the fields ucanal has:
/// `tcp      6 86397 ESTABLISHED src=.. dst=.. sport=.. dport=.. src=.. dst=.. sport=.. dport=.. [ASSURED]`.
/// The kernel's trailing `mark=` and `use=` are left out: ucanal keeps no mark, and its
/// reference count says nothing a reader could act on.
pub fn conntrack_line(e: &Entry, now: Now) -> String {
    let p = e.original.proto;
    let mut s = format!("{:<8} {} {} ", proto_name(p), p, e.remaining(now));
    if let Some(st) = e.state_name() {
        s.push_str(st);
        s.push(' ');
    }
    s.push_str(&e.original.to_string());
    if !e.seen_reply() {
        s.push_str(" [UNREPLIED]");
    }
    s.push(' ');
    s.push_str(&e.reply.to_string());
    if e.assured() {
        s.push_str(" [ASSURED]");
    }
    s
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// The article's NodePort flow 172.16.240.1:40000 -> 172.16.240.131:31266, DNATed to
    /// 10.244.0.74:2368 and masqueraded to 10.244.1.0, as `conntrack -L` lists it.
    #[test]
    fn conntrack_lines_read_like_conntrack_l() {
        use crate::core::nat::Tuple;
        use crate::core::nat::conntrack::{Conntrack, Insert, NAT_DNAT, NAT_SNAT, NewFlow, PortChoice, Timeouts};
        use crate::wire::ipv4::PROTO_TCP;
        use crate::wire::tcp::{ACK, SYN};
        let ct = Conntrack::new(16, Timeouts::default());
        let now = Now::from_secs(100);
        let client = Tuple {
            proto: PROTO_TCP,
            src: Ipv4Addr::new(172, 16, 240, 1),
            dst: Ipv4Addr::new(172, 16, 240, 131),
            sport: 40000,
            dport: 31266,
        };
        let flow = NewFlow {
            original: client,
            tcp_flags: SYN,
            reply_src: (Ipv4Addr::new(10, 244, 0, 74), 2368),
            reply_dst: Ipv4Addr::new(10, 244, 1, 0),
            nat: NAT_DNAT | NAT_SNAT,
            ports: PortChoice { keep: 40000, lo: 1024, hi: 65535 },
        };
        let Insert::New { entry: e, .. } = ct.insert(flow, now) else { panic!("not inserted") };
        assert_eq!(
            conntrack_line(&e, now),
            "tcp      6 120 SYN_SENT src=172.16.240.1 dst=172.16.240.131 sport=40000 dport=31266 [UNREPLIED] \
             src=10.244.0.74 dst=10.244.1.0 sport=2368 dport=40000"
        );
        ct.track(&e.reply, SYN | ACK, now, true).unwrap();
        ct.track(&client, ACK, now, true).unwrap();
        let rows = conntrack(&[e], now);
        assert_eq!(
            rows[0].line,
            "tcp      6 86400 ESTABLISHED src=172.16.240.1 dst=172.16.240.131 sport=40000 dport=31266 \
             src=10.244.0.74 dst=10.244.1.0 sport=2368 dport=40000 [ASSURED]"
        );
        assert!(rows[0].dnat && rows[0].snat && rows[0].assured && !rows[0].unreplied);
    }
}
