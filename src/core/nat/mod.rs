//! kube-proxy's iptables semantics and flannel's ip-masq, done by ucanal:
//! the service table ([`service`]), connection tracking ([`conntrack`]) and the
//! masquerade decisions ([`masquerade`]).

pub mod checkpoint;
pub mod conntrack;
pub mod early_drop;
pub mod masquerade;
pub mod service;

use std::fmt;
use std::net::Ipv4Addr;

use crate::wire::ipv4::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// A flow's five-tuple in one direction. For ICMP echo the identifier sits in
/// `sport` of a request and `dport` of a reply (see `wire::l4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Tuple {
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

impl Tuple {
    /// The tuple of a packet travelling the other way.
    pub fn inverse(&self) -> Tuple {
        Tuple { proto: self.proto, src: self.dst, dst: self.src, sport: self.dport, dport: self.sport }
    }
    /// The hash-table key: the tuple packed into 104 bits.
    #[inline]
    pub fn key(&self) -> u128 {
        (u128::from(self.proto) << 96)
            | (u128::from(u32::from(self.src)) << 64)
            | (u128::from(u32::from(self.dst)) << 32)
            | (u128::from(self.sport) << 16)
            | u128::from(self.dport)
    }
    /// A 32-bit flow hash, the same for every packet of the flow in this direction.
    #[inline]
    pub fn hash(&self, seed: u64) -> u32 {
        let k = self.key();
        let x = mix64((k as u64) ^ seed) ^ mix64(((k >> 64) as u64) ^ seed.rotate_left(32));
        (mix64(x) >> 32) as u32
    }
}

/// MurmurHash3's 64-bit finaliser: a cheap, well-spread mix.
#[inline]
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Maps a 32-bit hash uniformly onto `0..n` (Lemire's multiply-shift).
#[inline]
pub fn uniform_index(hash: u32, n: usize) -> usize {
    ((u64::from(hash) * n as u64) >> 32) as usize
}

/// The lowercase protocol name `conntrack -L` prints.
pub fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        _ => "unknown",
    }
}

impl fmt::Display for Tuple {
    /// `conntrack -L` style: `src=... dst=... sport=... dport=...` (ICMP: `type= code= id=`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.proto == PROTO_ICMP {
            let (ty, id) = if self.sport != 0 { (8, self.sport) } else { (0, self.dport) };
            write!(f, "src={} dst={} type={} code=0 id={}", self.src, self.dst, ty, id)
        } else {
            write!(f, "src={} dst={} sport={} dport={}", self.src, self.dst, self.sport, self.dport)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_and_key() {
        let t = Tuple {
            proto: PROTO_TCP,
            src: Ipv4Addr::new(172, 16, 240, 1),
            dst: Ipv4Addr::new(172, 16, 240, 131),
            sport: 40000,
            dport: 31266,
        };
        assert_eq!(t.inverse().inverse(), t);
        assert_ne!(t.key(), t.inverse().key());
        assert_eq!(t.to_string(), "src=172.16.240.1 dst=172.16.240.131 sport=40000 dport=31266");
        assert_eq!(t.hash(7), t.hash(7));
        assert_ne!(t.hash(7), t.hash(8));
    }

    #[test]
    fn uniform_index_is_uniform() {
        let mut counts = [0u32; 3];
        for sport in 0..30000u16 {
            let t = Tuple {
                proto: PROTO_TCP,
                src: Ipv4Addr::new(10, 0, 0, 1),
                dst: Ipv4Addr::new(10, 0, 0, 2),
                sport,
                dport: 80,
            };
            counts[uniform_index(t.hash(42), 3)] += 1;
        }
        for c in counts {
            assert!((9500..10500).contains(&c), "{counts:?}");
        }
    }
}
