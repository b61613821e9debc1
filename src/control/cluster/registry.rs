//! flannel's subnet registry on etcd, as flanneld's etcd subnet manager runs it: read
//! the network config, list the leases, take or reuse this node's lease, renew it.
//! Owns the key layout under the prefix; the JSON is [`super::flannel`]'s.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::flannel::{self, FlannelError, LeaseAttrs, NetworkConfig};
use crate::control::etcd::{EtcdClient, EtcdError, KeyValue};
use crate::core::Ipv4Net;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Flannel(#[from] FlannelError),
    #[error("{0} not found in etcd: write the network config first (etcdctl put {0} '{{\"Network\":…}}')")]
    NoConfig(String),
    #[error("network config: backend type '{0}' is not supported (ucanal speaks flannel's vxlan)")]
    Backend(String),
    #[error("subnet {subnet} is leased by {holder}, not by this node ({me})")]
    Taken { subnet: Ipv4Net, holder: Ipv4Addr, me: Ipv4Addr },
    #[error("subnet {subnet} does not fit the network config ({len} bits between {min} and {max})")]
    Incompatible { subnet: Ipv4Net, len: u8, min: Ipv4Addr, max: Ipv4Addr },
    #[error("gave up acquiring a subnet after {0} races with other nodes")]
    Races(usize),
}

/// flanneld's `raceRetries`.
const RACE_RETRIES: usize = 10;

/// A subnet lease as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetLease {
    pub subnet: Ipv4Net,
    pub attrs: LeaseAttrs,
    /// The etcd lease the key hangs on (0: a reservation, never expires).
    pub etcd_lease: i64,
    pub mod_revision: i64,
}

/// This node's own lease.
#[derive(Debug, Clone)]
pub struct OwnLease {
    pub subnet: Ipv4Net,
    pub attrs: LeaseAttrs,
    pub etcd_lease: i64,
    pub expires: Instant,
}

#[derive(Clone)]
pub struct Registry {
    pub client: EtcdClient,
    prefix: String,
    /// Lifetime of the leases this node writes (flannel: 24 h).
    pub ttl: Duration,
}

impl Registry {
    pub fn new(client: EtcdClient, prefix: &str, ttl: Duration) -> Registry {
        Registry { client, prefix: prefix.trim_end_matches('/').to_string(), ttl }
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }
    /// `<prefix>/subnets/`, the directory every node watches.
    pub fn subnets_dir(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }
    pub fn lease_key(&self, sn: Ipv4Net) -> String {
        format!("{}{}", self.subnets_dir(), flannel::subnet_key(sn))
    }

    pub async fn network_config(&self) -> Result<NetworkConfig, RegistryError> {
        let (kvs, _) = self.client.get(&self.config_key(), false).await?;
        let kv = kvs.first().ok_or_else(|| RegistryError::NoConfig(self.config_key()))?;
        let cfg = NetworkConfig::parse(&kv.value)?;
        if cfg.backend_type != "vxlan" {
            return Err(RegistryError::Backend(cfg.backend_type));
        }
        Ok(cfg)
    }

    /// Parses one stored key of the subnets directory.
    pub fn parse_lease(kv: &KeyValue) -> Result<SubnetLease, FlannelError> {
        let key = String::from_utf8_lossy(&kv.key);
        let subnet = flannel::parse_subnet_key(&key)?;
        let attrs = LeaseAttrs::parse(&key, &kv.value)?;
        Ok(SubnetLease { subnet, attrs, etcd_lease: kv.lease, mod_revision: kv.mod_revision })
    }

