//! The WebSocket endpoints: `GET /ws` with the JSON protocol of
//! docs/protocol.md, and `GET /echo` (only with `--echo-endpoint`) that echoes
//! messages for conformance testing.
//!
//! One task per connection, on the shard that accepted it, or on the shard
//! that owns its first room once it has joined it (`moving.rs`). tungstenite does
//! the framing of what the client sends (masking, fragmentation, control
//! frames, UTF-8, the close handshake) over an in-memory adapter;
//! `deflate` inflates compressed messages in front of it and compresses
//! large outbound ones. What the connection sends goes to its [`Out`],
//! which the shard's flusher writes once per reactor turn; the engine puts
//! the events of the rooms it follows there directly, through the
//! connection's [`LocalSink`], already framed, with no task wake-up per
//! event. So the byte bound on everything a connection is owed (events,
//! acks, replies) is one: `--conn-output-bytes-max`. Over it, the
//! connection is not read (and its live events lag, to be caught up from
//! the room's tail or log once it drains); a socket that takes nothing for
//! `--conn-write-timeout-ms` ends the connection.
//!
//! Invariants: a frame the client sends is answered (reply or `error`
//! frame) in order; the `joined` reply comes before any event of the room;
//! nothing a client sends can panic the shard; an idle connection holds no
//! read or write buffer (reads go through the shard's scratch buffer, the
//! adapter's read buffer is freed when drained, the output buffer goes
//! back to the shard's pool; a TLS connection's session keeps its own
//! bounded buffers, `tls.rs`).

use std::cell::{Cell, RefCell};
use std::future::{Future, IntoFuture};
use std::io::{self, Read, Write};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::AsyncWrite;
use rookery_engine::{Error as EngineError, Event, EventKind, LocalInbox, LocalSink};
use serde_json::value::RawValue;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, FrameHeader};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

use crate::app::{self, ApiError, PageQuery};
use crate::auth;
use crate::cluster::ops::{self, Answer, Op};
use crate::cluster::relay::Relay;
use crate::deflate::{self, InflateError, Inflow};
use crate::net::{self, Socket};
use crate::notices::What;
use crate::out::{Flusher, Out};
use crate::protocol::{self, ClientFrame, ServerFrame};
use crate::shared::Shared;
use crate::sweep::{Credential, Deadlines, Due};

mod handshake;
pub(crate) mod moving;

pub(crate) use handshake::{endpoint, handshake, Accepted, Endpoint, Upgrade};
use moving::Handoff;

/// Bytes tungstenite reads from the adapter at a time (its own buffer
/// keeps at least this much per connection, so it is small).
const FRAME_READ_BYTES: usize = 128;

thread_local! {
    /// Where the shard's connections build acks (reused: no allocation
    /// per send).
    static ACK: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
}

