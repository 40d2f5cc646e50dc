//! What a webhook request carries and how it is signed (docs/operations.md
//! gives the receiver's side). Pure: records and feed entries in, bytes
//! out.
//!
//! A request's body is `{"webhook":NAME,"events":[...]}`; each event is a
//! JSON object with `type` (one of [`Kind::word`]), `room` and `ts`. The
//! durable events carry an `id` that is the same on every delivery (a
//! receiver drops what it has seen by it): the data directory's random id
//! in 16 hex digits (nodes of a cluster, or a directory made again, never
//! share one), then `-{shard}-{segment}-{offset}` (the record's place in
//! its shard's log) for messages, edits and deletes, `-m-{n}` for joins
//! and leaves. Presence carries none: it is best effort.
//!
//! The signature header is `v1=` and the lowercase hex of
//! HMAC-SHA256(secret, `{timestamp}.{body}`), the timestamp being the
//! `Rookery-Timestamp` header (Unix seconds).

use hmac::{Hmac, Mac};
use rookery_engine::{ArchivedRecord, MemberEvent, Pos};
use serde::Serialize;
use sha2::Sha256;

use super::config::Kind;

/// One event, as it goes out.
#[derive(Serialize)]
struct Out<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'static str,
    room: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    /// A message's author.
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<u64>,
    /// Who joined or left.
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<u64>,
    /// Who edited, deleted, or changed the membership.
    #[serde(skip_serializing_if = "Option::is_none")]
    by: Option<u64>,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    /// The seq a reply answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<u64>,
    /// The first message of the thread a reply is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    thread: Option<u64>,
    /// A reaction's emoji.
    #[serde(skip_serializing_if = "Option::is_none")]
    emoji: Option<&'a str>,
    /// Whether a reaction was put on (or taken off).
    #[serde(skip_serializing_if = "Option::is_none")]
    on: Option<bool>,
    /// The uploads a message carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<Vec<FileOut<'a>>>,
}

/// An upload a message carries, as a webhook tells it (its URL is the
/// server's, read with a token).
#[derive(Serialize)]
struct FileOut<'a> {
    id: String,
    url: String,
    name: &'a str,
    content_type: &'a str,
    bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
}

