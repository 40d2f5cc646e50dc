//! Offline inspection of a data directory: record iteration, verification of
//! the log against the index, and salvage. Used by `rookery-admin`; needs no
//! executor and never writes except in [`salvage_shard`].
//!
//! Nothing here trusts the index: records are read from the log with the
//! same scanner recovery uses, and the index is checked against them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use redb::{ReadableDatabase, ReadableTable};

use crate::chunk::{chunk_of, idem_hash, Chunk};
use crate::error::{Error, Result};
use crate::index::{
    RoomRow, CHUNKS, COMPACTED, EDITS, REACTIONS, REACTION_COUNTS, STATE, THREADS, THREAD_HEADS,
};
use crate::record::ArchivedRecord;
use crate::segment::{self, Header, Pos, ScanEnd, HEADER_BYTES};

/// Directory of shard `shard`.
pub fn shard_dir(data_dir: &Path, shard: u32) -> PathBuf {
    data_dir.join(format!("shard-{shard}"))
}

/// Directory of shard `shard`'s log.
pub fn log_dir(data_dir: &Path, shard: u32) -> PathBuf {
    shard_dir(data_dir, shard).join("log")
}

/// What a scan of one segment found.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    /// Segment id.
    pub segment: u32,
    /// File size in bytes.
    pub bytes: u64,
    /// Valid records.
    pub records: u64,
    /// Of which messages.
    pub messages: u64,
    /// How the scan ended; `Err` holds the corruption found.
    pub end: std::result::Result<ScanEnd, String>,
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: offline tool; the data directory is not being written.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// The segments of a shard in log order, as the next open will see them:
/// a compacted segment counts if the index recorded its switch (or there is
/// no index to say, see `shard/compact.rs`).
pub fn log_files(data_dir: &Path, shard: u32) -> Result<segment::LogOrder> {
    let dir = log_dir(data_dir, shard);
    let ids = segment::list(&dir)?;
    let index_path = shard_dir(data_dir, shard).join("index.redb");
    let mut committed: Option<std::collections::HashSet<u32>> = None;
    if index_path.exists() && ids.iter().any(|&id| segment::is_compacted(id)) {
        let (db, _) = IndexDb::open(&index_path)?;
        let tx = db.begin_read()?;
        let checkpoint = tx
            .open_table(STATE)?
            .get("checkpoint")?
            .map_or(0, |v| v.value());
        if checkpoint > 0 {
            let mut set = std::collections::HashSet::new();
            for row in tx.open_table(COMPACTED)?.iter()? {
                set.insert(row?.0.value() as u32);
            }
            committed = Some(set);
        }
    }
    segment::log_order(&dir, &ids, |id| {
        committed.as_ref().is_none_or(|c| c.contains(&id))
    })
}

/// Calls `visit` for every valid record of every live segment of a shard,
/// in log order, and reports each segment. Damage does not stop the walk:
/// the segment's report holds it and the next segment is scanned.
pub fn for_each_record(
    data_dir: &Path,
    shard: u32,
    mut visit: impl FnMut(Pos, &ArchivedRecord),
) -> Result<Vec<SegmentScan>> {
    let dir = log_dir(data_dir, shard);
    let ids: Vec<u32> = log_files(data_dir, shard)?
        .live
        .iter()
        .map(|f| f.id)
        .collect();
    let mut scans = Vec::with_capacity(ids.len());
    for (i, &id) in ids.iter().enumerate() {
        let path = segment::path(&dir, id);
        let map = map_file(&path)?;
        let mut scan = SegmentScan {
            segment: id,
            bytes: map.len() as u64,
            records: 0,
            messages: 0,
            end: Err(String::new()),
        };
        let header = Header::decode(&map, id).and_then(|h| {
            if h.shard == shard {
                Ok(h)
            } else {
                Err(Error::corrupt(
                    id,
                    0,
                    format!("segment belongs to shard {}", h.shard),
                ))
            }
        });
        scan.end = match header {
            Err(e) => Err(e.to_string()),
            Ok(_) => segment::scan(
                &map,
                id,
                HEADER_BYTES as u32,
                i + 1 == ids.len(),
                |offset, rec, _| {
                    scan.records += 1;
                    scan.messages += rec.message().is_some() as u64;
                    visit(
                        Pos {
                            segment: id,
                            offset,
                        },
                        rec,
                    );
                    Ok(())
                },
            )
            .map_err(|e| e.to_string()),
        };
        scans.push(scan);
    }
    Ok(scans)
}

