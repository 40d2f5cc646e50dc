//! The indexer: one thread that owns the index's only writer. It opens
//! the index, or rebuilds it from the logs when it is missing or cannot
//! be trusted, then tails every shard's log feed and commits about once
//! per `commit_interval`.
//!
//! Invariants:
//! - each commit carries, in its payload, the feed position it has read
//!   up to on every shard, so the committed documents and the cursors
//!   they resume from can never disagree (a crash loses uncommitted work
//!   and the cursors with it, and replays both);
//! - `meta.redb`'s copy of those cursors, which holds each shard's log
//!   (`LogFeeds::hold_for`), is saved only after the commit that has
//!   them: it never gets ahead of the index, so nothing the index still
//!   needs is compacted or retired away;
//! - a feed read that finds segments gone, a cursor this log never had,
//!   or an error from tantivy means the index may miss something: it is
//!   rebuilt, never patched.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rookery_storage::Pos;
use serde::{Deserialize, Serialize};
use tantivy::directory::MmapDirectory;
use tantivy::indexer::{IndexWriterOptions, LogMergePolicy};
use tantivy::schema::Schema;
use tantivy::{Index, IndexReader, IndexSettings, IndexWriter, ReloadPolicy, TantivyDocument};

use super::schema::{self, Change, Fields, SCHEMA_VERSION};
use super::{SearchConfig, Shared, READER};
use crate::engine::Engine;

/// The payload layout this build writes.
const PAYLOAD_FORMAT: u32 = 1;

/// Bytes read from one shard's feed per turn: bounds the changes held
/// between reading them and handing them to the writer.
const READ_BYTES_MAX: usize = 256 << 10;

/// A commit comes at the latest after this many changes, however soon
/// (bounds what a crash makes the index read again).
const COMMIT_CHANGES_MAX: u64 = 1_000_000;

/// How often it commits while it has a backlog to read: fewer, larger
/// segments, which the merges rewrite less often (what is not yet
/// searchable is then behind anyway). Measured: at 100k posts/s on two
/// vCPUs, the index given the CPU the shards leave it (docs/benchmarks.md).
const CATCH_UP_COMMIT_INTERVAL: Duration = Duration::from_secs(10);

/// Log bytes behind on a shard (some tens of thousands of messages) past
/// which the index is catching up.
const CATCH_UP_BACKLOG_BYTES: u64 = 4 << 20;

/// How long the thread sleeps at most with nothing to read.
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// How soon an expunge refused (its segment was being merged) is tried
/// again.
const EXPUNGE_RETRY: Duration = Duration::from_secs(5);

/// What a commit's payload says.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Payload {
    format: u32,
    schema: u32,
    /// The data directory's origin (`Directory::origin`): an index left
    /// beside a restored backup is not this log's.
    origin: u64,
    /// Each shard's feed position read up to (`Pos::to_u64`).
    cursors: Vec<u64>,
}

/// Why the index must be rebuilt (said in the log).
#[derive(Debug)]
pub(crate) struct Rebuild(pub String);

impl<E: std::fmt::Display> From<E> for Rebuild {
    fn from(e: E) -> Rebuild {
        Rebuild(e.to_string())
    }
}

/// The writer and what it has done.
pub(crate) struct Indexer {
    engine: Engine,
    cfg: SearchConfig,
    shared: Arc<Shared>,
    fields: Fields,
    index: Index,
    writer: IndexWriter<TantivyDocument>,
    reader: IndexReader,
    /// Read up to, per shard.
    at: Vec<Pos>,
    /// In the last commit, per shard.
    committed: Vec<Pos>,
    last_commit: Instant,
    changes: u64,
    /// The oldest removal or edit whose old words a merge has not yet
    /// rewritten away.
    unexpunged_since: Option<Instant>,
    /// An expunge refused (a merge was under way) is tried again then.
    expunge_retry: Option<Instant>,
    /// Retention lows applied, per room.
    lows: std::collections::HashMap<u64, u64>,
    lows_checked: Option<Instant>,
    /// Deletions applied that no feed position marks (retention's): a
    /// commit is due even when the feeds have nothing new.
    unsaved: bool,
}

