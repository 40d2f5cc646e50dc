//! The per-shard index database (`shard-K/index.redb`) and the thread that
//! writes it.
//!
//! The log is the truth; everything here is derived from it and can be
//! rebuilt by replaying the log. Tables:
//!
//! | table      | key                   | value                                   |
//! |------------|-----------------------|-----------------------------------------|
//! | `chunks`   | `(room, chunk_no)`    | [`crate::chunk::Chunk`] bytes           |
//! | `edits`    | `(room, seq)`         | `(pos, deleted)` of the latest edit/delete |
//! | `rooms`    | `room`                | [`RoomRow`] as a tuple                  |
//! | `segments` | `(segment, room)`     | highest seq the segment holds for room  |
//! | `state`    | `"checkpoint"`        | packed [`crate::Pos`]                   |
//! | `compacted`| `segment`             | `(first, last)` keys of the run it replaced |
//! | `scrub`    | `segment`             | ms since which it holds a deleted body  |
//! | `threads`  | `(room, thread, seq)` | `()`: reply `seq` is in the thread of `thread` |
//! | `thread_heads` | `(room, thread)`  | `(replies, last reply's seq)`           |
//! | `reactions` | `(room, seq, emoji, user)` | `()`: the user's reaction is on |
//! | `reaction_counts` | `(room, seq, emoji)` | users with that reaction on (> 0) |
//!
//! Invariant: a batch carrying a checkpoint is committed with
//! `Durability::Immediate` and is never merged with later batches, so the
//! durable checkpoint always covers exactly the rows written before it, and
//! those rows only reference log bytes that were synced before it was sent.
//! redb commits never run on a shard's reactor: this thread does them.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::meta::Meta;

pub(crate) const CHUNKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("chunks");
pub(crate) const EDITS: TableDefinition<(u64, u64), (u64, u64)> = TableDefinition::new("edits");
pub(crate) const ROOMS: TableDefinition<u64, (u64, u64, u64, u64, u64)> =
    TableDefinition::new("rooms");
pub(crate) const SEGMENTS: TableDefinition<(u64, u64), u64> = TableDefinition::new("segments");
pub(crate) const STATE: TableDefinition<&str, u64> = TableDefinition::new("state");
/// Compacted segments whose switch committed: the run each one replaced.
pub(crate) const COMPACTED: TableDefinition<u64, (u64, u64)> = TableDefinition::new("compacted");
/// Segments holding the body of a deleted message, and since when.
pub(crate) const SCRUB: TableDefinition<u64, u64> = TableDefinition::new("scrub");
/// The replies of each thread, by the seq of its first message.
pub(crate) const THREADS: TableDefinition<(u64, u64, u64), ()> = TableDefinition::new("threads");
/// Per thread: how many replies, and the seq of the last.
pub(crate) const THREAD_HEADS: TableDefinition<(u64, u64), (u64, u64)> =
    TableDefinition::new("thread_heads");
/// Who has which reaction on which message.
pub(crate) const REACTIONS: TableDefinition<(u64, u64, &str, u64), ()> =
    TableDefinition::new("reactions");
/// How many users have each reaction on each message (rows > 0 only).
pub(crate) const REACTION_COUNTS: TableDefinition<(u64, u64, &str), u64> =
    TableDefinition::new("reaction_counts");
const CHECKPOINT_KEY: &str = "checkpoint";

/// The persisted state of one room in a shard index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoomRow {
    /// Highest seq covered by the checkpoint.
    pub last_seq: u64,
    /// Lowest live seq (retention has removed everything below).
    pub low_seq: u64,
    /// Retention by count: keep at most this many messages (0 = unlimited).
    pub keep_messages: u64,
    /// Retention by age in milliseconds (0 = unlimited).
    pub keep_age_ms: u64,
    /// Timestamp of the last message, for monotonic room time.
    pub last_ts_ms: u64,
}

