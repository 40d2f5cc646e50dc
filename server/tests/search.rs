//! Message search through the binary (`GET /api/search`), on one node
//! and (`ROOKERY_TEST_CLUSTER=1`) across a cluster's nodes: found in the
//! rooms the caller may read and nowhere else, edits and deletes
//! reflected, every bad request refused with its status, and after a
//! SIGKILL every acknowledged message still found, the index resumed or
//! rebuilt from the log.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Each poll of a search spends a directory token: tests poll freely.
const FLAGS: [&str; 4] = [
    "--search-commit-interval-ms",
    "50",
    "--directory-calls-per-user-per-min",
    "1000000",
];

fn post(port: u16, token: &str, room: u64, body: &str) -> u64 {
    let (s, v) = call(
        port,
        "POST",
        &format!("/api/rooms/{room}/messages"),
        Some(token),
        Some(&json!({ "body": body })),
    );
    assert_eq!(s, 201, "{v}");
    v["seq"].as_u64().unwrap()
}

/// `GET /api/search?{query}` as `token`: status and body.
fn search(port: u16, token: &str, query: &str) -> (u16, Value) {
    call(
        port,
        "GET",
        &format!("/api/search?{query}"),
        Some(token),
        None,
    )
}

/// The (room, seq) of every result, waiting (10 s at most) until they are
/// `want` in any order.
fn wait_found(port: u16, token: &str, query: &str, want: &[(u64, u64)]) -> Value {
    let mut want = want.to_vec();
    want.sort_unstable();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = search(port, token, query);
        let mut got: Vec<(u64, u64)> = match s {
            200 => v["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["room"].as_u64().unwrap(),
                        r["message"]["seq"].as_u64().unwrap(),
                    )
                })
                .collect(),
            503 => Vec::new(), // the index is opening
            _ => panic!("{s} {v}"),
        };
        got.sort_unstable();
        if got == want {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{query}: {got:?}, not {want:?}: {v}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// How many nodes of a test cluster own `rooms`.
fn owners(rooms: &[u64]) -> usize {
    let mut nodes: Vec<u32> = rooms
        .iter()
        .map(|r| rookery_cluster::owner_of(*r, &[1, 2, 3]))
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes.len()
}

/// Sends a frame over a new WebSocket and waits for its ack.
fn ws_change(port: u16, token: &str, frame: Value) {
    let (mut ws, _) = RawWs::connect(port, &format!("/ws?token={token}"), "");
    assert_eq!(next_text_json(&mut ws)["type"], "hello");
    send_json(&mut ws, frame);
    loop {
        let v = next_text_json(&mut ws);
        if v["type"] == "ack" {
            return;
        }
        assert_ne!(v["type"], "error", "{v}");
    }
}

#[test]
fn finds_what_the_caller_may_read_and_nothing_else() {
    let server = start(&FLAGS);
    let p = server.port;
    let alice = register(p, "alice");
    let bob = register(p, "bob");
    let open = create_room(p, &alice, "open", false);
    let secret = create_room(p, &alice, "secret", true);
    let bobs = create_room(p, &bob, "bobs", true);
    post(p, &alice, open, "The quarterly REPORT is ready");
    post(p, &alice, open, "lunch?");
    post(p, &alice, secret, "report draft: do not share");
    post(p, &bob, bobs, "my report, mine only");
    // Across rooms: the caller's own rooms.
    let v = wait_found(p, &alice, "q=report", &[(open, 1), (secret, 1)]);
    let first = &v["results"][0];
    assert_eq!(
        first["score"],
        Value::Null,
        "scores count every room's words"
    );
    let body = first["message"]["body"].as_str().unwrap().to_lowercase();
    assert!(body.contains("report"), "{first}");
    assert!(first["message"]["from"].as_u64().is_some(), "{first}");
    assert_eq!(v["next"], Value::Null);
    // A node's part of a cluster's search (hits with scores, 1,000 deep)
    // and its ask to show a page are for nodes only: asked by a client,
    // whether forwarded to a room's owner or not (three times: through
    // each node of a cluster), a search like any other.
    for _ in 0..3 {
        for query in [
            "q=report&hits=1&limit=1000".to_string(),
            format!("q=report&room={open}&hits=1&limit=1000"),
        ] {
            let (s, v) = search(p, &alice, &query);
            assert_eq!((s, code(&v)), (400, "bad_request"), "{query}: {v}");
        }
        for (query, n) in [
            ("q=report&hits=1".to_string(), 2),
            (format!("q=report&room={open}&hits=1"), 1),
            (format!("q=report&show={secret}.1"), 2),
        ] {
            let (s, v) = search(p, &alice, &query);
            assert_eq!((s, v["hits"].clone()), (200, Value::Null), "{query}: {v}");
            assert_eq!(
                v["results"].as_array().map(Vec::len),
                Some(n),
                "{query}: {v}"
            );
            assert_eq!(v["results"][0]["score"], Value::Null, "{v}");
        }
    }
    wait_found(p, &bob, "q=report", &[(bobs, 1)]);
    // One room: a public room anyone signed in may read, not a private
    // room of others (404, as for its history).
    wait_found(p, &bob, &format!("q=report&room={open}"), &[(open, 1)]);
    let (s, v) = search(p, &bob, &format!("q=report&room={secret}"));
    assert_eq!((s, code(&v)), (404, "not_found"), "{v}");
    // Every word must match, in any case, accents folded.
    wait_found(p, &alice, "q=Quarterly%20r%C3%A9port", &[(open, 1)]);
    wait_found(p, &alice, "q=quarterly%20lunch", &[]);
    // Edits and deletes are reflected.
    ws_change(
        p,
        &alice,
        json!({"type": "edit", "room": open, "seq": 1, "body": "the annual summary"}),
    );
    wait_found(p, &alice, "q=report", &[(secret, 1)]);
    wait_found(p, &alice, "q=summary", &[(open, 1)]);
    ws_change(
        p,
        &alice,
        json!({"type": "delete", "room": secret, "seq": 1}),
    );
    wait_found(p, &alice, "q=report", &[]);
    // Pages: `next` gives the offset of the rest, over rooms (in a
    // cluster, rooms of more than one node: each node's best are merged).
    let mut rooms = vec![open];
    while rooms.len() < 3 || (clustered() && owners(&rooms) < 2) {
        assert!(rooms.len() < 12, "rooms on one node only: {rooms:?}");
        rooms.push(create_room(
            p,
            &alice,
            &format!("more{}", rooms.len()),
            false,
        ));
    }
    let mut want = Vec::new();
    for i in 0..7 {
        let room = rooms[i % rooms.len()];
        want.push((room, post(p, &alice, room, &format!("paging word {i}"))));
    }
    wait_found(p, &alice, "q=paging&limit=10", &want);
    let mut paged = Vec::new();
    for (offset, len, next) in [
        (0, 3, json!({"offset": 3})),
        (3, 3, json!({"offset": 6})),
        (6, 1, Value::Null),
    ] {
        let (s, v) = search(p, &alice, &format!("q=paging&limit=3&offset={offset}"));
        assert_eq!((s, &v["next"]), (200, &next), "{v}");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), len, "{v}");
        paged.extend(results.iter().map(|r| {
            (
                r["room"].as_u64().unwrap(),
                r["message"]["seq"].as_u64().unwrap(),
            )
        }));
    }
    paged.sort_unstable();
    want.sort_unstable();
    assert_eq!(paged, want, "every match once over the pages");
    assert_serving(p);
}

