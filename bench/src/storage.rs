//! `rookery-bench storage`: Rookery's storage against SQLite, same job, same
//! guarantee (an append is acknowledged only once durable), one run.
//!
//! Three measurements, each with both stores where it applies:
//! 1. durable appends/s with 1, 16 and 256 concurrent writers (closed loop,
//!    200-byte bodies, client ids for idempotency), with ack latency;
//! 2. history pages of 50 (`before` a random seq of a random room), hot
//!    (second pass over the same queries) and cold (store reopened, OS page
//!    cache dropped for its files with `posix_fadvise(DONTNEED)`);
//! 3. Rookery's compaction of that data (`compact_all`, at its default write
//!    rate): its throughput, the ack latency of 16 writers appending alone
//!    and while it runs, then the history pages of (2) again on the
//!    compacted data (hot and cold);
//! 4. Rookery's reopen time after 1M and 10M messages, and the time of a full
//!    index rebuild from the log (index deleted) as the worst case.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rookery_storage::{Cursor, Durability, ShardStore, StorageConfig, Store};
use serde_json::{json, Value};

use crate::sqlite_store::{self, SqliteStore};

/// Options of `rookery-bench storage`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Working directory (created; removed afterwards unless --keep).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the working directory.
    #[arg(long)]
    keep: bool,
    /// Concurrent writer counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    writers: Vec<usize>,
    /// Seconds per append measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 200)]
    body_bytes: usize,
    /// Rooms the writers spread over.
    #[arg(long, default_value_t = 100)]
    rooms: u64,
    /// History queries per pass (hot and cold).
    #[arg(long, default_value_t = 2000)]
    history_queries: usize,
    /// Message counts for the recovery measurement (0 to skip).
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    recovery: Vec<u64>,
    /// Rookery durability: sync, batch[:MS] or none. SQLite is always FULL.
    #[arg(long, default_value = "sync")]
    durability: String,
    /// Rookery's commit window in µs (0: natural batching only).
    #[arg(long, default_value_t = 0)]
    commit_window_us: u64,
    /// Rookery in `sync` writes with write + fdatasync instead of writing
    /// through (O_DSYNC, the default): for comparing the two.
    #[arg(long)]
    no_write_through: bool,
    /// Skip SQLite (Rookery only).
    #[arg(long)]
    no_sqlite: bool,
    /// Compaction's write rate limit, bytes per second (0: none); the
    /// storage default.
    #[arg(long, default_value_t = 8 << 20)]
    compaction_bytes_per_s: u64,
    /// Writers appending beside the compaction measurement.
    #[arg(long, default_value_t = 16)]
    compaction_writers: usize,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Random seed for query choice.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// One append measurement.
#[derive(Debug, Clone, Copy, Default)]
struct AppendRun {
    writers: usize,
    appends: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    batches: u64,
}

impl AppendRun {
    fn per_sec(&self) -> f64 {
        self.appends as f64 / self.secs
    }
    fn json(&self) -> Value {
        json!({
            "writers": self.writers, "appends": self.appends, "seconds": self.secs,
            "appends_per_sec": self.per_sec().round(), "ack_p50_us": self.p50_us, "ack_p99_us": self.p99_us,
            "mean_batch": if self.batches > 0 { self.appends as f64 / self.batches as f64 } else { 0.0 },
        })
    }
}

/// What the compaction measurement found.
#[derive(Debug, Clone, Copy, Default)]
struct CompactionRun {
    bytes_in: u64,
    bytes_out: u64,
    rewrite_ms: u64,
    alone: AppendRun,
    compacting: AppendRun,
    /// History on the compacted data: hot, cold.
    history: (Lat, Lat),
}

impl CompactionRun {
    fn mb_per_s(&self) -> f64 {
        self.bytes_in as f64 / 1e6 / (self.rewrite_ms.max(1) as f64 / 1e3)
    }
}

/// Latency summary of a history pass, microseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Lat {
    p50: u64,
    p99: u64,
    max: u64,
}

