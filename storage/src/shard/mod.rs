//! One shard's store: sequencing, group commit, the in-memory index tail,
//! history reads, retention and recovery.
//!
//! The submodules split one type, [`ShardStore`], by concern:
//! `write` (the append side: sequencing, idempotency, the queue),
//! `commit` (the committer task: batches, sync, apply, checkpoints),
//! `read` (history: index entries, mappings, prefetch, zero-copy records),
//! `recover` (replay at open) and `retention`.
//!
//! A [`ShardStore`] lives on one glommio executor and is `!Send`: every call
//! runs on the shard's own thread, so the state needs no locks. Appends are
//! queued in memory; a single committer task writes each queue as one batch
//! (one write + one `fdatasync` in `sync` mode) and then resolves every
//! append of the batch at once.
//!
//! Invariants:
//! - per room, seqs are assigned densely at enqueue, and the log holds them
//!   in increasing order (one queue, written in order);
//! - an append resolves only after its batch is durable (per the mode), and
//!   only then does its record become visible to history reads;
//! - every durable message has its index entry in exactly one of: the room's
//!   open chunk (memory), the chunks sent to the index thread but not yet
//!   committed (`pending_chunks`), or redb;
//! - the checkpoint sent to the index only covers synced log bytes.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memmap2::Mmap;
use redb::Database;
// Keys are room ids and segment numbers the server assigns, not input an
// attacker chooses: Fx hashing (several times cheaper than SipHash on the
// per-record paths: apply, replay) is safe here.
use rustc_hash::{FxHashMap, FxHashSet};

use crate::chunk::{self, chunk_of, idem_hash, Chunk, Entry};
use crate::config::{Durability, StorageConfig};
use crate::error::{Error, Result};
use crate::feed::{LogFeed, LogFeeds};
use crate::index::{self, Batch, Committed, Op, RoomRow};
use crate::log::{sync_dir, LogWriter, Sealed};
use crate::meta::Meta;
use crate::record::{
    access_record, check_frame, encode_frame, ArchivedRecord, Delete, Edit, Message, React, Record,
    Reply, FRAME_HEADER_BYTES,
};
use crate::segment::{self, Header, Pos, ScanEnd, HEADER_BYTES};
use crate::signal::{BatchSignal, Notify};

mod commit;
mod compact;
mod react;
mod read;
mod recover;
mod retention;
mod write;

pub use compact::CompactionReport;
pub use react::{
    Reaction, EMOJI_BYTES_MAX, REACTIONS_PER_MESSAGE_MAX, REACTIONS_PER_USER_PER_MESSAGE_MAX,
};
pub use read::{HistoryItem, Page, RecordRef, ThreadPage};
pub use write::{CONTENT_TYPE_BYTES_MAX, FILES_PER_MESSAGE_MAX};

/// Result of appending a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// A new message was stored with this seq and timestamp.
    New {
        /// The message's seq.
        seq: u64,
        /// The room-monotonic timestamp stored.
        ts_ms: u64,
    },
    /// `(sender, client_id)` was seen within the idempotency window: nothing
    /// was stored and this is the original message's seq and timestamp.
    Duplicate {
        /// The original seq.
        seq: u64,
        /// The original timestamp.
        ts_ms: u64,
    },
}

impl Appended {
    /// The seq, new or original.
    pub fn seq(&self) -> u64 {
        match self {
            Appended::New { seq, .. } | Appended::Duplicate { seq, .. } => *seq,
        }
    }
}

/// Which end of a range a history page is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The highest seqs of the range, highest first.
    NewestFirst,
    /// The lowest seqs of the range, lowest first.
    OldestFirst,
}

/// A history request: messages with `after < seq < before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Exclusive lower bound (None: from the oldest live message).
    pub after: Option<u64>,
    /// Exclusive upper bound (None: up to the newest message).
    pub before: Option<u64>,
    /// Page length (at least 1; capped by the caller's limits).
    pub limit: usize,
    /// Which end of the range the page comes from, and its order.
    pub order: Order,
}

