//! Uploads: `POST /api/uploads` streams a file to disk as it arrives (the
//! connection hands over its socket once the head is read), and
//! `GET /api/uploads/{id}` (and `/thumbnail`) sends one from disk, with an
//! `ETag`, `Range` and long cache headers, never as something a browser
//! would run. In a cluster an upload this node lacks is read from the
//! node that has it, and this node answers other nodes' asks for chunks
//! of its own (`cluster::uploads`).
//!
//! Bounds: a file's size is known (`Content-Length`) and checked with the
//! uploader's quota before any byte is read; a shard receives at most
//! `--uploads-in-flight-max` at once ([`UPLOADS_PER_USER_MAX`] of one
//! user), each holding at most [`WRITE_CHUNK_BYTES`] before it goes to
//! disk; after the request timeout's grace an upload must have come at
//! [`MIN_RATE_BYTES_PER_S`] on average, and a download must have been
//! taken at that rate, or the connection is cut; a shard sends at most
//! [`FILE_STREAMS_MAX`] files at once, [`READ_CHUNK_BYTES`] at a time.
//! Keeping a file (hashing, decoding an image) runs on the uploads' own
//! workers, never on a shard's blocking thread.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{query_text, route_name, user, ApiResult};
use crate::app::{take_send_token, ApiError};
use crate::auth::{self, blocking};
use crate::cluster::uploads as cluster;
use crate::http::{FileBody, FileSource, Request, Response};
use crate::net::{read_until, write_within, Read, Socket};
use crate::shared::Shared;

/// Bytes of an upload held before they are written to its file.
pub const WRITE_CHUNK_BYTES: usize = 1 << 20;
/// The slowest an upload may arrive, or a download be taken, on average
/// after the grace of one request timeout, before it is cut off.
pub const MIN_RATE_BYTES_PER_S: u64 = 16 << 10;
/// Uploads one user may have in flight on one shard.
pub const UPLOADS_PER_USER_MAX: u32 = 2;
/// Files a shard sends at once; more are 503.
pub const FILE_STREAMS_MAX: usize = 256;
/// Bytes of a file read and written at a time.
pub const READ_CHUNK_BYTES: usize = 64 << 10;
/// A year: uploads never change (a new file is a new id).
const CACHE_CONTROL: &str = "private, max-age=31536000, immutable";

/// Whether `req`'s body is streamed to an upload (not read whole first).
pub fn streams(req: &Request) -> bool {
    req.method == "POST" && route_name(req) == "/api/uploads"
}

/// What receiving an upload came to.
pub struct Received {
    pub resp: Response,
    /// The whole body was read: the connection may serve its next
    /// request (otherwise it is answered and closed).
    pub consumed: bool,
}

