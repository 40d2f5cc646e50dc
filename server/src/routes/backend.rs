//! The server API for application backends (`/api/backend/...`,
//! docs/api.md "Server API"). A call carries an API key (`crate::keys`) as
//! `Authorization: Bearer rk_…`; it is allowed by the key's scopes and
//! counted against the key's own rate, never a user's; every call is
//! logged with the key's name.
//!
//! The server acts as itself (`SERVER_USER`: a room owner's powers in every
//! room, no membership of its own) or, for a publish with `as`, as the
//! user named, who must be a member as for any post. In a cluster, a room
//! route goes to the room's owner like any other: the node the backend
//! called checks the key and takes its token, the owner checks the key
//! again (every node reads the same keys file) and answers.

use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use rookery_engine::{role_word, MemberOp, Room, SERVER_USER};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::rooms::room_json;
use super::{body, query_u64, ApiResult};
use crate::accounts::Accounts;
use crate::app::{directory, history_page, ApiError, PageQuery};
use crate::auth::{self, blocking};
use crate::http::{Request, Response};
use crate::keys::{Key, Refusal, Scope};
use crate::shared::Shared;

/// Rooms one broadcast reaches, at most.
pub const BROADCAST_ROOMS_MAX: usize = 1000;
/// Users `online` lists at most (its answer may cross NATS, whose
/// messages are at most 1 MiB).
pub const ONLINE_USERS_MAX: usize = 10_000;
/// Posts of one broadcast in flight at once.
const BROADCAST_IN_FLIGHT_MAX: usize = 64;

/// The route pattern of a server API path (`None`: not one of them).
pub(super) fn route_name(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        ["api", "backend", "rooms"] => "/api/backend/rooms",
        ["api", "backend", "rooms", _] => "/api/backend/rooms/{id}",
        ["api", "backend", "rooms", _, "messages"] => "/api/backend/rooms/{id}/messages",
        ["api", "backend", "rooms", _, "members"] => "/api/backend/rooms/{id}/members",
        ["api", "backend", "rooms", _, "members", _] => "/api/backend/rooms/{id}/members/{user}",
        ["api", "backend", "rooms", _, "bans", _] => "/api/backend/rooms/{id}/bans/{user}",
        ["api", "backend", "rooms", _, "online"] => "/api/backend/rooms/{id}/online",
        ["api", "backend", "broadcast"] => "/api/backend/broadcast",
        ["api", "backend", "users", _, "disconnect"] => "/api/backend/users/{user}/disconnect",
        ["api", "backend", "backup"] => "/api/backend/backup",
        ["api", "backend", "backup", _] => "/api/backend/backup/{name}",
        ["api", "backend", ..] => "/api/backend/other",
        _ => return None,
    })
}

/// What a call needs: the scope of `(method, route)`; `None` when the
/// server API has no such call.
fn scope_of(method: &str, route: &str) -> Option<Scope> {
    Some(match (method, route) {
        ("POST", "/api/backend/rooms") => Scope::Rooms,
        ("GET", "/api/backend/rooms/{id}") => Scope::Read,
        ("DELETE", "/api/backend/rooms/{id}") => Scope::Rooms,
        ("GET", "/api/backend/rooms/{id}/messages") => Scope::Read,
        ("GET", "/api/backend/rooms/{id}/online") => Scope::Read,
        ("POST", "/api/backend/rooms/{id}/messages") => Scope::Publish,
        ("POST", "/api/backend/broadcast") => Scope::Publish,
        ("POST", "/api/backend/rooms/{id}/members") => Scope::Members,
        ("DELETE", "/api/backend/rooms/{id}/members/{user}") => Scope::Members,
        ("PUT" | "DELETE", "/api/backend/rooms/{id}/bans/{user}") => Scope::Members,
        ("POST", "/api/backend/users/{user}/disconnect") => Scope::Users,
        ("POST", "/api/backend/backup") => Scope::Backup,
        ("GET", "/api/backend/backup/{name}") => Scope::Backup,
        _ => return None,
    })
}

