//! HTTP routes: the one place where requests become responses, and where
//! every error becomes the typed JSON body of docs/api.md
//! (`{"error":{"code","message"}}`) with its status.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rookery_engine::storage::meta::Room;
use rookery_engine::storage::{self, Meta, Role};
use serde::Deserialize;
use serde_json::{json, Value};

use rookery_engine::{Cursor, Error as EngineError, Order};
use sha2::{Digest, Sha256};

use crate::auth::{self, blocking};
use crate::http::{Request, Response};
use crate::protocol::HistoryPage;
use crate::serve::Shared;

/// Why a request failed, as the client sees it.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the body or a parameter is not what the route takes.
    BadRequest(String),
    /// 401: no valid session.
    Unauthorized(String),
    /// 403: authenticated, not allowed.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 405: the path exists, the method does not.
    MethodNotAllowed(String),
    /// 409: the name is taken.
    Conflict(String),
    /// 429: a rate limit refused it.
    TooManyRequests(String),
    /// 429: the sender's token bucket is empty; a token comes in
    /// `retry_after_ms`.
    RateLimited {
        message: String,
        retry_after_ms: u64,
    },
    /// 429: the connection has joined --ws-rooms-per-connection-max rooms.
    TooManyRooms(String),
    /// 503: shutting down, or a queue is full.
    Unavailable(String),
    /// 500: a fault on our side (logged; the client gets no detail).
    Internal(String),
}

impl ApiError {
    fn response(&self) -> Response {
        let (status, code, message) = self.parts();
        let mut resp = Response::error(status, code, &message);
        if let ApiError::RateLimited { retry_after_ms, .. } = self {
            let seconds = retry_after_ms.div_ceil(1000).max(1);
            resp.headers
                .push(("retry-after".into(), seconds.to_string()));
        }
        resp
    }

    /// Status, error code and message (a fault on our side is logged here
    /// and shows no detail).
    pub fn parts(&self) -> (u16, &'static str, String) {
        let (status, code, message) = match self {
            ApiError::BadRequest(m) => (400, "bad_request", m.as_str()),
            ApiError::Unauthorized(m) => (401, "unauthorized", m.as_str()),
            ApiError::Forbidden(m) => (403, "forbidden", m.as_str()),
            ApiError::NotFound(m) => (404, "not_found", m.as_str()),
            ApiError::MethodNotAllowed(m) => (405, "method_not_allowed", m.as_str()),
            ApiError::Conflict(m) => (409, "conflict", m.as_str()),
            ApiError::TooManyRequests(m) => (429, "rate_limited", m.as_str()),
            ApiError::RateLimited { message, .. } => (429, "rate_limited", message.as_str()),
            ApiError::TooManyRooms(m) => (429, "too_many_rooms", m.as_str()),
            ApiError::Unavailable(m) => (503, "unavailable", m.as_str()),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "request failed");
                (500, "internal", "internal error")
            }
        };
        (status, code, message.to_string())
    }
}

