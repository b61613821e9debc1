//! The conntrack checkpoint: every live flow with its NAT, TCP state, flags and time
//! left, in a compact binary form, so that the next ucanal continues each flow with
//! the same reply tuple (the same endpoint and masquerade port) after a restart.
//!
//! ```text
//! "UCCT" version(1)=1 pad(3) written_at(u64 BE, Unix seconds) count(u32 BE)
//! count x record (32 bytes):
//!   original: proto src(4) dst(4) sport(2) dport(2)   13
//!   reply:    src(4) dst(4) sport(2) dport(2)         12 (same proto)
//!   nat(1) state(1) flags(1) remaining(u32 BE)          7
//! ```
//! Decoding checks everything (a file cut short, a count that does not match, an
//! unknown version) and names the fault; it never panics on any input.

use std::net::Ipv4Addr;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering::Relaxed};

use super::Tuple;
use super::conntrack::{ASSURED, Conntrack, Entry, SEEN_REPLY, TcpState};
use crate::core::Now;

const MAGIC: &[u8; 4] = b"UCCT";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 20;
const RECORD_LEN: usize = 32;

/// One flow as saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    pub original: Tuple,
    pub reply: Tuple,
    pub nat: u8,
    pub state: u8,
    pub flags: u8,
    /// Seconds left before expiry when saved.
    pub remaining: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("conntrack checkpoint: shorter than its {HEADER_LEN}-byte header")]
    Short,
    #[error("conntrack checkpoint: bad magic (not a ucanal checkpoint)")]
    Magic,
    #[error("conntrack checkpoint: version {0}, this ucanal reads version {VERSION}")]
    Version(u8),
    #[error("conntrack checkpoint: header says {count} flows, the file holds {bytes} bytes of records")]
    Length { count: u32, bytes: usize },
}

/// Encodes `flows`, written at Unix time `written_at`.
pub fn encode(flows: &[Saved], written_at: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + RECORD_LEN * flows.len());
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&[VERSION, 0, 0, 0]);
    v.extend_from_slice(&written_at.to_be_bytes());
    v.extend_from_slice(&(flows.len() as u32).to_be_bytes());
    for f in flows {
        v.push(f.original.proto);
        for t in [&f.original, &f.reply] {
            v.extend_from_slice(&t.src.octets());
            v.extend_from_slice(&t.dst.octets());
            v.extend_from_slice(&t.sport.to_be_bytes());
            v.extend_from_slice(&t.dport.to_be_bytes());
        }
        v.extend_from_slice(&[f.nat, f.state, f.flags]);
        v.extend_from_slice(&f.remaining.to_be_bytes());
    }
    v
}

fn tuple(proto: u8, b: &[u8]) -> Tuple {
    let ip = |i: usize| Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]);
    let port = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    Tuple { proto, src: ip(0), dst: ip(4), sport: port(8), dport: port(10) }
}

/// Decodes a checkpoint: the flows and the Unix time it was written at.
pub fn decode(b: &[u8]) -> Result<(Vec<Saved>, u64), CheckpointError> {
    if b.len() < HEADER_LEN {
        return Err(CheckpointError::Short);
    }
    if &b[..4] != MAGIC {
        return Err(CheckpointError::Magic);
    }
    if b[4] != VERSION {
        return Err(CheckpointError::Version(b[4]));
    }
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[8..16]);
    let written_at = u64::from_be_bytes(w);
    let count = u32::from_be_bytes([b[16], b[17], b[18], b[19]]);
    let body = &b[HEADER_LEN..];
    if !body.len().is_multiple_of(RECORD_LEN) || body.len() / RECORD_LEN != count as usize {
        return Err(CheckpointError::Length { count, bytes: body.len() });
    }
    let flows = body
        .chunks_exact(RECORD_LEN)
        .map(|r| {
            let proto = r[0];
            Saved {
                original: tuple(proto, &r[1..13]),
                reply: tuple(proto, &r[13..25]),
                nat: r[25],
                state: r[26],
                flags: r[27],
                remaining: u32::from_be_bytes([r[28], r[29], r[30], r[31]]),
            }
        })
        .collect();
    Ok((flows, written_at))
}

impl Conntrack {
    /// Every live flow, for a checkpoint (see [`checkpoint`](super::checkpoint)).
    pub fn snapshot(&self, now: Now) -> Vec<Saved> {
        self.entries(now)
            .iter()
            .map(|e| Saved {
                original: e.original,
                reply: e.reply,
                nat: e.nat,
                state: e.state.load(Relaxed),
                flags: e.flags.load(Relaxed),
                remaining: e.remaining(now),
            })
            .collect()
    }

