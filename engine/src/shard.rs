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

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use glommio::channels::channel_mesh::Senders;
// Keys are ids the engine or the metadata assigned, not chosen by clients.
use rookery_storage::{
    Appended, Cursor, HistoryItem, Meta, Order, Retention, RetentionReport, Role, ShardStats,
    ShardStore,
};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::local::LocalSink;
use crate::metrics::{micros, Latencies, ShardCounters, ShardGauges};
use crate::receipts::{Receipt, ToWriter};
use crate::subscription::{Delivery, SubShared, CLOSED_SHUTDOWN, CLOSED_SLOW};

/// A reply channel for a command (works for blocking and async waiters).
pub(crate) type Reply<T> = flume::Sender<Result<T>>;

/// The result of a post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostAck {
    /// The message's seq.
    pub seq: u64,
    /// The timestamp stored, ms since the Unix epoch.
    pub ts_ms: u64,
    /// True when `(sender, client_id)` was seen before: nothing new was
    /// stored and this is the original message's seq.
    pub duplicate: bool,
}

/// A message as history returns it (owned: it crosses threads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Seq in the room.
    pub seq: u64,
    /// Author.
    pub sender: u64,
    /// Timestamp, ms since the Unix epoch.
    pub ts_ms: u64,
    /// The client's idempotency key.
    pub client_id: String,
    /// Body with edits applied; `None` when deleted.
    pub body: Option<String>,
    /// Whether it was edited.
    pub edited: bool,
}

impl StoredMessage {
    fn from_item(item: &HistoryItem) -> StoredMessage {
        StoredMessage {
            seq: item.seq(),
            sender: item.sender(),
            ts_ms: item.ts_ms(),
            client_id: item.client_id().to_string(),
            body: item.body().map(str::to_string),
            edited: item.edited(),
        }
    }

    fn event(&self, room: u64) -> Event {
        Event::message(
            room,
            self.seq,
            self.sender,
            self.ts_ms,
            self.body.as_deref(),
            self.edited,
        )
    }
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// Messages in the cursor's order.
    pub messages: Vec<StoredMessage>,
    /// Cursor of the next page in the same direction, if any.
    pub next: Option<Cursor>,
    /// Served from memory (nothing was read from disk): `X-Cache: HIT`.
    pub cached: bool,
}

/// A subscription to register on a shard.
pub(crate) struct NewSub {
    pub id: u64,
    /// The inbox it delivers into (one consumer, many subscriptions).
    pub inbox: u64,
    pub room: u64,
    /// Replay messages after this seq; `None`: live ones only.
    pub since: Option<u64>,
    /// Whose presence it carries.
    pub user: Option<u64>,
    /// The inbox's shared state (to tell why, if the inbox is gone), for
    /// an inbox with a channel.
    pub shared: Option<Arc<SubShared>>,
    /// Called once the owner has registered the subscriber's shard: from
    /// then on every change to the room reaches the subscription.
    pub ready: Ready,
}

/// Engine-wide services every shard holds a handle to.
pub(crate) struct Common {
    /// Users, rooms, members and receipts.
    pub meta: Arc<Meta>,
    /// The queue of the read-receipt writer.
    pub receipts: flume::Sender<ToWriter>,
    /// Work done per shard (see `Shard::busy`), read by the kicker.
    pub activity: Arc<Vec<std::sync::atomic::AtomicU64>>,
}

/// Completes a caller's `subscribe`.
pub(crate) type Ready = Box<dyn FnOnce(Result<()>) + Send>;

/// Work sent to a shard from any thread.
pub(crate) enum Command {
    Post {
        room: u64,
        sender: u64,
        client_id: String,
        body: String,
        reply: Reply<PostAck>,
    },
    Edit {
        room: u64,
        seq: u64,
        by: u64,
        body: String,
        reply: Reply<()>,
    },
    Delete {
        room: u64,
        seq: u64,
        by: u64,
        reply: Reply<()>,
    },
    Typing {
        room: u64,
        user: u64,
        reply: Reply<()>,
    },
    History {
        room: u64,
        cursor: Cursor,
        reply: Reply<HistoryPage>,
    },
    LastSeq {
        room: u64,
        reply: Reply<u64>,
    },
    MarkRead {
        room: u64,
        user: u64,
        seq: u64,
        reply: Reply<u64>,
    },
    Unread {
        room: u64,
        user: u64,
        reply: Reply<u64>,
    },
    Subscribe(NewSub),
    Online {
        room: u64,
        reply: Reply<Vec<u64>>,
    },
    Unsubscribe {
        id: u64,
    },
    /// A consumer's channel: subscriptions name it by `id`.
    OpenInbox {
        id: u64,
        tx: flume::Sender<Delivery>,
        shared: Arc<SubShared>,
    },
    /// Ends every subscription of an inbox (its consumer is gone).
    CloseInbox {
        inbox: u64,
    },
    Stats {
        reply: Reply<(ShardCounters, ShardGauges, Latencies, ShardStats)>,
    },
    Shutdown {
        reply: Reply<()>,
    },
    /// A no-op whose only effect is to wake the shard (see
    /// `EngineConfig::kick_interval`).
    Tick,
    SetRetention {
        room: u64,
        retention: Retention,
        reply: Reply<()>,
    },
    EnforceRetention {
        reply: Reply<RetentionReport>,
    },
    /// Creates a room (see `Engine::create_room`).
    CreateRoom {
        name: String,
        private: bool,
        creator: u64,
        reply: Reply<u64>,
    },
    /// Adds `user` to `room` with `role`, changes the role, or (`None`)
    /// removes the membership; answers the role before.
    SetMember {
        room: u64,
        user: u64,
        role: Option<Role>,
        reply: Reply<Option<Role>>,
    },
}

/// Traffic between shards (over glommio's channel mesh).
pub(crate) enum Peer {
    /// Events of rooms the receiving shard has subscribers for, in seq
    /// order per room. Batched: one message carries everything one owner
    /// produced for that shard since its last send.
    Deliver(Vec<Event>, Instant),
    /// The sending shard has its first (`on`) or lost its last
    /// subscription of `user` in `room`.
    Presence { room: u64, user: u64, on: bool },
    /// The sending shard starts (`on`) or stops having subscribers of `room`.
    Interest { room: u64, from: usize, on: bool },
    /// A subscriber on shard `from` wants events after `after`.
    PageRequest {
        room: u64,
        after: u64,
        limit: usize,
        from: usize,
        sub: u64,
        /// For a subscription's first page: its user, whose access the
        /// owner checks (a member removed meanwhile is refused).
        user: Option<u64>,
    },
    /// The answer: events, and `head`, the highest seq fanned out when the
    /// page was sent; `ok` is false when the owner could not read the page.
    PageReply {
        sub: u64,
        events: Vec<Event>,
        head: u64,
        outcome: PageOutcome,
    },
    /// `user` was removed from the private `room`: their subscriptions to
    /// it end (with a `left` event) before any later event of the room.
    Revoke { room: u64, user: u64 },
    /// A post from shard `from`, answered with `Posted { token, .. }`.
    Post {
        room: u64,
        sender: u64,
        client_id: String,
        body: String,
        from: usize,
        token: u64,
    },
    /// The answer to this shard's `Post` with `token`.
    Posted { token: u64, result: Result<PostAck> },
    /// `room` was just created: its owner forgets that it did not exist,
    /// then answers on `done`.
    Forget { room: u64, done: flume::Sender<()> },
}

