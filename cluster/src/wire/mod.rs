//! A shard's own NATS connection for the hot path (room events, the
//! requests of clients to rooms' owners): core NATS spoken by the shard's
//! glommio executor itself, with no thread between the shard and its
//! socket.
//!
//! Why not `async-nats` here: it needs tokio, so it runs on the link's
//! thread ([`crate::Link`]), and every message to or from a shard crosses
//! that thread: one wake-up more each way. Measured on the 2-vCPU VM
//! (docs/cluster.md), a message from one client's thread to another's
//! through two NATS servers took 73–88 µs at p50 on plain sockets,
//! 121–141 µs from shard to shard through two links, and 95 µs through
//! two wires; a cross-node delivery crosses NATS once or twice. The protocol this needs is small
//! (`proto.rs`); JetStream, key-value buckets and everything else stay on
//! the link.
//!
//! Invariants: one connection at a time, to one server of the list,
//! replaced when it fails (every subscription sent again first); bytes of
//! one publish are never split across connections, and publishes leave in
//! the order they were made; what waits to be written is bounded
//! (`out_bytes_max`); a publish made while disconnected, or past that
//! bound, is dropped and counted (core NATS is at-most-once: receivers
//! fill gaps); a request made while disconnected fails at once.

pub mod proto;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::error::{Error, Result};
use crate::link::Incoming;
use proto::{write, ServerOp};

/// Messages of one subscription waiting for its reader, at most; past it
/// they are dropped and counted.
const INCOMING_MAX: usize = 8192;
/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// How long connecting to one server (and its first `INFO`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after every server of the list failed, doubling up to the max.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);
/// How often the server is pinged; two pings unanswered end the
/// connection (a server that stopped without closing its sockets).
const PING_INTERVAL: Duration = Duration::from_secs(2);
const PINGS_OUT_MAX: u32 = 2;
/// A payload the server may send, at most, before it said its own limit.
const PAYLOAD_MAX_DEFAULT: usize = 1 << 20;

/// What a node's wires count, summed over its shards (for `/metrics`).
#[derive(Debug, Default)]
pub struct WireCounters {
    /// Messages of subscriptions dropped because their reader was behind.
    pub dropped: AtomicU64,
    /// Publishes dropped: disconnected, over the output bound, or over
    /// the server's `max_payload`.
    pub unsent: AtomicU64,
    /// Connections made (the first and every reconnection).
    pub connects: AtomicU64,
}

/// A NATS server to connect to, from `nats://[user:pass@|token@]host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Server {
    addr: String,
    user: Option<String>,
    pass: Option<String>,
    token: Option<String>,
}

impl Server {
    fn parse(url: &str) -> Option<Server> {
        let rest = match url.split_once("://") {
            Some(("nats", rest)) => rest,
            Some(_) => return None,
            None => url,
        };
        let (auth, addr) = match rest.rsplit_once('@') {
            Some((auth, addr)) => (Some(auth), addr),
            None => (None, rest),
        };
        let addr = addr.trim_end_matches('/');
        let addr = if addr.contains(':') {
            addr.to_string()
        } else {
            format!("{addr}:4222")
        };
        let (mut user, mut pass, mut token) = (None, None, None);
        match auth.map(|a| a.split_once(':')) {
            Some(Some((u, p))) => (user, pass) = (Some(u.to_string()), Some(p.to_string())),
            Some(None) => token = auth.map(str::to_string),
            None => {}
        }
        Some(Server {
            addr,
            user,
            pass,
            token,
        })
    }

    fn connect_json(&self, name: &str) -> String {
        let mut o = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "lang": "rust-rookery-wire",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "headers": true,
            "no_responders": true,
            "name": name,
        });
        if let (Some(u), Some(p)) = (&self.user, &self.pass) {
            o["user"] = u.clone().into();
            o["pass"] = p.clone().into();
        }
        if let Some(t) = &self.token {
            o["auth_token"] = t.clone().into();
        }
        o.to_string()
    }
}

/// A subscription of a wire: its messages on a channel. Dropping it
/// unsubscribes.
pub struct WireSub {
    pub messages: flume::Receiver<Incoming>,
    sid: u64,
    wire: Weak<Inner>,
}

