//! What a successor asks a running ucanal for when it takes over (`run
//! --keep-on-exit`): the rest of the exchange (`go`, the offer of fds, `running`) is the
//! daemon's own protocol on the same connection.

use serde::{Deserialize, Serialize};

/// The successor's shape: the offer must fit the workers it will start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ask {
    /// The version of the hand-over exchange.
    pub version: u16,
    /// Worker threads: one VXLAN socket and one queue of every TAP each.
    pub workers: usize,
    /// VXLAN source sockets.
    pub source_ports: usize,
    /// The TAPs' offloads (`TUNSETOFFLOAD`) and the VXLAN sockets' `UDP_GRO`.
    pub tap_offloads: bool,
    pub udp_gro: bool,
}
