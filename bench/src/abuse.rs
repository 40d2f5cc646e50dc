//! `rookery-bench abuse`: what abusive clients cost everyone else.
//!
//! Runs a normal load (`k6-1000` by default) twice against a fresh
//! `rookery` each time: alone, then with four kinds of abusers at once, as
//! an adversarial review found them:
//! - pipeliners: HTTP connections that pipeline `GET /app.js` without end
//!   and never read;
//! - never-readers: WebSockets that join a room of 60 KB messages, ask for
//!   history pages again and again, and never read;
//! - login flooders: keep-alive connections looping wrong passwords (for a
//!   real account and for unknown names);
//! - join/leave flooders: WebSockets joining and leaving one of the normal
//!   load's rooms as fast as they are answered (each join can announce
//!   presence to every member).
//!
//! It reports the normal load's send→deliver p99, its lost messages, and
//! the server's peak resident memory (VmHWM) of each run, against the
//! bound the server's limits promise (docs/security.md): the run without
//! abusers plus, per abusive connection, the output it may be owed
//! (`--conn-output-bytes-max`) and one response past it, one history page
//! being read for it (`--history-page-bytes-max`), a read chunk and a
//! message; plus the caches abusers can fill, each bounded by a setting
//! (per shard a page being encoded, the index and tail caches; the
//! accounts database's cache; one argon2id hash per hashing thread).
//! Loopback only; every loop stops when the load does.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use crate::compare::{built, machine, start_rookery};
use crate::http_client::{jwt, HttpClient};
use crate::load::{self, Plan, Report};

#[derive(clap::Args, Debug, Clone)]
pub struct AbuseArgs {
    #[command(flatten)]
    pub load: load::Args,
    /// The `rookery` binary (default: build the workspace's, release).
    #[arg(long)]
    pub rookery_bin: Option<PathBuf>,
    /// HTTP connections pipelining requests and never reading.
    #[arg(long, default_value_t = 10)]
    pub pipeliners: usize,
    /// WebSockets asking for history pages and never reading.
    #[arg(long, default_value_t = 25)]
    pub never_readers: usize,
    /// Keep-alive connections looping wrong passwords.
    #[arg(long, default_value_t = 8)]
    pub login_flooders: usize,
    /// WebSockets looping join/leave on one of the load's rooms.
    #[arg(long, default_value_t = 4)]
    pub join_flooders: usize,
}

/// The server's settings the bound is computed from (its defaults, which
/// this benchmark does not change).
const CONN_OUTPUT_BYTES_MAX: u64 = 1 << 20;
const HISTORY_PAGE_BYTES_MAX: u64 = 1 << 20;
const READ_CHUNK_BYTES: u64 = 64 << 10;
const WS_FRAME_BYTES_MAX: u64 = 64 << 10;

/// What the server may hold for one abusive connection, at most.
const PER_CONNECTION_BYTES_MAX: u64 =
    CONN_OUTPUT_BYTES_MAX + 2 * HISTORY_PAGE_BYTES_MAX + READ_CHUNK_BYTES + WS_FRAME_BYTES_MAX;
/// Caches per shard, at their defaults: a page being encoded, the redb
/// index cache, the tail cache.
const PER_SHARD_CACHE_BYTES_MAX: u64 = HISTORY_PAGE_BYTES_MAX + (64 << 20) + (4 << 20);
/// The accounts database's redb cache.
const META_CACHE_BYTES: u64 = 16 << 20;
/// One argon2id hash (the crate's default parameters, m = 19 MiB), per
/// password-hashing thread (one per core by default).
const ARGON2_BYTES: u64 = 19 << 20;
/// Messages of the never-readers' room, and their size.
const BIG_ROOM_MESSAGES: usize = 200;
const BIG_MESSAGE_BYTES: usize = 60_000;
/// History requests each never-reader sends (each asks for 200 messages
/// of 60 KB: 12 MB of answers, if nothing bounded them).
const HISTORY_REQUESTS: usize = 25;

/// What one kind of abuser did.
#[derive(Default)]
struct Tally {
    /// Requests or frames sent.
    sent: AtomicU64,
    /// Answered normally (2xx, `joined`/`left`, 401 for a wrong password).
    answered: AtomicU64,
    /// Refused by a limit (429, `rate_limited`, 503).
    refused: AtomicU64,
    /// Connections the server closed (or that could not write any more).
    closed: AtomicU64,
}

