//! One shard's store: sequencing, group commit, the in-memory index tail,
//! history reads, retention and recovery.
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
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use memmap2::Mmap;
use redb::Database;

use crate::chunk::{self, chunk_of, idem_hash, Chunk, Entry};
use crate::config::{Durability, StorageConfig};
use crate::error::{Error, Result};
use crate::index::{self, Batch, Committed, Op, RoomRow};
use crate::log::{sync_dir, LogWriter, Sealed};
use crate::meta::Meta;
use crate::record::{
    access_record, check_frame, encode_frame, ArchivedRecord, Delete, Edit, Message, Record,
    FRAME_HEADER_BYTES,
};
use crate::segment::{self, Header, Pos, ScanEnd, HEADER_BYTES};
use crate::signal::{BatchSignal, Notify};

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

/// A record read in place from a mapped segment: no copy, no deserialization.
#[derive(Clone)]
pub struct RecordRef {
    map: Rc<Mmap>,
    payload: u32,
    len: u32,
}

impl RecordRef {
    /// Checks the frame at `offset` of `map` and validates its archive.
    fn read(map: &Rc<Mmap>, segment: u32, offset: u32) -> Result<RecordRef> {
        let start = offset as usize;
        let bytes = map
            .get(start..)
            .ok_or_else(|| Error::corrupt(segment, offset, "index points past the segment"))?;
        let (payload, _) =
            check_frame(bytes).map_err(|e| Error::corrupt(segment, offset, e.to_string()))?;
        access_record(payload).map_err(|e| Error::corrupt(segment, offset, e.to_string()))?;
        Ok(RecordRef {
            map: map.clone(),
            payload: offset + FRAME_HEADER_BYTES as u32,
            len: payload.len() as u32,
        })
    }

    /// The archived record.
    pub fn record(&self) -> &ArchivedRecord {
        let bytes = &self.map[self.payload as usize..(self.payload + self.len) as usize];
        // SAFETY: `read` checked the frame's CRC and validated these exact
        // bytes with `rkyv::access`; durable log bytes are never rewritten
        // with different content, and the mapping lives as long as `self`.
        unsafe { rkyv::access_unchecked::<ArchivedRecord>(bytes) }
    }
}

impl std::fmt::Debug for RecordRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.record().fmt(f)
    }
}

/// A message as history shows it: the original record and its latest edit
/// or delete, if any.
#[derive(Debug, Clone)]
pub struct HistoryItem {
    /// The message record.
    pub message: RecordRef,
    /// The latest edit or delete record of this message.
    pub latest_edit: Option<RecordRef>,
}

impl HistoryItem {
    fn msg(&self) -> &crate::record::ArchivedMessage {
        match self.message.record() {
            ArchivedRecord::Message(m) => m,
            _ => unreachable!("history items are built from message records only"),
        }
    }
    /// The message's seq.
    pub fn seq(&self) -> u64 {
        self.msg().seq.to_native()
    }
    /// The author.
    pub fn sender(&self) -> u64 {
        self.msg().sender.to_native()
    }
    /// When it was posted.
    pub fn ts_ms(&self) -> u64 {
        self.msg().ts_ms.to_native()
    }
    /// The client's idempotency key.
    pub fn client_id(&self) -> &str {
        self.msg().client_id.as_str()
    }
    /// The body with edits applied; `None` when deleted.
    pub fn body(&self) -> Option<&str> {
        match self.latest_edit.as_ref().map(RecordRef::record) {
            Some(ArchivedRecord::Delete(_)) => None,
            Some(ArchivedRecord::Edit(e)) => Some(e.body.as_str()),
            _ => Some(self.msg().body.as_str()),
        }
    }
    /// True when the message was edited (and not deleted).
    pub fn edited(&self) -> bool {
        matches!(
            self.latest_edit.as_ref().map(RecordRef::record),
            Some(ArchivedRecord::Edit(_))
        )
    }
    /// True when the message was deleted.
    pub fn deleted(&self) -> bool {
        self.body().is_none()
    }
}