/// Runs the indexer until `shared` says stop: opens or rebuilds, tails,
/// and rebuilds again whenever the index turns out wrong. Gives up (and
/// says why in the status) only when even a rebuild fails.
pub(crate) fn run(engine: Engine, cfg: SearchConfig, shared: Arc<Shared>) {
    rookery_storage::threads::below_shards();
    let mut why_rebuild: Option<String> = None;
    while !shared.stopped() {
        let opened = match why_rebuild.take() {
            None => Indexer::open(&engine, &cfg, &shared),
            Some(why) => Err(Rebuild(why)),
        };
        let mut ix = match opened {
            Ok(ix) => ix,
            Err(Rebuild(why)) => {
                tracing::info!("search index: rebuilding from the log ({why})");
                match Indexer::rebuild(&engine, &cfg, &shared) {
                    Ok(ix) => ix,
                    Err(_) if shared.stopped() => return,
                    Err(Rebuild(e)) => {
                        tracing::error!("search index: the rebuild failed: {e}");
                        // A failed index holds no log: compaction, retention
                        // and the deleted-text scrub go on without it (the
                        // next start rebuilds from what is left).
                        engine.feeds().hold_for(READER, None);
                        if let Err(e) = engine.directory().drop_feed_cursors(READER) {
                            tracing::warn!("search index: its cursors stay saved: {e}");
                        }
                        shared.fail(e);
                        return;
                    }
                }
            }
        };
        let tailed = ix.tail();
        // Merges still writing would race the rebuild's removal of the
        // directory.
        let _ = ix.writer.wait_merging_threads();
        match tailed {
            Ok(()) => return, // stopped
            Err(Rebuild(why)) => {
                shared.unpublish();
                why_rebuild = Some(why);
            }
        }
    }
}

impl Indexer {
    /// Opens the index in `cfg.dir` as it was last committed, if it is
    /// this log's, of this schema, and every cursor is one this log can
    /// go on from.
    fn open(engine: &Engine, cfg: &SearchConfig, shared: &Arc<Shared>) -> Result<Indexer, Rebuild> {
        if !cfg.dir.join("meta.json").exists() {
            return Err(Rebuild("no index".into()));
        }
        let (schema, fields) = schema::schema();
        let index = Index::open(MmapDirectory::open(&cfg.dir)?)?;
        if index.schema() != schema {
            return Err(Rebuild("the index has another schema".into()));
        }
        let payload: Payload = index
            .load_metas()?
            .payload
            .ok_or("the last commit has no cursors")
            .and_then(|p| serde_json::from_str(&p).map_err(|_| "its cursors do not parse"))?;
        let origin = engine.directory().origin();
        if (payload.format, payload.schema, payload.origin)
            != (PAYLOAD_FORMAT, SCHEMA_VERSION, origin)
        {
            return Err(Rebuild(format!(
                "made by another version or for another data directory ({payload:?})"
            )));
        }
        if payload.cursors.len() != engine.shards() {
            return Err(Rebuild("made for another number of shards".into()));
        }
        let feeds = engine.feeds();
        let mut at = Vec::with_capacity(payload.cursors.len());
        for (shard, &c) in payload.cursors.iter().enumerate() {
            let pos = Pos::from_u64(c);
            let end = feeds.shard(shard).acked().ok_or("a shard has not opened")?;
            if pos > end {
                return Err(Rebuild(format!(
                    "shard {shard}'s cursor {pos:?} is past its log's end {end:?}"
                )));
            }
            at.push(pos);
        }
        Indexer::with(engine, cfg, shared, index, fields, at)
    }

