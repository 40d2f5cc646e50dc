//! The dashboard's stats feed (`GET /api/stats`): every
//! `--stats-interval-ms` a reading of the server's cumulative figures
//! (engine counters and histograms per shard, HTTP counters, memory) is
//! turned into one compact sample of rates and interval percentiles, kept
//! in a ring of `--stats-samples-max`.
//!
//! [`Sampler`] is free of I/O and clocks: readings come in with their time,
//! so what a sample says is a pure function of two readings (unit-tested
//! below). [`spawn`] is the thread that takes the readings.
//! Invariant: samples are in time order, at most `samples_max` are kept,
//! and a sample only ever describes the interval between two readings
//! (counters that went backwards, as after a restart, give 0, never a
//! negative rate).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rookery_engine::{micros_histogram, Engine, Metrics};
use serde::Serialize;

use crate::metrics::ShardHttp;

/// What one shard's figures were at one time (cumulative counters, gauges
/// right now).
#[derive(Debug, Clone, Default)]
pub struct ShardReading {
    pub connections: i64,
    pub posts: u64,
    pub delivered: u64,
    pub cpu_us: u64,
    pub subscribers: u64,
    pub lagging: u64,
    pub queued_bytes: u64,
    pub tail_cache_bytes: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Log fdatasyncs that made records durable, and those records.
    pub syncs: u64,
    pub synced_records: u64,
}

/// The whole server's figures at one time.
#[derive(Debug, Clone)]
pub struct Reading {
    /// Wall-clock time of the reading, ms since the Unix epoch.
    pub at_ms: u64,
    pub shards: Vec<ShardReading>,
    pub rss_bytes: u64,
    /// Errors sent to clients so far, by code.
    pub errors: HashMap<&'static str, u64>,
    /// WebSocket connections opened so far, and close frames sent, by code.
    pub ws_opened: u64,
    pub closes: HashMap<u16, u64>,
    /// HTTP requests answered so far, and those answered 5xx.
    pub answered: u64,
    pub answered_5xx: u64,
    /// Post → queued for a WebSocket subscriber, µs, every shard merged.
    pub delivery_us: Histogram<u64>,
    /// Post accepted → durable, µs, every shard merged.
    pub commit_us: Histogram<u64>,
}

/// One shard's part of a sample.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ShardSample {
    pub connections: i64,
    pub msgs_in_per_s: f64,
    pub msgs_out_per_s: f64,
    /// Share of one core the shard's thread used over the interval, 0–100.
    pub cpu_pct: f64,
    pub subscribers: u64,
    /// Bytes of events queued for this shard's subscribers, and held in
    /// the tail caches of the rooms it owns: the shard's own memory that
    /// varies with load (the process's RSS is `rss_bytes`).
    pub queued_bytes: u64,
    pub tail_cache_bytes: u64,
}

/// One interval of the feed, as the dashboard draws it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// End of the interval, ms since the Unix epoch.
    pub t: u64,
    /// Length of the interval, ms.
    pub ms: u64,
    pub connections: i64,
    /// Messages posted per second (in) and events handed to subscribers
    /// per second (out).
    pub msgs_in_per_s: f64,
    pub msgs_out_per_s: f64,
    /// Percentiles over the interval's messages; null when there were none.
    pub deliver_p50_ms: Option<f64>,
    pub deliver_p99_ms: Option<f64>,
    pub commit_p50_ms: Option<f64>,
    pub commit_p99_ms: Option<f64>,
    /// Records made durable per fdatasync over the interval; null when
    /// nothing was synced.
    pub fsync_batch: Option<f64>,
    /// Catch-up pages served from memory over the interval, 0–1; null when
    /// there were none.
    pub cache_hit_rate: Option<f64>,
    pub subscribers: u64,
    pub lagging: u64,
    pub rss_bytes: u64,
    /// Errors sent to clients during the interval, by code (non-zero only).
    pub errors: BTreeMap<String, u64>,
    /// WebSocket connections opened per second: with steady users, the
    /// reconnect churn.
    pub ws_opened_per_s: f64,
    /// WebSocket close frames the server sent during the interval, by close
    /// code (non-zero only): 1009 for a message over the limit, 4001 for a
    /// session that ended, 1008 for a protocol breach, …
    pub ws_closes: BTreeMap<String, u64>,
    /// HTTP requests answered per second, and how many of the interval's
    /// were answered with a 5xx status.
    pub http_per_s: f64,
    pub http_5xx: u64,
    pub shards: Vec<ShardSample>,
}

