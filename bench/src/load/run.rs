//! One load run: setup (rooms, users), the generator threads with a task
//! per virtual user, the server sampler, the progress line, and the
//! report.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::account::{Arrival, Receiver};
use super::stages;
use super::wire::{self, Conn, Incoming, Wire};
use super::Plan;
use crate::http_client::{jwt, HttpClient};

/// How long a connection attempt (upgrade and join) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leaving user waits for what is still due to it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often each generator executor wakes, whatever it waits for.
const KICK_INTERVAL: Duration = Duration::from_millis(5);
/// Resolution of the users' active windows.
const WINDOW_STEP: Duration = Duration::from_millis(10);

/// Counters shared by the generator threads (relaxed; read by the progress
/// line and the report).
#[derive(Default)]
struct Live {
    attempted: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
    open: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
}

/// What every generator thread reads.
struct Shared {
    plan: Plan,
    epoch: Instant,
    room_ids: Vec<u64>,
    /// Per room: the highest seq acknowledged so far.
    max_acked: Vec<AtomicU64>,
    live: Live,
    first_error: std::sync::Mutex<Option<String>>,
}

/// One generator thread's results.
struct Tally {
    ack_us: Histogram<u64>,
    deliver_us: Histogram<u64>,
    slip_us: Histogram<u64>,
    expected: u64,
    /// Deliveries counted against `expected` (those up to each receiver's
    /// last due seq).
    delivered: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    cpu: Duration,
    wall: Duration,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

impl Tally {
    fn new() -> Tally {
        Tally {
            ack_us: histogram(),
            deliver_us: histogram(),
            slip_us: histogram(),
            expected: 0,
            delivered: 0,
            lost: 0,
            duplicated: 0,
            reordered: 0,
            cpu: Duration::ZERO,
            wall: Duration::ZERO,
        }
    }

    fn merge(&mut self, o: &Tally) {
        let _ = self.ack_us.add(&o.ack_us);
        let _ = self.deliver_us.add(&o.deliver_us);
        let _ = self.slip_us.add(&o.slip_us);
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.cpu = self.cpu.max(o.cpu);
        self.wall = self.wall.max(o.wall);
    }
}

/// Percentiles of a latency histogram, in ms.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pct {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Pct {
    fn of(h: &Histogram<u64>) -> Pct {
        let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Pct {
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max() as f64 / 1000.0,
        }
    }

    fn json(&self) -> Value {
        json!({"p50": self.p50, "p95": self.p95, "p99": self.p99, "p999": self.p999, "max": self.max})
    }
}

/// One sample of the server process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub t_s: f64,
    pub rss_bytes: u64,
    pub cpu_percent: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub name: String,
    pub durability: String,
    pub scenario: String,
    pub wire: String,
    pub users_peak: u32,
    pub rooms: u32,
    pub rate_per_user: f64,
    pub payload_bytes: usize,
    pub deflate: bool,
    pub seconds: f64,
    pub connections_attempted: u64,
    pub connections_ok: u64,
    pub connect_errors: u64,
    pub dropped: u64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub expected: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub error_frames: u64,
    pub first_error: Option<String>,
    pub ack_ms: Pct,
    pub deliver_ms: Pct,
    pub slip_ms: Pct,
    pub generator_thread_cpu_max: f64,
    pub server: Vec<Sample>,
    pub server_rss_start: Option<u64>,
    /// For `max`: (rate per user, delivered/s, p99 ms, passed) per step.
    pub steps: Vec<(f64, f64, f64, bool)>,
    pub max_passing_delivered_per_sec: Option<f64>,
}

impl Report {
    pub fn delivered_per_sec(&self) -> f64 {
        self.delivered as f64 / self.seconds.max(1e-9)
    }

    pub fn connect_error_rate(&self) -> f64 {
        self.connect_errors as f64 / self.connections_attempted.max(1) as f64
    }

    pub fn server_rss_max(&self) -> Option<u64> {
        self.server.iter().map(|s| s.rss_bytes).max()
    }