impl RoomRow {
    fn to_tuple(self) -> (u64, u64, u64, u64, u64) {
        (
            self.last_seq,
            self.low_seq,
            self.keep_messages,
            self.keep_age_ms,
            self.last_ts_ms,
        )
    }
    fn from_tuple(t: (u64, u64, u64, u64, u64)) -> Self {
        RoomRow {
            last_seq: t.0,
            low_seq: t.1,
            keep_messages: t.2,
            keep_age_ms: t.3,
            last_ts_ms: t.4,
        }
    }
}

/// One change to the index.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Put an encoded chunk.
    Chunk { room: u64, no: u64, bytes: Vec<u8> },
    /// Latest edit (or delete, when `deleted`) of a message.
    Edit {
        room: u64,
        seq: u64,
        pos: u64,
        deleted: bool,
    },
    /// Room state.
    Room { room: u64, row: RoomRow },
    /// Highest seq of `room` held in `segment`.
    SegmentRoom {
        segment: u32,
        room: u64,
        max_seq: u64,
    },
    /// Reply `seq` joined the thread that starts at `thread` (idempotent:
    /// a replayed reply is counted once).
    Thread { room: u64, thread: u64, seq: u64 },
    /// `user`'s reaction `emoji` on message `seq` is on or off (idempotent:
    /// the count moves only when the row changes).
    React {
        room: u64,
        seq: u64,
        emoji: String,
        user: u64,
        on: bool,
    },
    /// Retention moved a room's low seq: drop whole chunks, edits and
    /// threads below.
    Retire { room: u64, low_seq: u64 },
    /// A segment file is about to be deleted: forget its summary, its
    /// scrub mark and its compaction row.
    DropSegment { segment: u32 },
    /// Compaction moved records of `room`: each `(seq, old, new)` entry (a
    /// message's chunk entry, or with `change` the latest edit or delete)
    /// is set to `new` only if it still points at `old` (a later edit has
    /// moved on and keeps its own position).
    Repoint {
        room: u64,
        messages: Vec<(u64, u64, u64)>,
        changes: Vec<(u64, u64, u64)>,
    },
    /// Compacted segment `segment` replaces the run `first..=last`: its
    /// switch is committed.
    Compacted { segment: u32, first: u32, last: u32 },
    /// `segment` holds a deleted message's body since `since_ms`.
    Scrub { segment: u32, since_ms: u64 },
    /// All log bytes before this packed position are reflected above.
    Checkpoint(u64),
}

/// A unit of work for the index thread.
pub(crate) struct Batch {
    pub ops: Vec<Op>,
    /// Number of log records the batch covers (for lag accounting).
    pub records: usize,
    /// Sequence number of the batch, echoed back when committed.
    pub ticket: u64,
    /// Commit with `Durability::Immediate` (set on checkpoint batches).
    pub durable: bool,
    /// Rooms' last seqs to push into `meta.redb` (checkpoint batches).
    pub meta_last_seqs: Vec<(u64, u64)>,
}

/// What the index thread reports after a commit.
#[derive(Debug)]
pub(crate) struct Committed {
    /// Highest ticket now committed.
    pub ticket: u64,
    /// Records covered by the committed batches.
    pub records: usize,
    /// The commit's outcome.
    pub result: Result<(), String>,
}

/// Opens (creating if needed) a shard's index database and its tables.
pub(crate) fn open_db(path: &Path, cache_bytes: usize) -> Result<Database> {
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)?;
    let tx = db.begin_write()?;
    tx.open_table(CHUNKS)?;
    tx.open_table(EDITS)?;
    tx.open_table(ROOMS)?;
    tx.open_table(SEGMENTS)?;
    tx.open_table(STATE)?;
    tx.open_table(COMPACTED)?;
    tx.open_table(SCRUB)?;
    tx.open_table(THREADS)?;
    tx.open_table(THREAD_HEADS)?;
    tx.open_table(REACTIONS)?;
    tx.open_table(REACTION_COUNTS)?;
    tx.commit()?;
    Ok(db)
}

