//! Each shard's log read as a feed of changes, from outside the shard
//! (webhooks read it on their own threads).
//!
//! A [`LogFeeds`] is shared by the store, every shard and every reader.
//! Per shard it owns three things:
//! - the *acknowledged end*: the position just past the last record whose
//!   append has resolved. The committer publishes it after each batch.
//! - the *hold*: the lowest appended segment some durable reader still
//!   needs. Compaction, the deleted-text scrub and retention never rewrite
//!   or delete an appended segment at or after it.
//! - a [`Doorbell`] that readers sleep on and the committer rings.
//!
//! Invariants:
//! - a reader sees a record only once its append was acknowledged: it
//!   reads below the published end and nowhere else;
//! - a position a reader holds is at or after its shard's hold. Readers
//!   only move forward, and a new reader starts at the acknowledged end.
//!   Holds are loaded from `meta.redb` before any shard opens (see
//!   [`crate::Store::open`]), so even `rookery-admin compact` keeps them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::direct::DirectFile;
use crate::error::{Error, Result};
use crate::record::{check_frame, decode_frame, ArchivedRecord, FrameError, FRAME_HEADER_BYTES};
use crate::segment::{self, Pos, HEADER_BYTES};

/// The names of the durable readers the server runs itself (not
/// webhooks) begin with this: no webhook's name (letters, digits, `_`,
/// `.`, `-`) can, so forgetting the cursors of webhooks that are gone
/// never touches theirs.
pub const INTERNAL_READER_PREFIX: &str = "rookery:";

/// No reader holds anything.
const NO_HOLD: u32 = u32::MAX;

/// The feeds of every shard of one data directory (cheap to clone).
#[derive(Clone)]
pub struct LogFeeds {
    shards: Arc<[LogFeed]>,
    doorbell: Arc<Doorbell>,
    /// Per durable reader (by the name its cursors are saved under), the
    /// lowest segment of each shard it resumes from: each shard's hold is
    /// the lowest over readers ([`LogFeeds::hold_for`]).
    readers: Arc<Mutex<HashMap<String, Vec<Option<u32>>>>>,
}

impl std::fmt::Debug for LogFeeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFeeds")
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl LogFeeds {
    /// Feeds for `shards` shards, holding what the saved `cursors`
    /// (reader, shard, [`Pos::to_u64`]) resume from.
    pub(crate) fn new(shards: usize, cursors: &[(String, u32, u64)]) -> LogFeeds {
        let feeds = LogFeeds {
            shards: (0..shards)
                .map(|_| LogFeed {
                    acked: AtomicU64::new(0),
                    hold: AtomicU32::new(NO_HOLD),
                    log_dir: OnceLock::new(),
                    last: Mutex::new(None),
                })
                .collect(),
            doorbell: Arc::new(Doorbell::default()),
            readers: Arc::default(),
        };
        let mut readers: HashMap<String, Vec<Option<u32>>> = HashMap::new();
        for (name, stream, pos) in cursors {
            if (*stream as usize) < shards {
                let segments = readers
                    .entry(name.clone())
                    .or_insert_with(|| vec![None; shards]);
                let segment = Pos::from_u64(*pos).segment;
                let held = &mut segments[*stream as usize];
                *held = Some(held.map_or(segment, |s| s.min(segment)));
            }
        }
        for (name, segments) in readers {
            feeds.hold_for(&name, Some(segments));
        }
        feeds
    }

    /// Records the lowest segment of each shard durable reader `reader`
    /// resumes from (`None`: the reader is gone), and holds each shard's
    /// log from the lowest over every reader. A reader raises its own only
    /// once the cursors it resumes from are saved.
    pub fn hold_for(&self, reader: &str, segments: Option<Vec<Option<u32>>>) {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        match segments {
            Some(s) => readers.insert(reader.to_string(), s),
            None => readers.remove(reader),
        };
        for (shard, feed) in self.shards.iter().enumerate() {
            let hold = readers
                .values()
                .filter_map(|s| s.get(shard).copied().flatten())
                .min();
            feed.set_hold(hold);
        }
    }

    /// How many shards.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Never true: a data directory has at least one shard.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Shard `shard`'s feed.
    pub fn shard(&self, shard: usize) -> &LogFeed {
        &self.shards[shard]
    }

    /// Rung after every batch any shard acknowledges (and by whoever else
    /// shares it: readers wait on one bell for all their sources).
    pub fn doorbell(&self) -> &Arc<Doorbell> {
        &self.doorbell
    }
}