impl Cursor {
    /// The newest `limit` messages, newest first.
    pub fn latest(limit: usize) -> Cursor {
        Cursor {
            after: None,
            before: None,
            limit,
            order: Order::NewestFirst,
        }
    }
    /// The `limit` messages just before `seq`, newest first.
    pub fn before(seq: u64, limit: usize) -> Cursor {
        Cursor {
            after: None,
            before: Some(seq),
            limit,
            order: Order::NewestFirst,
        }
    }
    /// The `limit` messages just after `seq`, oldest first.
    pub fn after(seq: u64, limit: usize) -> Cursor {
        Cursor {
            after: Some(seq),
            before: None,
            limit,
            order: Order::OldestFirst,
        }
    }
}

/// Retention limits of a room (`None` = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Keep at most this many of the newest messages.
    pub max_messages: Option<u64>,
    /// Keep messages younger than this many milliseconds.
    pub max_age_ms: Option<u64>,
}

/// What a retention pass did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetentionReport {
    /// Messages that became unreachable.
    pub messages_expired: u64,
    /// Segment files deleted.
    pub segments_deleted: u64,
    /// Bytes of segment files deleted.
    pub bytes_reclaimed: u64,
    /// Uploads only the retired messages held, removed from `meta.redb`:
    /// their files are the caller's to remove.
    pub uploads_freed: Vec<u128>,
}

/// What retiring a deleted room's messages did
/// ([`ShardStore::retire_room`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Retired {
    /// Messages retired.
    pub messages: u64,
    /// Uploads only those messages held, removed from `meta.redb`: their
    /// files are the caller's to remove.
    pub uploads_freed: Vec<u128>,
}

/// Counters of a shard's store (plain, read on the shard).
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardStats {
    /// Records made durable.
    pub records: u64,
    /// Commit batches written.
    pub batches: u64,
    /// `fdatasync` calls on the log.
    pub syncs: u64,
    /// Frame bytes written.
    pub bytes: u64,
    /// Index batches sent to the index thread.
    pub index_batches: u64,
    /// Index chunks read from redb by history (not in memory).
    pub index_chunk_reads: u64,
    /// Records replayed from the log at open.
    pub replayed: u64,
    /// Bytes cut from a torn tail at open.
    pub torn_bytes: u64,
    /// Records made durable by each log `fdatasync`, as counts per bucket:
    /// `sync_batch_records[i]` counts syncs that covered at most
    /// `SYNC_BATCH_BOUNDS[i]` records (the last bucket: more than all).
    pub sync_batch_records: [u64; SYNC_BATCH_BUCKETS],
    /// Records written since the last `fdatasync` (not yet in a bucket).
    pub unsynced_records: u64,
    /// Runs of segments compacted.
    pub compactions: u64,
}

/// Decoded sealed chunks a shard keeps for reads (each at most 64 entries
/// of 24 bytes: about 1.6 MiB in all).
pub(super) const CHUNK_CACHE_LEN_MAX: usize = 8192;

/// Upper bounds of the fsync batch size buckets, in records.
pub const SYNC_BATCH_BOUNDS: [u64; 7] = [1, 4, 16, 64, 256, 1024, 4096];
/// Buckets of [`ShardStats::sync_batch_records`] (one over the last bound).
pub const SYNC_BATCH_BUCKETS: usize = SYNC_BATCH_BOUNDS.len() + 1;

impl ShardStats {
    /// Adds another shard's counters into these.
    pub fn add(&mut self, o: &ShardStats) {
        self.records += o.records;
        self.batches += o.batches;
        self.syncs += o.syncs;
        self.bytes += o.bytes;
        self.index_batches += o.index_batches;
        self.index_chunk_reads += o.index_chunk_reads;
        self.replayed += o.replayed;
        self.torn_bytes += o.torn_bytes;
        for (a, b) in self.sync_batch_records.iter_mut().zip(o.sync_batch_records) {
            *a += b;
        }
        self.unsynced_records += o.unsynced_records;
        self.compactions += o.compactions;
    }