/// One page of history.
#[derive(Debug, Clone)]
pub struct Page {
    /// The messages, in the cursor's order.
    pub items: Vec<HistoryItem>,
    /// The cursor for the next page in the same direction, if more exist.
    pub next: Option<Cursor>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionReport {
    /// Messages that became unreachable.
    pub messages_expired: u64,
    /// Segment files deleted.
    pub segments_deleted: u64,
    /// Bytes of segment files deleted.
    pub bytes_reclaimed: u64,
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
}

/// A room's live state on its shard.
struct Room {
    next_seq: u64,
    durable_seq: u64,
    low_seq: u64,
    keep_messages: u64,
    keep_age_ms: u64,
    last_ts_ms: u64,
    open: Chunk,
    idem: Option<IdemWindow>,
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
            open: Chunk::new(chunk_of(first_seq)),
            idem: None,
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
    by_hash: HashMap<u64, u64>,
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

/// Per-segment summary: highest seq of each room it holds, and its length
/// once sealed.
#[derive(Default)]
struct SegmentInfo {
    rooms: HashMap<u64, u64>,
    sealed_end: Option<u32>,
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
    Message { idem: u64, ts_ms: u64 },
    Edit { deleted: bool },
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

struct State {
    rooms: HashMap<u64, Room>,
    segments: BTreeMap<u32, SegmentInfo>,
    active: u32,
    /// Durable checkpoint (acknowledged by the index thread).
    checkpoint: Pos,
    maps: HashMap<u32, Rc<Mmap>>,
    readers: HashMap<u32, Rc<glommio::io::BufferedFile>>,
    pending_chunks: HashMap<(u64, u64), (u64, Rc<Chunk>)>,
    pending_edits: BTreeMap<(u64, u64), (u64, u64, bool)>,
    ops: Vec<Op>,
    ops_records: usize,
    next_ticket: u64,
    acked_ticket: u64,
    checkpoint_tickets: VecDeque<(u64, Pos)>,
    lag_records: usize,
    dirty_rooms: HashSet<u64>,
    dirty_segments: HashSet<(u32, u64)>,
    checkpoint_requested: bool,
    closing: bool,
    failed: Option<String>,
    stats: ShardStats,
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
}

/// A shard's storage handle. Cheap to clone; `!Send` (lives on its shard).
#[derive(Clone)]
pub struct ShardStore {
    inner: Rc<Inner>,
}

const PAGE: usize = 4096;
/// Prefetch covers this many bytes from each record's start.
const RECORD_BYTES_TYPICAL: usize = 512;

/// Reorders a batch so each room's records are adjacent (stable: a room's
/// records keep their order, so seqs stay increasing in the log). A later
/// history page of the room then touches fewer pages of the log: the log is
/// ordered by time, and this clusters it by room at no extra I/O.
fn cluster_by_room(frames: Vec<u8>, items: Vec<Queued>) -> (Vec<u8>, Vec<Queued>) {
    if items.windows(2).all(|w| w[0].room <= w[1].room) {
        return (frames, items);
    }
    let mut starts = Vec::with_capacity(items.len());
    let mut off = 0usize;
    for q in &items {
        starts.push(off);
        off += q.len as usize;
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items[i].room);
    let mut out = Vec::with_capacity(frames.len());
    for &i in &order {
        out.extend_from_slice(&frames[starts[i]..starts[i] + items[i].len as usize]);
    }
    let mut slots: Vec<Option<Queued>> = items.into_iter().map(Some).collect();
    let items = order
        .iter()
        .map(|&i| slots[i].take().expect("each index once"))
        .collect();
    (out, items)
}

/// The entries and edits a history page needs, and its bounds.
struct Plan {
    entries: Vec<(u64, Entry)>,
    edits: HashMap<u64, u64>,
    lo: u64,
    hi: u64,
    lo_page: u64,
    hi_page: u64,
}

/// Offsets of packed positions, grouped by segment.
fn by_segment(positions: &[u64]) -> BTreeMap<u32, Vec<usize>> {
    let mut out: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for &p in positions {
        let pos = Pos::from_u64(p);
        out.entry(pos.segment)
            .or_default()
            .push(pos.offset as usize);
    }
    out
}

/// The pages holding `offsets` (and the next [`RECORD_BYTES_TYPICAL`] of
/// each record: a longer record faults its last page in on read) that are
/// not resident in the page cache.
fn cold_pages(map: &Mmap, offsets: &[usize]) -> Vec<usize> {
    let (Some(&lo), Some(&hi)) = (offsets.iter().min(), offsets.iter().max()) else {
        return Vec::new();
    };
    if map.is_empty() || lo >= map.len() {
        return Vec::new();
    }
    let first = lo / PAGE;
    let last = (hi + RECORD_BYTES_TYPICAL).min(map.len() - 1) / PAGE;
    let mut resident = vec![0u8; last - first + 1];
    // SAFETY: the range starts page-aligned inside the mapping and ends at or
    // before its last byte; `resident` has one byte per page of the range.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr().add(first * PAGE) as *mut libc::c_void,
            (last - first + 1) * PAGE,
            resident.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Vec::new(); // advisory only
    }
    let mut pages: Vec<usize> = offsets
        .iter()
        .flat_map(|&o| (o / PAGE)..=((o + RECORD_BYTES_TYPICAL).min(map.len() - 1) / PAGE))
        .filter(|p| resident[p - first] & 1 == 0)
        .collect();
    pages.sort_unstable();
    pages.dedup();
    pages
}

/// Applies the durable retention rows of `meta` to this shard's rooms: the
/// index may be older than them, or gone.
fn apply_retention_rows(st: &mut State, meta: &Meta, shard: u32, shards: u32) -> Result<()> {
    for (room, low, keep_messages, keep_age_ms) in meta.retention_rows()? {
        if crate::shard_of(room, shards) != shard {
            continue;
        }
        let r = st.rooms.entry(room).or_insert_with(|| {
            let mut r = Room::new(1);
            r.durable_seq = 0;
            r
        });
        r.low_seq = r.low_seq.max(low);
        r.keep_messages = keep_messages;
        r.keep_age_ms = keep_age_ms;
    }
    Ok(())
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
    ) -> Result<ShardStore> {
        let shard_dir = cfg.data_dir.join(format!("shard-{shard}"));
        let log_dir = shard_dir.join("log");
        std::fs::create_dir_all(&log_dir).map_err(|e| Error::io(&log_dir, e))?;
        let db = Arc::new(index::open_db(
            &shard_dir.join("index.redb"),
            cfg.index_cache_bytes,
        )?);
        let loaded = index::load(&db)?;
        let mut st = State {
            rooms: HashMap::new(),
            segments: BTreeMap::new(),
            active: 0,
            checkpoint: Pos::from_u64(loaded.checkpoint),
            maps: HashMap::new(),
            readers: HashMap::new(),
            pending_chunks: HashMap::new(),
            pending_edits: BTreeMap::new(),
            ops: Vec::new(),
            ops_records: 0,
            next_ticket: 1,
            acked_ticket: 0,
            checkpoint_tickets: VecDeque::new(),
            lag_records: 0,
            dirty_rooms: HashSet::new(),
            dirty_segments: HashSet::new(),
            checkpoint_requested: false,
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
                room.open = match index::read_chunk(&db, *id, no)? {
                    Some(bytes) => Chunk::decode(no, &bytes)?,
                    None => Chunk::new(no),
                };
                room.open.truncate_after(row.last_seq);
            }
            st.rooms.insert(*id, room);
        }
        let ids = segment::list(&log_dir)?;
        for (seg, room, max_seq) in loaded.segments {
            st.segments
                .entry(seg)
                .or_default()
                .rooms
                .insert(room, max_seq);
        }
        if let Some(meta) = &meta {
            apply_retention_rows(&mut st, meta, shard, cfg.shards)?;
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
        });
        let store = ShardStore { inner };
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
        // Make the recovered state durable before serving.
        store.checkpoint_now().await?;
        Ok(store)
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

    /// Appends a message; resolves once it is durable (per the durability
    /// mode). A repeated non-empty `(sender, client_id)` within the room's
    /// idempotency window returns the original seq instead.
    pub async fn append_message(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        ts_ms: u64,
        body: &str,
    ) -> Result<Appended> {
        self.check_open()?;
        let cfg = &self.inner.cfg;
        if body.len() > cfg.body_bytes_max {
            return Err(Error::InvalidInput(format!(
                "body is {} bytes, limit {}",
                body.len(),
                cfg.body_bytes_max
            )));
        }
        if client_id.len() > cfg.client_id_bytes_max {
            return Err(Error::InvalidInput(format!(
                "client_id is {} bytes, limit {}",
                client_id.len(),
                cfg.client_id_bytes_max
            )));
        }
        self.wait_for_index_lag().await;
        let idem = idem_hash(sender, client_id);
        if idem != 0 {
            if let Some(found) = self.find_duplicate(room, sender, client_id, idem).await? {
                return Ok(found);
            }
        }
        let (seq, ts_ms, signal) = {
            let mut st = self.inner.st.borrow_mut();
            let window = self.inner.cfg.idempotency_window_len;
            let r = st.rooms.entry(room).or_insert_with(|| Room::new(1));
            let seq = r.next_seq;
            r.next_seq += 1;
            let ts_ms = ts_ms.max(r.last_ts_ms);
            r.last_ts_ms = ts_ms;
            if idem != 0 {
                if let Some(w) = r.idem.as_mut() {
                    w.insert(idem, seq, window);
                }
            }
            let rec = Record::Message(Message {
                room,
                seq,
                sender,
                ts_ms,
                client_id: client_id.to_string(),
                body: body.to_string(),
            });
            let signal = self.enqueue(&rec, room, seq, QueuedKind::Message { idem, ts_ms });
            (seq, ts_ms, signal)
        };
        signal.wait().await.map_err(Error::Failed)?;
        Ok(Appended::New { seq, ts_ms })
    }

