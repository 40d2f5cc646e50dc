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
use std::sync::Arc;

use glommio::io::{DmaFile, OpenOptions};

use crate::config::LogObserver;
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
    /// The active segment opened again with `O_DSYNC`, for writes that
    /// are durable when they return (`sync` mode).
    through: Option<DmaFile>,
    /// Whether `through` is kept open.
    write_through: bool,
    segment: u32,
    end: u32,
    synced_end: u32,
    tail: Vec<u8>,
    /// The next segment, being zero-filled under its spare name.
    spare: Option<glommio::Task<Result<Prepared>>>,
    /// Told every write, sync, truncation and install (tests).
    observer: Option<Arc<dyn LogObserver>>,
}

/// A zero-filled segment file and the header written at its start.
type Prepared = (DmaFile, [u8; HEADER_BYTES]);

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
    /// Creates segment `segment` (which must not exist) and makes it active,
    /// waiting for it to be zero-filled. Starts preparing the next one.
    pub(crate) async fn create(
        dir: &Path,
        shard: u32,
        segment: u32,
        segment_bytes_max: u32,
        now_ms: u64,
        observer: Option<Arc<dyn LogObserver>>,
        write_through: bool,
    ) -> Result<Self> {
        let (file, header) = prepare_segment(
            dir.to_path_buf(),
            shard,
            segment,
            segment_bytes_max,
            now_ms,
            observer.clone(),
        )
        .await?;
        install_segment(dir, segment, observer.as_deref()).await?;
        let through = if write_through {
            Some(open_through(&segment::path(dir, segment)).await?)
        } else {
            None
        };
        let mut w = LogWriter {
            dir: dir.to_path_buf(),
            shard,
            segment_bytes_max,
            file,
            through,
            write_through,
            segment,
            end: HEADER_BYTES as u32,
            synced_end: HEADER_BYTES as u32,
            tail: Vec::with_capacity(BLOCK),
            spare: None,
            observer,
        };
        w.tail.extend_from_slice(&header);
        w.start_spare(now_ms);
        Ok(w)
    }

    /// Starts zero-filling the next segment in the background.
    fn start_spare(&mut self, now_ms: u64) {
        let fut = prepare_segment(
            self.dir.clone(),
            self.shard,
            self.segment + 1,
            self.segment_bytes_max,
            now_ms,
            self.observer.clone(),
        );
        self.spare = Some(glommio::spawn_local(fut));
    }

    /// Current segment id.
    pub(crate) fn segment(&self) -> u32 {
        self.segment
    }

    /// Position just past the last frame written.
    pub(crate) fn end(&self) -> Pos {
        Pos {
            segment: self.segment,
            offset: self.end,
        }
    }

    /// Position just past the last synced frame.
    pub(crate) fn synced(&self) -> Pos {
        Pos {
            segment: self.segment,
            offset: self.synced_end,
        }
    }

    /// Path of the active segment.
    pub(crate) fn path(&self) -> PathBuf {
        segment::path(&self.dir, self.segment)
    }

    /// Writes consecutive frames (`lens[i]` bytes each, concatenated in
    /// `frames`), rolling to new segments as needed. Pushes each frame's
    /// position to `positions` and each segment sealed on the way to
    /// `sealed`. With `through` (and a write-through handle open), every
    /// byte is durable when it returns; else the active segment is not
    /// synced.
    pub(crate) async fn write(
        &mut self,
        frames: &[u8],
        lens: &[u32],
        now_ms: u64,
        positions: &mut Vec<Pos>,
        sealed: &mut Vec<Sealed>,
        through: bool,
    ) -> Result<()> {
        let mut run_start = 0usize;
        let mut cursor = 0usize;
        for &len in lens {
            let len = len as usize;
            let run_len = cursor - run_start;
            if self.end as usize + run_len + len > self.segment_bytes_max as usize
                && self.end as usize + run_len > HEADER_BYTES
            {
                self.write_run(&frames[run_start..cursor], through).await?;
                sealed.push(self.roll(now_ms).await?);
                run_start = cursor;
            }
            positions.push(Pos {
                segment: self.segment,
                offset: (self.end as usize + cursor - run_start) as u32,
            });
            cursor += len;
        }
        assert_eq!(cursor, frames.len(), "frame lengths must cover the buffer");
        self.write_run(&frames[run_start..cursor], through).await
    }

    /// Writes bytes at `end`, starting from the enclosing block boundary
    /// (through the `O_DSYNC` handle when `through` and it is open).
    async fn write_run(&mut self, bytes: &[u8], through: bool) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let start = self.end;
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
        if let Some(o) = &self.observer {
            o.wrote(&self.path(), block_start as u64, dst);
        }
        let target = match &self.through {
            Some(t) if through => t,
            _ => &self.file,
        };
        let durable = through && self.through.is_some();
        let written = target
            .write_at(buf, block_start as u64)
            .await
            .map_err(|e| glommio_err("writing", &self.path(), e))?;
        if written != padded {
            // O_DIRECT writes of whole blocks are not split on local
            // filesystems; a short write means the device is full or failing.
            return Err(Error::io(
                self.path(),
                std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short write: {written} of {padded} bytes"),
                ),
            ));
        }
        self.end += bytes.len() as u32;
        // Durable as a whole only if everything before it already was: an
        // `O_DSYNC` write makes its own blocks durable, not earlier ones.
        if durable && self.synced_end == start {
            self.synced_end = self.end;
            if let Some(o) = &self.observer {
                o.synced(&self.path());
            }
        }
        Ok(())
    }

    /// Makes everything written so far durable.
    pub(crate) async fn sync(&mut self) -> Result<()> {
        if self.synced_end == self.end {
            return Ok(());
        }
        self.file
            .fdatasync()
            .await
            .map_err(|e| glommio_err("syncing", &self.path(), e))?;
        self.synced_end = self.end;
        if let Some(o) = &self.observer {
            o.synced(&self.path());
        }
        Ok(())
    }

    /// Syncs and seals the active segment (truncating it to its data) and
    /// makes the prepared spare the active one.
    async fn roll(&mut self, now_ms: u64) -> Result<Sealed> {
        let sealed = self.seal().await?;
        let next_id = self.segment + 1;
        let (file, header) = match self.spare.take() {
            Some(task) => task.await?,
            None => {
                prepare_segment(
                    self.dir.clone(),
                    self.shard,
                    next_id,
                    self.segment_bytes_max,
                    now_ms,
                    self.observer.clone(),
                )
                .await?
            }
        };
        install_segment(&self.dir, next_id, self.observer.as_deref()).await?;
        if let Some(old) = self.through.take() {
            let _ = old.close().await;
        }
        if self.write_through {
            self.through = Some(open_through(&segment::path(&self.dir, next_id)).await?);
        }
        let old = std::mem::replace(&mut self.file, file);
        let old_path = self.path();
        old.close()
            .await
            .map_err(|e| glommio_err("closing", &old_path, e))?;
        self.segment = next_id;
        self.end = HEADER_BYTES as u32;
        self.synced_end = HEADER_BYTES as u32;
        self.tail.clear();
        // The next write rewrites the first block: keep the header in the tail.
        self.tail.extend_from_slice(&header);
        self.start_spare(now_ms);
        Ok(sealed)
    }

    /// Seals the active segment and starts the next one, if the active one
    /// holds any record (compaction asks for this, to reach every record).
    pub(crate) async fn roll_if_written(&mut self, now_ms: u64) -> Result<Option<Sealed>> {
        if self.end as usize == HEADER_BYTES {
            return Ok(None);
        }
        self.roll(now_ms).await.map(Some)
    }

    /// Syncs the active segment and truncates it to its data.
    pub(crate) async fn seal(&mut self) -> Result<Sealed> {
        self.sync().await?;
        let path = self.path();
        self.file
            .truncate(self.end as u64)
            .await
            .map_err(|e| glommio_err("truncating", &path, e))?;
        if let Some(o) = &self.observer {
            o.truncated(&path, self.end as u64);
        }
        self.file
            .fdatasync()
            .await
            .map_err(|e| glommio_err("syncing", &path, e))?;
        if let Some(o) = &self.observer {
            o.synced(&path);
        }
        Ok(Sealed {
            segment: self.segment,
            end: self.end,
        })
    }

    /// Seals and closes the writer (shutdown). A spare being prepared is
    /// abandoned; the next open removes it.
    pub(crate) async fn close(mut self) -> Result<Sealed> {
        if let Some(spare) = self.spare.take() {
            if let Ok((f, _)) = spare.await {
                let _ = f.close().await;
            }
        }
        let sealed = self.seal().await?;
        let path = self.path();
        if let Some(t) = self.through.take() {
            let _ = t.close().await;
        }
        self.file
            .close()
            .await
            .map_err(|e| glommio_err("closing", &path, e))?;
        Ok(sealed)
    }
}

