//! The network side of one shard: a listener on the shared port
//! (SO_REUSEPORT: the kernel spreads connections over shards) and one task
//! per connection, on the shard's executor.
//!
//! A connection task owns its socket and the bytes of a request in
//! progress; reads go through one scratch buffer per shard, borrowed only
//! while a read is polled, so an idle connection holds no read buffer
//! (on TLS, its session keeps one of a few KiB, `tls.rs`).
//! Framing decisions are `http::parse`'s. Invariant: a connection never
//! holds a shard for longer than its deadlines (idle between requests,
//! whole-request once a request has started), and a bad request is
//! answered with its status and the connection closed; nothing else is
//! affected.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use glommio::net::{TcpListener, TcpStream};

use crate::http::{self, Response};
use crate::net::{
    answer_and_close, client_ip, handshake as tls_handshake, is_trusted_proxy, linger_close,
    read_until, refused_pause, sit_out, write_within, Read, Socket, READ_CHUNK_BYTES,
};
use crate::routes;
use crate::shared::Shared;
use crate::ws::{self, handshake, Upgrade};

/// How long a shard waits after a failed accept (out of descriptors, say)
/// before it accepts again.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Connections past their address's limit a shard reads one request of at
/// once (to answer `/healthz`, `/readyz` and `/metrics` even then); more
/// are refused 429 without a read.
pub const OVER_LIMIT_READS_MAX: usize = 64;
/// How long such a connection has to send its request.
const OVER_LIMIT_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of such a request's head at most (a probe is one short line and
/// a few headers; no body is read).
const OVER_LIMIT_HEAD_BYTES_MAX: usize = 2048;

/// Counts a connection open while it lives (HTTP or upgraded).
struct Open(Rc<Shared>);

