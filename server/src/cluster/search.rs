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
//! 3. **Fetch.** The page's messages are read as history shows them to
//!    the caller now, from their rooms' owners (one ask of each owner for
//!    its messages of the page, `show=`), so a message deleted since the
//!    index's last commit is left out, never shown.
//!
//! Scores are each node's BM25 statistics of its own rooms' words, as a
//! search engine's shards score theirs: close enough to merge by, and
//! never shown (they would tell how often a word is used in rooms the
//! caller cannot read).
//!
//! Invariants: the work is bounded per request (at most
//! `SEARCH_DEPTH_MAX` hits from each node, one fetch of at most
//! `PAGE_LEN_MAX` messages from each); `hits=` and `show=` are honoured
//! only in a node's own ask (`Request::node_ask`), never in a client's
//! request, forwarded or not; a node that does not answer in time is left out, and the
//! answer names it in `X-Rookery-Partial`, as the merged lists of
//! `gather` do; this node's own failure (its index still opening) is the
//! answer.

use std::collections::{BTreeMap, HashMap};

use futures_util::future::join_all;
use rookery_engine::{SearchHit, SearchResults, SEARCH_DEPTH_MAX};
use serde_json::Value;

use super::forward::{ask, bearer_proof};
use super::gather::ask_others;
use super::Node;
use crate::auth::Proof;
use crate::http::{Request, Response};
use crate::routes::search::{own_rooms, page_json, shown_within, Ask, PAGE_LEN_MAX};
use crate::routes::ApiResult;
use crate::shared::Shared;

/// The answer to `q`, a search of `uid`'s rooms asked of this node.
pub async fn across(req: &Request, shared: &Shared, uid: u64, q: &Ask) -> ApiResult {
    let node = shared.cluster.clone().expect("a cluster's search");
    let proof = bearer_proof(req, shared).await?;
    let depth = q.offset + q.limit;
    let asks = ask_others(&node, &part_request(req, q, depth), proof);
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
    let (shown, unanswered) = fetch_page(req, shared, &node, proof, uid, &page.hits).await;
    missing.extend(unanswered);
    let results: Vec<Value> = page
        .hits
        .iter()
        .filter_map(|h| {
            let message = shown.get(&(h.room, h.seq))?;
            Some(serde_json::json!({"room": h.room, "message": message}))
        })
        .collect();
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
fn part_request(req: &Request, q: &Ask, depth: usize) -> Request {
    let mut part = req.clone();
    part.method = "GET".into();
    part.query = form_urlencoded::Serializer::new(String::new())
        .append_pair("q", &q.text)
        .append_pair("limit", &depth.to_string())
        .append_pair("hits", "1")
        .finish();
    part.node_ask = true;
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

/// The messages of `hits` as history shows them to `uid` now, by (room,
/// seq), each node's read in one ask to it (a message deleted since its
/// node's last commit is left out); and the nodes that did not answer.
async fn fetch_page(
    req: &Request,
    shared: &Shared,
    node: &Node,
    proof: Option<Proof>,
    uid: u64,
    hits: &[SearchHit],
) -> (HashMap<(u64, u64), Value>, Vec<u32>) {
    let mut by_node: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for h in hits {
        by_node
            .entry(node.owner_of(h.room))
            .or_default()
            .push((h.room, h.seq));
    }
    let asks = by_node.into_iter().map(|(to, keys)| async move {
        let shown = match to == node.cfg.node_id {
            true => Some(shown_within(shared, uid, &keys, usize::MAX).await.0),
            false => shown_by(req, node, proof, to, keys).await,
        };
        (to, shown)
    });
    let (mut out, mut unanswered) = (HashMap::new(), Vec::new());
    for (to, shown) in join_all(asks).await {
        match shown {
            Some(shown) => {
                for v in shown {
                    if let (Some(room), Some(seq)) = (v["room"].as_u64(), v["seq"].as_u64()) {
                        out.insert((room, seq), v["message"].clone());
                    }
                }
            }
            None => unanswered.push(to),
        }
    }
    (out, unanswered)
}

/// The messages of `keys` node `to` shows the caller of `req`, asked for
/// again while its answer (which fits one NATS message) leaves some for
/// later; `None` when it does not answer.
async fn shown_by(
    req: &Request,
    node: &Node,
    proof: Option<Proof>,
    to: u32,
    mut keys: Vec<(u64, u64)>,
) -> Option<Vec<Value>> {
    let mut all = Vec::with_capacity(keys.len());
    // Each answer shows one message at least: a page's keys bound it.
    for _ in 0..PAGE_LEN_MAX {
        let answer = ask(&show_request(req, &keys), node, to, proof).await.ok();
        let (shown, rest) = answer
            .filter(|r| r.status == 200)
            .and_then(|r| shown_of(&r.body))?;
        all.extend(shown);
        if rest.is_empty() || rest.len() >= keys.len() {
            return Some(all);
        }
        keys = rest;
    }
    Some(all)
}

/// A node's ask to show the messages of `keys` to the caller of `req`.
fn show_request(req: &Request, keys: &[(u64, u64)]) -> Request {
    let mut ask = req.clone();
    ask.method = "GET".into();
    let list: Vec<String> = keys.iter().map(|(r, s)| format!("{r}.{s}")).collect();
    ask.query = format!("show={}", list.join(","));
    ask.node_ask = true;
    ask
}

/// A message by room and seq.
type Key = (u64, u64);

/// The messages a node's answer to [`show_request`] shows, and the keys
/// it left for another ask; `None` if it is not one.
fn shown_of(body: &[u8]) -> Option<(Vec<Value>, Vec<Key>)> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let Value::Array(shown) = v["shown"].take() else {
        return None;
    };
    let rest = match v["rest"].as_str()? {
        "" => Vec::new(),
        list => crate::routes::search::shown_keys(list).ok()?,
    };
    Some((shown, rest))
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
        let shown = br#"{"shown":[{"room":1,"seq":7,"message":{"body":"b"}}],"rest":"2.9"}"#;
        let (shown, rest) = shown_of(shown).unwrap();
        assert_eq!(
            (shown[0]["message"]["body"].as_str(), rest),
            (Some("b"), vec![(2, 9)])
        );
        assert_eq!(
            shown_of(br#"{"shown":[],"rest":""}"#),
            Some((vec![], vec![]))
        );
        assert_eq!(shown_of(br#"{"shown":[]}"#), None);
        assert_eq!(shown_of(b"{}"), None);
        assert_eq!(shown_of(b"garbage"), None);
        let req = show_request(&Request::get(&[], ""), &[(1, 7), (22, 3)]);
        assert_eq!((req.query.as_str(), req.node_ask), ("show=1.7,22.3", true));
    }
}
