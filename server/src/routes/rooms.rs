//! Rooms and members: list, create, show, join, leave, members, add and
//! remove (a room's admins).

use rookery_engine::{Role, Room};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, list_query, next_json, room_id, user, ApiError, ApiResult};
use crate::app::{
    directory, take_join_token, take_member_add_token, take_room_token, visible_room,
};
use crate::auth::blocking;
use crate::http::{Request, Response};
use crate::shared::Shared;

pub(crate) fn room_json(r: &Room) -> Value {
    json!({"id": r.id, "name": r.name, "private": r.private, "creator": r.creator,
           "created_ms": r.created_ms, "last_seq": r.last_seq})
}

/// `GET /api/rooms?after=&limit=`: a page of the rooms the user can see,
/// by id.
pub(crate) async fn list_rooms(req: &Request, shared: &Shared) -> ApiResult {
    let id = user(req, shared).await?;
    let (after, len) = list_query(req, shared)?;
    let m = directory(shared);
    let page = blocking(move || m.visible_rooms(id, after, len)).await?;
    let rooms: Vec<Value> = page.items.iter().map(room_json).collect();
    Ok(Response::json(
        200,
        &json!({ "rooms": rooms, "next": next_json(page.next) }),
    ))
}

#[derive(Deserialize)]
pub(crate) struct NewRoom {
    name: String,
    #[serde(default)]
    private: bool,
}

pub(crate) async fn create_room(req: &Request, shared: &Shared) -> ApiResult {
    let creator = user(req, shared).await?;
    let new: NewRoom = body(req)?;
    take_room_token(shared, creator)?;
    let id = shared
        .engine
        .create_room(&new.name, new.private, creator)
        .await?;
    let m = directory(shared);
    let room = blocking(move || m.room(id))
        .await?
        .ok_or_else(|| ApiError::Internal("a created room is missing".into()))?;
    Ok(Response::json(201, &room_json(&room)))
}

pub(crate) async fn get_room(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    let (room, role) = visible_room(shared, uid, id).await?;
    let mut v = room_json(&room);
    v["role"] = json!(role.map(role_name));
    Ok(Response::json(200, &v))
}

pub(crate) fn role_name(r: Role) -> &'static str {
    match r {
        Role::Member => "member",
        Role::Admin => "admin",
    }
}

/// Joins (public rooms; private ones are joined by invitation) or leaves.
pub(crate) async fn join(req: &Request, shared: &Shared, raw: &str, on: bool) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    take_join_token(shared, uid)?;
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

/// `GET /api/rooms/{id}/members?after=&limit=`: a page of the members,
/// by user id.
pub(crate) async fn members(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    let (after, len) = list_query(req, shared)?;
    visible_room(shared, uid, id).await?;
    let m = directory(shared);
    let (members, next) = blocking(move || {
        let page = m.members_page(id, after, len)?;
        let members = page
            .items
            .into_iter()
            .map(|(u, r)| {
                let name = m.user(u)?.map(|user| user.name).unwrap_or_default();
                Ok((u, r, name))
            })
            .collect::<rookery_engine::Result<Vec<_>>>()?;
        Ok::<_, rookery_engine::Error>((members, page.next))
    })
    .await?;
    let members: Vec<Value> = members
        .into_iter()
        .map(|(u, r, name)| json!({"user": u, "name": name, "role": role_name(r)}))
        .collect();
    Ok(Response::json(
        200,
        &json!({ "room": id, "members": members, "next": next_json(next) }),
    ))
}

#[derive(Deserialize)]
pub(crate) struct NewMember {
    /// The user, by id or by name.
    user: Option<u64>,
    name: Option<String>,
    #[serde(default)]
    role: Option<String>,
}

/// The caller must be an admin of the room (404 when they cannot see it).
pub(crate) async fn require_admin(shared: &Shared, uid: u64, id: u64) -> Result<Room, ApiError> {
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
pub(crate) async fn add_member(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    require_admin(shared, uid, id).await?;
    let body: NewMember = body(req)?;
    take_member_add_token(shared, uid)?;
    let role = match body.role.as_deref() {
        None | Some("member") => Role::Member,
        Some("admin") => Role::Admin,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "role must be member or admin, got {other:?}"
            )))
        }
    };
    let m = directory(shared);
    let member = blocking(move || -> rookery_engine::Result<_> {
        let found = match (body.user, body.name) {
            (Some(u), _) => m.user(u)?,
            (None, Some(name)) => m.user_by_name(&name)?,
            (None, None) => {
                return Err(rookery_engine::Error::InvalidInput(
                    "user (an id) or name is required".into(),
                ))
            }
        };
        Ok(found
            .ok_or_else(|| rookery_engine::Error::NotFound("no such user".into()))?
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
pub(crate) async fn remove_member(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
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
