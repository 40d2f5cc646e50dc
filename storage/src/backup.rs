//! Online backup: a consistent copy of a data directory, taken while its
//! shards keep writing, and its check and restore.
//!
//! A backup is a data directory without indexes (they are derived; a
//! restore rebuilds them) plus `backup.json`, the manifest:
//!
//! ```text
//! NAME/
//! ├── backup.json        format, when, each shard's point, every file with its length and CRC32C
//! ├── manifest           the data directory's (shard count)
//! ├── meta.redb          copied table by table from one read transaction
//! ├── uploads/XX/ID      each upload the copy of meta.redb has (and ID.thumb)
//! └── shard-K/log/*.seg  the shard's live segments, the last one up to the point
//! ```
//!
//! Each shard gives its *point* on its own reactor
//! ([`crate::ShardStore::backup_point`]): the end of its acknowledged
//! records, its live segments opened at that instant, and its rooms' last
//! seqs. Then, on any thread, [`write_backup`] copies each segment up to
//! the point (direct reads: the page cache and the log's writes are left
//! alone), checking every record's checksum before it writes it, and
//! copies `meta.redb` as one read transaction sees it, taken after every
//! point (so every room a copied message names is in it), then the files
//! of the uploads that copy holds (an upload never changes; one removed
//! meanwhile is forgotten in the copy).
//!
//! Invariants:
//! - a backup holds every record whose append was acknowledged before its
//!   shard's point, and only whole, checked records;
//! - `NAME/` appears only complete and synced: it is written as
//!   `NAME.partial/` and renamed;
//! - every file of a backup is in its manifest with its length and CRC32C,
//!   and nothing else is in it ([`check_backup`] reads every byte back).

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::direct::DirectFile;
use crate::error::{Error, Result};
use crate::log::sync_dir;
use crate::manifest::Manifest;
use crate::meta::Meta;
use crate::record::{
    check_frame, frame_len, ArchivedRecord, FrameError, FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX,
};
use crate::segment::{self, Header, Pos, HEADER_BYTES};
use crate::uploads::UploadFiles;

/// The manifest's file name inside a backup.
pub const MANIFEST_FILE: &str = "backup.json";

/// The layout this build writes and reads.
pub const BACKUP_FORMAT: u32 = 1;

/// Bytes per read of a segment being copied.
const COPY_STEP_BYTES: u64 = 256 << 10;

/// How far behind its rate a backup may catch up at full speed.
const PACE_CATCH_UP_MAX: Duration = Duration::from_secs(1);

/// A live segment opened at a shard's point, and how much of it to copy.
#[derive(Debug)]
pub struct PointFile {
    id: u32,
    len: u64,
    file: DirectFile,
}

impl PointFile {
    /// Opens segment `id` at `path`, to be copied up to `len` bytes.
    pub(crate) fn open(id: u32, len: u64, path: &Path) -> Result<PointFile> {
        Ok(PointFile {
            id,
            len,
            file: DirectFile::open(path)?,
        })
    }
}

/// What one shard gives a backup (see [`crate::ShardStore::backup_point`]).
/// `Send`: taken on the shard's reactor, copied on any thread.
#[derive(Debug)]
pub struct ShardPoint {
    shard: u32,
    end: Pos,
    files: Vec<PointFile>,
    last_seqs: Vec<(u64, u64)>,
}

impl ShardPoint {
    pub(crate) fn new(
        shard: u32,
        end: Pos,
        files: Vec<PointFile>,
        last_seqs: Vec<(u64, u64)>,
    ) -> ShardPoint {
        ShardPoint {
            shard,
            end,
            files,
            last_seqs,
        }
    }

    /// The shard.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// The end of the shard's acknowledged records at the point.
    pub fn end(&self) -> Pos {
        self.end
    }

