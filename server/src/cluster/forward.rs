//! Requests for rooms this node does not own go to the room's owner, by
//! NATS request/reply with a deadline, and its answer comes back as it is:
//! every room route behaves on any node as on the owner, because the
//! owner's own route handler answers it.
//!
//! The forwarding node checks the bearer token (its replica of sessions
//! is as good as the owner's) and sends who it proved along, so that the
//! owner neither checks again nor depends on its replica having caught up
//! with a session just opened elsewhere. NATS is the cluster's private
//! network: whoever can publish on it is trusted as a node
//! (docs/cluster.md says how to close it to anyone else).
//!
//! Invariants: a forwarded request is never forwarded again (two nodes
//! that disagreed on an owner could not bounce it between them); a node
//! answers at most `ANSWERS_IN_FLIGHT_MAX` forwarded requests at once per
//! shard, and refuses the rest at once with 503.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rookery_cluster::{Error as ClusterError, Incoming};
use serde::{Deserialize, Serialize};

use super::Node;
use crate::app::ApiError;
use crate::auth::{self, Proof};
use crate::http::{Request, Response};
use crate::shared::Shared;

/// How long a forwarded request may take before the client gets
/// `room_unavailable` (the owner is down or stuck).
pub const FORWARD_TIMEOUT: Duration = Duration::from_millis(1500);

/// Forwarded requests one shard answers at once, at most.
const ANSWERS_IN_FLIGHT_MAX: u64 = 1024;

/// The subject node `node` of cluster `name` answers forwarded requests on.
pub fn subject(name: &str, node: u32) -> String {
    format!("rk.{name}.node.{node}.http")
}

/// A request as it travels to the owner (its body follows).
#[derive(Serialize, Deserialize)]
struct RequestHead {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    peer: Option<IpAddr>,
    proof: Option<Proof>,
    /// The users bucket's revision the asking node had applied.
    #[serde(default)]
    users: u64,
    /// A node's own ask, not a client's request (`Request::node_ask`).
    #[serde(default)]
    node_ask: bool,
}

/// An answer as it travels back (its body follows).
#[derive(Serialize, Deserialize)]
struct ResponseHead {
    status: u16,
    headers: Vec<(String, String)>,
    code: Option<String>,
}

