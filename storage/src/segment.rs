//! Segment files: naming, the header, and scanning a segment's records.
//!
//! A segment is `shard-K/log/{id:08}.seg`: a 32-byte header followed by
//! frames (see [`crate::record`]). The active segment is preallocated, so
//! never-written space reads as zeros and a zero length word marks the end.
//! Sealed segments are truncated to their last record.
//!
//! Appended segments (format 1) take ids 1, 2, 3, ... in log order.
//! Compacted segments (format 2, written by `shard/compact.rs`) take ids
//! from [`COMPACTED_ID_BASE`] up and replace a contiguous run of the log:
//! their header names the run (`covers`, in log-order keys), and a file's
//! place in the log is its *key*: its id for an appended segment, the
//! first key it covers for a compacted one. [`log_order`] sorts files by key
//! and tells which ones a compacted file supersedes.
//!
//! Scanning is pure (bytes in, verdict out) so that recovery, `rookery-admin`
//! and the fuzz tests share one implementation. Its invariant: it never reads
//! outside the slice, and it calls a damaged region a *torn tail* only in the
//! last segment and only when nothing valid follows it, or when what follows
//! is separated by never-written (all-zero) sectors: the signature of a batch
//! whose blocks reached the disk out of order before a crash. Anything else
//! is corruption, and recovery refuses to guess.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::record::{decode_frame, ArchivedRecord, FrameError, FRAME_ALIGN};

/// Bytes of the segment header; the first frame starts here.
pub const HEADER_BYTES: usize = 32;
/// Magic bytes at the start of every segment.
pub const MAGIC: [u8; 8] = *b"ROOKLOG\0";
/// Segment format version of appended segments.
pub const FORMAT_VERSION: u32 = 1;
/// Segment format version of compacted segments (ordered by room and seq).
pub const COMPACTED_VERSION: u32 = 2;
/// Compacted segments take ids from here up; appended ones stay below.
pub const COMPACTED_ID_BASE: u32 = 1 << 31;

/// True when `segment` is a compacted segment's id.
pub fn is_compacted(segment: u32) -> bool {
    segment >= COMPACTED_ID_BASE
}
/// Sector size used to recognise never-written space.
const SECTOR_BYTES: usize = 512;

/// A position in a shard's log: segment id and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// Segment id.
    pub segment: u32,
    /// Byte offset of a frame inside the segment.
    pub offset: u32,
}

impl Pos {
    /// Packs the position into one u64 (segment in the high half), the form
    /// stored in the index.
    pub fn to_u64(self) -> u64 {
        (self.segment as u64) << 32 | self.offset as u64
    }
    /// Inverse of [`Pos::to_u64`].
    pub fn from_u64(v: u64) -> Pos {
        Pos {
            segment: (v >> 32) as u32,
            offset: v as u32,
        }
    }
}

/// Fields of a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Shard the segment belongs to.
    pub shard: u32,
    /// Segment id (matches the file name).
    pub segment: u32,
    /// Creation time, milliseconds since the Unix epoch (appended
    /// segments; 0 in a compacted one).
    pub created_ms: u64,
    /// For a compacted segment, the log-order keys `(first, last)` of the
    /// run of segments it replaces; `None` for an appended segment.
    pub covers: Option<(u32, u32)>,
}

impl Header {
    /// The header of appended segment `segment`.
    pub fn appended(shard: u32, segment: u32, created_ms: u64) -> Header {
        Header {
            shard,
            segment,
            created_ms,
            covers: None,
        }
    }