/// What the server holds, read by the stats thread now and then (the
/// data directory's size takes a walk of it).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Totals {
    /// Users and rooms in this node's directory.
    pub users: u64,
    pub rooms: u64,
    /// Messages posted since the server started.
    pub messages_since_start: u64,
    /// Bytes of files under `--data-dir`, and free on its filesystem.
    pub data_bytes: u64,
    pub disk_free_bytes: u64,
}

/// Turns readings into samples and keeps the last `samples_max`.
pub struct Sampler {
    samples_max: usize,
    last: Option<Reading>,
    samples: VecDeque<Sample>,
    /// When the stats thread started, ms since the Unix epoch.
    pub started_ms: u64,
    pub totals: Totals,
}

impl Sampler {
    pub fn new(samples_max: usize) -> Self {
        assert!(samples_max > 0, "validated by the config");
        Sampler {
            samples_max,
            last: None,
            samples: VecDeque::with_capacity(samples_max),
            started_ms: 0,
            totals: Totals::default(),
        }
    }

    /// Takes a reading; from the second on, each makes a sample of the
    /// interval since the one before. A reading not later than the last is
    /// ignored (the clock stepped back).
    pub fn record(&mut self, now: Reading) {
        if let Some(last) = &self.last {
            if now.at_ms <= last.at_ms {
                return;
            }
            if self.samples.len() == self.samples_max {
                self.samples.pop_front();
            }
            self.samples.push_back(interval(last, &now));
        }
        self.last = Some(now);
    }

    /// The samples that end after `after_ms`, oldest first.
    pub fn since(&self, after_ms: u64) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|s| s.t > after_ms)
            .cloned()
            .collect()
    }
}

/// `now - before` per second of the interval (0 when the counter went
/// backwards).
fn rate(before: u64, now: u64, secs: f64) -> f64 {
    round2(now.saturating_sub(before) as f64 / secs)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// p50 and p99 (ms) of what `now` recorded since `before`.
fn percentiles(before: &Histogram<u64>, now: &Histogram<u64>) -> (Option<f64>, Option<f64>) {
    let mut delta = now.clone();
    if delta.subtract(before).is_err() || delta.is_empty() {
        return (None, None);
    }
    let ms = |q: f64| Some(round2(delta.value_at_quantile(q) as f64 / 1000.0));
    (ms(0.5), ms(0.99))
}

/// `part / whole` over the interval; None when `whole` did not move.
fn ratio(part: (u64, u64), whole: (u64, u64)) -> Option<f64> {
    let w = whole.1.saturating_sub(whole.0);
    (w > 0).then(|| round2(part.1.saturating_sub(part.0) as f64 / w as f64))
}

fn interval(before: &Reading, now: &Reading) -> Sample {
    let secs = (now.at_ms - before.at_ms) as f64 / 1000.0;
    let sum = |r: &Reading, f: fn(&ShardReading) -> u64| r.shards.iter().map(f).sum::<u64>();
    let delta = |f: fn(&ShardReading) -> u64| (sum(before, f), sum(now, f));
    let per_s = |(b, n): (u64, u64)| rate(b, n, secs);
    let (deliver_p50_ms, deliver_p99_ms) = percentiles(&before.delivery_us, &now.delivery_us);
    let (commit_p50_ms, commit_p99_ms) = percentiles(&before.commit_us, &now.commit_us);
    let (hits, syncs) = (delta(|s| s.cache_hits), delta(|s| s.syncs));
    let lookups = delta(|s| s.cache_hits + s.cache_misses);
    let errors = grown(&before.errors, &now.errors);
    let ws_closes = grown(&before.closes, &now.closes);
    let empty = ShardReading::default();
    let shards = now
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let b = before.shards.get(i).unwrap_or(&empty);
            ShardSample {
                connections: s.connections,
                msgs_in_per_s: rate(b.posts, s.posts, secs),
                msgs_out_per_s: rate(b.delivered, s.delivered, secs),
                cpu_pct: round2(s.cpu_us.saturating_sub(b.cpu_us) as f64 / (secs * 1e4)),
                subscribers: s.subscribers,
                queued_bytes: s.queued_bytes,
                tail_cache_bytes: s.tail_cache_bytes,
            }
        })
        .collect();
    Sample {
        t: now.at_ms,
        ms: now.at_ms - before.at_ms,
        connections: now.shards.iter().map(|s| s.connections).sum(),
        msgs_in_per_s: per_s(delta(|s| s.posts)),
        msgs_out_per_s: per_s(delta(|s| s.delivered)),
        deliver_p50_ms,
        deliver_p99_ms,
        commit_p50_ms,
        commit_p99_ms,
        fsync_batch: ratio(delta(|s| s.synced_records), syncs),
        cache_hit_rate: ratio(hits, lookups),
        subscribers: sum(now, |s| s.subscribers),
        lagging: sum(now, |s| s.lagging),
        rss_bytes: now.rss_bytes,
        errors,
        ws_opened_per_s: rate(before.ws_opened, now.ws_opened, secs),
        ws_closes,
        http_per_s: rate(before.answered, now.answered, secs),
        http_5xx: now.answered_5xx.saturating_sub(before.answered_5xx),
        shards,
    }
}

