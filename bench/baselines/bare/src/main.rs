//! `rookery-bare`: the `bare` baseline of `rookery-bench compare`.
//!
//! The least work a server must do for the load generator's protocol
//! subset on this machine, so that every other server's figures can be
//! read against it: one glommio executor per core (SO_REUSEPORT), one
//! owner per room, messages kept in memory (a bounded history for `join`
//! with `since`, idempotent `client_id`), events encoded once as whole
//! frames and shared, and every connection's output coalesced into one
//! write per reactor turn. No storage, no accounts (a JWT's `sub` is the
//! user), no limits, no permessage-deflate, no fragmented frames.
//!
//! Speaks what the Node baselines speak: `GET /ws?token=JWT` (hello),
//! `join {room, since?}` → `joined`, `send {room, body, client_id}` → `ack`
//! and `msg` to every member, `ping` → `pong`; HTTP `GET /healthz`,
//! `POST /api/rooms` → `{id}`, `GET /api/me`.

mod hub;
mod out;
mod ws;

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

use hub::{Hub, Peer, HUB};
use out::Out;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bytes read from a socket at a time.
const READ_BYTES: usize = 64 << 10;
/// A request head longer than this is refused.
const HEAD_BYTES_MAX: usize = 16 << 10;

struct Args {
    port: u16,
    secret: String,
    history: usize,
    executors: usize,
    /// io_uring submission entries per ring: the same as Rookery's
    /// default, so that both pay the same for the reactor's timer cancels
    /// (see `EngineConfig::ring_depth`).
    ring_depth: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        port: 8090,
        secret: "rookery-bench".into(),
        history: 1000,
        executors: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ring_depth: 4096,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).ok_or(format!("{} needs a value", pair[0]))?;
        let num = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{}: not a number", pair[0]))
        };
        match pair[0].as_str() {
            "--port" => a.port = num(value)? as u16,
            "--jwt-secret" => a.secret = value.clone(),
            "--history" => a.history = num(value)?,
            "--executors" => a.executors = num(value)?.max(1),
            "--ring-depth" => a.ring_depth = num(value)?.clamp(1, 32_768),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rookery-bare: {e}\nusage: rookery-bare [--port P] [--jwt-secret S] [--history N] [--executors N] [--ring-depth N]");
            std::process::exit(2);
        }
    };
    let mesh = MeshBuilder::<Peer, _>::full(a.executors, 1024);
    let next_room = Arc::new(AtomicU64::new(1));
    let (port, secret, history) = (a.port, Arc::new(a.secret), a.history);
    let pool = LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(a.executors, None))
        .name("bare")
        .io_memory(1 << 20)
        .ring_depth(a.ring_depth)
        .on_all_shards(move || {
            let (mesh, next_room, secret) = (mesh.clone(), next_room.clone(), secret.clone());
            async move { executor(mesh, port, secret, history, next_room).await }
        })
        .unwrap_or_else(|e| {
            eprintln!("rookery-bare: starting executors: {e}");
            std::process::exit(1);
        });
    println!("bare baseline on 127.0.0.1:{port}");
    for r in pool.join_all() {
        if let Err(e) = r {
            eprintln!("rookery-bare: {e}");
        }
    }
}

async fn executor(
    mesh: MeshBuilder<Peer, glommio::channels::channel_mesh::Full>,
    port: u16,
    secret: Arc<String>,
    history: usize,
    next_room: Arc<AtomicU64>,
) {
    let (senders, mut receivers) = mesh.join().await.expect("joining the mesh");
    let hub = Hub::new(senders, history);
    HUB.with(|h| *h.borrow_mut() = Some(hub.clone()));
    glommio::spawn_local(hub.flusher.clone().run()).detach();
    for (_, stream) in receivers.streams() {
        let hub = hub.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = stream.recv().await {
                hub.peer(msg);
            }
        })
        .detach();
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| {
        eprintln!("rookery-bare: binding port {port}: {e}");
        std::process::exit(1);
    });
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let (hub, secret, next_room) = (hub.clone(), secret.clone(), next_room.clone());
                glommio::spawn_local(async move {
                    let _ = http(stream, hub, &secret, &next_room).await;
                })
                .detach();
            }
            Err(e) => eprintln!("rookery-bare: accept: {e}"),
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BYTES]);
}

/// Reads what the socket has onto `buf`; 0 at end of stream.
async fn read_into(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    futures_lite::future::poll_fn(|cx| {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            match Pin::new(&mut *stream).poll_read(cx, &mut s) {
                Poll::Ready(Ok(n)) => {
                    buf.extend_from_slice(&s[..n]);
                    Poll::Ready(Ok(n))
                }
                other => other,
            }
        })
    })
    .await
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

fn user_of(token: &str, secret: &str) -> Option<String> {
    let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes());
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .ok()
        .map(|d| d.claims.sub)
}

