//! Uploads as an application sees them: a file written through an
//! [`Incoming`], then checked and kept ([`Uploads::finish`]): its content
//! type sniffed from its bytes (what the client says is only checked
//! against it), a raster image decoded under limits for its size and a
//! thumbnail, its owner charged within their quota. Every call blocks
//! (file I/O, decoding): from a reactor, run it on the blocking pool.
//!
//! Invariants: a kept upload's file is whole and synced before its row is
//! committed; only the four raster types browsers show in `<img>` are
//! ever named inline ([`INLINE_TYPES`]); anything sniffed as markup or
//! script is kept as `application/octet-stream`; at most
//! [`DECODES_AT_ONCE`] images are decoded at a time, each within
//! `decode_bytes_max`.

use std::collections::HashSet;
use std::io::{BufReader, Cursor};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rookery_storage::meta::Upload;
use rookery_storage::{Incoming, Meta, UploadFiles};

use crate::error::{Error, Result};
use crate::reply::{Pending, Reply};

/// Content types served inline (and given a thumbnail): raster images.
pub const INLINE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// Sniffed types kept as they are (anything else is kept as
/// `application/octet-stream`, and served as a download).
const KEPT_TYPES: [&str; 14] = [
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "application/zip",
    "application/gzip",
    "audio/mpeg",
    "audio/ogg",
    "audio/x-wav",
    "video/mp4",
    "video/webm",
    "video/quicktime",
    "text/plain; charset=utf-8",
];

/// The type of what nothing else matched.
const OPAQUE: &str = "application/octet-stream";

/// Images decoded at once, at most (each may use `decode_bytes_max`).
pub const DECODES_AT_ONCE: usize = 2;

/// What uploads may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// Bytes of one file. Default 25 MiB.
    pub file_bytes_max: u64,
    /// Bytes of all of one user's uploads (files and thumbnails). Default
    /// 1 GiB.
    pub quota_bytes_per_user: u64,
    /// The longer side of a thumbnail, in pixels. Default 320.
    pub thumbnail_edge_px: u32,
    /// Bytes decoding one image may allocate; a larger image gets no
    /// thumbnail (it is still kept and served). Default 128 MiB.
    pub decode_bytes_max: u64,
    /// How long an upload no message ever held is kept (uploaded, never
    /// sent). Default 24 h.
    pub unsent_max_age: Duration,
    /// How often uploads never sent are looked for. Default 1 h.
    pub sweep_interval: Duration,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            file_bytes_max: 25 << 20,
            quota_bytes_per_user: 1 << 30,
            thumbnail_edge_px: 320,
            decode_bytes_max: 128 << 20,
            unsent_max_age: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(3600),
        }
    }
}

/// A handle on the uploads (cheap to clone, usable from any thread).
#[derive(Clone)]
pub struct Uploads {
    inner: Arc<Inner>,
}

struct Inner {
    files: UploadFiles,
    meta: Arc<Meta>,
    limits: UploadLimits,
    /// Images being decoded, and its waiters' condition.
    decoding: (Mutex<usize>, Condvar),
    /// The workers' queue ([`Uploads::finish_queued`]).
    jobs: flume::Sender<Job>,
    /// The ids of the copies being kept, and its waiters' condition: two
    /// copies of one id (two posts at once) keep one, and copies of other
    /// ids do not wait for it.
    copying: (Mutex<HashSet<u128>>, Condvar),
}

/// An upload to finish on a worker, and where its answer goes.
struct Job {
    incoming: Incoming,
    owner: u64,
    name: String,
    declared: Option<String>,
    now_ms: u64,
    /// The upload this is a copy of (another node's), to keep as it.
    copy_of: Option<Upload>,
    reply: Reply<Upload>,
}

/// Uploads never sent removed by one sweep, at most (the next sweep takes
/// more).
pub const SWEEP_BATCH_MAX: usize = 1000;

/// Uploads waiting for a worker, at most; more are `Busy`.
pub const FINISH_QUEUE_LEN_MAX: usize = 64;