    /// Builds the index anew from every shard's log, one shard at a time
    /// (a point holds a file open per segment).
    fn rebuild(
        engine: &Engine,
        cfg: &SearchConfig,
        shared: &Arc<Shared>,
    ) -> Result<Indexer, Rebuild> {
        rookery_storage::threads::background();
        shared.rebuilding(true);
        let started = Instant::now();
        if cfg.dir.exists() {
            std::fs::remove_dir_all(&cfg.dir)?;
        }
        std::fs::create_dir_all(&cfg.dir)?;
        let (schema, fields) = schema::schema();
        let index = create(&cfg.dir, schema)?;
        let feeds = engine.feeds();
        // Held from the acknowledged ends before the points are taken: the
        // feed goes on from each point's end, so nothing after may go.
        let ends: Vec<Option<u32>> = (0..engine.shards())
            .map(|s| feeds.shard(s).acked().map(|p| p.segment))
            .collect();
        feeds.hold_for(READER, Some(ends));
        let mut at = Vec::with_capacity(engine.shards());
        let mut ix_writer = writer(&index, cfg, 2)?;
        let mut records = 0u64;
        for shard in 0..engine.shards() {
            if shared.stopped() {
                return Err(Rebuild("stopped during the rebuild".into()));
            }
            let point = engine.log_point(shard)?;
            let mut failed = None;
            records += point.for_each_record(|_, record| {
                if let Some(change) = schema::change_of(record) {
                    if let Err(e) = apply(&ix_writer, &fields, change) {
                        failed = Some(e);
                    }
                }
                failed.is_none() && !shared.stopped()
            })?;
            if let Some(e) = failed {
                return Err(Rebuild(e.to_string()));
            }
            if shared.stopped() {
                return Err(Rebuild("stopped during the rebuild".into()));
            }
            at.push(point.end());
        }
        commit(&mut ix_writer, engine, &at)?;
        drop(ix_writer);
        rookery_storage::threads::below_shards();
        tracing::info!(
            records,
            ms = started.elapsed().as_millis() as u64,
            "search index: rebuilt from the log"
        );
        shared.rebuilding(false);
        shared
            .rebuilds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Indexer::with(engine, cfg, shared, index, fields, at)
    }

    /// The indexer of an opened index whose last commit is `at`.
    fn with(
        engine: &Engine,
        cfg: &SearchConfig,
        shared: &Arc<Shared>,
        index: Index,
        fields: Fields,
        at: Vec<Pos>,
    ) -> Result<Indexer, Rebuild> {
        let writer = writer(&index, cfg, 1)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let ix = Indexer {
            engine: engine.clone(),
            cfg: cfg.clone(),
            shared: shared.clone(),
            fields,
            index,
            writer,
            reader,
            committed: at.clone(),
            at,
            last_commit: Instant::now(),
            changes: 0,
            unexpunged_since: None,
            expunge_retry: None,
            lows: Default::default(),
            lows_checked: None,
            unsaved: false,
        };
        ix.save_cursors()?;
        ix.publish();
        Ok(ix)
    }

    /// Reads the feeds into the index until stopped (`Ok`) or until the
    /// index turns out to miss something (`Err`). Commits what it has
    /// before either.
    fn tail(&mut self) -> Result<(), Rebuild> {
        let doorbell = self.engine.feeds().doorbell().clone();
        while !self.shared.stopped() {
            let rings = doorbell.rings();
            self.check_retention()?;
            let before = self.at.clone();
            self.read_feeds()?;
            let moved = self.at != before;
            let interval = match self.behind() {
                true => CATCH_UP_COMMIT_INTERVAL.max(self.cfg.commit_interval),
                false => self.cfg.commit_interval,
            };
            let due = interval.saturating_sub(self.last_commit.elapsed());
            if self.dirty() && (due.is_zero() || self.changes >= COMMIT_CHANGES_MAX) {
                self.commit()?;
            }
            if !self.dirty() {
                // Only committed removals are in the segments' files.
                self.expunge()?;
            }
            if !moved {
                let wait = match (self.dirty(), self.expunge_at()) {
                    (true, _) => due,
                    (false, Some(t)) => t.saturating_duration_since(Instant::now()),
                    (false, None) => IDLE_WAIT,
                };
                doorbell.wait(rings, wait.clamp(Duration::from_millis(1), IDLE_WAIT));
            }
        }
        if self.dirty() {
            self.commit()?;
        }
        Ok(())
    }

    /// Whether a shard's feed has a backlog past `CATCH_UP_BACKLOG_BYTES`
    /// (a record or two acknowledged since the read is no backlog).
    fn behind(&self) -> bool {
        let feeds = self.engine.feeds();
        (0..self.at.len())
            .any(|s| feeds.shard(s).backlog_bytes(self.at[s]) > CATCH_UP_BACKLOG_BYTES)
    }

