//! `rookery-bench engine`: the engine in process, no network. Posts from
//! poster threads, subscriptions drained by consumer threads, for each
//! scenario × shard count × durability; reports posts/s, delivered events/s
//! and post→deliver latency (sampled), split by whether the subscriber sits
//! on the room's owner shard or across a shard hop.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use rookery_engine::Durability;
use rookery_engine::{Engine, EngineConfig, Inbox, Pending, PostAck};
use serde_json::{json, Value};

/// Options of `rookery-bench engine`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Scenarios: `fanout` (1 room × 1,000 subscribers, each its own
    /// inbox), `rooms` (1,000 rooms × 10 subscribers, in 1,000 inboxes of
    /// 10 rooms each).
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
    /// Inboxes in all (0 = the scenario's: one per 1 or 10 rooms followed).
    /// Few inboxes following many rooms each keep the consumers' polling
    /// cheap, for latency runs.
    #[arg(long, default_value_t = 0)]
    inboxes: usize,
    /// Consumer threads draining the inboxes.
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Open loop: posts per second in all, sent on schedule whatever the
    /// replies do (0 = closed loop, `in_flight` outstanding per poster).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Microseconds an idle shard spins before parking (engine
    /// `spin_before_park`).
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
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
    /// Rooms each consumer (one inbox, like one connection) follows.
    rooms_per_inbox: usize,
}

fn scenario(name: &str) -> Result<Scenario> {
    match name {
        "fanout" => Ok(Scenario {
            name: "fanout",
            rooms: 1,
            subs_per_room: 1000,
            rooms_per_inbox: 1,
        }),
        "rooms" => Ok(Scenario {
            name: "rooms",
            rooms: 1000,
            subs_per_room: 10,
            rooms_per_inbox: 10,
        }),
        other => anyhow::bail!("unknown scenario {other:?} (fanout, rooms)"),
    }
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
    cfg.spin_before_park = Duration::from_micros(args.spin_us);
    let engine = Engine::start(cfg)?;
    let inboxes = subscribe_all(&engine, sc, shards as usize, args.inboxes)?;
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let posted = Arc::new(AtomicU64::new(0));
    // Open loop: every event is timed; closed loop: one in 64.
    let sample_every = if args.rate > 0.0 { 1 } else { 64 };
    let tally = Arc::new(Tally {
        total: AtomicU64::new(0),
        expected: AtomicU64::new(u64::MAX),
    });
    let consumers = spawn_consumers(
        &engine,
        inboxes,
        args.consumers.max(1),
        (epoch, sample_every),
        stop.clone(),
        tally.clone(),
    );
    let posters: Vec<_> = (0..args.posters)
        .map(|p| {
            let poster = Poster {
                engine: engine.clone(),
                stop: stop.clone(),
                posted: posted.clone(),
                id: p,
                rooms: sc.rooms,
                in_flight: args.in_flight,
                // Each poster's share of the rate, as a gap between sends.
                gap: (args.rate > 0.0)
                    .then(|| Duration::from_secs_f64(args.posters as f64 / args.rate)),
                epoch,
            };
            std::thread::spawn(move || poster.run())
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    stop.store(true, Ordering::Relaxed);
    let secs = epoch.elapsed().as_secs_f64();
    let mut slipped_ms = 0.0f64;
    let mut acks = hist();
    for p in posters {
        let (slip, a) = p.join().map_err(|_| anyhow::anyhow!("poster panicked"))??;
        slipped_ms = slipped_ms.max(slip.as_secs_f64() * 1e3);
        acks.add(a)?;
    }
    let posts = posted.load(Ordering::Relaxed);
    let expected = posts * sc.subs_per_room as u64;
    tally.expected.store(expected, Ordering::Relaxed);
    let mut delivered = 0u64;
    let (mut local, mut cross) = (hist(), hist());
    for c in consumers {
        let (n, l, x) = c
            .join()
            .map_err(|_| anyhow::anyhow!("consumer panicked"))??;
        delivered += n;
        local.add(l)?;
        cross.add(x)?;
    }
    let drained_secs = epoch.elapsed().as_secs_f64();
    let m = engine.metrics()?;
    let (counters, latency) = (m.counters, m.latencies);
    engine.shutdown()?;
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
        "posts_per_sec": (posts as f64 / secs).round(), "delivered_per_sec": (delivered as f64 / drained_secs).round(),
        "expected": expected, "lost": expected.saturating_sub(delivered),
        "post_to_deliver_p99_us": all_p99,
        "post_to_ack_p50_us": q(&acks, 0.5), "post_to_ack_p99_us": q(&acks, 0.99),
        "post_to_ack_max_us": acks.max(),
        "mode": if args.rate > 0.0 { "open" } else { "closed" },
        "rate_per_sec": args.rate, "schedule_slip_ms_max": slipped_ms,
        "hop_added_p50_us": q(&cross, 0.5).saturating_sub(q(&local, 0.5)),
        "hop_added_p99_us": q(&cross, 0.99).saturating_sub(q(&local, 0.99)),
        "local_p50_us": q(&local, 0.5), "local_p99_us": q(&local, 0.99),
        "cross_p50_us": q(&cross, 0.5), "cross_p99_us": q(&cross, 0.99),
        "lagged": counters.lagged, "mesh_sends": counters.mesh_sends, "forwarded": counters.forwarded,
        "hop_p50_us": q(&latency.hop_us, 0.5), "hop_p99_us": q(&latency.hop_us, 0.99),
        "commit_p50_us": q(&latency.commit_us, 0.5), "commit_p99_us": q(&latency.commit_us, 0.99),
    }))
}

