//! `rookery-bench compare`: the same load scenario against Rookery and the
//! baselines, one after the other on this machine, and a side-by-side
//! table with ratios (Rookery / baseline), of throughput and of server CPU
//! per delivery.
//!
//! Rookery is built (release) and started on a fresh data directory with
//! the named durability. The baselines keep messages in memory: `bare`
//! (`bench/baselines/bare`, Rust, built release) is the least work any
//! server must do for this load on this machine; Node `ws` and Socket.IO 4
//! (`bench/baselines`, pinned by `package-lock.json`) are installed with
//! `npm ci` on first use. Every server is stopped before the next starts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::load::{self, Plan, Report};

#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    #[command(flatten)]
    pub load: load::Args,
    /// Servers to run, in order: `rookery`, `bare` (the Rust floor), `ws`
    /// (Node ws), `socketio`. (`--scenario cluster` runs Rookery on one
    /// node, then on three nodes with NATS: see `cluster.rs`.)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rookery,bare,ws,socketio"
    )]
    pub servers: Vec<String>,
    /// The `rookery` binary (default: build the workspace's, release).
    #[arg(long)]
    pub rookery_bin: Option<PathBuf>,
    /// The `rookery-bare` binary (default: build the workspace's, release).
    #[arg(long)]
    pub bare_bin: Option<PathBuf>,
}

/// The workspace's root (this crate lives in `bench/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

/// A server process, stopped (SIGTERM, then SIGKILL) on drop.
pub(crate) struct Running {
    pub(crate) child: Child,
    _dir: Option<tempfile::TempDir>,
}

impl Running {
    pub(crate) fn new(child: Child, dir: Option<tempfile::TempDir>) -> Running {
        Running { child, _dir: dir }
    }