    /// Whether the generator may have been the bottleneck.
    pub fn generator_saturated(&self) -> bool {
        self.generator_thread_cpu_max > 0.9 || self.slip_ms.p99 > 20.0
    }

    pub fn to_json(&self) -> Value {
        let rss_per_conn = match (self.server_rss_start, self.server_rss_max()) {
            (Some(a), Some(b)) if self.connections_ok > 0 => {
                Some(b.saturating_sub(a) as f64 / self.connections_ok as f64)
            }
            _ => None,
        };
        json!({
            "name": self.name,
            "durability": self.durability,
            "scenario": self.scenario,
            "wire": self.wire,
            "users_peak": self.users_peak,
            "rooms": self.rooms,
            "rate_per_user": self.rate_per_user,
            "payload_bytes": self.payload_bytes,
            "deflate": self.deflate,
            "seconds": self.seconds,
            "connections": {"attempted": self.connections_attempted, "ok": self.connections_ok,
                            "failed": self.connect_errors, "dropped": self.dropped},
            "connect_errors": self.connect_errors,
            "connect_error_rate": self.connect_error_rate(),
            "first_error": self.first_error,
            "sent": self.sent,
            "acked": self.acked,
            "delivered": self.delivered,
            "expected": self.expected,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "error_frames": self.error_frames,
            "ack_ms": self.ack_ms.json(),
            "deliver_ms": self.deliver_ms.json(),
            "deliver_p50_ms": self.deliver_ms.p50,
            "deliver_p99_ms": self.deliver_ms.p99,
            "delivered_per_sec": self.delivered_per_sec(),
            "max_passing_delivered_per_sec": self.max_passing_delivered_per_sec,
            "steps": self.steps.iter().map(|(r, d, p, ok)| json!({
                "rate_per_user": r, "delivered_per_sec": d, "deliver_p99_ms": p, "passed": ok})).collect::<Vec<_>>(),
            "server_rss_bytes_max": self.server_rss_max(),
            "server_rss_per_connection_bytes": rss_per_conn,
            "server_cpu_percent_avg": avg_cpu(&self.server),
            "server_samples": self.server.iter().map(|s| json!({
                "t_s": s.t_s, "rss_bytes": s.rss_bytes, "cpu_percent": s.cpu_percent})).collect::<Vec<_>>(),
            "generator": {
                "thread_cpu_max": self.generator_thread_cpu_max,
                "schedule_slip_ms": self.slip_ms.json(),
                "saturated": self.generator_saturated(),
            },
        })
    }

    /// The human summary.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut line = |k: &str, v: String| t.push_str(&format!("  {k:<26} {v}\n"));
        line(
            "server",
            format!(
                "{} ({} durability, {} wire)",
                self.name, self.durability, self.wire
            ),
        );
        line(
            "scenario",
            format!(
                "{}: {} users peak, {} rooms, {}/s per user, {} B bodies{}",
                self.scenario,
                self.users_peak,
                self.rooms,
                self.rate_per_user,
                self.payload_bytes,
                if self.deflate { ", deflate" } else { "" }
            ),
        );
        line(
            "connections",
            format!(
                "{} attempted, {} ok, {} failed, {} dropped",
                self.connections_attempted, self.connections_ok, self.connect_errors, self.dropped
            ),
        );
        line("sent / acked", format!("{} / {}", self.sent, self.acked));
        line(
            "delivered / expected",
            format!(
                "{} / {} ({:.0}/s)",
                self.delivered,
                self.expected,
                self.delivered_per_sec()
            ),
        );
        line(
            "lost / dup / reordered",
            format!("{} / {} / {}", self.lost, self.duplicated, self.reordered),
        );
        let pct = |p: &Pct| {
            format!(
                "p50 {:.2}  p95 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms",
                p.p50, p.p95, p.p99, p.p999, p.max
            )
        };
        line("send → ack", pct(&self.ack_ms));
        line("send → deliver", pct(&self.deliver_ms));
        if let Some(rss) = self.server_rss_max() {
            line(
                "server",
                format!(
                    "RSS max {:.1} MiB, CPU avg {:.0}%",
                    rss as f64 / (1 << 20) as f64,
                    avg_cpu(&self.server).unwrap_or(0.0)
                ),
            );
        }
        if let Some(m) = self.max_passing_delivered_per_sec {
            line("max passing delivered/s", format!("{m:.0}"));
        }
        line(
            "generator",
            format!(
                "busiest thread {:.0}% CPU, schedule slip p99 {:.2} ms{}",
                self.generator_thread_cpu_max * 100.0,
                self.slip_ms.p99,
                if self.generator_saturated() {
                    "  (SATURATED: the generator may be the bottleneck)"
                } else {
                    ""
                }
            ),
        );
        if let Some(e) = &self.first_error {
            line("first error", e.clone());
        }
        t
    }
}

