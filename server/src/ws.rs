//! The WebSocket endpoints: `GET /ws` with the JSON protocol of DESIGN.md,
//! and `GET /echo` (only with `--echo-endpoint`) that echoes messages for
//! conformance testing.
//!
//! One task per connection, on the shard that accepted it. tungstenite does
//! the framing (masking, fragmentation, control frames, UTF-8, the close
//! handshake) over an in-memory adapter; `deflate` inflates compressed
//! messages in front of it and compresses large outbound ones; this task
//! moves bytes between the adapter and the socket. The connection's
//! subscriptions live in one engine `Inbox` on the same shard, so the byte
//! bound, lagging and the slow-consumer close (4008) are the engine's.
//!
//! Invariants: a frame the client sends is answered (reply or `error`
//! frame) in order; nothing a client sends can panic the shard; an idle
//! connection holds no read or write buffer (reads go through the shard's
//! scratch buffer, the adapter's buffers are freed when drained).

use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use rookery_engine::{Error as EngineError, EventKind, Inbox};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, FrameHeader};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

use crate::auth;
use crate::deflate::{self, InflateError, Inflow, Negotiated};
use crate::http::{Request, Response};
use crate::routes::{self, ApiError, PageQuery};
use crate::serve::{self, Shared};

/// Events coalesced into one socket write, in bytes at most.
const WRITE_COALESCE_BYTES: usize = 64 << 10;
/// Bytes tungstenite reads from the adapter at a time (its own buffer
/// keeps at least this much per connection, so it is small).
const FRAME_READ_BYTES: usize = 128;

/// Which WebSocket endpoint a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/ws`: the chat protocol.
    Chat,
    /// `/echo`: echoes every message (only with `--echo-endpoint`).
    Echo,
}

/// The endpoint an upgrade request asks for, if it is one.
pub fn endpoint(req: &Request, echo_enabled: bool) -> Option<Endpoint> {
    let upgrade = req
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    match req.path.as_str() {
        "/ws" if upgrade => Some(Endpoint::Chat),
        "/echo" if upgrade && echo_enabled => Some(Endpoint::Echo),
        _ => None,
    }
}

/// Checks an upgrade request; the `Sec-WebSocket-Accept` value, or the
/// response refusing it.
pub fn accept_key(req: &Request) -> Result<String, Response> {
    let bad = |m: &str| Err(Response::error(400, "bad_upgrade", m));
    if req.method != "GET" {
        return bad("a WebSocket upgrade must be a GET");
    }
    let has_token = |h: Option<&str>, t: &str| {
        h.is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(t)))
    };
    if !has_token(req.header("connection"), "upgrade") {
        return bad("Connection: upgrade is missing");
    }
    if req.header("sec-websocket-version") != Some("13") {
        let mut r = Response::error(426, "bad_upgrade", "only WebSocket version 13 is spoken");
        r.headers
            .push(("sec-websocket-version".into(), "13".into()));
        return Err(r);
    }
    match req.header("sec-websocket-key") {
        Some(k) if !k.is_empty() => Ok(tungstenite::handshake::derive_accept_key(k.as_bytes())),
        _ => bad("Sec-WebSocket-Key is missing"),
    }
}

/// The 101 response, with the accepted extension if any.
pub fn switching(accept: String, extension: Option<String>) -> Response {
    let mut headers = vec![
        ("upgrade".into(), "websocket".into()),
        ("connection".into(), "Upgrade".into()),
        ("sec-websocket-accept".into(), accept),
    ];
    if let Some(e) = extension {
        headers.push(("sec-websocket-extensions".into(), e));
    }
    Response {
        status: 101,
        headers,
        ..Response::default()
    }
}

