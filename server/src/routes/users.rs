//! The user directory, for signed-in users only: a user's profile
//! (`GET /api/users/{id}`), one's own (`PUT /api/me/profile`), and the
//! search of users by the prefixes of their names' words
//! (`GET /api/users?q=`). Searches and profile changes share one rate
//! limit per user (`--directory-calls-per-user-per-min`).

use rookery_engine::{Profile, SearchCursor};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, query_text, user, ApiError, ApiResult};
use crate::app::{directory, take_directory_token};
use crate::auth::blocking;
use crate::http::{Request, Response};
use crate::shared::Shared;

/// Bytes of a search query, at most.
const QUERY_BYTES_MAX: usize = 200;

/// Users in one page of a search when the request does not say.
const SEARCH_PAGE_LEN_DEFAULT: usize = 20;

pub(crate) fn profile_json(p: &Profile) -> Value {
    json!({"id": p.user, "name": p.name, "external": p.external,
           "display_name": p.display_name, "status": p.status, "updated_ms": p.updated_ms,
           "avatar_url": p.avatar.map(|id| avatar_url(p.user, id)),
           "last_seen_ms": p.last_seen_ms / LAST_SEEN_GRAIN_MS * LAST_SEEN_GRAIN_MS})
}

/// How precisely the directory says when someone was last seen: to the
/// minute (anyone signed in may ask; seconds would trace a person's
/// every move).
pub const LAST_SEEN_GRAIN_MS: u64 = 60_000;

/// Where user `user`'s avatar (upload `id`) is served: its thumbnail,
/// never the original (whose id would read the whole file, metadata and
/// all). The `v` changes with the avatar, so the response may be cached
/// for good; it does not reveal the upload's id.
fn avatar_url(user: u64, id: u128) -> String {
    use sha2::{Digest, Sha256};
    let tag = Sha256::digest(id.to_be_bytes());
    format!("/api/users/{user}/avatar?v={}", crate::auth::hex(&tag[..6]))
}

/// A user id from a path segment: a number >= 1, else 400.
pub(crate) fn user_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("user id {raw:?} is not a number >= 1")))
}

/// `GET /api/users?q=&after=&limit=`: a page of the users whose name or
/// display name has, for every word of `q`, a word beginning with it.
pub(crate) async fn search(req: &Request, shared: &Shared) -> ApiResult {
    let uid = user(req, shared).await?;
    let q = query_text(req, "q").unwrap_or_default();
    let words = rookery_engine::Directory::query_words(&q).len();
    let most = rookery_engine::QUERY_WORDS_MAX;
    if q.len() > QUERY_BYTES_MAX || !(1..=most).contains(&words) {
        return Err(ApiError::BadRequest(format!(
            "q must be 1..={QUERY_BYTES_MAX} bytes holding 1..={most} words to look for"
        )));
    }
    let after = query_text(req, "after")
        .map(|a| cursor_from(&a))
        .transpose()?;
    let len = match query_text(req, "limit") {
        None => SEARCH_PAGE_LEN_DEFAULT.min(shared.cfg.list_page_len_max),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=shared.cfg.list_page_len_max).contains(n))
            .ok_or_else(|| {
                let max = shared.cfg.list_page_len_max;
                ApiError::BadRequest(format!("limit must be 1..={max}"))
            })?,
    };
    take_directory_token(shared, uid).await?;
    let m = directory(shared);
    let page = blocking(move || m.search_users(&q, after.as_ref(), len)).await?;
    let users: Vec<Value> = page.users.iter().map(profile_json).collect();
    let next = page
        .next
        .map_or(Value::Null, |c| json!({ "after": cursor_text(&c) }));
    Ok(Response::json(
        200,
        &json!({ "users": users, "next": next }),
    ))
}

/// A search's cursor as the API shows it: the word in hex, a dot, the
/// user id (plain ASCII, whatever the word's script).
fn cursor_text(c: &SearchCursor) -> String {
    let hex: String = c.word.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.{}", c.user)
}

