//! HTTP routes: the one place where requests become responses, and where
//! every error becomes the typed JSON body of docs/api.md
//! (`{"error":{"code","message"}}`) with its status. One module per
//! resource: accounts, rooms, messages, and the server's own routes.

mod accounts;
mod backend;
mod dms;
mod messages;
mod rooms;

pub(crate) mod search;
mod server;
pub(crate) mod uploads;
mod users;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::ApiError;
use crate::auth;
use crate::http::{Request, Response};
use crate::shared::Shared;

use accounts::{change_password, login, logout, me, register};
use messages::{history, mark_read, publish, react, receipts, thread, unread};
use rooms::{
    answer_invite, ban, bans, create_room, get_room, invite, join, list_rooms, members, my_invites,
    remove_member, set_role, transfer, withdraw,
};
use server::{index, metrics, no_upgrade, readyz, stats};

pub(crate) use dms::open_here as open_dm_here;

pub(crate) type ApiResult = Result<Response, ApiError>;

/// Answers one request.
pub async fn handle(req: &Request, shared: &Shared) -> Response {
    let mut resp = match cors_preflight(req, shared) {
        Some(r) => r,
        None => route(req, shared).await.unwrap_or_else(|e| e.response()),
    };
    // CORS: an allowed other origin may read the answer.
    if let Some(origin) = req.header("origin") {
        if shared.cfg.allowed_origins.is_empty() {
            return resp;
        }
        if crate::app::origin_allowed(shared, origin, None) {
            resp.headers
                .push(("access-control-allow-origin".into(), origin.into()));
            resp.headers.push(("vary".into(), "origin".into()));
        }
    }
    resp
}

/// Answers a request another node forwarded here: routed as any request,
/// with no CORS headers (the node the client talks to adds them).
pub async fn handle_forwarded(req: &Request, shared: &Shared) -> Response {
    route(req, shared).await.unwrap_or_else(|e| e.response())
}

/// The answer to a CORS preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`): 204 with what may be sent for an
/// allowed origin, 403 `forbidden_origin` for any other.
fn cors_preflight(req: &Request, shared: &Shared) -> Option<Response> {
    if req.method != "OPTIONS" || req.header("access-control-request-method").is_none() {
        return None;
    }
    let origin = req.header("origin")?;
    if !crate::app::origin_allowed(shared, origin, None) {
        return Some(Response::error(
            403,
            "forbidden_origin",
            "this origin is not in --allowed-origins",
        ));
    }
    let mut r = Response {
        status: 204,
        ..Response::default()
    };
    for (name, value) in [
        ("access-control-allow-methods", "GET, POST, PUT, DELETE"),
        (
            "access-control-allow-headers",
            "authorization, content-type, if-none-match",
        ),
        ("access-control-max-age", "600"),
    ] {
        r.headers.push((name.into(), value.into()));
    }
    Some(r)
}