fn avg_cpu(samples: &[Sample]) -> Option<f64> {
    (!samples.is_empty())
        .then(|| samples.iter().map(|s| s.cpu_percent).sum::<f64>() / samples.len() as f64)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// (RSS bytes, CPU ticks) of a process.
fn proc_sample(pid: u32) -> Option<(u64, u64)> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let rss = statm.split_whitespace().nth(1)?.parse::<u64>().ok()? * 4096;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

/// Creates the rooms (and, for Rookery, the users: a JWT user is created on
/// first sight, which is account setup, not load).
fn setup(plan: &Plan, users: u32) -> Result<Vec<u64>> {
    let mut http = HttpClient::connect(plan.addr)?;
    let admin = jwt(&plan.jwt_secret, "load-admin")?;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let ids = (0..plan.rooms)
        .map(|i| http.create_room(&admin, &format!("load-{run}-{i}")))
        .collect::<Result<Vec<u64>>>()?;
    if plan.wire == Wire::Rookery {
        for i in 0..users {
            http.present(&jwt(&plan.jwt_secret, &format!("load-{i}"))?)?;
        }
    }
    Ok(ids)
}

/// Runs the plan once.
pub fn execute(plan: &Plan) -> Result<Report> {
    let users = stages::peak(&plan.stages);
    let room_ids = setup(plan, users)?;
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        epoch: Instant::now() + Duration::from_millis(200),
        max_acked: room_ids.iter().map(|_| AtomicU64::new(0)).collect(),
        room_ids,
        live: Live::default(),
        first_error: std::sync::Mutex::new(None),
    });
    let done = Arc::new(AtomicBool::new(false));
    let sampler = plan.server_pid.map(|pid| {
        let (shared, done) = (shared.clone(), done.clone());
        std::thread::spawn(move || sample_server(pid, &shared, &done))
    });
    let rss_start = plan.server_pid.and_then(proc_sample).map(|s| s.0);
    let mut workers = Vec::new();
    for w in 0..plan.threads {
        let shared = shared.clone();
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("load-{w}"))
            .spawn(move || async move { worker(shared, w).await })
            .map_err(|e| anyhow::anyhow!("starting a generator thread: {e}"))?;
        workers.push(handle);
    }
    let total = stages::total(&plan.stages);
    let progress_done = done.clone();
    let progress = (!plan.quiet).then(|| {
        let shared = shared.clone();
        std::thread::spawn(move || progress_line(&shared, total, &progress_done))
    });
    let mut tally = Tally::new();
    for h in workers {
        let t = h
            .join()
            .map_err(|e| anyhow::anyhow!("a generator thread failed: {e}"))?;
        tally.merge(&t);
    }
    done.store(true, Ordering::Relaxed);
    let server = sampler
        .map(|s| s.join().unwrap_or_default())
        .unwrap_or_default();
    if let Some(p) = progress {
        let _ = p.join();
    }
    let live = &shared.live;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Ok(Report {
        name: plan.name.clone(),
        durability: plan.durability.clone(),
        scenario: plan.scenario.clone(),
        wire: format!("{:?}", plan.wire).to_lowercase(),
        users_peak: users,
        rooms: plan.rooms,
        rate_per_user: plan.rate,
        payload_bytes: plan.payload,
        deflate: plan.deflate,
        seconds: total.as_secs_f64(),
        connections_attempted: get(&live.attempted),
        connections_ok: get(&live.connected),
        connect_errors: get(&live.failed),
        dropped: get(&live.dropped),
        sent: get(&live.sent),
        acked: get(&live.acked),
        delivered: tally.delivered,
        expected: tally.expected,
        lost: tally.lost,
        duplicated: tally.duplicated,
        reordered: tally.reordered,
        error_frames: get(&live.errors),
        first_error: shared.first_error.lock().ok().and_then(|e| e.clone()),
        ack_ms: Pct::of(&tally.ack_us),
        deliver_ms: Pct::of(&tally.deliver_us),
        slip_ms: Pct::of(&tally.slip_us),
        generator_thread_cpu_max: tally.cpu.as_secs_f64() / tally.wall.as_secs_f64().max(1e-9),
        server,
        server_rss_start: rss_start,
        steps: Vec::new(),
        max_passing_delivered_per_sec: None,
    })
}