/// `POST /api/uploads?name=`: the body (of `len` bytes, some of them
/// already in `buf`) is the file. `None` when the connection is gone or
/// the shard is stopping (nothing can be answered); a body too slow or
/// stalled is answered 408.
pub async fn receive(
    conn: &mut Socket,
    buf: &mut Vec<u8>,
    req: &Request,
    len: u64,
    shared: &Shared,
) -> Option<Received> {
    let refused = |e: ApiError| {
        Some(Received {
            resp: e.response(),
            consumed: false,
        })
    };
    if shared.uploads_in_flight.get() >= shared.cfg.uploads_in_flight_max {
        let mut resp = ApiError::Unavailable("too many uploads at once: retry".into()).response();
        resp.headers.push(("retry-after".into(), "1".into()));
        return Some(Received {
            resp,
            consumed: false,
        });
    }
    shared
        .uploads_in_flight
        .set(shared.uploads_in_flight.get() + 1);
    let _slot = Slot(&shared.uploads_in_flight);
    let uid = match user(req, shared).await {
        Ok(u) => u,
        Err(e) => return refused(e),
    };
    if len == 0 {
        return refused(ApiError::BadRequest("the file is empty".into()));
    }
    let mine = shared
        .uploads_by_user
        .borrow()
        .get(&uid)
        .copied()
        .unwrap_or(0);
    if mine >= UPLOADS_PER_USER_MAX {
        let mut resp = ApiError::Unavailable(format!(
            "at most {UPLOADS_PER_USER_MAX} of your uploads at once: retry"
        ))
        .response();
        resp.headers.push(("retry-after".into(), "1".into()));
        return Some(Received {
            resp,
            consumed: false,
        });
    }
    let _mine = UserSlot::take(shared, uid);
    if len > shared.cfg.upload_bytes_max {
        return refused(ApiError::TooLarge(format!(
            "a file is at most {} bytes",
            shared.cfg.upload_bytes_max
        )));
    }
    if let Err(e) = take_send_token(shared, uid).await {
        return refused(e);
    }
    let uploads = shared.engine.uploads();
    let begun = {
        let uploads = uploads.clone();
        blocking(move || uploads.begin(uid, len)).await
    };
    let mut incoming = match begun {
        Ok(i) => i,
        Err(rookery_engine::Error::TooLarge(m)) => return refused(ApiError::QuotaExceeded(m)),
        Err(e) => return refused(e.into()),
    };
    if req
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        && !write_within(shared, conn, b"HTTP/1.1 100 Continue\r\n\r\n").await
    {
        return None;
    }
    // The body, in chunks of at most WRITE_CHUNK_BYTES, each written off
    // the reactor; what follows it (a pipelined request) stays in `buf`.
    let started = Instant::now();
    let grace = shared.cfg.request_timeout();
    let mut pending: Vec<u8> = Vec::new();
    let mut received: u64 = 0;
    loop {
        let take = (len - received).min(buf.len() as u64) as usize;
        pending.extend(buf.drain(..take));
        received += take as u64;
        if pending.len() >= WRITE_CHUNK_BYTES || (received == len && !pending.is_empty()) {
            let chunk = std::mem::take(&mut pending);
            let (back, wrote) = blocking(move || {
                let r = incoming.write(&chunk);
                (incoming, r)
            })
            .await;
            incoming = back;
            if let Err(e) = wrote {
                return refused(ApiError::Internal(format!("writing an upload: {e}")));
            }
        }
        if received == len {
            break;
        }
        let slow = too_slow(started, grace, received);
        let deadline = Instant::now() + grace;
        let read = async { Some(read_until(conn, buf, deadline).await) };
        let stop = async {
            shared.stopped().await;
            None
        };
        let outcome = if slow {
            Some(Read::TimedOut)
        } else {
            futures_lite::future::or(read, stop).await
        };
        match outcome {
            None | Some(Read::Closed) => return None,
            Some(Read::Bytes(_)) => {}
            Some(Read::TimedOut) => {
                let resp = Response::error(408, "request_timeout", "upload not completed in time");
                return Some(Received {
                    resp,
                    consumed: false,
                });
            }
        }
    }
    let name = query_text(req, "name").unwrap_or_default();
    let declared = req.header("content-type").map(str::to_string);
    let now = crate::auth::now_ms();
    let finished = uploads
        .finish_queued(incoming, uid, &name, declared.as_deref(), now)
        .await;
    let resp = match finished {
        Ok(up) => Response::json(201, &describe(&up)),
        Err(rookery_engine::Error::TooLarge(m)) => ApiError::QuotaExceeded(m).response(),
        Err(rookery_engine::Error::InvalidInput(m)) => ApiError::UnsupportedMediaType(m).response(),
        Err(e) => ApiError::from(e).response(),
    };
    Some(Received {
        resp,
        consumed: true,
    })
}

/// Whether `received` bytes are fewer than [`MIN_RATE_BYTES_PER_S`] asks
/// of what has come since `started`, once `grace` has passed.
fn too_slow(started: Instant, grace: Duration, received: u64) -> bool {
    let late = started.elapsed().saturating_sub(grace);
    received < (late.as_millis() as u64).saturating_mul(MIN_RATE_BYTES_PER_S) / 1000
}

/// One of a user's uploads in flight on this shard, given back when
/// dropped.
struct UserSlot<'a> {
    shared: &'a Shared,
    user: u64,
}

