//! Room events between nodes: the owner publishes each event of its rooms
//! once, on the room's subject, as the engine encoded it; a node with
//! subscribers of the room frames it again (`relay.rs`).
//!
//! The wire form: the kind (one byte, `EventKind::code`), the room, the
//! seq and the time (8 bytes each, little-endian), then the event's JSON.
//! A message that does not parse is dropped by the receiver, which fills
//! any gap it leaves from the owner.

use bytes::Bytes;
use rookery_cluster::Link;
use rookery_engine::{Event, EventKind, EventTap};

const HEAD_BYTES: usize = 1 + 8 * 3;

/// The subject room `room` of cluster `name` publishes its events on.
pub fn room_subject(name: &str, room: u64) -> String {
    format!("rk.{name}.room.{room}")
}

pub fn encode(e: &Event) -> Bytes {
    let json = e.payload();
    let mut out = Vec::with_capacity(HEAD_BYTES + json.len());
    out.push(e.kind().code());
    for n in [e.room(), e.seq(), e.ts_ms()] {
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
    EventTap::new(move |e: &Event| {
        // `Left` ends one subscription on this node; it is not the room's.
        if e.kind() != EventKind::Left {
            link.try_publish(room_subject(&name, e.room()), encode(e));
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
    }
}
