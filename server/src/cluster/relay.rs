//! A shard's relay of rooms other nodes own to its WebSocket connections:
//! while a connection of this shard follows such a room, the shard
//! subscribes to the room's NATS subject, and hands each event to its
//! connections as the engine would hand a local room's.
//!
//! Core NATS delivers at most once, so messages are put back in order
//! (`order.rs`): a message past a gap waits while the gap is filled from
//! the owner (`Op::Replay`), a duplicate is dropped. What NATS may lose
//! entirely (the last messages before a quiet spell, a removal) is caught
//! by a sweep that asks each room's owner, every `SWEEP_INTERVAL`, for its
//! last seq and which of the room's followers here may still follow it.
//!
//! Invariants: each subscriber sees each message seq at most once and in
//! increasing order (its `last` only grows), and every seq between its
//! join (or its `since`) and the owner's latest, unless it was closed; a
//! room's NATS subscription exists only while it has a subscriber whose
//! join the owner accepted; while a join is being answered its events wait
//! (at most `queue_bytes_max`). A subscriber whose connection holds more
//! than `queue_bytes_max` unwritten lags, as on a local room: live
//! messages pass it by, its edits and deletes wait beside it (at most
//! `queue_bytes_max` of them), typing, presence and receipts are dropped, and once
//! the connection drains it is caught up from the owner page by page, then
//! goes live again; one that makes no progress for `stuck_timeout` is
//! closed as a slow consumer (4008). A user's presence is told to the
//! owner once per change (on, then off), from this node and shard,
//! idempotently.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rookery_engine::{Error as EngineError, Event, EventKind, LocalSink};

use super::events;
use super::ops::{self, Answer, Op};
use super::order::Order;
use super::Node;
use crate::app::ApiError;

/// Messages past a gap kept per room while it is filled (more are
/// dropped and replayed by the owner).
const HELD_MAX: usize = 4096;
/// Messages asked for per replay (the owner also caps an answer's bytes).
const REPLAY_LEN: usize = 256;
/// Pause before asking an owner again when a gap could not be filled.
const FILL_RETRY: Duration = Duration::from_millis(250);
/// How often each relayed room is checked with its owner (last seq, who
/// may follow it): the longest a lost message waits for a quiet room, or
/// a removed user keeps a subscription whose `left` NATS lost.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Sub ids of relayed rooms start here, apart from the engine's.
const SUB_BASE: u64 = 1 << 62;
/// How often a lagging subscriber's connection is looked at.
const LAG_POLL: Duration = Duration::from_millis(10);

/// A relay's limits per subscriber (from the engine's configuration).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Bytes a connection may hold unwritten before its subscription lags.
    pub queue_bytes_max: usize,
    /// Bytes past which volatile events (typing, presence, receipts) are
    /// dropped for it.
    pub volatile_bytes_max: usize,
    /// How long a lagging connection may write nothing before it is closed.
    pub stuck_timeout: Duration,
}

/// A lagging subscriber's state.
struct Lag {
    /// When its connection last wrote something, and what it then held.
    progress_at: Instant,
    queued: usize,
    /// Edits and deletes that came meanwhile, for after the catch-up.
    held: Vec<Event>,
    held_bytes: usize,
}

/// One subscriber: a connection's subscription to a relayed room.
struct Sub {
    id: u64,
    user: u64,
    /// Counted in the user's presence here.
    present: bool,
    sink: Rc<dyn LocalSink>,
    /// Events that came while its join was answered (`None` once live).
    pending: Option<Vec<Event>>,
    pending_bytes: usize,
    /// The last message seq it was handed.
    last: u64,
    /// Set while it lags (see the module's doc).
    lag: Option<Lag>,
}

/// A room this shard relays.
struct Room {
    id: u64,
    subs: RefCell<Vec<Sub>>,
    order: RefCell<Order<Event>>,
    filling: Cell<bool>,
    /// Dropped with the room: NATS stops sending its events here.
    _nats: super::NatsSub,
}

