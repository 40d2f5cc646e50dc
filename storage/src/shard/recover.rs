//! Recovery at open: replay the log from the checkpoint, truncate a torn
//! tail, seal the last segment, and start a fresh active segment.
//!
//! Invariant: records are applied exactly as the committer applies them, so
//! the state after replay equals the state before the crash for every
//! record that reached the disk.

use std::collections::BTreeSet;

use super::*;

/// Applies the durable retention rows of `meta` to this shard's rooms: the
/// index may be older than them, or gone.
pub(super) fn apply_retention_rows(
    st: &mut State,
    meta: &Meta,
    shard: u32,
    shards: u32,
) -> Result<()> {
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

/// Finishes or undoes a compaction a crash interrupted, and returns the
/// live segments in log order. A compacted file counts if the index
/// recorded its switch, or if there is no index (`checkpoint` 0: the log is
/// replayed whole, and either layout of a run gives the same state).
/// Deleted: compacted files whose switch did not commit, files a committed
/// one superseded, and unfinished `.seg.tmp` rewrites.
pub(super) fn settle_compaction(
    log_dir: &std::path::Path,
    ids: &[u32],
    loaded: &index::Loaded,
    st: &mut State,
) -> Result<Vec<segment::LogFile>> {
    let full_replay = loaded.checkpoint == 0;
    let committed: HashSet<u32> = loaded.compacted.iter().copied().collect();
    let order = segment::log_order(log_dir, ids, |id| full_replay || committed.contains(&id))?;
    let mut removed = false;
    for &id in order.uncommitted.iter().chain(&order.superseded) {
        let path = segment::path(log_dir, id);
        tracing::info!(
            segment = id,
            "removing a segment an interrupted compaction left"
        );
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        removed = true;
    }
    for entry in std::fs::read_dir(log_dir).map_err(|e| Error::io(log_dir, e))? {
        let path = entry.map_err(|e| Error::io(log_dir, e))?.path();
        if path.to_str().is_some_and(|p| p.ends_with(".seg.tmp")) {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(log_dir)?;
    }
    let live: HashSet<u32> = order.live.iter().map(|f| f.id).collect();
    for &id in &loaded.compacted {
        if !live.contains(&id) {
            st.ops.push(Op::DropSegment { segment: id });
        }
    }
    for f in &order.live {
        if segment::is_compacted(f.id) {
            st.segments.entry(f.id).or_default().covers = Some((f.key, f.last));
            if full_replay {
                st.ops.push(Op::Compacted {
                    segment: f.id,
                    first: f.key,
                    last: f.last,
                });
            }
        }
    }
    Ok(order.live)
}

/// Records replayed between two index batches sent during a replay.
const REPLAY_BATCH_RECORDS: usize = 64 * 1024;

/// A segment larger than this is mapped instead of read (its buffer would
/// cost too much memory).
const READ_AHEAD_BYTES_MAX: u64 = 256 << 20;
/// Bytes per `O_DIRECT` read request.
const READ_AHEAD_STEP_BYTES: usize = 4 << 20;

/// A segment's bytes read by [`ReadAhead`].
type SegmentBytes = rkyv::util::AlignedVec<4096>;

/// A thread that reads the segments of a replay with large `O_DIRECT`
/// reads, in order, one segment ahead of the replay, into two buffers the
/// replay hands back in turn (at most 2 x 256 MiB per shard rebuilding;
/// 2 x 64 MiB with default segments).
/// Replaying from these buffers costs the disk's sequential rate and no
/// page cache: measured on the reference VM, reading a cold 2.9 GB log
/// through the page cache took 2.7 s (2 s of it kernel CPU filling the
/// cache), with `O_DIRECT` 1.5 s. A segment it cannot read so (a file
/// system without `O_DIRECT`, a segment too large) is mapped instead.
struct ReadAhead {
    rx: std::sync::mpsc::Receiver<Option<SegmentBytes>>,
    back: std::sync::mpsc::Sender<SegmentBytes>,
}

impl ReadAhead {
    fn start(paths: Vec<std::path::PathBuf>) -> ReadAhead {
        // A rendezvous: the thread holds at most the one segment it read
        // ahead, and its buffer comes back before it reads the next one.
        let (tx, rx) = std::sync::mpsc::sync_channel(0);
        let (back, returned) = std::sync::mpsc::channel::<SegmentBytes>();
        let spawned = std::thread::Builder::new()
            .name("rookery-readahead".into())
            .spawn(move || {
                crate::threads::float();
                let mut spare: Option<SegmentBytes> = None;
                for path in &paths {
                    let mut buf = spare
                        .take()
                        .or_else(|| returned.try_recv().ok())
                        .unwrap_or_default();
                    let sent = if read_direct(path, &mut buf) {
                        tx.send(Some(buf))
                    } else {
                        spare = Some(buf);
                        tx.send(None)
                    };
                    // Blocks while the replay is far enough behind; ends
                    // when the replay dropped its end.
                    if sent.is_err() {
                        return;
                    }
                }
            });
        if spawned.is_err() {
            let (_, rx) = std::sync::mpsc::sync_channel(0);
            return ReadAhead { rx, back }; // every segment will be mapped
        }
        ReadAhead { rx, back }
    }

    /// The next segment's bytes, if they could be read directly.
    fn next(&self) -> Option<SegmentBytes> {
        self.rx.recv().ok().flatten()
    }

    /// Hands a buffer back for a later segment.
    fn recycle(&self, buf: SegmentBytes) {
        let _ = self.back.send(buf);
    }
}

/// Reads a whole file with `O_DIRECT` into `buf` (resized to the file);
/// false when it cannot (the caller maps the file).
fn read_direct(path: &std::path::Path, buf: &mut SegmentBytes) -> bool {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    else {
        return false;
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return false;
    };
    if len > READ_AHEAD_BYTES_MAX {
        return false;
    }
    let cap = (len as usize).next_multiple_of(4096);
    buf.resize(cap, 0);
    let mut off = 0usize;
    while off < len as usize {
        let step = READ_AHEAD_STEP_BYTES.min(cap - off);
        match file.read_at(&mut buf[off..off + step], off as u64) {
            Ok(0) => break,
            Ok(n) => off += n,
            Err(_) => return false,
        }
    }
    if off != len as usize {
        return false; // changed under us: let the replay look itself
    }
    buf.resize(off, 0); // shrinks: drops the read past the end
    true
}

impl ShardStore {
    /// Replays the log after the checkpoint (all of it, in log order, when
    /// the index is new), truncates a torn tail, seals the last segment,
    /// and creates a fresh active segment.
    pub(super) async fn recover(&self, files: &[segment::LogFile]) -> Result<LogWriter> {
        let ids: Vec<u32> = files.iter().map(|f| f.id).collect();
        let ids = &ids[..];
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
            // One `DropSegment` forgets a segment's summary and scrub note.
            let mut st = self.inner.st.borrow_mut();
            let gone: BTreeSet<u32> = st
                .segments
                .keys()
                .chain(st.scrub.keys())
                .filter(|id| !ids.contains(id))
                .copied()
                .collect();
            for id in gone {
                st.segments.remove(&id);
                st.scrub.remove(&id);
                st.ops.push(Op::DropSegment { segment: id });
            }
        }
        let last = ids.last().copied();
        // Compacted segments lie before every checkpoint: only a whole
        // replay (checkpoint 0) reads them, in their place in the log.
        let replayed: Vec<u32> = ids
            .iter()
            .filter(|&&id| ckpt.segment == 0 || !segment::is_compacted(id) && id >= ckpt.segment)
            .copied()
            .collect();
        // The next segments stream in from the disk while one is replayed
        // (a replay faulting its pages in one by one reads a cold log at a
        // third of the disk's sequential rate).
        // Only a whole replay reads ahead: from a checkpoint, the replay
        // reads the tail of one segment or two, which a mapping reads best.
        let ahead = ReadAhead::start(
            replayed
                .iter()
                .filter(|_| ckpt.segment == 0)
                .map(|&id| segment::path(&self.inner.log_dir, id))
                .collect(),
        );
        for &id in &replayed {
            let start = if id == ckpt.segment {
                ckpt.offset.max(HEADER_BYTES as u32)
            } else {
                HEADER_BYTES as u32
            };
            let read = ahead.next();
            self.replay_segment(id, start, Some(id) == last, read.as_deref())?;
            if let Some(buf) = read {
                ahead.recycle(buf);
            }
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
        {
            // Seqs below a room's low seq were taken even when no record of
            // them is left (retention or compaction removed them all).
            let mut st = self.inner.st.borrow_mut();
            let st = &mut *st;
            for (id, r) in st.rooms.iter_mut() {
                if r.durable_seq + 1 < r.low_seq {
                    r.durable_seq = r.low_seq - 1;
                    r.next_seq = r.next_seq.max(r.low_seq);
                    st.dirty_rooms.insert(*id);
                }
            }
        }
        // The next appended id follows every appended id, live or compacted.
        let next = files.iter().map(|f| f.last).max().map_or(1, |l| l + 1);
        let writer = LogWriter::create(
            &self.inner.log_dir,
            self.inner.shard,
            next,
            self.inner.cfg.segment_bytes_max,
            now_ms(),
            self.inner.cfg.log_observer.clone(),
            self.inner.cfg.write_through && matches!(self.inner.cfg.durability, Durability::Sync),
        )
        .await?;
        let mut st = self.inner.st.borrow_mut();
        st.active = next;
        st.segments.insert(next, SegmentInfo::default());
        // Mappings taken during replay may predate a torn tail's truncation.
        st.maps.clear();
        Ok(writer)
    }

    /// Replays segment `id` from `start`: from `read` (its bytes, read
    /// ahead) or, without them, from a mapping of the file.
    pub(super) fn replay_segment(
        &self,
        id: u32,
        start: u32,
        is_last: bool,
        read: Option<&[u8]>,
    ) -> Result<()> {
        let path = segment::path(&self.inner.log_dir, id);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mapped = match read {
            Some(_) => None,
            // SAFETY: nothing else writes this file during recovery.
            None => Some(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?),
        };
        let map: &[u8] = match (read, &mapped) {
            (Some(bytes), _) => bytes,
            (None, Some(m)) => m,
            (None, None) => unreachable!("mapped when not read"),
        };
        let header = Header::decode(map, id)?;
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
            segment::scan(map, id, start, is_last, |offset, rec, _| {
                ops_records += 1;
                st.ops_records += 1;
                self.apply_replayed(
                    st,
                    Pos {
                        segment: id,
                        offset,
                    },
                    rec,
                )?;
                // The index thread commits while the replay goes on
                // (non-durable batches: after a crash before the final
                // checkpoint the index holds no checkpoint, or the old one,
                // and the next open replays from there again, putting the
                // same rows; an open that fails with an error may leave
                // these rows durable, as redb makes its last commits durable
                // when it closes, and the next open overwrites them).
                if st.ops_records >= REPLAY_BATCH_RECORDS {
                    self.send_index(st, false, Vec::new());
                }
                Ok(())
            })?
        };
        drop(mapped); // before a truncation below
        let mut st = self.inner.st.borrow_mut();
        st.stats.replayed += ops_records;
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

    pub(super) fn apply_replayed(
        &self,
        st: &mut State,
        pos: Pos,
        rec: &ArchivedRecord,
    ) -> Result<()> {
        match rec {
            ArchivedRecord::Message(_) | ArchivedRecord::Reply(_) | ArchivedRecord::Post(_) => {
                let m = rec.message().expect("a message kind");
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
                    st.note_in_segment(pos.segment, room, seq);
                    return Ok(());
                }
                let entry = Entry {
                    pos: pos.to_u64(),
                    idem: idem_hash(m.sender.to_native(), &m.client_id),
                    ts_ms: m.ts_ms.to_native(),
                };
                self.apply_message(st, room, seq, entry, pos.segment);
                if let Some((_, thread)) = rec.reply() {
                    Self::apply_reply(st, room, thread, seq);
                }
                let r = st.rooms.get_mut(&room).expect("just applied");
                r.next_seq = r.next_seq.max(seq + 1);
            }
            ArchivedRecord::Edit(e) => {
                self.apply_edit(st, e.room.to_native(), e.seq.to_native(), pos, false)?
            }
            ArchivedRecord::Delete(d) => {
                self.apply_edit(st, d.room.to_native(), d.seq.to_native(), pos, true)?
            }
            ArchivedRecord::React(r) => {
                let (room, seq) = (r.room.to_native(), r.seq.to_native());
                let key = (room, seq, r.emoji.to_string(), r.by.to_native());
                Self::apply_react(st, key, r.on);
                st.note_in_segment(pos.segment, room, seq);
            }
        }
        Ok(())
    }
}
