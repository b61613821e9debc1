//! The API server and the conntrack sweeper: what a hand-over pauses besides the
//! workers. The listeners are kept here (the server works on duplicates), so they can
//! be handed over, or served again.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::{Mutex, mpsc};

use super::maintenance::Sweeper;
use super::server::{self, Shared};
use crate::control::handover::Successor;
use crate::control::state::Daemon;
use crate::core::Dataplane;

/// The API server and the sweeper, running or paused.
pub struct Serving {
    shared: Shared,
    dp: Arc<Dataplane>,
    block: usize,
    checkpoint: Option<PathBuf>,
    listeners: Vec<OwnedFd>,
    server: Option<tokio::task::JoinHandle<()>>,
    sweeper: Option<Sweeper>,
}

impl Serving {
    pub fn start(
        listeners: Vec<UnixListener>,
        daemon: Arc<Mutex<Daemon>>,
        successors: mpsc::Sender<Successor>,
    ) -> io::Result<Serving> {
        let (dp, block, checkpoint) = {
            let d = daemon.try_lock().map_err(io::Error::other)?;
            let p = d.plane();
            (p.dp().clone(), p.maintenance_block(), d.persist.as_ref().map(|p| p.paths().conntrack.clone()))
        };
        let listeners = listeners.into_iter().map(|l| l.into_std().map(OwnedFd::from)).collect::<io::Result<_>>()?;
        let shared = Shared { daemon, successors };
        let mut s = Serving { shared, dp, block, checkpoint, listeners, server: None, sweeper: None };
        s.spawn()?;
        Ok(s)
    }

    pub fn spawn(&mut self) -> io::Result<()> {
        let ls = self
            .listeners
            .iter()
            .map(|fd| UnixListener::from_std(std::os::unix::net::UnixListener::from(fd.try_clone()?)))
            .collect::<io::Result<Vec<_>>>()?;
        self.sweeper = Some(Sweeper::spawn(self.dp.clone(), self.block, self.checkpoint.clone())?);
        self.server = Some(tokio::spawn(server::serve(ls, self.shared.clone())));
        Ok(())
    }

    /// The API listeners (to hand over).
    pub fn listeners(&self) -> &[OwnedFd] {
        &self.listeners
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
