//! The lists that span every node's rooms (`GET /api/rooms`, `/api/invites`,
//! `/api/me/unread`, `/api/dms`): each node answers for the rooms it owns, and the node
//! the client asked merges the answers.
//!
//! Invariants: a merged page of rooms (or direct messages) holds the
//! lowest ids after `after` among every node that answered, at most
//! `limit`, none above what every node's page covered (a node's page may
//! stop short at its scan bound), and says `next` whenever any node has
//! more; so following `next` misses none. A node that does not answer in time is left out
//! (its rooms are unavailable anyway) and the answer says so in
//! `X-Rookery-Partial: <nodes missing>`; an error of this node's own answer
//! (401, 400) is the answer.

use std::sync::Arc;

use rookery_cluster::Error as ClusterError;
use serde_json::{json, Value};

use super::forward::{ask, bearer_proof};
use super::Node;
use crate::app::ApiError;
use crate::auth::Proof;
use crate::http::{Request, Response};
use crate::shared::Shared;

/// Which list a route is, when it is one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    Rooms,
    Invites,
    Unread,
    Dms,
}

impl List {
    pub fn of(req: &Request) -> Option<List> {
        if !matches!(req.method.as_str(), "GET" | "HEAD") {
            return None;
        }
        match crate::routes::route_name(req) {
            "/api/rooms" => Some(List::Rooms),
            "/api/invites" => Some(List::Invites),
            "/api/me/unread" => Some(List::Unread),
            "/api/dms" => Some(List::Dms),
            _ => None,
        }
    }
}

/// The merged answer when `req` is one of the lists and this node is part
/// of a cluster; `None` otherwise.
pub async fn from_all(req: &Request, shared: &Shared) -> Option<Response> {
    if shared.cluster.is_none() || req.forwarded {
        return None;
    }
    let list = List::of(req)?;
    Some(
        gather(req, shared, list)
            .await
            .unwrap_or_else(|e| e.response()),
    )
}

async fn gather(req: &Request, shared: &Shared, list: List) -> Result<Response, ApiError> {
    let node = shared.cluster.clone().expect("checked by from_all");
    let proof = bearer_proof(req, shared).await?;
    // Asked at once; this node answers its own part meanwhile.
    let asks = ask_others(&node, req, proof);
    let mut mine = req.clone();
    mine.forwarded = true;
    let own = crate::routes::handle_forwarded(&mine, shared).await;
    if own.status != 200 {
        return Ok(own);
    }
    let mut pages = vec![body_json(&own)?];
    let mut missing = Vec::new();
    for (to, answer) in asks {
        match answer.await {
            Ok(r) if r.status == 200 => pages.push(body_json(&r)?),
            _ => missing.push(to.to_string()),
        }
    }
    let merged = match list {
        List::Rooms => merge_pages(
            pages,
            "rooms",
            "id",
            crate::routes::list_query(req, shared)?.1,
        ),
        List::Dms => merge_pages(
            pages,
            "dms",
            "user",
            crate::routes::list_query(req, shared)?.1,
        ),
        List::Invites => concat(pages, "invites", &["room", "id"]),
        List::Unread => concat(pages, "rooms", &["room"]),
    };
    let mut resp = Response::json(200, &merged);
    if !missing.is_empty() {
        resp.headers
            .push(("x-rookery-partial".into(), missing.join(",")));
    }
    Ok(resp)
}

/// `req` sent to every other node at once: each one's id, and its answer
/// to come.
pub(super) fn ask_others(
    node: &Arc<Node>,
    req: &Request,
    proof: Option<Proof>,
) -> Vec<(u32, glommio::Task<Result<Response, ClusterError>>)> {
    let others = node.cfg.nodes.iter().filter(|n| **n != node.cfg.node_id);
    others
        .map(|&to| {
            let (req, node) = (req.clone(), node.clone());
            (
                to,
                glommio::spawn_local(async move { ask(&req, &node, to, proof).await }),
            )
        })
        .collect()
}

fn body_json(r: &Response) -> Result<Value, ApiError> {
    serde_json::from_slice(&r.body).map_err(|e| ApiError::Internal(format!("a node's list: {e}")))
}