impl From<storage::Error> for ApiError {
    fn from(e: storage::Error) -> Self {
        match e {
            storage::Error::InvalidInput(m) => ApiError::BadRequest(m),
            storage::Error::NotFound(m) => ApiError::NotFound(m),
            storage::Error::AlreadyExists(m) => ApiError::Conflict(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Storage(s) => s.into(),
            EngineError::NotFound(m) => ApiError::NotFound(m),
            EngineError::Forbidden(m) => ApiError::Forbidden(m),
            EngineError::InvalidInput(m) => ApiError::BadRequest(m),
            EngineError::RateLimited(m) => ApiError::TooManyRequests(m),
            EngineError::Busy(m) => ApiError::Unavailable(m),
            EngineError::ShutDown => ApiError::Unavailable("shutting down".into()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

type ApiResult = Result<Response, ApiError>;

/// Takes a send token for `user` (--sends-per-user-per-s, shared by the
/// HTTP API and every WebSocket of the user).
pub(crate) fn take_send_token(shared: &Shared, user: u64) -> Result<(), ApiError> {
    shared
        .sends
        .take(user, std::time::Instant::now())
        .map_err(|retry_after_ms| ApiError::RateLimited {
            message: format!(
                "at most {} messages a second (burst {})",
                shared.cfg.sends_per_user_per_s, shared.cfg.sends_per_user_burst
            ),
            retry_after_ms,
        })
}

/// Answers one request.
pub async fn handle(req: &Request, shared: &Shared) -> Response {
    route(req, shared).await.unwrap_or_else(|e| e.response())
}

async fn route(req: &Request, shared: &Shared) -> ApiResult {
    // The third path segment, where a route has a room id.
    let id = req.path.trim_matches('/').split('/').nth(2).unwrap_or("");
    // HEAD is answered as GET; the connection leaves the body out.
    let method = match req.method.as_str() {
        "HEAD" => "GET",
        m => m,
    };
    match (method, route_name(req)) {
        ("GET", "/api/server") => Ok(Response::json(200, &index(shared))),
        ("GET", "/api/stats") => stats(req, shared),
        ("GET", "/healthz") => Ok(Response::json(200, &json!({"status": "ok"}))),
        ("GET", "/readyz") => Ok(readyz(shared)),
        ("GET", "/metrics") => metrics(shared).await,
        ("POST", "/api/register") => register(req, shared).await,
        ("POST", "/api/login") => login(req, shared).await,
        ("POST", "/api/logout") => logout(req, shared).await,
        ("GET", "/api/me") => me(req, shared).await,
        ("GET", "/api/me/unread") => unread(req, shared).await,
        ("GET", "/api/rooms") => list_rooms(req, shared).await,
        ("POST", "/api/rooms") => create_room(req, shared).await,
        ("GET", "/api/rooms/{id}") => get_room(req, shared, id).await,
        ("POST", "/api/rooms/{id}/join") => join(req, shared, id, true).await,
        ("POST", "/api/rooms/{id}/leave") => join(req, shared, id, false).await,
        ("GET", "/api/rooms/{id}/members") => members(req, shared, id).await,
        ("POST", "/api/rooms/{id}/members") => add_member(req, shared, id).await,
        ("DELETE", "/api/rooms/{id}/members/{user}") => remove_member(req, shared, id).await,
        ("GET", "/api/rooms/{id}/messages") => history(req, shared, id).await,
        ("POST", "/api/rooms/{id}/messages") => publish(req, shared, id).await,
        ("POST", "/api/rooms/{id}/read") => mark_read(req, shared, id).await,
        ("GET", "/ws") => Ok(no_upgrade()),
        ("GET", "/echo") if shared.cfg.echo_endpoint => Ok(no_upgrade()),
        (_, "/echo") if !shared.cfg.echo_endpoint => {
            Err(ApiError::NotFound(format!("no route for {}", req.path)))
        }
        ("GET", path) if crate::assets::route(path).is_some() => crate::assets::serve(req)
            .ok_or_else(|| ApiError::Internal(format!("asset {path} vanished"))),
        (_, "other") => Err(ApiError::NotFound(format!("no route for {}", req.path))),
        _ => Err(ApiError::MethodNotAllowed(format!(
            "{method} is not allowed on {}",
            req.path
        ))),
    }
}

/// The route pattern of a request's path: what `route` dispatches on and
/// the label it is counted under in `/metrics` (a bounded set: ids in paths
/// are not labels). `other` when no route has that path.
pub fn route_name(req: &Request) -> &'static str {
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "server"] => "/api/server",
        ["api", "stats"] => "/api/stats",
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        ["metrics"] => "/metrics",
        ["ws"] => "/ws",
        ["echo"] => "/echo",
        ["api", "register"] => "/api/register",
        ["api", "login"] => "/api/login",
        ["api", "logout"] => "/api/logout",
        ["api", "me"] => "/api/me",
        ["api", "me", "unread"] => "/api/me/unread",
        ["api", "rooms"] => "/api/rooms",
        ["api", "rooms", _] => "/api/rooms/{id}",
        ["api", "rooms", _, "join"] => "/api/rooms/{id}/join",
        ["api", "rooms", _, "leave"] => "/api/rooms/{id}/leave",
        ["api", "rooms", _, "members"] => "/api/rooms/{id}/members",
        ["api", "rooms", _, "members", _] => "/api/rooms/{id}/members/{user}",
        ["api", "rooms", _, "messages"] => "/api/rooms/{id}/messages",
        ["api", "rooms", _, "read"] => "/api/rooms/{id}/read",
        _ => crate::assets::route(&req.path).unwrap_or("other"),
    }
}

/// `GET /api/stats?after=MS`: the dashboard's feed, every sample that
/// ends after `after` (all kept samples without it), oldest first.
fn stats(req: &Request, shared: &Shared) -> ApiResult {
    let after = query_u64(req, "after")?.unwrap_or(0);
    let samples = shared
        .stats
        .lock()
        .map_err(|_| ApiError::Internal("stats feed poisoned".into()))?
        .since(after);
    Ok(Response::json(
        200,
        &json!({
            "interval_ms": shared.cfg.stats_interval_ms,
            "samples_max": shared.cfg.stats_samples_max,
            "shards": shared.engine.shards(),
            "samples": samples,
        }),
    ))
}

/// `GET /api/server`: what this server is and where its endpoints are.
fn index(shared: &Shared) -> Value {
    json!({
        "server": "rookery",
        "version": env!("CARGO_PKG_VERSION"),
        "shards": shared.engine.shards(),
        "endpoints": {
            "web_client": "/",
            "dashboard": "/dashboard",
            "stats": "/api/stats",
            "websocket": "/ws",
            "api": "/api/register, /api/login, /api/rooms, /api/me/unread",
            "health": "/healthz",
            "ready": "/readyz",
            "metrics": "/metrics",
        },
        "history_page_len_max": shared.cfg.history_page_len_max,
        "deflate": !shared.cfg.no_deflate,
        "echo": shared.cfg.echo_endpoint,
    })
}

/// A WebSocket endpoint asked for without an upgrade.
fn no_upgrade() -> Response {
    Response::error(
        400,
        "bad_upgrade",
        "this endpoint takes a WebSocket upgrade (Upgrade: websocket)",
    )
}

/// `GET /metrics`: Prometheus (OpenMetrics) text, summed over shards.
async fn metrics(shared: &Shared) -> ApiResult {
    let m = shared.engine.metrics_async().await?;
    let text = crate::metrics::render(&m, &shared.http, &shared.limits, &shared.sends)
        .map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    Ok(Response {
        status: 200,
        headers: vec![(
            "content-type".into(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8".into(),
        )],
        body: text.into_bytes(),
        error_code: None,
    })
}

/// Ready once the engine runs and this shard serves; 503 while stopping.
fn readyz(shared: &Shared) -> Response {
    if shared.stopping.load(Ordering::Relaxed) {
        return Response::error(503, "stopping", "the server is shutting down");
    }
    Response::json(
        200,
        &json!({"status": "ready", "shard": shared.shard, "shards": shared.engine.shards()}),
    )
}

/// The request body as JSON of type `T`.
fn body<T: for<'de> Deserialize<'de>>(req: &Request) -> Result<T, ApiError> {
    serde_json::from_slice(&req.body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))
}

fn meta(shared: &Shared) -> Arc<Meta> {
    shared.engine.meta().clone()
}

/// The authenticated user, or 401.
async fn user(req: &Request, shared: &Shared) -> Result<u64, ApiError> {
    let token = auth::bearer(req)
        .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
    match auth::identify(meta(shared), &shared.cfg.jwt_secret, token).await? {
        auth::Identity::User(id) => Ok(id),
        auth::Identity::Refused(why) => Err(ApiError::Unauthorized(why)),
    }
}

#[derive(Deserialize)]
struct Credentials {
    name: String,
    password: String,
}

fn session_json(user: u64, name: &str, s: &auth::Session) -> Value {
    json!({"user": user, "name": name, "token": s.token, "expires_ms": s.expires_ms})
}

async fn register(req: &Request, shared: &Shared) -> ApiResult {
    let c: Credentials = body(req)?;
    if let Some(ip) = req.peer {
        if !shared.limits.may_register(ip, std::time::Instant::now()) {
            return Err(ApiError::TooManyRequests(
                "too many registrations from your address; try again in a minute".into(),
            ));
        }
    }
    let m = meta(shared);
    let (name, password) = (c.name.clone(), c.password);
    let id = blocking(move || m.create_user(&name, &password, auth::now_ms())).await?;
    let s = auth::open_session(meta(shared), id, shared.cfg.session_ttl_ms()).await?;
    Ok(Response::json(201, &session_json(id, &c.name, &s)))
}

async fn login(req: &Request, shared: &Shared) -> ApiResult {
    let c: Credentials = body(req)?;
    let m = meta(shared);
    let (name, password) = (c.name.clone(), c.password);
    let id = blocking(move || m.verify_password(&name, &password))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("wrong name or password".into()))?;
    let s = auth::open_session(meta(shared), id, shared.cfg.session_ttl_ms()).await?;
    Ok(Response::json(200, &session_json(id, &c.name, &s)))
}

async fn logout(req: &Request, shared: &Shared) -> ApiResult {
    user(req, shared).await?;
    let token = auth::bearer(req).unwrap_or_default();
    auth::close_session(meta(shared), token).await?;
    Ok(Response::json(200, &json!({"logged_out": true})))
}

async fn me(req: &Request, shared: &Shared) -> ApiResult {
    let id = user(req, shared).await?;
    let m = meta(shared);
    let u = blocking(move || m.user(id))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("the session's user is gone".into()))?;
    Ok(Response::json(200, &json!({"user": u.id, "name": u.name})))
}

