//! The embed API: [`Engine`], a `Send + Sync + Clone` handle usable from any
//! thread, blocking or async, and the start-up of the shards behind it.
//!
//! Every call becomes a [`Command`] sent to one shard's queue (the room's
//! owner, or the shard hosting a subscription) with a reply channel;
//! [`Pending`] waits for the reply either by blocking (`wait`) or on any
//! async runtime (`.await`). Nothing here depends on glommio.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use glommio::{LocalExecutorPoolBuilder, PoolPlacement, PoolThreadHandles};
use rookery_storage::meta::DmOpened;
use rookery_storage::{Cursor, ListPage, Meta, Retention, RetentionReport, Role, Store};

use crate::config::EngineConfig;
use crate::consumer::{SubShared, CLOSED_SHUTDOWN};
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::metrics::{Metrics, ShardCounters};
use crate::queues::Queues;
use crate::receipts::{self, ToWriter, WriterStats};
use crate::reply::Pending;
use crate::rules::{MemberOp, Membership};
use crate::shard::{
    Command, Common, DeletedRoom, HistoryPage, PostAck, ReadState, Shard, ThreadPage,
};
use crate::subscription::{Inbox, Subscription};
use crate::uploads::Uploads;

/// Work run once on every shard's executor beside the engine (see
/// [`Engine::start_with_task`]): called with the shard's id and a handle.
pub type ShardTask = Arc<dyn Fn(usize, Engine) -> Pin<Box<dyn Future<Output = ()>>> + Send + Sync>;

struct Inner {
    queues: Arc<Queues>,
    /// Stops and joins the thread that wakes the shards periodically.
    kicker: Mutex<
        Option<(
            Arc<std::sync::atomic::AtomicBool>,
            std::thread::JoinHandle<()>,
        )>,
    >,
    meta: Arc<Meta>,
    /// Uploaded files and what is known of them.
    uploads: Uploads,
    /// Every shard's log, readable from any thread (webhooks).
    feeds: rookery_storage::LogFeeds,
    /// The read-receipt writer's queue (shards hold clones) and thread.
    receipts: flume::Sender<ToWriter>,
    receipt_writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    receipt_stats: Arc<WriterStats>,
    next_shard: AtomicUsize,
    threads: Mutex<Option<PoolThreadHandles<()>>>,
}