    /// Encodes the header: magic, version, shard, segment, then created_ms
    /// (format 1) or the first and last keys covered (format 2), then the
    /// crc32c of the first 28 bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        assert_eq!(
            is_compacted(self.segment),
            self.covers.is_some(),
            "compacted ids and covered runs go together"
        );
        let mut h = [0u8; HEADER_BYTES];
        h[0..8].copy_from_slice(&MAGIC);
        let version = match self.covers {
            None => FORMAT_VERSION,
            Some(_) => COMPACTED_VERSION,
        };
        h[8..12].copy_from_slice(&version.to_le_bytes());
        h[12..16].copy_from_slice(&self.shard.to_le_bytes());
        h[16..20].copy_from_slice(&self.segment.to_le_bytes());
        match self.covers {
            None => h[20..28].copy_from_slice(&self.created_ms.to_le_bytes()),
            Some((first, last)) => {
                assert!(first <= last, "a covered run is not empty");
                h[20..24].copy_from_slice(&first.to_le_bytes());
                h[24..28].copy_from_slice(&last.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&h[0..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and checks a header; `segment` is the id the file name gives.
    pub fn decode(bytes: &[u8], segment: u32) -> Result<Header> {
        let bad = |why: &str| Error::corrupt(segment, 0, format!("bad segment header: {why}"));
        if bytes.len() < HEADER_BYTES {
            return Err(bad("file shorter than the header"));
        }
        let word = |r: std::ops::Range<usize>| u32::from_le_bytes(bytes[r].try_into().expect("4"));
        if bytes[0..8] != MAGIC {
            return Err(bad("wrong magic"));
        }
        if crc32c::crc32c(&bytes[0..28]) != word(28..32) {
            return Err(bad("checksum mismatch"));
        }
        let version = word(8..12);
        let header = match version {
            FORMAT_VERSION => Header::appended(
                word(12..16),
                word(16..20),
                u64::from_le_bytes(bytes[20..28].try_into().expect("8")),
            ),
            COMPACTED_VERSION => Header {
                shard: word(12..16),
                segment: word(16..20),
                created_ms: 0,
                covers: Some((word(20..24), word(24..28))),
            },
            v => {
                return Err(bad(&format!(
                    "format version {v} (this build reads {FORMAT_VERSION} and {COMPACTED_VERSION})"
                )))
            }
        };
        if header.segment != segment {
            return Err(bad(&format!(
                "names segment {} but file is {segment}",
                header.segment
            )));
        }
        if is_compacted(segment) != header.covers.is_some() {
            return Err(bad(&format!(
                "format version {version} for segment id {segment}"
            )));
        }
        if let Some((first, last)) = header.covers {
            if first > last || is_compacted(last) {
                return Err(bad(&format!("covers the run {first}..={last}")));
            }
        }
        Ok(header)
    }
}

/// File name of a segment.
pub fn file_name(segment: u32) -> String {
    format!("{segment:08}.seg")
}

/// Path of a segment inside a log directory.
pub fn path(log_dir: &Path, segment: u32) -> PathBuf {
    log_dir.join(file_name(segment))
}

/// Lists the segment ids present in a log directory, ascending. Files that do
/// not look like segments are ignored.
pub fn list(log_dir: &Path) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    let entries = std::fs::read_dir(log_dir).map_err(|e| Error::io(log_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(log_dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(digits) = name.strip_suffix(".seg") else {
            continue;
        };
        if let Ok(id) = digits.parse::<u32>() {
            if digits.len() >= 8
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits == format!("{id:08}")
            {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// A live segment file in log order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogFile {
    /// Segment id.
    pub id: u32,
    /// Its place in the log: its id, or the first key a compacted segment
    /// covers.
    pub key: u32,
    /// The last key it covers (its id for an appended segment).
    pub last: u32,
}

/// The files of a log directory sorted into log order.
#[derive(Debug, Clone, Default)]
pub struct LogOrder {
    /// The files that make up the log, in log order.
    pub live: Vec<LogFile>,
    /// Appended or compacted files superseded by a committed compacted one
    /// (left by a crash before the run's originals were deleted).
    pub superseded: Vec<u32>,
    /// Compacted files whose switch never committed (left by a crash
    /// before the index pointed at them).
    pub uncommitted: Vec<u32>,
}

/// Sorts the segments `ids` of `log_dir` into log order. A compacted
/// segment counts if `committed(id)` says its switch committed; it then
/// supersedes every other file whose key is in the run it covers. Reads the
/// header of every compacted file (a bad one is [`Error::Corrupt`]).
pub fn log_order(log_dir: &Path, ids: &[u32], committed: impl Fn(u32) -> bool) -> Result<LogOrder> {
    let mut order = LogOrder::default();
    let mut files = Vec::with_capacity(ids.len());
    for &id in ids {
        if !is_compacted(id) {
            files.push(LogFile {
                id,
                key: id,
                last: id,
            });
            continue;
        }
        if !committed(id) {
            order.uncommitted.push(id);
            continue;
        }
        let path = path(log_dir, id);
        let mut head = [0u8; HEADER_BYTES];
        use std::io::Read;
        std::fs::File::open(&path)
            .and_then(|mut f| f.read_exact(&mut head))
            .map_err(|e| Error::io(&path, e))?;
        let (first, last) = Header::decode(&head, id)?
            .covers
            .expect("compacted ids cover a run");
        files.push(LogFile {
            id,
            key: first,
            last,
        });
    }
    // A file is superseded by a committed compacted file whose run holds its
    // own: a wider run, or the same run compacted again (a higher id).
    let runs: Vec<LogFile> = files
        .iter()
        .filter(|f| is_compacted(f.id))
        .copied()
        .collect();
    let supersedes = |c: &LogFile, f: &LogFile| {
        let holds = c.key <= f.key && f.last <= c.last;
        let same = (c.key, c.last) == (f.key, f.last);
        c.id != f.id && holds && (!same || c.id > f.id)
    };
    for f in files {
        let covered = runs.iter().any(|c| supersedes(c, &f));
        if covered {
            order.superseded.push(f.id);
        } else {
            order.live.push(f);
        }
    }
    order.live.sort_unstable_by_key(|f| f.key);
    for w in order.live.windows(2) {
        if w[0].last >= w[1].key {
            return Err(Error::corrupt(
                w[1].id,
                0,
                format!("overlaps segment {} in the log order", w[0].id),
            ));
        }
    }
    Ok(order)
}

/// How a scan of one segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte after `end` is zero (or there is none): a clean end.
    Clean {
        /// Offset just past the last valid frame.
        end: u32,
    },
    /// The last segment ends in a damaged region that holds no acknowledged
    /// data; recovery truncates it at `end`.
    Torn {
        /// Offset just past the last valid frame (where damage starts).
        end: u32,
        /// What was found there.
        reason: String,
    },
}

impl ScanEnd {
    /// Offset just past the last valid frame.
    pub fn end(&self) -> u32 {
        match self {
            ScanEnd::Clean { end } | ScanEnd::Torn { end, .. } => *end,
        }
    }
}

/// Scans the frames of a segment from `start` (a frame boundary, at least
/// [`HEADER_BYTES`]), calling `visit(offset, record, frame_len)` for each
/// valid record in order. `bytes` is the whole segment, 8-aligned in memory.
///
/// `is_last` says whether this is the shard's last segment, the only one that
/// may end torn. Damage anywhere else is [`Error::Corrupt`]. An error from
/// `visit` stops the scan and is returned.
pub fn scan(
    bytes: &[u8],
    segment: u32,
    start: u32,
    is_last: bool,
    mut visit: impl FnMut(u32, &ArchivedRecord, u32) -> Result<()>,
) -> Result<ScanEnd> {
    assert!(start as usize >= HEADER_BYTES && (start as usize).is_multiple_of(FRAME_ALIGN));
    assert!(
        (bytes.as_ptr() as usize).is_multiple_of(FRAME_ALIGN),
        "segment bytes must be 8-aligned"
    );
    let mut off = start as usize;
    if off > bytes.len() {
        return Err(Error::corrupt(
            segment,
            start,
            "segment shorter than the indexed position",
        ));
    }
    loop {
        match decode_frame(&bytes[off..]) {
            Ok((record, total)) => {
                visit(off as u32, record, total as u32)?;
                off += total;
            }
            Err(FrameError::End) if all_zero(&bytes[off..]) => {
                return Ok(ScanEnd::Clean { end: off as u32 });
            }
            Err(FrameError::End) => {
                return damaged(
                    bytes,
                    segment,
                    off,
                    is_last,
                    "non-zero bytes after the end marker".into(),
                )
            }
            Err(e) => return damaged(bytes, segment, off, is_last, e.to_string()),
        }
    }
}

fn all_zero(bytes: &[u8]) -> bool {
    // Word-at-a-time is plenty: this runs once per segment tail.
    let (head, words, tail) = unsafe { bytes.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Classifies damage found at `off`.
fn damaged(
    bytes: &[u8],
    segment: u32,
    off: usize,
    is_last: bool,
    reason: String,
) -> Result<ScanEnd> {
    if !is_last {
        return Err(Error::corrupt(segment, off as u32, reason));
    }
    match next_valid_frame(bytes, off + FRAME_ALIGN) {
        None => Ok(ScanEnd::Torn {
            end: off as u32,
            reason,
        }),
        Some(next) if has_unwritten_sector(&bytes[..next], off) => Ok(ScanEnd::Torn {
            end: off as u32,
            reason: format!("{reason}; later data at {next} is past never-written space"),
        }),
        Some(next) => Err(Error::corrupt(
            segment,
            off as u32,
            format!("{reason}; a valid record follows at offset {next}"),
        )),
    }
}

/// Finds the first offset >= `from` (8-aligned) holding a valid record.
fn next_valid_frame(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(FRAME_ALIGN - 1))
        .step_by(FRAME_ALIGN)
        .find(|&p| decode_frame(&bytes[p..]).is_ok())
}

/// True when `bytes[off..]` holds a run of zeros that reaches a sector
/// boundary and spans at least one sector's worth of the region, or the
/// region from `off` to the next sector boundary is all zero: space that a
/// torn write never reached.
fn has_unwritten_sector(bytes: &[u8], off: usize) -> bool {
    let next_boundary = (off / SECTOR_BYTES + 1) * SECTOR_BYTES;
    if next_boundary <= bytes.len() && all_zero(&bytes[off..next_boundary]) {
        return true;
    }
    let mut s = next_boundary;
    while s + SECTOR_BYTES <= bytes.len() {
        if all_zero(&bytes[s..s + SECTOR_BYTES]) {
            return true;
        }
        s += SECTOR_BYTES;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{encode_frame, Message, Record};
    use proptest::prelude::*;

    fn msg(seq: u64, body_len: usize) -> Record {
        Record::Message(Message {
            room: 7,
            seq,
            sender: 1,
            ts_ms: 1000 + seq,
            client_id: format!("c{seq}"),
            body: "x".repeat(body_len),
        })
    }

    /// A segment image: header, `n` frames, then `zeros` bytes of zeros.
    fn image(n: u64, zeros: usize) -> (rkyv::util::AlignedVec<16>, Vec<u32>) {
        let mut v = Header::appended(0, 3, 5).encode().to_vec();
        let mut offs = Vec::new();
        for i in 1..=n {
            offs.push(v.len() as u32);
            encode_frame(&msg(i, 40 + i as usize * 13 % 300), &mut v);
        }
        v.resize(v.len() + zeros, 0);
        let mut a = rkyv::util::AlignedVec::<16>::new();
        a.extend_from_slice(&v);
        (a, offs)
    }

    fn seqs(bytes: &[u8], is_last: bool) -> Result<(Vec<u64>, ScanEnd)> {
        let mut out = Vec::new();
        let end = scan(bytes, 3, HEADER_BYTES as u32, is_last, |_, r, _| {
            out.push(r.seq());
            Ok(())
        })?;
        Ok((out, end))
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let compacted = Header {
            shard: 2,
            segment: COMPACTED_ID_BASE + 4,
            created_ms: 0,
            covers: Some((3, 17)),
        };
        for h in [Header::appended(2, 9, 77), compacted] {
            let b = h.encode();
            assert_eq!(Header::decode(&b, h.segment).unwrap(), h);
            assert!(Header::decode(&b, h.segment - 1).is_err());
            for i in 0..HEADER_BYTES {
                let mut d = b;
                d[i] ^= 0x40;
                assert!(
                    Header::decode(&d, h.segment).is_err(),
                    "flip at {i} accepted"
                );
            }
            assert!(Header::decode(&b[..20], h.segment).is_err());
        }
    }

    /// Writes an (empty) segment file with this header.
    fn touch(dir: &Path, h: Header) {
        std::fs::write(path(dir, h.segment), h.encode()).unwrap();
    }

    #[test]
    fn log_order_places_compacted_runs_and_finds_what_they_supersede() {
        let dir = tempfile::tempdir().unwrap();
        let c = |n: u32, first: u32, last: u32| Header {
            shard: 0,
            segment: COMPACTED_ID_BASE + n,
            created_ms: 0,
            covers: Some((first, last)),
        };
        // 1..=3 compacted into c1 (originals 2 and 3 still there after a
        // crash), c1 compacted again into c2; 4 compacted into c3, whose
        // switch never committed; 5 and 6 appended.
        for id in [2, 3, 4, 5, 6] {
            touch(dir.path(), Header::appended(0, id, 0));
        }
        touch(dir.path(), c(1, 1, 3));
        touch(dir.path(), c(2, 1, 3));
        touch(dir.path(), c(3, 4, 4));
        let ids = list(dir.path()).unwrap();
        assert_eq!(ids.len(), 8, "long (compacted) ids are listed too");
        let order = log_order(dir.path(), &ids, |id| id != COMPACTED_ID_BASE + 3).unwrap();
        let live: Vec<(u32, u32)> = order.live.iter().map(|f| (f.id, f.key)).collect();
        assert_eq!(
            live,
            vec![(COMPACTED_ID_BASE + 2, 1), (4, 4), (5, 5), (6, 6)]
        );
        let mut sup = order.superseded.clone();
        sup.sort_unstable();
        assert_eq!(sup, vec![2, 3, COMPACTED_ID_BASE + 1]);
        assert_eq!(order.uncommitted, vec![COMPACTED_ID_BASE + 3]);
        // Two committed runs that overlap without one holding the other
        // cannot come from compaction: refused.
        touch(dir.path(), c(4, 3, 5));
        let ids = list(dir.path()).unwrap();
        assert!(log_order(dir.path(), &ids, |_| true).is_err());
    }

    #[test]
    fn clean_scan_sees_every_record() {
        let (img, offs) = image(50, 5000);
        let (s, end) = seqs(&img, false).unwrap();
        assert_eq!(s, (1..=50).collect::<Vec<_>>());
        assert_eq!(
            end,
            ScanEnd::Clean {
                end: (img.len() - 5000) as u32
            }
        );
        assert_eq!(offs.len(), 50);
    }

    #[test]
    fn truncated_last_record_is_a_torn_tail() {
        let (img, offs) = image(20, 0);
        for cut in [offs[19] as usize + 3, offs[19] as usize + 9, img.len() - 1] {
            let (s, end) = seqs(&img[..cut], true).unwrap();
            assert_eq!(s, (1..=19).collect::<Vec<_>>());
            assert!(matches!(end, ScanEnd::Torn { end, .. } if end == offs[19]));
        }
        // The same damage in a sealed segment is corruption.
        assert!(matches!(
            seqs(&img[..offs[19] as usize + 9], false),
            Err(Error::Corrupt { offset, .. }) if offset == offs[19]
        ));
    }

    #[test]
    fn flipped_byte_in_the_middle_is_corruption_even_in_last_segment() {
        let (img, offs) = image(30, 4096);
        let mut bad = img.clone();
        bad[offs[10] as usize + 20] ^= 0x01;
        match seqs(&bad, true) {
            Err(Error::Corrupt {
                segment: 3, offset, ..
            }) => assert_eq!(offset, offs[10]),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn out_of_order_torn_batch_is_torn_not_corrupt() {
        // Records 1..=10 are durable; then a sector of never-written zeros;
        // then stray valid records of the unacknowledged batch.
        let (head, _) = image(10, 0);
        let pad = (head.len() / SECTOR_BYTES + 2) * SECTOR_BYTES - head.len();
        let mut v = head.to_vec();
        v.resize(v.len() + pad, 0);
        encode_frame(&msg(11, 100), &mut v);
        let mut a = rkyv::util::AlignedVec::<16>::new();
        a.extend_from_slice(&v);
        let (s, end) = seqs(&a, true).unwrap();
        assert_eq!(s, (1..=10).collect::<Vec<_>>());
        assert!(matches!(end, ScanEnd::Torn { end, .. } if end as usize == head.len()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_segment_bytes_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..4096),
            is_last in any::<bool>(),
        ) {
            let mut a = rkyv::util::AlignedVec::<16>::new();
            a.extend_from_slice(&Header::appended(0, 3, 0).encode());
            a.extend_from_slice(&body);
            let _ = seqs(&a, is_last);
        }

        #[test]
        fn damage_at_random_place_never_yields_wrong_records(pos in any::<prop::sample::Index>(), x in 1u8..=255) {
            let (img, _) = image(40, 1024);
            let mut bad = img.clone();
            let i = HEADER_BYTES + pos.index(img.len() - HEADER_BYTES);
            bad[i] ^= x;
            if let Ok((s, _)) = seqs(&bad, true) {
                // Whatever survives is a prefix of what was written.
                prop_assert_eq!(s.clone(), (1..=s.len() as u64).collect::<Vec<_>>());
            }
        }
    }
}
