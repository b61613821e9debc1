//! The node's membership at runtime: keeps its own lease alive, and keeps the set of
//! peers equal to the leases under `<prefix>/subnets/` — list, then watch from the
//! listed revision; a watch that breaks or falls behind compaction re-lists. The set is
//! published whole on a `watch` channel (bursts coalesce into one table rebuild) and the
//! status (leases, ages, expiries, outage counters) is readable without any daemon lock.
//!
//! etcd is control plane only: while it is unreachable nothing is published, so the
//! dataplane keeps its last tables; the outage is logged once and counted, and the loop
//! reconnects with exponential backoff (100 ms .. 5 s, as flanneld).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::registry::{OwnLease, Registry, RegistryError, SubnetLease};
use crate::api::PeerRow;
use crate::control::etcd::{EtcdError, WatchEvent, WatchMessage};
use crate::core::Ipv4Net;
use crate::core::tables::Peer;

/// A peer learnt from a lease, with what `show peers` says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasePeer {
    pub peer: Peer,
    pub etcd_lease: i64,
    pub since: SystemTime,
    /// `None`: a reservation (no etcd lease) or the TTL could not be read.
    pub expires: Option<SystemTime>,
}

pub type PeerSet = Arc<BTreeMap<Ipv4Net, LeasePeer>>;

/// What the member knows, for listings and metrics.
pub type Status = crate::api::ClusterStatus;

/// Why a lease gives no peer (all but this node's own are counted as ignored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum NotAPeer {
    #[error("backend {0}")]
    Backend(String),
    #[error("this node's own")]
    Own,
    #[error("overlaps this node's {0}")]
    Overlaps(Ipv4Net),
}