#[test]
fn refuses_bad_searches() {
    let server = start(&FLAGS);
    let p = server.port;
    let alice = register(p, "alice");
    let (s, v) = call(p, "GET", "/api/search?q=x", None, None);
    assert_eq!((s, code(&v)), (401, "unauthorized"));
    let long = "a".repeat(257);
    for query in [
        "",
        "q=",
        "q=%20%20",
        &format!("q={long}"),
        "q=x&limit=0",
        "q=x&limit=51",
        "q=x&limit=abc",
        "q=x&offset=990&limit=20",
        "q=x&room=abc",
    ] {
        let (s, v) = search(p, &alice, query);
        assert_eq!((s, code(&v)), (400, "bad_request"), "{query}: {v}");
    }
    let (s, v) = search(p, &alice, "q=x&room=999999");
    assert_eq!((s, code(&v)), (404, "not_found"), "{v}");
    // Words of nothing but punctuation find nothing, and that is no error.
    let (s, v) = search(p, &alice, "q=%3F%21");
    assert_eq!(
        (s, v["results"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
    assert_serving(p);
}

#[test]
fn after_sigkill_every_acknowledged_message_is_found() {
    if single_process_only("a SIGKILL of one process") {
        return;
    }
    let flags = [&FLAGS[..], &["--durability", "sync"]].concat();
    let mut server = start(&flags);
    let p = server.port;
    let token = register(p, "carol");
    let room = create_room(p, &token, "kept", false);
    let mut seqs = Vec::new();
    for i in 0..40 {
        seqs.push(post(p, &token, room, &format!("durable needle {i}")));
    }
    // Some are surely committed to the index by now; the last maybe not.
    let want: Vec<(u64, u64)> = seqs.iter().map(|&s| (room, s)).collect();
    wait_found(p, &token, "q=needle&limit=50", &want);
    let mut more = want.clone();
    for i in 0..10 {
        more.push((room, post(p, &token, room, &format!("needle late {i}"))));
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    let again = restart(&server, &flags);
    wait_found(again.port, &token, "q=needle&limit=50", &more);
    // Lost outright: rebuilt from the log.
    let mut again = again;
    again.child.kill().unwrap();
    again.child.wait().unwrap();
    std::fs::remove_dir_all(server._dir.path().join("data/search")).unwrap();
    let third = restart(&server, &flags);
    wait_found(third.port, &token, "q=needle&limit=50", &more);
    wait_found(third.port, &token, "q=late", &more[40..]);
}