/// What a shard reads from its index at open.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub checkpoint: u64,
    pub rooms: Vec<(u64, RoomRow)>,
    pub segments: Vec<(u32, u64, u64)>,
    /// Committed compacted segments.
    pub compacted: Vec<u32>,
    /// Segments holding deleted bodies, with the time since when.
    pub scrub: Vec<(u32, u64)>,
}

/// Reads the checkpoint, every room row and every segment summary.
pub(crate) fn load(db: &Database) -> Result<Loaded> {
    let tx = db.begin_read()?;
    let checkpoint = tx
        .open_table(STATE)?
        .get(CHECKPOINT_KEY)?
        .map(|v| v.value())
        .unwrap_or(0);
    let rooms = read_room_rows(&tx)?.into_iter().collect();
    let mut segments = Vec::new();
    for row in tx.open_table(SEGMENTS)?.iter()? {
        let (k, v) = row?;
        let (seg, room) = k.value();
        segments.push((seg as u32, room, v.value()));
    }
    let mut compacted = Vec::new();
    for row in tx.open_table(COMPACTED)?.iter()? {
        compacted.push(row?.0.value() as u32);
    }
    let mut scrub = Vec::new();
    for row in tx.open_table(SCRUB)?.iter()? {
        let (k, v) = row?;
        scrub.push((k.value() as u32, v.value()));
    }
    Ok(Loaded {
        checkpoint,
        rooms,
        segments,
        compacted,
        scrub,
    })
}

/// The latest edit or delete `(pos, deleted)` of every seq in `lo..=hi` of
/// a room, through a read transaction (compaction reads a snapshot).
pub(crate) fn changes_in(
    tx: &redb::ReadTransaction,
    room: u64,
    lo: u64,
    hi: u64,
) -> Result<Vec<(u64, u64, bool)>> {
    let table = tx.open_table(EDITS)?;
    let mut out = Vec::new();
    for row in table.range((room, lo)..=(room, hi))? {
        let (k, v) = row?;
        let (pos, deleted) = v.value();
        out.push((k.value().1, pos, deleted != 0));
    }
    Ok(out)
}

/// Every room row of an index, through any read transaction.
pub(crate) fn read_room_rows(
    tx: &redb::ReadTransaction,
) -> Result<std::collections::HashMap<u64, RoomRow>> {
    let mut rows = std::collections::HashMap::new();
    for row in tx.open_table(ROOMS)?.iter()? {
        let (k, v) = row?;
        rows.insert(k.value(), RoomRow::from_tuple(v.value()));
    }
    Ok(rows)
}

/// Reads one chunk's bytes.
pub(crate) fn read_chunk(db: &Database, room: u64, no: u64) -> Result<Option<Vec<u8>>> {
    let tx = db.begin_read()?;
    let table = tx.open_table(CHUNKS)?;
    Ok(table.get((room, no))?.map(|v| v.value().to_vec()))
}

/// Whether `room` has any edit row.
pub(crate) fn has_edits(db: &Database, room: u64) -> Result<bool> {
    let tx = db.begin_read()?;
    let table = tx.open_table(EDITS)?;
    let any = table.range((room, 0)..=(room, u64::MAX))?.next().is_some();
    Ok(any)
}

/// Whether `room` has any thread.
pub(crate) fn has_threads(db: &Database, room: u64) -> Result<bool> {
    let tx = db.begin_read()?;
    let table = tx.open_table(THREAD_HEADS)?;
    let any = table.range((room, 0)..=(room, u64::MAX))?.next().is_some();
    Ok(any)
}

/// `(thread, replies, last reply's seq)` of the threads of `room` that
/// start in `lo..=hi`.
pub(crate) fn read_thread_heads(
    db: &Database,
    room: u64,
    lo: u64,
    hi: u64,
) -> Result<Vec<(u64, u64, u64)>> {
    let tx = db.begin_read()?;
    let table = tx.open_table(THREAD_HEADS)?;
    let mut out = Vec::new();
    for row in table.range((room, lo)..=(room, hi))? {
        let (k, v) = row?;
        let (n, last) = v.value();
        out.push((k.value().1, n, last));
    }
    Ok(out)
}

