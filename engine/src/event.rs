//! Events as subscribers receive them: encoded once, shared by every
//! subscriber on every shard.
//!
//! The bytes are a whole WebSocket text frame (RFC 6455: an unmasked,
//! final frame header, then the payload) carrying the JSON object the
//! protocol sends (`{"type":"msg","room":…,"seq":…,"from":…,"ts":…,"body":…}`,
//! docs/protocol.md): a connection without per-connection compression writes
//! them as they are. The engine never encodes an event twice and never
//! copies the bytes per subscriber (`Arc<[u8]>`).

use std::cell::RefCell;
use std::sync::Arc;

use serde::Serialize;

/// A message as every client sees it: the one shape of live `msg` events,
/// replays and history pages (HTTP and WebSocket). A live event also
/// carries `type` and `room`; a history page names its room once.
/// `edited` and `deleted` are there only when true; `changed_by` and
/// `changed_ts` (who made the latest edit, or the delete, and when) only
/// for an edited or deleted message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<u64>,
    pub seq: u64,
    /// The author's user id.
    pub from: u64,
    /// ms since the Unix epoch.
    pub ts: u64,
    /// The body with edits applied; `null` once deleted.
    pub body: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub edited: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_ts: Option<u64>,
    /// For a reply: the seq it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// For a reply: the first message of its thread.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread: Option<u64>,
    /// For a reply: the answered message's author and first line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quote: Option<QuoteView<'a>>,
    /// Replies in the thread this message starts (absent when none; pages
    /// only).
    #[serde(skip_serializing_if = "is_zero")]
    pub replies: u64,
    /// The seq of the last of them (absent when none; pages only).
    #[serde(skip_serializing_if = "is_zero")]
    pub last_reply: u64,
    /// Its reactions, each with how many have it on (and, on a page,
    /// whether the reader does); absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionView<'a>>,
    /// The uploads it carries; absent when none, and once deleted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileView<'a>>,
}

/// An upload a message carries, as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileView<'a> {
    /// The upload's id (32 hex digits).
    pub id: String,
    /// Where it is read (`GET`, signed in).
    pub url: String,
    pub name: &'a str,
    pub content_type: &'a str,
    pub bytes: u64,
    /// An image's size (absent otherwise).
    #[serde(skip_serializing_if = "is_zero32")]
    pub width: u32,
    #[serde(skip_serializing_if = "is_zero32")]
    pub height: u32,
    /// Its thumbnail's URL, for an image that has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<String>,
}

fn is_zero32(n: &u32) -> bool {
    *n == 0
}

/// One reaction on a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReactionView<'a> {
    pub emoji: &'a str,
    pub count: u64,
    /// The reader has it on (pages only; absent when not).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub me: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A reply's quote of the message it answers: `text` is `null` once that
/// message is deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuoteView<'a> {
    pub from: u64,
    pub text: Option<&'a str>,
}

impl<'a> Message<'a> {
    /// A live `msg` event of `room`.
    pub fn live(
        room: u64,
        seq: u64,
        from: u64,
        ts: u64,
        body: Option<&'a str>,
        edited: bool,
    ) -> Message<'a> {
        Message {
            kind: Some("msg"),
            room: Some(room),
            ..Message::stored(seq, from, ts, body, edited)
        }
    }

    /// A message of a history page.
    pub fn stored(
        seq: u64,
        from: u64,
        ts: u64,
        body: Option<&'a str>,
        edited: bool,
    ) -> Message<'a> {
        Message {
            kind: None,
            room: None,
            seq,
            from,
            ts,
            body,
            edited,
            deleted: body.is_none(),
            changed_by: None,
            changed_ts: None,
            reply_to: None,
            thread: None,
            quote: None,
            replies: 0,
            last_reply: 0,
            reactions: Vec::new(),
            files: Vec::new(),
        }
    }

    /// With what it replies to, if it is a reply, and the length of the
    /// thread it starts.
    pub fn threaded(
        self,
        reply: Option<&'a crate::ReplyTo>,
        replies: u64,
        last_reply: u64,
    ) -> Message<'a> {
        Message {
            reply_to: reply.map(|r| r.to),
            thread: reply.map(|r| r.thread),
            quote: reply.and_then(|r| r.quote.as_ref()).map(|q| QuoteView {
                from: q.from,
                text: q.text.as_deref(),
            }),
            replies,
            last_reply,
            ..self
        }
    }

    /// With who changed it last and when (`(by, ts)`), if anyone did.
    pub fn changed(self, change: Option<(u64, u64)>) -> Message<'a> {
        Message {
            changed_by: change.map(|c| c.0),
            changed_ts: change.map(|c| c.1),
            ..self
        }
    }
}

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
    /// The subscription ended because its user was removed from the
    /// (private) room: the last event it receives.
    Left,
    /// A reaction put on or taken off message `seq`.
    React,
    /// A member's read receipt moved (volatile; at most one per user and
    /// room per `receipt_event_interval`).
    Receipt,
}

