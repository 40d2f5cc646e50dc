//! Accounts and sessions: register, log in, log out, who am I.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, user, ApiError, ApiResult};
use crate::app::directory;
use crate::auth::{self, blocking};
use crate::http::{Request, Response};
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

pub(crate) async fn register(req: &Request, shared: &Shared) -> ApiResult {
    let c: Credentials = body(req)?;
    if let Some(ip) = req.peer {
        if !shared.limits.may_register(ip, std::time::Instant::now()) {
            return Err(ApiError::TooManyRequests(
                "too many registrations from your address; try again in a minute".into(),
            ));
        }
    }
    if c.password.is_empty() {
        return Err(ApiError::BadRequest("empty password".into()));
    }
    // A taken name costs no hashing.
    let (m, name) = (directory(shared), c.name.clone());
    if blocking(move || m.user_by_name(&name)).await?.is_some() {
        return Err(ApiError::Conflict(format!("user name {:?}", c.name)));
    }
    let password = c.password;
    let hash = shared
        .hashing
        .run(move || auth::hash_password(&password))
        .await??;
    let (m, name) = (directory(shared), c.name.clone());
    let id = blocking(move || m.create_user(&name, &hash, auth::now_ms())).await?;
    let s = auth::open_session(directory(shared), id, shared.cfg.session_ttl_ms()).await?;
    Ok(Response::json(201, &session_json(id, &c.name, &s)))
}

/// Logs in. Failed logins are limited per address and per account (past
/// either, 429 before any password is checked); the check runs on the
/// hashing pool; an unknown name is checked against a decoy hash, so it
/// costs what a wrong password costs (no user enumeration by timing).
pub(crate) async fn login(req: &Request, shared: &Shared) -> ApiResult {
    let c: Credentials = body(req)?;
    let now = std::time::Instant::now();
    let attempt = shared
        .logins
        .attempt(req.peer, &c.name, now)
        .map_err(|retry_after_ms| ApiError::RateLimited {
            message: "too many failed logins; retry later".into(),
            retry_after_ms,
        })?;
    let (m, name) = (directory(shared), c.name.clone());
    let user = blocking(move || m.user_by_name(&name)).await?;
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
        attempt.failed();
        return Err(ApiError::Unauthorized("wrong name or password".into()));
    };
    let s = auth::open_session(directory(shared), id, shared.cfg.session_ttl_ms()).await?;
    Ok(Response::json(200, &session_json(id, &c.name, &s)))
}

pub(crate) async fn logout(req: &Request, shared: &Shared) -> ApiResult {
    user(req, shared).await?;
    let token = auth::bearer(req).unwrap_or_default();
    auth::close_session(directory(shared), token).await?;
    Ok(Response::json(200, &json!({"logged_out": true})))
}

pub(crate) async fn me(req: &Request, shared: &Shared) -> ApiResult {
    let id = user(req, shared).await?;
    let m = directory(shared);
    let u = blocking(move || m.user(id))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("the session's user is gone".into()))?;
    Ok(Response::json(200, &json!({"user": u.id, "name": u.name})))
}