impl Tally {
    fn json(&self) -> Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({"sent": n(&self.sent), "answered": n(&self.answered),
               "refused": n(&self.refused), "closed": n(&self.closed)})
    }
}

struct Abusers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    tallies: Vec<(&'static str, Arc<Tally>)>,
    connections: usize,
}

impl Abusers {
    fn stop(self) -> Value {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let mut out = serde_json::Map::new();
        for (name, tally) in &self.tallies {
            out.insert(name.to_string(), tally.json());
        }
        Value::Object(out)
    }
}

pub fn run(args: AbuseArgs) -> Result<()> {
    let bin = built(&args.rookery_bin, "rookery-server", "rookery")?;
    let secret = args.load.jwt_secret.clone();
    // Every client here is 127.0.0.1: the per-address connection limit is
    // raised so that the normal load's users fit (abusers from one address
    // are tested against it in the server's own tests), and the load's
    // setup creates its 50 rooms as one user. Every other limit keeps its
    // default: they are what is measured.
    let extra = [
        "--connections-per-ip-max",
        "100000",
        "--rooms-per-user-per-min",
        "1000",
    ];
    let mut runs = Vec::new();
    for with_abusers in [false, true] {
        let (server, port) = start_rookery(&bin, &args.load.durability, &secret, &extra)?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        // Both runs hold the same data: only the abusers differ.
        let big_room = prepare(addr, &secret)?;
        let abusers = with_abusers.then(|| start_abusers(&args, addr, &secret, big_room));
        let name = if with_abusers {
            "with abusers"
        } else {
            "alone"
        };
        let report = normal_load(&args.load, addr, server.child.id(), name)?;
        let connections = abusers.as_ref().map_or(0, |a| a.connections);
        let tallies = abusers.map(Abusers::stop);
        let peak = peak_rss_bytes(server.child.id())?;
        let shards = HttpClient::connect(addr)?
            .call("GET", "/api/server", None, None)?
            .1["shards"]
            .as_u64()
            .context("shards in /api/server")?;
        runs.push(Run {
            report,
            peak,
            connections,
            tallies,
            shards,
        });
        drop(server);
    }
    print_and_save(&args, &runs)
}

/// Runs the normal load (`k6-1000` unless `args` name another) against
/// the server at `addr` (process `pid`), calling the run `name`; prints
/// and returns its report.
pub(crate) fn normal_load(
    args: &load::Args,
    addr: SocketAddr,
    pid: u32,
    name: &str,
) -> Result<Report> {
    let mut load = args.clone();
    load.url = format!("ws://{addr}");
    load.server_pid = Some(pid);
    load.name = name.into();
    if load.scenario.is_none() {
        load.scenario = Some("k6-1000".into());
    }
    let plan = Plan::from_args(&load)?;
    eprintln!("== normal load {}, {name}", plan.scenario);
    let report = load::execute(&plan)?;
    println!("{name}\n{}", report.table());
    Ok(report)
}

/// Runs the normal load against `bin` on the data directory `data` twice:
/// alone, then beside what `side` starts (given the server's address and
/// a flag set once the load is over; it returns what it measured). Both
/// runs' reports, and what `side` returned.
pub(crate) fn alone_then_beside<T: Send + 'static>(
    load: &load::Args,
    bin: &std::path::Path,
    data: &std::path::Path,
    extra: &[&str],
    beside: &str,
    side: impl FnOnce(SocketAddr, Arc<AtomicBool>) -> JoinHandle<Result<T>>,
) -> Result<(Report, Report, T)> {
    let secret = &load.jwt_secret;
    let start = || -> Result<_> {
        let (server, port) =
            crate::compare::start_rookery_in(bin, data, &load.durability, secret, extra)?;
        Ok((server, SocketAddr::from(([127, 0, 0, 1], port))))
    };
    let (server, addr) = start()?;
    let alone = normal_load(load, addr, server.child.id(), "alone");
    drop(server);
    let alone = alone?;
    let (server, addr) = start()?;
    let stop = Arc::new(AtomicBool::new(false));
    let handle = side(addr, stop.clone());
    let during = normal_load(load, addr, server.child.id(), beside);
    stop.store(true, Ordering::Relaxed);
    let measured = handle
        .join()
        .map_err(|_| anyhow::anyhow!("{beside}: its thread panicked"))??;
    drop(server);
    Ok((alone, during?, measured))
}

