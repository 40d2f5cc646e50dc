//! The web client's and dashboard's files (embedded in the binary) and the
//! dashboard's stats feed, end to end against the real binary. The pages
//! themselves are driven in a real browser by tools/browser.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn get(port: u16, path: &str, extra: &str) -> String {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n");
    exchange(port, raw.as_bytes()).unwrap()
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The local files a page refers to (`src="/…"` and `href="/…"`).
fn references(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["src=\"/", "href=\"/"] {
        for (i, _) in html.match_indices(attr) {
            let rest = &html[i + attr.len() - 1..];
            let path = &rest[..rest.find('"').unwrap()];
            out.push(path.to_string());
        }
    }
    out
}

#[test]
fn the_pages_and_every_file_they_load_are_served() {
    let server = start(&[]);
    let p = server.port;
    for (page, script) in [("/", "/app.js"), ("/dashboard", "/dashboard.js")] {
        let resp = get(p, page, "");
        assert_eq!(status(&resp), 200, "{resp}");
        assert_eq!(
            header(&resp, "content-type"),
            Some("text/html; charset=utf-8")
        );
        let csp = header(&resp, "content-security-policy").unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        let html = body(&resp);
        assert!(html.contains(&format!("src=\"{script}\"")), "{html}");
        let refs = references(html);
        assert!(refs.len() >= 3, "{refs:?}");
        for path in refs {
            if path.starts_with("/api") || path == "/metrics" || path == "/dashboard" || path == "/"
            {
                continue;
            }
            let file = get(p, &path, "");
            assert_eq!(status(&file), 200, "{path}: {file}");
            assert!(!body(&file).is_empty(), "{path}");
        }
    }
    // The app's modules import each other by absolute path: those resolve
    // too.
    let app = get(p, "/app.js", "");
    assert_eq!(
        header(&app, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    for module in ["/client.js", "/vlist.js", "/markdown.js"] {
        assert!(body(&app).contains(&format!(".{module}\"")), "{module}");
        assert_eq!(status(&get(p, module, "")), 200);
    }
}

#[test]
fn files_carry_an_etag_and_a_match_is_304() {
    let server = start(&[]);
    let p = server.port;
    let first = get(p, "/style.css", "");
    let tag = header(&first, "etag").unwrap().to_string();
    assert_eq!(header(&first, "cache-control"), Some("no-cache"));
    let again = get(p, "/style.css", &format!("If-None-Match: {tag}\r\n"));
    assert_eq!(status(&again), 304, "{again}");
    assert!(body(&again).is_empty());
    let weak = get(
        p,
        "/style.css",
        &format!("If-None-Match: \"x\", W/{tag}\r\n"),
    );
    assert_eq!(status(&weak), 304, "weak, in a list: {weak}");
    let other = get(p, "/style.css", "If-None-Match: \"x\", W/\"y\"\r\n");
    assert_eq!(status(&other), 200);
    // HEAD: the same head (with the length of the body), no body; the
    // connection then serves the next request.
    let mut c = connect(p);
    c.write_all(
        b"HEAD /style.css HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut both = String::new();
    c.read_to_string(&mut both).unwrap();
    let (head, rest) = both.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length = body(&first).len().to_string();
    assert!(
        head.contains(&format!("content-length: {length}")),
        "{head}"
    );
    assert!(
        rest.starts_with("HTTP/1.1 200"),
        "no body before the next answer: {rest}"
    );
    // Not files: other methods, paths under them, traversal.
    let post = exchange(
        p,
        b"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status(&post), 405, "{post}");
    for path in ["/app.js/x", "/../Cargo.toml", "/web/app.js", "/index.html"] {
        assert_eq!(status(&get(p, path, "")), 404, "{path}");
    }
    assert_serving(p);
}

/// The stats feed's samples, after `after`.
fn feed(port: u16, after: u64) -> Value {
    let (s, v) = call(
        port,
        "GET",
        &format!("/api/stats?after={after}"),
        None,
        None,
    );
    assert_eq!(s, 200, "{v}");
    v
}

#[test]
fn the_stats_feed_reports_traffic_latency_and_errors() {
    if common::single_process_only("the stats feed (a node's own traffic)") {
        return;
    }
    let server = start(&[
        "--stats-interval-ms",
        "100",
        "--stats-samples-max",
        "200",
        "--durability",
        "sync",
    ]);
    let p = server.port;
    let token = register(p, "watcher");
    let room = create_room(p, &token, "watched", false);
    for i in 0..10 {
        let (s, _) = call(
            p,
            "POST",
            &format!("/api/rooms/{room}/messages"),
            Some(&token),
            Some(&json!({"body": format!("m{i}")})),
        );
        assert_eq!(s, 201);
    }
    // One error answered to a client.
    let (s, _) = call(p, "GET", "/api/rooms/nope", Some(&token), None);
    assert_eq!(s, 400);
    // A WebSocket that sends a message over the limit: opened, and closed
    // by the server with 1009.
    let (mut ws, resp) = RawWs::connect(p, &format!("/ws?token={token}"), "");
    assert_eq!(status(&resp), 101, "{resp}");
    ws.write_frame(0x1, &vec![b'x'; 70_000], true, false);
    assert_eq!(closed_with(&mut ws).0, 1009);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut posted, mut commit, mut errors, mut cached) = (0.0, false, 0, 0);
    let (mut opened, mut too_big, mut answered) = (0.0, 0, 0.0);
    // Each poll takes only the samples after the last one seen (as the
    // dashboard does), so every interval is counted once.
    let mut last_t = 0;
    while Instant::now() < deadline
        && (posted < 9.5 || !commit || errors == 0 || opened < 0.5 || too_big == 0)
    {
        std::thread::sleep(Duration::from_millis(150));
        let v = feed(p, last_t);
        assert_eq!(v["interval_ms"], 100);
        assert_eq!(v["shards"], 2);
        let samples = v["samples"].as_array().unwrap();
        assert!(samples.len() <= 200, "--stats-samples-max holds");
        // msgs_in_per_s × the interval's length is the messages posted in it.
        for s in samples {
            let (t, ms) = (s["t"].as_u64().unwrap(), s["ms"].as_u64().unwrap());
            assert!(t > last_t && ms > 0, "samples in time order, after `after`");
            last_t = t;
            posted += s["msgs_in_per_s"].as_f64().unwrap() * ms as f64 / 1000.0;
            let shards = s["shards"].as_array().unwrap();
            assert_eq!(shards.len(), 2);
            cached = shards
                .iter()
                .map(|x| x["tail_cache_bytes"].as_u64().unwrap())
                .sum();
            commit |= s["commit_p99_ms"].as_f64().is_some_and(|ms| ms > 0.0);
            errors += s["errors"]["bad_request"].as_u64().unwrap_or(0);
            opened += s["ws_opened_per_s"].as_f64().unwrap() * ms as f64 / 1000.0;
            too_big += s["ws_closes"]["1009"].as_u64().unwrap_or(0);
            answered += s["http_per_s"].as_f64().unwrap() * ms as f64 / 1000.0;
            assert_eq!(s["http_5xx"], 0, "nothing failed");
        }
    }
    assert!(
        (0.5..1.5).contains(&opened),
        "one WebSocket opened: {opened}"
    );
    assert_eq!(too_big, 1, "its 1009 close is counted once");
    assert!(answered >= 10.0, "the posts were answered: {answered}");
    // What the server is and holds, beside the samples.
    let v = feed(p, 0);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let started = v["started_ms"].as_u64().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(started > 0 && started <= now_ms, "{v}");
    let totals = &v["totals"];
    assert_eq!(
        (totals["users"].as_u64(), totals["rooms"].as_u64()),
        (Some(1), Some(1)),
        "{totals}"
    );
    assert_eq!(totals["messages_since_start"], 10, "{totals}");
    assert!(totals["data_bytes"].as_u64().unwrap() > 0, "{totals}");
    assert!(totals["disk_free_bytes"].as_u64().unwrap() > 0, "{totals}");
    // Rates are rounded to 0.01/s, so the sum is 10 to within rounding.
    assert!(
        (9.5..10.5).contains(&posted),
        "10 messages in, counted {posted}"
    );
    assert!(commit, "commit latency of the posts is in a sample");
    assert_eq!(errors, 1, "the one bad_request is counted once");
    assert!(
        cached >= 10 * "{\"body\":\"m0\"}".len() as u64,
        "the room's tail cache holds the 10 messages: {cached} bytes"
    );
    // `after` leaves out what the dashboard already has.
    let last = feed(p, 0)["samples"].as_array().unwrap().last().unwrap()["t"]
        .as_u64()
        .unwrap();
    let newer = feed(p, last)["samples"].as_array().unwrap().clone();
    assert!(newer.iter().all(|s| s["t"].as_u64().unwrap() > last));
    let (s, v) = call(p, "GET", "/api/stats?after=yesterday", None, None);
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")));
}

/// With `--dashboard-access key` the feed takes a server API key with the
/// `stats` scope: 401 without one, 403 with a key lacking the scope.
#[test]
fn the_dashboard_can_require_an_api_key() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let entry = |name: &str, key: &str, scope: &str| {
        let hash: String = Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("[[key]]\nname = \"{name}\"\nsha256 = \"{hash}\"\nscopes = [\"{scope}\"]\n")
    };
    let (watch, read) = (
        format!("rk_{}", "7".repeat(64)),
        format!("rk_{}", "8".repeat(64)),
    );
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        entry("watch", &watch, "stats") + &entry("reader", &read, "read"),
    )
    .unwrap();
    let server = start(&[
        "--api-keys-file",
        keys.to_str().unwrap(),
        "--dashboard-access",
        "key",
    ]);
    let p = server.port;
    let (s, v) = call(p, "GET", "/api/stats", None, None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let unknown = format!("rk_{}", "9".repeat(64));
    let (s, _) = call(p, "GET", "/api/stats", Some(&unknown), None);
    assert_eq!(s, 401, "an unknown key");
    let (s, v) = call(p, "GET", "/api/stats", Some(&read), None);
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, v) = call(p, "GET", "/api/stats", Some(&watch), None);
    assert_eq!(s, 200, "{v}");
    assert!(v["samples"].is_array());
    // The page itself is served to anyone: it asks for the key. /metrics
    // is not affected (scrapers are kept out at the network).
    assert_eq!(status(&get(p, "/dashboard", "")), 200);
    assert_eq!(status(&get(p, "/metrics", "")), 200);
}