/// `head` as JSON after its length (4 bytes, little-endian), then `body`.
fn frame(head: &impl Serialize, body: &[u8]) -> Bytes {
    let head = serde_json::to_vec(head).expect("a head serializes");
    let mut out = Vec::with_capacity(4 + head.len() + body.len());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// The head and body of a frame; `None` if it is not one.
fn unframe<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<(T, &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let head = bytes.get(4..4usize.checked_add(len)?)?;
    let body = bytes.get(4 + len..)?;
    Some((serde_json::from_slice(head).ok()?, body))
}

/// The room a request is about, when its route names one (in its path,
/// or a search's `room`).
pub fn room_of(req: &Request) -> Option<u64> {
    let route = crate::routes::route_name(req);
    if route == "/api/search" {
        return req.query_param("room")?.parse().ok();
    }
    let segment =
        if route.starts_with("/api/rooms/{id}") || route.starts_with("/api/invites/{room}") {
            2
        } else if route.starts_with("/api/backend/rooms/{id}") {
            3
        } else {
            return None;
        };
    req.path
        .trim_matches('/')
        .split('/')
        .nth(segment)?
        .parse()
        .ok()
}

/// The owner's answer when `req` is about a room another node owns;
/// `None` when this node answers it itself.
pub async fn to_owner(req: &Request, shared: &Shared) -> Option<Response> {
    let node = shared.cluster.as_ref()?;
    if req.forwarded {
        return None;
    }
    let room = room_of(req)?;
    let owner = node.owner_of(room);
    if owner == node.cfg.node_id {
        return None;
    }
    let started = Instant::now();
    let answer = forward(req, shared, node, owner, room).await;
    node.counters.forwarded.fetch_add(1, Ordering::Relaxed);
    let micros = started.elapsed().as_micros() as u64;
    node.counters
        .forward_micros
        .fetch_add(micros, Ordering::Relaxed);
    Some(answer.unwrap_or_else(|e| {
        node.counters.forward_failed.fetch_add(1, Ordering::Relaxed);
        e.response()
    }))
}

async fn forward(
    req: &Request,
    shared: &Shared,
    node: &Node,
    owner: u32,
    room: u64,
) -> Result<Response, ApiError> {
    node.need_nats(room, owner)?;
    let proof = bearer_proof(req, shared).await?;
    ask(req, node, owner, proof)
        .await
        .map_err(|e| super::unanswered(e, room, owner, FORWARD_TIMEOUT))
}

/// Who the request's bearer token proves, if anyone (the node asked
/// answers 401 itself when nobody).
pub(super) async fn bearer_proof(
    req: &Request,
    shared: &Shared,
) -> Result<Option<Proof>, ApiError> {
    let Some(token) = auth::bearer(req) else {
        return Ok(None);
    };
    if crate::keys::is_key_shaped(&token) {
        // An API key: the owner checks it against its own keys file.
        return Ok(None);
    }
    let accounts = crate::accounts::Accounts::of(shared);
    Ok(match auth::identify(&accounts, &shared.cfg, token).await? {
        auth::Identity::User(p) => Some(p),
        auth::Identity::Refused(_) => None,
    })
}

/// Sends `req` to node `to`, which answers it as its own; its answer.
pub(super) async fn ask(
    req: &Request,
    node: &Node,
    to: u32,
    proof: Option<Proof>,
) -> Result<Response, ClusterError> {
    let head = RequestHead {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        headers: req.headers.clone(),
        peer: req.peer,
        proof,
        users: node.users_applied(),
        node_ask: req.node_ask,
    };
    let subject = subject(&node.cfg.name, to);
    let answer = node
        .request(to, &subject, frame(&head, &req.body), FORWARD_TIMEOUT)
        .await?;
    decode_response(&answer)
        .ok_or_else(|| ClusterError::Nats(format!("node {to} answered garbage")))
}

fn decode_response(bytes: &[u8]) -> Option<Response> {
    let (head, body) = unframe::<ResponseHead>(bytes)?;
    Some(Response {
        status: head.status,
        headers: head.headers,
        body: body.to_vec(),
        error_code: head.code.as_deref().map(crate::app::error_code),
        file: None,
    })
}

/// What a node answers for the others.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    /// Forwarded HTTP requests.
    Http,
    /// Operations for WebSocket clients and relays (`ops.rs`).
    Ops,
}

/// Answers what other nodes ask of this one, on this shard, until it
/// stops.
///
/// Answers go back the way the requests came: through `wire` when given
/// (this shard's), through the link otherwise.
pub async fn serve(
    shared: Rc<Shared>,
    requests: flume::Receiver<Incoming>,
    service: Service,
    wire: Option<rookery_cluster::wire::Wire>,
) {
    let slots = Rc::new(glommio::sync::Semaphore::new(ANSWERS_IN_FLIGHT_MAX));
    loop {
        let Some(Ok(m)) = shared.unless_stopped(requests.recv_async()).await else {
            return;
        };
        let Some(reply) = m.reply else { continue };
        let Some(node) = shared.cluster.clone() else {
            return;
        };
        node.counters.answered.fetch_add(1, Ordering::Relaxed);
        if !slots.try_acquire(1).unwrap_or(false) {
            let busy = ApiError::Unavailable("too many forwarded requests".into());
            let answer = match service {
                Service::Http => encode_response(&busy.response()),
                Service::Ops => super::records::json_bytes(&super::ops::refusal(busy)),
            };
            reply_with(&node, wire.as_ref(), &reply, answer).await;
            continue;
        }
        let (shared, slots, wire) = (shared.clone(), slots.clone(), wire.clone());
        glommio::spawn_local(async move {
            let answer = match service {
                Service::Http => encode_response(&answer(&shared, &m.payload).await),
                Service::Ops => {
                    super::records::json_bytes(&super::ops::answer(&shared, &m.payload).await)
                }
            };
            reply_with(&node, wire.as_ref(), &reply, answer).await;
            slots.signal(1);
        })
        .detach();
    }
}

