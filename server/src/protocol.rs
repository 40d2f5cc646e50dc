//! The WebSocket protocol, typed (docs/protocol.md, checked against this
//! module by `protocol_doc_matches_the_types`): the client frames, parsed
//! in one pass of serde with fields borrowed from the text, and the frames
//! the server answers with. The events of rooms (`msg`, `edit`, …) are
//! encoded by the engine (`rookery_engine::Event`, in the one message
//! shape `rookery_engine::Message`, which history pages use too).
//!
//! Every frame is a JSON object with a `type`; a field of the wrong type
//! (`"room": "7"`, `"since": -5`) refuses the frame with `bad_request`, as
//! the HTTP API does, never a silent default. Unknown fields are ignored.

use std::borrow::Cow;

use rookery_engine::{Cursor, Order};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The `type`s of the frames a client may send.
pub const CLIENT_TYPES: &[&str] = &[
    "auth", "refresh", "ping", "join", "leave", "send", "edit", "delete", "react", "typing",
    "read", "history",
];

/// A frame the server sends in answer to a client frame.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Authenticated (on connect with a token, or after `auth`).
    Hello {
        user: u64,
        heartbeat_ms: u64,
        /// In a cluster, the node the connection is on.
        #[serde(skip_serializing_if = "Option::is_none")]
        node: Option<u32>,
    },
    /// The answer to `refresh`: the connection now runs on the new token.
    Refreshed { expires_ms: u64 },
    /// Sent unasked ahead of a JWT's `exp`: send `refresh` with a newer
    /// token before then, or the connection is closed (4001).
    RefreshNeeded { expires_ms: u64 },
    /// Sent unasked to every open connection of a user an admin just
    /// invited to a room (accept or decline over HTTP).
    Invited {
        room: u64,
        name: String,
        private: bool,
        by: u64,
        by_name: String,
    },
    /// Sent unasked to every open connection of a user another user just
    /// opened a direct-message room with (the room is new and they are
    /// invited: opening it with `POST /api/dms` accepts).
    Dm { room: u64, user: u64, name: String },
    /// The answer to `ping`.
    Pong,
    /// The answer to `join`; the room's events follow it, never precede it.
    Joined {
        room: u64,
        last_seq: u64,
        online: Vec<u64>,
    },
    /// The answer to `leave`.
    Left { room: u64 },
    /// The answer to `send` (with `seq`, `ts`, `duplicate`), `edit` and
    /// `delete` (with `seq`) and `typing` (room only).
    Ack {
        room: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ts: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        duplicate: Option<bool>,
    },
    /// The answer to `read`: the receipt as stored (never moves back).
    Receipt { room: u64, user: u64, seq: u64 },
    /// The answer to `history`.
    History(HistoryPage),
    /// A refused frame; the connection stays open.
    Error {
        code: &'static str,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerFrame {
    /// The frame's JSON text, with the `ref` of the frame it answers.
    pub fn text(&self, r#ref: Option<&RawValue>) -> String {
        #[derive(Serialize)]
        struct WithRef<'a> {
            #[serde(flatten)]
            frame: &'a ServerFrame,
            #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
            r#ref: Option<&'a RawValue>,
        }
        serde_json::to_string(&WithRef { frame: self, r#ref }).expect("server frames serialize")
    }
}

/// A page of a room's history, as HTTP and WebSocket send it:
/// `{"room","messages","next"}`, each message in the shape of live events
/// (`rookery_engine::Message`), `next` the cursor of the following page
/// (`{"before":seq}` or `{"after":seq}`) or `null`.
#[derive(Debug)]
pub struct HistoryPage {
    pub room: u64,
    pub page: rookery_engine::HistoryPage,
}

impl HistoryPage {
    /// Cuts the page so that its JSON takes about `bytes_max` at most (one
    /// message at least), its `next` cursor (in `order`, of `limit`
    /// messages) going on after the last it keeps.
    pub fn fit(&mut self, bytes_max: usize, order: Order, limit: usize) {
        let fits = fitting(&self.page.messages, 128, bytes_max);
        if fits < self.page.messages.len() {
            self.page.messages.truncate(fits);
            let last = self.page.messages[fits - 1].seq;
            self.page.next = Some(match order {
                Order::NewestFirst => Cursor::before(last, limit),
                Order::OldestFirst => Cursor::after(last, limit),
            });
        }
    }
}

/// How many of `messages` fit in `bytes_max` of JSON after `head` bytes
/// of a page's own fields (one at least).
fn fitting(messages: &[rookery_engine::StoredMessage], head: usize, bytes_max: usize) -> usize {
    let mut bytes = head;
    messages
        .iter()
        .take_while(|m| {
            // Each message and its comma.
            bytes += serde_json::to_vec(&m.view()).map_or(0, |v| v.len()) + 1;
            bytes <= bytes_max
        })
        .count()
        .max(1)
}

/// Messages in the shape of live events.
struct Messages<'a>(&'a [rookery_engine::StoredMessage]);

