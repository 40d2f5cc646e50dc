//! `rookery-bench load`: a k6-style load generator for any server that
//! speaks Rookery's protocol (or Socket.IO, for the baseline).
//!
//! Virtual users (VUs) follow ramp stages; each authenticates with its own
//! JWT, joins one room (users are spread over the rooms round-robin), and
//! sends on an open-loop schedule: send `k` of a user is due at a fixed
//! time whether or not the server kept up, and latencies are measured from
//! that due time (no coordinated omission). Every member of a room,
//! sender included, checks that it receives each of the room's seqs once
//! and in order from its join to its leave (`account`); what is missing at
//! the end is lost.
//!
//! Each generator thread (one by default) is an epoll loop over the
//! connections of the VUs it owns (`driver`), unpinned so that it does not
//! fight the server's pinned shards; nothing is shared on the hot path but
//! a per-room atomic (the highest seq acknowledged) and relaxed counters
//! for the progress line. Frames are parsed in place from one receive
//! buffer per thread, with no allocation per frame; the report gives the
//! generator's CPU per delivery and says when it, not the server, was the
//! limit.

pub mod account;
pub mod stages;
pub mod threshold;
pub mod wire;

mod client;
mod driver;
mod poll;
mod run;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub use run::{execute, step_to_max, Pct, Report};
use stages::Stage;
use threshold::Threshold;
use wire::Wire;

/// Options of `rookery-bench load`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The server's WebSocket URL (`ws://HOST:PORT`; the path is chosen by
    /// `--wire`), or several, comma-separated (the nodes of a cluster):
    /// room `k` is created through URL `k mod n` (so, in a Rookery
    /// cluster, owned by that node), each room's members go round the
    /// URLs (a `1/n` share on each), and deliveries are also reported apart
    /// as local (the user's node owns the room) and cross-node.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// A named scenario: `k6-1000`, `fanout`, `rooms`, `idle`, `max`. Its
    /// settings are defaults; flags given override them.
    #[arg(long)]
    pub scenario: Option<String>,
    /// The protocol: `rookery` (also the Node `ws` baseline) or `socketio`.
    #[arg(long, default_value = "rookery")]
    pub wire: String,
    /// The server's JWT secret: each VU is the JWT user `load-N`.
    #[arg(long, default_value = "rookery-bench")]
    pub jwt_secret: String,
    /// Users when no `--stages` are given (held for `--duration`).
    #[arg(long)]
    pub users: Option<u32>,
    /// Rooms the users are spread over.
    #[arg(long)]
    pub rooms: Option<u32>,
    /// Messages per second each user sends (0: none).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Bytes of each message body.
    #[arg(long)]
    pub payload: Option<usize>,
    /// Ramp stages, k6 style: `30s:100,60s:1000,30s:0`.
    #[arg(long)]
    pub stages: Option<String>,
    /// Run length when no `--stages` are given (`10s`, `2m`).
    #[arg(long)]
    pub duration: Option<String>,
    /// New connections per second, at most.
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Offer permessage-deflate.
    #[arg(long)]
    pub deflate: bool,
    /// The server's process id: its RSS and CPU are sampled every second.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The server's name and durability, for the report.
    #[arg(long, default_value = "rookery")]
    pub name: String,
    #[arg(long, default_value = "sync")]
    pub durability: String,
    /// Pass/fail thresholds (`deliver_p95_ms<100`, `lost==0`, ...); the
    /// exit code is 1 when one fails.
    #[arg(long = "threshold")]
    pub thresholds: Vec<String>,
    /// Generator threads (0: one per available core). One is enough for
    /// a million deliveries a second and leaves the other cores to the
    /// server.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Write the whole report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Receive the server's webhooks on this address (`127.0.0.1:9100`;
    /// point a webhook of the server's `--webhooks-file` at it) and report
    /// each message's lag, from its timestamp to its arrival.
    #[arg(long)]
    pub webhook_sink: Option<SocketAddr>,
    /// The webhook's secret: the sink checks every signature with it.
    #[arg(long)]
    pub webhook_secret: Option<String>,
}

/// Everything one run needs, scenario defaults applied.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The servers' addresses (several: the nodes of a cluster).
    pub addrs: Vec<SocketAddr>,
    pub wire: Wire,
    pub jwt_secret: String,
    pub stages: Vec<Stage>,
    pub rooms: u32,
    pub rate: f64,
    pub payload: usize,
    pub connect_rate: f64,
    pub deflate: bool,
    pub server_pid: Option<u32>,
    pub name: String,
    pub durability: String,
    pub scenario: String,
    pub threads: usize,
    pub quiet: bool,
}

/// A scenario's defaults: (stages, rooms, rate per user, payload).
fn scenario_defaults(name: &str) -> Result<(&'static str, u32, f64, usize)> {
    Ok(match name {
        // The classic k6 script: ramp to 1,000 users in 50 rooms, each
        // sending one message every 5 s.
        "k6-1000" => ("10s:100,20s:500,20s:1000,60s:1000,10s:0", 50, 0.2, 64),
        // One room, 5,000 members, 50 messages a second in all.
        "fanout" => ("10s:5000,30s:5000", 1, 0.01, 64),
        // 1,000 rooms of 10 members, 2,000 messages a second in all.
        "rooms" => ("10s:10000,30s:10000", 1000, 0.2, 64),
        // As many idle connections as the file limit allows.
        "idle" => ("", 100, 0.0, 64),
        // 1,000 users in 100 rooms; `max` steps the rate up.
        "max" => ("5s:1000,10s:1000", 100, 1.0, 64),
        "custom" => ("", 10, 1.0, 64),
        other => bail!("unknown scenario {other:?} (k6-1000, fanout, rooms, idle, max)"),
    })
}