/// How the owner answered a page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageOutcome {
    Served,
    /// The page could not be read (the subscriber asks again).
    Failed,
    /// Whether the user may see the room could not be read (the subscriber
    /// asks again; its `subscribe` stays unanswered until the owner could
    /// check).
    Unchecked,
    /// The subscription's user may not see the room (it ends, `NotFound`).
    Refused,
}

/// A room's tail cache: its newest events (at most `tail_cache_len`) and
/// the bytes they hold (kept as they change, for the gauges).
#[derive(Default)]
struct Tail {
    events: VecDeque<Event>,
    bytes: usize,
}

impl Tail {
    /// Appends the newest event, dropping the oldest past `len_max`; the
    /// change in bytes held.
    fn push(&mut self, e: Event, len_max: usize) -> isize {
        let before = self.bytes;
        self.bytes += e.len();
        self.events.push_back(e);
        if self.events.len() > len_max {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.len();
            }
        }
        self.bytes as isize - before as isize
    }

    /// Replaces the cached event with `fresh`'s seq, if it is cached; the
    /// change in bytes held.
    fn replace(&mut self, fresh: Event) -> isize {
        match self.events.iter_mut().find(|e| e.seq() == fresh.seq()) {
            Some(slot) => {
                let delta = fresh.len() as isize - slot.len() as isize;
                self.bytes = (self.bytes as isize + delta) as usize;
                *slot = fresh;
                delta
            }
            None => 0,
        }
    }

    /// Drops the oldest event; the bytes freed.
    fn pop_oldest(&mut self) -> usize {
        let freed = self.events.pop_front().map_or(0, |e| e.len());
        self.bytes -= freed;
        freed
    }

    /// Drops every cached event; the bytes freed.
    fn clear(&mut self) -> usize {
        self.events = VecDeque::new();
        std::mem::take(&mut self.bytes)
    }
}

impl std::ops::Deref for Tail {
    type Target = VecDeque<Event>;
    fn deref(&self) -> &VecDeque<Event> {
        &self.events
    }
}

/// A room this shard owns.
struct Owned {
    tail: Tail,
    /// The shard's use counter when its tail was last added to or read
    /// (the least recently used tails are dropped first).
    used: u64,
    /// Shards (other than this one) with subscribers of the room.
    remote: Vec<bool>,
    /// Completed appends waiting for lower seqs before fan-out.
    reorder: BTreeMap<u64, Event>,
    /// Online users: the number of shards where each has a subscription.
    online: HashMap<u64, u32>,
    /// Highest seq handed to fan-out.
    fanned_out: u64,
    typing_last: HashMap<u64, Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    Live,
    CatchingUp { in_flight: bool },
}

/// A subscriber hosted on this shard.
struct Sub {
    id: u64,
    inbox: u64,
    room: u64,
    /// Whose presence this subscription carries, if anyone's.
    user: Option<u64>,
    /// Where its events go: the bound on queued bytes is per consumer (one
    /// connection), lagging is per subscription (per room).
    outlet: Outlet,
    /// Next seq to deliver; 0 = "start at the head" (no replay).
    next_seq: u64,
    state: SubState,
    /// When its last catch-up page was asked for.
    asked_at: Instant,
    /// Edits and deletes that arrived while it was not live, in order.
    held: Vec<Event>,
    held_bytes: usize,
    /// The caller's `subscribe`, until the first page answers it.
    ready: Option<Ready>,
    /// When the queue was last seen shrinking while lagging.
    progress_at: Instant,
    progress_bytes: usize,
}

/// Where an inbox's events go.
#[derive(Clone)]
enum Outlet {
    /// A channel to a consumer on any thread. Every subscription holds a
    /// clone of the sender; with the last one gone (the inbox closed) the
    /// consumer's channel disconnects. `shared` counts the bytes sent and
    /// not yet received, and says why the inbox closed.
    Channel {
        tx: flume::Sender<Delivery>,
        shared: Arc<SubShared>,
    },
    /// A consumer on this shard's thread, called synchronously.
    Local(Rc<dyn LocalSink>),
}

impl Outlet {
    /// Bytes the consumer holds, not yet taken.
    fn queued(&self) -> usize {
        match self {
            Outlet::Channel { shared, .. } => shared.bytes.load(Ordering::Acquire),
            Outlet::Local(sink) => sink.queued_bytes(),
        }
    }

    /// Hands the consumer one event; false when it is gone.
    fn push(&self, sub: u64, event: &Event) -> bool {
        match self {
            Outlet::Channel { tx, shared } => {
                shared.bytes.fetch_add(event.len(), Ordering::AcqRel);
                tx.send(Delivery {
                    sub,
                    event: event.clone(),
                })
                .is_ok()
            }
            Outlet::Local(sink) => {
                sink.deliver(sub, event);
                true
            }
        }
    }

    /// Tells the consumer why its inbox ends.
    fn closing(&self, reason: u8) {
        match self {
            Outlet::Channel { shared, .. } => shared.closed.store(reason, Ordering::Release),
            Outlet::Local(sink) => sink.closed(match reason {
                CLOSED_SLOW => Error::SlowConsumer,
                _ => Error::ShutDown,
            }),
        }
    }
}

/// An open inbox: where its subscriptions deliver.
struct InboxEntry {
    outlet: Outlet,
    subs: Vec<u64>,
}

/// Who may post in a room this shard owns.
enum Access {
    /// No such room in the metadata (remembered only when rooms need not
    /// exist; forgotten when one is created through
    /// [`crate::Engine::create_room`]).
    Unknown,
    Room {
        private: bool,
        /// Members of a private room (empty for a public one: anyone may
        /// post).
        members: HashSet<u64>,
    },
}

/// A load of a room's access in flight.
#[derive(Default)]
struct Load {
    /// A change to the room landed while it read: load again.
    stale: bool,
    /// Posts waiting for it.
    waiters: Vec<flume::Sender<()>>,
}

impl Access {
    /// Whether `user` may post; an unknown room as `rooms_must_exist`
    /// says.
    fn allows(&self, user: u64, rooms_must_exist: bool) -> bool {
        match self {
            Access::Unknown => !rooms_must_exist,
            Access::Room { private, members } => !private || members.contains(&user),
        }
    }
}

/// One shard's runtime state. Lives on its executor (`Rc`).
pub(crate) struct Shard {
    pub id: usize,
    n: usize,
    cfg: EngineConfig,
    store: ShardStore,
    meta: Arc<Meta>,
    receipts: flume::Sender<ToWriter>,
    activity: Arc<Vec<std::sync::atomic::AtomicU64>>,
    senders: Senders<Peer>,
    owned: RefCell<HashMap<u64, Owned>>,
    local: RefCell<HashMap<u64, Vec<u64>>>,
    subs: RefCell<HashMap<u64, Sub>>,
    /// Open inboxes hosted here.
    inboxes: RefCell<HashMap<u64, InboxEntry>>,
    /// Reused by `deliver_local` for the ids it offers an event to.
    scratch_ids: Cell<Vec<u64>>,
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
    lagging: RefCell<BTreeSet<u64>>,
    /// Wakes the lagging pump when a subscription starts lagging (it
    /// sleeps, with no timer, while none does).
    pub(crate) pump_bell: Rc<Bell>,
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
    /// This shard itself, for tasks it spawns.
    me: std::rc::Weak<Shard>,
    /// Completed when shutdown finished; the executor then exits.
    done: flume::Sender<()>,
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

fn now_ms() -> u64 {
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
        senders: Senders<Peer>,
        done: flume::Sender<()>,
    ) -> Rc<Shard> {
        Rc::new_cyclic(|me| Shard {
            id,
            n,
            cfg,
            store,
            meta: common.meta,
            receipts: common.receipts,
            activity: common.activity,
            senders,
            owned: RefCell::default(),
            local: RefCell::default(),
            subs: RefCell::default(),
            inboxes: RefCell::default(),
            scratch_ids: Cell::default(),
            tail_bytes: Cell::new(0),
            uses: Cell::new(0),
            access: RefCell::default(),
            loads: RefCell::default(),
            pump_bell: Rc::new(Bell::default()),
            remote_posts: RefCell::default(),
            next_remote_post: Cell::new(1),
            lagging: RefCell::default(),
            present: RefCell::default(),
            outbox: RefCell::new((0..n).map(|_| VecDeque::new()).collect()),
            flushing: RefCell::new(vec![false; n]),
            closing: Cell::new(false),
            counters: RefCell::default(),
            latency: RefCell::default(),
            me: me.clone(),
            done,
        })
    }