/// The number at `path` inside `v` (0 when absent).
fn id_at(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

/// Pages of `{key: [...], "next": ...}` (each one node's items after the
/// same `after`, by the id at `id`) as one page of at most `limit`. A
/// node's page covers its ids up to its `next` (a page may be short, as a
/// node reads a bounded number of rows): the merge keeps only ids every
/// node has covered, so none is skipped, and says `next` while any node
/// has more, even with no item.
pub fn merge_pages(pages: Vec<Value>, key: &str, id: &str, limit: usize) -> Value {
    let covered = pages
        .iter()
        .filter_map(|p| p["next"]["after"].as_u64())
        .min();
    let mut items: Vec<Value> = pages
        .into_iter()
        .flat_map(|mut p| match p[key].take() {
            Value::Array(a) => a,
            _ => Vec::new(),
        })
        .filter(|item| covered.is_none_or(|c| id_at(item, &[id]) <= c))
        .collect();
    items.sort_by_key(|r| id_at(r, &[id]));
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|last| id_at(last, &[id]))
    } else {
        covered
    };
    json!({ key: items, "next": next.map_or(Value::Null, |after| json!({ "after": after })) })
}

/// The arrays under `key` of every page, as one, ordered by the number at
/// `order`.
pub fn concat(pages: Vec<Value>, key: &str, order: &[&str]) -> Value {
    let mut all: Vec<Value> = pages
        .into_iter()
        .flat_map(|mut p| match p[key].take() {
            Value::Array(a) => a,
            _ => Vec::new(),
        })
        .collect();
    all.sort_by_key(|v| id_at(v, order));
    json!({ key: all })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(ids: &[u64], next: bool) -> Value {
        let rooms: Vec<Value> = ids.iter().map(|id| json!({"id": id})).collect();
        json!({"rooms": rooms, "next": if next { json!({"after": ids.last()}) } else { Value::Null }})
    }

    fn ids(v: &Value) -> Vec<u64> {
        v["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| id_at(r, &["id"]))
            .collect()
    }

    #[test]
    fn merged_room_pages_keep_the_lowest_ids_and_say_when_there_are_more() {
        let m = merge_pages(
            vec![
                page(&[2, 5, 8], true),
                page(&[1, 9], false),
                page(&[3], false),
            ],
            "rooms",
            "id",
            3,
        );
        assert_eq!(ids(&m), vec![1, 2, 3]);
        assert_eq!(m["next"], json!({"after": 3}));
        // Everything fits and no node has more: the last page.
        let m = merge_pages(
            vec![page(&[2], false), page(&[1, 9], false)],
            "rooms",
            "id",
            3,
        );
        assert_eq!(ids(&m), vec![1, 2, 9]);
        assert!(m["next"].is_null());
        // One node has more although everything fits: go on after the last.
        let m = merge_pages(
            vec![page(&[4, 6], true), page(&[], false)],
            "rooms",
            "id",
            2,
        );
        assert_eq!(
            (ids(&m), m["next"].clone()),
            (vec![4, 6], json!({"after": 6}))
        );
        let m = merge_pages(vec![page(&[], false)], "rooms", "id", 2);
        assert!(ids(&m).is_empty() && m["next"].is_null());
        // A node's page cut short by its scan bound covers ids up to its
        // next only: another node's higher ids wait for the next page, and
        // a page with no item still goes on.
        let short = json!({"rooms": [], "next": {"after": 4096}});
        let m = merge_pages(vec![short.clone(), page(&[6000], false)], "rooms", "id", 10);
        assert_eq!(
            (ids(&m), m["next"].clone()),
            (vec![], json!({"after": 4096}))
        );
        let short = json!({"rooms": [{"id": 7}], "next": {"after": 50}});
        let m = merge_pages(vec![short, page(&[3, 60], false)], "rooms", "id", 10);
        assert_eq!(
            (ids(&m), m["next"].clone()),
            (vec![3, 7], json!({"after": 50}))
        );
    }

    #[test]
    fn concatenated_lists_are_ordered_by_room() {
        let a = json!({"invites": [{"room": {"id": 7}}, {"room": {"id": 2}}]});
        let b = json!({"invites": [{"room": {"id": 4}}]});
        let m = concat(vec![a, b, json!({})], "invites", &["room", "id"]);
        let got: Vec<u64> = m["invites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| id_at(v, &["room", "id"]))
            .collect();
        assert_eq!(got, vec![2, 4, 7]);
    }
}