fn room_json(r: &Room) -> Value {
    json!({"id": r.id, "name": r.name, "private": r.private, "creator": r.creator,
           "created_ms": r.created_ms, "last_seq": r.last_seq})
}

async fn list_rooms(req: &Request, shared: &Shared) -> ApiResult {
    let id = user(req, shared).await?;
    let m = meta(shared);
    let rooms = blocking(move || m.visible_rooms(id)).await?;
    let rooms: Vec<Value> = rooms.iter().map(room_json).collect();
    Ok(Response::json(200, &json!({ "rooms": rooms })))
}

#[derive(Deserialize)]
struct NewRoom {
    name: String,
    #[serde(default)]
    private: bool,
}

async fn create_room(req: &Request, shared: &Shared) -> ApiResult {
    let creator = user(req, shared).await?;
    let new: NewRoom = body(req)?;
    let id = shared
        .engine
        .create_room(&new.name, new.private, creator)
        .await?;
    let m = meta(shared);
    let room = blocking(move || m.room(id))
        .await?
        .ok_or_else(|| ApiError::Internal("a created room is missing".into()))?;
    Ok(Response::json(201, &room_json(&room)))
}

fn room_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("room id {raw:?} is not a number >= 1")))
}

/// The room, if `user` may see it (public, or a member); 404 otherwise, so
/// that private rooms do not reveal that they exist.
pub(crate) async fn visible_room(
    shared: &Shared,
    user: u64,
    id: u64,
) -> Result<(Room, Option<Role>), ApiError> {
    let m = meta(shared);
    let (room, role) = blocking(move || -> storage::Result<_> {
        let room = m.room(id)?;
        let role = match &room {
            Some(_) => m.member_role(id, user)?,
            None => None,
        };
        Ok((room, role))
    })
    .await?;
    match room {
        Some(r) if !r.private || role.is_some() => Ok((r, role)),
        _ => Err(ApiError::NotFound(format!("room {id}"))),
    }
}