/// A user's presence in a relayed room, as this shard sees it and as it
/// told the owner.
#[derive(Default)]
struct Presence {
    /// Its subscriptions here.
    subs: u32,
    /// Whether the owner counts it present (from this shard).
    told: bool,
    /// A task is telling the owner.
    telling: bool,
    /// The owner's starts (`Node::starts_of`) when it was last told: an
    /// owner that started since forgot, and is told again.
    told_start: u64,
}

/// The shard's relay.
pub struct Relay {
    node: Arc<Node>,
    shard: usize,
    rooms: RefCell<HashMap<u64, Rc<Room>>>,
    /// Users' presence in relayed rooms, per (room, user).
    present: RefCell<HashMap<(u64, u64), Presence>>,
    /// Itself, for the tasks it starts.
    me: Weak<Relay>,
    next_sub: Cell<u64>,
    queue_bytes_max: usize,
    volatile_bytes_max: usize,
    stuck_timeout: Duration,
}

/// What a join of a relayed room answers.
pub struct Joined {
    pub sub: u64,
    pub last_seq: u64,
    pub online: Vec<u64>,
}

impl Relay {
    /// The relay of shard `shard`; its sweep runs on the calling
    /// executor (the shard's) until the relay is dropped.
    pub fn new(node: Arc<Node>, shard: usize, bounds: Bounds) -> Rc<Relay> {
        let relay = Rc::new_cyclic(|me| Relay {
            node,
            shard,
            rooms: RefCell::new(HashMap::default()),
            present: RefCell::new(HashMap::default()),
            me: me.clone(),
            next_sub: Cell::new(SUB_BASE),
            queue_bytes_max: bounds.queue_bytes_max,
            volatile_bytes_max: bounds.volatile_bytes_max,
            stuck_timeout: bounds.stuck_timeout,
        });
        glommio::spawn_local(sweep(Rc::downgrade(&relay))).detach();
        relay
    }

    /// Whether `room` is owned by another node (and so relayed here).
    pub fn is_remote(&self, room: u64) -> bool {
        self.node.owner_of(room) != self.node.cfg.node_id
    }

    /// The node this relay belongs to.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Subscribes `sink` to `room` for `user`: joins through the owner
    /// (nothing is opened for a room the user may not follow), then hands
    /// the messages after `since` (if given) and every later event.
    /// `register` learns the subscription's id before any event of it is
    /// handed on.
    pub async fn subscribe(
        self: &Rc<Self>,
        room: u64,
        user: u64,
        since: Option<u64>,
        sink: Rc<dyn LocalSink>,
        register: impl FnOnce(u64),
    ) -> Result<Joined, ApiError> {
        let (last_seq, mut online) = ops::join(&self.node, room, user).await?;
        let r = self.open(room).await?;
        let id = self.next_sub.get();
        self.next_sub.set(id + 1);
        register(id);
        r.subs.borrow_mut().push(Sub {
            id,
            user,
            present: false,
            sink: sink.clone(),
            pending: Some(Vec::new()),
            pending_bytes: 0,
            last: 0,
            lag: None,
        });
        match self.catch_up(&r, id, since, last_seq, &sink).await {
            Ok(()) => {}
            Err(e) => {
                self.unsubscribe(room, id);
                return Err(e);
            }
        }
        let live = match r.subs.borrow_mut().iter_mut().find(|s| s.id == id) {
            Some(s) => {
                s.present = true;
                true
            }
            // Revoked or closed while its join was answered.
            None => false,
        };
        if !live {
            return Err(ApiError::Unavailable("the subscription ended".into()));
        }
        self.count_presence(room, user, true);
        if let Err(at) = online.binary_search(&user) {
            online.insert(at, user);
        }
        Ok(Joined {
            sub: id,
            last_seq,
            online,
        })
    }