    /// Bytes of log the backup copies from this shard.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.len).sum()
    }

    /// Reads every record of the point in log order, passing each with its
    /// position to `see`, until `see` says stop (false); returns how many
    /// it read (a stop comes into effect within one read of 256 KiB). The files stay open with the
    /// point, so compaction or retention after it takes nothing from under
    /// the read. Blocking (seconds per GB): a background thread's work.
    ///
    /// Replaying what `see` is given in order gives every message's state
    /// at the point: a compacted file holds each message followed by its
    /// latest edit or delete, and sorts where the run it replaced did.
    ///
    /// Errors: `Corrupt` for a bad header or frame, `Io` for a failed read.
    pub fn for_each_record(
        &self,
        mut see: impl FnMut(Pos, &ArchivedRecord) -> bool,
    ) -> Result<u64> {
        let mut order = Vec::with_capacity(self.files.len());
        for (i, f) in self.files.iter().enumerate() {
            let head = f.file.read(0, HEADER_BYTES)?;
            let header = Header::decode(head.bytes(), f.id)?;
            // An appended file sorts by its id, a compacted one where the
            // first segment of its run did (see `segment::log_order`).
            order.push((header.covers.map_or(f.id, |(first, _)| first), i));
        }
        order.sort_unstable();
        let mut records = 0u64;
        let go = std::cell::Cell::new(true);
        let mut see = |pos: Pos, record: &ArchivedRecord| {
            if go.get() {
                go.set(see(pos, record));
            }
        };
        for (_, i) in order {
            let f = &self.files[i];
            let mut at = HEADER_BYTES as u64;
            while at < f.len {
                let want = (f.len - at).min(COPY_STEP_BYTES) as usize;
                let pos = Pos {
                    segment: f.id,
                    offset: at as u32,
                };
                let read = crate::feed::read_frames(&f.file, pos, want, &mut see)?;
                if read.bytes == 0 {
                    break; // the rest of a sealed file is never-written space
                }
                at += read.bytes as u64;
                records += read.records as u64;
                if !go.get() {
                    return Ok(records);
                }
            }
        }
        Ok(records)
    }
}

/// How a backup runs.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Bytes of log copied per second at most (0: as fast as the disk
    /// allows).
    pub bytes_per_s_max: u64,
}

/// How far a running backup is (read from any thread).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of log copied so far.
    pub bytes_done: AtomicU64,
    /// Bytes of log to copy in all.
    pub bytes_total: AtomicU64,
    /// Set to stop the backup at its next step (it fails, leaving nothing).
    pub cancel: std::sync::atomic::AtomicBool,
}

impl Progress {
    /// Fails once [`Progress::cancel`] is set.
    fn go_on(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Error::Failed("the backup was cancelled".into()));
        }
        Ok(())
    }
}

/// One shard's point, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointEntry {
    /// The shard.
    pub shard: u32,
    /// Segment of the end of its acknowledged records.
    pub segment: u32,
    /// Offset of that end.
    pub offset: u32,
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path inside the backup, `/`-separated.
    pub path: String,
    /// Length in bytes.
    pub bytes: u64,
    /// CRC32C of the whole file.
    pub crc32c: u32,
}

/// `backup.json`: what a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    /// Layout version ([`BACKUP_FORMAT`]).
    pub format: u32,
    /// When the first point was taken, ms since the Unix epoch.
    pub created_ms: u64,
    /// Shard count of the data directory.
    pub shards: u32,
    /// Each shard's point.
    pub points: Vec<PointEntry>,
    /// Log records copied, all shards.
    pub records: u64,
    /// Users in `meta.redb`.
    pub users: u64,
    /// Rooms in `meta.redb`.
    pub rooms: u64,
    /// Every file but this manifest.
    pub files: Vec<FileEntry>,
}