/// Bytes between tungstenite and the connection: reads drain `rx` from
/// `at` (and say `WouldBlock` when it is empty, not EOF); what tungstenite
/// writes (pongs, the close frame) goes to the connection's output.
struct Pipe {
    rx: Vec<u8>,
    at: usize,
    out: Rc<Out>,
    flusher: Rc<Flusher>,
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
        self.flusher.push(&self.out, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What woke the connection task.
enum Wake {
    /// Bytes arrived (already handed to the adapter), or input held back
    /// by the output bound may now be handled.
    Input,
    SocketClosed,
    /// The engine ended the connection's subscriptions (slow consumer or
    /// shutdown).
    Ended(EngineError),
    /// A heartbeat passed: ping.
    Tick,
    /// Nothing heard for two heartbeats.
    Idle,
    AuthTimeout,
    /// The socket took nothing for `--conn-write-timeout-ms`.
    WriteTimeout,
    /// Its session was logged out, or its session or JWT ran out.
    CredentialEnded(Due),
    /// Its JWT runs out soon.
    RefreshNeeded,
    /// The user has notices (invitations) to send.
    Notice,
    Stopping,
}

/// A room the connection follows.
struct Joined {
    room: u64,
    sub: u64,
    /// The `joined` reply is out: events go straight to the output
    /// (before, they wait in `early`).
    live: bool,
    /// Owned by another node: relayed by the shard's relay, not the engine.
    remote: bool,
}

/// What the connection task and its engine sink share (on the shard's
/// thread).
struct Link {
    out: Rc<Out>,
    flusher: Rc<Flusher>,
    shared: Rc<Shared>,
    /// Compress outbound messages from this size (permessage-deflate).
    deflate_min: Option<usize>,
    joined: RefCell<Vec<Joined>>,
    /// Events of subscriptions whose join is not answered yet, in order.
    early: RefCell<Vec<(u64, Event)>>,
    early_bytes: Cell<usize>,
    /// Why the engine ended the inbox, once it has.
    ended: RefCell<Option<EngineError>>,
}

impl Link {
    /// Queues a data message, compressed when agreed and large enough.
    ///
    /// Data frames are framed here, straight into the output: tungstenite's
    /// own write path would copy each through a buffer it keeps per
    /// connection. Control frames (pong, close) still go through
    /// tungstenite, which tracks the close handshake.
    fn send_data(&self, payload: &[u8], opcode: Data) {
        if self.deflate_min.is_some_and(|min| payload.len() >= min) {
            let frame = deflate::deflate_frame(payload, opcode);
            self.flusher.append(&self.out, |b| {
                let _ = frame.format(b);
            });
            return;
        }
        let header = FrameHeader {
            opcode: OpCode::Data(opcode),
            ..FrameHeader::default()
        };
        self.flusher.append(&self.out, |b| {
            let _ = header.format(payload.len() as u64, b);
            b.extend_from_slice(payload);
        });
    }

    fn send_text(&self, text: &str) {
        self.send_data(text.as_bytes(), Data::Text);
    }

    /// Writes an engine event: its frame as it is, or compressed.
    fn emit(&self, event: &Event) {
        if event.kind() == EventKind::Message {
            if let Some(h) = self.shared.http.get(self.shared.shard) {
                let ms = self.flusher.turn_ms().saturating_sub(event.ts_ms());
                h.delivered_after(ms.saturating_mul(1000));
            }
        }
        match self.deflate_min {
            Some(min) if event.payload().len() >= min => {
                self.send_data(event.payload(), Data::Text)
            }
            _ => self.flusher.push(&self.out, event.frame()),
        }
    }

    /// A subscription's join was answered: it goes live, and the events
    /// that waited for the answer follow it.
    fn go_live(&self, sub: u64) {
        if let Some(j) = self.joined.borrow_mut().iter_mut().find(|j| j.sub == sub) {
            j.live = true;
        }
        let waiting: Vec<(u64, Event)> = {
            let mut early = self.early.borrow_mut();
            let (mine, rest) = std::mem::take(&mut *early)
                .into_iter()
                .partition(|(s, _)| *s == sub);
            *early = rest;
            mine
        };
        for (_, e) in waiting {
            self.early_bytes.set(self.early_bytes.get() - e.len());
            self.take_event(sub, &e);
        }
    }

    /// An event for a live subscription; a `left` event ends it here too.
    fn take_event(&self, sub: u64, event: &Event) {
        if event.kind() == EventKind::Left {
            self.joined.borrow_mut().retain(|j| j.sub != sub);
        }
        self.emit(event);
    }
}

/// The connection as the engine sees it.
struct Sink(Rc<Link>);

impl LocalSink for Sink {
    fn queued_bytes(&self) -> usize {
        self.0.out.len() + self.0.early_bytes.get()
    }

    fn deliver(&self, sub: u64, event: &Event) {
        let link = &self.0;
        let live = match link.joined.borrow().iter().find(|j| j.sub == sub) {
            None => return, // left the room; the event was already on its way
            Some(j) => j.live,
        };
        if live {
            link.take_event(sub, event);
        } else {
            link.early_bytes.set(link.early_bytes.get() + event.len());
            link.early.borrow_mut().push((sub, event.clone()));
        }
    }

    fn closed(&self, why: EngineError) {
        *self.0.ended.borrow_mut() = Some(why);
        self.0.out.wake();
    }
}

/// A move a join decided: where to, the socket's duplicate, and the join
/// frame, which the new shard handles.
struct Moving {
    to: usize,
    fd: std::os::fd::OwnedFd,
    frame: String,
}

/// How serving a connection ended.
enum Served {
    /// A close frame is queued: it is sent, and the socket lingers.
    Close,
    /// The socket is gone (or takes nothing): nothing more is written.
    Gone,
    /// It moves to another shard.
    Move(Box<Moving>),
}

/// One connection's state.
struct Conn {
    shared: Rc<Shared>,
    link: Rc<Link>,
    endpoint: Endpoint,
    ctx: WebSocketContext,
    pipe: Pipe,
    /// Inflates compressed messages (when permessage-deflate was agreed).
    inflow: Option<Box<Inflow>>,
    /// The connection's engine inbox, opened on its first join (a
    /// connection in no room costs the engine nothing).
    inbox: Option<LocalInbox>,
    /// Complete frames wait in the adapter: handling them stopped at the
    /// output bound, or for a pause.
    backlog: bool,
    /// A rate limit refused one of its frames: the rest are not handled,
    /// nor the socket read, for this long (see `net::REFUSED_PAUSE_MAX`).
    pause: Option<Duration>,
    /// What authenticated it (session or JWT) and so its user, once
    /// authenticated.
    proof: Option<auth::Proof>,
    /// Its deadlines, watched by the shard's sweep.
    clock: Rc<Deadlines>,
    /// It came from another shard (`moving.rs`), and moves no more.
    arrived: bool,
    /// A join decided a move (boxed: every idle connection holds the
    /// field).
    moving: Option<Box<Moving>>,
    /// Declared last: closes the output once the rest is gone.
    _stop_writing: StopWriting,
}

impl Drop for Conn {
    /// Rooms relayed from other nodes are let go here (the engine's end
    /// with the inbox).
    fn drop(&mut self) {
        if let Some(p) = &self.proof {
            self.shared.seen.note(p.user, auth::now_ms());
        }
        if let Some(relay) = &self.shared.relay {
            for j in self.link.joined.borrow().iter().filter(|j| j.remote) {
                relay.unsubscribe(j.room, j.sub);
            }
        }
    }
}

/// Ends writing to the socket before it is closed, and drops what was
/// never written: part of the connection's state, which is declared after
/// its socket and so dropped before it (a descriptor number the kernel
/// reuses is never written to by the flusher).
struct StopWriting(Rc<Out>, Rc<Flusher>);

impl Drop for StopWriting {
    fn drop(&mut self) {
        self.0.close();
        drop(self.1.take(&self.0));
    }
}

/// Serves an upgraded connection until either side closes it or the
/// shard stops (1001); or, once a join decides that it moves to the room's
/// shard, what that shard needs to go on serving it (`moving.rs`).
///
/// This future is what an idle connection costs (measured by
/// `rookery-bench idle`), so what it holds across its waits is kept small:
/// handlers and the closing linger are boxed while they run.
pub async fn run(accepted: Box<Accepted>, shared: Rc<Shared>) -> Option<Box<Handoff>> {
    // Boxed: an async fn's parameters and the locals moved out of them
    // would both take room in the future.
    let Accepted {
        mut conn,
        leftover,
        proof,
        endpoint,
        deflate,
    } = *accepted;
    let frame_max = shared.cfg.ws_frame_bytes_max;
    let now = Instant::now();
    let auth_by = (endpoint == Endpoint::Chat && proof.is_none())
        .then(|| now + Duration::from_millis(shared.cfg.ws_auth_timeout_ms));
    let deflate_min = deflate
        .filter(|n| n.server_compresses)
        .map(|_| shared.cfg.ws_deflate_min_bytes);
    let inflow = deflate.map(|n| Box::new(Inflow::new(n, frame_max)));
    let ctx = WebSocketContext::new(Role::Server, Some(ws_config(&shared)));
    if let Some(h) = shared.my_http() {
        h.ws_opened.fetch_add(1, Ordering::Relaxed);
    }
    let mut c = Conn::new(shared, &conn, endpoint, ctx, deflate_min, inflow, auth_by);
    let refused = !c.take_input(&leftover);
    drop(leftover);
    if refused {
        Box::pin(c.finish(conn)).await;
        return None;
    }
    if let Some(p) = proof {
        if !c.authenticated(p) {
            Box::pin(c.finish(conn)).await;
            return None;
        }
        let hello = ServerFrame::Hello {
            user: p.user,
            heartbeat_ms: c.heartbeat_ms(),
            node: c.node_id(),
        };
        c.send(&hello, None);
    }
    match c.serve(&mut conn).await {
        Served::Close => Box::pin(c.finish(conn)).await,
        Served::Gone => {}
        Served::Move(m) => return Some(c.depart(conn, *m)),
    }
    None
}

/// Goes on serving a connection that moved here from another shard: what
/// it was owed first, then its join frame, then the frames behind it.
pub async fn resume(h: Box<Handoff>, shared: Rc<Shared>) {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let Handoff {
        fd,
        endpoint,
        ctx,
        inflow,
        deflate_min,
        rx,
        frame,
        owed,
        proof,
        heard,
        pinged,
        warned,
        notice_seen,
        ..
    } = *h;
    // SAFETY: the descriptor is a connected TCP socket that nothing else
    // owns (`into_raw_fd` gave up the `OwnedFd`'s ownership of it).
    let stream = unsafe { glommio::net::TcpStream::from_raw_fd(fd.into_raw_fd()) };
    let mut conn = Socket { stream, tls: None };
    let mut c = Conn::new(shared, &conn, endpoint, ctx, deflate_min, inflow, None);
    c.arrived = true;
    c.pipe.rx = rx;
    c.shared.flusher.push(&c.link.out, &owed);
    drop(owed);
    if let Some(h) = c.shared.my_http() {
        h.ws_moves.fetch_add(1, Ordering::Relaxed);
    }
    if !c.authenticated(proof) {
        // Logged out on the way.
        return Box::pin(c.finish(conn)).await;
    }
    c.clock.arrived(heard, pinged, warned, notice_seen);
    Box::pin(c.handle(&frame)).await;
    drop(frame);
    match c.serve(&mut conn).await {
        Served::Close => Box::pin(c.finish(conn)).await,
        Served::Gone => {}
        Served::Move(_) => unreachable!("a connection moves once"),
    }
}

/// The WebSocket limits of every connection.
fn ws_config(shared: &Shared) -> WebSocketConfig {
    let frame_max = shared.cfg.ws_frame_bytes_max;
    WebSocketConfig::default()
        .read_buffer_size(FRAME_READ_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(frame_max))
        .max_frame_size(Some(frame_max))
}

/// The reason of the 4001 close that ends a connection's credential: what
/// a client acts on (sign in again, or get a fresh token from its backend).
fn credential_end_reason(due: Due, proof: Option<auth::Proof>) -> &'static str {
    let jwt = proof.is_some_and(|p| p.session.is_none());
    match (due, jwt) {
        (Due::Revoked, _) => "session ended (logged out): sign in again",
        (_, true) => "token expired: refresh it before its exp",
        _ => "session expired: sign in again",
    }
}

impl Conn {
    fn new(
        shared: Rc<Shared>,
        conn: &Socket,
        endpoint: Endpoint,
        ctx: WebSocketContext,
        deflate_min: Option<usize>,
        inflow: Option<Box<Inflow>>,
        auth_by: Option<Instant>,
    ) -> Conn {
        let out = Out::new(conn.fd(), conn.tls.clone());
        let link = Rc::new(Link {
            out: out.clone(),
            flusher: shared.flusher.clone(),
            shared: shared.clone(),
            deflate_min,
            joined: RefCell::new(Vec::new()),
            early: RefCell::new(Vec::new()),
            early_bytes: Cell::new(0),
            ended: RefCell::new(None),
        });
        let clock = shared
            .sweeper
            .register(out.clone(), auth_by, Instant::now());
        Conn {
            ctx,
            pipe: Pipe {
                rx: Vec::new(),
                at: 0,
                out: out.clone(),
                flusher: shared.flusher.clone(),
            },
            link,
            inflow,
            inbox: None,
            backlog: false,
            pause: None,
            proof: None,
            clock,
            endpoint,
            arrived: false,
            moving: None,
            _stop_writing: StopWriting(out, shared.flusher.clone()),
            shared,
        }
    }

