//! Message search across a cluster (`GET /api/search` without `room`).
//! Each node indexes the logs of the rooms it owns, so the node the client
//! asked queries every node, then fetches what its page shows:
//!
//! 1. **Query.** Every other node answers the best `offset + limit`
//!    matches in the caller's rooms it owns, with their scores (a
//!    forwarded search with `hits=1`); this node answers its own part
//!    meanwhile.
//! 2. **Merge.** Best score first, ties by node and then in each node's
//!    order (`merge`); the page is `offset..offset + limit` of the merged
//!    list, and there is a next page when any node had more or the merged
//!    list is longer.
//! 3. **Fetch.** Each message of the page is read as history shows it to
//!    the caller now, from its room's owner (a history request of one
//!    message, forwarded as any other), so a message deleted or a room
//!    left since the index's last commit is left out, never shown.
//!
//! Scores are each node's BM25 statistics of its own rooms' words, as a
//! search engine's shards score theirs: close enough to merge by, and
//! never shown (they would tell how often a word is used in rooms the
//! caller cannot read).
//!
//! Invariants: the work is bounded per request (at most
//! `SEARCH_DEPTH_MAX` hits from each node, at most `PAGE_LEN_MAX`
//! fetches); a node that does not answer in time is left out, and the
//! answer names it in `X-Rookery-Partial`, as the merged lists of
//! `gather` do; this node's own failure (its index still opening) is the
//! answer.

use futures_util::future::join_all;
use rookery_engine::{SearchHit, SearchResults, SEARCH_DEPTH_MAX};
use serde_json::Value;

use super::forward::{ask, bearer_proof};
use super::gather::ask_others;
use super::Node;
use crate::auth::Proof;
use crate::http::{Request, Response};
use crate::routes::search::{own_rooms, page_json, shown, Ask};
use crate::routes::ApiResult;
use crate::shared::Shared;

/// The answer to `q`, a search of `uid`'s rooms asked of this node.
pub async fn across(req: &Request, shared: &Shared, uid: u64, q: &Ask) -> ApiResult {
    let node = shared.cluster.clone().expect("a cluster's search");
    let proof = bearer_proof(req, shared).await?;
    let depth = q.offset + q.limit;
    let asks = ask_others(&node, &part_request(req, depth), proof);
    let own = own_rooms(shared, uid, &q.text, depth).await?;
    let mut parts = vec![(node.cfg.node_id, own)];
    let mut missing = Vec::new();
    for (to, answer) in asks {
        let found = answer.await.ok().filter(|r| r.status == 200);
        match found.and_then(|r| part_of(&r.body)) {
            Some(p) => parts.push((to, p)),
            None => missing.push(to),
        }
    }
    let page = merge(parts, q.offset, q.limit);
    let fetched = join_all(
        page.hits
            .iter()
            .map(|h| fetch(req, shared, &node, proof, uid, h)),
    )
    .await;
    let mut results = Vec::with_capacity(fetched.len());
    for (hit, message) in page.hits.iter().zip(fetched) {
        match message {
            Ok(Some(message)) => {
                results.push(serde_json::json!({"room": hit.room, "message": message}))
            }
            Ok(None) => {}
            Err(()) => missing.push(node.owner_of(hit.room)),
        }
    }
    let mut resp = Response::json(200, &page_json(results, page.more, q));
    if !missing.is_empty() {
        missing.sort_unstable();
        missing.dedup();
        let names: Vec<String> = missing.iter().map(u32::to_string).collect();
        resp.headers
            .push(("x-rookery-partial".into(), names.join(",")));
    }
    Ok(resp)
}

/// What another node is asked: its best `depth` matches of the same words.
fn part_request(req: &Request, depth: usize) -> Request {
    let mut part = req.clone();
    part.method = "GET".into();
    part.query = format!(
        "q={}&limit={depth}&hits=1",
        req.query_param("q").unwrap_or_default()
    );
    part
}