impl Open {
    fn new(shared: Rc<Shared>) -> Self {
        if let Some(h) = shared.my_http() {
            h.connections.fetch_add(1, Ordering::Relaxed);
        }
        Open(shared)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(h) = self.0.my_http() {
            h.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A listener on `addr` for one shard: SO_REUSEPORT, so that every shard
/// has its own on the same address (the kernel spreads connections), and
/// SO_REUSEADDR, so that a restarted server binds over the connections it
/// closed before (TIME_WAIT) instead of failing for a minute.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    // SAFETY: the descriptor is a bound, listening TCP socket that nothing
    // else owns (`into_raw_fd` gave up the socket's ownership of it).
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Binds the shard's listener, reports the outcome, accepts until
/// stopped, then closes every connection (WebSockets get 1001) and waits
/// for them, and reports on `drained`.
pub async fn run(
    shared: Rc<Shared>,
    bound: flume::Sender<Result<(), String>>,
    drained: flume::Sender<usize>,
) {
    // A cluster node serves nothing before it has the cluster's users and
    // sessions (a logout or a password change made while it was down
    // must hold here from its first request).
    let mut ops = None;
    if let Some(node) = &shared.cluster {
        while !node.replica().is_some_and(|r| r.caught_up()) {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        match node.subscribe_ops(shared.shard).await {
            Ok(sub) => ops = Some(sub),
            Err(e) => {
                let _ = bound.send(Err(format!("subscribing to this node's operations: {e}")));
                return;
            }
        }
    }
    let listener = match listen(shared.cfg.listen) {
        Ok(l) => l,
        Err(e) => {
            let _ = bound.send(Err(format!("binding {}: {e}", shared.cfg.listen)));
            return;
        }
    };
    if let Some(addr) = shared.cfg.tls_redirect_from {
        match listen(addr) {
            Ok(l) => {
                glommio::spawn_local(crate::redirect::serve(l, shared.clone())).detach();
            }
            Err(e) => {
                let _ = bound.send(Err(format!("binding --tls-redirect-from {addr}: {e}")));
                return;
            }
        }
    }
    let _ = bound.send(Ok(()));
    if let Some(node) = &shared.cluster {
        use crate::cluster::forward::{serve, Service};
        let requests = node.requests.clone();
        glommio::spawn_local(serve(shared.clone(), requests, Service::Http, None)).detach();
        // Operations on rooms, through this shard's wire (answered
        // through it) or the link; the subscription lives as long as the
        // task.
        if let Some(sub) = ops.take() {
            let (shared, wire) = (shared.clone(), crate::cluster::wire());
            glommio::spawn_local(async move {
                let messages = sub.messages().clone();
                serve(shared, messages, Service::Ops, wire).await;
                drop(sub);
            })
            .detach();
        }
        let heard = crate::cluster::notices::hear(shared.clone(), node.clone());
        glommio::spawn_local(heard).detach();
    }
    {
        let shared = shared.clone();
        glommio::spawn_local(async move {
            let sweeper = shared.sweeper.clone();
            sweeper.run(shared.stopped()).await;
        })
        .detach();
    }
    glommio::spawn_local(take_moved_in(shared.clone())).detach();
    glommio::spawn_local(crate::seen::run(shared.clone())).detach();
    // The main thread drops the stop channel's sender when it stops; a
    // watcher turns that into the shard's stop signal (no polling). The
    // accept is raced only with that signal, never with a timer: an
    // io_uring accept dropped after it completed would lose the connection
    // it accepted (the client would wait forever).
    let watcher = {
        let shared = shared.clone();
        glommio::spawn_local(async move {
            while shared.stop_signal.recv_async().await.is_ok() {}
            shared.stop.close();
        })
    };
    loop {
        let accepted = shared.unless_stopped(listener.accept()).await;
        match accepted {
            Some(Ok(stream)) => {
                let Ok(pass) = shared.gate.enter() else {
                    break;
                };
                let shared = shared.clone();
                glommio::spawn_local(admit(stream, shared, pass)).detach();
            }
            Some(Err(e)) => {
                tracing::warn!(shard = shared.shard, error = %e, "accept failed");
                glommio::timer::sleep(ACCEPT_RETRY).await;
            }
            None => break,
        }
    }
    watcher.await;
    drop(listener);
    tracing::debug!(shard = shared.shard, "listener closed; closing connections");
    let _ = shared.gate.close().await;
    // The connections just closed noted their users last.
    crate::seen::flush(&shared).await;
    if let Some(node) = &shared.cluster {
        node.stop_wire();
    }
    let _ = drained.send(shared.shard);
}

/// What a connection holds while it is open, in whichever task serves it:
/// its place under the per-address limit (none for a trusted proxy, whose
/// clients share its address), its count in the open connections gauge,
/// and its pass through the shutdown gate (none for a connection that
/// moved in as its shard stopped).
struct Held {
    counted: Option<crate::limits::Counted>,
    _open: Open,
    _pass: Option<glommio::sync::Pass>,
}

/// Serves the WebSocket connections that move to this shard (ws/moving.rs)
/// until it stops. Then the ones that were on their way get what they were
/// owed and a 1001 close like every other connection of the shard (a
/// source shard decides no move once stopping is set, so that only moves
/// decided just before can still arrive).
async fn take_moved_in(shared: Rc<Shared>) {
    let arrivals = shared.moved_in.clone();
    let arrived = |mut moving: Box<ws::moving::Handoff>, pass: Option<glommio::sync::Pass>| {
        if let Some(h) = shared.my_http() {
            h.ws_moving_in.fetch_sub(1, Ordering::Relaxed);
        }
        let held = Held {
            counted: moving.counted.take(),
            _open: Open::new(shared.clone()),
            _pass: pass,
        };
        let shared = shared.clone();
        glommio::spawn_local(async move {
            ws::resume(moving, shared).await;
            drop(held);
        })
        .detach();
    };
    while let Some(Ok(moving)) = shared.unless_stopped(arrivals.recv_async()).await {
        match shared.gate.enter() {
            Ok(pass) => arrived(moving, Some(pass)),
            Err(_) => {
                arrived(moving, None);
                break;
            }
        }
    }
    // Stopping: resumed, they see the stop and close (1001).
    glommio::timer::sleep(STOPPING_MOVES_WAIT).await;
    while let Ok(moving) = arrivals.try_recv() {
        arrived(moving, None);
    }
}

/// How long a stopping shard waits for connections moving to it that were
/// sent just before the stop, before it takes the last of them.
const STOPPING_MOVES_WAIT: Duration = Duration::from_millis(50);

/// A new connection from `ip`, counted against its address's limit: its
/// place (`None` inside: a trusted proxy, whose clients share its address
/// and are not held to it), or `None` past the limit.
pub(crate) fn count_connection(
    shared: &Shared,
    ip: std::net::IpAddr,
) -> Option<Option<crate::limits::Counted>> {
    if is_trusted_proxy(&shared.cfg.trusted_proxies, &ip) {
        return Some(None);
    }
    shared.limits.connect(ip).map(Some)
}

/// What reading one request head gave.
pub(crate) enum Head {
    Request(http::Request),
    Bad(http::HttpError),
    TimedOut,
    /// Closed, or its TLS session failed: nothing can be answered.
    Closed,
}

/// Reads until `buf` holds one complete request under `limits`, by
/// `deadline`.
pub(crate) async fn read_head(
    conn: &mut Socket,
    buf: &mut Vec<u8>,
    limits: &http::Limits,
    deadline: Instant,
) -> Head {
    loop {
        match http::parse(buf, limits) {
            Ok(Some((req, _))) => return Head::Request(req),
            Ok(None) => {}
            Err(e) => return Head::Bad(e),
        }
        match read_until(conn, buf, deadline).await {
            Read::Bytes(_) => {}
            Read::TimedOut => return Head::TimedOut,
            Read::Closed => return Head::Closed,
        }
    }
}

/// Counts the connection against its address's limit, then serves it; at
/// the limit it is answered 429 and closed. An upgraded connection moves to
/// a task of its own, so that what it costs while idle is only its
/// WebSocket state, not the HTTP task's.
async fn admit(stream: TcpStream, shared: Rc<Shared>, pass: glommio::sync::Pass) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    // Responses and events are small writes that must leave at once: no
    // Nagle delay waiting for the client's (delayed) acknowledgement.
    let _ = stream.set_nodelay(true);
    let counted = count_connection(&shared, peer.ip());
    // On a TLS listener each connection starts its session (the
    // handshake is the connection task's first read).
    let conn = Socket {
        stream,
        tls: shared.tls.as_ref().map(|t| t.accept()),
    };
    let Some(counted) = counted else {
        Box::pin(over_limit(conn, shared, peer.ip())).await;
        return;
    };
    let mut held = Held {
        counted,
        _open: Open::new(shared.clone()),
        _pass: Some(pass),
    };
    if let Some(up) = connection(conn, shared.clone(), peer.ip()).await {
        // The task's future is allocated once, at its largest state: the
        // handshake (token check, refusals) is boxed so that the long idle
        // state, `ws::run`, is all the task holds.
        let up = Box::new(up);
        let fut = async move {
            if let Some(accepted) = Box::pin(handshake(up, shared.clone())).await {
                if let Some(mut moving) = ws::run(accepted, shared.clone()).await {
                    moving.counted = held.counted.take();
                    let to = moving.to;
                    if let Some(h) = shared.http.get(to) {
                        h.ws_moving_in.fetch_add(1, Ordering::Relaxed);
                    }
                    // The receivers live as long as the shards' tasks: this
                    // does not fail. (A target that stopped meanwhile
                    // closes it, `take_moved_in`.)
                    let _ = shared.moves[to].send(moving);
                }
            }
            drop(held);
        };
        glommio::spawn_local(fut).detach();
    }
}

/// A connection past its address's connection limit: its one request is
/// answered if it is a probe (`GET /healthz`, `/readyz`, `/metrics`), so
/// that monitoring still works when a host behind one address (or an
/// attacker) holds every connection it may; anything else, a request not
/// sent within [`OVER_LIMIT_READ_TIMEOUT`] or longer than
/// [`OVER_LIMIT_HEAD_BYTES_MAX`], or a connection past
/// [`OVER_LIMIT_READS_MAX`] being read already, is answered 429 and
/// closed.
async fn over_limit(mut conn: Socket, shared: Rc<Shared>, peer: std::net::IpAddr) {
    let refusal = || {
        let limits = &shared.limits;
        limits.connections_refused.fetch_add(1, Ordering::Relaxed);
        Response::error(
            429,
            "too_many_connections",
            "too many connections from your address",
        )
    };
    let reading = shared.over_limit_reads.get();
    if reading >= OVER_LIMIT_READS_MAX && conn.tls.is_none() {
        answer_and_close(&shared, conn, Vec::new(), refusal()).await;
        return;
    }
    if reading >= OVER_LIMIT_READS_MAX {
        // A TLS refusal costs a handshake: past the bound, none is spent.
        shared
            .limits
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        return;
    }
    shared.over_limit_reads.set(reading + 1);
    let limits = http::Limits {
        head_bytes_max: OVER_LIMIT_HEAD_BYTES_MAX,
        headers_max: shared.cfg.http_headers_max,
        body_bytes_max: 0,
    };
    let deadline = Instant::now() + OVER_LIMIT_READ_TIMEOUT;
    let mut buf = Vec::new();
    let shook = tls_handshake(&shared, &mut conn, &mut buf, deadline).await;
    let head = match shook {
        true => read_head(&mut conn, &mut buf, &limits, deadline).await,
        false => Head::Closed,
    };
    shared
        .over_limit_reads
        .set(shared.over_limit_reads.get() - 1);
    let probe = match head {
        Head::Request(req) => Some(req),
        Head::Bad(_) | Head::TimedOut => None,
        Head::Closed => {
            // Refused (counted), with no way to answer.
            let limits = &shared.limits;
            limits.connections_refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let resp = match probe {
        Some(mut req) if req.method == "GET" && is_probe(&req.path) => {
            req.peer = Some(peer);
            let resp = Box::pin(routes::handle(&req, &shared)).await;
            if let Some(h) = shared.my_http() {
                h.answered(routes::route_name(&req), resp.status, resp.error_code);
            }
            resp
        }
        _ => refusal(),
    };
    answer_and_close(&shared, conn, Vec::new(), resp).await;
}

/// The paths monitoring probes: answered even past a connection limit.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Serves one HTTP/1.1 connection: keep-alive, pipelined requests answered
/// in order, deadlines, errors answered and closed; an upgrade request is
/// returned to be served elsewhere.
///
/// What the connection holds is bounded: pipelined requests are answered
/// only while the answers not yet written stay under
/// `--conn-output-bytes-max` (then they are written, under the write
/// deadline, before the next is read or answered), so a client that
/// pipelines and never reads costs at most the bound plus one response.
async fn connection(
    mut conn: Socket,
    shared: Rc<Shared>,
    peer: std::net::IpAddr,
) -> Option<Upgrade> {
    let limits = shared.cfg.http_limits();
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    // On TLS, the handshake first, within the time a request has (the
    // first request may come with its last flight).
    let began = Instant::now();
    let deadline = began + shared.cfg.request_timeout();
    let shook = shared.unless_stopped(tls_handshake(&shared, &mut conn, &mut buf, deadline));
    if shook.await != Some(true) {
        return None;
    }
    // When the request now in `buf` started (None: between requests).
    let mut started: Option<Instant> = (!buf.is_empty()).then_some(began);
    loop {
        // Answer the complete requests already buffered, in order, while
        // the answers fit under the bound.
        while out.len() < shared.cfg.conn_output_bytes_max {
            match http::parse_with(&buf, &limits, routes::uploads::streams) {
                Ok(Some(http::Parsed::Streamed {
                    mut req,
                    head_len,
                    body_len,
                })) => {
                    shared.local.note_work();
                    req.peer = Some(client_ip(peer, &req, &shared.cfg.trusted_proxies));
                    buf.drain(..head_len);
                    // Answers to the requests before it go first (the body
                    // may take long to come).
                    if !out.is_empty() {
                        if !write_within(&shared, &mut conn, &out).await {
                            return None;
                        }
                        out.clear();
                    }
                    let began = Instant::now();
                    let got =
                        routes::uploads::receive(&mut conn, &mut buf, &req, body_len, &shared)
                            .await?;
                    if let Some(h) = shared.my_http() {
                        let route = routes::route_name(&req);
                        h.answered(route, got.resp.status, got.resp.error_code);
                        h.handled(route, began.elapsed());
                    }
                    started = (!buf.is_empty()).then(Instant::now);
                    let close =
                        !got.consumed || !req.keep_alive || shared.stopping.load(Ordering::Relaxed);
                    got.resp.encode(close, &mut out);
                    if close {
                        if write_within(&shared, &mut conn, &out).await {
                            linger_close(conn).await;
                        }
                        return None;
                    }
                }
                Ok(Some(http::Parsed::Whole(mut req, used))) => {
                    shared.local.note_work();
                    req.peer = Some(client_ip(peer, &req, &shared.cfg.trusted_proxies));
                    buf.drain(..used);
                    if let Some(endpoint) = ws::endpoint(&req, shared.cfg.echo_endpoint) {
                        // Answers to the requests before it go first.
                        if !out.is_empty() && !write_within(&shared, &mut conn, &out).await {
                            return None;
                        }
                        return Some(Upgrade {
                            conn,
                            req,
                            leftover: buf,
                            endpoint,
                        });
                    }
                    started = (!buf.is_empty()).then(Instant::now);
                    let began = Instant::now();
                    let resp = Box::pin(routes::handle(&req, &shared)).await;
                    if let Some(h) = shared.my_http() {
                        let route = routes::route_name(&req);
                        h.answered(route, resp.status, resp.error_code);
                        h.handled(route, began.elapsed());
                    }
                    let close = !req.keep_alive || shared.stopping.load(Ordering::Relaxed);
                    resp.encode(close, &mut out);
                    let pause = (resp.status == 429).then(|| refused_pause(resp.retry_after_ms()));
                    if req.method == "HEAD" {
                        // The head as for GET (with the body's length), no body.
                        out.truncate(out.len() - resp.body.len());
                    } else if let Some(file) = &resp.file {
                        // The head (and what was owed before it), then the
                        // file from disk.
                        if !write_within(&shared, &mut conn, &out).await
                            || !routes::uploads::send_file(&shared, &mut conn, file).await
                        {
                            return None;
                        }
                        out.clear();
                    }
                    if close {
                        if write_within(&shared, &mut conn, &out).await {
                            linger_close(conn).await;
                        }
                        return None;
                    }
                    if let Some(pause) = pause {
                        // The refusal leaves now; the connection is read
                        // again after the pause.
                        if !write_within(&shared, &mut conn, &out).await {
                            return None;
                        }
                        out.clear();
                        sit_out(&shared, pause).await;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let (status, code) = e.status();
                    if let Some(h) = shared.my_http() {
                        h.answered("bad_request", status, Some(code));
                    }
                    let resp = Response::error(status, code, &e.message());
                    answer_and_close(&shared, conn, out, resp).await;
                    return None;
                }
            }
        }
        if !out.is_empty() {
            if !write_within(&shared, &mut conn, &out).await {
                return None;
            }
            out.clear();
            if out.capacity() > READ_CHUNK_BYTES {
                out = Vec::new(); // a large answer is not kept
            }
            // More may be buffered: answer it before reading.
            continue;
        }
        if buf.is_empty() && shared.stopping.load(Ordering::Relaxed) {
            return None;
        }
        let deadline = match started {
            Some(t) => t + shared.cfg.request_timeout(),
            None => Instant::now() + shared.cfg.idle_timeout(),
        };
        let read = async { Some(read_until(&mut conn, &mut buf, deadline).await) };
        let stop = async {
            // Between requests, a stopping shard closes the connection.
            if started.is_some() {
                std::future::pending::<()>().await;
            }
            shared.stopped().await;
            None
        };
        match futures_lite::future::or(read, stop).await {
            Some(Read::Bytes(_)) => {
                started.get_or_insert_with(Instant::now);
            }
            Some(Read::Closed) | None => return None,
            Some(Read::TimedOut) if started.is_some() => {
                // A request began and did not finish in time (slowloris).
                let resp = Response::error(408, "request_timeout", "request not completed in time");
                answer_and_close(&shared, conn, out, resp).await;
                return None;
            }
            Some(Read::TimedOut) => return None, // idle keep-alive connection
        }
        if buf.is_empty() {
            buf = Vec::new(); // an idle connection holds no buffer
        }
    }
}