impl BackupManifest {
    /// Bytes of all the backup's files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// Writes a backup at `to` (which must not exist) from `points` (one per
/// shard, all taken before this call) and `meta`, whose copy is taken
/// now. Blocking, for seconds per GB: run it on a thread of its own, which
/// it makes background work (any core, nice 10, idle I/O class).
///
/// A leftover `to.partial` (a backup that did not finish) is removed
/// first. On an error nothing is left at `to`.
#[allow(clippy::too_many_arguments)] // each is one independent input of a backup
pub fn write_backup(
    meta: &Meta,
    shards: u32,
    points: Vec<ShardPoint>,
    uploads: Option<&UploadFiles>,
    created_ms: u64,
    to: &Path,
    opts: &BackupOptions,
    progress: &Progress,
) -> Result<BackupManifest> {
    if points.len() != shards as usize
        || points.iter().enumerate().any(|(i, p)| p.shard != i as u32)
    {
        return Err(Error::InvalidInput(format!(
            "a backup takes one point per shard, in order ({shards} shards)"
        )));
    }
    if to.exists() {
        return Err(Error::AlreadyExists(to.display().to_string()));
    }
    crate::threads::background();
    let partial = partial_path(to)?;
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    let result = write_partial(
        meta, shards, points, uploads, created_ms, &partial, opts, progress,
    );
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, to).map_err(|e| Error::io(to, e))?;
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(manifest)
}

/// `NAME.partial` beside `NAME`.
fn partial_path(to: &Path) -> Result<PathBuf> {
    let name = to
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::InvalidInput(format!("{}: no file name", to.display())))?;
    Ok(to.with_file_name(format!("{name}.partial")))
}

#[allow(clippy::too_many_arguments)] // write_backup's, passed on
fn write_partial(
    meta: &Meta,
    shards: u32,
    points: Vec<ShardPoint>,
    uploads: Option<&UploadFiles>,
    created_ms: u64,
    dir: &Path,
    opts: &BackupOptions,
    progress: &Progress,
) -> Result<BackupManifest> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let total: u64 = points.iter().map(ShardPoint::bytes).sum();
    progress.bytes_total.store(total, Ordering::Relaxed);
    let mut pace = Pace::new(opts.bytes_per_s_max);
    let mut manifest = BackupManifest {
        format: BACKUP_FORMAT,
        created_ms,
        shards,
        points: Vec::with_capacity(points.len()),
        records: 0,
        users: 0,
        rooms: 0,
        files: Vec::new(),
    };
    let mut last_seqs: HashMap<u64, u64> = HashMap::new();
    for point in points {
        let log_dir = dir.join(format!("shard-{}", point.shard)).join("log");
        std::fs::create_dir_all(&log_dir).map_err(|e| Error::io(&log_dir, e))?;
        // Each segment is closed once copied: one that compaction or
        // retention deleted after the point frees its space then.
        for f in point.files {
            let dest = segment::path(&log_dir, f.id);
            let (crc32c, records) = copy_segment(&f, &dest, &mut pace, progress)?;
            manifest.records += records;
            manifest.files.push(FileEntry {
                path: format!("shard-{}/log/{}", point.shard, segment::file_name(f.id)),
                bytes: f.len,
                crc32c,
            });
        }
        sync_dir(&log_dir)?;
        sync_dir(log_dir.parent().expect("shard dir"))?;
        manifest.points.push(PointEntry {
            shard: point.shard,
            segment: point.end.segment,
            offset: point.end.offset,
        });
        last_seqs.extend(point.last_seqs);
    }
    // After every point: each room a copied record names is in the copy.
    progress.go_on()?;
    let copied = meta.copy_for_backup(&dir.join("meta.redb"), &last_seqs, &progress.cancel)?;
    manifest.users = copied.users;
    manifest.rooms = copied.rooms;
    let gone = copy_uploads(&copied.uploads, uploads, dir, &mut manifest, progress)?;
    crate::meta::forget_uploads(&dir.join("meta.redb"), &gone)?;
    Manifest::ensure(dir, shards)?;
    for name in ["manifest", "meta.redb"] {
        manifest.files.push(file_entry(dir, name)?);
    }
    let text = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::InvalidInput(format!("encoding the manifest: {e}")))?;
    write_synced(&dir.join(MANIFEST_FILE), &text)?;
    sync_dir(dir)?;
    Ok(manifest)
}

