//! `rookery-bench backup`: how long an online backup takes per GB, and
//! what it costs chat while it runs.
//!
//! Fills a data directory with `--fill-bytes` of messages (through the
//! storage crate, before any server runs), then runs the normal load
//! (`k6-1000` by default) twice against a release `rookery` on it: alone,
//! then with backups taken one after another for the whole run (each asked
//! for over the server API, followed to its end, then deleted). Reports
//! each backup's seconds per GB, and chat's send→deliver p99 of both runs
//! and their ratio.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rookery_storage::{Durability, StorageConfig, Store};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::abuse::{alone_then_beside, print_beside, run_json};
use crate::compare::{built, machine};
use crate::http_client::HttpClient;
use crate::load::{self, Report};

#[derive(clap::Args, Debug, Clone)]
pub struct BackupArgs {
    #[command(flatten)]
    pub load: load::Args,
    /// The `rookery` binary (default: build the workspace's, release).
    #[arg(long)]
    pub rookery_bin: Option<PathBuf>,
    /// Bytes of messages in the data directory before the runs.
    #[arg(long, default_value_t = 1 << 30)]
    pub fill_bytes: u64,
    /// The server's --backup-bytes-per-s-max (default: the server's).
    #[arg(long)]
    pub backup_bytes_per_s_max: Option<u64>,
}

/// The API key the benchmark takes backups with.
const KEY: &str = "rk_be0c000000000000000000000000000000000000000000000000000000000000";

/// Shards of the filled directory and of the server.
const SHARDS: u32 = 2;

/// Body of one filling message (a chat message with some text, a few
/// per segment page).
const FILL_BODY_BYTES: usize = 2000;

/// Rooms the filling spreads over.
const FILL_ROOMS: u64 = 64;

/// Appends in flight per shard while filling.
const FILL_IN_FLIGHT: usize = 64;

pub fn run(args: BackupArgs) -> Result<()> {
    let bin = built(&args.rookery_bin, "rookery-server", "rookery")?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let t0 = Instant::now();
    let filled = fill(&data, args.fill_bytes)?;
    eprintln!(
        "== filled {} with {:.2} GB of messages in {:.1} s",
        data.display(),
        filled as f64 / 1e9,
        t0.elapsed().as_secs_f64()
    );
    let keys = dir.path().join("keys.toml");
    let hash: String = Sha256::digest(KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        &keys,
        format!("[[key]]\nname = \"bench\"\nsha256 = \"{hash}\"\nscopes = [\"backup\"]\n"),
    )?;
    let backups = dir.path().join("backups");
    let shards = SHARDS.to_string();
    let rate = args.backup_bytes_per_s_max.map(|r| r.to_string());
    let mut extra = vec![
        "--shards",
        &shards,
        "--connections-per-ip-max",
        "100000",
        "--rooms-per-user-per-min",
        "1000",
        "--api-keys-file",
        keys.to_str().context("path")?,
        "--backup-dir",
        backups.to_str().context("path")?,
    ];
    if let Some(rate) = &rate {
        extra.extend(["--backup-bytes-per-s-max", rate]);
    }
    let into = backups.clone();
    let (alone, during, taken) = alone_then_beside(
        &args.load,
        &bin,
        &data,
        &extra,
        "during backups",
        |addr, stop| std::thread::spawn(move || take_backups(addr, &into, &stop)),
    )?;
    print_and_save(&args, filled, &alone, &during, &taken)
}

/// Fills `data` with about `bytes` of messages, every shard alike.
fn fill(data: &Path, bytes: u64) -> Result<u64> {
    let mut cfg = StorageConfig::new(data);
    cfg.shards = SHARDS;
    cfg.durability = Durability::None;
    let store = Arc::new(Store::open(cfg)?);
    let meta = store.meta().clone();
    let user = meta.create_user(
        "bench-filler",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
        1,
    )?;
    let mut rooms = vec![Vec::new(); SHARDS as usize];
    for i in 0..FILL_ROOMS {
        let room = meta.create_room(&format!("fill-{i}"), false, user, 1)?;
        rooms[store.shard_of(room) as usize].push(room);
    }
    let per_shard = bytes / SHARDS as u64;
    let mut handles = Vec::new();
    for (shard, rooms) in rooms.into_iter().enumerate() {
        let store = store.clone();
        handles.push(
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .io_memory(1 << 20)
                .name("bench-fill")
                .spawn(move || async move {
                    fill_shard(&store, shard as u32, &rooms, user, per_shard).await
                })
                .map_err(|e| anyhow::anyhow!("starting executor: {e}"))?,
        );
    }
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|e| anyhow::anyhow!("executor: {e}"))??;
    }
    Ok(total)
}