/// Bytes written per request while zero-filling a segment.
const FILL_CHUNK: usize = 1 << 20;

/// Path under which a segment is prepared before it is installed.
pub(crate) fn spare_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{}.spare", segment::file_name(segment)))
}

/// Creates `{id}.seg.spare`: header, then zeros up to the segment size,
/// written for real (not `fallocate`d) and synced. Overwriting written
/// blocks needs no metadata update, so each later `fdatasync` is one device
/// flush instead of a journal commit (measured: ~4 ms with unwritten
/// extents versus a few hundred µs here).
async fn prepare_segment(
    dir: PathBuf,
    shard: u32,
    segment: u32,
    size: u32,
    now_ms: u64,
    observer: Option<Arc<dyn LogObserver>>,
) -> Result<(DmaFile, [u8; HEADER_BYTES])> {
    let path = spare_path(&dir, segment);
    let _ = std::fs::remove_file(&path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .dma_open(&path)
        .await
        .map_err(|e| glommio_err("creating", &path, e))?;
    let zeros = {
        let mut b = file.alloc_dma_buffer(FILL_CHUNK);
        b.as_bytes_mut().fill(0);
        std::rc::Rc::new(b)
    };
    let header = Header::appended(shard, segment, now_ms).encode();
    let mut first = file.alloc_dma_buffer(BLOCK);
    first.as_bytes_mut().fill(0);
    first.as_bytes_mut()[..HEADER_BYTES].copy_from_slice(&header);
    if let Some(o) = &observer {
        o.wrote(&path, 0, first.as_bytes());
    }
    file.write_at(first, 0)
        .await
        .map_err(|e| glommio_err("writing", &path, e))?;
    let mut pos = BLOCK as u64;
    while pos < size as u64 {
        let remaining = size as u64 - pos;
        if let Some(o) = &observer {
            let len = (remaining as usize).min(FILL_CHUNK).div_ceil(BLOCK) * BLOCK;
            o.wrote(&path, pos, &vec![0; len]);
        }
        let n = if remaining >= FILL_CHUNK as u64 {
            file.write_rc_at(zeros.clone(), pos).await
        } else {
            let mut b = file.alloc_dma_buffer((remaining as usize).div_ceil(BLOCK) * BLOCK);
            b.as_bytes_mut().fill(0);
            file.write_at(b, pos).await
        }
        .map_err(|e| glommio_err("zero-filling", &path, e))?;
        if n == 0 {
            return Err(Error::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::WriteZero, "zero-fill wrote nothing"),
            ));
        }
        pos += n as u64;
    }
    file.fdatasync()
        .await
        .map_err(|e| glommio_err("syncing", &path, e))?;
    if let Some(o) = &observer {
        o.synced(&path);
    }
    Ok((file, header))
}