/// Posters walk rooms with a stride so they spread over all of them.
const ROOM_STRIDE: u64 = 7919;

/// One poster thread: closed loop (`gap` = None: keeps `in_flight` posts
/// outstanding) or open loop (one post every `gap`, on schedule even when
/// replies are slow; the body carries the scheduled time, so delivery
/// latency counts any lateness of the schedule: no coordinated omission).
struct Poster {
    engine: Engine,
    stop: Arc<AtomicBool>,
    posted: Arc<AtomicU64>,
    id: usize,
    rooms: u64,
    in_flight: usize,
    gap: Option<Duration>,
    epoch: Instant,
}

impl Poster {
    /// Runs until stopped; returns the worst lateness of a send against its
    /// schedule (open loop: says whether the generator kept up) and the
    /// send → ack latencies (µs, from the scheduled time).
    fn run(self) -> Result<(Duration, Histogram<u64>)> {
        let mut pending: VecDeque<(Duration, Pending<PostAck>)> = VecDeque::new();
        let mut acks = hist();
        let mut n = self.id as u64;
        let mut slip = Duration::ZERO;
        let mut next = self.epoch.elapsed();
        let sender = self.id as u64 + 1;
        while !self.stop.load(Ordering::Relaxed) {
            let stamp = match self.gap {
                None => {
                    if pending.len() >= self.in_flight {
                        self.settle(pending.pop_front(), &mut acks)?;
                        continue;
                    }
                    self.epoch.elapsed()
                }
                Some(gap) => {
                    let now = self.epoch.elapsed();
                    if now < next {
                        // Settle what is done while waiting for the slot.
                        while pending.front().is_some_and(|p| p.1.is_ready()) {
                            self.settle(pending.pop_front(), &mut acks)?;
                        }
                        std::thread::sleep((next - now).min(Duration::from_micros(200)));
                        continue;
                    }
                    slip = slip.max(now - next);
                    let scheduled = next;
                    next += gap;
                    if pending.len() >= self.in_flight {
                        self.settle(pending.pop_front(), &mut acks)?;
                    }
                    scheduled
                }
            };
            let room = n % self.rooms + 1;
            n += ROOM_STRIDE;
            let body = stamp.as_nanos().to_string();
            pending.push_back((stamp, self.engine.post(room, sender, "", &body)));
        }
        for p in pending {
            self.settle(Some(p), &mut acks)?;
        }
        Ok((slip, acks))
    }

