//! End-to-end tests of webhooks (issue 17, item 2) through the binary,
//! against a receiver in the test that checks every signature: every
//! message, edit, delete, join and leave delivered in the room's order; a
//! receiver that fails for a while, across a restart of the server, then
//! catches up with nothing missing and nothing twice; a receiver that
//! never answers leaves chat serving and memory bounded, then gets
//! everything; the file re-read on SIGHUP (a new webhook starts at the
//! end, a bad file changes nothing) and refused at start.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "a-test-secret-of-some-length";

/// How the receiver answers.
const ANSWER_OK: u8 = 0;
const ANSWER_500: u8 = 1;
const NEVER_ANSWER: u8 = 2;

#[derive(Default)]
struct Seen {
    mode: AtomicU8,
    /// Events of requests answered 200, in order, with their webhook.
    events: Mutex<Vec<(String, Value)>>,
    requests: AtomicU64,
}

/// A webhook receiver on a port of its own: checks each request's
/// signature and timestamp (a bad one fails the test) and answers as
/// `mode` says.
struct Receiver {
    port: u16,
    seen: Arc<Seen>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let shared = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let seen = shared.clone();
                std::thread::spawn(move || serve(conn, &seen));
            }
        });
        Receiver { port, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn answer(&self, mode: u8) {
        self.seen.mode.store(mode, Ordering::SeqCst);
    }

    /// The events delivered to `hook` so far.
    fn events(&self, hook: &str) -> Vec<Value> {
        let all = self.seen.events.lock().unwrap();
        all.iter()
            .filter(|(h, _)| h == hook)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Waits until `done` holds for `hook`'s events; panics after 30 s.
    fn wait_for(&self, hook: &str, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let events = self.events(hook);
            if done(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "{hook}: {what}: got {} events: {:?}",
                events.len(),
                events.iter().rev().take(5).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One connection: requests until it closes.
fn serve(mut conn: TcpStream, seen: &Seen) {
    let mut buf = Vec::new();
    loop {
        let Some((head_len, headers, body_len)) = read_head(&mut conn, &mut buf) else {
            return;
        };
        while buf.len() < head_len + body_len {
            let mut chunk = [0u8; 65536];
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf[head_len..head_len + body_len].to_vec();
        buf.drain(..head_len + body_len);
        seen.requests.fetch_add(1, Ordering::SeqCst);
        let payload = check_signed(&headers, &body);
        match seen.mode.load(Ordering::SeqCst) {
            ANSWER_OK => {
                let hook = payload["webhook"].as_str().unwrap().to_string();
                let mut events = seen.events.lock().unwrap();
                for e in payload["events"].as_array().unwrap() {
                    events.push((hook.clone(), e.clone()));
                }
                drop(events);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
            ANSWER_500 => {
                let _ = conn.write_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n");
            }
            _ => {
                // Hold the connection, answer nothing.
                while seen.mode.load(Ordering::SeqCst) == NEVER_ANSWER {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
        }
    }
}

/// A request head: its length, its headers (lower-case names) and the
/// body's length.
type Head = (usize, Vec<(String, String)>, usize);

/// Reads one request head into `buf`; None when the connection closed.
fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Head> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(n) = req.parse(buf).expect("a well-formed request") {
            assert_eq!(req.method, Some("POST"));
            let headers: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).to_string(),
                    )
                })
                .collect();
            let len = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map(|(_, v)| v.parse().unwrap())
                .expect("a content-length");
            return Some((n, headers, len));
        }
        let mut chunk = [0u8; 65536];
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The body, once its signature and timestamp check out (the receiver's
/// side of docs/operations.md).
fn check_signed(headers: &[(String, String)], body: &[u8]) -> Value {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} header"))
    };
    let ts = get("rookery-timestamp");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(ts.parse().unwrap()) < 300, "a fresh timestamp");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(get("rookery-signature"), format!("v1={want}"), "signed");
    assert_eq!(get("content-type"), "application/json");
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        payload["webhook"].as_str(),
        Some(get("rookery-webhook").as_str())
    );
    payload
}

fn hook_entry(name: &str, url: &str, extra: &str) -> String {
    format!("[[webhook]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n{extra}\n")
}

fn write_hooks(dir: &Path, text: &str) -> String {
    let path = dir.join("webhooks.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn open_ws(port: u16, token: &str, room: u64) -> RawWs {
    let (mut ws, head) = RawWs::connect(port, &format!("/ws?token={token}"), "");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(next_json(&mut ws).unwrap()["type"], "hello");
    send_json(&mut ws, json!({"type": "join", "room": room}));
    while next_text_json(&mut ws)["type"] != "joined" {}
    ws
}

/// Sends `v` and waits for its `ack` (skipping events); the ack.
fn acked(ws: &mut RawWs, v: Value) -> Value {
    send_json(ws, v);
    loop {
        let got = next_text_json(ws);
        match got["type"].as_str() {
            Some("ack") => return got,
            Some("error") => panic!("{got}"),
            _ => {}
        }
    }
}

fn post(ws: &mut RawWs, room: u64, body: &str) -> u64 {
    acked(ws, json!({"type": "send", "room": room, "body": body}))["seq"]
        .as_u64()
        .unwrap()
}

fn user_id(port: u16, token: &str) -> u64 {
    let (s, v) = call(port, "GET", "/api/me", Some(token), None);
    assert_eq!(s, 200, "{v}");
    v["user"].as_u64().unwrap()
}

/// The durable events of `room` (no presence) as short tags.
fn tags(events: &[Value], room: u64) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["room"] == room && e["type"] != "presence")
        .map(|e| match e["type"].as_str().unwrap() {
            "message" => format!("m{}:{}", e["seq"], e["body"].as_str().unwrap()),
            "edit" => format!("e{}:{}", e["seq"], e["body"].as_str().unwrap()),
            "delete" => format!("d{}", e["seq"]),
            "join" => format!("j{}", e["user"]),
            "leave" => format!("l{}", e["user"]),
            other => panic!("unexpected type {other}"),
        })
        .collect()
}

