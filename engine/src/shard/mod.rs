//! One shard's runtime: the rooms it owns, the subscribers it hosts, and the
//! cross-shard traffic between them.
//!
//! Each shard is a glommio executor pinned to a core. It owns the rooms that
//! hash to it (sequencing, storage, the tail cache, fan-out) and hosts any
//! subscriber placed on it, whatever the room's owner.
//!
//! The no-gap, no-duplicate argument: every delivery to a subscriber goes
//! through its `next_seq`. A subscriber starts *catching up* from `since`:
//! it asks the owner for pages; the owner answers each page with `head`, the
//! highest seq it has fanned out so far. Pages and live events travel from
//! the owner to a shard over one FIFO channel (or, on the owner itself,
//! through synchronous calls), and the owner starts forwarding live events
//! of a room to a shard before it serves that shard's first page. So once a
//! page brings `next_seq` past `head`, every later seq reaches the shard as
//! a live event after that page: the subscriber switches to live delivery,
//! and anything at or below `next_seq - 1` is a duplicate to skip. A
//! subscriber whose queue fills goes back to catching up (lagging) — the same
//! path — and is closed only when it stays stuck.
//!
//! Per owned room, fan-out happens in seq order: appends of one batch can
//! resume in any order, so completions go through a reorder buffer released
//! in seq order.
//!
//! The parts: [`types`] (what goes in and out), [`command`] (the embed
//! API's work and its dispatch), [`mesh`] (traffic between shards) over
//! [`links`] (the channels between them),
//! [`owner`] (rooms owned here: sequencing, storage, the tail cache,
//! history), [`own_reads`] (posting counts as reading), [`seen`] (read
//! receipts members see, paced), [`access`] (who
//! may post, in memory), [`delete`] (deleting a room), [`presence`],
//! [`subscribers`] (subscribers hosted here and their outlets). The state
//! machines of a room's order ([`room`]) and of one subscriber
//! ([`catchup`]) are free of I/O and clocks, and unit-tested alone.

mod access;
mod catchup;
mod command;
mod delete;
mod links;
mod mesh;
mod own_reads;
mod owner;
mod presence;
mod room;
mod seen;
#[cfg(test)]
mod sim;
mod subscribers;
mod types;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// Keys are ids the engine or the metadata assigned, not chosen by clients.
use rookery_storage::{Meta, RetentionReport, ShardStore};
use rustc_hash::FxHashMap as HashMap;

pub(crate) use command::{refuse_busy, Command};
pub use delete::DeletedRoom;
pub(crate) use links::{links, FromPeers, Links};
pub(crate) use mesh::Peer;
pub(crate) use own_reads::OWN_READS_FLUSH;
pub use types::{
    Attachment, HistoryPage, PostAck, Quote, ReadState, ReplyTo, StoredMessage, ThreadPage,
    QUOTE_BYTES_MAX,
};
pub(crate) use types::{Common, NewSub, Reply};

use crate::config::EngineConfig;
use crate::consumer::CLOSED_SHUTDOWN;
use crate::error::Result;
use crate::event::Event;
use crate::metrics::{Latencies, ShardCounters, ShardGauges};
use crate::receipts::ToWriter;
use access::{Access, Load};
use catchup::Limits;
use owner::Owned;
use subscribers::{InboxEntry, Sub};