    fn rc(&self) -> Rc<Shard> {
        self.me.upgrade().expect("a shard outlives its own calls")
    }

    /// Applies every owned room's retention now (also run periodically).
    pub(crate) async fn enforce_retention(&self) -> Result<RetentionReport> {
        Ok(self.store.enforce_retention(now_ms()).await?)
    }

    /// Graceful stop: refuse new work, close subscriptions, flush and close
    /// storage (which checkpoints), then let the executor exit.
    async fn shutdown(&self) -> Result<()> {
        self.closing.set(true);
        let inboxes: Vec<u64> = self.inboxes.borrow().keys().copied().collect();
        for inbox in inboxes {
            self.close_inbox(inbox, Some(CLOSED_SHUTDOWN));
        }
        let result = self.store.close().await;
        // Ends the peers' receive loops (they hold this shard) and ours end
        // as the peers do the same.
        self.senders.close();
        self.pump_bell.ring();
        // Posts waiting for another shard's answer get `ShutDown`.
        self.remote_posts.borrow_mut().clear();
        let _ = self.done.send(());
        Ok(result?)
    }

    fn owner(&self, room: u64) -> usize {
        rookery_storage::shard_of(room, self.n as u32) as usize
    }

    // ---- commands -------------------------------------------------------

    /// Counts work done on this shard: the kicker (see
    /// `EngineConfig::kick_interval`) wakes only shards that worked since
    /// its last look.
    pub(crate) fn busy(&self) {
        self.activity[self.id].fetch_add(1, Ordering::Relaxed);
    }

    /// Handles one command from the embed API. Commands that wait on
    /// storage run as their own task so the command loop never stalls.
    pub(crate) fn handle(self: &Rc<Self>, cmd: Command) {
        if !matches!(cmd, Command::Tick) {
            self.busy();
        }
        if self.closing.get() {
            return refuse(cmd);
        }
        match cmd {
            Command::Post {
                room,
                sender,
                client_id,
                body,
                reply,
            } => {
                let me = self.clone();
                glommio::spawn_local(async move {
                    send(reply, me.post(room, sender, &client_id, &body).await)
                })
                .detach();
            }
            Command::Edit {
                room,
                seq,
                by,
                body,
                reply,
            } => {
                let me = self.clone();
                glommio::spawn_local(async move {
                    send(reply, me.change(room, seq, by, Some(&body)).await)
                })
                .detach();
            }
            Command::Delete {
                room,
                seq,
                by,
                reply,
            } => {
                let me = self.clone();
                glommio::spawn_local(
                    async move { send(reply, me.change(room, seq, by, None).await) },
                )
                .detach();
            }
            Command::Typing { room, user, reply } => send(reply, self.typing(room, user)),
            Command::History {
                room,
                cursor,
                reply,
            } => {
                let me = self.clone();
                glommio::spawn_local(async move { send(reply, me.history(room, cursor).await) })
                    .detach();
            }
            Command::LastSeq { room, reply } => send(reply, Ok(self.store.last_seq(room))),
            Command::MarkRead {
                room,
                user,
                seq,
                reply,
            } => self.mark_read(room, user, seq, reply),
            Command::Unread { room, user, reply } => send(reply, self.unread(room, user)),
            Command::Subscribe(new) => self.subscribe(new),
            Command::Online { room, reply } => send(reply, Ok(self.online(room))),
            Command::Unsubscribe { id } => self.unsubscribe(id),
            Command::OpenInbox { id, tx, shared } => {
                let entry = InboxEntry {
                    outlet: Outlet::Channel { tx, shared },
                    subs: Vec::new(),
                };
                self.inboxes.borrow_mut().insert(id, entry);
            }
            Command::CreateRoom {
                name,
                private,
                creator,
                reply,
            } => {
                let me = self.clone();
                glommio::spawn_local(async move {
                    send(reply, me.create_room(name, private, creator).await)
                })
                .detach();
            }
            Command::SetMember {
                room,
                user,
                role,
                reply,
            } => {
                let me = self.clone();
                glommio::spawn_local(
                    async move { send(reply, me.set_member(room, user, role).await) },
                )
                .detach();
            }
            Command::CloseInbox { inbox } => self.close_inbox(inbox, None),
            Command::Stats { reply } => send(
                reply,
                Ok((
                    crate::metrics::ShardCounters {
                        cpu_us: crate::metrics::thread_cpu_us(),
                        ..*self.counters.borrow()
                    },
                    self.gauges(),
                    self.latency.borrow().clone(),
                    self.store.stats(),
                )),
            ),
            Command::Tick => {}
            Command::SetRetention {
                room,
                retention,
                reply,
            } => {
                let me = self.clone();
                glommio::spawn_local(async move {
                    send(
                        reply,
                        me.store
                            .set_retention(room, retention)
                            .await
                            .map_err(Error::from),
                    )
                })
                .detach();
            }
            Command::EnforceRetention { reply } => {
                let me = self.clone();
                glommio::spawn_local(async move { send(reply, me.enforce_retention().await) })
                    .detach();
            }
            Command::Shutdown { reply } => {
                let me = self.clone();
                glommio::spawn_local(async move { send(reply, me.shutdown().await) }).detach();
            }
        }
    }

    fn ensure_owned(&self, room: u64) {
        debug_assert_eq!(self.owner(room), self.id);
        self.owned
            .borrow_mut()
            .entry(room)
            .or_insert_with(|| Owned {
                tail: Tail::default(),
                used: 0,
                remote: vec![false; self.n],
                reorder: BTreeMap::new(),
                online: HashMap::default(),
                fanned_out: self.store.last_seq(room),
                typing_last: HashMap::default(),
            });
    }

    /// Whether `user` may post in `room` (owner side): a public room, or a
    /// private one they are a member of (and, unless `rooms_must_exist`, a
    /// room the metadata does not know). From memory; on first use the
    /// room is loaded off the reactor. A room that must exist and does
    /// not, and a private room the user is not in, are both `NotFound` (a
    /// private room does not reveal that it exists).
    async fn may_post(&self, room: u64, user: u64) -> Result<()> {
        let must_exist = self.cfg.rooms_must_exist;
        loop {
            if let Some(a) = self.access.borrow().get(&room) {
                return if a.allows(user, must_exist) {
                    Ok(())
                } else {
                    Err(Error::NotFound(format!("room {room}")))
                };
            }
            // One load per room at a time: the others wait for it.
            let wait = {
                let mut loads = self.loads.borrow_mut();
                match loads.get_mut(&room) {
                    Some(load) => {
                        let (tx, rx) = flume::bounded(1);
                        load.waiters.push(tx);
                        Some(rx)
                    }
                    None => {
                        loads.insert(room, Load::default());
                        None
                    }
                }
            };
            if let Some(rx) = wait {
                let _ = rx.recv_async().await;
                continue;
            }
            let meta = self.meta.clone();
            let loaded = glommio::executor()
                .spawn_blocking(move || load_access(&meta, room))
                .await;
            let load = self.loads.borrow_mut().remove(&room).unwrap_or_default();
            for waiter in load.waiters {
                let _ = waiter.send(());
            }
            let loaded = loaded?;
            if load.stale {
                // A member change or the room's creation landed while it
                // loaded: it may be missing. Load again.
                continue;
            }
            if must_exist && matches!(loaded, Access::Unknown) {
                // Not remembered: ids a client makes up must not grow the
                // map (each such post costs one read, under the send rate
                // limit).
                return Err(Error::NotFound(format!("room {room}")));
            }
            self.access.borrow_mut().insert(room, loaded);
        }
    }