impl<'a> FileOut<'a> {
    fn of(f: &'a rookery_engine::ArchivedFileRef) -> FileOut<'a> {
        let id = format!("{:032x}", f.upload());
        let (width, height) = (u32::from(f.width), u32::from(f.height));
        FileOut {
            url: format!("/api/uploads/{id}"),
            id,
            name: f.name.as_str(),
            content_type: f.content_type.as_str(),
            bytes: f.bytes.into(),
            width: (width > 0).then_some(width),
            height: (height > 0).then_some(height),
        }
    }
}

impl<'a> Out<'a> {
    /// An event of `kind` in `room` at `ts`, its other fields absent.
    fn of(id: Option<&'a str>, kind: Kind, room: u64, ts: u64) -> Out<'a> {
        Out {
            id,
            kind: kind.word(),
            room,
            seq: None,
            from: None,
            user: None,
            by: None,
            ts,
            body: None,
            reply_to: None,
            thread: None,
            emoji: None,
            on: None,
            files: None,
        }
    }
}

/// An event ready to go: its time (for ordering) and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ts_ms: u64,
    pub json: Vec<u8>,
}

fn encode(out: &Out<'_>) -> Encoded {
    Encoded {
        ts_ms: out.ts,
        json: serde_json::to_vec(out).expect("events serialize"),
    }
}

/// What a log record is, as a webhook sees it.
pub fn record_kind(record: &ArchivedRecord) -> Kind {
    match record {
        ArchivedRecord::Message(_) | ArchivedRecord::Reply(_) | ArchivedRecord::Post(_) => {
            Kind::Message
        }
        ArchivedRecord::Edit(_) => Kind::Edit,
        ArchivedRecord::Delete(_) => Kind::Delete,
        ArchivedRecord::React(_) => Kind::Reaction,
    }
}

/// When a log record happened (ms since the Unix epoch).
pub fn record_ts(record: &ArchivedRecord) -> u64 {
    match record {
        ArchivedRecord::Message(m) => m.ts_ms.into(),
        ArchivedRecord::Reply(r) => r.message.ts_ms.into(),
        ArchivedRecord::Post(p) => p.message.ts_ms.into(),
        ArchivedRecord::Edit(e) => e.ts_ms.into(),
        ArchivedRecord::Delete(d) => d.ts_ms.into(),
        ArchivedRecord::React(r) => r.ts_ms.into(),
    }
}

/// The event of the record at `pos` of shard `shard`'s log, in the data
/// directory `origin`.
pub fn record_event(origin: u64, shard: usize, pos: Pos, record: &ArchivedRecord) -> Encoded {
    let id = format!("{origin:016x}-{shard}-{}-{}", pos.segment, pos.offset);
    let id = Some(id.as_str());
    let out = match record {
        ArchivedRecord::Message(_) | ArchivedRecord::Reply(_) | ArchivedRecord::Post(_) => {
            let m = record.message().expect("a message kind");
            let reply = record.reply();
            let files = match record {
                ArchivedRecord::Post(p) => Some(p.files.iter().map(FileOut::of).collect()),
                _ => None,
            };
            Out {
                seq: Some(m.seq.into()),
                from: Some(m.sender.into()),
                body: Some(m.body.as_str()),
                reply_to: reply.map(|r| r.0),
                thread: reply.map(|r| r.1),
                files,
                ..Out::of(id, Kind::Message, m.room.into(), m.ts_ms.into())
            }
        }
        ArchivedRecord::Edit(e) => Out {
            seq: Some(e.seq.into()),
            by: Some(e.by.into()),
            body: Some(e.body.as_str()),
            ..Out::of(id, Kind::Edit, e.room.into(), e.ts_ms.into())
        },
        ArchivedRecord::React(r) => Out {
            seq: Some(r.seq.into()),
            by: Some(r.by.into()),
            emoji: Some(r.emoji.as_str()),
            on: Some(r.on),
            ..Out::of(id, Kind::Reaction, r.room.into(), r.ts_ms.into())
        },
        ArchivedRecord::Delete(d) => Out {
            seq: Some(d.seq.into()),
            by: Some(d.by.into()),
            ..Out::of(id, Kind::Delete, d.room.into(), d.ts_ms.into())
        },
    };
    encode(&out)
}

/// What a membership feed entry is.
pub fn member_kind(e: &MemberEvent) -> Kind {
    if e.joined {
        Kind::Join
    } else {
        Kind::Leave
    }
}

/// The event of a membership feed entry of the data directory `origin`.
pub fn member_event(origin: u64, e: &MemberEvent) -> Encoded {
    let id = format!("{origin:016x}-m-{}", e.id);
    encode(&Out {
        user: Some(e.user),
        by: Some(e.by),
        ..Out::of(Some(&id), member_kind(e), e.room, e.ts_ms)
    })
}

/// Merges lists of events by time, each list keeping its own order (a
/// merge, not a sort: a room's events stay in the room's order even where
/// a shard's times are not sorted across rooms); on equal times the
/// earlier list goes first (the membership feed is first: a join is older
/// than the messages it allowed).
pub fn merge(lists: Vec<Vec<Encoded>>) -> Vec<Encoded> {
    let total = lists.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(total);
    let mut lists: Vec<_> = lists
        .into_iter()
        .map(|l| l.into_iter().peekable())
        .collect();
    loop {
        let mut best: Option<(usize, u64)> = None;
        for (i, list) in lists.iter_mut().enumerate() {
            if let Some(e) = list.peek() {
                if best.is_none_or(|(_, ts)| e.ts_ms < ts) {
                    best = Some((i, e.ts_ms));
                }
            }
        }
        let Some((i, _)) = best else {
            return out;
        };
        out.extend(lists[i].next());
    }
}

/// A request body: `{"webhook":name,"events":[...]}` of `events` (JSON
/// objects, spliced as they are).
pub fn body<'a>(name: &str, events: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = b"{\"webhook\":".to_vec();
    serde_json::to_writer(&mut out, name).expect("a string serializes");
    out.extend_from_slice(b",\"events\":[");
    for (i, e) in events.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.extend_from_slice(b"]}");
    out
}

