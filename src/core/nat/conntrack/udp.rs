//! When a tracked UDP flow becomes a stream (ASSURED, with the long timeout), as the
//! kernel's `nf_conntrack_udp_packet` (nf_conntrack_proto_udp.c) decides it.
//!
//! In both kernels the packet that is the first reply is itself handled as unreplied:
//! `nf_conntrack_in` sets `IPS_SEEN_REPLY` only after the protocol handler ran. So a
//! one-shot request and its answer (a DNS lookup) stay unassured with the short
//! timeout; what differs is the packet after that:
//!
//! - [`UdpRule::Current`] (every kernel since the two-second stream rule, the 6.x
//!   kernels users run today): a packet after a reply keeps the flow at `udp` (30 s)
//!   and unassured while the flow is younger than two seconds (`stream_ts`, set when
//!   the flow is entered); past that it gets `udp_stream` (120 s) and ASSURED;
//! - [`UdpRule::Linux310`] (the article's CentOS 7 kernel): any packet after a reply
//!   makes the flow ASSURED with `udp_stream` (180 s there; set
//!   `timeouts.udp_stream = 180` to match it too).
//!
//! An unassured flow may be dropped early for a new one (see `early_drop`), so under
//! DNS churn the one-shot flows are what a full table gives up first.

use serde::{Deserialize, Serialize};

/// How old (nanoseconds) a flow must be before a packet after its reply makes it a
/// stream (the kernel's `stream_ts`: two seconds after the first packet).
pub const STREAM_AFTER_NS: u64 = 2_000_000_000;

/// The kernel whose UDP stream rule conntrack follows (`[conntrack] udp_stream_rule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UdpRule {
    /// A reply seen and the flow older than two seconds (current kernels).
    #[default]
    Current,
    /// A reply seen (Linux 3.10, the article's kernel).
    #[serde(rename = "linux_3_10")]
    Linux310,
}

/// What one UDP packet of a tracked flow does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpVerdict {
    /// The flow is a stream from this packet on (set ASSURED).
    pub assure: bool,
    /// The timeout class: `udp_stream` when true, else `udp`.
    pub stream_timeout: bool,
}

impl UdpRule {
    /// `seen_reply`: a reply was seen before this packet; `age_ns`: since the flow was entered.
    pub fn verdict(self, seen_reply: bool, age_ns: u64) -> UdpVerdict {
        let stream = match self {
            UdpRule::Current => seen_reply && age_ns > STREAM_AFTER_NS,
            UdpRule::Linux310 => seen_reply,
        };
        UdpVerdict { assure: stream, stream_timeout: stream }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_and_its_answer_stay_unreplied_timeouts_in_both_kernels() {
        for rule in [UdpRule::Current, UdpRule::Linux310] {
            // The request, then the answer: neither saw a reply before it.
            assert_eq!(rule.verdict(false, 0), UdpVerdict { assure: false, stream_timeout: false });
            assert_eq!(rule.verdict(false, 10_000_000), UdpVerdict { assure: false, stream_timeout: false });
        }
    }

    #[test]
    fn current_kernels_wait_two_seconds_for_a_stream() {
        let r = UdpRule::Current;
        assert!(!r.verdict(true, 1_900_000_000).assure);
        assert!(!r.verdict(true, STREAM_AFTER_NS).assure, "time_after: strictly later");
        assert_eq!(r.verdict(true, 2_100_000_000), UdpVerdict { assure: true, stream_timeout: true });
    }

    #[test]
    fn linux_3_10_assures_on_the_packet_after_the_reply() {
        assert_eq!(UdpRule::Linux310.verdict(true, 1), UdpVerdict { assure: true, stream_timeout: true });
    }

    #[test]
    fn the_setting_reads_as_the_docs_write_it() {
        #[derive(Deserialize)]
        struct S {
            r: UdpRule,
        }
        let s: S = toml::from_str("r = \"linux_3_10\"").unwrap();
        assert_eq!(s.r, UdpRule::Linux310);
        let s: S = toml::from_str("r = \"current\"").unwrap();
        assert_eq!(s.r, UdpRule::Current);
        assert!(toml::from_str::<S>("r = \"3.10\"").is_err());
    }
}