    /// Keeps `dir` until this process is stopped.
    pub(crate) fn keep(&mut self, dir: tempfile::TempDir) {
        self._dir = Some(dir);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `GET path` answers 200.
fn wait_ready(port: u16, path: &str, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = format!("127.0.0.1:{port}").parse()?;
    loop {
        if let Ok(mut http) = crate::http_client::HttpClient::connect(addr) {
            if let Ok((200, _)) = http.call("GET", path, None, None) {
                return Ok(());
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("the server exited ({status}) before it was ready");
        }
        if Instant::now() > deadline {
            bail!("the server was not ready within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The binary `given`, or the workspace's `bin` of `package`, built
/// release.
pub(crate) fn built(given: &Option<PathBuf>, package: &str, bin: &str) -> Result<PathBuf> {
    if let Some(b) = given {
        return Ok(b.clone());
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-q", "-p", package])
        .current_dir(root())
        .status()
        .context("running cargo build")?;
    anyhow::ensure!(status.success(), "building {package} failed");
    Ok(root().join("target/release").join(bin))
}

/// Installs the baselines' npm packages from the lock file, once.
fn install_baselines() -> Result<PathBuf> {
    let dir = root().join("bench/baselines");
    if !dir.join("node_modules/socket.io").exists() {
        eprintln!("installing the baselines (npm ci in {})", dir.display());
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .context("running npm (Node.js and npm are needed for the baselines)")?;
        anyhow::ensure!(status.success(), "npm ci failed");
    }
    Ok(dir)
}

/// Starts `rookery` on a fresh data directory with `extra` flags; the
/// process and the port it serves on, once it is ready.
pub(crate) fn start_rookery(
    bin: &Path,
    durability: &str,
    secret: &str,
    extra: &[&str],
) -> Result<(Running, u16)> {
    let dir = tempfile::tempdir()?;
    let (mut running, port) =
        start_rookery_in(bin, &dir.path().join("data"), durability, secret, extra)?;
    running.keep(dir);
    Ok((running, port))
}

/// [`start_rookery`] on the data directory `data`, which outlives it.
pub(crate) fn start_rookery_in(
    bin: &Path,
    data: &Path,
    durability: &str,
    secret: &str,
    extra: &[&str],
) -> Result<(Running, u16)> {
    let port = free_port()?;
    let child = Command::new(bin)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", &data.to_string_lossy()])
        .args(["--durability", durability, "--jwt-secret", secret])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting rookery")?;
    let mut running = Running { child, _dir: None };
    wait_ready(port, "/readyz", &mut running.child)?;
    Ok((running, port))
}

/// Starts one server; the process and the port it serves on.
fn start(name: &str, args: &CompareArgs) -> Result<(Running, u16)> {
    let port = free_port()?;
    let secret = &args.load.jwt_secret;
    let (child, ready) = match name {
        "rookery" => {
            let bin = built(&args.rookery_bin, "rookery-server", "rookery")?;
            // The load decides the rates; the server's abuse limits would
            // only measure themselves. One admin creates every room.
            let unlimited = [
                "--connections-per-ip-max",
                "--sends-per-user-per-s",
                "--sends-per-user-burst",
                "--registrations-per-ip-per-min",
                "--rooms-per-user-per-min",
            ];
            let extra: Vec<&str> = unlimited.iter().flat_map(|f| [*f, "1000000"]).collect();
            return start_rookery(&bin, &args.load.durability, secret, &extra);
        }
        "bare" => {
            let child = Command::new(built(&args.bare_bin, "rookery-bare", "rookery-bare")?)
                .args(["--port", &port.to_string(), "--jwt-secret", secret])
                .stdout(Stdio::null())
                .spawn()
                .context("starting rookery-bare")?;
            (child, "/healthz")
        }
        "ws" | "socketio" => {
            let dir = install_baselines()?;
            let child = Command::new("node")
                .arg(dir.join(name).join("server.js"))
                .args(["--port", &port.to_string(), "--jwt-secret", secret])
                .stdout(Stdio::null())
                .spawn()
                .context("starting node")?;
            (child, "/healthz")
        }
        other => bail!("unknown server {other:?} (rookery, bare, ws, socketio)"),
    };
    let mut running = Running { child, _dir: None };
    wait_ready(port, ready, &mut running.child)?;
    Ok((running, port))
}

/// One server's row of the JSON.
fn row(r: &Report) -> Value {
    json!({
        "name": r.name,
        "durability": r.durability,
        "max_passing_delivered_per_sec": r.max_passing_delivered_per_sec,
        "delivered_per_sec": r.delivered_per_sec(),
        "deliver_p50_ms": r.deliver_ms.p50,
        "deliver_p99_ms": r.deliver_ms.p99,
        "ack_p99_ms": r.ack_ms.p99,
        "lost": r.lost,
        "connect_errors": r.connect_errors,
        "server_rss_bytes_max": r.server_rss_max(),
        "server_cpu_us_per_delivery": r.server_cpu_us_per_delivery(),
        "max_passing_server_cpu_us_per_delivery": r.best_step().and_then(|s| s.server_cpu_us_per_delivery),
        "generator_cpu_us_per_delivery": r.generator_cpu_us_per_delivery(),
        "limit": limit(r),
        "report": r.to_json(),
    })
}

/// What stopped a server's `max` climb: the generator (it saturated), the
/// machine (a step failed with sends going out late: the server and the
/// generator both needed the cores), the server (a step failed while the
/// generator kept up), or nothing.
fn limit(r: &Report) -> &'static str {
    match r.steps.last() {
        None => "-",
        Some(s) if s.generator_saturated => "generator",
        Some(s) if !s.passed && s.slip_p99_ms > 20.0 => "machine (cores shared)",
        Some(s) if !s.passed => "server",
        Some(_) => "none (steps exhausted)",
    }
}

pub fn run(args: CompareArgs) -> Result<()> {
    if args.load.scenario.as_deref() == Some("cluster") {
        return crate::cluster::run(&args);
    }
    let thresholds: Vec<load::threshold::Threshold> = args
        .load
        .thresholds
        .iter()
        .map(|t| load::threshold::Threshold::parse(t).map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    let mut reports = Vec::new();
    for name in &args.servers {
        let (server, port) = start(name, &args)?;
        let mut load = args.load.clone();
        load.url = format!("ws://127.0.0.1:{port}");
        load.server_pid = Some(server.child.id());
        load.name = name.clone();
        load.wire = if name == "socketio" {
            "socketio"
        } else {
            "rookery"
        }
        .into();
        if name != "rookery" {
            load.durability = "memory".into();
        }
        let plan = Plan::from_args(&load)?;
        eprintln!("== {name}: scenario {}", plan.scenario);
        let report = if plan.scenario == "max" {
            load::step_to_max(&plan)?
        } else {
            load::execute(&plan)?
        };
        println!("{name}\n{}", report.table());
        for (spec, actual, passed) in load::judge(&report, &thresholds) {
            println!(
                "  threshold {spec:<26} actual {actual:>10.3}  {}",
                if passed { "ok" } else { "FAILED" }
            );
        }
        reports.push(report);
        drop(server);
    }
    print_side_by_side(&reports);
    let ratios = ratios(&reports);
    let out = json!({
        "scenario": reports.first().map(|r| r.scenario.clone()),
        "machine": machine(),
        "servers": reports.iter().map(|r| {
            let mut v = row(r);
            v["thresholds"] = load::judge(r, &thresholds)
                .into_iter()
                .map(|(s, a, p)| json!({"threshold": s, "actual": a, "passed": p}))
                .collect();
            v
        }).collect::<Vec<_>>(),
        "ratios": ratios,
    });
    if let Some(path) = &args.load.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}

/// `a / b`, when both are there and `b` is not 0.
fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Server CPU per delivery of `a` over `b` at every step (same rate per
/// user) both passed: (rate per user, ratio).
fn cpu_ratios_per_step(a: &Report, b: &Report) -> Vec<(f64, f64)> {
    a.steps
        .iter()
        .filter(|s| s.passed)
        .filter_map(|sa| {
            let sb = b
                .steps
                .iter()
                .find(|sb| sb.passed && (sb.rate_per_user - sa.rate_per_user).abs() < 1e-9)?;
            Some((
                sa.rate_per_user,
                div(sa.server_cpu_us_per_delivery, sb.server_cpu_us_per_delivery)?,
            ))
        })
        .collect()
}

/// `a` against `b`: throughput, p99, memory, and CPU per delivery (at the
/// highest step both passed, at every such step, and over whole runs).
fn ratio(a: &Report, b: &Report) -> Value {
    let per_step = cpu_ratios_per_step(a, b);
    json!({
        "max_passing_delivered_per_sec": div(a.max_passing_delivered_per_sec, b.max_passing_delivered_per_sec),
        "delivered_per_sec": div(Some(a.delivered_per_sec()), Some(b.delivered_per_sec())),
        "deliver_p99_ms": div(Some(a.deliver_ms.p99), Some(b.deliver_ms.p99)),
        "server_rss_bytes_max": div(a.server_rss_max().map(|v| v as f64), b.server_rss_max().map(|v| v as f64)),
        "server_cpu_us_per_delivery": div(a.server_cpu_us_per_delivery(), b.server_cpu_us_per_delivery()),
        "server_cpu_us_per_delivery_at_highest_common_step": per_step.last().map(|p| p.1),
        "server_cpu_us_per_delivery_worst_common_step": per_step.iter().map(|p| p.1).fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))),
        "server_cpu_per_delivery_by_step": per_step.iter().map(|(r, x)| json!({"rate_per_user": r, "ratio": x})).collect::<Vec<_>>(),
    })
}

/// Rookery / each baseline, and `bare` / the Node baselines (what the
/// floor itself reaches against them).
fn ratios(reports: &[Report]) -> Value {
    let mut out = serde_json::Map::new();
    for name in ["rookery", "bare"] {
        let Some(a) = reports.iter().find(|r| r.name == name) else {
            continue;
        };
        let mut of = serde_json::Map::new();
        for b in reports
            .iter()
            .filter(|r| r.name != name && r.name != "rookery")
        {
            of.insert(b.name.clone(), ratio(a, b));
        }
        if !of.is_empty() {
            out.insert(name.to_string(), Value::Object(of));
        }
    }
    Value::Object(out)
}

fn print_side_by_side(reports: &[Report]) {
    let mut header = format!("{:<34}", "");
    for r in reports {
        header.push_str(&format!("{:>14}", r.name));
    }
    println!("\n{header}");
    let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    type Cell = Box<dyn Fn(&Report) -> String>;
    let rows: Vec<(&str, Cell)> = vec![
        ("durability", Box::new(|r| r.durability.clone())),
        (
            "max passing delivered/s",
            Box::new(|r| {
                r.max_passing_delivered_per_sec
                    .map_or("-".into(), |v| format!("{v:.0}"))
            }),
        ),
        (
            "delivered/s",
            Box::new(|r| format!("{:.0}", r.delivered_per_sec())),
        ),
        (
            "deliver p50 ms",
            Box::new(|r| format!("{:.2}", r.deliver_ms.p50)),
        ),
        (
            "deliver p99 ms",
            Box::new(|r| format!("{:.2}", r.deliver_ms.p99)),
        ),
        ("ack p99 ms", Box::new(|r| format!("{:.2}", r.ack_ms.p99))),
        ("lost", Box::new(|r| r.lost.to_string())),
        ("connect errors", Box::new(|r| r.connect_errors.to_string())),
        (
            "server RSS max MiB",
            Box::new(|r| {
                r.server_rss_max().map_or("-".into(), |b| {
                    format!("{:.1}", b as f64 / (1 << 20) as f64)
                })
            }),
        ),
        (
            "server CPU µs/delivery",
            Box::new(move |r| us(r.server_cpu_us_per_delivery())),
        ),
        (
            "generator CPU µs/delivery",
            Box::new(move |r| us(r.generator_cpu_us_per_delivery())),
        ),
        (
            "limit",
            Box::new(|r| limit(r).split(' ').next().unwrap_or("").to_string()),
        ),
    ];
    for (label, f) in rows {
        let mut line = format!("{label:<34}");
        for r in reports {
            line.push_str(&format!("{:>14}", f(r)));
        }
        println!("{line}");
    }
    // Server CPU per delivery at every step, side by side.
    let mut rates: Vec<f64> = reports
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| s.rate_per_user))
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    if !rates.is_empty() {
        println!(
            "\nserver CPU µs per delivery by step (FAIL: the step failed; *: generator saturated)"
        );
        for rate in rates {
            let mut line = format!("  {rate:>8.3}/s per user {:>13}", "");
            for r in reports {
                let cell = r
                    .steps
                    .iter()
                    .find(|s| (s.rate_per_user - rate).abs() < 1e-9)
                    .map_or("".into(), |s| {
                        format!(
                            "{}{}{}",
                            us(s.server_cpu_us_per_delivery),
                            if s.passed { "" } else { " FAIL" },
                            if s.generator_saturated { "*" } else { "" }
                        )
                    });
                line.push_str(&format!("{cell:>14}"));
            }
            println!("{line}");
        }
    }
    println!();
    for name in ["rookery", "bare"] {
        let Some(a) = reports.iter().find(|r| r.name == name) else {
            continue;
        };
        for b in reports
            .iter()
            .filter(|r| r.name != name && r.name != "rookery")
        {
            let thr = div(
                a.max_passing_delivered_per_sec,
                b.max_passing_delivered_per_sec,
            )
            .or_else(|| div(Some(a.delivered_per_sec()), Some(b.delivered_per_sec())));
            let steps = cpu_ratios_per_step(a, b);
            let x = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
            let cpu = if steps.is_empty() {
                format!(
                    "CPU per delivery {:>6}× over the run",
                    x(div(
                        a.server_cpu_us_per_delivery(),
                        b.server_cpu_us_per_delivery()
                    ))
                )
            } else {
                let worst = steps.iter().map(|p| p.1).fold(0.0, f64::max);
                format!(
                    "CPU per delivery {:>6}× at the highest common step, {:>6}× at worst",
                    x(steps.last().map(|p| p.1)),
                    x(Some(worst))
                )
            };
            println!("{name} / {:<10} {:>7}× delivered/s   {cpu}", b.name, x(thr));
        }
    }
}

/// The machine, for the report.
pub(crate) fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
    });
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu": cpu,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
    })
}
