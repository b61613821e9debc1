//! Restart by hand-over (`ucanal run --keep-on-exit`): after SIGTERM the old ucanal
//! keeps forwarding and waits (`--handover-wait`) on its API socket for a successor.
//! The successor asks (its version and worker shape), adopts the node's rules and
//! routes while the old one still forwards, then says `go`: the old one stops its API
//! server, sweeper and workers, and sends every live fd — the API listeners, the VXLAN
//! sockets (with their `UDP_GRO`), each worker's queue of the host port and of every
//! pod's TAP — with its state and conntrack over the connection (`SCM_RIGHTS`, see
//! `offer`). The successor starts its workers on the same fds and answers `running`;
//! only then does the old one exit, without a teardown. No fd closes on the way, so
//! frames that arrive during the switch wait in the kernel's queues: nothing is
//! dropped, the stall is the switch itself. Per-process objects (epoll, eventfd,
//! zero-copy completions, the metrics listener, etcd sessions) are made anew.
//!
//! A refused ask (another version, another worker shape, or a ucanal not stopping)
//! is answered with an error naming it and changes nothing; a successor that fails
//! after `go` (the connection breaks, no `running`) makes the old one start its
//! workers again on the fds it kept. A successor refused falls back to the cold start:
//! it waits until the old one exits (its window over), then loads its checkpoint.
//! This module is the old side; `successor` is the new one.

mod fds;
pub mod offer;
mod successor;

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::{Mutex, mpsc};

pub use successor::{Offer, Pending, Taken, ask, wait_gone};