async fn fill_shard(
    store: &Store,
    shard: u32,
    rooms: &[u64],
    user: u64,
    bytes: u64,
) -> Result<u64> {
    if rooms.is_empty() {
        bail!("no room of the filling is on shard {shard}");
    }
    let s = store.open_shard(shard).await?;
    let body: std::rc::Rc<str> = "f".repeat(FILL_BODY_BYTES).into();
    let n = bytes / FILL_BODY_BYTES as u64;
    let next = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let rooms: std::rc::Rc<[u64]> = rooms.into();
    let workers: Vec<_> = (0..FILL_IN_FLIGHT)
        .map(|_| {
            let (s, next, rooms, body) = (s.clone(), next.clone(), rooms.clone(), body.clone());
            glommio::spawn_local(async move {
                loop {
                    let i = next.get();
                    if i >= n {
                        return Ok::<_, rookery_storage::Error>(());
                    }
                    next.set(i + 1);
                    let room = rooms[i as usize % rooms.len()];
                    s.append_message(room, user, "", 1_000 + i, &body).await?;
                }
            })
        })
        .collect();
    for w in workers {
        w.await?;
    }
    s.close().await?;
    Ok(n * FILL_BODY_BYTES as u64)
}

/// Takes backups one after another until `stop`, deleting each once done;
/// each one's (ms, bytes).
fn take_backups(addr: SocketAddr, dir: &Path, stop: &AtomicBool) -> Result<Vec<(u64, u64)>> {
    let mut taken = Vec::new();
    // The load sets up first.
    std::thread::sleep(Duration::from_secs(5));
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut http = HttpClient::connect(addr)?;
        let name = format!("bench-{n}");
        let (s, v) = http.call(
            "POST",
            "/api/backend/backup",
            Some(KEY),
            Some(&json!({ "name": name })),
        )?;
        if s != 202 {
            bail!("POST /api/backend/backup: {s} {v}");
        }
        let done = loop {
            std::thread::sleep(Duration::from_millis(100));
            let (s, v) = http.call(
                "GET",
                &format!("/api/backend/backup/{name}"),
                Some(KEY),
                None,
            )?;
            match (s, v["state"].as_str()) {
                (200, Some("running")) => {}
                (200, Some("done")) => break v,
                _ => bail!("backup {name}: {s} {v}"),
            }
        };
        let (ms, bytes) = (
            done["took_ms"].as_u64().unwrap_or(0),
            done["bytes"].as_u64().unwrap_or(0),
        );
        eprintln!(
            "backup {name}: {:.2} GB in {:.1} s",
            bytes as f64 / 1e9,
            ms as f64 / 1000.0
        );
        // Only whole backups count: the last may be cut by the load's end.
        if !stop.load(Ordering::Relaxed) {
            taken.push((ms, bytes));
        }
        std::fs::remove_dir_all(dir.join(&name))?;
        n += 1;
    }
    Ok(taken)
}

fn print_and_save(
    args: &BackupArgs,
    filled: u64,
    alone: &Report,
    during: &Report,
    taken: &[(u64, u64)],
) -> Result<()> {
    if taken.is_empty() {
        bail!("no backup finished during the load: make the load longer or --fill-bytes smaller");
    }
    let mut s_per_gb: Vec<f64> = taken
        .iter()
        .map(|&(ms, bytes)| ms as f64 / 1000.0 / (bytes as f64 / 1e9))
        .collect();
    s_per_gb.sort_by(f64::total_cmp);
    let median = s_per_gb[s_per_gb.len() / 2];
    let ratio = print_beside(alone, during, "during backups");
    println!(
        "backups          {} whole ones of {:.2} GB, median {median:.2} s per GB ({:.0} MB/s)",
        taken.len(),
        taken[0].1 as f64 / 1e9,
        1000.0 / median
    );
    let out: Value = json!({
        "machine": machine(),
        "scenario": alone.scenario,
        "durability": args.load.durability,
        "filled_bytes": filled,
        "backup_bytes_per_s_max": args.backup_bytes_per_s_max,
        "alone": run_json(alone),
        "during_backups": run_json(during),
        "deliver_p99_ratio": ratio,
        "backups": taken.iter().map(|&(ms, bytes)| json!({"ms": ms, "bytes": bytes})).collect::<Vec<_>>(),
        "seconds_per_gb_median": median,
    });
    if let Some(path) = &args.load.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