impl<'a> UserSlot<'a> {
    fn take(shared: &'a Shared, user: u64) -> UserSlot<'a> {
        *shared.uploads_by_user.borrow_mut().entry(user).or_default() += 1;
        UserSlot { shared, user }
    }
}

impl Drop for UserSlot<'_> {
    fn drop(&mut self) {
        let mut by_user = self.shared.uploads_by_user.borrow_mut();
        if let Some(n) = by_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                by_user.remove(&self.user);
            }
        }
    }
}

/// Gives back a place under a per-shard bound when dropped.
pub(crate) struct Slot<'a>(pub(crate) &'a std::cell::Cell<usize>);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// An upload as the API shows it.
fn describe(up: &rookery_engine::Upload) -> serde_json::Value {
    let id = format!("{:032x}", up.id);
    let mut v = json!({
        "id": id,
        "url": format!("/api/uploads/{id}"),
        "bytes": up.bytes,
        "content_type": up.content_type,
        "name": up.name,
        "sha256": auth::hex(&up.sha256),
        "created": up.created_ms,
    });
    if up.width > 0 {
        v["width"] = up.width.into();
        v["height"] = up.height.into();
    }
    if up.thumb_bytes > 0 {
        v["thumbnail"] = format!("/api/uploads/{id}/thumbnail").into();
    }
    v
}

/// The upload id the path's third segment names (32 hex digits).
fn upload_id(req: &Request) -> Result<u128, ApiError> {
    let raw = req.path.trim_matches('/').split('/').nth(2).unwrap_or("");
    (raw.len() == 32)
        .then(|| u128::from_str_radix(raw, 16).ok())
        .flatten()
        .ok_or_else(|| ApiError::NotFound(format!("no upload {raw:?}")))
}

/// Upload `id` and where its file (its thumbnail when `thumb`) is read
/// from: this node's disk, or in a cluster the node that has it.
async fn locate(
    shared: &Shared,
    id: u128,
    thumb: bool,
) -> Result<(rookery_engine::Upload, FileSource), ApiError> {
    let uploads = shared.engine.uploads();
    let here = {
        let uploads = uploads.clone();
        blocking(move || uploads.get(id)).await?
    };
    if let Some(up) = here {
        let path = match thumb {
            true => uploads.thumbnail_file(id),
            false => uploads.file(id),
        };
        return Ok((up, FileSource::Disk(path)));
    }
    match cluster::find(shared, id).await? {
        Some((node, up)) => Ok((up, FileSource::Node { node, id, thumb })),
        None => Err(ApiError::NotFound(format!("no upload {id:032x}"))),
    }
}

/// A node's ask for `len` bytes from `at` of upload `id` (its thumbnail
/// when `thumb`): 200 with at most `cluster::CHUNK_BYTES` of them and the
/// upload's row in a header; 404 when this node does not have it.
async fn answer_chunk(shared: &Shared, id: u128, thumb: bool, at: u64, len: u64) -> ApiResult {
    if shared.file_streams.get() >= FILE_STREAMS_MAX {
        return Err(ApiError::Unavailable(
            "too many files being sent: retry".into(),
        ));
    }
    shared.file_streams.set(shared.file_streams.get() + 1);
    let _slot = Slot(&shared.file_streams);
    let uploads = shared.engine.uploads();
    let up = {
        let uploads = uploads.clone();
        blocking(move || uploads.get(id)).await?
    }
    .ok_or_else(|| ApiError::NotFound(format!("no upload {id:032x} here")))?;
    let (path, size) = match thumb {
        true => (uploads.thumbnail_file(id), up.thumb_bytes),
        false => (uploads.file(id), up.bytes),
    };
    if at > size || (thumb && size == 0) {
        return Err(ApiError::NotFound(format!(
            "no bytes at {at} of upload {id:032x}"
        )));
    }
    let len = len.min(cluster::CHUNK_BYTES).min(size - at) as usize;
    let row = up.clone();
    let (body, held) = blocking(move || -> std::io::Result<(Vec<u8>, bool)> {
        use std::os::unix::fs::FileExt;
        let mut chunk = vec![0; len];
        std::fs::File::open(path)?.read_exact_at(&mut chunk, at)?;
        let held = held(&uploads, &row).map_err(std::io::Error::other)?;
        Ok((chunk, held))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("reading upload {id:032x}: {e}")))?;
    Ok(Response {
        status: 200,
        headers: vec![cluster::row_header(&up, held)],
        body,
        ..Response::default()
    })
}