/// What each count by key grew by between two readings (non-zero only),
/// keyed by its text.
fn grown<K: std::fmt::Display + Eq + std::hash::Hash>(
    before: &HashMap<K, u64>,
    now: &HashMap<K, u64>,
) -> BTreeMap<String, u64> {
    now.iter()
        .filter_map(|(key, &n)| {
            let d = n.saturating_sub(before.get(key).copied().unwrap_or(0));
            (d > 0).then(|| (key.to_string(), d))
        })
        .collect()
}

/// Reads the server's figures now (`at_ms` is the reading's time).
pub fn read(engine: &Engine, http: &[ShardHttp], at_ms: u64) -> rookery_engine::Result<Reading> {
    let per_shard: Vec<Metrics> = engine.shard_metrics()?;
    let mut commit_us = micros_histogram();
    let shards = per_shard
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let _ = commit_us.add(&m.latencies.commit_us);
            let (c, g, st) = (&m.counters, &m.gauges, &m.storage);
            ShardReading {
                connections: http
                    .get(i)
                    .map_or(0, |h| h.connections.load(Ordering::Relaxed)),
                posts: c.posts,
                delivered: c.delivered,
                cpu_us: c.cpu_us,
                subscribers: g.subscribers,
                lagging: g.lagging,
                queued_bytes: g.queued_bytes,
                tail_cache_bytes: g.tail_cache_bytes,
                cache_hits: c.cache_hits,
                cache_misses: c.cache_misses,
                syncs: st.record_syncs(),
                synced_records: st.synced_records(),
            }
        })
        .collect();
    let mut errors = HashMap::new();
    let mut closes = HashMap::new();
    let mut delivery_us = micros_histogram();
    let (mut ws_opened, mut answered, mut answered_5xx) = (0, 0, 0);
    for h in http {
        h.add_errors_into(&mut errors);
        h.add_closes_into(&mut closes);
        h.add_delivery_into(&mut delivery_us);
        ws_opened += h.ws_opened.load(Ordering::Relaxed);
        let (all, bad) = h.answered_and_5xx();
        answered += all;
        answered_5xx += bad;
    }
    Ok(Reading {
        at_ms,
        shards,
        rss_bytes: crate::metrics::resident_bytes().max(0) as u64,
        errors,
        ws_opened,
        closes,
        answered,
        answered_5xx,
        delivery_us,
        commit_us,
    })
}

