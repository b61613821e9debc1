//! Kubernetes objects shared through etcd: `ucanal apply` writes them under
//! `<objects prefix>/objects/` (JSON, ucanal's stored form; several objects per key, see
//! [`super::buckets`]), and every node lists then watches that directory, as kube-proxy
//! watches the API server. Owns the writes and the sync loop; the layout is
//! [`super::buckets`]', the objects [`crate::control::kube`]'s.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::buckets::{Change, Index, Plan, bucket_key};
use crate::api::kube::Object;
use crate::control::etcd::{EtcdClient, EtcdError, Op, Unchanged, WatchEvent, WatchMessage};

/// etcd's default `--max-txn-ops`: the most operations (and comparisons) one
/// transaction may carry.
const TXN_OPS: usize = 128;
/// The most bytes of keys and values one transaction carries: etcd refuses a request
/// over `--max-request-bytes` (1.5 MiB by default), and over gRPC a transaction is its
/// bytes and a few per operation, so 1 MiB leaves room. (Through etcd's JSON gateway the
/// cap was 256 KiB: the gateway's re-encoding of every value made a loaded etcd answer
/// 8 MiB in flight slower than the request deadline.) Bigger transactions are fewer raft
/// entries: 100,000 services are ~25 transactions instead of ~100.
const TXN_BYTES: usize = 1 << 20;
/// Transactions in flight, multiplexed on the one HTTP/2 connection. etcd applies them
/// one after the other: 4, 8 and 16 wrote 100,000 services in the same time, so the
/// fewest that keep etcd busy (at most 4 MiB queued there).
const TXNS_IN_FLIGHT: usize = 4;
/// How often a write whose buckets changed under it is planned again.
const ATTEMPTS: usize = 5;
/// How long a write waits for the watch to have seen it (the next write plans on it).
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);
/// A quiet watch checks that etcd still answers this often.
const HEALTH_EVERY: Duration = Duration::from_secs(2);
/// Reconnecting: the first wait, doubled up to the last.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the sync loop hands the daemon.
#[derive(Debug)]
pub enum ObjectUpdate {
    /// Everything stored (after a (re)connect): replaces the node's objects.
    Snapshot(Vec<Object>),
    /// Changes of one watch message: objects put, keys (`services/ns/name`) deleted.
    Changes { put: Vec<Object>, deleted: Vec<String> },
}

#[derive(Clone)]
pub struct ObjectStore {
    pub client: EtcdClient,
    dir: String,
    /// What the watch has seen, shared with the writes (which rewrite whole buckets).
    index: Arc<Mutex<Index>>,
    /// Writes of this node in flight (see [`ObjectStore::writing`]), and who waits for
    /// the last one to end.
    writes: Arc<(AtomicUsize, Notify)>,
}

/// Counts a write in flight for as long as it lives.
struct Writing(Arc<(AtomicUsize, Notify)>);

impl Drop for Writing {
    fn drop(&mut self) {
        if self.0.0.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.1.notify_waiters();
        }
    }
}

/// One transaction of a write: bucket rewrites guarded by their revisions, old keys deleted.
struct Txn {
    guards: Vec<Unchanged>,
    ops: Vec<Op>,
    bytes: usize,
}

impl ObjectStore {
    pub fn new(client: EtcdClient, prefix: &str) -> ObjectStore {
        let dir = format!("{}/objects/", prefix.trim_end_matches('/'));
        ObjectStore { client, dir, index: Arc::default(), writes: Arc::default() }
    }

    /// Whether a write of this node is in flight: its watch then brings the objects
    /// back one transaction at a time, and the daemon applies them together once the
    /// write is over (one table rebuild instead of one per transaction).
    pub fn writing(&self) -> bool {
        self.writes.0.load(Ordering::Relaxed) > 0
    }

