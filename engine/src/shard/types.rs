//! The values a shard takes in and hands out: acks, stored messages,
//! history pages, a subscription to register, and the engine-wide services
//! every shard holds.

use std::sync::Arc;

use rookery_storage::{Cursor, HistoryItem, Meta};

use crate::consumer::SubShared;
use crate::error::Result;
use crate::event::{Event, Message, ReactionView};
use crate::receipts::ToWriter;
pub use rookery_storage::Reaction;

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

/// Where a user stands in a room: the room's last seq and how far the user
/// has read (their receipt, or their own latest post if later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    /// The room's last seq, as its owner has it.
    pub last_seq: u64,
    /// The user's read marker.
    pub read: u64,
}

impl ReadState {
    /// Messages after the marker.
    pub fn unread(&self) -> u64 {
        self.last_seq.saturating_sub(self.read)
    }
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
    /// What it replies to, for a reply.
    pub reply: Option<ReplyTo>,
    /// Replies in the thread it starts (0: none, or it is a reply).
    pub replies: u64,
    /// The seq of the last of them (0 with none).
    pub last_reply: u64,
    /// Its reactions (`mine`: the reader the page was read for has it on).
    pub reactions: Vec<Reaction>,
    /// The uploads it carries.
    pub files: Vec<Attachment>,
}

/// An upload a message carries, as it was when the message was posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The upload's id.
    pub id: u128,
    pub name: String,
    pub content_type: String,
    pub bytes: u64,
    /// An image's size in pixels (0 otherwise).
    pub width: u32,
    pub height: u32,
    /// Whether it has a thumbnail.
    pub thumb: bool,
}

impl Attachment {
    /// The reference a log record keeps.
    pub(crate) fn to_ref(&self) -> rookery_storage::FileRef {
        rookery_storage::FileRef {
            id: self.id.to_be_bytes(),
            name: self.name.clone(),
            content_type: self.content_type.clone(),
            bytes: self.bytes,
            width: self.width,
            height: self.height,
            thumb: self.thumb,
        }
    }

    /// As clients see it.
    pub fn view(&self) -> crate::event::FileView<'_> {
        let id = format!("{:032x}", self.id);
        crate::event::FileView {
            url: format!("/api/uploads/{id}"),
            thumbnail: self.thumb.then(|| format!("/api/uploads/{id}/thumbnail")),
            id,
            name: &self.name,
            content_type: &self.content_type,
            bytes: self.bytes,
            width: self.width,
            height: self.height,
        }
    }
}

/// What a reply answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// The seq it answers.
    pub to: u64,
    /// The first message of its thread.
    pub thread: u64,
    /// The answered message as quoted; `None` when it is gone (retired).
    pub quote: Option<Quote>,
}

/// The head of a quoted message: who wrote it and its first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// Its author.
    pub from: u64,
    /// Its first line (edits applied), at most [`QUOTE_BYTES_MAX`] bytes;
    /// `None` once deleted.
    pub text: Option<String>,
}

/// Longest quoted first line, in bytes (cut at a character boundary).
pub const QUOTE_BYTES_MAX: usize = 200;

impl Quote {
    /// The quote of a stored message.
    pub(super) fn of(item: &HistoryItem) -> Quote {
        Quote {
            from: item.sender(),
            text: item.body().map(first_line),
        }
    }

    /// The quote of a message already read.
    pub(super) fn of_stored(m: &StoredMessage) -> Quote {
        Quote {
            from: m.sender,
            text: m.body.as_deref().map(first_line),
        }
    }
}

/// The first non-blank line of `body`, trimmed, cut to [`QUOTE_BYTES_MAX`]
/// bytes at a character boundary.
pub(crate) fn first_line(body: &str) -> String {
    let line = body
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut end = line.len().min(QUOTE_BYTES_MAX);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}

impl StoredMessage {
    /// The message of a history item; a reply's quote is filled in by the
    /// caller (it may need another read).
    pub(super) fn from_item(item: &HistoryItem) -> StoredMessage {
        StoredMessage {
            seq: item.seq(),
            sender: item.sender(),
            ts_ms: item.ts_ms(),
            client_id: item.client_id().to_string(),
            body: item.body().map(str::to_string),
            edited: item.edited(),
            changed: item.changed(),
            reply: item.reply().map(|(to, thread)| ReplyTo {
                to,
                thread,
                quote: None,
            }),
            replies: item.replies,
            last_reply: item.last_reply,
            reactions: Vec::new(),
            files: item
                .files()
                .iter()
                .map(|f| Attachment {
                    id: f.upload(),
                    name: f.name.to_string(),
                    content_type: f.content_type.to_string(),
                    bytes: f.bytes.to_native(),
                    width: f.width.to_native(),
                    height: f.height.to_native(),
                    thumb: f.thumb,
                })
                .collect(),
        }
    }

    /// The message as a history page shows it.
    pub fn view(&self) -> Message<'_> {
        let mut m = Message::stored(
            self.seq,
            self.sender,
            self.ts_ms,
            self.body.as_deref(),
            self.edited,
        )
        .changed(self.changed)
        .threaded(self.reply.as_ref(), self.replies, self.last_reply);
        m.reactions = self
            .reactions
            .iter()
            .map(|r| ReactionView {
                emoji: &r.emoji,
                count: r.count,
                me: r.mine,
            })
            .collect();
        if self.body.is_some() {
            m.files = self.files.iter().map(Attachment::view).collect();
        }
        m
    }

    /// The message as a live `msg` event of `room` (what a replay sends):
    /// without the count of its thread, which a page gives (a replay from
    /// the tail cache would carry the count of when it was cached).
    pub fn event(&self, room: u64) -> Event {
        let mut m = Message {
            kind: Some("msg"),
            room: Some(room),
            replies: 0,
            last_reply: 0,
            ..self.view()
        };
        // Shared by every subscriber: nobody's own.
        for r in &mut m.reactions {
            r.me = false;
        }
        Event::encode_message(room, &m)
    }
}

/// A page of a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadPage {
    /// The thread's first message (`replies` counts the thread).
    pub first: StoredMessage,
    /// Replies after the cursor, oldest first.
    pub messages: Vec<StoredMessage>,
    /// The `after` of the next page, if more exist.
    pub next: Option<u64>,
    /// Served from memory (nothing was read from disk).
    pub cached: bool,
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
    /// The uploads (messages carry them; a delete may free them).
    pub uploads: crate::uploads::Uploads,
    /// Work done per shard (see `Shard::busy`), read by the kicker.
    pub activity: Arc<Vec<std::sync::atomic::AtomicU64>>,
    /// Work commands in each shard's queue (see `Command::is_work`), taken
    /// off by the shard's command loop as it receives them.
    pub queued: Arc<Vec<std::sync::atomic::AtomicUsize>>,
}

/// Completes a caller's `subscribe`.
pub(crate) type Ready = Box<dyn FnOnce(Result<()>) + Send>;
