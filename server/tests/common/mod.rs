//! Helpers shared by the end-to-end tests: the real binary on an
//! ephemeral port, raw TCP clients.
//!
//! With `ROOKERY_TEST_CLUSTER=1` every `start` is a cluster instead of one
//! process: three nodes (each with its own data directory) on a
//! three-server NATS cluster with JetStream, behind a front that hands
//! each new TCP connection to the next node in turn (round-robin, no
//! stickiness, bytes passed through untouched). `Server::port` is the
//! front's, so a suite runs unchanged: every `call` is a new connection
//! and so lands on the next node. The NATS cluster is shared by the tests
//! of one test binary; each `start` is a cluster of its own name on it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running server; killed on drop if a test did not stop it.
pub struct Server {
    /// The process (in cluster mode, node 1's).
    pub child: Child,
    /// Where clients connect (in cluster mode, the round-robin front).
    pub port: u16,
    pub _dir: tempfile::TempDir,
    /// In cluster mode, nodes 2 and 3 and the front.
    pub cluster: Option<Cluster>,
}

/// The rest of a test cluster.
pub struct Cluster {
    pub others: Vec<Child>,
    /// Every node's own port, node 1 first.
    pub node_ports: Vec<u16>,
    front: Front,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(cluster) = &mut self.cluster {
            for c in &mut cluster.others {
                let _ = c.kill();
                let _ = c.wait();
            }
            cluster.front.stop();
        }
    }
}

/// Whether `start` makes a three-node cluster (`ROOKERY_TEST_CLUSTER=1`).
pub fn clustered() -> bool {
    std::env::var("ROOKERY_TEST_CLUSTER").is_ok_and(|v| v == "1")
}

/// For a test of one process's own life (its signals, its data directory,
/// its restart): true, saying so, when the suite runs against a cluster,
/// where the test does not apply and the caller returns. The cluster's
/// own tests (`tests/cluster.rs`) kill and restart nodes.
pub fn single_process_only(what: &str) -> bool {
    if clustered() {
        eprintln!("not run against a cluster: {what} is one process's own");
    }
    clustered()
}

/// A port nothing listens on now, and that this process has not handed
/// out before (two tests running at once must not get the same one).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Starts the server in a new temporary data directory. Send limits are
/// lifted (through their environment twins, so a test's flags win).
pub fn start(extra: &[&str]) -> Server {
    if clustered() {
        return start_cluster(extra);
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A port free when chosen may be taken before the server binds it (by
    // another process, or a client socket's ephemeral port): the server
    // then exits at once, and is started again on another.
    for _ in 0..5 {
        let (mut child, port) = spawn_in(&data, free_port(), extra);
        if ready_or_exited(port, &mut child) {
            return Server {
                child,
                port,
                _dir: dir,
                cluster: None,
            };
        }
    }
    panic!("the server did not start on any of five ports");
}

/// Waits until the server on `port` is ready (true) or has exited
/// (false); panics if it does neither within 20 s.
fn ready_or_exited(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if is_ready(port) {
            return true;
        }
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        assert!(Instant::now() < deadline, "the server did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_ready(port: u16) -> bool {
    exchange(
        port,
        b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .is_ok_and(|resp| resp.starts_with("HTTP/1.1 200"))
}

/// Three nodes of a new cluster (a name of its own on the shared NATS),
/// each started with `extra`, behind a round-robin front.
fn start_cluster(extra: &[&str]) -> Server {
    static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "t{}-{}",
        std::process::id(),
        CLUSTERS.fetch_add(1, Ordering::Relaxed)
    );
    let nats = shared_nats();
    let dir = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    let mut node_ports = Vec::new();
    for id in ["1", "2", "3"] {
        let mut args = vec![
            "--nats",
            nats,
            "--node-id",
            id,
            "--cluster-nodes",
            "1,2,3",
            "--cluster-name",
            &name,
            // A loaded test machine may keep JetStream busy for seconds.
            "--cluster-connect-timeout-ms",
            "30000",
        ];
        args.extend_from_slice(extra);
        let port = free_port();
        let data = dir.path().join(format!("node-{id}"));
        children.push(spawn_in(&data, port, &args).0);
        node_ports.push(port);
    }
    for port in &node_ports {
        wait_ready(*port);
    }
    let front = Front::start(node_ports.clone());
    let port = front.port;
    FRONTS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(port, node_ports.clone());
    let child = children.remove(0);
    Server {
        child,
        port,
        _dir: dir,
        cluster: Some(Cluster {
            others: children,
            node_ports,
            front,
        }),
    }
}

/// Front port → the node ports behind it, for helpers that read each
/// node (`metric` sums a counter over the cluster).
static FRONTS: Mutex<Option<HashMap<u16, Vec<u16>>>> = Mutex::new(None);

/// The node ports behind `port`, or `port` itself.
pub fn node_ports(port: u16) -> Vec<u16> {
    FRONTS
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(&port).cloned())
        .unwrap_or_else(|| vec![port])
}

/// The client URLs of a three-server NATS cluster with JetStream started
/// once per test binary. Its keeper thread never returns, and the servers
/// die with the process that started them (`testing::Nats` asks the
/// kernel to kill them when their parent thread goes).
fn shared_nats() -> &'static str {
    static URLS: OnceLock<String> = OnceLock::new();
    URLS.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("nats-keeper".into())
            .spawn(move || {
                let nats = rookery_cluster::testing::Nats::start(3);
                tx.send(nats.urls().join(",")).unwrap();
                loop {
                    std::thread::park();
                }
            })
            .unwrap();
        rx.recv().expect("the NATS cluster did not start")
    })
}