/// The result of verifying one shard.
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    /// Shard number.
    pub shard: u32,
    /// Per-segment scan results.
    pub segments: Vec<SegmentScan>,
    /// Rooms with their message count and seq range found in the log.
    pub rooms: BTreeMap<u64, RoomLog>,
    /// The index checkpoint.
    pub checkpoint: Pos,
    /// Problems that make the shard unusable or lose data.
    pub errors: Vec<String>,
    /// Conditions recovery repairs by itself (torn tail, unindexed tail).
    pub notes: Vec<String>,
}

impl ShardReport {
    /// True when nothing is wrong that recovery cannot repair.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A room as the log shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomLog {
    /// Live messages (seq >= the index's low seq).
    pub messages: u64,
    /// Lowest seq found.
    pub first_seq: u64,
    /// Highest seq found.
    pub last_seq: u64,
    /// Edit and delete records.
    pub changes: u64,
}

struct LogMessage {
    pos: Pos,
    idem: u64,
    ts_ms: u64,
    /// The thread a reply is in (0: not a reply).
    thread: u64,
}

/// Checks every record of a shard's log, and every index entry against the
/// log. Opens the index read-only; the server must not be running.
pub fn verify_shard(data_dir: &Path, shard: u32) -> Result<ShardReport> {
    let mut report = ShardReport {
        shard,
        ..ShardReport::default()
    };
    let mut messages: HashMap<(u64, u64), LogMessage> = HashMap::new();
    let mut changes: HashMap<Pos, (u64, u64)> = HashMap::new();
    let mut last_in_log: HashMap<u64, u64> = HashMap::new();
    let mut reactions: Reactions = HashMap::new();
    report.segments = for_each_record(data_dir, shard, |pos, rec| match rec {
        ArchivedRecord::React(r) => {
            let key = (
                r.room.to_native(),
                r.seq.to_native(),
                r.emoji.to_string(),
                r.by.to_native(),
            );
            reactions.insert(key, (pos, r.on));
            report.rooms.entry(rec.room()).or_default().changes += 1;
        }
        ArchivedRecord::Message(_) | ArchivedRecord::Reply(_) | ArchivedRecord::Post(_) => {
            let m = rec.message().expect("a message kind");
            if let Some((to, thread)) = rec.reply() {
                if to == 0 || to >= m.seq.to_native() || thread == 0 || thread > to {
                    report.errors.push(format!(
                        "room {}: reply {} at {pos:?} answers {to} in thread {thread}",
                        m.room, m.seq
                    ));
                }
            }
            let (room, seq) = (m.room.to_native(), m.seq.to_native());
            let last = last_in_log.entry(room).or_insert(0);
            if seq <= *last {
                report.errors.push(format!(
                    "room {room}: seq {seq} at {pos:?} after seq {last}"
                ));
            }
            *last = (*last).max(seq);
            let idem = idem_hash(m.sender.to_native(), &m.client_id);
            messages.insert(
                (room, seq),
                LogMessage {
                    pos,
                    idem,
                    ts_ms: m.ts_ms.to_native(),
                    thread: rec.reply().map_or(0, |(_, thread)| thread),
                },
            );
            let r = report.rooms.entry(room).or_default();
            r.first_seq = if r.first_seq == 0 {
                seq
            } else {
                r.first_seq.min(seq)
            };
            r.last_seq = r.last_seq.max(seq);
        }
        ArchivedRecord::Edit(_) | ArchivedRecord::Delete(_) => {
            changes.insert(pos, (rec.room(), rec.seq()));
            report.rooms.entry(rec.room()).or_default().changes += 1;
        }
    })?;
    let order = log_files(data_dir, shard)?;
    for id in &order.superseded {
        report.notes.push(format!(
            "segment {id} was compacted but not yet deleted; the next open deletes it"
        ));
    }
    for id in &order.uncommitted {
        report.notes.push(format!(
            "compacted segment {id} was never switched to; the next open deletes it"
        ));
    }
    let last_segment = report.segments.last().map(|s| s.segment);
    for s in &report.segments {
        match &s.end {
            Err(e) => report.errors.push(format!("segment {}: {e}", s.segment)),
            Ok(ScanEnd::Torn { end, reason }) => report.notes.push(format!(
                "segment {}: torn tail at {end} ({reason}); the next open truncates it",
                s.segment
            )),
            Ok(ScanEnd::Clean { .. }) => {}
        }
        if Some(s.segment) != last_segment && matches!(s.end, Ok(ScanEnd::Torn { .. })) {
            report.errors.push(format!(
                "segment {} is torn but is not the last segment",
                s.segment
            ));
        }
    }
    let index_path = shard_dir(data_dir, shard).join("index.redb");
    if !index_path.exists() {
        report
            .notes
            .push("no index: the next open rebuilds it from the log".into());
        return Ok(report);
    }
    check_index(&index_path, &mut report, &messages, &changes, &reactions)?;
    Ok(report)
}

