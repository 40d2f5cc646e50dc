//! Message search (`GET /api/search?q=&room=&offset=&limit=`): the
//! messages holding every word of `q`, best first, in one room the caller
//! may read or in every room they are a member of. The engine's index
//! names the messages; their text is read from the log here, so what is
//! shown is what history shows now (a message deleted since the index's
//! last commit is left out, never shown). Searches share the directory's
//! rate limit per user.

use rookery_engine::{
    Cursor, Order, SearchQuery, SearchResults, QUERY_BYTES_MAX, SEARCH_DEPTH_MAX,
};
use serde_json::{json, Value};

use super::{query_text, query_u64, user, ApiError, ApiResult};
use crate::app::{directory, readable_room, take_directory_token};
use crate::auth::blocking;
use crate::http::{Request, Response};
use crate::shared::Shared;

/// Results per page when the request does not say.
const PAGE_LEN_DEFAULT: usize = 20;

/// Results per page at most.
pub(crate) const PAGE_LEN_MAX: usize = 50;

/// What a search asks, checked.
pub(crate) struct Ask {
    /// The words, decoded.
    pub text: String,
    pub offset: usize,
    pub limit: usize,
    /// The one room to look in, if named.
    pub room: Option<u64>,
}

impl Ask {
    /// The search `req` asks; pages of up to `limit_max`.
    fn of(req: &Request, limit_max: usize) -> Result<Ask, ApiError> {
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
        if !(1..=limit_max as u64).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "limit must be 1..={limit_max}"
            )));
        }
        let limit = limit as usize;
        if offset.saturating_add(limit) > SEARCH_DEPTH_MAX {
            return Err(ApiError::BadRequest(format!(
                "offset + limit must be at most {SEARCH_DEPTH_MAX}: narrow the search"
            )));
        }
        let room = query_u64(req, "room")?;
        Ok(Ask {
            text,
            offset,
            limit,
            room,
        })
    }
}

/// `GET /api/search`: `{"results": [{"room", "message"}],
/// "next": {"offset"} | null}`, each message in the shape of history's.
///
/// In a cluster, a search of one room is answered by the room's owner
/// (forwarded there like every room route), and a search of the caller's
/// rooms by every node: see `cluster::search`. A node asked for its part
/// (`hits=1`, honoured only in a node's own ask) answers the best
/// `offset + limit` of the rooms it owns, with their scores, as
/// [`hits_json`] says.
pub(crate) async fn search(req: &Request, shared: &Shared) -> ApiResult {
    let uid = user(req, shared).await?;
    if let Some(list) = req.query_param("show").filter(|_| req.node_ask) {
        let keys = shown_keys(list)?;
        let budget = crate::cluster::answer_bytes_max();
        let (shown, rest) = shown_within(shared, uid, &keys, budget).await;
        let rest: Vec<String> = rest.iter().map(|(r, s)| format!("{r}.{s}")).collect();
        return Ok(Response::json(
            200,
            &json!({ "shown": shown, "rest": rest.join(",") }),
        ));
    }
    let part = req.node_ask && req.query_param("hits") == Some("1");
    let ask = Ask::of(req, if part { SEARCH_DEPTH_MAX } else { PAGE_LEN_MAX })?;
    if part {
        let found = own_rooms(shared, uid, &ask.text, ask.limit).await?;
        return Ok(Response::json(200, &hits_json(&found)));
    }
    take_directory_token(shared, uid).await?;
    let found = match ask.room {
        Some(id) => {
            readable_room(shared, uid, id).await?;
            query(shared, vec![id], &ask).await?
        }
        None if shared.cluster.is_some() => {
            return crate::cluster::search::across(req, shared, uid, &ask).await;
        }
        None => query(shared, member_rooms(shared, uid).await?, &ask).await?,
    };
    let mut results = Vec::with_capacity(found.hits.len());
    for hit in &found.hits {
        // No score: its statistics span every room, the caller's or not.
        if let Some(message) = shown(shared, hit.room, hit.seq, uid).await? {
            results.push(json!({"room": hit.room, "message": message}));
        }
    }
    Ok(Response::json(200, &page_json(results, found.more, &ask)))
}