    /// Syncs that made records durable: the count of the
    /// `sync_batch_records` histogram (checkpoint and seal syncs, which
    /// carry no records, are in `syncs` only).
    pub fn record_syncs(&self) -> u64 {
        self.sync_batch_records.iter().sum()
    }

    /// Records made durable by those syncs: the sum of the histogram
    /// (records written since the last sync are not in it yet).
    pub fn synced_records(&self) -> u64 {
        self.records.saturating_sub(self.unsynced_records)
    }

    /// Puts the records written since the last sync into their bucket.
    pub(crate) fn synced(&mut self) {
        if self.unsynced_records == 0 {
            return;
        }
        let n = std::mem::take(&mut self.unsynced_records);
        let i = SYNC_BATCH_BOUNDS
            .iter()
            .position(|&b| n <= b)
            .unwrap_or(SYNC_BATCH_BOUNDS.len());
        self.sync_batch_records[i] += 1;
    }
}

/// A room's live state on its shard.
struct Room {
    next_seq: u64,
    durable_seq: u64,
    low_seq: u64,
    keep_messages: u64,
    keep_age_ms: u64,
    last_ts_ms: u64,
    /// The room's open (partial) chunk; shared with readers, copied on
    /// write only while one holds it.
    open: Rc<Chunk>,
    idem: Option<IdemWindow>,
    /// Whether redb may hold edit rows of the room (`None`: not looked
    /// yet): a page of a room that has none reads no edits.
    has_edits: Option<bool>,
    /// Whether redb may hold thread rows of the room (`None`: not looked
    /// yet): a page of a room without replies counts none.
    has_threads: Option<bool>,
    /// Whether redb may hold reactions of the room (`None`: not looked
    /// yet).
    has_reactions: Option<bool>,
}

impl Room {
    fn new(first_seq: u64) -> Room {
        Room {
            next_seq: first_seq,
            durable_seq: first_seq - 1,
            low_seq: first_seq,
            keep_messages: 0,
            keep_age_ms: 0,
            last_ts_ms: 0,
            open: Rc::new(Chunk::new(chunk_of(first_seq))),
            idem: None,
            has_edits: None,
            has_threads: None,
            has_reactions: None,
        }
    }
    fn row(&self) -> RoomRow {
        RoomRow {
            last_seq: self.durable_seq,
            low_seq: self.low_seq,
            keep_messages: self.keep_messages,
            keep_age_ms: self.keep_age_ms,
            last_ts_ms: self.last_ts_ms,
        }
    }
}

/// The idempotency keys of a room's last N messages, by hash.
#[derive(Default)]
struct IdemWindow {
    /// Keyed by a hash already: hashed again cheaply (at most `cap` keys).
    by_hash: rustc_hash::FxHashMap<u64, u64>,
    order: VecDeque<(u64, u64)>,
}

impl IdemWindow {
    /// Remembers `hash` for `seq` and forgets keys of messages that are no
    /// longer among the room's last `cap` messages.
    fn insert(&mut self, hash: u64, seq: u64, cap: usize) {
        self.by_hash.insert(hash, seq);
        self.order.push_back((hash, seq));
        while self
            .order
            .front()
            .is_some_and(|&(_, s)| s + cap as u64 <= seq)
        {
            let (h, s) = self.order.pop_front().expect("non-empty");
            if self.by_hash.get(&h) == Some(&s) {
                self.by_hash.remove(&h);
            }
        }
    }

    /// The seq remembered for `hash`, if its message is still among the
    /// room's last `cap` messages (`last` being the newest seq).
    fn get(&self, hash: u64, last: u64, cap: usize) -> Option<u64> {
        self.by_hash
            .get(&hash)
            .copied()
            .filter(|&s| s + cap as u64 > last)
    }
}

