//! The daemon's side of cluster membership: joining at start (network config checked
//! against the node's, lease taken before anything is created), following the peer set
//! the member publishes, and the `show peers` listing.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::sync::watch;

use super::flannel::LeaseAttrs;
use super::member::{self, Member, PeerSet};
use super::registry::Registry;
use crate::api::{ClusterStatus, PeersReport};
use crate::control::config::{Config, ConfigError};
use crate::control::error::RunError;
use crate::control::etcd::EtcdClient;
use crate::core::tables::Peer;

/// The node's membership, as the daemon keeps it: the peers the leases give, and the
/// member's status (written by the member, read without the daemon's lock).
pub struct Membership {
    prefix: String,
    status: Arc<StdMutex<ClusterStatus>>,
    peers: PeerSet,
}

/// A joined member and the peer sets it will publish.
pub type Joined = (Member, watch::Receiver<PeerSet>);

fn conflict(field: &str, problem: String) -> RunError {
    RunError::Config(ConfigError { field: field.into(), problem })
}

/// Joins the cluster named by `[cluster]`: reads `<prefix>/config`, checks it against
/// `[node]`, takes the node's lease for `node.pod_cidr` (or, without one, reuses this
/// node's lease or claims a free subnet, as flanneld does). `None` without `[cluster]`.
pub async fn join(cfg: &Config, random: u64) -> Result<Option<Joined>, RunError> {
    let Some(c) = &cfg.cluster else { return Ok(None) };
    let client = EtcdClient::connect(&c.etcd_endpoints).await?;
    let registry = Registry::new(client, &c.prefix, Duration::from_secs(c.lease_ttl));
    let net = registry.network_config().await?;
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
    let own = registry.acquire(&net, &attrs, n.pod_cidr, random).await?;
    tracing::info!(subnet = %own.subnet, key = %registry.lease_key(own.subnet), "cluster lease held");
    Ok(Some(Member::new(registry, own, Duration::from_secs(c.renew_margin))))
}

/// The config with its pod CIDR settled (the leased subnet when the config has none,
/// every pod checked against it) and where the CIDR came from, for `show node`.
pub fn settle_pod_cidr(cfg: Config, joined: &Option<Joined>) -> Result<(Config, String), RunError> {
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

impl Membership {
    /// `prefix`: flannel's registry prefix; `status`: the member's, as it writes it.
    pub fn new(prefix: String, status: Arc<StdMutex<ClusterStatus>>) -> Membership {
        Membership { prefix, status, peers: PeerSet::default() }
    }

    /// The leases' peers, as the member last published them.
    pub fn set_peers(&mut self, peers: PeerSet) {
        self.peers = peers;
    }

    /// The peers the leases give that do not clash with a config peer (the config
    /// wins; a clash is logged).
    pub fn lease_peers<'a>(&'a self, config_peers: &'a [Peer]) -> impl Iterator<Item = Peer> + 'a {
        self.peers.values().filter_map(move |l| {
            if let Some(p) = config_peers.iter().find(|p| p.subnet.overlaps(&l.peer.subnet)) {
                tracing::warn!(subnet = %l.peer.subnet, "lease ignored: overlaps config peer {}", p.name);
                return None;
            }
            Some(l.peer.clone())
        })
    }
}

/// `show peers`: the config's peers and the leases', with the membership's status.
pub fn peers_report(m: Option<&Membership>, config_peers: &[Peer]) -> PeersReport {
    match m {
        Some(m) => PeersReport {
            peers: member::peer_rows(&m.peers, &m.prefix, config_peers),
            cluster: m.status.lock().map(|s| s.clone()).ok(),
        },
        None => PeersReport { peers: member::peer_rows(&PeerSet::default(), "", config_peers), cluster: None },
    }
}