    /// Whether something applied is not yet committed.
    fn dirty(&self) -> bool {
        self.unsaved || self.at != self.committed
    }

    /// One turn over every shard's feed.
    /// A message below its room's retired seqs (read late, from a held
    /// segment) is not indexed.
    fn read_feeds(&mut self) -> Result<(), Rebuild> {
        let feeds = self.engine.feeds().clone();
        let mut applied = 0u64;
        let mut changes = Vec::new();
        for shard in 0..self.at.len() {
            changes.clear();
            let read = feeds
                .shard(shard)
                .read(self.at[shard], READ_BYTES_MAX, |_, record| {
                    changes.extend(schema::change_of(record));
                })?;
            if read.skipped_segments > 0 {
                return Err(Rebuild(format!(
                    "{} segments of shard {shard} went before the index read them",
                    read.skipped_segments
                )));
            }
            for change in changes.drain(..) {
                if let Change::Put { room, seq, .. } = change {
                    if self.lows.get(&room).is_some_and(|&low| seq < low) {
                        continue;
                    }
                }
                if !matches!(
                    change,
                    Change::Put {
                        replaces: false,
                        ..
                    }
                ) {
                    self.unexpunged_since.get_or_insert_with(Instant::now);
                }
                apply(&self.writer, &self.fields, change)?;
                applied += 1;
            }
            self.at[shard] = read.next;
        }
        self.changes += applied;
        Ok(())
    }

    /// Removes from the index every message retention retired since the
    /// last check (a range of keys per room).
    fn check_retention(&mut self) -> Result<(), Rebuild> {
        if self
            .lows_checked
            .is_some_and(|t| t.elapsed() < self.cfg.retention_check_interval)
        {
            return Ok(());
        }
        self.lows_checked = Some(Instant::now());
        for (room, low, _, _) in self.engine.meta().retention_rows()? {
            if self.lows.get(&room).is_some_and(|&l| l >= low) {
                continue;
            }
            let retired = schema::messages(&self.fields, room, ..low);
            self.writer.delete_query(Box::new(retired))?;
            self.unexpunged_since.get_or_insert_with(Instant::now);
            self.lows.insert(room, low);
            self.unsaved = true;
        }
        Ok(())
    }

    /// Commits what was applied with the cursors read up to, then lets
    /// the logs go up to them, and shows it to queries.
    fn commit(&mut self) -> Result<(), Rebuild> {
        commit(&mut self.writer, &self.engine, &self.at)?;
        self.committed = self.at.clone();
        self.unsaved = false;
        self.last_commit = Instant::now();
        self.changes = 0;
        self.save_cursors()?;
        self.reader.reload()?;
        self.publish();
        Ok(())
    }