/// Prints chat's delivery in a run alone and in one `beside` something
/// ("during backups"), side by side with the p99 ratio; the ratio.
pub(crate) fn print_beside(alone: &Report, during: &Report, beside: &str) -> f64 {
    let ratio = during.deliver_ms.p99 / alone.deliver_ms.p99.max(1e-3);
    println!("                     alone      {beside}");
    println!(
        "deliver p50 ms   {:>9.2} {:>12.2}",
        alone.deliver_ms.p50, during.deliver_ms.p50
    );
    println!(
        "deliver p99 ms   {:>9.2} {:>12.2}   ({ratio:.2}x)",
        alone.deliver_ms.p99, during.deliver_ms.p99
    );
    println!("lost             {:>9} {:>12}", alone.lost, during.lost);
    println!(
        "server CPU s     {:>9.2} {:>12.2}",
        alone.server_cpu_s.unwrap_or(f64::NAN),
        during.server_cpu_s.unwrap_or(f64::NAN)
    );
    ratio
}

/// A run's chat figures, for a report's JSON.
pub(crate) fn run_json(r: &Report) -> serde_json::Value {
    serde_json::json!({"deliver_p99_ms": r.deliver_ms.p99, "deliver_p50_ms": r.deliver_ms.p50,
        "lost": r.lost, "server_cpu_s": r.server_cpu_s})
}

/// The process's peak resident memory, bytes (VmHWM).
fn peak_rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("VmHWM in /proc/PID/status")?;
    Ok(kb * 1024)
}

/// One run of the normal load.
struct Run {
    report: Report,
    /// The server's peak RSS, bytes.
    peak: u64,
    /// Abusive connections (0: the run alone).
    connections: usize,
    tallies: Option<Value>,
    shards: u64,
}

fn print_and_save(args: &AbuseArgs, runs: &[Run]) -> Result<()> {
    let [a, b] = runs else {
        anyhow::bail!("two runs expected");
    };
    let (alone, peak_alone, abused, peak_abused) = (&a.report, &a.peak, &b.report, &b.peak);
    let (conns, tallies) = (&b.connections, &b.tallies);
    let per_conn = PER_CONNECTION_BYTES_MAX;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let caches = b.shards * PER_SHARD_CACHE_BYTES_MAX + META_CACHE_BYTES + cores * ARGON2_BYTES;
    let bound = peak_alone + *conns as u64 * per_conn + caches;
    let p99_ratio = abused.deliver_ms.p99 / alone.deliver_ms.p99.max(1e-3);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("                     alone      with abusers");
    println!(
        "deliver p99 ms   {:>9.2} {:>12.2}   ({p99_ratio:.2}x; target <= 2x)",
        alone.deliver_ms.p99, abused.deliver_ms.p99
    );
    println!("lost             {:>9} {:>12}", alone.lost, abused.lost);
    println!(
        "peak RSS MiB     {:>9.1} {:>12.1}   (bound {:.1}: alone + {} abusive connections x {:.2} MiB + caches {:.0} MiB)",
        mib(*peak_alone),
        mib(*peak_abused),
        mib(bound),
        conns,
        mib(per_conn),
        mib(caches)
    );
    if let Some(t) = tallies {
        println!("abusers          {t}");
    }
    let out = json!({
        "machine": machine(),
        "scenario": alone.scenario,
        "durability": args.load.durability,
        "alone": {"deliver_p99_ms": alone.deliver_ms.p99, "deliver_p50_ms": alone.deliver_ms.p50,
                  "lost": alone.lost, "delivered": alone.delivered, "peak_rss_bytes": peak_alone},
        "with_abusers": {"deliver_p99_ms": abused.deliver_ms.p99, "deliver_p50_ms": abused.deliver_ms.p50,
                         "lost": abused.lost, "delivered": abused.delivered, "peak_rss_bytes": peak_abused,
                         "abusive_connections": conns, "abusers": tallies},
        "deliver_p99_ratio": p99_ratio,
        "rss_bound_bytes": bound,
        "rss_bound_per_connection_bytes": per_conn,
        "rss_bound_caches_bytes": caches,
        "within_targets": p99_ratio <= 2.0 && abused.lost == 0 && alone.lost == 0 && *peak_abused <= bound,
    });
    if let Some(path) = &args.load.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}

