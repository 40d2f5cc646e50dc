//! End-to-end tests of the accounts and rooms HTTP API against the real
//! binary: every route's success and its errors (status and error code).

mod common;

use common::*;
use serde_json::json;

fn code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn register_login_me_logout() {
    let server = start(&[]);
    let p = server.port;
    let (s, alice) = try_register(p, "alice", "pw-1-secret");
    assert_eq!(s, 201, "{alice}");
    let token = alice["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64);
    assert!(alice["expires_ms"].as_u64().unwrap() > 0);
    // The name is taken now; bad bodies and names are refused.
    let (s, v) = try_register(p, "alice", "x-secret");
    assert_eq!((s, code(&v)), (409, "conflict"));
    assert!(
        v["error"]["message"].as_str().unwrap().contains("is taken"),
        "{v}"
    );
    let (s, v) = try_register(p, "bad name!", "x-secret");
    assert_eq!((s, code(&v)), (400, "bad_request"));
    // A password shorter than --password-len-min (8 by default, counted in
    // characters) is refused, saying the minimum; /api/server tells it.
    for short in ["", "seven77", "ééééééé"] {
        let (s, v) = try_register(p, "carol", short);
        assert_eq!((s, code(&v)), (400, "bad_request"), "{short:?}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at least 8"),
            "{v}"
        );
    }
    let (s, v) = try_register(p, "carol", "éééééééé");
    assert_eq!(s, 201, "eight characters in sixteen bytes: {v}");
    let (_, info) = call(p, "GET", "/api/server", None, None);
    let limits = &info["limits"];
    assert_eq!(limits["password_len_min"], 8, "{info}");
    assert_eq!(limits["ws_frame_bytes_max"], 65536, "{info}");
    assert_eq!(limits["message_body_bytes_max"], 65536, "{info}");
    assert_eq!(limits["name_bytes_max"], 64, "{info}");
    assert_eq!(limits["files_per_message_max"], 10, "{info}");
    let strict = start(&["--password-len-min", "12", "--ws-frame-bytes-max", "4096"]);
    let (_, info) = call(strict.port, "GET", "/api/server", None, None);
    assert_eq!(info["limits"]["password_len_min"], 12, "{info}");
    assert_eq!(info["limits"]["ws_frame_bytes_max"], 4096, "{info}");
    let (s, _) = try_register(strict.port, "dan", "eleven-char");
    assert_eq!(s, 400, "under the server's own minimum");
    let (s, v) = call(
        p,
        "POST",
        "/api/register",
        None,
        Some(&json!({"name": "bob"})),
    );
    assert_eq!((s, code(&v)), (400, "bad_request"), "missing field");
    let (s, v) = call(p, "POST", "/api/register", None, None);
    assert_eq!((s, code(&v)), (400, "bad_request"), "no body");
    // Login: right and wrong passwords, unknown users.
    let (s, v) = call(
        p,
        "POST",
        "/api/login",
        None,
        Some(&json!({"name": "alice", "password": "pw-1-secret"})),
    );
    assert_eq!(s, 200, "{v}");
    let second = v["token"].as_str().unwrap().to_string();
    assert_ne!(second, token);
    for creds in [
        json!({"name": "alice", "password": "nope"}),
        json!({"name": "ghost", "password": "pw-1-secret"}),
    ] {
        let (s, v) = call(p, "POST", "/api/login", None, Some(&creds));
        assert_eq!((s, code(&v)), (401, "unauthorized"));
    }
    // /api/me with each token, without, with a bad one.
    let (s, v) = call(p, "GET", "/api/me", Some(&token), None);
    assert_eq!((s, v["name"].as_str()), (200, Some("alice")));
    let (s, v) = call(p, "GET", &format!("/api/me?token={second}"), None, None);
    assert_eq!(s, 200, "token in the query: {v}");
    for bad in [None, Some("deadbeef")] {
        let (s, v) = call(p, "GET", "/api/me", bad, None);
        assert_eq!((s, code(&v)), (401, "unauthorized"));
    }
    // Logout ends that session only.
    let (s, _) = call(p, "POST", "/api/logout", Some(&token), None);
    assert_eq!(s, 200);
    // On one node at once; on a cluster each other node ends the session
    // when the deletion reaches it, milliseconds later (docs/cluster.md),
    // and the next request may land on one of them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let s = call(p, "GET", "/api/me", Some(&token), None).0;
        if s == 401 {
            break;
        }
        assert!(
            clustered() && std::time::Instant::now() < deadline,
            "a logged-out token is refused (got {s})"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(call(p, "GET", "/api/me", Some(&second), None).0, 200);
    assert_eq!(call(p, "GET", "/api/register", None, None).0, 405);
    assert_serving(p);
}

#[test]
fn rooms_public_private_join_leave_members() {
    let server = start(&[]);
    let p = server.port;
    let login = |name: &str| {
        let (s, v) = try_register(p, name, "pw-secret");
        assert_eq!(s, 201, "{v}");
        (
            v["user"].as_u64().unwrap(),
            v["token"].as_str().unwrap().to_string(),
        )
    };
    let (alice, a) = login("alice");
    let (bob, b) = login("bob");
    let (s, general) = call(
        p,
        "POST",
        "/api/rooms",
        Some(&a),
        Some(&json!({"name": "general"})),
    );
    assert_eq!(s, 201, "{general}");
    let (s, secret) = call(
        p,
        "POST",
        "/api/rooms",
        Some(&a),
        Some(&json!({"name": "secret", "private": true})),
    );
    assert_eq!(s, 201, "{secret}");
    let (g, x) = (
        general["id"].as_u64().unwrap(),
        secret["id"].as_u64().unwrap(),
    );
    let (s, v) = call(
        p,
        "POST",
        "/api/rooms",
        Some(&a),
        Some(&json!({"name": "general"})),
    );
    assert_eq!((s, code(&v)), (409, "conflict"));
    assert_eq!(
        call(p, "POST", "/api/rooms", None, Some(&json!({"name": "x"}))).0,
        401
    );
    // Bob sees the public room only; the private one does not exist for him.
    let (_, list) = call(p, "GET", "/api/rooms", Some(&b), None);
    let names: Vec<&str> = list["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["general"]);
    let (_, list) = call(p, "GET", "/api/rooms", Some(&a), None);
    assert_eq!(list["rooms"].as_array().unwrap().len(), 2);
    let (s, v) = call(p, "GET", &format!("/api/rooms/{x}"), Some(&b), None);
    assert_eq!((s, code(&v)), (404, "not_found"));
    let (s, v) = call(p, "POST", &format!("/api/rooms/{x}/join"), Some(&b), None);
    assert_eq!(
        (s, code(&v)),
        (404, "not_found"),
        "private rooms are not joinable by strangers"
    );
    let (s, v) = call(p, "GET", &format!("/api/rooms/{x}"), Some(&a), None);
    assert_eq!((s, v["role"].as_str()), (200, Some("owner")));
    // Join, members, leave.
    let (s, v) = call(p, "POST", &format!("/api/rooms/{g}/join"), Some(&b), None);
    assert_eq!((s, v["changed"].as_bool()), (200, Some(true)));
    let (_, v) = call(p, "POST", &format!("/api/rooms/{g}/join"), Some(&b), None);
    assert_eq!(
        v["changed"].as_bool(),
        Some(false),
        "joining twice changes nothing"
    );
    let (s, v) = call(p, "GET", &format!("/api/rooms/{g}/members"), Some(&b), None);
    assert_eq!(s, 200);
    let mut members: Vec<(u64, String, String)> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user"].as_u64().unwrap(),
                m["name"].as_str().unwrap().to_string(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    members.sort();
    assert_eq!(
        members,
        [
            (alice, "alice".to_string(), "owner".to_string()),
            (bob, "bob".to_string(), "member".to_string())
        ]
    );
    let (s, _) = call(p, "POST", &format!("/api/rooms/{g}/leave"), Some(&b), None);
    assert_eq!(s, 200);
    let (_, v) = call(p, "GET", &format!("/api/rooms/{g}/members"), Some(&a), None);
    assert_eq!(v["members"].as_array().unwrap().len(), 1);
    // Bad ids and unknown rooms.
    for (path, want) in [
        ("/api/rooms/abc", 400),
        ("/api/rooms/0", 400),
        ("/api/rooms/999", 404),
    ] {
        assert_eq!(call(p, "GET", path, Some(&a), None).0, want, "{path}");
    }
    assert_eq!(
        call(p, "DELETE", &format!("/api/rooms/{g}"), Some(&a), None).0,
        405
    );
    assert_serving(p);
}

#[test]
fn messages_publish_page_etag_and_unread() {
    let server = start(&[]);
    let p = server.port;
    let reg = |name: &str| {
        let (_, v) = try_register(p, name, "pw-secret");
        v["token"].as_str().unwrap().to_string()
    };
    let (a, b) = (reg("alice"), reg("bob"));
    let (_, room) = call(
        p,
        "POST",
        "/api/rooms",
        Some(&a),
        Some(&json!({"name": "chat"})),
    );
    let room = room["id"].as_u64().unwrap();
    assert_eq!(
        call(
            p,
            "POST",
            &format!("/api/rooms/{room}/join"),
            Some(&b),
            None
        )
        .0,
        200
    );
    let post = |i: u64, client_id: &str| {
        call(
            p,
            "POST",
            &format!("/api/rooms/{room}/messages"),
            Some(&a),
            Some(&json!({"body": format!("m{i}"), "client_id": client_id})),
        )
    };
    for i in 1..=120u64 {
        let (s, v) = post(i, &format!("c{i}"));
        assert_eq!((s, v["seq"].as_u64()), (201, Some(i)), "{v}");
    }
    // An idempotent resend answers the original seq.
    let (s, v) = post(999, "c7");
    assert_eq!(
        (s, v["seq"].as_u64(), v["duplicate"].as_bool()),
        (200, Some(7), Some(true))
    );
    // Newest first, following `next` back to the start: every message once.
    let mut seen = Vec::new();
    let mut path = format!("/api/rooms/{room}/messages?limit=50");
    loop {
        let resp = get_raw(p, &path, &b, "");
        assert_eq!(status(&resp), 200, "{resp}");
        assert!(
            matches!(header(&resp, "x-cache"), Some("HIT" | "MISS")),
            "{resp}"
        );
        let v: serde_json::Value =
            serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        seen.extend(
            v["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["seq"].as_u64().unwrap()),
        );
        match v["next"]["before"].as_u64() {
            Some(before) => path = format!("/api/rooms/{room}/messages?limit=50&before={before}"),
            None => break,
        }
    }
    assert_eq!(seen, (1..=120).rev().collect::<Vec<_>>());
    // Oldest first after a seq.
    let (_, v) = call(
        p,
        "GET",
        &format!("/api/rooms/{room}/messages?after=100&limit=5"),
        Some(&b),
        None,
    );
    let seqs: Vec<u64> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [101, 102, 103, 104, 105]);
    assert_eq!(v["messages"][0]["body"], "m101");
    // ETag: the same page again with If-None-Match is 304 with no body.
    let first = get_raw(p, &format!("/api/rooms/{room}/messages?limit=10"), &b, "");
    let etag = header(&first, "etag").unwrap().to_string();
    let again = get_raw(
        p,
        &format!("/api/rooms/{room}/messages?limit=10"),
        &b,
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!(status(&again), 304, "{again}");
    assert_eq!(header(&again, "etag"), Some(etag.as_str()));
    assert_eq!(header(&again, "x-cache"), Some("HIT"), "read a moment ago");
    assert!(again.ends_with("\r\n\r\n"), "no body: {again}");
    // RFC 9110 weak comparison over a list: W/ and other tags around it.
    for matching in [
        format!("W/{etag}"),
        format!("\"other\", W/{etag}"),
        "*".into(),
    ] {
        let weak = get_raw(
            p,
            &format!("/api/rooms/{room}/messages?limit=10"),
            &b,
            &format!("If-None-Match: {matching}\r\n"),
        );
        assert_eq!(status(&weak), 304, "{matching}: {weak}");
    }
    // A new message changes the page and its tag.
    post(121, "c121");
    let changed = get_raw(
        p,
        &format!("/api/rooms/{room}/messages?limit=10"),
        &b,
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!(status(&changed), 200);
    assert_ne!(header(&changed, "etag"), Some(etag.as_str()));
    // Bad parameters.
    for q in ["limit=0", "limit=201", "before=x", "limit=-1"] {
        let (s, v) = call(
            p,
            "GET",
            &format!("/api/rooms/{room}/messages?{q}"),
            Some(&b),
            None,
        );
        assert_eq!((s, code(&v)), (400, "bad_request"), "{q}");
    }
    let (s, v) = call(
        p,
        "POST",
        &format!("/api/rooms/{room}/messages"),
        Some(&a),
        Some(&json!({"text": "no body field"})),
    );
    assert_eq!((s, code(&v)), (400, "bad_request"));
    // Read markers and unread counts.
    let (_, v) = call(p, "GET", "/api/me/unread", Some(&b), None);
    assert_eq!(
        v["rooms"],
        json!([{"room": room, "unread": 121, "read": 0, "last_seq": 121}])
    );
    let (s, v) = call(
        p,
        "POST",
        &format!("/api/rooms/{room}/read"),
        Some(&b),
        Some(&json!({"seq": 100})),
    );
    assert_eq!((s, v["seq"].as_u64()), (200, Some(100)));
    let (_, v) = call(p, "GET", "/api/me/unread", Some(&b), None);
    assert_eq!(
        v["rooms"],
        json!([{"room": room, "unread": 21, "read": 100, "last_seq": 121}]),
        "a client opens the room at read + 1"
    );
    let (_, v) = call(
        p,
        "POST",
        &format!("/api/rooms/{room}/read"),
        Some(&b),
        Some(&json!({"seq": 5000})),
    );
    assert_eq!(v["seq"].as_u64(), Some(121), "clamped to the last seq");
    let (_, v) = call(p, "GET", "/api/me/unread", Some(&b), None);
    assert_eq!(
        v["rooms"],
        json!([{"room": room, "unread": 0, "read": 121, "last_seq": 121}])
    );
    // A private room's messages are invisible to strangers.
    let (_, secret) = call(
        p,
        "POST",
        "/api/rooms",
        Some(&a),
        Some(&json!({"name": "secret", "private": true})),
    );
    let secret = secret["id"].as_u64().unwrap();
    for (method, path, body) in [
        ("GET", format!("/api/rooms/{secret}/messages"), None),
        (
            "POST",
            format!("/api/rooms/{secret}/messages"),
            Some(json!({"body": "hi"})),
        ),
        (
            "POST",
            format!("/api/rooms/{secret}/read"),
            Some(json!({"seq": 1})),
        ),
    ] {
        let (s, v) = call(p, method, &path, Some(&b), body.as_ref());
        assert_eq!((s, code(&v)), (404, "not_found"), "{method} {path}");
    }
    assert_serving(p);
}

/// HS256 JWTs from an application backend: `sub` names the user (created on
/// first sight), `exp` is checked, the signature must match `--jwt-secret`.
#[test]
fn backend_jwts_authenticate_and_bad_ones_are_refused() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let server = start(&["--jwt-secret", "s3cret"]);
    let p = server.port;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mint = |sub: &str, exp: u64, secret: &str| {
        encode(
            &Header::default(),
            &json!({"sub": sub, "exp": exp}),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let good = mint("carol", now + 600, "s3cret");
    let (s, v) = call(p, "GET", "/api/me", Some(&good), None);
    assert_eq!((s, v["name"].as_str()), (200, Some("carol")), "{v}");
    let id = v["user"].as_u64().unwrap();
    // The same subject is the same user next time.
    let (_, v) = call(
        p,
        "GET",
        "/api/me",
        Some(&mint("carol", now + 900, "s3cret")),
        None,
    );
    assert_eq!(v["user"].as_u64(), Some(id), "{v}");
    // A JWT user can create rooms and post like any other.
    let (s, room) = call(
        p,
        "POST",
        "/api/rooms",
        Some(&good),
        Some(&json!({"name": "jwt-room"})),
    );
    assert_eq!(s, 201, "{room}");
    for bad in [
        mint("carol", now - 120, "s3cret"),     // expired
        mint("carol", now + 600, "other"),      // wrong secret
        mint("bad name!", now + 600, "s3cret"), // sub is not a valid name
        "a.b.c".to_string(),                    // not a JWT at all
    ] {
        let (s, v) = call(p, "GET", "/api/me", Some(&bad), None);
        assert_eq!((s, code(&v)), (401, "unauthorized"), "{bad}: {v}");
    }
    // Without --jwt-secret, JWTs are refused.
    let plain = start(&[]);
    let (s, v) = call(plain.port, "GET", "/api/me", Some(&good), None);
    assert_eq!((s, code(&v)), (401, "unauthorized"));
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--jwt-secret"));
}

/// `/metrics` sums every shard: engine counters and histograms, HTTP
/// requests by route (ids are not labels) and status, process memory.
#[test]
fn metrics_are_exposed_in_prometheus_text() {
    let server = start(&[]);
    let p = server.port;
    let (_, v) = try_register(p, "m", "pw-secret");
    let t = v["token"].as_str().unwrap().to_string();
    let (_, room) = call(
        p,
        "POST",
        "/api/rooms",
        Some(&t),
        Some(&json!({"name": "r"})),
    );
    let room = room["id"].as_u64().unwrap();
    for i in 0..5 {
        let (s, _) = call(
            p,
            "POST",
            &format!("/api/rooms/{room}/messages"),
            Some(&t),
            Some(&json!({"body": format!("{i}")})),
        );
        assert_eq!(s, 201);
    }
    assert_eq!(call(p, "GET", "/nowhere", None, None).0, 404);
    // Prometheus asks for OpenMetrics; anyone else gets the text format.
    let plain = exchange(
        p,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert!(header(&plain, "content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    assert!(
        plain.contains("# TYPE rookery_posts_total counter\n"),
        "{plain}"
    );
    assert!(!plain.contains("# EOF") && !plain.contains("# UNIT"));
    let resp = exchange(
        p,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status(&resp), 200);
    assert!(header(&resp, "content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = resp.split("\r\n\r\n").nth(1).unwrap();
    // The server's count: against a cluster, the sum of every node's
    // scrape (one node has a series another may lack).
    let scrapes: Vec<String> = node_ports(p)
        .into_iter()
        .map(|node| {
            let raw = b"GET /metrics HTTP/1.1\r\nHost: t\r\nAccept: application/openmetrics-text;version=1.0.0\r\nConnection: close\r\n\r\n";
            exchange(node, raw).unwrap()
        })
        .collect();
    let value = |line_start: &str| -> f64 {
        let found: Vec<f64> = scrapes
            .iter()
            .filter_map(|s| s.lines().find(|l| l.starts_with(line_start)))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(!found.is_empty(), "no {line_start} in\n{text}");
        found.into_iter().sum()
    };
    assert_eq!(value("rookery_posts_total "), 5.0);
    assert_eq!(value("rookery_commit_latency_seconds_count "), 5.0);
    assert_eq!(
        value("rookery_commit_latency_seconds_bucket{le=\"+Inf\"} "),
        5.0
    );
    assert_eq!(
        value("rookery_http_requests_total{route=\"/api/rooms/{id}/messages\",status=\"201\"} "),
        5.0
    );
    assert_eq!(
        value("rookery_http_requests_total{route=\"other\",status=\"404\"} "),
        1.0
    );
    assert!(value("rookery_process_resident_memory_bytes ") > 1e6);
    assert!(
        value("rookery_http_connections{shard=\"0\"} ")
            + value("rookery_http_connections{shard=\"1\"} ")
            >= 1.0,
        "the scrape's own connection"
    );
    assert_eq!(
        value("rookery_http_request_duration_seconds_count{route=\"/api/rooms/{id}/messages\"} "),
        5.0
    );
    assert!(value("rookery_commit_batches_total ") >= 1.0);
    // `none` durability: fsyncs only at checkpoints, each in a bucket of
    // the batch size histogram when it covered records.
    assert!(value("rookery_fsync_batch_records_count ") <= value("rookery_log_fsyncs_total "));
    assert!(text.trim_end().ends_with("# EOF"));
    // Every family's HELP and TYPE appear once (a scraper rejects the
    // whole scrape otherwise), with traffic on several routes.
    let mut seen = std::collections::HashSet::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("# HELP ") || l.starts_with("# TYPE "))
    {
        let family = line.split(' ').take(3).collect::<Vec<_>>().join(" ");
        assert!(seen.insert(family.clone()), "{family} twice in\n{text}");
    }
    assert!(seen.contains("# TYPE rookery_http_request_duration_seconds"));
}

/// Issue 13 item 3: room creation and member adds are limited per user
/// (429 `rate_limited` with `Retry-After`, a metric), nothing is stored
/// past the limit, and other users are not affected.
#[test]
fn room_creation_and_member_adds_are_rate_limited_per_user() {
    let server = start(&[
        "--rooms-per-user-per-min",
        "3",
        "--member-adds-per-user-per-min",
        "4",
    ]);
    let p = server.port;
    let (alice, bob) = (register(p, "alice"), register(p, "bob"));
    let mut statuses = Vec::new();
    for i in 0..6 {
        let (s, v) = call(
            p,
            "POST",
            "/api/rooms",
            Some(&alice),
            Some(&json!({"name": format!("a{i}")})),
        );
        if s == 429 {
            assert_eq!(code(&v), "rate_limited", "{v}");
        }
        statuses.push(s);
    }
    assert_eq!(statuses, [201, 201, 201, 429, 429, 429]);
    let raw = format!(
        "POST /api/rooms HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {alice}\r\nContent-Length: 12\r\n\r\n{{\"name\":\"z\"}}"
    );
    let resp = exchange(p, raw.as_bytes()).unwrap();
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{resp}");
    // Nothing past the limit was stored; bob still creates rooms.
    let (_, v) = call(p, "GET", "/api/rooms", Some(&alice), None);
    let names: Vec<&str> = v["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a0", "a1", "a2"]);
    let room = create_room(p, &bob, "bobs", true);

    // Invitations: 4, then 429; the refused users are not invited.
    let users: Vec<(u64, String)> = (0..6)
        .map(|i| {
            let t = register(p, &format!("m{i}"));
            let id = call(p, "GET", "/api/me", Some(&t), None).1["user"]
                .as_u64()
                .unwrap();
            (id, t)
        })
        .collect();
    let mut statuses = Vec::new();
    for (u, _) in &users {
        let (s, v) = call(
            p,
            "POST",
            &format!("/api/rooms/{room}/members"),
            Some(&bob),
            Some(&json!({"user": u})),
        );
        if s == 429 {
            assert_eq!(code(&v), "rate_limited", "{v}");
        }
        statuses.push(s);
    }
    assert_eq!(statuses, [202, 202, 202, 202, 429, 429]);
    let invited: Vec<usize> = users
        .iter()
        .map(|(_, t)| {
            let (_, v) = call(p, "GET", "/api/invites", Some(t), None);
            v["invites"].as_array().unwrap().len()
        })
        .collect();
    assert_eq!(invited, [1, 1, 1, 1, 0, 0]);
    let (_, v) = call(
        p,
        "GET",
        &format!("/api/rooms/{room}/members"),
        Some(&bob),
        None,
    );
    assert_eq!(
        v["members"].as_array().unwrap().len(),
        1,
        "invited, not added: {v}"
    );
    assert_eq!(
        metric(p, "rookery_limit_refusals_total{limit=\"rooms_per_user\"}"),
        4.0
    );
    assert_eq!(
        metric(
            p,
            "rookery_limit_refusals_total{limit=\"member_adds_per_user\"}"
        ),
        2.0
    );
    assert_serving(p);
}

/// Every item of a paginated list, following `next` from the first page;
/// each page at most `len` long, the last one with `next: null`.
fn all_pages(p: u16, token: &str, path: &str, key: &str, len: usize) -> Vec<serde_json::Value> {
    let (mut items, mut after) = (Vec::new(), 0);
    loop {
        let (s, v) = call(
            p,
            "GET",
            &format!("{path}&after={after}"),
            Some(token),
            None,
        );
        assert_eq!(s, 200, "{v}");
        let page = v[key].as_array().unwrap();
        assert!(page.len() <= len, "{v}");
        items.extend(page.iter().cloned());
        match v["next"]["after"].as_u64() {
            Some(next) => after = next,
            None => {
                assert!(v["next"].is_null(), "{v}");
                return items;
            }
        }
    }
}

/// Issue 13 item 3: the room and member lists come in pages with a cursor
/// (`next: {after}`, null on the last), `limit` within 1 to
/// --list-page-len-max (100 by default), wrong types refused.
#[test]
fn room_and_member_lists_are_paginated() {
    let server = start(&[
        "--rooms-per-user-per-min",
        "1000",
        "--list-page-len-max",
        "150",
    ]);
    let p = server.port;
    let alice = register(p, "alice");
    let rooms: Vec<u64> = (0..230)
        .map(|i| create_room(p, &alice, &format!("r{i}"), i % 7 == 0))
        .collect();
    // Default page: 100, then the cursor continues exactly.
    let (s, v) = call(p, "GET", "/api/rooms", Some(&alice), None);
    assert_eq!(s, 200);
    assert_eq!(v["rooms"].as_array().unwrap().len(), 100);
    assert_eq!(v["next"]["after"], rooms[99]);
    let seen: Vec<u64> = all_pages(p, &alice, "/api/rooms?limit=150", "rooms", 150)
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(seen, rooms);
    // Bob sees the public ones only, also in pages.
    let bob = register(p, "bob");
    let (_, v) = call(p, "GET", "/api/rooms?limit=150", Some(&bob), None);
    let first = v["rooms"].as_array().unwrap().len();
    let after = v["next"]["after"].as_u64().unwrap();
    let (_, v) = call(
        p,
        "GET",
        &format!("/api/rooms?limit=150&after={after}"),
        Some(&bob),
        None,
    );
    let public = rooms.iter().enumerate().filter(|(i, _)| i % 7 != 0).count();
    assert_eq!(first + v["rooms"].as_array().unwrap().len(), public);
    assert!(v["next"].is_null());
    // Members, in pages of 2.
    let room = rooms[1];
    for i in 0..4 {
        let t = register(p, &format!("m{i}"));
        assert_eq!(
            call(
                p,
                "POST",
                &format!("/api/rooms/{room}/join"),
                Some(&t),
                None
            )
            .0,
            200
        );
    }
    let path = format!("/api/rooms/{room}/members?limit=2");
    let names: Vec<String> = all_pages(p, &bob, &path, "members", 2)
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["alice", "m0", "m1", "m2", "m3"]);
    // Bad limits and cursors: 400 bad_request, as for history.
    for q in [
        "limit=0",
        "limit=151",
        "limit=abc",
        "after=-1",
        "after=x",
        "limit=-5",
    ] {
        for path in [
            "/api/rooms".to_string(),
            format!("/api/rooms/{room}/members"),
        ] {
            let (s, v) = call(p, "GET", &format!("{path}?{q}"), Some(&alice), None);
            assert_eq!((s, code(&v)), (400, "bad_request"), "{path}?{q}: {v}");
        }
    }
    assert_serving(p);
}

/// The ids a user search answers, following `next` to the end; in a
/// cluster, a change made through one node reaches the others within
/// milliseconds, so a search that must see it is asked again (bounded).
fn found(p: u16, token: &str, q: &str, want: &[u64]) -> Vec<u64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut ids = Vec::new();
        let mut path = format!("/api/users?q={q}&limit=2");
        loop {
            let (s, v) = call(p, "GET", &path, Some(token), None);
            assert_eq!(s, 200, "{q}: {v}");
            ids.extend(
                v["users"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|u| u["id"].as_u64().unwrap()),
            );
            match v["next"]["after"].as_str() {
                Some(after) => path = format!("/api/users?q={q}&limit=2&after={after}"),
                None => break,
            }
        }
        if ids == want || std::time::Instant::now() > deadline {
            return ids;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn the_directory_finds_users_by_their_names_words_and_shows_profiles() {
    let server = start(&["--directory-calls-per-user-per-min", "100"]);
    let p = server.port;
    let me = |t: &str| {
        call(p, "GET", "/api/me", Some(t), None).1["user"]
            .as_u64()
            .unwrap()
    };
    let ada = register(p, "ada_lovelace");
    let alan = register(p, "alan.turing");
    let grace = register(p, "grace-hopper");
    let (ada_id, alan_id, grace_id) = (me(&ada), me(&alan), me(&grace));
    let (s, v) = call(
        p,
        "PUT",
        "/api/me/profile",
        Some(&grace),
        Some(&json!({"display_name": "Amazing Grace", "status": "debugging"})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["id"], &v["name"], &v["display_name"], &v["status"]),
        (
            &json!(grace_id),
            &json!("grace-hopper"),
            &json!("Amazing Grace"),
            &json!("debugging")
        )
    );
    // By any word's prefix, any case, name or display name; every query
    // word must match; paged by `next`.
    assert_eq!(
        found(p, &ada, "a", &[ada_id, alan_id, grace_id]),
        [ada_id, alan_id, grace_id]
    );
    assert_eq!(found(p, &ada, "AMAZ", &[grace_id]), [grace_id]);
    assert_eq!(
        found(p, &ada, "grace%20hop", &[grace_id]),
        [grace_id],
        "two words"
    );
    assert_eq!(
        found(p, &ada, "tur+al", &[alan_id]),
        [alan_id],
        "+ is a space"
    );
    assert!(found(p, &ada, "zebra", &[]).is_empty());
    // A profile, and a change that keeps what it does not name.
    let (s, v) = call(
        p,
        "PUT",
        "/api/me/profile",
        Some(&grace),
        Some(&json!({"status": ""})),
    );
    assert_eq!(
        (s, &v["display_name"], &v["status"]),
        (200, &json!("Amazing Grace"), &json!("")),
        "{v}"
    );
    let (s, v) = call(
        p,
        "GET",
        &format!("/api/users/{grace_id}"),
        Some(&alan),
        None,
    );
    assert_eq!(
        (s, &v["display_name"]),
        (200, &json!("Amazing Grace")),
        "{v}"
    );
    // What is refused, and how.
    let code = |(s, v): (u16, serde_json::Value)| {
        (s, v["error"]["code"].as_str().unwrap_or("").to_string())
    };
    for path in [
        "/api/users",
        "/api/users?q=",
        "/api/users?q=%20%20",
        "/api/users?q=a&limit=0",
        "/api/users?q=a&after=zz.1",
        "/api/users?q=a&after=61",
        "/api/users/0",
        "/api/users/x",
    ] {
        assert_eq!(
            code(call(p, "GET", path, Some(&ada), None)),
            (400, "bad_request".into()),
            "{path}"
        );
    }
    let long_q = format!("/api/users?q={}", "a".repeat(201));
    assert_eq!(code(call(p, "GET", &long_q, Some(&ada), None)).0, 400);
    assert_eq!(
        code(call(p, "GET", "/api/users/999999", Some(&ada), None)).0,
        404
    );
    assert_eq!(
        call(p, "GET", "/api/users?q=a", None, None).0,
        401,
        "signed-in users only"
    );
    assert_eq!(
        call(p, "GET", &format!("/api/users/{ada_id}"), None, None).0,
        401
    );
    let too_long = "x".repeat(65);
    for body in [
        json!({"display_name": too_long}),
        json!({"display_name": "two\nlines"}),
        json!({"status": "s".repeat(141)}),
        json!({"display_name": 7}),
    ] {
        assert_eq!(
            code(call(p, "PUT", "/api/me/profile", Some(&ada), Some(&body))),
            (400, "bad_request".into()),
            "{body}"
        );
    }
    let (_, v) = call(p, "GET", &format!("/api/users/{ada_id}"), Some(&ada), None);
    assert_eq!(
        (&v["display_name"], &v["status"]),
        (&json!(""), &json!("")),
        "nothing stored: {v}"
    );
    // The rate: searches and profile changes share one bucket.
    let mut limited = None;
    for i in 0..200 {
        let (s, v) = call(p, "GET", "/api/users?q=a", Some(&alan), None);
        if s == 429 {
            limited = Some((i, v));
            break;
        }
    }
    let (i, v) = limited.expect("the directory rate limit holds");
    // 100 a minute: one more refills every 0.6 s while the calls run.
    assert!((95..=110).contains(&i), "refused after {i}");
    assert_eq!(v["error"]["code"], "rate_limited");
    assert_eq!(
        code(call(
            p,
            "PUT",
            "/api/me/profile",
            Some(&alan),
            Some(&json!({"status": "x"}))
        ))
        .0,
        429
    );
    assert_serving(p);
}

/// A profile says when its user was last active: their requests and
/// frames are noted and written within a few seconds (node-local: each
/// node knows what it served).
#[test]
fn a_profile_says_when_its_user_was_last_seen() {
    if single_process_only("last seen (each node knows what it served)") {
        return;
    }
    let server = start(&[]);
    let p = server.port;
    let (ada, bob) = (register(p, "ada"), register(p, "bob"));
    let (_, me) = call(p, "GET", "/api/me", Some(&ada), None);
    let id = me["user"].as_u64().unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let seen = || {
        let (s, v) = call(p, "GET", &format!("/api/users/{id}"), Some(&bob), None);
        assert_eq!(s, 200, "{v}");
        v["last_seen_ms"].as_u64().unwrap()
    };
    // Ada's own request now is activity; it shows within the flush.
    call(p, "GET", "/api/me", Some(&ada), None);
    // Told to the minute.
    let minute = before / 60_000 * 60_000;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen() < minute {
        assert!(std::time::Instant::now() < deadline, "never seen");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(seen() <= before + 60_000 && seen() % 60_000 == 0);
}

/// In a cluster an avatar is set through any node (one without its
/// upload keeps a copy), named by every node's copy of the profile, and
/// served by every node. One process has nothing to show here: the single
/// node's avatars are `uploads.rs`'s.
#[test]
fn in_a_cluster_an_avatar_is_set_named_and_served_through_any_node() {
    if !clustered() {
        eprintln!("run against a cluster only: one node's avatars are uploads.rs's");
        return;
    }
    let server = start(&[]);
    let nodes = node_ports(server.port);
    let ada = register(nodes[0], "ada");
    let image = {
        let img = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    };
    let mut raw = format!(
        "POST /api/uploads?name=me.png HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {ada}\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        image.len()
    )
    .into_bytes();
    raw.extend_from_slice(&image);
    let resp = exchange(nodes[0], &raw).unwrap();
    assert_eq!(status(&resp), 201, "{resp}");
    let body: serde_json::Value =
        serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let id = body["id"].as_str().unwrap().to_string();
    let set = |node: u16| {
        let body = json!({ "avatar": id });
        call(node, "PUT", "/api/me/profile", Some(&ada), Some(&body))
    };
    // Set through a node the upload is not on: it keeps a copy.
    let (s, v) = set(nodes[1]);
    assert_eq!(s, 200, "{v}");
    let (url, me) = (
        v["avatar_url"].as_str().unwrap().to_string(),
        v["id"].as_u64().unwrap(),
    );
    // Every node's copy names it (soon: copies follow the cluster's).
    for &node in &nodes {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (_, p) = call(node, "GET", &format!("/api/users/{me}"), Some(&ada), None);
            if p["avatar_url"] == url.as_str() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "node {node}: {p}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    // Every node serves it (the one without a copy reads another's).
    let thumbs: Vec<String> = nodes
        .iter()
        .map(|&node| {
            let raw = get_raw(node, &url, &ada, "");
            assert_eq!(status(&raw), 200, "node {node}: {raw}");
            raw.split("\r\n\r\n").nth(1).unwrap().to_string()
        })
        .collect();
    assert!(thumbs.iter().all(|t| *t == thumbs[0]), "the same thumbnail");
    // Held where it is the avatar: not removed through any node.
    let path = format!("/api/uploads/{id}");
    for &node in &nodes {
        assert_eq!(call(node, "DELETE", &path, Some(&ada), None).0, 409);
    }
}

/// Message search answers a new server, or cluster, with nothing found
/// once its index is open (tests/search.rs has the rest).
#[test]
fn message_search_answers_with_nothing_found_at_first() {
    let server = start(&[]);
    let p = server.port;
    let token = register(p, "sam");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (s, v) = call(p, "GET", "/api/search?q=hello", Some(&token), None);
        if s == 200 {
            assert_eq!(v, json!({"results": [], "next": null}));
            return;
        }
        // The index of a new data directory is built at start.
        assert_eq!((s, code(&v)), (503, "unavailable"), "{v}");
        assert!(std::time::Instant::now() < deadline, "{v}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