/// A node's part, as `routes::search::hits_json` writes it; `None` if it
/// is not one.
fn part_of(body: &[u8]) -> Option<SearchResults> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let hits = v["hits"]
        .as_array()?
        .iter()
        .map(|h| {
            Some(SearchHit {
                room: h["room"].as_u64()?,
                seq: h["seq"].as_u64()?,
                score: h["score"].as_f64()? as f32,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(SearchResults {
        hits,
        more: v["more"].as_bool()?,
    })
}

/// The nodes' parts (each its best `offset + limit`, best first, by node
/// id) as the page `offset..offset + limit` of them all.
///
/// Best score first; ties in the order of the nodes' ids, then in each
/// node's own order. A node breaks its ties by where a match lies in its
/// index, so its best `n` are the first `n` of its best `n + k`: pages
/// asked one after another of any node neither repeat nor skip a match
/// (while no commit or merge changes the indexes between them).
pub fn merge(mut parts: Vec<(u32, SearchResults)>, offset: usize, limit: usize) -> SearchResults {
    let depth = offset + limit;
    parts.sort_by_key(|(node, _)| *node);
    let mut more = false;
    let mut hits = Vec::new();
    for (_, p) in parts {
        more |= p.more;
        hits.extend(p.hits);
    }
    // Stable: ties keep the order above.
    hits.sort_by(|a, b| b.score.total_cmp(&a.score));
    // No next page past the depth a search may reach.
    let more = (more || hits.len() > depth) && depth < SEARCH_DEPTH_MAX;
    hits.truncate(depth);
    hits.drain(..offset.min(hits.len()));
    SearchResults { hits, more }
}

/// `hit` as history shows it to `uid` now: `Ok(None)` when it is gone (or
/// no longer readable), `Err` when its room's owner did not answer.
async fn fetch(
    req: &Request,
    shared: &Shared,
    node: &Node,
    proof: Option<Proof>,
    uid: u64,
    hit: &SearchHit,
) -> Result<Option<Value>, ()> {
    let owner = node.owner_of(hit.room);
    if owner == node.cfg.node_id {
        return shown(shared, hit.room, hit.seq, uid).await.map_err(|_| ());
    }
    let mut one = req.clone();
    one.method = "GET".into();
    one.path = format!("/api/rooms/{}/messages", hit.room);
    one.query = format!(
        "after={}&before={}&limit=1",
        hit.seq.saturating_sub(1),
        hit.seq.saturating_add(1)
    );
    // The client's validator was for its search, not for this page.
    one.headers
        .retain(|(name, _)| !name.eq_ignore_ascii_case("if-none-match"));
    let answer = ask(&one, node, owner, proof).await.map_err(|_| ())?;
    match answer.status {
        200 => Ok(message_in(&answer.body, hit.seq)),
        // Gone, or no longer the caller's to read.
        403 | 404 => Ok(None),
        _ => Err(()),
    }
}

/// Message `seq` of a history page's body, if it is there and not deleted.
fn message_in(body: &[u8], seq: u64) -> Option<Value> {
    let mut page: Value = serde_json::from_slice(body).ok()?;
    let Value::Array(messages) = page["messages"].take() else {
        return None;
    };
    messages
        .into_iter()
        .find(|m| m["seq"].as_u64() == Some(seq) && m["body"].is_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(hits: &[(u64, u64, f32)], more: bool) -> SearchResults {
        SearchResults {
            hits: hits
                .iter()
                .map(|&(room, seq, score)| SearchHit { room, seq, score })
                .collect(),
            more,
        }
    }

    fn keys(r: &SearchResults) -> Vec<(u64, u64)> {
        r.hits.iter().map(|h| (h.room, h.seq)).collect()
    }

    #[test]
    fn merged_parts_are_best_first_and_say_when_there_are_more() {
        let a = part(&[(1, 1, 9.0), (1, 3, 3.0), (1, 2, 1.0)], false);
        let b = part(&[(2, 1, 5.0), (2, 2, 3.0)], false);
        // Ties by node, then in the node's order (not by seq).
        let m = merge(vec![(7, b.clone()), (3, a.clone())], 0, 3);
        assert_eq!(keys(&m), vec![(1, 1), (2, 1), (1, 3)]);
        assert!(m.more, "five matches, three shown");
        let m = merge(vec![(3, a.clone()), (7, b.clone())], 3, 3);
        assert_eq!(keys(&m), vec![(2, 2), (1, 2)]);
        assert!(!m.more);
        // A node with more than it sent: there is a next page.
        let m = merge(
            vec![(1, part(&[(3, 1, 1.0)], true)), (2, part(&[], false))],
            0,
            1,
        );
        assert_eq!((keys(&m), m.more), (vec![(3, 1)], true));
        // An offset past everything: an empty last page.
        let m = merge(vec![(3, a.clone()), (7, b.clone())], 10, 5);
        assert_eq!((keys(&m), m.more), (vec![], false));
        // Pages of every tie, one after another, take each match once:
        // a node's best n are the first n of its best n + k.
        let ties = |n: usize| part(&[(1, 9, 1.0), (1, 4, 1.0), (1, 7, 1.0)][..n], n < 3);
        let other = |n: usize| part(&[(2, 5, 1.0), (2, 1, 1.0)][..n.min(2)], n < 2);
        let mut seen = Vec::new();
        for offset in 0..5 {
            let m = merge(
                vec![(2, other(offset + 1)), (1, ties((offset + 1).min(3)))],
                offset,
                1,
            );
            seen.extend(keys(&m));
        }
        assert_eq!(seen, vec![(1, 9), (1, 4), (1, 7), (2, 5), (2, 1)]);
        // Never a next page past the depth.
        let many: Vec<(u64, u64, f32)> = (0..SEARCH_DEPTH_MAX as u64 + 5)
            .map(|s| (1, s, 1.0))
            .collect();
        let m = merge(vec![(1, part(&many, true))], SEARCH_DEPTH_MAX - 50, 50);
        assert_eq!((m.hits.len(), m.more), (50, false));
    }

    #[test]
    fn parts_and_pages_from_other_nodes_are_read_or_refused() {
        let body = br#"{"hits":[{"room":4,"seq":7,"score":1.5}],"more":true}"#;
        assert_eq!(part_of(body), Some(part(&[(4, 7, 1.5)], true)));
        for garbage in [
            &b""[..],
            b"{}",
            br#"{"hits":[{"room":4}],"more":false}"#,
            br#"{"hits":[],"more":"yes"}"#,
        ] {
            assert_eq!(part_of(garbage), None, "{garbage:?}");
        }
        let page =
            br#"{"messages":[{"seq":6,"body":"a"},{"seq":7,"body":"b"},{"seq":8,"body":null}]}"#;
        assert_eq!(message_in(page, 7).unwrap()["body"], "b");
        assert_eq!(message_in(page, 8), None, "deleted");
        assert_eq!(message_in(page, 9), None, "not on the page");
        assert_eq!(message_in(b"garbage", 7), None);
    }
}