/// One shard's feed: where its acknowledged records end, what it must keep,
/// and how to read it.
#[derive(Debug)]
pub struct LogFeed {
    /// [`Pos::to_u64`] of the acknowledged end; 0 until the shard opened.
    acked: AtomicU64,
    hold: AtomicU32,
    log_dir: OnceLock<PathBuf>,
    /// The segment read last, kept open (readers mostly read the active
    /// one, a little at a time).
    last: Mutex<Option<(u32, Arc<DirectFile>)>>,
}

/// What one [`LogFeed::read`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedRead {
    /// Where the next read starts.
    pub next: Pos,
    /// Records passed to the reader.
    pub records: usize,
    /// Segments the read jumped over because they were gone (the reader's
    /// position was not held: see [`LogFeeds::hold_for`]).
    pub skipped_segments: u32,
}

impl LogFeed {
    /// The position just past the last acknowledged record; `None` until
    /// the shard opened.
    pub fn acked(&self) -> Option<Pos> {
        match self.acked.load(Ordering::Acquire) {
            0 => None,
            v => Some(Pos::from_u64(v)),
        }
    }

    /// Keeps every appended segment from `segment` on (`None`: keeps
    /// nothing for readers): the lowest over readers
    /// ([`LogFeeds::hold_for`]).
    fn set_hold(&self, segment: Option<u32>) {
        self.hold
            .store(segment.unwrap_or(NO_HOLD), Ordering::Release);
    }

    /// Whether appended segment `segment` must stay as it is.
    pub fn holds(&self, segment: u32) -> bool {
        !segment::is_compacted(segment) && segment >= self.hold.load(Ordering::Acquire)
    }

    /// Tells where the shard's segments are (at open).
    pub(crate) fn opened(&self, log_dir: &Path) {
        let _ = self.log_dir.set(log_dir.to_path_buf());
    }

    /// Publishes the acknowledged end (the committer, after a batch
    /// resolved). Never moves backwards.
    pub(crate) fn publish(&self, end: Pos) {
        self.acked.fetch_max(end.to_u64(), Ordering::AcqRel);
    }

