//! Reading the log from outside its shard, without the page cache.
//!
//! The log is written with O_DIRECT. A buffered read of a segment brings
//! pages into the page cache that the writer's next direct write to the
//! same block must invalidate, which sends that write off io_uring's fast
//! path to a worker thread (measured: webhooks reading with `pread` put two
//! `iou-wrk` threads to work beside each shard). Feeds and backups read
//! through a [`DirectFile`], which leaves the page cache alone.
//!
//! Invariant: a read never returns bytes past the end of the file, and a
//! short direct read is the end of the file (a second read would start
//! unaligned).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Direct reads are aligned to this (the largest logical block size).
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// A file opened for reading, with O_DIRECT where the file system allows
/// it (tmpfs and some others refuse it: those read through the cache).
#[derive(Debug)]
pub(crate) struct DirectFile {
    file: std::fs::File,
    direct: bool,
    path: PathBuf,
}

/// Bytes read from a file: `buf[skip..skip + len]`.
pub(crate) struct Read {
    buf: rkyv::util::AlignedVec<DIRECT_ALIGN>,
    skip: usize,
    len: usize,
}

impl Read {
    /// The bytes asked for (fewer at the end of the file).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[self.skip..self.skip + self.len]
    }

    /// The whole blocks the bytes lie in, aligned in memory, for a direct
    /// write back (past the bytes: what the file held there, or zeros);
    /// `None` when the read was not a direct one of whole blocks.
    pub(crate) fn whole_blocks(&self) -> Option<&[u8]> {
        let n = self.len.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        (self.skip == 0 && self.buf.len() >= n).then(|| &self.buf[..n])
    }
}

impl DirectFile {
    /// Opens `path` for reading.
    pub(crate) fn open(path: &Path) -> Result<DirectFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        let (file, direct) = match direct {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (
                std::fs::File::open(path).map_err(|e| Error::io(path, e))?,
                false,
            ),
            Err(e) => return Err(Error::io(path, e)),
        };
        Ok(DirectFile {
            file,
            direct,
            path: path.to_path_buf(),
        })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Up to `len` bytes at `offset` (fewer at the end of the file).
    pub(crate) fn read(&self, offset: u64, len: usize) -> Result<Read> {
        let (start, skip) = if self.direct {
            let start = offset & !(DIRECT_ALIGN as u64 - 1);
            (start, (offset - start) as usize)
        } else {
            (offset, 0)
        };
        let whole = if self.direct {
            (skip + len).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN
        } else {
            len
        };
        let mut buf = rkyv::util::AlignedVec::<DIRECT_ALIGN>::with_capacity(whole);
        buf.resize(whole, 0);
        let got = read_at(&self.file, &mut buf, start, &self.path, self.direct)?;
        Ok(Read {
            buf,
            skip,
            len: got.saturating_sub(skip).min(len),
        })
    }
}

/// Reads up to `buf.len()` bytes at `offset`; returns how many (fewer at
/// the end of the file).
fn read_at(
    file: &std::fs::File,
    buf: &mut [u8],
    offset: u64,
    path: &Path,
    direct: bool,
) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) if direct && n < buf.len() - got => return Ok(got + n),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(got)
}