fn respond(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves HTTP requests until an upgrade to `/ws`, then the WebSocket.
async fn http(
    mut stream: TcpStream,
    hub: Rc<Hub>,
    secret: &str,
    next_room: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let head = match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() < HEAD_BYTES_MAX => {
                if read_into(&mut stream, &mut buf).await? == 0 {
                    return Ok(());
                }
                continue;
            }
            _ => {
                stream.write_all(&respond("400 Bad Request", "{}")).await?;
                return Ok(());
            }
        };
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
        };
        let body_len: usize = header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let (method, path) = (req.method.unwrap_or(""), req.path.unwrap_or(""));
        let bearer = header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let key = header("sec-websocket-key").map(str::to_string);
        let (method, path) = (method.to_string(), path.to_string());
        while buf.len() < head + body_len {
            if read_into(&mut stream, &mut buf).await? == 0 {
                return Ok(());
            }
        }
        buf.drain(..head + body_len);
        if let (Some(key), Some(token)) = (key, path.strip_prefix("/ws?token=")) {
            let Some(user) = user_of(token, secret) else {
                stream.write_all(&respond("401 Unauthorized", "{}")).await?;
                return Ok(());
            };
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await?;
            return websocket(stream, hub, user, buf).await;
        }
        let user = bearer.and_then(|t| user_of(&t, secret));
        let reply = match (method.as_str(), path.as_str(), user) {
            (_, "/healthz", _) => respond("200 OK", r#"{"status":"ok"}"#),
            (_, p, None) if p.starts_with("/api/") => respond("401 Unauthorized", "{}"),
            ("POST", "/api/rooms", Some(_)) => {
                let id = next_room.fetch_add(1, Ordering::Relaxed);
                respond("201 Created", &format!(r#"{{"id":{id}}}"#))
            }
            ("GET", "/api/me", Some(u)) => {
                let name = serde_json::to_string(&u).unwrap_or_default();
                respond("200 OK", &format!(r#"{{"user":{name},"name":{name}}}"#))
            }
            _ => respond("404 Not Found", "{}"),
        };
        stream.write_all(&reply).await?;
    }
}

/// Serves a WebSocket until either side closes it.
async fn websocket(
    mut stream: TcpStream,
    hub: Rc<Hub>,
    user: String,
    mut buf: Vec<u8>,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let out = Out::new(stream.as_raw_fd());
    let conn = hub.open(out.clone());
    let user: Arc<str> = user.into();
    let mut rooms = Vec::new();
    let mut hello = Vec::new();
    let name = serde_json::to_string(&*user).unwrap_or_default();
    ws::text(
        format!(r#"{{"type":"hello","user":{name}}}"#).as_bytes(),
        &mut hello,
    );
    hub.flusher.push(&out, &hello);
    let result = serve(&mut stream, &hub, conn, &out, &user, &mut buf, &mut rooms).await;
    out.closed.set(true);
    hub.close(conn, &rooms);
    result
}

/// What woke a connection.
enum Wake {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
}

async fn serve(
    stream: &mut TcpStream,
    hub: &Rc<Hub>,
    conn: u64,
    out: &Rc<Out>,
    user: &Arc<str>,
    buf: &mut Vec<u8>,
    rooms: &mut Vec<u64>,
) -> std::io::Result<()> {
    loop {
        // Every complete frame buffered.
        let mut at = 0;
        loop {
            match ws::parse(&mut buf[at..]) {
                Ok(Some(f)) => {
                    let (start, end) = (at + f.payload.start, at + f.payload.end);
                    at += f.len;
                    match f.opcode {
                        ws::TEXT => hub.frame(conn, out, user, &buf[start..end], rooms),
                        ws::PING => {
                            let mut pong = Vec::new();
                            ws::header(ws::PONG, end - start, &mut pong);
                            pong.extend_from_slice(&buf[start..end]);
                            hub.flusher.push(out, &pong);
                        }
                        ws::CLOSE => {
                            let mut close = Vec::new();
                            ws::header(ws::CLOSE, 2, &mut close);
                            close.extend_from_slice(&1000u16.to_be_bytes());
                            hub.flusher.push(out, &close);
                            flush_all(stream, out).await?;
                            return Ok(());
                        }
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(_) => return Ok(()),
            }
        }
        buf.drain(..at);
        if out.closed.get() {
            return Ok(());
        }
        // Wait for bytes, or for the socket to take what the flusher could
        // not write.
        let wake = futures_lite::future::poll_fn(|cx| {
            if out.blocked.get() {
                let b = out.buf.borrow();
                if let Poll::Ready(r) = Pin::new(&mut *stream).poll_write(cx, &b) {
                    return Poll::Ready(Wake::Wrote(r));
                }
            } else {
                *out.task.borrow_mut() = Some(cx.waker().clone());
            }
            let mut got = 0;
            let r = SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                let r = Pin::new(&mut *stream).poll_read(cx, &mut s);
                if let Poll::Ready(Ok(n)) = r {
                    buf.extend_from_slice(&s[..n]);
                    got = n;
                }
                r
            });
            match r {
                Poll::Ready(r) => Poll::Ready(Wake::Read(r)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match wake {
            Wake::Read(Ok(0)) | Wake::Read(Err(_)) | Wake::Wrote(Err(_)) => return Ok(()),
            Wake::Read(Ok(_)) => {}
            Wake::Wrote(Ok(n)) => {
                let mut b = out.buf.borrow_mut();
                b.drain(..n);
                if b.is_empty() {
                    out.blocked.set(false);
                }
            }
        }
    }
}

/// Writes everything `out` holds (before a close).
async fn flush_all(stream: &mut TcpStream, out: &Out) -> std::io::Result<()> {
    let bytes = std::mem::take(&mut *out.buf.borrow_mut());
    stream.write_all(&bytes).await
}