    /// Rewrites the segments that still hold removed documents' words,
    /// once the oldest removal is `expunge_delay` old: deleted text leaves
    /// the index's files as it leaves the log's.
    fn expunge(&mut self) -> Result<(), Rebuild> {
        if self.expunge_at().is_none_or(|t| t > Instant::now()) {
            return Ok(());
        }
        let with_deletes: Vec<_> = self
            .index
            .searchable_segment_metas()?
            .into_iter()
            .filter(|m| m.has_deletes())
            .map(|m| m.id())
            .collect();
        // Each segment rewritten alone (not all merged into one): the
        // cost is the segments that hold removals, not the whole index.
        // Blocks this thread (never a shard): the feeds wait, held, and
        // are read on after it.
        for id in &with_deletes {
            if let Err(e) = self.writer.merge(std::slice::from_ref(id)).wait() {
                // The merge policy is merging it already: tried again soon.
                tracing::debug!("search index: expunge deferred: {e}");
                self.expunge_retry = Some(Instant::now() + EXPUNGE_RETRY);
                return Ok(());
            }
        }
        if !with_deletes.is_empty() {
            self.writer.garbage_collect_files().wait()?;
            // Unmaps the merged-away files, which frees their space.
            self.reader.reload()?;
            self.publish();
            self.shared
                .expunges
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.unexpunged_since = None;
        self.expunge_retry = None;
        Ok(())
    }

    /// When the next expunge is due, if one is.
    fn expunge_at(&self) -> Option<Instant> {
        let due = self.unexpunged_since? + self.cfg.expunge_delay;
        Some(self.expunge_retry.map_or(due, |r| r.max(due)))
    }

    /// Saves the committed cursors to `meta.redb` and holds the logs from
    /// them.
    fn save_cursors(&self) -> Result<(), Rebuild> {
        let cursors: Vec<(u32, u64)> = self
            .committed
            .iter()
            .enumerate()
            .map(|(s, p)| (s as u32, p.to_u64()))
            .collect();
        self.engine
            .directory()
            .save_feed_cursors(READER, &cursors)?;
        let held = self.committed.iter().map(|p| Some(p.segment)).collect();
        self.engine.feeds().hold_for(READER, Some(held));
        Ok(())
    }

    /// Lets queries see the last reload.
    fn publish(&self) {
        let searcher = self.reader.searcher();
        let docs = searcher.num_docs();
        self.shared.publish(self.reader.clone(), self.fields, docs);
    }
}

/// Applies one change to the writer. An edit removes the message's
/// document first (a removal covers the documents added before it, not
/// after: tantivy orders operations by their stamps).
fn apply(writer: &IndexWriter, fields: &Fields, change: Change) -> tantivy::Result<()> {
    match change {
        Change::Put {
            room,
            seq,
            text,
            replaces,
        } => {
            if replaces {
                writer.delete_query(Box::new(schema::message(fields, room, seq)))?;
            }
            writer.add_document(schema::document(fields, room, seq, &text))?;
        }
        Change::Remove { room, seq } => {
            writer.delete_query(Box::new(schema::message(fields, room, seq)))?;
        }
    }
    Ok(())
}

/// Commits with `at` as the payload's cursors (blocks for the segments'
/// fsyncs and the meta file's).
fn commit(writer: &mut IndexWriter, engine: &Engine, at: &[Pos]) -> Result<(), Rebuild> {
    let payload = Payload {
        format: PAYLOAD_FORMAT,
        schema: SCHEMA_VERSION,
        origin: engine.directory().origin(),
        cursors: at.iter().map(|p| p.to_u64()).collect(),
    };
    let mut prepared = writer.prepare_commit()?;
    prepared.set_payload(&serde_json::to_string(&payload)?);
    prepared.commit()?;
    Ok(())
}

/// A new, empty index in `dir`.
fn create(dir: &Path, schema: Schema) -> Result<Index, Rebuild> {
    let settings = IndexSettings {
        // No stored fields: the doc store's compressor thread has nothing
        // to do.
        docstore_compress_dedicated_thread: false,
        ..IndexSettings::default()
    };
    let index = Index::builder()
        .schema(schema)
        .settings(settings)
        .create_in_dir(dir)?;
    Ok(index)
}

/// The index's writer: `workers` indexing threads (two while rebuilding,
/// one while tailing) and one merge thread, all started by this thread
/// and so as far below the shards as it is. Registers the analyzer the
/// body field names first (the only user of it: queries cut their words
/// with `schema::terms`).
fn writer(index: &Index, cfg: &SearchConfig, workers: usize) -> Result<IndexWriter, Rebuild> {
    schema::register(index);
    let options = IndexWriterOptions::builder()
        .memory_budget_per_thread(cfg.writer_memory_bytes_max / workers)
        .num_worker_threads(workers)
        .num_merge_threads(1)
        .build();
    let writer = index.writer_with_options(options)?;
    let mut policy = LogMergePolicy::default();
    // Twice tantivy's 8 segments of a size before they merge: a document is
    // rewritten fewer times on its way into a large segment (merges were
    // half of what indexing cost), for a few more segments per query.
    policy.set_min_num_segments(16);
    // Segments a fifth deleted are merged anyway, not only at expunges.
    policy.set_del_docs_ratio_before_merge(0.2);
    writer.set_merge_policy(Box::new(policy));
    Ok(writer)
}