/// One shard's runtime state. Lives on its executor (`Rc`).
pub(crate) struct Shard {
    pub id: usize,
    n: usize,
    cfg: EngineConfig,
    store: ShardStore,
    meta: Arc<Meta>,
    receipts: flume::Sender<ToWriter>,
    uploads: crate::uploads::Uploads,
    activity: Arc<Vec<std::sync::atomic::AtomicU64>>,
    senders: Links,
    owned: RefCell<HashMap<u64, Owned>>,
    local: RefCell<HashMap<u64, Vec<u64>>>,
    subs: RefCell<HashMap<u64, Sub>>,
    /// Open inboxes hosted here.
    inboxes: RefCell<HashMap<u64, InboxEntry>>,
    /// What each hosted subscriber keeps to (from `cfg`).
    limits: Limits,
    /// Reused by `deliver_local` for the ids it offers an event to.
    scratch_ids: Cell<Vec<u64>>,
    /// Reused by `completed` for the events a completion releases.
    scratch_events: Cell<Vec<Event>>,
    /// Bytes held by the tail caches of the rooms owned here (kept within
    /// `tail_cache_bytes_max`).
    tail_bytes: Cell<usize>,
    /// Counts uses of tail caches (their recency).
    uses: Cell<u64>,
    /// Who may post in the rooms owned here, loaded off the reactor on
    /// first use and kept current by the member changes, which all go
    /// through the owner ([`Command::SetMember`]).
    access: RefCell<HashMap<u64, Access>>,
    /// Access loads in flight, by room (one at a time per room).
    loads: RefCell<HashMap<u64, Load>>,
    /// Posts and edits under way, by room, owner side (a delete waits for
    /// them: [`delete`]).
    appending: RefCell<HashMap<u64, u32>>,
    lagging: RefCell<BTreeSet<u64>>,
    /// Wakes the lagging pump when a subscription starts lagging (it
    /// sleeps, with no timer, while none does).
    pub(crate) pump_bell: Rc<Bell>,
    /// (room, poster) -> their last own post, until its receipt is stored
    /// ([`own_reads`]).
    own_reads: RefCell<HashMap<(u64, u64), own_reads::OwnRead>>,
    /// Wakes the own-reads flusher when the first entry comes.
    pub(crate) own_reads_bell: Rc<Bell>,
    /// Receipts shown to rooms owned here, and those waiting ([`seen`]).
    seen: RefCell<seen::Pacer>,
    /// Wakes the receipt-event flusher when the pacer takes its first.
    pub(crate) seen_bell: Rc<Bell>,
    /// Posts sent to their room's owner on another shard, by token, each
    /// waiting for its answer (`Peer::Posted`).
    remote_posts: RefCell<HashMap<u64, flume::Sender<Result<PostAck>>>>,
    next_remote_post: Cell<u64>,
    /// (room, user) -> subscriptions on this shard carrying that presence.
    present: RefCell<HashMap<(u64, u64), u32>>,
    outbox: RefCell<Vec<VecDeque<Peer>>>,
    flushing: RefCell<Vec<bool>>,
    closing: Cell<bool>,
    counters: RefCell<ShardCounters>,
    latency: RefCell<Latencies>,
    /// Failed catch-up pages, owner and subscriber side.
    page_warn: QuietWarn,
    /// This shard itself, for tasks it spawns.
    me: std::rc::Weak<Shard>,
    /// Completed when shutdown finished; the executor then exits.
    done: flume::Sender<()>,
}