impl Drop for WireSub {
    fn drop(&mut self) {
        if let Some(inner) = self.wire.upgrade() {
            inner.subs.borrow_mut().remove(&self.sid);
            if inner.connected.get() {
                write::unsubscribe(&mut inner.out.borrow_mut(), self.sid);
                inner.kick();
            }
        }
    }
}

struct SubEntry {
    subject: String,
    queue: Option<String>,
    sink: flume::Sender<Incoming>,
}

struct Inner {
    servers: Vec<Server>,
    name: String,
    out_bytes_max: usize,
    counters: Arc<WireCounters>,
    /// Bytes for the current connection, not yet written.
    out: RefCell<Vec<u8>>,
    /// Wakes the writer (bounded at one: a pending wake is enough).
    wake_tx: flume::Sender<()>,
    wake_rx: flume::Receiver<()>,
    connected: Cell<bool>,
    /// The server's `max_payload`.
    payload_max: Cell<usize>,
    subs: RefCell<HashMap<u64, SubEntry>>,
    next_sid: Cell<u64>,
    /// This wire's reply subjects: `{inbox}.{token}`.
    inbox: String,
    next_token: Cell<u64>,
    waiting: RefCell<HashMap<u64, flume::Sender<Result<Bytes>>>>,
    stopped: Cell<bool>,
}

/// A shard's NATS connection; see the module's doc. Clones share it.
#[derive(Clone)]
pub struct Wire {
    inner: Rc<Inner>,
}

/// The subscription id of the wire's inbox (its replies).
const INBOX_SID: u64 = 1;

impl Wire {
    /// Whether a wire can speak to these servers: plain `nats://` (or no
    /// scheme) only; TLS is left to the link.
    pub fn supports(servers: &[String]) -> bool {
        !servers.is_empty() && servers.iter().all(|s| Server::parse(s).is_some())
    }

    /// A wire to one of `servers` (tried in turn, from `first`), connected
    /// and kept connected by a task on the current glommio executor until
    /// [`Wire::stop`]. Returns at once; until connected, publishes are
    /// dropped and requests fail.
    pub fn start(
        servers: &[String],
        first: usize,
        name: String,
        out_bytes_max: usize,
        counters: Arc<WireCounters>,
    ) -> Result<Wire> {
        let mut servers: Vec<Server> = servers
            .iter()
            .map(|s| {
                Server::parse(s)
                    .ok_or_else(|| Error::InvalidConfig(format!("a wire cannot reach {s}")))
            })
            .collect::<Result<_>>()?;
        if servers.is_empty() {
            return Err(Error::InvalidConfig("no NATS server".into()));
        }
        let turn = first % servers.len();
        servers.rotate_left(turn);
        let (wake_tx, wake_rx) = flume::bounded(1);
        let inbox = format!("_INBOX.{}", unique_token());
        let inner = Rc::new(Inner {
            servers,
            name,
            out_bytes_max,
            counters,
            out: RefCell::new(Vec::new()),
            wake_tx,
            wake_rx,
            connected: Cell::new(false),
            payload_max: Cell::new(PAYLOAD_MAX_DEFAULT),
            subs: RefCell::new(HashMap::new()),
            next_sid: Cell::new(INBOX_SID + 1),
            inbox,
            next_token: Cell::new(1),
            waiting: RefCell::new(HashMap::new()),
            stopped: Cell::new(false),
        });
        glommio::spawn_local(run(Rc::downgrade(&inner))).detach();
        Ok(Wire { inner })
    }

    /// The largest payload the server takes (its `max_payload`; 1 MiB
    /// until it has said).
    pub fn payload_max(&self) -> usize {
        self.inner.payload_max.get()
    }

    /// Whether the wire is connected now.
    pub fn connected(&self) -> bool {
        self.inner.connected.get()
    }

    /// Ends the connection and its task; pending requests fail.
    pub fn stop(&self) {
        self.inner.stopped.set(true);
        self.inner.kick();
    }

    /// Publishes without waiting: false (and counted) when it is dropped:
    /// disconnected, over the output bound, or larger than the server
    /// takes. At most once, like all of core NATS.
    pub fn publish(&self, subject: &str, payload: &[u8]) -> bool {
        self.inner.publish(subject, None, payload)
    }