impl Lat {
    fn of(h: &Histogram<u64>) -> Lat {
        Lat {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn body(len: usize) -> String {
    "m".repeat(len)
}

pub fn run(args: Args) -> Result<()> {
    let durability =
        Durability::parse(&args.durability).map_err(|e| anyhow::anyhow!("--durability: {e}"))?;
    let root = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("rookery-bench-storage-{}", std::process::id()))
    });
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    eprintln!(
        "rookery-bench storage: dir {}, durability {} (sqlite: WAL + synchronous=FULL)",
        root.display(),
        durability.name()
    );

    let mut rookery_runs = Vec::new();
    let mut sqlite_runs = Vec::new();
    for &w in &args.writers {
        let dir = root.join(format!("rookery-append-{w}"));
        let r = rookery_appends(&dir, durability, w, &args)?;
        eprintln!(
            "  rookery  {w:>4} writers: {:>10.0} appends/s  ack p50 {} µs p99 {} µs",
            r.per_sec(),
            r.p50_us,
            r.p99_us
        );
        rookery_runs.push(r);
        if !args.no_sqlite {
            let dir = root.join(format!("sqlite-append-{w}"));
            let s = sqlite_appends(&dir, w, &args)?;
            eprintln!(
                "  sqlite   {w:>4} writers: {:>10.0} appends/s  ack p50 {} µs p99 {} µs",
                s.per_sec(),
                s.p50_us,
                s.p99_us
            );
            sqlite_runs.push(s);
        }
    }
    let w_max = *args.writers.iter().max().context("--writers is empty")?;
    let (r_hot, r_cold) = rookery_history(
        &root.join(format!("rookery-append-{w_max}")),
        durability,
        &args,
    )?;
    eprintln!(
        "  rookery history/50: hot p50 {} p99 {} µs; cold p50 {} p99 {} µs",
        r_hot.p50, r_hot.p99, r_cold.p50, r_cold.p99
    );
    let (s_hot, s_cold) = if args.no_sqlite {
        (Lat::default(), Lat::default())
    } else {
        let l = sqlite_history(&root.join(format!("sqlite-append-{w_max}")), &args)?;
        eprintln!(
            "  sqlite  history/50: hot p50 {} p99 {} µs; cold p50 {} p99 {} µs",
            l.0.p50, l.0.p99, l.1.p50, l.1.p99
        );
        l
    };
    let compaction = rookery_compaction(
        &root.join(format!("rookery-append-{w_max}")),
        durability,
        &args,
    )?;
    eprintln!(
        "  rookery compaction: {:.1} MB -> {:.1} MB in {} ms ({:.0} MB/s, limit {} MiB/s); \
         ack p99 of {} writers {} µs alone, {} µs while compacting",
        compaction.bytes_in as f64 / 1e6,
        compaction.bytes_out as f64 / 1e6,
        compaction.rewrite_ms,
        compaction.mb_per_s(),
        args.compaction_bytes_per_s >> 20,
        args.compaction_writers,
        compaction.alone.p99_us,
        compaction.compacting.p99_us,
    );
    eprintln!(
        "  rookery history/50 compacted: hot p50 {} p99 {} µs; cold p50 {} p99 {} µs",
        compaction.history.0.p50,
        compaction.history.0.p99,
        compaction.history.1.p50,
        compaction.history.1.p99
    );
    let mut recoveries = Vec::new();
    for &n in args.recovery.iter().filter(|&&n| n > 0) {
        let r = rookery_recovery(
            &root.join(format!("rookery-recovery-{n}")),
            n,
            durability,
            &args,
        )?;
        eprintln!(
            "  rookery recovery {n} msgs: reopen {} ms, full index rebuild {} ms",
            r.0, r.1
        );
        recoveries.push((n, r.0, r.1));
    }

    let report = report(
        &args,
        durability,
        &Measured {
            rookery: &rookery_runs,
            sqlite: &sqlite_runs,
            r_hist: (r_hot, r_cold),
            s_hist: (s_hot, s_cold),
            compaction: &compaction,
            recoveries: &recoveries,
        },
    );
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !args.keep && args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}

fn rookery_config(dir: &Path, durability: Durability, args: &Args) -> StorageConfig {
    let mut cfg = StorageConfig::new(dir);
    cfg.durability = durability;
    cfg.commit_window_us = args.commit_window_us;
    cfg.write_through = !args.no_write_through;
    cfg
}

