//! End-to-end tests of who may change what (issue 14 items 6 and 7): only its
//! author edits a message, its author or a room admin deletes it, history
//! shows who changed a message and when, a message says something (empty
//! or blank bodies are refused over HTTP and WebSocket, nothing stored),
//! and posting counts as reading.

mod common;

use common::*;
use serde_json::{json, Value};

const TEXT: u8 = 0x1;

/// The answer carrying `ref` (events and pings passed over).
fn answer(ws: &mut RawWs, r: u64) -> Value {
    loop {
        let f = ws.read_frame().expect("connection open");
        if f.opcode != TEXT {
            continue;
        }
        let v: Value = serde_json::from_slice(&f.payload).unwrap();
        if v["ref"] == r {
            return v;
        }
    }
}

fn request(ws: &mut RawWs, r: u64, mut frame: Value) -> Value {
    frame["ref"] = json!(r);
    ws.write_frame(TEXT, frame.to_string().as_bytes(), true, false);
    answer(ws, r)
}

fn joined(port: u16, token: &str, room: u64) -> RawWs {
    let (mut ws, head) = RawWs::connect(port, &format!("/ws?token={token}"), "");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let v = request(&mut ws, 0, json!({"type": "join", "room": room}));
    assert_eq!(v["type"], "joined", "{v}");
    ws
}

#[test]
fn only_authors_edit_admins_delete_and_blank_bodies_are_refused() {
    let server = start(&[]);
    let p = server.port;
    let (admin, member) = (register(p, "ann"), register(p, "ben"));
    let room = create_room(p, &admin, "rules", false);
    let mut a = joined(p, &admin, room);
    let mut b = joined(p, &member, room);
    let posted = request(
        &mut b,
        1,
        json!({"type": "send", "room": room, "body": "ben's words"}),
    );
    let seq = posted["seq"].as_u64().unwrap();

    // The admin may not rewrite it; its author may.
    let v = request(
        &mut a,
        2,
        json!({"type": "edit", "room": room, "seq": seq, "body": "not ben's"}),
    );
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{v}"
    );
    let v = request(
        &mut b,
        3,
        json!({"type": "edit", "room": room, "seq": seq, "body": "ben's, edited"}),
    );
    assert_eq!(v["type"], "ack", "{v}");
    // History shows who changed it and when.
    let ids = |token: &str| call(p, "GET", "/api/me", Some(token), None).1["user"].clone();
    let (ann_id, ben_id) = (ids(&admin), ids(&member));
    let history = || {
        call(
            p,
            "GET",
            &format!("/api/rooms/{room}/messages"),
            Some(&member),
            None,
        )
        .1["messages"][0]
            .clone()
    };
    let m = history();
    assert_eq!(
        (&m["edited"], &m["changed_by"]),
        (&json!(true), &ben_id),
        "{m}"
    );
    let edited_ts = m["changed_ts"].as_u64().unwrap();
    assert!(edited_ts >= m["ts"].as_u64().unwrap(), "{m}");

    // Blank bodies: refused for sends (WebSocket and HTTP) and edits.
    for (i, blank) in ["", "   ", "\n\t "].into_iter().enumerate() {
        let r = 10 + 2 * i as u64;
        let v = request(
            &mut b,
            r,
            json!({"type": "send", "room": room, "body": blank}),
        );
        assert_eq!(v["code"], "bad_request", "{v}");
        let v = request(
            &mut b,
            r + 1,
            json!({"type": "edit", "room": room, "seq": seq, "body": blank}),
        );
        assert_eq!(v["code"], "bad_request", "{v}");
        let (s, v) = call(
            p,
            "POST",
            &format!("/api/rooms/{room}/messages"),
            Some(&member),
            Some(&json!({"body": blank})),
        );
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{v}"
        );
    }

    // The admin deletes it.
    let v = request(
        &mut a,
        30,
        json!({"type": "delete", "room": room, "seq": seq}),
    );
    assert_eq!(v["type"], "ack", "{v}");
    let (_, page) = call(
        p,
        "GET",
        &format!("/api/rooms/{room}/messages"),
        Some(&member),
        None,
    );
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "nothing blank was stored: {page}");
    assert!(
        messages[0]["body"].is_null() && messages[0]["deleted"] == true,
        "{page}"
    );
    let m = history();
    assert_eq!(m["changed_by"], ann_id, "the admin deleted it: {m}");
    assert!(m["changed_ts"].as_u64().unwrap() >= edited_ts, "{m}");
    assert_eq!(m["from"], ben_id, "still ben's message");
    assert_serving(p);
}

/// Posting counts as reading (issue 14 item 7): your own messages are
/// never unread to you, whether sent over HTTP or WebSocket.
#[test]
fn own_messages_are_never_unread() {
    let server = start(&[]);
    let p = server.port;
    let (alice, bob) = (register(p, "alice"), register(p, "bob"));
    let room = create_room(p, &alice, "chatter", false);
    assert_eq!(
        call(
            p,
            "POST",
            &format!("/api/rooms/{room}/join"),
            Some(&bob),
            None
        )
        .0,
        200
    );
    for i in 0..3 {
        let body = json!({"body": format!("a{i}")});
        let (s, _) = call(
            p,
            "POST",
            &format!("/api/rooms/{room}/messages"),
            Some(&alice),
            Some(&body),
        );
        assert_eq!(s, 201);
    }
    let unread = |token: &str| {
        let (_, v) = call(p, "GET", "/api/me/unread", Some(token), None);
        v["rooms"][0]["unread"].as_u64().unwrap()
    };
    assert_eq!((unread(&alice), unread(&bob)), (0, 3));
    let mut b = joined(p, &bob, room);
    let v = request(
        &mut b,
        1,
        json!({"type": "send", "room": room, "body": "b0"}),
    );
    assert_eq!(v["type"], "ack", "{v}");
    assert_eq!((unread(&alice), unread(&bob)), (1, 0));
}