impl Serialize for Messages<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(rookery_engine::StoredMessage::view))
    }
}

/// A page of a thread, as HTTP sends it: `{"room","first","messages",
/// "next"}`, `first` the thread's first message, `messages` its replies
/// oldest first, `next` `{"after":seq}` or `null`.
#[derive(Debug)]
pub struct ThreadPage {
    pub room: u64,
    pub page: rookery_engine::ThreadPage,
}

impl ThreadPage {
    /// Cuts the page so that its JSON takes about `bytes_max` at most (the
    /// first message and one reply at least).
    pub fn fit(&mut self, bytes_max: usize) {
        let head = 128 + serde_json::to_vec(&self.page.first.view()).map_or(0, |v| v.len());
        let fits = fitting(&self.page.messages, head, bytes_max);
        if fits < self.page.messages.len() {
            self.page.messages.truncate(fits);
            self.page.next = Some(self.page.messages[fits - 1].seq);
        }
    }
}

impl Serialize for ThreadPage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct After {
            after: u64,
        }
        let mut st = s.serialize_struct("ThreadPage", 4)?;
        st.serialize_field("room", &self.room)?;
        st.serialize_field("first", &self.page.first.view())?;
        st.serialize_field("messages", &Messages(&self.page.messages))?;
        st.serialize_field("next", &self.page.next.map(|after| After { after }))?;
        st.end()
    }
}

impl Serialize for HistoryPage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "lowercase")]
        enum Next {
            Before(Option<u64>),
            After(Option<u64>),
        }
        let next = self.page.next.map(|c: Cursor| match c.order {
            Order::NewestFirst => Next::Before(c.before),
            Order::OldestFirst => Next::After(c.after),
        });
        let mut st = s.serialize_struct("HistoryPage", 3)?;
        st.serialize_field("room", &self.room)?;
        st.serialize_field("messages", &Messages(&self.page.messages))?;
        st.serialize_field("next", &next)?;
        st.end()
    }
}

/// The fields any client frame may carry (each type reads the ones it
/// needs; see docs/protocol.md).
#[derive(Debug, Default, Deserialize)]
pub struct ClientFrame<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "cow")]
    pub kind: Option<Cow<'a, str>>,
    /// Echoed, as given, on the reply.
    #[serde(rename = "ref", borrow)]
    pub r#ref: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "cow")]
    pub token: Option<Cow<'a, str>>,
    pub room: Option<u64>,
    pub since: Option<u64>,
    pub seq: Option<u64>,
    #[serde(borrow, default, deserialize_with = "cow")]
    pub body: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "cow")]
    pub client_id: Option<Cow<'a, str>>,
    /// `send`: the seq the message replies to.
    pub reply_to: Option<u64>,
    /// `send`: the uploads it carries (ids, 32 hex digits each).
    pub files: Option<Vec<String>>,
    /// `react`: the emoji.
    #[serde(borrow, default, deserialize_with = "cow")]
    pub emoji: Option<Cow<'a, str>>,
    /// `react`: put on (default) or taken off.
    pub on: Option<bool>,
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub limit: Option<u64>,
}

/// An optional string, borrowed from the frame when it has no escapes
/// (serde's own `Option<Cow<str>>` always copies).
fn cow<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct Str;
    impl<'de> serde::de::Visitor<'de> for Str {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v))
        }
    }
    struct Opt;
    impl<'de> serde::de::Visitor<'de> for Opt {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string or null")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(Str).map(Some)
        }
    }
    d.deserialize_option(Opt)
}

/// Why a frame was refused: its error code and message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<ClientFrame<'_>, Refused> {
    // serde would also take an array for a struct.
    if !text.trim_start().starts_with('{') {
        return Err(Refused {
            code: "bad_json",
            message: "a frame must be a JSON object".into(),
        });
    }
    serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Refused {
            code: "bad_request",
            message: field_message(&e),
        },
        _ => Refused {
            code: "bad_json",
            message: "a frame must be a JSON object".into(),
        },
    })
}

