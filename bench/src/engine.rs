//! `rookery-bench engine`: the engine in process, no network. Posts from
//! poster threads, subscriptions drained by consumer threads, for each
//! scenario × shard count × durability; reports posts/s, delivered events/s
//! and post→deliver latency (sampled), split by whether the subscriber sits
//! on the room's owner shard or across a shard hop.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use rookery_engine::storage::Durability;
use rookery_engine::{Engine, EngineConfig, Subscription};
use serde_json::{json, Value};

/// Options of `rookery-bench engine`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Scenarios: `fanout` (1 room × 1,000 subscribers), `rooms` (1,000
    /// rooms × 10 subscribers).
    #[arg(long, value_delimiter = ',', default_value = "fanout,rooms")]
    scenarios: Vec<String>,
    /// Shard counts to run.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    shards: Vec<u32>,
    /// Durability modes to run.
    #[arg(long, value_delimiter = ',', default_value = "none,sync")]
    durability: Vec<String>,
    /// Seconds per run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Poster threads.
    #[arg(long, default_value_t = 2)]
    posters: usize,
    /// Posts each poster keeps in flight.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Consumer threads draining subscriptions.
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Working directory (removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Scenario {
    name: &'static str,
    rooms: u64,
    subs_per_room: usize,
}

fn scenario(name: &str) -> Result<Scenario> {
    match name {
        "fanout" => Ok(Scenario {
            name: "fanout",
            rooms: 1,
            subs_per_room: 1000,
        }),
        "rooms" => Ok(Scenario {
            name: "rooms",
            rooms: 1000,
            subs_per_room: 10,
        }),
        other => anyhow::bail!("unknown scenario {other:?} (fanout, rooms)"),
    }
}

/// Nanoseconds since the run's epoch, as the body of each post: consumers
/// read it back to time post→deliver.
fn stamp(epoch: Instant) -> String {
    format!("{}", epoch.elapsed().as_nanos())
}

/// Extracts the stamp from an encoded `msg` event without a JSON parse.
fn stamp_of(json: &str) -> Option<u64> {
    let i = json.find("\"body\":\"")? + 8;
    let j = json[i..].find('"')? + i;
    json[i..j].parse().ok()
}

pub fn run(args: Args) -> Result<()> {
    let root = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("rookery-bench-engine-{}", std::process::id()))
    });
    let mut runs = Vec::new();
    for name in &args.scenarios {
        let sc = scenario(name)?;
        for &shards in &args.shards {
            for d in &args.durability {
                let durability =
                    Durability::parse(d).map_err(|e| anyhow::anyhow!("--durability: {e}"))?;
                let dir = root.join(format!("{}-{shards}-{}", sc.name, durability.name()));
                let _ = std::fs::remove_dir_all(&dir);
                let r = one_run(&sc, shards, durability, &dir, &args)
                    .with_context(|| format!("{} shards={shards} {d}", sc.name))?;
                eprintln!(
                    "  {:<7} shards={} {:<5} posts/s {:>9.0}  delivered/s {:>11.0}  p50/p99 µs: local {}/{} cross {}/{} hop {}/{}",
                    sc.name, shards, durability.name(), r["posts_per_sec"].as_f64().unwrap_or(0.0), r["delivered_per_sec"].as_f64().unwrap_or(0.0),
                    r["local_p50_us"], r["local_p99_us"], r["cross_p50_us"], r["cross_p99_us"], r["hop_p50_us"], r["hop_p99_us"]
                );
                runs.push(r);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    let report = json!({ "machine": crate::storage::machine(), "seconds_per_run": args.seconds, "runs": runs });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

fn one_run(
    sc: &Scenario,
    shards: u32,
    durability: Durability,
    dir: &std::path::Path,
    args: &Args,
) -> Result<Value> {
    let mut cfg = EngineConfig::new(dir);
    cfg.storage.shards = shards;
    cfg.storage.durability = durability;
    let engine = Engine::start(cfg)?;
    // Subscribers spread over shards; each remembers whether it is on the
    // room's owner.
    // All subscriptions are asked for first, then awaited: one round trip
    // in all rather than one per subscription.
    let mut pending = Vec::new();
    for room in 1..=sc.rooms {
        for i in 0..sc.subs_per_room {
            let shard = i % shards as usize;
            pending.push((
                shard == engine.shard_of(room),
                engine.subscribe_on(shard, room, None),
            ));
        }
    }
    let mut subs: Vec<(bool, Subscription)> = Vec::new();
    for (on_owner, p) in pending {
        subs.push((on_owner, p.wait()?));
    }
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let posted = Arc::new(AtomicU64::new(0));
    let consumers = spawn_consumers(subs, args.consumers, epoch, stop.clone());
    let posters: Vec<_> = (0..args.posters)
        .map(|p| {
            let (engine, stop, posted) = (engine.clone(), stop.clone(), posted.clone());
            let (rooms, in_flight) = (sc.rooms, args.in_flight);
            std::thread::spawn(move || -> Result<()> {
                let mut pending = std::collections::VecDeque::new();
                let mut n = p as u64;
                while !stop.load(Ordering::Relaxed) {
                    while pending.len() < in_flight {
                        pending.push_back(engine.post(
                            n % rooms + 1,
                            p as u64 + 1,
                            "",
                            &stamp(epoch),
                        ));
                        n += args_stride();
                    }
                    pending.pop_front().expect("non-empty").wait()?;
                    posted.fetch_add(1, Ordering::Relaxed);
                }
                for r in pending {
                    r.wait()?;
                    posted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    stop.store(true, Ordering::Relaxed);
    let secs = epoch.elapsed().as_secs_f64();
    for p in posters {
        p.join().map_err(|_| anyhow::anyhow!("poster panicked"))??;
    }
    let mut delivered = 0u64;
    let (mut local, mut cross) = (hist(), hist());
    for c in consumers {
        let (n, l, x) = c.join().map_err(|_| anyhow::anyhow!("consumer panicked"))?;
        delivered += n;
        local.add(l)?;
        cross.add(x)?;
    }
    let m = engine.metrics()?;
    let (counters, latency) = (m.counters, m.latencies);
    engine.shutdown()?;
    let posts = posted.load(Ordering::Relaxed);
    let q = |h: &Histogram<u64>, p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    let all_p99 = {
        let mut all = local.clone();
        all.add(&cross)?;
        q(&all, 0.99)
    };
    Ok(json!({
        "scenario": sc.name, "shards": shards, "durability": durability.name(),
        "rooms": sc.rooms, "subscribers": sc.rooms as usize * sc.subs_per_room,
        "seconds": secs, "posts": posts, "delivered": delivered,
        "posts_per_sec": (posts as f64 / secs).round(), "delivered_per_sec": (delivered as f64 / secs).round(),
        "post_to_deliver_p99_us": all_p99,
        "local_p50_us": q(&local, 0.5), "local_p99_us": q(&local, 0.99),
        "cross_p50_us": q(&cross, 0.5), "cross_p99_us": q(&cross, 0.99),
        "lagged": counters.lagged, "mesh_sends": counters.mesh_sends, "forwarded": counters.forwarded,
        "hop_p50_us": q(&latency.hop_us, 0.5), "hop_p99_us": q(&latency.hop_us, 0.99),
        "commit_p50_us": q(&latency.commit_us, 0.5), "commit_p99_us": q(&latency.commit_us, 0.99),
    }))
}

/// Posters walk rooms with a stride so they spread over all of them.
fn args_stride() -> u64 {
    7919
}

/// What a consumer thread counted: events, and sampled latencies for
/// subscribers on the owner shard and across a hop.
type Consumed = (u64, Histogram<u64>, Histogram<u64>);

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Consumer threads: each drains its share of subscriptions round-robin
/// with `try_recv` (no blocking, no wake-ups), counts every event and times
/// one in 64.
fn spawn_consumers(
    subs: Vec<(bool, Subscription)>,
    threads: usize,
    epoch: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Consumed>> {
    let mut shares: Vec<Vec<(bool, Subscription)>> =
        (0..threads.max(1)).map(|_| Vec::new()).collect();
    for (i, s) in subs.into_iter().enumerate() {
        shares[i % threads.max(1)].push(s);
    }
    shares
        .into_iter()
        .map(|share| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut n, mut local, mut cross) = (0u64, hist(), hist());
                let mut idle_rounds = 0;
                loop {
                    let mut got = 0;
                    for (on_owner, sub) in &share {
                        while let Ok(Some(e)) = sub.try_recv() {
                            got += 1;
                            n += 1;
                            if n % 64 == 0 {
                                if let Some(t) = stamp_of(e.json()) {
                                    let us = (epoch.elapsed().as_nanos() as u64).saturating_sub(t)
                                        / 1000;
                                    let h = if *on_owner { &mut local } else { &mut cross };
                                    let _ = h.record(us.max(1));
                                }
                            }
                        }
                    }
                    if got == 0 {
                        if stop.load(Ordering::Relaxed) {
                            idle_rounds += 1;
                            if idle_rounds > 50 {
                                break;
                            }
                        }
                        std::thread::sleep(Duration::from_micros(50));
                    } else {
                        idle_rounds = 0;
                    }
                }
                (n, local, cross)
            })
        })
        .collect()
}