fn stop(server: &mut Server) {
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) },
        0
    );
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a clean stop");
}

#[test]
fn every_event_arrives_in_order_signed_and_a_receiver_down_across_a_restart_misses_nothing() {
    if single_process_only("webhooks deliver each node's own rooms") {
        return;
    }
    let rx = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let all = r#"events = ["message", "edit", "delete", "join", "leave", "presence"]
batch_len_max = 7"#;
    let file = write_hooks(dir.path(), &hook_entry("app", &rx.url("/hook"), all));
    let extra = ["--webhooks-file", file.as_str()];
    let mut server = start(&extra);
    let p = server.port;
    let (alice, bob) = (register(p, "alice"), register(p, "bob"));
    let (a, b) = (user_id(p, &alice), user_id(p, &bob));
    let room = create_room(p, &alice, "hooked", false);
    let (s, v) = call(
        p,
        "POST",
        &format!("/api/rooms/{room}/join"),
        Some(&bob),
        None,
    );
    assert_eq!(s, 200, "{v}");
    let mut ws = open_ws(p, &alice, room);
    let mut expect = vec![format!("j{a}"), format!("j{b}")];
    for i in 1..=30 {
        let seq = post(&mut ws, room, &format!("hello {i}"));
        assert_eq!(seq, i);
        expect.push(format!("m{i}:hello {i}"));
    }
    acked(
        &mut ws,
        json!({"type": "edit", "room": room, "seq": 3, "body": "fixed"}),
    );
    acked(&mut ws, json!({"type": "delete", "room": room, "seq": 5}));
    expect.extend(["e3:fixed".to_string(), "d5".to_string()]);
    let (s, v) = call(
        p,
        "POST",
        &format!("/api/rooms/{room}/leave"),
        Some(&bob),
        None,
    );
    assert_eq!(s, 200, "{v}");
    expect.push(format!("l{b}"));
    let events = rx.wait_for("app", "everything", |e| tags(e, room).len() >= expect.len());
    assert_eq!(tags(&events, room), expect, "the room's events, in order");
    // Every durable event has an id, none twice; presence came too.
    let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), expect.len());
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    // Each starts with the data directory's id.
    let origin = &ids[0][..17];
    assert!(
        origin.ends_with('-') && ids.iter().all(|id| id.starts_with(origin)),
        "{ids:?}"
    );
    rx.wait_for("app", "alice online", |e| {
        e.iter()
            .any(|e| e["type"] == "presence" && e["user"] == a && e["room"] == room)
    });

    // The receiver fails: nothing moves, failures are counted.
    rx.answer(ANSWER_500);
    for i in 31..=40 {
        post(&mut ws, room, &format!("hello {i}"));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(p, "rookery_webhook_failed_requests_total") < 2.0 {
        assert!(Instant::now() < deadline, "failures counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still failing across a restart of the server.
    drop(ws);
    stop(&mut server);
    let data = server._dir.path().join("data");
    let (child, port) = spawn_in(&data, free_port(), &extra);
    server.child = child;
    server.port = port;
    wait_ready(port);
    let mut ws = open_ws(port, &alice, room);
    expect.extend((31..=40).map(|i| format!("m{i}:hello {i}")));
    // Joins and leaves between messages, more than a batch of each
    // pending: they come back in the order they happened.
    let pause = || std::thread::sleep(Duration::from_millis(5));
    let member = |join: bool| {
        let path = format!("/api/rooms/{room}/{}", if join { "join" } else { "leave" });
        let (s, v) = call(port, "POST", &path, Some(&bob), None);
        assert_eq!(s, 200, "{v}");
        pause();
    };
    for i in 41..=50 {
        if i % 3 == 0 {
            member(true);
            expect.push(format!("j{b}"));
        }
        assert_eq!(post(&mut ws, room, &format!("hello {i}")), i);
        expect.push(format!("m{i}:hello {i}"));
        pause();
        if i % 3 == 0 {
            member(false);
            expect.push(format!("l{b}"));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    // Back: everything since, once, in order.
    rx.answer(ANSWER_OK);
    let events = rx.wait_for("app", "the rest", |e| tags(e, room).len() >= expect.len());
    std::thread::sleep(Duration::from_millis(300));
    let events_now = rx.events("app");
    assert_eq!(
        events_now.len(),
        events.len() + count_presence(&events_now[events.len()..])
    );
    assert_eq!(
        tags(&events, room),
        expect,
        "nothing missing, nothing twice"
    );
    let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    assert!(
        ids.iter().all(|id| id.starts_with(origin)),
        "the same directory"
    );
    assert!(metric(port, "rookery_webhook_delivered_events_total") >= 20.0);
    assert_eq!(metric(port, "rookery_webhook_skipped_segments_total"), 0.0);
    stop(&mut server);
}

fn count_presence(events: &[Value]) -> usize {
    events.iter().filter(|e| e["type"] == "presence").count()
}

/// RSS of a process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn a_receiver_that_never_answers_leaves_chat_serving_and_memory_bounded() {
    if single_process_only("webhooks deliver each node's own rooms") {
        return;
    }
    let rx = Receiver::start();
    rx.answer(NEVER_ANSWER);
    let dir = tempfile::tempdir().unwrap();
    let file = write_hooks(
        dir.path(),
        &hook_entry(
            "stuck",
            &rx.url("/"),
            "timeout_ms = 300\nbatch_len_max = 1000",
        ),
    );
    let server = start(&["--webhooks-file", &file]);
    let p = server.port;
    let alice = register(p, "alice");
    let room = create_room(p, &alice, "busy", false);
    let mut ws = open_ws(p, &alice, room);
    let before = rss(server.child.id());
    let body = "x".repeat(2000);
    let n = 3000;
    for i in 1..=n {
        assert_eq!(post(&mut ws, room, &body), i, "chat keeps serving");
    }
    let grown = rss(server.child.id()).saturating_sub(before);
    // 6 MB of messages went by; the webhook holds one batch at most.
    assert!(grown < 48 << 20, "RSS grew by {grown} bytes");
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(p, "rookery_webhook_failed_requests_total") < 2.0
        || metric(p, "rookery_webhook_backlog_bytes") < 1e6
    {
        assert!(
            Instant::now() < deadline,
            "timeouts and the backlog are counted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        rx.seen.requests.load(Ordering::SeqCst) >= 2,
        "it kept retrying"
    );
    // Once the receiver answers, everything arrives.
    rx.answer(ANSWER_OK);
    // Alice's join and the n messages.
    let events = rx.wait_for("stuck", "all of it", |e| tags(e, room).len() > n as usize);
    let seqs: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    let mut dedup = seqs.clone();
    dedup.dedup();
    assert_eq!(dedup, (1..=n).collect::<Vec<_>>(), "in order, none missing");
}

#[test]
fn the_file_is_reread_on_sighup_and_a_bad_one_is_refused() {
    if single_process_only("webhooks deliver each node's own rooms") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // At start: one line, exit code 2.
    let bad = write_hooks(dir.path(), &hook_entry("x", "ftp://h/", ""));
    let out = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("never"))
        .args(["--webhooks-file", &bad])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--webhooks-file") && err.contains("http"),
        "{err}"
    );

    let rx = Receiver::start();
    let a = hook_entry("a", &rx.url("/a"), "");
    let file = write_hooks(dir.path(), &a);
    let server = start(&["--webhooks-file", &file]);
    let p = server.port;
    let alice = register(p, "alice");
    let room = create_room(p, &alice, "r", false);
    let mut ws = open_ws(p, &alice, room);
    let messages = |hook: &str| -> Vec<String> {
        tags(&rx.events(hook), room)
            .into_iter()
            .filter(|t| t.starts_with('m'))
            .collect()
    };
    let hup = || {
        assert_eq!(
            unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) },
            0
        )
    };
    post(&mut ws, room, "one");
    rx.wait_for("a", "one", |e| {
        tags(e, room).contains(&"m1:one".to_string())
    });
    // A second webhook: it starts at the end of the log.
    write_hooks(
        dir.path(),
        &(a.clone() + &hook_entry("b", &rx.url("/b"), "")),
    );
    hup();
    std::thread::sleep(Duration::from_millis(500));
    post(&mut ws, room, "two");
    rx.wait_for("b", "two", |e| {
        tags(e, room).contains(&"m2:two".to_string())
    });
    assert_eq!(messages("b"), ["m2:two"], "a new webhook starts at the end");
    // A bad file changes nothing.
    write_hooks(dir.path(), "[[webhook]]\nname = 1\n");
    hup();
    std::thread::sleep(Duration::from_millis(300));
    post(&mut ws, room, "three");
    rx.wait_for("b", "three", |e| tags(e, room).len() >= 2);
    // Removed: it gets nothing more; the other goes on.
    write_hooks(dir.path(), &a);
    hup();
    std::thread::sleep(Duration::from_millis(500));
    post(&mut ws, room, "four");
    rx.wait_for("a", "four", |e| {
        tags(e, room).contains(&"m4:four".to_string())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(messages("b"), ["m2:two", "m3:three"]);
    assert_eq!(messages("a"), ["m1:one", "m2:two", "m3:three", "m4:four"]);
    assert_serving(p);
}

#[test]
fn a_receiver_too_far_behind_skips_to_its_backlog_bound_and_goes_on_in_order() {
    if single_process_only("webhooks deliver each node's own rooms") {
        return;
    }
    let rx = Receiver::start();
    rx.answer(ANSWER_500);
    let dir = tempfile::tempdir().unwrap();
    let file = write_hooks(
        dir.path(),
        &hook_entry("behind", &rx.url("/"), "backlog_bytes_max = 1048576"),
    );
    let server = start(&[
        "--webhooks-file",
        &file,
        "--segment-bytes-max",
        "1048576",
        "--shards",
        "1",
    ]);
    let p = server.port;
    let alice = register(p, "alice");
    let room = create_room(p, &alice, "r", false);
    let mut ws = open_ws(p, &alice, room);
    let n = 2500;
    let body = "y".repeat(2000);
    for i in 1..=n {
        assert_eq!(post(&mut ws, room, &format!("{i} {body}")), i);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(p, "rookery_webhook_skipped_bytes_total") < 1e6 {
        assert!(Instant::now() < deadline, "the skip is counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    // What is left of the backlog is within the bound (and a segment).
    assert!(metric(p, "rookery_webhook_backlog_bytes") <= 2.0 * 1048576.0);
    rx.answer(ANSWER_OK);
    let events = rx.wait_for("behind", "the last message", |e| {
        e.iter().any(|e| e["seq"] == n)
    });
    let seqs: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    let first = seqs[0];
    assert!(first > 1, "the oldest were skipped");
    assert_eq!(seqs, (first..=n).collect::<Vec<_>>(), "the rest, in order");
}