/// The `Rookery-Signature` header of `body` sent at `timestamp` (Unix
/// seconds).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(3 + 64);
    out.push_str("v1=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ts_ms: u64, tag: &str) -> Encoded {
        Encoded {
            ts_ms,
            json: tag.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_merge_keeps_each_lists_order_and_puts_earlier_lists_first_on_ties() {
        // A shard's times are not sorted across rooms; the merge keeps its
        // order and takes the oldest head of all lists each time.
        let members = vec![at(5, "J"), at(8, "L")];
        let shard0 = vec![at(5, "a"), at(3, "b"), at(9, "c")];
        let shard1 = vec![at(4, "x"), at(10, "y")];
        let got: Vec<_> = merge(vec![members, shard0, shard1])
            .into_iter()
            .map(|e| String::from_utf8(e.json).unwrap())
            .collect();
        assert_eq!(got, ["x", "J", "a", "b", "L", "c", "y"]);
    }

    #[test]
    fn the_body_and_signature_are_what_the_docs_say() {
        let events = [&br#"{"type":"join"}"#[..], &br#"{"type":"leave"}"#[..]];
        let body = body("hook\"1", events.into_iter());
        assert_eq!(
            body,
            br#"{"webhook":"hook\"1","events":[{"type":"join"},{"type":"leave"}]}"#
        );
        // Python: hmac.new(b"Jefe", b"0.what do ya want for nothing?",
        // hashlib.sha256).hexdigest() (RFC 4231 case 2's key, with the
        // timestamp and a dot before its data).
        assert_eq!(
            sign(b"Jefe", 0, b"what do ya want for nothing?"),
            "v1=37f471929915ccd2cbbe79feb84ffcff4f2bb25e15fc41c2506687331ae179cc"
        );
    }

    #[test]
    fn events_carry_their_ids_and_fields() {
        let e = MemberEvent {
            id: 7,
            room: 3,
            user: 4,
            by: 5,
            ts_ms: 6,
            joined: false,
        };
        let json: serde_json::Value = serde_json::from_slice(&member_event(0xab, &e).json).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":"00000000000000ab-m-7","type":"leave","room":3,"user":4,"by":5,"ts":6})
        );
    }

    /// Message 9 of room 3, by user 4 at 6 ms.
    fn message(body: &str) -> rookery_storage::Message {
        rookery_storage::Message {
            room: 3,
            seq: 9,
            sender: 4,
            ts_ms: 6,
            client_id: String::new(),
            body: body.into(),
        }
    }

    /// What a webhook makes of `rec` read back from a log at 1:32: its
    /// kind, its time and its event.
    fn event_of(rec: &rookery_storage::Record) -> (Kind, u64, serde_json::Value) {
        let mut frame = Vec::new();
        rookery_storage::record::encode_frame(rec, &mut frame);
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&frame);
        let (rec, _) = rookery_storage::record::decode_frame(&aligned).unwrap();
        let pos = Pos {
            segment: 1,
            offset: 32,
        };
        let json = serde_json::from_slice(&record_event(0xab, 0, pos, rec).json).unwrap();
        (record_kind(rec), record_ts(rec), json)
    }

    #[test]
    fn a_message_with_files_tells_them() {
        use rookery_storage::{FileRef, Post, Record};
        let file = |id: u128, name: &str, width: u32| FileRef {
            id: id.to_be_bytes(),
            name: name.into(),
            content_type: if width > 0 {
                "image/png"
            } else {
                "application/pdf"
            }
            .into(),
            bytes: 1234,
            width,
            height: width / 2,
            thumb: width > 0,
        };
        let post = Record::Post(Box::new(Post {
            message: message(""),
            to: 0,
            thread: 0,
            files: vec![file(0xab, "cat.png", 40), file(0xcd, "a.pdf", 0)],
        }));
        let hex = |id: u128| format!("{id:032x}");
        assert_eq!(
            event_of(&post).2,
            serde_json::json!({"id":"00000000000000ab-0-1-32","type":"message","room":3,"seq":9,
                "from":4,"ts":6,"body":"","files":[
                {"id":hex(0xab),"url":format!("/api/uploads/{}", hex(0xab)),"name":"cat.png",
                 "content_type":"image/png","bytes":1234,"width":40,"height":20},
                {"id":hex(0xcd),"url":format!("/api/uploads/{}", hex(0xcd)),"name":"a.pdf",
                 "content_type":"application/pdf","bytes":1234}]})
        );
    }

    #[test]
    fn a_reply_is_a_message_event_and_a_reaction_says_whose() {
        use rookery_storage::{Record, Reply};
        let reply = Record::Reply(Box::new(Reply {
            message: message("yes"),
            to: 8,
            thread: 2,
        }));
        let (kind, ts, json) = event_of(&reply);
        assert_eq!((kind, ts), (Kind::Message, 6));
        assert_eq!(
            json,
            serde_json::json!({"id":"00000000000000ab-0-1-32","type":"message","room":3,"seq":9,"from":4,"ts":6,"body":"yes","reply_to":8,"thread":2})
        );
        let react = Record::React(rookery_storage::React {
            room: 3,
            seq: 9,
            by: 5,
            ts_ms: 7,
            emoji: "👍".into(),
            on: false,
        });
        let (kind, ts, json) = event_of(&react);
        assert_eq!((kind, ts), (Kind::Reaction, 7));
        assert_eq!(
            json,
            serde_json::json!({"id":"00000000000000ab-0-1-32","type":"reaction","room":3,"seq":9,"by":5,"ts":7,"emoji":"👍","on":false})
        );
    }
}