/// Runs `f` on a fresh glommio executor pinned to CPU 0.
fn on_executor<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> Result<T> {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
        .io_memory(1 << 20)
        .name("bench-shard")
        .spawn(f)
        .map_err(|e| anyhow::anyhow!("starting executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("executor: {e}"))
}

fn rookery_appends(
    dir: &Path,
    durability: Durability,
    writers: usize,
    args: &Args,
) -> Result<AppendRun> {
    let _ = std::fs::remove_dir_all(dir);
    let cfg = rookery_config(dir, durability, args);
    let (secs, rooms, body_len) = (args.seconds, args.rooms, args.body_bytes);
    on_executor(move || {
        Box::pin(async move {
            let store = Store::open(cfg)?;
            let shard = store.open_shard(0).await?;
            let before = shard.stats();
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            let start = Instant::now();
            let mut tasks = Vec::new();
            let stop = Rc::new(std::cell::Cell::new(false));
            for w in 0..writers {
                let shard = shard.clone();
                tasks.push(glommio::spawn_local(append_loop(
                    shard,
                    w as u64,
                    rooms,
                    body_len,
                    deadline,
                    stop.clone(),
                )));
            }
            let mut hist = histogram();
            let mut appends = 0;
            for t in tasks {
                let (n, h) = t.await?;
                appends += n;
                hist.add(h)?;
            }
            let secs = start.elapsed().as_secs_f64();
            let batches = shard.stats().batches - before.batches;
            shard.close().await?;
            Ok(AppendRun {
                writers,
                appends,
                secs,
                p50_us: hist.value_at_quantile(0.5),
                p99_us: hist.value_at_quantile(0.99),
                batches,
            })
        })
    })?
}

async fn append_loop(
    shard: ShardStore,
    writer: u64,
    rooms: u64,
    body_len: usize,
    deadline: Instant,
    stop: Rc<std::cell::Cell<bool>>,
) -> Result<(u64, Histogram<u64>)> {
    let body = body(body_len);
    let mut hist = histogram();
    let mut n = 0u64;
    let mut client_id = String::with_capacity(32);
    while Instant::now() < deadline && !stop.get() {
        let room = (writer + n * 7919) % rooms + 1;
        client_id.clear();
        use std::fmt::Write;
        let _ = write!(client_id, "w{writer}-{n}");
        let t0 = Instant::now();
        shard
            .append_message(room, writer + 1, &client_id, 1_700_000_000_000 + n, &body)
            .await?;
        hist.record(t0.elapsed().as_micros().max(1) as u64)?;
        n += 1;
    }
    Ok((n, hist))
}

fn sqlite_appends(dir: &Path, writers: usize, args: &Args) -> Result<AppendRun> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let store = Arc::new(SqliteStore::open(dir)?);
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let commits_before = store.commits();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let (rooms, body) = (args.rooms, body(args.body_bytes));
            std::thread::spawn(move || -> Result<(u64, Histogram<u64>)> {
                let mut hist = histogram();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let room = (w as u64 + n * 7919) % rooms + 1;
                    let t0 = Instant::now();
                    store.append(
                        room,
                        w as u64 + 1,
                        &format!("w{w}-{n}"),
                        1_700_000_000_000 + n,
                        &body,
                    )?;
                    hist.record(t0.elapsed().as_micros().max(1) as u64)?;
                    n += 1;
                }
                Ok((n, hist))
            })
        })
        .collect();
    let mut hist = histogram();
    let mut appends = 0;
    for t in threads {
        let (n, h) = t
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
        appends += n;
        hist.add(h)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let batches = store.commits() - commits_before;
    anyhow::ensure!(
        store.count()? == appends,
        "sqlite holds {} rows after {appends} acknowledged appends",
        store.count()?
    );
    Arc::try_unwrap(store)
        .map_err(|_| anyhow::anyhow!("store still shared"))?
        .close()?;
    Ok(AppendRun {
        writers,
        appends,
        secs,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        batches,
    })
}