    /// Subscribes to `subject` (in queue group `queue`, if given): its
    /// messages arrive on the returned channel, in order. Sent at once if
    /// connected, and again after every reconnection.
    pub fn subscribe(&self, subject: &str, queue: Option<&str>) -> Result<WireSub> {
        if !proto::valid_subject(subject) || !queue.is_none_or(proto::valid_subject) {
            return Err(Error::InvalidConfig(format!("not a subject: {subject:?}")));
        }
        let inner = &self.inner;
        let sid = inner.next_sid.get();
        inner.next_sid.set(sid + 1);
        let (sink, messages) = flume::bounded(INCOMING_MAX);
        if inner.connected.get() {
            write::subscribe(&mut inner.out.borrow_mut(), subject, queue, sid);
            inner.kick();
        }
        inner.subs.borrow_mut().insert(
            sid,
            SubEntry {
                subject: subject.to_string(),
                queue: queue.map(str::to_string),
                sink,
            },
        );
        Ok(WireSub {
            messages,
            sid,
            wire: Rc::downgrade(inner),
        })
    }

    /// Sends a request and waits for the first answer, at most `timeout`:
    /// `NoResponders` at once when nothing listens on `subject`, `Closed`
    /// when the wire is not connected (or loses its connection meanwhile),
    /// `TimedOut` past the deadline.
    pub async fn request(&self, subject: &str, payload: &[u8], timeout: Duration) -> Result<Bytes> {
        let inner = &self.inner;
        if !inner.connected.get() {
            return Err(Error::Closed);
        }
        let token = inner.next_token.get();
        inner.next_token.set(token + 1);
        let (tx, rx) = flume::bounded(1);
        inner.waiting.borrow_mut().insert(token, tx);
        // Forgets the request however this ends, a caller that gives up
        // (drops this future) included.
        let _waiting = Waiting { inner, token };
        let reply = format!("{}.{token}", inner.inbox);
        if !inner.publish(subject, Some(&reply), payload) {
            return Err(Error::Closed);
        }
        let answer = glommio::timer::timeout(timeout, async {
            Ok(rx.recv_async().await.unwrap_or(Err(Error::Closed)))
        })
        .await;
        match answer {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(Error::NoResponders(_))) => Err(Error::NoResponders(subject.to_string())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::TimedOut(subject.to_string())),
        }
    }
}

/// A request waiting for its answer; dropping it forgets the request.
struct Waiting<'a> {
    inner: &'a Inner,
    token: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.inner.waiting.borrow_mut().remove(&self.token);
    }
}

impl Inner {
    fn kick(&self) {
        let _ = self.wake_tx.try_send(());
    }

