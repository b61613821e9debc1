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

use super::fds::{recv_exact, send_all};
use super::offer::{self, Entry, HEADER_LEN, OfferError};
use crate::api::codec::{Client, ClientError};
use crate::api::{ApiError, Ask, ErrorCode, Request};
use crate::control::persist::State;

/// Why taking over from a running ucanal failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error(transparent)]
    Offer(#[from] OfferError),
    #[error("hand-over: {0}")]
    Io(#[from] io::Error),
    #[error("hand-over offer: unreadable answer to the ask: {0}")]
    Answer(#[from] ClientError),
    #[error("hand-over offer: state unreadable: {0}")]
    State(serde_json::Error),
    #[error("hand-over offer: an fd out of place (index {0})")]
    Misplaced(u16),
    #[error("hand-over offer: {what}: fewer than {want} fds")]
    Missing { what: String, want: usize },
    /// The running ucanal refused (another version or shape).
    #[error("{0}")]
    Refused(ApiError),
    #[error("api.socket: another ucanal is listening on {0} and is not stopping (send it SIGTERM first)")]
    NotStopping(String),
}

/// How long a successor started right after `kill -TERM` retries while the old
/// ucanal has not yet seen its signal.
const NOT_STOPPING_RETRY: Duration = Duration::from_secs(1);
/// Longest wait for any answer of the old ucanal.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// How long the successor, running, waits for the old ucanal to hang up.
const GONE_WAIT: Duration = Duration::from_secs(2);
/// How often the socket is tried again while waiting for the old ucanal.
const POLL: Duration = Duration::from_millis(20);

/// An accepted hand-over, before `go`: the old ucanal still forwards.
pub struct Pending {
    s: UnixStream,
    ask: Ask,
}

/// The old ucanal's fds, sorted, with its state and conntrack.
pub struct Offer {
    /// The API socket file's listener and the abstract one.
    pub listeners: Vec<OwnedFd>,
    pub rx: Vec<UdpSocket>,
    pub tx: Vec<UdpSocket>,
    pub host: Vec<OwnedFd>,
    /// Each pod's queues, by pod name, one per worker.
    pub pods: HashMap<String, Vec<OwnedFd>>,
    pub state: State,
    pub conntrack: Vec<u8>,
}

/// The offer is taken; `running` lets the old ucanal exit.
pub struct Taken {
    s: UnixStream,
}

/// Asks a ucanal listening on `socket` for a hand-over. `Ok(None)`: nobody listens.
pub fn ask(socket: &Path, ask: Ask) -> Result<Option<Pending>, HandoverError> {
    let deadline = Instant::now() + NOT_STOPPING_RETRY;
    loop {
        let Ok(s) = UnixStream::connect(socket) else { return Ok(None) };
        s.set_read_timeout(Some(ANSWER_WAIT))?;
        s.set_write_timeout(Some(ANSWER_WAIT))?;
        let mut c = Client::new(s, socket.display());
        match c.call::<serde::de::IgnoredAny>(&Request::Handover(ask)) {
            Ok(_) => {
                let s = c.into_inner().ok_or_else(|| io::Error::other("bytes after the answer to the ask"))?;
                return Ok(Some(Pending { s, ask }));
            }
            Err(ClientError::Refused(e)) if e.code == ErrorCode::NotStopping => {}
            Err(ClientError::Refused(e)) => return Err(HandoverError::Refused(e)),
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            return Err(HandoverError::NotStopping(socket.display().to_string()));
        }
        std::thread::sleep(POLL);
    }
}

/// Waits (up to `limit`) until nothing accepts connections on `socket`: the old
/// ucanal has written its last checkpoint and exited.
pub fn wait_gone(socket: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while UnixStream::connect(socket).is_ok() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
    true
}

impl Pending {
    /// `go`: the old ucanal stops its workers and sends everything.
    pub fn go(self) -> Result<(Offer, Taken), HandoverError> {
        send_all(&self.s, b"go\n")?;
        let mut fds = Vec::new();
        let mut head = [0u8; HEADER_LEN];
        recv_exact(&self.s, &mut head, &mut fds)?;
        let h = offer::decode_header(&head)?;
        let mut body = vec![0u8; h.entries_len as usize];
        recv_exact(&self.s, &mut body, &mut fds)?;
        let entries = offer::decode_entries(&h, &body)?;
        let mut marks = vec![0u8; h.fd_messages()];
        recv_exact(&self.s, &mut marks, &mut fds)?;
        if fds.len() != entries.len() {
            return Err(OfferError::Count { entries: entries.len(), fds: fds.len() as u32 }.into());
        }
        let mut state = vec![0u8; h.state_len as usize];
        recv_exact(&self.s, &mut state, &mut fds)?;
        let mut conntrack = vec![0u8; h.conntrack_len as usize];
        recv_exact(&self.s, &mut conntrack, &mut fds)?;
        let state: State = serde_json::from_slice(&state).map_err(HandoverError::State)?;
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
            _ => return Err(HandoverError::Misplaced(i)),
        }
    }
    let full = |what: &str, v: Vec<Option<OwnedFd>>| -> Result<Vec<OwnedFd>, HandoverError> {
        let n = v.len();
        v.into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| HandoverError::Missing { what: what.to_string(), want: n })
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
    pub fn running(self) {
        if let Err(e) = send_all(&self.s, b"running\n") {
            tracing::warn!("hand-over: telling the old ucanal we run: {e}");
            return;
        }
        let _ = self.s.set_read_timeout(Some(GONE_WAIT));
        let mut b = [0u8; 1];
        let _ = recv_exact(&self.s, &mut b, &mut Vec::new());
    }
}