/// Copies the files of `ids` (and their thumbnails) from `uploads` into
/// `dir/uploads/`, listed in `manifest`; the ids whose file is gone (or
/// all of them, with no `uploads`), for the copy of `meta.redb` to forget.
fn copy_uploads(
    ids: &[u128],
    uploads: Option<&UploadFiles>,
    dir: &Path,
    manifest: &mut BackupManifest,
    progress: &Progress,
) -> Result<Vec<u128>> {
    let Some(files) = uploads else {
        return Ok(ids.to_vec());
    };
    let mut gone = Vec::new();
    let mut made = std::collections::BTreeSet::new();
    for &id in ids {
        progress.go_on()?;
        let hex = format!("{id:032x}");
        let sub = dir.join("uploads").join(&hex[..2]);
        let pairs = [
            (files.path(id), format!("uploads/{}/{hex}", &hex[..2])),
            (
                files.thumb_path(id),
                format!("uploads/{}/{hex}.thumb", &hex[..2]),
            ),
        ];
        if !pairs[0].0.exists() {
            gone.push(id);
            continue;
        }
        if made.insert(sub.clone()) {
            std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
        }
        for (from, rel) in pairs {
            if !from.exists() {
                continue; // no thumbnail
            }
            let (bytes, crc32c) = copy_file(&from, &dir.join(&rel))?;
            manifest.files.push(FileEntry {
                path: rel,
                bytes,
                crc32c,
            });
        }
    }
    for sub in &made {
        sync_dir(sub)?;
    }
    if !made.is_empty() {
        sync_dir(&dir.join("uploads"))?;
    }
    Ok(gone)
}

/// Copies `f` to `dest` up to its point, checking the segment header and
/// every record's checksum before writing; returns the copy's CRC32C and
/// its records.
fn copy_segment(
    f: &PointFile,
    dest: &Path,
    pace: &mut Pace,
    progress: &Progress,
) -> Result<(u32, u64)> {
    let mut out = DirectOut::create(dest)?;
    let mut walk = FrameWalk::new(f.id);
    let mut crc = 0u32;
    let mut off = 0u64;
    while off < f.len {
        progress.go_on()?;
        let want = (f.len - off).min(COPY_STEP_BYTES) as usize;
        let read = f.file.read(off, want)?;
        let bytes = read.bytes();
        if bytes.len() != want {
            return Err(Error::corrupt(
                f.id,
                (off + bytes.len() as u64) as u32,
                format!(
                    "{} ends before the backup's point ({} bytes)",
                    f.file.path().display(),
                    f.len
                ),
            ));
        }
        walk.feed(bytes)?;
        crc = crc32c::crc32c_append(crc, bytes);
        out.write(off, &read)?;
        off += want as u64;
        progress
            .bytes_done
            .fetch_add(want as u64, Ordering::Relaxed);
        pace.took(want as u64);
    }
    walk.finish()?;
    out.finish(f.len)?;
    Ok((crc, walk.records))
}

/// A new file written with O_DIRECT where the file system allows it, in
/// whole blocks: a backup's writes never become dirty pages, which the
/// kernel would flush in bursts that the log's durable writes queue
/// behind (measured: buffered writes with writeback started every 8 MiB,
/// then every 256 KiB, left chat's p99 9x that of a run without backups
/// at 64 MiB/s).
struct DirectOut {
    file: std::fs::File,
    direct: bool,
    path: PathBuf,
}

impl DirectOut {
    fn create(path: &Path) -> Result<DirectOut> {
        use std::os::unix::fs::OpenOptionsExt;
        let open = |flags| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match open(libc::O_DIRECT) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = std::fs::remove_file(path);
                (open(0).map_err(|e| Error::io(path, e))?, false)
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        Ok(DirectOut {
            file,
            direct,
            path: path.to_path_buf(),
        })
    }

