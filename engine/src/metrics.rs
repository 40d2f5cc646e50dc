//! The engine's metrics hooks: per-shard counters, gauges and latency
//! histograms. Each shard updates its own (plain fields behind a `RefCell`,
//! no atomics, no locks: a counter update is an add, a latency record a
//! few ns); [`crate::Engine::metrics`] asks every shard for a copy and sums
//! or merges them on read.

/// Per-shard counters (plain, updated on the shard, summed on read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardCounters {
    /// Messages posted (new, durable) on rooms this shard owns.
    pub posts: u64,
    /// Idempotent retries answered with the original seq.
    pub duplicates: u64,
    /// Reactions put on or taken off (stored) on rooms this shard owns.
    pub reactions: u64,
    /// Events handed to local subscribers.
    pub delivered: u64,
    /// Events sent to other shards (each counts once per shard).
    pub forwarded: u64,
    /// Cross-shard messages sent (each may carry many events).
    pub mesh_sends: u64,
    /// Read receipts refused because the writer's queue was full.
    pub receipts_refused: u64,
    /// Catch-up pages served from the tail cache.
    pub cache_hits: u64,
    /// Catch-up pages served from storage.
    pub cache_misses: u64,
    /// Times a subscriber became lagging.
    pub lagged: u64,
    /// Volatile events dropped for full subscribers.
    pub volatile_dropped: u64,
    /// Subscribers closed as slow consumers.
    pub slow_closed: u64,
    /// Rooms whose tail cache was dropped to keep the shard within
    /// `tail_cache_bytes_max`.
    pub tail_evictions: u64,
    /// CPU time the shard's thread has used, µs (user + system, read from
    /// `/proc/thread-self/stat` when the counters are asked for; 0 where
    /// procfs is missing).
    pub cpu_us: u64,
}

/// Latency histograms of a shard, in µs (hdrhistogram: a record is a few
/// ns; merged across shards on read).
#[derive(Debug, Clone)]
pub struct Latencies {
    /// Post accepted by the owner → durable (the storage append).
    pub commit_us: hdrhistogram::Histogram<u64>,
    /// Cross-shard hop: event queued for a peer → handed to that peer's
    /// subscribers.
    pub hop_us: hdrhistogram::Histogram<u64>,
    /// Catch-up page: request → reply applied (pages served on the owner).
    pub page_us: hdrhistogram::Histogram<u64>,
}

/// An empty latency histogram of µs as the engine keeps them (1 µs to
/// 60 s, two significant digits): what callers use for histograms they
/// merge with or subtract from the engine's.
pub fn micros_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds")
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            commit_us: micros_histogram(),
            hop_us: micros_histogram(),
            page_us: micros_histogram(),
        }
    }
}

impl Latencies {
    /// Adds another shard's histograms into these.
    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.commit_us.add(&other.commit_us);
        let _ = self.hop_us.add(&other.hop_us);
        let _ = self.page_us.add(&other.page_us);
    }
}

/// Microseconds of a duration, at least 1 (the histograms' lower bound).
pub(crate) fn micros(d: std::time::Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

impl ShardCounters {
    /// Adds another shard's counters into these.
    pub fn add(&mut self, o: &ShardCounters) {
        self.posts += o.posts;
        self.duplicates += o.duplicates;
        self.reactions += o.reactions;
        self.delivered += o.delivered;
        self.forwarded += o.forwarded;
        self.mesh_sends += o.mesh_sends;
        self.cache_hits += o.cache_hits;
        self.cache_misses += o.cache_misses;
        self.lagged += o.lagged;
        self.volatile_dropped += o.volatile_dropped;
        self.slow_closed += o.slow_closed;
        self.tail_evictions += o.tail_evictions;
        self.receipts_refused += o.receipts_refused;
        self.cpu_us += o.cpu_us;
    }
}

/// CPU time (user + system) the calling thread has used, µs; 0 when
/// `/proc/thread-self/stat` cannot be read.
pub(crate) fn thread_cpu_us() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return 0;
    };
    // Fields after the command name (which may hold spaces, so it is
    // skipped by its closing parenthesis): utime and stime are the 12th
    // and 13th, in clock ticks of 1/100 s (USER_HZ, 100 on Linux).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let mut fields = rest.split_whitespace().skip(11);
    let mut tick = || {
        fields
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let ticks = tick() + tick();
    ticks * 10_000
}

/// Per-shard gauges: values right now, summed over shards on read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardGauges {
    /// Subscriptions hosted.
    pub subscribers: u64,
    /// Subscriptions not live (catching up from the cache or the log).
    pub lagging: u64,
    /// Bytes of events queued for subscribers and not yet received, plus
    /// edits and deletes held for lagging ones.
    pub queued_bytes: u64,
    /// Cross-shard messages waiting in this shard's outboxes.
    pub outbox_messages: u64,
    /// Rooms this shard owns that are loaded.
    pub rooms_loaded: u64,
    /// Encoded events held in the owned rooms' tail caches.
    pub tail_cache_events: u64,
    /// Bytes of those events.
    pub tail_cache_bytes: u64,
}

impl Metrics {
    /// Adds another shard's metrics into these (engine-wide fields are
    /// left as they are).
    pub fn add_shard(&mut self, o: &Metrics) {
        self.storage.add(&o.storage);
        self.counters.add(&o.counters);
        self.gauges.add(&o.gauges);
        self.latencies.merge(&o.latencies);
    }
}

impl ShardGauges {
    /// Adds another shard's gauges into these.
    pub fn add(&mut self, o: &ShardGauges) {
        self.subscribers += o.subscribers;
        self.lagging += o.lagging;
        self.queued_bytes += o.queued_bytes;
        self.outbox_messages += o.outbox_messages;
        self.rooms_loaded += o.rooms_loaded;
        self.tail_cache_events += o.tail_cache_events;
        self.tail_cache_bytes += o.tail_cache_bytes;
    }
}

/// Everything [`crate::Engine::metrics`] reports: counters and gauges
/// summed, histograms merged over every shard.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Summed counters.
    pub counters: ShardCounters,
    /// Summed gauges.
    pub gauges: ShardGauges,
    /// Merged latency histograms.
    pub latencies: Latencies,
    /// Storage counters summed over shards (commit batches, fsyncs and the
    /// fsync batch size buckets).
    pub storage: rookery_storage::ShardStats,
    /// Read receipts waiting for the receipt writer (engine-wide gauge).
    pub receipt_queue_len: u64,
    /// Read receipts written (engine-wide counter).
    pub receipts_written: u64,
    /// Transactions the receipt writer committed (engine-wide counter).
    pub receipt_batches: u64,
    /// Calls refused because a shard's command queue was full
    /// (engine-wide counter; see `command_queue_len_max`).
    pub commands_refused: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// The shard's CPU figure is this thread's time, in µs: busy work
    /// moves it (it is counted in 10 ms ticks, so the work runs until at
    /// least 30 ms are counted), and never by more than the wall time
    /// that passed.
    #[test]
    fn thread_cpu_time_counts_this_threads_work_in_micros() {
        let (before, started) = (thread_cpu_us(), Instant::now());
        let mut x = 0u64;
        while thread_cpu_us() < before + 30_000 && started.elapsed() < Duration::from_secs(20) {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        let (used, wall) = (thread_cpu_us() - before, started.elapsed());
        assert!(used >= 30_000, "{used} µs of CPU in {wall:?}");
        assert!(
            used <= wall.as_micros() as u64 + 20_000,
            "{used} µs of CPU in {wall:?}: not µs"
        );
    }
}