/// `max`: steps the per-user rate up (×1.5 a step) until p99 delivery passes
/// 100 ms, something is lost, or a connection fails; the report of the last
/// passing step, with every step listed.
pub fn step_to_max(plan: &Plan) -> Result<Report> {
    let mut steps = Vec::new();
    let mut best: Option<Report> = None;
    let mut last = None;
    let mut rate = plan.rate.max(0.25);
    for _ in 0..16 {
        let mut p = plan.clone();
        p.rate = rate;
        let r = execute(&p)?;
        let passed =
            r.deliver_ms.p99 <= 100.0 && r.lost == 0 && r.connect_errors == 0 && r.delivered > 0;
        steps.push((rate, r.delivered_per_sec(), r.deliver_ms.p99, passed));
        eprintln!(
            "max: {rate}/s per user → {:.0} delivered/s, p99 {:.2} ms, lost {}: {}",
            r.delivered_per_sec(),
            r.deliver_ms.p99,
            r.lost,
            if passed { "pass" } else { "FAIL" }
        );
        let saturated = r.generator_saturated();
        if passed {
            best = Some(r);
        } else {
            last = Some(r);
            break;
        }
        if saturated {
            eprintln!("max: the generator saturated; stopping here");
            break;
        }
        rate *= 1.5;
    }
    let mut report = best.or(last).context("no step ran")?;
    report.max_passing_delivered_per_sec = steps
        .iter()
        .filter(|s| s.3)
        .map(|s| s.1)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    report.steps = steps;
    report.scenario = "max".into();
    Ok(report)
}

fn sample_server(pid: u32, shared: &Shared, done: &AtomicBool) -> Vec<Sample> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut out = Vec::new();
    let mut prev: Option<(Instant, u64)> = None;
    while !done.load(Ordering::Relaxed) {
        let now = Instant::now();
        if let Some((rss, ticks)) = proc_sample(pid) {
            let cpu = prev.map_or(0.0, |(t, p)| {
                (ticks.saturating_sub(p)) as f64 / hz / now.duration_since(t).as_secs_f64() * 100.0
            });
            if prev.is_some() {
                out.push(Sample {
                    t_s: now.saturating_duration_since(shared.epoch).as_secs_f64(),
                    rss_bytes: rss,
                    cpu_percent: cpu,
                });
            }
            prev = Some((now, ticks));
        }
        std::thread::sleep(Duration::from_millis(1000));
    }
    out
}

fn progress_line(shared: &Shared, total: Duration, done: &AtomicBool) {
    let l = &shared.live;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_secs(1));
        let t = shared.epoch.elapsed().as_secs_f64();
        eprintln!(
            "[{t:>5.0}/{:.0}s] users {:>6}  sent {:>9}  acked {:>9}  delivered {:>10}  conn errors {}  error frames {}",
            total.as_secs_f64(),
            get(&l.open),
            get(&l.sent),
            get(&l.acked),
            get(&l.delivered),
            get(&l.failed),
            get(&l.errors),
        );
    }
}