async fn get_room(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    let (room, role) = visible_room(shared, uid, id).await?;
    let mut v = room_json(&room);
    v["role"] = json!(role.map(role_name));
    Ok(Response::json(200, &v))
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Member => "member",
        Role::Admin => "admin",
    }
}

/// Joins (public rooms; private ones are joined by invitation) or leaves.
async fn join(req: &Request, shared: &Shared, raw: &str, on: bool) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    let (room, role) = visible_room(shared, uid, id).await?;
    if on && room.private && role.is_none() {
        return Err(ApiError::Forbidden(format!(
            "room {} is private",
            room.name
        )));
    }
    let engine = &shared.engine;
    let changed = match (on, role) {
        // Already a member: joining again changes nothing (nor the role).
        (true, Some(_)) => false,
        (true, None) => engine.add_member(id, uid, Role::Member).await?.is_none(),
        // Leaving a private room ends the user's open subscriptions to it.
        (false, _) => engine.remove_member(id, uid).await?.is_some(),
    };
    Ok(Response::json(
        200,
        &json!({"room": id, "member": on, "changed": changed}),
    ))
}

async fn members(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    visible_room(shared, uid, id).await?;
    let m = meta(shared);
    let members = blocking(move || {
        m.members(id)?
            .into_iter()
            .map(|(u, r)| {
                let name = m.user(u)?.map(|user| user.name).unwrap_or_default();
                Ok((u, r, name))
            })
            .collect::<Result<Vec<_>, storage::Error>>()
    })
    .await?;
    let members: Vec<Value> = members
        .into_iter()
        .map(|(u, r, name)| json!({"user": u, "name": name, "role": role_name(r)}))
        .collect();
    Ok(Response::json(
        200,
        &json!({ "room": id, "members": members }),
    ))
}