/// Per-segment summary: highest seq of each room it holds, its length once
/// sealed, and for a compacted segment the run of the log it replaced.
#[derive(Default)]
struct SegmentInfo {
    rooms: FxHashMap<u64, u64>,
    sealed_end: Option<u32>,
    covers: Option<(u32, u32)>,
}

/// A record waiting in the commit queue.
struct Queued {
    room: u64,
    seq: u64,
    len: u32,
    kind: QueuedKind,
}

#[derive(Clone, Copy)]
enum QueuedKind {
    /// A message; `thread` is the thread a reply joins (0: not a reply).
    Message {
        idem: u64,
        ts_ms: u64,
        thread: u64,
    },
    /// A reaction change, kept in `queued_reactions` under `slot`.
    React {
        slot: u64,
    },
    Edit {
        deleted: bool,
    },
}

struct Queue {
    frames: Vec<u8>,
    items: Vec<Queued>,
    signal: Rc<BatchSignal>,
    inflight: Option<Rc<BatchSignal>>,
}

impl Queue {
    fn new() -> Queue {
        Queue {
            frames: Vec::new(),
            items: Vec::new(),
            signal: Rc::new(BatchSignal::default()),
            inflight: None,
        }
    }
}

pub(super) struct State {
    rooms: FxHashMap<u64, Room>,
    segments: BTreeMap<u32, SegmentInfo>,
    active: u32,
    /// Durable checkpoint (acknowledged by the index thread).
    checkpoint: Pos,
    maps: HashMap<u32, Rc<Mmap>>,
    readers: HashMap<u32, Rc<glommio::io::BufferedFile>>,
    pending_chunks: FxHashMap<(u64, u64), (u64, Rc<Chunk>)>,
    /// Sealed chunks read from redb, decoded (a hot page then reads no
    /// redb row); at most [`CHUNK_CACHE_LEN_MAX`]. A chunk sent to the
    /// index thread leaves it.
    chunk_cache: FxHashMap<(u64, u64), Rc<Chunk>>,
    pending_edits: BTreeMap<(u64, u64), (u64, u64, bool)>,
    /// Thread rows `(room, thread, seq)` sent to the index thread and not
    /// yet committed, with their ticket.
    pending_threads: BTreeMap<(u64, u64, u64), u64>,
    /// Durable reaction changes not yet committed, the latest per key, with
    /// their ticket.
    pending_reactions: BTreeMap<react::ReactKey, (u64, bool)>,
    /// Reaction changes queued and not yet durable, by `(room, seq, slot)`
    /// (slots in the order the changes were made).
    queued_reactions: BTreeMap<(u64, u64, u64), (react::ReactKey, bool)>,
    next_react_slot: u64,
    ops: Vec<Op>,
    ops_records: usize,
    next_ticket: u64,
    acked_ticket: u64,
    checkpoint_tickets: VecDeque<(u64, Pos)>,
    lag_records: usize,
    dirty_rooms: FxHashSet<u64>,
    dirty_segments: FxHashSet<(u32, u64)>,
    checkpoint_requested: bool,
    /// Seal the active segment at the next checkpoint.
    roll_requested: bool,
    /// Segments holding text no history shows any more (a deleted
    /// message's), to be rewritten.
    scrub: BTreeMap<u32, compact::Scrub>,
    /// Notes taken so far (orders notes against a rewrite's snapshot).
    notes: u64,
    /// Run files a compaction switched away from, and the compacted
    /// segment that replaced them (until the run's files are deleted).
    moved: HashMap<u32, u32>,
    /// Id of the next compacted segment.
    next_compacted: u32,
    closing: bool,
    failed: Option<String>,
    stats: ShardStats,
}

