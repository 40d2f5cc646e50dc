//! Recovery at open: replay the log from the checkpoint, truncate a torn
//! tail, seal the last segment, and start a fresh active segment.
//!
//! Invariant: records are applied exactly as the committer applies them, so
//! the state after replay equals the state before the crash for every
//! record that reached the disk.

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
            let gone: Vec<u32> = st
                .scrub
                .keys()
                .filter(|id| !ids.contains(id))
                .copied()
                .collect();
            for id in gone {
                st.scrub.remove(&id);
                st.ops.push(Op::DropSegment { segment: id });
            }
        }
        let last = ids.last().copied();
        // Compacted segments lie before every checkpoint: only a whole
        // replay (checkpoint 0) reads them, in their place in the log.
        let replayed = ids
            .iter()
            .filter(|&&id| ckpt.segment == 0 || !segment::is_compacted(id) && id >= ckpt.segment);
        for &id in replayed {
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

    pub(super) fn replay_segment(&self, id: u32, start: u32, is_last: bool) -> Result<()> {
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

    pub(super) fn apply_replayed(
        &self,
        st: &mut State,
        pos: Pos,
        rec: &ArchivedRecord,
    ) -> Result<()> {
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
                    st.note_in_segment(pos.segment, room, seq);
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
}