fn cursor_from(text: &str) -> Result<SearchCursor, ApiError> {
    let bad = || ApiError::BadRequest(format!("after={text:?} is not a cursor this server gave"));
    let (hex, user) = text.split_once('.').ok_or_else(bad)?;
    if hex.len() % 2 != 0 || hex.len() > 2 * rookery_engine::WORD_BYTES_MAX {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    Ok(SearchCursor {
        word: String::from_utf8(bytes).map_err(|_| bad())?,
        user: user.parse().map_err(|_| bad())?,
    })
}

/// `GET /api/users/{id}`: a user's profile; 404 for none.
pub(crate) async fn get(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    user(req, shared).await?;
    let id = user_id(raw)?;
    let m = directory(shared);
    match blocking(move || m.profile(id)).await? {
        Some(p) => Ok(Response::json(200, &profile_json(&p))),
        None => Err(ApiError::NotFound(format!("user {id}"))),
    }
}

#[derive(Deserialize)]
pub(crate) struct NewProfile {
    display_name: Option<String>,
    status: Option<String>,
    /// An image upload of the caller's (32 hex digits); "" clears it.
    avatar: Option<String>,
}

impl NewProfile {
    /// The avatar change asked for: `Some(None)` clears it.
    fn avatar(&self) -> Result<Option<Option<u128>>, ApiError> {
        match self.avatar.as_deref() {
            None => Ok(None),
            Some("") => Ok(Some(None)),
            Some(hex) => crate::app::upload_ids(&[hex.to_string()]).map(|ids| Some(Some(ids[0]))),
        }
    }
}

/// `PUT /api/me/profile {"display_name"?, "status"?, "avatar"?}`: changes
/// what is given ("" clears it) and keeps the rest; 200 the profile. An
/// avatar is the id of an image upload of the caller's (in a cluster, on
/// any node: this one keeps a copy). On one node
/// the change is made in one transaction; in a cluster it is made at the
/// revision of the profile it read (again when another change came
/// first), recorded in the users bucket and applied here before the
/// answer.
pub(crate) async fn set_mine(req: &Request, shared: &Shared) -> ApiResult {
    let uid = user(req, shared).await?;
    let new: NewProfile = body(req)?;
    // Refused before a token is spent, and before the cluster records it.
    rookery_engine::Directory::check_profile(
        new.display_name.as_deref().unwrap_or(""),
        new.status.as_deref().unwrap_or(""),
    )?;
    let avatar = new.avatar()?;
    take_directory_token(shared, uid).await?;
    let now = crate::auth::now_ms();
    if let Some(node) = &shared.cluster {
        if let Some(Some(id)) = avatar {
            // Checked here, once this node has the upload (the others
            // record the id as they are told, and serve it from here).
            crate::cluster::uploads::bring(shared, uid, None, &[id]).await?;
            let uploads = shared.engine.uploads();
            let up = blocking(move || uploads.get(id)).await?;
            match up {
                Some(up) if up.owner == uid && up.thumb_bytes > 0 => {}
                Some(up) if up.owner == uid => {
                    return Err(ApiError::BadRequest(
                        "an avatar is an image (PNG, JPEG, GIF or WebP)".into(),
                    ))
                }
                _ => return Err(ApiError::NotFound(format!("upload {id:032x}"))),
            }
        }
        let m = directory(shared);
        let current = blocking(move || m.profile(uid))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("user {uid}")))?;
        node.edit_profile(&current, new.display_name, new.status, avatar, now)
            .await?;
    } else {
        let m = directory(shared);
        blocking(move || {
            let edit = rookery_engine::ProfileEdit {
                display_name: new.display_name.as_deref(),
                status: new.status.as_deref(),
                avatar,
            };
            m.edit_profile(uid, &edit, now)
        })
        .await?;
    }
    let m = directory(shared);
    let p = blocking(move || m.profile(uid))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {uid}")))?;
    Ok(Response::json(200, &profile_json(&p)))
}
