//! TLS on the listener (`--tls-cert`, `--tls-key`; issue 17, item 3)
//! through the binary, with real clients: curl over HTTPS and Python's
//! `websockets` over `wss://` (from the venv tools/test.sh makes), a
//! certificate made by the test itself, swapped on SIGHUP while a
//! connection stays open; bad files refused at start; clients that speak
//! plain HTTP, send garbage or never finish a handshake closed while the
//! server keeps serving.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A self-signed certificate for `localhost` and 127.0.0.1 and its key,
/// written as `{name}.pem` and `{name}-key.pem` in `dir`.
fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("a certificate");
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A server process, killed when dropped (a failed test leaves none
/// behind).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TLS server on a free port, its files in `dir`; waits until it
/// answers `/readyz` over HTTPS.
fn start_tls(dir: &Path, cert: &Path, key: &Path, extra: &[&str]) -> (Running, u16) {
    for _ in 0..5 {
        let mut args = vec![
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (mut child, port) = spawn_in(&dir.join("data"), free_port(), &args);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if curl(port, cert, "GET", "/readyz", None, None).0 == 200 {
                return (Running(child), port);
            }
            if child.try_wait().unwrap().is_some() {
                break; // the port was taken meanwhile: another one
            }
            assert!(
                Instant::now() < deadline,
                "the TLS server did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("the TLS server did not start on any of five ports");
}

/// A TLS server with a certificate of its own (`a.pem`), and what it
/// was started with.
struct TlsServer {
    /// The certificate and the data directory: bind it, or they are gone.
    _dir: tempfile::TempDir,
    cert: PathBuf,
    child: Running,
    port: u16,
}

/// [`start_tls`] with `extra` in a directory of its own; `None` against a
/// cluster (these tests are of one process's listener).
fn tls_server(extra: &[&str]) -> Option<TlsServer> {
    if single_process_only("a listener's TLS files") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path(), "a");
    let (child, port) = start_tls(dir.path(), &cert, &key, extra);
    Some(TlsServer {
        _dir: dir,
        cert,
        child,
        port,
    })
}

/// One HTTPS request with curl, trusting only `ca`: (status, body); status
/// 0 when curl could not make it (the certificate refused, say).
fn curl(
    port: u16,
    ca: &Path,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-m",
        "10",
        "-X",
        method,
        "--cacert",
        ca.to_str().unwrap(),
    ])
    .args(["-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "-d", &b.to_string()]);
    }
    let out = cmd
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl runs (tools/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn register_tls(port: u16, ca: &Path, name: &str) -> String {
    let body = json!({"name": name, "password": "correct horse battery staple"});
    let (s, text) = curl(port, ca, "POST", "/api/register", None, Some(&body));
    assert_eq!(s, 201, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// The venv's Python, with `websockets`.
fn python() -> PathBuf {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/nats-venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: tools/test.sh makes it (python3 -m venv, pip install websockets)",
        py.display()
    );
    py
}

/// A Python `websockets` client over `wss://`: it joins `room`, sends
/// `n` messages of 2 KiB at once, waits for their acks and their events,
/// then a second connection replays the room from the start; prints what
/// each saw, as JSON.
const WSS_ROUND: &str = r#"
import asyncio, json, socket, ssl, sys
import websockets
port, ca, token, room, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
url = f"wss://localhost:{port}/ws?token={token}"
async def frames(ws, want, *kinds):
    got = {k: [] for k in kinds}
    while any(len(v) < want for v in got.values()):
        f = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if f.get("type") in got:
            got[f["type"]].append(f)
    return [got[k] for k in kinds]
async def main():
    async with websockets.connect(url, ssl=ctx, max_size=None, compression=None) as ws:
        hello = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "join", "room": room}))
        await frames(ws, 1, "joined")
        for i in range(n):
            await ws.send(json.dumps({"type": "send", "room": room, "client_id": f"c{i}", "body": f"{i:04d}" + "x" * 2044}))
        acks, live = await frames(ws, n, "ack", "msg")
    # A small receive buffer: the replay fills the socket at once.
    small = socket.socket()
    small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    small.connect(("127.0.0.1", int(port)))
    async with websockets.connect(url, ssl=ctx, max_size=None, compression=None, sock=small, server_hostname="localhost") as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "join", "room": room, "since": 0}))
        # Not read for a while: the socket fills, and the server's sealed
        # output waits for it.
        await asyncio.sleep(1)
        [replay] = await frames(ws, n, "msg")
    print(json.dumps({"hello": hello["type"], "acks": len(acks),
        "live": [int(m["body"][:4]) for m in live],
        "replay": [int(m["body"][:4]) for m in replay]}))
asyncio.run(main())
"#;

