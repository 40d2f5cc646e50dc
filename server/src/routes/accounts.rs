//! Accounts and sessions: register, log in, log out, who am I.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, proof, user, ApiError, ApiResult};
use crate::accounts::Accounts;
use crate::app::directory;
use crate::auth::{self, blocking};
use crate::http::{Request, Response};
use crate::limits::Bucket;
use crate::shared::Shared;
use rookery_engine::User;

#[derive(Deserialize)]
pub(crate) struct Credentials {
    name: String,
    password: String,
}

pub(crate) fn session_json(user: u64, name: &str, s: &auth::Session) -> Value {
    json!({"user": user, "name": name, "token": s.token, "expires_ms": s.expires_ms})
}

/// A new password (registration, change) has at least
/// `--password-len-min` characters.
fn check_new_password(password: &str, shared: &Shared) -> Result<(), ApiError> {
    let min = shared.cfg.password_len_min;
    if password.chars().count() < min {
        return Err(ApiError::BadRequest(format!(
            "a password has at least {min} characters"
        )));
    }
    Ok(())
}

/// `POST /api/register` (403 with `--registration closed`). Names are
/// unique in any case; the name is kept as given.
pub(crate) async fn register(req: &Request, shared: &Shared) -> ApiResult {
    if shared.cfg.registration == crate::config::Registration::Closed {
        return Err(ApiError::Forbidden(
            "registration is closed on this server (--registration closed)".into(),
        ));
    }
    let c: Credentials = body(req)?;
    if let Some(ip) = req.peer {
        let key = crate::limits::key_of(&ip);
        if crate::rates::take(shared, Bucket::Registrations, key)
            .await
            .is_err()
        {
            return Err(ApiError::TooManyRequests(
                "too many registrations from your address; try again in a minute".into(),
            ));
        }
    }
    check_new_password(&c.password, shared)?;
    // A taken name costs no hashing.
    let (m, name) = (directory(shared), c.name.clone());
    if blocking(move || m.user_by_name(&name)).await?.is_some() {
        return Err(ApiError::Conflict(format!(
            "the name {:?} is taken; choose another",
            c.name
        )));
    }
    let password = c.password;
    let hash = shared
        .hashing
        .run(move || auth::hash_password(&password))
        .await??;
    let accounts = Accounts::of(shared);
    let id = accounts.create_user(&c.name, &hash, auth::now_ms()).await?;
    let s = auth::open_session(&accounts, id, shared.cfg.session_ttl_ms()).await?;
    Ok(Response::json(201, &session_json(id, &c.name, &s)))
}

/// Logs in. Failed logins are limited per address and per account (past
/// either, 429 before any password is checked); the check runs on the
/// hashing pool; an unknown name is checked against a decoy hash, so it
/// costs what a wrong password costs (no user enumeration by timing).
pub(crate) async fn login(req: &Request, shared: &Shared) -> ApiResult {
    let c: Credentials = body(req)?;
    // Per account in any case: `Alice` and `alice` are one account.
    let account = c.name.to_ascii_lowercase();
    if shared.cluster.is_some() {
        // The buckets are kept by their homes (crate::rates).
        let held = crate::rates::reserve_login(shared, req.peer, &account)
            .await
            .map_err(login_limited)?;
        let checked = check_login(shared, c).await;
        if !matches!(checked, Err(ApiError::Unauthorized(_))) {
            crate::rates::release_login(shared, held).await;
        }
        return checked;
    }
    let attempt = login_attempt(req, shared, &account)?;
    let checked = check_login(shared, c).await;
    if matches!(checked, Err(ApiError::Unauthorized(_))) {
        attempt.failed();
    }
    checked
}

/// Checks a login's password (a wrong one is `Unauthorized`); a session
/// when it matches.
async fn check_login(shared: &Shared, c: Credentials) -> ApiResult {
    let user = Accounts::of(shared).user_by_name(&c.name).await?;
    let display = user.as_ref().map_or(String::new(), |u| u.name.clone());
    let (id, hash) = match user {
        Some(User {
            id,
            password_hash: Some(hash),
            ..
        }) => (Some(id), hash),
        // A user a backend vouches for (no password) cannot log in.
        _ => (None, auth::decoy_hash().to_string()),
    };
    let password = c.password;
    let matches = shared
        .hashing
        .run(move || auth::password_matches(&hash, &password))
        .await?;
    let Some(id) = id.filter(|_| matches) else {
        return Err(ApiError::Unauthorized("wrong name or password".into()));
    };
    let s = auth::open_session(&Accounts::of(shared), id, shared.cfg.session_ttl_ms()).await?;
    Ok(Response::json(200, &session_json(id, &display, &s)))
}