async fn route(req: &Request, shared: &Shared) -> ApiResult {
    // HEAD is answered as GET; the connection leaves the body out.
    let method = match req.method.as_str() {
        "HEAD" => "GET",
        m => m,
    };
    let name = route_name(req);
    if name.starts_with("/api/backend/") {
        // The key is checked before a room's call goes to its owner.
        return backend::route(req, shared, method, name).await;
    }
    if shared.cluster.is_some() {
        if let Some(answer) = crate::cluster::forward::to_owner(req, shared).await {
            return Ok(answer);
        }
        if let Some(answer) = Box::pin(crate::cluster::gather::from_all(req, shared)).await {
            return Ok(answer);
        }
    }
    // The third path segment, where a route has a room id.
    let id = req.path.trim_matches('/').split('/').nth(2).unwrap_or("");
    match (method, name) {
        ("GET", "/api/server") => Ok(Response::json(200, &index(shared))),
        ("GET", "/api/stats") => stats(req, shared),
        ("GET", "/healthz") => Ok(Response::json(200, &json!({"status": "ok"}))),
        ("GET", "/readyz") => Ok(readyz(shared)),
        ("GET", "/metrics") => metrics(req, shared).await,
        ("POST", "/api/register") => register(req, shared).await,
        ("POST", "/api/login") => login(req, shared).await,
        ("POST", "/api/logout") => logout(req, shared).await,
        ("POST", "/api/password") => change_password(req, shared).await,
        ("GET", "/api/me") => me(req, shared).await,
        ("GET", "/api/me/unread") => unread(req, shared).await,
        ("PUT", "/api/me/profile") => users::set_mine(req, shared).await,
        ("GET", "/api/users") => users::search(req, shared).await,
        ("GET", "/api/search") => search::search(req, shared).await,
        ("GET", "/api/users/{id}") => users::get(req, shared, id).await,
        ("GET", "/api/users/{id}/avatar") => uploads::avatar(req, shared, id).await,
        ("GET", "/api/rooms") => list_rooms(req, shared).await,
        ("POST", "/api/rooms") => create_room(req, shared).await,
        ("GET", "/api/rooms/{id}") => get_room(req, shared, id).await,
        ("POST", "/api/rooms/{id}/join") => join(req, shared, id, true).await,
        ("POST", "/api/rooms/{id}/leave") => join(req, shared, id, false).await,
        ("GET", "/api/rooms/{id}/members") => members(req, shared, id).await,
        ("POST", "/api/rooms/{id}/members") => invite(req, shared, id).await,
        ("PUT", "/api/rooms/{id}/members/{user}") => set_role(req, shared, id).await,
        ("DELETE", "/api/rooms/{id}/members/{user}") => remove_member(req, shared, id).await,
        ("POST", "/api/rooms/{id}/owner") => transfer(req, shared, id).await,
        ("GET", "/api/rooms/{id}/bans") => bans(req, shared, id).await,
        ("PUT", "/api/rooms/{id}/bans/{user}") => ban(req, shared, id, true).await,
        ("DELETE", "/api/rooms/{id}/bans/{user}") => ban(req, shared, id, false).await,
        ("DELETE", "/api/rooms/{id}/invites/{user}") => withdraw(req, shared, id).await,
        ("GET", "/api/invites") => my_invites(req, shared).await,
        ("GET", "/api/dms") => dms::list(req, shared).await,
        ("POST", "/api/dms") => dms::open(req, shared).await,
        ("POST", "/api/invites/{room}/accept") => answer_invite(req, shared, id, true).await,
        ("POST", "/api/invites/{room}/decline") => answer_invite(req, shared, id, false).await,
        ("GET", "/api/rooms/{id}/messages") => history(req, shared, id).await,
        ("POST", "/api/rooms/{id}/messages") => publish(req, shared, id).await,
        ("GET", "/api/rooms/{id}/messages/{seq}/thread") => thread(req, shared, id).await,
        ("PUT", "/api/rooms/{id}/messages/{seq}/reactions/{emoji}") => {
            react(req, shared, id, true).await
        }
        ("DELETE", "/api/rooms/{id}/messages/{seq}/reactions/{emoji}") => {
            react(req, shared, id, false).await
        }
        ("POST", "/api/rooms/{id}/read") => mark_read(req, shared, id).await,
        ("POST", "/api/uploads") => Err(ApiError::BadRequest(
            "an upload is read as it arrives: send the file as the body, with a Content-Length"
                .into(),
        )),
        ("GET", "/api/uploads/{id}") => uploads::get(req, shared).await,
        ("DELETE", "/api/uploads/{id}") => uploads::remove(req, shared).await,
        ("GET", "/api/uploads/{id}/thumbnail") => uploads::thumbnail(req, shared).await,
        ("GET", "/api/rooms/{id}/receipts") => receipts(req, shared, id).await,
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
        ["api", "password"] => "/api/password",
        ["api", "me"] => "/api/me",
        ["api", "me", "unread"] => "/api/me/unread",
        ["api", "me", "profile"] => "/api/me/profile",
        ["api", "users"] => "/api/users",
        ["api", "search"] => "/api/search",
        ["api", "users", _] => "/api/users/{id}",
        ["api", "users", _, "avatar"] => "/api/users/{id}/avatar",
        ["api", "rooms"] => "/api/rooms",
        ["api", "rooms", _] => "/api/rooms/{id}",
        ["api", "rooms", _, "join"] => "/api/rooms/{id}/join",
        ["api", "rooms", _, "leave"] => "/api/rooms/{id}/leave",
        ["api", "rooms", _, "members"] => "/api/rooms/{id}/members",
        ["api", "rooms", _, "members", _] => "/api/rooms/{id}/members/{user}",
        ["api", "rooms", _, "owner"] => "/api/rooms/{id}/owner",
        ["api", "rooms", _, "bans"] => "/api/rooms/{id}/bans",
        ["api", "rooms", _, "bans", _] => "/api/rooms/{id}/bans/{user}",
        ["api", "rooms", _, "invites", _] => "/api/rooms/{id}/invites/{user}",
        ["api", "invites"] => "/api/invites",
        ["api", "dms"] => "/api/dms",
        ["api", "invites", _, "accept"] => "/api/invites/{room}/accept",
        ["api", "invites", _, "decline"] => "/api/invites/{room}/decline",
        ["api", "rooms", _, "messages"] => "/api/rooms/{id}/messages",
        ["api", "rooms", _, "messages", _, "thread"] => "/api/rooms/{id}/messages/{seq}/thread",
        ["api", "rooms", _, "messages", _, "reactions", _] => {
            "/api/rooms/{id}/messages/{seq}/reactions/{emoji}"
        }
        ["api", "rooms", _, "read"] => "/api/rooms/{id}/read",
        ["api", "uploads"] => "/api/uploads",
        ["api", "uploads", _] => "/api/uploads/{id}",
        ["api", "uploads", _, "thumbnail"] => "/api/uploads/{id}/thumbnail",
        ["api", "rooms", _, "receipts"] => "/api/rooms/{id}/receipts",
        ["api", "backend", ..] => backend::route_name(&segments).expect("a backend path"),
        _ => crate::assets::route(&req.path).unwrap_or("other"),
    }
}