#[test]
fn https_and_wss_serve_real_clients() {
    let Some(TlsServer {
        cert,
        mut child,
        port,
        _dir,
    }) = tls_server(&[])
    else {
        return;
    };
    let (s, body) = curl(port, &cert, "GET", "/healthz", None, None);
    assert_eq!((s, body.as_str()), (200, r#"{"status":"ok"}"#));
    let token = register_tls(port, &cert, "tess");
    let (s, text) = curl(port, &cert, "GET", "/api/me", Some(&token), None);
    assert_eq!(s, 200, "{text}");
    let body = json!({"name": "secure"});
    let (s, text) = curl(port, &cert, "POST", "/api/rooms", Some(&token), Some(&body));
    assert_eq!(s, 201, "{text}");
    let room = serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_u64()
        .unwrap();
    // 1,500 messages of 2 KiB, live and replayed to a reader that stops
    // reading a while: 3 MiB, more than the socket holds, so that the
    // sealed rest waits for it and follows in order.
    let out = Command::new(python())
        .args([
            "-c",
            WSS_ROUND,
            &port.to_string(),
            cert.to_str().unwrap(),
            &token,
        ])
        .args([room.to_string(), "1500".into()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let all: Vec<u64> = (0..1500).collect();
    assert_eq!(
        (v["hello"].as_str(), v["acks"].as_u64()),
        (Some("hello"), Some(1500)),
        "{v}"
    );
    assert_eq!(v["live"], json!(all), "every message live, once, in order");
    assert_eq!(
        v["replay"],
        json!(all),
        "every message replayed, once, in order"
    );
    // The certificate is checked: a client that does not trust it fails.
    let untrusted = Command::new("curl")
        .args([
            "-sS",
            "-m",
            "10",
            &format!("https://localhost:{port}/healthz"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        untrusted.status.code(),
        Some(60),
        "curl: certificate not trusted"
    );
    assert!(child.0.try_wait().unwrap().is_none(), "still running");
}

#[test]
fn plain_http_is_redirected_to_https_when_asked() {
    let plain = free_port();
    let from = format!("127.0.0.1:{plain}");
    let Some(TlsServer {
        cert,
        mut child,
        port,
        _dir,
    }) = tls_server(&["--tls-redirect-from", &from])
    else {
        return;
    };
    let head = exchange(
        plain,
        format!("GET /api/rooms?after=3 HTTP/1.1\r\nHost: localhost:{plain}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 308"), "{head}");
    let location = format!("location: https://localhost:{port}/api/rooms?after=3\r\n");
    assert!(head.contains(&location), "{head}");
    // curl follows it, over HTTPS (the API answers 401 without a token).
    let out = Command::new("curl")
        .args([
            "-sS",
            "-L",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{url_effective}",
        ])
        .args(["--cacert", cert.to_str().unwrap()])
        .arg(format!("http://localhost:{plain}/api/me"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(said, format!("401 https://localhost:{port}/api/me"));
    // A Host that is no host sends nobody anywhere.
    let head = exchange(plain, b"GET / HTTP/1.1\r\nHost: evil.com/x\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(!head.contains("location"), "{head}");
    assert!(child.0.try_wait().unwrap().is_none(), "still running");
}

#[test]
fn plain_garbage_and_silent_clients_are_closed_and_the_server_keeps_serving() {
    let Some(TlsServer {
        cert,
        mut child,
        port,
        _dir,
    }) = tls_server(&["--http-request-timeout-ms", "1000"])
    else {
        return;
    };
    // Plain HTTP on the TLS port: no answer in plain text, the socket
    // closed (with a TLS alert at most).
    let answer = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap_or_default();
    assert!(!answer.contains("HTTP/1.1"), "{answer:?}");
    // Garbage that is no TLS record.
    let answer = exchange(port, &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5]).unwrap_or_default();
    assert!(!answer.contains("HTTP/1.1"), "{answer:?}");
    // A client that opens and says nothing is closed by the request
    // deadline (it holds no handshake state longer).
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let began = Instant::now();
    let mut sink = [0u8; 64];
    let n = silent.read(&mut sink).unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    // A handshake begun and never finished: the same deadline.
    let mut half = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x00, 0x40]).unwrap(); // a record header, no body
    half.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let began = Instant::now();
    let _ = half.read(&mut sink);
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    // Still serving.
    assert_eq!(curl(port, &cert, "GET", "/healthz", None, None).0, 200);
    assert!(child.0.try_wait().unwrap().is_none(), "still running");
}

/// Holds one `wss://` connection open; on each line of its stdin sends a
/// message and prints its ack's seq.
const WSS_HOLD: &str = r#"
import asyncio, json, ssl, sys
import websockets
port, ca, token, room = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
async def main():
    ctx = ssl.create_default_context(cafile=ca)
    async with websockets.connect(f"wss://localhost:{port}/ws?token={token}", ssl=ctx) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "join", "room": room}))
        print("open", flush=True)
        loop = asyncio.get_running_loop()
        i = 0
        while (line := await loop.run_in_executor(None, sys.stdin.readline)):
            i += 1
            await ws.send(json.dumps({"type": "send", "room": room, "client_id": f"h{i}", "body": line.strip()}))
            while True:
                f = json.loads(await asyncio.wait_for(ws.recv(), 20))
                if f.get("type") == "ack":
                    print("ack", f["seq"], flush=True)
                    break
asyncio.run(main())
"#;

#[test]
fn sighup_swaps_the_certificate_and_open_connections_stay() {
    if single_process_only("its signals") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path(), "served");
    let first = dir.path().join("first.pem");
    std::fs::copy(&cert, &first).unwrap();
    let (mut child, port) = start_tls(dir.path(), &cert, &key, &[]);
    let token = register_tls(port, &cert, "holder");
    let body = json!({"name": "kept"});
    let (s, text) = curl(
        port,
        &first,
        "POST",
        "/api/rooms",
        Some(&token),
        Some(&body),
    );
    assert_eq!(s, 201, "{text}");
    let room = serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_u64()
        .unwrap();
    let mut held = Command::new(python())
        .args([
            "-c",
            WSS_HOLD,
            &port.to_string(),
            first.to_str().unwrap(),
            &token,
        ])
        .arg(room.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(held.stdout.take().unwrap()).lines();
    assert_eq!(said.next().unwrap().unwrap(), "open");
    // A new pair in the same files, and SIGHUP.
    let next_dir = tempfile::tempdir().unwrap();
    let (next_cert, next_key) = make_cert(next_dir.path(), "next");
    std::fs::copy(&next_cert, &cert).unwrap();
    std::fs::copy(&next_key, &key).unwrap();
    let hup = |child: &Running| unsafe { libc::kill(child.0.id() as i32, libc::SIGHUP) };
    assert_eq!(hup(&child), 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl(port, &next_cert, "GET", "/healthz", None, None).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        curl(port, &first, "GET", "/healthz", None, None).0,
        0,
        "the old one is gone"
    );
    // The connection made before the swap still works.
    let mut to_held = held.stdin.take().unwrap();
    writeln!(to_held, "after the swap").unwrap();
    assert_eq!(said.next().unwrap().unwrap(), "ack 1");
    // A bad file on SIGHUP keeps the pair that serves.
    std::fs::write(&cert, "not a certificate").unwrap();
    assert_eq!(hup(&child), 0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(curl(port, &next_cert, "GET", "/healthz", None, None).0, 200);
    writeln!(to_held, "still here").unwrap();
    assert_eq!(said.next().unwrap().unwrap(), "ack 2");
    drop(to_held);
    assert!(held.wait().unwrap().success());
    assert!(child.0.try_wait().unwrap().is_none(), "still running");
}

#[test]
fn bad_tls_files_stop_the_start_with_one_line() {
    if single_process_only("a start-up error") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path(), "a");
    let (other_cert, _) = make_cert(dir.path(), "b");
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN NOTHING-----\n").unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--tls-cert".into(), s(&cert)], "--tls-key"),
        (vec!["--tls-key".into(), s(&key)], "--tls-cert"),
        (
            vec![
                "--tls-cert".into(),
                s(&missing),
                "--tls-key".into(),
                s(&key),
            ],
            "--tls-cert",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&garbage),
                "--tls-key".into(),
                s(&key),
            ],
            "--tls-cert",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&cert),
                "--tls-key".into(),
                s(&garbage),
            ],
            "--tls-key",
        ),
        // A key that is not the certificate's.
        (
            vec![
                "--tls-cert".into(),
                s(&other_cert),
                "--tls-key".into(),
                s(&key),
            ],
            "--tls-key",
        ),
    ];
    for (args, names) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_rookery"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(names), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        if !names.is_empty() && args.len() == 4 {
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        }
    }
}

