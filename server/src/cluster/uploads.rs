//! Uploads in a cluster. A node keeps the uploads it received; a room's
//! owner keeps a copy of each upload its messages carry; any node serves
//! any upload.
//!
//! - **Finding.** An upload id is 128 random bits: no node can be computed
//!   from it. A node that lacks one asks every other node at once for its
//!   row (a chunk of no bytes) and takes the first that has it.
//! - **Serving.** A node serves an upload it lacks by reading it from the
//!   node that has it, [`CHUNK_BYTES`] at a time as the client takes them
//!   (`routes::uploads::send_file`): nothing of it is stored on the way.
//! - **Carrying.** Before a post (or an avatar) is stored, the node that
//!   stores it copies each upload it carries that it lacks ([`bring`]):
//!   read whole from the node that has it, checked against the original's
//!   SHA-256 and size, charged to its owner there. Holds, the freeing on
//!   the last delete, retention and backups then work on each node for
//!   its own copies, as on one node. The original stays where it was
//!   received and, held by nothing there, goes as an upload never sent
//!   (`--upload-unsent-max-age-secs`).
//!
//! Invariants: a chunk is at most [`CHUNK_BYTES`]; a shard answers at
//! most `FILE_STREAMS_MAX` chunks at once, counted with the files it
//! sends; a copy is kept only whole; chunks are read only
//! by nodes (`chunk=` is honoured only in a request another node
//! forwarded); copies count against the shard's
//! `--uploads-in-flight-max` like uploads being received.

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
    req.path = match thumb {
        true => format!("/api/uploads/{id:032x}/thumbnail"),
        false => format!("/api/uploads/{id:032x}"),
    };
    req
}

/// What a request asks when it is a node's ask for a chunk: `(at, len)`.
pub fn asked_chunk(req: &Request) -> Option<(u64, u64)> {
    if !req.forwarded {
        return None;
    }
    let at = req.query_param("chunk")?.parse().ok()?;
    let len = req.query_param("len")?.parse().ok()?;
    Some((at, len))
}

/// Upload `id` on another node: that node and the upload's row; `None`
/// when no node that answered has it (or this node is alone).
pub async fn find(shared: &Shared, id: u128) -> Result<Option<(u32, Upload)>, ApiError> {
    let Some(node) = shared.cluster.clone() else {
        return Ok(None);
    };
    for (to, answer) in ask_others(&node, &chunk_request(id, false, 0, 0), None) {
        if let Ok(resp) = answer.await {
            if let Some((up, _)) = (resp.status == 200).then(|| row_of(&resp)).flatten() {
                return Ok(Some((to, up)));
            }
        }
    }
    Ok(None)
}

/// `DELETE /api/uploads/{id}` in a cluster, where the upload may be kept
/// by several nodes (the one that received it, the owners of rooms whose
/// messages carried it): 409 while any node holds it; else every node's
/// copy is removed. 404 when no node that answered has one of `user`'s.
pub async fn remove_everywhere(
    req: &Request,
    shared: &Shared,
    user: u64,
    id: u128,
) -> Result<Response, ApiError> {
    let node = shared.cluster.clone().expect("a cluster's upload");
    let asks = ask_others(&node, &chunk_request(id, false, 0, 0), None);
    let uploads = shared.engine.uploads();
    let here = blocking(move || -> rookery_engine::Result<Option<(Upload, bool)>> {
        let Some(up) = uploads.get(id)? else {
            return Ok(None);
        };
        let held = crate::routes::uploads::held(&uploads, &up)?;
        Ok(Some((up, held)))
    })
    .await?;
    let mut kept: Vec<(u32, bool)> = Vec::new();
    if let Some((_, held)) = here.filter(|(up, _)| up.owner == user) {
        kept.push((node.cfg.node_id, held));
    }
    for (to, answer) in asks {
        let row = answer
            .await
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| row_of(&r));
        if let Some((_, held)) = row.filter(|(up, _)| up.owner == user) {
            kept.push((to, held));
        }
    }
    if kept.is_empty() {
        return Err(ApiError::NotFound(format!("no upload {id:032x} of yours")));
    }
    if kept.iter().any(|(_, held)| *held) {
        return Err(ApiError::Conflict(format!(
            "upload {id:032x} is held (by a message, or as an avatar)"
        )));
    }
    let proof = bearer_proof(req, shared).await?;
    for (to, _) in kept {
        let answer = match to == node.cfg.node_id {
            true => {
                let uploads = shared.engine.uploads();
                match blocking(move || uploads.remove_unsent(user, id)).await {
                    Ok(_) => continue,
                    Err(e) => ApiError::from(e).response(),
                }
            }
            false => ask(req, &node, to, proof).await.map_err(|e| {
                ApiError::Unavailable(format!("upload {id:032x} on node {to}: {e}"))
            })?,
        };
        // Gone meanwhile (404) is as good as removed; held meanwhile (a
        // post under way) is the answer.
        if !matches!(answer.status, 200 | 404) {
            return Ok(answer);
        }
    }
    Ok(Response::json(
        200,
        &serde_json::json!({"id": format!("{id:032x}"), "deleted": true}),
    ))
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

/// Copies to this node the uploads of `files` it lacks that `user` owns
/// on another node, before a post (or a profile) that carries them is
/// stored here. One that is found nowhere, or is another user's, is left
/// for the post to refuse (404, as on one node).
pub async fn bring(shared: &Shared, user: u64, files: &[u128]) -> Result<(), ApiError> {
    if shared.cluster.is_none() {
        return Ok(());
    }
    for &id in files {
        let uploads = shared.engine.uploads();
        if blocking(move || uploads.get(id)).await?.is_some() {
            continue;
        }
        match find(shared, id).await? {
            Some((to, original)) if original.owner == user => copy(shared, to, original).await?,
            _ => {}
        }
    }
    Ok(())
}

/// Keeps here a copy of `original`, read from node `to`.
async fn copy(shared: &Shared, to: u32, original: Upload) -> Result<(), ApiError> {
    let node = shared.cluster.clone().expect("a cluster's copy");
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
        let data = chunk(&node, to, id, false, at, len).await?;
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
        Ok(_) => Ok(()),
        Err(rookery_engine::Error::TooLarge(m)) => Err(ApiError::QuotaExceeded(m)),
        Err(e) => Err(e.into()),
    }
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
        assert_eq!(asked_chunk(&req), None, "from a client");
        req.forwarded = true;
        assert_eq!(asked_chunk(&req), Some((10, 20)));
        req.query = "chunk=x&len=1".into();
        assert_eq!(asked_chunk(&req), None);
    }
}