    /// Marks a load of `room`'s access in flight as stale (a change to the
    /// room landed while it read).
    fn access_changed(&self, room: u64) {
        if let Some(load) = self.loads.borrow_mut().get_mut(&room) {
            load.stale = true;
        }
    }

    /// Owner side: `room` was just created; what was remembered of it
    /// (that it did not exist) is dropped.
    fn forget_room(&self, room: u64) {
        self.access_changed(room);
        self.access.borrow_mut().remove(&room);
    }

    /// Creates a room in the metadata (off the reactor) and makes its
    /// owner forget that it did not exist, before answering.
    async fn create_room(&self, name: String, private: bool, creator: u64) -> Result<u64> {
        let meta = self.meta.clone();
        let room = glommio::executor()
            .spawn_blocking(move || meta.create_room(&name, private, creator, now_ms()))
            .await?;
        let owner = self.owner(room);
        if owner == self.id {
            self.forget_room(room);
        } else {
            let (done, forgotten) = flume::bounded(1);
            self.push_peer(owner, Peer::Forget { room, done });
            let _ = forgotten.recv_async().await;
        }
        Ok(room)
    }

    /// Owner side: writes a membership change, keeps the access cache
    /// current, and ends a removed member's subscriptions to a private
    /// room on every shard (before any later event of the room).
    async fn set_member(&self, room: u64, user: u64, role: Option<Role>) -> Result<Option<Role>> {
        self.ensure_owned(room);
        let meta = self.meta.clone();
        let (before, private) = glommio::executor()
            .spawn_blocking(move || -> Result<(Option<Role>, bool)> {
                let private = meta
                    .room(room)?
                    .ok_or_else(|| Error::NotFound(format!("room {room}")))?
                    .private;
                let before = meta.member_role(room, user)?;
                match role {
                    Some(r) => {
                        meta.add_member(room, user, r)?;
                    }
                    None => {
                        meta.remove_member(room, user)?;
                    }
                }
                Ok((before, private))
            })
            .await?;
        self.access_changed(room);
        if let Some(Access::Room {
            private: true,
            members,
        }) = self.access.borrow_mut().get_mut(&room)
        {
            match role {
                Some(_) => members.insert(user),
                None => members.remove(&user),
            };
        }
        if before.is_some() && role.is_none() && private {
            for peer in (0..self.n).filter(|&p| p != self.id) {
                self.push_peer(peer, Peer::Revoke { room, user });
            }
            self.revoke(room, user);
        }
        Ok(before)
    }

    /// Ends `user`'s subscriptions to `room` on this shard, each with a
    /// `left` event as its last.
    fn revoke(&self, room: u64, user: u64) {
        let ids: Vec<u64> = match self.local.borrow().get(&room) {
            Some(ids) => ids.clone(),
            None => return,
        };
        let left = Event::left(room, "removed");
        for id in ids {
            let ended = {
                let subs = self.subs.borrow();
                match subs.get(&id) {
                    Some(sub) if sub.user == Some(user) => {
                        sub.outlet.push(id, &left);
                        true
                    }
                    _ => false,
                }
            };
            if ended {
                self.unsubscribe(id);
            }
        }
    }

    /// A post from this shard's thread to a room owned by another shard:
    /// sent over the mesh (batched with the turn's other traffic), answered
    /// by `Peer::Posted`.
    pub(crate) async fn post_remote(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        body: &str,
    ) -> Result<PostAck> {
        if self.closing.get() {
            return Err(Error::ShutDown);
        }
        let token = self.next_remote_post.get();
        self.next_remote_post.set(token + 1);
        let (tx, rx) = flume::bounded(1);
        self.remote_posts.borrow_mut().insert(token, tx);
        self.push_peer(
            self.owner(room),
            Peer::Post {
                room,
                sender,
                client_id: client_id.to_string(),
                body: body.to_string(),
                from: self.id,
                token,
            },
        );
        rx.recv_async().await.unwrap_or(Err(Error::ShutDown))
    }

    /// A post from this shard's own thread (see [`crate::Local::post`]).
    pub(crate) async fn post_here(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        body: &str,
    ) -> Result<PostAck> {
        if self.closing.get() {
            return Err(Error::ShutDown);
        }
        self.post(room, sender, client_id, body).await
    }

    /// Opens an inbox whose events go to `sink` (on this thread).
    pub(crate) fn open_local_inbox(&self, id: u64, sink: Rc<dyn LocalSink>) {
        if self.closing.get() {
            sink.closed(Error::ShutDown);
            return;
        }
        let entry = InboxEntry {
            outlet: Outlet::Local(sink),
            subs: Vec::new(),
        };
        self.inboxes.borrow_mut().insert(id, entry);
    }

    /// Subscribes into a local inbox (see [`crate::LocalInbox`]).
    pub(crate) fn subscribe_local(
        &self,
        inbox: u64,
        id: u64,
        room: u64,
        since: Option<u64>,
        user: Option<u64>,
        ready: Ready,
    ) {
        if self.closing.get() {
            return ready(Err(Error::ShutDown));
        }
        self.subscribe(NewSub {
            id,
            inbox,
            room,
            since,
            user,
            shared: None,
            ready,
        });
    }

    pub(crate) fn unsubscribe_local(&self, id: u64) {
        self.unsubscribe(id);
    }

    pub(crate) fn close_local_inbox(&self, id: u64) {
        self.close_inbox(id, None);
    }

    async fn post(&self, room: u64, sender: u64, client_id: &str, body: &str) -> Result<PostAck> {
        self.may_post(room, sender).await?;
        self.ensure_owned(room);
        let started = Instant::now();
        let appended = self
            .store
            .append_message(room, sender, client_id, now_ms(), body)
            .await?;
        self.latency
            .borrow_mut()
            .commit_us
            .saturating_record(micros(started.elapsed()));
        match appended {
            Appended::Duplicate { seq, ts_ms } => {
                self.counters.borrow_mut().duplicates += 1;
                Ok(PostAck {
                    seq,
                    ts_ms,
                    duplicate: true,
                })
            }
            Appended::New { seq, ts_ms } => {
                self.counters.borrow_mut().posts += 1;
                self.completed(
                    room,
                    Event::message(room, seq, sender, ts_ms, Some(body), false),
                );
                Ok(PostAck {
                    seq,
                    ts_ms,
                    duplicate: false,
                })
            }
        }
    }

