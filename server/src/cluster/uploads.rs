//! Uploads in a cluster. A node keeps the uploads it received; an upload
//! moves to the owner of a room whose message carries it; any node
//! serves any upload.
//!
//! - **Finding.** An upload id is 128 random bits: no node can be computed
//!   from it. A node that lacks one asks every other node at once for its
//!   row (a chunk of no bytes) and takes the first that has it.
//! - **Serving.** A node serves an upload it lacks by reading it from the
//!   node that has it, [`CHUNK_BYTES`] at a time as the client takes them
//!   (`routes::uploads::send_file`): nothing of it is stored on the way.
//! - **Carrying.** Before a post (or an avatar) is stored, the node that
//!   stores it copies each upload it carries that it lacks ([`bring`]):
//!   read whole from a node that has it, checked against the original's
//!   SHA-256 and size, charged to its owner there. Then the node it was
//!   read from lets its copy go unless something holds it there: an
//!   upload sent to one room lives on that room's owner only, and an
//!   upload sent to rooms of several nodes has a copy on each. Holds, the
//!   freeing by the last delete, retention and backups then work on each
//!   node for its own copy, as on one node.
//! - **Removing.** A delete asks every node (`remove_everywhere`): 409
//!   while any holds its copy, 503 while one does not answer. A delete
//!   that races a copy wins: the copier, finding the original gone and no
//!   other copy, drops its own and refuses the post.
//!
//! Invariants: a chunk is at most [`CHUNK_BYTES`]; a shard answers at
//! most `FILE_STREAMS_MAX` chunks at once, counted with the files it
//! sends; a copy is kept only whole; chunks are read only
//! by nodes (`chunk=` is honoured only in a request another node
//! forwarded); copies count against the shard's
//! `--uploads-in-flight-max` like uploads being received.

use std::sync::Arc;

use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rookery_engine::Upload;
use serde::{Deserialize, Serialize};

use super::forward::{ask, bearer_proof};
use super::gather::ask_others;
use super::Node;
use crate::app::ApiError;
use crate::auth::{self, blocking};
use crate::http::{Request, Response};
use crate::shared::Shared;

/// Bytes of an upload one answer carries at most: well within NATS's
/// `max_payload`, and small enough that the chunks a shard holds at once
/// (one per file it sends or answers for, `FILE_STREAMS_MAX` of them)
/// stay within 32 MiB.
pub const CHUNK_BYTES: u64 = 128 << 10;

/// The header a chunk's answer carries the upload's row in.
const ROW_HEADER: &str = "x-rookery-upload";

/// An upload's row as it travels between nodes.
#[derive(Serialize, Deserialize)]
struct Row {
    id: String,
    owner: u64,
    bytes: u64,
    created_ms: u64,
    content_type: String,
    name: String,
    sha256: String,
    width: u32,
    height: u32,
    thumb_bytes: u64,
    /// A message (or an avatar, or a post under way) holds it there.
    held: bool,
}

/// The header that tells a node upload `up`'s row, and whether it is
/// `held` there.
pub fn row_header(up: &Upload, held: bool) -> (String, String) {
    let row = Row {
        id: format!("{:032x}", up.id),
        owner: up.owner,
        bytes: up.bytes,
        created_ms: up.created_ms,
        content_type: up.content_type.clone(),
        name: up.name.clone(),
        sha256: auth::hex(&up.sha256),
        width: up.width,
        height: up.height,
        thumb_bytes: up.thumb_bytes,
        held,
    };
    let json = serde_json::to_string(&row).expect("a row serializes");
    (ROW_HEADER.into(), json)
}