impl State {
    /// Records that `segment` holds a record of `room` about `seq`, so the
    /// segment stays while that seq is live (see retention).
    fn note_in_segment(&mut self, segment: u32, room: u64, seq: u64) {
        let max = self
            .segments
            .entry(segment)
            .or_default()
            .rooms
            .entry(room)
            .or_insert(0);
        *max = (*max).max(seq);
        self.dirty_segments.insert((segment, room));
    }
}

struct Inner {
    shard: u32,
    cfg: StorageConfig,
    meta: Option<Arc<Meta>>,
    log_dir: PathBuf,
    db: Arc<Database>,
    st: RefCell<State>,
    queue: RefCell<Queue>,
    wake_committer: Notify,
    index_progress: Notify,
    index_tx: RefCell<Option<flume::Sender<Batch>>>,
    index_thread: RefCell<Option<std::thread::JoinHandle<()>>>,
    tasks: RefCell<Vec<glommio::task::JoinHandle<()>>>,
    closed: Cell<bool>,
    /// Where readers outside the shard learn what is acknowledged, and
    /// what they hold (see `feed.rs`).
    feeds: Option<LogFeeds>,
    /// A compaction or retention pass holds the maintenance turn.
    maintenance: Cell<bool>,
    maintenance_done: Notify,
}