impl EventKind {
    /// The kind as one byte (what travels between cluster nodes).
    pub fn code(self) -> u8 {
        match self {
            EventKind::Message => 0,
            EventKind::Edit => 1,
            EventKind::Delete => 2,
            EventKind::Typing => 3,
            EventKind::Presence => 4,
            EventKind::Left => 5,
            EventKind::React => 6,
            EventKind::Receipt => 7,
        }
    }

    /// The kind of a byte made by [`EventKind::code`].
    pub fn from_code(code: u8) -> Option<EventKind> {
        Some(match code {
            0 => EventKind::Message,
            1 => EventKind::Edit,
            2 => EventKind::Delete,
            3 => EventKind::Typing,
            4 => EventKind::Presence,
            5 => EventKind::Left,
            6 => EventKind::React,
            7 => EventKind::Receipt,
            _ => return None,
        })
    }
}

/// One event for subscribers of a room.
#[derive(Debug, Clone)]
pub struct Event {
    room: u64,
    seq: u64,
    ts_ms: u64,
    kind: EventKind,
    /// Bytes of the frame header at the front of `frame`.
    head: u8,
    /// For a reply's `msg`: the seq it quotes (0 otherwise), so that a
    /// cached reply is quoted again when that message changes.
    reply_to: u64,
    frame: Arc<[u8]>,
}