/// A TCP front on loopback that hands each accepted connection to the
/// next node in turn and copies bytes both ways, passing a half-close on.
struct Front {
    port: u16,
    stopped: Arc<AtomicBool>,
}

impl Front {
    fn start(nodes: Vec<u16>) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stopped = Arc::new(AtomicBool::new(false));
        let stop = stopped.clone();
        std::thread::spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = conn else { continue };
                match TcpStream::connect(("127.0.0.1", nodes[i % nodes.len()])) {
                    Ok(node) => pipe(client, node),
                    Err(_) => drop(client),
                }
            }
        });
        Front { port, stopped }
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(fronts) = FRONTS.lock().unwrap().as_mut() {
            fronts.remove(&self.port);
        }
    }
}

/// Copies `a` to `b` and `b` to `a` on two threads until each side ends.
fn pipe(a: TcpStream, b: TcpStream) {
    let _ = (a.set_nodelay(true), b.set_nodelay(true));
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    std::thread::spawn(move || copy_then_close(a, b));
    std::thread::spawn(move || copy_then_close(b2, a2));
}

fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) if to.write_all(&buf[..n]).is_ok() => {}
            // A reset or a write to a gone peer: end both directions.
            _ => {
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
        }
    }
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

/// `server`'s data directory served again by a new process on a new port,
/// once ready (after the test stopped or killed `server`'s process, which
/// keeps the directory).
pub fn restart(server: &Server, extra: &[&str]) -> Server {
    let data = server._dir.path().join("data");
    let (child, port) = spawn_in(&data, free_port(), extra);
    wait_ready(port);
    Server {
        child,
        port,
        _dir: tempfile::tempdir().unwrap(),
        cluster: None,
    }
}

/// Waits until `/readyz` answers 200.
pub fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_ready(port) {
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

/// `POST /api/register` of `name` with `password`: the status and body.
pub fn try_register(port: u16, name: &str, password: &str) -> (u16, serde_json::Value) {
    call(
        port,
        "POST",
        "/api/register",
        None,
        Some(&serde_json::json!({"name": name, "password": password})),
    )
}

/// Registers `name` (password `pw-secret`); its session token.
pub fn register(port: u16, name: &str) -> String {
    let (s, v) = try_register(port, name, "pw-secret");
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
/// Against a cluster, the sum over the nodes that have it.
pub fn metric(port: u16, name: &str) -> f64 {
    let found: Vec<f64> = node_ports(port)
        .into_iter()
        .filter_map(|node| node_metric(node, name))
        .collect();
    assert!(!found.is_empty(), "no metric {name}");
    found.into_iter().sum()
}

fn node_metric(port: u16, name: &str) -> Option<f64> {
    let resp = exchange(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    resp.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
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
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        RawWs::upgrade(s, path, extra)
    }

    /// [`RawWs::connect`] on a socket whose receive buffer is
    /// `rcvbuf_bytes` (set before connecting, so the window stays small):
    /// a reader that stops reading holds up the server sooner.
    pub fn connect_small(port: u16, path: &str, rcvbuf_bytes: usize) -> (RawWs, String) {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(rcvbuf_bytes).unwrap();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        sock.connect(&addr.into()).unwrap();
        RawWs::upgrade(sock.into(), path, "")
    }

    fn upgrade(mut s: TcpStream, path: &str, extra: &str) -> (RawWs, String) {
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

/// The next JSON text frame (pings skipped); `None` once closed (the close
/// frame's payload is then in `ws.closed`).
pub fn next_json(ws: &mut RawWs) -> Option<serde_json::Value> {
    loop {
        let f = ws.read_frame()?;
        match f.opcode {
            0x1 => return Some(serde_json::from_slice(&f.payload).unwrap()),
            0x8 => {
                ws.closed = Some(f.payload);
                return None;
            }
            _ => continue,
        }
    }
}

/// The close frame's code and reason, reading past other frames.
pub fn closed_with(ws: &mut RawWs) -> (u16, String) {
    while next_json(ws).is_some() {}
    let payload = ws.closed.take().expect("a close frame");
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    (code, String::from_utf8_lossy(&payload[2..]).into_owned())
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