    /// Appends an edit of message `seq`; resolves once durable. Authorization
    /// is the caller's job; storage checks the message exists and is not
    /// deleted.
    pub async fn edit(&self, room: u64, seq: u64, by: u64, ts_ms: u64, body: &str) -> Result<()> {
        self.check_open()?;
        if body.len() > self.inner.cfg.body_bytes_max {
            return Err(Error::InvalidInput(format!(
                "body is {} bytes, limit {}",
                body.len(),
                self.inner.cfg.body_bytes_max
            )));
        }
        self.change(
            Record::Edit(Edit {
                room,
                seq,
                by,
                ts_ms,
                body: body.to_string(),
            }),
            room,
            seq,
            false,
        )
        .await
    }

    /// Appends a deletion of message `seq`; resolves once durable. A deleted
    /// message stays deleted (later edits are refused).
    pub async fn delete(&self, room: u64, seq: u64, by: u64, ts_ms: u64) -> Result<()> {
        self.check_open()?;
        self.change(
            Record::Delete(Delete {
                room,
                seq,
                by,
                ts_ms,
            }),
            room,
            seq,
            true,
        )
        .await
    }

    async fn change(&self, rec: Record, room: u64, seq: u64, deleted: bool) -> Result<()> {
        self.wait_for_index_lag().await;
        match self.get(room, seq).await? {
            None => return Err(Error::NotFound(format!("message {seq} in room {room}"))),
            Some(item) if item.deleted() => {
                return Err(Error::NotFound(format!(
                    "message {seq} in room {room} was deleted"
                )))
            }
            Some(_) => {}
        }
        let signal = self.enqueue(&rec, room, seq, QueuedKind::Edit { deleted });
        signal.wait().await.map_err(Error::Failed)
    }

    /// Appends a message with its original seq and timestamp (restore from
    /// an export). The seq must be above the room's last one.
    ///
    /// The record is queued before the returned future first yields, so
    /// import calls started in file order are written in file order even
    /// when many are awaited concurrently.
    pub async fn import_message(&self, msg: Message) -> Result<()> {
        self.check_open()?;
        let signal = {
            let mut st = self.inner.st.borrow_mut();
            let r = st
                .rooms
                .entry(msg.room)
                .or_insert_with(|| Room::new(msg.seq.max(1)));
            if msg.seq == 0 || msg.seq < r.next_seq {
                return Err(Error::InvalidInput(format!(
                    "seq {} is not above room {}'s last seq {}",
                    msg.seq,
                    msg.room,
                    r.next_seq - 1
                )));
            }
            r.next_seq = msg.seq + 1;
            r.last_ts_ms = r.last_ts_ms.max(msg.ts_ms);
            let kind = QueuedKind::Message {
                idem: idem_hash(msg.sender, &msg.client_id),
                ts_ms: msg.ts_ms,
            };
            let (room, seq) = (msg.room, msg.seq);
            self.enqueue(&Record::Message(msg), room, seq, kind)
        };
        signal.wait().await.map_err(Error::Failed)
    }

    /// Appends an edit or delete record as exported (restore). Queued before
    /// the future first yields, like [`ShardStore::import_message`].
    pub async fn import_change(&self, rec: Record) -> Result<()> {
        self.check_open()?;
        let (room, seq, deleted) = match &rec {
            Record::Edit(e) => (e.room, e.seq, false),
            Record::Delete(d) => (d.room, d.seq, true),
            Record::Message(_) => {
                return Err(Error::InvalidInput(
                    "import_change takes an edit or delete".into(),
                ))
            }
        };
        let signal = self.enqueue(&rec, room, seq, QueuedKind::Edit { deleted });
        signal.wait().await.map_err(Error::Failed)
    }

    fn enqueue(&self, rec: &Record, room: u64, seq: u64, kind: QueuedKind) -> Rc<BatchSignal> {
        let mut q = self.inner.queue.borrow_mut();
        let len = encode_frame(rec, &mut q.frames) as u32;
        q.items.push(Queued {
            room,
            seq,
            len,
            kind,
        });
        let signal = q.signal.clone();
        drop(q);
        self.inner.wake_committer.notify();
        signal
    }

    async fn wait_for_index_lag(&self) {
        while self.inner.st.borrow().lag_records > self.inner.cfg.index_lag_records_max {
            self.inner.index_progress.notified().await;
        }
    }

    /// Waits until everything queued so far is durable (or failed).
    pub async fn flush(&self) -> Result<()> {
        let signal = {
            let q = self.inner.queue.borrow();
            if !q.items.is_empty() {
                Some(q.signal.clone())
            } else {
                q.inflight.clone()
            }
        };
        match signal {
            Some(s) => s.wait().await.map_err(Error::Failed),
            None => Ok(()),
        }
    }

    async fn find_duplicate(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        idem: u64,
    ) -> Result<Option<Appended>> {
        let candidate = {
            let mut st = self.inner.st.borrow_mut();
            self.ensure_idem_window(&mut st, room)?;
            let cap = self.inner.cfg.idempotency_window_len;
            st.rooms.get(&room).and_then(|r| {
                r.idem
                    .as_ref()
                    .and_then(|w| w.get(idem, r.next_seq - 1, cap))
            })
        };
        let Some(seq) = candidate else {
            return Ok(None);
        };
        if seq > self.last_seq(room) {
            self.flush().await?;
        }
        match self.get(room, seq).await? {
            Some(item) if item.sender() == sender && item.client_id() == client_id => {
                Ok(Some(Appended::Duplicate {
                    seq,
                    ts_ms: item.ts_ms(),
                }))
            }
            _ => Ok(None),
        }
    }

