//! # rookery-storage
//!
//! Durable storage for Rookery: per-shard append logs with group commit,
//! derived redb indexes, the shared metadata database, crash recovery and
//! retention. See `docs/storage.md` for the on-disk format.
//!
//! Layout of a data directory:
//!
//! ```text
//! DATA/manifest              format version, shard count
//! DATA/meta.redb             users, sessions, rooms, members, read receipts
//! DATA/shard-K/log/*.seg     shard K's append log (the truth)
//! DATA/shard-K/index.redb    shard K's index (derived; rebuilt from the log)
//! ```
//!
//! [`Store`] is opened once per process and is `Send + Sync`; each shard's
//! [`ShardStore`] is opened on that shard's glommio executor and stays there.
//! This crate knows nothing of sockets or the wire protocol.

#![deny(missing_docs)]

pub mod backup;
pub mod chunk;
mod config;
mod direct;
mod error;
mod feed;
mod index;
mod log;
pub mod manifest;
pub mod meta;
pub mod record;
pub mod segment;
mod shard;
mod signal;
pub mod threads;
pub mod uploads;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;

pub use config::{Durability, IdFilter, LogObserver, StorageConfig};

/// A log filter directive binaries add to theirs: glommio 0.9.0 reports,
/// at error level, the refusal of its IOPOLL probe that every shard
/// provokes on purpose at open (see `log::keep_off_poll_ring`);
/// `glommio::reactor` logs nothing else.
pub const QUIET_LOG_DIRECTIVE: &str = "glommio::reactor=off";
pub use error::{Error, Result};
pub use feed::{Doorbell, FeedRead, LogFeed, LogFeeds, INTERNAL_READER_PREFIX};
pub use index::RoomRow;
pub use manifest::Manifest;
pub use meta::{ListPage, Meta, Replicated, Role, ROOM_PAGE_SCAN_ROWS_MAX};
pub use record::{
    ArchivedFileRef, ArchivedRecord, Delete, Edit, FileRef, Message, Post, React, Record, Reply,
};
pub use segment::Pos;
pub use shard::{
    Appended, CompactionReport, Cursor, HistoryItem, Order, Page, Reaction, RecordRef, Retention,
    RetentionReport, Retired, ShardStats, ShardStore, ThreadPage, CONTENT_TYPE_BYTES_MAX,
    EMOJI_BYTES_MAX, FILES_PER_MESSAGE_MAX, REACTIONS_PER_MESSAGE_MAX,
    REACTIONS_PER_USER_PER_MESSAGE_MAX, SYNC_BATCH_BOUNDS, SYNC_BATCH_BUCKETS,
};
pub use uploads::{Incoming, UploadFiles};

/// A data directory: its manifest and metadata database. Open once per
/// process; share it between shards (it is `Send + Sync`).
pub struct Store {
    cfg: StorageConfig,
    meta: Arc<Meta>,
    feeds: LogFeeds,
}

impl Store {
    /// Validates the config, creates the directory if needed, checks or
    /// writes the manifest and opens `meta.redb`.
    pub fn open(cfg: StorageConfig) -> Result<Store> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| Error::io(&cfg.data_dir, e))?;
        Manifest::ensure(&cfg.data_dir, cfg.shards)?;
        let meta = Arc::new(
            Meta::open(&cfg.data_dir.join("meta.redb"), cfg.meta_cache_bytes)?
                .with_id_filter(cfg.id_filter.clone()),
        );
        // Held before any shard opens: no compaction may take what a
        // durable reader resumes from.
        let cursors = meta.feed_cursors()?;
        let feeds = LogFeeds::new(cfg.shards as usize, &cursors);
        meta.set_member_doorbell(feeds.doorbell().clone());
        // A reader that follows the membership feed misses no change made
        // before it starts again.
        if cursors.iter().any(|c| c.1 == meta::MEMBER_FEED_STREAM) {
            meta.set_member_feed(true);
        }
        Ok(Store { cfg, meta, feeds })
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StorageConfig {
        &self.cfg
    }

    /// The shared metadata database.
    pub fn meta(&self) -> &Arc<Meta> {
        &self.meta
    }

    /// Every shard's log as a feed of changes (see [`LogFeeds`]).
    pub fn feeds(&self) -> &LogFeeds {
        &self.feeds
    }

    /// The data directory.
    pub fn data_dir(&self) -> &PathBuf {
        &self.cfg.data_dir
    }

    /// The shard that owns `room`: a stable mix of the id, modulo the shard
    /// count (stable across builds: it decides where data lives).
    pub fn shard_of(&self, room: u64) -> u32 {
        shard_of(room, self.cfg.shards)
    }

    /// Opens shard `shard` on the current glommio executor, recovering it
    /// from its log.
    pub async fn open_shard(&self, shard: u32) -> Result<ShardStore> {
        if shard >= self.cfg.shards {
            return Err(Error::InvalidInput(format!(
                "shard {shard} of {}",
                self.cfg.shards
            )));
        }
        ShardStore::open(
            &self.cfg,
            shard,
            Some(self.meta.clone()),
            Some(self.feeds.clone()),
        )
        .await
    }
}

/// The shard that owns `room` among `shards` (splitmix64 finalizer, then
/// modulo). Never change: it decides where existing data lives.
pub fn shard_of(room: u64, shards: u32) -> u32 {
    let mut z = room.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % shards as u64) as u32
}

/// Bytes of the files under `dir`, recursively (symlinks not followed;
/// what cannot be read counts 0): what a data directory takes on disk.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}