    /// Passes `see` the acknowledged records from `from` on, in log order,
    /// with the position of each, reading about `bytes_max` bytes at most
    /// (at least one record if one is there). A position past the
    /// acknowledged end (a cursor saved before a crash lost unsynced
    /// records) is read from the end.
    ///
    /// Errors: `Corrupt` for a damaged record below the acknowledged end,
    /// `Io` when a segment cannot be read, `Closed` before the shard opened.
    pub fn read(
        &self,
        from: Pos,
        bytes_max: usize,
        mut see: impl FnMut(Pos, &ArchivedRecord),
    ) -> Result<FeedRead> {
        let (Some(end), Some(dir)) = (self.acked(), self.log_dir.get()) else {
            return Err(Error::Closed);
        };
        let mut out = FeedRead {
            next: from.min(end),
            records: 0,
            skipped_segments: 0,
        };
        out.next.offset = out.next.offset.max(HEADER_BYTES as u32);
        let mut budget = bytes_max.max(1);
        while out.next < end && budget > 0 {
            let path = segment::path(dir, out.next.segment);
            let seg_end = if out.next.segment == end.segment {
                Some(end.offset as u64)
            } else {
                match std::fs::metadata(&path) {
                    Ok(m) => Some(m.len()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(Error::io(&path, e)),
                }
            };
            let Some(seg_end) = seg_end else {
                // This segment and every missing one up to the next.
                let next = next_segment(dir, out.next.segment, end)?;
                out.skipped_segments += next.segment - out.next.segment;
                out.next = next;
                continue;
            };
            if out.next.offset as u64 >= seg_end {
                let next = next_segment(dir, out.next.segment, end)?;
                out.skipped_segments += next.segment - out.next.segment - 1;
                out.next = next;
                continue;
            }
            let want = (seg_end - out.next.offset as u64).min(budget as u64) as usize;
            let file = self.open(out.next.segment, &path)?;
            let read = read_frames(&file, out.next, want, &mut see)?;
            if read.bytes == 0 {
                // The rest of a sealed segment is never-written space.
                out.next.offset = seg_end as u32;
                continue;
            }
            out.next.offset += read.bytes as u32;
            out.records += read.records;
            budget = budget.saturating_sub(read.bytes);
        }
        Ok(out)
    }

    /// Segment `segment` (at `path`) opened for reading: the one kept
    /// open if it is that one.
    fn open(&self, segment: u32, path: &Path) -> Result<Arc<DirectFile>> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, span)) = last.as_ref() {
            if *s == segment {
                return Ok(span.clone());
            }
        }
        let span = Arc::new(DirectFile::open(path)?);
        *last = Some((segment, span.clone()));
        Ok(span)
    }

    /// Bytes of appended log from `from` to the acknowledged end (what a
    /// reader at `from` has yet to read), by the segments' lengths.
    pub fn backlog_bytes(&self, from: Pos) -> u64 {
        let (Some(end), Some(dir)) = (self.acked(), self.log_dir.get()) else {
            return 0;
        };
        if from >= end {
            return 0;
        }
        if from.segment == end.segment {
            return (end.offset - from.offset) as u64;
        }
        let ids = segment::list(dir).unwrap_or_default();
        let mut bytes = end.offset as u64;
        for id in ids
            .into_iter()
            .filter(|&i| !segment::is_compacted(i) && i >= from.segment && i < end.segment)
        {
            let len = std::fs::metadata(segment::path(dir, id)).map_or(0, |m| m.len());
            bytes += if id == from.segment {
                len.saturating_sub(from.offset as u64)
            } else {
                len
            };
        }
        bytes
    }

    /// The first position of the oldest appended segment from which the
    /// backlog to the acknowledged end is at most `bytes_max` (the active
    /// segment's start at the latest): where a reader that fell too far
    /// behind resumes.
    pub fn resume_within(&self, bytes_max: u64) -> Option<Pos> {
        let (end, dir) = (self.acked()?, self.log_dir.get()?);
        let ids = segment::list(dir).ok()?;
        let mut bytes = end.offset as u64;
        let mut start = Pos {
            segment: end.segment,
            offset: HEADER_BYTES as u32,
        };
        for id in ids
            .into_iter()
            .rev()
            .filter(|&i| !segment::is_compacted(i) && i < end.segment)
        {
            bytes += std::fs::metadata(segment::path(dir, id)).map_or(0, |m| m.len());
            if bytes > bytes_max {
                break;
            }
            start.segment = id;
        }
        Some(start)
    }
}

/// The start of the first appended segment after `segment` (the
/// acknowledged end's segment when none is on disk before it).
fn next_segment(dir: &Path, segment: u32, end: Pos) -> Result<Pos> {
    let next = segment::list(dir)?
        .into_iter()
        .find(|&i| !segment::is_compacted(i) && i > segment && i <= end.segment)
        .unwrap_or(end.segment);
    Ok(Pos {
        segment: next,
        offset: HEADER_BYTES as u32,
    })
}

pub(crate) struct Frames {
    pub(crate) bytes: usize,
    pub(crate) records: usize,
}

