//! Compaction: rewrites a contiguous run of sealed segments into one
//! segment ordered by `(room, seq)`, with each message's latest edit or
//! delete next to it, superseded edits, deleted bodies and retired messages
//! left out; then switches the index to it and deletes the run.
//!
//! The rewrite runs on a blocking thread (never on the reactor) at a
//! bounded write rate; the reactor only decides the run, repoints its
//! in-memory entries and sends the switch to the index thread.
//!
//! Crash safety (the argument is in docs/storage.md): the output is
//! written as `{id}.seg.tmp`, synced, renamed to `{id}.seg` and the
//! directory synced; only then does one durable index transaction repoint
//! every entry into the run and record the compacted segment
//! (`compacted` table); only after that are the run's files deleted. At
//! open, a compacted file without its `compacted` row is deleted (the
//! switch did not commit: the run is intact and the index points at it),
//! and files superseded by a committed one are deleted (the crash came
//! before the deletes). With no index at all, the log is replayed whole and
//! either layout gives the same state, so committed or not, the compacted
//! file is kept.
//!
//! Invariants: a run is contiguous in log order and lies wholly before the
//! checkpoint; the compacted file keeps every live message and the latest
//! change of every live message whose change is in the run, so replaying
//! the log with it in the run's place gives the same history; an index
//! entry moves only if it still points where the rewrite read it.

use std::io::Write;
use std::path::{Path, PathBuf};

use redb::ReadableDatabase;

use super::*;
use crate::record::decode_frame;
use crate::segment::{LogFile, COMPACTED_ID_BASE};

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Segment files rewritten.
    pub segments_in: u64,
    /// Compacted segment files written.
    pub segments_out: u64,
    /// Bytes of the files rewritten.
    pub bytes_in: u64,
    /// Bytes of the files written.
    pub bytes_out: u64,
    /// Records read.
    pub records_in: u64,
    /// Records written.
    pub records_out: u64,
    /// Message bodies left out (deleted, or replaced by an edit).
    pub bodies_dropped: u64,
    /// Time spent rewriting, in milliseconds.
    pub rewrite_ms: u64,
}

impl CompactionReport {
    fn add(&mut self, o: &CompactionReport) {
        self.segments_in += o.segments_in;
        self.segments_out += o.segments_out;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.records_in += o.records_in;
        self.records_out += o.records_out;
        self.bodies_dropped += o.bodies_dropped;
        self.rewrite_ms += o.rewrite_ms;
    }
}

/// Order of a message and its change in a compacted segment.
const RANK_MESSAGE: u8 = 0;
const RANK_CHANGE: u8 = 1;
/// A reaction: kept when it is the last of its (user, emoji) on its message
/// in the run (it says the reaction's state from there on).
const RANK_REACT: u8 = 2;

/// Bytes written per request by the rewrite (and the rate limiter's step).
const WRITE_STEP_BYTES: usize = 256 << 10;

/// `(seq, old pos, new pos)` of one moved record.
type Move = (u64, u64, u64);
/// Per room, the moves of its messages and the moves of its changes.
type Moves = BTreeMap<u64, (Vec<Move>, Vec<Move>)>;

/// A record of the run the rewrite keeps.
struct Kept {
    room: u64,
    seq: u64,
    rank: u8,
    input: usize,
    offset: u32,
    len: u32,
    /// Write the message without its body (a later change replaces it).
    drop_body: bool,
}

/// Everything the blocking rewrite needs.
struct Job {
    shard: u32,
    log_dir: PathBuf,
    inputs: Vec<LogFile>,
    out: u32,
    lows: HashMap<u64, u64>,
    db: Arc<Database>,
    bytes_per_s_max: u64,
}

/// What the rewrite produced.
struct Rewritten {
    /// What moved where.
    moves: Moves,
    /// Highest seq per room the compacted file holds records about.
    summary: FxHashMap<u64, u64>,
    end: u32,
    report: CompactionReport,
}