thread_local! {
    /// Where events are serialized before they are framed (reused).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// The header of an unmasked, final WebSocket text frame of `len` bytes.
fn text_frame_header(len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x81;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
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
    /// For a reply's `msg` made here, the seq it quotes; 0 otherwise.
    pub fn reply_to(&self) -> u64 {
        self.reply_to
    }
    /// What kind of event.
    pub fn kind(&self) -> EventKind {
        self.kind
    }
    /// When it happened, ms since the Unix epoch (0 for typing and
    /// presence).
    pub fn ts_ms(&self) -> u64 {
        self.ts_ms
    }
    /// The encoded JSON object.
    pub fn json(&self) -> &str {
        std::str::from_utf8(self.payload()).expect("events are encoded from JSON values")
    }
    /// The JSON object's bytes (what a WebSocket text frame carries).
    pub fn payload(&self) -> &[u8] {
        &self.frame[self.head as usize..]
    }
    /// The whole WebSocket text frame: header and payload, ready to write
    /// to a connection that does not compress.
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }
    /// Bytes it counts against a subscriber's queue (the whole frame).
    pub fn len(&self) -> usize {
        self.frame.len()
    }
    /// Never true: events are non-empty JSON objects.
    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }
    /// True for events that carry a room seq (messages).
    pub fn is_sequenced(&self) -> bool {
        self.kind == EventKind::Message
    }
    /// True for events that may be dropped under pressure.
    pub fn is_volatile(&self) -> bool {
        matches!(
            self.kind,
            EventKind::Typing | EventKind::Presence | EventKind::Receipt
        )
    }

    /// An event another node's engine encoded (`json` is its
    /// [`Event::payload`]), framed again here; `None` when `json` is not a
    /// JSON object.
    pub fn from_json(
        room: u64,
        seq: u64,
        ts_ms: u64,
        kind: EventKind,
        json: &[u8],
    ) -> Option<Event> {
        let object = serde_json::from_slice::<serde::de::IgnoredAny>(json).is_ok()
            && json.first() == Some(&b'{');
        object.then(|| Event::framed(room, seq, ts_ms, kind, json))
    }

    fn encode(room: u64, seq: u64, ts_ms: u64, kind: EventKind, value: &impl Serialize) -> Event {
        SCRATCH.with(|s| {
            let mut json = s.borrow_mut();
            json.clear();
            serde_json::to_writer(&mut *json, value).expect("event values serialize");
            Event::framed(room, seq, ts_ms, kind, &json)
        })
    }

    /// The event whose payload is `json`, framed.
    fn framed(room: u64, seq: u64, ts_ms: u64, kind: EventKind, json: &[u8]) -> Event {
        let (header, head) = text_frame_header(json.len());
        // One allocation: the chained slices have an exact length.
        let frame: Arc<[u8]> = header[..head].iter().chain(json.iter()).copied().collect();
        Event {
            room,
            seq,
            ts_ms,
            kind,
            head: head as u8,
            reply_to: 0,
            frame,
        }
    }

    /// `{"type":"msg","room",…}` and then the fields of [`Message`];
    /// `body` is `null` for a deleted message.
    #[cfg(test)]
    pub(crate) fn message(
        room: u64,
        seq: u64,
        from: u64,
        ts_ms: u64,
        body: Option<&str>,
        edited: bool,
    ) -> Event {
        let m = Message::live(room, seq, from, ts_ms, body, edited);
        Event::encode_message(room, &m)
    }

    /// A `msg` event of a message as shown.
    pub(crate) fn encode_message(room: u64, m: &Message<'_>) -> Event {
        Event {
            reply_to: m.reply_to.unwrap_or(0),
            ..Event::encode(room, m.seq, m.ts, EventKind::Message, m)
        }
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
            ts_ms,
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
            ts_ms,
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

    /// `{"type":"react","room","seq","by","ts","emoji","on","count"}`:
    /// `count`, how many have it on after the change.
    pub(crate) fn react(
        room: u64,
        seq: u64,
        by: u64,
        ts_ms: u64,
        emoji: &str,
        on: bool,
        count: u64,
    ) -> Event {
        #[derive(Serialize)]
        struct R<'a> {
            r#type: &'static str,
            room: u64,
            seq: u64,
            by: u64,
            ts: u64,
            emoji: &'a str,
            on: bool,
            count: u64,
        }
        Event::encode(
            room,
            seq,
            ts_ms,
            EventKind::React,
            &R {
                r#type: "react",
                room,
                seq,
                by,
                ts: ts_ms,
                emoji,
                on,
                count,
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

    /// `{"type":"receipt","room","user","seq"}`: `user` has read `room` up
    /// to `seq`.
    pub(crate) fn receipt(room: u64, user: u64, seq: u64) -> Event {
        #[derive(Serialize)]
        struct R {
            r#type: &'static str,
            room: u64,
            user: u64,
            seq: u64,
        }
        Event::encode(
            room,
            0,
            0,
            EventKind::Receipt,
            &R {
                r#type: "receipt",
                room,
                user,
                seq,
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
            0,
            EventKind::Typing,
            &T {
                r#type: "typing",
                room,
                user,
            },
        )
    }

    /// `{"type":"left","room","reason"}`: a subscription ended by the
    /// server (its user was removed from the room).
    pub(crate) fn left(room: u64, reason: &'static str) -> Event {
        #[derive(Serialize)]
        struct L {
            r#type: &'static str,
            room: u64,
            reason: &'static str,
        }
        Event::encode(
            room,
            0,
            0,
            EventKind::Left,
            &L {
                r#type: "left",
                room,
                reason,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// The first two cells of each row of the table under `## {heading}`
    /// in docs/protocol.md (the server checks the other tables).
    fn doc_table(heading: &str) -> BTreeMap<String, String> {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
                .expect("docs/protocol.md");
        let start = doc.find(&format!("\n## {heading}\n")).expect(heading);
        doc[start..]
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.strip_prefix("| `"))
            .map(|row| {
                let (first, rest) = row.split_once('`').unwrap();
                (
                    first.to_string(),
                    rest.split('|').nth(1).unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    fn keys(e: &Event) -> BTreeSet<String> {
        let v: serde_json::Value = serde_json::from_str(e.json()).unwrap();
        v.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn protocol_doc_matches_the_types() {
        let events = doc_table("Events");
        // One of every kind, optional fields set (a new kind does not
        // compile until it is added here).
        // Every optional field set: a changed reply that starts a thread
        // (as no message can be, but the shape allows each field).
        let quoted = crate::ReplyTo {
            to: 1,
            thread: 1,
            quote: Some(crate::Quote {
                from: 7,
                text: Some("q".into()),
            }),
        };
        let mut changed = Message::live(1, 2, 3, 4, None, true)
            .changed(Some((5, 6)))
            .threaded(Some(&quoted), 3, 9);
        changed.reactions = vec![ReactionView {
            emoji: "👍",
            count: 2,
            me: true,
        }];
        changed.files = vec![FileView {
            id: "0".repeat(32),
            url: "/api/uploads/0".into(),
            name: "a.png",
            content_type: "image/png",
            bytes: 9,
            width: 2,
            height: 3,
            thumbnail: Some("/t".into()),
        }];
        let every = [
            Event::encode_message(
                1,
                &Message {
                    replies: 0,
                    last_reply: 0,
                    ..changed.clone()
                },
            ),
            Event::edit(1, 2, 3, 4, "b"),
            Event::delete(1, 2, 3, 4),
            Event::typing(1, 2),
            Event::presence(1, 2, true),
            Event::left(1, "removed"),
            Event::react(1, 2, 3, 4, "👍", true, 1),
            Event::receipt(1, 2, 3),
        ];
        for e in &every {
            match e.kind() {
                EventKind::Message
                | EventKind::Edit
                | EventKind::Delete
                | EventKind::Typing
                | EventKind::Presence
                | EventKind::Left
                | EventKind::React
                | EventKind::Receipt => {}
            }
        }
        let mut seen = BTreeSet::new();
        for e in &every {
            let v: serde_json::Value = serde_json::from_str(e.json()).unwrap();
            let kind = v["type"].as_str().unwrap().to_string();
            let cell = events
                .get(&kind)
                .unwrap_or_else(|| panic!("event {kind} is not in protocol.md"));
            let doc: BTreeSet<String> = cell
                .split(',')
                .map(|f| f.trim().trim_matches('`').trim_end_matches('?').to_string())
                .chain(["type".to_string()])
                .collect();
            assert_eq!(keys(e), doc, "fields of event {kind}");
            seen.insert(kind);
        }
        assert_eq!(
            seen,
            events.keys().cloned().collect(),
            "events documented but never sent"
        );
        // A history message: the fields of a live one but `type` and `room`.
        let doc: BTreeSet<String> = doc_table("Messages")
            .keys()
            .map(|f| f.trim_end_matches('?').to_string())
            .collect();
        let mut stored = Message::stored(2, 3, 4, None, true)
            .changed(Some((5, 6)))
            .threaded(Some(&quoted), 3, 9);
        stored.reactions = changed.reactions.clone();
        stored.files = changed.files.clone();
        let v = serde_json::to_value(&stored).unwrap();
        let got: BTreeSet<String> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(got, doc, "fields of a message");
        // A live message is a message with type and room, without the
        // thread's count that pages give.
        let live: BTreeSet<String> = keys(&every[0]);
        let mut want = doc.clone();
        want.extend(["type".to_string(), "room".to_string()]);
        want.remove("replies");
        want.remove("last_reply");
        assert_eq!(live, want, "a live msg is a message with type and room");
    }

    #[test]
    fn events_are_whole_text_frames_of_their_json() {
        for body_len in [0usize, 60, 100, 200, 70_000] {
            let body = "x".repeat(body_len);
            let e = Event::message(3, 9, 4, 1_700_000_000_000, Some(&body), false);
            let payload = e.payload().len();
            let f = e.frame();
            assert_eq!(f[0], 0x81, "final text frame");
            let (len, head) = match f[1] {
                126 => (u16::from_be_bytes([f[2], f[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            assert_eq!((len, head + len), (payload, f.len()));
            let v: serde_json::Value = serde_json::from_str(e.json()).unwrap();
            assert_eq!(v["body"].as_str().unwrap().len(), body_len);
            assert_eq!(
                (e.seq(), e.ts_ms(), e.len()),
                (9, 1_700_000_000_000, f.len())
            );
        }
        let left = Event::left(5, "removed");
        assert_eq!(
            left.json(),
            r#"{"type":"left","room":5,"reason":"removed"}"#
        );
        assert_eq!(left.kind(), EventKind::Left);
        assert!(!left.is_sequenced() && !left.is_volatile());
    }

    #[test]
    fn events_travel_between_nodes_as_kind_code_and_json() {
        let kinds = [
            EventKind::Message,
            EventKind::Edit,
            EventKind::Delete,
            EventKind::Typing,
            EventKind::Presence,
            EventKind::Left,
            EventKind::React,
            EventKind::Receipt,
        ];
        for k in kinds {
            assert_eq!(EventKind::from_code(k.code()), Some(k));
        }
        assert_eq!(EventKind::from_code(8), None);
        for body_len in [0usize, 200, 70_000] {
            let body = "y".repeat(body_len);
            let e = Event::message(3, 9, 4, 1_700, Some(&body), false);
            let again = Event::from_json(3, 9, 1_700, EventKind::Message, e.payload()).unwrap();
            assert_eq!(again.frame(), e.frame());
            assert_eq!(
                (again.seq(), again.ts_ms(), again.kind()),
                (9, 1_700, EventKind::Message)
            );
        }
        for bad in [&b""[..], b"[]", b"{", b"{}x", b"\"garbage\""] {
            assert!(
                Event::from_json(1, 1, 1, EventKind::Typing, bad).is_none(),
                "{bad:?}"
            );
        }
    }
}