/// Whether upload `up` is held here: by a message, an avatar, or a post
/// under way.
pub(crate) fn held(
    uploads: &rookery_engine::Uploads,
    up: &rookery_engine::Upload,
) -> rookery_engine::Result<bool> {
    Ok(up.pending > 0 || !uploads.holders(up.id, 1)?.is_empty())
}

/// `DELETE /api/uploads/{id}`: removes an upload of the caller's that no
/// message holds (sent by mistake to the server, never to a room); 404
/// for one that is not theirs, 409 while a message holds it (delete the
/// message: its last one frees the upload). In a cluster, every node's
/// copy (`cluster::remove_everywhere`).
pub(crate) async fn remove(req: &Request, shared: &Shared) -> ApiResult {
    if let Some(owner) = cluster::asked_release(req) {
        let (id, uploads) = (upload_id(req)?, shared.engine.uploads());
        blocking(move || uploads.remove_unsent(owner, id)).await?;
        return Ok(Response::json(200, &json!({"released": true})));
    }
    let (uid, id) = (user(req, shared).await?, upload_id(req)?);
    if shared.cluster.is_some() && !req.forwarded {
        return cluster::remove_everywhere(req, shared, uid, id).await;
    }
    let uploads = shared.engine.uploads();
    let up = blocking(move || uploads.remove_unsent(uid, id)).await?;
    Ok(Response::json(
        200,
        &json!({"id": format!("{:032x}", up.id), "deleted": true}),
    ))
}

/// `GET /api/uploads/{id}`: the file (signed-in users only: who knows an
/// id may read it), or part of it (`Range`); 304 for a matching
/// `If-None-Match`.
pub(crate) async fn get(req: &Request, shared: &Shared) -> ApiResult {
    if let Some((at, len)) = cluster::asked_chunk(req) {
        return answer_chunk(shared, upload_id(req)?, false, at, len).await;
    }
    user(req, shared).await?;
    let (up, source) = locate(shared, upload_id(req)?, false).await?;
    let inline = rookery_engine::INLINE_TYPES.contains(&up.content_type.as_str());
    let etag = format!("\"{}\"", auth::hex(&up.sha256));
    serve_file(
        req,
        shared,
        source,
        up.bytes,
        &up.content_type,
        &etag,
        disposition(&up, inline),
    )
}

/// `GET /api/uploads/{id}/thumbnail`: an image's thumbnail (PNG); 404 for
/// an upload without one.
pub(crate) async fn thumbnail(req: &Request, shared: &Shared) -> ApiResult {
    if let Some((at, len)) = cluster::asked_chunk(req) {
        return answer_chunk(shared, upload_id(req)?, true, at, len).await;
    }
    user(req, shared).await?;
    let (up, source) = locate(shared, upload_id(req)?, true).await?;
    if up.thumb_bytes == 0 {
        return Err(ApiError::NotFound("this upload has no thumbnail".into()));
    }
    serve_thumbnail(req, shared, &up, source)
}

/// `GET /api/users/{id}/avatar`: the thumbnail of a user's avatar; 404
/// when they have none.
pub(crate) async fn avatar(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    user(req, shared).await?;
    let uid = super::users::user_id(raw)?;
    let directory = shared.engine.directory();
    let none = || ApiError::NotFound(format!("user {uid} has no avatar"));
    let id = blocking(move || directory.profile(uid))
        .await?
        .and_then(|p| p.avatar)
        .ok_or_else(none)?;
    let (up, source) = locate(shared, id, true).await.map_err(|e| match e {
        ApiError::NotFound(_) => none(),
        other => other,
    })?;
    if up.thumb_bytes == 0 {
        return Err(none());
    }
    serve_thumbnail(req, shared, &up, source)
}

