//! What a node in a cluster follows while it runs: the flannel leases of its peers and
//! the Kubernetes objects in etcd, each on a task of its own that takes the daemon's
//! lock only to apply what changed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, watch};

use crate::control::cluster::member::{Member, PeerSet};
use crate::control::cluster::membership::Membership;
use crate::control::etcd::EtcdClient;
use crate::control::kube::sync::ObjectStore;
use crate::control::state::Daemon;

/// Runs the member and applies each peer set it publishes (one snapshot per set,
/// however many leases changed in between).
pub fn peers(member: Member, mut rx: watch::Receiver<PeerSet>, d: Arc<Mutex<Daemon>>, prefix: String) {
    let status = member.status.clone();
    tokio::spawn(async move {
        d.lock().await.cluster = Some(Membership::new(prefix, status));
        tokio::spawn(member.run());
        while rx.changed().await.is_ok() {
            let set = rx.borrow_and_update().clone();
            let mut g = d.lock().await;
            if let Some(m) = &mut g.cluster {
                m.set_peers(set);
            }
            g.publish();
        }
    });
}

/// In a cluster: lists then watches the objects in etcd (below `prefix`), applies what
/// the watch brings, and makes `apply` write there.
pub fn objects(client: EtcdClient, prefix: &str, d: Arc<Mutex<Daemon>>) {
    let store = ObjectStore::new(client, prefix);
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(store.clone().sync(tx));
    tokio::spawn(async move {
        d.lock().await.kube.shared = Some(store.clone());
        // An update costs what it changes, so nothing waits to batch: whatever the watch
        // has queued meanwhile goes with it (one publish, one steering sync). Only this
        // node's own write in flight is waited for (at most HOLD): its transactions come
        // back one watch message each, and a table rebuild per message cost more than
        // the write (100,000 services: 32 rebuilds, 2.9 s).
        const HOLD: Duration = Duration::from_secs(3);
        while let Some(u) = rx.recv().await {
            let mut batch = vec![u];
            let until = tokio::time::Instant::now() + HOLD;
            store.written(until).await;
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            d.lock().await.objects_update(batch).await;
        }
    });
}
