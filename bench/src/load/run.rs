//! One load run: setup (rooms, users), the generator threads (each an
//! event loop over its users' connections, see `driver`), the server
//! sampler, the progress line, and the report.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::stages;
use super::wire::Wire;
use super::{driver, Plan};
use crate::http_client::{jwt, HttpClient};

/// Counters shared by the generator threads (relaxed; read by the progress
/// line and the report).
#[derive(Default)]
pub(super) struct Live {
    pub(super) attempted: AtomicU64,
    pub(super) connected: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) open: AtomicU64,
    pub(super) sent: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) dropped: AtomicU64,
}

/// What every generator thread reads.
pub(super) struct Shared {
    pub(super) plan: Plan,
    pub(super) epoch: Instant,
    pub(super) room_ids: Vec<u64>,
    /// Per room: the highest seq acknowledged so far.
    pub(super) max_acked: Vec<AtomicU64>,
    pub(super) live: Live,
    pub(super) first_error: std::sync::Mutex<Option<String>>,
}

/// One generator thread's results (merged: every thread's).
pub(super) struct Tally {
    pub(super) ack_us: Histogram<u64>,
    pub(super) deliver_us: Histogram<u64>,
    /// Against several nodes: deliveries to users on the room's owner.
    pub(super) deliver_local_us: Histogram<u64>,
    /// Against several nodes: deliveries through another node.
    pub(super) deliver_remote_us: Histogram<u64>,
    pub(super) slip_us: Histogram<u64>,
    pub(super) expected: u64,
    /// Deliveries counted against `expected` (those up to each receiver's
    /// last due seq).
    pub(super) delivered: u64,
    pub(super) lost: u64,
    pub(super) duplicated: u64,
    pub(super) reordered: u64,
    /// CPU time of the thread (merged: of the busiest thread).
    pub(super) cpu: Duration,
    /// CPU time of every thread merged.
    pub(super) cpu_sum: Duration,
    pub(super) wall: Duration,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

impl Tally {
    pub(super) fn new() -> Tally {
        Tally {
            ack_us: histogram(),
            deliver_us: histogram(),
            deliver_local_us: histogram(),
            deliver_remote_us: histogram(),
            slip_us: histogram(),
            expected: 0,
            delivered: 0,
            lost: 0,
            duplicated: 0,
            reordered: 0,
            cpu: Duration::ZERO,
            cpu_sum: Duration::ZERO,
            wall: Duration::ZERO,
        }
    }

