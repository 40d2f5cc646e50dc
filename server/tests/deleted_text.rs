//! Deleted text leaves the disk: a message carrying a unique marker is
//! deleted over a WebSocket, background compaction rewrites the segment
//! that held it, and then no file under the data directory contains the
//! marker (nor does the search index know it as a word),
//! while history, a `join` with `since` and a restart after SIGKILL all
//! show the same messages.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const MESSAGES: u64 = 200;

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    rookery_storage::verify::files_containing(dir, needle.as_bytes()).unwrap()
}

/// The messages a `join` with `since` replays, in the history shape.
fn replay_since(port: u16, token: &str, room: u64, since: u64) -> Vec<Value> {
    let (mut ws, _) = RawWs::connect(port, &format!("/ws?token={token}"), "");
    assert_eq!(next_text_json(&mut ws)["type"], "hello");
    send_json(
        &mut ws,
        json!({"type": "join", "room": room, "since": since}),
    );
    let mut out = Vec::new();
    while (out.len() as u64) < MESSAGES - since {
        let mut v = next_text_json(&mut ws);
        if v["type"] == "msg" {
            let m = v.as_object_mut().unwrap();
            m.remove("type");
            m.remove("room");
            out.push(v);
        }
    }
    out
}

#[test]
fn a_deleted_message_leaves_no_trace_on_disk_and_every_view_agrees() {
    if common::single_process_only("the data directory a deleted message leaves") {
        return;
    }
    let marker = format!(
        "MARK{}Z",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let flags = [
        "--durability",
        "sync",
        "--shards",
        "1",
        "--compaction-interval-ms",
        "100",
        "--deleted-text-delay-ms",
        "0",
        "--search-commit-interval-ms",
        "50",
    ];
    let mut server = start(&flags);
    let p = server.port;
    let token = register(p, "erin");
    let room = create_room(p, &token, "erasure", false);
    for i in 1..=MESSAGES {
        let body = if i == 120 {
            format!("the secret is {marker}")
        } else {
            format!("message {i}")
        };
        let (s, v) = call(
            p,
            "POST",
            &format!("/api/rooms/{room}/messages"),
            Some(&token),
            Some(&json!({ "body": body })),
        );
        assert_eq!(s, 201, "{v}");
    }
    let data = server._dir.path().join("data");
    assert!(
        !files_containing(&data, &marker).is_empty(),
        "the marker was written"
    );
    // The search index holds the marker as a lower-cased term (in a
    // compressed term dictionary: read as tantivy reads it, not as bytes).
    let term = marker.to_lowercase();
    let t = Instant::now();
    while index_doc_freq(&data.join("search"), &term) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the index never took the marker"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut ws, _) = RawWs::connect(p, &format!("/ws?token={token}"), "");
    assert_eq!(next_text_json(&mut ws)["type"], "hello");
    send_json(&mut ws, json!({"type": "delete", "room": room, "seq": 120}));
    loop {
        let v = next_text_json(&mut ws);
        if v["type"] == "ack" {
            assert_eq!(v["seq"], 120);
            break;
        }
        assert_ne!(v["type"], "error", "{v}");
    }
    // Background compaction seals the segment and rewrites it; the search
    // index rewrites the segment that held the word.
    let t = Instant::now();
    let left = || files_containing(&data, &marker);
    while !left().is_empty() || index_doc_freq(&data.join("search"), &term) > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the marker is still in {:?} (or in the search index)",
            left()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = all_messages(p, &token, room);
    assert_eq!(before.len() as u64, MESSAGES);
    assert_eq!(before[119]["body"], Value::Null);
    assert_eq!(before[119]["deleted"], true);
    assert_eq!(before[118]["body"], "message 119");
    assert_eq!(replay_since(p, &token, room, 100), before[100..].to_vec());

    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    let again = restart(&server, &flags);
    let port = again.port;
    assert_eq!(
        all_messages(port, &token, room),
        before,
        "history after SIGKILL"
    );
    assert_eq!(
        replay_since(port, &token, room, 100),
        before[100..].to_vec()
    );
    assert_eq!(left(), Vec::<PathBuf>::new());
    assert_eq!(index_doc_freq(&data.join("search"), &term), 0);
}

/// Documents of the committed search index in `dir` whose words include
/// `word`, deleted ones too (a delete only marks a document: its words
/// stay in the segment until a merge rewrites it); 0 before the index's
/// first commit. Read while the server writes: a file a merge removed
/// between reading the commit and opening it makes it read again.
fn index_doc_freq(dir: &Path, word: &str) -> u64 {
    let read = || -> tantivy::Result<u64> {
        let index = tantivy::Index::open_in_dir(dir)?;
        let body = index.schema().get_field("body")?;
        let searcher = index.reader()?.searcher();
        searcher.doc_freq(&tantivy::Term::from_field_text(body, word))
    };
    for _ in 0..50 {
        if !dir.join("meta.json").exists() {
            return 0;
        }
        match read() {
            Ok(n) => return n,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    panic!("the search index in {} cannot be read", dir.display());
}
