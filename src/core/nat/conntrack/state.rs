//! The TCP state machine of a tracked flow, as netfilter's `nf_conntrack_proto_tcp.c`
//! runs it (states, the per-direction transition table), and the timeout of each state.

use crate::wire::tcp::{ACK as TCP_ACK, FIN as TCP_FIN, RST as TCP_RST, SYN as TCP_SYN};

/// TCP conntrack states, numbered as `enum tcp_conntrack` in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    None = 0,
    SynSent = 1,
    SynRecv = 2,
    Established = 3,
    FinWait = 4,
    CloseWait = 5,
    LastAck = 6,
    TimeWait = 7,
    Close = 8,
    SynSent2 = 9,
}

impl TcpState {
    pub(in crate::core::nat) fn from_u8(v: u8) -> TcpState {
        use TcpState::*;
        [None, SynSent, SynRecv, Established, FinWait, CloseWait, LastAck, TimeWait, Close, SynSent2]
            .get(usize::from(v))
            .copied()
            .unwrap_or(None)
    }
    /// The name `conntrack -L` prints.
    pub fn name(self) -> &'static str {
        use TcpState::*;
        match self {
            None => "NONE",
            SynSent => "SYN_SENT",
            SynRecv => "SYN_RECV",
            Established => "ESTABLISHED",
            FinWait => "FIN_WAIT",
            CloseWait => "CLOSE_WAIT",
            LastAck => "LAST_ACK",
            TimeWait => "TIME_WAIT",
            Close => "CLOSE",
            SynSent2 => "SYN_SENT2",
        }
    }
}

/// Direction of a packet relative to its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    Original,
    Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Syn = 0,
    SynAck = 1,
    Fin = 2,
    Ack = 3,
    Rst = 4,
    None = 5,
}

fn tcp_event(flags: u8) -> Event {
    if flags & TCP_RST != 0 {
        Event::Rst
    } else if flags & TCP_SYN != 0 {
        if flags & TCP_ACK != 0 { Event::SynAck } else { Event::Syn }
    } else if flags & TCP_FIN != 0 {
        Event::Fin
    } else if flags & TCP_ACK != 0 {
        Event::Ack
    } else {
        Event::None
    }
}

// The kernel's `tcp_conntracks[dir][event][state]` (nf_conntrack_proto_tcp.c), with
// sIV (invalid) and sIG (ignore) as sentinels; no transition leads back to sNO (0).
const IV: u8 = 0xfe;
const IG: u8 = 0xff;
const S_SS: u8 = 1;
const S_SR: u8 = 2;
const S_ES: u8 = 3;
const S_FW: u8 = 4;
const S_CW: u8 = 5;
const S_LA: u8 = 6;
const S_TW: u8 = 7;
const S_CL: u8 = 8;
const S_S2: u8 = 9;
#[rustfmt::skip]
const TCP_TABLE: [[[u8; 10]; 6]; 2] = [
    [   // ORIGINAL      sNO   sSS   sSR   sES   sFW   sCW   sLA   sTW   sCL   sS2
        /* syn    */ [S_SS, S_SS, IG,   IG,   IG,   IG,   IG,   S_SS, S_SS, S_S2],
        /* synack */ [IV,   IV,   S_SR, IV,   IV,   IV,   IV,   IV,   IV,   S_SR],
        /* fin    */ [IV,   IV,   S_FW, S_FW, S_LA, S_LA, S_LA, S_TW, S_CL, IV  ],
        /* ack    */ [S_ES, IV,   S_ES, S_ES, S_CW, S_CW, S_TW, S_TW, S_CL, IV  ],
        /* rst    */ [IV,   S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL],
        /* none   */ [IV,   IV,   IV,   IV,   IV,   IV,   IV,   IV,   IV,   IV  ],
    ],
    [   // REPLY         sNO   sSS   sSR   sES   sFW   sCW   sLA   sTW   sCL   sS2
        /* syn    */ [IV,   S_S2, IV,   IV,   IV,   IV,   IV,   S_SS, IV,   S_S2],
        /* synack */ [IV,   S_SR, IG,   IG,   IG,   IG,   IG,   IG,   IG,   S_SR],
        /* fin    */ [IV,   IV,   S_FW, S_FW, S_LA, S_LA, S_LA, S_TW, S_CL, IV  ],
        /* ack    */ [IV,   IG,   S_SR, S_ES, S_CW, S_CW, S_TW, S_TW, S_CL, IG  ],
        /* rst    */ [IV,   S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL, S_CL],
        /* none   */ [IV,   IV,   IV,   IV,   IV,   IV,   IV,   IV,   IV,   IV  ],
    ],
];

/// The result of one packet on the TCP state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    To(TcpState),
    Ignore,
    Invalid,
}

pub fn tcp_transition(state: TcpState, dir: Dir, flags: u8) -> Transition {
    let d = match dir {
        Dir::Original => 0,
        Dir::Reply => 1,
    };
    match TCP_TABLE[d][tcp_event(flags) as usize][state as usize] {
        IV => Transition::Invalid,
        IG => Transition::Ignore,
        s => Transition::To(TcpState::from_u8(s)),
    }
}

/// Timeouts in seconds: kube-proxy's for established and close-wait, the kernel's defaults elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    pub tcp_established: u32,
    pub tcp_fin_wait: u32,
    pub tcp_close_wait: u32,
    pub tcp_last_ack: u32,
    pub tcp_time_wait: u32,
    pub tcp_close: u32,
    pub udp: u32,
    pub udp_stream: u32,
    pub icmp: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 86400,
            tcp_fin_wait: 120,
            tcp_close_wait: 3600,
            tcp_last_ack: 30,
            tcp_time_wait: 120,
            tcp_close: 10,
            udp: 30,
            udp_stream: 120,
            icmp: 30,
        }
    }
}

impl Timeouts {
    pub fn tcp(&self, s: TcpState) -> u32 {
        use TcpState::*;
        match s {
            None | SynSent | SynSent2 => self.tcp_syn_sent,
            SynRecv => self.tcp_syn_recv,
            Established => self.tcp_established,
            FinWait => self.tcp_fin_wait,
            CloseWait => self.tcp_close_wait,
            LastAck => self.tcp_last_ack,
            TimeWait => self.tcp_time_wait,
            Close => self.tcp_close,
        }
    }
}
