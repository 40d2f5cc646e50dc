//! Replies and threads end to end, through the real binary (one node, and
//! in CI a three-node cluster): `send` with `reply_to` over WebSocket and
//! `POST .../messages` with it over HTTP, the reply's `reply_to`, `thread`
//! and `quote` in live events, history pages and `join since` replays,
//! `replies` on a thread's first message, `GET .../messages/{seq}/thread`
//! and its paging, and every refusal.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

fn connect_ws(port: u16, token: &str) -> Ws {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let url = format!("ws://127.0.0.1:{port}/ws?token={token}");
    tungstenite::client(url, stream).unwrap().0
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// Frames until one satisfies `want`; that one.
fn recv_until(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "timed out");
        match ws.read().unwrap() {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if want(&v) {
                    return v;
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn msg(seq: u64) -> impl Fn(&Value) -> bool {
    move |v| v["type"] == "msg" && v["seq"] == seq
}

/// The ack of a `send` and the sender's own `msg` event of it, which may
/// come in either order.
fn ack_and_msg(ws: &mut Ws) -> (Value, Value) {
    let (mut ack, mut live) = (None, None);
    while ack.is_none() || live.is_none() {
        let v = recv_until(ws, |v| v["type"] == "ack" || v["type"] == "msg");
        match v["type"].as_str() {
            Some("ack") => ack = Some(v),
            _ => live = Some(v),
        }
    }
    let (ack, live) = (ack.unwrap(), live.unwrap());
    assert_eq!(ack["seq"], live["seq"]);
    (ack, live)
}

fn joined(port: u16, token: &str, room: u64, since: Option<u64>) -> Ws {
    let mut ws = connect_ws(port, token);
    recv_until(&mut ws, |v| v["type"] == "hello");
    let mut join = json!({"type": "join", "room": room});
    if let Some(s) = since {
        join["since"] = s.into();
    }
    send(&mut ws, join);
    recv_until(&mut ws, |v| v["type"] == "joined");
    ws
}

fn thread(p: u16, token: &str, room: u64, path: &str) -> (u16, Value) {
    call(
        p,
        "GET",
        &format!("/api/rooms/{room}/messages/{path}"),
        Some(token),
        None,
    )
}

fn assert_reply(v: &Value, to: u64, thread: u64, from: u64, text: &str) {
    assert_eq!(v["reply_to"], to, "{v}");
    assert_eq!(v["thread"], thread, "{v}");
    assert_eq!(v["quote"], json!({"from": from, "text": text}), "{v}");
}

fn user_id(p: u16, token: &str) -> u64 {
    let (s, v) = call(p, "GET", "/api/me", Some(token), None);
    assert_eq!(s, 200, "{v}");
    v["user"].as_u64().unwrap()
}

#[test]
fn replies_and_threads_through_websocket_and_http() {
    let server = start(&[]);
    let p = server.port;
    let (a, b, c) = (
        register(p, "alice"),
        register(p, "bob"),
        register(p, "carol"),
    );
    let (alice, bob) = (user_id(p, &a), user_id(p, &b));
    let room = create_room(p, &a, "talk", true);
    let (s, v) = call(
        p,
        "POST",
        &format!("/api/rooms/{room}/members"),
        Some(&a),
        Some(&json!({"user": bob})),
    );
    assert!(s < 300, "{v}");
    let (s, v) = call(
        p,
        "POST",
        &format!("/api/invites/{room}/accept"),
        Some(&b),
        None,
    );
    assert_eq!(s, 200, "{v}");

    let mut wa = joined(p, &a, room, None);
    let mut wb = joined(p, &b, room, None);
    send(
        &mut wa,
        json!({"type": "send", "room": room, "body": "question?\nmore", "ref": 1}),
    );
    let ack = recv_until(&mut wa, |v| v["type"] == "ack");
    assert_eq!(ack["seq"], 1);
    recv_until(&mut wb, msg(1));
    // Bob answers over WebSocket; both see the reply with its quote.
    send(
        &mut wb,
        json!({"type": "send", "room": room, "body": "answer", "reply_to": 1, "client_id": "r1"}),
    );
    let (ack, live) = ack_and_msg(&mut wb);
    assert_eq!(ack["seq"], 2, "{ack}");
    assert_reply(&live, 1, 1, alice, "question?");
    assert_reply(&recv_until(&mut wa, msg(2)), 1, 1, alice, "question?");
    // Alice answers the answer over HTTP: it joins 1's thread.
    let (s, v) = call(
        p,
        "POST",
        &format!("/api/rooms/{room}/messages"),
        Some(&a),
        Some(&json!({"body": "thanks", "reply_to": 2})),
    );
    assert_eq!((s, v["seq"].as_u64()), (201, Some(3)), "{v}");
    assert_reply(&recv_until(&mut wb, msg(3)), 2, 1, bob, "answer");

    // Refused, over both, and nothing stored: a missing or deleted
    // message, seq 0, a reply_to that is not a number.
    let (s, _) = call(
        p,
        "POST",
        &format!("/api/rooms/{room}/messages"),
        Some(&a),
        Some(&json!({"body": "late"})),
    );
    assert_eq!(s, 201);
    send(&mut wa, json!({"type": "delete", "room": room, "seq": 4}));
    recv_until(&mut wa, |v| v["type"] == "ack" && v["seq"] == 4);
    let refused = [
        (99u64, 404u16, "not_found"),
        (0, 400, "bad_request"),
        (4, 404, "not_found"),
    ];
    for (to, status, code) in refused {
        let (s, v) = call(
            p,
            "POST",
            &format!("/api/rooms/{room}/messages"),
            Some(&b),
            Some(&json!({"body": "x", "reply_to": to})),
        );
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{to}: {v}"
        );
        send(
            &mut wb,
            json!({"type": "send", "room": room, "body": "x", "reply_to": to, "ref": to}),
        );
        let e = recv_until(&mut wb, |v| v["type"] == "error" || v["type"] == "ack");
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some(code)),
            "{e}"
        );
    }
    let (s, v) = call(
        p,
        "POST",
        &format!("/api/rooms/{room}/messages"),
        Some(&b),
        Some(&json!({"body": "x", "reply_to": "one"})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    send(
        &mut wb,
        json!({"type": "send", "room": room, "body": "x", "reply_to": "one"}),
    );
    let e = recv_until(&mut wb, |v| v["type"] == "error" || v["type"] == "ack");
    assert_eq!(e["code"], "bad_request", "{e}");
    let last = all_messages(p, &a, room).len();
    assert_eq!(last, 4, "refusals store nothing");

    // The thread, from its first message or any reply; paged.
    for seq in [1, 2, 3] {
        let (s, t) = thread(p, &b, room, &format!("{seq}/thread"));
        assert_eq!(s, 200, "{t}");
        assert_eq!(t["room"], room);
        assert_eq!(
            (&t["first"]["seq"], &t["first"]["replies"]),
            (&json!(1), &json!(2))
        );
        let seqs: Vec<u64> = t["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [2, 3], "{t}");
        assert_reply(&t["messages"][1], 2, 1, bob, "answer");
        assert_eq!(t["next"], Value::Null);
    }
    let (_, t) = thread(p, &b, room, "1/thread?limit=1");
    assert_eq!(
        (&t["messages"][0]["seq"], &t["next"]),
        (&json!(2), &json!({"after": 2}))
    );
    let (_, t) = thread(p, &b, room, "1/thread?limit=1&after=2");
    assert_eq!(
        (&t["messages"][0]["seq"], &t["next"]),
        (&json!(3), &Value::Null)
    );
    // A message with no replies is a thread of one.
    let (_, t) = thread(p, &b, room, "4/thread");
    assert_eq!(t["messages"], json!([]), "{t}");
    for (path, status) in [
        ("99/thread", 404),
        ("0/thread", 400),
        ("x/thread", 400),
        ("1/thread?limit=0", 400),
        ("1/thread?limit=100000", 400),
        ("1/thread?after=x", 400),
    ] {
        assert_eq!(thread(p, &b, room, path).0, status, "{path}");
    }
    // Only those who may read the room: carol is no member of it.
    assert_eq!(thread(p, &c, room, "1/thread").0, 404);
    assert_eq!(
        call(
            p,
            "GET",
            &format!("/api/rooms/{room}/messages/1/thread"),
            None,
            None
        )
        .0,
        401
    );

    // History: the first message counts its replies, replies quote.
    let page = all_messages(p, &b, room);
    assert_eq!(page[0]["replies"], 2, "{}", page[0]);
    assert_eq!(page[1].get("replies"), None);
    assert_reply(&page[1], 1, 1, alice, "question?");
    assert_reply(&page[2], 2, 1, bob, "answer");
    // An edit of the answered message shows in the quotes read after it.
    send(
        &mut wb,
        json!({"type": "edit", "room": room, "seq": 2, "body": "better answer"}),
    );
    recv_until(&mut wb, |v| v["type"] == "ack");
    let (_, t) = thread(p, &a, room, "1/thread");
    assert_reply(&t["messages"][1], 2, 1, bob, "better answer");
    // A replay after `since` carries them too.
    let mut wc = joined(p, &a, room, Some(1));
    assert_reply(&recv_until(&mut wc, msg(2)), 1, 1, alice, "question?");
    assert_reply(&recv_until(&mut wc, msg(3)), 2, 1, bob, "better answer");
    assert_serving(p);
}