    /// Loads a room's idempotency window from its index entries (first use
    /// after open).
    fn ensure_idem_window(&self, st: &mut State, room: u64) -> Result<()> {
        let cap = self.inner.cfg.idempotency_window_len;
        let Some(r) = st.rooms.get(&room) else {
            return Ok(());
        };
        if r.idem.is_some() {
            return Ok(());
        }
        let hi = r.durable_seq;
        let lo = hi.saturating_sub(cap as u64).max(r.low_seq).max(1);
        let mut window = IdemWindow::default();
        if hi >= lo {
            for (seq, e) in self.entries(st, room, lo, hi)? {
                if e.idem != 0 {
                    window.insert(e.idem, seq, cap);
                }
            }
        }
        st.rooms.get_mut(&room).expect("checked").idem = Some(window);
        Ok(())
    }

    /// Index entries of seqs `lo..=hi` of a room, ascending; absent ones
    /// (which should not exist below `durable_seq`) are an error.
    fn entries(&self, st: &mut State, room: u64, lo: u64, hi: u64) -> Result<Vec<(u64, Entry)>> {
        let mut out = Vec::with_capacity((hi + 1 - lo) as usize);
        let mut seq = lo;
        while seq <= hi {
            let no = chunk_of(seq);
            let chunk = self.chunk(st, room, no)?;
            let end = hi.min((no + 1) * chunk::CHUNK_LEN);
            for s in seq..=end {
                let e = chunk.as_ref().and_then(|c| c.get(s)).ok_or_else(|| {
                    Error::IndexMismatch(format!("no index entry for room {room} seq {s}"))
                })?;
                out.push((s, e));
            }
            seq = end + 1;
        }
        Ok(out)
    }

    fn chunk(&self, st: &mut State, room: u64, no: u64) -> Result<Option<Rc<Chunk>>> {
        if let Some(r) = st.rooms.get(&room) {
            if r.open.no == no {
                return Ok(Some(Rc::new(r.open.clone())));
            }
        }
        if let Some((_, c)) = st.pending_chunks.get(&(room, no)) {
            return Ok(Some(c.clone()));
        }
        st.stats.index_chunk_reads += 1;
        match index::read_chunk(&self.inner.db, room, no)? {
            Some(bytes) => Ok(Some(Rc::new(Chunk::decode(no, &bytes)?))),
            None => Ok(None),
        }
    }