/// The request body as JSON of type `T`.
pub(crate) fn body<T: for<'de> Deserialize<'de>>(req: &Request) -> Result<T, ApiError> {
    serde_json::from_slice(&req.body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))
}

/// The authenticated user, or 401.
pub(crate) async fn user(req: &Request, shared: &Shared) -> Result<u64, ApiError> {
    Ok(proof(req, shared).await?.user)
}

/// What the request's bearer token proves, or 401.
pub(crate) async fn proof(req: &Request, shared: &Shared) -> Result<auth::Proof, ApiError> {
    if let Some(p) = req.proof {
        return Ok(p);
    }
    let token = auth::bearer(req)
        .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
    let accounts = crate::accounts::Accounts::of(shared);
    match auth::identify(&accounts, &shared.cfg, token).await? {
        auth::Identity::User(p) => {
            shared.seen.note(p.user, auth::now_ms());
            Ok(p)
        }
        auth::Identity::Refused(why) => Err(ApiError::Unauthorized(why)),
    }
}

pub(crate) fn room_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("room id {raw:?} is not a number >= 1")))
}

/// The page a list request asks for: `after` (an id, 0 when absent) and
/// `limit` (1 to --list-page-len-max, 100 when absent).
pub(crate) fn list_query(req: &Request, shared: &Shared) -> Result<(u64, usize), ApiError> {
    let max = shared.cfg.list_page_len_max;
    let limit = query_u64(req, "limit")?.unwrap_or(LIST_PAGE_LEN_DEFAULT.min(max as u64));
    if limit == 0 || limit > max as u64 {
        return Err(ApiError::BadRequest(format!("limit must be 1..={max}")));
    }
    Ok((query_u64(req, "after")?.unwrap_or(0), limit as usize))
}

/// Items in a list page when the request does not say.
const LIST_PAGE_LEN_DEFAULT: u64 = 100;

/// The `next` of a list page: `{"after": id}` or null.
pub(crate) fn next_json(next: Option<u64>) -> Value {
    next.map_or(Value::Null, |after| json!({ "after": after }))
}

/// A query parameter, percent-decoded (`+` a space), if present.
pub(crate) fn query_text(req: &Request, name: &str) -> Option<String> {
    form_urlencoded::parse(req.query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A query parameter as a number, if present.
pub(crate) fn query_u64(req: &Request, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(raw) = req.query_param(name) else {
        return Ok(None);
    };
    raw.parse()
        .map(Some)
        .map_err(|_| ApiError::BadRequest(format!("{name}={raw:?} is not a number")))
}
