//! A shard's relay of rooms other nodes own to its WebSocket connections:
//! while a connection of this shard follows such a room, the shard
//! subscribes to the room's NATS subject, and hands each event to its
//! connections as the engine would hand a local room's.
//!
//! Core NATS delivers at most once, so messages are put back in order
//! (`order.rs`): a message past a gap waits while the gap is filled from
//! the owner (`Op::Replay`), a duplicate is dropped.
//!
//! Invariants: each subscriber sees each message seq at most once and in
//! increasing order (its `last` only grows), and every seq between its
//! join (or its `since`) and the latest message, unless it was closed;
//! while its join is being answered its events wait (at most
//! `queue_bytes_max`); a connection holding more than `queue_bytes_max`
//! unwritten is closed as a slow consumer (4008): a remote room does not
//! pause a slow reader and catch it up later, as a local room does.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rookery_engine::{Error as EngineError, Event, EventKind, LocalSink};

use super::events;
use super::ops::{self, Answer, Op};
use super::order::Order;
use super::Node;
use crate::app::ApiError;

/// Messages past a gap kept per room while it is filled (more are
/// dropped and replayed by the owner).
const HELD_MAX: usize = 4096;
/// Messages asked for per replay.
const REPLAY_LEN: usize = 256;
/// Pause before asking an owner again when a gap could not be filled.
const FILL_RETRY: Duration = Duration::from_millis(250);
/// Sub ids of relayed rooms start here, apart from the engine's.
const SUB_BASE: u64 = 1 << 62;

/// One subscriber: a connection's subscription to a relayed room.
struct Sub {
    id: u64,
    user: u64,
    /// Its user, once the owner counts it present.
    present: Option<u64>,
    sink: Rc<dyn LocalSink>,
    /// Events that came while its join was answered (`None` once live).
    pending: Option<Vec<Event>>,
    pending_bytes: usize,
    /// The last message seq it was handed.
    last: u64,
}

/// A room this shard relays.
struct Room {
    id: u64,
    subs: RefCell<Vec<Sub>>,
    order: RefCell<Order<Event>>,
    filling: Cell<bool>,
    /// Dropped when the room has no subscriber left: its reader stops.
    _stop: flume::Sender<()>,
}

/// The shard's relay.
pub struct Relay {
    node: Arc<Node>,
    rooms: RefCell<HashMap<u64, Rc<Room>>>,
    /// Users' presence in relayed rooms, per (room, user).
    present: RefCell<HashMap<(u64, u64), Presence>>,
    /// Itself, for the tasks it starts.
    me: std::rc::Weak<Relay>,
    next_sub: Cell<u64>,
    queue_bytes_max: usize,
    volatile_bytes_max: usize,
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
}

