//! Replies, threads and reactions end to end, through the real binary (one
//! node, and in CI a three-node cluster): `send` with `reply_to` over
//! WebSocket and `POST .../messages` with it over HTTP, the reply's
//! `reply_to`, `thread` and `quote` in live events, history pages and
//! `join since` replays, `replies` on a thread's first message,
//! `GET .../messages/{seq}/thread` and its paging; `react` over WebSocket
//! and `PUT`/`DELETE .../reactions/{emoji}` over HTTP, `react` events,
//! counts with the reader's own on pages; read receipts members see
//! (`receipt` events, paced, and `GET .../receipts`); and every refusal.

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

/// The path of a reaction, the emoji percent-encoded.
fn reaction_path(room: u64, seq: u64, emoji: &str) -> String {
    let coded: String = emoji.bytes().map(|b| format!("%{b:02X}")).collect();
    format!("/api/rooms/{room}/messages/{seq}/reactions/{coded}")
}

#[test]
fn reactions_through_websocket_and_http() {
    let server = start(&[
        "--sends-per-user-per-s",
        "1000",
        "--sends-per-user-burst",
        "1000",
    ]);
    let p = server.port;
    let (a, b, c) = (
        register(p, "alice"),
        register(p, "bob"),
        register(p, "carol"),
    );
    let (alice, bob) = (user_id(p, &a), user_id(p, &b));
    let room = create_room(p, &a, "fun", false);
    let (s, _) = call(
        p,
        "POST",
        &format!("/api/rooms/{room}/join"),
        Some(&b),
        None,
    );
    assert_eq!(s, 200);
    let mut wa = joined(p, &a, room, None);
    let mut wb = joined(p, &b, room, None);
    send(
        &mut wa,
        json!({"type": "send", "room": room, "body": "vote", "ref": 1}),
    );
    recv_until(&mut wb, msg(1));

    // Bob over WebSocket, Alice over HTTP; both see every change.
    send(
        &mut wb,
        json!({"type": "react", "room": room, "seq": 1, "emoji": "👍", "ref": "r1"}),
    );
    // Bob's own event may come before his ack: kept.
    let mut seen_by_bob = Vec::new();
    let ack = loop {
        let v = recv_until(&mut wb, |v| {
            ["ack", "error", "react"].contains(&v["type"].as_str().unwrap_or(""))
        });
        if v["type"] == "react" {
            seen_by_bob.push(v);
        } else {
            break v;
        }
    };
    assert_eq!(
        (ack["type"].as_str(), &ack["seq"]),
        (Some("ack"), &json!(1)),
        "{ack}"
    );
    let (s, v) = call(p, "PUT", &reaction_path(room, 1, "👍"), Some(&a), None);
    assert_eq!(
        (s, &v["changed"], &v["emoji"]),
        (200, &json!(true), &json!("👍\u{FE0F}")),
        "{v}"
    );
    let (s, v) = call(p, "PUT", &reaction_path(room, 1, "👍"), Some(&a), None);
    assert_eq!((s, &v["changed"]), (200, &json!(false)), "again: {v}");
    let (s, v) = call(p, "PUT", &reaction_path(room, 1, "🎉"), Some(&a), None);
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(p, "DELETE", &reaction_path(room, 1, "🎉"), Some(&a), None);
    assert_eq!(
        (s, &v["changed"], &v["on"]),
        (200, &json!(true), &json!(false)),
        "{v}"
    );
    // Stored and sent in the canonical spelling (VS16 after each), with the
    // count after each change.
    let want = [
        (bob, "👍\u{FE0F}", true, 1),
        (alice, "👍\u{FE0F}", true, 2),
        (alice, "🎉\u{FE0F}", true, 1),
        (alice, "🎉\u{FE0F}", false, 0),
    ];
    for (ws, mut got) in [(&mut wa, Vec::new()), (&mut wb, seen_by_bob)] {
        while got.len() < want.len() {
            got.push(recv_until(ws, |v| v["type"] == "react"));
        }
        for ((by, emoji, on, count), e) in want.iter().zip(&got) {
            assert_eq!(
                e,
                &json!({"type": "react", "room": room, "seq": 1, "by": by, "ts": e["ts"], "emoji": emoji, "on": on, "count": count})
            );
        }
    }
    // Pages say whose: bob has 👍 on, carol (not a member, public room)
    // reads the counts.
    let page = all_messages(p, &b, room);
    assert_eq!(
        page[0]["reactions"],
        json!([{"emoji": "👍\u{FE0F}", "count": 2, "me": true}])
    );
    let page = all_messages(p, &c, room);
    assert_eq!(
        page[0]["reactions"],
        json!([{"emoji": "👍\u{FE0F}", "count": 2}])
    );
    send(
        &mut wb,
        json!({"type": "history", "room": room, "ref": "h"}),
    );
    let h = recv_until(&mut wb, |v| v["type"] == "history");
    assert_eq!(h["messages"][0]["reactions"][0]["me"], true, "{h}");
    let (_, t) = thread(p, &a, room, "1/thread");
    assert_eq!(
        t["first"]["reactions"],
        json!([{"emoji": "👍\u{FE0F}", "count": 2, "me": true}])
    );
    // A replay counts, with nobody's own.
    let mut wc = joined(p, &a, room, Some(0));
    assert_eq!(
        recv_until(&mut wc, msg(1))["reactions"],
        json!([{"emoji": "👍\u{FE0F}", "count": 2}])
    );

    // Refused, and nothing stored: not a member, not one emoji, a missing
    // message, bad paths; past the bounds, 409.
    let refusals: [(&str, String, u16); 6] = [
        (&c, reaction_path(room, 1, "👍"), 403),
        (&b, reaction_path(room, 1, "lol"), 400),
        (&b, reaction_path(room, 1, "👍👍"), 400),
        (&b, reaction_path(room, 9, "👍"), 404),
        (
            &b,
            format!("/api/rooms/{room}/messages/1/reactions/%FF"),
            400,
        ),
        (
            &b,
            format!("/api/rooms/{room}/messages/x/reactions/%F0%9F%91%8D"),
            400,
        ),
    ];
    for (token, path, status) in refusals {
        let (s, v) = call(p, "PUT", &path, Some(token), None);
        assert_eq!(s, status, "{path}: {v}");
    }
    send(
        &mut wb,
        json!({"type": "react", "room": room, "seq": 1, "emoji": "no", "ref": "bad"}),
    );
    let e = recv_until(&mut wb, |v| v["type"] == "error" || v["type"] == "ack");
    assert_eq!(e["code"], "bad_request", "{e}");
    send(
        &mut wb,
        json!({"type": "react", "room": room, "seq": 1, "ref": "none"}),
    );
    let e = recv_until(&mut wb, |v| v["type"] == "error" || v["type"] == "ack");
    assert_eq!(e["code"], "bad_request", "{e}");
    let faces: Vec<String> = (0..20u32)
        .map(|i| char::from_u32(0x1F600 + i).unwrap().to_string())
        .collect();
    // Bob has 👍 and nine faces: ten, his most on one message.
    for face in &faces[..9] {
        let (s, v) = call(p, "PUT", &reaction_path(room, 1, face), Some(&b), None);
        assert_eq!(s, 200, "{face}: {v}");
    }
    let (s, v) = call(p, "PUT", &reaction_path(room, 1, &faces[9]), Some(&b), None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "bob's 11th: {v}"
    );
    // Alice the same, nine other faces: 19 distinct; Dave the 20th.
    for face in &faces[9..18] {
        let (s, v) = call(p, "PUT", &reaction_path(room, 1, face), Some(&a), None);
        assert_eq!(s, 200, "{face}: {v}");
    }
    let d = register(p, "dave");
    let (s, _) = call(
        p,
        "POST",
        &format!("/api/rooms/{room}/join"),
        Some(&d),
        None,
    );
    assert_eq!(s, 200);
    let (s, v) = call(
        p,
        "PUT",
        &reaction_path(room, 1, &faces[18]),
        Some(&d),
        None,
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        p,
        "PUT",
        &reaction_path(room, 1, &faces[19]),
        Some(&d),
        None,
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "21st distinct: {v}"
    );
    // Adding to one that is there is still allowed.
    let (s, v) = call(p, "PUT", &reaction_path(room, 1, &faces[0]), Some(&d), None);
    assert_eq!(s, 200, "{v}");
    let page = all_messages(p, &a, room);
    assert_eq!(page[0]["reactions"].as_array().unwrap().len(), 20);
    assert_serving(p);
}