    /// A durable message: release it, and any that waited for it, in seq
    /// order to fan-out.
    fn completed(&self, room: u64, event: Event) {
        {
            let mut owned = self.owned.borrow_mut();
            let o = owned.get_mut(&room).expect("owned before appending");
            if event.seq() == o.fanned_out + 1 && o.reorder.is_empty() {
                // In order, as nearly always: no detour through the buffer.
                o.fanned_out += 1;
                self.cache(o, event.clone());
                drop(owned);
                self.trim_tails();
                return self.fan_out(event);
            }
        }
        let mut ready = Vec::new();
        {
            let mut owned = self.owned.borrow_mut();
            let o = owned.get_mut(&room).expect("owned before appending");
            o.reorder.insert(event.seq(), event);
            while let Some(e) = o.reorder.remove(&(o.fanned_out + 1)) {
                o.fanned_out += 1;
                self.cache(o, e.clone());
                ready.push(e);
            }
        }
        self.trim_tails();
        for e in ready {
            self.fan_out(e);
        }
    }

    /// Hands an event to local subscribers and, once per shard, to every
    /// other shard with subscribers of the room.
    fn fan_out(&self, event: Event) {
        let room = event.room();
        for peer in 0..self.n {
            let on = self
                .owned
                .borrow()
                .get(&room)
                .is_some_and(|o| o.remote[peer]);
            if on {
                self.counters.borrow_mut().forwarded += 1;
                self.push_deliver(peer, event.clone());
            }
        }
        self.deliver_local(&event);
    }

    async fn change(&self, room: u64, seq: u64, by: u64, body: Option<&str>) -> Result<()> {
        let item = self
            .store
            .get(room, seq)
            .await?
            .ok_or_else(|| Error::NotFound(format!("message {seq} in room {room}")))?;
        let author = item.sender();
        drop(item);
        if author != by && self.meta.member_role(room, by)? != Some(Role::Admin) {
            return Err(Error::Forbidden(
                "only the author or a room admin may change a message".into(),
            ));
        }
        let ts = now_ms();
        let event = match body {
            Some(b) => {
                self.store.edit(room, seq, by, ts, b).await?;
                Event::edit(room, seq, by, ts, b)
            }
            None => {
                self.store.delete(room, seq, by, ts).await?;
                Event::delete(room, seq, by, ts)
            }
        };
        self.ensure_owned(room);
        self.refresh_cached(room, seq).await?;
        self.fan_out(event);
        Ok(())
    }

    /// Re-encodes a cached message after an edit or delete, so catch-up from
    /// the cache shows the current body.
    async fn refresh_cached(&self, room: u64, seq: u64) -> Result<()> {
        let cached = self
            .owned
            .borrow()
            .get(&room)
            .is_some_and(|o| o.tail.iter().any(|e| e.seq() == seq));
        if !cached {
            return Ok(());
        }
        let Some(item) = self.store.get(room, seq).await? else {
            return Ok(());
        };
        let fresh = StoredMessage::from_item(&item).event(room);
        if let Some(o) = self.owned.borrow_mut().get_mut(&room) {
            let delta = o.tail.replace(fresh);
            self.tail_bytes
                .set((self.tail_bytes.get() as isize + delta) as usize);
        }
        Ok(())
    }

    /// Adds a fanned-out event to its room's tail cache. One room keeps at
    /// most a quarter of the shard's budget (a room of large messages must
    /// not push every other room out, nor lose its whole cache at once).
    fn cache(&self, o: &mut Owned, event: Event) {
        let delta = o.tail.push(event, self.cfg.tail_cache_len);
        let mut bytes = (self.tail_bytes.get() as isize + delta) as usize;
        let room_max = self.cfg.tail_cache_bytes_max / 4;
        while o.tail.bytes > room_max && o.tail.len() > 1 {
            bytes -= o.tail.pop_oldest();
        }
        self.tail_bytes.set(bytes);
        o.used = self.next_use();
    }

    fn next_use(&self) -> u64 {
        let n = self.uses.get() + 1;
        self.uses.set(n);
        n
    }

    /// Keeps the tail caches of the rooms owned here within
    /// `tail_cache_bytes_max`: past it, the least recently used rooms'
    /// caches are dropped until three quarters of it is left (their
    /// catch-up and replay then read the log).
    fn trim_tails(&self) {
        let max = self.cfg.tail_cache_bytes_max;
        if self.tail_bytes.get() <= max {
            return;
        }
        let mut owned = self.owned.borrow_mut();
        let mut by_use: Vec<(u64, u64)> = owned
            .iter()
            .filter(|(_, o)| !o.tail.is_empty())
            .map(|(&room, o)| (o.used, room))
            .collect();
        by_use.sort_unstable();
        for (_, room) in by_use {
            if self.tail_bytes.get() <= max / 4 * 3 {
                break;
            }
            if let Some(o) = owned.get_mut(&room) {
                let freed = o.tail.clear();
                self.tail_bytes.set(self.tail_bytes.get() - freed);
                self.counters.borrow_mut().tail_evictions += 1;
            }
        }
    }

    fn typing(&self, room: u64, user: u64) -> Result<()> {
        self.ensure_owned(room);
        {
            let mut owned = self.owned.borrow_mut();
            let o = owned.get_mut(&room).expect("ensured");
            let now = Instant::now();
            if o.typing_last
                .get(&user)
                .is_some_and(|t| now.duration_since(*t) < self.cfg.typing_interval)
            {
                return Err(Error::RateLimited("typing".into()));
            }
            o.typing_last.insert(user, now);
        }
        self.fan_out(Event::typing(room, user));
        Ok(())
    }

