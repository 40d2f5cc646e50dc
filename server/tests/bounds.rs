//! The connection write path is bounded: whatever a client pipelines and
//! however long it does not read, the server holds at most
//! `--conn-output-bytes-max` (plus one response and one read chunk) for it,
//! stops reading it, and closes it when its socket takes nothing for
//! `--conn-write-timeout-ms`; and a WebSocket that stops reading for a
//! while still gets every message, in order, once it reads again.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const TEXT: u8 = 0x1;
/// Bytes the server may hold per connection besides the output bound:
/// one response (at most a history page, capped below, or a static file)
/// and one read chunk of pipelined input (64 KiB).
const PER_CONN_SLACK: u64 = (64 << 10) + (64 << 10) + (32 << 10);
/// What RSS may grow by whatever the connections do (allocator pools,
/// the shards' scratch buffers, metrics).
const RSS_SLACK: u64 = 24 << 20;
const BOUND: u64 = 64 << 10;

/// The server's resident set size, from /proc.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// The highest RSS seen over `span`, sampled every 20 ms.
fn peak_rss(pid: u32, span: Duration) -> u64 {
    let until = Instant::now() + span;
    let mut peak = 0;
    while Instant::now() < until {
        peak = peak.max(rss(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    peak
}

/// Waits until `rookery_write_timeouts_total` reaches `n`.
fn wait_write_timeouts(port: u16, n: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = metric(port, "rookery_write_timeouts_total");
        if got >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{got} write timeouts, wanted {n}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A server whose connections may be owed 64 KiB, closed when their
/// socket takes nothing for `write_timeout_ms`.
fn bounded_server(write_timeout_ms: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--conn-output-bytes-max",
        "65536",
        "--ws-frame-bytes-max",
        "65536",
        "--conn-write-timeout-ms",
        write_timeout_ms,
        "--history-page-bytes-max",
        "65536",
        "--connections-per-ip-max",
        "10000",
    ];
    args.extend_from_slice(extra);
    start(&args)
}

/// 10 connections each pipeline 1,800 `GET /app.js` (43 MB of answers
/// each) and never read: the server holds at most the bound and a little
/// for each, closes them at the write deadline, and keeps serving.
#[test]
fn pipelined_http_requests_never_read_are_bounded_and_end_at_the_write_deadline() {
    let server = bounded_server("1500", &[]);
    let (p, pid) = (server.port, server.child.id());
    assert_serving(p);
    let before = rss(pid);
    let conns = 10u64;
    let request = b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1800);
    let clients: Vec<TcpStream> = (0..conns)
        .map(|_| {
            let mut s = connect(p);
            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&request).unwrap();
            s
        })
        .collect();
    let peak = peak_rss(pid, Duration::from_millis(1200));
    let allowed = conns * (BOUND + PER_CONN_SLACK) + RSS_SLACK;
    assert!(
        peak.saturating_sub(before) <= allowed,
        "RSS grew by {} bytes, allowed {allowed}",
        peak.saturating_sub(before)
    );
    // Nothing read for the write deadline: every one of them is closed.
    wait_write_timeouts(p, conns as f64, Duration::from_secs(10));
    for mut c in clients {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            match c.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        assert!(
            total < 1800 * 24_000,
            "the connection was closed early ({total} bytes came)"
        );
    }
    assert_serving(p);
}

/// WebSocket clients pipeline `history` requests for large pages and never
/// read: bounded, closed at the write deadline, and a normal client in the
/// same room is served throughout.
#[test]
fn pipelined_ws_history_never_read_is_bounded_and_ends_at_the_write_deadline() {
    let server = bounded_server("1500", &[]);
    let (p, pid) = (server.port, server.child.id());
    let token = register(p, "hoarder");
    let room = create_room(p, &token, "big", false);
    let body = "m".repeat(8000);
    for i in 0..100 {
        let (s, v) = call(
            p,
            "POST",
            &format!("/api/rooms/{room}/messages"),
            Some(&token),
            Some(&json!({"body": body, "client_id": format!("c{i}")})),
        );
        assert_eq!(s, 201, "{v}");
    }
    let before = rss(pid);
    let conns = 5u64;
    let history = json!({"type": "history", "room": room, "limit": 100}).to_string();
    let mut hoarders = Vec::new();
    for _ in 0..conns {
        let (mut ws, head) = RawWs::connect(p, &format!("/ws?token={token}"), "");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        ws.s.set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        for _ in 0..200 {
            if ws
                .try_write_frame(TEXT, history.as_bytes(), true, false)
                .is_err()
            {
                break; // the server stopped reading, and the socket is full
            }
        }
        hoarders.push(ws);
    }
    let peak = peak_rss(pid, Duration::from_millis(1200));
    let allowed = conns * (BOUND + PER_CONN_SLACK) + RSS_SLACK;
    assert!(
        peak.saturating_sub(before) <= allowed,
        "RSS grew by {} bytes, allowed {allowed}",
        peak.saturating_sub(before)
    );
    // A polite client is served meanwhile.
    let (mut polite, _) = RawWs::connect(p, &format!("/ws?token={token}"), "");
    let send = json!({"type": "send", "room": room, "body": "still here", "ref": 1});
    polite.write_frame(TEXT, send.to_string().as_bytes(), true, false);
    let ack = loop {
        let f = polite.read_frame().expect("served");
        let v: Value = serde_json::from_slice(&f.payload).unwrap();
        if v["type"] == "ack" {
            break v;
        }
    };
    assert_eq!(ack["seq"], 101);
    wait_write_timeouts(p, conns as f64, Duration::from_secs(10));
    assert_serving(p);
}

/// A WebSocket that stops reading while 8 MB of messages go to its room
/// (128 times the bound) lags instead of holding them, and once it reads
/// again it gets every message once, in order; the server's memory stayed
/// bounded meanwhile.
#[test]
fn a_websocket_that_stops_reading_gets_everything_in_order_once_it_reads() {
    let server = bounded_server("60000", &["--ws-stuck-timeout-ms", "60000"]);
    let (p, pid) = (server.port, server.child.id());
    let token = register(p, "sleepy");
    let room = create_room(p, &token, "catchup", false);
    let (mut sleepy, _) = RawWs::connect(p, &format!("/ws?token={token}"), "");
    let join = json!({"type": "join", "room": room, "ref": "j"}).to_string();
    sleepy.write_frame(TEXT, join.as_bytes(), true, false);
    loop {
        let v: Value = serde_json::from_slice(&sleepy.read_frame().unwrap().payload).unwrap();
        if v["type"] == "joined" {
            break;
        }
    }
    let before = rss(pid);
    let (mut publisher, _) = RawWs::connect(p, &format!("/ws?token={token}"), "");
    let body = "z".repeat(4000);
    let n = 2000u64;
    let mut peak = 0;
    for i in 0..n {
        let send =
            json!({"type": "send", "room": room, "body": body, "client_id": format!("s{i}")});
        publisher.write_frame(TEXT, send.to_string().as_bytes(), true, false);
        loop {
            let v: Value =
                serde_json::from_slice(&publisher.read_frame().unwrap().payload).unwrap();
            if v["type"] == "ack" {
                break;
            }
        }
        if i % 100 == 0 {
            peak = peak.max(rss(pid));
        }
    }
    assert!(
        peak.saturating_sub(before) <= BOUND + PER_CONN_SLACK + RSS_SLACK,
        "RSS grew by {} bytes while a client did not read",
        peak.saturating_sub(before)
    );
    // Now it reads: every seq once, in order, no gap.
    sleepy
        .s
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut next = 1u64;
    while next <= n {
        let f = sleepy.read_frame().expect("the lagging client is served");
        let v: Value = serde_json::from_slice(&f.payload).unwrap();
        if v["type"] == "msg" {
            assert_eq!(v["seq"], next, "no gap, no duplicate");
            next += 1;
        }
    }
    assert!(metric(p, "rookery_lagged_total") >= 1.0);
    assert_serving(p);
}

/// A log segment that cannot be read (here deleted under the running
/// server) fails every catch-up page that needs it. The subscribers ask
/// again less and less often, the warnings stay near one a second per
/// shard (before: one per subscriber every 2 ms, millions of lines), each
/// connection is closed as stuck once it has made no progress for the
/// stuck timeout, and the server goes on serving.
#[test]
fn an_unreadable_log_segment_fails_catch_up_quietly_and_closes_the_stuck() {
    if clustered() {
        return; // one process's data directory and log
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let stderr_path = dir.path().join("stderr.log");
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", data.to_str().unwrap()])
        .args(["--shards", "2", "--durability", "none"])
        // Every replay reads the log, none comes from memory.
        .args(["--tail-cache-bytes-max", "0"])
        .args(["--ws-stuck-timeout-ms", "3000"])
        .args(["--connections-per-ip-max", "1000"])
        .env("RUST_LOG", "warn")
        .env("ROOKERY_SENDS_PER_USER_PER_S", "1000000")
        .env("ROOKERY_SENDS_PER_USER_BURST", "1000000")
        .env("ROOKERY_JOINS_PER_USER_PER_S", "1000")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    wait_ready(port);
    let token = register(port, "reader");
    let room = create_room(port, &token, "broken", false);
    let (mut poster, _) = RawWs::connect(port, &format!("/ws?token={token}"), "");
    for i in 0..50 {
        let send = json!({"type": "send", "room": room, "body": "x", "client_id": format!("c{i}")});
        poster.write_frame(TEXT, send.to_string().as_bytes(), true, false);
        loop {
            let v: Value = serde_json::from_slice(&poster.read_frame().unwrap().payload).unwrap();
            if v["type"] == "ack" {
                break;
            }
        }
    }
    // Nothing has read these segments yet, so none is mapped: deleted,
    // they cannot be opened again (a mapping would keep one readable).
    let mut deleted = 0;
    for shard in std::fs::read_dir(&data).unwrap().flatten() {
        let Ok(segments) = std::fs::read_dir(shard.path().join("log")) else {
            continue;
        };
        for seg in segments.flatten() {
            if seg.path().extension().is_some_and(|e| e == "seg") {
                std::fs::remove_file(seg.path()).unwrap();
                deleted += 1;
            }
        }
    }
    assert!(deleted > 0, "no log segment found under {}", data.display());
    let started = Instant::now();
    let readers: Vec<RawWs> = (0..20)
        .map(|_| {
            let (mut ws, _) = RawWs::connect(port, &format!("/ws?token={token}"), "");
            let join = json!({"type": "join", "room": room, "since": 0, "ref": "j"});
            ws.write_frame(TEXT, join.to_string().as_bytes(), true, false);
            ws.s.set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            ws
        })
        .collect();
    for mut ws in readers {
        let close = loop {
            let f = ws.read_frame().expect("closed with a close frame");
            if f.opcode == 0x8 {
                break f;
            }
            let v: Value = serde_json::from_slice(&f.payload).unwrap();
            assert_ne!(v["type"], "msg", "no message can be read: {v}");
        };
        let code = u16::from_be_bytes([close.payload[0], close.payload[1]]);
        assert_eq!(code, 4008, "closed as a slow (stuck) consumer");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "not before the stuck timeout"
    );
    assert_serving(port);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    let warnings = log.lines().filter(|l| l.contains("catch-up page")).count();
    // About one a second per shard on each side (owner and subscriber).
    let bound = 4 * (took.as_secs() as usize + 2);
    assert!(
        (1..=bound).contains(&warnings),
        "{warnings} catch-up warnings in {took:?} (bound {bound})"
    );
}