/// Sets up what the abusers need: a room of large messages (its id) and
/// an account to guess the password of.
fn prepare(addr: SocketAddr, secret: &str) -> Result<u64> {
    let mut http = HttpClient::connect(addr)?;
    let big_room = fill_big_room(&mut http, secret)?;
    let (s, v) = http.call(
        "POST",
        "/api/register",
        None,
        Some(&json!({"name": "victim", "password": "the right one"})),
    )?;
    anyhow::ensure!(s == 201, "registering the victim: {s} {v}");
    Ok(big_room)
}

/// What one abuser thread is given.
struct Abuser<'a> {
    addr: SocketAddr,
    secret: &'a str,
    /// The room of large messages.
    big_room: u64,
    /// Its number among the abusers of its kind.
    i: usize,
    tally: &'a Tally,
    stop: &'a AtomicBool,
}

/// Starts every abuser thread.
fn start_abusers(args: &AbuseArgs, addr: SocketAddr, secret: &str, big_room: u64) -> Abusers {
    let stop = Arc::new(AtomicBool::new(false));
    let mut abusers = Abusers {
        stop: stop.clone(),
        threads: Vec::new(),
        tallies: Vec::new(),
        connections: 0,
    };
    let mut spawn = |name: &'static str, n: usize, f: fn(&Abuser)| {
        let tally = Arc::new(Tally::default());
        for i in 0..n {
            let (stop, tally, secret) = (stop.clone(), tally.clone(), secret.to_string());
            abusers.threads.push(std::thread::spawn(move || {
                f(&Abuser {
                    addr,
                    secret: &secret,
                    big_room,
                    i,
                    tally: &tally,
                    stop: &stop,
                })
            }));
        }
        abusers.tallies.push((name, tally));
    };
    spawn("pipeliners", args.pipeliners, pipeline);
    spawn("never_readers", args.never_readers, never_read);
    spawn("login_flooders", args.login_flooders, login_flood);
    spawn("join_flooders", args.join_flooders, join_flood);
    abusers.connections =
        args.pipeliners + args.never_readers + args.login_flooders + args.join_flooders;
    abusers
}

/// A public room of `BIG_ROOM_MESSAGES` messages of 60 KB, posted by a
/// few users who join it (each within its send burst).
fn fill_big_room(http: &mut HttpClient, secret: &str) -> Result<u64> {
    let owner = jwt(secret, "abuse-owner")?;
    let room = http.create_room(&owner, "abuse-big")?;
    let body = "x".repeat(BIG_MESSAGE_BYTES);
    for i in 0..BIG_ROOM_MESSAGES {
        let poster = jwt(secret, &format!("abuse-poster-{}", i / 20))?;
        if i % 20 == 0 {
            // Members post (joining a public room is one call).
            http.join(&poster, room)?;
        }
        let path = format!("/api/rooms/{room}/messages");
        let (s, v) = http.call("POST", &path, Some(&poster), Some(&json!({ "body": body })))?;
        anyhow::ensure!(s == 201, "posting to the big room: {s} {v}");
    }
    Ok(room)
}

/// A WebSocket of the JWT user `user`, or `None` (counted as closed).
fn ws_as(
    addr: SocketAddr,
    secret: &str,
    user: &str,
    tally: &Tally,
) -> Option<WebSocket<TcpStream>> {
    let ws = jwt(secret, user).and_then(|token| ws_connect(addr, &token));
    if ws.is_err() {
        tally.closed.fetch_add(1, Ordering::Relaxed);
    }
    ws.ok()
}

fn ws_connect(addr: SocketAddr, token: &str) -> Result<WebSocket<TcpStream>> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    let url = format!("ws://{addr}/ws?token={token}");
    let (ws, _) = tungstenite::client(url, stream).context("WebSocket upgrade")?;
    Ok(ws)
}

