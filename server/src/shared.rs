//! What every connection task of a shard shares: the config, the engine
//! (and its shard-local side), the limits, the shard's flusher and sweep,
//! the stop signal and the connection gate.

use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use glommio::sync::{Gate, Semaphore};
use rookery_engine::Engine;

use crate::config::Config;
use crate::limits::{IpLimits, LoginLimits, SendLimits, UserRates};
use crate::metrics::ShardHttp;

/// What every connection task of a shard shares.
pub struct Shared {
    pub cfg: Config,
    /// This node's cluster, if it is part of one (`--nats`).
    pub cluster: Option<Arc<crate::cluster::Node>>,
    /// This shard's relay of rooms other nodes own, in a cluster.
    pub relay: Option<Rc<crate::cluster::relay::Relay>>,
    pub engine: Engine,
    pub shard: usize,
    /// Set on the first shutdown signal: stop accepting, close idle
    /// connections.
    pub stopping: Arc<AtomicBool>,
    /// Disconnected (its sender dropped) on the first shutdown signal,
    /// after `stopping` is set: wakes the shard to stop.
    pub stop_signal: flume::Receiver<()>,
    /// Every shard's HTTP counters (this one writes `http[shard]`).
    pub http: Arc<Vec<ShardHttp>>,
    /// Per-address limits, shared by every shard.
    pub limits: Arc<IpLimits>,
    /// Per-user send limits, shared by every shard.
    pub sends: Arc<SendLimits>,
    /// Per-user limits on joins, room creation and member adds, shared by
    /// every shard.
    pub rates: Arc<UserRates>,
    /// Failed-login limits, per address and per account, shared.
    pub logins: Arc<LoginLimits>,
    /// Sessions ended before their time, for every shard's sweep.
    pub revoked: Arc<crate::revoked::Revoked>,
    /// Notices for users (invitations), for every shard's sweep.
    pub notices: Arc<crate::notices::Notices>,
    /// The server API's keys (`--api-keys-file`), shared by every shard.
    pub keys: Arc<crate::keys::ApiKeys>,
    /// Online backups (`--backup-dir`), shared by every shard.
    pub backups: Arc<crate::backups::Backups>,
    /// The listener's TLS (`--tls-cert`), shared by every shard.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// The message search index, once started (after the engine).
    pub search: Arc<std::sync::OnceLock<rookery_engine::Search>>,
    /// The webhooks (`--webhooks-file`), for `/metrics`.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// Where passwords are hashed and checked.
    pub hashing: Arc<crate::hashing::HashPool>,
    /// The engine as seen from this shard: posts to rooms it owns and the
    /// connections' inboxes run here without a queue.
    pub local: rookery_engine::Local,
    /// Every shard's end for WebSocket connections moving to it.
    pub moves: crate::ws::moving::Mailboxes,
    /// Where connections moving to this shard arrive.
    pub moved_in: flume::Receiver<Box<crate::ws::moving::Handoff>>,
    /// Writes every WebSocket connection's output once per reactor turn.
    pub flusher: Rc<crate::out::Flusher>,
    /// Watches every WebSocket connection's deadlines (one timer a shard).
    pub sweeper: Rc<crate::sweep::Sweeper>,
    /// Closed when the shard stops: every connection waiting on it wakes
    /// and closes (WebSockets with 1001).
    pub stop: Rc<Semaphore>,
    /// Every open connection holds a pass; stopping waits for them.
    pub gate: Gate,
    /// The dashboard's stats feed (shared by every shard; written by the
    /// stats thread once per interval).
    pub stats: Arc<std::sync::Mutex<crate::stats::Sampler>>,
    /// Connections past their address's limit whose one request is being
    /// read (to answer a health or metrics probe): at most
    /// `serve::OVER_LIMIT_READS_MAX` a shard.
    pub over_limit_reads: std::cell::Cell<usize>,
    /// Uploads this shard is receiving (at most `--uploads-in-flight-max`).
    pub uploads_in_flight: std::cell::Cell<usize>,
    /// Uploads in flight on this shard, by user (at most
    /// `routes::uploads::UPLOADS_PER_USER_MAX` each).
    pub uploads_by_user: std::cell::RefCell<std::collections::HashMap<u64, u32>>,
    /// Files this shard is sending (at most `routes::uploads::FILE_STREAMS_MAX`).
    pub file_streams: std::cell::Cell<usize>,
    /// Users active on this shard since its last write of them (`seen.rs`).
    pub seen: crate::seen::Seen,
}

impl Shared {
    pub(crate) fn my_http(&self) -> Option<&ShardHttp> {
        self.http.get(self.shard)
    }
}

impl Shared {
    /// Resolves once the shard is stopping.
    pub async fn stopped(&self) {
        // Nothing ever signals the semaphore: acquiring it waits until it
        // is closed.
        let _ = self.stop.acquire(1).await;
    }

    /// What `work` resolves to, or `None` if the shard stops first (then
    /// `work` is dropped).
    pub async fn unless_stopped<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        let stop = async {
            self.stopped().await;
            None
        };
        futures_lite::future::or(async { Some(work.await) }, stop).await
    }
}