    /// Serves the connection until it ends or moves. (By reference: an
    /// async fn keeps its by-value parameters twice, and this future is
    /// part of every idle connection.)
    async fn serve(&mut self, conn: &mut Socket) -> Served {
        // Ends by returning when the socket is gone, or by breaking once a
        // close frame is queued: then it is sent and the socket lingers.
        loop {
            if !self.process_input().await {
                break;
            }
            if let Some(m) = self.moving.take() {
                return Served::Move(m);
            }
            if let Some(pause) = self.pause.take() {
                // Not read, nor its frames handled; what it is owed is still
                // written by the flusher.
                Box::pin(net::sit_out(&self.shared, pause)).await;
            }
            match self.wait(conn).await {
                Wake::Input => self.clock.heard(Instant::now()),
                Wake::SocketClosed => return Served::Gone,
                Wake::Ended(e) => {
                    let (code, why) = match e {
                        EngineError::SlowConsumer => (CloseCode::Library(4008), "slow consumer"),
                        _ => (CloseCode::Away, "server shutting down"),
                    };
                    self.close(code, why);
                    break;
                }
                Wake::Tick => {
                    let _ = self
                        .ctx
                        .write(&mut self.pipe, Message::Ping(Default::default()));
                    let _ = self.ctx.flush(&mut self.pipe);
                    self.clock.pinged(Instant::now());
                }
                Wake::Idle => {
                    self.close(CloseCode::Away, "idle timeout");
                    break;
                }
                Wake::AuthTimeout => {
                    if let Some(h) = self.shared.http.get(self.shared.shard) {
                        h.auth_timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    self.close(CloseCode::Policy, "not authenticated in time");
                    break;
                }
                Wake::WriteTimeout => {
                    if let Some(h) = self.shared.http.get(self.shared.shard) {
                        h.write_timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    // Nothing more can be written: close without a close frame.
                    return Served::Gone;
                }
                Wake::CredentialEnded(due) => {
                    self.close(
                        CloseCode::Library(4001),
                        credential_end_reason(due, self.proof),
                    );
                    break;
                }
                Wake::Notice => {
                    if self.send_notices() {
                        self.close(CloseCode::Library(4003), "disconnected by the server");
                        break;
                    }
                }
                Wake::RefreshNeeded => {
                    if let Some(p) = self.proof {
                        let warn = ServerFrame::RefreshNeeded {
                            expires_ms: p.expires_ms,
                        };
                        self.send(&warn, None);
                    }
                }
                Wake::Stopping => {
                    self.close(CloseCode::Away, "server shutting down");
                    break;
                }
            }
        }
        Served::Close
    }

    /// The shard this connection should move to for its first join, if a
    /// move is due and allowed (`moving.rs`).
    fn move_target(&self, f: &ClientFrame<'_>) -> Option<usize> {
        let shared = &self.shared;
        if shared.cfg.no_ws_move
            || self.arrived
            // A TLS session stays with the shard that made it.
            || self.link.out.is_tls()
            || self.inbox.is_some()
            || !self.link.joined.borrow().is_empty()
            || self.link.out.is_blocked()
            || !self.ctx.can_write()
            || shared.stopping.load(Ordering::SeqCst)
        {
            return None;
        }
        let room = f.room?;
        if self.relay_of(room).is_some() {
            return None;
        }
        let to = shared.engine.shard_of(room);
        // Moves on their way to a shard count there already.
        let conns = |s: usize| {
            let h = shared.http.get(s)?;
            Some(h.connections.load(Ordering::Relaxed) + h.ws_moving_in.load(Ordering::Relaxed))
        };
        let (here, there) = (conns(shared.shard)?, conns(to)?);
        (to != shared.shard && to < shared.moves.len() && moving::balanced_after_move(here, there))
            .then_some(to)
    }

    /// Decides a move for the join frame `text`; whether it did (then the
    /// frame is left to the new shard).
    fn move_for_join(&mut self, f: &ClientFrame<'_>, text: &str) -> bool {
        let Some(to) = self.move_target(f) else {
            return false;
        };
        // SAFETY: the descriptor is this connection's socket, open for as
        // long as `self` holds its stream.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.link.out.fd()) };
        match fd.try_clone_to_owned() {
            Ok(fd) => {
                self.moving = Some(Box::new(Moving {
                    to,
                    fd,
                    frame: text.to_owned(),
                }));
                true
            }
            // Out of descriptors: it stays.
            Err(_) => false,
        }
    }

    /// Hands the connection over: nothing more is written here, what it
    /// is owed goes along, and the socket's own descriptor is closed (the
    /// duplicate carries the connection).
    fn depart(mut self, conn: Socket, m: Moving) -> Box<Handoff> {
        let Moving { to, fd, frame } = m;
        let out = &self.link.out;
        out.close();
        let owed = self.shared.flusher.take(out);
        let (heard, pinged, warned) = self.clock.leaving();
        let rx = self.pipe.rx.split_off(self.pipe.at);
        // The stand-in is small (`ws_config`'s read buffer): it is dropped
        // at once.
        let stand_in = WebSocketContext::new(Role::Server, Some(ws_config(&self.shared)));
        let ctx = std::mem::replace(&mut self.ctx, stand_in);
        let h = Box::new(Handoff {
            to,
            fd,
            endpoint: self.endpoint,
            ctx,
            inflow: self.inflow.take(),
            deflate_min: self.link.deflate_min,
            rx,
            frame,
            owed,
            proof: self.proof.expect("only an authenticated connection joins"),
            heard,
            pinged,
            warned,
            notice_seen: self.clock.notice_seen.get(),
            counted: None,
        });
        drop(self);
        drop(conn);
        h
    }
    /// Takes what authenticated the connection: its user, and its
    /// credential on the shard's clock. False (and a 4001 close queued)
    /// when the session was ended meanwhile.
    fn authenticated(&mut self, p: auth::Proof) -> bool {
        let left_ms = p.expires_ms.saturating_sub(auth::now_ms());
        self.clock.authenticated(Credential {
            expires: Instant::now() + Duration::from_millis(left_ms),
            session: p.session,
            user: p.user,
        });
        self.proof = Some(p);
        self.shared.seen.note(p.user, auth::now_ms());
        if p.session.is_some_and(|h| self.shared.revoked.contains(&h)) {
            self.close(
                CloseCode::Library(4001),
                credential_end_reason(Due::Revoked, Some(p)),
            );
            return false;
        }
        true
    }

    /// Writes the user's notices (invitations) it has not sent yet;
    /// whether one of them disconnects.
    fn send_notices(&mut self) -> bool {
        let Some(p) = self.proof else {
            return false;
        };
        for (seq, what) in self
            .shared
            .notices
            .for_user(p.user, self.clock.notice_seen.get())
        {
            self.clock.notice_seen.set(seq);
            match what {
                What::Frame(frame) => self.link.send_data(frame.as_bytes(), Data::Text),
                What::Disconnect => return true,
            }
        }
        false
    }

    /// This node's id, in a cluster.
    fn node_id(&self) -> Option<u32> {
        self.shared.cluster.as_ref().map(|n| n.cfg.node_id)
    }

    fn heartbeat_ms(&self) -> u64 {
        self.shared.cfg.ws_heartbeat_ms
    }

    fn is_joined(&self, room: u64) -> bool {
        self.link.joined.borrow().iter().any(|j| j.room == room)
    }

    /// Ends this connection's subscription to `room`; whether it had one.
    fn drop_room(&mut self, room: u64) -> bool {
        let (sub, remote) = {
            let mut joined = self.link.joined.borrow_mut();
            let Some(at) = joined.iter().position(|j| j.room == room) else {
                return false;
            };
            let j = joined.swap_remove(at);
            (j.sub, j.remote)
        };
        self.link.early.borrow_mut().retain(|(s, e)| {
            let mine = *s == sub;
            if mine {
                self.link
                    .early_bytes
                    .set(self.link.early_bytes.get() - e.len());
            }
            !mine
        });
        if remote {
            if let Some(relay) = &self.shared.relay {
                relay.unsubscribe(room, sub);
            }
        } else if let Some(inbox) = &self.inbox {
            inbox.unsubscribe(sub);
        }
        true
    }

    /// The shard's relay, when `room` is owned by another node.
    fn relay_of(&self, room: u64) -> Option<Rc<Relay>> {
        self.shared.relay.clone().filter(|r| r.is_remote(room))
    }

    /// Refuses a join past `--ws-rooms-per-connection-max`.
    fn room_slot(&self) -> Result<(), ApiError> {
        let max = self.shared.cfg.ws_rooms_per_connection_max;
        if self.link.joined.borrow().len() < max {
            return Ok(());
        }
        if let Some(h) = self.shared.http.get(self.shared.shard) {
            h.rooms_refused.fetch_add(1, Ordering::Relaxed);
        }
        Err(ApiError::TooManyRooms(format!(
            "a connection may join at most {max} rooms (--ws-rooms-per-connection-max)"
        )))
    }

    /// Joins a room another node owns, through the shard's relay.
    async fn join_remote(
        &mut self,
        relay: Rc<Relay>,
        user: u64,
        room: u64,
        since: Option<u64>,
        r#ref: Option<&RawValue>,
    ) -> Result<(), ApiError> {
        if self.is_joined(room) {
            let (last_seq, online) = ops::join(relay.node(), room, user).await?;
            let reply = ServerFrame::Joined {
                room,
                last_seq,
                online,
            };
            self.send(&reply, r#ref);
            return Ok(());
        }
        self.room_slot()?;
        let link = self.link.clone();
        let sink: Rc<dyn LocalSink> = Rc::new(Sink(link.clone()));
        let joined = relay
            .subscribe(room, user, since, sink, |sub| {
                link.joined.borrow_mut().push(Joined {
                    room,
                    sub,
                    live: false,
                    remote: true,
                })
            })
            .await;
        match joined {
            Ok(j) => {
                let reply = ServerFrame::Joined {
                    room,
                    last_seq: j.last_seq,
                    online: j.online,
                };
                self.send(&reply, r#ref);
                self.link.go_live(j.sub);
                Ok(())
            }
            Err(e) => {
                self.drop_room(room);
                Err(e)
            }
        }
    }

    /// Whether the output is over the bound (the connection is not read
    /// and its frames wait).
    fn over_bound(&self) -> bool {
        self.link.out.len() >= self.shared.cfg.conn_output_bytes_max
    }

    /// Waits for the next thing to do. One hand-written poll over the
    /// socket (read, and write while the flusher could not finish), the
    /// engine's verdict, the shard's sweep and the stop signal: this future
    /// is part of every idle connection, so it is kept lean (no timer of
    /// its own).
    async fn wait(&mut self, conn: &mut Socket) -> Wake {
        let mut received = Vec::new();
        let wake = {
            let shared = self.shared.clone();
            let (link, clock, backlog) = (self.link.clone(), self.clock.clone(), self.backlog);
            let mut stop = pin!(shared.stopped());
            let mut take = |b: &[u8]| received.extend_from_slice(b);
            futures_lite::future::poll_fn(|cx| {
                let out = &link.out;
                out.park(cx.waker());
                if let Some(e) = link.ended.borrow_mut().take() {
                    return Poll::Ready(Wake::Ended(e));
                }
                // Stopping first: a chatty client must not hold it off.
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Stopping);
                }
                if let Some(due) = clock.take_due() {
                    return Poll::Ready(match due {
                        Due::WriteTimeout => Wake::WriteTimeout,
                        Due::AuthTimeout => Wake::AuthTimeout,
                        Due::Idle => Wake::Idle,
                        Due::Ping => Wake::Tick,
                        Due::RefreshNeeded => Wake::RefreshNeeded,
                        Due::Notice => Wake::Notice,
                        due @ (Due::Revoked | Due::Expired) => Wake::CredentialEnded(due),
                    });
                }
                if out.is_blocked() {
                    let written = link.flusher.poll_write_blocked(out, |bytes| {
                        Pin::new(&mut conn.stream).poll_write(cx, bytes)
                    });
                    if written == Poll::Ready(false) {
                        return Poll::Ready(Wake::SocketClosed);
                    }
                }
                let readable = out.len() < shared.cfg.conn_output_bytes_max;
                out.set_throttled(!readable);
                if readable && backlog {
                    return Poll::Ready(Wake::Input);
                }
                if readable {
                    if let Poll::Ready(r) = net::poll_read_with(conn, cx, &mut take) {
                        return Poll::Ready(match r {
                            Ok(0) | Err(_) => Wake::SocketClosed,
                            Ok(_) => Wake::Input,
                        });
                    }
                }
                Poll::Pending
            })
            .await
        };
        self.shared.local.note_work();
        if matches!(wake, Wake::Input) && !received.is_empty() && !self.take_input(&received) {
            return Wake::Input; // a close frame is queued; process_input ends
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

    /// Sends what is queued (within the write deadline), then lingers and
    /// closes. The subscriptions end first: nothing more is delivered to a
    /// closing connection.
    async fn finish(mut self, mut conn: Socket) {
        drop(self.inbox.take());
        self.link.early.borrow_mut().clear();
        self.link.early_bytes.set(0);
        let out = &self.link.out;
        out.close();
        let bytes = self.link.flusher.take(out);
        let written = net::write_within(&self.shared, &mut conn, &bytes).await;
        drop(self);
        if written {
            net::linger_close(conn).await;
        }
    }

    fn send_text(&self, text: &str) {
        self.link.send_text(text);
    }

    /// Queues a frame, with the `ref` of the frame it answers.
    fn send(&self, frame: &ServerFrame, r#ref: Option<&RawValue>) {
        self.send_text(&frame.text(r#ref));
    }

    /// An `error` frame, counted by code in the metrics.
    fn error(&self, code: &'static str, message: &str) -> ServerFrame {
        if let Some(h) = self.shared.http.get(self.shared.shard) {
            h.error_sent(code);
        }
        ServerFrame::Error {
            code,
            message: message.to_string(),
            retry_after_ms: None,
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

    /// Handles every complete frame buffered, until the output bound;
    /// false when the connection is over (closed by the client, or a
    /// protocol error was answered with a close frame).
    async fn process_input(&mut self) -> bool {
        self.backlog = false;
        loop {
            let waiting = self.pipe.at < self.pipe.rx.len();
            if waiting && (self.over_bound() || self.pause.is_some()) {
                // The rest waits until the client reads what it is owed,
                // or for the end of the pause.
                self.backlog = true;
                return true;
            }
            match self.ctx.read(&mut self.pipe) {
                Ok(Message::Text(text)) if self.endpoint == Endpoint::Echo => {
                    self.send_text(text.as_str());
                }
                Ok(Message::Binary(data)) if self.endpoint == Endpoint::Echo => {
                    self.link.send_data(&data, Data::Binary);
                }
                Ok(Message::Text(text)) => {
                    // Boxed: the handler's state exists only while it runs,
                    // not in every idle connection's future.
                    Box::pin(self.handle(text.as_str())).await;
                    if self.moving.is_some() {
                        // The rest is for the shard it moves to.
                        return true;
                    }
                }
                Ok(Message::Binary(_)) => {
                    let frame = self.error("bad_frame", "frames must be JSON text");
                    self.send(&frame, None);
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

    /// One client frame: its reply (or `error` frame) is queued.
    async fn handle(&mut self, text: &str) {
        let f = match protocol::parse(text) {
            Ok(f) => f,
            Err(refused) => {
                let frame = self.error(refused.code, &refused.message);
                return self.send(&frame, None);
            }
        };
        let r#ref = f.r#ref;
        let kind = f.kind();
        if let Some(p) = &self.proof {
            self.shared.seen.note(p.user, auth::now_ms());
        }
        if kind == "join" && self.proof.is_some() && self.move_for_join(&f, text) {
            return;
        }
        if !protocol::CLIENT_TYPES.contains(&kind) {
            let frame = self.error("unknown_type", &format!("unknown type {kind:?}"));
            return self.send(&frame, r#ref);
        }
        let result = match (kind, self.proof.map(|p| p.user)) {
            ("ping", _) => Ok(Some(ServerFrame::Pong)),
            ("refresh", Some(u)) => self.refresh(u, &f).await.map(Some),
            ("auth", _) => self.auth(&f).await.map(Some),
            (_, None) => Err(ApiError::Unauthorized(
                "authenticate first (?token= on the upgrade or an auth frame)".into(),
            )),
            ("join", Some(u)) => match app::take_join_token(&self.shared, u).await {
                Ok(()) => self.join(u, &f, r#ref).await.map(|()| None),
                Err(e) => Err(e),
            },
            ("leave", Some(u)) => match app::take_join_token(&self.shared, u).await {
                Ok(()) => self.leave(&f).map(Some),
                Err(e) => Err(e),
            },
            ("send", Some(u)) => self.post(u, &f, r#ref).await.map(|()| None),
            ("edit", Some(u)) => self.change(u, &f, true).await.map(Some),
            ("delete", Some(u)) => self.change(u, &f, false).await.map(Some),
            ("react", Some(u)) => self.react(u, &f).await.map(Some),
            ("typing", Some(u)) => self.typing(u, &f).await.map(Some),
            ("read", Some(u)) => self.read(u, &f).await.map(Some),
            ("history", Some(u)) => self.history(u, &f, r#ref).await,
            _ => unreachable!("every known type is handled above"),
        };
        match result {
            Ok(Some(reply)) => self.send(&reply, r#ref),
            Ok(None) => {} // the handler wrote its reply
            Err(e) => {
                let (_, code, message) = e.parts();
                let mut frame = self.error(code, &message);
                if let (
                    ApiError::RateLimited { retry_after_ms, .. },
                    ServerFrame::Error {
                        retry_after_ms: retry,
                        ..
                    },
                ) = (&e, &mut frame)
                {
                    *retry = Some(*retry_after_ms);
                    self.pause = Some(crate::net::refused_pause(*retry_after_ms));
                }
                self.send(&frame, r#ref);
            }
        }
    }

    async fn auth(&mut self, f: &ClientFrame<'_>) -> Result<ServerFrame, ApiError> {
        let p = self.take_token(f, None).await?;
        Ok(ServerFrame::Hello {
            user: p.user,
            heartbeat_ms: self.heartbeat_ms(),
            node: self.node_id(),
        })
    }

    /// `refresh {token}`: a newer token of the same user replaces the one
    /// the connection runs on (a JWT before its `exp`, typically after
    /// `refresh_needed`).
    async fn refresh(&mut self, user: u64, f: &ClientFrame<'_>) -> Result<ServerFrame, ApiError> {
        let p = self.take_token(f, Some(user)).await?;
        Ok(ServerFrame::Refreshed {
            expires_ms: p.expires_ms,
        })
    }

    /// Authenticates the connection with the frame's `token` (for
    /// `refresh`, one of the `same` user only).
    async fn take_token(
        &mut self,
        f: &ClientFrame<'_>,
        same: Option<u64>,
    ) -> Result<auth::Proof, ApiError> {
        let token = ClientFrame::need_str(&f.token, "token").map_err(ApiError::BadRequest)?;
        let accounts = crate::accounts::Accounts::of(&self.shared);
        let p = match auth::identify(&accounts, &self.shared.cfg, token.to_string()).await? {
            auth::Identity::User(p) => p,
            auth::Identity::Refused(why) => return Err(ApiError::Unauthorized(why)),
        };
        if same.is_some_and(|u| u != p.user) {
            return Err(ApiError::Forbidden(
                "the token is another user's: open a new connection".into(),
            ));
        }
        if !self.authenticated(p) {
            return Err(ApiError::Unauthorized("the session has ended".into()));
        }
        Ok(p)
    }

    /// Joins (or re-answers a join of) a room. The reply is written here,
    /// before the events that waited for it.
    async fn join(
        &mut self,
        user: u64,
        f: &ClientFrame<'_>,
        r#ref: Option<&RawValue>,
    ) -> Result<(), ApiError> {
        let room = need(f.room, "room")?;
        if let Some(relay) = self.relay_of(room) {
            return self.join_remote(relay, user, room, f.since, r#ref).await;
        }
        // A public room is joined (as a member) by subscribing to it; the
        // room's owner answers a member from memory.
        self.shared.engine.ensure_member(room, user).await?;
        let mut joined_now = None;
        if !self.is_joined(room) {
            self.room_slot()?;
            let inbox = self
                .inbox
                .get_or_insert_with(|| self.shared.local.inbox(Rc::new(Sink(self.link.clone()))));
            // Known to the sink before the engine can deliver anything of
            // it (a replay may come at once): its events wait in `early`
            // until the `joined` answer is out.
            let link = &self.link;
            let subscribed = inbox.subscribe_as(room, f.since, Some(user), |sub| {
                link.joined.borrow_mut().push(Joined {
                    room,
                    sub,
                    live: false,
                    remote: false,
                })
            });
            match subscribed.await {
                Ok(sub) => joined_now = Some(sub),
                Err(e) => {
                    self.drop_room(room);
                    return Err(e.into());
                }
            }
        }
        let engine = &self.shared.engine;
        // Both asked at once: one round trip to the owner, not two.
        let state = async {
            let (last, online) = futures_lite::future::zip(
                engine.last_seq(room).into_future(),
                engine.online(room).into_future(),
            )
            .await;
            Ok::<_, EngineError>((last?, online?))
        };
        let (last, online) = match state.await {
            Ok(s) => s,
            Err(e) => {
                // Not answered: the subscription must not stay half open.
                if joined_now.is_some() {
                    self.drop_room(room);
                }
                return Err(e.into());
            }
        };
        let reply = ServerFrame::Joined {
            room,
            last_seq: last,
            online,
        };
        self.send(&reply, r#ref);
        if let Some(sub) = joined_now {
            self.link.go_live(sub);
        }
        Ok(())
    }

    fn leave(&mut self, f: &ClientFrame<'_>) -> Result<ServerFrame, ApiError> {
        let room = need(f.room, "room")?;
        if !self.drop_room(room) {
            return Err(ApiError::NotFound(format!("not joined to room {room}")));
        }
        Ok(ServerFrame::Left { room })
    }

    /// A message: the room's owner checks that the user may post, stores
    /// it and answers; the ack is written here, straight into the output.
    async fn post(
        &mut self,
        user: u64,
        f: &ClientFrame<'_>,
        r#ref: Option<&RawValue>,
    ) -> Result<(), ApiError> {
        let room = need(f.room, "room")?;
        let body = ClientFrame::need_str(&f.body, "body").map_err(ApiError::BadRequest)?;
        let client_id = f.client_id.as_deref().unwrap_or("");
        let files = app::upload_ids(f.files.as_deref().unwrap_or_default())?;
        app::take_send_token(&self.shared, user).await?;
        let ack = match self.relay_of(room) {
            Some(relay) => {
                let op = Op::Post {
                    room,
                    user,
                    client_id: client_id.to_string(),
                    body: body.to_string(),
                    reply_to: f.reply_to,
                    files: files.iter().map(|id| format!("{id:032x}")).collect(),
                };
                let Answer::Posted { seq, ts, duplicate } = ops::ask(relay.node(), &op).await?
                else {
                    return Err(ApiError::Internal("a post answered something else".into()));
                };
                rookery_engine::PostAck {
                    seq,
                    ts_ms: ts,
                    duplicate,
                }
            }
            None => {
                let shared = &self.shared;
                let post = || async {
                    let files = files.clone();
                    Ok(shared
                        .local
                        .post_with(room, user, client_id, body, f.reply_to, files)
                        .await?)
                };
                crate::cluster::uploads::carrying(shared, user, room, &files, post).await?
            }
        };
        ACK.with(|json| {
            let mut json = json.borrow_mut();
            write_ack(&mut json, r#ref, room, &ack);
            self.link.send_data(&json, Data::Text);
        });
        Ok(())
    }

    async fn change(
        &mut self,
        user: u64,
        f: &ClientFrame<'_>,
        edit: bool,
    ) -> Result<ServerFrame, ApiError> {
        let (room, seq) = (need(f.room, "room")?, need(f.seq, "seq")?);
        if let Some(relay) = self.relay_of(room) {
            let op = if edit {
                let body = ClientFrame::need_str(&f.body, "body").map_err(ApiError::BadRequest)?;
                Op::Edit {
                    room,
                    user,
                    seq,
                    body: body.to_string(),
                }
            } else {
                Op::Delete { room, user, seq }
            };
            ops::ask(relay.node(), &op).await?;
        } else {
            self.change_here(user, room, seq, f, edit).await?;
        }
        Ok(ServerFrame::Ack {
            room,
            seq: Some(seq),
            ts: None,
            duplicate: None,
        })
    }

    async fn change_here(
        &mut self,
        user: u64,
        room: u64,
        seq: u64,
        f: &ClientFrame<'_>,
        edit: bool,
    ) -> Result<(), ApiError> {
        app::readable_room(&self.shared, user, room).await?;
        if edit {
            let body = ClientFrame::need_str(&f.body, "body").map_err(ApiError::BadRequest)?;
            self.shared.engine.edit(room, seq, user, body).await?;
        } else {
            self.shared.engine.delete(room, seq, user).await?;
        }
        Ok(())
    }

    /// A reaction put on (`on`, the default) or taken off; stored, so it
    /// spends a send token.
    async fn react(&mut self, user: u64, f: &ClientFrame<'_>) -> Result<ServerFrame, ApiError> {
        let (room, seq) = (need(f.room, "room")?, need(f.seq, "seq")?);
        let emoji = ClientFrame::need_str(&f.emoji, "emoji").map_err(ApiError::BadRequest)?;
        let on = f.on.unwrap_or(true);
        app::take_send_token(&self.shared, user).await?;
        match self.relay_of(room) {
            Some(relay) => {
                let op = Op::React {
                    room,
                    user,
                    seq,
                    emoji: emoji.to_string(),
                    on,
                };
                ops::ask(relay.node(), &op).await?;
            }
            None => {
                app::readable_room(&self.shared, user, room).await?;
                self.shared.engine.react(room, seq, user, emoji, on).await?;
            }
        }
        Ok(ServerFrame::Ack {
            room,
            seq: Some(seq),
            ts: None,
            duplicate: None,
        })
    }

    async fn typing(&mut self, user: u64, f: &ClientFrame<'_>) -> Result<ServerFrame, ApiError> {
        let room = need(f.room, "room")?;
        if !self.is_joined(room) {
            return Err(ApiError::NotFound(format!("not joined to room {room}")));
        }
        match self.relay_of(room) {
            Some(relay) => drop(ops::ask(relay.node(), &Op::Typing { room, user }).await?),
            None => self.shared.engine.typing(room, user).await?,
        }
        Ok(ServerFrame::Ack {
            room,
            seq: None,
            ts: None,
            duplicate: None,
        })
    }

    async fn read(&mut self, user: u64, f: &ClientFrame<'_>) -> Result<ServerFrame, ApiError> {
        let (room, seq) = (need(f.room, "room")?, need(f.seq, "seq")?);
        if let Some(relay) = self.relay_of(room) {
            let Answer::Read { seq: stored } =
                ops::ask(relay.node(), &Op::Read { room, user, seq }).await?
            else {
                return Err(ApiError::Internal("a read answered something else".into()));
            };
            return Ok(ServerFrame::Receipt {
                room,
                user,
                seq: stored,
            });
        }
        app::readable_room(&self.shared, user, room).await?;
        let stored = self.shared.engine.mark_read(room, user, seq).await?;
        Ok(ServerFrame::Receipt {
            room,
            user,
            seq: stored,
        })
    }

    async fn history(
        &mut self,
        user: u64,
        f: &ClientFrame<'_>,
        r#ref: Option<&RawValue>,
    ) -> Result<Option<ServerFrame>, ApiError> {
        let room = need(f.room, "room")?;
        let Some(relay) = self.relay_of(room) else {
            return self.history_here(user, room, f).await.map(Some);
        };
        let op = Op::History {
            room,
            user,
            before: f.before,
            after: f.after,
            limit: f.limit,
        };
        let Answer::Page {
            page: serde_json::Value::Object(mut page),
        } = ops::ask(relay.node(), &op).await?
        else {
            return Err(ApiError::Internal(
                "a history answered something else".into(),
            ));
        };
        // The owner's page, framed here as the typed frame would be.
        page.insert("type".into(), "history".into());
        if let Some(r) = r#ref {
            let r = serde_json::from_str(r.get()).unwrap_or(serde_json::Value::Null);
            page.insert("ref".into(), r);
        }
        self.send_text(&serde_json::Value::Object(page).to_string());
        Ok(None)
    }

    async fn history_here(
        &mut self,
        user: u64,
        room: u64,
        f: &ClientFrame<'_>,
    ) -> Result<ServerFrame, ApiError> {
        app::readable_room(&self.shared, user, room).await?;
        let q = PageQuery {
            before: f.before,
            after: f.after,
            limit: f.limit,
            bytes_max: None,
            reader: Some(user),
        };
        let (page, _) = app::history_page(&self.shared, room, q).await?;
        Ok(ServerFrame::History(page))
    }
}

/// The answer to `send`: `ServerFrame::Ack` with `seq`, `ts` and
/// `duplicate`, written by hand into a reused buffer (it is one per
/// message sent; serde through `ServerFrame::text` would allocate twice).
/// `the_hand_written_ack_is_the_typed_one` checks they agree.
fn write_ack(
    json: &mut Vec<u8>,
    r#ref: Option<&RawValue>,
    room: u64,
    ack: &rookery_engine::PostAck,
) {
    use std::io::Write as _;
    json.clear();
    json.extend_from_slice(br#"{"type":"ack""#);
    if let Some(r) = r#ref {
        json.extend_from_slice(br#","ref":"#);
        json.extend_from_slice(r.get().as_bytes());
    }
    let _ = write!(
        json,
        r#","room":{room},"seq":{},"ts":{},"duplicate":{}}}"#,
        ack.seq, ack.ts_ms, ack.duplicate
    );
}

fn need(field: Option<u64>, name: &str) -> Result<u64, ApiError> {
    ClientFrame::need(field, name).map_err(ApiError::BadRequest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_written_ack_is_the_typed_one() {
        let raw = serde_json::value::RawValue::from_string(r#"{"n":[1,"x"]}"#.into()).unwrap();
        for (r#ref, duplicate) in [(None, false), (Some(&*raw), true)] {
            let ack = rookery_engine::PostAck {
                seq: 42,
                ts_ms: 1_700_000_000_123,
                duplicate,
            };
            let mut by_hand = Vec::new();
            write_ack(&mut by_hand, r#ref, 7, &ack);
            let typed = ServerFrame::Ack {
                room: 7,
                seq: Some(42),
                ts: Some(1_700_000_000_123),
                duplicate: Some(duplicate),
            }
            .text(r#ref);
            let a: serde_json::Value = serde_json::from_slice(&by_hand).unwrap();
            let b: serde_json::Value = serde_json::from_str(&typed).unwrap();
            assert_eq!(a, b);
        }
    }
}