    /// Writes `read` (read at `off`, a multiple of the block size) at
    /// `off`; directly, the whole blocks it lies in (what follows its
    /// bytes in the last block is cut by [`DirectOut::finish`]).
    fn write(&mut self, off: u64, read: &crate::direct::Read) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let padded;
        let bytes = match (self.direct, read.whole_blocks()) {
            (false, _) => read.bytes(),
            (true, Some(blocks)) => blocks,
            // Read through the cache (its file system refused O_DIRECT):
            // copied into whole aligned blocks.
            (true, None) => {
                let b = read.bytes();
                let n = b.len().div_ceil(crate::direct::DIRECT_ALIGN) * crate::direct::DIRECT_ALIGN;
                let mut v =
                    rkyv::util::AlignedVec::<{ crate::direct::DIRECT_ALIGN }>::with_capacity(n);
                v.extend_from_slice(b);
                v.resize(n, 0);
                padded = v;
                &padded[..]
            }
        };
        self.file
            .write_all_at(bytes, off)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Cuts the file at `len`, syncs it, and drops what the page cache
    /// holds of it.
    fn finish(self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::io(&self.path, e))?;
        drop_cached(&self.file);
        Ok(())
    }
}

/// Checks a segment's bytes as they stream past: the header, then whole
/// frames with their checksums, up to the end.
struct FrameWalk {
    segment: u32,
    /// Offset in the file of `pending[0]`.
    at: u64,
    pending: Vec<u8>,
    header_seen: bool,
    records: u64,
}

impl FrameWalk {
    fn new(segment: u32) -> FrameWalk {
        FrameWalk {
            segment,
            at: 0,
            pending: Vec::new(),
            header_seen: false,
            records: 0,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<()> {
        self.pending.extend_from_slice(bytes);
        let mut used = 0usize;
        if !self.header_seen {
            if self.pending.len() < HEADER_BYTES {
                return Ok(());
            }
            Header::decode(&self.pending[..HEADER_BYTES], self.segment)?;
            self.header_seen = true;
            used = HEADER_BYTES;
        }
        loop {
            let rest = &self.pending[used..];
            match check_frame(rest) {
                Ok((_, total)) => {
                    used += total;
                    self.records += 1;
                }
                Err(FrameError::End) if rest.len() < FRAME_HEADER_BYTES => break,
                Err(FrameError::End) => {
                    // The point is the end of a record: never-written
                    // space before it means records are missing.
                    return Err(Error::corrupt(
                        self.segment,
                        (self.at + used as u64) as u32,
                        "never-written space before the backup's point",
                    ));
                }
                Err(FrameError::BadLength(len))
                    if len as usize <= FRAME_PAYLOAD_BYTES_MAX
                        && frame_len(len as usize) > rest.len() =>
                {
                    break; // the frame goes on in the next read
                }
                Err(e) => {
                    return Err(Error::corrupt(
                        self.segment,
                        (self.at + used as u64) as u32,
                        e.to_string(),
                    ))
                }
            }
        }
        self.pending.drain(..used);
        self.at += used as u64;
        Ok(())
    }

    /// Fails when the copy ends inside the header or a record.
    fn finish(&self) -> Result<()> {
        if !self.header_seen || !self.pending.is_empty() {
            return Err(Error::corrupt(
                self.segment,
                self.at as u32,
                "the backup's point cuts a record",
            ));
        }
        Ok(())
    }
}

/// Keeps a copy at `bytes_per_s_max` (0: no limit).
struct Pace {
    bytes_per_s_max: u64,
    started: Instant,
    bytes: u64,
}

impl Pace {
    fn new(bytes_per_s_max: u64) -> Pace {
        Pace {
            bytes_per_s_max,
            started: Instant::now(),
            bytes: 0,
        }
    }

    fn took(&mut self, bytes: u64) {
        self.bytes += bytes;
        if self.bytes_per_s_max == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_s_max as f64);
        let elapsed = self.started.elapsed();
        match due.checked_sub(elapsed) {
            Some(wait) => std::thread::sleep(wait),
            // Behind (a slow disk): at most a second is made up at full
            // speed, never a burst to catch up a long delay.
            None if elapsed - due > PACE_CATCH_UP_MAX => {
                self.started += elapsed - due - PACE_CATCH_UP_MAX;
            }
            None => {}
        }
    }
}

/// Asks the kernel to drop `file`'s pages from the page cache (a backup
/// must not push out what chat reads).
fn drop_cached(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise on an open descriptor; advice only.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// Writes `bytes` to `path` through a temporary file, synced, renamed.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The entry of file `name` of `dir`, its CRC32C read from the file.
fn file_entry(dir: &Path, name: &str) -> Result<FileEntry> {
    let (bytes, crc32c) = crc_of(&dir.join(name))?;
    Ok(FileEntry {
        path: name.to_string(),
        bytes,
        crc32c,
    })
}

/// Length and CRC32C of a file, read through a small buffer (and dropped
/// from the page cache after).
fn crc_of(path: &Path) -> Result<(u64, u32)> {
    read_through(path, |_| Ok(()))
}

/// Reads the file at `path` whole, passing each piece to `each`; its
/// length and CRC32C. Drops the file from the page cache after.
fn read_through(path: &Path, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<(u64, u32)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; COPY_STEP_BYTES as usize];
    let (mut len, mut crc) = (0u64, 0u32);
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        each(&buf[..n])?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        len += n as u64;
    }
    drop_cached(&f);
    Ok((len, crc))
}

