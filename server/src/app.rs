//! What HTTP routes and WebSocket frames share: the errors a client sees
//! (`ApiError`, each with its status and code) and the use cases both
//! protocols offer (who may see a room, the send rate, a history page).
//! Neither `routes` nor `ws` depends on the other; both depend on this.

use rookery_engine::{Cursor, Directory, Error as EngineError, Order, Room, Standing};

use crate::auth::blocking;
use crate::http::Response;
use crate::limits::Bucket;
use crate::protocol::HistoryPage;
use crate::shared::Shared;

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
    /// 403 `banned`: banned from the room.
    Banned(String),
    /// 405: the path exists, the method does not.
    MethodNotAllowed(String),
    /// 409: the name is taken, or the room's state does not allow it.
    Conflict(String),
    /// 413 `too_large`: an upload over `--upload-bytes-max`.
    TooLarge(String),
    /// 413 `quota_exceeded`: an upload past what is left of its user's
    /// `--upload-quota-bytes`.
    QuotaExceeded(String),
    /// 415 `unsupported_media_type`: an upload whose bytes are not the
    /// media type its `Content-Type` names.
    UnsupportedMediaType(String),
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
    /// 503 `room_unavailable`: the node that owns the room does not answer
    /// (down, or past the forwarding deadline); retry in a second.
    RoomUnavailable(String),
    /// 503 `cluster_unavailable`: NATS cannot be reached, so what needs the
    /// cluster (sign-in, rooms of other nodes) waits; retry in a second.
    ClusterUnavailable(String),
    /// What a room's owner (another node) refused an operation with, as it
    /// said it.
    Remote {
        status: u16,
        code: &'static str,
        message: String,
    },
    /// 500: a fault on our side (logged; the client gets no detail).
    Internal(String),
}

impl ApiError {
    pub(crate) fn response(&self) -> Response {
        let (status, code, message) = self.parts();
        let mut resp = Response::error(status, code, &message);
        let retry_after_ms = match self {
            ApiError::RateLimited { retry_after_ms, .. } => Some(*retry_after_ms),
            ApiError::RoomUnavailable(_) | ApiError::ClusterUnavailable(_) => Some(1000),
            _ => None,
        };
        if let Some(ms) = retry_after_ms {
            let seconds = ms.div_ceil(1000).max(1);
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
            ApiError::Banned(m) => (403, "banned", m.as_str()),
            ApiError::MethodNotAllowed(m) => (405, "method_not_allowed", m.as_str()),
            ApiError::Conflict(m) => (409, "conflict", m.as_str()),
            ApiError::TooLarge(m) => (413, "too_large", m.as_str()),
            ApiError::QuotaExceeded(m) => (413, "quota_exceeded", m.as_str()),
            ApiError::UnsupportedMediaType(m) => (415, "unsupported_media_type", m.as_str()),
            ApiError::TooManyRequests(m) => (429, "rate_limited", m.as_str()),
            ApiError::RateLimited { message, .. } => (429, "rate_limited", message.as_str()),
            ApiError::TooManyRooms(m) => (429, "too_many_rooms", m.as_str()),
            ApiError::Unavailable(m) => (503, "unavailable", m.as_str()),
            ApiError::RoomUnavailable(m) => (503, "room_unavailable", m.as_str()),
            ApiError::ClusterUnavailable(m) => (503, "cluster_unavailable", m.as_str()),
            ApiError::Remote {
                status,
                code,
                message,
            } => (*status, *code, message.as_str()),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "request failed");
                (500, "internal", "internal error")
            }
        };
        (status, code, message.to_string())
    }
}