use crate::api::codec;
use crate::api::{ApiError, Ask, ErrorCode};
use crate::control::config::Config;
use crate::control::daemon::maintenance::Sweeper;
use crate::control::daemon::server::{self, Shared};
use crate::control::state::Daemon;
use crate::core::nat::checkpoint;
use crate::core::{Dataplane, PortId};
use crate::io::clock;
use crate::io::worker::Released;

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error(transparent)]
    Offer(#[from] offer::OfferError),
    #[error("hand-over: {0}")]
    Io(#[from] io::Error),
    #[error("hand-over offer: unreadable answer to the ask: {0}")]
    Answer(#[from] codec::ClientError),
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

/// This ucanal's shape as a hand-over compares it, from its config: a successor asks
/// with its own, the running ucanal checks it against its own. The one place both are
/// computed.
pub fn ask_for(cfg: &Config) -> Ask {
    let tech = cfg.dataplane.techniques();
    Ask {
        version: offer::VERSION,
        workers: cfg.dataplane.worker_count(),
        source_ports: cfg.dataplane.source_sockets(),
        tap_offloads: tech.tap_offloads,
        udp_gro: tech.udp_gro,
    }
}

/// A successor's ask, with its connection (blocking, with timeouts).
pub struct Successor {
    pub stream: UnixStream,
    pub ask: Ask,
}

/// Answers an ask with an error and closes the connection.
pub fn refuse(s: Successor, why: ApiError) {
    tracing::warn!("{why}");
    let _ = fds::send_all(&s.stream, &codec::error_line(why));
}

/// The refusal of a ucanal that has not been asked to stop (the successor retries).
pub fn not_stopping() -> ApiError {
    ApiError::new(ErrorCode::NotStopping, "hand-over refused: this ucanal is not stopping (send it SIGTERM first)")
}

/// Where an ask and this ucanal's shape differ.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Misfit {
    #[error("version {ask}, this ucanal speaks version {own}")]
    Version { ask: u16, own: u16 },
    #[error("the successor runs {ask} workers, this ucanal {own}")]
    Workers { ask: usize, own: usize },
    #[error("dataplane.source_ports {own} here, {ask} in the successor")]
    SourcePorts { ask: usize, own: usize },
    #[error("offloads differ (TAP {} / UDP GRO {} here, {} / {} in the successor)", own.0, own.1, ask.0, ask.1)]
    Offloads { ask: (bool, bool), own: (bool, bool) },
}

/// Whether `ask` fits this ucanal (`own`); the refusal names the first difference.
pub fn fits(ask: &Ask, own: &Ask) -> Result<(), Misfit> {
    if ask.version != own.version {
        Err(Misfit::Version { ask: ask.version, own: own.version })
    } else if ask.workers != own.workers {
        Err(Misfit::Workers { ask: ask.workers, own: own.workers })
    } else if ask.source_ports != own.source_ports {
        Err(Misfit::SourcePorts { ask: ask.source_ports, own: own.source_ports })
    } else if (ask.tap_offloads, ask.udp_gro) != (own.tap_offloads, own.udp_gro) {
        Err(Misfit::Offloads { ask: (ask.tap_offloads, ask.udp_gro), own: (own.tap_offloads, own.udp_gro) })
    } else {
        Ok(())
    }
}

fn refusal(m: Misfit) -> ApiError {
    ApiError::new(ErrorCode::HandoverRefused, format!("hand-over refused: {m}; restart cold instead"))
}

/// The API server and the conntrack sweeper: what a hand-over pauses besides the
/// workers. The listeners are kept here (the server works on duplicates), so they
/// can be handed over, or served again.
pub struct Services {
    shared: Shared,
    dp: Arc<Dataplane>,
    block: usize,
    checkpoint: Option<PathBuf>,
    listeners: Vec<OwnedFd>,
    server: Option<tokio::task::JoinHandle<()>>,
    sweeper: Option<Sweeper>,
}

impl Services {
    pub fn start(
        listeners: Vec<UnixListener>,
        daemon: Arc<Mutex<Daemon>>,
        successors: mpsc::Sender<Successor>,
    ) -> io::Result<Services> {
        let (dp, block, checkpoint) = {
            let d = daemon.try_lock().map_err(io::Error::other)?;
            let p = d.plane();
            (p.dp().clone(), p.maintenance_block(), d.persist.as_ref().map(|p| p.paths().conntrack.clone()))
        };
        let listeners = listeners.into_iter().map(|l| l.into_std().map(OwnedFd::from)).collect::<io::Result<_>>()?;
        let shared = Shared { daemon, successors };
        let mut s = Services { shared, dp, block, checkpoint, listeners, server: None, sweeper: None };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let ls = self
            .listeners
            .iter()
            .map(|fd| UnixListener::from_std(std::os::unix::net::UnixListener::from(fd.try_clone()?)))
            .collect::<io::Result<Vec<_>>>()?;
        self.sweeper = Some(Sweeper::spawn(self.dp.clone(), self.block, self.checkpoint.clone())?);
        self.server = Some(tokio::spawn(server::serve(ls, self.shared.clone())));
        Ok(())
    }

    /// Stops accepting and sweeping; the listeners stay open (connections wait in
    /// their backlog).
    pub fn pause(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
        if let Some(s) = self.sweeper.take() {
            s.stop();
        }
    }
}

/// How a successor's ask ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The successor runs on our fds: exit without a teardown.
    Handed,
    /// Refused, or the successor failed: this ucanal forwards on.
    Kept,
}

/// Serves one successor (see the module doc); `svc` is paused for the switch and
/// started again if it fails.
pub async fn serve(s: Successor, d: &Arc<Mutex<Daemon>>, svc: &mut Services) -> Outcome {
    let own = ask_for(d.lock().await.config());
    if let Err(m) = fits(&s.ask, &own) {
        refuse(s, refusal(m));
        return Outcome::Kept;
    }
    let stream = s.stream;
    let go = tokio::task::spawn_blocking(move || {
        let accepted = codec::line(&codec::Reply::<()>::message("hand-over accepted; send go"));
        let r = fds::send_all(&stream, &accepted).and_then(|()| fds::recv_line(&stream, 16));
        (stream, r)
    })
    .await;
    let stream = match go {
        Ok((stream, Ok(l))) if l == "go" => stream,
        Ok((_, r)) => {
            tracing::warn!("hand-over: the successor did not say go ({r:?}); forwarding on");
            return Outcome::Kept;
        }
        Err(e) => {
            tracing::error!("hand-over: {e}");
            return Outcome::Kept;
        }
    };
    let t0 = std::time::Instant::now();
    svc.pause();
    let mut g = d.lock().await;
    // A compaction still writing the snapshot would overwrite the successor's.
    g.settle_state();
    let released = g.plane.release();
    let r = if released.len() == own.workers {
        tokio::task::block_in_place(|| send_offer(&g, &stream, &released, &svc.listeners))
    } else {
        Err(io::Error::other(format!("only {} of {} workers gave their fds back", released.len(), own.workers)))
    };
    match r {
        Ok(flows) => {
            tracing::info!("hand-over: {flows} flows and every fd handed over in {:?}; exiting", t0.elapsed());
            if let Some(p) = &mut g.persist {
                p.hand_off();
            }
            Outcome::Handed
        }
        Err(e) => {
            tracing::error!("hand-over failed after go ({e}); this ucanal forwards on");
            if let Err(e) = g.plane.resume(released) {
                tracing::error!("hand-over: restarting the workers: {e}");
            }
            drop(g);
            if let Err(e) = svc.spawn() {
                tracing::error!("hand-over: restarting the API server: {e}");
            }
            Outcome::Kept
        }
    }
}

/// Sends the offer and waits for `running`; returns the flows handed over.
fn send_offer(d: &Daemon, s: &UnixStream, released: &[Released], listeners: &[OwnedFd]) -> io::Result<usize> {
    let (entries, raw) = offer_fds(d, released, listeners);
    let state = serde_json::to_vec(&d.state()).map_err(io::Error::other)?;
    let dp = d.plane().dp();
    let flows = dp.conntrack.snapshot(clock::now());
    let ct = checkpoint::encode(&flows, crate::control::persist::unix_now());
    fds::send_all(s, &offer::encode(&entries, state.len(), ct.len()))?;
    fds::send_fds(s, &raw)?;
    fds::send_all(s, &state)?;
    fds::send_all(s, &ct)?;
    match fds::recv_line(s, 16)?.as_str() {
        "running" => Ok(flows.len()),
        l => Err(io::Error::other(format!("the successor answered {l:?}, not running"))),
    }
}

/// Every fd to hand over, named.
fn offer_fds(d: &Daemon, released: &[Released], listeners: &[OwnedFd]) -> (Vec<offer::Entry>, Vec<RawFd>) {
    use offer::Entry;
    let mut e = vec![Entry::ApiSocket, Entry::ApiAbstract];
    let mut raw: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    let tx = d.plane().tx_sockets();
    for (i, s) in tx.iter().enumerate() {
        e.push(Entry::VxlanTx(i as u16));
        raw.push(s.as_raw_fd());
    }
    for (i, r) in released.iter().enumerate() {
        let i = i as u16;
        e.push(Entry::VxlanRx(i));
        raw.push(r.rx.as_raw_fd());
        let port = |p: PortId| r.ports.get(p.0 as usize).and_then(Option::as_ref);
        if let Some(fd) = port(PortId::HOST) {
            e.push(Entry::HostQueue(i));
            raw.push(fd.as_fd().as_raw_fd());
        }
        for p in d.pods.iter() {
            if let Some(fd) = port(p.port) {
                e.push(Entry::PodQueue(i, p.spec.name.clone()));
                raw.push(fd.as_raw_fd());
            }
        }
    }
    (e, raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ask_that_does_not_fit_is_refused_by_name() {
        let own = Ask { version: offer::VERSION, workers: 2, source_ports: 8, tap_offloads: true, udp_gro: true };
        assert_eq!(fits(&own, &own), Ok(()));
        let e = refusal(fits(&Ask { version: 7, ..own }, &own).unwrap_err());
        assert_eq!(e.code, ErrorCode::HandoverRefused);
        assert!(e.message.contains("version 7, this ucanal speaks version 1"), "{e}");
        let e = fits(&Ask { workers: 4, ..own }, &own).unwrap_err();
        assert!(e.to_string().contains("runs 4 workers, this ucanal 2"), "{e}");
        assert!(matches!(fits(&Ask { source_ports: 1, ..own }, &own), Err(Misfit::SourcePorts { ask: 1, own: 8 })));
        assert!(fits(&Ask { udp_gro: false, ..own }, &own).unwrap_err().to_string().contains("offloads differ"));
    }
}