/// Reads `dir`'s manifest.
pub fn read_manifest(dir: &Path) -> Result<BackupManifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let m: BackupManifest = serde_json::from_slice(&text)
        .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
    if m.format != BACKUP_FORMAT {
        return Err(Error::InvalidInput(format!(
            "{}: backup format {} (this build reads {BACKUP_FORMAT})",
            path.display(),
            m.format
        )));
    }
    Ok(m)
}

/// Whether `path` is a file a backup of `shards` shards may hold: the
/// manifest, `meta.redb`, or a segment of a shard's log (never a path out
/// of the backup: the manifest is input).
fn allowed_path(path: &str, shards: u32) -> bool {
    if path == "manifest" || path == "meta.redb" {
        return true;
    }
    if let Some(rest) = path.strip_prefix("uploads/") {
        let Some((sub, name)) = rest.split_once('/') else {
            return false;
        };
        let id = name.strip_suffix(".thumb").unwrap_or(name);
        return id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && sub == &id[..2];
    }
    let mut parts = path.split('/');
    let (Some(shard), Some("log"), Some(file), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let shard_ok = shard
        .strip_prefix("shard-")
        .and_then(|k| k.parse::<u32>().ok())
        .is_some_and(|k| k < shards && shard == format!("shard-{k}"));
    let file_ok = file
        .strip_suffix(".seg")
        .and_then(|id| id.parse::<u32>().ok())
        .is_some_and(|id| file == segment::file_name(id));
    shard_ok && file_ok
}

/// Checks a backup: its manifest, and every file it lists read back whole
/// against its length and CRC32C; a file it does not list is a problem
/// too. Returns the manifest and the problems found (none: the backup is
/// as written).
pub fn check_backup(dir: &Path) -> Result<(BackupManifest, Vec<String>)> {
    let m = read_manifest(dir)?;
    let mut problems = Vec::new();
    if m.points.len() != m.shards as usize {
        problems.push(format!("{} points for {} shards", m.points.len(), m.shards));
    }
    let mut listed = std::collections::HashSet::new();
    for f in &m.files {
        if !allowed_path(&f.path, m.shards) || !listed.insert(f.path.clone()) {
            problems.push(format!("{}: not a path a backup holds", f.path));
            continue;
        }
        let path = dir.join(&f.path);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if !m.file_type().is_file() => {
                problems.push(format!("{}: not a regular file", f.path));
                continue;
            }
            _ => {}
        }
        match crc_of(&path) {
            Ok((bytes, _)) if bytes != f.bytes => problems.push(format!(
                "{}: {bytes} bytes, the manifest says {}",
                f.path, f.bytes
            )),
            Ok((_, crc)) if crc != f.crc32c => {
                problems.push(format!("{}: checksum mismatch", f.path))
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("{}: {e}", f.path)),
        }
    }
    for path in files_under(dir)? {
        if path != MANIFEST_FILE && !listed.contains(&path) {
            problems.push(format!("{path}: not in the manifest"));
        }
    }
    for name in ["manifest", "meta.redb"] {
        if !listed.contains(name) {
            problems.push(format!("{name}: missing from the manifest"));
        }
    }
    Ok((m, problems))
}