/// Random `(room, before)` history queries over rooms with `last[room]` messages.
fn queries(last: &[(u64, u64)], n: usize, seed: u64) -> Vec<(u64, u64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let live: Vec<_> = last.iter().filter(|(_, l)| *l > 50).collect();
    (0..n)
        .filter_map(|_| {
            let (room, l) = live.get(rng.gen_range(0..live.len().max(1)))?;
            Some((*room, rng.gen_range(51..=*l + 1)))
        })
        .collect()
}

fn rookery_history(dir: &Path, durability: Durability, args: &Args) -> Result<(Lat, Lat)> {
    let cfg = rookery_config(dir, durability, args);
    let (nq, seed) = (args.history_queries, args.seed);
    let dir = dir.to_path_buf();
    on_executor(move || {
        Box::pin(async move {
            let store = Store::open(cfg)?;
            let shard = store.open_shard(0).await?;
            let lat = history_passes(&shard, &dir, nq, seed).await?;
            shard.close().await?;
            Ok(lat)
        })
    })?
}

/// A hot pass (after a warm-up pass) and a cold pass of history queries
/// over every room of the shard.
async fn history_passes(
    shard: &ShardStore,
    dir: &Path,
    nq: usize,
    seed: u64,
) -> Result<(Lat, Lat)> {
    let last: Vec<(u64, u64)> = shard
        .rooms()
        .into_iter()
        .map(|r| (r, shard.last_seq(r)))
        .collect();
    let hot_q = queries(&last, nq, seed);
    rookery_pass(shard, &hot_q, || Ok(())).await?; // warm up
    let hot = rookery_pass(shard, &hot_q, || Ok(())).await?;
    let cold_q = queries(&last, nq.min(COLD_QUERIES_MAX), seed + 1);
    let cold = rookery_pass(shard, &cold_q, || {
        shard.release_mappings();
        sqlite_store::drop_os_cache(&dir.join("shard-0"))?;
        sqlite_store::drop_os_cache(&dir.join("shard-0").join("log"))
    })
    .await?;
    Ok((hot, cold))
}

/// Seconds of appends measured alone before the compaction runs.
const APPENDS_ALONE_SECS: f64 = 2.0;

/// Compacts the data of `dir` (rate-limited, as in the background) while
/// writers append, after measuring the same writers alone; then measures
/// history on the compacted data.
fn rookery_compaction(dir: &Path, durability: Durability, args: &Args) -> Result<CompactionRun> {
    let mut cfg = rookery_config(dir, durability, args);
    cfg.compaction_interval_ms = 0;
    cfg.compaction_bytes_per_s_max = args.compaction_bytes_per_s;
    let (nq, seed, writers) = (args.history_queries, args.seed, args.compaction_writers);
    let (rooms, body_len) = (args.rooms, args.body_bytes);
    let dir = dir.to_path_buf();
    let cfg_fast = cfg.clone();
    on_executor(move || {
        Box::pin(async move {
            let store = Store::open(cfg)?;
            let shard = store.open_shard(0).await?;
            // Writer ids (and so client ids) of their own per phase: no
            // append is a duplicate of an earlier one.
            let appends = |base: u64, secs: f64, stop: Rc<std::cell::Cell<bool>>| {
                let deadline = Instant::now() + Duration::from_secs_f64(secs);
                (0..writers)
                    .map(|w| {
                        glommio::spawn_local(append_loop(
                            shard.clone(),
                            base + w as u64,
                            rooms,
                            body_len,
                            deadline,
                            stop.clone(),
                        ))
                    })
                    .collect::<Vec<_>>()
            };
            let never = Rc::new(std::cell::Cell::new(false));
            let start = Instant::now();
            let alone = collect(writers, start, appends(1_000, APPENDS_ALONE_SECS, never)).await?;
            let stop = Rc::new(std::cell::Cell::new(false));
            let start = Instant::now();
            let tasks = appends(2_000, 3600.0, stop.clone());
            let report = shard.compact_all().await;
            stop.set(true);
            let compacting = collect(writers, start, tasks).await?;
            let report = report?;
            shard.close().await?;
            drop((shard, store));
            // What the writers added meanwhile is compacted too, without the
            // rate limit (this is setup, not measured), so all history is.
            let mut cfg = cfg_fast;
            cfg.compaction_bytes_per_s_max = 0;
            let store = Store::open(cfg)?;
            let shard = store.open_shard(0).await?;
            shard.compact_all().await?;
            let history = history_passes(&shard, &dir, nq, seed).await?;
            shard.close().await?;
            Ok(CompactionRun {
                bytes_in: report.bytes_in,
                bytes_out: report.bytes_out,
                rewrite_ms: report.rewrite_ms,
                alone,
                compacting,
                history,
            })
        })
    })?
}

