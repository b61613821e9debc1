//! The successor's side of a hand-over: ask the running ucanal, adopt the node while
//! it forwards, then say `go`, take the offer (fds, state, conntrack) and report
//! `running` once the workers run on those fds.

use std::collections::HashMap;
use std::io;
use std::net::UdpSocket;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::fds::{recv_exact, recv_line, send_all};
use super::offer::{self as wire, Ask, Entry, HEADER_LEN, WireError};
use super::{HandoverError, NOT_STOPPING};
use crate::api::{Request, Response};
use crate::control::persist::State;

/// How long a successor started right after `kill -TERM` retries while the old
/// ucanal has not yet seen its signal.
const NOT_STOPPING_RETRY: Duration = Duration::from_secs(1);
/// Longest wait for any answer of the old ucanal.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// An accepted hand-over, before `go`: the old ucanal still forwards.
pub(crate) struct Pending {
    s: UnixStream,
    ask: Ask,
}

/// The old ucanal's fds, sorted, with its state and conntrack.
pub(crate) struct Offer {
    /// The API socket file's listener and the abstract one.
    pub(crate) listeners: Vec<OwnedFd>,
    pub(crate) rx: Vec<UdpSocket>,
    pub(crate) tx: Vec<UdpSocket>,
    pub(crate) host: Vec<OwnedFd>,
    /// Each pod's queues, by pod name, one per worker.
    pub(crate) pods: HashMap<String, Vec<OwnedFd>>,
    pub(crate) state: State,
    pub(crate) conntrack: Vec<u8>,
}

/// The offer is taken; `running` lets the old ucanal exit.
pub(crate) struct Taken {
    s: UnixStream,
}

/// Asks a ucanal listening on `socket` for a hand-over. `Ok(None)`: nobody listens.
pub(crate) fn ask(socket: &Path, ask: Ask) -> Result<Option<Pending>, HandoverError> {
    let deadline = Instant::now() + NOT_STOPPING_RETRY;
    loop {
        let Ok(s) = UnixStream::connect(socket) else { return Ok(None) };
        s.set_read_timeout(Some(ANSWER_WAIT))?;
        s.set_write_timeout(Some(ANSWER_WAIT))?;
        let mut line = serde_json::to_string(&Request::Handover { ask }).map_err(io::Error::other)?;
        line.push('\n');
        send_all(&s, line.as_bytes())?;
        let answer = recv_line(&s, 1 << 16)?;
        let r: Response = serde_json::from_str(&answer)
            .map_err(|e| HandoverError::Offer(format!("unreadable answer to the ask ({e}): {answer:?}")))?;
        if r.ok {
            return Ok(Some(Pending { s, ask }));
        }
        let e = r.error.unwrap_or_default();
        if !e.starts_with(NOT_STOPPING) {
            return Err(HandoverError::Refused(e));
        }
        if Instant::now() >= deadline {
            return Err(HandoverError::NotStopping(socket.display().to_string()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to `limit`) until nothing accepts connections on `socket`: the old
/// ucanal has written its last checkpoint and exited.
pub(crate) fn wait_gone(socket: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while UnixStream::connect(socket).is_ok() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

impl Pending {
    /// `go`: the old ucanal stops its workers and sends everything.
    pub(crate) fn go(self) -> Result<(Offer, Taken), HandoverError> {
        send_all(&self.s, b"go\n")?;
        let mut fds = Vec::new();
        let mut head = [0u8; HEADER_LEN];
        recv_exact(&self.s, &mut head, &mut fds)?;
        let h = wire::decode_header(&head)?;
        let mut body = vec![0u8; h.entries_len as usize];
        recv_exact(&self.s, &mut body, &mut fds)?;
        let entries = wire::decode_entries(&h, &body)?;
        let mut marks = vec![0u8; h.fd_messages()];
        recv_exact(&self.s, &mut marks, &mut fds)?;
        if fds.len() != entries.len() {
            return Err(WireError::Count { entries: entries.len(), fds: fds.len() as u32 }.into());
        }
        let mut state = vec![0u8; h.state_len as usize];
        recv_exact(&self.s, &mut state, &mut fds)?;
        let mut conntrack = vec![0u8; h.conntrack_len as usize];
        recv_exact(&self.s, &mut conntrack, &mut fds)?;
        let state: State =
            serde_json::from_slice(&state).map_err(|e| HandoverError::Offer(format!("state unreadable: {e}")))?;
        let offer = sort(&self.ask, entries, fds, state, conntrack)?;
        Ok((offer, Taken { s: self.s }))
    }
}

/// Places each fd by its entry and checks the offer fits the ask.
fn sort(
    ask: &Ask,
    entries: Vec<Entry>,
    fds: Vec<OwnedFd>,
    state: State,
    conntrack: Vec<u8>,
) -> Result<Offer, HandoverError> {
    let slots = |n: usize| -> Vec<Option<OwnedFd>> { (0..n).map(|_| None).collect() };
    let (mut api, mut rx, mut tx, mut host) =
        (slots(2), slots(ask.workers), slots(ask.source_ports), slots(ask.workers));
    let mut pods: HashMap<String, Vec<Option<OwnedFd>>> = HashMap::new();
    for (e, fd) in entries.into_iter().zip(fds) {
        let (list, i) = match e {
            Entry::ApiSocket => (&mut api, 0),
            Entry::ApiAbstract => (&mut api, 1),
            Entry::VxlanRx(n) => (&mut rx, n),
            Entry::VxlanTx(n) => (&mut tx, n),
            Entry::HostQueue(n) => (&mut host, n),
            Entry::PodQueue(n, name) => (pods.entry(name).or_insert_with(|| slots(ask.workers)), n),
        };
        match list.get_mut(usize::from(i)) {
            Some(slot @ None) => *slot = Some(fd),
            _ => return Err(HandoverError::Offer(format!("an fd out of place (index {i})"))),
        }
    }
    let full = |what: &str, v: Vec<Option<OwnedFd>>| -> Result<Vec<OwnedFd>, HandoverError> {
        let n = v.len();
        v.into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| HandoverError::Offer(format!("{what}: fewer than {n} fds")))
    };
    let mut pod_fds = HashMap::new();
    for (name, v) in pods {
        pod_fds.insert(name.clone(), full(&format!("pod {name}"), v)?);
    }
    Ok(Offer {
        listeners: full("API listeners", api)?,
        rx: full("VXLAN receive sockets", rx)?.into_iter().map(UdpSocket::from).collect(),
        tx: full("VXLAN source sockets", tx)?.into_iter().map(UdpSocket::from).collect(),
        host: full("host port queues", host)?,
        pods: pod_fds,
        state,
        conntrack,
    })
}

impl Taken {
    /// Tells the old ucanal its successor runs, then waits (briefly) for it to be gone.
    pub(crate) fn running(self) {
        if let Err(e) = send_all(&self.s, b"running\n") {
            tracing::warn!("hand-over: telling the old ucanal we run: {e}");
            return;
        }
        let _ = self.s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut b = [0u8; 1];
        let _ = recv_exact(&self.s, &mut b, &mut Vec::new());
    }
}