/// The upload a chunk's answer names, and whether it is held there;
/// `None` if it names none.
fn row_of(resp: &Response) -> Option<(Upload, bool)> {
    let (_, json) = resp.headers.iter().find(|(n, _)| n == ROW_HEADER)?;
    let row: Row = serde_json::from_str(json).ok()?;
    let mut sha256 = [0u8; 32];
    let hex = row.sha256.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    for (i, pair) in hex.chunks(2).enumerate() {
        sha256[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    let up = Upload {
        id: u128::from_str_radix(&row.id, 16).ok()?,
        owner: row.owner,
        bytes: row.bytes,
        created_ms: row.created_ms,
        pending: 0,
        content_type: row.content_type,
        name: row.name,
        sha256,
        width: row.width,
        height: row.height,
        thumb_bytes: row.thumb_bytes,
    };
    Some((up, row.held))
}

/// A node's ask for `len` bytes from `at` of upload `id` (its thumbnail
/// when `thumb`).
fn chunk_request(id: u128, thumb: bool, at: u64, len: u64) -> Request {
    let mut req = Request::get(&[], &format!("chunk={at}&len={len}"));
    req.node_ask = true;
    req.path = match thumb {
        true => format!("/api/uploads/{id:032x}/thumbnail"),
        false => format!("/api/uploads/{id:032x}"),
    };
    req
}

/// What a request asks when it is a node's ask for a chunk: `(at, len)`.
pub fn asked_chunk(req: &Request) -> Option<(u64, u64)> {
    if !req.node_ask {
        return None;
    }
    let at = req.query_param("chunk")?.parse().ok()?;
    let len = req.query_param("len")?.parse().ok()?;
    Some((at, len))
}

/// What every other node said of upload `id`: the nodes that have it
/// (with its row, and whether it is held there), and those that did not
/// answer. Asked at once; answers are taken as they come.
async fn ask_all(node: &Arc<Node>, id: u128) -> (Vec<(u32, Upload, bool)>, Vec<u32>) {
    let mut answers: FuturesUnordered<_> = ask_others(node, &chunk_request(id, false, 0, 0), None)
        .into_iter()
        .map(|(to, task)| async move { (to, task.await) })
        .collect();
    let (mut have, mut failed) = (Vec::new(), Vec::new());
    while let Some((to, answer)) = answers.next().await {
        match answer {
            Ok(r) if r.status == 404 => {}
            Ok(r) if r.status == 200 => match row_of(&r) {
                Some((up, held)) => have.push((to, up, held)),
                None => failed.push(to),
            },
            _ => failed.push(to),
        }
    }
    (have, failed)
}

/// Upload `id` on another node: the first node found to have it, and its
/// row; `None` when every other node said it has none (or this node is
/// alone). 503 when none was found and a node did not answer: it may
/// have it.
pub async fn find(shared: &Shared, id: u128) -> Result<Option<(u32, Upload)>, ApiError> {
    let Some(node) = shared.cluster.clone() else {
        return Ok(None);
    };
    let mut answers: FuturesUnordered<_> = ask_others(&node, &chunk_request(id, false, 0, 0), None)
        .into_iter()
        .map(|(to, task)| async move { (to, task.await) })
        .collect();
    let mut failed = Vec::new();
    while let Some((to, answer)) = answers.next().await {
        match answer.map(|r| (r.status, row_of(&r))) {
            Ok((200, Some((up, _)))) => return Ok(Some((to, up))),
            Ok((404, _)) => {}
            _ => failed.push(to),
        }
    }
    match failed.is_empty() {
        true => Ok(None),
        false => Err(not_answered(id, &failed)),
    }
}

fn not_answered(id: u128, nodes: &[u32]) -> ApiError {
    ApiError::Unavailable(format!(
        "upload {id:032x}: node(s) {nodes:?} did not answer; retry"
    ))
}

/// `DELETE /api/uploads/{id}` in a cluster, where the upload may be kept
/// by several nodes (the one that received it, the owners of rooms whose
/// messages carried it): 409 while any node holds it; 503 when a node
/// did not answer (it may hold it); else every node's copy is removed.
/// 404 when no node has one of `user`'s.
pub async fn remove_everywhere(
    req: &Request,
    shared: &Shared,
    user: u64,
    id: u128,
) -> Result<Response, ApiError> {
    let node = shared.cluster.clone().expect("a cluster's upload");
    let proof = bearer_proof(req, shared).await?;
    let mut removed = false;
    // Again after each round: a copy a room's owner kept meanwhile (its
    // read began before this delete's probe) is taken too, or holds.
    for _ in 0..REMOVE_ROUNDS_MAX {
        let kept = user_copies(shared, &node, user, id).await?;
        if kept.iter().any(|(_, held)| *held) {
            return Err(ApiError::Conflict(format!(
                "upload {id:032x} is held (by a message, or as an avatar)"
            )));
        }
        if kept.is_empty() {
            return match removed {
                true => Ok(Response::json(
                    200,
                    &serde_json::json!({"id": format!("{id:032x}"), "deleted": true}),
                )),
                false => Err(ApiError::NotFound(format!("no upload {id:032x} of yours"))),
            };
        }
        for (to, _) in kept {
            let answer = match to == node.cfg.node_id {
                true => {
                    let uploads = shared.engine.uploads();
                    match blocking(move || uploads.remove_unsent(user, id)).await {
                        Ok(_) => continue,
                        Err(e) => ApiError::from(e).response(),
                    }
                }
                false => ask(req, &node, to, proof)
                    .await
                    .map_err(|_| not_answered(id, &[to]))?,
            };
            // Gone meanwhile (404) is as good as removed; held meanwhile
            // (a post under way) is the answer.
            if !matches!(answer.status, 200 | 404) {
                return Ok(answer);
            }
        }
        removed = true;
    }
    Err(ApiError::Conflict(format!(
        "upload {id:032x} is being copied to a room: retry"
    )))
}

/// Rounds of a cluster's delete at most: each finds the copies left and
/// removes them.
const REMOVE_ROUNDS_MAX: usize = 3;

/// The nodes that keep a copy of `user`'s upload `id` (this one too), and
/// whether it is held there; 503 when a node did not answer.
async fn user_copies(
    shared: &Shared,
    node: &Arc<Node>,
    user: u64,
    id: u128,
) -> Result<Vec<(u32, bool)>, ApiError> {
    let uploads = shared.engine.uploads();
    let here = blocking(move || -> rookery_engine::Result<Option<(Upload, bool)>> {
        let Some(up) = uploads.get(id)? else {
            return Ok(None);
        };
        let held = crate::routes::uploads::held(&uploads, &up)?;
        Ok(Some((up, held)))
    })
    .await?;
    let (others, failed) = ask_all(node, id).await;
    if !failed.is_empty() {
        return Err(not_answered(id, &failed));
    }
    let mut kept: Vec<(u32, bool)> = others
        .into_iter()
        .filter(|(_, up, _)| up.owner == user)
        .map(|(to, _, held)| (to, held))
        .collect();
    if let Some((_, held)) = here.filter(|(up, _)| up.owner == user) {
        kept.push((node.cfg.node_id, held));
    }
    Ok(kept)
}

/// `len` bytes from `at` of upload `id` (its thumbnail when `thumb`) as
/// node `to` has them (`len` at most [`CHUNK_BYTES`]).
pub async fn chunk(
    node: &Node,
    to: u32,
    id: u128,
    thumb: bool,
    at: u64,
    len: u64,
) -> Result<Vec<u8>, ApiError> {
    assert!(len <= CHUNK_BYTES, "a chunk fits one answer");
    let resp = ask(&chunk_request(id, thumb, at, len), node, to, None)
        .await
        .map_err(|e| ApiError::Unavailable(format!("upload {id:032x} on node {to}: {e}")))?;
    if resp.status != 200 || resp.body.len() as u64 != len {
        return Err(ApiError::Unavailable(format!(
            "upload {id:032x} on node {to}: {} with {} bytes of {len}",
            resp.status,
            resp.body.len()
        )));
    }
    Ok(resp.body)
}

/// [`chunk`] from node `*from`; when that fails (the node died, or its
/// copy went: moved to a room's owner), from another node found to have
/// the upload, which `*from` then names. Copies are checked against
/// their original: any node's bytes of the file are the upload's. Not a
/// thumbnail's: each node makes its own.
pub async fn chunk_from(
    shared: &Shared,
    from: &mut u32,
    id: u128,
    thumb: bool,
    at: u64,
    len: u64,
) -> Result<Vec<u8>, ApiError> {
    let node = shared.cluster.clone().expect("a cluster's upload");
    match chunk(&node, *from, id, thumb, at, len).await {
        Ok(data) => Ok(data),
        Err(e) if thumb => Err(e),
        Err(e) => match find(shared, id).await? {
            Some((other, _)) if other != *from => {
                *from = other;
                chunk(&node, other, id, thumb, at, len).await
            }
            _ => Err(e),
        },
    }
}

/// Copies to this node the uploads of `files` it lacks that `user` owns
/// on another node, before a post to `room` (or a profile, without a
/// room) that carries them is stored here. Nothing is copied for a post
/// of someone who is not a member of `room` (the post is refused). One
/// found nowhere, or another user's, is left for the post to refuse
/// (404, as on one node).
pub async fn bring(
    shared: &Shared,
    user: u64,
    room: Option<u64>,
    files: &[u128],
) -> Result<(), ApiError> {
    if shared.cluster.is_none() || files.is_empty() {
        return Ok(());
    }
    if let Some(room) = room {
        let directory = shared.engine.directory();
        if blocking(move || directory.member_role(room, user))
            .await?
            .is_none()
        {
            return Ok(());
        }
    }
    let uploads = shared.engine.uploads();
    let ids = files.to_vec();
    let missing: Vec<u128> = blocking(move || -> rookery_engine::Result<Vec<u128>> {
        let mut missing = Vec::new();
        for id in ids {
            if uploads.get(id)?.is_none() {
                missing.push(id);
            }
        }
        Ok(missing)
    })
    .await?;
    let found = join_all(missing.iter().map(|&id| find(shared, id))).await;
    for found in found {
        if let Some((from, original)) = found?.filter(|(_, up)| up.owner == user) {
            copy(shared, from, original).await?;
        }
    }
    Ok(())
}

/// `post` (of `user` to `room`, carrying `files`) after [`bring`]; once
/// more, after bringing them again, when it was refused for a file this
/// node no longer has: another node's copy let this node's go between
/// the two (a release racing the post).
pub async fn carrying<T, F, Fut>(
    shared: &Shared,
    user: u64,
    room: u64,
    files: &[u128],
    post: F,
) -> Result<T, ApiError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    bring(shared, user, Some(room), files).await?;
    match post().await {
        Err(ApiError::NotFound(m)) if shared.cluster.is_some() && !files.is_empty() => {
            let uploads = shared.engine.uploads();
            let ids = files.to_vec();
            let lost = blocking(move || -> rookery_engine::Result<bool> {
                for id in ids {
                    if uploads.get(id)?.is_none() {
                        return Ok(true);
                    }
                }
                Ok(false)
            })
            .await?;
            if !lost {
                return Err(ApiError::NotFound(m));
            }
            bring(shared, user, Some(room), files).await?;
            post().await
        }
        other => other,
    }
}

/// Keeps here a copy of `original`, read from node `from`, then lets the
/// original go there unless something holds it (the upload moves to
/// where it is used).
async fn copy(shared: &Shared, mut from: u32, original: Upload) -> Result<(), ApiError> {
    let in_flight = &shared.uploads_in_flight;
    if in_flight.get() >= shared.cfg.uploads_in_flight_max {
        return Err(ApiError::Unavailable(
            "too many uploads at once: retry".into(),
        ));
    }
    in_flight.set(in_flight.get() + 1);
    let _slot = crate::routes::uploads::Slot(in_flight);
    let uploads = shared.engine.uploads();
    let (owner, bytes, id) = (original.owner, original.bytes, original.id);
    let begun = {
        let uploads = uploads.clone();
        blocking(move || uploads.begin(owner, bytes)).await
    };
    let mut incoming = match begun {
        Ok(i) => i,
        Err(rookery_engine::Error::TooLarge(m)) => return Err(ApiError::QuotaExceeded(m)),
        Err(e) => return Err(e.into()),
    };
    let mut at = 0;
    while at < bytes {
        let len = (bytes - at).min(CHUNK_BYTES);
        let data = chunk_from(shared, &mut from, id, false, at, len).await?;
        let (back, wrote) = blocking(move || {
            let r = incoming.write(&data);
            (incoming, r)
        })
        .await;
        incoming = back;
        wrote.map_err(|e| ApiError::Internal(format!("copying upload {id:032x}: {e}")))?;
        at += len;
    }
    let kept = uploads
        .copy_queued(incoming, original, auth::now_ms())
        .await;
    match kept {
        Ok(_) => release(shared, from, owner, id).await,
        // Another post here kept it first, and lets `from` go itself.
        Err(rookery_engine::Error::AlreadyExists(_)) => Ok(()),
        Err(rookery_engine::Error::TooLarge(m)) => Err(ApiError::QuotaExceeded(m)),
        Err(e) => Err(e.into()),
    }
}

/// After a copy: the copy read from node `from` is removed there unless
/// something holds it. When it was gone already and no other node has
/// the upload, its owner deleted it meanwhile: the copy here goes too,
/// and the post that wanted it is refused (404), as if it came after.
/// A node that does not answer keeps its copy (its sweep of uploads
/// never sent takes it).
async fn release(shared: &Shared, from: u32, owner: u64, id: u128) -> Result<(), ApiError> {
    let node = shared.cluster.clone().expect("a cluster's upload");
    let mut req = Request::get(&[], &format!("owner={owner}"));
    req.method = "DELETE".into();
    req.path = format!("/api/uploads/{id:032x}");
    req.node_ask = true;
    let gone = matches!(ask(&req, &node, from, None).await, Ok(r) if r.status == 404);
    if gone && find(shared, id).await?.is_none() {
        // Unless a post here holds it already (it came first).
        let uploads = shared.engine.uploads();
        if blocking(move || uploads.remove_unsent(owner, id))
            .await
            .is_ok()
        {
            return Err(ApiError::NotFound(format!("upload {id:032x} was deleted")));
        }
    }
    Ok(())
}

/// A node's ask to let its copy of an upload go (`DELETE` with `owner=`,
/// after another node copied it): the owner it names.
pub fn asked_release(req: &Request) -> Option<u64> {
    if !req.node_ask || req.method != "DELETE" {
        return None;
    }
    req.query_param("owner")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_travel_whole_and_garbage_names_nothing() {
        let up = Upload {
            id: 0xfeed_u128 << 64 | 7,
            owner: 3,
            bytes: 1234,
            created_ms: 99,
            pending: 0,
            content_type: "image/png".into(),
            name: "caf\u{e9} \"1\".png".into(),
            sha256: [0xab; 32],
            width: 10,
            height: 20,
            thumb_bytes: 55,
        };
        let resp = Response {
            status: 200,
            headers: vec![row_header(&up, true)],
            ..Response::default()
        };
        assert_eq!(row_of(&resp), Some((up, true)));
        for bad in [
            "",
            "{}",
            r#"{"id":"zz","owner":1,"bytes":1,"created_ms":1,"content_type":"","name":"","sha256":"00","width":0,"height":0,"thumb_bytes":0}"#,
        ] {
            let resp = Response {
                headers: vec![(ROW_HEADER.into(), bad.into())],
                ..Response::default()
            };
            assert_eq!(row_of(&resp), None, "{bad}");
        }
        assert_eq!(row_of(&Response::default()), None);
    }

    #[test]
    fn only_a_forwarded_request_asks_for_a_chunk() {
        let mut req = chunk_request(5, true, 10, 20);
        assert_eq!(req.path, format!("/api/uploads/{:032x}/thumbnail", 5));
        assert_eq!(asked_chunk(&req), Some((10, 20)));
        req.node_ask = false;
        assert_eq!(asked_chunk(&req), None, "a client's, even forwarded");
        req.forwarded = true;
        assert_eq!(asked_chunk(&req), None, "a client's, even forwarded");
        req.node_ask = true;
        req.query = "chunk=x&len=1".into();
        assert_eq!(asked_chunk(&req), None);
    }
}
