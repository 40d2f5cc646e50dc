//! Room events between nodes: the owner publishes each event of its rooms
//! once, on the room's subject, as the engine encoded it; a node with
//! subscribers of the room frames it again (`relay.rs`).
//!
//! The wire form: the kind (one byte, `EventKind::code`), the room, the
//! seq and the time (8 bytes each, little-endian), then the event's JSON.
//! A `left` event ends one user's subscriptions to the room (removed from
//! a private room, banned): its seq is that user; or, with [`EVERYONE`],
//! every subscription to it (the room was deleted). A message that does
//! not parse is dropped by the receiver, which fills any gap it leaves
//! from the owner.

use bytes::Bytes;
use rookery_cluster::Link;
use rookery_engine::{Event, EventKind, EventTap, Tapped};

const HEAD_BYTES: usize = 1 + 8 * 3;

/// The user a `left` event names to end every subscription to its room
/// (no user has this id; 0 is the server's).
pub const EVERYONE: u64 = u64::MAX;

/// The subject room `room` of cluster `name` publishes its events on.
pub fn room_subject(name: &str, room: u64) -> String {
    format!("rk.{name}.room.{room}")
}

pub fn encode(e: &Event) -> Bytes {
    wire(e.kind(), [e.room(), e.seq(), e.ts_ms()], e.payload())
}

/// The end of `user`'s subscriptions to `room`, as a `left` event.
pub fn encode_revoked(room: u64, user: u64, reason: &str) -> Bytes {
    // As the engine writes a `left` event.
    let reason = serde_json::to_string(reason).expect("a string serializes");
    let json = format!(r#"{{"type":"left","room":{room},"reason":{reason}}}"#);
    wire(EventKind::Left, [room, user, 0], json.as_bytes())
}

fn wire(kind: EventKind, numbers: [u64; 3], json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(HEAD_BYTES + json.len());
    out.push(kind.code());
    for n in numbers {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(json);
    Bytes::from(out)
}

pub fn decode(bytes: &[u8]) -> Option<Event> {
    let kind = EventKind::from_code(*bytes.first()?)?;
    let n = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            bytes.get(1 + 8 * i..9 + 8 * i)?.try_into().ok()?,
        ))
    };
    let (room, seq, ts) = (n(0)?, n(1)?, n(2)?);
    Event::from_json(room, seq, ts, kind, bytes.get(HEAD_BYTES..)?)
}

/// What the engine calls for each event of a room this node owns: a
/// publish that never waits (a full link queue drops it; receivers fill
/// the gap of a message, see `relay.rs`).
pub fn tap(link: Link, name: String) -> EventTap {
    EventTap::new(move |t: Tapped<'_>| {
        let (room, wire) = match t {
            // The engine's own `left` events end one subscription on this
            // node; the room's come as `Revoked`.
            Tapped::Event(e) if e.kind() == EventKind::Left => return,
            Tapped::Event(e) => (e.room(), encode(e)),
            Tapped::Revoked { room, user, reason } => (room, encode_revoked(room, user, reason)),
            Tapped::RoomDeleted { room } => (room, encode_revoked(room, EVERYONE, "deleted")),
        };
        // Through this shard's wire when it is connected (the owner's
        // shard calls this), through the link otherwise.
        let subject = room_subject(&name, room);
        match super::connected_wire() {
            Some(w) => {
                w.publish(&subject, &wire);
            }
            None => {
                link.try_publish(subject, wire);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_garbage_is_dropped() {
        let json = br#"{"type":"msg","room":4,"seq":9,"from":1,"ts":5,"body":"hi"}"#;
        let e = Event::from_json(4, 9, 5, EventKind::Message, json).unwrap();
        let back = decode(&encode(&e)).unwrap();
        assert_eq!(
            (back.room(), back.seq(), back.ts_ms(), back.kind()),
            (4, 9, 5, EventKind::Message)
        );
        assert_eq!(back.frame(), e.frame());
        let good = encode(&e);
        let mut bad_kind = good.to_vec();
        bad_kind[0] = 99;
        for garbage in [&b""[..], &good[..10], &bad_kind[..], &good[..HEAD_BYTES]] {
            assert!(decode(garbage).is_none(), "{garbage:?}");
        }
        assert_eq!(room_subject("c", 7), "rk.c.room.7");
        let left = decode(&encode_revoked(7, 42, "banned")).unwrap();
        assert_eq!(
            (left.kind(), left.room(), left.seq()),
            (EventKind::Left, 7, 42)
        );
        assert_eq!(left.json(), r#"{"type":"left","room":7,"reason":"banned"}"#);
    }
}