impl Job {
    /// Reads the run, decides what to keep, writes and syncs the compacted
    /// file under its temporary name and reads it back to check it (the
    /// reactor installs it).
    fn run(self) -> Result<Rewritten> {
        let started = Instant::now();
        let maps = self.map_inputs()?;
        let mut report = CompactionReport {
            segments_in: self.inputs.len() as u64,
            bytes_in: maps.iter().map(|m| m.len() as u64).sum(),
            ..Default::default()
        };
        let kept = self.select(&maps, &mut report)?;
        let tmp = tmp_path(&self.log_dir, self.out);
        let written = self.write(&maps, &kept, &tmp);
        let (moves, summary, end) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = self.check_back(&tmp, &kept) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        report.segments_out = 1;
        report.bytes_out = end as u64;
        report.records_out = kept.len() as u64;
        report.bodies_dropped = kept.iter().filter(|k| k.drop_body).count() as u64;
        report.rewrite_ms = started.elapsed().as_millis() as u64;
        Ok(Rewritten {
            moves,
            summary,
            end,
            report,
        })
    }

    fn map_inputs(&self) -> Result<Vec<Mmap>> {
        let mut maps = Vec::with_capacity(self.inputs.len());
        for f in &self.inputs {
            let path = segment::path(&self.log_dir, f.id);
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: sealed segments are never written again; the run's
            // files are deleted only after this job returned.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let header = Header::decode(&map, f.id)?;
            if header.shard != self.shard {
                return Err(Error::corrupt(
                    f.id,
                    0,
                    format!("segment belongs to shard {}", header.shard),
                ));
            }
            maps.push(map);
        }
        Ok(maps)
    }

    /// The records to keep, in `(room, seq, rank)` order. Every frame is
    /// checked (CRC, archive) as it is read.
    fn select(&self, maps: &[Mmap], report: &mut CompactionReport) -> Result<Vec<Kept>> {
        let mut all = Vec::new();
        // Per room, the seq range the run's records are about.
        let mut span: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        // The last reaction record of each (room, seq, emoji, user) in the
        // run, by its index in `all`.
        let mut last_react: HashMap<(u64, u64, String, u64), usize> = HashMap::new();
        for (input, map) in maps.iter().enumerate() {
            let id = self.inputs[input].id;
            segment::scan(map, id, HEADER_BYTES as u32, false, |offset, rec, len| {
                let (room, seq) = (rec.room(), rec.seq());
                let rank = match rec {
                    _ if rec.message().is_some() => RANK_MESSAGE,
                    ArchivedRecord::React(r) => {
                        let key = (room, seq, r.emoji.to_string(), r.by.to_native());
                        last_react.insert(key, all.len());
                        RANK_REACT
                    }
                    _ => RANK_CHANGE,
                };
                let s = span.entry(room).or_insert((seq, seq));
                *s = (s.0.min(seq), s.1.max(seq));
                all.push(Kept {
                    room,
                    seq,
                    rank,
                    input,
                    offset,
                    len,
                    drop_body: false,
                });
                Ok(())
            })?;
        }
        report.records_in = all.len() as u64;
        // The latest change of every message the run is about, as the
        // index holds it now (later changes only move it further on).
        let tx = self.db.begin_read()?;
        let mut latest: HashMap<(u64, u64), u64> = HashMap::new();
        for (&room, &(lo, hi)) in &span {
            for (seq, pos, _) in index::changes_in(&tx, room, lo, hi)? {
                latest.insert((room, seq), pos);
            }
        }
        drop(tx);
        let reacts_kept: HashSet<usize> = last_react.into_values().collect();
        let mut kept: Vec<Kept> = all
            .into_iter()
            .enumerate()
            .filter_map(|(i, mut k)| {
                if k.seq < self.lows.get(&k.room).copied().unwrap_or(1) {
                    return None; // retired
                }
                let change = latest.get(&(k.room, k.seq)).copied();
                if k.rank == RANK_MESSAGE {
                    k.drop_body = change.is_some();
                    return Some(k);
                }
                if k.rank == RANK_REACT {
                    return reacts_kept.contains(&i).then_some(k);
                }
                let pos = Pos {
                    segment: self.inputs[k.input].id,
                    offset: k.offset,
                };
                // Only the latest change of a message is kept.
                (change == Some(pos.to_u64())).then_some(k)
            })
            .collect();
        kept.sort_by_key(|k| (k.room, k.seq, k.rank));
        Ok(kept)
    }