/// serde's message without its position ("invalid type: string \"7\",
/// expected u64").
fn field_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(at) => s[..at].to_string(),
        None => s,
    }
}

impl<'a> ClientFrame<'a> {
    /// The frame's type ("" when it has none).
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("")
    }

    /// A required number.
    pub fn need(field: Option<u64>, name: &str) -> Result<u64, String> {
        field.ok_or_else(|| format!("{name} (a number) is required"))
    }

    /// A required string.
    pub fn need_str<'s>(field: &'s Option<Cow<'a, str>>, name: &str) -> Result<&'s str, String> {
        field
            .as_deref()
            .ok_or_else(|| format!("{name} (a string) is required"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_with_borrowed_fields() {
        let f = parse(r#"{"type":"send","room":7,"body":"hi","client_id":"c1","ref":{"a":[1]}}"#)
            .unwrap();
        assert_eq!((f.kind(), f.room), ("send", Some(7)));
        assert!(matches!(f.body, Some(Cow::Borrowed("hi"))));
        assert_eq!(f.r#ref.unwrap().get(), r#"{"a":[1]}"#);
        let f = parse(r#"{"type":"send","body":"a\"b","x":[1,2]}"#).unwrap();
        assert_eq!(f.body.as_deref(), Some("a\"b"), "escapes are decoded");
        assert_eq!(parse(r#"{"room":null}"#).unwrap().kind(), "");
    }

    #[test]
    fn wrong_types_are_bad_requests_and_non_objects_bad_json() {
        for text in [
            r#"{"type":"join","room":"7"}"#,
            r#"{"type":"join","room":7,"since":-5}"#,
            r#"{"type":"join","room":7,"since":"0"}"#,
            r#"{"type":"history","room":7,"limit":"abc"}"#,
            r#"{"type":"history","room":7,"after":-1}"#,
            r#"{"type":"send","room":7,"body":5}"#,
            r#"{"type":"send","room":7,"client_id":12}"#,
            r#"{"type":7}"#,
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.code, "bad_request", "{text}: {e:?}");
            assert!(!e.message.contains(" line "), "{}", e.message);
        }
        for text in ["[1,2]", "\"x\"", "{", "", "nul", "{\"type\":\"send\",}"] {
            assert_eq!(parse(text).unwrap_err().code, "bad_json", "{text}");
        }
    }
}

/// Checks docs/protocol.md against the types: every client frame and
/// answer, and their fields (the engine checks the events and messages).
#[cfg(test)]
mod doc {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// The rows of the table under `## {heading}`: type -> (fields, optional
    /// fields).
    fn table(heading: &str) -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
                .expect("docs/protocol.md");
        let start = doc.find(&format!("\n## {heading}\n")).expect(heading);
        let mut rows = BTreeMap::new();
        for line in doc[start..]
            .lines()
            .skip(2)
            .skip_while(|l| !l.starts_with('|'))
        {
            let Some(row) = line.strip_prefix("| `") else {
                if line.starts_with('|') {
                    continue; // the header and its rule
                }
                break;
            };
            let (kind, rest) = row.split_once('`').unwrap();
            let cell = rest.split('|').nth(1).unwrap_or("");
            let (mut all, mut optional) = (BTreeSet::new(), BTreeSet::new());
            for f in cell
                .split(',')
                .map(|f| f.trim().trim_matches('`'))
                .filter(|f| !f.is_empty())
            {
                let name = f.trim_end_matches('?').to_string();
                if f.ends_with('?') {
                    optional.insert(name.clone());
                }
                all.insert(name);
            }
            rows.insert(kind.to_string(), (all, optional));
        }
        rows
    }

    /// One of every answer, with every optional field set (a new variant
    /// does not compile until it is added here).
    fn every_answer() -> Vec<ServerFrame> {
        let sample = |f: ServerFrame| match f {
            ServerFrame::Hello { .. }
            | ServerFrame::Refreshed { .. }
            | ServerFrame::RefreshNeeded { .. }
            | ServerFrame::Invited { .. }
            | ServerFrame::Dm { .. }
            | ServerFrame::Pong
            | ServerFrame::Joined { .. }
            | ServerFrame::Left { .. }
            | ServerFrame::Ack { .. }
            | ServerFrame::Receipt { .. }
            | ServerFrame::History(_)
            | ServerFrame::Error { .. } => f,
        };
        let page = rookery_engine::HistoryPage {
            messages: Vec::new(),
            next: None,
            cached: false,
        };
        vec![
            sample(ServerFrame::Hello {
                user: 1,
                heartbeat_ms: 2,
                node: Some(3),
            }),
            sample(ServerFrame::Refreshed { expires_ms: 1 }),
            sample(ServerFrame::RefreshNeeded { expires_ms: 1 }),
            sample(ServerFrame::Invited {
                room: 1,
                name: "r".into(),
                private: true,
                by: 2,
                by_name: "b".into(),
            }),
            sample(ServerFrame::Dm {
                room: 1,
                user: 2,
                name: "b".into(),
            }),
            sample(ServerFrame::Pong),
            sample(ServerFrame::Joined {
                room: 1,
                last_seq: 2,
                online: vec![3],
            }),
            sample(ServerFrame::Left { room: 1 }),
            sample(ServerFrame::Ack {
                room: 1,
                seq: Some(2),
                ts: Some(3),
                duplicate: Some(false),
            }),
            sample(ServerFrame::Receipt {
                room: 1,
                user: 2,
                seq: 3,
            }),
            sample(ServerFrame::History(HistoryPage { room: 1, page })),
            sample(ServerFrame::Error {
                code: "x",
                message: "y".into(),
                retry_after_ms: Some(1),
            }),
        ]
    }

    #[test]
    fn protocol_doc_matches_the_types() {
        // Answers: each documented with exactly the fields it serializes.
        let answers = table("Answers");
        let mut seen = BTreeSet::new();
        for frame in every_answer() {
            let v: serde_json::Value = serde_json::from_str(&frame.text(None)).unwrap();
            let kind = v["type"].as_str().unwrap().to_string();
            let keys: BTreeSet<String> = v
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "type")
                .cloned()
                .collect();
            let (doc, _) = answers
                .get(&kind)
                .unwrap_or_else(|| panic!("answer {kind} is not in protocol.md"));
            assert_eq!(&keys, doc, "fields of answer {kind}");
            seen.insert(kind);
        }
        assert_eq!(
            seen,
            answers.keys().cloned().collect(),
            "answers documented but never sent"
        );

        // Client frames: the documented types are the ones handled, and
        // each documented field parses into a field of `ClientFrame`.
        let clients = table("Client frames");
        let documented: BTreeSet<&str> = clients.keys().map(String::as_str).collect();
        assert_eq!(
            documented,
            CLIENT_TYPES.iter().copied().collect(),
            "client types"
        );
        let mut used = BTreeSet::new();
        for (kind, (fields, _)) in &clients {
            for field in fields {
                let value = match field.as_str() {
                    "token" | "body" | "client_id" | "emoji" => "\"s\"",
                    "on" => "true",
                    "files" => r#"["00000000000000000000000000000001"]"#,
                    _ => "1",
                };
                let text = format!(r#"{{"type":"{kind}","{field}":{value}}}"#);
                let f = parse(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
                // Destructured: a new field of ClientFrame must be placed here.
                let ClientFrame {
                    kind: _,
                    r#ref: _,
                    token,
                    room,
                    since,
                    seq,
                    body,
                    client_id,
                    reply_to,
                    files,
                    emoji,
                    on,
                    before,
                    after,
                    limit,
                } = f;
                let set = match field.as_str() {
                    "token" => token.is_some(),
                    "room" => room.is_some(),
                    "since" => since.is_some(),
                    "seq" => seq.is_some(),
                    "body" => body.is_some(),
                    "client_id" => client_id.is_some(),
                    "reply_to" => reply_to.is_some(),
                    "files" => files.is_some(),
                    "emoji" => emoji.is_some(),
                    "on" => on.is_some(),
                    "before" => before.is_some(),
                    "after" => after.is_some(),
                    "limit" => limit.is_some(),
                    other => panic!("{kind}.{other} in protocol.md is no field of ClientFrame"),
                };
                assert!(set, "{kind}.{field} did not parse");
                used.insert(field.clone());
            }
        }
        let all: BTreeSet<String> = [
            "token",
            "room",
            "since",
            "seq",
            "body",
            "client_id",
            "reply_to",
            "files",
            "emoji",
            "on",
            "before",
            "after",
            "limit",
        ]
        .map(String::from)
        .into();
        assert_eq!(used, all, "ClientFrame fields no documented frame uses");
    }
}