/// Bytes between tungstenite and the socket: reads drain `rx` from `at`
/// (and say `WouldBlock` when it is empty, not EOF); writes append to `tx`.
#[derive(Default)]
struct Pipe {
    rx: Vec<u8>,
    at: usize,
    tx: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = &self.rx[self.at..];
        if left.is_empty() {
            // Drained: an idle connection keeps no buffer.
            (self.rx, self.at) = (Vec::new(), 0);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(left.len());
        buf[..n].copy_from_slice(&left[..n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What woke the connection task.
enum Wake {
    Bytes,
    SocketClosed,
    Event(Result<rookery_engine::Delivery, EngineError>),
    Tick,
    AuthTimeout,
    Stopping,
}

/// An accepted upgrade: what `run` serves.
pub struct Accepted {
    pub stream: TcpStream,
    /// Bytes the client sent after its upgrade request.
    pub leftover: Vec<u8>,
    /// The user a token on the upgrade authenticated.
    pub user: Option<u64>,
    pub endpoint: Endpoint,
    /// permessage-deflate, when agreed.
    pub deflate: Option<Negotiated>,
}

/// One connection's state.
struct Conn {
    shared: Rc<Shared>,
    endpoint: Endpoint,
    ctx: WebSocketContext,
    pipe: Pipe,
    /// Inflates compressed messages (when permessage-deflate was agreed).
    inflow: Option<Box<Inflow>>,
    /// The connection's engine inbox, opened on its first join (a
    /// connection in no room costs the engine nothing).
    inbox: Option<Inbox>,
    user: Option<u64>,
    /// (room, subscription, private) of every room joined: a short list
    /// (at most --ws-rooms-per-connection-max), cheaper than maps for an
    /// idle connection.
    joined: Vec<(u64, u64, bool)>,
    /// `Shared::revocations` when private memberships were last checked.
    revocations_seen: u64,
    last_heard: Instant,
}

/// Serves an upgraded connection until either side closes it or the
/// shard stops (1001).
///
/// This future is what an idle connection costs (measured by
/// `rookery-bench idle`), so what it holds across its waits is kept small:
/// handlers and the closing linger are boxed while they run.
pub async fn run(accepted: Box<Accepted>, shared: Rc<Shared>) {
    // Boxed: an async fn's parameters and the locals moved out of them
    // would both take room in the future.
    let Accepted {
        mut stream,
        leftover,
        user,
        endpoint,
        deflate,
    } = *accepted;
    let frame_max = shared.cfg.ws_frame_bytes_max;
    let config = WebSocketConfig::default()
        .read_buffer_size(FRAME_READ_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(frame_max))
        .max_frame_size(Some(frame_max));
    let mut c = Conn {
        ctx: WebSocketContext::new(Role::Server, Some(config)),
        pipe: Pipe::default(),
        inflow: deflate.map(|n| Box::new(Inflow::new(n, frame_max))),
        inbox: None,
        user,
        joined: Vec::new(),
        revocations_seen: shared.revocations.load(Ordering::Acquire),
        last_heard: Instant::now(),
        endpoint,
        shared,
    };
    let refused = !c.take_input(&leftover);
    drop(leftover);
    if refused {
        return Box::pin(c.finish(stream)).await;
    }
    if let Some(u) = user {
        c.send(json!({"type": "hello", "user": u, "heartbeat_ms": c.heartbeat_ms()}));
    }
    let auth_deadline = Instant::now() + Duration::from_millis(c.shared.cfg.ws_auth_timeout_ms);
    // Past twice the stuck timeout, the engine has closed the inbox as
    // slow already; a write that still cannot finish ends the connection.
    let write_timeout = Duration::from_millis(c.shared.cfg.ws_stuck_timeout_ms) * 2;
    // Ends by returning when the socket is gone, or by breaking once a
    // close frame is queued: then it is sent and the socket lingers.
    loop {
        if !c.process_input().await {
            break;
        }
        if !c.pipe.tx.is_empty() {
            if !write_within(&mut stream, &c.pipe.tx, write_timeout).await {
                return;
            }
            c.pipe.tx = Vec::new();
        }
        match c.wait(&mut stream, auth_deadline).await {
            Wake::Bytes => c.last_heard = Instant::now(),
            Wake::SocketClosed => return,
            Wake::Event(Ok(d)) => {
                if c.private_rooms_need_check() {
                    Box::pin(c.check_private_rooms()).await;
                }
                c.deliver(d);
                c.deliver_queued();
            }
            Wake::Event(Err(e)) => {
                let (code, why) = match e {
                    EngineError::SlowConsumer => (CloseCode::Library(4008), "slow consumer"),
                    _ => (CloseCode::Away, "server shutting down"),
                };
                c.close(code, why);
                break;
            }
            Wake::Tick => {
                if c.last_heard.elapsed() > Duration::from_millis(c.heartbeat_ms()) * 2 {
                    c.close(CloseCode::Away, "idle timeout");
                    break;
                }
                let _ = c.ctx.write(&mut c.pipe, Message::Ping(Default::default()));
                let _ = c.ctx.flush(&mut c.pipe);
            }
            Wake::AuthTimeout => {
                if let Some(h) = c.shared.http.get(c.shared.shard) {
                    h.auth_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                c.close(CloseCode::Policy, "not authenticated in time");
                break;
            }
            Wake::Stopping => {
                c.close(CloseCode::Away, "server shutting down");
                break;
            }
        }
    }
    Box::pin(c.finish(stream)).await;
}

/// Writes `bytes`, or gives up after `timeout` (a client that does not
/// read cannot hold the task forever).
async fn write_within(stream: &mut TcpStream, bytes: &[u8], timeout: Duration) -> bool {
    let write = async { stream.write_all(bytes).await.is_ok() };
    futures_lite::future::or(write, async {
        glommio::timer::sleep(timeout).await;
        false
    })
    .await
}

impl Conn {
    fn heartbeat_ms(&self) -> u64 {
        self.shared.cfg.ws_heartbeat_ms
    }

    fn is_joined(&self, room: u64) -> bool {
        self.joined.iter().any(|&(r, _, _)| r == room)
    }

    /// Whether someone was removed from a private room since this
    /// connection last looked, and it follows private rooms.
    fn private_rooms_need_check(&self) -> bool {
        self.joined.iter().any(|&(_, _, private)| private)
            && self.shared.revocations.load(Ordering::Acquire) != self.revocations_seen
    }

    /// Ends the subscriptions to private rooms the user is no longer a
    /// member of, telling the client (`left` with reason `removed`).
    async fn check_private_rooms(&mut self) {
        let Some(user) = self.user else { return };
        self.revocations_seen = self.shared.revocations.load(Ordering::Acquire);
        let private: Vec<u64> = self.joined.iter().filter(|j| j.2).map(|j| j.0).collect();
        for room in private {
            let meta = self.shared.engine.meta().clone();
            let role = auth::blocking(move || meta.member_role(room, user)).await;
            if matches!(role, Ok(None)) {
                self.drop_room(room);
                self.send(json!({"type": "left", "room": room, "reason": "removed"}));
            }
        }
    }

    /// Ends this connection's subscription to `room`; whether it had one.
    fn drop_room(&mut self, room: u64) -> bool {
        let Some(at) = self.joined.iter().position(|&(r, _, _)| r == room) else {
            return false;
        };
        let (_, sub, _) = self.joined.swap_remove(at);
        if let Some(inbox) = &self.inbox {
            inbox.unsubscribe(sub);
        }
        true
    }

    /// Waits for the next thing to do. One hand-written poll over the
    /// socket, the inbox, the timer and the stop signal: this future is
    /// part of every idle connection, so it is kept lean.
    async fn wait(&mut self, stream: &mut TcpStream, auth_deadline: Instant) -> Wake {
        let heartbeat = Duration::from_millis(self.heartbeat_ms());
        let left = auth_deadline.saturating_duration_since(Instant::now());
        let auth_due = self.endpoint == Endpoint::Chat && self.user.is_none() && left < heartbeat;
        let mut received = Vec::new();
        let wake = {
            let shared = self.shared.clone();
            let inbox = self.inbox.as_ref();
            let mut timer = pin!(glommio::timer::sleep(if auth_due {
                left
            } else {
                heartbeat
            }));
            let mut stop = pin!(shared.stopped());
            let mut event = pin!(async {
                match inbox {
                    Some(inbox) => inbox.recv_async().await,
                    None => std::future::pending().await,
                }
            });
            let mut take = |b: &[u8]| received.extend_from_slice(b);
            futures_lite::future::poll_fn(|cx| {
                if let Poll::Ready(r) = serve::poll_read_with(stream, cx, &mut take) {
                    return Poll::Ready(match r {
                        Ok(0) | Err(_) => Wake::SocketClosed,
                        Ok(_) => Wake::Bytes,
                    });
                }
                if let Poll::Ready(r) = event.as_mut().poll(cx) {
                    return Poll::Ready(Wake::Event(r));
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(if auth_due {
                        Wake::AuthTimeout
                    } else {
                        Wake::Tick
                    });
                }
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Stopping);
                }
                Poll::Pending
            })
            .await
        };
        if matches!(wake, Wake::Bytes) && !self.take_input(&received) {
            return Wake::Bytes; // a close frame is queued; process_input ends
        }
        wake
    }

    /// Hands received bytes to tungstenite (through the inflater when
    /// deflate was agreed); false when they were refused with a close.
    fn take_input(&mut self, bytes: &[u8]) -> bool {
        let Some(inflow) = self.inflow.as_mut() else {
            self.pipe.rx.extend_from_slice(bytes);
            return true;
        };
        match inflow.feed(bytes, &mut self.pipe.rx) {
            Ok(()) => true,
            Err(e) => {
                let (code, why) = match e {
                    InflateError::TooBig => (CloseCode::Size, "message too big"),
                    InflateError::Corrupt(why) => (CloseCode::Protocol, why),
                };
                self.close(code, why);
                self.inflow = None;
                self.pipe.rx.clear();
                self.pipe.at = 0;
                false
            }
        }
    }

    /// Sends what is queued, then lingers and closes.
    async fn finish(mut self, mut stream: TcpStream) {
        let _ = stream.write_all(&self.pipe.tx).await;
        self.pipe.tx.clear();
        serve::linger_close(stream).await;
    }

    /// Queues a data message, compressed when agreed and large enough.
    ///
    /// Data frames are framed here, straight into the outbound bytes:
    /// tungstenite's own write path would copy each through a buffer it
    /// keeps per connection. Control frames (pong, close) still go through
    /// tungstenite, which tracks the close handshake; nothing is sent after
    /// a close (the connection loop ends there).
    fn send_data(&mut self, payload: &[u8], opcode: Data) {
        let min = self.shared.cfg.ws_deflate_min_bytes;
        if self.inflow.is_some() && payload.len() >= min {
            let frame = deflate::deflate_frame(payload, opcode);
            let _ = frame.format(&mut self.pipe.tx);
            return;
        }
        let header = FrameHeader {
            opcode: OpCode::Data(opcode),
            ..FrameHeader::default()
        };
        let _ = header.format(payload.len() as u64, &mut self.pipe.tx);
        self.pipe.tx.extend_from_slice(payload);
    }

    fn send_text(&mut self, text: &str) {
        self.send_data(text.as_bytes(), Data::Text);
    }

    /// Queues a JSON frame.
    fn send(&mut self, v: Value) {
        self.send_text(&v.to_string());
    }

    /// An `error` frame, counted by code in the metrics.
    fn error(&self, code: &'static str, message: &str) -> Value {
        if let Some(h) = self.shared.http.get(self.shared.shard) {
            h.error_sent(code);
        }
        json!({"type": "error", "code": code, "message": message})
    }

    /// Queues an engine event (already encoded JSON).
    fn deliver(&mut self, d: rookery_engine::Delivery) {
        if !self.joined.iter().any(|&(_, sub, _)| sub == d.sub) {
            return; // left the room; the event was already queued
        }
        if d.event.kind() == EventKind::Message {
            if let (Some(h), Some(ts)) = (self.shared.http.get(self.shared.shard), ts_ms(&d.event))
            {
                h.delivered_after(auth::now_ms().saturating_sub(ts).saturating_mul(1000));
            }
        }
        self.send_text(d.event.json());
    }

    /// Takes every event already queued, so they leave in one write with
    /// the one that woke the task (one syscall per wake, not per event).
    /// Stops at `WRITE_COALESCE_BYTES`, and where a private room's
    /// membership must be checked again first.
    fn deliver_queued(&mut self) {
        while self.pipe.tx.len() < WRITE_COALESCE_BYTES && !self.private_rooms_need_check() {
            match self.inbox.as_ref().map(Inbox::try_recv) {
                Some(Ok(Some(d))) => self.deliver(d),
                // Empty, or closed: the next wait reports it.
                _ => return,
            }
        }
    }

    fn close(&mut self, code: CloseCode, reason: &str) {
        if let Some(h) = self.shared.http.get(self.shared.shard) {
            h.closed(code.into());
        }
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = self.ctx.close(&mut self.pipe, Some(frame));
        let _ = self.ctx.flush(&mut self.pipe);
    }

    /// Handles every complete frame buffered; false when the connection is
    /// over (closed by the client, or a protocol error was answered with a
    /// close frame).
    async fn process_input(&mut self) -> bool {
        loop {
            match self.ctx.read(&mut self.pipe) {
                Ok(Message::Text(text)) if self.endpoint == Endpoint::Echo => {
                    self.send_text(text.as_str());
                }
                Ok(Message::Binary(data)) if self.endpoint == Endpoint::Echo => {
                    self.send_data(&data, Data::Binary);
                }
                Ok(Message::Text(text)) => {
                    // Boxed: the handler's state exists only while it runs,
                    // not in every idle connection's future.
                    let reply = Box::pin(self.handle(text.as_str())).await;
                    self.send(reply);
                }
                Ok(Message::Binary(_)) => {
                    let frame = self.error("bad_frame", "frames must be JSON text");
                    self.send(frame);
                }
                Ok(Message::Close(_)) => {
                    // tungstenite queued the answering close frame.
                    let _ = self.ctx.flush(&mut self.pipe);
                    return false;
                }
                Ok(_) => {} // ping (pong queued), pong, raw frame
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = self.ctx.flush(&mut self.pipe);
                    return true;
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return false;
                }
                Err(e) => {
                    let code = match &e {
                        tungstenite::Error::Utf8(_) => CloseCode::Invalid,
                        tungstenite::Error::Capacity(_) => CloseCode::Size,
                        _ => CloseCode::Protocol,
                    };
                    self.close(code, &e.to_string());
                    return false;
                }
            }
        }
    }

    /// One client frame → the reply frame.
    async fn handle(&mut self, text: &str) -> Value {
        let v: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            _ => return self.error("bad_json", "a frame must be a JSON object"),
        };
        let r#ref = v.get("ref").cloned();
        let kind = v["type"].as_str().unwrap_or("").to_string();
        let result = match (kind.as_str(), self.user) {
            ("ping", _) => Ok(json!({"type": "pong"})),
            ("auth", _) => self.auth(&v).await,
            (_, None) if known(&kind) => Err(ApiError::Unauthorized(
                "authenticate first (?token= on the upgrade or an auth frame)".into(),
            )),
            ("join", Some(u)) => self.join(u, &v).await,
            ("leave", Some(_)) => self.leave(&v),
            ("send", Some(u)) => self.post(u, &v).await,
            ("edit", Some(u)) => self.change(u, &v, true).await,
            ("delete", Some(u)) => self.change(u, &v, false).await,
            ("typing", Some(u)) => self.typing(u, &v).await,
            ("read", Some(u)) => self.read(u, &v).await,
            ("history", Some(u)) => self.history(u, &v).await,
            _ => {
                let frame = self.error("unknown_type", &format!("unknown type {kind:?}"));
                return with_ref(frame, r#ref);
            }
        };
        match result {
            Ok(reply) => with_ref(reply, r#ref),
            Err(e) => {
                let (_, code, message) = e.parts();
                let mut frame = self.error(code, &message);
                if let ApiError::RateLimited { retry_after_ms, .. } = e {
                    frame["retry_after_ms"] = json!(retry_after_ms);
                }
                with_ref(frame, r#ref)
            }
        }
    }

    async fn auth(&mut self, v: &Value) -> Result<Value, ApiError> {
        let token = field_str(v, "token")?;
        let meta = self.shared.engine.meta().clone();
        match auth::identify(meta, &self.shared.cfg.jwt_secret, token).await? {
            auth::Identity::User(u) => {
                self.user = Some(u);
                Ok(json!({"type": "hello", "user": u, "heartbeat_ms": self.heartbeat_ms()}))
            }
            auth::Identity::Refused(why) => Err(ApiError::Unauthorized(why)),
        }
    }

    async fn join(&mut self, user: u64, v: &Value) -> Result<Value, ApiError> {
        let room = field_u64(v, "room")?;
        let (info, _) = routes::visible_room(&self.shared, user, room).await?;
        let since = v.get("since").and_then(Value::as_u64);
        if !self.is_joined(room) {
            let max = self.shared.cfg.ws_rooms_per_connection_max;
            if self.joined.len() >= max {
                if let Some(h) = self.shared.http.get(self.shared.shard) {
                    h.rooms_refused.fetch_add(1, Ordering::Relaxed);
                }
                return Err(ApiError::TooManyRooms(format!(
                    "a connection may join at most {max} rooms (--ws-rooms-per-connection-max)"
                )));
            }
            if self.inbox.is_none() {
                self.inbox = Some(self.shared.engine.inbox_on(self.shared.shard)?);
            }
            let inbox = self.inbox.as_ref().expect("opened above");
            let sub = inbox.subscribe_as(room, since, Some(user)).await?;
            self.joined.push((room, sub, info.private));
        }
        let engine = &self.shared.engine;
        let (last, online) = (engine.last_seq(room).await?, engine.online(room).await?);
        Ok(json!({"type": "joined", "room": room, "last_seq": last, "online": online}))
    }

    fn leave(&mut self, v: &Value) -> Result<Value, ApiError> {
        let room = field_u64(v, "room")?;
        if !self.drop_room(room) {
            return Err(ApiError::NotFound(format!("not joined to room {room}")));
        }
        Ok(json!({"type": "left", "room": room}))
    }

    async fn post(&mut self, user: u64, v: &Value) -> Result<Value, ApiError> {
        let room = field_u64(v, "room")?;
        let body = field_str(v, "body")?;
        let client_id = v["client_id"].as_str().unwrap_or("");
        routes::visible_room(&self.shared, user, room).await?;
        routes::take_send_token(&self.shared, user)?;
        let ack = self
            .shared
            .engine
            .post(room, user, client_id, &body)
            .await?;
        Ok(
            json!({"type": "ack", "room": room, "seq": ack.seq, "ts": ack.ts_ms,
                  "duplicate": ack.duplicate}),
        )
    }

    async fn change(&mut self, user: u64, v: &Value, edit: bool) -> Result<Value, ApiError> {
        let (room, seq) = (field_u64(v, "room")?, field_u64(v, "seq")?);
        routes::visible_room(&self.shared, user, room).await?;
        if edit {
            let body = field_str(v, "body")?;
            self.shared.engine.edit(room, seq, user, &body).await?;
        } else {
            self.shared.engine.delete(room, seq, user).await?;
        }
        Ok(json!({"type": "ack", "room": room, "seq": seq}))
    }

    async fn typing(&mut self, user: u64, v: &Value) -> Result<Value, ApiError> {
        let room = field_u64(v, "room")?;
        if !self.is_joined(room) {
            return Err(ApiError::NotFound(format!("not joined to room {room}")));
        }
        self.shared.engine.typing(room, user).await?;
        Ok(json!({"type": "ack", "room": room}))
    }

    async fn read(&mut self, user: u64, v: &Value) -> Result<Value, ApiError> {
        let (room, seq) = (field_u64(v, "room")?, field_u64(v, "seq")?);
        routes::visible_room(&self.shared, user, room).await?;
        let stored = self.shared.engine.mark_read(room, user, seq).await?;
        Ok(json!({"type": "receipt", "room": room, "user": user, "seq": stored}))
    }

    async fn history(&mut self, user: u64, v: &Value) -> Result<Value, ApiError> {
        let room = field_u64(v, "room")?;
        routes::visible_room(&self.shared, user, room).await?;
        let q = PageQuery {
            before: v.get("before").and_then(Value::as_u64),
            after: v.get("after").and_then(Value::as_u64),
            limit: v.get("limit").and_then(Value::as_u64),
        };
        let (mut page, _) = routes::history_page(&self.shared, room, q).await?;
        page["type"] = json!("history");
        Ok(page)
    }
}

fn known(kind: &str) -> bool {
    matches!(
        kind,
        "join" | "leave" | "send" | "edit" | "delete" | "typing" | "read" | "history"
    )
}

/// A message event's `ts` (ms), read from its JSON without parsing all of
/// it (this runs for every delivered message).
fn ts_ms(event: &rookery_engine::Event) -> Option<u64> {
    let json = event.json();
    let at = json.find(",\"ts\":")? + 6;
    let digits = json[at..].bytes().take_while(u8::is_ascii_digit).count();
    json[at..at + digits].parse().ok()
}

fn with_ref(mut v: Value, r#ref: Option<Value>) -> Value {
    if let Some(r) = r#ref {
        v["ref"] = r;
    }
    v
}

fn field_u64(v: &Value, name: &str) -> Result<u64, ApiError> {
    v.get(name)
        .and_then(Value::as_u64)
        .ok_or_else(|| ApiError::BadRequest(format!("{name} (a number) is required")))
}

fn field_str(v: &Value, name: &str) -> Result<String, ApiError> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ApiError::BadRequest(format!("{name} (a string) is required")))
}
