//! Webhooks: every acknowledged message, edit and delete (read from the
//! shards' logs), every join and leave (from the membership feed) and, best
//! effort, presence, POSTed in signed batches to the receivers that
//! `--webhooks-file` names (docs/operations.md).
//!
//! Owns one delivery thread per webhook (`deliver.rs`), the bounded
//! presence queues the engine's event tap fills, the holds that keep each
//! shard's log from the lowest saved cursor on, and the webhooks' metrics.
//!
//! Invariants:
//! - a cursor saved in `meta.redb` is never past what the receiver
//!   answered 2xx for: every event is delivered at least once, across
//!   restarts;
//! - each shard's hold is the lowest log cursor any webhook saved, so what
//!   a webhook resumes from is on disk; a webhook further behind than its
//!   `backlog_bytes_max` moves on (counted and logged) rather than hold the
//!   disk without bound;
//! - chat never waits for a webhook: shards only publish their log's end
//!   and ring a bell; presence goes into a bounded queue that drops what
//!   does not fit.

mod config;
mod deliver;
mod payload;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use rookery_engine::{Engine, EventKind, Tapped};

pub use config::{Hook, Kind};

/// Presence events waiting for one webhook, at most (more are dropped).
const PRESENCE_QUEUE_LEN_MAX: usize = 10_000;

/// How long a shutdown waits for the delivery threads.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What one webhook did, for `/metrics`.
#[derive(Debug)]
pub struct HookStats {
    /// Events the receiver answered 2xx for.
    pub delivered: AtomicU64,
    /// Requests that failed (no answer, or not 2xx).
    pub failures: AtomicU64,
    /// Log bytes skipped because the webhook fell further behind than its
    /// `backlog_bytes_max`.
    pub skipped_bytes: AtomicU64,
    /// Membership events the bounded feed dropped before the webhook read
    /// them.
    pub skipped_members: AtomicU64,
    /// Log segments gone before the webhook read them (a cursor that was
    /// not held: it should stay 0).
    pub skipped_segments: AtomicU64,
    /// Presence events dropped because its queue was full.
    pub presence_dropped: AtomicU64,
    /// Log bytes not yet delivered, summed over shards (at the last check).
    pub backlog_bytes: AtomicU64,
    /// Membership events not yet delivered (at the last check).
    pub pending_members: AtomicU64,
    /// Each delivered event's age when the receiver answered, µs
    /// (millisecond resolution: the events' timestamps').
    pub lag: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for HookStats {
    fn default() -> Self {
        HookStats {
            delivered: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            skipped_bytes: AtomicU64::new(0),
            skipped_members: AtomicU64::new(0),
            skipped_segments: AtomicU64::new(0),
            presence_dropped: AtomicU64::new(0),
            backlog_bytes: AtomicU64::new(0),
            pending_members: AtomicU64::new(0),
            lag: Mutex::new(rookery_engine::micros_histogram()),
        }
    }
}

/// Presence events for one webhook (what the tap saw, as JSON).
#[derive(Default)]
struct PresenceQueue {
    events: Mutex<VecDeque<Arc<[u8]>>>,
}

impl PresenceQueue {
    /// Takes up to `len` events, oldest first.
    fn take(&self, len: usize) -> Vec<Arc<[u8]>> {
        let mut q = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let n = len.min(q.len());
        q.drain(..n).collect()
    }
}

/// A delivery thread and how to stop it.
struct Running {
    hook: Hook,
    /// Its presence queue (kept across reloads that keep the webhook).
    queue: Arc<PresenceQueue>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// The webhooks of a running server.
pub struct Webhooks {
    path: Option<PathBuf>,
    /// The webhooks as loaded (what `start` starts).
    loaded: Mutex<Vec<Hook>>,
    running: Mutex<Vec<Running>>,
    presence: RwLock<Vec<(Arc<PresenceQueue>, Arc<HookStats>)>>,
    stats: Mutex<Vec<(String, Arc<HookStats>)>>,
    engine: OnceLock<Engine>,
}

impl Webhooks {
    /// Reads `path` (none: no webhooks). Errors name the file and the
    /// problem in one line.
    pub fn load(path: Option<PathBuf>) -> Result<Webhooks, String> {
        let hooks = config::load(path.as_deref())?;
        Ok(Webhooks {
            path,
            loaded: Mutex::new(hooks),
            running: Mutex::new(Vec::new()),
            presence: RwLock::new(Vec::new()),
            stats: Mutex::new(Vec::new()),
            engine: OnceLock::new(),
        })
    }

