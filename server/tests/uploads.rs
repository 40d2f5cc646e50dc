//! Uploads through the real binary: `POST /api/uploads` streamed with its
//! limits (file size and quota before the body is read, sniffed type
//! against the declared one, Content-Length required, a stalled body cut
//! off, uploads in flight per shard), and `GET /api/uploads/{id}` with its
//! headers (type, disposition, `ETag` and 304, `Range` and 416, cache,
//! nosniff and sandbox), `HEAD` and the thumbnail; the connection serves
//! the next request after an upload.
//!
//! Uploads live on the node that stored them: one process only.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// One response: status, headers (lower-case names), body.
struct Got {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// Reads one response from `s` (`head`: a response to HEAD, no body).
fn read_one(s: &mut TcpStream, head: bool) -> Got {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed mid-head");
        buf.push(byte[0]);
    }
    let text = String::from_utf8(buf).unwrap();
    let mut lines = text.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; if head { 0 } else { len }];
    s.read_exact(&mut body).unwrap();
    Got {
        status,
        headers,
        body,
    }
}

fn upload_request(token: &str, name: &str, ctype: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST /api/uploads?name={name} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

fn upload(p: u16, token: &str, name: &str, ctype: &str, body: &[u8]) -> Got {
    let mut s = connect(p);
    s.write_all(&upload_request(token, name, ctype, body))
        .unwrap();
    read_one(&mut s, false)
}

fn get(p: u16, token: &str, path: &str, extra: &str) -> Got {
    let mut s = connect(p);
    let method = if extra.starts_with("HEAD") {
        "HEAD"
    } else {
        "GET"
    };
    let extra = extra.trim_start_matches("HEAD");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n{extra}\r\n"
    )
    .unwrap();
    read_one(&mut s, method == "HEAD")
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

#[test]
fn uploads_are_streamed_checked_and_served_safely() {
    if single_process_only("uploads (node-local files)") {
        return;
    }
    let server = start(&[
        "--shards",
        "1",
        "--upload-bytes-max",
        "300000",
        "--upload-quota-bytes",
        "400000",
        "--uploads-in-flight-max",
        "3",
        "--http-request-timeout-ms",
        "1000",
    ]);
    let p = server.port;
    let a = register(p, "alice");

    // An image: 201 with what is known of it.
    let image = png(400, 200);
    let got = upload(p, &a, "cat%20pic.png", "image/png", &image);
    assert_eq!(got.status, 201, "{}", String::from_utf8_lossy(&got.body));
    let up = got.json();
    let id = up["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(up["content_type"], "image/png");
    assert_eq!(up["name"], "cat pic.png");
    assert_eq!(
        (up["width"].as_u64(), up["height"].as_u64()),
        (Some(400), Some(200))
    );
    assert_eq!(up["bytes"].as_u64(), Some(image.len() as u64));
    assert_eq!(up["url"], format!("/api/uploads/{id}"));

    // Served whole, inline, with its validator and safe headers.
    let path = format!("/api/uploads/{id}");
    let got = get(p, &a, &path, "");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, image);
    assert_eq!(got.header("content-type"), "image/png");
    assert_eq!(
        got.header("content-disposition"),
        "inline; filename*=UTF-8''cat%20pic%2Epng"
    );
    assert_eq!(got.header("x-content-type-options"), "nosniff");
    assert_eq!(
        got.header("content-security-policy"),
        "sandbox; default-src 'none'"
    );
    assert!(got.header("cache-control").contains("immutable"));
    assert_eq!(got.header("accept-ranges"), "bytes");
    let etag = got.header("etag").to_string();
    assert_eq!(etag, format!("\"{}\"", up["sha256"].as_str().unwrap()));
    let got = get(p, &a, &path, &format!("If-None-Match: {etag}\r\n"));
    assert_eq!((got.status, got.body.len()), (304, 0));
    // Ranges: one range, a suffix, past the end, several (the whole file).
    let got = get(p, &a, &path, "Range: bytes=0-9\r\n");
    assert_eq!((got.status, &got.body[..]), (206, &image[..10]));
    assert_eq!(
        got.header("content-range"),
        format!("bytes 0-9/{}", image.len())
    );
    let got = get(p, &a, &path, "Range: bytes=-5\r\n");
    assert_eq!(
        (got.status, &got.body[..]),
        (206, &image[image.len() - 5..])
    );
    let got = get(p, &a, &path, "Range: bytes=99999999-\r\n");
    assert_eq!(got.status, 416);
    assert_eq!(
        got.header("content-range"),
        format!("bytes */{}", image.len())
    );
    let got = get(p, &a, &path, "Range: bytes=0-1,4-5\r\n");
    assert_eq!((got.status, got.body.len()), (200, image.len()));
    let got = get(p, &a, &path, "Range: bytes=0-9\r\nIf-Range: \"other\"\r\n");
    assert_eq!(got.status, 200, "a stale If-Range gets the whole file");
    let got = get(p, &a, &path, "HEAD");
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-length"), image.len().to_string());
    // The thumbnail.
    let got = get(p, &a, &format!("{path}/thumbnail"), "");
    assert_eq!((got.status, got.header("content-type")), (200, "image/png"));
    let thumb = image::load_from_memory(&got.body).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (320, 160));

    // Markup is never served as what a browser would run.
    let got = upload(
        p,
        &a,
        "x.html",
        "text/html",
        b"<html><script>alert(1)</script>",
    );
    assert_eq!(got.status, 201);
    let html = got.json()["id"].as_str().unwrap().to_string();
    let got = get(p, &a, &format!("/api/uploads/{html}"), "");
    assert_eq!(got.header("content-type"), "application/octet-stream");
    assert!(got.header("content-disposition").starts_with("attachment"));
    let got = get(p, &a, &format!("/api/uploads/{html}/thumbnail"), "");
    assert_eq!(got.status, 404);

    // Refusals.
    let got = upload(p, &a, "x.png", "image/png", b"plain text, not a png");
    assert_eq!(
        (got.status, got.json()["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let got = upload(p, "nope", "x.txt", "text/plain", b"hi");
    assert_eq!(got.status, 401);
    for bad in [
        "/api/uploads/zz",
        "/api/uploads/00000000000000000000000000000000",
    ] {
        assert_eq!(get(p, &a, bad, "").status, 404, "{bad}");
    }
    let mut s = connect(p);
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_one(&mut s, false).status, 401, "signed-in users only");
    // Too large: refused before the body is sent.
    let mut s = connect(p);
    write!(s, "POST /api/uploads HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {a}\r\nContent-Length: 300001\r\n\r\n").unwrap();
    let got = read_one(&mut s, false);
    assert_eq!(
        (got.status, got.json()["error"]["code"].as_str()),
        (413, Some("too_large"))
    );
    // No length: 411.
    let mut s = connect(p);
    write!(s, "POST /api/uploads HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {a}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n").unwrap();
    assert_eq!(read_one(&mut s, false).status, 411);
    // The quota: what is left, then past it (checked before the body).
    let filler = vec![b'x'; 250_000];
    assert_eq!(upload(p, &a, "f.txt", "text/plain", &filler).status, 201);
    let mut s = connect(p);
    write!(s, "POST /api/uploads HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {a}\r\nContent-Length: 250000\r\n\r\n").unwrap();
    let got = read_one(&mut s, false);
    assert_eq!(
        (got.status, got.json()["error"]["code"].as_str()),
        (413, Some("quota_exceeded"))
    );

    // An empty file; Expect: 100-continue is answered before the body.
    let got = upload(p, &a, "e.txt", "text/plain", b"");
    assert_eq!(got.status, 400);
    let b = register(p, "bob");
    let mut s = connect(p);
    write!(s, "POST /api/uploads?name=c.txt HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {b}\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n").unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").unwrap();
    assert_eq!(read_one(&mut s, false).status, 201);

    // Stalled bodies hold slots until they are cut off (408): two of
    // bob's, then his third is 503; alice's takes the shard's last slot,
    // then carol's is 503.
    let stall = |token: &str| {
        let mut s = connect(p);
        let raw = upload_request(token, "s.txt", "text/plain", &[b'y'; 1000]);
        s.write_all(&raw[..raw.len() - 500]).unwrap();
        s
    };
    let mut stalled = vec![stall(&b), stall(&b)];
    std::thread::sleep(Duration::from_millis(200));
    let got = upload(p, &b, "t.txt", "text/plain", b"hello");
    assert_eq!(
        (got.status, got.header("retry-after")),
        (503, "1"),
        "bob's third"
    );
    stalled.push(stall(&a));
    std::thread::sleep(Duration::from_millis(200));
    let c = register(p, "carol");
    let got = upload(p, &c, "t.txt", "text/plain", b"hello");
    assert_eq!(
        (got.status, got.header("retry-after")),
        (503, "1"),
        "the shard's slots"
    );
    let t0 = Instant::now();
    for s in &mut stalled {
        assert_eq!(read_one(s, false).status, 408);
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(
        upload(p, &c, "t.txt", "text/plain", b"hello").status,
        201,
        "free again"
    );

    // After an upload the connection serves the next request.
    let mut s = connect(p);
    let mut raw = upload_request(&b, "k.txt", "text/plain", b"kept alive");
    raw.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    s.write_all(&raw).unwrap();
    let got = read_one(&mut s, false);
    assert_eq!(got.status, 201);
    let kept = got.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        read_one(&mut s, false).status,
        200,
        "the pipelined request after it"
    );
    let got = get(p, &a, &format!("/api/uploads/{kept}"), "");
    assert_eq!((got.status, &got.body[..]), (200, &b"kept alive"[..]));
    assert_eq!(got.header("content-type"), "text/plain; charset=utf-8");
    assert_serving(p);

    // A message carries uploads (HTTP here; WebSocket `send` alike); a
    // page shows them; deleting the last message that carries one frees
    // it (its URL is then 404).
    let room = create_room(p, &b, "files", false);
    let kept_path = format!("/api/uploads/{kept}");
    let (s, v) = call(
        p,
        "POST",
        &format!("/api/rooms/{room}/messages"),
        Some(&b),
        Some(&serde_json::json!({"body": "", "files": [kept]})),
    );
    assert_eq!(s, 201, "{v}");
    let seq = v["seq"].as_u64().unwrap();
    let (s, v) = call(
        p,
        "POST",
        &format!("/api/rooms/{room}/messages"),
        Some(&b),
        Some(&serde_json::json!({"body": "x", "files": [html]})),
    );
    assert_eq!(s, 404, "another user's upload: {v}");
    let (s, v) = call(
        p,
        "POST",
        &format!("/api/rooms/{room}/messages"),
        Some(&b),
        Some(&serde_json::json!({"body": "x", "files": ["nope"]})),
    );
    assert_eq!(s, 400, "{v}");
    // An upload is removed by its owner while no message holds it: 409
    // while one does, 404 for another's (or one gone), 401 signed out.
    let remove = |token: Option<&str>, id: &str| {
        call(p, "DELETE", &format!("/api/uploads/{id}"), token, None)
    };
    let (s, v) = remove(Some(&b), &kept);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    assert_eq!(remove(Some(&b), &html).0, 404, "another user's");
    assert_eq!(remove(None, &html).0, 401);
    let (s, v) = remove(Some(&a), &html);
    assert_eq!((s, v["deleted"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(remove(Some(&a), &html).0, 404, "gone");
    assert_eq!(get(p, &a, &format!("/api/uploads/{html}"), "").status, 404);
    let (s, page) = call(
        p,
        "GET",
        &format!("/api/rooms/{room}/messages"),
        Some(&b),
        None,
    );
    assert_eq!(s, 200);
    assert_eq!(page["messages"][0]["files"][0]["id"], kept.as_str());
    assert_eq!(page["messages"][0]["files"][0]["url"], kept_path.as_str());
    let mut ws = tungstenite::client(format!("ws://127.0.0.1:{p}/ws?token={b}"), connect(p))
        .unwrap()
        .0;
    let frame = serde_json::json!({"type": "delete", "room": room, "seq": seq, "ref": 1});
    ws.send(tungstenite::Message::text(frame.to_string()))
        .unwrap();
    loop {
        let m = ws.read().unwrap();
        if let tungstenite::Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["ref"] == 1 {
                assert_eq!(v["type"], "ack", "{v}");
                break;
            }
        }
    }
    assert_eq!(
        get(p, &b, &kept_path, "").status,
        404,
        "freed with its last message"
    );
}

/// An avatar is an image you uploaded: your profile (and the directory)
/// then names it and links its thumbnail; while it is your avatar it
/// cannot be removed; anything else is refused.
#[test]
fn an_avatar_is_an_image_of_yours() {
    if single_process_only("uploads (node-local files)") {
        return;
    }
    let server = start(&["--shards", "1"]);
    let p = server.port;
    let (a, b) = (register(p, "alice"), register(p, "bob"));
    let id_of = |got: Got| {
        assert_eq!(got.status, 201, "{}", String::from_utf8_lossy(&got.body));
        got.json()["id"].as_str().unwrap().to_string()
    };
    let face = id_of(upload(p, &a, "me.png", "image/png", &png(64, 64)));
    let text = id_of(upload(p, &a, "t.txt", "text/plain", b"not a face"));
    let bobs = id_of(upload(p, &b, "bob.png", "image/png", &png(8, 8)));
    let set = |token: &str, avatar: &str| {
        let body = serde_json::json!({ "avatar": avatar });
        call(p, "PUT", "/api/me/profile", Some(token), Some(&body))
    };
    let (s, v) = set(&a, &text);
    assert_eq!(s, 400, "not an image: {v}");
    assert_eq!(set(&a, &bobs).0, 404, "another user's");
    assert_eq!(set(&a, "zz").0, 400, "not an id");
    let (s, v) = set(&a, &face);
    assert_eq!(s, 200, "{v}");
    let me = v["id"].as_u64().unwrap();
    let url = v["avatar_url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("/api/users/{me}/avatar?v=")),
        "{url}"
    );
    assert!(!url.contains(&face), "the upload's id is not told");
    // Seen by others, in the profile and the directory: the thumbnail.
    let (s, v) = call(p, "GET", &format!("/api/users/{me}"), Some(&b), None);
    assert_eq!((s, v["avatar_url"].as_str()), (200, Some(url.as_str())));
    assert_eq!(v.get("avatar"), None);
    let (s, v) = call(p, "GET", "/api/users?q=alice", Some(&b), None);
    assert_eq!(
        (s, v["users"][0]["avatar_url"].as_str()),
        (200, Some(url.as_str()))
    );
    let got = get(p, &b, &url, "");
    assert_eq!((got.status, got.header("content-type")), (200, "image/png"));
    let thumb = get(p, &b, &format!("/api/uploads/{face}/thumbnail"), "");
    assert_eq!(got.body, thumb.body, "the thumbnail, not the original");
    let bob_id = call(p, "GET", "/api/me", Some(&b), None).1["user"]
        .as_u64()
        .unwrap();
    assert_eq!(
        get(p, &a, &format!("/api/users/{bob_id}/avatar"), "").status,
        404
    );
    assert_eq!(get(p, &a, "/api/users/x/avatar", "").status, 400);
    // Held while it is the avatar; other profile edits keep it.
    let remove = |id: &str| call(p, "DELETE", &format!("/api/uploads/{id}"), Some(&a), None).0;
    assert_eq!(remove(&face), 409);
    let body = serde_json::json!({ "status": "here" });
    let (s, v) = call(p, "PUT", "/api/me/profile", Some(&a), Some(&body));
    assert_eq!((s, v["avatar_url"].as_str()), (200, Some(url.as_str())));
    // Cleared: no avatar, and the image is an upload like any other.
    let (s, v) = set(&a, "");
    assert_eq!((s, v["avatar_url"].is_null()), (200, true));
    assert_eq!(get(p, &b, &url, "").status, 404);
    assert_eq!(remove(&face), 200);
}
