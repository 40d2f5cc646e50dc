//! Message search (`GET /api/search?q=&room=&offset=&limit=`): the
//! messages holding every word of `q`, best first, in one room the caller
//! may read or in every room they are a member of. The engine's index
//! names the messages; their text is read from the log here, so what is
//! shown is what history shows now (a message deleted since the index's
//! last commit is left out, never shown). Searches share the directory's
//! rate limit per user.

use rookery_engine::{
    Cursor, Order, SearchQuery, QUERY_BYTES_MAX, SEARCH_DEPTH_MAX, SEARCH_PAGE_LEN_MAX,
};
use serde_json::{json, Value};

use super::{query_text, query_u64, user, ApiError, ApiResult};
use crate::app::{directory, readable_room, take_directory_token};
use crate::auth::blocking;
use crate::http::{Request, Response};
use crate::shared::Shared;

/// Results per page when the request does not say.
const PAGE_LEN_DEFAULT: usize = 20;

/// `GET /api/search`: `{"results": [{"room", "message"}],
/// "next": {"offset"} | null}`, each message in the shape of history's.
pub(crate) async fn search(req: &Request, shared: &Shared) -> ApiResult {
    let uid = user(req, shared).await?;
    if shared.cluster.is_some() {
        // Each node indexes the rooms it owns: a search here would
        // silently miss the others' (docs/cluster.md).
        return Err(ApiError::Unavailable(
            "message search is not available in a cluster yet".into(),
        ));
    }
    let text = query_text(req, "q").unwrap_or_default();
    if text.trim().is_empty() || text.len() > QUERY_BYTES_MAX {
        return Err(ApiError::BadRequest(format!(
            "q must be 1..={QUERY_BYTES_MAX} bytes of words to look for"
        )));
    }
    let offset = query_u64(req, "offset")?
        .unwrap_or(0)
        .min(usize::MAX as u64) as usize;
    let limit = query_u64(req, "limit")?.map_or(PAGE_LEN_DEFAULT as u64, |l| l);
    if !(1..=SEARCH_PAGE_LEN_MAX as u64).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1..={SEARCH_PAGE_LEN_MAX}"
        )));
    }
    let limit = limit as usize;
    if offset.saturating_add(limit) > SEARCH_DEPTH_MAX {
        return Err(ApiError::BadRequest(format!(
            "offset + limit must be at most {SEARCH_DEPTH_MAX}: narrow the search"
        )));
    }
    let room = query_u64(req, "room")?;
    take_directory_token(shared, uid).await?;
    let rooms = match room {
        Some(id) => {
            readable_room(shared, uid, id).await?;
            vec![id]
        }
        None => {
            let m = directory(shared);
            blocking(move || m.rooms_of(uid)).await?
        }
    };
    let index = shared
        .search
        .get()
        .ok_or_else(|| ApiError::Unavailable("the search index is starting".into()))?;
    let found = index
        .query(SearchQuery {
            text,
            rooms,
            offset,
            limit,
        })
        .await?;
    let mut results = Vec::with_capacity(found.hits.len());
    for hit in &found.hits {
        // No score: its statistics span every room, the caller's or not.
        if let Some(message) = shown(shared, hit.room, hit.seq, uid).await? {
            results.push(json!({"room": hit.room, "message": message}));
        }
    }
    let next = match found.more {
        true => json!({ "offset": offset + limit }),
        false => Value::Null,
    };
    Ok(Response::json(
        200,
        &json!({ "results": results, "next": next }),
    ))
}

/// Message `seq` of `room` as history shows it to `reader`, if it is
/// still there (not deleted, not retired, its room not deleted).
async fn shown(
    shared: &Shared,
    room: u64,
    seq: u64,
    reader: u64,
) -> Result<Option<Value>, ApiError> {
    let cursor = Cursor {
        after: Some(seq.saturating_sub(1)),
        before: seq.checked_add(1),
        limit: 1,
        order: Order::OldestFirst,
    };
    let page = match shared.engine.history_of(room, cursor, Some(reader)).await {
        Ok(page) => page,
        Err(rookery_engine::Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(page
        .messages
        .iter()
        .find(|m| m.seq == seq && m.body.is_some())
        .map(|m| serde_json::to_value(m.view()).unwrap_or(Value::Null)))
}