/// Whether `room` has any reaction.
pub(crate) fn has_reactions(db: &Database, room: u64) -> Result<bool> {
    let tx = db.begin_read()?;
    let table = tx.open_table(REACTION_COUNTS)?;
    let first = table.range((room, 0, "")..)?.next().transpose()?;
    Ok(first.is_some_and(|(k, _)| k.value().0 == room))
}

/// `(seq, emoji, count, mine)`: one reaction on one message.
pub(crate) type ReactionRow = (u64, String, u64, bool);

/// Committed reactions of `room`, read in one snapshot: `(seq, emoji,
/// count, mine)` of every reaction on the messages `lo..=hi` (`mine`:
/// whether `user`, when given, has it on), and whether each of `keys`
/// (`(seq, emoji, user)`) is on.
pub(crate) fn read_reactions(
    db: &Database,
    room: u64,
    lo: u64,
    hi: u64,
    user: Option<u64>,
    keys: &[(u64, &str, u64)],
) -> Result<(Vec<ReactionRow>, Vec<bool>)> {
    let tx = db.begin_read()?;
    let counts = tx.open_table(REACTION_COUNTS)?;
    let users = tx.open_table(REACTIONS)?;
    let mut on = Vec::with_capacity(keys.len());
    for &(seq, emoji, u) in keys {
        on.push(users.get((room, seq, emoji, u))?.is_some());
    }
    let mut out = Vec::new();
    for row in counts.range((room, lo, "")..)? {
        let (k, v) = row?;
        let (r, seq, emoji) = k.value();
        if r != room || seq > hi {
            break;
        }
        let mine = match user {
            Some(u) => users.get((room, seq, emoji, u))?.is_some(),
            None => false,
        };
        out.push((seq, emoji.to_string(), v.value(), mine));
    }
    Ok((out, on))
}

/// Up to `len` replies of a thread with seqs above `after`, ascending.
pub(crate) fn read_thread(
    db: &Database,
    room: u64,
    thread: u64,
    after: u64,
    len: usize,
) -> Result<Vec<u64>> {
    let tx = db.begin_read()?;
    let table = tx.open_table(THREADS)?;
    let mut out = Vec::with_capacity(len.min(1024));
    if after == u64::MAX {
        return Ok(out);
    }
    for row in table.range((room, thread, after + 1)..=(room, thread, u64::MAX))? {
        if out.len() >= len {
            break;
        }
        out.push(row?.0.value().2);
    }
    Ok(out)
}

/// Reads the latest edit/delete of each seq in `lo..=hi`.
pub(crate) fn read_edits(
    db: &Database,
    room: u64,
    lo: u64,
    hi: u64,
) -> Result<Vec<(u64, u64, bool)>> {
    changes_in(&db.begin_read()?, room, lo, hi)
}