/// Upload `up`'s thumbnail (it has one), as a PNG served inline.
fn serve_thumbnail(
    req: &Request,
    shared: &Shared,
    up: &rookery_engine::Upload,
    source: FileSource,
) -> ApiResult {
    let etag = format!("\"t{}\"", auth::hex(&up.sha256));
    serve_file(
        req,
        shared,
        source,
        up.thumb_bytes,
        "image/png",
        &etag,
        "inline".into(),
    )
}

/// `Content-Disposition`: inline for a raster image, else a download;
/// with the file name (RFC 6266 / 8187: percent-encoded UTF-8).
fn disposition(up: &rookery_engine::Upload, inline: bool) -> String {
    let kind = if inline { "inline" } else { "attachment" };
    if up.name.is_empty() {
        return kind.into();
    }
    let coded = percent_encoding::utf8_percent_encode(&up.name, percent_encoding::NON_ALPHANUMERIC);
    format!("{kind}; filename*=UTF-8''{coded}")
}

/// A file response: headers that keep a browser from running or sniffing
/// it, its validator and cache lifetime, and the whole file or one range.
fn serve_file(
    req: &Request,
    shared: &Shared,
    source: FileSource,
    len: u64,
    content_type: &str,
    etag: &str,
    disposition: String,
) -> ApiResult {
    let mut headers = vec![
        ("etag".to_string(), etag.to_string()),
        ("cache-control".into(), CACHE_CONTROL.into()),
        ("x-content-type-options".into(), "nosniff".into()),
        (
            "content-security-policy".into(),
            "sandbox; default-src 'none'".into(),
        ),
        ("accept-ranges".into(), "bytes".into()),
    ];
    if req.none_match(etag) {
        return Ok(Response {
            status: 304,
            headers,
            ..Response::default()
        });
    }
    if req.method != "HEAD" && shared.file_streams.get() >= FILE_STREAMS_MAX {
        let mut resp = ApiError::Unavailable("too many files being sent: retry".into()).response();
        resp.headers.push(("retry-after".into(), "1".into()));
        return Ok(resp);
    }
    headers.push(("content-type".into(), content_type.to_string()));
    headers.push(("content-disposition".into(), disposition));
    // A Range is honoured when it is one range and, with If-Range, the
    // validator still matches; otherwise the whole file is sent.
    let ranged = req
        .header("range")
        .filter(|_| req.method != "HEAD")
        .filter(|_| req.header("if-range").is_none_or(|v| v == etag))
        .map(|r| parse_range(r, len));
    let (status, offset, part) = match ranged {
        Some(RangeAsk::Part(start, end)) => {
            headers.push(("content-range".into(), format!("bytes {start}-{end}/{len}")));
            (206, start, end - start + 1)
        }
        Some(RangeAsk::Unsatisfiable) => {
            let mut resp = ApiError::Remote {
                status: 416,
                code: "range_not_satisfiable",
                message: format!("the file has {len} bytes"),
            }
            .response();
            resp.headers
                .push(("content-range".into(), format!("bytes */{len}")));
            return Ok(resp);
        }
        Some(RangeAsk::Whole) | None => (200, 0, len),
    };
    Ok(Response {
        status,
        headers,
        file: Some(Box::new(FileBody {
            source,
            offset,
            len: part,
        })),
        ..Response::default()
    })
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeAsk {
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// A range wholly past the end (416).
    Unsatisfiable,
    /// Not one byte range this server reads (several, another unit, bad
    /// syntax): the whole file, as RFC 9110 §14.2 allows.
    Whole,
}

fn parse_range(header: &str, len: u64) -> RangeAsk {
    let Some((unit, spec)) = header.trim().split_once('=') else {
        return RangeAsk::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeAsk::Whole;
    }
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            Some(0) => RangeAsk::Unsatisfiable,
            Some(_) if len == 0 => RangeAsk::Unsatisfiable,
            Some(n) => RangeAsk::Part(len - n.min(len), len - 1),
            None => RangeAsk::Whole,
        },
        (start, end) => {
            let Some(start) = num(start) else {
                return RangeAsk::Whole;
            };
            let end = if end.is_empty() {
                Some(u64::MAX)
            } else {
                num(end)
            };
            match end {
                None => RangeAsk::Whole,
                Some(end) if end < start => RangeAsk::Whole,
                Some(_) if start >= len => RangeAsk::Unsatisfiable,
                Some(end) => RangeAsk::Part(start, end.min(len - 1)),
            }
        }
    }
}

