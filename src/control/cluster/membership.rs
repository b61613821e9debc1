//! The daemon's side of cluster membership: joining at start (network config checked
//! against the node's, lease taken before anything is created), applying the peer set
//! the member publishes, and the `show peers` listing.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, watch};

use crate::control::cluster::flannel::LeaseAttrs;
pub(crate) use crate::control::cluster::member::PeerSet;
use crate::control::cluster::member::{self, Member, Status};
use crate::control::cluster::registry::Registry;
use crate::control::config::{Config, ConfigError};
use crate::control::daemon::{Daemon, RunError, setup};
use crate::control::etcd::EtcdClient;
use crate::control::kube::sync::ObjectStore;

/// What the daemon keeps of its membership.
pub(crate) struct Membership {
    pub prefix: String,
    pub status: Arc<StdMutex<Status>>,
    pub peers: PeerSet,
}

fn conflict(field: &str, problem: String) -> RunError {
    RunError::Config(ConfigError { field: field.into(), problem })
}

/// Joins the cluster named by `[cluster]`: reads `<prefix>/config`, checks it against
/// `[node]`, takes the node's lease for `node.pod_cidr` (or, without one, reuses this
/// node's lease or claims a free subnet, as flanneld does). `None` without `[cluster]`.
pub(crate) async fn join(cfg: &Config, random: u64) -> Result<Option<(Member, watch::Receiver<PeerSet>)>, RunError> {
    let Some(c) = &cfg.cluster else { return Ok(None) };
    let client = EtcdClient::new(&c.etcd_endpoints).map_err(setup)?;
    let registry = Registry::new(client, &c.prefix, Duration::from_secs(c.lease_ttl));
    let net = registry.network_config().await.map_err(|e| setup(format!("joining the cluster: {e}")))?;
    let n = &cfg.node;
    if net.network != n.cluster_cidr {
        return Err(conflict(
            "node.cluster_cidr",
            format!("{} differs from Network {} in {}", n.cluster_cidr, net.network, registry.config_key()),
        ));
    }
    if (net.vni, net.port) != (n.vni, n.vxlan_port) {
        return Err(conflict(
            "node.vni",
            format!(
                "VNI {} port {} differ from Backend VNI {} Port {} in {}",
                n.vni,
                n.vxlan_port,
                net.vni,
                net.port,
                registry.config_key()
            ),
        ));
    }
    let attrs = LeaseAttrs::vxlan(n.node_ip, n.vni, n.vtep_mac);
    let own = registry
        .acquire(&net, &attrs, n.pod_cidr, random)
        .await
        .map_err(|e| setup(format!("joining the cluster: {e}")))?;
    tracing::info!(subnet = %own.subnet, key = %registry.lease_key(own.subnet), "cluster lease held");
    Ok(Some(Member::new(registry, own, Duration::from_secs(c.renew_margin))))
}

/// The config with its pod CIDR settled (the leased subnet when the config has none,
/// every pod checked against it) and where the CIDR came from, for `show node`.
pub(crate) fn settle_pod_cidr(
    cfg: Config,
    joined: &crate::control::daemon::start::Joined,
) -> Result<(Config, String), RunError> {
    let lease = joined.as_ref().map(|(m, _)| (m.own.subnet, m.registry.lease_key(m.own.subnet)));
    match (cfg.node.pod_cidr, lease) {
        (Some(_), None) => Ok((cfg, "config".into())),
        (Some(_), Some((_, key))) => Ok((cfg, format!("config, leased in etcd as {key}"))),
        (None, Some((subnet, key))) => {
            let cfg = cfg.with_leased_pod_cidr(subnet).map_err(RunError::Config)?;
            tracing::info!(%subnet, %key, "pod CIDR leased from etcd (none configured)");
            Ok((cfg, format!("etcd lease {key} (none configured)")))
        }
        (None, None) => Err(conflict("node.pod_cidr", "missing, and no [cluster] to lease one from".into())),
    }
}

/// Runs the member and applies each peer set it publishes (one snapshot per set,
/// however many leases changed in between).
pub(crate) fn spawn(member: Member, mut rx: watch::Receiver<PeerSet>, d: Arc<Mutex<Daemon>>, prefix: String) {
    let status = member.status.clone();
    let d2 = d.clone();
    let objects_prefix = d.try_lock().ok().and_then(|g| g.cfg.cluster.as_ref().map(|c| c.objects_prefix.clone()));
    let store = ObjectStore::new(member.registry.client.clone(), &objects_prefix.unwrap_or_else(|| "/ucanal".into()));
    let (otx, mut orx) = mpsc::channel(64);
    tokio::spawn(store.clone().sync(otx));
    let d3 = d.clone();
    tokio::spawn(async move {
        // An update costs what it changes, so nothing waits to batch: whatever the watch
        // has queued meanwhile goes with it (one publish, one steering sync).
        while let Some(u) = orx.recv().await {
            let mut batch = vec![u];
            while let Ok(more) = orx.try_recv() {
                batch.push(more);
            }
            d3.lock().await.objects_update(batch).await;
        }
    });
    tokio::spawn(async move {
        {
            let mut g = d2.lock().await;
            g.membership = Some(Membership { prefix, status, peers: PeerSet::default() });
            g.objects = Some(store);
        }
        tokio::spawn(member.run());
        while rx.changed().await.is_ok() {
            let set = rx.borrow_and_update().clone();
            d2.lock().await.set_lease_peers(set);
        }
    });
}

impl Daemon {
    fn set_lease_peers(&mut self, set: PeerSet) {
        if let Some(m) = &mut self.membership {
            m.peers = set;
        }
        self.rebuild();
    }

    /// The peers the tables are built from: the config's, then the leases' that do not
    /// clash with one of them (the config wins; a clash is logged).
    pub(crate) fn all_peers(&self) -> Vec<crate::core::tables::Peer> {
        let mut out = self.cfg.peers.clone();
        if let Some(m) = &self.membership {
            for l in m.peers.values() {
                if let Some(p) = self.cfg.peers.iter().find(|p| p.subnet.overlaps(&l.peer.subnet)) {
                    tracing::warn!(subnet = %l.peer.subnet, "lease ignored: overlaps config peer {}", p.name);
                    continue;
                }
                out.push(l.peer.clone());
            }
        }
        out
    }

    pub(crate) fn show_peers(&self) -> serde_json::Value {
        let (rows, status) = match &self.membership {
            Some(m) => {
                (member::peer_rows(&m.peers, &m.prefix, &self.cfg.peers), m.status.lock().map(|s| s.clone()).ok())
            }
            None => (member::peer_rows(&PeerSet::default(), "", &self.cfg.peers), None),
        };
        serde_json::json!({ "peers": rows, "cluster": status })
    }
}