    /// Puts a saved flow back with its own reply tuple. False when it has no time
    /// left, the table is full, or either tuple is already taken by a live flow.
    pub fn restore(&self, f: &Saved, now: Now) -> bool {
        if f.remaining == 0 || f.original.proto != f.reply.proto {
            return false;
        }
        let taken = |k: u128| self.map.get(&k).is_some_and(|e| e.is_live(now));
        if taken(f.original.key()) || taken(f.reply.key()) || !self.reserve() {
            return false;
        }
        let entry = Arc::new(Entry {
            original: f.original,
            reply: f.reply,
            nat: f.nat,
            state: AtomicU8::new(TcpState::from_u8(f.state) as u8),
            flags: AtomicU8::new(f.flags & (SEEN_REPLY | ASSURED)),
            deadline: AtomicU32::new(now.secs().saturating_add(f.remaining)),
            born: now.0,
            // Generation 0: the next policy re-check looks at it.
            policy_gen: AtomicU32::new(0),
        });
        let answered = entry.seen_reply() && !entry.assured();
        for (key, e) in [(f.reply.key(), entry.clone()), (f.original.key(), entry)] {
            self.filter.add(key);
            if let Some(old) = self.map.insert(key, e) {
                // A replaced key was counted already.
                self.filter.sub(key);
                self.forget_replaced(&old, key);
            }
        }
        // The slot was reserved above.
        self.candidates.push(f.original.key(), now.0, |_| true);
        if answered {
            self.candidates.answered(f.original.key(), now.0, |_| true);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Now;
    use crate::core::nat::conntrack::{Conntrack, Insert, NAT_DNAT, NAT_SNAT, NewFlow, PortChoice, TcpState, Timeouts};
    use crate::wire::ipv4::{PROTO_TCP, PROTO_UDP};
    use crate::wire::l4::{TCP_ACK, TCP_SYN};

    fn nodeport(sport: u16) -> Tuple {
        Tuple {
            proto: PROTO_TCP,
            src: Ipv4Addr::new(172, 16, 240, 1),
            dst: Ipv4Addr::new(172, 16, 240, 131),
            sport,
            dport: 31266,
        }
    }

    #[test]
    fn flows_survive_a_checkpoint_with_their_reply_tuple_state_and_time() {
        let old = Conntrack::new(16, Timeouts::default());
        let now = Now::from_secs(1000);
        let t = nodeport(40000);
        let flow = NewFlow {
            original: t,
            tcp_flags: TCP_SYN,
            reply_src: (Ipv4Addr::new(10, 244, 0, 74), 2368),
            reply_dst: Ipv4Addr::new(10, 244, 1, 0),
            nat: NAT_DNAT | NAT_SNAT,
            ports: PortChoice { keep: 40000, lo: 1024, hi: 65535 },
        };
        let Insert::New { entry, .. } = old.insert(flow, now) else { panic!() };
        old.track(&entry.reply, TCP_SYN | TCP_ACK, now, true).unwrap();
        old.track(&t, TCP_ACK, now, true).unwrap();
        let dns = Tuple {
            proto: PROTO_UDP,
            src: Ipv4Addr::new(10, 244, 1, 5),
            dst: Ipv4Addr::new(10, 250, 0, 10),
            sport: 5353,
            dport: 53,
        };
        let udp = NewFlow {
            original: dns,
            tcp_flags: 0,
            reply_src: (Ipv4Addr::new(10, 244, 0, 9), 53),
            reply_dst: dns.src,
            nat: NAT_DNAT,
            ports: PortChoice { keep: 5353, lo: 1024, hi: 65535 },
        };
        assert!(matches!(old.insert(udp, now), Insert::New { .. }));

        let bytes = encode(&old.snapshot(now), 1_700_000_000);
        assert_eq!(bytes.len(), HEADER_LEN + 2 * RECORD_LEN);
        let (flows, at) = decode(&bytes).unwrap();
        assert_eq!(at, 1_700_000_000);

        // The next process: its clock starts elsewhere, and 3 s passed.
        let new = Conntrack::new(16, Timeouts::default());
        let later = Now::from_secs(7);
        for f in &flows {
            assert!(new.restore(&Saved { remaining: f.remaining - 3, ..*f }, later));
        }
        let h = new.track(&entry.reply, TCP_ACK, later, false).unwrap();
        assert_eq!(h.dst, (t.src, t.sport), "reply tuple kept: reverse NAT to the client");
        let e = new.entries(later).into_iter().find(|e| e.original == t).unwrap();
        assert_eq!(e.tcp_state(), TcpState::Established);
        assert!(e.assured());
        assert_eq!(e.remaining(later), 86400 - 3);
        let u = new.entries(later).into_iter().find(|e| e.original == dns).unwrap();
        assert_eq!(u.remaining(later), 27);
        assert!(!u.assured());
        // Restoring twice does not duplicate.
        assert!(!new.restore(&flows[0], later));
        assert_eq!(new.len(), 2);
    }

    #[test]
    fn bad_files_are_named_errors() {
        let good = encode(&[], 5);
        assert_eq!(decode(&good).unwrap(), (vec![], 5));
        assert_eq!(decode(&good[..10]), Err(CheckpointError::Short));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad), Err(CheckpointError::Magic));
        let mut bad = good.clone();
        bad[4] = 9;
        assert_eq!(decode(&bad), Err(CheckpointError::Version(9)));
        let mut bad = good.clone();
        bad[19] = 1;
        assert!(decode(&bad).unwrap_err().to_string().contains("header says 1 flows"));
    }
}