/// Pipelines `GET /app.js` and never reads, until stopped (writes block
/// once the server stops reading; the write timeout lets the loop see the
/// stop flag).
fn pipeline(a: &Abuser) {
    let (addr, tally, stop) = (a.addr, a.tally, a.stop);
    let Ok(mut s) = TcpStream::connect(addr) else {
        tally.closed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
    let one = b"GET /app.js HTTP/1.1\r\nHost: abuse\r\n\r\n";
    let batch = one.repeat(64);
    // Where the next write starts in `batch` (a write may end mid-request).
    let mut at = 0;
    while !stop.load(Ordering::Relaxed) {
        match s.write(&batch[at..]) {
            Ok(0) => break,
            Ok(n) => {
                let done = (at + n) / one.len() - at / one.len();
                tally.sent.fetch_add(done as u64, Ordering::Relaxed);
                at = (at + n) % batch.len();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                tally.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Joins the big room, asks for its history again and again, and never
/// reads; holds the connection until stopped.
fn never_read(a: &Abuser) {
    let (addr, secret, room, i, tally, stop) = (a.addr, a.secret, a.big_room, a.i, a.tally, a.stop);
    let Some(mut ws) = ws_as(addr, secret, &format!("abuse-reader-{i}"), tally) else {
        return;
    };
    let mut frames = vec![json!({"type": "join", "room": room, "ref": "j"})];
    frames.extend(
        (0..HISTORY_REQUESTS)
            .map(|k| json!({"type": "history", "room": room, "limit": 200, "ref": k})),
    );
    for f in frames {
        if ws.send(Message::text(f.to_string())).is_err() {
            tally.closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tally.sent.fetch_add(1, Ordering::Relaxed);
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wrong passwords on one keep-alive connection (reconnecting when the
/// server closes it), alternating the real account and unknown names.
fn login_flood(a: &Abuser) {
    let (addr, i, tally, stop) = (a.addr, a.i, a.tally, a.stop);
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut http) = HttpClient::connect(addr) else {
            tally.closed.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            k += 1;
            let name = if k.is_multiple_of(2) {
                "victim".to_string()
            } else {
                format!("nobody-{i}-{k}")
            };
            let body = json!({"name": name, "password": format!("guess-{k}")});
            tally.sent.fetch_add(1, Ordering::Relaxed);
            match http.call("POST", "/api/login", None, Some(&body)) {
                Ok((401, _)) => tally.answered.fetch_add(1, Ordering::Relaxed),
                Ok((429 | 503, _)) => tally.refused.fetch_add(1, Ordering::Relaxed),
                Ok(_) => tally.answered.fetch_add(1, Ordering::Relaxed),
                Err(_) => {
                    tally.closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            };
        }
    }
}

/// Joins and leaves one of the normal load's rooms as fast as the server
/// answers, until stopped.
fn join_flood(a: &Abuser) {
    let (addr, secret, i, tally, stop) = (a.addr, a.secret, a.i, a.tally, a.stop);
    let Some(room) = load_room(addr, secret, stop) else {
        return;
    };
    let Some(mut ws) = ws_as(addr, secret, &format!("abuse-hopper-{i}"), tally) else {
        return;
    };
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let kind = if k % 2 == 1 { "join" } else { "leave" };
        let frame = json!({"type": kind, "room": room, "ref": k}).to_string();
        if ws.send(Message::text(frame)).is_err() {
            tally.closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tally.sent.fetch_add(1, Ordering::Relaxed);
        // The answer to this ref (presence and messages of the room pass by).
        loop {
            let Ok(msg) = ws.read() else {
                tally.closed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let Ok(v) = serde_json::from_slice::<Value>(&msg.into_data()) else {
                continue;
            };
            if v["ref"] != k {
                continue;
            }
            if v["code"] == "rate_limited" {
                tally.refused.fetch_add(1, Ordering::Relaxed);
            } else {
                tally.answered.fetch_add(1, Ordering::Relaxed);
            }
            break;
        }
    }
}

/// The first room of the normal load (`load-…`), once its setup made it.
fn load_room(addr: SocketAddr, secret: &str, stop: &AtomicBool) -> Option<u64> {
    let token = jwt(secret, "abuse-scout").ok()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if let Ok(mut http) = HttpClient::connect(addr) {
            if let Ok((200, v)) = http.call("GET", "/api/rooms?limit=500", Some(&token), None) {
                let found = v["rooms"].as_array().and_then(|rooms| {
                    rooms
                        .iter()
                        .find(|r| r["name"].as_str().is_some_and(|n| n.starts_with("load-")))
                        .and_then(|r| r["id"].as_u64())
                });
                if found.is_some() {
                    return found;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}
