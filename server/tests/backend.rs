//! End-to-end tests of the server API (`/api/backend/...`, issue 17,
//! item 1) through the binary: API keys and their scopes refused and
//! accepted, each key's own rate (and no user's), publishing as the server
//! and as a user, broadcast, rooms, members and bans with an owner's
//! powers, who is online, history, disconnecting a user's WebSockets
//! (4003), the keys file re-read on SIGHUP, and every call logged with its
//! key's name.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Three keys: everything, publish+read, and a slow one.
const ALL: &str = "rk_1111111111111111111111111111111111111111111111111111111111111111";
const PUBLISHER: &str = "rk_2222222222222222222222222222222222222222222222222222222222222222";
const SLOW: &str = "rk_3333333333333333333333333333333333333333333333333333333333333333";
/// Publishes, one a second, three at once.
const TIGHT: &str = "rk_6666666666666666666666666666666666666666666666666666666666666666";

fn entry(name: &str, key: &str, scopes: &str, extra: &str) -> String {
    let hash: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("[[key]]\nname = \"{name}\"\nsha256 = \"{hash}\"\nscopes = [{scopes}]\n{extra}\n")
}

fn keys_file(dir: &Path) -> String {
    let text = entry(
        "ops",
        ALL,
        r#""publish", "rooms", "members", "users", "read""#,
        "requests_per_s = 10000",
    ) + &entry("news", PUBLISHER, r#""publish", "read""#, "")
        + &entry("slow", SLOW, r#""read""#, "requests_per_s = 1\nburst = 2")
        + &entry(
            "tight",
            TIGHT,
            r#""publish""#,
            "requests_per_s = 1\nburst = 3",
        );
    let path = dir.join("keys.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// A server with the keys file; the file's directory lives as long.
fn start_with_keys() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = keys_file(dir.path());
    (start(&["--api-keys-file", &path]), dir)
}

fn api(port: u16, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
    call(port, method, path, Some(key), body.as_ref())
}

fn user_id(port: u16, token: &str) -> u64 {
    let (s, v) = call(port, "GET", "/api/me", Some(token), None);
    assert_eq!(s, 200, "{v}");
    v["user"].as_u64().unwrap()
}

fn open(port: u16, token: &str) -> RawWs {
    let (mut ws, head) = RawWs::connect(port, &format!("/ws?token={token}"), "");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(next_json(&mut ws).unwrap()["type"], "hello");
    ws
}

/// Joins `room` on `ws`; the `joined` answer.
fn join(ws: &mut RawWs, room: u64) -> Value {
    send_json(ws, json!({"type": "join", "room": room}));
    loop {
        let v = next_json(ws).expect("open");
        if v["type"] == "joined" {
            return v;
        }
    }
}

/// The next frame of `kind` (others skipped).
fn next_of(ws: &mut RawWs, kind: &str) -> Value {
    loop {
        let v = next_json(ws).unwrap_or_else(|| panic!("closed before a {kind}"));
        if v["type"] == kind {
            return v;
        }
    }
}

#[test]
fn keys_and_scopes_are_refused_and_accepted() {
    let (server, _keys) = start_with_keys();
    let p = server.port;
    let alice = register(p, "alice");
    let room = create_room(p, &alice, "lobby", false);
    let path = format!("/api/backend/rooms/{room}/messages");
    let post = json!({"body": "hi"});
    // No key, a session token, a key that is not in the file, a key in the
    // query string: 401.
    assert_eq!(call(p, "POST", &path, None, Some(&post)).0, 401);
    for key in [alice.as_str(), &ALL.replace('1', "4")] {
        let (s, v) = api(p, "POST", &path, key, Some(post.clone()));
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{v}"
        );
    }
    let (s, _) = call(p, "POST", &format!("{path}?token={ALL}"), None, Some(&post));
    assert_eq!(s, 401, "a key in the query string is not taken");
    // A key is not a user's token either.
    assert_eq!(call(p, "GET", "/api/me", Some(ALL), None).0, 401);
    // Without the scope: 403, naming it; with it: done.
    let owner = json!({"name": "r2", "owner": {"name": "alice"}});
    let (s, v) = api(
        p,
        "POST",
        "/api/backend/rooms",
        PUBLISHER,
        Some(owner.clone()),
    );
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"rooms\""),
        "{v}"
    );
    let (s, v) = api(p, "POST", "/api/backend/rooms", ALL, Some(owner));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["creator"].as_u64(), Some(user_id(p, &alice)));
    assert_eq!(api(p, "POST", &path, PUBLISHER, Some(post.clone())).0, 201);
    assert_eq!(api(p, "POST", &path, SLOW, Some(post)).0, 403);
    // Unknown calls: 404 and 405, as the user API answers them.
    assert_eq!(api(p, "GET", "/api/backend/nothing", ALL, None).0, 404);
    assert_eq!(api(p, "PATCH", "/api/backend/rooms", ALL, None).0, 405);
    // Bad bodies and ids: 400.
    for (path, body) in [
        ("/api/backend/rooms", json!({"name": "x"})),
        ("/api/backend/rooms", json!({"name": "x", "owner": {}})),
        (
            "/api/backend/rooms",
            json!({"name": "x", "owner": {"user": 1, "name": "alice"}}),
        ),
        ("/api/backend/rooms/0/messages", json!({"body": "x"})),
        ("/api/backend/rooms/x/messages", json!({"body": "x"})),
        (path.as_str(), json!({"body": "x", "as": {"user": 0}})),
        (path.as_str(), json!({"body": "x", "extra": 1})),
        (path.as_str(), json!({"body": "   "})),
    ] {
        let (s, v) = api(p, "POST", path, ALL, Some(body.clone()));
        assert_eq!(s, 400, "{path} {body}: {v}");
    }
    // The slow key: its burst, then 429 with Retry-After. (Each node
    // holds a key to its rate: asked of one node.)
    let one = node_ports(p)[0];
    let raw = format!(
        "GET /api/backend/rooms/{room} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {SLOW}\r\n\r\n"
    );
    let answers: Vec<String> = (0..3)
        .map(|_| exchange(one, raw.as_bytes()).unwrap())
        .collect();
    assert_eq!(status(&answers[0]), 200, "{}", answers[0]);
    assert_eq!(status(&answers[1]), 200);
    assert_eq!(status(&answers[2]), 429, "{}", answers[2]);
    assert_eq!(header(&answers[2], "retry-after"), Some("1"));
    // Another key's budget is its own.
    assert_eq!(
        api(p, "GET", &format!("/api/backend/rooms/{room}"), ALL, None).0,
        200
    );
    // Each key's calls are counted by status, refusals included.
    for (key, status) in [
        ("slow", 429),
        ("slow", 403),
        ("news", 201),
        ("ops", 201),
        ("-", 401),
    ] {
        let sample = format!("rookery_backend_calls_total{{key=\"{key}\",status=\"{status}\"}}");
        assert!(metric(p, &sample) >= 1.0, "{sample}");
    }
    assert_serving(p);
}