    /// Waits until no write of this node is in flight, or `until`.
    pub async fn written(&self, until: tokio::time::Instant) {
        let done = self.writes.1.notified();
        tokio::pin!(done);
        // Registered before the count is read, so the end of the last write is not missed.
        done.as_mut().enable();
        if self.writing() {
            tokio::select! {
                _ = done => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The transactions of a plan: at most [`TXN_OPS`] operations and about
    /// [`TXN_BYTES`] of values each.
    fn txns(&self, plan: Plan) -> Vec<Txn> {
        let mut out: Vec<Txn> = Vec::new();
        let mut push = |guard: Option<Unchanged>, op: Op| {
            let bytes = op.size();
            let fits = out.last().is_some_and(|t| t.ops.len() < TXN_OPS && t.bytes + bytes <= TXN_BYTES);
            if !fits {
                out.push(Txn { guards: Vec::new(), ops: Vec::new(), bytes: 0 });
            }
            let t = out.last_mut().expect("pushed");
            t.guards.extend(guard);
            t.ops.push(op);
            t.bytes += bytes;
        };
        for w in plan.buckets {
            let key = format!("{}{}", self.dir, bucket_key(w.bucket));
            let guard = Unchanged { key: key.clone(), mod_revision: w.rev };
            match w.value {
                Some(value) => push(Some(guard), Op::Put { key, value }),
                None => push(Some(guard), Op::Delete { key }),
            }
        }
        for k in plan.singles {
            push(None, Op::Delete { key: format!("{}{k}", self.dir) });
        }
        out
    }

    /// Writes (or deletes) the objects: the buckets they change, each rewritten whole in
    /// transactions of at most 128 operations, several in flight. A bucket changed by
    /// someone else since the watch saw it fails its transaction's comparison: once the
    /// watch has caught up the write is planned again (what went through is then
    /// unchanged and not written twice). The first error stops it: with etcd
    /// unreachable nothing is written.
    pub async fn write(&self, objs: &[Object], delete: bool) -> Result<usize, EtcdError> {
        use futures::StreamExt as _;
        self.writes.0.fetch_add(1, Ordering::Relaxed);
        let _writing = Writing(self.writes.clone());
        for _ in 0..ATTEMPTS {
            let plan = self.index().plan(objs, delete);
            if plan == Plan::default() {
                return Ok(objs.len());
            }
            let txns: Vec<_> = self
                .txns(plan)
                .into_iter()
                .map(|t| {
                    let c = self.client.clone();
                    async move { c.txn_if(t.guards, t.ops).await }
                })
                .collect();
            // Several transactions in flight: etcd orders them, and distinct keys do not care.
            let n = txns.len();
            let mut results = futures::stream::iter(txns).buffer_unordered(TXNS_IN_FLIGHT);
            let (mut all_held, mut rev, mut done) = (true, 0, 0);
            while let Some(r) = results.next().await {
                let (held, r) = match r {
                    Ok(x) => x,
                    Err(e) if done == 0 => return Err(e),
                    Err(e) => return Err(EtcdError::Partial { written: done, of: n, source: Box::new(e) }),
                };
                done += 1;
                all_held &= held;
                rev = rev.max(r);
            }
            if all_held {
                return Ok(objs.len());
            }
            self.caught_up(rev).await;
        }
        Err(EtcdError::Unreachable {
            endpoints: self.client.endpoints().join(","),
            reason: format!("the objects kept changing under this write ({ATTEMPTS} attempts)"),
        })
    }

    /// Waits (up to [`CATCH_UP_WAIT`]) until the watch has seen revision `rev`.
    async fn caught_up(&self, rev: i64) {
        let t = tokio::time::Instant::now();
        while self.index().rev < rev && t.elapsed() < CATCH_UP_WAIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn rel<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(key).ok()?.strip_prefix(self.dir.as_str())
    }

    async fn session(&self, tx: &mpsc::Sender<ObjectUpdate>) -> Result<(), EtcdError> {
        let (mut kvs, rev) = self.client.get(&self.dir, true).await?;
        // In write order, so that of an object in two keys the later write wins.
        kvs.sort_by_key(|kv| kv.mod_revision);
        let (mut ix, mut ch) = (Index::default(), Change::default());
        for kv in &kvs {
            if let Some(rel) = self.rel(&kv.key) {
                ix.put(rel, &kv.value, kv.mod_revision, &mut ch);
            }
        }
        ix.rev = rev;
        *self.index() = ix;
        if tx.send(ObjectUpdate::Snapshot(ch.split().0)).await.is_err() {
            return Ok(());
        }
        let mut stream = self.client.watch(&self.dir, rev + 1).await?;
        loop {
            let msg = tokio::select! {
                m = stream.next() => m?,
                _ = tokio::time::sleep(HEALTH_EVERY) => {
                    self.client.get(&self.dir, false).await?;
                    continue;
                }
            };
            match msg {
                WatchMessage::Created => {}
                WatchMessage::Events(evs) => {
                    let mut ch = Change::default();
                    {
                        let mut ix = self.index();
                        for ev in evs {
                            match ev {
                                WatchEvent::Put(kv) => {
                                    if let Some(rel) = self.rel(&kv.key) {
                                        ix.put(rel, &kv.value, kv.mod_revision, &mut ch);
                                    }
                                }
                                WatchEvent::Delete { key, mod_revision } => {
                                    if let Some(rel) = self.rel(&key) {
                                        ix.delete(rel, mod_revision, &mut ch);
                                    }
                                }
                            }
                        }
                    }
                    let (put, deleted) = ch.split();
                    if tx.send(ObjectUpdate::Changes { put, deleted }).await.is_err() {
                        return Ok(());
                    }
                }
                WatchMessage::Compacted { .. } => return Ok(()),
                WatchMessage::Canceled(why) => {
                    return Err(EtcdError::Unreachable { endpoints: self.dir.clone(), reason: why });
                }
            }
        }
    }

    /// Lists and watches until the receiver goes away; reconnects with backoff.
    pub async fn sync(self, tx: mpsc::Sender<ObjectUpdate>) {
        let mut backoff = BACKOFF_MIN;
        while !tx.is_closed() {
            match self.session(&tx).await {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(e) => {
                    tracing::warn!("objects watch: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}