    /// A page of history, cut short (with a cursor to the rest) once its
    /// bodies pass `history_page_bytes_max`: a reply is bounded in bytes as
    /// well as in messages.
    async fn history(&self, room: u64, cursor: Cursor) -> Result<HistoryPage> {
        let page = self.store.history(room, cursor).await?;
        let budget = self.cfg.history_page_bytes_max;
        let mut bytes = 0usize;
        let mut messages = Vec::with_capacity(page.items.len());
        for item in &page.items {
            if bytes >= budget {
                break;
            }
            let m = StoredMessage::from_item(item);
            bytes += m.body.as_ref().map_or(0, String::len) + m.client_id.len() + 64;
            messages.push(m);
        }
        let next = match messages.last() {
            Some(last) if messages.len() < page.items.len() => Some(match cursor.order {
                Order::NewestFirst => Cursor::before(last.seq, cursor.limit),
                Order::OldestFirst => Cursor::after(last.seq, cursor.limit),
            }),
            _ => page.next,
        };
        Ok(HistoryPage {
            messages,
            next,
            cached: page.cached,
        })
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
                .chain(subs.values().map(|s| s.held_bytes as u64))
                .sum(),
            outbox_messages: self.outbox.borrow().iter().map(|q| q.len() as u64).sum(),
            rooms_loaded: owned.len() as u64,
            tail_cache_events: owned.values().map(|o| o.tail.len() as u64).sum(),
            tail_cache_bytes: owned.values().map(|o| o.tail.bytes as u64).sum(),
        }
    }

    // ---- read receipts ---------------------------------------------------

    /// Owner side: hands the receipt, with the room's current last seq, to
    /// the receipt writer, which answers `reply` after its batch commits.
    fn mark_read(&self, room: u64, user: u64, seq: u64, reply: Reply<u64>) {
        let last = self.store.last_seq(room);
        let receipt = Receipt {
            room,
            user,
            seq,
            last,
            reply,
        };
        match self.receipts.try_send(Some(receipt)) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(Some(r))) => {
                self.counters.borrow_mut().receipts_refused += 1;
                send(
                    r.reply,
                    Err(Error::Busy("the read-receipt queue is full".into())),
                );
            }
            Err(flume::TrySendError::Disconnected(Some(r))) => send(r.reply, Err(Error::ShutDown)),
            Err(_) => unreachable!("a receipt was sent"),
        }
    }

    /// Owner side: the room's last seq minus the user's receipt (two
    /// point reads).
    fn unread(&self, room: u64, user: u64) -> Result<u64> {
        let last = self.store.last_seq(room);
        Ok(last.saturating_sub(self.meta.read_seq(room, user)?))
    }

    // ---- subscribers ----------------------------------------------------

    fn subscribe(&self, new: NewSub) {
        let NewSub {
            id,
            inbox,
            room,
            since,
            user,
            shared,
            ready,
        } = new;
        let outlet = {
            let mut inboxes = self.inboxes.borrow_mut();
            let Some(entry) = inboxes.get_mut(&inbox) else {
                // Closed (slow consumer) or dropped before this arrived.
                let slow = shared.is_some_and(|s| s.closed.load(Ordering::Acquire) == CLOSED_SLOW);
                ready(Err(if slow {
                    Error::SlowConsumer
                } else {
                    Error::ShutDown
                }));
                return;
            };
            entry.subs.push(id);
            entry.outlet.clone()
        };
        let sub = Sub {
            id,
            inbox,
            room,
            user,
            outlet,
            next_seq: since.map_or(0, |s| s + 1),
            state: SubState::CatchingUp { in_flight: false },
            asked_at: Instant::now(),
            held: Vec::new(),
            held_bytes: 0,
            ready: Some(ready),
            progress_at: Instant::now(),
            progress_bytes: 0,
        };
        self.subs.borrow_mut().insert(id, sub);
        let first = {
            let mut local = self.local.borrow_mut();
            let list = local.entry(room).or_default();
            list.push(id);
            list.len() == 1
        };
        let owner = self.owner(room);
        if first && owner != self.id {
            self.push_peer(
                owner,
                Peer::Interest {
                    room,
                    from: self.id,
                    on: true,
                },
            );
        }
        if let Some(user) = user {
            self.local_presence(room, user, true);
        }
        // Interest and presence reach the owner before this request, so its
        // answer (which completes the caller's `subscribe`) proves both.
        self.mark_lagging(id);
        self.request_page(id);
    }

    /// Counts a user's subscriptions to a room on this shard; the first and
    /// the last are reported to the room's owner.
    fn local_presence(&self, room: u64, user: u64, on: bool) {
        let changed = count(&mut self.present.borrow_mut(), (room, user), on);
        if !changed {
            return;
        }
        let owner = self.owner(room);
        if owner == self.id {
            self.presence_changed(room, user, on);
        } else {
            self.push_peer(owner, Peer::Presence { room, user, on });
        }
    }

    /// Owner side: a shard gained its first or lost its last subscription
    /// of `user` in `room`; the user's first and last across all shards are
    /// announced.
    fn presence_changed(&self, room: u64, user: u64, on: bool) {
        self.ensure_owned(room);
        let announce = {
            let mut owned = self.owned.borrow_mut();
            count(&mut owned.get_mut(&room).expect("ensured").online, user, on)
        };
        if announce {
            self.fan_out(Event::presence(room, user, on));
        }
    }

    /// Users online in a room (owner side), ascending.
    fn online(&self, room: u64) -> Vec<u64> {
        let mut users: Vec<u64> = self
            .owned
            .borrow()
            .get(&room)
            .map(|o| o.online.keys().copied().collect())
            .unwrap_or_default();
        users.sort_unstable();
        users
    }

    fn unsubscribe(&self, id: u64) {
        let Some(sub) = self.subs.borrow_mut().remove(&id) else {
            return;
        };
        self.lagging.borrow_mut().remove(&id);
        {
            let mut inboxes = self.inboxes.borrow_mut();
            if let Some(entry) = inboxes.get_mut(&sub.inbox) {
                entry.subs.retain(|s| *s != id);
            }
        }
        if let Some(user) = sub.user {
            self.local_presence(sub.room, user, false);
        }
        let last = {
            let mut local = self.local.borrow_mut();
            let list = local.entry(sub.room).or_default();
            list.retain(|s| *s != id);
            let empty = list.is_empty();
            if empty {
                local.remove(&sub.room);
            }
            empty
        };
        let owner = self.owner(sub.room);
        if last && owner != self.id {
            self.push_peer(
                owner,
                Peer::Interest {
                    room: sub.room,
                    from: self.id,
                    on: false,
                },
            );
        }
    }

    /// Offers an event to the local subscribers of its room.
    fn deliver_local(&self, event: &Event) {
        // The ids are copied out (an offer may unsubscribe, which changes
        // `local`) into a buffer the shard reuses: no allocation per event.
        let mut ids = self.scratch_ids.take();
        match self.local.borrow().get(&event.room()) {
            Some(list) => ids.extend_from_slice(list),
            None => return self.scratch_ids.set(ids),
        }
        for &id in &ids {
            self.offer(id, event);
        }
        ids.clear();
        self.scratch_ids.set(ids);
    }

    /// One event for one subscriber: live delivery, a skipped duplicate, a
    /// dropped volatile event, or the switch to lagging.
    fn offer(&self, id: u64, event: &Event) {
        let mut subs = self.subs.borrow_mut();
        let Some(sub) = subs.get_mut(&id) else { return };
        let queued = sub.outlet.queued();
        if event.is_volatile() {
            // Typing and presence: only for live subscribers with room in
            // their queue; these are what pressure drops first.
            let live = sub.state == SubState::Live && sub.next_seq != 0;
            if live && queued + event.len() <= self.cfg.volatile_queue_bytes_max {
                self.push(sub, event);
            } else {
                self.counters.borrow_mut().volatile_dropped += 1;
            }
            return;
        }
        if !event.is_sequenced() {
            // Edits and deletes are never dropped: while a subscriber
            // catches up (or its queue is full) they wait beside it and are
            // delivered when it is live again. A page may already show the
            // change; applying it twice is harmless.
            if sub.state == SubState::Live
                && sub.held.is_empty()
                && queued + event.len() <= self.cfg.outbound_queue_bytes_max
            {
                self.push(sub, event);
                return;
            }
            sub.held_bytes += event.len();
            sub.held.push(event.clone());
            let overflow = sub.held_bytes > self.cfg.outbound_queue_bytes_max;
            let was_live = sub.state == SubState::Live;
            if was_live {
                sub.state = SubState::CatchingUp { in_flight: false };
                sub.progress_at = Instant::now();
                sub.progress_bytes = queued;
            }
            drop(subs);
            if overflow {
                self.close_sub(id, CLOSED_SLOW);
                self.counters.borrow_mut().slow_closed += 1;
            } else if was_live {
                self.counters.borrow_mut().lagged += 1;
                self.mark_lagging(id);
            }
            return;
        }
        if sub.state != SubState::Live || event.seq() < sub.next_seq {
            return; // catching up (pages carry it), or a duplicate
        }
        if event.seq() > sub.next_seq || queued + event.len() > self.cfg.outbound_queue_bytes_max {
            // Full (or a gap, which FIFO delivery rules out): stop live
            // delivery at next_seq and catch up when the consumer drains.
            sub.state = SubState::CatchingUp { in_flight: false };
            sub.progress_at = Instant::now();
            sub.progress_bytes = queued;
            self.counters.borrow_mut().lagged += 1;
            drop(subs);
            self.mark_lagging(id);
            return;
        }
        sub.next_seq += 1;
        self.push(sub, event);
    }

    fn push(&self, sub: &Sub, event: &Event) {
        if sub.outlet.push(sub.id, event) {
            self.counters.borrow_mut().delivered += 1;
        }
    }

    /// Asks the owner for the next page of a catching-up subscriber.
    fn request_page(&self, id: u64) {
        let (room, after, limit, user) = {
            let mut subs = self.subs.borrow_mut();
            let Some(sub) = subs.get_mut(&id) else { return };
            sub.state = SubState::CatchingUp { in_flight: true };
            sub.asked_at = Instant::now();
            let limit = if sub.next_seq == 0 {
                0
            } else {
                self.cfg.catch_up_page_len
            };
            // The first page also checks that the user may see the room.
            let user = sub.user.filter(|_| sub.ready.is_some());
            (sub.room, sub.next_seq.saturating_sub(1), limit, user)
        };
        let owner = self.owner(room);
        if owner == self.id {
            let me = self.rc();
            glommio::spawn_local(async move {
                match me.serve_page(room, after, limit, user).await {
                    (PageOutcome::Served, events, head) => me.apply_page(id, events, head),
                    (PageOutcome::Refused, ..) => me.page_refused(id, room),
                    (outcome, ..) => me.page_failed(id, outcome),
                }
            })
            .detach();
        } else {
            self.push_peer(
                owner,
                Peer::PageRequest {
                    room,
                    after,
                    limit,
                    from: self.id,
                    sub: id,
                    user,
                },
            );
        }
    }

    /// Owner side: a page for a subscriber, refused when `user` is given
    /// and may not see the room (checked here, on the owner, in order with
    /// the room's member changes and `Revoke`s).
    async fn serve_page(
        &self,
        room: u64,
        after: u64,
        limit: usize,
        user: Option<u64>,
    ) -> (PageOutcome, Vec<Event>, u64) {
        if let Some(user) = user {
            match self.may_post(room, user).await {
                Ok(()) => {}
                Err(Error::NotFound(_)) => return (PageOutcome::Refused, Vec::new(), 0),
                Err(e) => {
                    tracing::warn!(shard = self.id, room, error = %e, "checking a subscriber's access failed");
                    return (PageOutcome::Unchecked, Vec::new(), 0);
                }
            }
        }
        match self.read_page(room, after, limit).await {
            Ok((events, head)) => (PageOutcome::Served, events, head),
            Err(e) => {
                tracing::warn!(shard = self.id, room, error = %e, "serving a catch-up page failed");
                (PageOutcome::Failed, Vec::new(), 0)
            }
        }
    }

    /// Owner side: events after `after` (from the tail cache when it covers
    /// them, else from storage) and the current fan-out head.
    async fn read_page(&self, room: u64, after: u64, limit: usize) -> Result<(Vec<Event>, u64)> {
        self.ensure_owned(room);
        // Retention may have retired the oldest cached events.
        let from = (after + 1).max(self.store.low_seq(room));
        let use_now = self.next_use();
        let cached = {
            let mut owned = self.owned.borrow_mut();
            let o = owned.get_mut(&room).expect("ensured");
            o.used = use_now;
            let covers = o.tail.front().is_some_and(|e| e.seq() <= from) || after >= o.fanned_out;
            covers.then(|| {
                o.tail
                    .iter()
                    .filter(|e| e.seq() >= from)
                    .take(limit)
                    .cloned()
                    .collect::<Vec<_>>()
            })
        };
        let events = match cached {
            Some(events) => {
                self.counters.borrow_mut().cache_hits += 1;
                events
            }
            None => {
                self.counters.borrow_mut().cache_misses += 1;
                let page = self
                    .store
                    .history(room, Cursor::after(after, limit))
                    .await?;
                page.items
                    .iter()
                    .map(|i| StoredMessage::from_item(i).event(room))
                    .collect()
            }
        };
        let head = self.owned.borrow()[&room].fanned_out;
        Ok((events, head))
    }

    /// Subscriber side: applies a page; switches to live once past `head`.
    fn apply_page(&self, id: u64, events: Vec<Event>, head: u64) {
        let mut subs = self.subs.borrow_mut();
        let Some(sub) = subs.get_mut(&id) else { return };
        sub.state = SubState::CatchingUp { in_flight: false };
        if let Some(ready) = sub.ready.take() {
            ready(Ok(()));
        }
        self.latency
            .borrow_mut()
            .page_us
            .saturating_record(micros(sub.asked_at.elapsed()));
        if sub.next_seq == 0 {
            sub.next_seq = head + 1;
        }
        for e in events {
            if e.seq() < sub.next_seq {
                continue;
            }
            if sub.outlet.queued() + e.len() > self.cfg.outbound_queue_bytes_max {
                return; // stays lagging; the pump asks again when drained
            }
            // A jump forward means retention removed the seqs in between.
            sub.next_seq = e.seq() + 1;
            self.push(sub, &e);
        }
        if sub.next_seq > head {
            let queued = sub.outlet.queued();
            if queued + sub.held_bytes > self.cfg.outbound_queue_bytes_max {
                return; // room for the held changes first
            }
            for e in std::mem::take(&mut sub.held) {
                self.push(sub, &e);
            }
            sub.held_bytes = 0;
            sub.state = SubState::Live;
            drop(subs);
            self.lagging.borrow_mut().remove(&id);
        }
    }

    /// The owner refused a subscription (its user may not see the room):
    /// it ends, and the caller's `subscribe` gets `NotFound`.
    fn page_refused(&self, id: u64, room: u64) {
        let ready = self
            .subs
            .borrow_mut()
            .get_mut(&id)
            .and_then(|sub| sub.ready.take());
        self.unsubscribe(id);
        if let Some(ready) = ready {
            ready(Err(Error::NotFound(format!("room {room}"))));
        }
    }

    fn page_failed(&self, id: u64, outcome: PageOutcome) {
        tracing::warn!(
            shard = self.id,
            sub = id,
            ?outcome,
            "catch-up page failed; retrying"
        );
        let mut subs = self.subs.borrow_mut();
        let Some(sub) = subs.get_mut(&id) else { return };
        sub.state = SubState::CatchingUp { in_flight: false };
        // The owner answered, so it knows about this shard: once it could
        // check the user, the subscription is in place even though its
        // replay must retry.
        if outcome != PageOutcome::Unchecked {
            if let Some(ready) = sub.ready.take() {
                drop(subs);
                ready(Ok(()));
            }
        }
    }

    /// Puts a subscription on the lagging list (the pump looks at it from
    /// now on).
    fn mark_lagging(&self, id: u64) {
        self.lagging.borrow_mut().insert(id);
        self.pump_bell.ring();
    }

    /// Whether any subscription lags (the pump sleeps while none does).
    pub(crate) fn any_lagging(&self) -> bool {
        !self.lagging.borrow().is_empty()
    }

    /// Periodic task body: requests pages for lagging subscribers whose
    /// queue drained below half, and closes those stuck past the timeout.
    pub(crate) fn pump_lagging(&self) {
        let ids: Vec<u64> = self.lagging.borrow().iter().copied().collect();
        let now = Instant::now();
        for id in ids {
            let (ask, stuck) = {
                let mut subs = self.subs.borrow_mut();
                let Some(sub) = subs.get_mut(&id) else {
                    continue;
                };
                let bytes = sub.outlet.queued();
                if bytes < sub.progress_bytes || bytes == 0 {
                    sub.progress_at = now;
                }
                sub.progress_bytes = bytes;
                let idle = sub.state == SubState::CatchingUp { in_flight: false };
                (
                    idle && bytes <= self.cfg.outbound_queue_bytes_max / 2,
                    now.duration_since(sub.progress_at) > self.cfg.stuck_timeout,
                )
            };
            if stuck {
                self.close_sub(id, CLOSED_SLOW);
                self.counters.borrow_mut().slow_closed += 1;
            } else if ask {
                self.request_page(id);
            }
        }
    }

    /// Closes the inbox a subscription delivers into, with every other
    /// subscription of it: its consumer (one connection) is what is slow
    /// or gone.
    fn close_sub(&self, id: u64, reason: u8) {
        let inbox = self.subs.borrow().get(&id).map(|s| s.inbox);
        if let Some(inbox) = inbox {
            self.close_inbox(inbox, Some(reason));
        }
    }

    /// Ends every subscription of `inbox` on this shard; with a `reason`,
    /// the consumer learns why (its channel disconnects once all are gone).
    fn close_inbox(&self, inbox: u64, reason: Option<u8>) {
        let Some(entry) = self.inboxes.borrow_mut().remove(&inbox) else {
            return;
        };
        if let Some(reason) = reason {
            entry.outlet.closing(reason);
        }
        for id in entry.subs {
            self.unsubscribe(id);
        }
    }

    // ---- the mesh ---------------------------------------------------------

    /// Handles a message from another shard.
    pub(crate) fn handle_peer(&self, msg: Peer) {
        self.busy();
        match msg {
            Peer::Deliver(events, queued_at) => {
                self.latency
                    .borrow_mut()
                    .hop_us
                    .saturating_record(micros(queued_at.elapsed()));
                for e in &events {
                    self.deliver_local(e);
                }
            }
            Peer::Presence { room, user, on } => self.presence_changed(room, user, on),
            Peer::Interest { room, from, on } => {
                self.ensure_owned(room);
                self.owned
                    .borrow_mut()
                    .get_mut(&room)
                    .expect("ensured")
                    .remote[from] = on;
            }
            Peer::PageRequest {
                room,
                after,
                limit,
                from,
                sub,
                user,
            } => {
                let me = self.rc();
                glommio::spawn_local(async move {
                    let (outcome, events, head) = me.serve_page(room, after, limit, user).await;
                    me.push_peer(
                        from,
                        Peer::PageReply {
                            sub,
                            events,
                            head,
                            outcome,
                        },
                    );
                })
                .detach();
            }
            Peer::Revoke { room, user } => self.revoke(room, user),
            Peer::Post {
                room,
                sender,
                client_id,
                body,
                from,
                token,
            } => {
                let me = self.rc();
                glommio::spawn_local(async move {
                    let result = if me.closing.get() {
                        Err(Error::ShutDown)
                    } else {
                        me.post(room, sender, &client_id, &body).await
                    };
                    me.push_peer(from, Peer::Posted { token, result });
                })
                .detach();
            }
            Peer::Posted { token, result } => {
                if let Some(tx) = self.remote_posts.borrow_mut().remove(&token) {
                    let _ = tx.send(result);
                }
            }
            Peer::Forget { room, done } => {
                self.forget_room(room);
                let _ = done.send(());
            }
            Peer::PageReply {
                sub,
                events,
                head,
                outcome,
            } => match outcome {
                PageOutcome::Served => self.apply_page(sub, events, head),
                PageOutcome::Refused => {
                    let room = self.subs.borrow().get(&sub).map_or(0, |s| s.room);
                    self.page_refused(sub, room);
                }
                outcome => self.page_failed(sub, outcome),
            },
        }
    }

    fn push_deliver(&self, peer: usize, event: Event) {
        let mut outbox = self.outbox.borrow_mut();
        if let Some(Peer::Deliver(batch, _)) = outbox[peer].back_mut() {
            batch.push(event);
            return;
        }
        outbox[peer].push_back(Peer::Deliver(vec![event], Instant::now()));
        drop(outbox);
        self.schedule_flush(peer);
    }

    fn push_peer(&self, peer: usize, msg: Peer) {
        self.outbox.borrow_mut()[peer].push_back(msg);
        self.schedule_flush(peer);
    }

    /// Starts the flusher of `peer` if it is not running. It runs after the
    /// tasks already queued, so everything they produce for `peer` leaves
    /// in as few messages as possible, in order.
    fn schedule_flush(&self, peer: usize) {
        if std::mem::replace(&mut self.flushing.borrow_mut()[peer], true) {
            return;
        }
        let me = self.rc();
        glommio::spawn_local(async move {
            // Let every task already runnable (the other completions of the
            // same commit batch) add to the outbox first.
            futures_lite::future::yield_now().await;
            loop {
                let next = me.outbox.borrow_mut()[peer].pop_front();
                let Some(msg) = next else {
                    me.flushing.borrow_mut()[peer] = false;
                    break;
                };
                me.counters.borrow_mut().mesh_sends += 1;
                if me.senders.send_to(peer, msg).await.is_err() {
                    me.flushing.borrow_mut()[peer] = false;
                    break; // the peer has shut down
                }
            }
        })
        .detach();
    }
}

