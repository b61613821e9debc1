//! Restart by hand-over (`ucanal run --keep-on-exit`): after SIGTERM the old ucanal
//! keeps forwarding and waits (`--handover-wait`) on its API socket for a successor.
//! The successor asks (its version and worker shape), adopts the node's rules and
//! routes while the old one still forwards, then says `go`: the old one stops its API
//! server, sweeper and workers, and sends every live fd — the API listeners, the VXLAN
//! sockets (with their `UDP_GRO`), each worker's queue of the host port and of every
//! pod's TAP — with its state and conntrack over the connection (`SCM_RIGHTS`, see
//! `wire`). The successor starts its workers on the same fds and answers `running`;
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
use tokio::sync::Mutex;

pub use offer::Ask;
pub(crate) use successor::{Pending, Taken, ask, wait_gone};

use crate::api::Response;
use crate::control::daemon::Daemon;
use crate::control::daemon::maintenance::Sweeper;
use crate::core::nat::checkpoint;
use crate::core::{Dataplane, PortId};
use crate::io::clock;
use crate::io::worker::{Control, Released};

/// The start of the refusal a successor retries on (the old ucanal has not yet seen SIGTERM).
pub const NOT_STOPPING: &str = "hand-over refused: this ucanal is not stopping";

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error(transparent)]
    Wire(#[from] offer::WireError),
    #[error("hand-over: {0}")]
    Io(#[from] io::Error),
    #[error("hand-over offer: {0}")]
    Offer(String),
    #[error("{0}")]
    Refused(String),
    #[error("api.socket: another ucanal is listening on {0} and is not stopping (send it SIGTERM first)")]
    NotStopping(String),
}

/// A successor's ask, with its connection (blocking, with timeouts).
pub(crate) struct Successor {
    pub(crate) stream: UnixStream,
    pub(crate) ask: Ask,
}

/// Answers an ask with an error and closes the connection.
pub(crate) fn refuse(s: Successor, why: &str) {
    tracing::warn!("{why}");
    let mut line = serde_json::to_string(&Response::error(why)).unwrap_or_default();
    line.push('\n');
    let _ = fds::send_all(&s.stream, line.as_bytes());
}

/// Whether `ask` fits this ucanal (`own`); the refusal names the first difference.
pub(crate) fn fits(ask: &Ask, own: &Ask) -> Result<(), String> {
    let why = if ask.version != own.version {
        format!("version {}, this ucanal speaks version {}", ask.version, own.version)
    } else if ask.workers != own.workers {
        format!("the successor runs {} workers, this ucanal {}", ask.workers, own.workers)
    } else if ask.source_ports != own.source_ports {
        format!("dataplane.source_ports {} here, {} in the successor", own.source_ports, ask.source_ports)
    } else if (ask.tap_offloads, ask.udp_gro) != (own.tap_offloads, own.udp_gro) {
        format!(
            "offloads differ (TAP {} / UDP GRO {} here, {} / {} in the successor)",
            own.tap_offloads, own.udp_gro, ask.tap_offloads, ask.udp_gro
        )
    } else {
        return Ok(());
    };
    Err(format!("hand-over refused: {why}; restart cold instead"))
}

/// The API server and the conntrack sweeper: what a hand-over pauses besides the
/// workers. The listeners are kept here (the server works on duplicates), so they
/// can be handed over, or served again.
pub(crate) struct Services {
    daemon: Arc<Mutex<Daemon>>,
    dp: Arc<Dataplane>,
    block: usize,
    checkpoint: Option<PathBuf>,
    listeners: Vec<OwnedFd>,
    server: Option<tokio::task::JoinHandle<()>>,
    sweeper: Option<Sweeper>,
}

impl Services {
    pub(crate) fn start(
        listeners: Vec<UnixListener>,
        daemon: Arc<Mutex<Daemon>>,
        block: usize,
    ) -> io::Result<Services> {
        let (dp, checkpoint) = {
            let d = daemon.try_lock().map_err(io::Error::other)?;
            (d.dp.clone(), d.keep.as_ref().map(|k| k.conntrack.clone()))
        };
        let listeners = listeners.into_iter().map(|l| l.into_std().map(OwnedFd::from)).collect::<io::Result<_>>()?;
        let mut s = Services { daemon, dp, block, checkpoint, listeners, server: None, sweeper: None };
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
        self.server = Some(tokio::spawn(crate::control::daemon::server::serve(ls, self.daemon.clone())));
        Ok(())
    }

    /// Stops accepting and sweeping; the listeners stay open (connections wait in
    /// their backlog).
    pub(crate) fn pause(&mut self) {
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
pub(crate) enum Outcome {
    /// The successor runs on our fds: exit without a teardown.
    Handed,
    /// Refused, or the successor failed: this ucanal forwards on.
    Kept,
}

/// Serves one successor (see the module doc); `svc` is paused for the switch and
/// started again if it fails.
pub(crate) async fn serve(s: Successor, d: &Arc<Mutex<Daemon>>, svc: &mut Services) -> Outcome {
    let own = d.lock().await.shape();
    if let Err(why) = fits(&s.ask, &own) {
        refuse(s, &why);
        return Outcome::Kept;
    }
    let stream = s.stream;
    let go = tokio::task::spawn_blocking(move || {
        let mut line = serde_json::to_string(&Response::ok("hand-over accepted; send go")).unwrap_or_default();
        line.push('\n');
        let r = fds::send_all(&stream, line.as_bytes()).and_then(|()| fds::recv_line(&stream, 16));
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
    let released: Vec<Released> = g.workers.iter_mut().filter_map(|w| w.release()).collect();
    g.workers.clear();
    let r = if released.len() == own.workers {
        tokio::task::block_in_place(|| send_offer(&g, &stream, &released, &svc.listeners))
    } else {
        Err(io::Error::other(format!("only {} of {} workers gave their fds back", released.len(), own.workers)))
    };
    match r {
        Ok(flows) => {
            tracing::info!("hand-over: {flows} flows and every fd handed over in {:?}; exiting", t0.elapsed());
            // The state files are the successor's now.
            g.statefile = None;
            Outcome::Handed
        }
        Err(e) => {
            tracing::error!("hand-over failed after go ({e}); this ucanal forwards on");
            if let Err(e) = g.resume_workers(released) {
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
    let (entries, raw) = d.offer_fds(released, listeners);
    let state = serde_json::to_vec(&d.state()).map_err(io::Error::other)?;
    let flows = d.dp.conntrack.snapshot(clock::now());
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

impl Daemon {
    /// This ucanal's side of an [`Ask`].
    pub(crate) fn shape(&self) -> Ask {
        let tech = self.cfg.dataplane.techniques();
        Ask {
            version: offer::VERSION,
            workers: crate::control::daemon::workers_for(&self.cfg),
            source_ports: self.tx_ports.len(),
            tap_offloads: tech.tap_offloads,
            udp_gro: tech.udp_gro,
        }
    }

    /// Every fd to hand over, named.
    fn offer_fds(&self, released: &[Released], listeners: &[OwnedFd]) -> (Vec<offer::Entry>, Vec<RawFd>) {
        use offer::Entry;
        let mut e = vec![Entry::ApiSocket, Entry::ApiAbstract];
        let mut raw: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
        let tx = self.wio.as_ref().map(|w| w.1.sockets.clone()).unwrap_or_default();
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
            for p in &self.pods {
                if let Some(fd) = port(p.port) {
                    e.push(Entry::PodQueue(i, p.spec.name.clone()));
                    raw.push(fd.as_raw_fd());
                }
            }
        }
        (e, raw)
    }

    /// Starts the workers again on the fds they gave back (a failed hand-over).
    fn resume_workers(&mut self, released: Vec<Released>) -> io::Result<()> {
        let (rx, ports): (Vec<_>, Vec<_>) = released
            .into_iter()
            .map(|r| {
                let ports: Vec<(PortId, OwnedFd)> =
                    r.ports.into_iter().enumerate().filter_map(|(i, f)| f.map(|f| (PortId(i as u32), f))).collect();
                (r.rx, ports)
            })
            .unzip();
        self.spawn_workers(rx, ports)
    }

    /// Spawns one worker per receive socket, with its queues.
    pub(crate) fn spawn_workers(
        &mut self,
        rx: Vec<std::net::UdpSocket>,
        ports: Vec<Vec<(PortId, OwnedFd)>>,
    ) -> io::Result<()> {
        let Some((wcfg, pool)) = self.wio.clone() else { return Err(io::Error::other("no worker configuration")) };
        for (i, (rx, ports)) in rx.into_iter().zip(ports).enumerate() {
            let w = crate::io::worker::spawn(
                i,
                self.dp.clone(),
                rx,
                pool.clone(),
                self.obs.clone(),
                self.stats.clone(),
                wcfg,
            )
            .map_err(|e| io::Error::new(e.kind(), format!("starting worker {i}: {e}")))?;
            for (port, fd) in ports {
                w.send(Control::AddPort { port, fd });
            }
            self.workers.push(w);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ask_that_does_not_fit_is_refused_by_name() {
        let own = Ask { version: offer::VERSION, workers: 2, source_ports: 8, tap_offloads: true, udp_gro: true };
        assert_eq!(fits(&own, &own), Ok(()));
        let e = fits(&Ask { version: 7, ..own }, &own).unwrap_err();
        assert!(e.contains("version 7, this ucanal speaks version 1"), "{e}");
        let e = fits(&Ask { workers: 4, ..own }, &own).unwrap_err();
        assert!(e.contains("runs 4 workers, this ucanal 2"), "{e}");
        assert!(fits(&Ask { source_ports: 1, ..own }, &own).unwrap_err().contains("source_ports"));
        assert!(fits(&Ask { udp_gro: false, ..own }, &own).unwrap_err().contains("offloads differ"));
    }
}