    /// Writes the compacted file at `tmp` (rate-limited) and syncs it.
    /// Returns the moves, the per-room summary and the file's length.
    fn write(
        &self,
        maps: &[Mmap],
        kept: &[Kept],
        tmp: &Path,
    ) -> Result<(Moves, FxHashMap<u64, u64>, u32)> {
        let first = self.inputs.first().expect("a run is not empty").key;
        let last = self.inputs.last().expect("a run is not empty").last;
        let header = Header {
            shard: self.shard,
            segment: self.out,
            created_ms: 0,
            covers: Some((first, last)),
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(|e| Error::io(tmp, e))?;
        let mut buf: Vec<u8> = Vec::with_capacity(WRITE_STEP_BYTES + 64 * 1024);
        buf.extend_from_slice(&header.encode());
        let mut end = 0u64; // bytes already written out of `buf`
        let started = Instant::now();
        let mut moves = Moves::new();
        let mut summary: FxHashMap<u64, u64> = FxHashMap::default();
        for k in kept {
            let at = end + buf.len() as u64;
            if at + k.len as u64 + 64 * 1024 > u32::MAX as u64 {
                return Err(Error::InvalidInput(
                    "a compacted segment would pass 4 GiB".into(),
                ));
            }
            let map = &maps[k.input];
            let frame = &map[k.offset as usize..(k.offset + k.len) as usize];
            if k.drop_body {
                let rec = decode_frame(frame)
                    .map_err(|e| Error::corrupt(self.inputs[k.input].id, k.offset, e.to_string()))?
                    .0;
                let mut owned = rec.to_owned_record();
                owned
                    .message_mut()
                    .expect("only messages drop their body")
                    .body
                    .clear();
                // What a deleted message carried goes with its text: the
                // references keep only the uploads' ids.
                if let crate::record::Record::Post(p) = &mut owned {
                    for f in &mut p.files {
                        f.name.clear();
                        f.content_type.clear();
                    }
                }
                encode_frame(&owned, &mut buf);
            } else {
                buf.extend_from_slice(frame);
            }
            let old = Pos {
                segment: self.inputs[k.input].id,
                offset: k.offset,
            };
            let new = Pos {
                segment: self.out,
                offset: at as u32,
            };
            // The index points at messages and at latest edits; nothing
            // points at a reaction record.
            let m = moves.entry(k.room).or_default();
            match k.rank {
                RANK_MESSAGE => m.0.push((k.seq, old.to_u64(), new.to_u64())),
                RANK_CHANGE => m.1.push((k.seq, old.to_u64(), new.to_u64())),
                _ => {}
            }
            let max = summary.entry(k.room).or_insert(0);
            *max = (*max).max(k.seq);
            if buf.len() >= WRITE_STEP_BYTES {
                file.write_all(&buf).map_err(|e| Error::io(tmp, e))?;
                write_back(&file, end, buf.len() as u64, tmp)?;
                end += buf.len() as u64;
                buf.clear();
                self.pace(started, end);
            }
        }
        file.write_all(&buf).map_err(|e| Error::io(tmp, e))?;
        end += buf.len() as u64;
        file.sync_all().map_err(|e| Error::io(tmp, e))?;
        Ok((moves, summary, end as u32))
    }

    /// Sleeps so that `written` bytes took at least `written / rate`.
    fn pace(&self, started: Instant, written: u64) {
        if self.bytes_per_s_max == 0 {
            return;
        }
        let due = Duration::from_secs_f64(written as f64 / self.bytes_per_s_max as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }

    /// Reads the written file back: every frame valid, the records it holds
    /// exactly the ones kept, in order.
    fn check_back(&self, tmp: &Path, kept: &[Kept]) -> Result<()> {
        let file = std::fs::File::open(tmp).map_err(|e| Error::io(tmp, e))?;
        // SAFETY: the file is ours until renamed, and no longer written.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(tmp, e))?;
        Header::decode(&map, self.out)?;
        let mut i = 0usize;
        let end = segment::scan(&map, self.out, HEADER_BYTES as u32, false, |off, rec, _| {
            let k = kept.get(i).ok_or_else(|| {
                Error::corrupt(
                    self.out,
                    off,
                    "compacted segment holds more than was written",
                )
            })?;
            if (rec.room(), rec.seq()) != (k.room, k.seq) {
                return Err(Error::corrupt(
                    self.out,
                    off,
                    "compacted record out of place",
                ));
            }
            i += 1;
            Ok(())
        })?;
        if i != kept.len() || end.end() as usize != map.len() {
            return Err(Error::corrupt(
                self.out,
                end.end(),
                "compacted segment is short of what was written",
            ));
        }
        Ok(())
    }
}

impl ShardStore {
    /// One background step: rewrites the runs that are due (segments
    /// holding deleted text once `deleted_text_delay_ms` passed, then the
    /// oldest run of appended segments past the recent ones).
    pub async fn compact(&self) -> Result<CompactionReport> {
        let _guard = self.maintenance_open().await?;
        let mut report = CompactionReport::default();
        let delay = self.inner.cfg.deleted_text_delay_ms;
        let scrub_due = {
            let st = self.inner.st.borrow();
            st.scrub
                .values()
                .any(|s| now_ms().saturating_sub(s.since_ms) >= delay)
        };
        if scrub_due {
            report.add(&self.scrub_all().await?);
        }
        if let Some(run) = self.next_run() {
            report.add(&self.compact_run(run).await?);
        }
        Ok(report)
    }

    /// Rewrites everything that can be: seals the active segment, then
    /// compacts every appended segment and every compacted one holding
    /// deleted text. Afterwards no file of the shard holds the text of a
    /// message deleted before the call (`rookery-admin compact`), except
    /// the segments a reader outside the shard holds (see `feed.rs`).
    pub async fn compact_all(&self) -> Result<CompactionReport> {
        let _guard = self.maintenance_open().await?;
        self.roll_now().await?;
        let mut report = CompactionReport::default();
        for run in self.runs(|f, _| !segment::is_compacted(f.id)) {
            report.add(&self.compact_run(run).await?);
        }
        report.add(&self.scrub_all().await?);
        Ok(report)
    }

    /// Rewrites every segment holding a deleted body (sealing the active
    /// one first if it does).
    async fn scrub_all(&self) -> Result<CompactionReport> {
        let active_marked = {
            let st = self.inner.st.borrow();
            st.scrub
                .keys()
                .any(|&s| !segment::is_compacted(s) && s >= st.checkpoint.segment)
        };
        if active_marked {
            self.roll_now().await?;
        }
        let mut report = CompactionReport::default();
        let marked: HashSet<u32> = self.inner.st.borrow().scrub.keys().copied().collect();
        for run in self.runs(|f, _| marked.contains(&f.id)) {
            report.add(&self.compact_run(run).await?);
        }
        Ok(report)
    }

    /// Seals the active segment (if it holds anything) and checkpoints, so
    /// every record written so far is in a sealed segment before the
    /// checkpoint.
    async fn roll_now(&self) -> Result<()> {
        self.inner.st.borrow_mut().roll_requested = true;
        self.checkpoint_now().await
    }

    /// The oldest run of appended segments old enough to compact.
    fn next_run(&self) -> Option<Vec<LogFile>> {
        let keep = self.inner.cfg.compaction_keep_recent_segments as usize;
        let eligible: Vec<u32> = {
            let st = self.inner.st.borrow();
            let sealed: Vec<u32> = st
                .segments
                .iter()
                .filter(|(id, info)| {
                    !segment::is_compacted(**id)
                        && info.sealed_end.is_some()
                        && **id < st.checkpoint.segment
                })
                .map(|(id, _)| *id)
                .collect();
            sealed[..sealed.len().saturating_sub(keep)].to_vec()
        };
        // Small compacted segments (what is left once most of a run was
        // deleted or retired, or the output of a short run) merge with their
        // neighbours, so a room's history stays in few files.
        let small = self.inner.cfg.compaction_input_bytes_max / 4;
        self.runs(|f, info| {
            eligible.contains(&f.id)
                || segment::is_compacted(f.id) && (info.sealed_end.unwrap_or(0) as u64) < small
        })
        .into_iter()
        .find(|run| run.len() > 1 || !segment::is_compacted(run[0].id))
    }

    /// Runs of the live log (in log order) whose files `pick` chooses:
    /// each run contiguous, all before the checkpoint and before what
    /// readers hold, bounded by `compaction_input_bytes_max`.
    fn runs(&self, pick: impl Fn(&LogFile, &SegmentInfo) -> bool) -> Vec<Vec<LogFile>> {
        let st = self.inner.st.borrow();
        let cap = self.inner.cfg.compaction_input_bytes_max;
        let mut runs: Vec<Vec<LogFile>> = Vec::new();
        let mut current: Vec<LogFile> = Vec::new();
        let mut bytes = 0u64;
        for f in log_files(&st) {
            let info = &st.segments[&f.id];
            let before_ckpt = segment::is_compacted(f.id) || f.id < st.checkpoint.segment;
            // A segment a reader outside the shard holds stays as it is
            // (and so do the ones after it: the run ends there).
            let chosen =
                before_ckpt && !self.held(f.id) && info.sealed_end.is_some() && pick(&f, info);
            let size = info.sealed_end.unwrap_or(0) as u64;
            let fits = current.is_empty() || bytes + size <= cap;
            if (!chosen || !fits) && !current.is_empty() {
                runs.push(std::mem::take(&mut current));
                bytes = 0;
            }
            if chosen {
                current.push(f);
                bytes += size;
            }
        }
        if !current.is_empty() {
            runs.push(current);
        }
        runs
    }

    /// [`Self::maintenance`] for work that needs the shard open: refused
    /// once `close` started (it may have taken its turn first, and then
    /// there is no committer left to checkpoint).
    pub(super) async fn maintenance_open(&self) -> Result<MaintenanceGuard> {
        self.check_open()?;
        let guard = self.maintenance().await;
        if self.inner.closed.get() {
            return Err(Error::Closed);
        }
        self.check_open()?;
        Ok(guard)
    }

    /// Waits for and takes the shard's maintenance turn (compaction and
    /// retention's deletes never overlap).
    pub(super) async fn maintenance(&self) -> MaintenanceGuard {
        while self.inner.maintenance.replace(true) {
            self.inner.maintenance_done.notified().await;
        }
        MaintenanceGuard {
            inner: self.inner.clone(),
        }
    }

    /// Rewrites one run and switches the index to the result.
    async fn compact_run(&self, run: Vec<LogFile>) -> Result<CompactionReport> {
        // Deletes noted from here on may not be in the snapshot the rewrite
        // reads: their notes move to the compacted segment.
        let snapshot_note = self.inner.st.borrow().notes;
        // Everything the run's records imply is in redb, durably.
        self.checkpoint_now().await?;
        let job = {
            let mut st = self.inner.st.borrow_mut();
            let out = st.next_compacted;
            st.next_compacted += 1;
            assert!(run
                .iter()
                .all(|f| segment::is_compacted(f.id) || f.id < st.checkpoint.segment));
            Job {
                shard: self.inner.shard,
                log_dir: self.inner.log_dir.clone(),
                inputs: run.clone(),
                out,
                lows: st.rooms.iter().map(|(id, r)| (*id, r.low_seq)).collect(),
                db: self.inner.db.clone(),
                bytes_per_s_max: self.inner.cfg.compaction_bytes_per_s_max,
            }
        };
        let out = job.out;
        let rewritten = rewrite_off_reactor(job).await?;
        // Every change the snapshot saw is synced before the compacted file
        // joins the log (in `batch` and `none` modes applied changes may not
        // be yet; a rebuild may take the file without its switch).
        let tmp = tmp_path(&self.inner.log_dir, out);
        if let Err(e) = self.checkpoint_now().await {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let dest = segment::path(&self.inner.log_dir, out);
        if let Err(e) = std::fs::rename(&tmp, &dest) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&dest, e));
        }
        if let Err(e) = sync_dir(&self.inner.log_dir) {
            // The file may or may not be in the log after a crash: stop
            // rather than go on with a log whose state is unknown.
            self.fail(format!("compaction could not install segment {out}: {e}"));
            return Err(e);
        }
        let report = rewritten.report;
        self.switch(&run, out, rewritten, snapshot_note);
        // One durable index transaction: entries repointed, the run's
        // summaries dropped, the compacted segment recorded.
        if let Err(e) = self.checkpoint_now().await {
            self.fail(format!("compaction switch failed: {e}"));
            return Err(e);
        }
        // Chunks read from redb before the switch committed (and cached)
        // may hold positions in the run: they go before the run does.
        self.inner.st.borrow_mut().chunk_cache.clear();
        for f in &run {
            let path = segment::path(&self.inner.log_dir, f.id);
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            let mut st = self.inner.st.borrow_mut();
            st.maps.remove(&f.id);
            st.readers.remove(&f.id);
        }
        sync_dir(&self.inner.log_dir)?;
        {
            // Reads can no longer find the run's positions (the index points
            // at the compacted segment, durably).
            let mut st = self.inner.st.borrow_mut();
            for f in &run {
                st.moved.remove(&f.id);
            }
        }
        self.inner.st.borrow_mut().stats.compactions += 1;
        Ok(report)
    }