/// Counts one up (`on`) or down for `key`, forgetting zeros; true when the
/// count crossed between zero and non-zero (a first join or a last leave).
fn count<K: std::hash::Hash + Eq + Copy>(counts: &mut HashMap<K, u32>, key: K, on: bool) -> bool {
    let n = counts.entry(key).or_insert(0);
    let before = *n;
    *n = if on {
        before + 1
    } else {
        before.saturating_sub(1)
    };
    let after = *n;
    if after == 0 {
        counts.remove(&key);
    }
    (before == 0) != (after == 0)
}

fn send<T>(reply: Reply<T>, result: Result<T>) {
    let _ = reply.send(result);
}

fn refuse(cmd: Command) {
    match cmd {
        Command::Post { reply, .. } => send(reply, Err(Error::ShutDown)),
        Command::Edit { reply, .. }
        | Command::Delete { reply, .. }
        | Command::Typing { reply, .. } => send(reply, Err(Error::ShutDown)),
        Command::History { reply, .. } => send(reply, Err(Error::ShutDown)),
        Command::LastSeq { reply, .. } => send(reply, Err(Error::ShutDown)),
        Command::MarkRead { reply, .. } | Command::Unread { reply, .. } => {
            send(reply, Err(Error::ShutDown))
        }
        Command::Stats { reply } => send(reply, Err(Error::ShutDown)),
        Command::Shutdown { reply } => send(reply, Ok(())),
        Command::Subscribe(NewSub { shared, ready, .. }) => {
            if let Some(shared) = shared {
                shared.closed.store(CLOSED_SHUTDOWN, Ordering::Release);
            }
            ready(Err(Error::ShutDown));
        }
        Command::Online { reply, .. } => send(reply, Err(Error::ShutDown)),
        Command::SetRetention { reply, .. } => send(reply, Err(Error::ShutDown)),
        Command::EnforceRetention { reply } => send(reply, Err(Error::ShutDown)),
        Command::SetMember { reply, .. } => send(reply, Err(Error::ShutDown)),
        Command::CreateRoom { reply, .. } => send(reply, Err(Error::ShutDown)),
        Command::OpenInbox { shared, .. } => {
            shared.closed.store(CLOSED_SHUTDOWN, Ordering::Release)
        }
        Command::Unsubscribe { .. } | Command::CloseInbox { .. } | Command::Tick => {}
    }
}

/// Who may post in `room`, from the metadata (blocking).
fn load_access(meta: &Meta, room: u64) -> Result<Access> {
    let Some(r) = meta.room(room)? else {
        return Ok(Access::Unknown);
    };
    let members = if r.private {
        meta.members(room)?.into_iter().map(|(u, _)| u).collect()
    } else {
        HashSet::default()
    };
    Ok(Access::Room {
        private: r.private,
        members,
    })
}
