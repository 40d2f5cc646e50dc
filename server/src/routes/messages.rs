//! Messages: history pages (with `ETag` and `X-Cache`), publishing,
//! read receipts, unread counts.

use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{body, list_query, next_json, query_u64, room_id, user, ApiError, ApiResult};
use crate::app::{directory, history_page, readable_room, take_send_token, PageQuery};
use crate::auth::{self, blocking};
use crate::http::{Request, Response};
use crate::protocol::ThreadPage;
use crate::shared::Shared;

/// `GET /api/rooms/{id}/messages?before=&after=&limit=`: a history page
/// with an `ETag` (and 304 when `If-None-Match` has it) and `X-Cache: HIT`
/// when the page came from memory.
pub(crate) async fn history(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    readable_room(shared, uid, id).await?;
    let q = PageQuery {
        before: query_u64(req, "before")?,
        after: query_u64(req, "after")?,
        limit: query_u64(req, "limit")?,
        // A page for another node travels back over NATS.
        bytes_max: req.forwarded.then(crate::cluster::answer_bytes_max),
        reader: Some(uid),
    };
    let (body, cached) = history_page(shared, id, q).await?;
    let mut resp = Response::json(200, &body);
    let digest = Sha256::digest(&resp.body);
    let etag = format!("\"{}\"", auth::hex(&digest[..16]));
    let cache = if cached { "HIT" } else { "MISS" };
    if req.none_match(&etag) {
        resp = Response {
            status: 304,
            ..Response::default()
        };
    }
    resp.headers.push(("etag".into(), etag));
    resp.headers.push(("x-cache".into(), cache.into()));
    Ok(resp)
}

/// `GET /api/rooms/{id}/messages/{seq}/thread?after=&limit=`: the thread
/// message `seq` is in (the one it starts or the one it replies in): its
/// first message, then replies after `after`, oldest first.
pub(crate) async fn thread(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    let seq = seq_in_path(req)?;
    readable_room(shared, uid, id).await?;
    let max = shared.cfg.history_page_len_max;
    let limit = query_u64(req, "limit")?.unwrap_or(50);
    if limit == 0 || limit > max as u64 {
        return Err(ApiError::BadRequest(format!("limit must be 1..={max}")));
    }
    let after = query_u64(req, "after")?.unwrap_or(0);
    let page = shared
        .engine
        .thread(id, seq, after, limit as usize, Some(uid))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no message {seq} in room {id}")))?;
    let mut page = ThreadPage { room: id, page };
    if req.forwarded {
        // A page for another node travels back over NATS.
        page.fit(crate::cluster::answer_bytes_max());
    }
    Ok(Response::json(200, &page))
}

/// The `{seq}` of `/api/rooms/{id}/messages/{seq}/...`.
fn seq_in_path(req: &Request) -> Result<u64, ApiError> {
    let raw = req.path.trim_matches('/').split('/').nth(4).unwrap_or("");
    raw.parse::<u64>()
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("seq {raw:?} is not a number >= 1")))
}

/// `PUT` (`on`) or `DELETE` `/api/rooms/{id}/messages/{seq}/reactions/{emoji}`
/// (the emoji percent-encoded): the user's reaction on the message;
/// `changed` is false when it already was so. Members only; spends a send
/// token (each change is stored).
pub(crate) async fn react(req: &Request, shared: &Shared, raw: &str, on: bool) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    let seq = seq_in_path(req)?;
    let coded = req.path.trim_matches('/').split('/').nth(6).unwrap_or("");
    let emoji = percent_encoding::percent_decode_str(coded)
        .decode_utf8()
        .map_err(|_| ApiError::BadRequest("the reaction is not UTF-8".into()))?;
    readable_room(shared, uid, id).await?;
    take_send_token(shared, uid).await?;
    let changed = shared.engine.react(id, seq, uid, &emoji, on).await?;
    // As stored and sent: the canonical spelling (it was accepted).
    let emoji = rookery_engine::emoji::canonical(&emoji).unwrap_or_default();
    Ok(Response::json(
        200,
        &json!({"room": id, "seq": seq, "emoji": emoji, "on": on, "changed": changed}),
    ))
}

#[derive(Deserialize)]
pub(crate) struct Publish {
    /// May be absent (empty) for a message that carries files.
    #[serde(default)]
    body: String,
    #[serde(default)]
    client_id: String,
    /// The seq the message replies to.
    #[serde(default)]
    reply_to: Option<u64>,
    /// The uploads it carries (ids).
    #[serde(default)]
    files: Vec<String>,
}

/// `POST /api/rooms/{id}/messages`: publish (from a backend or a client);
/// a repeated `client_id` answers the original seq.
pub(crate) async fn publish(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    readable_room(shared, uid, id).await?;
    let p: Publish = body(req)?;
    let files = crate::app::upload_ids(&p.files)?;
    take_send_token(shared, uid).await?;
    let post = || async {
        let files = files.clone();
        let ack = shared
            .engine
            .post_with(id, uid, &p.client_id, &p.body, p.reply_to, files);
        Ok(ack.await?)
    };
    let ack = crate::cluster::uploads::carrying(shared, uid, id, &files, post).await?;
    Ok(Response::json(
        if ack.duplicate { 200 } else { 201 },
        &json!({"room": id, "seq": ack.seq, "ts": ack.ts_ms, "duplicate": ack.duplicate}),
    ))
}

#[derive(Deserialize)]
pub(crate) struct ReadMark {
    seq: u64,
}

/// `POST /api/rooms/{id}/read`: the user has read up to `seq`.
pub(crate) async fn mark_read(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    readable_room(shared, uid, id).await?;
    let mark: ReadMark = body(req)?;
    let stored = shared.engine.mark_read(id, uid, mark.seq).await?;
    Ok(Response::json(200, &json!({"room": id, "seq": stored})))
}

/// `GET /api/rooms/{id}/receipts?after=&limit=`: the room's members with
/// how far each has read (`seq` 0: nothing yet), ordered by user id.
pub(crate) async fn receipts(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    let (after, len) = list_query(req, shared)?;
    readable_room(shared, uid, id).await?;
    let page = shared.engine.receipts(id, after, len).await?;
    let receipts: Vec<_> = page
        .items
        .iter()
        .map(|&(user, seq)| json!({"user": user, "seq": seq}))
        .collect();
    Ok(Response::json(
        200,
        &json!({"room": id, "receipts": receipts, "next": next_json(page.next)}),
    ))
}

/// `GET /api/me/unread`: unread counts of the rooms the user is a member
/// of, each from its room's owner (the owner's last seq is current; the
/// copy in `meta.redb` trails it by the index's lag), with the user's read
/// marker and that last seq (a client opens a room at `read + 1`).
pub(crate) async fn unread(req: &Request, shared: &Shared) -> ApiResult {
    let uid = user(req, shared).await?;
    let m = directory(shared);
    let rooms = blocking(move || m.rooms_of(uid)).await?;
    let pending: Vec<_> = rooms
        .iter()
        .map(|room| shared.engine.unread(*room, uid))
        .collect();
    let mut out = Vec::with_capacity(rooms.len());
    for (room, p) in rooms.into_iter().zip(pending) {
        let s = p.await?;
        out.push(json!({
            "room": room,
            "unread": s.unread(),
            "read": s.read,
            "last_seq": s.last_seq,
        }));
    }
    Ok(Response::json(200, &json!({ "rooms": out })))
}