/// A shard's storage handle. Cheap to clone; `!Send` (lives on its shard).
#[derive(Clone)]
pub struct ShardStore {
    inner: Rc<Inner>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ShardStore {
    /// Opens shard `shard` of a data directory, recovering from its log.
    ///
    /// Must run on a glommio executor; the returned store stays on it.
    pub(crate) async fn open(
        cfg: &StorageConfig,
        shard: u32,
        meta: Option<Arc<Meta>>,
        feeds: Option<LogFeeds>,
    ) -> Result<ShardStore> {
        let shard_dir = cfg.data_dir.join(format!("shard-{shard}"));
        let log_dir = shard_dir.join("log");
        std::fs::create_dir_all(&log_dir).map_err(|e| Error::io(&log_dir, e))?;
        crate::log::keep_off_poll_ring(&log_dir).await?;
        let db = Arc::new(index::open_db(
            &shard_dir.join("index.redb"),
            cfg.index_cache_bytes,
        )?);
        let loaded = index::load(&db)?;
        let mut st = State {
            rooms: FxHashMap::default(),
            segments: BTreeMap::new(),
            active: 0,
            checkpoint: Pos::from_u64(loaded.checkpoint),
            maps: HashMap::new(),
            readers: HashMap::new(),
            pending_chunks: FxHashMap::default(),
            chunk_cache: FxHashMap::default(),
            pending_edits: BTreeMap::new(),
            pending_threads: BTreeMap::new(),
            pending_reactions: BTreeMap::new(),
            queued_reactions: BTreeMap::new(),
            next_react_slot: 0,
            ops: Vec::new(),
            ops_records: 0,
            next_ticket: 1,
            acked_ticket: 0,
            checkpoint_tickets: VecDeque::new(),
            lag_records: 0,
            dirty_rooms: FxHashSet::default(),
            dirty_segments: FxHashSet::default(),
            checkpoint_requested: false,
            roll_requested: false,
            scrub: loaded
                .scrub
                .iter()
                .map(|&(segment, since_ms)| (segment, compact::Scrub::loaded(since_ms)))
                .collect(),
            notes: 0,
            moved: HashMap::new(),
            next_compacted: 0,
            closing: false,
            failed: None,
            stats: ShardStats::default(),
        };
        for (id, row) in &loaded.rooms {
            let mut room = Room::new(row.low_seq.max(1));
            room.durable_seq = row.last_seq;
            room.next_seq = row.last_seq + 1;
            room.keep_messages = row.keep_messages;
            room.keep_age_ms = row.keep_age_ms;
            room.last_ts_ms = row.last_ts_ms;
            if row.last_seq > 0 {
                let no = chunk_of(row.last_seq);
                let mut open = match index::read_chunk(&db, *id, no)? {
                    Some(bytes) => Chunk::decode(no, &bytes)?,
                    None => Chunk::new(no),
                };
                open.truncate_after(row.last_seq);
                room.open = Rc::new(open);
            }
            st.rooms.insert(*id, room);
        }
        let ids = segment::list(&log_dir)?;
        st.next_compacted = compact::first_free_compacted(
            &ids.iter()
                .chain(&loaded.compacted)
                .copied()
                .collect::<Vec<_>>(),
        );
        let ids = recover::settle_compaction(&log_dir, &ids, &loaded, &mut st)?;
        for (seg, room, max_seq) in loaded.segments {
            st.segments
                .entry(seg)
                .or_default()
                .rooms
                .insert(room, max_seq);
        }
        if let Some(meta) = &meta {
            recover::apply_retention_rows(&mut st, meta, shard, cfg.shards)?;
        }
        let (index_tx, done_rx, thread) = index::spawn(shard, db.clone(), meta.clone())?;
        let inner = Rc::new(Inner {
            shard,
            cfg: cfg.clone(),
            meta,
            log_dir,
            db,
            st: RefCell::new(st),
            queue: RefCell::new(Queue::new()),
            wake_committer: Notify::default(),
            index_progress: Notify::default(),
            index_tx: RefCell::new(Some(index_tx)),
            index_thread: RefCell::new(Some(thread)),
            tasks: RefCell::new(Vec::new()),
            closed: Cell::new(false),
            feeds,
            maintenance: Cell::new(false),
            maintenance_done: Notify::default(),
        });
        let store = ShardStore { inner };
        if let Some(feed) = store.feed() {
            feed.opened(&store.inner.log_dir);
        }
        let ack_task = glommio::spawn_local(store.clone().index_acks(done_rx)).detach();
        store.inner.tasks.borrow_mut().push(ack_task);
        let recovered = store.recover(&ids).await;
        let writer = match recovered {
            Ok(w) => w,
            Err(e) => {
                store.stop_index().await;
                return Err(e);
            }
        };
        let committer = glommio::spawn_local(store.clone().committer(writer)).detach();
        store.inner.tasks.borrow_mut().push(committer);
        // Not awaited at close: it holds no strong reference and ends at its
        // next tick once the shard is closing or gone.
        glommio::spawn_local(commit::checkpoint_ticker(Rc::downgrade(&store.inner))).detach();
        glommio::spawn_local(compact::compaction_ticker(Rc::downgrade(&store.inner))).detach();
        // Make the recovered state durable before serving.
        store.checkpoint_now().await?;
        Ok(store)
    }

    /// This shard's feed, if readers outside the shard may follow it.
    fn feed(&self) -> Option<&LogFeed> {
        let feeds = self.inner.feeds.as_ref()?;
        Some(feeds.shard(self.inner.shard as usize))
    }

    /// The point a backup copies this shard up to: every record whose
    /// append was acknowledged so far, nothing after it (see
    /// `crate::backup`).
    ///
    /// Runs without yielding, so the live segments it opens are one
    /// consistent log: the acknowledged end and the rooms' last seqs are
    /// published together after each batch, and a compaction switches its
    /// run for the compacted segment in one step (the run's files are
    /// deleted later; an open file stays readable after its deletion).
    ///
    /// Errors: `Closed` before the shard's committer started or after it
    /// closed, `Failed` after a failure, `Io` when a segment cannot be
    /// opened.
    pub fn backup_point(&self) -> Result<crate::backup::ShardPoint> {
        let end = self.feed().and_then(|f| f.acked()).ok_or(Error::Closed)?;
        let st = self.inner.st.borrow();
        if let Some(why) = &st.failed {
            return Err(Error::Failed(why.clone()));
        }
        if st.closing {
            return Err(Error::Closed);
        }
        let mut files = Vec::with_capacity(st.segments.len());
        for (&id, info) in &st.segments {
            let len = if id == end.segment {
                end.offset as u64
            } else if let Some(sealed) = info.sealed_end {
                sealed as u64
            } else if !segment::is_compacted(id) && id > end.segment {
                continue; // begun after the point: nothing acknowledged in it
            } else {
                return Err(Error::Failed(format!(
                    "segment {id} is neither sealed nor the acknowledged end's ({end:?})"
                )));
            };
            let path = segment::path(&self.inner.log_dir, id);
            files.push(crate::backup::PointFile::open(id, len, &path)?);
        }
        let last_seqs = st
            .rooms
            .iter()
            .map(|(&room, r)| (room, r.durable_seq))
            .collect();
        Ok(crate::backup::ShardPoint::new(
            self.inner.shard,
            end,
            files,
            last_seqs,
        ))
    }

    /// Whether a reader outside the shard still needs `segment` as it is.
    fn held(&self, segment: u32) -> bool {
        self.feed().is_some_and(|f| f.holds(segment))
    }

    /// The shard number.
    pub fn shard(&self) -> u32 {
        self.inner.shard
    }

    /// Counters of this shard.
    pub fn stats(&self) -> ShardStats {
        self.inner.st.borrow().stats
    }

    /// The last durable seq of a room (0 if the room has no message).
    pub fn last_seq(&self, room: u64) -> u64 {
        self.inner
            .st
            .borrow()
            .rooms
            .get(&room)
            .map_or(0, |r| r.durable_seq)
    }

    /// The lowest live seq of a room (older ones were removed by retention).
    pub fn low_seq(&self, room: u64) -> u64 {
        self.inner
            .st
            .borrow()
            .rooms
            .get(&room)
            .map_or(1, |r| r.low_seq)
    }

    /// Rooms that have messages on this shard.
    pub fn rooms(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.inner.st.borrow().rooms.keys().copied().collect();
        v.sort_unstable();
        v
    }

    fn check_open(&self) -> Result<()> {
        let st = self.inner.st.borrow();
        if let Some(f) = &st.failed {
            return Err(Error::Failed(f.clone()));
        }
        if st.closing {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Writes a checkpoint now and waits until the index made it durable.
    pub async fn checkpoint_now(&self) -> Result<()> {
        let target = {
            let mut st = self.inner.st.borrow_mut();
            st.checkpoint_requested = true;
            st.next_ticket
        };
        self.inner.wake_committer.notify();
        loop {
            {
                let st = self.inner.st.borrow();
                if let Some(f) = &st.failed {
                    return Err(Error::Failed(f.clone()));
                }
                if st.acked_ticket >= target && !st.checkpoint_requested {
                    return Ok(());
                }
            }
            self.inner.index_progress.notified().await;
        }
    }

    /// Stops intake, writes what is queued, seals the log, writes a final
    /// checkpoint and stops the index thread. Idempotent.
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.replace(true) {
            return Ok(());
        }
        // A compaction in progress finishes its switch first.
        let _turn = self.maintenance().await;
        let result = self.checkpoint_now().await;
        self.inner.st.borrow_mut().closing = true;
        self.inner.wake_committer.notify();
        let tasks: Vec<_> = self.inner.tasks.borrow_mut().drain(..).collect();
        let mut tasks = tasks.into_iter();
        let ack_task = tasks.next();
        for t in tasks {
            t.await;
        }
        self.stop_index().await;
        if let Some(t) = ack_task {
            t.await;
        }
        result
    }

    async fn stop_index(&self) {
        self.inner.index_tx.borrow_mut().take();
        let handle = self.inner.index_thread.borrow_mut().take();
        if let Some(handle) = handle {
            let _ = glommio::executor()
                .spawn_blocking(move || handle.join())
                .await;
        }
    }
}