    fn publish(&self, subject: &str, reply: Option<&str>, payload: &[u8]) -> bool {
        let fits = self.connected.get()
            && payload.len() <= self.payload_max.get()
            && self.out.borrow().len() + payload.len() <= self.out_bytes_max
            && proto::valid_subject(subject);
        if !fits {
            self.counters.unsent.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut out = self.out.borrow_mut();
        let was_empty = out.is_empty();
        write::publish(&mut out, subject, reply, payload);
        if was_empty {
            self.kick();
        }
        true
    }

    /// A message from the server, handed to its subscription.
    fn deliver(
        &self,
        sid: u64,
        subject: String,
        reply: Option<String>,
        status: Option<u16>,
        payload: Bytes,
    ) {
        if sid == INBOX_SID {
            let token = subject
                .rsplit_once('.')
                .and_then(|(_, t)| t.parse::<u64>().ok());
            if let Some(tx) = token.and_then(|t| self.waiting.borrow_mut().remove(&t)) {
                let answer = match status {
                    Some(503) => Err(Error::NoResponders(subject)),
                    _ => Ok(payload),
                };
                let _ = tx.try_send(answer);
            }
            return;
        }
        let subs = self.subs.borrow();
        let Some(sub) = subs.get(&sid) else { return };
        if sub
            .sink
            .try_send(Incoming {
                subject,
                reply,
                payload,
            })
            .is_err()
        {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The first bytes of a new connection: who we are, then every
    /// subscription (the inbox first).
    fn greeting(&self, server: &Server) -> Vec<u8> {
        let mut out = Vec::new();
        write::connect(&mut out, &server.connect_json(&self.name));
        write::subscribe(&mut out, &format!("{}.*", self.inbox), None, INBOX_SID);
        for (sid, sub) in self.subs.borrow().iter() {
            write::subscribe(&mut out, &sub.subject, sub.queue.as_deref(), *sid);
        }
        write::ping(&mut out);
        out
    }

    /// The connection is gone: nothing more is written to it, and every
    /// request waiting on it fails.
    fn lost(&self) {
        self.connected.set(false);
        self.out.borrow_mut().clear();
        for (_, tx) in self.waiting.borrow_mut().drain() {
            let _ = tx.try_send(Err(Error::Closed));
        }
    }
}

/// A token unique to this process and wire.
fn unique_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{:x}{:x}{n:x}", std::process::id(), nanos)
}

/// The wire's task: connect, serve the connection until it fails, and
/// again, until the wire is stopped or dropped.
async fn run(wire: Weak<Inner>) {
    let mut pause = RETRY_PAUSE;
    let mut turn = 0usize;
    loop {
        let Some(inner) = wire.upgrade() else { return };
        if inner.stopped.get() {
            inner.lost();
            return;
        }
        let server = inner.servers[turn % inner.servers.len()].clone();
        turn += 1;
        drop(inner);
        match connect(&server).await {
            Ok((stream, info)) => {
                // A connection counts once the server answered its first
                // ping (so it took the greeting): one it closes at once
                // (refused credentials, too many connections, lame duck)
                // is retried after a pause, not in a loop.
                if serve(&wire, &server, stream, info).await {
                    pause = RETRY_PAUSE;
                } else {
                    back_off(&mut pause).await;
                }
            }
            Err(e) => {
                tracing::debug!(server = %server.addr, error = %e, "wire: connect failed");
                if turn.is_multiple_of(wire.upgrade().map_or(1, |i| i.servers.len())) {
                    back_off(&mut pause).await;
                }
            }
        }
    }
}

/// Sits out `pause`, and doubles it for next time (up to the max).
async fn back_off(pause: &mut Duration) {
    glommio::timer::sleep(*pause).await;
    *pause = (*pause * 2).min(RETRY_PAUSE_MAX);
}

/// A TCP connection to `server` and the server's `INFO`, read.
async fn connect(server: &Server) -> Result<(TcpStream, ServerInfo)> {
    let io = |e: std::io::Error| Error::Nats(format!("{}: {e}", server.addr));
    let addr = server.addr.clone();
    let stream = TcpStream::connect_timeout(addr.as_str(), CONNECT_TIMEOUT)
        .await
        .map_err(|e| io(e.into()))?;
    stream.set_nodelay(true).map_err(|e| io(e.into()))?;
    let mut stream = stream;
    let mut buf = BytesMut::new();
    let read_info = async {
        loop {
            if let Some(op) = proto::parse(&mut buf, PAYLOAD_MAX_DEFAULT)
                .map_err(|e| Error::Nats(e.to_string()))?
            {
                return match op {
                    ServerOp::Info(json) => Ok(ServerInfo::parse(&json)),
                    other => Err(Error::Nats(format!("expected INFO, got {other:?}"))),
                };
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                return Err(Error::Nats(format!("{} closed", server.addr)));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let info = glommio::timer::timeout(CONNECT_TIMEOUT, async { Ok(read_info.await) })
        .await
        .map_err(|_| Error::TimedOut(format!("INFO from {}", server.addr)))??;
    if info.tls_required {
        return Err(Error::Nats(format!("{} requires TLS", server.addr)));
    }
    Ok((stream, info))
}

/// What the wire uses of a server's `INFO`.
struct ServerInfo {
    max_payload: usize,
    tls_required: bool,
}

impl ServerInfo {
    fn parse(json: &[u8]) -> ServerInfo {
        let v: serde_json::Value = serde_json::from_slice(json).unwrap_or_default();
        ServerInfo {
            max_payload: v["max_payload"]
                .as_u64()
                .map_or(PAYLOAD_MAX_DEFAULT, |n| n as usize),
            tls_required: v["tls_required"].as_bool().unwrap_or(false),
        }
    }
}

/// Serves one connection until it fails or the wire stops; whether the
/// server answered a ping on it.
async fn serve(wire: &Weak<Inner>, server: &Server, stream: TcpStream, info: ServerInfo) -> bool {
    let Some(inner) = wire.upgrade() else {
        return false;
    };
    inner.payload_max.set(info.max_payload);
    *inner.out.borrow_mut() = inner.greeting(server);
    inner.connected.set(true);
    inner.counters.connects.fetch_add(1, Ordering::Relaxed);
    inner.kick();
    let wake = inner.wake_rx.clone();
    drop(inner);
    tracing::info!(server = %server.addr, "wire: connected");
    // The greeting's ping is out; every pong sets it back to 0.
    let pings_out = Cell::new(1u32);
    let ponged = Cell::new(false);
    let (reader, writer) = futures_lite::io::split(stream);
    let why = futures_lite::future::or(
        futures_lite::future::or(
            read_loop(wire, reader, &pings_out, &ponged),
            write_loop(wire, writer, wake),
        ),
        ping_loop(wire, &pings_out),
    )
    .await;
    tracing::info!(server = %server.addr, why = %why, "wire: connection ended");
    if let Some(inner) = wire.upgrade() {
        inner.lost();
    }
    ponged.get()
}

async fn read_loop(
    wire: &Weak<Inner>,
    mut reader: futures_lite::io::ReadHalf<TcpStream>,
    pings_out: &Cell<u32>,
    ponged: &Cell<bool>,
) -> String {
    // Read into one scratch chunk; `buf` holds only what is not parsed
    // yet (payloads are copied out of it).
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut buf = BytesMut::new();
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) => return "closed by the server".into(),
            Ok(n) => n,
            Err(e) => return format!("read: {e}"),
        };
        buf.extend_from_slice(&chunk[..n]);
        let Some(inner) = wire.upgrade() else {
            return "wire dropped".into();
        };
        loop {
            match proto::parse(&mut buf, inner.payload_max.get()) {
                Ok(None) => break,
                Ok(Some(ServerOp::Msg {
                    subject,
                    sid,
                    reply,
                    status,
                    payload,
                })) => inner.deliver(sid, subject, reply, status, payload),
                Ok(Some(ServerOp::Ping)) => {
                    write::pong(&mut inner.out.borrow_mut());
                    inner.kick();
                }
                Ok(Some(ServerOp::Pong)) => {
                    pings_out.set(0);
                    ponged.set(true);
                }
                Ok(Some(ServerOp::Err(e))) => {
                    // Permission and subject errors leave the connection
                    // open; the others are followed by its close.
                    tracing::warn!(error = %e, "wire: the server refused");
                }
                Ok(Some(ServerOp::Info(_) | ServerOp::Ok)) => {}
                Err(e) => return format!("protocol: {e}"),
            }
        }
    }
}

async fn write_loop(
    wire: &Weak<Inner>,
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    wake: flume::Receiver<()>,
) -> String {
    let mut sending = Vec::new();
    loop {
        {
            let Some(inner) = wire.upgrade() else {
                return "wire dropped".into();
            };
            if inner.stopped.get() {
                return "stopped".into();
            }
            std::mem::swap(&mut sending, &mut *inner.out.borrow_mut());
        }
        if sending.is_empty() {
            if wake.recv_async().await.is_err() {
                return "wire dropped".into();
            }
            continue;
        }
        if let Err(e) = writer.write_all(&sending).await {
            return format!("write: {e}");
        }
        sending.clear();
    }
}

async fn ping_loop(wire: &Weak<Inner>, pings_out: &Cell<u32>) -> String {
    loop {
        glommio::timer::sleep(PING_INTERVAL).await;
        let Some(inner) = wire.upgrade() else {
            return "wire dropped".into();
        };
        if pings_out.get() >= PINGS_OUT_MAX {
            return format!("{PINGS_OUT_MAX} pings unanswered");
        }
        pings_out.set(pings_out.get() + 1);
        write::ping(&mut inner.out.borrow_mut());
        inner.kick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_parse() {
        let s = Server::parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!(
            (s.addr.as_str(), s.user, s.token),
            ("127.0.0.1:4222", None, None)
        );
        let s = Server::parse("nats://bob:pw@h:5").unwrap();
        assert_eq!(
            (s.user.as_deref(), s.pass.as_deref()),
            (Some("bob"), Some("pw"))
        );
        assert!(s.connect_json("n").contains(r#""pass":"pw""#));
        let s = Server::parse("tok@h").unwrap();
        assert_eq!(
            (s.addr.as_str(), s.token.as_deref()),
            ("h:4222", Some("tok"))
        );
        assert!(Server::parse("tls://h:4222").is_none());
        assert!(Wire::supports(&["nats://a:1".into(), "b:2".into()]));
        assert!(!Wire::supports(&["nats://a:1".into(), "tls://b:2".into()]));
        assert!(!Wire::supports(&[]));
    }
}