/// Sends `file` on `conn`: from this node's disk, or from the node that
/// has it; false when the connection or the file failed, or the client
/// takes it slower than [`MIN_RATE_BYTES_PER_S`] after the grace of a
/// request timeout (the connection is then closed).
pub async fn send_file(shared: &Shared, conn: &mut Socket, file: &FileBody) -> bool {
    shared.file_streams.set(shared.file_streams.get() + 1);
    let _slot = Slot(&shared.file_streams);
    let (started, grace) = (Instant::now(), shared.cfg.request_timeout());
    match &file.source {
        FileSource::Disk(path) => send_from_disk(shared, conn, path, file, started, grace).await,
        &FileSource::Node { node, id, thumb } => {
            let mut from = node;
            let (mut at, end) = (file.offset, file.offset + file.len);
            while at < end {
                if too_slow(started, grace, at - file.offset) {
                    return false;
                }
                let want = (end - at).min(cluster::CHUNK_BYTES);
                let chunk = match cluster::chunk_from(shared, &mut from, id, thumb, at, want).await
                {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        tracing::warn!(error = ?e, "an upload could not be read from its node");
                        return false;
                    }
                };
                if !write_within(shared, conn, &chunk).await {
                    return false;
                }
                at += want;
            }
            true
        }
    }
}

/// The part `file` names of the file at `path`, in chunks read off the
/// reactor (the file opened once: removed meanwhile, it is still sent
/// whole).
async fn send_from_disk(
    shared: &Shared,
    conn: &mut Socket,
    path: &std::path::Path,
    file: &FileBody,
    started: Instant,
    grace: Duration,
) -> bool {
    let owned = path.to_path_buf();
    let Ok(opened) = blocking(move || std::fs::File::open(owned)).await else {
        tracing::warn!(path = %path.display(), "an upload's file could not be opened");
        return false;
    };
    let opened = std::sync::Arc::new(opened);
    let mut at = file.offset;
    let end = file.offset + file.len;
    while at < end {
        if too_slow(started, grace, at - file.offset) {
            return false;
        }
        let want = (end - at).min(READ_CHUNK_BYTES as u64) as usize;
        let f = opened.clone();
        let chunk = blocking(move || -> std::io::Result<Vec<u8>> {
            use std::os::unix::fs::FileExt;
            let mut chunk = vec![0; want];
            f.read_exact_at(&mut chunk, at)?;
            Ok(chunk)
        })
        .await;
        let Ok(chunk) = chunk else {
            tracing::warn!(path = %path.display(), "an upload's file could not be read");
            return false;
        };
        if !write_within(shared, conn, &chunk).await {
            return false;
        }
        at += want as u64;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_one_byte_range_or_the_whole_file() {
        use RangeAsk::*;
        let cases = [
            ("bytes=0-9", 100, Part(0, 9)),
            ("Bytes=0-9", 100, Part(0, 9)),
            ("bytes=90-", 100, Part(90, 99)),
            ("bytes=90-500", 100, Part(90, 99)),
            ("bytes=-10", 100, Part(90, 99)),
            ("bytes=-500", 100, Part(0, 99)),
            ("bytes=99-99", 100, Part(99, 99)),
            ("bytes=100-", 100, Unsatisfiable),
            ("bytes=-0", 100, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=0-1,5-6", 100, Whole),
            ("bytes=9-3", 100, Whole),
            ("bytes=a-3", 100, Whole),
            ("bytes=+1-3", 100, Whole),
            ("items=0-1", 100, Whole),
            ("bytes=", 100, Whole),
            ("bytes=18446744073709551616-", 100, Whole),
        ];
        for (header, len, want) in cases {
            assert_eq!(parse_range(header, len), want, "{header} of {len}");
        }
    }
}