/// How often a [`QuietWarn`] logs at most.
const QUIET_WARN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A warning that may repeat for every subscriber or page at once (a log
/// segment that cannot be read fails every page of every subscriber
/// behind it): logged at most once per [`QUIET_WARN_INTERVAL`], the next
/// one saying how many were held back.
#[derive(Default)]
pub(crate) struct QuietWarn {
    last: Cell<Option<std::time::Instant>>,
    held: Cell<u64>,
}

impl QuietWarn {
    /// Whether to log at `now`; if so, how many were held back since the
    /// last one logged.
    pub(crate) fn allow(&self, now: std::time::Instant) -> Option<u64> {
        match self.last.get() {
            Some(t) if now.saturating_duration_since(t) < QUIET_WARN_INTERVAL => {
                self.held.set(self.held.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.held.replace(0))
            }
        }
    }
}

/// A wake-up for one task on the shard's thread, with no timer: `ring`
/// wakes it (or makes its next `wait` return at once).
#[derive(Default)]
pub(crate) struct Bell {
    rung: Cell<bool>,
    waker: RefCell<Option<std::task::Waker>>,
}

impl Bell {
    pub(crate) fn ring(&self) {
        self.rung.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves at the next `ring` (or at once if it rang since the last
    /// wait).
    pub(crate) async fn wait(&self) {
        futures_lite::future::poll_fn(|cx| {
            if self.rung.replace(false) {
                std::task::Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }
}

thread_local! {
    /// The shard running on this thread, if any (see [`crate::Local`]).
    static CURRENT: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// The shard running on the calling thread.
pub(crate) fn current() -> Option<Rc<Shard>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Sets (or, with `None`, clears) the calling thread's shard.
pub(crate) fn set_current(shard: Option<Rc<Shard>>) {
    CURRENT.with(|c| *c.borrow_mut() = shard);
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shard {
    pub(crate) fn new(
        id: usize,
        n: usize,
        cfg: EngineConfig,
        store: ShardStore,
        common: Common,
        senders: Links,
        done: flume::Sender<()>,
    ) -> Rc<Shard> {
        let pacer = seen::Pacer::new(cfg.receipt_event_interval);
        Rc::new_cyclic(|me| Shard {
            id,
            n,
            limits: Limits {
                queue_bytes_max: cfg.outbound_queue_bytes_max,
                volatile_bytes_max: cfg.volatile_queue_bytes_max,
                page_len: cfg.catch_up_page_len,
                stuck_timeout: cfg.stuck_timeout,
            },
            cfg,
            store,
            meta: common.meta,
            receipts: common.receipts,
            uploads: common.uploads,
            activity: common.activity,
            senders,
            owned: RefCell::default(),
            local: RefCell::default(),
            subs: RefCell::default(),
            inboxes: RefCell::default(),
            scratch_ids: Cell::default(),
            scratch_events: Cell::default(),
            tail_bytes: Cell::new(0),
            uses: Cell::new(0),
            access: RefCell::default(),
            loads: RefCell::default(),
            appending: RefCell::default(),
            pump_bell: Rc::new(Bell::default()),
            own_reads: RefCell::default(),
            own_reads_bell: Rc::new(Bell::default()),
            seen: RefCell::new(pacer),
            seen_bell: Rc::new(Bell::default()),
            remote_posts: RefCell::default(),
            next_remote_post: Cell::new(1),
            lagging: RefCell::default(),
            present: RefCell::default(),
            outbox: RefCell::new((0..n).map(|_| VecDeque::new()).collect()),
            flushing: RefCell::new(vec![false; n]),
            closing: Cell::new(false),
            counters: RefCell::default(),
            latency: RefCell::default(),
            page_warn: QuietWarn::default(),
            me: me.clone(),
            done,
        })
    }

    fn rc(&self) -> Rc<Shard> {
        self.me.upgrade().expect("a shard outlives its own calls")
    }

    /// Applies every owned room's retention now (also run periodically).
    /// The uploads only retired messages held go, files and all.
    pub(crate) async fn enforce_retention(&self) -> Result<RetentionReport> {
        let report = self.store.enforce_retention(now_ms()).await?;
        self.remove_upload_files(report.uploads_freed.clone()).await;
        Ok(report)
    }

    /// Removes the uploads never sent that are past their age, batch
    /// after batch (off the reactor); a failure is logged and tried again
    /// next time. When to call again.
    pub(crate) async fn sweep_unsent_uploads(&self) -> Duration {
        loop {
            let uploads = self.uploads.clone();
            let swept = glommio::executor()
                .spawn_blocking(move || uploads.sweep_unsent(now_ms()))
                .await;
            let full = match swept {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(uploads = n, "removed uploads never sent");
                    }
                    n == crate::uploads::SWEEP_BATCH_MAX
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sweeping uploads never sent failed");
                    false
                }
            };
            if !full {
                return self.uploads.limits().sweep_interval;
            }
        }
    }

    /// Removes the files of uploads whose rows are gone (off the reactor);
    /// a failure is logged (the next start removes files without a row).
    pub(crate) async fn remove_upload_files(&self, ids: Vec<u128>) {
        if !ids.is_empty() {
            self.free_with(move || Ok(ids)).await;
        }
    }

    /// Runs `change` off the reactor, then removes the files of the
    /// uploads whose rows it removed (the ids it returns), in one trip. A
    /// failure is logged: an upload kept too long is never one freed too
    /// soon, and files left without a row go at the next start.
    pub(crate) async fn free_with(
        &self,
        change: impl FnOnce() -> Result<Vec<u128>> + Send + 'static,
    ) {
        let uploads = self.uploads.clone();
        let done = glommio::executor()
            .spawn_blocking(move || -> Result<()> {
                for id in change()? {
                    uploads.remove_files(id)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "freeing uploads failed");
        }
    }

    /// Graceful stop: refuse new work, close subscriptions, flush and close
    /// storage (which checkpoints), then let the executor exit.
    async fn shutdown(&self) -> Result<()> {
        self.closing.set(true);
        // Own posts' receipts go to the writer before it stops.
        self.flush_own_reads();
        let inboxes: Vec<u64> = self.inboxes.borrow().keys().copied().collect();
        for inbox in inboxes {
            self.close_inbox(inbox, Some(CLOSED_SHUTDOWN));
        }
        let result = self.store.close().await;
        // Ends the peers' receive loops (they hold this shard) and ours end
        // as the peers do the same.
        self.senders.close();
        self.pump_bell.ring();
        self.own_reads_bell.ring();
        self.seen_bell.ring();
        // Posts waiting for another shard's answer get `ShutDown`.
        self.remote_posts.borrow_mut().clear();
        let _ = self.done.send(());
        Ok(result?)
    }

    fn owner(&self, room: u64) -> usize {
        rookery_storage::shard_of(room, self.n as u32) as usize
    }

    /// Counts work done on this shard: the kicker (see
    /// `EngineConfig::kick_interval`) wakes only shards that worked since
    /// its last look.
    pub(crate) fn busy(&self) {
        self.activity[self.id].fetch_add(1, Ordering::Relaxed);
    }

    /// The shard's gauges, computed now (walks subscribers and rooms; a
    /// scrape does this once per shard).
    fn gauges(&self) -> ShardGauges {
        let subs = self.subs.borrow();
        let owned = self.owned.borrow();
        ShardGauges {
            subscribers: subs.len() as u64,
            lagging: self.lagging.borrow().len() as u64,
            queued_bytes: self
                .inboxes
                .borrow()
                .values()
                .map(|i| i.outlet.queued() as u64)
                .chain(subs.values().map(|s| s.core.held_bytes() as u64))
                .sum(),
            outbox_messages: self.outbox.borrow().iter().map(|q| q.len() as u64).sum(),
            rooms_loaded: owned.len() as u64,
            tail_cache_events: owned.values().map(|o| o.tail.len() as u64).sum(),
            tail_cache_bytes: owned.values().map(|o| o.tail.bytes() as u64).sum(),
        }
    }
}

fn send<T>(reply: Reply<T>, result: Result<T>) {
    let _ = reply.send(result);
}

#[cfg(test)]
mod quiet_warn_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_quiet_warning_logs_once_a_second_and_counts_the_rest() {
        let w = QuietWarn::default();
        let t0 = Instant::now();
        assert_eq!(w.allow(t0), Some(0));
        for ms in 1..1000 {
            assert_eq!(w.allow(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(w.allow(t0 + QUIET_WARN_INTERVAL), Some(999));
        assert_eq!(w.allow(t0 + QUIET_WARN_INTERVAL), None);
        assert_eq!(w.allow(t0 + 5 * QUIET_WARN_INTERVAL), Some(1));
    }
}