fn apply(tx: &redb::WriteTransaction, ops: &[Op]) -> Result<()> {
    let mut chunks = tx.open_table(CHUNKS)?;
    let mut edits = tx.open_table(EDITS)?;
    let mut rooms = tx.open_table(ROOMS)?;
    let mut segments = tx.open_table(SEGMENTS)?;
    let mut state = tx.open_table(STATE)?;
    let mut compacted = tx.open_table(COMPACTED)?;
    let mut scrub = tx.open_table(SCRUB)?;
    let mut threads = tx.open_table(THREADS)?;
    let mut heads = tx.open_table(THREAD_HEADS)?;
    let mut reactions = tx.open_table(REACTIONS)?;
    let mut counts = tx.open_table(REACTION_COUNTS)?;
    let mut i = 0;
    while i < ops.len() {
        let op = &ops[i];
        i += 1;
        match op {
            Op::Chunk { .. } => {
                // A run of chunk puts goes in key order: the B-tree's pages
                // are then filled one after another instead of each dirtied
                // many times (rooms interleave in the log). Stable: a later
                // put of the same chunk still wins.
                let run_end = (i - 1)
                    + ops[i - 1..]
                        .iter()
                        .take_while(|o| matches!(o, Op::Chunk { .. }))
                        .count();
                let mut run: Vec<(u64, u64, &[u8])> = ops[i - 1..run_end]
                    .iter()
                    .map(|o| match o {
                        Op::Chunk { room, no, bytes } => (*room, *no, bytes.as_slice()),
                        _ => unreachable!("a run of chunk puts"),
                    })
                    .collect();
                run.sort_by_key(|&(room, no, _)| (room, no));
                for (room, no, bytes) in run {
                    chunks.insert((room, no), bytes)?;
                }
                i = run_end;
            }
            Op::Edit {
                room,
                seq,
                pos,
                deleted,
            } => {
                edits.insert((*room, *seq), (*pos, *deleted as u64))?;
            }
            Op::Room { room, row } => {
                rooms.insert(*room, row.to_tuple())?;
            }
            Op::Thread { room, thread, seq } => {
                if threads.insert((*room, *thread, *seq), ())?.is_none() {
                    let (n, last) = heads.get((*room, *thread))?.map_or((0, 0), |v| v.value());
                    heads.insert((*room, *thread), (n + 1, last.max(*seq)))?;
                }
            }
            Op::React {
                room,
                seq,
                emoji,
                user,
                on,
            } => {
                let key = (*room, *seq, emoji.as_str(), *user);
                let changed = if *on {
                    reactions.insert(key, ())?.is_none()
                } else {
                    reactions.remove(key)?.is_some()
                };
                if changed {
                    let at = (*room, *seq, emoji.as_str());
                    let n = counts.get(at)?.map_or(0, |v| v.value());
                    match (*on, n) {
                        (true, n) => counts.insert(at, n + 1).map(|_| ())?,
                        (false, 0 | 1) => counts.remove(at).map(|_| ())?,
                        (false, n) => counts.insert(at, n - 1).map(|_| ())?,
                    }
                }
            }
            Op::SegmentRoom {
                segment,
                room,
                max_seq,
            } => {
                segments.insert((*segment as u64, *room), *max_seq)?;
            }
            Op::Retire { room, low_seq } => {
                let low_chunk = crate::chunk::chunk_of((*low_seq).max(1));
                chunks.retain_in((*room, 0)..(*room, low_chunk), |_, _| false)?;
                edits.retain_in((*room, 0)..(*room, *low_seq), |_, _| false)?;
                // A thread's replies come after its first message: a
                // thread whose first message is retired goes whole.
                threads.retain_in((*room, 0, 0)..(*room, *low_seq, 0), |_, _| false)?;
                heads.retain_in((*room, 0)..(*room, *low_seq), |_, _| false)?;
                reactions.retain_in((*room, 0, "", 0)..(*room, *low_seq, "", 0), |_, _| false)?;
                counts.retain_in((*room, 0, "")..(*room, *low_seq, ""), |_, _| false)?;
            }
            Op::DropSegment { segment } => {
                let s = *segment as u64;
                segments.retain_in((s, 0)..=(s, u64::MAX), |_, _| false)?;
                scrub.remove(s)?;
                compacted.remove(s)?;
            }
            Op::Repoint {
                room,
                messages,
                changes,
            } => {
                repoint_chunks(&mut chunks, *room, messages)?;
                for &(seq, old, new) in changes {
                    let current = edits.get((*room, seq))?.map(|v| v.value());
                    if let Some((_, deleted)) = current.filter(|(pos, _)| *pos == old) {
                        edits.insert((*room, seq), (new, deleted))?;
                    }
                }
            }
            Op::Compacted {
                segment,
                first,
                last,
            } => {
                compacted.insert(*segment as u64, (*first as u64, *last as u64))?;
            }
            Op::Scrub { segment, since_ms } => {
                let s = *segment as u64;
                if scrub.get(s)?.is_none() {
                    scrub.insert(s, *since_ms)?;
                }
            }
            Op::Checkpoint(pos) => {
                state.insert(CHECKPOINT_KEY, *pos)?;
            }
        }
    }
    Ok(())
}

