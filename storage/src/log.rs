//! The writing end of a shard's log: the active segment, block-aligned
//! direct writes, `fdatasync`, and rolling.
//!
//! Only the shard's committer task owns a [`LogWriter`], so there is at most
//! one write or sync in flight per shard. Writes go through glommio's
//! `DmaFile` (O_DIRECT on io_uring) so the reactor never blocks on the disk.
//!
//! Invariants:
//! - `end` is the offset just past the last frame written; bytes of the
//!   segment after `end` are zero on disk (preallocated, and each write pads
//!   its last block with zeros);
//! - `tail` holds the bytes of the partial block before `end`, so every write
//!   starts at a block boundary and rewrites that block with the same bytes;
//! - a segment is sealed (synced, then truncated to `end`) before the next
//!   one receives a byte, and a new segment's directory entry is synced
//!   before any record in it can be acknowledged.

use std::path::{Path, PathBuf};

use glommio::io::{DmaFile, OpenOptions};

use crate::error::{Error, Result};
use crate::segment::{self, Header, Pos, HEADER_BYTES};

/// Block size of direct writes (the largest O_DIRECT alignment in use).
const BLOCK: usize = 4096;

/// The active segment of a shard and how to extend it.
pub(crate) struct LogWriter {
    dir: PathBuf,
    shard: u32,
    segment_bytes_max: u32,
    file: DmaFile,
    segment: u32,
    end: u32,
    synced_end: u32,
    tail: Vec<u8>,
}

/// A segment that was sealed by a roll: its id and final length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sealed {
    pub segment: u32,
    pub end: u32,
}

fn glommio_err(what: &str, path: &Path, e: glommio::GlommioError<()>) -> Error {
    Error::Glommio(format!("{what} {}: {e}", path.display()))
}

impl LogWriter {
    /// Creates segment `segment` (which must not exist), preallocated,
    /// with its header written and synced, and its directory entry synced.
    pub(crate) async fn create(dir: &Path, shard: u32, segment: u32, segment_bytes_max: u32, now_ms: u64) -> Result<Self> {
        let path = segment::path(dir, segment);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .dma_open(&path)
            .await
            .map_err(|e| glommio_err("creating", &path, e))?;
        file.pre_allocate(segment_bytes_max as u64, false)
            .await
            .map_err(|e| glommio_err("preallocating", &path, e))?;
        let mut w = LogWriter {
            dir: dir.to_path_buf(),
            shard,
            segment_bytes_max,
            file,
            segment,
            end: 0,
            synced_end: 0,
            tail: Vec::with_capacity(BLOCK),
        };
        let header = Header { shard, segment, created_ms: now_ms }.encode();
        w.write_run(&header).await?;
        w.sync().await?;
        sync_dir(dir)?;
        Ok(w)
    }

    /// Current segment id.
    pub(crate) fn segment(&self) -> u32 {
        self.segment
    }

    /// Position just past the last synced frame.
    pub(crate) fn synced(&self) -> Pos {
        Pos { segment: self.segment, offset: self.synced_end }
    }

    /// Path of the active segment.
    pub(crate) fn path(&self) -> PathBuf {
        segment::path(&self.dir, self.segment)
    }

    /// Writes consecutive frames (`lens[i]` bytes each, concatenated in
    /// `frames`), rolling to new segments as needed. Pushes each frame's
    /// position to `positions` and each segment sealed on the way to
    /// `sealed`. Does not sync the active segment.
    pub(crate) async fn write(
        &mut self,
        frames: &[u8],
        lens: &[u32],
        now_ms: u64,
        positions: &mut Vec<Pos>,
        sealed: &mut Vec<Sealed>,
    ) -> Result<()> {
        let mut run_start = 0usize;
        let mut cursor = 0usize;
        for &len in lens {
            let len = len as usize;
            let run_len = cursor - run_start;
            if self.end as usize + run_len + len > self.segment_bytes_max as usize && self.end as usize + run_len > HEADER_BYTES {
                self.write_run(&frames[run_start..cursor]).await?;
                sealed.push(self.roll(now_ms).await?);
                run_start = cursor;
            }
            positions.push(Pos { segment: self.segment, offset: (self.end as usize + cursor - run_start) as u32 });
            cursor += len;
        }
        assert_eq!(cursor, frames.len(), "frame lengths must cover the buffer");
        self.write_run(&frames[run_start..cursor]).await
    }

    /// Writes bytes at `end`, starting from the enclosing block boundary.
    async fn write_run(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let block_start = self.end as usize - self.tail.len();
        debug_assert_eq!(block_start % BLOCK, 0);
        let total = self.tail.len() + bytes.len();
        let padded = total.div_ceil(BLOCK) * BLOCK;
        let mut buf = self.file.alloc_dma_buffer(padded);
        let dst = buf.as_bytes_mut();
        dst[..self.tail.len()].copy_from_slice(&self.tail);
        dst[self.tail.len()..total].copy_from_slice(bytes);
        dst[total..].fill(0);
        let new_tail_start = (total / BLOCK) * BLOCK;
        self.tail.clear();
        self.tail.extend_from_slice(&dst[new_tail_start..total]);
        let written = self
            .file
            .write_at(buf, block_start as u64)
            .await
            .map_err(|e| glommio_err("writing", &self.path(), e))?;
        if written != padded {
            // O_DIRECT writes of whole blocks are not split on local
            // filesystems; a short write means the device is full or failing.
            return Err(Error::io(self.path(), std::io::Error::new(std::io::ErrorKind::WriteZero, format!("short write: {written} of {padded} bytes"))));
        }
        self.end += bytes.len() as u32;
        Ok(())
    }

    /// Makes everything written so far durable.
    pub(crate) async fn sync(&mut self) -> Result<()> {
        if self.synced_end == self.end {
            return Ok(());
        }
        self.file.fdatasync().await.map_err(|e| glommio_err("syncing", &self.path(), e))?;
        self.synced_end = self.end;
        Ok(())
    }

    /// Syncs and seals the active segment (truncating it to its data) and
    /// makes the next one active.
    async fn roll(&mut self, now_ms: u64) -> Result<Sealed> {
        let sealed = self.seal().await?;
        let next = LogWriter::create(&self.dir, self.shard, self.segment + 1, self.segment_bytes_max, now_ms).await?;
        let old = std::mem::replace(self, next);
        let old_path = old.path();
        old.file.close().await.map_err(|e| glommio_err("closing", &old_path, e))?;
        Ok(sealed)
    }

    /// Syncs the active segment and truncates it to its data.
    pub(crate) async fn seal(&mut self) -> Result<Sealed> {
        self.sync().await?;
        let path = self.path();
        self.file.truncate(self.end as u64).await.map_err(|e| glommio_err("truncating", &path, e))?;
        self.file.fdatasync().await.map_err(|e| glommio_err("syncing", &path, e))?;
        Ok(Sealed { segment: self.segment, end: self.end })
    }

    /// Seals and closes the writer (shutdown).
    pub(crate) async fn close(mut self) -> Result<Sealed> {
        let sealed = self.seal().await?;
        let path = self.path();
        self.file.close().await.map_err(|e| glommio_err("closing", &path, e))?;
        Ok(sealed)
    }
}

/// Makes a directory's entries (new or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}