/// One generator thread: a task per virtual user it owns.
async fn worker(shared: Arc<Shared>, w: usize) -> Tally {
    let started = (Instant::now(), thread_cpu());
    let plan = &shared.plan;
    let users = stages::peak(&plan.stages);
    let tally = Rc::new(RefCell::new(Tally::new()));
    // Connections are paced per thread: each takes its share of the rate.
    let pace = Duration::from_secs_f64(plan.threads as f64 / plan.connect_rate);
    let next_connect = Rc::new(Cell::new(Instant::now()));
    let mut tasks = Vec::new();
    for i in (w as u32..users).step_by(plan.threads) {
        let windows = stages::windows(&plan.stages, i, WINDOW_STEP);
        let (shared, tally, next_connect) = (shared.clone(), tally.clone(), next_connect.clone());
        tasks.push(glommio::spawn_local(async move {
            for (start, stop) in windows {
                let vu = Vu {
                    shared: &shared,
                    tally: &tally,
                    i,
                    stop_at: shared.epoch + stop,
                };
                sleep_until(shared.epoch + start).await;
                let slot = next_connect.get().max(Instant::now());
                next_connect.set(slot + pace);
                sleep_until(slot).await;
                vu.session().await;
            }
        }));
    }
    // glommio 0.9.0 can park an executor while tasks are runnable (see the
    // engine's `kick_interval`); a timer that fires every few ms bounds
    // such a stall, which would otherwise show up as latency.
    let running = Rc::new(Cell::new(true));
    let ticker = {
        let running = running.clone();
        glommio::spawn_local(async move {
            while running.get() {
                glommio::timer::sleep(KICK_INTERVAL).await;
            }
        })
    };
    for t in tasks {
        t.await;
    }
    running.set(false);
    ticker.await;
    let mut out = Rc::try_unwrap(tally)
        .map(RefCell::into_inner)
        .unwrap_or_else(|rc| std::mem::replace(&mut *rc.borrow_mut(), Tally::new()));
    out.cpu = thread_cpu().saturating_sub(started.1);
    out.wall = started.0.elapsed();
    out
}

async fn sleep_until(t: Instant) {
    let left = t.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        glommio::timer::sleep(left).await;
    }
}

/// The due time (µs since the epoch) a message body starts with (`t=N;`).
fn sched_us(body: &[u8]) -> Option<u64> {
    let b = body.strip_prefix(b"t=")?;
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&b[..n]).ok()?.parse().ok()
}

/// One virtual user's session in one active window.
struct Vu<'a> {
    shared: &'a Shared,
    tally: &'a RefCell<Tally>,
    i: u32,
    stop_at: Instant,
}