impl Uploads {
    /// Opens the uploads of `data_dir` and removes the files a crash left
    /// without a row in `meta` (placed, never recorded).
    pub(crate) fn open(
        data_dir: &std::path::Path,
        meta: Arc<Meta>,
        limits: UploadLimits,
    ) -> Result<Uploads> {
        let files = UploadFiles::open(data_dir)?;
        let kept = meta.upload_ids()?;
        for id in files.placed()? {
            if kept.binary_search(&id).is_err() {
                tracing::info!(upload = %format!("{id:032x}"), "removing an upload never recorded");
                files.remove(id)?;
            }
        }
        let (jobs, queue) = flume::bounded::<Job>(FINISH_QUEUE_LEN_MAX);
        let uploads = Uploads {
            inner: Arc::new(Inner {
                files,
                meta,
                limits,
                decoding: (Mutex::new(0), Condvar::new()),
                jobs,
                copying: (Mutex::new(HashSet::new()), Condvar::new()),
            }),
        };
        // The workers hold a weak handle: they end when the last `Uploads`
        // goes (its queue's sender with it).
        for n in 0..DECODES_AT_ONCE {
            let (queue, weak) = (queue.clone(), Arc::downgrade(&uploads.inner));
            std::thread::Builder::new()
                .name(format!("rookery-uploads-{n}"))
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        let Some(inner) = weak.upgrade() else { break };
                        let uploads = Uploads { inner };
                        let done = uploads.keep(
                            job.incoming,
                            job.owner,
                            &job.name,
                            job.declared.as_deref(),
                            job.now_ms,
                            job.copy_of.as_ref(),
                        );
                        let _ = job.reply.send(done);
                    }
                })
                .map_err(|e| Error::Start(format!("upload worker: {e}")))?;
        }
        Ok(uploads)
    }

    /// [`Uploads::finish`] on one of the uploads' own worker threads
    /// ([`DECODES_AT_ONCE`] of them), so that decoding an image never holds
    /// a thread a caller needs (a shard's one blocking thread); `Busy` when
    /// [`FINISH_QUEUE_LEN_MAX`] wait already.
    pub fn finish_queued(
        &self,
        incoming: Incoming,
        owner: u64,
        name: &str,
        declared: Option<&str>,
        now_ms: u64,
    ) -> Pending<Upload> {
        let (reply, pending) = Pending::channel();
        let job = Job {
            incoming,
            owner,
            name: name.to_string(),
            declared: declared.map(str::to_string),
            now_ms,
            copy_of: None,
            reply,
        };
        self.queue(job, pending)
    }

    /// Keeps what `incoming` holds as a copy of `original`, another
    /// node's upload: with its id, owner, name and time, charged to its
    /// owner here, on a worker as [`Uploads::finish_queued`]. The copy is
    /// kept only if its SHA-256 is the original's (`InvalidInput`
    /// otherwise); `AlreadyExists` when this node has the upload already
    /// (another copy of it was kept first), and this one is dropped.
    pub fn copy_queued(
        &self,
        incoming: Incoming,
        original: Upload,
        now_ms: u64,
    ) -> Pending<Upload> {
        let (reply, pending) = Pending::channel();
        let job = Job {
            incoming,
            owner: original.owner,
            name: original.name.clone(),
            declared: None,
            now_ms,
            copy_of: Some(original),
            reply,
        };
        self.queue(job, pending)
    }

    fn queue(&self, job: Job, pending: Pending<Upload>) -> Pending<Upload> {
        match self.inner.jobs.try_send(job) {
            Ok(()) => pending,
            Err(_) => Pending::ready(Err(Error::Busy(
                "too many uploads being kept: retry".into(),
            ))),
        }
    }

    /// The files (for a backup).
    pub(crate) fn files(&self) -> &UploadFiles {
        &self.inner.files
    }

    /// The limits uploads are held to.
    pub fn limits(&self) -> UploadLimits {
        self.inner.limits
    }

    /// Starts an upload of `len` bytes by `owner`: `TooLarge` past the
    /// file limit or past what is left of their quota (checked again,
    /// exactly, when it is kept).
    pub fn begin(&self, owner: u64, len: u64) -> Result<Incoming> {
        let limits = self.inner.limits;
        if len > limits.file_bytes_max {
            return Err(Error::TooLarge(format!(
                "a file is at most {} bytes",
                limits.file_bytes_max
            )));
        }
        let used = self.inner.meta.upload_usage(owner)?;
        if used.saturating_add(len) > limits.quota_bytes_per_user {
            return Err(quota_error(used, limits.quota_bytes_per_user));
        }
        Ok(self.inner.files.incoming()?)
    }

    /// Keeps what `incoming` holds as a new upload of `owner` named `name`
    /// and returns it. `declared` (the client's `Content-Type`) must agree
    /// with the sniffed type when it names an image, audio or video type
    /// (`InvalidInput` otherwise); `TooLarge` past the quota (the file is
    /// then removed).
    pub fn finish(
        &self,
        incoming: Incoming,
        owner: u64,
        name: &str,
        declared: Option<&str>,
        now_ms: u64,
    ) -> Result<Upload> {
        self.keep(incoming, owner, name, declared, now_ms, None)
    }

    /// [`Uploads::finish`], or with `copy_of` [`Uploads::copy_queued`]'s
    /// keeping of a copy.
    fn keep(
        &self,
        incoming: Incoming,
        owner: u64,
        name: &str,
        declared: Option<&str>,
        now_ms: u64,
        copy_of: Option<&Upload>,
    ) -> Result<Upload> {
        let _copying = copy_of.map(|o| CopyTurn::take(&self.inner.copying, o.id));
        if let Some(original) = copy_of {
            if self.get(original.id)?.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "upload {:032x} is here already",
                    original.id
                )));
            }
        }
        let name = clean_name(name)?;
        let content_type = sniff(incoming.head());
        check_declared(declared, content_type)?;
        let image = if INLINE_TYPES.contains(&content_type) {
            self.thumbnail(incoming.path())
        } else {
            None
        };
        let bytes = incoming.bytes();
        let id: u128 = copy_of.map_or_else(rand::random, |o| o.id);
        let thumb = image.as_ref().map(|i| i.thumb.as_slice());
        let sha256 = self.inner.files.place(incoming, id, thumb)?;
        if copy_of.is_some_and(|o| o.sha256 != sha256 || o.bytes != bytes) {
            let _ = self.inner.files.remove(id);
            return Err(Error::InvalidInput(format!(
                "the copy of upload {id:032x} is not its original"
            )));
        }
        let upload = Upload {
            id,
            owner,
            bytes,
            created_ms: copy_of.map_or(now_ms, |o| o.created_ms),
            pending: 0,
            content_type: content_type.to_string(),
            name,
            sha256,
            width: image.as_ref().map_or(0, |i| i.width),
            height: image.as_ref().map_or(0, |i| i.height),
            thumb_bytes: image.as_ref().map_or(0, |i| i.thumb.len() as u64),
        };
        let limits = self.inner.limits;
        if let Err(e) = self
            .inner
            .meta
            .add_upload(&upload, limits.quota_bytes_per_user)
        {
            let _ = self.inner.files.remove(id);
            return Err(match e {
                rookery_storage::Error::TooMany(_) => {
                    let used = self.inner.meta.upload_usage(owner).unwrap_or(0);
                    quota_error(used, limits.quota_bytes_per_user)
                }
                other => other.into(),
            });
        }
        Ok(upload)
    }

    /// The upload `id`, if there is one.
    pub fn get(&self, id: u128) -> Result<Option<Upload>> {
        Ok(self.inner.meta.upload(id)?)
    }

    /// The messages (room, seq) that hold upload `id`, at most `max`.
    pub fn holders(&self, id: u128, max: usize) -> Result<Vec<(u64, u64)>> {
        Ok(self.inner.meta.upload_holders(id, max)?)
    }

    /// Bytes `owner`'s uploads take.
    pub fn usage(&self, owner: u64) -> Result<u64> {
        Ok(self.inner.meta.upload_usage(owner)?)
    }

    /// Where upload `id`'s file is.
    pub fn file(&self, id: u128) -> PathBuf {
        self.inner.files.path(id)
    }

    /// Where upload `id`'s thumbnail is (when it has one).
    pub fn thumbnail_file(&self, id: u128) -> PathBuf {
        self.inner.files.thumb_path(id)
    }

    /// Removes upload `id`'s files (its row is gone already).
    pub(crate) fn remove_files(&self, id: u128) -> Result<()> {
        Ok(self.inner.files.remove(id)?)
    }

    /// Removes `owner`'s upload `id` that no message holds (row, then
    /// files); the upload as it was. `NotFound` when it is no upload of
    /// theirs, `AlreadyExists` while a message holds it.
    pub fn remove_unsent(&self, owner: u64, id: u128) -> Result<Upload> {
        let up = self.inner.meta.remove_unattached(owner, id)?;
        self.inner.files.remove(id)?;
        Ok(up)
    }

    /// Removes the uploads no message ever held that are older than
    /// `unsent_max_age` at `now_ms` (at most [`SWEEP_BATCH_MAX`] a call:
    /// the engine calls it again while a call takes that many, every
    /// `sweep_interval`); how many went.
    pub fn sweep_unsent(&self, now_ms: u64) -> Result<usize> {
        let age_ms = self.inner.limits.unsent_max_age.as_millis() as u64;
        let gone = self
            .inner
            .meta
            .sweep_unattached(now_ms.saturating_sub(age_ms), SWEEP_BATCH_MAX)?;
        for up in &gone {
            self.inner.files.remove(up.id)?;
        }
        Ok(gone.len())
    }

    /// Removes upload `id` (row, then files) and frees what it charged;
    /// the upload as it was.
    pub fn remove(&self, id: u128) -> Result<Option<Upload>> {
        let removed = self.inner.meta.remove_upload(id)?;
        if removed.is_some() {
            self.inner.files.remove(id)?;
        }
        Ok(removed)
    }

    /// The image at `path` decoded within the limits, with its thumbnail;
    /// `None` when it cannot be (damaged, or too large to decode).
    fn thumbnail(&self, path: &std::path::Path) -> Option<Image> {
        let _turn = DecodeTurn::take(&self.inner.decoding);
        let limits = self.inner.limits;
        let mut bounds = image::Limits::default();
        bounds.max_alloc = Some(limits.decode_bytes_max);
        let file = std::fs::File::open(path).ok()?;
        let mut reader = image::ImageReader::new(BufReader::new(file))
            .with_guessed_format()
            .ok()?;
        reader.limits(bounds);
        let decoded = match reader.decode() {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "an upload sniffed as an image did not decode");
                return None;
            }
        };
        let edge = limits.thumbnail_edge_px;
        let small = decoded.thumbnail(edge, edge);
        let mut thumb = Vec::new();
        small
            .write_to(&mut Cursor::new(&mut thumb), image::ImageFormat::Png)
            .ok()?;
        Some(Image {
            width: decoded.width(),
            height: decoded.height(),
            thumb,
        })
    }
}

