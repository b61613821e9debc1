//! Observation hooks on the worker path: live traces and packet capture.
//!
//! A subscription (from `ucanal trace --live` or `ucanal capture`) registers here; the
//! workers check one relaxed atomic per batch and, only while something observes,
//! match each frame against the subscriptions' filters. A matched frame is traced by
//! the core decision by decision, or copied for the capture. Events leave through a
//! bounded channel with `try_send`: a slow reader loses events, a worker never waits.

use std::net::SocketAddrV4;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::filter::Filter;
use crate::core::tables::Tables;
use crate::core::trace::{Step, Trace};
use crate::core::{Action, PortId, gso};
use crate::wire::ipv4::{Ipv4Repr, PROTO_UDP};
use crate::wire::{ethernet, vxlan};

/// Where a frame was seen.
#[derive(Debug, Clone, Copy)]
pub enum Where {
    Port(PortId),
    /// From/to a peer VTEP; `local_port` is ucanal's UDP port on this side.
    Vxlan {
        peer: SocketAddrV4,
        local_port: u16,
        inbound: bool,
    },
}

/// Which port a capture listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSel {
    Host,
    Vxlan,
    Pod(String),
}

impl PortSel {
    pub fn parse(s: &str) -> PortSel {
        match s {
            "host" => PortSel::Host,
            "vxlan" | "flannel.1" => PortSel::Vxlan,
            p => PortSel::Pod(p.to_string()),
        }
    }
    fn matches(&self, t: &Tables, w: &Where) -> bool {
        match (self, w) {
            (PortSel::Vxlan, Where::Vxlan { .. }) => true,
            (PortSel::Host, Where::Port(p)) => p.is_host(),
            (PortSel::Pod(name), Where::Port(p)) => {
                t.pod(*p).is_some_and(|pod| &pod.name == name || &pod.ifname == name)
            }
            _ => false,
        }
    }
}

/// One traced packet.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TraceEvent {
    pub node: String,
    /// Unix time, seconds.
    pub time: f64,
    pub steps: Vec<Step>,
    pub result: crate::core::trace::Outcome,
}

/// One captured frame (Ethernet, as it crossed the port).
#[derive(Debug, Clone)]
pub struct Frame {
    pub sec: u32,
    pub usec: u32,
    pub data: Vec<u8>,
}

pub enum Event {
    Trace(TraceEvent),
    Frame(Frame),
}

enum Kind {
    Trace,
    Capture(PortSel),
}

struct Sub {
    id: u64,
    kind: Kind,
    filter: Filter,
    remaining: usize,
    tx: mpsc::Sender<Event>,
}

pub struct Observers {
    pub node: String,
    active: AtomicBool,
    subs: Mutex<Vec<Sub>>,
    next_id: AtomicU64,
}

/// What `before` found, handed back to `after`.
#[derive(Default)]
pub struct Observation {
    pub trace: Trace,
    trace_subs: Vec<u64>,
}

fn now() -> (u32, u32, f64) {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as u32, d.subsec_micros(), d.as_secs_f64())
}

/// The inner Ethernet frame of what a port carries (skipping a VXLAN header).
fn inner<'a>(w: &Where, data: &'a [u8]) -> &'a [u8] {
    match w {
        Where::Vxlan { .. } => data.get(vxlan::HEADER_LEN..).unwrap_or(&[]),
        Where::Port(_) => data,
    }
}

/// Rebuilds the outer Ethernet/IPv4/UDP headers of a VXLAN datagram ucanal sent or
/// received (the socket only sees the UDP payload). MACs are not known to ucanal.
fn with_outer(t: &Tables, w: &Where, dgram: &[u8]) -> Vec<u8> {
    let Where::Vxlan { peer, local_port, inbound } = *w else { return dgram.to_vec() };
    let (src, dst, sport, dport) = if inbound {
        (*peer.ip(), t.node.node_ip, peer.port(), t.node.vxlan_port)
    } else {
        (t.node.node_ip, *peer.ip(), local_port, t.node.vxlan_port)
    };
    let udp_len = 8 + dgram.len();
    let mut out = vec![0u8; ethernet::HEADER_LEN + 20 + udp_len];
    ethernet::emit_header(&mut out, crate::wire::MacAddr::ZERO, crate::wire::MacAddr::ZERO, ethernet::ETHERTYPE_IPV4);
    Ipv4Repr { src, dst, protocol: PROTO_UDP, ttl: 64, tos: 0, ident: 0, dont_fragment: false, payload_len: udp_len }
        .emit(&mut out[14..34]);
    out[34..36].copy_from_slice(&sport.to_be_bytes());
    out[36..38].copy_from_slice(&dport.to_be_bytes());
    out[38..40].copy_from_slice(&(udp_len as u16).to_be_bytes());
    out[42..].copy_from_slice(dgram);
    out
}