/// A writer task: its appends and their ack latencies.
type AppendTask = glommio::Task<Result<(u64, Histogram<u64>)>>;

/// Waits for append tasks started at `start` and sums them up.
async fn collect(writers: usize, start: Instant, tasks: Vec<AppendTask>) -> Result<AppendRun> {
    let mut hist = histogram();
    let mut appends = 0;
    for t in tasks {
        let (n, h) = t.await?;
        appends += n;
        hist.add(h)?;
    }
    Ok(AppendRun {
        writers,
        appends,
        secs: start.elapsed().as_secs_f64(),
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        batches: 0,
    })
}

/// Cold queries are costly (caches dropped before each): at most this many.
const COLD_QUERIES_MAX: usize = 500;

/// Runs the queries, calling `before_each` (untimed) before each one.
async fn rookery_pass(
    shard: &ShardStore,
    queries: &[(u64, u64)],
    mut before_each: impl FnMut() -> Result<()>,
) -> Result<Lat> {
    let mut hist = histogram();
    let mut bytes = 0usize;
    for &(room, before) in queries {
        before_each()?;
        let t0 = Instant::now();
        let page = shard.history(room, Cursor::before(before, 50)).await?;
        bytes += page
            .items
            .iter()
            .map(|i| i.body().map_or(0, str::len))
            .sum::<usize>();
        hist.record(t0.elapsed().as_micros().max(1) as u64)?;
        anyhow::ensure!(
            page.items.len() == 50,
            "short page for room {room} before {before}"
        );
    }
    std::hint::black_box(bytes);
    Ok(Lat::of(&hist))
}

fn sqlite_history(dir: &Path, args: &Args) -> Result<(Lat, Lat)> {
    let store = SqliteStore::open(dir)?;
    let last: Vec<(u64, u64)> = (1..=args.rooms)
        .map(|r| {
            Ok((
                r,
                store.history(r, None, 1)?.first().map_or(0, |row| row.seq),
            ))
        })
        .collect::<Result<_>>()?;
    let hot_q = queries(&last, args.history_queries, args.seed);
    sqlite_pass(&store, &hot_q, || Ok(()))?;
    let hot = sqlite_pass(&store, &hot_q, || Ok(()))?;
    let cold_q = queries(
        &last,
        args.history_queries.min(COLD_QUERIES_MAX),
        args.seed + 1,
    );
    let cold = sqlite_pass(&store, &cold_q, || sqlite_store::drop_os_cache(dir))?;
    store.close()?;
    Ok((hot, cold))
}

fn sqlite_pass(
    store: &SqliteStore,
    queries: &[(u64, u64)],
    mut before_each: impl FnMut() -> Result<()>,
) -> Result<Lat> {
    let mut hist = histogram();
    for &(room, before) in queries {
        before_each()?;
        let t0 = Instant::now();
        let rows = store.history(room, Some(before), 50)?;
        hist.record(t0.elapsed().as_micros().max(1) as u64)?;
        anyhow::ensure!(
            rows.len() == 50,
            "short page for room {room} before {before}"
        );
    }
    Ok(Lat::of(&hist))
}

