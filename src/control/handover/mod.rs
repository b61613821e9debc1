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
use std::time::{Duration, Instant};

pub use successor::{HandoverError, Offer, Pending, Taken, ask, wait_gone};

use crate::api::codec;
use crate::api::{ApiError, Ask, ErrorCode};
use crate::control::config::Config;
use crate::control::state::Daemon;
use crate::core::PortId;
use crate::core::nat::checkpoint;
use crate::io::clock;
use crate::io::worker::Released;

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
    answer(s, why);
}

fn answer(s: Successor, why: ApiError) {
    let _ = fds::send_all(&s.stream, &codec::error_line(why));
}

/// The refusal of a ucanal that has not been asked to stop (the successor retries).
pub fn not_stopping() -> ApiError {
    ApiError::new(ErrorCode::NotStopping, "hand-over refused: this ucanal is not stopping (send it SIGTERM first)")
}

/// How long the log stays quiet about further "not stopping" refusals after one line.
const NOT_STOPPING_QUIET: Duration = Duration::from_secs(10);

/// The "not stopping" refusals of a running ucanal. A second `ucanal run
/// --keep-on-exit` on its socket asks again every few milliseconds for a second (it
/// may have been started just before this one got its SIGTERM), so each ask is
/// answered but the log says it once per [`NOT_STOPPING_QUIET`], with the count since.
#[derive(Debug, Default)]
pub struct NotStopping {
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl NotStopping {
    pub fn refuse(&mut self, s: Successor, now: Instant) {
        if self.logged_at.is_some_and(|t| now.duration_since(t) < NOT_STOPPING_QUIET) {
            self.unlogged += 1;
        } else {
            tracing::warn!(
                "{} — another `ucanal run` asked to take over this node{}; its further asks in the next {}s are \
                 refused without a log line",
                not_stopping().message,
                if self.unlogged > 0 {
                    format!(" ({} more asks refused since the last line)", self.unlogged)
                } else {
                    String::new()
                },
                NOT_STOPPING_QUIET.as_secs()
            );
            self.logged_at = Some(now);
            self.unlogged = 0;
        }
        answer(s, not_stopping());
    }

    /// Whether this refusal would be logged (for tests).
    #[cfg(test)]
    fn logs_at(&self, now: Instant) -> bool {
        self.logged_at.is_none_or(|t| now.duration_since(t) >= NOT_STOPPING_QUIET)
    }
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

/// Answers a successor's ask: refused when it does not fit `own`, else accepted, and
/// its `go` awaited. The stream to send the offer on, once it said `go`.
pub async fn accept(s: Successor, own: &Ask) -> Option<UnixStream> {
    if let Err(m) = fits(&s.ask, own) {
        refuse(s, refusal(m));
        return None;
    }
    let stream = s.stream;
    let go = tokio::task::spawn_blocking(move || {
        let accepted = codec::line(&codec::Reply::<()>::message("hand-over accepted; send go"));
        let r = fds::send_all(&stream, &accepted).and_then(|()| fds::recv_line(&stream, 16));
        (stream, r)
    })
    .await;
    match go {
        Ok((stream, Ok(l))) if l == "go" => Some(stream),
        Ok((_, r)) => {
            tracing::warn!("hand-over: the successor did not say go ({r:?}); forwarding on");
            None
        }
        Err(e) => {
            tracing::error!("hand-over: {e}");
            None
        }
    }
}

/// After `go` (the API server and the sweeper paused): stops the workers and sends
/// every fd, the state and conntrack; returns the flows handed over once the successor
/// runs. On failure the workers run again on the fds they gave back.
pub fn give(d: &mut Daemon, stream: &UnixStream, listeners: &[OwnedFd], workers: usize) -> io::Result<usize> {
    // A compaction still writing the snapshot would overwrite the successor's.
    d.settle_state();
    let released = d.plane.release();
    let r = if released.len() == workers {
        tokio::task::block_in_place(|| send_offer(d, stream, &released, listeners))
    } else {
        Err(io::Error::other(format!("only {} of {} workers gave their fds back", released.len(), workers)))
    };
    match r {
        Ok(flows) => {
            // The state files are the successor's now.
            if let Some(p) = &mut d.persist {
                p.hand_off();
            }
            Ok(flows)
        }
        Err(e) => {
            if let Err(e) = d.plane.resume(released) {
                tracing::error!("hand-over: restarting the workers: {e}");
            }
            Err(e)
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

    #[test]
    fn a_burst_of_asks_is_answered_each_time_and_logged_once() {
        let own = Ask { version: offer::VERSION, workers: 2, source_ports: 8, tap_offloads: true, udp_gro: true };
        let mut r = NotStopping::default();
        let t0 = Instant::now();
        for i in 0..50u32 {
            let (ours, theirs) = UnixStream::pair().unwrap();
            let now = t0 + Duration::from_millis(20 * u64::from(i));
            assert_eq!(r.logs_at(now), i == 0, "ask {i}");
            r.refuse(Successor { stream: ours, ask: own }, now);
            let line = fds::recv_line(&theirs, 4096).unwrap();
            assert!(line.contains("not stopping"), "every ask gets its answer: {line}");
        }
        assert_eq!(r.unlogged, 49);
        assert!(r.logs_at(t0 + NOT_STOPPING_QUIET + Duration::from_secs(1)));
    }
}