impl Observers {
    pub fn new(node: String) -> Self {
        Observers { node, active: AtomicBool::new(false), subs: Mutex::new(Vec::new()), next_id: AtomicU64::new(1) }
    }

    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Relaxed)
    }

    fn add(&self, kind: Kind, filter: Filter, count: usize) -> (u64, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(4096);
        let id = self.next_id.fetch_add(1, Relaxed);
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.push(Sub { id, kind, filter, remaining: count.max(1), tx });
        self.active.store(true, Relaxed);
        (id, rx)
    }

    pub fn trace(&self, filter: Filter, count: usize) -> (u64, mpsc::Receiver<Event>) {
        self.add(Kind::Trace, filter, count)
    }

    pub fn capture(&self, port: PortSel, filter: Filter, count: usize) -> (u64, mpsc::Receiver<Event>) {
        self.add(Kind::Capture(port), filter, count)
    }

    pub fn remove(&self, id: u64) {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|s| s.id != id);
        self.active.store(!subs.is_empty(), Relaxed);
    }

    /// Sends `e` to `s`, counts it, and says whether the subscription is spent.
    fn deliver(s: &mut Sub, e: Event) -> bool {
        if s.tx.try_send(e).is_ok() {
            s.remaining = s.remaining.saturating_sub(1);
        }
        s.remaining == 0 || s.tx.is_closed()
    }

    fn prune(&self, subs: &mut Vec<Sub>, done: &[u64]) {
        if !done.is_empty() {
            subs.retain(|s| !done.contains(&s.id));
            self.active.store(!subs.is_empty(), Relaxed);
        }
    }

    /// Called with each frame as it arrives (`data` as received: an Ethernet frame, or
    /// a VXLAN datagram). Captures it where asked, and says whether to trace it.
    pub fn before(&self, t: &Tables, w: Where, data: &[u8]) -> Observation {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        let frame = inner(&w, data);
        let mut obs = Observation::default();
        let mut done = Vec::new();
        for s in subs.iter_mut() {
            if !s.filter.matches(frame) {
                continue;
            }
            match &s.kind {
                Kind::Trace => obs.trace_subs.push(s.id),
                Kind::Capture(sel) if sel.matches(t, &w) => {
                    let (sec, usec, _) = now();
                    if Self::deliver(s, Event::Frame(Frame { sec, usec, data: with_outer(t, &w, data) })) {
                        done.push(s.id);
                    }
                }
                Kind::Capture(_) => {}
            }
        }
        self.prune(&mut subs, &done);
        if !obs.trace_subs.is_empty() {
            obs.trace = Trace::on();
        }
        obs
    }

    /// Called with the decision and the packet as it leaves.
    pub fn after(&self, t: &Tables, obs: Observation, a: &Action, data: &[u8], gso_size: u16, src_port: u16) {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        let mut done = Vec::new();
        if !obs.trace_subs.is_empty() {
            let (_, _, time) = now();
            let ev = TraceEvent {
                node: self.node.clone(),
                time,
                steps: obs.trace.steps,
                result: crate::core::trace::outcome(t, a),
            };
            for s in subs.iter_mut().filter(|s| obs.trace_subs.contains(&s.id)) {
                if Self::deliver(s, Event::Trace(ev.clone())) {
                    done.push(s.id);
                }
            }
        }
        let w = match *a {
            Action::ToPort(p) => Some(Where::Port(p)),
            Action::ToVtep { remote, .. } => Some(Where::Vxlan {
                peer: SocketAddrV4::new(remote, t.node.vxlan_port),
                local_port: src_port,
                inbound: false,
            }),
            Action::Drop(_) | Action::Held => None,
        };
        if let Some(w) = w {
            // A super-packet leaves as MSS-sized datagrams; capture what the wire carries.
            let segs: Vec<Vec<u8>> = match (w, gso_size) {
                (Where::Vxlan { .. }, g) if g > 0 => {
                    let mut buf = vec![0u8; gso::MAX_SEGMENTED];
                    match gso::segment_vxlan(data, g, &mut buf) {
                        Ok(s) => buf[..s.len].chunks(s.datagram_len).map(<[u8]>::to_vec).collect(),
                        Err(_) => vec![data.to_vec()],
                    }
                }
                _ => vec![data.to_vec()],
            };
            for s in subs.iter_mut() {
                let Kind::Capture(sel) = &s.kind else { continue };
                if !sel.matches(t, &w) {
                    continue;
                }
                for seg in &segs {
                    if done.contains(&s.id) || !s.filter.matches(inner(&w, seg)) {
                        continue;
                    }
                    let (sec, usec, _) = now();
                    if Self::deliver(s, Event::Frame(Frame { sec, usec, data: with_outer(t, &w, seg) })) {
                        done.push(s.id);
                    }
                }
            }
        }
        self.prune(&mut subs, &done);
    }
}