/// Opens an installed segment again for writes that are durable when they
/// return (`O_DSYNC`): on a segment whose blocks are all written already
/// (zero-filled), that needs no metadata, so the kernel can make each
/// write one device request (FUA) instead of a write and a flush.
async fn open_through(path: &Path) -> Result<DmaFile> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(path)
        .await
        .map_err(|e| glommio_err("opening (O_DSYNC)", path, e))
}

/// Renames a prepared spare to its segment name and makes that durable.
async fn install_segment(
    dir: &Path,
    segment: u32,
    observer: Option<&dyn LogObserver>,
) -> Result<()> {
    let (from, to) = (spare_path(dir, segment), segment::path(dir, segment));
    let (f, t, dir) = (from.clone(), to.clone(), dir.to_path_buf());
    glommio::executor()
        .spawn_blocking(move || {
            std::fs::rename(&f, &t).map_err(|e| Error::io(&t, e))?;
            sync_dir(&dir)
        })
        .await?;
    if let Some(o) = observer {
        o.installed(&from, &to);
    }
    Ok(())
}

/// Makes a directory's entries (new or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Makes this executor put the log's O_DIRECT I/O on glommio's main ring
/// rather than its poll (IOPOLL) ring.
///
/// glommio 0.9.0 decides per device and per executor thread, on the first
/// `DmaFile` it opens there, by trying a polled read; where that read
/// succeeds (it does on virtio disks whose queues cannot be polled), every
/// later read and write of that device goes to the poll ring, and while one
/// is in flight the executor never sleeps: it spins through its reactor,
/// re-arming and cancelling timers, about a million times a second. Measured
/// here: with writes in flight all the time (`batch`/`none` durability)
/// both shards spun at 100% CPU and answered posts seconds late. The probe
/// cannot be turned off, but its answer is cached: opening a write-only
/// file first makes the probe's read fail, which glommio records as "no
/// polling for this device" (and says so in one log line).
pub(crate) async fn keep_off_poll_ring(dir: &Path) -> Result<()> {
    let path = dir.join(".iopoll-probe");
    std::fs::write(&path, [0u8; BLOCK]).map_err(|e| Error::io(&path, e))?;
    let opened = OpenOptions::new().write(true).dma_open(&path).await;
    let _ = std::fs::remove_file(&path);
    let file = opened.map_err(|e| glommio_err("opening", &path, e))?;
    file.close()
        .await
        .map_err(|e| glommio_err("closing", &path, e))?;
    Ok(())
}