/// A decoded image's size and its thumbnail (PNG).
struct Image {
    width: u32,
    height: u32,
    thumb: Vec<u8>,
}

/// The turn to keep a copy of one upload id, held while keeping it.
struct CopyTurn<'a> {
    state: &'a (Mutex<HashSet<u128>>, Condvar),
    id: u128,
}

impl<'a> CopyTurn<'a> {
    fn take(state: &'a (Mutex<HashSet<u128>>, Condvar), id: u128) -> CopyTurn<'a> {
        let (ids, freed) = state;
        let mut ids = ids.lock().unwrap_or_else(|p| p.into_inner());
        while !ids.insert(id) {
            ids = freed.wait(ids).unwrap_or_else(|p| p.into_inner());
        }
        CopyTurn { state, id }
    }
}

impl Drop for CopyTurn<'_> {
    fn drop(&mut self) {
        let (ids, freed) = self.state;
        ids.lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        freed.notify_all();
    }
}

/// One of the [`DECODES_AT_ONCE`] decoding turns, held while decoding.
struct DecodeTurn<'a>(&'a (Mutex<usize>, Condvar));

impl<'a> DecodeTurn<'a> {
    fn take(state: &'a (Mutex<usize>, Condvar)) -> DecodeTurn<'a> {
        let (count, freed) = state;
        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
        while *n >= DECODES_AT_ONCE {
            n = freed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        DecodeTurn(state)
    }
}

impl Drop for DecodeTurn<'_> {
    fn drop(&mut self) {
        let (count, freed) = self.0;
        *count.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        freed.notify_one();
    }
}

fn quota_error(used: u64, quota: u64) -> Error {
    Error::TooLarge(format!(
        "your uploads take {used} of your {quota} bytes: remove some first"
    ))
}

/// The content type of a file beginning with `head`: what its magic bytes
/// say if that is a kept type, text for UTF-8 without controls, else
/// opaque. Markup and scripts (HTML, SVG, XML, shell) are never named.
pub fn sniff(head: &[u8]) -> &'static str {
    if let Some(kind) = infer::get(head) {
        let mime = kind.mime_type();
        return KEPT_TYPES
            .iter()
            .find(|t| **t == mime)
            .copied()
            .unwrap_or(OPAQUE);
    }
    if is_plain_text(head) {
        "text/plain; charset=utf-8"
    } else {
        OPAQUE
    }
}