/// Every file under `dir`, as `/`-separated relative paths.
fn files_under(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let abs = dir.join(&rel);
        for entry in std::fs::read_dir(&abs).map_err(|e| Error::io(&abs, e))? {
            let entry = entry.map_err(|e| Error::io(&abs, e))?;
            let path = rel.join(entry.file_name());
            let kind = entry.file_type().map_err(|e| Error::io(&abs, e))?;
            if kind.is_dir() {
                todo.push(path);
            } else {
                out.push(path.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    Ok(out)
}

/// Copies a checked backup into `data`, a data directory to be (it must
/// not exist, or be empty). Fails, writing nothing, when the backup has a
/// problem ([`check_backup`]). The index of each shard is not in a backup:
/// the first open of each shard rebuilds it, and `meta.redb` takes a new
/// origin id when first opened.
///
/// Written as `data.partial`, each file checked again as it is copied,
/// and renamed onto `data` (an empty `data` is removed first).
pub fn restore(backup: &Path, data: &Path) -> Result<BackupManifest> {
    let (m, problems) = check_backup(backup)?;
    if !problems.is_empty() {
        return Err(Error::InvalidInput(format!(
            "the backup has {} problem(s): {}",
            problems.len(),
            problems.join("; ")
        )));
    }
    let exists = match std::fs::read_dir(data) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::AlreadyExists(format!(
                    "{} is not empty: restore into a new or empty directory",
                    data.display()
                )));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io(data, e)),
    };
    // Written beside `data` and renamed onto it whole: a restore cut short
    // leaves no directory a server would open.
    let staging = partial_path(data)?;
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    }
    let copied = copy_all(&m, backup, &staging);
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if exists {
        std::fs::remove_dir(data).map_err(|e| Error::io(data, e))?;
    }
    std::fs::rename(&staging, data).map_err(|e| Error::io(data, e))?;
    if let Some(parent) = data.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(m)
}

/// Copies every file of `m` from `backup` into the new directory `to`,
/// each checked against its length and CRC32C as it is copied, synced.
fn copy_all(m: &BackupManifest, backup: &Path, to: &Path) -> Result<()> {
    let mut dirs = std::collections::BTreeSet::new();
    dirs.insert(to.to_path_buf());
    for f in &m.files {
        let dest = to.join(&f.path);
        let parent = dest.parent().expect("inside the target").to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let (bytes, crc) = copy_file(&backup.join(&f.path), &dest)?;
        if (bytes, crc) != (f.bytes, f.crc32c) {
            return Err(Error::InvalidInput(format!(
                "{}: changed while it was restored",
                f.path
            )));
        }
        let mut d = parent;
        while d != to && dirs.insert(d.clone()) {
            d = d.parent().expect("inside the target").to_path_buf();
        }
    }
    for d in dirs.iter().rev() {
        sync_dir(d)?;
    }
    Ok(())
}

