//! Typed storage configuration with documented defaults.
//!
//! Every limit carries its unit in its name. [`StorageConfig::validate`] is
//! called by [`crate::Store::open`] so a bad value fails at start-up with a
//! message naming the field, never later on a hot path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// When an append is acknowledged relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledge after the batch's `fdatasync` returned (default).
    Sync,
    /// Acknowledge after the batch's write returned; `fdatasync` runs at most
    /// every `interval` (a crash can lose up to that much acknowledged data).
    Batch {
        /// Time between two `fdatasync` calls.
        interval: Duration,
    },
    /// Acknowledge after the write; never `fdatasync` except on roll and
    /// shutdown. For tests and network-path benchmarks only.
    None,
}

impl Durability {
    /// The name used in flags and benchmark reports: `sync`, `batch`, `none`.
    pub fn name(&self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::Batch { .. } => "batch",
            Durability::None => "none",
        }
    }

    /// Parses `sync`, `none`, `batch` (10 ms) or `batch:N` (N ms).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "sync" => Ok(Durability::Sync),
            "none" => Ok(Durability::None),
            "batch" => Ok(Durability::Batch {
                interval: Duration::from_millis(10),
            }),
            _ => match s.strip_prefix("batch:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(Durability::Batch {
                    interval: Duration::from_millis(ms),
                }),
                _ => Err(Error::Config(format!(
                    "durability must be sync, batch, batch:MS or none, got {s:?}"
                ))),
            },
        }
    }
}

/// Configuration of a data directory and its shard stores.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Root of the data directory (`manifest`, `meta.redb`, `shard-K/`).
    pub data_dir: PathBuf,
    /// Number of shards. Fixed at creation in the manifest. Default 1.
    pub shards: u32,
    /// Durability mode. Default [`Durability::Sync`].
    pub durability: Durability,
    /// A segment file rolls before it would exceed this size. Default 64 MiB.
    /// Allowed: 64 KiB ..= 1 GiB.
    pub segment_bytes_max: u32,
    /// A commit batch closes at this many bytes of records. Default 1 MiB.
    pub commit_batch_bytes_max: usize,
    /// A commit batch closes at this many records. Default 4096.
    pub commit_batch_records_max: usize,
    /// After the first record of an idle log arrives, the committer waits up
    /// to this long for more before writing. 0 disables the window. Default
    /// 0 µs: while one batch is being synced the next one fills anyway, so a
    /// window only helps open-loop producers that arrive just apart.
    pub commit_window_us: u64,
    /// In `sync` mode, write each batch through (`O_DSYNC`: durable when
    /// the write returns, one device request where the disk supports FUA)
    /// instead of writing it and then calling `fdatasync` (two round
    /// trips). Default true: measured faster at 1, 16 and 256 writers
    /// (docs/benchmarks.md).
    pub write_through: bool,
    /// Largest message or edit body accepted, in bytes. Default 64 KiB.
    pub body_bytes_max: usize,
    /// Largest client id accepted, in bytes. Default 128.
    pub client_id_bytes_max: usize,
    /// A repeated `(sender, client_id)` is recognised while the original is
    /// among the room's last this-many messages. Default 1024.
    pub idempotency_window_len: usize,
    /// The shard writes dirty index chunks and a checkpoint at least this
    /// often, bounding replay at open. Default 1000 ms.
    pub checkpoint_interval_ms: u64,
    /// Index work queued to the index thread, in records, before appends wait
    /// for it to catch up. Default 1,000,000.
    pub index_lag_records_max: usize,
    /// redb cache per shard index, in bytes. Default 64 MiB.
    pub index_cache_bytes: usize,
    /// redb cache for `meta.redb`, in bytes. Default 16 MiB.
    pub meta_cache_bytes: usize,
    /// glommio DMA memory registered per ring, in bytes (memlock is 8 MiB on
    /// the reference machine). Default 1 MiB.
    pub io_memory_bytes: usize,
    /// Each shard runs a compaction step this often (rewriting old sealed
    /// segments in room order, see docs/storage.md). 0 turns the background
    /// step off (`compact` and `compact_all` still work). Default 60,000 ms.
    pub compaction_interval_ms: u64,
    /// The newest sealed appended segments left as written (recent history
    /// is read from the page cache anyway). Default 2.
    pub compaction_keep_recent_segments: u32,
    /// A compaction run reads at most this many bytes of segments (the
    /// rewrite holds one key per record in memory: ~40 bytes each).
    /// Default 256 MiB; allowed 1 MiB..=2 GiB.
    pub compaction_input_bytes_max: u64,
    /// The rewrite writes at most this many bytes per second (0 = no
    /// limit), so compaction leaves the disk to appends. Default 8 MiB/s
    /// (measured on the reference VM: 16 writers' ack p99 1.2x of their p99
    /// alone at 8 MiB/s, 1.7x at 16, 3x at 64; docs/benchmarks.md). That is
    /// 28 GB an hour, far above what a chat server appends.
    pub compaction_bytes_per_s_max: u64,
    /// A segment holding a deleted message's body is rewritten (the active
    /// one sealed first) once the oldest such delete is this old: deleted
    /// text is gone from disk within this plus one `compaction_interval_ms`
    /// and the rewrite. Default 600,000 ms (10 minutes).
    pub deleted_text_delay_ms: u64,
    /// Sees every write, sync, truncation and install of the log's files,
    /// in order (crash-consistency tests rebuild what a power cut would
    /// leave from it, see `storage/tests/powercut.rs`). Default none.
    pub log_observer: Option<Arc<dyn LogObserver>>,
    /// The user and room ids `meta.redb` may hand out (a cluster node's
    /// own, so that no two nodes hand out the same id). Default all.
    pub id_filter: Option<IdFilter>,
}