    fn map(&self, st: &mut State, segment: u32) -> Result<Rc<Mmap>> {
        if let Some(m) = st.maps.get(&segment) {
            return Ok(m.clone());
        }
        let path = segment::path(&self.inner.log_dir, segment);
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: segment bytes below a durable position are never modified
        // (rewrites of the tail block write identical bytes), and files are
        // only truncated to their data end; we read only durable frames.
        let map = Rc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?);
        st.maps.insert(segment, map.clone());
        Ok(map)
    }

    fn read_at(&self, st: &mut State, pos: Pos) -> Result<RecordRef> {
        let map = self.map(st, pos.segment)?;
        RecordRef::read(&map, pos.segment, pos.offset)
    }

    /// One message with edits applied, if it exists and is live.
    pub async fn get(&self, room: u64, seq: u64) -> Result<Option<HistoryItem>> {
        let page = self
            .history(
                room,
                Cursor {
                    after: Some(seq.saturating_sub(1)),
                    before: Some(seq.saturating_add(1)),
                    limit: 1,
                    order: Order::OldestFirst,
                },
            )
            .await?;
        Ok(page.items.into_iter().next())
    }

    /// A page of history, read in place from the log (records not in the
    /// page cache are first read in parallel through io_uring).
    pub async fn history(&self, room: u64, cursor: Cursor) -> Result<Page> {
        let positions = {
            let mut st = self.inner.st.borrow_mut();
            let Some(plan) = self.plan(&mut st, room, cursor)? else {
                return Ok(Page {
                    items: Vec::new(),
                    next: None,
                });
            };
            let positions: Vec<u64> = plan
                .entries
                .iter()
                .map(|(_, e)| e.pos)
                .chain(plan.edits.values().copied())
                .collect();
            if !self.any_cold(&mut st, &positions)? {
                return self.assemble(&mut st, room, cursor, plan);
            }
            positions
        };
        self.prefetch(positions).await?;
        // The state may have moved on while the reads ran: plan again.
        self.history_now(room, cursor)
    }

    /// Index entries and edit positions of the page `cursor` asks for.
    fn plan(&self, st: &mut State, room: u64, cursor: Cursor) -> Result<Option<Plan>> {
        let Some(r) = st.rooms.get(&room) else {
            return Ok(None);
        };
        let lo = cursor
            .after
            .map_or(1, |a| a.saturating_add(1))
            .max(r.low_seq);
        let hi = cursor
            .before
            .map_or(r.durable_seq, |b| b.saturating_sub(1))
            .min(r.durable_seq);
        let limit = cursor.limit.max(1) as u64;
        if lo > hi {
            return Ok(None);
        }
        let (lo_page, hi_page) = match cursor.order {
            Order::NewestFirst => (hi.saturating_sub(limit - 1).max(lo), hi),
            Order::OldestFirst => (lo, lo.saturating_add(limit - 1).min(hi)),
        };
        let entries = self.entries(st, room, lo_page, hi_page)?;
        let edits = self.edits(st, room, lo_page, hi_page)?;
        Ok(Some(Plan {
            entries,
            edits,
            lo,
            hi,
            lo_page,
            hi_page,
        }))
    }

    /// A page of history from what is mapped now (no prefetch).
    pub fn history_now(&self, room: u64, cursor: Cursor) -> Result<Page> {
        let mut st = self.inner.st.borrow_mut();
        match self.plan(&mut st, room, cursor)? {
            Some(plan) => self.assemble(&mut st, room, cursor, plan),
            None => Ok(Page {
                items: Vec::new(),
                next: None,
            }),
        }
    }

    /// Reads the records of a plan (in place) into a page.
    fn assemble(&self, st: &mut State, room: u64, cursor: Cursor, plan: Plan) -> Result<Page> {
        let Plan {
            entries,
            edits,
            lo,
            hi,
            lo_page,
            hi_page,
        } = plan;
        let mut items = Vec::with_capacity(entries.len());
        for (seq, e) in entries {
            let message = self.read_at(st, Pos::from_u64(e.pos))?;
            if message.record().seq() != seq || message.record().room() != room {
                return Err(Error::IndexMismatch(format!(
                    "room {room} seq {seq} points at another record"
                )));
            }
            let latest_edit = match edits.get(&seq) {
                Some(pos) => Some(self.read_at(st, Pos::from_u64(*pos))?),
                None => None,
            };
            items.push(HistoryItem {
                message,
                latest_edit,
            });
        }
        let next = match cursor.order {
            Order::NewestFirst => {
                items.reverse();
                (lo_page > lo).then_some(Cursor {
                    before: Some(lo_page),
                    ..cursor
                })
            }
            Order::OldestFirst => (hi_page < hi).then_some(Cursor {
                after: Some(hi_page),
                ..cursor
            }),
        };
        Ok(Page { items, next })
    }

    /// Unmaps every segment mapping this shard holds for reads; the next read
    /// maps again. Lets the OS evict the pages (used by `rookery-bench` to
    /// measure cold reads; mapped pages cannot be evicted otherwise).
    pub fn release_mappings(&self) {
        let mut st = self.inner.st.borrow_mut();
        st.maps.clear();
        st.readers.clear();
    }

    /// Reads into the page cache, in parallel through io_uring, the pages of
    /// these positions that are not resident, so a cold page of history
    /// costs about one device round trip instead of one per record (page
    /// faults on a mapping are served one at a time). Hot pages cost one
    /// `mincore` call per segment touched and no I/O.
    async fn prefetch(&self, positions: Vec<u64>) -> Result<()> {
        let mut reads = Vec::new();
        for (segment, offsets) in by_segment(&positions) {
            let map = {
                let mut st = self.inner.st.borrow_mut();
                self.map(&mut st, segment)?
            };
            let pages = cold_pages(&map, &offsets);
            if pages.is_empty() {
                continue;
            }
            let file = self.reader(segment).await?;
            for page in pages {
                let file = file.clone();
                // Tasks, not bare futures: all reads must be in flight at once.
                reads.push(glommio::spawn_local(async move {
                    file.read_at((page * PAGE) as u64, PAGE).await.map(|_| ())
                }));
            }
        }
        for r in reads {
            r.await.map_err(|e| Error::Glommio(e.to_string()))?;
        }
        Ok(())
    }

    /// True when any of these positions is on a page not in the page cache.
    fn any_cold(&self, st: &mut State, positions: &[u64]) -> Result<bool> {
        for (segment, offsets) in by_segment(positions) {
            let map = self.map(st, segment)?;
            if !cold_pages(&map, &offsets).is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A buffered io_uring handle on a segment, for prefetching.
    async fn reader(&self, segment: u32) -> Result<Rc<glommio::io::BufferedFile>> {
        if let Some(f) = self.inner.st.borrow().readers.get(&segment) {
            return Ok(f.clone());
        }
        let path = segment::path(&self.inner.log_dir, segment);
        let f = Rc::new(
            glommio::io::BufferedFile::open(&path)
                .await
                .map_err(|e| Error::Glommio(format!("opening {}: {e}", path.display())))?,
        );
        self.inner
            .st
            .borrow_mut()
            .readers
            .insert(segment, f.clone());
        Ok(f)
    }

    /// Latest edit/delete positions for seqs `lo..=hi`.
    fn edits(&self, st: &State, room: u64, lo: u64, hi: u64) -> Result<HashMap<u64, u64>> {
        let mut out: HashMap<u64, u64> = index::read_edits(&self.inner.db, room, lo, hi)?
            .into_iter()
            .map(|(s, p, _)| (s, p))
            .collect();
        for (&(_, seq), &(_, pos, _)) in st.pending_edits.range((room, lo)..=(room, hi)) {
            out.insert(seq, pos);
        }
        Ok(out)
    }

    /// Is message (room, seq) deleted, according to the durable state?
    fn is_deleted(&self, st: &State, room: u64, seq: u64) -> Result<bool> {
        if let Some((_, _, deleted)) = st.pending_edits.get(&(room, seq)) {
            return Ok(*deleted);
        }
        Ok(index::read_edits(&self.inner.db, room, seq, seq)?
            .first()
            .is_some_and(|e| e.2))
    }

    /// Sets a room's retention limits, durably (applied by
    /// [`ShardStore::enforce_retention`]).
    pub async fn set_retention(&self, room: u64, retention: Retention) -> Result<()> {
        let (km, ka) = (
            retention.max_messages.unwrap_or(0),
            retention.max_age_ms.unwrap_or(0),
        );
        if let Some(meta) = self.inner.meta.clone() {
            glommio::executor()
                .spawn_blocking(move || meta.set_retention(room, km, ka))
                .await?;
        }
        let mut st = self.inner.st.borrow_mut();
        let r = st.rooms.entry(room).or_insert_with(|| Room::new(1));
        r.keep_messages = km;
        r.keep_age_ms = ka;
        st.dirty_rooms.insert(room);
        Ok(())
    }

    /// A room's retention limits.
    pub fn retention(&self, room: u64) -> Retention {
        let st = self.inner.st.borrow();
        st.rooms
            .get(&room)
            .map_or(Retention::default(), |r| Retention {
                max_messages: (r.keep_messages > 0).then_some(r.keep_messages),
                max_age_ms: (r.keep_age_ms > 0).then_some(r.keep_age_ms),
            })
    }

    /// Applies every room's retention at time `now_ms`: moves low seqs,
    /// makes that durable, then deletes sealed segments that hold nothing
    /// live.
    pub async fn enforce_retention(&self, now_ms: u64) -> Result<RetentionReport> {
        self.check_open()?;
        let mut report = RetentionReport::default();
        let mut lows = Vec::new();
        {
            let mut st = self.inner.st.borrow_mut();
            let st = &mut *st;
            let rooms: Vec<u64> = st
                .rooms
                .iter()
                .filter(|(_, r)| r.keep_messages > 0 || r.keep_age_ms > 0)
                .map(|(id, _)| *id)
                .collect();
            for room in rooms {
                let new_low = self.retention_low(st, room, now_ms)?;
                let r = st.rooms.get_mut(&room).expect("listed");
                if new_low > r.low_seq {
                    report.messages_expired += new_low - r.low_seq;
                    r.low_seq = new_low;
                    lows.push((room, new_low));
                    st.ops.push(Op::Retire {
                        room,
                        low_seq: new_low,
                    });
                    st.dirty_rooms.insert(room);
                }
            }
        }
        // The new low seqs are durable (meta) before any segment goes.
        if let (Some(meta), false) = (self.inner.meta.clone(), lows.is_empty()) {
            glommio::executor()
                .spawn_blocking(move || meta.advance_low_seqs(&lows))
                .await?;
        }
        self.checkpoint_now().await?;
        let dead: Vec<(u32, u64)> = {
            let st = self.inner.st.borrow();
            st.segments
                .iter()
                .filter(|(id, info)| {
                    **id < st.checkpoint.segment
                        && info.sealed_end.is_some()
                        && info
                            .rooms
                            .iter()
                            .all(|(room, max)| st.rooms.get(room).is_none_or(|r| *max < r.low_seq))
                })
                .map(|(id, info)| (*id, info.sealed_end.unwrap_or(0) as u64))
                .collect()
        };
        for (id, bytes) in dead {
            let path = segment::path(&self.inner.log_dir, id);
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            let mut st = self.inner.st.borrow_mut();
            st.segments.remove(&id);
            st.maps.remove(&id);
            st.readers.remove(&id);
            st.ops.push(Op::DropSegment { segment: id });
            report.segments_deleted += 1;
            report.bytes_reclaimed += bytes;
        }
        if report.segments_deleted > 0 {
            sync_dir(&self.inner.log_dir)?;
        }
        Ok(report)
    }

    /// The low seq a room's retention asks for at `now_ms`.
    fn retention_low(&self, st: &mut State, room: u64, now_ms: u64) -> Result<u64> {
        let r = &st.rooms[&room];
        let (low, last, keep, age) = (r.low_seq, r.durable_seq, r.keep_messages, r.keep_age_ms);
        let mut new_low = low;
        if keep > 0 && last >= keep {
            new_low = new_low.max(last + 1 - keep);
        }
        if age > 0 && last >= new_low {
            // Timestamps never decrease within a room: binary search for the
            // first seq young enough.
            let cutoff = now_ms.saturating_sub(age);
            let (mut a, mut b) = (new_low, last + 1);
            while a < b {
                let mid = a + (b - a) / 2;
                let e = self.entries(st, room, mid, mid)?[0].1;
                if e.ts_ms < cutoff {
                    a = mid + 1;
                } else {
                    b = mid;
                }
            }
            new_low = a;
        }
        Ok(new_low)
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

    // ---- recovery -------------------------------------------------------

    /// Replays the log after the checkpoint, truncates a torn tail, seals the
    /// last segment, and creates a fresh active segment.
    async fn recover(&self, ids: &[u32]) -> Result<LogWriter> {
        let ckpt = self.inner.st.borrow().checkpoint;
        if ckpt.segment > 0 && !ids.contains(&ckpt.segment) {
            return Err(Error::IndexMismatch(format!(
                "checkpoint is in segment {} which is missing",
                ckpt.segment
            )));
        }
        {
            // Forget summaries of segments that no longer exist (deleted by
            // retention just before a crash).
            let mut st = self.inner.st.borrow_mut();
            let gone: Vec<u32> = st
                .segments
                .keys()
                .filter(|id| !ids.contains(id))
                .copied()
                .collect();
            for id in gone {
                st.segments.remove(&id);
                st.ops.push(Op::DropSegment { segment: id });
            }
        }
        let last = ids.last().copied();
        for &id in ids.iter().filter(|&&id| id >= ckpt.segment) {
            let start = if id == ckpt.segment {
                ckpt.offset.max(HEADER_BYTES as u32)
            } else {
                HEADER_BYTES as u32
            };
            self.replay_segment(id, start, Some(id) == last)?;
        }
        for &id in ids {
            let mut st = self.inner.st.borrow_mut();
            let info = st.segments.entry(id).or_default();
            if info.sealed_end.is_none() {
                let path = segment::path(&self.inner.log_dir, id);
                let len = std::fs::metadata(&path)
                    .map_err(|e| Error::io(&path, e))?
                    .len();
                info.sealed_end = Some(len as u32);
            }
        }
        let next = last.map_or(1, |l| l + 1);
        let writer = LogWriter::create(
            &self.inner.log_dir,
            self.inner.shard,
            next,
            self.inner.cfg.segment_bytes_max,
            now_ms(),
        )
        .await?;
        let mut st = self.inner.st.borrow_mut();
        st.active = next;
        st.segments.insert(next, SegmentInfo::default());
        Ok(writer)
    }

    fn replay_segment(&self, id: u32, start: u32, is_last: bool) -> Result<()> {
        let path = segment::path(&self.inner.log_dir, id);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // SAFETY: nothing else writes this file during recovery.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let header = Header::decode(&map, id)?;
        if header.shard != self.inner.shard {
            return Err(Error::corrupt(
                id,
                0,
                format!("segment belongs to shard {}", header.shard),
            ));
        }
        let mut ops_records = 0;
        let end = {
            let mut st = self.inner.st.borrow_mut();
            let st = &mut *st;
            segment::scan(&map, id, start, is_last, |offset, rec, _| {
                ops_records += 1;
                self.apply_replayed(
                    st,
                    Pos {
                        segment: id,
                        offset,
                    },
                    rec,
                )
            })?
        };
        drop(map);
        let mut st = self.inner.st.borrow_mut();
        st.stats.replayed += ops_records;
        st.ops_records += ops_records as usize;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if let ScanEnd::Torn { end, reason } = &end {
            tracing::warn!(shard = self.inner.shard, segment = id, offset = end, %reason, "truncating torn log tail");
            st.stats.torn_bytes += len - *end as u64;
        }
        if is_last && len != end.end() as u64 {
            file.set_len(end.end() as u64)
                .map_err(|e| Error::io(&path, e))?;
            file.sync_all().map_err(|e| Error::io(&path, e))?;
        }
        st.segments.entry(id).or_default().sealed_end = Some(end.end());
        Ok(())
    }

    fn apply_replayed(&self, st: &mut State, pos: Pos, rec: &ArchivedRecord) -> Result<()> {
        match rec {
            ArchivedRecord::Message(m) => {
                let (room, seq) = (m.room.to_native(), m.seq.to_native());
                let durable = st.rooms.get(&room).map_or(0, |r| r.durable_seq);
                if seq <= durable || seq == 0 {
                    return Err(Error::corrupt(
                        pos.segment,
                        pos.offset,
                        format!("room {room} seq {seq} not above {durable}"),
                    ));
                }
                let retired = st.rooms.get(&room).is_some_and(|r| seq < r.low_seq);
                if retired {
                    // Retention removed it after it was written: keep the
                    // seq taken, index nothing.
                    let r = st.rooms.get_mut(&room).expect("checked");
                    r.durable_seq = seq;
                    r.next_seq = r.next_seq.max(seq + 1);
                    let max = st
                        .segments
                        .entry(pos.segment)
                        .or_default()
                        .rooms
                        .entry(room)
                        .or_insert(0);
                    *max = (*max).max(seq);
                    return Ok(());
                }
                let entry = Entry {
                    pos: pos.to_u64(),
                    idem: idem_hash(m.sender.to_native(), &m.client_id),
                    ts_ms: m.ts_ms.to_native(),
                };
                self.apply_message(st, room, seq, entry, pos.segment);
                let r = st.rooms.get_mut(&room).expect("just applied");
                r.next_seq = r.next_seq.max(seq + 1);
            }
            ArchivedRecord::Edit(e) => {
                self.apply_edit(st, e.room.to_native(), e.seq.to_native(), pos, false)?
            }
            ArchivedRecord::Delete(d) => {
                self.apply_edit(st, d.room.to_native(), d.seq.to_native(), pos, true)?
            }
        }
        Ok(())
    }

    // ---- applying durable records ----------------------------------------

    fn apply_message(&self, st: &mut State, room: u64, seq: u64, entry: Entry, segment: u32) {
        let r = st.rooms.entry(room).or_insert_with(|| Room::new(seq));
        if r.open.no != chunk_of(seq) {
            let full = std::mem::replace(&mut r.open, Chunk::new(chunk_of(seq)));
            if !full.entries.is_empty() {
                Self::send_chunk(st, room, full);
            }
        }
        let r = st.rooms.get_mut(&room).expect("inserted");
        r.open.set(seq, entry);
        r.durable_seq = seq;
        r.last_ts_ms = r.last_ts_ms.max(entry.ts_ms);
        if r.open.is_full() {
            let full = r.open.clone();
            Self::send_chunk(st, room, full);
        }
        let max = st
            .segments
            .entry(segment)
            .or_default()
            .rooms
            .entry(room)
            .or_insert(0);
        *max = (*max).max(seq);
        st.dirty_segments.insert((segment, room));
        st.dirty_rooms.insert(room);
    }

    fn send_chunk(st: &mut State, room: u64, chunk: Chunk) {
        let ticket = st.next_ticket;
        st.ops.push(Op::Chunk {
            room,
            no: chunk.no,
            bytes: chunk.encode(),
        });
        st.pending_chunks
            .insert((room, chunk.no), (ticket, Rc::new(chunk)));
    }

    fn apply_edit(
        &self,
        st: &mut State,
        room: u64,
        seq: u64,
        pos: Pos,
        deleted: bool,
    ) -> Result<()> {
        if st.rooms.get(&room).is_some_and(|r| seq < r.low_seq) {
            return Ok(()); // retired (replay of a change to a retired message)
        }
        if !deleted && self.is_deleted(st, room, seq)? {
            return Ok(()); // a delete is final; a racing edit is ignored
        }
        let ticket = st.next_ticket;
        st.pending_edits
            .insert((room, seq), (ticket, pos.to_u64(), deleted));
        st.ops.push(Op::Edit {
            room,
            seq,
            pos: pos.to_u64(),
            deleted,
        });
        let max = st
            .segments
            .entry(pos.segment)
            .or_default()
            .rooms
            .entry(room)
            .or_insert(0);
        *max = (*max).max(seq);
        st.dirty_segments.insert((pos.segment, room));
        Ok(())
    }

    // ---- the committer -----------------------------------------------------

    /// The one task that writes the log. Loops: wait for work, take the
    /// queue as a batch, write (+ sync), apply, resolve, send index work.
    async fn committer(self, mut writer: LogWriter) {
        let inner = self.inner.clone();
        let interval = Duration::from_millis(inner.cfg.checkpoint_interval_ms);
        let mut last_checkpoint = Instant::now();
        let mut last_sync = Instant::now();
        let mut positions = Vec::new();
        let mut sealed = Vec::new();
        loop {
            let (has_work, wants_ckpt, closing) = {
                let st = inner.st.borrow();
                (
                    !inner.queue.borrow().items.is_empty(),
                    st.checkpoint_requested,
                    st.closing,
                )
            };
            if !has_work && !wants_ckpt {
                if closing {
                    break;
                }
                let wait = inner.wake_committer.notified();
                let timeout = glommio::timer::sleep(interval);
                future::or(wait, async {
                    timeout.await;
                })
                .await;
                if inner.st.borrow().dirty_rooms.is_empty() || last_checkpoint.elapsed() < interval
                {
                    continue;
                }
                inner.st.borrow_mut().checkpoint_requested = true;
                continue;
            }
            if has_work {
                self.commit_window().await;
                if let Err(e) = self
                    .commit_one(&mut writer, &mut positions, &mut sealed, &mut last_sync)
                    .await
                {
                    self.fail(e.to_string());
                }
            }
            let due = last_checkpoint.elapsed() >= interval;
            if inner.st.borrow().checkpoint_requested || due {
                inner.st.borrow_mut().checkpoint_requested = false;
                match self.checkpoint(&mut writer).await {
                    Ok(()) => last_checkpoint = Instant::now(),
                    Err(e) => self.fail(e.to_string()),
                }
            } else {
                self.send_index(false, None);
            }
            if inner.st.borrow().failed.is_some() {
                self.drain_failed();
                inner.index_progress.notify();
                if inner.st.borrow().closing {
                    break;
                }
                inner.wake_committer.notified().await;
            }
        }
        if inner.st.borrow().failed.is_none() {
            match writer.close().await {
                Ok(s) => self.sealed(s),
                Err(e) => self.fail(e.to_string()),
            }
        }
    }

    /// Waits up to `commit_window_us` for a small batch to grow.
    async fn commit_window(&self) {
        let cfg = &self.inner.cfg;
        if cfg.commit_window_us == 0 {
            return;
        }
        let small = {
            let q = self.inner.queue.borrow();
            q.items.len() < cfg.commit_batch_records_max
                && q.frames.len() < cfg.commit_batch_bytes_max
        };
        if small {
            glommio::timer::sleep(Duration::from_micros(cfg.commit_window_us)).await;
        }
    }

    /// Takes the queue (up to the batch limits), writes it, syncs it as the
    /// mode says, applies it and resolves its appenders.
    async fn commit_one(
        &self,
        writer: &mut LogWriter,
        positions: &mut Vec<Pos>,
        sealed: &mut Vec<Sealed>,
        last_sync: &mut Instant,
    ) -> Result<()> {
        let inner = &self.inner;
        let (frames, items, signal) = self.take_batch();
        let (frames, items) = cluster_by_room(frames, items);
        inner.queue.borrow_mut().inflight = Some(signal.clone());
        positions.clear();
        sealed.clear();
        let lens: Vec<u32> = items.iter().map(|q| q.len).collect();
        let outcome = async {
            writer
                .write(&frames, &lens, now_ms(), positions, sealed)
                .await?;
            let sync = match inner.cfg.durability {
                Durability::Sync => true,
                Durability::Batch { interval } => last_sync.elapsed() >= interval,
                Durability::None => false,
            };
            if sync {
                writer.sync().await?;
                *last_sync = Instant::now();
            }
            Ok::<_, Error>(sync)
        }
        .await;
        let result = match outcome {
            Ok(synced) => {
                for s in sealed.iter() {
                    self.sealed(*s);
                }
                self.apply_batch(&items, positions, writer.segment())?;
                let mut st = inner.st.borrow_mut();
                st.stats.batches += 1;
                st.stats.records += items.len() as u64;
                st.stats.bytes += frames.len() as u64;
                st.stats.syncs += synced as u64 + sealed.len() as u64;
                Ok(())
            }
            Err(e) => Err(e),
        };
        signal.complete(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        inner.queue.borrow_mut().inflight = None;
        result
    }

    fn take_batch(&self) -> (Vec<u8>, Vec<Queued>, Rc<BatchSignal>) {
        let cfg = &self.inner.cfg;
        let mut q = self.inner.queue.borrow_mut();
        let (mut n, mut bytes) = (0, 0usize);
        while n < q.items.len()
            && n < cfg.commit_batch_records_max
            && (n == 0 || bytes + q.items[n].len as usize <= cfg.commit_batch_bytes_max)
        {
            bytes += q.items[n].len as usize;
            n += 1;
        }
        if n == q.items.len() {
            let frames = std::mem::take(&mut q.frames);
            let items = std::mem::take(&mut q.items);
            let signal = std::mem::replace(&mut q.signal, Rc::new(BatchSignal::default()));
            return (frames, items, signal);
        }
        // Split: the rest stays queued under the same signal, which resolves
        // with the later batch. The head gets a signal of its own, and the
        // appenders in it wait on the shared one — so resolve the head's
        // records via the shared signal only when all are done.
        let frames: Vec<u8> = q.frames.drain(..bytes).collect();
        let items: Vec<Queued> = q.items.drain(..n).collect();
        (frames, items, Rc::new(BatchSignal::default()))
    }

    fn apply_batch(&self, items: &[Queued], positions: &[Pos], active: u32) -> Result<()> {
        let mut st = self.inner.st.borrow_mut();
        let st = &mut *st;
        if st.active != active {
            st.active = active;
            st.segments.entry(active).or_default();
        }
        for (q, pos) in items.iter().zip(positions) {
            match q.kind {
                QueuedKind::Message { idem, ts_ms } => {
                    self.apply_message(
                        st,
                        q.room,
                        q.seq,
                        Entry {
                            pos: pos.to_u64(),
                            idem,
                            ts_ms,
                        },
                        pos.segment,
                    );
                }
                QueuedKind::Edit { deleted } => {
                    self.apply_edit(st, q.room, q.seq, *pos, deleted)?
                }
            }
        }
        st.ops_records += items.len();
        Ok(())
    }

    fn sealed(&self, s: Sealed) {
        let mut st = self.inner.st.borrow_mut();
        st.segments.entry(s.segment).or_default().sealed_end = Some(s.end);
        st.maps.remove(&s.segment);
        st.readers.remove(&s.segment);
    }

    /// Syncs the log and sends a durable checkpoint of all dirty state.
    async fn checkpoint(&self, writer: &mut LogWriter) -> Result<()> {
        writer.sync().await?;
        let synced = writer.synced();
        {
            let mut st = self.inner.st.borrow_mut();
            let st = &mut *st;
            let rooms: Vec<u64> = st.dirty_rooms.drain().collect();
            let mut last_seqs = Vec::with_capacity(rooms.len());
            for room in rooms {
                let r = &st.rooms[&room];
                let (row, open) = (r.row(), r.open.clone());
                last_seqs.push((room, row.last_seq));
                if !open.entries.is_empty() {
                    Self::send_chunk(st, room, open);
                }
                st.ops.push(Op::Room { room, row });
            }
            let segs: Vec<(u32, u64)> = st.dirty_segments.drain().collect();
            for (segment, room) in segs {
                if let Some(max_seq) = st.segments.get(&segment).and_then(|s| s.rooms.get(&room)) {
                    st.ops.push(Op::SegmentRoom {
                        segment,
                        room,
                        max_seq: *max_seq,
                    });
                }
            }
            st.ops.push(Op::Checkpoint(synced.to_u64()));
            let ticket = st.next_ticket;
            st.checkpoint_tickets.push_back((ticket, synced));
            self.send_index_locked(st, true, last_seqs);
        }
        Ok(())
    }

    fn send_index(&self, durable: bool, meta_last_seqs: Option<Vec<(u64, u64)>>) {
        let mut st = self.inner.st.borrow_mut();
        self.send_index_locked(&mut st, durable, meta_last_seqs.unwrap_or_default());
    }

    fn send_index_locked(&self, st: &mut State, durable: bool, meta_last_seqs: Vec<(u64, u64)>) {
        if st.ops.is_empty() {
            return;
        }
        let batch = Batch {
            ops: std::mem::take(&mut st.ops),
            records: std::mem::take(&mut st.ops_records),
            ticket: st.next_ticket,
            durable,
            meta_last_seqs,
        };
        st.lag_records += batch.records;
        st.next_ticket += 1;
        st.stats.index_batches += 1;
        let sent = self
            .inner
            .index_tx
            .borrow()
            .as_ref()
            .map(|tx| tx.send(batch).is_ok());
        if sent != Some(true) {
            st.failed
                .get_or_insert_with(|| "index thread is gone".to_string());
        }
    }

    /// Task: receives commit reports from the index thread.
    async fn index_acks(self, rx: flume::Receiver<Committed>) {
        while let Ok(c) = rx.recv_async().await {
            {
                let mut st = self.inner.st.borrow_mut();
                let st = &mut *st;
                if let Err(e) = c.result {
                    st.failed.get_or_insert(e);
                }
                st.acked_ticket = c.ticket;
                st.lag_records = st.lag_records.saturating_sub(c.records);
                st.pending_chunks.retain(|_, (t, _)| *t > c.ticket);
                st.pending_edits.retain(|_, (t, _, _)| *t > c.ticket);
                while st
                    .checkpoint_tickets
                    .front()
                    .is_some_and(|(t, _)| *t <= c.ticket)
                {
                    let (_, pos) = st.checkpoint_tickets.pop_front().expect("checked");
                    st.checkpoint = pos;
                }
            }
            self.inner.index_progress.notify();
        }
    }

    fn fail(&self, reason: String) {
        tracing::error!(shard = self.inner.shard, %reason, "shard store failed; refusing writes");
        self.inner.st.borrow_mut().failed.get_or_insert(reason);
    }

    /// After a failure, resolves everything queued with the failure.
    fn drain_failed(&self) {
        let reason = self.inner.st.borrow().failed.clone().unwrap_or_default();
        let mut q = self.inner.queue.borrow_mut();
        q.frames.clear();
        q.items.clear();
        let signal = std::mem::replace(&mut q.signal, Rc::new(BatchSignal::default()));
        drop(q);
        signal.complete(Err(reason));
        self.inner.st.borrow_mut().checkpoint_requested = false;
    }
}