/// Writes a classic pcap stream (LINKTYPE_ETHERNET), as tcpdump -w does.
pub fn pcap_header() -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    h[16..20].copy_from_slice(&262_144u32.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h
}

pub fn pcap_record(f: &Frame) -> Vec<u8> {
    let mut r = Vec::with_capacity(16 + f.data.len());
    r.extend_from_slice(&f.sec.to_le_bytes());
    r.extend_from_slice(&f.usec.to_le_bytes());
    r.extend_from_slice(&(f.data.len() as u32).to_le_bytes());
    r.extend_from_slice(&(f.data.len() as u32).to_le_bytes());
    r.extend_from_slice(&f.data);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tables::article;
    use etherparse::PacketBuilder;
    use std::net::Ipv4Addr;

    fn ping() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(article::EP1_MAC.0, [0xee; 6])
            .ipv4([10, 244, 1, 5], [10, 244, 0, 74], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut v, b"hi")
            .unwrap();
        v
    }

    #[test]
    fn trace_and_capture_subscriptions() {
        let t = article::tables1(vec![]);
        let o = Observers::new("centos7-1".into());
        assert!(!o.active());
        let (_, mut tr) = o.trace(Filter::parse("icmp").unwrap(), 1);
        let (_, mut cap) = o.capture(PortSel::Pod("ghost-ep1".into()), Filter::parse("").unwrap(), 2);
        assert!(o.active());
        let f = ping();
        let obs = o.before(&t, Where::Port(PortId(1)), &f);
        assert!(obs.trace.enabled);
        let mut out = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        out.extend_from_slice(&f);
        o.after(&t, obs, &Action::ToVtep { remote: Ipv4Addr::new(172, 16, 240, 132), flow_hash: 1 }, &out, 0, 40000);
        let Ok(Event::Trace(ev)) = tr.try_recv() else { panic!("no trace event") };
        assert_eq!(ev.node, "centos7-1");
        assert!(ev.result.to_string().contains("VXLAN to 172.16.240.132"), "{}", ev.result);
        // The trace subscription is spent after one packet; the capture got the ingress frame.
        let Ok(Event::Frame(fr)) = cap.try_recv() else { panic!("no frame") };
        assert_eq!(fr.data, f);
        assert!(tr.try_recv().is_err());
        // A vxlan capture gets outer headers rebuilt.
        let (_, mut vx) = o.capture(PortSel::Vxlan, Filter::parse("icmp").unwrap(), 1);
        let obs = o.before(&t, Where::Port(PortId(1)), &f);
        o.after(&t, obs, &Action::ToVtep { remote: Ipv4Addr::new(172, 16, 240, 132), flow_hash: 1 }, &out, 0, 40000);
        let Ok(Event::Frame(fr)) = vx.try_recv() else { panic!("no vxlan frame") };
        let p = etherparse::SlicedPacket::from_ethernet(&fr.data).unwrap();
        let Some(etherparse::TransportSlice::Udp(u)) = p.transport else { panic!("not udp") };
        assert_eq!((u.source_port(), u.destination_port()), (40000, 8472));
        assert_eq!(&u.payload()[..8], &out[..8]);
        assert!(!o.active(), "every subscription is spent");
    }

    #[test]
    fn pcap_layout() {
        assert_eq!(&pcap_header()[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        let r = pcap_record(&Frame { sec: 1, usec: 2, data: vec![9; 5] });
        assert_eq!(r.len(), 21);
        assert_eq!(&r[8..12], &5u32.to_le_bytes());
    }
}
