//! Segment files: naming, the header, and scanning a segment's records.
//!
//! A segment is `shard-K/log/{id:08}.seg`: a 32-byte header followed by
//! frames (see [`crate::record`]). The active segment is preallocated, so
//! never-written space reads as zeros and a zero length word marks the end.
//! Sealed segments are truncated to their last record.
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
/// Segment format version written by this build.
pub const FORMAT_VERSION: u32 = 1;
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
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

impl Header {
    /// Encodes the header: magic, version, shard, segment, reserved,
    /// created_ms, crc32c of the first 28 bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.shard.to_le_bytes());
        h[16..20].copy_from_slice(&self.segment.to_le_bytes());
        h[20..28].copy_from_slice(&self.created_ms.to_le_bytes());
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
        if word(8..12) != FORMAT_VERSION {
            return Err(bad(&format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                word(8..12)
            )));
        }
        let header = Header {
            shard: word(12..16),
            segment: word(16..20),
            created_ms: u64::from_le_bytes(bytes[20..28].try_into().expect("8")),
        };
        if header.segment != segment {
            return Err(bad(&format!(
                "names segment {} but file is {segment}",
                header.segment
            )));
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
        if let Some(id) = name
            .strip_suffix(".seg")
            .and_then(|s| s.parse::<u32>().ok())
        {
            if name.len() == 12 {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
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
        let mut v = Header {
            shard: 0,
            segment: 3,
            created_ms: 5,
        }
        .encode()
        .to_vec();
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
        let h = Header {
            shard: 2,
            segment: 9,
            created_ms: 77,
        };
        let b = h.encode();
        assert_eq!(Header::decode(&b, 9).unwrap(), h);
        assert!(Header::decode(&b, 8).is_err());
        for i in 0..HEADER_BYTES {
            let mut d = b;
            d[i] ^= 0x40;
            assert!(Header::decode(&d, 9).is_err(), "flip at {i} accepted");
        }
        assert!(Header::decode(&b[..20], 9).is_err());
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
            a.extend_from_slice(&Header { shard: 0, segment: 3, created_ms: 0 }.encode());
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
