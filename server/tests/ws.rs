//! End-to-end tests of the WebSocket protocol against the real binary, with
//! a Rust client (tungstenite) and raw frames for what a client library
//! will not send.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

fn connect_ws(port: u16, token: Option<&str>) -> Ws {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let url = match token {
        Some(t) => format!("ws://127.0.0.1:{port}/ws?token={t}"),
        None => format!("ws://127.0.0.1:{port}/ws"),
    };
    tungstenite::client(url, stream).unwrap().0
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// The next JSON frame (pings are answered by the client library).
fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Frames until one satisfies `want` (others are returned too).
fn recv_until(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "timed out; got {got:?}");
        let v = recv(ws);
        let done = want(&v);
        got.push(v);
        if done {
            return got;
        }
    }
}

/// Splits unmasked server frames (payloads under 64 KiB) into
/// `(opcode, payload)`.
fn server_frames(bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let (mut i, mut frames) = (0, Vec::new());
    while i + 2 <= bytes.len() {
        let (op, len) = (bytes[i] & 0x0f, (bytes[i + 1] & 0x7f) as usize);
        let (start, len) = match len {
            126 => (
                i + 4,
                u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize,
            ),
            _ => (i + 2, len),
        };
        frames.push((op, &bytes[start..(start + len).min(bytes.len())]));
        i = start + len;
    }
    frames
}

/// The status code of the first close frame with one.
fn close_code(frames: &[(u8, &[u8])]) -> Option<u16> {
    frames
        .iter()
        .find(|(op, p)| *op == 0x8 && p.len() >= 2)
        .map(|(_, p)| u16::from_be_bytes([p[0], p[1]]))
}

