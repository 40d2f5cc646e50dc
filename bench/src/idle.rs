//! `rookery-bench idle`: the memory one idle WebSocket connection costs a
//! running server.
//!
//! Opens `--connections` WebSocket connections to a server, each
//! authenticated with its own JWT user and joined to one of `--rooms`
//! rooms, then leaves them idle and reads the server's resident memory
//! (`/proc/PID/statm`) before and after: the growth per connection is the
//! figure. The baseline is taken after a warm-up round of connections
//! (opened, joined, closed), so allocator and first-use growth is not
//! charged to the measured ones.
//!
//! The client side uses blocking sockets and tungstenite with small buffers
//! (its defaults would hold 256 KiB per connection in this process).

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::http_client::{jwt, HttpClient};

#[derive(clap::Args)]
pub struct Args {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// The server's `--jwt-secret` (users are minted as JWTs).
    #[arg(long)]
    jwt_secret: String,
    /// The server's process id (its memory is read from /proc).
    #[arg(long)]
    server_pid: u32,
    /// Idle connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Rooms the connections are spread over.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Connections opened and closed before the baseline is read.
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Milliseconds to wait after the last connection before reading memory.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// Authenticate only; do not join a room (to see what a join adds).
    #[arg(long)]
    no_join: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

type Ws = WebSocket<TcpStream>;

/// The resident memory of `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .with_context(|| format!("reading /proc/{pid}/statm"))?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("statm has no resident field")?
        .parse()?;
    Ok(pages * 4096)
}

/// Opens one authenticated connection and joins `room`.
fn open(addr: SocketAddr, token: &str, room: Option<u64>) -> anyhow::Result<Ws> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!("ws://{addr}/ws?token={token}");
    let (mut ws, _) = tungstenite::client::client_with_config(url, stream, Some(config))
        .map_err(|e| anyhow::anyhow!("upgrade: {e}"))?;
    let Some(room) = room else {
        return Ok(ws);
    };
    ws.send(Message::text(
        json!({"type": "join", "room": room}).to_string(),
    ))?;
    loop {
        if let Message::Text(t) = ws.read()? {
            let v: Value = serde_json::from_str(t.as_str())?;
            match v["type"].as_str() {
                Some("joined") => return Ok(ws),
                Some("error") => bail!("join refused: {v}"),
                _ => {}
            }
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let admin = jwt(&args.jwt_secret, "idle-admin")?;
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let mut http = HttpClient::connect(args.addr)?;
    let rooms: Vec<u64> = (0..args.rooms.max(1))
        .map(|i| http.create_room(&admin, &format!("idle-{run_id}-{i}")))
        .collect::<anyhow::Result<_>>()?;
    let tokens: Vec<String> = (0..args.connections.max(args.warmup))
        .map(|i| jwt(&args.jwt_secret, &format!("idle-{i}")))
        .collect::<anyhow::Result<_>>()?;
    // Warm-up: every user is created first, a member of the room it will
    // join (a JWT user is created on first sight, and joining a public
    // room makes a member: that is account storage, not connection
    // memory), then a round of connections is opened, joined and closed.
    for (i, token) in tokens.iter().enumerate() {
        http.present(token)?;
        if !args.no_join {
            http.join(token, rooms[i % rooms.len()])?;
        }
    }
    let warm: Vec<Ws> = (0..args.warmup)
        .map(|i| open(args.addr, &tokens[i], Some(rooms[i % rooms.len()])))
        .collect::<anyhow::Result<_>>()?;
    for mut ws in warm {
        let _ = ws.close(None);
        let _ = ws.flush();
    }
    std::thread::sleep(Duration::from_millis(args.settle_ms));
    let before = rss_bytes(args.server_pid)?;
    let started = Instant::now();
    let mut held = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let room = (!args.no_join).then(|| rooms[i % rooms.len()]);
        let ws = open(args.addr, &tokens[i], room).with_context(|| format!("connection {i}"))?;
        held.push(ws);
        if (i + 1) % 1000 == 0 {
            eprintln!("{} connections open", i + 1);
        }
    }
    let open_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(args.settle_ms));
    let after = rss_bytes(args.server_pid)?;
    let per_conn = after.saturating_sub(before) as f64 / args.connections.max(1) as f64;
    let report = json!({
        "connections": args.connections,
        "joined": !args.no_join,
        "rooms": rooms.len(),
        "open_seconds": open_s,
        "server_rss_before_bytes": before,
        "server_rss_after_bytes": after,
        "server_rss_per_connection_bytes": per_conn,
    });
    println!(
        "{} idle connections ({} rooms) opened in {:.1} s: server RSS {:.1} → {:.1} MiB, {:.0} bytes per connection",
        args.connections,
        rooms.len(),
        open_s,
        before as f64 / (1 << 20) as f64,
        after as f64 / (1 << 20) as f64,
        per_conn
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    drop(held);
    Ok(())
}
