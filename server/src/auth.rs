//! Identity: passwords (hashed and checked here with argon2id; the engine
//! and storage only ever hold the PHC string), opaque session tokens
//! (random, stored only as SHA-256 hashes, with expiry and logout) and
//! backend JWTs, over the engine's directory. Everything that touches the
//! directory or argon2 runs on glommio's blocking pool, never on a shard's
//! reactor.

use std::time::{SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use rookery_engine::{Error as EngineError, Result};
use sha2::{Digest, Sha256};

use crate::accounts::Accounts;
use crate::app::ApiError;
use crate::config::Config;
use crate::http::Request;

/// Bytes of randomness in a session token (shown to clients as hex).
const TOKEN_BYTES: usize = 32;

/// A session handed to a client.
pub struct Session {
    pub token: String,
    pub expires_ms: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The stored form of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

/// Runs blocking metadata work off the reactor.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    glommio::executor().spawn_blocking(f).await
}

/// The argon2id PHC string of `password` (tens of ms of CPU: call it off
/// the reactor).
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| EngineError::InvalidInput(format!("cannot hash the password: {e}")))
}

/// A hash of a random password, made once: what a login for a name
/// without a password is checked against, so it costs the same.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&new_token()).expect("argon2 hashes a random password"))
}

/// Whether `password` matches the stored PHC string (tens of ms of CPU).
/// A stored hash that does not parse matches nothing.
pub fn password_matches(stored: &str, password: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Starts a session for `user`.
pub async fn open_session(
    accounts: &Accounts,
    user: u64,
    ttl_ms: u64,
) -> Result<Session, ApiError> {
    let token = new_token();
    let hash = token_hash(&token);
    let expires_ms = now_ms().saturating_add(ttl_ms);
    accounts.create_session(hash, user, expires_ms).await?;
    Ok(Session { token, expires_ms })
}

/// The bearer token of a request: `Authorization: Bearer T`, else
/// `?token=T`.
pub fn bearer(req: &Request) -> Option<String> {
    if let Some(v) = req.header("authorization") {
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    req.query_param("token").map(str::to_string)
}

/// What a bearer token proved.
pub enum Identity {
    /// A live session or a valid JWT of this user.
    User(Proof),
    /// Neither; the reason, for the client.
    Refused(String),
}

/// Who a token stands for, until when, and how it can be ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Proof {
    pub user: u64,
    /// When the session or the JWT (`exp`) runs out, ms since the epoch.
    pub expires_ms: u64,
    /// The session's token hash; `None` for a JWT (which cannot be logged
    /// out: it ends at its `exp`, unless refreshed).
    pub session: Option<[u8; 32]>,
}

/// Claims of a JWT minted by an application backend: `sub` names the user
/// (created on first sight, without a password), `exp` is required.
#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// The user a bearer token stands for: a JWT (three dot-separated parts,
/// HS256 with `--jwt-secret`; `exp` required, `exp` and `nbf` checked with
/// `--jwt-leeway-s` of clock skew) or a session token.
pub async fn identify(
    accounts: &Accounts,
    cfg: &Config,
    token: String,
) -> Result<Identity, ApiError> {
    if token.split('.').count() == 3 {
        if cfg.jwt_secret.is_empty() {
            return Ok(Identity::Refused(
                "JWTs are not enabled (--jwt-secret)".into(),
            ));
        }
        let key = jsonwebtoken::DecodingKey::from_secret(cfg.jwt_secret.as_bytes());
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_nbf = true;
        validation.leeway = cfg.jwt_leeway_s;
        let claims = match jsonwebtoken::decode::<Claims>(&token, &key, &validation) {
            Ok(data) => data.claims,
            Err(e) => return Ok(Identity::Refused(format!("bad JWT: {e}"))),
        };
        let expires_ms = claims.exp.saturating_mul(1000);
        let id = accounts.ensure_external_user(&claims.sub, now_ms()).await;
        return match id {
            Ok(user) => Ok(Identity::User(Proof {
                user,
                expires_ms,
                session: None,
            })),
            Err(ApiError::BadRequest(m)) => Ok(Identity::Refused(format!("JWT sub: {m}"))),
            Err(e) => Err(e),
        };
    }
    let hash = token_hash(&token);
    Ok(match accounts.session(hash, now_ms()).await? {
        Some((user, expires_ms)) => Identity::User(Proof {
            user,
            expires_ms,
            session: Some(hash),
        }),
        None => Identity::Refused("the token is unknown or expired".into()),
    })
}

/// Ends a session; whether it existed.
pub async fn close_session(accounts: &Accounts, hash: [u8; 32]) -> Result<bool, ApiError> {
    accounts.delete_session(hash).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_argon2id_and_checked_here() {
        let hash = hash_password("hunter2").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(password_matches(&hash, "hunter2"));
        assert!(!password_matches(&hash, "hunter3"));
        assert!(!password_matches("$not-a-phc-string", "hunter2"));
        assert_ne!(hash, hash_password("hunter2").unwrap(), "salted");
    }

    #[test]
    fn tokens_are_random_hex_and_stored_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 2 * TOKEN_BYTES);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_ne!(token_hash(&a), token_hash(&b));
        assert_eq!(token_hash(&a), token_hash(&a.clone()));
    }

    #[test]
    fn bearer_comes_from_the_header_or_the_query() {
        let req = |headers: Vec<(&str, &str)>, query: &str| Request::get(&headers, query);
        assert_eq!(
            bearer(&req(vec![("authorization", "Bearer abc")], "")).as_deref(),
            Some("abc")
        );
        assert_eq!(
            bearer(&req(vec![("authorization", "bearer  x ")], "")).as_deref(),
            Some("x")
        );
        assert_eq!(bearer(&req(vec![("authorization", "Basic abc")], "")), None);
        assert_eq!(bearer(&req(vec![], "a=1&token=t9")).as_deref(), Some("t9"));
        assert_eq!(bearer(&req(vec![], "a=1")), None);
    }
}