    /// Points the in-memory index at the compacted segment and queues the
    /// same change for redb (the maps of the run stay until its files go:
    /// a read that planned before the switch still finds its records).
    fn switch(&self, run: &[LogFile], out: u32, w: Rewritten, snapshot_note: u64) {
        let mut st = self.inner.st.borrow_mut();
        let st = &mut *st;
        // A delete noted after the snapshot may have left its text in the
        // compacted segment: it is noted in its turn.
        let late = run
            .iter()
            .filter_map(|f| st.scrub.get(&f.id).copied())
            .filter(|s| s.last_note > snapshot_note)
            .min_by_key(|s| s.since_ms);
        if let Some(note) = late {
            st.scrub.insert(out, note);
            st.ops.push(Op::Scrub {
                segment: out,
                since_ms: note.since_ms,
            });
        }
        // Until the run's files are gone, a position read from redb may
        // still point into them: a note taken there goes to `out`.
        for f in run {
            st.moved.insert(f.id, out);
        }
        // Decoded chunks of the moved rooms hold old positions.
        st.chunk_cache
            .retain(|(room, _), _| !w.moves.contains_key(room));
        for (room, (messages, changes)) in w.moves {
            for &(seq, old, new) in &messages {
                if let Some(r) = st.rooms.get_mut(&room) {
                    if r.open.get(seq).is_some_and(|e| e.pos == old) {
                        let mut e = r.open.get(seq).expect("checked");
                        e.pos = new;
                        Rc::make_mut(&mut r.open).set(seq, e);
                    }
                }
                if let Some((_, c)) = st.pending_chunks.get_mut(&(room, chunk_of(seq))) {
                    if let Some(mut e) = c.get(seq).filter(|e| e.pos == old) {
                        e.pos = new;
                        Rc::make_mut(c).set(seq, e);
                    }
                }
            }
            for &(seq, old, new) in &changes {
                if let Some((_, pos, _)) = st.pending_edits.get_mut(&(room, seq)) {
                    if *pos == old {
                        *pos = new;
                    }
                }
            }
            st.ops.push(Op::Repoint {
                room,
                messages,
                changes,
            });
        }
        for f in run {
            st.segments.remove(&f.id);
            st.scrub.remove(&f.id);
            st.ops.push(Op::DropSegment { segment: f.id });
        }
        for (&room, &max_seq) in &w.summary {
            st.ops.push(Op::SegmentRoom {
                segment: out,
                room,
                max_seq,
            });
        }
        st.segments.insert(
            out,
            SegmentInfo {
                rooms: w.summary,
                sealed_end: Some(w.end),
                covers: Some((
                    run.first().expect("a run is not empty").key,
                    run.last().expect("a run is not empty").last,
                )),
            },
        );
        st.ops.push(Op::Compacted {
            segment: out,
            first: run.first().expect("a run is not empty").key,
            last: run.last().expect("a run is not empty").last,
        });
        st.checkpoint_requested = true;
    }