    fn settle(
        &self,
        p: Option<(Duration, Pending<PostAck>)>,
        acks: &mut Histogram<u64>,
    ) -> Result<()> {
        if let Some((sent, p)) = p {
            p.wait()?;
            let us = (self.epoch.elapsed().saturating_sub(sent)).as_micros() as u64;
            let _ = acks.record(us.max(1));
            self.posted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// What a consumer thread counted: events, and sampled latencies for
/// subscribers on the owner shard and across a hop.
type Consumed = Result<(u64, Histogram<u64>, Histogram<u64>)>;

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Subscribes every scenario subscriber: subscriber `k` follows room
/// `k mod rooms` from inbox `k / per_inbox`, where inbox `c` (a consumer,
/// like one connection) lives on shard `c % shards`; every room gets
/// `subs_per_room` subscribers, and with the scenario's inbox count each
/// inbox follows `rooms_per_inbox` distinct rooms. All subscriptions are asked for first, then
/// awaited: one round trip in all, not one each.
fn subscribe_all(
    engine: &Engine,
    sc: &Scenario,
    shards: usize,
    inboxes: usize,
) -> Result<Vec<Inbox>> {
    let subs = sc.rooms as usize * sc.subs_per_room;
    let n = if inboxes == 0 {
        subs / sc.rooms_per_inbox
    } else {
        inboxes.max(shards)
    };
    let per_inbox = subs.div_ceil(n);
    let inboxes: Vec<Inbox> = (0..n)
        .map(|c| engine.inbox_on(c % shards))
        .collect::<Result<_, _>>()?;
    let mut pending = Vec::new();
    for k in 0..subs {
        // Subscriber k follows room k mod rooms, from inbox k / per_inbox.
        let room = (k as u64) % sc.rooms + 1;
        pending.push(inboxes[k / per_inbox].subscribe(room, None));
    }
    for p in pending {
        p.wait()?;
    }
    Ok(inboxes)
}

/// Events received by all consumers, and how many are expected (unknown,
/// `u64::MAX`, until the posters have stopped).
struct Tally {
    total: AtomicU64,
    expected: AtomicU64,
}

/// Consumer threads: each drains its share of the inboxes round-robin with
/// `try_recv` (no blocking, no wake-ups), counts every event and times one
/// in `sample_every` (post → receipt by the consumer), split by whether the
/// inbox sits on the room's owner.
fn spawn_consumers(
    engine: &Engine,
    inboxes: Vec<Inbox>,
    threads: usize,
    (epoch, sample_every): (Instant, u64),
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<std::thread::JoinHandle<Consumed>> {
    let mut shares: Vec<Vec<Inbox>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, inbox) in inboxes.into_iter().enumerate() {
        shares[i % threads].push(inbox);
    }
    shares
        .into_iter()
        .map(|share| {
            let (stop, tally) = (stop.clone(), tally.clone());
            let engine = engine.clone();
            std::thread::spawn(move || {
                let (mut n, mut local, mut cross) = (0u64, hist(), hist());
                let mut idle_since: Option<Instant> = None;
                loop {
                    let mut got = 0;
                    for inbox in &share {
                        while let Some(d) = inbox.try_recv()? {
                            got += 1;
                            n += 1;
                            if n % sample_every != 0 {
                                continue;
                            }
                            if let Some(t) = stamp_of(d.event.json()) {
                                let us =
                                    (epoch.elapsed().as_nanos() as u64).saturating_sub(t) / 1000;
                                let on_owner = engine.shard_of(d.event.room()) == inbox.shard();
                                let h = if on_owner { &mut local } else { &mut cross };
                                let _ = h.record(us.max(1));
                            }
                        }
                    }
                    tally.total.fetch_add(got, Ordering::Relaxed);
                    if got > 0 {
                        idle_since = None;
                        continue;
                    }
                    // Stop once every expected event arrived (the expected
                    // count is known after the posters stopped), or when
                    // nothing came for a long time (lost events: reported).
                    let done = tally.total.load(Ordering::Relaxed)
                        >= tally.expected.load(Ordering::Relaxed);
                    let idle = idle_since.get_or_insert_with(Instant::now).elapsed();
                    if done || (stop.load(Ordering::Relaxed) && idle > Duration::from_secs(5)) {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
                Ok((n, local, cross))
            })
        })
        .collect()
}
