//! Messages: history pages (with `ETag` and `X-Cache`), publishing,
//! read receipts, unread counts.

use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{body, query_u64, room_id, user, ApiResult};
use crate::app::{directory, history_page, readable_room, take_send_token, PageQuery};
use crate::auth::{self, blocking};
use crate::http::{Request, Response};
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

#[derive(Deserialize)]
pub(crate) struct Publish {
    body: String,
    #[serde(default)]
    client_id: String,
}

/// `POST /api/rooms/{id}/messages`: publish (from a backend or a client);
/// a repeated `client_id` answers the original seq.
pub(crate) async fn publish(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    readable_room(shared, uid, id).await?;
    let p: Publish = body(req)?;
    take_send_token(shared, uid).await?;
    let ack = shared.engine.post(id, uid, &p.client_id, &p.body).await?;
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

/// `GET /api/me/unread`: unread counts of the rooms the user is a member
/// of, each from its room's owner (the owner's last seq is current; the
/// copy in `meta.redb` trails it by the index's lag).
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
        out.push(json!({"room": room, "unread": p.await?}));
    }
    Ok(Response::json(200, &json!({ "rooms": out })))
}