/// Copies `from` to the new file `to`, synced; the bytes copied and
/// their CRC32C.
fn copy_file(from: &Path, to: &Path) -> Result<(u64, u32)> {
    let mut dst = std::fs::File::create_new(to).map_err(|e| Error::io(to, e))?;
    let copied = read_through(from, |b| dst.write_all(b).map_err(|e| Error::io(to, e)))?;
    dst.sync_all().map_err(|e| Error::io(to, e))?;
    drop_cached(&dst);
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{encode_frame, Message, Record};
    use proptest::prelude::*;

    /// Segment 1: a header and `n` messages of varied lengths.
    fn segment(n: u64) -> (Vec<u8>, u64) {
        let mut bytes = Header::appended(0, 1, 5).encode().to_vec();
        for i in 0..n {
            let body = "b".repeat((i as usize * 37) % 900);
            let m = Message {
                room: 1,
                seq: i + 1,
                sender: 2,
                ts_ms: i,
                client_id: String::new(),
                body,
            };
            encode_frame(&Record::Message(m), &mut bytes);
        }
        (bytes, n)
    }

    /// Feeds `bytes` to a walk in pieces of the sizes `cuts` cycles over.
    fn walk(bytes: &[u8], cuts: &[usize]) -> Result<u64> {
        let mut w = FrameWalk::new(1);
        let (mut at, mut i) = (0, 0);
        while at < bytes.len() {
            let n = cuts[i % cuts.len()].max(1).min(bytes.len() - at);
            w.feed(&bytes[at..at + n])?;
            at += n;
            i += 1;
        }
        w.finish()?;
        Ok(w.records)
    }

    proptest! {
        #[test]
        fn records_are_counted_whatever_the_reads(cuts in prop::collection::vec(1usize..3000, 1..8)) {
            let (bytes, n) = segment(60);
            prop_assert_eq!(walk(&bytes, &cuts).unwrap(), n);
        }

        #[test]
        fn any_flipped_byte_or_cut_fails_the_walk(at in 0usize..20_000, cut in 1usize..3000) {
            let (mut bytes, _) = segment(60);
            let at = at % bytes.len();
            bytes[at] ^= 0x20;
            prop_assert!(walk(&bytes, &[cut]).is_err(), "flipped byte {}", at);
            bytes[at] ^= 0x20;
            let end = 1 + at % (bytes.len() - 1);
            let whole = walk(&bytes[..end], &[cut]);
            // Cut at a frame boundary is whole; anywhere else fails.
            if let Ok(n) = whole {
                let mut boundary = HEADER_BYTES;
                for _ in 0..n {
                    let len = u32::from_le_bytes(bytes[boundary..boundary + 4].try_into().unwrap());
                    boundary += frame_len(len as usize);
                }
                prop_assert_eq!(boundary, end);
            }
        }
    }

    #[test]
    fn never_written_space_before_the_point_is_corruption() {
        let (mut bytes, _) = segment(10);
        let (tail, _) = segment(3);
        bytes.extend_from_slice(&[0u8; 512]);
        bytes.extend_from_slice(&tail[HEADER_BYTES..]);
        let err = walk(&bytes, &[4096]).unwrap_err();
        assert!(err.to_string().contains("never-written"), "{err}");
    }

    #[test]
    fn manifest_paths_are_only_those_a_backup_writes() {
        for good in [
            "manifest",
            "meta.redb",
            "shard-0/log/00000001.seg",
            "shard-3/log/2147483648.seg",
        ] {
            assert!(allowed_path(good, 4), "{good}");
        }
        for bad in [
            "../x",
            "/etc/passwd",
            "shard-4/log/00000001.seg",
            "shard-0/log/../../x.seg",
            "shard-00/log/00000001.seg",
            "shard-0/log/1.seg",
            "shard-0/index.redb",
            "shard-0/log/00000001.seg/x",
            "backup.json",
        ] {
            assert!(!allowed_path(bad, 4), "{bad}");
        }
    }
}