    /// Notes, before message `(room, seq)`'s delete is applied, the
    /// segments holding its visible text: its body (unless a compaction
    /// already dropped it) and its latest edit's. They are rewritten within
    /// `deleted_text_delay_ms`.
    pub(super) fn note_deleted(&self, st: &mut State, room: u64, seq: u64) {
        if let Ok(entries) = self.entries(st, room, seq, seq) {
            let pos = Pos::from_u64(entries[0].1.pos);
            let body = self
                .read_at(st, pos)
                .is_ok_and(|r| r.record().message().is_some_and(|m| !m.body.is_empty()));
            if body {
                self.note_hidden_text(st, pos.segment);
            }
        }
        let latest = self.latest_change(st, room, seq).ok().flatten();
        if let Some(pos) = latest.map(|(pos, _)| Pos::from_u64(pos)) {
            let text = self
                .read_at(st, pos)
                .is_ok_and(|r| matches!(r.record(), ArchivedRecord::Edit(e) if !e.body.is_empty()));
            if text {
                self.note_hidden_text(st, pos.segment);
            }
        }
    }

    /// Notes that `segment` holds text no history shows any more. If a
    /// compaction switched away from it (its file not yet deleted), the
    /// compacted segment that replaced it is noted instead.
    pub(super) fn note_hidden_text(&self, st: &mut State, mut segment: u32) {
        while let Some(&to) = st.moved.get(&segment) {
            segment = to;
        }
        st.notes += 1;
        let note = st.notes;
        if let Some(s) = st.scrub.get_mut(&segment) {
            s.last_note = note;
            return;
        }
        let since_ms = now_ms();
        st.scrub.insert(
            segment,
            Scrub {
                since_ms,
                last_note: note,
            },
        );
        st.ops.push(Op::Scrub { segment, since_ms });
    }
}