pub struct Member {
    pub registry: Registry,
    pub own: OwnLease,
    pub me: Ipv4Addr,
    pub renew_margin: Duration,
    pub peers_tx: watch::Sender<PeerSet>,
    pub status: Arc<Mutex<Status>>,
    peers: BTreeMap<Ipv4Net, LeasePeer>,
    down_since: Option<Instant>,
    backoff: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a quiet watch checks that etcd still answers.
const HEALTH_EVERY: Duration = Duration::from_secs(2);

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Member {
    pub fn new(registry: Registry, own: OwnLease, renew_margin: Duration) -> (Member, watch::Receiver<PeerSet>) {
        let (peers_tx, rx) = watch::channel(PeerSet::default());
        let exp = SystemTime::now() + own.expires.saturating_duration_since(Instant::now());
        let status = Status {
            connected: true,
            own_subnet: Some(own.subnet),
            own_expires: Some(unix_secs(exp)),
            ..Default::default()
        };
        let me = own.attrs.public_ip;
        let m = Member {
            registry,
            own,
            me,
            renew_margin,
            peers_tx,
            status: Arc::new(Mutex::new(status)),
            peers: BTreeMap::new(),
            down_since: None,
            backoff: BACKOFF_MIN,
        };
        (m, rx)
    }

    fn status(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s)
        }
    }

    /// Runs until the task is aborted.
    pub async fn run(mut self) {
        loop {
            if let Err(e) = self.session().await {
                if self.down_since.is_none() {
                    self.down_since = Some(Instant::now());
                    tracing::error!("{e}; the dataplane keeps its last tables, retrying");
                    self.status(|s| {
                        s.connected = false;
                        s.outages += 1;
                    });
                } else {
                    tracing::debug!("etcd still unreachable: {e}");
                }
                self.status(|s| s.last_error = Some(e.to_string()));
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// One connection's life: renew if due, re-list, then follow the watch until it
    /// breaks. Returns `Ok` to re-list at once (compaction), `Err` when etcd failed.
    async fn session(&mut self) -> Result<(), RegistryError> {
        self.renew_if_due().await?;
        let (leases, rev) = self.registry.leases().await?;
        self.status(|s| {
            s.connected = true;
            s.relists += 1;
            s.last_error = None;
        });
        if let Some(t) = self.down_since.take() {
            tracing::info!(
                "etcd back after {:.1}s: re-listed {} leases at revision {rev}",
                t.elapsed().as_secs_f64(),
                leases.len()
            );
        }
        self.backoff = BACKOFF_MIN;
        self.replace_all(leases).await;
        let mut stream = self.registry.client.watch(&self.registry.subnets_dir(), rev + 1).await?;
        loop {
            let renew = tokio::time::Instant::from_std(super::registry::renew_at(
                &self.own,
                self.registry.ttl,
                self.renew_margin,
            ));
            let msg = tokio::select! {
                m = stream.next() => m?,
                _ = tokio::time::sleep_until(renew) => {
                    self.renew_if_due().await?;
                    continue;
                }
                // A partition leaves the watch connection silent rather than closed: ask
                // etcd something small now and then, and start over when it does not answer.
                _ = tokio::time::sleep(HEALTH_EVERY) => {
                    self.registry.client.get(&self.registry.config_key(), false).await?;
                    continue;
                }
            };
            match msg {
                WatchMessage::Created => {}
                WatchMessage::Events(evs) => self.apply_events(evs).await?,
                WatchMessage::Compacted { compact_revision } => {
                    tracing::warn!("etcd watch fell behind compaction (revision {compact_revision}), re-listing");
                    return Ok(());
                }
                WatchMessage::Canceled(why) => {
                    return Err(EtcdError::Unreachable {
                        endpoints: self.registry.client.endpoints().join(","),
                        reason: format!("watch canceled: {why}"),
                    }
                    .into());
                }
            }
        }
    }

    async fn renew_if_due(&mut self) -> Result<(), RegistryError> {
        let at = super::registry::renew_at(&self.own, self.registry.ttl, self.renew_margin);
        if Instant::now() >= at {
            self.registry.renew(&mut self.own).await?;
            tracing::info!(subnet = %self.own.subnet, "lease renewed");
            let exp = SystemTime::now() + self.own.expires.saturating_duration_since(Instant::now());
            self.status(|s| s.own_expires = Some(unix_secs(exp)));
        }
        Ok(())
    }

    /// A lease this node takes as a peer, or why not.
    fn admit(&self, l: &SubnetLease) -> Result<Peer, NotAPeer> {
        let Some(vx) = l.attrs.vxlan else {
            return Err(NotAPeer::Backend(l.attrs.backend_type.clone()));
        };
        if l.subnet == self.own.subnet || l.attrs.public_ip == self.me {
            return Err(NotAPeer::Own);
        }
        if l.subnet.overlaps(&self.own.subnet) {
            return Err(NotAPeer::Overlaps(self.own.subnet));
        }
        Ok(Peer {
            name: l.attrs.public_ip.to_string(),
            subnet: l.subnet,
            public_ip: l.attrs.public_ip,
            vtep_mac: vx.vtep_mac,
        })
    }

    async fn learn(&mut self, l: &SubnetLease) {
        match self.admit(l) {
            Ok(peer) => {
                let expires = match l.etcd_lease {
                    0 => None,
                    id => match self.registry.client.time_to_live(id).await {
                        Ok(ttl) if ttl >= 0 => Some(SystemTime::now() + Duration::from_secs(ttl as u64)),
                        _ => None,
                    },
                };
                let since = match self.peers.get(&l.subnet) {
                    Some(old) if old.peer == peer => old.since,
                    _ => {
                        tracing::info!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "peer added from lease");
                        SystemTime::now()
                    }
                };
                self.peers.insert(l.subnet, LeasePeer { peer, etcd_lease: l.etcd_lease, since, expires });
            }
            Err(why) => {
                if self.peers.remove(&l.subnet).is_some() {
                    tracing::info!(subnet = %l.subnet, "peer removed: lease now {why}");
                }
                if why != NotAPeer::Own {
                    tracing::debug!(subnet = %l.subnet, "lease ignored: {why}");
                    self.status(|s| s.ignored += 1);
                }
            }
        }
    }

    async fn replace_all(&mut self, leases: Vec<SubnetLease>) {
        let before = self.peers.clone();
        self.peers.clear();
        for l in &leases {
            if let Some(old) = before.get(&l.subnet) {
                self.peers.insert(l.subnet, old.clone());
            }
            self.learn(l).await;
        }
        for gone in before.keys().filter(|k| !self.peers.contains_key(k)) {
            tracing::info!(subnet = %gone, "peer removed: lease gone while etcd was unwatched");
        }
        if !leases.iter().any(|l| l.subnet == self.own.subnet && l.attrs.public_ip == self.me) {
            self.own_lease_lost().await;
        }
        self.publish();
    }

    async fn apply_events(&mut self, evs: Vec<WatchEvent>) -> Result<(), RegistryError> {
        for ev in evs {
            match ev {
                WatchEvent::Put(kv) => match Registry::parse_lease(&kv) {
                    Ok(l) => self.learn(&l).await,
                    Err(e) => {
                        tracing::warn!("ignoring bad subnet lease: {e}");
                        self.status(|s| s.ignored += 1);
                    }
                },
                WatchEvent::Delete { key, .. } => {
                    let key = String::from_utf8_lossy(&key);
                    let Ok(sn) = super::flannel::parse_subnet_key(&key) else { continue };
                    if sn == self.own.subnet {
                        self.own_lease_lost().await;
                    } else if let Some(p) = self.peers.remove(&sn) {
                        tracing::info!(subnet = %sn, public_ip = %p.peer.public_ip, "peer removed: lease deleted or expired");
                    }
                }
            }
        }
        self.publish();
        Ok(())
    }

    /// Someone deleted this node's lease (or it expired): say so loudly and claim the
    /// same subnet again, create-if-absent, so a node that took it meanwhile wins.
    async fn own_lease_lost(&mut self) {
        self.status(|s| s.own_lease_lost += 1);
        tracing::error!(subnet = %self.own.subnet, "THIS NODE'S LEASE WAS DELETED OR EXPIRED in etcd; claiming it again");
        match self.registry.reclaim(&mut self.own).await {
            Ok(()) => tracing::warn!(subnet = %self.own.subnet, "lease re-claimed"),
            Err(e) => tracing::error!(subnet = %self.own.subnet, "re-claiming the lease failed: {e}"),
        }
    }

    fn publish(&self) {
        let set: PeerSet = Arc::new(self.peers.clone());
        self.peers_tx.send_if_modified(|cur| {
            if **cur == *set {
                return false;
            }
            *cur = set;
            true
        });
    }
}

pub fn peer_rows(set: &PeerSet, prefix: &str, static_peers: &[Peer]) -> Vec<PeerRow> {
    let now = SystemTime::now();
    let mut rows: Vec<PeerRow> = static_peers
        .iter()
        .map(|p| PeerRow {
            subnet: p.subnet,
            public_ip: p.public_ip,
            vtep_mac: p.vtep_mac.to_string(),
            source: "config".into(),
            lease: "-".into(),
            age_secs: 0,
            expires_secs: None,
        })
        .collect();
    rows.extend(set.values().map(|l| PeerRow {
        subnet: l.peer.subnet,
        public_ip: l.peer.public_ip,
        vtep_mac: l.peer.vtep_mac.to_string(),
        source: "etcd".into(),
        lease: format!("{}/subnets/{}", prefix.trim_end_matches('/'), super::flannel::subnet_key(l.peer.subnet)),
        age_secs: now.duration_since(l.since).map(|d| d.as_secs()).unwrap_or(0),
        expires_secs: l.expires.map(|e| e.duration_since(now).map(|d| d.as_secs()).unwrap_or(0)),
    }));
    rows.sort_by_key(|r| r.subnet);
    rows
}