/// Starts the thread that takes a reading every `interval` into `sampler`
/// until `stopping` is set or the engine is gone. Readings are timed by a
/// monotonic clock (from the wall-clock time at start), so a clock step
/// neither freezes the feed nor makes an interval of the wrong length; a
/// reading late by more than an interval is not followed by catch-up
/// readings.
pub fn spawn(
    engine: Engine,
    http: Arc<Vec<ShardHttp>>,
    sampler: Arc<Mutex<Sampler>>,
    interval: Duration,
    stopping: Arc<AtomicBool>,
    data_dir: std::path::PathBuf,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("rookery-stats".into())
        .spawn(move || {
            let (start, start_ms) = (Instant::now(), crate::auth::now_ms());
            if let Ok(mut s) = sampler.lock() {
                s.started_ms = start_ms;
            }
            let mut totals_at: Option<Instant> = None;
            // Short naps, so that a stop is seen quickly whatever the
            // interval.
            let nap = Duration::from_millis(100);
            let mut next = start;
            while !stopping.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(nap));
                    continue;
                }
                next = next.max(now) + interval;
                let at_ms = start_ms + start.elapsed().as_millis() as u64;
                // The disk's figures now and then, the rest every time.
                let due = totals_at.is_none_or(|t| t.elapsed() >= DISK_EVERY);
                let disk =
                    due.then(|| (rookery_engine::dir_bytes(&data_dir), free_bytes(&data_dir)));
                if due {
                    totals_at = Some(Instant::now());
                }
                let counts = engine.directory().counts().ok();
                match read(&engine, &http, at_ms) {
                    Ok(r) => {
                        let posted = r.shards.iter().map(|s| s.posts).sum();
                        if let Ok(mut s) = sampler.lock() {
                            s.record(r);
                            let t = &mut s.totals;
                            if let Some((data, free)) = disk {
                                (t.data_bytes, t.disk_free_bytes) = (data, free);
                            }
                            if let Some((users, rooms)) = counts {
                                (t.users, t.rooms) = (users, rooms);
                            }
                            t.messages_since_start = posted;
                        }
                    }
                    // The engine is stopping.
                    Err(_) => break,
                }
            }
        })
}

/// How often the data directory is measured again: a walk of it is not
/// free (the counts of users and rooms are, and are read every time).
const DISK_EVERY: Duration = Duration::from_secs(30);