/// A client past its address's connection limit that completes a
/// handshake and then breaks its TLS session is closed unanswered: the
/// shard goes on serving (it once looped on the broken session).
#[test]
fn a_broken_session_past_the_connection_limit_is_closed_and_the_shard_serves_on() {
    let Some(TlsServer {
        cert,
        mut child,
        port,
        _dir,
    }) = tls_server(&["--connections-per-ip-max", "1", "--shards", "1"])
    else {
        return;
    };
    // The one connection the address may have, held open.
    let _held = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)] // ring: as the server (src/tls.rs)
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = "localhost".try_into().unwrap();
    let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut sock)
            .expect("the over-limit connection's handshake");
    }
    // A record that is no valid ciphertext: the session fails.
    sock.write_all(&[0x17, 0x03, 0x03, 0x00, 0x20]).unwrap();
    sock.write_all(&[0xab; 0x20]).unwrap();
    let mut sink = [0u8; 256];
    let began = Instant::now();
    while matches!(sock.read(&mut sink), Ok(n) if n > 0) {}
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    drop(_held);
    // The one shard still serves.
    let deadline = Instant::now() + Duration::from_secs(5);
    while curl(port, &cert, "GET", "/healthz", None, None).0 != 200 {
        assert!(Instant::now() < deadline, "the shard stopped serving");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(child.0.try_wait().unwrap().is_none(), "still running");
}