/// A password check for account `name` from the request's client, within
/// the failed-login limits; 429 with `Retry-After` past them.
fn login_attempt(
    req: &Request,
    shared: &Shared,
    name: &str,
) -> Result<crate::limits::LoginAttempt, ApiError> {
    shared
        .logins
        .attempt(req.peer, name, std::time::Instant::now())
        .map_err(login_limited)
}

fn login_limited(retry_after_ms: u64) -> ApiError {
    ApiError::RateLimited {
        message: "too many failed logins; retry later".into(),
        retry_after_ms,
    }
}

/// `POST /api/logout` ends the request's session, `?all=true` every
/// session of its user; the WebSockets they authenticated are closed
/// (4001) by their shards' sweeps. A JWT cannot be logged out: it ends at
/// its `exp` (400).
pub(crate) async fn logout(req: &Request, shared: &Shared) -> ApiResult {
    let p = proof(req, shared).await?;
    let Some(hash) = p.session else {
        return Err(ApiError::BadRequest(
            "a JWT cannot be logged out: it ends at its exp (your backend stops renewing it)"
                .into(),
        ));
    };
    let all = match req.query_param("all") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "all={other:?}: true or false"
            )))
        }
    };
    let ended = if all {
        end_sessions(shared, p.user, None).await?
    } else {
        auth::close_session(&Accounts::of(shared), hash).await?;
        shared.revoked.end(hash, std::time::Instant::now());
        1
    };
    Ok(Response::json(
        200,
        &json!({"logged_out": true, "sessions": ended}),
    ))
}

/// Ends every session of `user` but `keep`, for every shard's sweep to
/// close their WebSockets; how many ended.
async fn end_sessions(
    shared: &Shared,
    user: u64,
    keep: Option<[u8; 32]>,
) -> Result<usize, ApiError> {
    let ended = Accounts::of(shared).delete_sessions_of(user, keep).await?;
    let now = std::time::Instant::now();
    for (hash, _) in &ended {
        shared.revoked.end(*hash, now);
    }
    Ok(ended.len())
}

#[derive(Deserialize)]
pub(crate) struct NewPassword {
    old: String,
    new: String,
}

/// `POST /api/password {old, new}`: changes the password of a registered
/// user (a session, not a JWT); every other session of the user ends, and
/// its WebSockets with it. A wrong `old` is a failed login (401, and it
/// counts against the failed-login limits).
pub(crate) async fn change_password(req: &Request, shared: &Shared) -> ApiResult {
    let p = proof(req, shared).await?;
    let change: NewPassword = body(req)?;
    check_new_password(&change.new, shared)?;
    let (m, id) = (directory(shared), p.user);
    let u = blocking(move || m.user(id))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("the session's user is gone".into()))?;
    let (Some(stored), Some(session)) = (u.password_hash, p.session) else {
        return Err(ApiError::BadRequest(
            "this user signs in through a backend's JWT and has no password".into(),
        ));
    };
    let attempt = login_attempt(req, shared, &u.name.to_ascii_lowercase())?;
    let (old, new) = (change.old, change.new);
    let hashed = shared
        .hashing
        .run(move || {
            if auth::password_matches(&stored, &old) {
                auth::hash_password(&new).map(Some)
            } else {
                Ok(None)
            }
        })
        .await??;
    let Some(hash) = hashed else {
        attempt.failed();
        return Err(ApiError::Unauthorized("wrong password".into()));
    };
    Accounts::of(shared).set_password(id, &hash).await?;
    let ended = end_sessions(shared, id, Some(session)).await?;
    Ok(Response::json(
        200,
        &json!({"changed": true, "sessions_ended": ended}),
    ))
}

pub(crate) async fn me(req: &Request, shared: &Shared) -> ApiResult {
    let id = user(req, shared).await?;
    let m = directory(shared);
    let u = blocking(move || m.user(id))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("the session's user is gone".into()))?;
    Ok(Response::json(
        200,
        &json!({"user": u.id, "name": u.name, "external": u.external()}),
    ))
}