/// An index opened for reading without changing the data directory.
enum IndexDb {
    ReadOnly(redb::ReadOnlyDatabase),
    /// The index was not closed cleanly (redb must repair it before use):
    /// this is a repaired copy in a temporary directory.
    Copy(redb::Database, PathBuf),
}

impl IndexDb {
    fn open(path: &Path) -> Result<(IndexDb, Option<String>)> {
        match redb::Database::builder().open_read_only(path) {
            Ok(db) => Ok((IndexDb::ReadOnly(db), None)),
            Err(redb::DatabaseError::RepairAborted) => {
                let copy = std::env::temp_dir().join(format!(
                    "rookery-verify-{}-{:x}.redb",
                    std::process::id(),
                    crate::chunk::idem_hash(1, &path.display().to_string())
                ));
                std::fs::copy(path, &copy).map_err(|e| Error::io(&copy, e))?;
                let db = redb::Database::builder().create(&copy)?;
                let note = "index was not closed cleanly: verified a repaired copy (the next open repairs it in place)";
                Ok((IndexDb::Copy(db, copy), Some(note.to_string())))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction> {
        Ok(match self {
            IndexDb::ReadOnly(db) => db.begin_read()?,
            IndexDb::Copy(db, _) => db.begin_read()?,
        })
    }
}

impl Drop for IndexDb {
    fn drop(&mut self) {
        if let IndexDb::Copy(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn check_index(
    path: &Path,
    report: &mut ShardReport,
    messages: &HashMap<(u64, u64), LogMessage>,
    changes: &HashMap<Pos, (u64, u64)>,
    reactions: &Reactions,
) -> Result<()> {
    let (db, note) = IndexDb::open(path)?;
    report.notes.extend(note);
    let tx = db.begin_read()?;
    let checkpoint = Pos::from_u64(
        tx.open_table(STATE)?
            .get("checkpoint")?
            .map(|v| v.value())
            .unwrap_or(0),
    );
    report.checkpoint = checkpoint;
    let ends: HashMap<u32, u64> = report
        .segments
        .iter()
        .map(|s| (s.segment, s.end.as_ref().map_or(0, |e| e.end() as u64)))
        .collect();
    if checkpoint.segment > 0
        && ends
            .get(&checkpoint.segment)
            .is_none_or(|&e| (checkpoint.offset as u64) > e)
    {
        report.errors.push(format!(
            "index checkpoint {checkpoint:?} is past the end of the log"
        ));
    }
    let rows = crate::index::read_room_rows(&tx)?;
    // Every message covered by the checkpoint and not retired is indexed,
    // at its exact position.
    let chunks = tx.open_table(CHUNKS)?;
    let mut loaded: HashMap<(u64, u64), Option<Chunk>> = HashMap::new();
    let mut indexed_missing = 0u64;
    for (&(room, seq), m) in messages {
        let row = rows.get(&room).copied().unwrap_or_default();
        if seq < row.low_seq.max(1) {
            continue;
        }
        if let Some(r) = report.rooms.get_mut(&room) {
            r.messages += 1;
        }
        if !before(m.pos, checkpoint) || seq > row.last_seq {
            indexed_missing += 1;
            continue;
        }
        let no = chunk_of(seq);
        if let std::collections::hash_map::Entry::Vacant(v) = loaded.entry((room, no)) {
            let c = match chunks.get((room, no))? {
                Some(bytes) => Some(Chunk::decode(no, bytes.value())?),
                None => None,
            };
            v.insert(c);
        }
        match loaded[&(room, no)].as_ref().and_then(|c| c.get(seq)) {
            None => report.errors.push(format!(
                "room {room} seq {seq}: in the log at {:?} but not in the index",
                m.pos
            )),
            Some(e) if e.pos != m.pos.to_u64() || e.idem != m.idem || e.ts_ms != m.ts_ms => {
                report.errors.push(format!(
                    "room {room} seq {seq}: index entry {e:?} disagrees with the log at {:?}",
                    m.pos
                ))
            }
            Some(_) => {}
        }
    }
    if indexed_missing > 0 {
        report.notes.push(format!("{indexed_missing} messages after the checkpoint are not indexed yet; the next open indexes them"));
    }
    // Every index entry points at the message it names.
    for row in chunks.iter()? {
        let (k, v) = row?;
        let (room, no) = k.value();
        let chunk = Chunk::decode(no, v.value())?;
        let last = rows.get(&room).map_or(0, |r| r.last_seq);
        let low = rows.get(&room).map_or(1, |r| r.low_seq);
        for (i, e) in chunk.entries.iter().enumerate() {
            let seq = no * crate::chunk::CHUNK_LEN + i as u64 + 1;
            if e.pos == 0 || seq > last || seq < low {
                continue;
            }
            if messages
                .get(&(room, seq))
                .is_none_or(|m| m.pos.to_u64() != e.pos)
            {
                report.errors.push(format!(
                    "index room {room} seq {seq} points at {:?}, which is not that message",
                    Pos::from_u64(e.pos)
                ));
            }
        }
    }
    for row in tx.open_table(EDITS)?.iter()? {
        let (k, v) = row?;
        let (room, seq) = k.value();
        let pos = Pos::from_u64(v.value().0);
        if changes.get(&pos) != Some(&(room, seq)) && before(pos, checkpoint) {
            report.errors.push(format!(
                "index edit of room {room} seq {seq} points at {pos:?}, which is not an edit of it"
            ));
        }
    }
    check_threads(&tx, report, messages, &rows, checkpoint)?;
    check_reactions(&tx, report, reactions, &rows, checkpoint)
}

/// The last reaction record of every `(room, seq, emoji, user)` in the
/// log, and where it is.
type Reactions = HashMap<(u64, u64, String, u64), (Pos, bool)>;

/// Every reaction whose last record the checkpoint covers is in the index
/// as that record says (on: a row; off: none), no row is on that the log
/// does not put on, and each count is its rows.
fn check_reactions(
    tx: &redb::ReadTransaction,
    report: &mut ShardReport,
    reactions: &Reactions,
    rows: &HashMap<u64, RoomRow>,
    checkpoint: Pos,
) -> Result<()> {
    let low = |room: u64| rows.get(&room).map_or(1, |r| r.low_seq.max(1));
    let table = tx.open_table(REACTIONS)?;
    let mut counted: BTreeMap<(u64, u64, String), u64> = BTreeMap::new();
    for row in table.iter()? {
        let (k, _) = row?;
        let (room, seq, emoji, user) = k.value();
        if seq < low(room) {
            continue;
        }
        *counted.entry((room, seq, emoji.to_string())).or_default() += 1;
        let key = (room, seq, emoji.to_string(), user);
        let last = reactions.get(&key);
        // A change after the checkpoint is not indexed yet (the next open
        // replays it): the row may still say what came before it.
        let unindexed = last.is_some_and(|(pos, _)| !before(*pos, checkpoint));
        if !unindexed && !last.is_some_and(|(_, on)| *on) {
            report.errors.push(format!(
                "index: user {user}'s reaction {emoji:?} on room {room} seq {seq} is on, which the log does not say"
            ));
        }
    }
    for ((room, seq, emoji, user), (pos, on)) in reactions {
        if *seq < low(*room) || !before(*pos, checkpoint) {
            continue;
        }
        let indexed = table.get((*room, *seq, emoji.as_str(), *user))?.is_some();
        if indexed != *on {
            report.errors.push(format!(
                "room {room} seq {seq}: user {user}'s reaction {emoji:?} is {} in the log, {} in the index",
                if *on { "on" } else { "off" },
                if indexed { "on" } else { "off" },
            ));
        }
    }
    for row in tx.open_table(REACTION_COUNTS)?.iter()? {
        let (k, v) = row?;
        let (room, seq, emoji) = k.value();
        if seq < low(room) {
            continue;
        }
        let rows_on = counted.remove(&(room, seq, emoji.to_string())).unwrap_or(0);
        if v.value() != rows_on {
            report.errors.push(format!(
                "index: reaction {emoji:?} on room {room} seq {seq} counted {}, its rows {rows_on}",
                v.value()
            ));
        }
    }
    for ((room, seq, emoji), n) in counted {
        report.errors.push(format!(
            "index: reaction {emoji:?} on room {room} seq {seq} has {n} rows and no count"
        ));
    }
    Ok(())
}

/// Every reply the checkpoint covers (in a thread not retired) has its
/// thread row; every thread row is a reply of the log in that thread; each
/// thread's head counts its rows and names the last.
fn check_threads(
    tx: &redb::ReadTransaction,
    report: &mut ShardReport,
    messages: &HashMap<(u64, u64), LogMessage>,
    rows: &HashMap<u64, RoomRow>,
    checkpoint: Pos,
) -> Result<()> {
    let low = |room: u64| rows.get(&room).map_or(1, |r| r.low_seq.max(1));
    let threads = tx.open_table(THREADS)?;
    let mut counted: BTreeMap<(u64, u64), (u64, u64)> = BTreeMap::new();
    for row in threads.iter()? {
        let (room, thread, seq) = row?.0.value();
        if thread < low(room) {
            continue;
        }
        let c = counted.entry((room, thread)).or_default();
        *c = (c.0 + 1, c.1.max(seq));
        if messages
            .get(&(room, seq))
            .is_none_or(|m| m.thread != thread)
        {
            report.errors.push(format!(
                "index: room {room} seq {seq} is in thread {thread}, which the log does not say"
            ));
        }
    }
    for (&(room, seq), m) in messages {
        if m.thread == 0 || m.thread < low(room) || !before(m.pos, checkpoint) {
            continue;
        }
        if threads.get((room, m.thread, seq))?.is_none() {
            report.errors.push(format!(
                "room {room} seq {seq}: a reply in thread {} the index does not list",
                m.thread
            ));
        }
    }
    let mut heads: BTreeMap<(u64, u64), (u64, u64)> = BTreeMap::new();
    for row in tx.open_table(THREAD_HEADS)?.iter()? {
        let (k, v) = row?;
        let (room, thread) = k.value();
        if thread >= low(room) {
            heads.insert((room, thread), v.value());
        }
    }
    let keys: std::collections::BTreeSet<&(u64, u64)> =
        heads.keys().chain(counted.keys()).collect();
    for key @ (room, thread) in keys {
        let (head, rows) = (heads.get(key), counted.get(key));
        if head != rows {
            report.errors.push(format!(
                "index: room {room} thread {thread} head says (replies, last) = {head:?}, its rows {rows:?}"
            ));
        }
    }
    Ok(())
}

/// True when `pos` is in the log before `checkpoint` (compacted segments
/// lie before every checkpoint).
fn before(pos: Pos, checkpoint: Pos) -> bool {
    segment::is_compacted(pos.segment) || pos < checkpoint
}

/// What [`salvage_shard`] did.
#[derive(Debug, Clone, Default)]
pub struct SalvageReport {
    /// Segment that was cut, and the offset it was cut at.
    pub cut: Option<(u32, u32)>,
    /// Segments after the cut moved to `shard-K/salvaged/`.
    pub moved: Vec<u32>,
    /// Valid records of the moved segments (they stay readable there; valid
    /// records after the damage inside the cut segment are not counted, and
    /// stay in its copy under `salvaged/`).
    pub records_dropped: u64,
}

/// Makes a damaged shard openable: cuts its log at the first corruption
/// (the damaged segment is truncated there; later segments are moved to
/// `shard-K/salvaged/`) and deletes the index so the next open rebuilds it.
/// Everything before the damage is kept.
pub fn salvage_shard(data_dir: &Path, shard: u32) -> Result<SalvageReport> {
    // What an interrupted compaction left goes first, as the next open
    // would have deleted it: without the index, that open could not tell.
    let dir = log_dir(data_dir, shard);
    let order = log_files(data_dir, shard)?;
    for &id in order.uncommitted.iter().chain(&order.superseded) {
        let path = segment::path(&dir, id);
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
    }
    let scans = for_each_record(data_dir, shard, |_, _| {})?;
    let mut report = SalvageReport::default();
    let Some(bad) = scans.iter().position(|s| s.end.is_err()) else {
        return Ok(report);
    };
    let path = segment::path(&dir, scans[bad].segment);
    let map = map_file(&path)?;
    // Find the damaged offset: scan again, remembering the last good end.
    let mut good_end = HEADER_BYTES as u32;
    let header_ok = Header::decode(&map, scans[bad].segment).is_ok();
    if header_ok {
        let _ = segment::scan(
            &map,
            scans[bad].segment,
            HEADER_BYTES as u32,
            false,
            |offset, _, len| {
                good_end = offset + len;
                Ok(())
            },
        );
    }
    drop(map);
    let salvaged = shard_dir(data_dir, shard).join("salvaged");
    std::fs::create_dir_all(&salvaged).map_err(|e| Error::io(&salvaged, e))?;
    let copy = salvaged.join(segment::file_name(scans[bad].segment));
    std::fs::copy(&path, &copy).map_err(|e| Error::io(&copy, e))?;
    if header_ok {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.set_len(good_end as u64)
            .and_then(|_| file.sync_all())
            .map_err(|e| Error::io(&path, e))?;
        report.cut = Some((scans[bad].segment, good_end));
    } else {
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        report.cut = Some((scans[bad].segment, 0));
    }
    for s in &scans[bad + 1..] {
        let from = segment::path(&dir, s.segment);
        let to = salvaged.join(segment::file_name(s.segment));
        std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
        report.moved.push(s.segment);
        report.records_dropped += s.records;
    }
    let index = shard_dir(data_dir, shard).join("index.redb");
    if index.exists() {
        std::fs::remove_file(&index).map_err(|e| Error::io(&index, e))?;
    }
    crate::log::sync_dir(&dir)?;
    Ok(report)
}

/// Every file under `dir` (recursively) whose bytes contain `needle`:
/// how tests, and an operator auditing an erasure, check that a deleted
/// message's text left the data directory. Reads each file whole.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Result<Vec<PathBuf>> {
    assert!(!needle.is_empty(), "an empty needle is in every file");
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let path = entry.map_err(|e| Error::io(&d, e))?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            // A file deleted since it was listed holds nothing.
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            if bytes.windows(needle.len()).any(|w| w == needle) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Room rows of a shard's index (read-only; empty when there is no index).
pub fn room_rows(data_dir: &Path, shard: u32) -> Result<HashMap<u64, RoomRow>> {
    let path = shard_dir(data_dir, shard).join("index.redb");
    if !path.exists() {
        return Ok(HashMap::new());
    }
    let (db, _) = IndexDb::open(&path)?;
    let tx = db.begin_read()?;
    crate::index::read_room_rows(&tx)
}