/// A page of results as the route answers it.
pub(crate) fn page_json(results: Vec<Value>, more: bool, ask: &Ask) -> Value {
    let next = match more {
        true => json!({ "offset": ask.offset + ask.limit }),
        false => Value::Null,
    };
    json!({ "results": results, "next": next })
}

/// The best `depth` matches of `text` in the rooms `uid` is a member of
/// here (in a cluster, the rooms this node owns).
pub(crate) async fn own_rooms(
    shared: &Shared,
    uid: u64,
    text: &str,
    depth: usize,
) -> Result<SearchResults, ApiError> {
    let ask = Ask {
        text: text.to_string(),
        offset: 0,
        limit: depth,
        room: None,
    };
    query(shared, member_rooms(shared, uid).await?, &ask).await
}

/// The rooms `uid` is a member of (in a cluster, of this node's).
async fn member_rooms(shared: &Shared, uid: u64) -> Result<Vec<u64>, ApiError> {
    let m = directory(shared);
    Ok(blocking(move || m.rooms_of(uid)).await?)
}

async fn query(shared: &Shared, rooms: Vec<u64>, ask: &Ask) -> Result<SearchResults, ApiError> {
    let index = shared
        .search
        .get()
        .ok_or_else(|| ApiError::Unavailable("the search index is starting".into()))?;
    Ok(index
        .query(SearchQuery {
            text: ask.text.clone(),
            rooms,
            offset: ask.offset,
            limit: ask.limit,
        })
        .await?)
}

/// A node's part of a cluster's search: `{"hits": [{"room", "seq",
/// "score"}], "more"}`, best first. Scores travel only between nodes.
pub(crate) fn hits_json(found: &SearchResults) -> Value {
    let hits: Vec<Value> = found
        .hits
        .iter()
        .map(|h| json!({"room": h.room, "seq": h.seq, "score": h.score}))
        .collect();
    json!({ "hits": hits, "more": found.more })
}

/// The (room, seq) pairs of a node's ask to show messages (`show=R.S,...`,
/// a page's worth at most).
pub(crate) fn shown_keys(list: &str) -> Result<Vec<(u64, u64)>, ApiError> {
    let bad = || ApiError::BadRequest(format!("show={list:?} is not a page of room.seq"));
    let keys = list
        .split(',')
        .map(|pair| {
            let (room, seq) = pair.split_once('.')?;
            Some((room.parse().ok()?, seq.parse().ok()?))
        })
        .collect::<Option<Vec<(u64, u64)>>>()
        .ok_or_else(bad)?;
    match keys.len() <= PAGE_LEN_MAX {
        true => Ok(keys),
        false => Err(bad()),
    }
}

/// The messages of `keys` as history shows them to `reader` now,
/// `[{"room","seq","message"}]` (leaving out those gone, and those that
/// could not be read), within `budget` bytes of JSON but for the first;
/// and the keys left for another ask.
pub(crate) async fn shown_within(
    shared: &Shared,
    reader: u64,
    keys: &[(u64, u64)],
    budget: usize,
) -> (Vec<Value>, Vec<(u64, u64)>) {
    let (mut out, mut used) = (Vec::with_capacity(keys.len()), 0usize);
    for (i, &(room, seq)) in keys.iter().enumerate() {
        let message = match shown(shared, room, seq, reader).await {
            Ok(Some(message)) => message,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(room, seq, error = ?e, "a search result could not be read");
                continue;
            }
        };
        let v = json!({"room": room, "seq": seq, "message": message});
        let len = v.to_string().len();
        if used + len > budget && !out.is_empty() {
            return (out, keys[i..].to_vec());
        }
        used += len;
        out.push(v);
    }
    (out, Vec::new())
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
