//! Helpers shared by the end-to-end tests: the real binary on an
//! ephemeral port, raw TCP clients.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server; killed on drop if a test did not stop it.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the server in a new temporary data directory. Send limits are
/// lifted (through their environment twins, so a test's flags win).
pub fn start(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (child, port) = spawn_in(&data, free_port(), extra);
    let server = Server {
        child,
        port,
        _dir: dir,
    };
    wait_ready(port);
    server
}

/// Starts the binary on `port` with data in `data`.
/// Two shards and `none` durability unless `extra` says otherwise.
pub fn spawn_in(data: &std::path::Path, port: u16, extra: &[&str]) -> (Child, u16) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rookery"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", data.to_str().unwrap()]);
    for (flag, default) in [("--shards", "2"), ("--durability", "none")] {
        if !extra.contains(&flag) {
            cmd.args([flag, default]);
        }
    }
    let child = cmd
        .args(extra)
        .env("RUST_LOG", "warn")
        .env("ROOKERY_SENDS_PER_USER_PER_S", "1000000")
        .env("ROOKERY_SENDS_PER_USER_BURST", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    (child, port)
}

/// Waits until `/readyz` answers 200.
pub fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = exchange(
            port,
            b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        ) {
            if resp.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the server did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends `raw` on a new connection and reads until the server closes it.
pub fn exchange(port: u16, raw: &[u8]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(raw)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Reads one response (head + `content-length` body) from a kept-alive
/// connection.
pub fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed mid-head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    head + &String::from_utf8(body).unwrap()
}

pub fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub fn assert_serving(port: u16) {
    let resp = exchange(
        port,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(resp.ends_with("{\"status\":\"ok\"}"), "{resp}");
}

/// Sends one JSON request (with a bearer token if given) on a new
/// connection; returns the status and the parsed body.
pub fn call(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let resp = exchange(port, raw.as_bytes()).unwrap();
    let json = resp
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    (status(&resp), json)
}

/// The value of header `name` (lower case) in a raw response.
pub fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

/// A GET with a bearer token and extra header lines; the raw response.
pub fn get_raw(port: u16, path: &str, token: &str, extra: &str) -> String {
    let raw = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n{extra}\r\n"
    );
    exchange(port, raw.as_bytes()).unwrap()
}

/// Registers `name` (password `pw`); its session token.
pub fn register(port: u16, name: &str) -> String {
    let (s, v) = call(
        port,
        "POST",
        "/api/register",
        None,
        Some(&serde_json::json!({"name": name, "password": "pw"})),
    );
    assert_eq!(s, 201, "{v}");
    v["token"].as_str().unwrap().to_string()
}

/// Creates a room as the holder of `token`; its id.
pub fn create_room(port: u16, token: &str, name: &str, private: bool) -> u64 {
    let (s, v) = call(
        port,
        "POST",
        "/api/rooms",
        Some(token),
        Some(&serde_json::json!({"name": name, "private": private})),
    );
    assert_eq!(s, 201, "{v}");
    v["id"].as_u64().unwrap()
}

/// The value of one unlabelled metric (or the first sample whose line
/// starts with `name`), from `/metrics`.
pub fn metric(port: u16, name: &str) -> f64 {
    let resp = exchange(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    resp.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// A WebSocket client on a raw socket, for what client libraries will not
/// do: permessage-deflate by hand, reserved bits, exact frames.
pub struct RawWs {
    pub s: TcpStream,
    buf: Vec<u8>,
    /// The payload of the close frame a helper read, if one did.
    pub closed: Option<Vec<u8>>,
}

/// One frame as received.
#[derive(Debug)]
pub struct RawFrame {
    pub fin: bool,
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawWs {
    /// Upgrades on `path` with extra header lines; the client and the
    /// response head.
    pub fn connect(port: u16, path: &str, extra: &str) -> (RawWs, String) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let ws = RawWs {
            s,
            buf: Vec::new(),
            closed: None,
        };
        (ws, head)
    }

    /// Sends one masked frame.
    pub fn write_frame(&mut self, opcode: u8, payload: &[u8], fin: bool, rsv1: bool) {
        self.try_write_frame(opcode, payload, fin, rsv1).unwrap();
    }

    /// Sends one masked frame; the error if the connection is gone.
    pub fn try_write_frame(
        &mut self,
        opcode: u8,
        payload: &[u8],
        fin: bool,
        rsv1: bool,
    ) -> std::io::Result<()> {
        let mut f = vec![opcode | if fin { 0x80 } else { 0 } | if rsv1 { 0x40 } else { 0 }];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s.write_all(&f)
    }

    /// The next frame from the server; `None` at end of stream.
    pub fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// An unmasked server frame at the start of `b`, and its length.
fn parse_server_frame(b: &[u8]) -> Option<(RawFrame, usize)> {
    if b.len() < 2 {
        return None;
    }
    let (mut at, len) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
        127 if b.len() >= 10 => (
            10,
            u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
        ),
        126 | 127 => return None,
        n => (2, n as usize),
    };
    assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
    if b.len() < at + len {
        return None;
    }
    let frame = RawFrame {
        fin: b[0] & 0x80 != 0,
        rsv1: b[0] & 0x40 != 0,
        opcode: b[0] & 0x0f,
        payload: b[at..at + len].to_vec(),
    };
    at += len;
    Some((frame, at))
}

/// The next JSON text frame, skipping pings.
pub fn next_text_json(ws: &mut RawWs) -> serde_json::Value {
    loop {
        let f = ws.read_frame().expect("connection open");
        if f.opcode == 0x1 {
            return serde_json::from_slice(&f.payload).unwrap();
        }
    }
}

/// Sends one JSON text frame.
pub fn send_json(ws: &mut RawWs, v: serde_json::Value) {
    ws.write_frame(0x1, v.to_string().as_bytes(), true, false);
}

/// Every message of `room`, oldest first, through the history API.
pub fn all_messages(port: u16, token: &str, room: u64) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("/api/rooms/{room}/messages?after={after}&limit=200");
        let (s, page) = call(port, "GET", &path, Some(token), None);
        assert_eq!(s, 200, "{page}");
        let batch = page["messages"].as_array().unwrap().clone();
        if batch.is_empty() {
            return out;
        }
        after = batch.last().unwrap()["seq"].as_u64().unwrap();
        out.extend(batch);
    }
}

/// Waits until `port` could be listened on again by a server (the kernel
/// tears a killed process's io_uring rings, and the listeners they hold,
/// down a moment after the process is gone); connections in TIME_WAIT do
/// not count, as they do not for the server.
pub fn wait_port_free(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let bindable = || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        s.bind(&addr.into()).is_ok()
    };
    while !bindable() {
        assert!(Instant::now() < deadline, "port {port} stays taken");
        std::thread::sleep(Duration::from_millis(10));
    }
}
