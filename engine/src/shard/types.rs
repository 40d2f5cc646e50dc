//! The values a shard takes in and hands out: acks, stored messages,
//! history pages, a subscription to register, and the engine-wide services
//! every shard holds.

use std::sync::Arc;

use rookery_storage::{Cursor, HistoryItem, Meta};

use crate::consumer::SubShared;
use crate::error::Result;
use crate::event::{Event, Message};
use crate::receipts::ToWriter;

pub(crate) use crate::reply::Reply;

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
    /// Who made the latest edit, or the delete, and when (ms since the
    /// Unix epoch); `None` as posted.
    pub changed: Option<(u64, u64)>,
}

impl StoredMessage {
    pub(super) fn from_item(item: &HistoryItem) -> StoredMessage {
        StoredMessage {
            seq: item.seq(),
            sender: item.sender(),
            ts_ms: item.ts_ms(),
            client_id: item.client_id().to_string(),
            body: item.body().map(str::to_string),
            edited: item.edited(),
            changed: item.changed(),
        }
    }

    /// The message as a history page shows it.
    pub fn view(&self) -> Message<'_> {
        Message::stored(
            self.seq,
            self.sender,
            self.ts_ms,
            self.body.as_deref(),
            self.edited,
        )
        .changed(self.changed)
    }

    /// The message as a live `msg` event of `room` (what a replay sends).
    pub fn event(&self, room: u64) -> Event {
        let m = Message::live(
            room,
            self.seq,
            self.sender,
            self.ts_ms,
            self.body.as_deref(),
            self.edited,
        )
        .changed(self.changed);
        Event::encode_message(room, &m)
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
    /// Work commands in each shard's queue (see `Command::is_work`), taken
    /// off by the shard's command loop as it receives them.
    pub queued: Arc<Vec<std::sync::atomic::AtomicUsize>>,
}

/// Completes a caller's `subscribe`.
pub(crate) type Ready = Box<dyn FnOnce(Result<()>) + Send>;