/// UTF-8 (a character cut at the end of `head` allowed) with no control
/// characters but tab, line feed, carriage return and form feed, and no
/// `<` opening markup (a text file that a browser could take for HTML is
/// kept opaque).
fn is_plain_text(head: &[u8]) -> bool {
    let text = match std::str::from_utf8(head) {
        Ok(t) => t,
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).expect("valid up to here")
        }
        Err(_) => return false,
    };
    let controls = text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0c'));
    let markup = text
        .trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
        .starts_with('<');
    !head.is_empty() && !controls && !markup
}

/// A client's `Content-Type` must not claim a media type the bytes are
/// not: an image, audio or video type must match the sniffed one.
fn check_declared(declared: Option<&str>, sniffed: &str) -> Result<()> {
    let Some(declared) = declared else {
        return Ok(());
    };
    let essence = declared
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let media = ["image/", "audio/", "video/"]
        .iter()
        .any(|p| essence.starts_with(p));
    let same = sniffed.split(';').next() == Some(essence.as_str());
    if media && !same {
        return Err(Error::InvalidInput(format!(
            "the file is not {essence}: its bytes are {sniffed}"
        )));
    }
    Ok(())
}

/// A file name as kept: its last path segment, without control
/// characters or direction and invisible marks (a name must read as what
/// it is: no `gnp.exe` shown as `exe.png`), at most [`rookery_storage::meta::UPLOAD_NAME_BYTES_MAX`]
/// bytes (cut at a character boundary).
fn clean_name(name: &str) -> Result<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = last
        .chars()
        .filter(|c| !c.is_control() && !is_invisible(*c))
        .collect();
    let clean = clean.trim();
    let mut end = clean
        .len()
        .min(rookery_storage::meta::UPLOAD_NAME_BYTES_MAX);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    Ok(clean[..end].to_string())
}