    /// Whether a file was given (then SIGHUP re-reads it).
    pub fn configured(&self) -> bool {
        self.path.is_some()
    }

    /// The engine's event tap calls this for everything a room's owner
    /// fans out: presence is queued for the webhooks that want it (never
    /// waiting: a full queue drops it); everything else is read from the
    /// logs and the membership feed instead.
    pub fn see(&self, tapped: Tapped<'_>) {
        let Tapped::Event(event) = tapped else { return };
        if event.kind() != EventKind::Presence {
            return;
        }
        let queues = self.presence.read().unwrap_or_else(|p| p.into_inner());
        if queues.is_empty() {
            return;
        }
        let json: Arc<[u8]> = event.payload().into();
        for (queue, stats) in queues.iter() {
            let mut q = queue.events.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() < PRESENCE_QUEUE_LEN_MAX {
                q.push_back(json.clone());
            } else {
                stats.presence_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(queues);
        if let Some(engine) = self.engine.get() {
            engine.feeds().doorbell().ring();
        }
    }

    /// Starts a delivery thread per webhook. Webhooks no longer in the
    /// file lose their saved cursors (and what they held).
    /// (What the saved cursors resume from is held since the store
    /// opened: `LogFeeds::hold_for`.)
    pub fn start(&self, engine: Engine) -> std::io::Result<()> {
        let _ = self.engine.set(engine);
        let hooks = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.apply(hooks)
    }

    /// Re-reads the file (SIGHUP): stops the webhooks that went or changed
    /// and starts the new and changed ones; a changed one resumes from its
    /// cursor. A bad file changes nothing. Returns how many run. Waits for
    /// each stopped webhook's thread (one inside a request: up to its
    /// `timeout_ms`), so that no two threads ever deliver for one name.
    pub fn reload(&self) -> Result<usize, String> {
        if self.engine.get().is_none() {
            return Err("the server is still starting".into());
        }
        let hooks = config::load(self.path.as_deref())?;
        let n = hooks.len();
        self.apply(hooks).map_err(|e| e.to_string())?;
        Ok(n)
    }

    /// Makes `hooks` the running set.
    fn apply(&self, hooks: Vec<Hook>) -> std::io::Result<()> {
        let engine = self.engine.get().expect("started").clone();
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let (keep, go): (Vec<Running>, Vec<Running>) = std::mem::take(&mut *running)
            .into_iter()
            .partition(|r| hooks.contains(&r.hook));
        for r in &go {
            r.stop.store(true, Ordering::Release);
        }
        engine.feeds().doorbell().ring();
        for r in go {
            let _ = r.thread.join();
        }
        *running = keep;
        // Cursors of webhooks that are gone go too (not those of the
        // server's own readers).
        let directory = engine.directory();
        let names: Vec<String> = directory
            .feed_cursors()
            .map(|c| c.into_iter().map(|(name, _, _)| name).collect())
            .unwrap_or_default();
        for name in names {
            let internal = name.starts_with(rookery_engine::INTERNAL_READER_PREFIX);
            if !internal && !hooks.iter().any(|h| h.name == name) {
                if let Err(e) = directory.drop_feed_cursors(&name) {
                    tracing::warn!(webhook = %name, "forgetting the cursor failed: {e}");
                }
                engine.feeds().hold_for(&name, None);
            }
        }
        let members = hooks
            .iter()
            .any(|h| h.wants(Kind::Join) || h.wants(Kind::Leave));
        directory.set_member_feed(members);
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.retain(|(name, _)| hooks.iter().any(|h| &h.name == name));
        let mut presence = Vec::new();
        for hook in &hooks {
            let hook_stats = match stats.iter().find(|(n, _)| n == &hook.name) {
                Some((_, s)) => s.clone(),
                None => {
                    let s = Arc::new(HookStats::default());
                    stats.push((hook.name.clone(), s.clone()));
                    s
                }
            };
            if let Some(kept) = running.iter().find(|r| &r.hook == hook) {
                if hook.wants(Kind::Presence) {
                    presence.push((kept.queue.clone(), hook_stats));
                }
                continue;
            }
            let queue = Arc::new(PresenceQueue::default());
            if hook.wants(Kind::Presence) {
                presence.push((queue.clone(), hook_stats.clone()));
            }
            let stop = Arc::new(AtomicBool::new(false));
            let worker = deliver::Worker::new(
                hook.clone(),
                engine.clone(),
                stop.clone(),
                queue.clone(),
                hook_stats,
            );
            let thread = std::thread::Builder::new()
                .name(format!("rookery-webhook-{}", hook.name))
                .spawn(move || worker.run())?;
            running.push(Running {
                hook: hook.clone(),
                queue,
                stop,
                thread,
            });
        }
        *self.presence.write().unwrap_or_else(|p| p.into_inner()) = presence;
        Ok(())
    }

    /// Stops every delivery thread; each saves its cursor as it ends. Waits
    /// for them up to [`STOP_WAIT`]: a thread inside a request (up to its
    /// `timeout_ms`) is left to end by itself, its cursor saved or not
    /// (then the batch is delivered again after the restart).
    pub fn stop(&self) {
        let running = std::mem::take(&mut *self.running.lock().unwrap_or_else(|p| p.into_inner()));
        for r in &running {
            r.stop.store(true, Ordering::Release);
        }
        if let Some(engine) = self.engine.get() {
            engine.feeds().doorbell().ring();
        }
        let deadline = std::time::Instant::now() + STOP_WAIT;
        while running.iter().any(|r| !r.thread.is_finished())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for r in running {
            if r.thread.is_finished() {
                let _ = r.thread.join();
            } else {
                tracing::warn!(webhook = %r.hook.name, "still in a request at shutdown");
            }
        }
    }

    /// Each webhook's name and stats, for `/metrics`.
    pub fn stats(&self) -> Vec<(String, Arc<HookStats>)> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starting (or reloading) the webhooks forgets the cursors of the
    /// webhooks that are gone, never those of the server's own readers,
    /// and each shard keeps holding what the readers left resume from.
    #[test]
    fn the_cursors_of_gone_webhooks_go_and_the_servers_own_readers_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = rookery_engine::EngineConfig::new(dir.path());
        cfg.storage.shards = 1;
        let engine = Engine::start(cfg.clone()).unwrap();
        let internal = format!("{}search", rookery_engine::INTERNAL_READER_PREFIX);
        let directory = engine.directory();
        directory
            .save_feed_cursors("gone", &[(0, 2 << 32 | 32)])
            .unwrap();
        directory
            .save_feed_cursors(&internal, &[(0, 5 << 32 | 32)])
            .unwrap();
        drop(directory);
        engine.shutdown().unwrap();

        let engine = Engine::start(cfg).unwrap();
        assert!(
            engine.feeds().shard(0).holds(2),
            "held since the store opened"
        );
        let hooks = Webhooks::load(None).unwrap();
        hooks.start(engine.clone()).unwrap();
        let names: Vec<String> = engine
            .directory()
            .feed_cursors()
            .unwrap()
            .into_iter()
            .map(|(name, _, _)| name)
            .collect();
        assert_eq!(names, [internal]);
        let feed = engine.feeds().shard(0);
        assert!(!feed.holds(4) && feed.holds(5));
        hooks.stop();
        engine.shutdown().unwrap();
    }
}