/// Fills a store with `n` messages, then measures reopen (clean) and a full
/// rebuild (index deleted). Returns milliseconds.
fn rookery_recovery(dir: &Path, n: u64, durability: Durability, args: &Args) -> Result<(u64, u64)> {
    let _ = std::fs::remove_dir_all(dir);
    let mut cfg = rookery_config(dir, Durability::None, args);
    cfg.commit_window_us = 0;
    let (rooms, body_len) = (args.rooms, args.body_bytes);
    let fill_cfg = cfg.clone();
    on_executor(move || {
        Box::pin(async move {
            let store = Store::open(fill_cfg)?;
            let shard = store.open_shard(0).await?;
            let writers = 256u64;
            let done = Rc::new(std::cell::Cell::new(0u64));
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    let (shard, done) = (shard.clone(), done.clone());
                    glommio::spawn_local(async move {
                        let body = body(body_len);
                        let mut i = 0u64;
                        while done.get() < n {
                            done.set(done.get() + 1);
                            shard
                                .append_message(
                                    (w + i * 31) % rooms + 1,
                                    w + 1,
                                    "",
                                    1_700_000_000_000 + i,
                                    &body,
                                )
                                .await?;
                            i += 1;
                        }
                        Ok::<_, rookery_storage::Error>(())
                    })
                })
                .collect();
            for t in tasks {
                t.await?;
            }
            shard.close().await?;
            Ok::<_, anyhow::Error>(())
        })
    })??;
    // The fill ran with `none` durability: flush it now, so the timings
    // below are not also paying for the writeback of gigabytes of dirty
    // pages (the log stays in the page cache, as after a restart that did
    // not reboot).
    sync_fs(dir)?;
    // Reopened as a server would: in the measured durability mode.
    let cfg = rookery_config(dir, durability, args);
    let reopen = time_open(&cfg)?;
    std::fs::remove_file(dir.join("shard-0").join("index.redb"))?;
    let rebuild = time_open(&cfg)?;
    if !args.keep {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok((reopen, rebuild))
}

/// `syncfs` of the file system holding `dir`.
fn sync_fs(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let d = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: syncfs on an open descriptor.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("syncfs");
    }
    Ok(())
}

fn time_open(cfg: &StorageConfig) -> Result<u64> {
    let cfg = cfg.clone();
    on_executor(move || {
        Box::pin(async move {
            let t0 = Instant::now();
            let store = Store::open(cfg)?;
            let shard = store.open_shard(0).await?;
            let ms = t0.elapsed().as_millis() as u64;
            shard.close().await?;
            Ok(ms)
        })
    })?
}

pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({ "cpu": cpu, "cores": cores, "kernel": kernel })
}

/// Everything one run measured.
struct Measured<'a> {
    rookery: &'a [AppendRun],
    sqlite: &'a [AppendRun],
    r_hist: (Lat, Lat),
    s_hist: (Lat, Lat),
    compaction: &'a CompactionRun,
    recoveries: &'a [(u64, u64, u64)],
}

fn report(args: &Args, durability: Durability, m: &Measured) -> Value {
    let Measured {
        rookery,
        sqlite,
        r_hist,
        s_hist,
        compaction,
        recoveries,
    } = *m;
    let top = |runs: &[AppendRun]| {
        runs.iter()
            .max_by_key(|r| r.writers)
            .map_or(0.0, |r| r.per_sec().round())
    };
    let (r_top, s_top) = (top(rookery), top(sqlite));
    let per_million = recoveries
        .iter()
        .max_by_key(|r| r.0)
        .map(|(n, ms, _)| *ms as f64 / (*n as f64 / 1e6));
    json!({
        "machine": machine(),
        "body_bytes": args.body_bytes,
        "rooms": args.rooms,
        "seconds_per_run": args.seconds,
        "rookery": {
            "durability": durability.name(),
            "commit_window_us": args.commit_window_us,
            "write_through": !args.no_write_through,
            "appends": rookery.iter().map(AppendRun::json).collect::<Vec<_>>(),
            "appends_per_sec": r_top,
            "history_p50_us": r_hist.0.p50, "history_p99_us": r_hist.0.p99, "history_max_us": r_hist.0.max,
            "history_cold_p50_us": r_hist.1.p50, "history_cold_p99_us": r_hist.1.p99, "history_cold_max_us": r_hist.1.max,
            "compaction": {
                "bytes_in": compaction.bytes_in, "bytes_out": compaction.bytes_out,
                "rewrite_ms": compaction.rewrite_ms, "mb_per_s": compaction.mb_per_s(),
                "bytes_per_s_max": args.compaction_bytes_per_s,
                "appends_alone": compaction.alone.json(),
                "appends_while_compacting": compaction.compacting.json(),
                "history_p50_us": compaction.history.0.p50, "history_p99_us": compaction.history.0.p99,
                "history_cold_p50_us": compaction.history.1.p50, "history_cold_p99_us": compaction.history.1.p99,
            },
            "recovery": recoveries.iter().map(|(n, ms, rb)| json!({"messages": n, "reopen_ms": ms, "rebuild_ms": rb})).collect::<Vec<_>>(),
            "recovery_ms_per_million": per_million,
        },
        "sqlite": {
            "durability": "WAL, synchronous=FULL",
            "appends": sqlite.iter().map(AppendRun::json).collect::<Vec<_>>(),
            "appends_per_sec": s_top,
            "history_p50_us": s_hist.0.p50, "history_p99_us": s_hist.0.p99, "history_max_us": s_hist.0.max,
            "history_cold_p50_us": s_hist.1.p50, "history_cold_p99_us": s_hist.1.p99, "history_cold_max_us": s_hist.1.max,
        },
        "ratio_appends": if s_top > 0.0 { Some(r_top / s_top) } else { None },
    })
}