impl Vu<'_> {
    fn fail(&self, why: String) {
        if let Ok(mut e) = self.shared.first_error.lock() {
            e.get_or_insert(why);
        }
    }

    fn room(&self) -> usize {
        self.i as usize % self.shared.room_ids.len()
    }

    /// Connects, joins, sends on schedule until the window ends, then
    /// drains what is still due and accounts for it.
    async fn session(&self) {
        let l = &self.shared.live;
        l.attempted.fetch_add(1, Ordering::Relaxed);
        let opened = futures_lite::future::or(self.connect(), async {
            glommio::timer::sleep(CONNECT_TIMEOUT).await;
            Err(anyhow::anyhow!(
                "connect and join took over {CONNECT_TIMEOUT:?}"
            ))
        })
        .await;
        let (mut conn, join_seq) = match opened {
            Ok(c) => c,
            Err(e) => {
                l.failed.fetch_add(1, Ordering::Relaxed);
                self.fail(format!("user {}: {e:#}", self.i));
                return;
            }
        };
        l.connected.fetch_add(1, Ordering::Relaxed);
        l.open.fetch_add(1, Ordering::Relaxed);
        let mut rx = Receiver::new(join_seq);
        let outcome = self.exchange(&mut conn, &mut rx).await;
        let upto = match &outcome {
            Ok(upto) => *upto,
            Err(e) => {
                l.dropped.fetch_add(1, Ordering::Relaxed);
                self.fail(format!("user {}: {e:#}", self.i));
                // Dropped: everything acknowledged by now was due to it.
                self.shared.max_acked[self.room()].load(Ordering::Acquire)
            }
        };
        {
            let mut t = self.tally.borrow_mut();
            t.expected += rx.expected(upto);
            t.delivered += rx.delivered_to(upto);
            t.lost += rx.lost(upto);
            t.duplicated += rx.duplicated;
            t.reordered += rx.reordered;
        }
        l.open.fetch_sub(1, Ordering::Relaxed);
        if outcome.is_ok() {
            conn.close().await;
        }
    }

    /// Upgrade, (Socket.IO: namespace connect,) join: the connection and
    /// the room's last seq at the join.
    async fn connect(&self) -> Result<(Conn, u64)> {
        let plan = &self.shared.plan;
        let token = jwt(&plan.jwt_secret, &format!("load-{}", self.i))?;
        let path = match plan.wire {
            Wire::Rookery => format!("/ws?token={token}"),
            Wire::SocketIo => "/socket.io/?EIO=4&transport=websocket".to_string(),
        };
        let mut conn = Conn::open(plan.addr, &path, plan.deflate, plan.wire).await?;
        if plan.wire == Wire::SocketIo {
            self.expect(&mut conn, |i| matches!(i, Incoming::Open))
                .await?;
            let t = conn.text();
            t.extend_from_slice(format!(r#"40{{"token":"{token}"}}"#).as_bytes());
            conn.send_text().await?;
            self.expect(&mut conn, |i| matches!(i, Incoming::Connected))
                .await?;
        }
        let room = self.shared.room_ids[self.room()];
        wire::write_join(plan.wire, conn.text(), room);
        conn.send_text().await?;
        let mut last = None;
        loop {
            let mut refused = None;
            // Stops at the answer: messages right behind it are the
            // session's, not the join's.
            conn.drain(|i| match i {
                Incoming::Joined { last_seq } => {
                    last = Some(last_seq);
                    false
                }
                Incoming::Error(e) | Incoming::Refused(e) => {
                    refused = Some(String::from_utf8_lossy(e).into_owned());
                    false
                }
                _ => true,
            })?;
            conn.flush().await?;
            if let Some(e) = refused {
                anyhow::bail!("join refused: {e}");
            }
            if let Some(last) = last {
                return Ok((conn, last));
            }
            conn.fill().await?;
        }
    }

    /// Reads until a message matching `want` arrives.
    async fn expect(&self, conn: &mut Conn, want: impl Fn(&Incoming) -> bool) -> Result<()> {
        // What arrived with the upgrade answer is looked at first.
        let mut seen = false;
        let mut refused = None;
        loop {
            conn.drain(|i| {
                if let Incoming::Refused(e) = i {
                    refused = Some(String::from_utf8_lossy(e).into_owned());
                    return false;
                }
                seen |= want(&i);
                !seen
            })?;
            conn.flush().await?;
            if let Some(e) = refused.take() {
                anyhow::bail!("refused: {e}");
            }
            if seen {
                return Ok(());
            }
            conn.fill().await?;
        }
    }

    /// The open-loop send schedule and the receive side, until the window
    /// ends; then the drain. The seq this receiver is accountable up to:
    /// the room's highest acknowledged seq when the drain found it complete
    /// (or gave up). Later acks are other users' business: they must not
    /// count against this receiver.
    async fn exchange(&self, conn: &mut Conn, rx: &mut Receiver) -> Result<u64> {
        let plan = &self.shared.plan;
        let epoch = self.shared.epoch;
        let room = self.room();
        let room_id = self.shared.room_ids[room];
        let interval = (plan.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.rate));
        // Spread the users' schedules over one interval.
        let base = Instant::now()
            + interval.map_or(Duration::ZERO, |iv| iv.mul_f64(rand::random::<f64>()));
        // Send k (from 1) is due one interval after send k - 1; the first at `base`.
        let due = |k: u64| interval.map(|iv| base + iv.mul_f64(k.saturating_sub(1) as f64));
        let mut k: u64 = 1; // Socket.IO ack ids start at 1 (0: the join)
        let mut acked: u64 = 0;
        let mut body = Vec::with_capacity(plan.payload + 32);
        let l = &self.shared.live;
        loop {
            let now = Instant::now();
            let next = due(k).filter(|&d| d < self.stop_at);
            if now >= self.stop_at {
                break;
            }
            if let Some(d) = next.filter(|&d| now >= d) {
                let sched_us = d.saturating_duration_since(epoch).as_micros() as u64;
                body.clear();
                use std::io::Write;
                let _ = write!(body, "t={sched_us};");
                body.resize(plan.payload.max(body.len()), b'x');
                wire::write_send(plan.wire, conn.text(), room_id, k, self.i as u64, &body);
                conn.send_text().await?;
                l.sent.fetch_add(1, Ordering::Relaxed);
                let _ = self
                    .tally
                    .borrow_mut()
                    .slip_us
                    .record(now.duration_since(d).as_micros().max(1) as u64);
                k += 1;
                continue;
            }
            let wake = next.unwrap_or(self.stop_at).min(self.stop_at);
            let readable = futures_lite::future::or(async { Some(conn.fill().await) }, async {
                sleep_until(wake).await;
                None
            })
            .await;
            if let Some(r) = readable {
                r?;
                self.take(conn, rx, room, &due, &mut acked).await?;
            }
        }
        // Drain: everything acknowledged in the room so far is due, and so
        // are this user's own acks.
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let upto = self.shared.max_acked[room].load(Ordering::Acquire);
            if rx.complete_to(upto) && acked + 1 >= k {
                return Ok(upto);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(upto); // what is missing counts as lost
            }
            let readable = futures_lite::future::or(async { Some(conn.fill().await) }, async {
                glommio::timer::sleep(left.min(Duration::from_millis(50))).await;
                None
            })
            .await;
            if let Some(r) = readable {
                r?;
                self.take(conn, rx, room, &due, &mut acked).await?;
            }
        }
    }

    /// Accounts for every message buffered on the connection.
    async fn take(
        &self,
        conn: &mut Conn,
        rx: &mut Receiver,
        room: usize,
        due: &impl Fn(u64) -> Option<Instant>,
        acked: &mut u64,
    ) -> Result<()> {
        let epoch = self.shared.epoch;
        let l = &self.shared.live;
        let max_acked = &self.shared.max_acked[room];
        let now = Instant::now();
        let now_us = now.saturating_duration_since(epoch).as_micros() as u64;
        // Counted locally, published once per read: the shared counters
        // are contended between generator threads.
        let (mut delivered, mut acks, mut errors) = (0u64, 0u64, 0u64);
        let mut top = 0u64;
        {
            // Not held across an await: other users of this thread share it.
            let mut t = self.tally.borrow_mut();
            conn.drain(|i| match i {
                Incoming::Msg { seq, body, .. }
                    if matches!(rx.arrive(seq), Arrival::New | Arrival::Reordered) =>
                {
                    delivered += 1;
                    if let Some(sched) = sched_us(body) {
                        let _ = t.deliver_us.record(now_us.saturating_sub(sched).max(1));
                    }
                    true
                }
                Incoming::Ack { r#ref, seq } => {
                    *acked += 1;
                    acks += 1;
                    top = top.max(seq);
                    if let Some(d) = due(r#ref) {
                        let _ = t
                            .ack_us
                            .record(now.saturating_duration_since(d).as_micros().max(1) as u64);
                    }
                    true
                }
                Incoming::Error(_) => {
                    errors += 1;
                    true
                }
                _ => true,
            })?;
        }
        if top > 0 {
            max_acked.fetch_max(top, Ordering::AcqRel);
        }
        for (counter, n) in [
            (&l.delivered, delivered),
            (&l.acked, acks),
            (&l.errors, errors),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        conn.flush().await
    }
}