#[derive(Deserialize)]
struct NewMember {
    /// The user, by id or by name.
    user: Option<u64>,
    name: Option<String>,
    #[serde(default)]
    role: Option<String>,
}

/// The caller must be an admin of the room (404 when they cannot see it).
async fn require_admin(shared: &Shared, uid: u64, id: u64) -> Result<Room, ApiError> {
    match visible_room(shared, uid, id).await? {
        (room, Some(Role::Admin)) => Ok(room),
        _ => Err(ApiError::Forbidden(format!(
            "only an admin of room {id} manages its members"
        ))),
    }
}

/// `POST /api/rooms/{id}/members` (admins): adds a user (by `user` id or
/// `name`) as `member` (default) or `admin`, or changes their role. This
/// is how users get into private rooms.
async fn add_member(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    require_admin(shared, uid, id).await?;
    let body: NewMember = body(req)?;
    let role = match body.role.as_deref() {
        None | Some("member") => Role::Member,
        Some("admin") => Role::Admin,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "role must be member or admin, got {other:?}"
            )))
        }
    };
    let m = meta(shared);
    let member = blocking(move || -> storage::Result<_> {
        let found = match (body.user, body.name) {
            (Some(u), _) => m.user(u)?,
            (None, Some(name)) => m.user_by_name(&name)?,
            (None, None) => {
                return Err(storage::Error::InvalidInput(
                    "user (an id) or name is required".into(),
                ))
            }
        };
        Ok(found
            .ok_or_else(|| storage::Error::NotFound("no such user".into()))?
            .id)
    })
    .await?;
    // Through the room's owner, which keeps who may post current.
    let changed = shared.engine.add_member(id, member, role).await? != Some(role);
    Ok(Response::json(
        200,
        &json!({"room": id, "user": member, "role": role_name(role), "changed": changed}),
    ))
}

/// `DELETE /api/rooms/{id}/members/{user}` (admins): removes a member. In
/// a private room the removed user's open subscriptions end too, each
/// with `left {reason: "removed"}` before any later event of the room.
async fn remove_member(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    require_admin(shared, uid, id).await?;
    let target: u64 = req
        .path
        .trim_matches('/')
        .split('/')
        .nth(4)
        .and_then(|u| u.parse().ok())
        .ok_or_else(|| ApiError::BadRequest("the user id in the path is not a number".into()))?;
    if target == uid {
        return Err(ApiError::BadRequest(
            "leave the room instead of removing yourself".into(),
        ));
    }
    // In a private room the owner ends the user's open subscriptions too.
    let removed = shared.engine.remove_member(id, target).await?.is_some();
    Ok(Response::json(
        200,
        &json!({"room": id, "user": target, "removed": removed}),
    ))
}