/// Sets each `(seq, old, new)` chunk entry of `room` that still points at
/// `old` to `new` (`moves` ascending by seq). A chunk row that is gone
/// (retired since) is left gone.
fn repoint_chunks(
    chunks: &mut redb::Table<(u64, u64), &[u8]>,
    room: u64,
    moves: &[(u64, u64, u64)],
) -> Result<()> {
    use crate::chunk::{chunk_of, Chunk};
    let mut i = 0;
    while i < moves.len() {
        let no = chunk_of(moves[i].0);
        let end = i + moves[i..]
            .iter()
            .take_while(|m| chunk_of(m.0) == no)
            .count();
        let row = chunks.get((room, no))?.map(|v| v.value().to_vec());
        if let Some(bytes) = row {
            let mut chunk = Chunk::decode(no, &bytes)?;
            let mut changed = false;
            for &(seq, old, new) in &moves[i..end] {
                if let Some(mut e) = chunk.get(seq).filter(|e| e.pos == old) {
                    e.pos = new;
                    chunk.set(seq, e);
                    changed = true;
                }
            }
            if changed {
                chunks.insert((room, no), chunk.encode().as_slice())?;
            }
        }
        i = end;
    }
    Ok(())
}

/// Commits one group of batches.
fn commit(db: &Database, batches: &[Batch]) -> Result<()> {
    let mut tx = db.begin_write()?;
    let durable = batches.iter().any(|b| b.durable);
    // Durable commits save redb's allocator state: reopening after a crash
    // is then immediate instead of a full-file repair, and `rookery-admin`
    // can open the index read-only.
    tx.set_quick_repair(durable);
    tx.set_durability(if durable {
        redb::Durability::Immediate
    } else {
        redb::Durability::None
    })?;
    for b in batches {
        apply(&tx, &b.ops)?;
    }
    tx.commit()?;
    Ok(())
}

/// Body of the index thread: receive batches, coalesce the ones waiting
/// (never past a durable one), commit, report. Exits when the sender is
/// dropped.
pub(crate) fn run(
    db: Arc<Database>,
    meta: Option<Arc<Meta>>,
    rx: flume::Receiver<Batch>,
    done: flume::Sender<Committed>,
    coalesce_max: usize,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while !group.last().expect("non-empty").durable && group.len() < coalesce_max {
            match rx.try_recv() {
                Ok(b) => group.push(b),
                Err(_) => break,
            }
        }
        let mut result = commit(&db, &group).map_err(|e| e.to_string());
        if let (Ok(()), Some(meta)) = (&result, &meta) {
            let last: Vec<(u64, u64)> = group
                .iter()
                .flat_map(|b| b.meta_last_seqs.iter().copied())
                .collect();
            if !last.is_empty() {
                result = meta
                    .advance_last_seq(&last, group.iter().any(|b| b.durable))
                    .map_err(|e| e.to_string());
            }
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "index commit failed");
        }
        let report = Committed {
            ticket: group.last().expect("non-empty").ticket,
            records: group.iter().map(|b| b.records).sum(),
            result,
        };
        if done.send(report).is_err() {
            return;
        }
    }
}

/// Spawns the index thread of a shard.
pub(crate) fn spawn(
    shard: u32,
    db: Arc<Database>,
    meta: Option<Arc<Meta>>,
) -> Result<(
    flume::Sender<Batch>,
    flume::Receiver<Committed>,
    std::thread::JoinHandle<()>,
)> {
    let (tx, rx) = flume::unbounded();
    let (done_tx, done_rx) = flume::unbounded();
    let handle = std::thread::Builder::new()
        .name(format!("rookery-index-{shard}"))
        .spawn(move || {
            // Its backlog is bounded by `index_lag_records_max`.
            crate::threads::below_shards();
            run(db, meta, rx, done_tx, 256)
        })
        .map_err(|e| Error::io("index thread", e))?;
    Ok((tx, done_rx, handle))
}