/// A running engine. Clone it freely; every clone talks to the same shards.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Opens the data directory and starts one pinned executor per shard.
    /// Returns once every shard has recovered its storage.
    pub fn start(cfg: EngineConfig) -> Result<Engine> {
        Self::start_inner(cfg, None)
    }

    /// Like [`Engine::start`], and then runs `task` once on every shard's
    /// executor (with the shard's id and a handle to the engine): how the
    /// server puts a listener on each core, beside that core's shard. The
    /// task may hold the handle; [`Engine::shutdown`] drops it with the
    /// executor.
    pub fn start_with_task(cfg: EngineConfig, task: ShardTask) -> Result<Engine> {
        Self::start_inner(cfg, Some(task))
    }

    fn start_inner(cfg: EngineConfig, task: Option<ShardTask>) -> Result<Engine> {
        cfg.validate()?;
        let store = Arc::new(Store::open(cfg.storage.clone())?);
        let uploads = Uploads::open(&cfg.storage.data_dir, store.meta().clone(), cfg.uploads)?;
        let n = cfg.storage.shards as usize;
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..n).map(|_| flume::unbounded::<Command>()).unzip();
        // Each shard takes its id, in the order it starts, and with it its
        // ends: its command queue and its channels to and from the others.
        let ends = Arc::new(Mutex::new(
            receivers
                .into_iter()
                .zip(crate::shard::links(n, cfg.mesh_channel_len))
                .map(|(commands, (links, from))| {
                    Some(ShardEnds {
                        commands,
                        links,
                        from,
                    })
                })
                .collect::<Vec<_>>(),
        ));
        let next_id = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = flume::unbounded::<Result<usize, String>>();
        let receipt_stats = Arc::new(WriterStats::default());
        let (receipts, receipt_writer) = receipts::spawn_writer(
            store.meta().clone(),
            cfg.receipt_queue_len_max,
            cfg.receipt_batch_len_max,
            receipt_stats.clone(),
        )?;
        let shard_cfg = cfg.clone();
        let shard_store = store.clone();
        let shard_receipts = receipts.clone();
        let shard_uploads = uploads.clone();
        // Work each shard did, counted by the shard, read by the kicker.
        let activity: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let shard_activity = activity.clone();
        let queued: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
        let shard_queued = queued.clone();
        // Each shard receives the finished handle before it runs `task`.
        let (handle_tx, handle_rx) = flume::unbounded::<Engine>();
        let side = task.map(|t| (t, handle_rx));
        let threads = LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(n, None))
            .name("rookery-shard")
            .io_memory(cfg.storage.io_memory_bytes)
            .preempt_timer(cfg.preempt_timer)
            .ring_depth(cfg.ring_depth)
            .spin_before_park(cfg.spin_before_park)
            .on_all_shards(move || {
                let common = Common {
                    meta: shard_store.meta().clone(),
                    receipts: shard_receipts,
                    uploads: shard_uploads.clone(),
                    activity: shard_activity,
                    queued: shard_queued,
                };
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let ends = ends
                    .lock()
                    .ok()
                    .and_then(|mut e| e.get_mut(id).and_then(Option::take))
                    .expect("each shard takes its own ends once");
                let (cfg, store, ready, side) = (shard_cfg, shard_store, ready_tx, side);
                async move { run_shard(ends, cfg, store, common, ready, side).await }
            })
            .map_err(|e| Error::Start(e.to_string()))?;
        let mut failures = Vec::new();
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => failures.push(e),
                Err(_) => failures.push("a shard exited during start".into()),
            }
        }
        let kicker = crate::kick::spawn_kicker(senders.clone(), activity, cfg.kick_interval)?;
        let engine = Engine {
            inner: Arc::new(Inner {
                kicker: Mutex::new(Some(kicker)),
                queues: Arc::new(Queues::new(senders, queued, cfg.command_queue_len_max)),
                meta: store.meta().clone(),
                uploads,
                feeds: store.feeds().clone(),
                receipts,
                receipt_writer: Mutex::new(Some(receipt_writer)),
                receipt_stats,
                next_shard: AtomicUsize::new(0),
                threads: Mutex::new(Some(threads)),
            }),
        };
        if !failures.is_empty() {
            drop(handle_tx);
            // A shard whose executor could not be built (io_uring refused,
            // too little locked memory) tells why only by its thread's
            // result, which shutting down collects.
            if let Err(Error::Start(why)) = engine.clone().shutdown() {
                failures.push(why);
            }
            return Err(Error::Start(failures.join("; ")));
        }
        for _ in 0..n {
            let _ = handle_tx.send(engine.clone());
        }
        Ok(engine)
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inner.queues.shards()
    }

    /// The shard that owns `room`.
    pub fn shard_of(&self, room: u64) -> usize {
        rookery_storage::shard_of(room, self.shards() as u32) as usize
    }

    /// Every shard's log as a feed of acknowledged changes, readable from
    /// any thread, with the holds that keep what durable readers still
    /// need (see [`rookery_storage::LogFeeds`]).
    pub fn feeds(&self) -> &rookery_storage::LogFeeds {
        &self.inner.feeds
    }

    /// The metadata store (blocking calls).
    pub(crate) fn meta(&self) -> &Arc<Meta> {
        &self.inner.meta
    }

    /// Accounts, sessions, rooms and members (blocking calls; from a
    /// shard's reactor run them on the blocking pool).
    pub fn directory(&self) -> Directory {
        Directory::new(self.inner.meta.clone())
    }

    /// The uploads: files users send, kept within their quotas.
    pub fn uploads(&self) -> Uploads {
        self.inner.uploads.clone()
    }

    /// Posts a message; resolves once it is durable (per the durability
    /// mode). A repeated non-empty `(sender, client_id)` returns the
    /// original seq with `duplicate: true`.
    pub fn post(&self, room: u64, sender: u64, client_id: &str, body: &str) -> Pending<PostAck> {
        self.post_with(room, sender, client_id, body, None, Vec::new())
    }

    /// Posts a message that replies to message `to` of the room, as
    /// [`Engine::post`] does. It joins `to`'s thread (or starts one at
    /// `to`); `NotFound` when `to` is not a live message.
    pub fn reply(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        body: &str,
        to: u64,
    ) -> Pending<PostAck> {
        self.post_with(room, sender, client_id, body, Some(to), Vec::new())
    }

    /// Posts a message (a reply to `to` when given) carrying `files`,
    /// uploads of the sender's ([`Engine::uploads`]), at most
    /// `FILES_PER_MESSAGE_MAX`; with files the body may be empty. Each
    /// upload then counts the message; deleting the last message that
    /// carries an upload frees it. `NotFound` for an id that is not an
    /// upload of the sender's.
    pub fn post_with(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        body: &str,
        to: Option<u64>,
        files: Vec<u128>,
    ) -> Pending<PostAck> {
        let (client_id, body) = (client_id.to_string(), body.to_string());
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::Post {
                room,
                sender,
                client_id,
                body,
                to,
                files,
                reply,
            })
    }

    /// Changes a user's standing in `room` as `actor`, under the room
    /// rules ([`crate::MemberOp`], docs/security.md): join, leave, invite,
    /// accept, decline, withdraw, remove, ban, unban, set a role, hand
    /// ownership on. `target` is the actor for their own joins, leaves and
    /// answers. Goes through the room's owner, which decides it in the
    /// transaction that writes it and keeps who may post current; a user
    /// who is removed or banned loses their open subscriptions to the room
    /// at once, each ending with a `left` event (reason `removed` or
    /// `banned`) before any later event of the room.
    pub fn membership(
        &self,
        room: u64,
        actor: u64,
        target: u64,
        op: MemberOp,
    ) -> Pending<Membership> {
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::Membership {
                room,
                actor,
                target,
                op,
                reply,
            })
    }

    /// Makes `user` a member of `room` if they may read it, as a
    /// subscription that joins does: a member stays as they are (answered
    /// from the owner's memory, no I/O), a public room is joined (never
    /// changing a role); `Banned` for a banned user, `NotFound` for a
    /// private room they are not a member of (an invitation is accepted
    /// with [`MemberOp::Accept`]) and for a missing room.
    pub fn ensure_member(&self, room: u64, user: u64) -> Pending<()> {
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::EnsureMember {
                room,
                user,
                reply,
            })
    }

    /// Adds `user` to `room` with `role`, or changes their role, with no
    /// rule but the data's (an embedder's or an import's own decision: a
    /// room keeps its owner); resolves to their role before.
    pub fn add_member(&self, room: u64, user: u64, role: Role) -> Pending<Option<Role>> {
        self.set_member(room, user, Some(role))
    }

    /// Removes `user` from `room` with no rule but the data's (the owner
    /// is not removed while others remain); resolves to their role before.
    /// Their open subscriptions to it end as with [`Engine::membership`].
    pub fn remove_member(&self, room: u64, user: u64) -> Pending<Option<Role>> {
        self.set_member(room, user, None)
    }

    fn set_member(&self, room: u64, user: u64, role: Option<Role>) -> Pending<Option<Role>> {
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::SetMember {
                room,
                user,
                role,
                reply,
            })
    }

    /// Deletes `room` for good: its owner stops taking posts in it, retires
    /// every message of it (durably; their text leaves the disk at the
    /// next compaction of the segments holding them), removes its rows
    /// from the metadata (members, bans, invitations, receipts; a public
    /// name becomes free, the id is never taken again) and ends every
    /// subscription to it with `left {reason: "deleted"}`. Resolves to
    /// what it removed; `NotFound` for an unknown room.
    pub fn delete_room(&self, room: u64) -> Pending<DeletedRoom> {
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::DeleteRoom {
                room,
                reply,
            })
    }

    /// Creates a room with `creator` as its owner; resolves to its id.
    /// Create rooms through this, not through [`Engine::meta`]: the room's
    /// owner remembers rooms it was asked about, and this makes it forget
    /// that the room did not exist.
    pub fn create_room(&self, name: &str, private: bool, creator: u64) -> Pending<u64> {
        self.create_room_as(None, name, private, creator)
    }

    /// [`Engine::create_room`] with the id `id`, one a cluster handed out
    /// to this node (ids it may hand out: `StorageConfig::id_filter`).
    pub fn create_room_with_id(
        &self,
        id: u64,
        name: &str,
        private: bool,
        creator: u64,
    ) -> Pending<u64> {
        self.create_room_as(Some(id), name, private, creator)
    }

    /// Opens the direct-message room of `user` and `other`: finds the
    /// pair's room, or creates it, private, with both as members and no
    /// owner (`id`: the id a cluster handed out, `None`: the next here).
    /// A user who left it is not brought back: that is a `Join` through
    /// [`Engine::membership`], which the room's two users may always make.
    pub fn open_dm(&self, id: Option<u64>, user: u64, other: u64) -> Pending<DmOpened> {
        let shard = self.inner.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards();
        self.inner.queues.call(shard, |reply| Command::OpenDm {
            id,
            user,
            other,
            reply,
        })
    }

    fn create_room_as(
        &self,
        id: Option<u64>,
        name: &str,
        private: bool,
        creator: u64,
    ) -> Pending<u64> {
        let name = name.to_string();
        // Any shard can create it; the id decides the owner.
        let shard = self.inner.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards();
        self.inner.queues.call(shard, |reply| Command::CreateRoom {
            id,
            name,
            private,
            creator,
            reply,
        })
    }

    /// A fresh id for an inbox or a subscription.
    pub(crate) fn next_id(&self) -> u64 {
        self.inner.queues.next_id()
    }

    /// Replaces a message's body (its author only; not empty nor blank).
    pub fn edit(&self, room: u64, seq: u64, by: u64, body: &str) -> Pending<()> {
        let body = body.to_string();
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::Edit {
                room,
                seq,
                by,
                body,
                reply,
            })
    }

    /// Deletes a message (its author or a room admin only).
    pub fn delete(&self, room: u64, seq: u64, by: u64) -> Pending<()> {
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::Delete {
                room,
                seq,
                by,
                reply,
            })
    }

    /// Announces that `user` is typing in `room` (volatile; at most one per
    /// `typing_interval` per user and room, else `RateLimited`).
    pub fn typing(&self, room: u64, user: u64) -> Pending<()> {
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::Typing {
                room,
                user,
                reply,
            })
    }

    /// Counts a user's presence in `room` somewhere the engine does not see
    /// (another cluster node): `on` for its first subscription there, off
    /// for its last. Counted with the engine's own subscriptions: the user
    /// is online while any count is up, and the first and the last are
    /// announced as presence events. Every `on` must be matched by one off.
    pub fn presence(&self, room: u64, user: u64, on: bool) -> Pending<()> {
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::Presence {
                room,
                user,
                on,
                reply,
            })
    }

    /// A page of a room's history, with edits and deletes applied.
    pub fn history(&self, room: u64, cursor: Cursor) -> Pending<HistoryPage> {
        self.history_of(room, cursor, None)
    }

    /// A page of history as `reader` (when given) sees it: each reaction
    /// says whether they have it on. Access is the caller's to check.
    pub fn history_of(
        &self,
        room: u64,
        cursor: Cursor,
        reader: Option<u64>,
    ) -> Pending<HistoryPage> {
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::History {
                room,
                cursor,
                reader,
                reply,
            })
    }

    /// Puts `user`'s reaction `emoji` (one emoji) on message `seq` (`on`)
    /// or takes it off; members only. Stored as a log record and sent to
    /// the room as a `react` event; `Ok(false)` when it already was so
    /// (nothing is stored or sent). `NotFound` for a missing or deleted
    /// message, `Conflict` past the bounds on a message's reactions.
    pub fn react(&self, room: u64, seq: u64, user: u64, emoji: &str, on: bool) -> Pending<bool> {
        let emoji = emoji.to_string();
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::React {
                room,
                seq,
                user,
                emoji,
                on,
                reply,
            })
    }

    /// A page of the thread message `seq` is in (the one it starts, or
    /// the one it replies in): its first message, then up to `limit`
    /// replies after seq `after`, oldest first, as `reader` (when given)
    /// sees their reactions. `None` when `seq`, or its thread's first
    /// message, is not stored (never was, or retired); a deleted message
    /// keeps its thread. Access is the caller's to check, as for history.
    pub fn thread(
        &self,
        room: u64,
        seq: u64,
        after: u64,
        limit: usize,
        reader: Option<u64>,
    ) -> Pending<Option<ThreadPage>> {
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::Thread {
                room,
                seq,
                after,
                limit,
                reader,
                reply,
            })
    }

    /// Sets a room's retention limits (stored durably; applied every
    /// `retention_interval` and by [`Engine::enforce_retention`]).
    pub fn set_retention(&self, room: u64, retention: Retention) -> Pending<()> {
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::SetRetention {
                room,
                retention,
                reply,
            })
    }

    /// Applies every room's retention now, on every shard; returns the sum.
    pub fn enforce_retention(&self) -> Result<RetentionReport> {
        let mut total = RetentionReport::default();
        for shard in 0..self.shards() {
            let r = self
                .inner
                .queues
                .call(shard, |reply| Command::EnforceRetention { reply })
                .wait()?;
            total.messages_expired += r.messages_expired;
            total.segments_deleted += r.segments_deleted;
            total.bytes_reclaimed += r.bytes_reclaimed;
            total.uploads_freed.extend(r.uploads_freed);
        }
        Ok(total)
    }

    /// Writes an online backup of the data directory to `to` (which must
    /// not exist) while the engine keeps serving: every record each shard
    /// acknowledged before its point (taken now, shard after shard), and
    /// `meta.redb` as it is once every point is taken (see
    /// [`rookery_storage::backup`]). Blocking, for seconds per GB: call it
    /// on a thread of its own, never on a shard.
    pub fn backup(
        &self,
        to: &std::path::Path,
        opts: &rookery_storage::backup::BackupOptions,
        progress: &rookery_storage::backup::Progress,
    ) -> Result<rookery_storage::backup::BackupManifest> {
        let created_ms = crate::shard::now_ms();
        let mut points = Vec::with_capacity(self.shards());
        for shard in 0..self.shards() {
            points.push(self.log_point(shard)?);
        }
        Ok(rookery_storage::backup::write_backup(
            &self.inner.meta,
            self.shards() as u32,
            points,
            Some(self.inner.uploads.files()),
            created_ms,
            to,
            opts,
            progress,
        )?)
    }

    /// Shard `shard`'s log as it is now, opened for reading on any thread
    /// ([`rookery_storage::backup::ShardPoint::for_each_record`]): every
    /// record acknowledged before the point, and where a feed reader
    /// goes on from (`end()`). How a derived index (search) is rebuilt
    /// from the log; compaction and retention after the point take
    /// nothing from under it.
    pub fn log_point(&self, shard: usize) -> Result<rookery_storage::backup::ShardPoint> {
        assert!(shard < self.shards(), "shard {shard} of {}", self.shards());
        self.inner
            .queues
            .call(shard, |reply| Command::BackupPoint { reply })
            .wait()
    }

    /// Users with an open subscription to the room, on any shard.
    pub fn online(&self, room: u64) -> Pending<Vec<u64>> {
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::Online { room, reply })
    }

    /// The room's last durable seq (0 when it has no message).
    pub fn last_seq(&self, room: u64) -> Pending<u64> {
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::LastSeq {
                room,
                reply,
            })
    }

    /// Records that `user` has read `room` up to `seq`; resolves to the
    /// stored receipt, `max(old, min(seq, last seq))` (a receipt never moves
    /// back), once it is durable in `meta.redb`. Receipts are written in
    /// batches by one thread (see `receipt_batch_len_max`); `Busy` when its
    /// queue is full, `NotFound` for a room or user unknown to `meta`.
    pub fn mark_read(&self, room: u64, user: u64, seq: u64) -> Pending<u64> {
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::MarkRead {
                room,
                user,
                seq,
                reply,
            })
    }

    /// A page of `room`'s members with their read markers, `(user, seq)`
    /// ordered by user id: at most `len` with an id above `after` (`seq`
    /// 0 for one who has read nothing; a member's own posts count as
    /// read). `NotFound` for a room unknown to `meta`.
    pub fn receipts(&self, room: u64, after: u64, len: usize) -> Pending<ListPage<(u64, u64)>> {
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::Markers {
                room,
                after,
                len,
                reply,
            })
    }

    /// Where `user` stands in `room`: the owner's last seq and the user's
    /// receipt (O(1): two point reads); [`ReadState::unread`] counts the
    /// messages not read.
    pub fn unread(&self, room: u64, user: u64) -> Pending<ReadState> {
        self.inner
            .queues
            .call(self.shard_of(room), |reply| Command::Unread {
                room,
                user,
                reply,
            })
    }

    /// An inbox on the next shard in turn: one consumer for the events of
    /// many subscriptions (see [`Inbox`]).
    pub fn inbox(&self) -> Inbox {
        let shard = self.inner.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards();
        self.open_inbox(shard)
    }

    /// An inbox on a chosen shard (where a connection would live).
    pub fn inbox_on(&self, shard: usize) -> Result<Inbox> {
        if shard >= self.shards() {
            return Err(Error::InvalidInput(format!(
                "shard {shard} of {}",
                self.shards()
            )));
        }
        Ok(self.open_inbox(shard))
    }

    fn open_inbox(&self, shard: usize) -> Inbox {
        let id = self.next_id();
        let (tx, rx) = flume::unbounded();
        let shared = Arc::new(SubShared::default());
        let open = Command::OpenInbox {
            id,
            tx,
            shared: shared.clone(),
        };
        if !self.inner.queues.submit(shard, open) {
            shared.closed.store(CLOSED_SHUTDOWN, Ordering::Release);
        }
        Inbox {
            id,
            shard,
            rx,
            shared,
            queues: self.inner.queues.clone(),
        }
    }

    /// Subscribes to `room` on the next shard in turn: events with
    /// `seq > since` are replayed first (none when `since` is `None`), then
    /// live ones follow, with no gap and no duplicate. Resolves once the
    /// room's owner knows the subscription: every change made after that
    /// (a new message, an edit or delete of any message) reaches it.
    pub fn subscribe(&self, room: u64, since: Option<u64>) -> Pending<Subscription> {
        let shard = self.inner.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards();
        self.subscribe_on(shard, room, since)
    }

    /// Subscribes on a chosen shard (where a connection would live).
    pub fn subscribe_on(
        &self,
        shard: usize,
        room: u64,
        since: Option<u64>,
    ) -> Pending<Subscription> {
        self.subscribe_as(shard, room, since, None)
    }

    /// Subscribes on a chosen shard as `user`: while any subscription of the
    /// user to the room is open, on any shard, the user is online there
    /// (`presence` events announce the first join and the last leave to
    /// the room's other live subscribers). When this resolves, `online`
    /// already counts the user.
    pub fn subscribe_as(
        &self,
        shard: usize,
        room: u64,
        since: Option<u64>,
        user: Option<u64>,
    ) -> Pending<Subscription> {
        let inbox = match self.inbox_on(shard) {
            Ok(inbox) => inbox,
            Err(e) => return Pending::ready(Err(e)),
        };
        let key = inbox.key();
        self.inner
            .queues
            .subscribe_into(key, room, since, user, move |_| Subscription {
                inbox,
                room,
            })
    }

    /// Counters of every shard, summed.
    pub fn counters(&self) -> Result<ShardCounters> {
        Ok(self.metrics()?.counters)
    }

    /// Counters and gauges summed and latency histograms merged over every
    /// shard. Blocks; on a shard's executor use [`Engine::metrics_async`].
    pub fn metrics(&self) -> Result<Metrics> {
        futures_lite::future::block_on(self.metrics_async())
    }

    /// [`Engine::metrics`] for async callers (a `/metrics` scrape on a
    /// shard must not block the shard that has to answer it).
    pub async fn metrics_async(&self) -> Result<Metrics> {
        let mut m = Metrics::default();
        for shard in self.shard_metrics_async().await? {
            m.add_shard(&shard);
        }
        m.receipt_queue_len = self.inner.receipts.len() as u64;
        m.receipts_written = self.inner.receipt_stats.written.load(Ordering::Relaxed);
        m.receipt_batches = self.inner.receipt_stats.batches.load(Ordering::Relaxed);
        m.commands_refused = self.inner.queues.refused();
        Ok(m)
    }

    /// Each shard's own counters, gauges, histograms and storage counters,
    /// in shard order (the engine-wide receipt fields are left at 0).
    /// Blocks; on a shard's executor use [`Engine::shard_metrics_async`].
    pub fn shard_metrics(&self) -> Result<Vec<Metrics>> {
        futures_lite::future::block_on(self.shard_metrics_async())
    }

    /// [`Engine::shard_metrics`] for async callers.
    pub async fn shard_metrics_async(&self) -> Result<Vec<Metrics>> {
        let replies: Vec<_> = (0..self.shards())
            .map(|s| self.inner.queues.call(s, |reply| Command::Stats { reply }))
            .collect();
        let mut out = Vec::with_capacity(replies.len());
        for r in replies {
            let (counters, gauges, latencies, storage) = r.await?;
            out.push(Metrics {
                counters,
                gauges,
                latencies,
                storage,
                ..Metrics::default()
            });
        }
        Ok(out)
    }

    /// Graceful stop: every shard refuses new work, closes its
    /// subscriptions, flushes and checkpoints its storage; then the shard
    /// threads are joined. Later calls on any clone fail with `ShutDown`.
    pub fn shutdown(self) -> Result<()> {
        let replies: Vec<_> = (0..self.shards())
            .map(|s| {
                self.inner
                    .queues
                    .call(s, |reply| Command::Shutdown { reply })
            })
            .collect();
        let mut first_err = None;
        for r in replies {
            if let Err(e) = r.wait() {
                if !matches!(e, Error::ShutDown) {
                    first_err.get_or_insert(e);
                }
            }
        }
        let kicker = self
            .inner
            .kicker
            .lock()
            .map_err(|_| Error::ShutDown)?
            .take();
        if let Some((stop, handle)) = kicker {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
        let threads = self
            .inner
            .threads
            .lock()
            .map_err(|_| Error::ShutDown)?
            .take();
        if let Some(threads) = threads {
            for r in threads.join_all() {
                if let Err(e) = r {
                    first_err.get_or_insert(Error::Start(format!("shard thread: {e}")));
                }
            }
        }
        // Every shard is gone: the receipts they queued are all ahead of
        // this stop mark.
        let writer = self
            .inner
            .receipt_writer
            .lock()
            .map_err(|_| Error::ShutDown)?
            .take();
        if let Some(writer) = writer {
            let _ = self.inner.receipts.send(None);
            let _ = writer.join();
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// What one shard takes at its start: its command queue and its channels
/// to and from the other shards.
struct ShardEnds {
    commands: flume::Receiver<Command>,
    links: crate::shard::Links,
    from: crate::shard::FromPeers,
}

/// One shard's life: open storage, serve commands and peers until
/// shutdown.
async fn run_shard(
    ends: ShardEnds,
    cfg: EngineConfig,
    store: Arc<Store>,
    common: Common,
    ready: flume::Sender<Result<usize, String>>,
    side: Option<(ShardTask, flume::Receiver<Engine>)>,
) {
    let ShardEnds {
        commands,
        links,
        from,
    } = ends;
    let id = links.id;
    let storage = match store.open_shard(id as u32).await {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(format!("shard {id}: {e}")));
            return;
        }
    };
    let (done_tx, done_rx) = flume::bounded(1);
    let n = cfg.storage.shards as usize;
    let poll = cfg.lag_poll_interval;
    let retention_every = cfg.retention_interval;
    let queued = common.queued.clone();
    let shard = Shard::new(id, n, cfg, storage, common, links, done_tx);
    crate::shard::set_current(Some(shard.clone()));
    let mut loops = Vec::new();
    for (_, stream) in from {
        let shard = shard.clone();
        loops.push(glommio::spawn_local(async move {
            while let Ok(msg) = stream.recv_async().await {
                shard.handle_peer(msg);
            }
        }));
    }
    // The lagging pump: every `lag_poll_interval` while some subscription
    // lags, asleep (no timer) while none does.
    let pump = Rc::downgrade(&shard);
    let bell = shard.pump_bell.clone();
    glommio::spawn_local(async move {
        while let Some(shard) = pump.upgrade() {
            let lagging = shard.any_lagging();
            if lagging {
                shard.pump_lagging();
            }
            drop(shard);
            if lagging {
                glommio::timer::sleep(poll).await;
            } else {
                bell.wait().await;
            }
        }
    })
    .detach();
    // The own-reads flusher: every `OWN_READS_FLUSH` while some own posts'
    // receipts wait, asleep (no timer) while none do.
    let own = Rc::downgrade(&shard);
    let bell = shard.own_reads_bell.clone();
    glommio::spawn_local(async move {
        loop {
            bell.wait().await;
            loop {
                glommio::timer::sleep(crate::shard::OWN_READS_FLUSH).await;
                let Some(shard) = own.upgrade() else {
                    return;
                };
                if !shard.flush_own_reads() {
                    break;
                }
            }
        }
    })
    .detach();
    // The receipt-event flusher: every tick while receipts are shown or
    // waiting, asleep while none are.
    let seen = Rc::downgrade(&shard);
    let bell = shard.seen_bell.clone();
    glommio::spawn_local(async move {
        loop {
            bell.wait().await;
            loop {
                let Some(tick) = seen.upgrade().map(|s| s.seen_tick()) else {
                    return;
                };
                glommio::timer::sleep(tick).await;
                let Some(shard) = seen.upgrade() else {
                    return;
                };
                if !shard.flush_seen() {
                    break;
                }
            }
        }
    })
    .detach();
    if id == 0 {
        // One shard sweeps the uploads never sent (they are the node's,
        // not a room's).
        let sweeper = Rc::downgrade(&shard);
        glommio::spawn_local(async move {
            while let Some(shard) = sweeper.upgrade() {
                let every = shard.sweep_unsent_uploads().await;
                drop(shard);
                glommio::timer::sleep(every).await;
            }
        })
        .detach();
    }
    let retention = Rc::downgrade(&shard);
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(retention_every).await;
            let Some(shard) = retention.upgrade() else {
                break;
            };
            if let Err(e) = shard.enforce_retention().await {
                tracing::warn!(error = %e, "retention pass failed");
            }
        }
    })
    .detach();
    let command_shard = shard.clone();
    loops.push(glommio::spawn_local(async move {
        while let Ok(cmd) = commands.recv_async().await {
            if cmd.is_work() {
                queued[id].fetch_sub(1, Ordering::AcqRel);
            }
            let last = matches!(cmd, Command::Shutdown { .. });
            command_shard.handle(cmd);
            if last {
                break; // drops the queue: later calls fail with ShutDown
            }
        }
    }));
    let _ = ready.send(Ok(id));
    if let Some((task, handles)) = side {
        glommio::spawn_local(async move {
            if let Ok(engine) = handles.recv_async().await {
                task(id, engine).await;
            }
        })
        .detach();
    }
    let _ = done_rx.recv_async().await;
    // Every loop holding the shard ends (peers close their senders as they
    // shut down) before the executor exits, so storage and metadata are
    // released when `shutdown` returns.
    for task in loops {
        task.await;
    }
    crate::shard::set_current(None);
}