    fn merge(&mut self, o: &Tally) {
        let _ = self.ack_us.add(&o.ack_us);
        let _ = self.deliver_us.add(&o.deliver_us);
        let _ = self.deliver_local_us.add(&o.deliver_local_us);
        let _ = self.deliver_remote_us.add(&o.deliver_remote_us);
        let _ = self.slip_us.add(&o.slip_us);
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.cpu = self.cpu.max(o.cpu);
        self.cpu_sum += o.cpu;
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
    /// The percentiles, in ms, of a histogram of µs.
    pub fn of(h: &Histogram<u64>) -> Pct {
        let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Pct {
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max() as f64 / 1000.0,
        }
    }

    pub fn json(&self) -> Value {
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
    /// Against several nodes: send → deliver to users on the room's owner
    /// node, and through another node.
    pub deliver_local_ms: Option<Pct>,
    pub deliver_remote_ms: Option<Pct>,
    pub slip_ms: Pct,
    pub generator_thread_cpu_max: f64,
    /// CPU seconds of every generator thread.
    pub generator_cpu_s: f64,
    pub server: Vec<Sample>,
    pub server_rss_start: Option<u64>,
    /// CPU seconds (user + system) the server process used during the run,
    /// from /proc (10 ms ticks).
    pub server_cpu_s: Option<f64>,
    /// For `max`: every step, in order.
    pub steps: Vec<Step>,
    pub max_passing_delivered_per_sec: Option<f64>,
}

/// One step of `max`.
#[derive(Debug, Clone, Default)]
pub struct Step {
    pub rate_per_user: f64,
    pub delivered_per_sec: f64,
    pub deliver_p99_ms: f64,
    pub passed: bool,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub server_cpu_us_per_send: Option<f64>,
    pub generator_cpu_us_per_delivery: Option<f64>,
    pub generator_saturated: bool,
    /// Schedule slip p99: how late sends went out (a busy machine).
    pub slip_p99_ms: f64,
    pub server_rss_bytes_max: Option<u64>,
}

impl Step {
    fn of(r: &Report, passed: bool) -> Step {
        Step {
            rate_per_user: r.rate_per_user,
            delivered_per_sec: r.delivered_per_sec(),
            deliver_p99_ms: r.deliver_ms.p99,
            passed,
            server_cpu_us_per_delivery: r.server_cpu_us_per_delivery(),
            server_cpu_us_per_send: r.server_cpu_us_per_send(),
            generator_cpu_us_per_delivery: r.generator_cpu_us_per_delivery(),
            generator_saturated: r.generator_saturated(),
            slip_p99_ms: r.slip_ms.p99,
            server_rss_bytes_max: r.server_rss_max(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "rate_per_user": self.rate_per_user,
            "delivered_per_sec": self.delivered_per_sec,
            "deliver_p99_ms": self.deliver_p99_ms,
            "passed": self.passed,
            "server_cpu_us_per_delivery": self.server_cpu_us_per_delivery,
            "server_cpu_us_per_send": self.server_cpu_us_per_send,
            "generator_cpu_us_per_delivery": self.generator_cpu_us_per_delivery,
            "generator_saturated": self.generator_saturated,
            "schedule_slip_p99_ms": self.slip_p99_ms,
            "server_rss_bytes_max": self.server_rss_bytes_max,
        })
    }
}

/// `total` µs spread over `n` events, if any.
fn per(total_s: Option<f64>, n: u64) -> Option<f64> {
    total_s.filter(|_| n > 0).map(|s| s * 1e6 / n as f64)
}

impl Report {
    pub fn delivered_per_sec(&self) -> f64 {
        self.delivered as f64 / self.seconds.max(1e-9)
    }

    /// Server CPU (user + system) per delivered message, µs.
    pub fn server_cpu_us_per_delivery(&self) -> Option<f64> {
        per(self.server_cpu_s, self.delivered)
    }

    /// Server CPU per acknowledged send, µs.
    pub fn server_cpu_us_per_send(&self) -> Option<f64> {
        per(self.server_cpu_s, self.acked)
    }

    /// Generator CPU (every thread) per delivered message, µs.
    pub fn generator_cpu_us_per_delivery(&self) -> Option<f64> {
        per(Some(self.generator_cpu_s), self.delivered)
    }

    /// The highest passing step of `max`.
    pub fn best_step(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|s| s.passed)
            .max_by(|a, b| a.delivered_per_sec.total_cmp(&b.delivered_per_sec))
    }

    pub fn connect_error_rate(&self) -> f64 {
        self.connect_errors as f64 / self.connections_attempted.max(1) as f64
    }

    pub fn server_rss_max(&self) -> Option<u64> {
        self.server.iter().map(|s| s.rss_bytes).max()
    }

    /// Whether the generator was the bottleneck: its busiest thread was
    /// on the CPU nearly all the time.
    pub fn generator_saturated(&self) -> bool {
        self.generator_thread_cpu_max > 0.9
    }

    /// Whether sends went out late (p99 over 20 ms): with the generator
    /// not saturated, the machine's cores were all busy (the server and
    /// the generator share them), and latencies include the lateness.
    pub fn sends_late(&self) -> bool {
        self.slip_ms.p99 > 20.0
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
            "deliver_local_ms": self.deliver_local_ms.as_ref().map(Pct::json),
            "deliver_cross_node_ms": self.deliver_remote_ms.as_ref().map(Pct::json),
            "delivered_per_sec": self.delivered_per_sec(),
            "max_passing_delivered_per_sec": self.max_passing_delivered_per_sec,
            "steps": self.steps.iter().map(Step::json).collect::<Vec<_>>(),
            "server_cpu_s": self.server_cpu_s,
            "server_cpu_us_per_delivery": self.server_cpu_us_per_delivery(),
            "server_cpu_us_per_send": self.server_cpu_us_per_send(),
            "max_passing_server_cpu_us_per_delivery": self.best_step().and_then(|s| s.server_cpu_us_per_delivery),
            "server_rss_bytes_max": self.server_rss_max(),
            "server_rss_per_connection_bytes": rss_per_conn,
            "server_cpu_percent_avg": avg_cpu(&self.server),
            "server_samples": self.server.iter().map(|s| json!({
                "t_s": s.t_s, "rss_bytes": s.rss_bytes, "cpu_percent": s.cpu_percent})).collect::<Vec<_>>(),
            "generator": {
                "thread_cpu_max": self.generator_thread_cpu_max,
                "cpu_s": self.generator_cpu_s,
                "cpu_us_per_delivery": self.generator_cpu_us_per_delivery(),
                "schedule_slip_ms": self.slip_ms.json(),
                "saturated": self.generator_saturated(),
                "sends_late": self.sends_late(),
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
        if let (Some(l), Some(r)) = (&self.deliver_local_ms, &self.deliver_remote_ms) {
            line("  local", pct(l));
            line("  cross-node", pct(r));
        }
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
        let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        line(
            "server CPU per delivery",
            format!(
                "{} µs ({} µs per send)",
                us(self.server_cpu_us_per_delivery()),
                us(self.server_cpu_us_per_send())
            ),
        );
        if let Some(m) = self.max_passing_delivered_per_sec {
            line("max passing delivered/s", format!("{m:.0}"));
        }
        for st in &self.steps {
            line(
                &format!("  step {:.3}/s per user", st.rate_per_user),
                format!(
                    "{:>9.0} delivered/s  p99 {:>8.2} ms  server {:>6} µs/delivery  generator {:>6} µs/delivery  {}{}",
                    st.delivered_per_sec,
                    st.deliver_p99_ms,
                    us(st.server_cpu_us_per_delivery),
                    us(st.generator_cpu_us_per_delivery),
                    if st.passed { "pass" } else { "FAIL" },
                    if st.generator_saturated { " (generator saturated)" } else { "" }
                ),
            );
        }
        line(
            "generator",
            format!(
                "{} µs CPU per delivery, busiest thread {:.0}% CPU, schedule slip p99 {:.2} ms{}",
                us(self.generator_cpu_us_per_delivery()),
                self.generator_thread_cpu_max * 100.0,
                self.slip_ms.p99,
                if self.generator_saturated() {
                    "  (SATURATED: the generator was the bottleneck)"
                } else if self.sends_late() {
                    "  (sends late: every core was busy)"
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
pub(super) fn thread_cpu() -> Duration {
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
    let mut nodes = plan
        .addrs
        .iter()
        .map(|a| HttpClient::connect(*a))
        .collect::<Result<Vec<_>>>()?;
    let admin = jwt(&plan.jwt_secret, "load-admin")?;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    // Room k through node k mod n (in a cluster: owned by it).
    let n = nodes.len();
    let ids = (0..plan.rooms as usize)
        .map(|i| nodes[i % n].create_room(&admin, &format!("load-{run}-{i}")))
        .collect::<Result<Vec<u64>>>()?;
    let http = &mut nodes[0];
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
    let server_start = plan.server_pid.and_then(proc_sample);
    let mut workers = Vec::new();
    for w in 0..plan.threads {
        let shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("load-{w}"))
            .spawn(move || driver::run(&shared, w))
            .context("starting a generator thread")?;
        workers.push(handle);
    }
    let total = stages::total(&plan.stages);
    let progress_done = done.clone();
    let progress = (!plan.quiet).then(|| {
        let shared = shared.clone();
        std::thread::spawn(move || progress_line(&shared, total, &progress_done))
    });
    let mut tally = Tally::new();
    let mut failure = None;
    for h in workers {
        match h.join() {
            Ok(Ok(t)) => tally.merge(&t),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(anyhow::anyhow!("a generator thread panicked")),
        }
    }
    let server_end = plan.server_pid.and_then(proc_sample);
    done.store(true, Ordering::Relaxed);
    if let Some(e) = failure {
        return Err(e);
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let server_cpu_s = match (server_start, server_end) {
        (Some((_, a)), Some((_, b))) => Some(b.saturating_sub(a) as f64 / hz),
        _ => None,
    };
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
        deliver_local_ms: (plan.addrs.len() > 1).then(|| Pct::of(&tally.deliver_local_us)),
        deliver_remote_ms: (plan.addrs.len() > 1).then(|| Pct::of(&tally.deliver_remote_us)),
        slip_ms: Pct::of(&tally.slip_us),
        generator_thread_cpu_max: tally.cpu.as_secs_f64() / tally.wall.as_secs_f64().max(1e-9),
        generator_cpu_s: tally.cpu_sum.as_secs_f64(),
        server,
        server_rss_start: server_start.map(|s| s.0),
        server_cpu_s,
        steps: Vec::new(),
        max_passing_delivered_per_sec: None,
    })
}

/// `max` bisects between the last pass and the first failure until the two
/// are this close (a ratio): 5%, three steps after a ×1.5 climb.
const BISECT_WITHIN: f64 = 1.05;

/// `max`: steps the per-user rate up (×1.5 a step) until p99 delivery passes
/// 100 ms, something is lost, or a connection fails; then bisects (by
/// ratio) between the last pass and that failure until they are within 5%,
/// so the figure is within 5% of the limit and two servers' figures can be
/// compared to that precision. The report of the highest passing step,
/// with every step listed.
pub fn step_to_max(plan: &Plan) -> Result<Report> {
    let mut steps: Vec<Step> = Vec::new();
    let mut best: Option<Report> = None;
    let mut last = None;
    let mut rate = plan.rate.max(0.25);
    // The highest passing and lowest failing rates so far.
    let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
    for _ in 0..24 {
        let mut p = plan.clone();
        p.rate = rate;
        let r = execute(&p)?;
        let passed =
            r.deliver_ms.p99 <= 100.0 && r.lost == 0 && r.connect_errors == 0 && r.delivered > 0;
        let step = Step::of(&r, passed);
        let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        eprintln!(
            "max: {rate:.3}/s per user → {:.0} delivered/s, p99 {:.2} ms, lost {}, server {} µs/delivery, generator {} µs/delivery{}: {}",
            step.delivered_per_sec,
            step.deliver_p99_ms,
            r.lost,
            us(step.server_cpu_us_per_delivery),
            us(step.generator_cpu_us_per_delivery),
            if step.generator_saturated { " (generator saturated)" } else { "" },
            if passed { "pass" } else { "FAIL" }
        );
        let saturated = step.generator_saturated;
        steps.push(step);
        if passed {
            best = Some(r);
            lo = Some(rate);
        } else {
            last = Some(r);
            hi = Some(rate);
        }
        if saturated {
            eprintln!("max: the generator saturated; stopping here");
            break;
        }
        rate = match (lo, hi) {
            (Some(lo), None) => lo * 1.5,
            (Some(lo), Some(hi)) if hi / lo > BISECT_WITHIN => (lo * hi).sqrt(),
            // Within 5%, or the first step failed: done.
            _ => break,
        };
    }
    let mut report = best.or(last).context("no step ran")?;
    report.max_passing_delivered_per_sec = steps
        .iter()
        .filter(|s| s.passed)
        .map(|s| s.delivered_per_sec)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    steps.sort_by(|a, b| a.rate_per_user.total_cmp(&b.rate_per_user));
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
