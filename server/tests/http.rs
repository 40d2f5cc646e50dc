//! End-to-end tests of the `rookery` binary's HTTP side: the real binary on
//! an ephemeral port, raw TCP clients. Every bad input asserts its status
//! and that the server still serves afterwards.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let server = start(&[]);
    let mut s = connect(server.port);
    // Two requests in one write, then a third after reading both.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let a = read_response(&mut s);
    let b = read_response(&mut s);
    assert_eq!((status(&a), status(&b)), (200, 200));
    assert!(a.ends_with("{\"status\":\"ok\"}"), "{a}");
    assert!(b.contains("\"status\":\"ready\""), "{b}");
    s.write_all(b"GET /no/such/route HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let c = read_response(&mut s);
    assert_eq!(status(&c), 404);
    assert!(c.contains("{\"error\":{\"code\":\"not_found\""), "{c}");
    s.write_all(b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    assert_eq!(status(&read_response(&mut s)), 405);
    // /api/server says what the server is and where its endpoints are.
    s.write_all(b"GET /api/server HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let root = read_response(&mut s);
    let body: serde_json::Value =
        serde_json::from_str(root.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        (body["server"].as_str(), body["shards"].as_u64()),
        (Some("rookery"), Some(2)),
        "{root}"
    );
    assert_eq!(body["endpoints"]["websocket"], "/ws");
    assert_eq!(body["endpoints"]["web_client"], "/");
    assert_eq!(body["history_page_len_max"], 200);
    // Connection: close is honoured.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert!(rest.starts_with("HTTP/1.1 200") && rest.contains("connection: close"));
}

#[test]
fn bad_requests_get_their_status_and_the_server_keeps_serving() {
    let server = start(&[
        "--http-head-bytes-max",
        "1024",
        "--http-body-bytes-max",
        "100",
    ]);
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: t\r\n{}\r\n",
        "X-H: v\r\n".repeat(100)
    );
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), 400, "bad_request"),
        (
            b"GET relative HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (big_header.into_bytes(), 431, "headers_too_large"),
        (many_headers.into_bytes(), 431, "headers_too_large"),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n".to_vec(),
            413,
            "body_too_large",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n".to_vec(),
            501,
            "not_implemented",
        ),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            400,
            "bad_request",
        ),
        // RFC 9112: digits-only Content-Length, exactly one Host, never two
        // framings (what request smuggling behind a proxy relies on).
        (
            b"POST /api/login HTTP/1.1\r\nHost: t\r\nContent-Length: +2\r\n\r\n{}".to_vec(),
            400,
            "bad_request",
        ),
        (b"GET /healthz HTTP/1.1\r\n\r\n".to_vec(), 400, "bad_request"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            b"POST /api/login HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
    ];
    for (raw, want, code) in cases {
        let resp = exchange(server.port, &raw).unwrap();
        assert_eq!(status(&resp), want, "{resp}");
        assert!(resp.contains(&format!("\"code\":\"{code}\"")), "{resp}");
        assert!(resp.contains("connection: close"), "{resp}");
        // One answer, then the connection is closed: nothing after a bad
        // request (a smuggled one included) is read.
        let answers = resp.lines().filter(|l| l.starts_with("HTTP/1.1 ")).count();
        assert_eq!(answers, 1, "{resp}");
        assert_serving(server.port);
    }
}

#[test]
fn slow_and_idle_clients_do_not_hold_a_shard() {
    let server = start(&[
        "--http-request-timeout-ms",
        "300",
        "--http-idle-timeout-ms",
        "400",
    ]);
    // Slowloris: many connections that start a request and never finish.
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = connect(server.port);
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    // Meanwhile everyone else is served at once.
    let t = Instant::now();
    assert_serving(server.port);
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    // Each slow one gets 408 and is closed after the request deadline.
    for s in &mut slow {
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert_eq!(status(&out), 408, "{out}");
        assert!(out.contains("\"code\":\"request_timeout\""));
    }
    // An idle keep-alive connection is closed after the idle deadline.
    let mut idle = connect(server.port);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(status(&read_response(&mut idle)), 200);
    let t = Instant::now();
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_serving(server.port);
}

#[test]
fn sigterm_stops_cleanly_and_the_data_dir_reopens() {
    if common::single_process_only("stopping on SIGTERM") {
        return;
    }
    let mut server = start(&[]);
    let pid = server.child.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    // The same data dir starts again (nothing left locked or damaged).
    let data = server._dir.path().join("data");
    let port = free_port();
    let mut again = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", data.to_str().unwrap(), "--shards", "2"])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while exchange(
        port,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .is_err()
    {
        assert!(Instant::now() < deadline, "no restart");
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(again.id() as i32, libc::SIGINT) };
    assert_eq!(again.wait().unwrap().code(), Some(0));
}

