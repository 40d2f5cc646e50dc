//! Access to a data directory shared by the subcommands: the manifest,
//! `meta.redb`, the shard logs and index rows, and a glommio executor for
//! the commands that go through the shard stores.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use rookery_storage::verify::{for_each_record, log_dir, room_rows, shard_dir, SegmentScan};
use rookery_storage::{ArchivedRecord, Manifest, Meta, Pos, RoomRow};

/// Page cache for `meta.redb` when the tool opens it.
const META_CACHE_BYTES: usize = 4 << 20;

/// Reads the manifest of `data`; fails when `data` is not a data directory.
pub fn manifest(data: &Path) -> Result<Manifest> {
    if !data.is_dir() {
        bail!("{} is not a directory (or cannot be read)", data.display());
    }
    Manifest::read(data)
        .with_context(|| format!("reading the manifest of {}", data.display()))?
        .ok_or_else(|| {
            anyhow!(
                "{}: not a rookery data directory (no manifest)",
                data.display()
            )
        })
}

/// Path of `meta.redb` in `data`.
pub fn meta_path(data: &Path) -> std::path::PathBuf {
    data.join("meta.redb")
}

/// Opens an existing `meta.redb` (never creates one).
pub fn open_meta(data: &Path) -> Result<Meta> {
    let path = meta_path(data);
    if !path.is_file() {
        bail!("{} is missing", path.display());
    }
    Meta::open(&path, META_CACHE_BYTES).with_context(|| {
        format!(
            "opening {} (is a server running on this directory?)",
            path.display()
        )
    })
}

/// Whether shard `shard` has a log directory (a shard never opened has none).
pub fn has_log(data: &Path, shard: u32) -> bool {
    log_dir(data, shard).is_dir()
}

/// Whether the shard directory exists at all.
pub fn has_shard_dir(data: &Path, shard: u32) -> bool {
    shard_dir(data, shard).is_dir()
}

/// Visits every valid record of a shard in log order (nothing when the shard
/// has no log yet) and returns the per-segment scans.
pub fn scan_shard(
    data: &Path,
    shard: u32,
    visit: impl FnMut(Pos, &ArchivedRecord),
) -> Result<Vec<SegmentScan>> {
    if !has_log(data, shard) {
        return Ok(Vec::new());
    }
    for_each_record(data, shard, visit).with_context(|| format!("reading the log of shard {shard}"))
}

/// Warns on stderr about every damaged segment of a scan; returns whether
/// there was any.
pub fn warn_damage(shard: u32, scans: &[SegmentScan]) -> bool {
    let mut damaged = false;
    for s in scans {
        if let Err(e) = &s.end {
            eprintln!("rookery-admin: warning: shard {shard} segment {}: {e}; records after the damage were skipped (run verify)", s.segment);
            damaged = true;
        }
    }
    damaged
}

/// What retention left of a room: its lowest live seq and its limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomRetention {
    /// Messages below this seq were retired (0 or 1: none).
    pub low_seq: u64,
    /// Keep at most this many newest messages (0: unlimited).
    pub keep_messages: u64,
    /// Keep messages younger than this (0: unlimited).
    pub keep_age_ms: u64,
}

/// Retention of every room, from `meta.redb` (the durable truth, which
/// survives an index rebuild) and from the shard indexes (which may be
/// ahead of it): the higher low seq wins, meta's limits win.
pub fn retention(data: &Path, shards: u32, meta: &Meta) -> Result<HashMap<u64, RoomRetention>> {
    let mut rooms: HashMap<u64, RoomRetention> = HashMap::new();
    for shard in 0..shards {
        let rows = room_rows(data, shard)
            .with_context(|| format!("reading the index of shard {shard}"))?;
        for (room, row) in rows {
            rooms.insert(room, RoomRetention::from_row(&row));
        }
    }
    for (room, low, keep_messages, keep_age_ms) in meta
        .retention_rows()
        .context("reading retention from meta")?
    {
        let r = rooms.entry(room).or_default();
        r.low_seq = r.low_seq.max(low);
        r.keep_messages = keep_messages;
        r.keep_age_ms = keep_age_ms;
    }
    Ok(rooms)
}

impl RoomRetention {
    /// The retention an index row records.
    fn from_row(row: &RoomRow) -> RoomRetention {
        RoomRetention {
            low_seq: row.low_seq,
            keep_messages: row.keep_messages,
            keep_age_ms: row.keep_age_ms,
        }
    }
}

/// The lowest live seq of `room` (at least 1).
pub fn low_seq(rooms: &HashMap<u64, RoomRetention>, room: u64) -> u64 {
    rooms.get(&room).map_or(1, |r| r.low_seq.max(1))
}

/// Runs `f` on a fresh glommio executor (with `io_memory` bytes of DMA
/// memory) and returns its result.
pub fn on_executor<T, F, Fut>(io_memory: usize, f: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("rookery-admin")
        .io_memory(io_memory)
        .spawn(move || async move { f().await })
        .map_err(|e| anyhow!("starting a glommio executor: {e}"))?
        .join()
        .map_err(|e| anyhow!("glommio executor failed: {e}"))?
}

/// Writes `value` as one JSON line.
pub fn write_json_line(out: &mut impl Write, value: &impl serde::Serialize) -> Result<()> {
    let mut line = serde_json::to_vec(value).context("encoding JSON")?;
    line.push(b'\n');
    out.write_all(&line).context("writing output")
}

/// Opens the existing data directory `data` through the shard stores, as the
/// tool runs alone: no background compaction, no compaction rate limit.
pub fn open_store(data: &Path) -> Result<(rookery_storage::Store, rookery_storage::StorageConfig)> {
    let manifest = manifest(data)?;
    let mut cfg = rookery_storage::StorageConfig::new(data);
    cfg.shards = manifest.shards;
    cfg.compaction_interval_ms = 0;
    cfg.compaction_bytes_per_s_max = 0;
    let store = rookery_storage::Store::open(cfg.clone())
        .with_context(|| format!("opening {} (is a server running on it?)", data.display()))?;
    Ok((store, cfg))
}
