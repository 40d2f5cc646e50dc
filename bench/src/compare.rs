//! `rookery-bench compare`: the same load scenario against Rookery and the
//! baselines, one after the other on this machine, and a side-by-side
//! table with ratios (Rookery / baseline).
//!
//! Rookery is built (release) and started on a fresh data directory with
//! the named durability; the baselines (`bench/baselines`, Node `ws` and
//! Socket.IO 4, pinned by `package-lock.json`) are installed with `npm ci`
//! on first use and keep messages in memory. Every server is stopped
//! before the next starts.

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
    /// Servers to run, in order: `rookery`, `ws` (Node ws), `socketio`.
    #[arg(long, value_delimiter = ',', default_value = "rookery,ws,socketio")]
    pub servers: Vec<String>,
    /// The `rookery` binary (default: build the workspace's, release).
    #[arg(long)]
    pub rookery_bin: Option<PathBuf>,
}

/// The workspace's root (this crate lives in `bench/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

/// A server process, stopped (SIGTERM, then SIGKILL) on drop.
struct Running {
    child: Child,
    _dir: Option<tempfile::TempDir>,
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

fn rookery_bin(args: &CompareArgs) -> Result<PathBuf> {
    if let Some(b) = &args.rookery_bin {
        return Ok(b.clone());
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-q", "-p", "rookery-server"])
        .current_dir(root())
        .status()
        .context("running cargo build")?;
    anyhow::ensure!(status.success(), "building rookery failed");
    Ok(root().join("target/release/rookery"))
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

/// Starts one server; the process and the port it serves on.
fn start(name: &str, args: &CompareArgs) -> Result<(Running, u16)> {
    let port = free_port()?;
    let secret = &args.load.jwt_secret;
    let (child, dir, ready) = match name {
        "rookery" => {
            let dir = tempfile::tempdir()?;
            let child = Command::new(rookery_bin(args)?)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--data-dir", &dir.path().join("data").to_string_lossy()])
                .args([
                    "--durability",
                    &args.load.durability,
                    "--jwt-secret",
                    secret,
                ])
                // The load decides the rates; the server's abuse limits
                // would only measure themselves.
                .args(["--connections-per-ip-max", "1000000"])
                .args([
                    "--sends-per-user-per-s",
                    "1000000",
                    "--sends-per-user-burst",
                    "1000000",
                ])
                .args(["--registrations-per-ip-per-min", "1000000"])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .context("starting rookery")?;
            (child, Some(dir), "/readyz")
        }
        "ws" | "socketio" => {
            let dir = install_baselines()?;
            let child = Command::new("node")
                .arg(dir.join(name).join("server.js"))
                .args(["--port", &port.to_string(), "--jwt-secret", secret])
                .stdout(Stdio::null())
                .spawn()
                .context("starting node")?;
            (child, None, "/healthz")
        }
        other => bail!("unknown server {other:?} (rookery, ws, socketio)"),
    };
    let mut running = Running { child, _dir: dir };
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
        "report": r.to_json(),
    })
}

pub fn run(args: CompareArgs) -> Result<()> {
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

/// Rookery / baseline, for the headline figures.
fn ratios(reports: &[Report]) -> Value {
    let Some(rookery) = reports.iter().find(|r| r.name == "rookery") else {
        return Value::Null;
    };
    let mut out = serde_json::Map::new();
    for b in reports.iter().filter(|r| r.name != "rookery") {
        let div = |a: f64, b: f64| if b > 0.0 { Some(a / b) } else { None };
        out.insert(
            b.name.clone(),
            json!({
                "max_passing_delivered_per_sec": match (rookery.max_passing_delivered_per_sec, b.max_passing_delivered_per_sec) {
                    (Some(a), Some(bb)) => div(a, bb),
                    _ => None,
                },
                "delivered_per_sec": div(rookery.delivered_per_sec(), b.delivered_per_sec()),
                "deliver_p99_ms": div(rookery.deliver_ms.p99, b.deliver_ms.p99),
                "server_rss_bytes_max": match (rookery.server_rss_max(), b.server_rss_max()) {
                    (Some(a), Some(bb)) => div(a as f64, bb as f64),
                    _ => None,
                },
            }),
        );
    }
    Value::Object(out)
}

fn print_side_by_side(reports: &[Report]) {
    let mut header = format!("{:<30}", "");
    for r in reports {
        header.push_str(&format!("{:>18}", r.name));
    }
    println!("\n{header}");
    type Cell = fn(&Report) -> String;
    let rows: [(&str, Cell); 9] = [
        ("durability", |r| r.durability.clone()),
        ("max passing delivered/s", |r| {
            r.max_passing_delivered_per_sec
                .map_or("-".into(), |v| format!("{v:.0}"))
        }),
        ("delivered/s", |r| format!("{:.0}", r.delivered_per_sec())),
        ("deliver p50 ms", |r| format!("{:.2}", r.deliver_ms.p50)),
        ("deliver p99 ms", |r| format!("{:.2}", r.deliver_ms.p99)),
        ("ack p99 ms", |r| format!("{:.2}", r.ack_ms.p99)),
        ("lost", |r| r.lost.to_string()),
        ("connect errors", |r| r.connect_errors.to_string()),
        ("server RSS max MiB", |r| {
            r.server_rss_max().map_or("-".into(), |b| {
                format!("{:.1}", b as f64 / (1 << 20) as f64)
            })
        }),
    ];
    for (label, f) in rows {
        let mut line = format!("{label:<30}");
        for r in reports {
            line.push_str(&format!("{:>18}", f(r)));
        }
        println!("{line}");
    }
    if let Some(rookery) = reports.iter().find(|r| r.name == "rookery") {
        for b in reports.iter().filter(|r| r.name != "rookery") {
            let ratio = match (
                rookery.max_passing_delivered_per_sec,
                b.max_passing_delivered_per_sec,
            ) {
                (Some(a), Some(bb)) if bb > 0.0 => a / bb,
                _ => rookery.delivered_per_sec() / b.delivered_per_sec().max(1e-9),
            };
            println!("rookery / {:<20} {ratio:>10.2}× delivered/s", b.name);
        }
    }
}

/// The machine, for the report.
fn machine() -> Value {
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