async fn reply_with(
    node: &super::Node,
    wire: Option<&rookery_cluster::wire::Wire>,
    reply: &str,
    answer: bytes::Bytes,
) {
    match wire.filter(|w| w.connected()) {
        Some(w) => {
            w.publish(reply, &answer);
        }
        None => {
            let _ = node.link.publish(reply, answer).await;
        }
    }
}

/// The answer to one forwarded request.
async fn answer(shared: &Shared, payload: &[u8]) -> Response {
    let Some((head, body)) = unframe::<RequestHead>(payload) else {
        return ApiError::BadRequest("not a forwarded request".into()).response();
    };
    if let Some(node) = &shared.cluster {
        node.catch_up_users(head.users).await;
    }
    let req = Request {
        method: head.method,
        path: head.path,
        query: head.query,
        headers: head.headers,
        body: body.to_vec(),
        keep_alive: true,
        version: 1,
        peer: head.peer,
        proof: head.proof,
        forwarded: true,
        node_ask: head.node_ask,
    };
    crate::routes::handle_forwarded(&req, shared).await
}

fn encode_response(resp: &Response) -> Bytes {
    let head = ResponseHead {
        status: resp.status,
        headers: resp.headers.clone(),
        code: resp.error_code.map(str::to_string),
    };
    frame(&head, &resp.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let resp = Response::error(503, "room_unavailable", "down");
        let back = decode_response(&encode_response(&resp)).unwrap();
        assert_eq!(
            (back.status, back.body, back.error_code),
            (503, resp.body.clone(), Some("room_unavailable"))
        );
        for garbage in [
            &b""[..],
            b"\x05\0\0\0{}",
            b"\xff\xff\xff\xff",
            b"\x02\0\0\0[]",
        ] {
            assert!(decode_response(garbage).is_none(), "{garbage:?}");
        }
    }

    #[test]
    fn only_room_routes_name_a_room() {
        let at = |method: &str, path: &str| {
            let mut r = Request::get(&[], "");
            r.method = method.into();
            r.path = path.into();
            room_of(&r)
        };
        assert_eq!(at("POST", "/api/rooms/17/messages"), Some(17));
        assert_eq!(at("GET", "/api/rooms/17"), Some(17));
        assert_eq!(at("PUT", "/api/rooms/3/bans/9"), Some(3));
        assert_eq!(at("POST", "/api/invites/5/accept"), Some(5));
        assert_eq!(at("GET", "/api/rooms"), None);
        assert_eq!(at("POST", "/api/rooms/x/join"), None);
        assert_eq!(at("GET", "/api/invites"), None);
        assert_eq!(at("GET", "/api/me"), None);
        assert_eq!(at("POST", "/api/backend/rooms/8/messages"), Some(8));
        assert_eq!(at("PUT", "/api/backend/rooms/8/bans/3"), Some(8));
        assert_eq!(at("POST", "/api/backend/rooms"), None);
        assert_eq!(at("POST", "/api/backend/broadcast"), None);
        assert_eq!(at("POST", "/api/backend/users/8/disconnect"), None);
        let search = |query: &str| {
            let mut r = Request::get(&[], "");
            r.path = "/api/search".into();
            r.query = query.into();
            room_of(&r)
        };
        assert_eq!(search("q=a&room=12"), Some(12));
        assert_eq!(search("q=a"), None);
        assert_eq!(search("q=a&room=x"), None, "answered here: 400");
    }
}