#[test]
fn without_a_keys_file_the_server_api_is_off_and_a_bad_file_stops_the_start() {
    let server = start(&[]);
    let (s, v) = api(server.port, "GET", "/api/backend/rooms/1", ALL, None);
    assert_eq!(s, 401, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--api-keys-file"),
        "{v}"
    );
    if single_process_only("a start-up error") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("keys.toml");
    std::fs::write(&bad, entry("a", ALL, r#""publish", "root""#, "")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .args(["--api-keys-file", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown scope \"root\""), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn publish_as_the_server_or_a_member_past_the_users_rate() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path());
    // Users get one message a second; the key is not held to it.
    let server = start(&[
        "--api-keys-file",
        &keys,
        "--sends-per-user-per-s",
        "1",
        "--sends-per-user-burst",
        "1",
    ]);
    let p = server.port;
    let alice = register(p, "alice");
    let bob = register(p, "bob");
    let bob_id = user_id(p, &bob);
    let room = create_room(p, &alice, "private", true);
    let mut ws = open(p, &alice);
    join(&mut ws, room);
    let path = format!("/api/backend/rooms/{room}/messages");
    let (s, v) = api(
        p,
        "POST",
        &path,
        PUBLISHER,
        Some(json!({"body": "from the server", "client_id": "c1"})),
    );
    assert_eq!(
        (s, v["from"].as_u64(), v["seq"].as_u64()),
        (201, Some(0), Some(1)),
        "{v}"
    );
    let msg = next_of(&mut ws, "msg");
    assert_eq!(
        (msg["from"].as_u64(), msg["body"].as_str()),
        (Some(0), Some("from the server"))
    );
    let (s, v) = api(
        p,
        "POST",
        &path,
        PUBLISHER,
        Some(json!({"body": "again", "client_id": "c1"})),
    );
    assert_eq!(
        (s, v["duplicate"].as_bool(), v["seq"].as_u64()),
        (200, Some(true), Some(1))
    );
    // A reply as the server quotes what it answers; one to nothing is 404.
    let (s, v) = api(
        p,
        "POST",
        &path,
        PUBLISHER,
        Some(json!({"body": "answer", "reply_to": 1})),
    );
    assert_eq!((s, v["seq"].as_u64()), (201, Some(2)), "{v}");
    let msg = next_of(&mut ws, "msg");
    assert_eq!(
        (&msg["reply_to"], &msg["thread"]),
        (&json!(1), &json!(1)),
        "{msg}"
    );
    assert_eq!(msg["quote"], json!({"from": 0, "text": "from the server"}));
    let (s, v) = api(
        p,
        "POST",
        &path,
        PUBLISHER,
        Some(json!({"body": "x", "reply_to": 99})),
    );
    assert_eq!(s, 404, "{v}");
    // As a user: a member only, as any post.
    let as_bob = json!({"body": "hello", "as": {"name": "bob"}});
    let (s, v) = api(p, "POST", &path, PUBLISHER, Some(as_bob.clone()));
    assert_eq!(s, 404, "not a member of the private room: {v}");
    let (s, v) = api(
        p,
        "POST",
        &path,
        PUBLISHER,
        Some(json!({"body": "x", "as": {"name": "nobody"}})),
    );
    assert_eq!(s, 404, "{v}");
    // A subject never seen is not made a user by a post.
    let as_new = json!({"body": "x", "as": {"subject": "never-seen"}});
    let (s, v) = api(p, "POST", &path, PUBLISHER, Some(as_new));
    assert_eq!(s, 404, "{v}");
    let (s, v) = api(
        p,
        "POST",
        "/api/backend/rooms",
        ALL,
        Some(json!({"name": "n", "owner": {"subject": "never-seen"}})),
    );
    assert_eq!(s, 201, "a room's owner is made, as a JWT would: {v}");
    let (s, v) = api(
        p,
        "POST",
        &format!("/api/backend/rooms/{room}/members"),
        ALL,
        Some(json!({"user": bob_id})),
    );
    assert_eq!(
        (s, v["role"].as_str(), &v["before"]),
        (200, Some("member"), &Value::Null),
        "{v}"
    );
    for i in 0..5 {
        let (s, v) = api(p, "POST", &path, PUBLISHER, Some(as_bob.clone()));
        assert_eq!(
            (s, v["from"].as_u64()),
            (201, Some(bob_id)),
            "post {i}: {v}"
        );
        assert_eq!(next_of(&mut ws, "msg")["from"].as_u64(), Some(bob_id));
    }
    // Bob's own budget is untouched by the key's posts, and held to.
    let bob_post = |n: u32| {
        call(
            p,
            "POST",
            &format!("/api/rooms/{room}/messages"),
            Some(&bob),
            Some(&json!({"body": format!("own {n}")})),
        )
        .0
    };
    assert_eq!(bob_post(1), 201);
    assert_eq!(bob_post(2), 429);
    // A room that does not exist.
    let (s, _) = api(
        p,
        "POST",
        &format!("/api/backend/rooms/{}/messages", room + 100),
        PUBLISHER,
        Some(json!({"body": "x"})),
    );
    assert_eq!(s, 404);
    // History of any room, the server's message in it.
    let (s, v) = api(p, "GET", &format!("{path}?after=0"), PUBLISHER, None);
    assert_eq!(s, 200, "{v}");
    let from: Vec<u64> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["from"].as_u64().unwrap())
        .collect();
    assert_eq!(from, [0, 0, bob_id, bob_id, bob_id, bob_id, bob_id, bob_id]);
    assert_eq!(v["messages"][0]["replies"], 1, "{v}");
}

#[test]
fn broadcast_posts_once_per_room_and_says_how_each_went() {
    let (server, _keys) = start_with_keys();
    let p = server.port;
    let alice = register(p, "alice");
    let rooms: Vec<u64> = (0..5)
        .map(|i| create_room(p, &alice, &format!("r{i}"), i % 2 == 0))
        .collect();
    let missing = rooms.iter().max().unwrap() + 1000;
    let mut asked = rooms.clone();
    asked.insert(2, missing);
    let b = json!({"rooms": asked, "body": "maintenance at noon", "client_id": "m1"});
    let (s, v) = api(
        p,
        "POST",
        "/api/backend/broadcast",
        PUBLISHER,
        Some(b.clone()),
    );
    assert_eq!(s, 200, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), asked.len());
    for (r, room) in results.iter().zip(&asked) {
        assert_eq!(r["room"].as_u64(), Some(*room), "in the order asked: {v}");
        if *room == missing {
            assert_eq!(r["error"]["code"], "not_found", "{r}");
        } else {
            assert_eq!(
                (r["seq"].as_u64(), r["duplicate"].as_bool()),
                (Some(1), Some(false)),
                "{r}"
            );
        }
    }
    // Again: each room answers the original, nothing posted twice.
    let (_, v) = api(p, "POST", "/api/backend/broadcast", PUBLISHER, Some(b));
    for r in v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["room"] != missing)
    {
        assert_eq!(
            (r["seq"].as_u64(), r["duplicate"].as_bool()),
            (Some(1), Some(true)),
            "{r}"
        );
    }
    for room in &rooms {
        let msgs = all_messages(p, &alice, *room);
        assert_eq!(msgs.len(), 1, "room {room}");
        assert_eq!(
            (msgs[0]["from"].as_u64(), msgs[0]["body"].as_str()),
            (Some(0), Some("maintenance at noon"))
        );
    }
    // Limits: no room, a room twice, more than 1,000 rooms.
    let too_many: Vec<u64> = (1..=1001).collect();
    for rooms in [
        json!([]),
        json!([rooms[0], rooms[0]]),
        json!([0]),
        json!(too_many),
    ] {
        let (s, v) = api(
            p,
            "POST",
            "/api/backend/broadcast",
            PUBLISHER,
            Some(json!({"rooms": rooms, "body": "x"})),
        );
        assert_eq!(s, 400, "{v}");
    }
    // A broadcast costs a request per room, taken at once (of one node's
    // budget for the key): more rooms than the burst is 400; a burst's
    // worth is taken, and then there is nothing left.
    let one = node_ports(p)[0];
    let tight = |rooms: &[u64]| {
        let body = json!({"rooms": rooms, "body": "t", "client_id": "t"});
        api(one, "POST", "/api/backend/broadcast", TIGHT, Some(body))
    };
    let (s, v) = tight(&rooms[..4]);
    assert_eq!(s, 400, "{v}");
    std::thread::sleep(Duration::from_millis(1100)); // the one it took comes back
    let (s, v) = tight(&rooms[..3]);
    assert_eq!(s, 200, "{v}");
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["seq"] == 2),
        "{v}"
    );
    assert_eq!(tight(&rooms[..3]).0, 429);
    // Another key's client_id is its own: the same one posts again.
    let (s, v) = api(
        p,
        "POST",
        &format!("/api/backend/rooms/{}/messages", rooms[0]),
        PUBLISHER,
        Some(json!({"body": "t", "client_id": "t"})),
    );
    assert_eq!((s, v["seq"].as_u64()), (201, Some(3)), "{v}");
    assert_serving(p);
}