    /// Every lease (bad ones logged and skipped, as flanneld does) and the revision read.
    pub async fn leases(&self) -> Result<(Vec<SubnetLease>, i64), RegistryError> {
        let (kvs, rev) = self.client.get(&self.subnets_dir(), true).await?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            match Self::parse_lease(kv) {
                Ok(l) => out.push(l),
                Err(e) => tracing::warn!("ignoring bad subnet lease: {e}"),
            }
        }
        Ok((out, rev))
    }

    /// Writes the lease under a fresh etcd lease (flannel's `updateSubnet`: grant, put).
    async fn write(&self, subnet: Ipv4Net, attrs: &LeaseAttrs) -> Result<OwnLease, RegistryError> {
        let (id, ttl) = self.client.grant(self.ttl.as_secs()).await?;
        if let Err(e) = self.client.put(&self.lease_key(subnet), attrs.to_json().as_bytes(), id).await {
            let _ = self.client.revoke(id).await;
            return Err(e.into());
        }
        Ok(OwnLease { subnet, attrs: attrs.clone(), etcd_lease: id, expires: expiry(ttl) })
    }

    /// Creates the lease only if the subnet is free (flannel's `createSubnet`); `None`
    /// when another node took it first.
    async fn create(&self, subnet: Ipv4Net, attrs: &LeaseAttrs) -> Result<Option<OwnLease>, RegistryError> {
        let (id, ttl) = self.client.grant(self.ttl.as_secs()).await?;
        match self.client.create(&self.lease_key(subnet), attrs.to_json().as_bytes(), id).await {
            Ok(true) => Ok(Some(OwnLease { subnet, attrs: attrs.clone(), etcd_lease: id, expires: expiry(ttl) })),
            Ok(false) => {
                let _ = self.client.revoke(id).await;
                Ok(None)
            }
            Err(e) => {
                let _ = self.client.revoke(id).await;
                Err(e.into())
            }
        }
    }

    /// Takes this node's lease as flanneld does: reuse the lease whose `PublicIP` is
    /// ours if it fits the config (and `wanted`, the configured pod CIDR, if any); else
    /// claim `wanted` or a random free subnet, create-if-absent, retrying lost races.
    pub async fn acquire(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        wanted: Option<Ipv4Net>,
        random: u64,
    ) -> Result<OwnLease, RegistryError> {
        if let Some(w) = wanted
            && !cfg.compatible(w)
        {
            let (len, min, max) = (cfg.subnet_len, cfg.subnet_min, cfg.subnet_max);
            return Err(RegistryError::Incompatible { subnet: w, len, min, max });
        }
        for attempt in 0..RACE_RETRIES {
            let (leases, _) = self.leases().await?;
            if let Some(mine) = leases.iter().find(|l| l.attrs.public_ip == attrs.public_ip) {
                if cfg.compatible(mine.subnet) && wanted.is_none_or(|w| w == mine.subnet) {
                    tracing::info!("found lease {} for {}, reusing", mine.subnet, attrs.public_ip);
                    return self.write(mine.subnet, attrs).await;
                }
                tracing::warn!("lease {} of {} does not fit the config, deleting", mine.subnet, attrs.public_ip);
                self.client.delete(&self.lease_key(mine.subnet)).await?;
                continue;
            }
            let subnet = match wanted {
                Some(w) => {
                    if let Some(other) = leases.iter().find(|l| l.subnet.overlaps(&w)) {
                        return Err(RegistryError::Taken {
                            subnet: w,
                            holder: other.attrs.public_ip,
                            me: attrs.public_ip,
                        });
                    }
                    w
                }
                None => cfg.allocate(leases.iter().map(|l| &l.subnet), random.wrapping_add(attempt as u64))?,
            };
            if let Some(own) = self.create(subnet, attrs).await? {
                tracing::info!("allocated lease {subnet} to {}", attrs.public_ip);
                return Ok(own);
            }
        }
        Err(RegistryError::Races(RACE_RETRIES))
    }

    /// Renews the lease: a keep-alive of its etcd lease, which writes nothing (flannel's
    /// `RenewLease` puts the value again, a watch event at every node each renewal); when
    /// that etcd lease is gone, [`Self::reclaim`].
    pub async fn renew(&self, own: &mut OwnLease) -> Result<(), RegistryError> {
        match self.client.keep_alive(own.etcd_lease).await? {
            ttl if ttl > 0 => {
                own.expires = expiry(ttl);
                Ok(())
            }
            _ => self.reclaim(own).await,
        }
    }

    /// Writes the lease again under a new etcd lease (flannel's `RenewLease`): after it
    /// expired, or when someone deleted the key.
    pub async fn reclaim(&self, own: &mut OwnLease) -> Result<(), RegistryError> {
        let old = own.etcd_lease;
        *own = self.write(own.subnet, &own.attrs.clone()).await?;
        // The key moved to the new etcd lease; the old one would expire harmlessly anyway.
        let _ = self.client.revoke(old).await;
        Ok(())
    }

    /// Removes this node's lease (on a clean leave).
    pub async fn release(&self, own: &OwnLease) -> Result<(), RegistryError> {
        self.client.delete(&self.lease_key(own.subnet)).await?;
        let _ = self.client.revoke(own.etcd_lease).await;
        Ok(())
    }
}

fn expiry(ttl: i64) -> Instant {
    Instant::now() + Duration::from_secs(ttl.max(0) as u64)
}

/// When to renew: `margin` before expiry (flannel's renew margin), but never later than
/// half the lifetime, so short test TTLs renew too.
pub fn renew_at(own: &OwnLease, ttl: Duration, margin: Duration) -> Instant {
    let margin = margin.min(ttl / 2);
    own.expires.checked_sub(margin).unwrap_or_else(Instant::now)
}
