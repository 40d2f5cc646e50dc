//! This node's copy of the cluster's users and sessions, kept in its own
//! `meta.redb`: every change of the two key-value buckets is applied, in
//! revision order, by one thread (`rookery-replica`), so that every read
//! (sign-in, a session check, a user's name) stays local.
//!
//! Invariants: a bucket's changes are applied in revision order, each
//! once, in batches of what has arrived (one `meta.redb` transaction
//! each); `applied[b]` is the highest revision applied of bucket `b`, and a
//! write made through the cluster is visible on this node once
//! `applied[b]` has reached its revision ([`Replica::wait`]). The replica is
//! caught up once it has applied this node's start marker in both buckets
//! (written just before the watches started, so everything before it has
//! been applied).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rookery_cluster::{KvChange, Link};
use rookery_engine::{Directory, Replicated};

use super::records::{self, ProfileRecord, SessionRecord, UserRecord};
use crate::revoked::Revoked;

/// The bucket holding users (and the node list).
pub const USERS: usize = 0;
/// The bucket holding sessions.
pub const SESSIONS: usize = 1;

/// Changes applied in one transaction at most: a node catching up with
/// many pays one commit per this many, not one per change.
const BATCH_MAX: usize = 1024;

/// A write waiting to become visible here.
struct Waiter {
    bucket: usize,
    revision: u64,
    wake: flume::Sender<()>,
}

/// The replica's progress, shared by the applying thread and the shards.
pub struct Replica {
    applied: [AtomicU64; 2],
    boot: [u64; 2],
    caught_up: AtomicBool,
    waiters: Mutex<Vec<Waiter>>,
    /// Held while a change is applied and its revision recorded.
    apply_lock: Mutex<()>,
    /// Changes that could not be applied (logged): the cluster's record
    /// and this node's file disagree.
    pub failures: AtomicU64,
}

impl Replica {
    /// Starts the replica of `buckets` ([users, sessions]) into `dir`:
    /// writes this node's start marker in each, starts their watches and
    /// the applying thread. Blocks the calling thread (not a shard) for the
    /// NATS round trips, retried while JetStream is not ready (a NATS
    /// server that just restarted, a stream electing its leader) until
    /// `within` has passed.
    /// `restarted` hears another node's start marker change (it
    /// restarted), on the applying thread.
    pub fn start(
        link: &Link,
        buckets: [String; 2],
        node: u32,
        dir: Directory,
        revoked: Arc<Revoked>,
        restarted: Box<dyn Fn(u32) + Send>,
        within: Duration,
    ) -> rookery_cluster::Result<Arc<Replica>> {
        let deadline = Instant::now() + within;
        let mut boot = [0u64; 2];
        let mut watches = Vec::new();
        let key = records::boot_key(node);
        for (b, bucket) in buckets.iter().enumerate() {
            boot[b] = retry(deadline, || {
                let marker = Bytes::from(crate::auth::now_ms().to_string());
                link.kv_put(bucket, &key, marker)
            })?;
            watches.push(retry(deadline, || link.watch(bucket))?);
        }
        let replica = Arc::new(Replica {
            applied: Default::default(),
            boot,
            caught_up: AtomicBool::new(false),
            waiters: Mutex::new(Vec::new()),
            apply_lock: Mutex::new(()),
            failures: AtomicU64::new(0),
        });
        let sessions = watches.pop().expect("two watches");
        let users = watches.pop().expect("two watches");
        let r = replica.clone();
        std::thread::Builder::new()
            .name("rookery-replica".into())
            .spawn(move || r.run(users, sessions, dir, revoked, restarted))
            .map_err(|e| rookery_cluster::Error::Nats(format!("starting the replica: {e}")))?;
        Ok(replica)
    }

    /// Runs `write` (a read-through copy of revision `revision` of bucket
    /// `b`) unless the watch has applied that revision or a later one
    /// already: then what this node holds is newer (a logout, a password
    /// change) and must stay. Blocking (call it on the blocking pool).
    pub fn copy_unless_passed<T>(
        &self,
        b: usize,
        revision: u64,
        write: impl FnOnce() -> T,
    ) -> Option<T> {
        let _order = self.apply_lock.lock();
        (self.applied[b].load(Ordering::Acquire) < revision).then(write)
    }