/// A query parameter as a number, if present.
fn query_u64(req: &Request, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(raw) = req.query_param(name) else {
        return Ok(None);
    };
    raw.parse()
        .map(Some)
        .map_err(|_| ApiError::BadRequest(format!("{name}={raw:?} is not a number")))
}

/// What a history page asks for (an HTTP query or a WebSocket frame).
pub(crate) struct PageQuery {
    pub before: Option<u64>,
    pub after: Option<u64>,
    /// Messages; 50 when absent, at most `--history-page-len-max`.
    pub limit: Option<u64>,
}

/// A page of a room's history (`protocol::HistoryPage`), newest first
/// (before a seq, or the latest) or oldest first after a seq, and whether
/// it was served from memory.
pub(crate) async fn history_page(
    shared: &Shared,
    room: u64,
    q: PageQuery,
) -> Result<(HistoryPage, bool), ApiError> {
    let max = shared.cfg.history_page_len_max;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > max as u64 {
        return Err(ApiError::BadRequest(format!("limit must be 1..={max}")));
    }
    let order = if q.after.is_some() {
        Order::OldestFirst
    } else {
        Order::NewestFirst
    };
    let cursor = Cursor {
        after: q.after,
        before: q.before,
        limit: limit as usize,
        order,
    };
    let page = shared.engine.history(room, cursor).await?;
    let cached = page.cached;
    Ok((HistoryPage { room, page }, cached))
}

/// `GET /api/rooms/{id}/messages?before=&after=&limit=`: a history page
/// with an `ETag` (and 304 when `If-None-Match` has it) and `X-Cache: HIT`
/// when the page came from memory.
async fn history(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    visible_room(shared, uid, id).await?;
    let q = PageQuery {
        before: query_u64(req, "before")?,
        after: query_u64(req, "after")?,
        limit: query_u64(req, "limit")?,
    };
    let (body, cached) = history_page(shared, id, q).await?;
    let mut resp = Response::json(200, &body);
    let digest = Sha256::digest(&resp.body);
    let etag = format!("\"{}\"", auth::hex(&digest[..16]));
    let cache = if cached { "HIT" } else { "MISS" };
    if req.header("if-none-match") == Some(etag.as_str()) {
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
struct Publish {
    body: String,
    #[serde(default)]
    client_id: String,
}

/// `POST /api/rooms/{id}/messages`: publish (from a backend or a client);
/// a repeated `client_id` answers the original seq.
async fn publish(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    visible_room(shared, uid, id).await?;
    let p: Publish = body(req)?;
    take_send_token(shared, uid)?;
    let ack = shared.engine.post(id, uid, &p.client_id, &p.body).await?;
    Ok(Response::json(
        if ack.duplicate { 200 } else { 201 },
        &json!({"room": id, "seq": ack.seq, "ts": ack.ts_ms, "duplicate": ack.duplicate}),
    ))
}

#[derive(Deserialize)]
struct ReadMark {
    seq: u64,
}

/// `POST /api/rooms/{id}/read`: the user has read up to `seq`.
async fn mark_read(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    visible_room(shared, uid, id).await?;
    let mark: ReadMark = body(req)?;
    let stored = shared.engine.mark_read(id, uid, mark.seq).await?;
    Ok(Response::json(200, &json!({"room": id, "seq": stored})))
}

/// `GET /api/me/unread`: unread counts of the rooms the user is a member
/// of, each from its room's owner (the owner's last seq is current; the
/// copy in `meta.redb` trails it by the index's lag).
async fn unread(req: &Request, shared: &Shared) -> ApiResult {
    let uid = user(req, shared).await?;
    let m = meta(shared);
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