fn print_table(r: &Value) {
    println!(
        "\nRookery storage vs SQLite — {} cores, {}, kernel {}",
        r["machine"]["cores"], r["machine"]["cpu"], r["machine"]["kernel"]
    );
    println!(
        "Rookery durability: {}; SQLite: {}",
        r["rookery"]["durability"], r["sqlite"]["durability"]
    );
    println!(
        "{:<28}{:>14}{:>14}{:>9}",
        "durable appends/s", "rookery", "sqlite", "ratio"
    );
    let s_runs = r["sqlite"]["appends"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for run in r["rookery"]["appends"].as_array().into_iter().flatten() {
        let w = &run["writers"];
        let s = s_runs
            .iter()
            .find(|s| &s["writers"] == w)
            .map(|s| s["appends_per_sec"].as_f64().unwrap_or(0.0));
        let rv = run["appends_per_sec"].as_f64().unwrap_or(0.0);
        let ratio = s
            .filter(|s| *s > 0.0)
            .map_or("-".to_string(), |s| format!("{:.1}x", rv / s));
        println!(
            "{:<28}{:>14.0}{:>14}{:>9}",
            format!("  {w} writers"),
            rv,
            s.map_or("-".into(), |s| format!("{s:.0}")),
            ratio
        );
    }
    for (label, key) in [
        ("history/50 hot p50 µs", "history_p50_us"),
        ("history/50 hot p99 µs", "history_p99_us"),
        ("history/50 cold p50 µs", "history_cold_p50_us"),
        ("history/50 cold p99 µs", "history_cold_p99_us"),
    ] {
        println!(
            "{:<28}{:>14}{:>14}",
            label,
            r["rookery"][key].to_string(),
            r["sqlite"][key].to_string()
        );
    }
    let c = &r["rookery"]["compaction"];
    for (label, key) in [
        ("  compacted hot p50 µs", "history_p50_us"),
        ("  compacted hot p99 µs", "history_p99_us"),
        ("  compacted cold p50 µs", "history_cold_p50_us"),
        ("  compacted cold p99 µs", "history_cold_p99_us"),
    ] {
        println!("{:<28}{:>14}", label, c[key].to_string());
    }
    println!(
        "{:<28}{:>14.0}   ({} MB in {} ms, limit {} B/s)",
        "compaction MB/s",
        c["mb_per_s"].as_f64().unwrap_or(0.0),
        c["bytes_in"].as_u64().unwrap_or(0) / 1_000_000,
        c["rewrite_ms"],
        c["bytes_per_s_max"]
    );
    println!(
        "{:<28}{:>14}   (alone {} µs)",
        format!("ack p99 µs compacting, {}w", c["appends_alone"]["writers"]),
        c["appends_while_compacting"]["ack_p99_us"].to_string(),
        c["appends_alone"]["ack_p99_us"],
    );
    for rec in r["rookery"]["recovery"].as_array().into_iter().flatten() {
        println!(
            "{:<28}{:>14}   (full index rebuild {} ms)",
            format!("reopen {} msgs, ms", rec["messages"]),
            rec["reopen_ms"].to_string(),
            rec["rebuild_ms"]
        );
    }
}
