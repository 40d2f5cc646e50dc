//! Events as subscribers receive them: encoded once, shared by every
//! subscriber on every shard.
//!
//! The bytes are the JSON object the WebSocket protocol sends
//! (`{"type":"msg","room":…,"seq":…,"from":…,"ts":…,"body":…}`, see
//! DESIGN.md); the engine never encodes an event twice and never copies the
//! bytes per subscriber (`Arc<[u8]>`).

use std::sync::Arc;

use serde::Serialize;

/// What an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A message (has a seq).
    Message,
    /// An edit of message `seq`.
    Edit,
    /// A deletion of message `seq`.
    Delete,
    /// Someone is typing (volatile: never stored, dropped under pressure).
    Typing,
    /// A user came online in the room (first connection on any shard) or
    /// went offline (last one gone). Volatile.
    Presence,
}

/// One event for subscribers of a room.
#[derive(Debug, Clone)]
pub struct Event {
    room: u64,
    seq: u64,
    kind: EventKind,
    bytes: Arc<[u8]>,
}

impl Event {
    /// The room.
    pub fn room(&self) -> u64 {
        self.room
    }
    /// The message seq (for edits and deletes: the target's seq; 0 for
    /// typing).
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// What kind of event.
    pub fn kind(&self) -> EventKind {
        self.kind
    }
    /// The encoded JSON object.
    pub fn json(&self) -> &str {
        std::str::from_utf8(&self.bytes).expect("events are encoded from JSON values")
    }
    /// The encoded bytes (what a WebSocket text frame carries).
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }
    /// Bytes it counts against a subscriber's queue.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
    /// Never true: events are non-empty JSON objects.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    /// True for events that carry a room seq (messages).
    pub fn is_sequenced(&self) -> bool {
        self.kind == EventKind::Message
    }
    /// True for events that may be dropped under pressure.
    pub fn is_volatile(&self) -> bool {
        matches!(self.kind, EventKind::Typing | EventKind::Presence)
    }

    fn encode(room: u64, seq: u64, kind: EventKind, value: &impl Serialize) -> Event {
        let bytes = serde_json::to_vec(value).expect("event values serialize");
        Event {
            room,
            seq,
            kind,
            bytes: bytes.into(),
        }
    }

    /// `{"type":"msg",...}`; `body` is `null` for a deleted message.
    pub(crate) fn message(
        room: u64,
        seq: u64,
        from: u64,
        ts_ms: u64,
        body: Option<&str>,
        edited: bool,
    ) -> Event {
        #[derive(Serialize)]
        struct Msg<'a> {
            r#type: &'static str,
            room: u64,
            seq: u64,
            from: u64,
            ts: u64,
            body: Option<&'a str>,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            edited: bool,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            deleted: bool,
        }
        let deleted = body.is_none();
        let v = Msg {
            r#type: "msg",
            room,
            seq,
            from,
            ts: ts_ms,
            body,
            edited,
            deleted,
        };
        Event::encode(room, seq, EventKind::Message, &v)
    }

    /// `{"type":"edit","room","seq","by","ts","body"}`.
    pub(crate) fn edit(room: u64, seq: u64, by: u64, ts_ms: u64, body: &str) -> Event {
        #[derive(Serialize)]
        struct E<'a> {
            r#type: &'static str,
            room: u64,
            seq: u64,
            by: u64,
            ts: u64,
            body: &'a str,
        }
        Event::encode(
            room,
            seq,
            EventKind::Edit,
            &E {
                r#type: "edit",
                room,
                seq,
                by,
                ts: ts_ms,
                body,
            },
        )
    }

    /// `{"type":"delete","room","seq","by","ts"}`.
    pub(crate) fn delete(room: u64, seq: u64, by: u64, ts_ms: u64) -> Event {
        #[derive(Serialize)]
        struct D {
            r#type: &'static str,
            room: u64,
            seq: u64,
            by: u64,
            ts: u64,
        }
        Event::encode(
            room,
            seq,
            EventKind::Delete,
            &D {
                r#type: "delete",
                room,
                seq,
                by,
                ts: ts_ms,
            },
        )
    }

    /// `{"type":"presence","room","user","state":"online"|"offline"}`.
    pub(crate) fn presence(room: u64, user: u64, online: bool) -> Event {
        #[derive(Serialize)]
        struct P {
            r#type: &'static str,
            room: u64,
            user: u64,
            state: &'static str,
        }
        let state = if online { "online" } else { "offline" };
        Event::encode(
            room,
            0,
            EventKind::Presence,
            &P {
                r#type: "presence",
                room,
                user,
                state,
            },
        )
    }

    /// `{"type":"typing","room","user"}`.
    pub(crate) fn typing(room: u64, user: u64) -> Event {
        #[derive(Serialize)]
        struct T {
            r#type: &'static str,
            room: u64,
            user: u64,
        }
        Event::encode(
            room,
            0,
            EventKind::Typing,
            &T {
                r#type: "typing",
                room,
                user,
            },
        )
    }
}