/// Answers one server API call (`method` is GET for a HEAD).
pub(super) async fn route(req: &Request, shared: &Shared, method: &str, route: &str) -> ApiResult {
    let Some(scope) = scope_of(method, route) else {
        return Err(match route {
            "/api/backend/other" => ApiError::NotFound(format!("no route for {}", req.path)),
            _ => ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", req.path)),
        });
    };
    let key = match identify(req, shared) {
        Ok(key) => key,
        Err(refused) => {
            // Not a key's call: counted under "-", logged at debug (a flood
            // of guesses must not flood the log).
            if let Some(h) = shared.my_http().filter(|_| !req.forwarded) {
                h.backend_call(&Arc::from("-"), 401);
            }
            tracing::debug!(path = %req.path, peer = ?req.peer, "server API call without a known key");
            return Err(refused);
        }
    };
    let started = Instant::now();
    let answer = match admit(req, &key, scope) {
        Err(refused) => Err(refused),
        Ok(()) => match crate::cluster::forward::to_owner(req, shared).await {
            Some(answer) => Ok(answer),
            None => dispatch(req, shared, method, route, &key).await,
        },
    };
    let status = match &answer {
        Ok(r) => r.status,
        Err(e) => e.parts().0,
    };
    // Counted once, by the node the backend called.
    if let Some(h) = shared.my_http().filter(|_| !req.forwarded) {
        h.backend_call(&key.name, status);
    }
    tracing::info!(
        key = %key.name,
        method,
        path = %req.path,
        status,
        forwarded = req.forwarded,
        us = started.elapsed().as_micros() as u64,
        "server API call"
    );
    answer
}

/// The key the call carries: 401 without one the keys file holds.
fn identify(req: &Request, shared: &Shared) -> Result<Arc<Key>, ApiError> {
    // The header only: a key in a query string ends up in proxies' logs.
    let presented = req
        .header("authorization")
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "the server API takes an API key: Authorization: Bearer rk_…".into(),
            )
        })?;
    shared.keys.identify(presented).map_err(|r| {
        ApiError::Unauthorized(match r {
            Refusal::NoKeys => "the server API is off: this server has no --api-keys-file".into(),
            Refusal::Unknown => "unknown API key".into(),
        })
    })
}

/// A call outside the server API that takes a key with `scope` (the stats
/// feed with `--dashboard-access key`): 401 without a known key, 403
/// without the scope, 429 past the key's rate.
pub(super) fn require_key(req: &Request, shared: &Shared, scope: Scope) -> Result<(), ApiError> {
    let key = identify(req, shared)?;
    admit(req, &key, scope)
}

/// Whether `key` may make the call: 403 without the scope, 429 past the
/// key's rate (taken once, on the node the backend called).
fn admit(req: &Request, key: &Key, scope: Scope) -> Result<(), ApiError> {
    if !key.allows(scope) {
        return Err(ApiError::Forbidden(format!(
            "API key {:?} lacks the {:?} scope",
            key.name,
            scope.word()
        )));
    }
    if !req.forwarded {
        key.take(Instant::now())
            .map_err(|retry_after_ms| ApiError::RateLimited {
                message: format!("API key {:?} is over its requests_per_s", key.name),
                retry_after_ms,
            })?;
    }
    Ok(())
}

async fn dispatch(
    req: &Request,
    shared: &Shared,
    method: &str,
    route: &str,
    key: &Key,
) -> ApiResult {
    match (method, route) {
        ("POST", "/api/backend/rooms") => create_room(req, shared).await,
        ("GET", "/api/backend/rooms/{id}") => get_room(req, shared).await,
        ("DELETE", "/api/backend/rooms/{id}") => delete_room(req, shared).await,
        ("GET", "/api/backend/rooms/{id}/messages") => history(req, shared).await,
        ("GET", "/api/backend/rooms/{id}/online") => online(req, shared).await,
        ("POST", "/api/backend/rooms/{id}/messages") => publish(req, shared, key).await,
        ("POST", "/api/backend/broadcast") => broadcast(req, shared, key).await,
        ("POST", "/api/backend/rooms/{id}/members") => add_member(req, shared).await,
        ("DELETE", "/api/backend/rooms/{id}/members/{user}") => remove_member(req, shared).await,
        ("PUT", "/api/backend/rooms/{id}/bans/{user}") => ban(req, shared, true).await,
        ("DELETE", "/api/backend/rooms/{id}/bans/{user}") => ban(req, shared, false).await,
        ("POST", "/api/backend/users/{user}/disconnect") => disconnect(req, shared).await,
        ("POST", "/api/backend/backup") => start_backup(req, shared).await,
        ("GET", "/api/backend/backup/{name}") => backup_state(req, shared),
        _ => unreachable!("scope_of admits only these"),
    }
}

