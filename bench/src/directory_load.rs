//! `rookery-bench directory-load`: the user directory over HTTP
//! (`GET /api/users?q=`) at a million users, while the server carries
//! chat.
//!
//! Fills a data directory's `meta.redb` with `--directory-users` users
//! (`directory`'s names and display names), then runs the normal load
//! (`k6-1000` by default) twice against a release `rookery` on it: alone,
//! then with one client searching the directory over one keep-alive
//! connection at `--lookups-per-s`, cycling through `directory`'s kinds of
//! query. Reports each kind's p50/p99 from the request written to the
//! answer read, and chat's send→deliver p50/p99 of both runs and their
//! ratio.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rookery_storage::{StorageConfig, Store};
use serde_json::{json, Value};

use crate::abuse::{alone_then_beside, print_beside, run_json};
use crate::compare::{built, machine};
use crate::directory::{fill, KINDS};
use crate::http_client::{jwt, HttpClient};
use crate::load::{self, Report};

#[derive(clap::Args, Debug, Clone)]
pub struct DirectoryLoadArgs {
    #[command(flatten)]
    pub load: load::Args,
    /// The `rookery` binary (default: build the workspace's, release).
    #[arg(long)]
    pub rookery_bin: Option<std::path::PathBuf>,
    /// Users in the directory before the runs.
    #[arg(long, default_value_t = 1_000_000)]
    pub directory_users: u64,
    /// Directory searches a second, over one connection.
    #[arg(long, default_value_t = 50.0)]
    pub lookups_per_s: f64,
}

/// Shards of the server (and of the filled directory).
const SHARDS: u32 = 2;

/// Users a page asks for.
const PAGE_LEN: usize = 20;

/// What the searching client measured: each kind's latencies (µs) and
/// users per page, and the answers that were not 200.
struct Lookups {
    kinds: Vec<(Histogram<u64>, Histogram<u64>)>,
    refused: u64,
}

pub fn run(args: DirectoryLoadArgs) -> Result<()> {
    let bin = built(&args.rookery_bin, "rookery-server", "rookery")?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut cfg = StorageConfig::new(&data);
    cfg.shards = SHARDS;
    let store = Store::open(cfg).context("opening the data directory")?;
    let fill_s = fill(store.meta(), args.directory_users, 10, 20_000)?;
    drop(store);
    eprintln!("== {} users in {fill_s:.1} s", args.directory_users);
    let shards = SHARDS.to_string();
    let extra = [
        "--shards",
        &shards,
        "--connections-per-ip-max",
        "100000",
        "--rooms-per-user-per-min",
        "1000",
        // One client measures: the per-user rate limit is not the subject.
        "--directory-calls-per-user-per-min",
        "10000000",
    ];
    let (secret, rate) = (args.load.jwt_secret.clone(), args.lookups_per_s);
    let (alone, during, lookups) = alone_then_beside(
        &args.load,
        &bin,
        &data,
        &extra,
        "during lookups",
        |addr, stop| std::thread::spawn(move || look_up(addr, &secret, rate, &stop)),
    )?;
    print_and_save(&args, fill_s, &alone, &during, &lookups)
}

/// Searches the directory at `rate` a second until `stop`, cycling through
/// the kinds and each kind's queries.
fn look_up(addr: SocketAddr, secret: &str, rate: f64, stop: &AtomicBool) -> Result<Lookups> {
    let token = jwt(secret, "bench-lookups")?;
    let mut http = HttpClient::connect(addr)?;
    let mut out = Lookups {
        kinds: KINDS
            .iter()
            .map(|_| Ok((Histogram::new(3)?, Histogram::new(3)?)))
            .collect::<Result<_>>()?,
        refused: 0,
    };
    // The load's first users connect first.
    std::thread::sleep(Duration::from_secs(2));
    let gap = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut next = Instant::now();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let (kind, queries) = KINDS[n % KINDS.len()];
        let q = queries[(n / KINDS.len()) % queries.len()].replace(' ', "+");
        let path = format!("/api/users?q={q}&limit={PAGE_LEN}");
        let t = Instant::now();
        let (status, page) = http.call("GET", &path, Some(&token), None)?;
        let took = t.elapsed();
        if status != 200 {
            out.refused += 1;
            eprintln!("{kind}: {status} {page}");
        } else {
            let (latency, found) = &mut out.kinds[n % KINDS.len()];
            latency.record(took.as_micros() as u64)?;
            found.record(page["users"].as_array().map_or(0, Vec::len) as u64)?;
        }
        n += 1;
        next += gap;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(out)
}

fn print_and_save(
    args: &DirectoryLoadArgs,
    fill_s: f64,
    alone: &Report,
    during: &Report,
    lookups: &Lookups,
) -> Result<()> {
    let ms = |v: u64| v as f64 / 1000.0;
    let mut rows = Vec::new();
    for ((kind, queries), (latency, found)) in KINDS.iter().zip(&lookups.kinds) {
        if latency.is_empty() {
            bail!("no {kind} lookup answered: make the load longer");
        }
        eprintln!(
            "  {kind:<22} n {:>5}  users/page {:>3}  p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            latency.len(),
            found.value_at_quantile(0.5),
            ms(latency.value_at_quantile(0.5)),
            ms(latency.value_at_quantile(0.99)),
            ms(latency.max())
        );
        rows.push(json!({"kind": kind, "queries": queries, "n": latency.len(),
            "users_per_page_p50": found.value_at_quantile(0.5),
            "p50_ms": ms(latency.value_at_quantile(0.5)),
            "p99_ms": ms(latency.value_at_quantile(0.99)), "max_ms": ms(latency.max())}));
    }
    let ratio = print_beside(alone, during, "during lookups");
    println!("lookups refused  {:>22}", lookups.refused);
    let out: Value = json!({
        "machine": machine(),
        "scenario": alone.scenario,
        "durability": args.load.durability,
        "directory_users": args.directory_users,
        "fill_s": fill_s,
        "lookups_per_s": args.lookups_per_s,
        "lookups_refused": lookups.refused,
        "alone": run_json(alone),
        "during_lookups": run_json(during),
        "deliver_p99_ratio": ratio,
        "queries": rows,
    });
    if let Some(path) = &args.load.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