    /// Brings subscription `id` from `since` (or the join's `last_seq`) to
    /// what the room has handed on, then makes it live.
    async fn catch_up(
        self: &Rc<Self>,
        r: &Rc<Room>,
        id: u64,
        since: Option<u64>,
        last_seq: u64,
        sink: &Rc<dyn LocalSink>,
    ) -> Result<(), ApiError> {
        // A room relayed from now: its order starts at the join's answer,
        // and what was posted before its NATS subscription took effect is
        // asked of the owner once.
        let mut ready = Vec::new();
        let fresh = r.order.borrow().head().is_none();
        r.order.borrow_mut().start(last_seq, &mut ready);
        self.publish_all(r, ready);
        if fresh || r.order.borrow().head() < Some(last_seq) {
            self.fill_later(r, true);
        }
        // The messages after `since`, straight to the sink (which keeps
        // them until the join's answer is out), up to what the room has
        // handed on (another join may have started it further on).
        let target = r.order.borrow().head().unwrap_or(last_seq).max(last_seq);
        let mut last = since.unwrap_or(last_seq).min(last_seq);
        while last < target {
            let events = self.replay(r.id, last).await?;
            let Some(end) = events.last().map(Event::seq) else {
                break;
            };
            for e in events.into_iter().take_while(|e| e.seq() <= target) {
                sink.deliver(id, &e);
            }
            last = end.min(target);
            if sink.queued_bytes() > self.queue_bytes_max {
                self.slow_closed();
                sink.closed(EngineError::SlowConsumer);
                return Err(ApiError::Unavailable("slow consumer".into()));
            }
        }
        let waiting = {
            let mut subs = r.subs.borrow_mut();
            let Some(s) = subs.iter_mut().find(|s| s.id == id) else {
                return Ok(());
            };
            s.last = s.last.max(last).max(since.unwrap_or(0));
            s.pending_bytes = 0;
            s.pending.take().unwrap_or_default()
        };
        for e in waiting {
            self.hand(r, id, &e);
        }
        Ok(())
    }