/// Path segment `n` as an id (a number >= 1), named `what` in the error.
fn path_id(req: &Request, n: usize, what: &str) -> Result<u64, ApiError> {
    let raw = req.path.trim_matches('/').split('/').nth(n).unwrap_or("");
    raw.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("{what} id {raw:?} is not a number >= 1")))
}

fn room_in_path(req: &Request) -> Result<u64, ApiError> {
    path_id(req, 3, "room")
}

/// A user a call names: by id, registered name, or JWT subject (exactly
/// one). Unlike an invitation, a name that is unknown is 404: the backend
/// may know who exists.
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct Who {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
}

impl Who {
    /// The user's id. With `create`, a subject seen for the first time
    /// becomes a user, as its JWT would make it (the backend vouches for
    /// it); without, it is 404 like an unknown name.
    async fn resolve(self, shared: &Shared, create: bool) -> Result<u64, ApiError> {
        let accounts = Accounts::of(shared);
        match (self.user, self.name, self.subject) {
            (Some(0), None, None) => Err(ApiError::BadRequest("user ids start at 1".into())),
            (Some(id), None, None) => {
                let m = directory(shared);
                match blocking(move || m.user(id)).await? {
                    Some(_) => Ok(id),
                    None => Err(ApiError::NotFound(format!("user {id}"))),
                }
            }
            (None, Some(name), None) => match accounts.user_by_name(&name).await? {
                Some(u) => Ok(u.id),
                None => Err(ApiError::NotFound(format!("no user is named {name:?}"))),
            },
            (None, None, Some(sub)) if create => {
                accounts.ensure_external_user(&sub, auth::now_ms()).await
            }
            (None, None, Some(sub)) => {
                let m = directory(shared);
                let found = blocking(move || m.external_user(&sub)).await?;
                found
                    .map(|u| u.id)
                    .ok_or_else(|| ApiError::NotFound("no user has that subject".into()))
            }
            _ => Err(ApiError::BadRequest(
                "name exactly one of user (an id), name or subject".into(),
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRoom {
    name: String,
    #[serde(default)]
    private: bool,
    owner: Who,
}

/// `POST /api/backend/rooms`: a room owned by the user named (a room has
/// an owner; the server holds no role). 409 for a public room's name taken.
async fn create_room(req: &Request, shared: &Shared) -> ApiResult {
    let new: NewRoom = body(req)?;
    let owner = new.owner.resolve(shared, true).await?;
    let room = super::rooms::make_room(shared, &new.name, new.private, owner).await?;
    Ok(Response::json(201, &room_json(&room)))
}

/// `GET /api/backend/rooms/{id}`: any room, private ones included.
async fn get_room(req: &Request, shared: &Shared) -> ApiResult {
    let room = require_room(shared, room_in_path(req)?).await?;
    Ok(Response::json(200, &room_json(&room)))
}

/// `DELETE /api/backend/rooms/{id}`: deletes a room for good (answered
/// by its owner node): its messages, members, bans, invitations and
/// receipts; every subscription to it ends with `left {reason:
/// "deleted"}`. A public room's name is free again, and a direct
/// message's pair opens a new room next time; its id never is free.
async fn delete_room(req: &Request, shared: &Shared) -> ApiResult {
    let id = room_in_path(req)?;
    let m = directory(shared);
    let pair = blocking(move || m.dm_pair(id)).await?;
    let gone = shared.engine.delete_room(id).await?;
    match (&shared.cluster, gone.room.private, pair) {
        (Some(node), false, _) => node.release_room_name(&gone.room.name).await,
        (Some(node), true, Some((a, b))) => node.release_dm_room(a, b).await,
        _ => {}
    }
    Ok(Response::json(
        200,
        &json!({"room": room_json(&gone.room), "members": gone.members.len(),
                "messages": gone.messages}),
    ))
}

/// `GET /api/backend/rooms/{id}/messages?before=&after=&limit=`: a history
/// page of any room, as the user route gives it.
async fn history(req: &Request, shared: &Shared) -> ApiResult {
    let id = room_in_path(req)?;
    require_room(shared, id).await?;
    let q = PageQuery {
        before: query_u64(req, "before")?,
        after: query_u64(req, "after")?,
        limit: query_u64(req, "limit")?,
        bytes_max: req.forwarded.then(crate::cluster::answer_bytes_max),
        reader: None,
    };
    let (page, _) = history_page(shared, id, q).await?;
    Ok(Response::json(200, &page))
}

/// Room `id`, any room; 404 if it does not exist.
async fn require_room(shared: &Shared, id: u64) -> Result<Room, ApiError> {
    let m = directory(shared);
    blocking(move || m.room(id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("room {id}")))
}

/// `GET /api/backend/rooms/{id}/online`: the users with a subscription to
/// the room open, with their names: the [`ONLINE_USERS_MAX`] lowest ids,
/// and `more` when there are others.
async fn online(req: &Request, shared: &Shared) -> ApiResult {
    let id = room_in_path(req)?;
    require_room(shared, id).await?;
    let mut users = shared.engine.online(id).await?;
    users.sort_unstable();
    let more = users.len() > ONLINE_USERS_MAX;
    users.truncate(ONLINE_USERS_MAX);
    let m = directory(shared);
    let named = blocking(move || {
        users
            .into_iter()
            .map(|u| Ok((u, m.user(u)?.map(|x| x.name).unwrap_or_default())))
            .collect::<rookery_engine::Result<Vec<_>>>()
    })
    .await?;
    let users: Vec<Value> = named
        .into_iter()
        .map(|(u, name)| json!({"user": u, "name": name}))
        .collect();
    Ok(Response::json(
        200,
        &json!({"room": id, "users": users, "more": more}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    body: String,
    #[serde(default)]
    client_id: String,
    /// The user it is from; the server when absent.
    #[serde(default, rename = "as")]
    from: Option<Who>,
    /// The seq it replies to.
    #[serde(default)]
    reply_to: Option<u64>,
}

/// Who a publish is from: the user `as` names, or the server.
async fn sender(shared: &Shared, from: Option<Who>) -> Result<u64, ApiError> {
    match from {
        Some(who) => who.resolve(shared, false).await,
        None => Ok(SERVER_USER),
    }
}

/// The `client_id` a key's post is stored under: the key's tag before it,
/// so that two keys (posting as the same sender, the server) never take
/// each other's ids, nor a key a user's own.
fn keyed_client_id(key: &Key, client_id: &str) -> Result<String, ApiError> {
    if client_id.is_empty() {
        return Ok(String::new());
    }
    let max = rookery_engine::StorageConfig::new("").client_id_bytes_max - key.tag.len() - 1;
    if client_id.len() > max {
        return Err(ApiError::BadRequest(format!(
            "client_id is {} bytes; a server API post's is at most {max}",
            client_id.len()
        )));
    }
    Ok(format!("{}:{client_id}", key.tag))
}

/// `POST /api/backend/rooms/{id}/messages`: as the server (`from: 0`), in
/// any room; or `as` a member. 201, or 200 for a repeated `client_id` (of
/// the same key).
async fn publish(req: &Request, shared: &Shared, key: &Key) -> ApiResult {
    let id = room_in_path(req)?;
    let p: Publish = body(req)?;
    let client_id = keyed_client_id(key, &p.client_id)?;
    let from = sender(shared, p.from).await?;
    let ack = match p.reply_to {
        Some(to) => {
            shared
                .engine
                .reply(id, from, &client_id, &p.body, to)
                .await?
        }
        None => shared.engine.post(id, from, &client_id, &p.body).await?,
    };
    Ok(Response::json(
        if ack.duplicate { 200 } else { 201 },
        &json!({"room": id, "seq": ack.seq, "ts": ack.ts_ms, "duplicate": ack.duplicate, "from": from}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Broadcast {
    rooms: Vec<u64>,
    body: String,
    #[serde(default)]
    client_id: String,
    #[serde(default, rename = "as")]
    from: Option<Who>,
}

/// `POST /api/backend/broadcast`: one message to many rooms (at most
/// [`BROADCAST_ROOMS_MAX`], each once), each posted as by `publish` (in a
/// cluster, by the room's owner). 200 with one result per room, in the
/// order asked: the ack, or the error that room gave.
async fn broadcast(req: &Request, shared: &Shared, key: &Key) -> ApiResult {
    let b: Broadcast = body(req)?;
    if b.rooms.is_empty() || b.rooms.len() > BROADCAST_ROOMS_MAX {
        return Err(ApiError::BadRequest(format!(
            "rooms must list 1..={BROADCAST_ROOMS_MAX} rooms"
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(b.rooms.len());
    if let Some(dup) = b.rooms.iter().find(|r| **r == 0 || !seen.insert(**r)) {
        return Err(ApiError::BadRequest(format!(
            "room {dup} is listed twice or is not an id >= 1"
        )));
    }
    let client_id = keyed_client_id(key, &b.client_id)?;
    if b.rooms.len() > key.burst() as usize {
        return Err(ApiError::BadRequest(format!(
            "a broadcast to {} rooms costs as many of API key {:?}'s requests, more than its burst",
            b.rooms.len(),
            key.name
        )));
    }
    // A post per room: the call took one of the key's tokens, the other
    // rooms take theirs (the posts other nodes make for it take none).
    let extra = b.rooms.len() as u32 - 1;
    if extra > 0 && !req.forwarded {
        key.take_n(extra, Instant::now())
            .map_err(|retry_after_ms| match retry_after_ms {
                None => ApiError::Internal("a broadcast within the burst was refused".into()),
                Some(retry_after_ms) => ApiError::RateLimited {
                    message: format!(
                        "API key {:?} has not the {} requests a broadcast to {} rooms costs",
                        key.name,
                        b.rooms.len(),
                        b.rooms.len()
                    ),
                    retry_after_ms,
                },
            })?;
    }
    let from = sender(shared, b.from).await?;
    // What each room's post carries when it goes to another node: the
    // sender already resolved (the owner tags the client_id itself).
    let one = json!({
        "body": b.body,
        "client_id": b.client_id,
        "as": (from != SERVER_USER).then(|| Who { user: Some(from), ..Who::default() }),
    });
    let one = serde_json::to_vec(&strip_nulls(one)).expect("JSON serializes");
    let results: Vec<Value> = stream::iter(b.rooms.iter().copied())
        .map(|room| post_one(req, shared, room, from, &b.body, &client_id, &one))
        .buffered(BROADCAST_IN_FLIGHT_MAX)
        .collect()
        .await;
    Ok(Response::json(200, &json!({ "results": results })))
}

fn strip_nulls(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.retain(|_, x| !x.is_null());
    }
    v
}

/// One room's post of a broadcast, and its result.
async fn post_one(
    req: &Request,
    shared: &Shared,
    room: u64,
    from: u64,
    text: &str,
    client_id: &str,
    forwarded_body: &[u8],
) -> Value {
    let remote = Request {
        method: "POST".into(),
        path: format!("/api/backend/rooms/{room}/messages"),
        query: String::new(),
        headers: req.headers.clone(),
        body: forwarded_body.to_vec(),
        keep_alive: true,
        version: 1,
        peer: req.peer,
        proof: None,
        forwarded: false,
        node_ask: false,
    };
    let answer = match crate::cluster::forward::to_owner(&remote, shared).await {
        Some(resp) => serde_json::from_slice::<Value>(&resp.body)
            .map_err(|e| ApiError::Internal(format!("a node answered a broadcast with {e}"))),
        None => shared
            .engine
            .post(room, from, client_id, text)
            .await
            .map(|ack| json!({"room": room, "seq": ack.seq, "ts": ack.ts_ms, "duplicate": ack.duplicate}))
            .map_err(ApiError::from),
    };
    match answer {
        Ok(v) if v.get("error").is_some() => json!({"room": room, "error": v["error"]}),
        Ok(mut v) => {
            if let Value::Object(m) = &mut v {
                m.remove("from");
            }
            v
        }
        Err(e) => {
            let (_, code, message) = e.parts();
            json!({"room": room, "error": {"code": code, "message": message}})
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMember {
    user: Option<u64>,
    name: Option<String>,
    subject: Option<String>,
    #[serde(default)]
    role: Option<String>,
}

/// `POST /api/backend/rooms/{id}/members` `{"user"|"name"|"subject",
/// "role"?}`: makes the user a member (or admin) at once, with no
/// invitation; changes the role of a member. 409 for a banned user, 400
/// for `owner` (a room has one; its owner hands it on).
async fn add_member(req: &Request, shared: &Shared) -> ApiResult {
    let id = room_in_path(req)?;
    let NewMember {
        user,
        name,
        subject,
        role,
    } = body(req)?;
    let role = super::rooms::settable_role(role.as_deref().unwrap_or("member"))?;
    require_room(shared, id).await?;
    let target = Who {
        user,
        name,
        subject,
    }
    .resolve(shared, true)
    .await?;
    // The owner is 409 (decided in the transaction that would write it).
    let before = shared.engine.add_member(id, target, role).await?;
    Ok(Response::json(
        200,
        &json!({"room": id, "user": target, "role": role_word(role),
                "before": before.map(role_word)}),
    ))
}

/// `DELETE /api/backend/rooms/{id}/members/{user}`: removes a member (not
/// the owner: 403); their subscriptions end with `left {reason:
/// "removed"}`.
async fn remove_member(req: &Request, shared: &Shared) -> ApiResult {
    let (id, target) = (room_in_path(req)?, path_id(req, 5, "user")?);
    let m = shared
        .engine
        .membership(id, SERVER_USER, target, MemberOp::Remove)
        .await?;
    Ok(Response::json(
        200,
        &json!({"room": id, "user": target, "removed": m.changed()}),
    ))
}

/// `PUT /api/backend/rooms/{id}/bans/{user}` and `DELETE` (unban), with
/// the owner's powers: the owner is never banned (403).
async fn ban(req: &Request, shared: &Shared, on: bool) -> ApiResult {
    let (id, target) = (room_in_path(req)?, path_id(req, 5, "user")?);
    let op = if on { MemberOp::Ban } else { MemberOp::Unban };
    let m = shared
        .engine
        .membership(id, SERVER_USER, target, op)
        .await?;
    Ok(Response::json(
        200,
        &json!({"room": id, "user": target, "banned": on, "changed": m.changed()}),
    ))
}

/// `POST /api/backend/users/{user}/disconnect`: closes every WebSocket of
/// the user, on every node, with 4003 (docs/protocol.md). They may connect
/// again; to keep them out, end their sessions or stop minting their JWTs.
async fn disconnect(req: &Request, shared: &Shared) -> ApiResult {
    let target = path_id(req, 3, "user")?;
    let m = directory(shared);
    if blocking(move || m.user(target)).await?.is_none() {
        return Err(ApiError::NotFound(format!("user {target}")));
    }
    if !crate::cluster::notices::disconnect(shared, target) {
        return Err(ApiError::ClusterUnavailable(
            "the other nodes could not be told (NATS); this node's connections are closed".into(),
        ));
    }
    Ok(Response::json(
        202,
        &json!({"user": target, "disconnected": true}),
    ))
}

/// The body of `POST /api/backend/backup` (empty, or `{}`, names the
/// backup by the time).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    name: Option<String>,
}

/// `POST /api/backend/backup`: starts an online backup of this node's data
/// directory into `--backup-dir`, and answers 202 at once with its state
/// (`GET /api/backend/backup/{name}` follows it). 409 without
/// `--backup-dir` or while another runs, or when the name is taken.
async fn start_backup(req: &Request, shared: &Shared) -> ApiResult {
    use crate::backups::Refused;
    let b: BackupBody = if req.body.is_empty() {
        BackupBody::default()
    } else {
        body(req)?
    };
    // Off the reactor: it looks at the backup directory (a slow mount
    // must not stall the shard) and starts a thread.
    let (backups, engine) = (shared.backups.clone(), shared.engine.clone());
    let job = blocking(move || backups.start(engine, b.name.as_deref()))
        .await
        .map_err(|r| match r {
            Refused::Off => {
                ApiError::Conflict("backups are off: this server has no --backup-dir".into())
            }
            Refused::BadName(m) => ApiError::BadRequest(m),
            Refused::Busy(m) => ApiError::Conflict(m),
            Refused::Failed(m) => ApiError::Internal(m),
        })?;
    Ok(Response::json(202, &job.json()))
}

/// `GET /api/backend/backup/{name}`: a backup's state (running, done or
/// failed), while it runs and for the last 16 after.
fn backup_state(req: &Request, shared: &Shared) -> ApiResult {
    let name = req.path.rsplit('/').next().unwrap_or_default();
    match shared.backups.job(name) {
        Some(job) => Ok(Response::json(200, &job.json())),
        None => Err(ApiError::NotFound(format!("no recent backup {name:?}"))),
    }
}