/// Bytes free to unprivileged users on the filesystem of `dir`.
fn free_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return 0;
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `st` a valid,
    // writable statvfs for the call to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    (st.f_bavail as u64).saturating_mul(st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at_ms: u64, shards: Vec<ShardReading>) -> Reading {
        Reading {
            at_ms,
            shards,
            rss_bytes: 1 << 20,
            errors: HashMap::new(),
            ws_opened: 0,
            closes: HashMap::new(),
            answered: 0,
            answered_5xx: 0,
            delivery_us: micros_histogram(),
            commit_us: micros_histogram(),
        }
    }

    fn shard(posts: u64, delivered: u64, cpu_us: u64) -> ShardReading {
        ShardReading {
            posts,
            delivered,
            cpu_us,
            connections: 3,
            ..Default::default()
        }
    }

    #[test]
    fn the_first_reading_makes_no_sample_then_each_makes_one() {
        let mut s = Sampler::new(10);
        s.record(reading(1_000, vec![shard(0, 0, 0)]));
        assert!(s.since(0).is_empty());
        s.record(reading(2_000, vec![shard(10, 30, 500_000)]));
        let got = s.since(0);
        assert_eq!(got.len(), 1);
        let x = &got[0];
        assert_eq!((x.t, x.ms, x.connections), (2_000, 1_000, 3));
        assert_eq!((x.msgs_in_per_s, x.msgs_out_per_s), (10.0, 30.0));
        assert_eq!(x.shards[0].cpu_pct, 50.0, "0.5 s of CPU in 1 s");
        assert_eq!(x.deliver_p99_ms, None, "nothing recorded: no percentile");
        assert_eq!(x.fsync_batch, None);
        assert_eq!(x.cache_hit_rate, None);
    }

    #[test]
    fn rates_are_per_second_and_summed_over_shards() {
        let mut s = Sampler::new(10);
        s.record(reading(0, vec![shard(0, 0, 0), shard(100, 0, 0)]));
        s.record(reading(
            2_000,
            vec![shard(40, 80, 0), shard(120, 200, 2_000_000)],
        ));
        let x = &s.since(0)[0];
        assert_eq!((x.msgs_in_per_s, x.msgs_out_per_s), (30.0, 140.0));
        assert_eq!(x.shards[0].msgs_in_per_s, 20.0);
        assert_eq!(x.shards[1].msgs_in_per_s, 10.0);
        assert_eq!(x.shards[1].cpu_pct, 100.0);
        assert_eq!(x.connections, 6);
    }

    #[test]
    fn percentiles_describe_only_the_interval() {
        let mut s = Sampler::new(10);
        let mut a = reading(0, vec![shard(0, 0, 0)]);
        for _ in 0..1000 {
            a.delivery_us.record(100_000).unwrap(); // 100 ms, before
        }
        let mut b = a.clone();
        b.at_ms = 1_000;
        for _ in 0..99 {
            b.delivery_us.record(2_000).unwrap(); // 2 ms, in the interval
        }
        b.delivery_us.record(9_000).unwrap();
        b.commit_us.record(500).unwrap();
        s.record(a);
        s.record(b);
        let x = &s.since(0)[0];
        // Within the histograms' precision (two significant digits), and
        // far from the 100 ms recorded before the interval.
        let near = |v: Option<f64>, want: f64| (v.unwrap() - want).abs() <= want * 0.01;
        assert!(near(x.deliver_p50_ms, 2.0), "{:?}", x.deliver_p50_ms);
        assert!(near(x.deliver_p99_ms, 2.0), "{:?}", x.deliver_p99_ms);
        assert!(near(x.commit_p50_ms, 0.5), "{:?}", x.commit_p50_ms);
    }

    #[test]
    fn fsync_batch_cache_hits_and_errors_are_interval_deltas() {
        let mut s = Sampler::new(10);
        let mut a = reading(0, vec![shard(0, 0, 0)]);
        a.shards[0].syncs = 10;
        a.shards[0].synced_records = 10;
        a.shards[0].cache_hits = 5;
        a.errors.insert("rate_limited", 4);
        let mut b = a.clone();
        b.at_ms = 1_000;
        b.shards[0].syncs = 14;
        b.shards[0].synced_records = 50;
        b.shards[0].cache_hits = 8;
        b.shards[0].cache_misses = 1;
        b.errors.insert("rate_limited", 6);
        b.errors.insert("bad_json", 1);
        s.record(a);
        s.record(b);
        let x = &s.since(0)[0];
        assert_eq!(x.fsync_batch, Some(10.0), "40 records in 4 syncs");
        assert_eq!(x.cache_hit_rate, Some(0.75), "3 hits of 4 lookups");
        let want: BTreeMap<String, u64> =
            [("bad_json".to_string(), 1), ("rate_limited".to_string(), 2)].into();
        assert_eq!(x.errors, want);
    }

    #[test]
    fn churn_close_codes_and_server_errors_are_interval_figures() {
        let mut s = Sampler::new(10);
        let mut a = reading(0, vec![shard(0, 0, 0)]);
        a.ws_opened = 100;
        a.closes.insert(1009, 3);
        a.closes.insert(4001, 1);
        a.answered = 1_000;
        a.answered_5xx = 7;
        let mut b = a.clone();
        b.at_ms = 2_000;
        b.ws_opened = 140;
        b.closes.insert(1009, 41);
        b.answered = 1_100;
        b.answered_5xx = 9;
        s.record(a);
        s.record(b);
        let x = &s.since(0)[0];
        assert_eq!(x.ws_opened_per_s, 20.0, "40 opened in 2 s");
        let want: BTreeMap<String, u64> = [("1009".to_string(), 38)].into();
        assert_eq!(x.ws_closes, want, "only the interval's, non-zero");
        assert_eq!((x.http_per_s, x.http_5xx), (50.0, 2));
    }

    #[test]
    fn counters_going_backwards_give_zero_not_negative() {
        let mut s = Sampler::new(10);
        s.record(reading(0, vec![shard(100, 100, 100)]));
        s.record(reading(1_000, vec![shard(1, 1, 1)]));
        let x = &s.since(0)[0];
        assert_eq!((x.msgs_in_per_s, x.msgs_out_per_s), (0.0, 0.0));
        assert_eq!(x.shards[0].cpu_pct, 0.0);
    }

    #[test]
    fn the_ring_keeps_the_newest_and_since_filters_by_time() {
        let mut s = Sampler::new(3);
        for t in 0..10u64 {
            s.record(reading(t * 1_000, vec![shard(t, t, 0)]));
        }
        let all: Vec<u64> = s.since(0).iter().map(|x| x.t).collect();
        assert_eq!(all, vec![7_000, 8_000, 9_000]);
        let after: Vec<u64> = s.since(8_000).iter().map(|x| x.t).collect();
        assert_eq!(after, vec![9_000]);
        // A reading from the past (the clock stepped back) is ignored.
        s.record(reading(5_000, vec![shard(0, 0, 0)]));
        assert_eq!(s.since(0).len(), 3);
        assert_eq!(s.since(0).last().unwrap().t, 9_000);
    }
}