#[test]
fn join_send_ack_receive_in_order_and_resume_with_since() {
    let server = start(&[]);
    let p = server.port;
    let (a, b) = (register(p, "alice"), register(p, "bob"));
    let room = create_room(p, &a, "general", false);
    let mut wa = connect_ws(p, Some(&a));
    let hello = recv(&mut wa);
    assert_eq!(hello["type"], "hello");
    assert!(hello["heartbeat_ms"].as_u64().unwrap() > 0);
    send(&mut wa, json!({"type": "join", "room": room, "ref": 1}));
    let joined = recv(&mut wa);
    assert_eq!(
        (joined["type"].as_str(), joined["ref"].as_u64()),
        (Some("joined"), Some(1))
    );
    assert_eq!(joined["last_seq"], 0);
    let mut wb = connect_ws(p, Some(&b));
    recv(&mut wb); // hello
    send(
        &mut wb,
        json!({"type": "join", "room": room, "since": 0, "ref": "j"}),
    );
    let joined = recv(&mut wb);
    assert_eq!(
        (joined["type"].as_str(), joined["ref"].as_str()),
        (Some("joined"), Some("j"))
    );
    assert_eq!(joined["online"].as_array().unwrap().len(), 2, "{joined}");
    // Alice sees Bob arrive.
    recv_until(&mut wa, |v| {
        v["type"] == "presence" && v["state"] == "online"
    });
    for i in 1..=3u64 {
        send(
            &mut wa,
            json!({"type": "send", "room": room, "body": format!("m{i}"), "client_id": format!("c{i}"), "ref": i}),
        );
    }
    // Alice gets an ack per send (with its ref and seq) and her own messages.
    let frames = recv_until(&mut wa, |v| v["type"] == "ack" && v["ref"] == 3);
    let acks: Vec<(u64, u64)> = frames
        .iter()
        .filter(|v| v["type"] == "ack")
        .map(|v| (v["ref"].as_u64().unwrap(), v["seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(acks, [(1, 1), (2, 2), (3, 3)]);
    // Bob receives them in order, once each.
    let frames = recv_until(&mut wb, |v| v["type"] == "msg" && v["seq"] == 3);
    let msgs: Vec<(u64, String)> = frames
        .iter()
        .filter(|v| v["type"] == "msg")
        .map(|v| {
            (
                v["seq"].as_u64().unwrap(),
                v["body"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(msgs, [(1, "m1".into()), (2, "m2".into()), (3, "m3".into())]);
    // An idempotent resend answers the original seq.
    send(
        &mut wa,
        json!({"type": "send", "room": room, "body": "again", "client_id": "c2", "ref": 9}),
    );
    let ack = recv_until(&mut wa, |v| v["ref"] == 9).pop().unwrap();
    assert_eq!(
        (ack["seq"].as_u64(), ack["duplicate"].as_bool()),
        (Some(2), Some(true))
    );
    // Typing reaches the other live subscriber.
    send(&mut wb, json!({"type": "typing", "room": room}));
    recv_until(&mut wa, |v| v["type"] == "typing");
    // Bob goes away; two more messages; Bob resumes with since = 3.
    drop(wb);
    for i in 4..=5u64 {
        send(
            &mut wa,
            json!({"type": "send", "room": room, "body": format!("m{i}"), "ref": 10 + i}),
        );
    }
    recv_until(&mut wa, |v| v["ref"] == 15);
    let mut wb = connect_ws(p, Some(&b));
    recv(&mut wb);
    send(&mut wb, json!({"type": "join", "room": room, "since": 3}));
    let frames = recv_until(&mut wb, |v| v["type"] == "msg" && v["seq"] == 5);
    let seqs: Vec<u64> = frames
        .iter()
        .filter(|v| v["type"] == "msg")
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [4, 5], "no gap, no duplicate");
    // History and read markers over the socket.
    send(
        &mut wb,
        json!({"type": "history", "room": room, "limit": 2, "ref": "h"}),
    );
    let h = recv_until(&mut wb, |v| v["ref"] == "h").pop().unwrap();
    let seqs: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!((h["type"].as_str(), seqs), (Some("history"), vec![5, 4]));
    send(
        &mut wb,
        json!({"type": "read", "room": room, "seq": 5, "ref": "r"}),
    );
    let r = recv_until(&mut wb, |v| v["ref"] == "r").pop().unwrap();
    assert_eq!(
        (r["type"].as_str(), r["seq"].as_u64()),
        (Some("receipt"), Some(5))
    );
    // Leave: no more messages from the room.
    send(&mut wb, json!({"type": "leave", "room": room, "ref": "l"}));
    recv_until(&mut wb, |v| v["ref"] == "l");
    send(
        &mut wa,
        json!({"type": "send", "room": room, "body": "after leave", "ref": 99}),
    );
    recv_until(&mut wa, |v| v["ref"] == 99);
    send(&mut wb, json!({"type": "ping", "ref": "p"}));
    let pong = recv(&mut wb);
    assert_eq!(
        (pong["type"].as_str(), pong["ref"].as_str()),
        (Some("pong"), Some("p")),
        "no msg after leave"
    );
    // A clean close handshake.
    wb.close(None).unwrap();
    loop {
        match wb.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn bad_frames_get_error_frames_and_the_connection_keeps_working() {
    let server = start(&[]);
    let p = server.port;
    let (a, b) = (register(p, "alice"), register(p, "bob"));
    let secret = create_room(p, &a, "secret", true);
    // Without a token: only ping and auth work until an auth frame.
    let mut ws = connect_ws(p, None);
    send(&mut ws, json!({"type": "join", "room": secret, "ref": 1}));
    let e = recv(&mut ws);
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["ref"].as_u64()),
        (Some("error"), Some("unauthorized"), Some(1))
    );
    send(&mut ws, json!({"type": "auth", "token": "nope"}));
    assert_eq!(recv(&mut ws)["code"], "unauthorized");
    send(&mut ws, json!({"type": "auth", "token": b}));
    assert_eq!(recv(&mut ws)["type"], "hello");
    let cases = [
        (Message::text("{not json"), "bad_json"),
        (Message::text("[1,2]"), "bad_json"),
        (
            Message::text(json!({"type": "dance"}).to_string()),
            "unknown_type",
        ),
        (
            Message::text(json!({"type": "join"}).to_string()),
            "bad_request",
        ),
        (
            Message::text(json!({"type": "send", "room": secret}).to_string()),
            "bad_request",
        ),
        (
            Message::text(json!({"type": "join", "room": secret}).to_string()),
            "not_found",
        ),
        (
            Message::text(json!({"type": "send", "room": secret, "body": "x"}).to_string()),
            "not_found",
        ),
        (
            Message::text(json!({"type": "leave", "room": 42}).to_string()),
            "not_found",
        ),
        (Message::binary(vec![1u8, 2, 3]), "bad_frame"),
    ];
    for (frame, code) in cases {
        ws.send(frame).unwrap();
        let e = recv(&mut ws);
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some(code)),
            "{e}"
        );
    }
    send(&mut ws, json!({"type": "ping"}));
    assert_eq!(recv(&mut ws)["type"], "pong", "still serving");
    // A frame over --ws-frame-bytes-max (64 KiB) closes with 1009.
    ws.send(Message::text("x".repeat(70_000))).unwrap();
    let close = loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => break f.code,
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    };
    assert_eq!(close, CloseCode::Size);
    assert_serving(p);
}

#[test]
fn bad_upgrades_and_raw_protocol_violations_are_refused() {
    let server = start(&[]);
    let p = server.port;
    let token = register(p, "carol");
    let upgrade = |extra: &str, key: bool| {
        let key = if key {
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        } else {
            ""
        };
        format!("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{key}{extra}\r\n")
    };
    let cases = [
        (upgrade("Sec-WebSocket-Version: 13\r\n", false), 400),
        (upgrade("Sec-WebSocket-Version: 8\r\n", true), 426),
        (
            upgrade(
                "Sec-WebSocket-Version: 13\r\nAuthorization: Bearer wrong\r\n",
                true,
            ),
            401,
        ),
    ];
    for (raw, want) in cases {
        let resp = exchange(p, raw.as_bytes()).unwrap();
        assert_eq!(status(&resp), want, "{resp}");
    }
    // A good handshake, by hand, then frames a library would not send.
    let raw_session = |frame: &[u8]| -> u16 {
        let (mut ws, head) =
            RawWs::connect(p, "/ws", &format!("Authorization: Bearer {token}\r\n"));
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head}"
        );
        let s = &mut ws.s;
        s.write_all(frame).unwrap();
        // Read frames until a close frame; return its code.
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        close_code(&server_frames(&all)).unwrap_or_else(|| panic!("no close frame in {all:?}"))
    };
    // Unmasked client frame: protocol error.
    assert_eq!(raw_session(&[0x81, 0x02, b'h', b'i']), 1002);
    // Masked text frame with invalid UTF-8: 1007.
    let mask = [1u8, 2, 3, 4];
    let payload: Vec<u8> = [0xffu8, 0xfe]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    let mut frame = vec![0x81, 0x80 | 2];
    frame.extend_from_slice(&mask);
    frame.extend_from_slice(&payload);
    assert_eq!(raw_session(&frame), 1007);
    // Reserved opcode 0x3: protocol error.
    let mut frame = vec![0x83, 0x80];
    frame.extend_from_slice(&mask);
    assert_eq!(raw_session(&frame), 1002);
    assert_serving(p);
}

/// A client that answers nothing is pinged, then closed with 1001 after two
/// silent heartbeats; one that talks stays.
#[test]
fn silent_clients_are_pinged_then_closed() {
    let server = start(&["--ws-heartbeat-ms", "200"]);
    let p = server.port;
    let token = register(p, "dora");
    let mut s = TcpStream::connect(("127.0.0.1", p)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let t = Instant::now();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all); // until the server closes
    assert!(
        t.elapsed() >= Duration::from_millis(350),
        "{:?}",
        t.elapsed()
    );
    let body = &all[all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    // Walk the frames: hello (text), at least one ping, then close 1001.
    let frames = server_frames(body);
    let ops: Vec<u8> = frames.iter().map(|f| f.0).collect();
    assert_eq!(ops.first(), Some(&0x1), "hello first: {ops:?}");
    assert!(ops.contains(&0x9), "pinged: {ops:?}");
    assert_eq!(close_code(&frames), Some(1001));
    // A client that keeps talking is kept well past two heartbeats.
    let mut ws = connect_ws(p, Some(&token));
    recv(&mut ws);
    for i in 0..8 {
        std::thread::sleep(Duration::from_millis(100));
        send(&mut ws, json!({"type": "ping", "ref": i}));
        assert_eq!(recv(&mut ws)["ref"], i);
    }
}

/// Joins `room` with everything pipelined in one write (auth, join, then
/// `sends` messages), as `name`'s token; the socket, its frames not yet read.
fn pipelined_join(p: u16, token: &str, room: u64, name: &str, sends: u64) -> Ws {
    let mut ws = connect_ws(p, None);
    let mut frames = vec![
        json!({"type": "auth", "token": token, "ref": "a"}),
        json!({"type": "join", "room": room, "since": 0, "ref": "j"}),
    ];
    for i in 1..=sends {
        frames.push(json!({"type": "send", "room": room, "body": format!("{name} {i}"), "ref": i}));
    }
    for f in frames {
        ws.write(Message::text(f.to_string())).unwrap();
    }
    ws.flush().unwrap();
    ws
}

/// A connection moves, at its first join, to the shard that owns the room
/// (`ws/moving.rs`). Clients that pipeline their auth, join and sends in one
/// write get every answer once and in order, and every message of their
/// room, whichever shard accepted them; after the move, a logout still
/// closes them (4001). With `--no-ws-move` nothing moves and the same holds.
#[test]
fn connections_move_to_their_rooms_shard_and_lose_nothing() {
    const USERS: usize = 16;
    const ROOMS: usize = 4;
    const SENDS: u64 = 5;
    for moving in [true, false] {
        let server = start(if moving { &[] } else { &["--no-ws-move"] });
        let p = server.port;
        let tokens: Vec<String> = (0..USERS).map(|i| register(p, &format!("u{i}"))).collect();
        let rooms: Vec<u64> = (0..ROOMS)
            .map(|r| create_room(p, &tokens[0], &format!("r{r}"), false))
            .collect();
        let mut conns: Vec<Ws> = (0..USERS)
            .map(|i| pipelined_join(p, &tokens[i], rooms[i % ROOMS], &format!("u{i}"), SENDS))
            .collect();
        // Each gets its own answers in the order of its frames, and every
        // message of its room (replayed from 0, then live) once, in order.
        let per_room = (USERS / ROOMS) as u64 * SENDS;
        for (i, ws) in conns.iter_mut().enumerate() {
            let (mut answers, mut seqs) = (Vec::new(), Vec::new());
            let deadline = Instant::now() + Duration::from_secs(10);
            while answers.len() < 2 + SENDS as usize || (seqs.len() as u64) < per_room {
                assert!(Instant::now() < deadline, "user {i}: {answers:?} {seqs:?}");
                let v = recv(ws);
                match v["type"].as_str() {
                    Some("msg") => seqs.push(v["seq"].as_u64().unwrap()),
                    Some("presence") => {}
                    _ => answers.push(format!("{} {}", v["type"].as_str().unwrap(), v["ref"])),
                }
            }
            let mut want = vec!["hello \"a\"".to_string(), "joined \"j\"".to_string()];
            want.extend((1..=SENDS).map(|r| format!("ack {r}")));
            assert_eq!(answers, want, "user {i}");
            assert_eq!(seqs, (1..=per_room).collect::<Vec<_>>(), "user {i}");
            // Nothing more comes (no answer or message twice) before the
            // answer to a ping sent now.
            send(ws, json!({"type": "ping", "ref": "end"}));
            let next = recv_until(ws, |v| v["type"] != "presence").pop().unwrap();
            assert_eq!(
                (next["type"].as_str(), next["ref"].as_str()),
                (Some("pong"), Some("end")),
                "user {i}"
            );
        }
        let moved = metric(p, "rookery_ws_moves_total");
        if !moving {
            assert_eq!(moved, 0.0);
        } else if !clustered() {
            // Sixteen connections over two shards, four rooms over them:
            // some land away from their room (all on the owner: 2^-16).
            assert!(moved > 0.0, "nothing moved");
        }
        // A logout ends each connection, moved or not.
        for token in &tokens {
            let (s, _) = call(p, "POST", "/api/logout", Some(token), None);
            assert_eq!(s, 200);
        }
        for (i, ws) in conns.iter_mut().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(10);
            let code = loop {
                assert!(Instant::now() < deadline, "user {i} not closed");
                match ws.read() {
                    Ok(Message::Close(Some(f))) => break u16::from(f.code),
                    Ok(_) => continue,
                    Err(e) => panic!("user {i}: {e}"),
                }
            };
            assert_eq!(code, 4001, "user {i}");
        }
        assert_serving(p);
    }
}
