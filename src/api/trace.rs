//! Following packets: the described packet `ucanal trace` asks the daemon to run
//! through its tables, the trace it answers, and what the live streams (`trace --live`,
//! `capture`) send, one line per packet or frame.

use std::net::SocketAddrV4;

use serde::{Deserialize, Serialize};

use crate::core::trace::{Outcome, Step};

/// The synthetic packet of `ucanal trace`: `--in <port> tcp 172.16.240.1:40000 ->
/// 172.16.240.131:31266`; the daemon builds the frame as it would arrive on that port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// `host`, a pod name, `vxlan` (the first peer) or `vxlan:<peer public IP>`.
    pub ingress: String,
    pub proto: ProbeProto,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// TCP flags: `S` (default), `SA`, `A`, `F`, `R`, `PA`.
    #[serde(default)]
    pub flags: Option<String>,
    #[serde(default = "default_ttl")]
    pub ttl: u8,
}

fn default_ttl() -> u8 {
    64
}

/// The protocol of a described packet (ICMP: an echo request, the source port its id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeProto {
    Tcp,
    Udp,
    Icmp,
}

impl ProbeProto {
    /// `tcp`, `udp` or `icmp` (any case).
    pub fn parse(s: &str) -> Option<ProbeProto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(ProbeProto::Tcp),
            "udp" => Some(ProbeProto::Udp),
            "icmp" => Some(ProbeProto::Icmp),
            _ => None,
        }
    }
}

impl std::fmt::Display for ProbeProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProbeProto::Tcp => "tcp",
            ProbeProto::Udp => "udp",
            ProbeProto::Icmp => "icmp",
        })
    }
}

/// A described packet's walk through the live tables (dry run: nothing was sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceReport {
    pub node: String,
    pub steps: Vec<Step>,
    pub result: Outcome,
}

/// A real packet's walk, as `trace --live` streams it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceEvent {
    pub node: String,
    /// Unix time, seconds.
    pub time: f64,
    pub steps: Vec<Step>,
    pub result: Outcome,
}

/// A frame as `capture` streams it: Ethernet as it crossed the port, with its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedFrame {
    pub sec: u32,
    pub usec: u32,
    /// The frame's bytes, in hex on the wire.
    #[serde(rename = "hex", with = "hex")]
    pub data: Vec<u8>,
}

/// Bytes as lowercase hex digits.
mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    const DIGITS: &[u8; 16] = b"0123456789abcdef";

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(b.len() * 2);
        for x in b {
            out.push(DIGITS[usize::from(x >> 4)] as char);
            out.push(DIGITS[usize::from(x & 15)] as char);
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        if !s.len().is_multiple_of(2) {
            return Err(serde::de::Error::custom("an odd number of hex digits"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2).unwrap_or("-"), 16))
            .collect::<Result<_, _>>()
            .map_err(|_| serde::de::Error::custom("not hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_travel_as_hex() {
        let f = CapturedFrame { sec: 1, usec: 2, data: vec![0, 1, 0xab, 0xff] };
        let line = serde_json::to_string(&f).unwrap();
        assert_eq!(line, r#"{"sec":1,"usec":2,"hex":"0001abff"}"#);
        assert_eq!(serde_json::from_str::<CapturedFrame>(&line).unwrap(), f);
        for bad in [r#"{"sec":1,"usec":2,"hex":"0g"}"#, r#"{"sec":1,"usec":2,"hex":"abc"}"#] {
            assert!(serde_json::from_str::<CapturedFrame>(bad).is_err(), "{bad}");
        }
    }
}