/// The error code a forwarded answer carries, as this node counts it (a
/// code it does not know counts as `other`).
pub(crate) fn error_code(code: &str) -> &'static str {
    const CODES: [&str; 16] = [
        "bad_request",
        "too_large",
        "quota_exceeded",
        "unsupported_media_type",
        "unauthorized",
        "forbidden",
        "not_found",
        "banned",
        "method_not_allowed",
        "conflict",
        "rate_limited",
        "too_many_rooms",
        "unavailable",
        "room_unavailable",
        "cluster_unavailable",
        "internal",
    ];
    CODES.into_iter().find(|c| *c == code).unwrap_or("other")
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(m) => ApiError::NotFound(m),
            EngineError::AlreadyExists(m) => ApiError::Conflict(m),
            EngineError::Forbidden(m) => ApiError::Forbidden(m),
            EngineError::Banned(m) => ApiError::Banned(m),
            EngineError::Conflict(m) => ApiError::Conflict(m),
            EngineError::InvalidInput(m) => ApiError::BadRequest(m),
            EngineError::RateLimited(m) => ApiError::TooManyRequests(m),
            EngineError::TooLarge(m) => ApiError::TooLarge(m),
            EngineError::Busy(m) => ApiError::Unavailable(m),
            EngineError::ShutDown => ApiError::Unavailable("shutting down".into()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Upload ids as clients send them (32 hex digits each), at most
/// `FILES_PER_MESSAGE_MAX`.
pub(crate) fn upload_ids(ids: &[String]) -> Result<Vec<u128>, ApiError> {
    let max = rookery_engine::FILES_PER_MESSAGE_MAX;
    if ids.len() > max {
        return Err(ApiError::BadRequest(format!(
            "a message carries at most {max} files"
        )));
    }
    ids.iter()
        .map(|id| {
            (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u128::from_str_radix(id, 16).ok())
                .flatten()
                .ok_or_else(|| ApiError::BadRequest(format!("{id:?} is not an upload id")))
        })
        .collect()
}

/// Takes a send token for `user` (--sends-per-user-per-s, shared by the
/// HTTP API and every WebSocket of the user, on every node).
pub(crate) async fn take_send_token(shared: &Shared, user: u64) -> Result<(), ApiError> {
    let message = || {
        let c = &shared.cfg;
        format!(
            "at most {} messages a second (burst {})",
            c.sends_per_user_per_s, c.sends_per_user_burst
        )
    };
    take_token(shared, Bucket::Sends, user, message).await
}

/// Takes a join/leave token for `user` (--joins-per-user-per-s, shared by
/// HTTP and every WebSocket of the user).
pub(crate) async fn take_join_token(shared: &Shared, user: u64) -> Result<(), ApiError> {
    let message = || {
        let n = shared.cfg.joins_per_user_per_s;
        format!("at most {n} joins and leaves a second")
    };
    take_token(shared, Bucket::Joins, user, message).await
}

/// Takes a room-creation token for `user` (--rooms-per-user-per-min).
pub(crate) async fn take_room_token(shared: &Shared, user: u64) -> Result<(), ApiError> {
    let message = || {
        let n = shared.cfg.rooms_per_user_per_min;
        format!("at most {n} new rooms a minute")
    };
    take_token(shared, Bucket::RoomsCreated, user, message).await
}

/// Takes an invitation token for `user` (--member-adds-per-user-per-min).
pub(crate) async fn take_member_add_token(shared: &Shared, user: u64) -> Result<(), ApiError> {
    let message = || {
        let n = shared.cfg.member_adds_per_user_per_min;
        format!("at most {n} invitations a minute")
    };
    take_token(shared, Bucket::MemberAdds, user, message).await
}

/// Takes a directory token for `user` (a user search or a profile change,
/// --directory-calls-per-user-per-min).
pub(crate) async fn take_directory_token(shared: &Shared, user: u64) -> Result<(), ApiError> {
    let message = || {
        let n = shared.cfg.directory_calls_per_user_per_min;
        format!("at most {n} searches (of users or messages) and profile changes a minute")
    };
    take_token(shared, Bucket::Directory, user, message).await
}

/// One token of `user`'s `bucket`, or `rate_limited` (429 with
/// `Retry-After`).
async fn take_token(
    shared: &Shared,
    bucket: Bucket,
    user: u64,
    message: impl FnOnce() -> String,
) -> Result<(), ApiError> {
    crate::rates::take(shared, bucket, user)
        .await
        .map_err(|retry_after_ms| ApiError::RateLimited {
            message: message(),
            retry_after_ms,
        })
}

/// The room and `user`'s standing in it, if they may see it (public, a
/// member, invited, or banned: a banned user is told why); 404 otherwise,
/// so that private rooms do not reveal that they exist.
pub(crate) async fn visible_room(
    shared: &Shared,
    user: u64,
    id: u64,
) -> Result<(Room, Standing), ApiError> {
    let m = directory(shared);
    let (room, standing) = blocking(move || -> rookery_engine::Result<_> {
        let room = m.room(id)?;
        let standing = match &room {
            Some(_) => m.standing(id, user)?,
            None => Standing::default(),
        };
        Ok((room, standing))
    })
    .await?;
    match room {
        Some(r) if !r.private || standing.role.is_some() || standing.invited || standing.banned => {
            Ok((r, standing))
        }
        _ => Err(ApiError::NotFound(format!("room {id}"))),
    }
}

/// The room, if `user` may read it: a member, or anyone not banned for a
/// public room (403 `banned` for the banned; 404 for a private room they
/// are not in).
pub(crate) async fn readable_room(
    shared: &Shared,
    user: u64,
    id: u64,
) -> Result<(Room, Standing), ApiError> {
    let (room, standing) = visible_room(shared, user, id).await?;
    match standing {
        Standing { role: Some(_), .. } => Ok((room, standing)),
        Standing { banned: true, .. } => {
            Err(ApiError::Banned(format!("you are banned from room {id}")))
        }
        _ if room.private => Err(ApiError::NotFound(format!("room {id}"))),
        _ => Ok((room, standing)),
    }
}

/// What a history page asks for (an HTTP query or a WebSocket frame).
pub(crate) struct PageQuery {
    pub before: Option<u64>,
    pub after: Option<u64>,
    /// Messages; 50 when absent, at most `--history-page-len-max`.
    pub limit: Option<u64>,
    /// Bytes of JSON the page may take, when it has to cross NATS (asked
    /// through another node): it is cut short, its `next` cursor going on.
    pub bytes_max: Option<usize>,
    /// Whom the page is for (its reactions say whether they have each on).
    pub reader: Option<u64>,
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
    let page = shared.engine.history_of(room, cursor, q.reader).await?;
    let cached = page.cached;
    let mut page = HistoryPage { room, page };
    if let Some(bytes_max) = q.bytes_max {
        page.fit(bytes_max, order, limit as usize);
    }
    Ok((page, cached))
}

/// The engine's directory (accounts, sessions, rooms, members).
pub(crate) fn directory(shared: &Shared) -> Directory {
    shared.engine.directory()
}

/// Whether a browser page of `origin` may use this server: listed in
/// `--allowed-origins` (or `*` is), or the server's own (its scheme-less
/// host and port equal the request's `Host`).
pub(crate) fn origin_allowed(shared: &Shared, origin: &str, host: Option<&str>) -> bool {
    let listed = shared
        .cfg
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin));
    let own = origin
        .split_once("://")
        .is_some_and(|(_, authority)| host.is_some_and(|h| authority.eq_ignore_ascii_case(h)));
    listed || own
}
