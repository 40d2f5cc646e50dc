//! The WebSocket endpoint (`GET /ws`) and the JSON protocol of DESIGN.md.
//!
//! One task per connection, on the shard that accepted it. tungstenite does
//! the framing (masking, fragmentation, control frames, UTF-8, the close
//! handshake) over an in-memory adapter; this task moves bytes between that
//! adapter and the socket. The connection's subscriptions live in one
//! engine `Inbox` on the same shard, so the byte bound, lagging and the
//! slow-consumer close (4008) are the engine's. Invariant: a frame the
//! client sends is answered (reply or `error` frame) in order, and nothing
//! a client sends can panic the shard.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rookery_engine::{Error as EngineError, Inbox};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

use crate::auth;
use crate::http::{Request, Response};
use crate::routes::{self, ApiError, PageQuery};
use crate::serve::{self, Shared};

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

/// Whether a request asks for the WebSocket endpoint.
pub fn is_upgrade(req: &Request) -> bool {
    req.path == "/ws"
        && req
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
}

/// The 101 response.
pub fn switching(accept: String) -> Response {
    Response {
        status: 101,
        headers: vec![
            ("upgrade".into(), "websocket".into()),
            ("connection".into(), "Upgrade".into()),
            ("sec-websocket-accept".into(), accept),
        ],
        body: Vec::new(),
    }
}

/// Bytes between tungstenite and the socket: reads drain `rx` (and say
/// `WouldBlock` when it is empty, not EOF); writes append to `tx`.
#[derive(Default)]
struct Pipe {
    rx: Vec<u8>,
    tx: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rx.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.rx.len());
        buf[..n].copy_from_slice(&self.rx[..n]);
        self.rx.drain(..n);
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
    Bytes(usize),
    SocketClosed,
    Event(Result<rookery_engine::Delivery, EngineError>),
    Tick,
}

/// One connection's state.
struct Conn {
    shared: Rc<Shared>,
    ctx: WebSocketContext,
    pipe: Pipe,
    inbox: Inbox,
    user: Option<u64>,
    /// room -> subscription, and back.
    rooms: HashMap<u64, u64>,
    subs: HashMap<u64, u64>,
    last_heard: Instant,
}

/// Serves an upgraded connection until either side closes it.
pub async fn run(mut stream: TcpStream, leftover: Vec<u8>, shared: Rc<Shared>, user: Option<u64>) {
    let inbox = match shared.engine.inbox_on(shared.shard) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "no inbox for a WebSocket connection");
            return;
        }
    };
    let frame_max = shared.cfg.ws_frame_bytes_max;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(frame_max))
        .max_frame_size(Some(frame_max));
    let mut c = Conn {
        ctx: WebSocketContext::new(Role::Server, Some(config)),
        pipe: Pipe {
            rx: leftover,
            tx: Vec::new(),
        },
        inbox,
        user,
        rooms: HashMap::new(),
        subs: HashMap::new(),
        last_heard: Instant::now(),
        shared,
    };
    if let Some(u) = user {
        c.send(json!({"type": "hello", "user": u, "heartbeat_ms": c.heartbeat_ms()}));
    }
    let mut chunk = [0u8; 4096];
    // Ends by returning when the socket is gone, or by breaking once a
    // close frame is queued: then it is sent and the socket lingers.
    loop {
        if !c.process_input().await {
            break;
        }
        if !c.pipe.tx.is_empty() {
            if stream.write_all(&c.pipe.tx).await.is_err() {
                return;
            }
            c.pipe.tx.clear();
        }
        let heartbeat = Duration::from_millis(c.heartbeat_ms());
        let wake = {
            let read = async {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => Wake::SocketClosed,
                    Ok(n) => Wake::Bytes(n),
                }
            };
            let event = async { Wake::Event(c.inbox.recv_async().await) };
            let tick = async {
                glommio::timer::sleep(heartbeat).await;
                Wake::Tick
            };
            futures_lite::future::or(read, futures_lite::future::or(event, tick)).await
        };
        match wake {
            Wake::Bytes(n) => {
                c.last_heard = Instant::now();
                c.pipe.rx.extend_from_slice(&chunk[..n]);
            }
            Wake::SocketClosed => return,
            Wake::Event(Ok(d)) => c.deliver(d),
            Wake::Event(Err(e)) => {
                let (code, why) = match e {
                    EngineError::SlowConsumer => (CloseCode::Library(4008), "slow consumer"),
                    _ => (CloseCode::Away, "server shutting down"),
                };
                c.close(code, why);
                break;
            }
            Wake::Tick => {
                if c.last_heard.elapsed() > heartbeat * 2 {
                    c.close(CloseCode::Away, "idle timeout");
                    break;
                }
                let _ = c.ctx.write(&mut c.pipe, Message::Ping(Default::default()));
                let _ = c.ctx.flush(&mut c.pipe);
            }
        }
    }
    let _ = stream.write_all(&c.pipe.tx).await;
    serve::linger_close(stream).await;
}