    /// Whether everything written before this node started has been
    /// applied.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Waits (on the calling thread) until caught up, at most `timeout`.
    pub fn wait_caught_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.caught_up() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.caught_up()
    }

    /// The highest revision of bucket `b` applied here.
    pub fn applied(&self, b: usize) -> u64 {
        self.applied[b].load(Ordering::Acquire)
    }

    /// Waits until revision `revision` of bucket `b` has been applied here,
    /// at most `timeout` (a shard awaits it); whether it was.
    pub async fn wait(&self, b: usize, revision: u64, timeout: Duration) -> bool {
        if self.applied[b].load(Ordering::Acquire) >= revision {
            return true;
        }
        let (wake, woken) = flume::bounded(1);
        {
            let Ok(mut waiters) = self.waiters.lock() else {
                return false;
            };
            // Re-checked under the lock the applying thread takes to wake.
            if self.applied[b].load(Ordering::Acquire) >= revision {
                return true;
            }
            waiters.push(Waiter {
                bucket: b,
                revision,
                wake,
            });
        }
        let woken = async { woken.recv_async().await.is_ok() };
        let late = async {
            glommio::timer::sleep(timeout).await;
            false
        };
        futures_lite::future::or(woken, late).await
    }

    /// Body of the applying thread: both buckets' changes, applied in
    /// batches of what has arrived (up to `BATCH_MAX`, one transaction
    /// each), until both watches end.
    fn run(
        &self,
        users: flume::Receiver<KvChange>,
        sessions: flume::Receiver<KvChange>,
        dir: Directory,
        revoked: Arc<Revoked>,
        restarted: Box<dyn Fn(u32) + Send>,
    ) {
        loop {
            let next = flume::Selector::new()
                .recv(&users, |c| c.map(|c| (USERS, c)))
                .recv(&sessions, |c| c.map(|c| (SESSIONS, c)))
                .wait();
            let Ok(first) = next else { return };
            let mut batch = vec![first];
            while batch.len() < BATCH_MAX {
                let more = users
                    .try_recv()
                    .map(|c| (USERS, c))
                    .or_else(|_| sessions.try_recv().map(|c| (SESSIONS, c)));
                match more {
                    Ok(change) => batch.push(change),
                    Err(_) => break,
                }
            }
            self.apply_batch(&batch, &dir, &revoked, &restarted);
        }
    }

    /// Applies `batch` (each bucket's changes in revision order) in one
    /// transaction, or one by one when the transaction fails (to find the
    /// change this file disagrees with), and records the revisions.
    fn apply_batch(
        &self,
        batch: &[(usize, KvChange)],
        dir: &Directory,
        revoked: &Revoked,
        restarted: &dyn Fn(u32),
    ) {
        // The writes, and beside each the change it came from (to log).
        let (mut writes, mut from) = (Vec::with_capacity(batch.len()), Vec::new());
        let mut last = [None; 2];
        for (b, change) in batch {
            if *b == USERS && change.value.is_some() {
                if let Some(node) = records::parse_boot_key(&change.key) {
                    restarted(node);
                }
            }
            match decode(*b, change) {
                Ok(Some(w)) => {
                    writes.push(w);
                    from.push(change);
                }
                Ok(None) => {}
                Err(why) => self.failed(change, &why),
            }
            last[*b] = Some(change.revision);
        }
        // Held while applying: a read-through (`accounts.rs`) writes only
        // what the watch has not passed.
        let _order = self.apply_lock.lock();
        if dir.replicate_batch(&writes).is_err() {
            for (w, change) in writes.iter().zip(&from) {
                if let Err(e) = dir.replicate_batch(std::slice::from_ref(w)) {
                    self.failed(change, &e.to_string());
                }
            }
        }
        // Logged out on some node: this node's WebSockets of those
        // sessions are closed by the sweeps.
        let now = Instant::now();
        for w in &writes {
            if let Replicated::SessionEnded(hash) = w {
                revoked.end(*hash, now);
            }
        }
        for (b, revision) in last.iter().enumerate() {
            if let Some(revision) = revision {
                self.advance(b, *revision);
            }
        }
    }

    fn failed(&self, change: &KvChange, why: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(key = %change.key, revision = change.revision, %why,
            "a cluster record could not be applied here");
    }

    fn advance(&self, b: usize, revision: u64) {
        self.applied[b].store(revision, Ordering::Release);
        if (0..2).all(|i| self.applied[i].load(Ordering::Acquire) >= self.boot[i]) {
            self.caught_up.store(true, Ordering::Release);
        }
        let Ok(mut waiters) = self.waiters.lock() else {
            return;
        };
        waiters.retain(|w| {
            let done = w.bucket == b && w.revision <= revision;
            if done {
                let _ = w.wake.try_send(());
            }
            !done && !w.wake.is_disconnected()
        });
    }
}

/// Runs `attempt` on this thread until it succeeds or `deadline` passes
/// (then its last error).
fn retry<T, F: std::future::Future<Output = rookery_cluster::Result<T>>>(
    deadline: Instant,
    mut attempt: impl FnMut() -> F,
) -> rookery_cluster::Result<T> {
    loop {
        match futures_lite::future::block_on(attempt()) {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "JetStream not ready; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// The write a change makes in this node's directory, if any (other
/// keys, and a user without a value, write nothing: users are never
/// deleted).
fn decode(b: usize, change: &KvChange) -> Result<Option<Replicated>, String> {
    if b == USERS {
        let Some(value) = &change.value else {
            return Ok(None);
        };
        if records::is_profile_key(&change.key) {
            let record: ProfileRecord = serde_json::from_slice(value).map_err(|e| e.to_string())?;
            return Ok(Some(record.to_replicated()));
        }
        if !records::is_user_key(&change.key) {
            return Ok(None);
        }
        let record: UserRecord = serde_json::from_slice(value).map_err(|e| e.to_string())?;
        return Ok(Some(Replicated::User(record.to_user())));
    }
    let Some(token_hash) = records::parse_session_key(&change.key) else {
        return Ok(None);
    };
    Ok(Some(match &change.value {
        Some(value) => {
            let s: SessionRecord = serde_json::from_slice(value).map_err(|e| e.to_string())?;
            Replicated::Session {
                token_hash,
                user: s.user,
                expires_ms: s.expires_ms,
            }
        }
        None => Replicated::SessionEnded(token_hash),
    }))
}