/// Direction marks, embeddings, overrides and isolates, zero-width
/// characters and the byte-order mark.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}' | '\u{feff}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_names_what_the_bytes_are_and_never_markup() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(sniff(png), "image/png");
        assert_eq!(sniff(b"\xff\xd8\xff\xe0\0\x10JFIF"), "image/jpeg");
        assert_eq!(sniff(b"GIF89a...."), "image/gif");
        assert_eq!(sniff(b"%PDF-1.7\n"), "application/pdf");
        assert_eq!(
            sniff("hello, wörld\n".as_bytes()),
            "text/plain; charset=utf-8"
        );
        for markup in [
            &b"<html><script>alert(1)</script>"[..],
            b"  <!DOCTYPE html>",
            "\u{feff}<html>".as_bytes(),
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script/></svg>",
            b"<?xml version=\"1.0\"?>",
            b"#!/bin/sh\nrm -rf /",
            b"\x7fELF\x02\x01\x01",
            b"MZ\x90\0",
            b"bin\0ary",
            b"",
        ] {
            assert_eq!(
                sniff(markup),
                OPAQUE,
                "{:?}",
                String::from_utf8_lossy(markup)
            );
        }
        // A multi-byte character cut by the sniff window is still text.
        let mut cut = "é".repeat(10).into_bytes();
        cut.pop();
        assert_eq!(sniff(&cut), "text/plain; charset=utf-8");
    }

    #[test]
    fn a_declared_media_type_must_match_the_bytes() {
        assert!(check_declared(None, "image/png").is_ok());
        assert!(check_declared(Some("image/png"), "image/png").is_ok());
        assert!(check_declared(Some("IMAGE/PNG; x=y"), "image/png").is_ok());
        assert!(check_declared(Some("application/octet-stream"), "image/png").is_ok());
        assert!(check_declared(Some("text/plain"), OPAQUE).is_ok());
        for (declared, sniffed) in [
            ("image/png", OPAQUE),
            ("image/jpeg", "image/png"),
            ("video/mp4", "text/plain; charset=utf-8"),
        ] {
            assert!(
                matches!(
                    check_declared(Some(declared), sniffed),
                    Err(Error::InvalidInput(_))
                ),
                "{declared} vs {sniffed}"
            );
        }
    }

    #[test]
    fn names_keep_their_last_segment_without_controls_within_the_bound() {
        assert_eq!(clean_name("cat.png").unwrap(), "cat.png");
        assert_eq!(clean_name("../../etc/passwd").unwrap(), "passwd");
        assert_eq!(clean_name("C:\\x\\y.txt").unwrap(), "y.txt");
        assert_eq!(
            clean_name("a\u{0}b\nc\u{202e}gnp.exe").unwrap(),
            "abcgnp.exe"
        );
        let long = "é".repeat(200);
        let kept = clean_name(&long).unwrap();
        assert!(kept.len() <= rookery_storage::meta::UPLOAD_NAME_BYTES_MAX);
        assert!(kept.chars().all(|c| c == 'é'));
    }
}