impl Conn {
    fn heartbeat_ms(&self) -> u64 {
        self.shared.cfg.ws_heartbeat_ms
    }

    /// Queues a JSON frame.
    fn send(&mut self, v: Value) {
        let _ = self.ctx.write(&mut self.pipe, Message::text(v.to_string()));
        let _ = self.ctx.flush(&mut self.pipe);
    }

    /// Queues an engine event (already encoded JSON).
    fn deliver(&mut self, d: rookery_engine::Delivery) {
        if !self.subs.contains_key(&d.sub) {
            return; // left the room; the event was already queued
        }
        let _ = self
            .ctx
            .write(&mut self.pipe, Message::text(d.event.json()));
        let _ = self.ctx.flush(&mut self.pipe);
    }

    fn close(&mut self, code: CloseCode, reason: &str) {
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
                Ok(Message::Text(text)) => {
                    let reply = self.handle(text.as_str()).await;
                    self.send(reply);
                }
                Ok(Message::Binary(_)) => {
                    self.send(error(None, "bad_frame", "frames must be JSON text"));
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
            _ => return error(None, "bad_json", "a frame must be a JSON object"),
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
                return with_ref(
                    error(None, "unknown_type", &format!("unknown type {kind:?}")),
                    r#ref,
                )
            }
        };
        match result {
            Ok(reply) => with_ref(reply, r#ref),
            Err(e) => {
                let (_, code, message) = e.parts();
                with_ref(error(None, code, &message), r#ref)
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
        routes::visible_room(&self.shared, user, room).await?;
        let since = v.get("since").and_then(Value::as_u64);
        if !self.rooms.contains_key(&room) {
            let sub = self.inbox.subscribe_as(room, since, Some(user)).await?;
            self.rooms.insert(room, sub);
            self.subs.insert(sub, room);
        }
        let engine = &self.shared.engine;
        let (last, online) = (engine.last_seq(room).await?, engine.online(room).await?);
        Ok(json!({"type": "joined", "room": room, "last_seq": last, "online": online}))
    }

    fn leave(&mut self, v: &Value) -> Result<Value, ApiError> {
        let room = field_u64(v, "room")?;
        let Some(sub) = self.rooms.remove(&room) else {
            return Err(ApiError::NotFound(format!("not joined to room {room}")));
        };
        self.subs.remove(&sub);
        self.inbox.unsubscribe(sub);
        Ok(json!({"type": "left", "room": room}))
    }

    async fn post(&mut self, user: u64, v: &Value) -> Result<Value, ApiError> {
        let room = field_u64(v, "room")?;
        let body = field_str(v, "body")?;
        let client_id = v["client_id"].as_str().unwrap_or("");
        routes::visible_room(&self.shared, user, room).await?;
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
        if !self.rooms.contains_key(&room) {
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

fn error(r#ref: Option<Value>, code: &str, message: &str) -> Value {
    with_ref(
        json!({"type": "error", "code": code, "message": message}),
        r#ref,
    )
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