/// Connections the `idle` scenario opens: the process's open-file limit,
/// less what the generator needs otherwise.
fn idle_users() -> u32 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let cur = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    (cur.min(1 << 20) as u32).saturating_sub(200).max(1)
}

impl Plan {
    pub fn from_args(a: &Args) -> Result<Plan> {
        let scenario = a.scenario.clone().unwrap_or_else(|| "custom".into());
        let (stage_spec, rooms, rate, payload) = scenario_defaults(&scenario)?;
        let stages = if let Some(s) = &a.stages {
            stages::parse(s).map_err(anyhow::Error::msg)?
        } else if a.users.is_some() || a.duration.is_some() || stage_spec.is_empty() {
            let users = a
                .users
                .unwrap_or(if scenario == "idle" { idle_users() } else { 10 });
            let d = a.duration.as_deref().unwrap_or("10s");
            let d = stages::parse_duration(d).with_context(|| format!("--duration {d:?}"))?;
            // Users arrive at --connect-rate, then hold.
            let ramp = Duration::from_secs_f64(users as f64 / a.connect_rate.max(1.0));
            vec![
                Stage {
                    duration: ramp,
                    target: users,
                },
                Stage {
                    duration: d,
                    target: users,
                },
            ]
        } else {
            stages::parse(stage_spec).map_err(anyhow::Error::msg)?
        };
        let addrs = a
            .url
            .split(',')
            .map(|u| {
                let url = u.trim().trim_start_matches("ws://").trim_end_matches('/');
                url.parse::<SocketAddr>()
                    .with_context(|| format!("--url {u:?}: expected ws://IP:PORT"))
            })
            .collect::<Result<Vec<_>>>()?;
        let wire = match a.wire.as_str() {
            "rookery" | "ws" => Wire::Rookery,
            "socketio" | "socket.io" => Wire::SocketIo,
            other => bail!("--wire {other:?}: rookery or socketio"),
        };
        let threads = if a.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            a.threads
        };
        Ok(Plan {
            addrs,
            wire,
            jwt_secret: a.jwt_secret.clone(),
            stages,
            rooms: a.rooms.unwrap_or(rooms).max(1),
            rate: a.rate.unwrap_or(rate).max(0.0),
            payload: a.payload.unwrap_or(payload).max(16),
            connect_rate: a.connect_rate.max(1.0),
            deflate: a.deflate,
            server_pid: a.server_pid,
            name: a.name.clone(),
            durability: a.durability.clone(),
            scenario,
            threads,
            quiet: a.quiet,
        })
    }
}

/// The figure a threshold names, from a report.
pub fn figure(r: &Report, metric: &str) -> f64 {
    match metric {
        "ack_p50_ms" => r.ack_ms.p50,
        "ack_p95_ms" => r.ack_ms.p95,
        "ack_p99_ms" => r.ack_ms.p99,
        "deliver_p50_ms" => r.deliver_ms.p50,
        "deliver_p95_ms" => r.deliver_ms.p95,
        "deliver_p99_ms" => r.deliver_ms.p99,
        "deliver_p999_ms" => r.deliver_ms.p999,
        "lost" => r.lost as f64,
        "duplicated" => r.duplicated as f64,
        "reordered" => r.reordered as f64,
        "connect_errors" => r.connect_errors as f64,
        "connect_error_rate" => r.connect_error_rate(),
        "delivered_per_sec" => r.delivered_per_sec(),
        _ => f64::NAN,
    }
}

/// Checks thresholds against a report: (spec, actual, passed) each.
pub fn judge(r: &Report, thresholds: &[Threshold]) -> Vec<(String, f64, bool)> {
    thresholds
        .iter()
        .map(|t| {
            let actual = figure(r, &t.metric);
            (t.to_string(), actual, t.holds(actual))
        })
        .collect()
}

/// `rookery-bench load`.
pub fn run(args: Args) -> Result<()> {
    let thresholds: Vec<Threshold> = args
        .thresholds
        .iter()
        .map(|t| Threshold::parse(t).map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    let plan = Plan::from_args(&args)?;
    let sink = args
        .webhook_sink
        .map(|addr| crate::sink::Sink::start(addr, args.webhook_secret.clone()))
        .transpose()?;
    let report = if plan.scenario == "max" {
        step_to_max(&plan)?
    } else {
        execute(&plan)?
    };
    println!("{}", report.table());
    let webhook = sink.map(|sink| {
        // Every acknowledged message is due at the sink.
        sink.wait_for(report.acked, Duration::from_secs(10));
        let w = sink.report();
        println!("webhook {w}");
        w
    });
    let verdicts = judge(&report, &thresholds);
    for (spec, actual, passed) in &verdicts {
        println!(
            "threshold {spec:<28} actual {actual:>12.3}  {}",
            if *passed { "ok" } else { "FAILED" }
        );
    }
    let mut json = report.to_json();
    if let Some(w) = webhook {
        json["webhook"] = w;
    }
    json["thresholds"] = Value::Array(
        verdicts
            .iter()
            .map(|(s, a, p)| json!({"threshold": s, "actual": a, "passed": p}))
            .collect(),
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if verdicts.iter().any(|v| !v.2) {
        bail!("a threshold failed");
    }
    Ok(())
}