#[test]
fn a_bad_setting_is_one_line_naming_it_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("never");
    for (args, flag) in [
        (vec!["--durability", "often"], "--durability"),
        (
            vec!["--http-request-timeout-ms", "0"],
            "--http-request-timeout-ms",
        ),
        (vec!["--listen", "not-an-address"], "--listen"),
        (vec!["--stats-interval-ms", "0"], "--stats-interval-ms"),
        (vec!["--stats-samples-max", "0"], "--stats-samples-max"),
        (
            vec!["--stats-interval-ms", "3600001"],
            "--stats-interval-ms",
        ),
        (vec!["--stats-samples-max", "100001"], "--stats-samples-max"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_rookery"))
            .args(["--data-dir", data.to_str().unwrap()])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(flag), "{err}");
        assert!(
            !data.exists(),
            "nothing is created before the settings are checked"
        );
    }
    // The environment twin works the same way.
    let out = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(["--data-dir", data.to_str().unwrap()])
        .env("ROOKERY_DURABILITY", "often")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--durability"));
}

#[test]
fn a_port_in_use_fails_start_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", dir.path().join("d").to_str().unwrap()])
        .args(["--shards", "1"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("--listen 127.0.0.1:{port}")), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn connections_and_registrations_per_ip_are_limited() {
    // Open connections are counted by the node that holds them (each
    // node's file descriptors); registrations per address are
    // cluster-wide, as `a_trusted_proxy_names_the_client_and_others_cannot`
    // checks against a cluster.
    if common::single_process_only("the count of a node's open connections") {
        return;
    }
    let server = start(&[
        "--connections-per-ip-max",
        "3",
        "--registrations-per-ip-per-min",
        "2",
    ]);
    let p = server.port;
    // Three open connections are allowed; a fourth is answered 429.
    // (Each held one is answered once, so the server has surely counted it.)
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = connect(p);
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            assert_eq!(status(&read_response(&mut s)), 200);
            s
        })
        .collect();
    let over = exchange(
        p,
        b"GET /api/server HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status(&over), 429, "{over}");
    assert!(over.contains("\"code\":\"too_many_connections\""));
    // Monitoring still gets through (issue 13 item 10): each probe on its
    // own connection past the limit, answered and closed.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        let resp = exchange(p, raw.as_bytes()).unwrap();
        assert_eq!(status(&resp), 200, "{path}: {resp}");
        assert_eq!(header(&resp, "connection"), Some("close"), "{resp}");
    }
    // Not for anything else, nor a probe with a body, nor silence (the
    // read waits two seconds at most).
    for raw in [
        &b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"GET /api/me HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        assert_eq!(status(&exchange(p, raw).unwrap()), 429);
    }
    let began = Instant::now();
    let mut silent = connect(p);
    assert_eq!(status(&read_response(&mut silent)), 429);
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    // Closing one makes room again (the server notices the closes a moment
    // later; every refusal meanwhile is counted, and so is counted here).
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    // The first refusal, the POST, /api/me and the silent one; the probes
    // answered are not refusals.
    let mut refused = 4;
    loop {
        let resp = exchange(
            p,
            b"GET /api/server HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        match status(&resp) {
            200 => break,
            429 => refused += 1,
            other => panic!("unexpected {other}: {resp}"),
        }
        assert!(
            Instant::now() < deadline,
            "closed connections were not released"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Two registrations a minute from one address; the third is 429.
    for (i, want) in [(1, 201), (2, 201), (3, 429)] {
        let (s, v) = call(
            p,
            "POST",
            "/api/register",
            None,
            Some(&serde_json::json!({"name": format!("u{i}"), "password": "pw-secret"})),
        );
        assert_eq!(s, want, "{v}");
    }
    // Refusals are counted in /metrics.
    let metrics = exchange(
        p,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let counted =
        format!("rookery_limit_refusals_total{{limit=\"connections_per_ip\"}} {refused}\n");
    assert!(metrics.contains(&counted), "{counted} in {metrics}");
    assert!(metrics.contains("rookery_limit_refusals_total{limit=\"registrations_per_ip\"} 1"));
}

/// Failed logins are limited per account and per address; a limited login
/// is refused (429, `Retry-After`) before any password is hashed, and an
/// unknown name costs a (decoy) check like a wrong password.
#[test]
fn failed_logins_are_limited_per_account_and_per_address() {
    let server = start(&[
        "--login-failures-per-account-per-min",
        "3",
        "--login-failures-per-ip-per-min",
        "5",
    ]);
    let p = server.port;
    register(p, "victim");
    register(p, "other");
    let login = |name: &str, password: &str| {
        let body = serde_json::json!({"name": name, "password": password}).to_string();
        let raw = format!(
            "POST /api/login HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        exchange(p, raw.as_bytes()).unwrap()
    };
    let checks = || metric(p, "rookery_password_checks_total");
    let before = checks();
    assert_eq!(status(&login("ghost", "pw-secret")), 401, "unknown name");
    assert_eq!(
        checks(),
        before + 1.0,
        "an unknown name is checked too (decoy)"
    );
    for _ in 0..3 {
        assert_eq!(status(&login("victim", "wrong")), 401);
    }
    // The account is limited: even the right password waits, unhashed.
    let before = checks();
    let limited = login("victim", "pw-secret");
    assert_eq!(status(&limited), 429, "{limited}");
    assert!(limited.contains("\"code\":\"rate_limited\""), "{limited}");
    let retry: u64 = header(&limited, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(checks(), before, "refused before hashing");
    // Another account from the same address: its fifth failure limits the
    // address.
    assert_eq!(status(&login("other", "wrong")), 401);
    assert_eq!(
        status(&login("other", "pw-secret")),
        429,
        "the address is limited"
    );
    assert_eq!(
        metric(p, "rookery_limit_refusals_total{limit=\"login_failures\"}"),
        2.0
    );
    assert_serving(p);
}

/// A chunked request body is read whole (RFC 9112 §7.1), and the
/// connection then serves the next request.
#[test]
fn chunked_request_bodies_are_accepted() {
    let server = start(&[]);
    let p = server.port;
    let token = register(p, "chunky");
    let room = create_room(p, &token, "chunks", false);
    let body = r#"{"body":"sent in chunks","client_id":"c1"}"#;
    let (a, b) = body.split_at(10);
    let raw = format!(
        "POST /api/rooms/{room}/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};note=x\r\n{b}\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        a.len(),
        b.len()
    );
    let resp = exchange(p, raw.as_bytes()).unwrap();
    // Two answers, back to back (a body has no trailing newline).
    let statuses: Vec<u16> = resp
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|r| r[..3].parse().unwrap())
        .collect();
    assert_eq!(statuses, [201, 200], "{resp}");
    assert!(resp.contains("\"seq\":1"), "{resp}");
}

/// Behind a trusted proxy the client's address comes from
/// `X-Forwarded-For` (for the per-address limits), and the proxy's own
/// connections are not held to the per-address connection limit; from an
/// untrusted peer the header is ignored.
#[test]
fn a_trusted_proxy_names_the_client_and_others_cannot() {
    let register_via = |p: u16, name: &str, xff: &str| {
        let body = serde_json::json!({"name": name, "password": "pw-secret"}).to_string();
        let raw = format!(
            "POST /api/register HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        status(&exchange(p, raw.as_bytes()).unwrap())
    };
    let limited = [
        "--registrations-per-ip-per-min",
        "1",
        "--connections-per-ip-max",
        "1",
    ];
    let trusted = start(&[&limited[..], &["--trusted-proxies", "127.0.0.0/8"]].concat());
    let p = trusted.port;
    assert_eq!(register_via(p, "a1", "198.51.100.1"), 201);
    assert_eq!(register_via(p, "a2", "198.51.100.1"), 429, "same client");
    assert_eq!(
        register_via(p, "a3", "1.2.3.4, 198.51.100.2"),
        201,
        "another client"
    );
    // Several connections at once from the proxy's address.
    let held: Vec<_> = (0..3).map(|_| connect(p)).collect();
    assert_serving(p);
    drop(held);
    let direct = start(&["--registrations-per-ip-per-min", "1"]);
    let q = direct.port;
    assert_eq!(register_via(q, "b1", "198.51.100.1"), 201);
    assert_eq!(
        register_via(q, "b2", "198.51.100.9"),
        429,
        "the header is ignored"
    );
}

/// A request refused by a rate limit pauses its connection for the retry
/// delay (at most 1 s): a client that loops past 429s gets one answer per
/// pause, not as many as the shard can refuse.
#[test]
fn a_rate_limited_connection_is_paused_before_its_next_request() {
    let server = start(&["--rooms-per-user-per-min", "1"]);
    let p = server.port;
    let token = register(p, "looper");
    let one = |i: usize| {
        let body = format!("{{\"name\":\"loop{i}\"}}");
        format!(
            "POST /api/rooms HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let mut s = connect(p);
    let pipelined: String = (0..3).map(one).collect();
    s.write_all(pipelined.as_bytes()).unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let resp = read_response(&mut s);
        answers.push((status(&resp), Instant::now()));
    }
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [201, 429, 429]);
    let paused = answers[2].1.duration_since(answers[1].1);
    assert!(paused >= Duration::from_millis(950), "{paused:?}");
    assert_serving(p);
}