/// A set of ids, as a predicate: which user and room ids one data
/// directory may hand out.
#[derive(Clone)]
pub struct IdFilter(Arc<dyn Fn(u64) -> bool + Send + Sync>);

impl IdFilter {
    /// The ids `accepts` returns true for.
    pub fn new(accepts: impl Fn(u64) -> bool + Send + Sync + 'static) -> IdFilter {
        IdFilter(Arc::new(accepts))
    }

    /// Whether `id` is in the set.
    pub fn accepts(&self, id: u64) -> bool {
        (self.0)(id)
    }
}

impl std::fmt::Debug for IdFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdFilter")
    }
}

/// What the log does to its files, told as it happens (on the shard's
/// thread): what a model of the disk needs to know which bytes were
/// durable at any moment. Writes are told just before they are issued,
/// everything else once it returned.
pub trait LogObserver: Send + Sync + std::fmt::Debug {
    /// `bytes` are being written at `offset` of `path`.
    fn wrote(&self, path: &Path, offset: u64, bytes: &[u8]);
    /// `path` was `fdatasync`ed: everything written to it is durable.
    fn synced(&self, path: &Path);
    /// `path` was truncated to `len` bytes (durable once synced).
    fn truncated(&self, path: &Path, len: u64);
    /// `from` was renamed to `to` and the directory synced: durable.
    fn installed(&self, from: &Path, to: &Path);
}

impl StorageConfig {
    /// Defaults for a data directory at `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StorageConfig {
            data_dir: data_dir.into(),
            shards: 1,
            durability: Durability::Sync,
            segment_bytes_max: 64 << 20,
            commit_batch_bytes_max: 1 << 20,
            commit_batch_records_max: 4096,
            commit_window_us: 0,
            write_through: true,
            body_bytes_max: 64 << 10,
            client_id_bytes_max: 128,
            idempotency_window_len: 1024,
            checkpoint_interval_ms: 1000,
            index_lag_records_max: 1_000_000,
            index_cache_bytes: 64 << 20,
            meta_cache_bytes: 16 << 20,
            io_memory_bytes: 1 << 20,
            compaction_interval_ms: 60_000,
            compaction_keep_recent_segments: 2,
            compaction_input_bytes_max: 256 << 20,
            compaction_bytes_per_s_max: 8 << 20,
            deleted_text_delay_ms: 600_000,
            log_observer: None,
            id_filter: None,
        }
    }

    /// Checks every field; the error names the field and its allowed range.
    pub fn validate(&self) -> Result<()> {
        fn check(ok: bool, msg: &str) -> Result<()> {
            if ok {
                Ok(())
            } else {
                Err(Error::Config(msg.to_string()))
            }
        }
        check(
            (1..=256).contains(&self.shards),
            "shards must be in 1..=256",
        )?;
        check(
            (64 << 10..=1 << 30).contains(&self.segment_bytes_max),
            "segment_bytes_max must be in 64 KiB..=1 GiB",
        )?;
        check(
            self.body_bytes_max > 0
                && self.body_bytes_max + self.client_id_bytes_max + 256
                    <= self.segment_bytes_max as usize / 2,
            "body_bytes_max must be > 0 and fit twice in a segment",
        )?;
        check(
            self.commit_batch_bytes_max >= 4096,
            "commit_batch_bytes_max must be >= 4096",
        )?;
        check(
            self.commit_batch_records_max >= 1,
            "commit_batch_records_max must be >= 1",
        )?;
        check(
            self.commit_window_us <= 100_000,
            "commit_window_us must be <= 100000",
        )?;
        check(
            self.idempotency_window_len <= 1 << 20,
            "idempotency_window_len must be <= 1048576",
        )?;
        check(
            self.checkpoint_interval_ms >= 10,
            "checkpoint_interval_ms must be >= 10",
        )?;
        check(
            self.index_lag_records_max >= 1024,
            "index_lag_records_max must be >= 1024",
        )?;
        check(
            (1 << 20..=2 << 30).contains(&self.compaction_input_bytes_max),
            "compaction_input_bytes_max must be in 1 MiB..=2 GiB",
        )?;
        check(
            self.compaction_bytes_per_s_max == 0 || self.compaction_bytes_per_s_max >= 1 << 20,
            "compaction_bytes_per_s_max must be 0 (no limit) or >= 1 MiB/s",
        )?;
        if let Durability::Batch { interval } = self.durability {
            check(!interval.is_zero(), "durability batch interval must be > 0")?;
        }
        Ok(())
    }
}