/// A segment's note that it holds text to remove.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scrub {
    /// When the first note was taken (ms since the Unix epoch; durable).
    pub since_ms: u64,
    /// The newest note's number (`State::notes`; 0 once reopened).
    pub last_note: u64,
}

impl Scrub {
    /// A note read back from the index at open.
    pub fn loaded(since_ms: u64) -> Scrub {
        Scrub {
            since_ms,
            last_note: 0,
        }
    }
}

/// Where compacted segment `segment` is written before it joins the log.
fn tmp_path(log_dir: &Path, segment: u32) -> PathBuf {
    segment::path(log_dir, segment).with_extension("seg.tmp")
}

/// Starts writeback of the step just written (`off..off + len`) and waits
/// for the one before it: the rewrite's dirty pages never pile up, so the
/// kernel never flushes them in a burst that the log's durable writes would
/// queue behind (measured: with the flushing left to the kernel, 16 writers'
/// ack p99 rose 3-4x during a rewrite at 64 MiB/s).
fn write_back(file: &std::fs::File, off: u64, len: u64, path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: sync_file_range on an open descriptor with in-file ranges.
    let rc = unsafe {
        if off >= len {
            let before = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            libc::sync_file_range(fd, (off - len) as i64, len as i64, before);
        }
        libc::sync_file_range(fd, off as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc != 0 {
        return Err(Error::io(path, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs a rewrite on a thread of its own, at low CPU and I/O priority and
/// free to run on any core. Not on glommio's blocking pool: that pool is
/// pinned to the shard's core and has one thread, so a rewrite of seconds
/// there would hold back the log's own blocking work (installing the next
/// segment) and compete with the reactor for its core.
async fn rewrite_off_reactor(job: Job) -> Result<Rewritten> {
    let (tx, rx) = flume::bounded(1);
    let name = format!("rookery-compact-{}", job.shard);
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            crate::threads::background();
            let _ = tx.send(job.run());
        })
        .map_err(|e| Error::io("compaction thread", e))?;
    rx.recv_async()
        .await
        .map_err(|_| Error::Failed("the compaction thread died".into()))?
}

/// The live segments of a shard in log order (a compacted one sits where
/// the run it replaced began).
pub(super) fn log_files(st: &State) -> Vec<LogFile> {
    let mut files: Vec<LogFile> = st
        .segments
        .iter()
        .map(|(&id, info)| match info.covers {
            Some((first, last)) => LogFile {
                id,
                key: first,
                last,
            },
            None => LogFile {
                id,
                key: id,
                last: id,
            },
        })
        .collect();
    files.sort_unstable_by_key(|f| f.key);
    files
}

/// The first id a new compacted segment may take, given the ids present.
pub(super) fn first_free_compacted(ids: &[u32]) -> u32 {
    ids.iter()
        .filter(|id| segment::is_compacted(**id))
        .max()
        .map_or(COMPACTED_ID_BASE, |m| m + 1)
}

/// Releases the maintenance turn when dropped.
pub(super) struct MaintenanceGuard {
    inner: Rc<Inner>,
}

impl Drop for MaintenanceGuard {
    fn drop(&mut self) {
        self.inner.maintenance.set(false);
        self.inner.maintenance_done.notify();
    }
}

/// Runs [`ShardStore::compact`] every `compaction_interval_ms`: one
/// long-lived timer per shard; ends when the shard closes.
pub(super) async fn compaction_ticker(inner: std::rc::Weak<Inner>) {
    let Some(interval) = inner
        .upgrade()
        .map(|i| Duration::from_millis(i.cfg.compaction_interval_ms))
    else {
        return;
    };
    if interval.is_zero() {
        return;
    }
    loop {
        glommio::timer::sleep(interval).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.st.borrow().closing || inner.closed.get() {
            return;
        }
        let store = ShardStore { inner };
        if let Err(e) = store.compact().await {
            tracing::warn!(shard = store.shard(), error = %e, "compaction failed");
        }
    }
}