/// Reads the whole frames among `want` bytes of `path` at `at` (a frame
/// longer than `want` is read whole), passing each record to `see`.
pub(crate) fn read_frames(
    file: &DirectFile,
    at: Pos,
    want: usize,
    see: &mut impl FnMut(Pos, &ArchivedRecord),
) -> Result<Frames> {
    let mut span = file.read(at.offset as u64, want.max(FRAME_HEADER_BYTES))?;
    // A first frame longer than the request: read exactly it.
    if let Err(FrameError::BadLength(len)) = check_frame(span.bytes()) {
        let total = crate::record::frame_len(len as usize);
        if len as usize <= crate::record::FRAME_PAYLOAD_BYTES_MAX && total > span.bytes().len() {
            span = file.read(at.offset as u64, total)?;
        }
    }
    let buf = span.bytes();
    let mut done = Frames {
        bytes: 0,
        records: 0,
    };
    while done.bytes < buf.len() {
        let pos = Pos {
            segment: at.segment,
            offset: at.offset + done.bytes as u32,
        };
        match decode_frame(&buf[done.bytes..]) {
            Ok((record, total)) => {
                see(pos, record);
                done.bytes += total;
                done.records += 1;
            }
            Err(FrameError::End) => break,
            // A frame cut by the end of the read: the next read takes it.
            Err(FrameError::BadLength(len))
                if done.bytes > 0
                    && len as usize <= crate::record::FRAME_PAYLOAD_BYTES_MAX
                    && crate::record::frame_len(len as usize) > buf.len() - done.bytes =>
            {
                break
            }
            Err(e) => {
                return Err(Error::Corrupt {
                    segment: pos.segment,
                    offset: pos.offset,
                    reason: e.to_string(),
                })
            }
        }
    }
    Ok(done)
}

/// Wakes threads waiting for news (a shard acknowledged a batch; a reader's
/// other sources had something). Ringing costs two atomic operations when
/// nobody sleeps, and a lock and a wake-up when someone does.
#[derive(Debug, Default)]
pub struct Doorbell {
    rings: AtomicU64,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    bell: Condvar,
}

impl Doorbell {
    /// Wakes every sleeper.
    pub fn ring(&self) {
        // SeqCst on both sides: a sleeper counts itself before it checks
        // the rings, a ringer counts the ring before it checks for
        // sleepers, so one of the two always sees the other.
        self.rings.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.bell.notify_all();
        }
    }

    /// How many rings so far.
    pub fn rings(&self) -> u64 {
        self.rings.load(Ordering::SeqCst)
    }

    /// Sleeps until the bell rang past `seen` rings, or `timeout` passed;
    /// returns the rings then.
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let mut held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = self.rings.load(Ordering::SeqCst);
            let left = deadline.saturating_duration_since(Instant::now());
            if now != seen || left.is_zero() {
                drop(held);
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                return now;
            }
            held = self
                .bell
                .wait_timeout(held, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which segments of each of 3 shards are held, among 0..20.
    fn held(feeds: &LogFeeds) -> Vec<Option<u32>> {
        (0..3)
            .map(|shard| (0..20).find(|&seg| feeds.shard(shard).holds(seg)))
            .collect()
    }

    #[test]
    fn each_shard_holds_from_the_lowest_segment_any_reader_resumes_from() {
        let at = |segment: u64, offset: u64| segment << 32 | offset;
        let cursors = [
            ("hook".to_string(), 0, at(7, 32)),
            ("hook".to_string(), 2, at(12, 32)),
            ("other".to_string(), 0, at(9, 32)),
            ("other".to_string(), 1, at(5, 64)),
            ("far".to_string(), 7, at(1, 32)),
        ];
        let feeds = LogFeeds::new(3, &cursors);
        assert_eq!(
            held(&feeds),
            [Some(7), Some(5), Some(12)],
            "a shard out of range is no hold"
        );
        // A second kind of reader lowers a shard's hold, and raising its
        // own never lowers what another holds.
        feeds.hold_for("search", Some(vec![Some(3), None, None]));
        assert_eq!(held(&feeds), [Some(3), Some(5), Some(12)]);
        feeds.hold_for("search", Some(vec![Some(15), Some(15), Some(15)]));
        assert_eq!(held(&feeds), [Some(7), Some(5), Some(12)]);
        // A reader gone holds nothing.
        feeds.hold_for("hook", None);
        assert_eq!(held(&feeds), [Some(9), Some(5), Some(15)]);
        for reader in ["other", "search"] {
            feeds.hold_for(reader, None);
        }
        assert_eq!(held(&feeds), [None, None, None]);
        // Compacted segments are never held.
        feeds.hold_for("hook", Some(vec![Some(0), None, None]));
        assert!(!feeds.shard(0).holds(segment::COMPACTED_ID_BASE + 4));
    }
}