#[test]
fn members_and_bans_with_the_owners_powers_and_who_is_online() {
    let (server, _keys) = start_with_keys();
    let p = server.port;
    let alice = register(p, "alice");
    let bob = register(p, "bob");
    let (alice_id, bob_id) = (user_id(p, &alice), user_id(p, &bob));
    // A room the backend makes, owned by alice.
    let (s, v) = api(
        p,
        "POST",
        "/api/backend/rooms",
        ALL,
        Some(json!({"name": "team", "private": true, "owner": {"user": alice_id}})),
    );
    assert_eq!(s, 201, "{v}");
    let room = v["id"].as_u64().unwrap();
    let members = format!("/api/backend/rooms/{room}/members");
    // Bob is added (no invitation), then made an admin.
    let (s, v) = api(p, "POST", &members, ALL, Some(json!({"name": "bob"})));
    assert_eq!((s, v["before"].as_str()), (200, None), "{v}");
    let (s, v) = api(
        p,
        "POST",
        &members,
        ALL,
        Some(json!({"user": bob_id, "role": "admin"})),
    );
    assert_eq!(
        (s, v["role"].as_str(), v["before"].as_str()),
        (200, Some("admin"), Some("member")),
        "{v}"
    );
    let (_, v) = call(p, "GET", &format!("/api/rooms/{room}"), Some(&bob), None);
    assert_eq!(v["role"], "admin");
    // A subject the server has not seen becomes a user, as its JWT would.
    let (s, v) = api(p, "POST", &members, ALL, Some(json!({"subject": "ext-42"})));
    assert_eq!(s, 200, "{v}");
    let ext = v["user"].as_u64().unwrap();
    // The owner is not demoted, removed nor banned.
    let (s, _) = api(
        p,
        "POST",
        &members,
        ALL,
        Some(json!({"user": alice_id, "role": "member"})),
    );
    assert_eq!(s, 409);
    assert_eq!(
        api(
            p,
            "POST",
            &members,
            ALL,
            Some(json!({"user": alice_id, "role": "owner"}))
        )
        .0,
        400
    );
    assert_eq!(
        api(p, "DELETE", &format!("{members}/{alice_id}"), ALL, None).0,
        403
    );
    assert_eq!(
        api(
            p,
            "PUT",
            &format!("/api/backend/rooms/{room}/bans/{alice_id}"),
            ALL,
            None
        )
        .0,
        403
    );
    // Online: who has the room open.
    let mut ws = open(p, &bob);
    join(&mut ws, room);
    let (s, v) = api(
        p,
        "GET",
        &format!("/api/backend/rooms/{room}/online"),
        PUBLISHER,
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["users"], json!([{"user": bob_id, "name": "bob"}]));
    // A ban ends bob's subscription at once, and keeps him out.
    let (s, v) = api(
        p,
        "PUT",
        &format!("/api/backend/rooms/{room}/bans/{bob_id}"),
        ALL,
        None,
    );
    assert_eq!((s, v["changed"].as_bool()), (200, Some(true)), "{v}");
    let left = next_of(&mut ws, "left");
    assert_eq!(left["reason"], "banned");
    assert_eq!(
        api(p, "POST", &members, ALL, Some(json!({"user": bob_id}))).0,
        409
    );
    let (_, v) = call(
        p,
        "GET",
        &format!("/api/rooms/{room}/bans"),
        Some(&alice),
        None,
    );
    assert_eq!(
        v["bans"],
        json!([{"user": bob_id, "by": 0, "ts": v["bans"][0]["ts"]}]),
        "{v}"
    );
    let (s, v) = api(
        p,
        "DELETE",
        &format!("/api/backend/rooms/{room}/bans/{bob_id}"),
        ALL,
        None,
    );
    assert_eq!((s, v["changed"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(
        api(p, "POST", &members, ALL, Some(json!({"user": bob_id}))).0,
        200
    );
    // Removal: once, then not a member (404).
    let (s, v) = api(p, "DELETE", &format!("{members}/{ext}"), ALL, None);
    assert_eq!((s, v["removed"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(
        api(p, "DELETE", &format!("{members}/{ext}"), ALL, None).0,
        404
    );
    // Missing rooms and users.
    assert_eq!(
        api(
            p,
            "POST",
            &format!("/api/backend/rooms/{}/members", room + 99),
            ALL,
            Some(json!({"user": bob_id}))
        )
        .0,
        404
    );
    assert_eq!(
        api(p, "POST", &members, ALL, Some(json!({"user": 999_999}))).0,
        404
    );
    assert_eq!(
        api(
            p,
            "GET",
            &format!("/api/backend/rooms/{}/online", room + 99),
            ALL,
            None
        )
        .0,
        404
    );
}

#[test]
fn disconnect_closes_the_users_websockets_with_4003_and_only_theirs() {
    let (server, _keys) = start_with_keys();
    let p = server.port;
    let alice = register(p, "alice");
    let bob = register(p, "bob");
    let alice_id = user_id(p, &alice);
    let (mut a1, mut a2, mut b) = (open(p, &alice), open(p, &alice), open(p, &bob));
    let (s, v) = api(
        p,
        "POST",
        &format!("/api/backend/users/{alice_id}/disconnect"),
        ALL,
        None,
    );
    assert_eq!((s, v["disconnected"].as_bool()), (202, Some(true)), "{v}");
    for ws in [&mut a1, &mut a2] {
        let (code, reason) = closed_with(ws);
        assert_eq!(
            (code, reason.as_str()),
            (4003, "disconnected by the server")
        );
    }
    send_json(&mut b, json!({"type": "ping"}));
    assert_eq!(next_of(&mut b, "pong")["type"], "pong", "bob's lives on");
    // Alice may connect again; the disconnect is not a ban.
    let mut again = open(p, &alice);
    std::thread::sleep(Duration::from_millis(1500));
    send_json(&mut again, json!({"type": "ping"}));
    assert_eq!(next_of(&mut again, "pong")["type"], "pong");
    assert_eq!(
        api(p, "POST", "/api/backend/users/999999/disconnect", ALL, None).0,
        404
    );
    assert_eq!(
        api(
            p,
            "POST",
            &format!("/api/backend/users/{alice_id}/disconnect"),
            PUBLISHER,
            None
        )
        .0,
        403
    );
}

#[test]
fn sighup_rereads_the_keys_and_every_call_is_logged_with_its_key() {
    if single_process_only("its signals and its log") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path());
    let log = dir.path().join("stderr.log");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .args([
            "--shards",
            "2",
            "--durability",
            "none",
            "--api-keys-file",
            &keys,
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_ready(port);
    let alice = register(port, "alice");
    let room = create_room(port, &alice, "r", false);
    let get = format!("/api/backend/rooms/{room}");
    assert_eq!(api(port, "GET", &get, PUBLISHER, None).0, 200);
    // The file now holds only a new key; a bad file later changes nothing.
    let new_key = "rk_5555555555555555555555555555555555555555555555555555555555555555";
    std::fs::write(&keys, entry("fresh", new_key, r#""read""#, "")).unwrap();
    let hup = || unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    assert_eq!(hup(), 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while api(port, "GET", &get, PUBLISHER, None).0 != 401 {
        assert!(Instant::now() < deadline, "the old key still works");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(api(port, "GET", &get, new_key, None).0, 200);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&keys)
        .unwrap()
        .write_all(b"[[key]]\nname = 7\n")
        .unwrap();
    assert_eq!(hup(), 0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(api(port, "GET", &get, new_key, None).0, 200, "kept");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("server API call"))
        .collect();
    assert!(
        calls
            .iter()
            .any(|l| l.contains("key=news") && l.contains("status=200")),
        "{text}"
    );
    assert!(calls.iter().any(|l| l.contains("key=fresh")), "{text}");
    assert!(text.contains("API keys reloaded"), "{text}");
    assert!(text.contains("API keys not reloaded"), "{text}");
}

#[test]
fn deleting_a_room_ends_it_everywhere_and_frees_its_name() {
    let (server, _keys) = start_with_keys();
    let p = server.port;
    let alice = register(p, "alice");
    let bob = register(p, "bob");
    let alice_id = user_id(p, &alice);
    let (s, v) = api(
        p,
        "POST",
        "/api/backend/rooms",
        ALL,
        Some(json!({"name": "town", "owner": {"user": alice_id}})),
    );
    assert_eq!(s, 201, "{v}");
    let room = v["id"].as_u64().unwrap();
    // Two followers (on two nodes, in a cluster), and five messages.
    let mut followers = [open(p, &alice), open(p, &bob)];
    for ws in &mut followers {
        join(ws, room);
    }
    let messages = format!("/api/backend/rooms/{room}/messages");
    for i in 0..5 {
        let (s, v) = api(
            p,
            "POST",
            &messages,
            ALL,
            Some(json!({"body": format!("m{i}")})),
        );
        assert_eq!(s, 201, "{v}");
    }
    let path = format!("/api/backend/rooms/{room}");
    // Deleting a room takes the `rooms` scope.
    assert_eq!(api(p, "DELETE", &path, PUBLISHER, None).0, 403);
    let (s, v) = api(p, "DELETE", &path, ALL, None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["room"]["name"], &v["members"], &v["messages"]),
        (&json!("town"), &json!(2), &json!(5)),
        "{v}"
    );
    for ws in &mut followers {
        let left = next_of(ws, "left");
        assert_eq!(
            (&left["room"], &left["reason"]),
            (&json!(room), &json!("deleted"))
        );
    }
    // Gone for the server API and for its users.
    for (method, path) in [
        ("GET", path.clone()),
        ("GET", messages.clone()),
        ("DELETE", path.clone()),
        ("GET", format!("{path}/online")),
    ] {
        assert_eq!(api(p, method, &path, ALL, None).0, 404, "{method} {path}");
    }
    assert_eq!(
        api(p, "POST", &messages, ALL, Some(json!({"body": "late"}))).0,
        404
    );
    for token in [&alice, &bob] {
        let (s, _) = call(p, "GET", &format!("/api/rooms/{room}"), Some(token), None);
        assert_eq!(s, 404);
        let (_, v) = call(
            p,
            "GET",
            &format!("/api/rooms/{room}/messages"),
            Some(token),
            None,
        );
        assert!(v["messages"].as_array().is_none_or(|m| m.is_empty()), "{v}");
    }
    // The name is free (cluster-wide); the id is not taken again.
    let (s, v) = api(
        p,
        "POST",
        "/api/backend/rooms",
        ALL,
        Some(json!({"name": "TOWN", "owner": {"name": "bob"}})),
    );
    assert_eq!(s, 201, "{v}");
    assert_ne!(v["id"].as_u64().unwrap(), room);
    // Ids nobody holds.
    assert_eq!(
        api(p, "DELETE", "/api/backend/rooms/999999", ALL, None).0,
        404
    );
    assert_eq!(api(p, "DELETE", "/api/backend/rooms/0", ALL, None).0, 400);
}

#[test]
fn the_server_api_manages_no_direct_message_and_deleting_one_frees_the_pair() {
    let (server, _keys) = start_with_keys();
    let p = server.port;
    let (ann, bea, cid) = (register(p, "ann"), register(p, "bea"), register(p, "cid"));
    let (bea_id, cid_id) = (user_id(p, &bea), user_id(p, &cid));
    let (s, dm) = call(
        p,
        "POST",
        "/api/dms",
        Some(&ann),
        Some(&json!({"user": bea_id})),
    );
    assert_eq!(s, 201, "{dm}");
    let room = dm["room"]["id"].as_u64().unwrap();
    // Bea opens it too: both are in it.
    let (s, v) = call(
        p,
        "POST",
        "/api/dms",
        Some(&bea),
        Some(&json!({"name": "ann"})),
    );
    assert_eq!((s, v["room"]["id"].as_u64()), (200, Some(room)), "{v}");
    let base = format!("/api/backend/rooms/{room}");
    // Its two stay its two: no one added, removed or banned.
    for (method, path, body) in [
        (
            "POST",
            format!("{base}/members"),
            Some(json!({"user": cid_id})),
        ),
        ("DELETE", format!("{base}/members/{bea_id}"), None),
        ("PUT", format!("{base}/bans/{bea_id}"), None),
    ] {
        let (s, v) = api(p, method, &path, ALL, body);
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{method} {path}: {v}"
        );
    }
    let (s, v) = call(
        p,
        "GET",
        &format!("/api/rooms/{room}/members"),
        Some(&bea),
        None,
    );
    assert_eq!(
        (s, v["members"].as_array().map(Vec::len)),
        (200, Some(2)),
        "{v}"
    );
    // A backend still publishes there (as the server) and may delete it;
    // the pair's next direct message is a new room.
    let (s, v) = api(
        p,
        "POST",
        &format!("{base}/messages"),
        ALL,
        Some(json!({"body": "notice"})),
    );
    assert_eq!(s, 201, "{v}");
    let mut bea_ws = open(p, &bea);
    join(&mut bea_ws, room);
    let (s, v) = api(p, "DELETE", &base, ALL, None);
    assert_eq!((s, &v["members"]), (200, &json!(2)), "{v}");
    assert_eq!(next_of(&mut bea_ws, "left")["reason"], "deleted");
    let (s, dms) = call(p, "GET", "/api/dms", Some(&ann), None);
    assert_eq!((s, &dms["dms"]), (200, &json!([])), "{dms}");
    let (s, again) = call(
        p,
        "POST",
        "/api/dms",
        Some(&bea),
        Some(&json!({"name": "ann"})),
    );
    assert_eq!(s, 201, "{again}");
    assert_ne!(again["room"]["id"].as_u64().unwrap(), room);
    assert_serving(p);
}