/// Tells the owner of `room` whether `user` is present on this shard until
/// what it was told matches the subscriptions (each change once: an `on`
/// is always matched by one off). Retries while the owner does not
/// answer; an owner that restarted forgot, which docs/cluster.md says.
async fn reconcile(relay: std::rc::Weak<Relay>, node: Arc<Node>, room: u64, user: u64) {
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
        let op = Op::Presence {
            room,
            user,
            on: want,
        };
        match ops::ask(&node, &op).await {
            Ok(_) => {
                if let Some(r) = relay.upgrade() {
                    if let Some(p) = r.present.borrow_mut().get_mut(&(room, user)) {
                        p.told = want;
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

/// What a join of a relayed room answers.
pub struct Joined {
    pub sub: u64,
    pub last_seq: u64,
    pub online: Vec<u64>,
}

impl Relay {
    pub fn new(node: Arc<Node>, queue_bytes_max: usize, volatile_bytes_max: usize) -> Rc<Relay> {
        Rc::new_cyclic(|me| Relay {
            me: me.clone(),
            node,
            rooms: RefCell::new(HashMap::default()),
            present: RefCell::new(HashMap::default()),
            next_sub: Cell::new(SUB_BASE),
            queue_bytes_max,
            volatile_bytes_max,
        })
    }

    /// Whether `room` is owned by another node (and so relayed here).
    pub fn is_remote(&self, room: u64) -> bool {
        self.node.owner_of(room) != self.node.cfg.node_id
    }

    /// The node this relay belongs to.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Subscribes `sink` to `room` for `user`: joins through the owner,
    /// then hands the messages after `since` (if given) and every later
    /// event. `register` learns the subscription's id before any event of
    /// it is handed on.
    pub async fn subscribe(
        self: &Rc<Self>,
        room: u64,
        user: u64,
        since: Option<u64>,
        sink: Rc<dyn LocalSink>,
        register: impl FnOnce(u64),
    ) -> Result<Joined, ApiError> {
        let r = self.open(room).await?;
        let id = self.next_sub.get();
        self.next_sub.set(id + 1);
        register(id);
        r.subs.borrow_mut().push(Sub {
            id,
            user,
            present: None,
            sink: sink.clone(),
            pending: Some(Vec::new()),
            pending_bytes: 0,
            last: 0,
        });
        match self.join(&r, id, user, since, &sink).await {
            Ok(j) => Ok(j),
            Err(e) => {
                self.unsubscribe(room, id);
                Err(e)
            }
        }
    }

    async fn join(
        self: &Rc<Self>,
        r: &Rc<Room>,
        id: u64,
        user: u64,
        since: Option<u64>,
        sink: &Rc<dyn LocalSink>,
    ) -> Result<Joined, ApiError> {
        let join = Op::Join { room: r.id, user };
        let Answer::Joined {
            last_seq,
            mut online,
        } = ops::ask(&self.node, &join).await?
        else {
            return Err(ApiError::Internal("a join answered something else".into()));
        };
        // Present from now on (the owner hears it from `reconcile`).
        if let Some(s) = r.subs.borrow_mut().iter_mut().find(|s| s.id == id) {
            s.present = Some(user);
        }
        self.count_presence(r.id, user, true);
        if let Err(at) = online.binary_search(&user) {
            online.insert(at, user);
        }
        // Messages that came before the first answer and follow it go out;
        // a room relayed already may have missed some.
        let mut ready = Vec::new();
        r.order.borrow_mut().start(last_seq, &mut ready);
        self.publish_all(r, ready);
        if r.order.borrow().head() < Some(last_seq) {
            self.fill_later(r);
        }
        // The messages after `since`, straight to the sink (which keeps
        // them until the join's answer is out).
        let mut last = since.unwrap_or(last_seq).min(last_seq);
        while last < last_seq {
            let events = self.replay(r.id, last).await?;
            if events.is_empty() {
                break;
            }
            for e in events {
                last = e.seq();
                sink.deliver(id, &e);
            }
            if sink.queued_bytes() > self.queue_bytes_max {
                sink.closed(EngineError::SlowConsumer);
                return Err(ApiError::Unavailable("slow consumer".into()));
            }
        }
        let waiting = {
            let mut subs = r.subs.borrow_mut();
            let Some(s) = subs.iter_mut().find(|s| s.id == id) else {
                return Err(ApiError::Unavailable("the subscription ended".into()));
            };
            s.last = s.last.max(last).max(since.unwrap_or(0));
            s.pending_bytes = 0;
            s.pending.take().unwrap_or_default()
        };
        for e in waiting {
            self.hand(r, id, &e);
        }
        Ok(Joined {
            sub: id,
            last_seq,
            online,
        })
    }

    /// Ends subscription `id` of `room`; the room's NATS subscription ends
    /// with its last subscriber.
    pub fn unsubscribe(&self, room: u64, id: u64) {
        let mut rooms = self.rooms.borrow_mut();
        let Some(r) = rooms.get(&room) else { return };
        let present = {
            let mut subs = r.subs.borrow_mut();
            let user = subs.iter().find(|s| s.id == id).and_then(|s| s.present);
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
            let (relay, node) = (self.me.clone(), self.node.clone());
            glommio::spawn_local(reconcile(relay, node, room, user)).detach();
        }
    }

    /// The relayed room, subscribed to its subject first if new.
    async fn open(self: &Rc<Self>, room: u64) -> Result<Rc<Room>, ApiError> {
        if let Some(r) = self.rooms.borrow().get(&room) {
            return Ok(r.clone());
        }
        let subject = events::room_subject(&self.node.cfg.name, room);
        let incoming = self
            .node
            .link
            .subscribe(&subject)
            .await
            .map_err(crate::accounts::cluster_error)?;
        // Another join may have opened it meanwhile.
        if let Some(r) = self.rooms.borrow().get(&room) {
            return Ok(r.clone());
        }
        let (stop, stopped) = flume::bounded::<()>(0);
        let r = Rc::new(Room {
            id: room,
            subs: RefCell::new(Vec::new()),
            order: RefCell::new(Order::new(HELD_MAX)),
            filling: Cell::new(false),
            _stop: stop,
        });
        self.rooms.borrow_mut().insert(room, r.clone());
        let relay = Rc::downgrade(self);
        let weak = Rc::downgrade(&r);
        glommio::spawn_local(async move {
            loop {
                let next =
                    futures_lite::future::or(async { incoming.recv_async().await.ok() }, async {
                        let _ = stopped.recv_async().await;
                        None
                    })
                    .await;
                let (Some(m), Some(relay), Some(r)) = (next, relay.upgrade(), weak.upgrade())
                else {
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
        if e.kind() != EventKind::Message {
            self.publish(r, &e);
            return;
        }
        let mut ready = Vec::new();
        r.order.borrow_mut().offer(e, &mut ready);
        self.publish_all(r, ready);
        if r.order.borrow().gap().is_some() {
            self.fill_later(r);
        }
    }

    fn publish_all(&self, r: &Room, ready: Vec<Event>) {
        for e in &ready {
            self.publish(r, e);
        }
    }

    /// Ends `user`'s subscriptions to the room, each with `left` as its
    /// last event (the WebSocket forgets the room on it).
    fn revoke(&self, r: &Room, user: u64, left: &Event) {
        let ended: Vec<(u64, Rc<dyn LocalSink>)> = r
            .subs
            .borrow()
            .iter()
            .filter(|s| s.user == user)
            .map(|s| (s.id, s.sink.clone()))
            .collect();
        for (id, sink) in ended {
            sink.deliver(id, left);
            self.unsubscribe(r.id, id);
        }
    }

    /// Fills the gap before the first held message from the owner (in a
    /// task of its own; one per room at a time).
    fn fill_later(self: &Rc<Self>, r: &Rc<Room>) {
        if r.filling.replace(true) {
            return;
        }
        let (relay, r) = (self.clone(), r.clone());
        glommio::spawn_local(async move {
            relay.fill(&r).await;
            r.filling.set(false);
        })
        .detach();
    }

    async fn fill(&self, r: &Rc<Room>) {
        loop {
            let Some((after, _)) = r.order.borrow().gap() else {
                return;
            };
            if r.subs.borrow().is_empty() {
                return;
            }
            self.node
                .counters
                .gap_fills
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut ready = Vec::new();
            match self.replay(r.id, after).await {
                // Retention removed them: go on from the first held.
                Ok(events) if events.is_empty() => r.order.borrow_mut().skip_gap(&mut ready),
                Ok(events) => {
                    let mut order = r.order.borrow_mut();
                    for e in events {
                        order.offer(e, &mut ready);
                    }
                }
                Err(_) => glommio::timer::sleep(FILL_RETRY).await,
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

    /// Hands an event to every subscriber of the room.
    /// A user's own presence is not shown to its own subscriptions (on a
    /// single node a subscription never sees it either: it is announced
    /// before the subscription is live, or not at all).
    fn publish(&self, r: &Room, e: &Event) {
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
    /// answered); a subscriber past its bound is closed.
    fn hand(&self, r: &Room, id: u64, e: &Event) {
        enum Then {
            Nothing,
            Deliver(Rc<dyn LocalSink>),
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
            } else {
                let queued = s.sink.queued_bytes();
                if e.is_volatile() && queued > self.volatile_bytes_max {
                    Then::Nothing
                } else if queued > self.queue_bytes_max {
                    Then::Close(s.sink.clone())
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
            Then::Close(sink) => {
                r.subs.borrow_mut().retain(|s| s.id != id);
                sink.closed(EngineError::SlowConsumer);
            }
        }
    }
}