/// `POST /api/rooms/{room}/read` with `seq`.
fn read(p: u16, token: &str, room: u64, seq: u64) -> (u16, Value) {
    let path = format!("/api/rooms/{room}/read");
    call(p, "POST", &path, Some(token), Some(&json!({ "seq": seq })))
}

/// The `(user, seq)` pairs of a receipts page.
fn markers(page: &Value) -> Vec<(u64, u64)> {
    page["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["user"].as_u64().unwrap(), r["seq"].as_u64().unwrap()))
        .collect()
}

/// Read receipts others can see: a member's `read` (WebSocket) or `POST
/// .../read` (HTTP) reaches the room as a `receipt` event, at most one per
/// user and room per second (the latest after the second); a reader who is
/// not a member is not shown; `GET .../receipts` pages every member's
/// marker, own posts counting as read; refusals.
#[test]
fn receipts_members_see() {
    let server = start(&[]);
    let p = server.port;
    let (a, b, c, d) = (
        register(p, "alice"),
        register(p, "bob"),
        register(p, "carol"),
        register(p, "dave"),
    );
    let (alice, bob, dave) = (user_id(p, &a), user_id(p, &b), user_id(p, &d));
    let room = create_room(p, &a, "seen", false);
    for t in [&b, &d] {
        let (s, v) = call(p, "POST", &format!("/api/rooms/{room}/join"), Some(t), None);
        assert_eq!(s, 200, "{v}");
    }
    let mut wa = joined(p, &a, room, None);
    let mut wb = joined(p, &b, room, None);
    for i in 1..=3u64 {
        send(
            &mut wa,
            json!({"type": "send", "room": room, "body": format!("m{i}")}),
        );
        ack_and_msg(&mut wa);
        recv_until(&mut wb, msg(i));
    }
    let is_receipt = |v: &Value| v["type"] == "receipt" && v.get("ref").is_none();

    // Bob reads over WebSocket: his answer, and Alice's event.
    send(
        &mut wb,
        json!({"type": "read", "room": room, "seq": 2, "ref": 7}),
    );
    let answer = recv_until(&mut wb, |v| v["ref"] == 7);
    assert_eq!(
        answer,
        json!({"type": "receipt", "room": room, "user": bob, "seq": 2, "ref": 7})
    );
    let first = recv_until(&mut wa, is_receipt);
    let shown_at = Instant::now();
    assert_eq!(
        first,
        json!({"type": "receipt", "room": room, "user": bob, "seq": 2})
    );

    // At once again over HTTP: stored now, shown after the second.
    let (s, v) = read(p, &b, room, 3);
    assert_eq!((s, &v["seq"]), (200, &json!(3)), "{v}");
    // Carol is not a member: she may read the public room, unseen.
    let (s, v) = read(p, &c, room, 3);
    assert_eq!(s, 200, "{v}");
    // Dave's comes after Carol's would have: seeing his and not hers
    // shows hers was never sent.
    let (s, v) = read(p, &d, room, 1);
    assert_eq!(s, 200, "{v}");
    let next = recv_until(&mut wa, is_receipt);
    assert_eq!(
        next,
        json!({"type": "receipt", "room": room, "user": dave, "seq": 1})
    );
    let later = recv_until(&mut wa, is_receipt);
    assert_eq!(
        later,
        json!({"type": "receipt", "room": room, "user": bob, "seq": 3})
    );
    assert!(
        shown_at.elapsed() >= Duration::from_millis(700),
        "one receipt per user per second: {:?}",
        shown_at.elapsed()
    );
    // Bob's own connection hears of it too (his other tabs would).
    recv_until(&mut wb, |v| is_receipt(v) && v["seq"] == 3);

    // Every member's marker; Alice's own posts count as read.
    let path = format!("/api/rooms/{room}/receipts");
    let (s, v) = call(p, "GET", &path, Some(&c), None);
    assert_eq!(s, 200, "a public room's readers may see it: {v}");
    let mut want = vec![(alice, 3u64), (bob, 3), (dave, 1)];
    want.sort_unstable();
    let got = markers(&v);
    assert_eq!(got, want, "{v}");
    assert_eq!((v["room"].as_u64(), &v["next"]), (Some(room), &Value::Null));
    let (s, v) = call(p, "GET", &format!("{path}?limit=2"), Some(&a), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["receipts"].as_array().unwrap().len(), 2);
    let after = v["next"]["after"].as_u64().expect("a next page");
    let (s, v) = call(
        p,
        "GET",
        &format!("{path}?limit=2&after={after}"),
        Some(&a),
        None,
    );
    assert_eq!(
        (s, v["receipts"][0]["user"].as_u64()),
        (200, Some(want[2].0)),
        "{v}"
    );
    assert_eq!(v["next"], Value::Null);

    // Refusals.
    for (q, token, status) in [
        ("?limit=0", Some(&a), 400),
        ("?limit=abc", Some(&a), 400),
        ("?after=-1", Some(&a), 400),
        ("", None, 401),
    ] {
        let (s, v) = call(
            p,
            "GET",
            &format!("{path}{q}"),
            token.map(|t| t.as_str()),
            None,
        );
        assert_eq!(s, status, "{q}: {v}");
    }
    let secret = create_room(p, &a, "secret", true);
    let (s, v) = call(
        p,
        "GET",
        &format!("/api/rooms/{secret}/receipts"),
        Some(&c),
        None,
    );
    assert_eq!(s, 404, "a private room's receipts are its members': {v}");
    let (s, v) = call(p, "GET", "/api/rooms/999999/receipts", Some(&a), None);
    assert_eq!(s, 404, "{v}");
    // Still serving.
    let (s, _) = call(
        p,
        "GET",
        &format!("/api/rooms/{secret}/receipts"),
        Some(&a),
        None,
    );
    assert_eq!(s, 200);

    if single_process_only("a SIGKILL and restart") {
        return;
    }
    // Acknowledged receipts survive a SIGKILL.
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let again = restart(&server, &[]);
    let port = again.port;
    let (s, v) = call(port, "GET", &path, Some(&a), None);
    assert_eq!(s, 200, "{v}");
    let got = markers(&v);
    assert_eq!(got, want, "receipts after SIGKILL: {v}");
}
