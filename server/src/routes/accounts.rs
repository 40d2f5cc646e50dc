//! Accounts and sessions: register, log in, log out, who am I.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, user, ApiError, ApiResult};
use crate::app::directory;
use crate::auth::{self, blocking};
use crate::http::{Request, Response};
use crate::shared::Shared;
use rookery_engine::Error as EngineError;

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
    let m = directory(shared);
    let (name, password) = (c.name.clone(), c.password);
    let id = blocking(move || -> rookery_engine::Result<u64> {
        if password.is_empty() {
            return Err(EngineError::InvalidInput("empty password".into()));
        }
        // A taken name costs no hashing.
        if m.user_by_name(&name)?.is_some() {
            return Err(EngineError::AlreadyExists(format!("user name {name:?}")));
        }
        let hash = auth::hash_password(&password)?;
        m.create_user(&name, &hash, auth::now_ms())
    })
    .await?;
    let s = auth::open_session(directory(shared), id, shared.cfg.session_ttl_ms()).await?;
    Ok(Response::json(201, &session_json(id, &c.name, &s)))
}

pub(crate) async fn login(req: &Request, shared: &Shared) -> ApiResult {
    let c: Credentials = body(req)?;
    let m = directory(shared);
    let (name, password) = (c.name.clone(), c.password);
    let id = blocking(move || -> rookery_engine::Result<Option<u64>> {
        let Some(user) = m.user_by_name(&name)? else {
            return Ok(None);
        };
        // A user a backend vouches for (no password) cannot log in.
        Ok(user
            .password_hash
            .is_some_and(|hash| auth::password_matches(&hash, &password))
            .then_some(user.id))
    })
    .await?
    .ok_or_else(|| ApiError::Unauthorized("wrong name or password".into()))?;
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