    /// Ends subscription `id` of `room`; the room's NATS subscription ends
    /// with its last subscriber.
    /// Counts a connection closed as too slow (4008) for a relayed room.
    fn slow_closed(&self) {
        let closed = &self.node.counters.relay_slow_closed;
        closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn unsubscribe(&self, room: u64, id: u64) {
        let mut rooms = self.rooms.borrow_mut();
        let Some(r) = rooms.get(&room) else { return };
        let present = {
            let mut subs = r.subs.borrow_mut();
            let user = subs
                .iter()
                .find(|s| s.id == id && s.present)
                .map(|s| s.user);
            subs.retain(|s| s.id != id);
            user
        };
        if r.subs.borrow().is_empty() {
            rooms.remove(&room);
        }
        drop(rooms);
        if let Some(user) = present {
            self.count_presence(room, user, false);
        }
    }

    /// Counts a subscription of `user` to `room` on this shard in (`on`) or
    /// out, and has the owner told when the user's presence here changes.
    fn count_presence(&self, room: u64, user: u64, on: bool) {
        let start = {
            let mut all = self.present.borrow_mut();
            let p = all.entry((room, user)).or_default();
            p.subs = if on {
                p.subs + 1
            } else {
                p.subs.saturating_sub(1)
            };
            let start = !p.telling && (p.subs > 0) != p.told;
            p.telling |= start;
            start
        };
        if start {
            let node = self.node.clone();
            glommio::spawn_local(reconcile(self.me.clone(), node, self.shard, room, user)).detach();
        }
    }

    /// Tells the owners that started since they were told who is present
    /// here (a restarted owner forgot them), again.
    fn tell_restarted_owners(&self) {
        let node = &self.node;
        let again: Vec<(u64, u64)> = self
            .present
            .borrow_mut()
            .iter_mut()
            .filter(|((room, _), p)| {
                p.told && !p.telling && p.told_start != node.starts_of(node.owner_of(*room))
            })
            .map(|(key, p)| {
                (p.told, p.telling) = (false, true);
                *key
            })
            .collect();
        for (room, user) in again {
            let node = node.clone();
            glommio::spawn_local(reconcile(self.me.clone(), node, self.shard, room, user)).detach();
        }
    }

    /// The relayed room, subscribed to its subject first if new.
    async fn open(self: &Rc<Self>, room: u64) -> Result<Rc<Room>, ApiError> {
        if let Some(r) = self.rooms.borrow().get(&room) {
            return Ok(r.clone());
        }
        let subject = events::room_subject(&self.node.cfg.name, room);
        let nats = match super::wire() {
            Some(w) => w.subscribe(&subject, None).map(super::NatsSub::Wire),
            None => self
                .node
                .link
                .subscribe(&subject)
                .await
                .map(super::NatsSub::Link),
        }
        .map_err(crate::accounts::cluster_error)?;
        // Another join may have opened it meanwhile (this subscription
        // then ends with `nats`).
        if let Some(r) = self.rooms.borrow().get(&room) {
            return Ok(r.clone());
        }
        let incoming = nats.messages().clone();
        let r = Rc::new(Room {
            id: room,
            subs: RefCell::new(Vec::new()),
            order: RefCell::new(Order::new(HELD_MAX)),
            filling: Cell::new(false),
            _nats: nats,
        });
        self.rooms.borrow_mut().insert(room, r.clone());
        let relay = Rc::downgrade(self);
        let weak = Rc::downgrade(&r);
        glommio::spawn_local(async move {
            // Ends when the room is dropped: its subscription's channel
            // disconnects.
            while let Ok(m) = incoming.recv_async().await {
                let (Some(relay), Some(r)) = (relay.upgrade(), weak.upgrade()) else {
                    return;
                };
                if let Some(e) = events::decode(&m.payload).filter(|e| e.room() == r.id) {
                    relay.ingest(&r, e);
                }
            }
        })
        .detach();
        Ok(r)
    }

    /// An event from the owner.
    fn ingest(self: &Rc<Self>, r: &Rc<Room>, e: Event) {
        if e.kind() == EventKind::Left {
            self.revoke(r, e.seq(), &e);
            return;
        }
        let mut ready = Vec::new();
        match e.kind() {
            EventKind::Message => r.order.borrow_mut().offer(e, &mut ready),
            // After the message they change, never before it.
            EventKind::Edit | EventKind::Delete | EventKind::React => {
                r.order.borrow_mut().offer_change(e, &mut ready);
            }
            _ => {
                self.publish(r, &e);
                return;
            }
        }
        self.publish_all(r, ready);
        if r.order.borrow().gap().is_some() {
            self.fill_later(r, false);
        }
    }

    fn publish_all(&self, r: &Rc<Room>, ready: Vec<Event>) {
        for e in &ready {
            self.publish(r, e);
        }
    }

    /// Ends `user`'s subscriptions to the room (everyone's for
    /// [`events::EVERYONE`]), each with `left` as its last event (the
    /// WebSocket forgets the room on it).
    fn revoke(&self, r: &Room, user: u64, left: &Event) {
        let ended: Vec<(u64, Rc<dyn LocalSink>)> = r
            .subs
            .borrow()
            .iter()
            .filter(|s| user == events::EVERYONE || s.user == user)
            .map(|s| (s.id, s.sink.clone()))
            .collect();
        for (id, sink) in ended {
            sink.deliver(id, left);
            self.unsubscribe(r.id, id);
        }
    }

    /// Fills the room's gap from the owner (in a task of its own; one per
    /// room at a time). With `probe`, asks once even with no gap known:
    /// the owner may have messages NATS did not bring.
    fn fill_later(self: &Rc<Self>, r: &Rc<Room>, probe: bool) {
        if r.filling.replace(true) {
            return;
        }
        let (relay, r) = (self.clone(), r.clone());
        glommio::spawn_local(async move {
            relay.fill(&r, probe).await;
            r.filling.set(false);
            // A gap that opened while this fill ran.
            if r.order.borrow().gap().is_some() && !r.subs.borrow().is_empty() {
                relay.fill_later(&r, false);
            }
        })
        .detach();
    }

    async fn fill(&self, r: &Rc<Room>, mut probe: bool) {
        loop {
            let gap = r.order.borrow().gap();
            let after = match (gap, r.order.borrow().head()) {
                (Some((after, _)), _) => after,
                (None, Some(head)) if probe => head,
                _ => return,
            };
            if r.subs.borrow().is_empty() {
                return;
            }
            let mut ready = Vec::new();
            match self.replay(r.id, after).await {
                // Retention removed the gap's messages: go on from the
                // first held.
                Ok(events) if events.is_empty() => {
                    r.order.borrow_mut().skip_gap(&mut ready);
                    probe = false;
                }
                Ok(events) => {
                    let mut order = r.order.borrow_mut();
                    // The owner's first message after `after`: anything
                    // before it is gone (retention).
                    if let Some(first) = events.first().map(Event::seq) {
                        order.skip_to(first - 1, &mut ready);
                    }
                    let full = events.len() >= REPLAY_LEN;
                    for e in events {
                        order.offer(e, &mut ready);
                    }
                    // A full page may have more after it.
                    probe = probe && full;
                }
                Err(_) => glommio::timer::sleep(FILL_RETRY).await,
            }
            // A gap, or a probe that found what NATS lost: filled.
            if !ready.is_empty() {
                let owner = self.node.owner_of(r.id);
                self.node.counters.gap_filled(&self.node.cfg.nodes, owner);
            }
            self.publish_all(r, ready);
        }
    }

    /// Up to `REPLAY_LEN` messages after `after`, from the owner.
    async fn replay(&self, room: u64, after: u64) -> Result<Vec<Event>, ApiError> {
        let op = Op::Replay {
            room,
            after,
            limit: REPLAY_LEN,
        };
        let Answer::Events { events } = ops::ask(&self.node, &op).await? else {
            return Err(ApiError::Internal(
                "a replay answered something else".into(),
            ));
        };
        Ok(events
            .into_iter()
            .filter_map(|w| {
                Event::from_json(room, w.seq, w.ts, EventKind::Message, w.json.as_bytes())
            })
            .collect())
    }

    /// Checks one room with its owner: followers here who may no longer
    /// follow it are ended (`left`, as a lost removal would have), and
    /// messages NATS did not bring are asked for.
    async fn check(self: &Rc<Self>, r: &Rc<Room>) {
        let mut users: Vec<u64> = r.subs.borrow().iter().map(|s| s.user).collect();
        users.sort_unstable();
        users.dedup();
        if users.is_empty() {
            return;
        }
        let op = Op::Allowed {
            room: r.id,
            users: users.clone(),
        };
        let Ok(Answer::Allowed {
            users: allowed,
            last_seq,
        }) = ops::ask(&self.node, &op).await
        else {
            return;
        };
        for user in users.into_iter().filter(|u| !allowed.contains(u)) {
            if let Some(left) = events::decode(&events::encode_revoked(r.id, user, "removed")) {
                self.revoke(r, user, &left);
            }
        }
        if r.order.borrow().head() < Some(last_seq) {
            self.fill_later(r, true);
        }
    }

    /// A user's own presence is not shown to its own subscriptions (on a
    /// single node a subscription never sees it either: it is announced
    /// before the subscription is live, or not at all).
    fn publish(&self, r: &Rc<Room>, e: &Event) {
        let own = (e.kind() == EventKind::Presence)
            .then(|| presence_user(e))
            .flatten();
        let ids: Vec<u64> = r
            .subs
            .borrow()
            .iter()
            .filter(|s| Some(s.user) != own)
            .map(|s| s.id)
            .collect();
        for id in ids {
            self.hand(r, id, e);
        }
    }

    /// Hands an event to one subscriber (or keeps it while its join is
    /// answered, or while it lags); a subscriber past its bound lags, and
    /// one whose held changes pass the bound is closed.
    fn hand(&self, r: &Rc<Room>, id: u64, e: &Event) {
        enum Then {
            Nothing,
            Deliver(Rc<dyn LocalSink>),
            Lagged,
            Close(Rc<dyn LocalSink>),
        }
        let then = {
            let mut subs = r.subs.borrow_mut();
            let Some(s) = subs.iter_mut().find(|s| s.id == id) else {
                return;
            };
            let message = e.kind() == EventKind::Message;
            if let Some(pending) = &mut s.pending {
                s.pending_bytes += e.len();
                if s.pending_bytes <= self.queue_bytes_max {
                    pending.push(e.clone());
                    Then::Nothing
                } else {
                    Then::Close(s.sink.clone())
                }
            } else if message && e.seq() <= s.last {
                Then::Nothing
            } else if let Some(lag) = &mut s.lag {
                // Messages come from the owner once it drains.
                if message || e.is_volatile() {
                    Then::Nothing
                } else if lag.held_bytes + e.len() > self.queue_bytes_max {
                    Then::Close(s.sink.clone())
                } else {
                    lag.held_bytes += e.len();
                    lag.held.push(e.clone());
                    Then::Nothing
                }
            } else {
                let queued = s.sink.queued_bytes();
                if e.is_volatile() && queued > self.volatile_bytes_max {
                    Then::Nothing
                } else if queued > self.queue_bytes_max {
                    if e.is_volatile() {
                        Then::Nothing
                    } else {
                        let held = if message { vec![] } else { vec![e.clone()] };
                        s.lag = Some(Lag {
                            progress_at: Instant::now(),
                            queued,
                            held_bytes: held.iter().map(Event::len).sum(),
                            held,
                        });
                        Then::Lagged
                    }
                } else {
                    if message {
                        s.last = e.seq();
                    }
                    Then::Deliver(s.sink.clone())
                }
            }
        };
        match then {
            Then::Nothing => {}
            Then::Deliver(sink) => sink.deliver(id, e),
            Then::Lagged => {
                let lagged = &self.node.counters.relay_lagged;
                lagged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(relay) = self.me.upgrade() else {
                    return;
                };
                glommio::spawn_local(relay.pump(r.clone(), id)).detach();
            }
            Then::Close(sink) => self.close_slow(r.id, id, &sink),
        }
    }

    /// Closes a subscriber as too slow: let go here too (presence
    /// included); the connection closes with 4008 and forgets it.
    fn close_slow(&self, room: u64, id: u64, sink: &Rc<dyn LocalSink>) {
        self.unsubscribe(room, id);
        self.slow_closed();
        sink.closed(EngineError::SlowConsumer);
    }

    /// Catches lagging subscriber `id` up from the owner once its
    /// connection drains (to half the bound), page by page, then makes it
    /// live with the changes held meanwhile; closes it if it writes
    /// nothing for `stuck_timeout`. Ends when it is live or gone.
    async fn pump(self: Rc<Self>, r: Rc<Room>, id: u64) {
        loop {
            glommio::timer::sleep(LAG_POLL).await;
            let Some((sink, last)) = self.lag_progress(&r, id) else {
                return;
            };
            if sink.queued_bytes() > self.queue_bytes_max / 2 {
                continue;
            }
            let Ok(events) = self.replay(r.id, last).await else {
                glommio::timer::sleep(FILL_RETRY).await;
                continue;
            };
            if events.is_empty() {
                // Nothing after its last at the owner, and nothing the
                // room handed on while the answer came (a message that
                // passed it by meanwhile needs another page): live again,
                // changes first.
                let held = {
                    let mut subs = r.subs.borrow_mut();
                    let Some(s) = subs.iter_mut().find(|s| s.id == id) else {
                        return;
                    };
                    if r.order.borrow().head().unwrap_or(0) > s.last {
                        continue;
                    }
                    s.lag.take().map(|l| l.held).unwrap_or_default()
                };
                for e in &held {
                    sink.deliver(id, e);
                }
                return;
            }
            // Within the bound (the rest when it drains again), handed on
            // once the subscriber's state is no longer borrowed.
            let page = {
                let mut subs = r.subs.borrow_mut();
                let Some(s) = subs.iter_mut().find(|s| s.id == id) else {
                    return;
                };
                let mut queued = sink.queued_bytes();
                let mut page = Vec::new();
                for e in events {
                    if e.seq() <= s.last {
                        continue;
                    }
                    if queued + e.len() > self.queue_bytes_max {
                        break;
                    }
                    queued += e.len();
                    s.last = e.seq();
                    page.push(e);
                }
                page
            };
            for e in &page {
                sink.deliver(id, e);
            }
        }
    }

    /// A lagging subscriber's sink and last seq, its progress noted; `None`
    /// when it is gone, live again, or closed here as stuck.
    fn lag_progress(&self, r: &Room, id: u64) -> Option<(Rc<dyn LocalSink>, u64)> {
        let stuck = {
            let mut subs = r.subs.borrow_mut();
            let s = subs.iter_mut().find(|s| s.id == id)?;
            let lag = s.lag.as_mut()?;
            let (now, queued) = (Instant::now(), s.sink.queued_bytes());
            // Progress: it wrote something since the last look, or holds
            // nothing (it waits for the owner, not for its reader).
            if queued < lag.queued || queued == 0 {
                lag.progress_at = now;
            }
            lag.queued = queued;
            if now.duration_since(lag.progress_at) <= self.stuck_timeout {
                return Some((s.sink.clone(), s.last));
            }
            s.sink.clone()
        };
        self.close_slow(r.id, id, &stuck);
        None
    }
}

/// Checks every relayed room with its owner, every `SWEEP_INTERVAL`, until
/// the relay is gone.
async fn sweep(relay: Weak<Relay>) {
    loop {
        glommio::timer::sleep(SWEEP_INTERVAL).await;
        let Some(r) = relay.upgrade() else { return };
        let rooms: Vec<Rc<Room>> = r.rooms.borrow().values().cloned().collect();
        for room in rooms {
            r.check(&room).await;
        }
        r.tell_restarted_owners();
    }
}

/// Tells the owner of `room` whether `user` is present on this shard until
/// what it was told matches the subscriptions. The owner keeps, per user,
/// the (node, shard) pairs that said so, so a repeated `on` or off (a
/// retry after a lost answer) changes nothing; a node that restarts is
/// forgotten by every owner (docs/cluster.md).
async fn reconcile(relay: Weak<Relay>, node: Arc<Node>, shard: usize, room: u64, user: u64) {
    loop {
        let Some(r) = relay.upgrade() else { return };
        let want = {
            let mut all = r.present.borrow_mut();
            let Some(p) = all.get_mut(&(room, user)) else {
                return;
            };
            let want = p.subs > 0;
            if want == p.told {
                p.telling = false;
                if p.subs == 0 {
                    all.remove(&(room, user));
                }
                return;
            }
            want
        };
        drop(r);
        let start = node.starts_of(node.owner_of(room));
        let op = Op::Presence {
            room,
            user,
            on: want,
            node: node.cfg.node_id,
            shard: shard as u32,
        };
        match ops::ask(&node, &op).await {
            Ok(_) => {
                if let Some(r) = relay.upgrade() {
                    if let Some(p) = r.present.borrow_mut().get_mut(&(room, user)) {
                        (p.told, p.told_start) = (want, start);
                    }
                }
            }
            Err(_) => glommio::timer::sleep(FILL_RETRY * 4).await,
        }
    }
}

/// The user a presence event is about.
fn presence_user(e: &Event) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct P {
        user: u64,
    }
    serde_json::from_slice::<P>(e.payload())
        .ok()
        .map(|p| p.user)
}
