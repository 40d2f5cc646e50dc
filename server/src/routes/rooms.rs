//! Rooms and standing in them: list, create, show; join and leave;
//! members, roles and ownership; invitations; bans. Every change of
//! standing goes through `Engine::membership` and its rules (docs/security.md
//! tables them); this module parses requests and shapes answers.

use rookery_engine::{role_word, MemberOp, Membership, Role, Room};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, list_query, next_json, room_id, user, ApiError, ApiResult};
use crate::app::{
    directory, readable_room, take_join_token, take_member_add_token, take_room_token, visible_room,
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

/// `POST /api/rooms`: the caller becomes its owner. A public room's name
/// is unique (in any case) among public rooms: 409 when one has it; a
/// private room's name need not be unique, so a name taken by a private
/// room never shows.
pub(crate) async fn create_room(req: &Request, shared: &Shared) -> ApiResult {
    let creator = user(req, shared).await?;
    let new: NewRoom = body(req)?;
    take_room_token(shared, creator).await?;
    let room = make_room(shared, &new.name, new.private, creator).await?;
    Ok(Response::json(201, &room_json(&room)))
}

/// Makes a room owned by `creator`; the room. In a cluster a public name
/// is claimed cluster-wide first, and given back if the room cannot be
/// made.
pub(super) async fn make_room(
    shared: &Shared,
    name: &str,
    private: bool,
    creator: u64,
) -> Result<Room, ApiError> {
    let claimed = match (&shared.cluster, private) {
        (Some(node), false) => Some(node.claim_room_name(name).await?),
        _ => None,
    };
    let id = match (new_room(shared, name, private, creator).await, claimed) {
        (Ok(id), _) => id,
        (Err(e), Some(node)) => {
            node.release_room_name(name).await;
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    };
    let m = directory(shared);
    blocking(move || m.room(id))
        .await?
        .ok_or_else(|| ApiError::Internal("a created room is missing".into()))
}

/// Makes the room; its id. In a cluster the cluster hands out the id: one
/// above every room's so far.
async fn new_room(
    shared: &Shared,
    name: &str,
    private: bool,
    creator: u64,
) -> Result<u64, ApiError> {
    let engine = &shared.engine;
    Ok(match &shared.cluster {
        Some(node) => {
            let id = node.next_id("room").await?;
            engine
                .create_room_with_id(id, name, private, creator)
                .await?
        }
        None => engine.create_room(name, private, creator).await?,
    })
}

/// `GET /api/rooms/{id}`: the room and the caller's standing (`role`,
/// `invited`, `banned`).
pub(crate) async fn get_room(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    let (room, standing) = visible_room(shared, uid, id).await?;
    let mut v = room_json(&room);
    v["role"] = json!(standing.role.map(role_word));
    v["invited"] = json!(standing.invited);
    v["banned"] = json!(standing.banned);
    Ok(Response::json(200, &v))
}

/// Runs a change of standing through the room's owner and its rules. An
/// admin's changes of others take a join token (invitations take their
/// own, by the caller).
async fn change(
    shared: &Shared,
    room: u64,
    actor: u64,
    target: u64,
    op: MemberOp,
) -> Result<Membership, ApiError> {
    if !op.is_own() && op != MemberOp::Invite {
        take_join_token(shared, actor).await?;
    }
    Ok(shared.engine.membership(room, actor, target, op).await?)
}

/// `POST /api/rooms/{id}/join` (a public room, or a private one the
/// caller is invited to; never changes a role) and `/leave` (the owner
/// hands ownership on first: 409).
pub(crate) async fn join(req: &Request, shared: &Shared, raw: &str, on: bool) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    take_join_token(shared, uid).await?;
    let op = if on { MemberOp::Join } else { MemberOp::Leave };
    let m = change(shared, id, uid, uid, op).await?;
    Ok(Response::json(
        200,
        &json!({"room": id, "member": on, "changed": m.changed()}),
    ))
}

/// `GET /api/rooms/{id}/members?after=&limit=`: a page of the members,
/// by user id.
pub(crate) async fn members(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    let (after, len) = list_query(req, shared)?;
    readable_room(shared, uid, id).await?;
    let m = directory(shared);
    let (members, next) = blocking(move || {
        let page = m.members_page(id, after, len)?;
        let members = page
            .items
            .into_iter()
            .map(|(u, r)| Ok((u, r, user_label(&m, u)?)))
            .collect::<rookery_engine::Result<Vec<_>>>()?;
        Ok::<_, rookery_engine::Error>((members, page.next))
    })
    .await?;
    let members: Vec<Value> = members
        .into_iter()
        .map(|(u, r, (name, external))| {
            json!({"user": u, "name": name, "external": external, "role": role_word(r)})
        })
        .collect();
    Ok(Response::json(
        200,
        &json!({ "room": id, "members": members, "next": next_json(next) }),
    ))
}

/// A user's name and whether a backend vouches for them (blocking).
pub(super) fn user_label(
    m: &rookery_engine::Directory,
    id: u64,
) -> rookery_engine::Result<(String, bool)> {
    Ok(m.user(id)?
        .map(|u| (u.name.clone(), u.external()))
        .unwrap_or_default())
}

/// Whom a request names: a user id, a registered name, or a JWT subject.
#[derive(Deserialize)]
pub(crate) struct Who {
    user: Option<u64>,
    name: Option<String>,
    subject: Option<String>,
}

impl Who {
    /// The user's id; 0 (no user) when a name or subject is unknown, so
    /// that the answer does not tell.
    pub(super) async fn resolve(self, shared: &Shared) -> Result<u64, ApiError> {
        let m = directory(shared);
        blocking(move || -> rookery_engine::Result<u64> {
            let found = match (self.user, self.name, self.subject) {
                (Some(u), _, _) => return Ok(u),
                (None, Some(name), _) => m.user_by_name(&name)?,
                (None, None, Some(sub)) => m.external_user(&sub)?,
                (None, None, None) => {
                    return Err(rookery_engine::Error::InvalidInput(
                        "name the user: user (an id), name or subject".into(),
                    ))
                }
            };
            Ok(found.map_or(0, |u| u.id))
        })
        .await
        .map_err(ApiError::from)
    }
}

/// `POST /api/rooms/{id}/members` (admins and the owner): invites a user
/// (by `user` id, registered `name` or JWT `subject`). 202 with the same
/// answer whether the user exists, is new to the room, already invited or
/// already in: ids and names cannot be probed. The invitee gets an
/// `invited` event on their open WebSockets and accepts or declines.
pub(crate) async fn invite(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    let who: Who = body(req)?;
    take_member_add_token(shared, uid).await?;
    let target = who.resolve(shared).await?;
    let m = change(shared, id, uid, target, MemberOp::Invite).await?;
    if m.change.invite == Some(true) {
        notify_invited(shared, id, uid, target).await?;
    }
    Ok(Response::json(202, &json!({"room": id, "invited": true})))
}

/// Queues the `invited` event for the invitee's open WebSockets.
async fn notify_invited(shared: &Shared, room: u64, by: u64, target: u64) -> Result<(), ApiError> {
    let m = directory(shared);
    let (r, (by_name, _)) =
        blocking(move || -> rookery_engine::Result<_> { Ok((m.room(room)?, user_label(&m, by)?)) })
            .await?;
    let Some(r) = r else {
        return Ok(());
    };
    let frame = crate::protocol::ServerFrame::Invited {
        room,
        name: r.name,
        private: r.private,
        by,
        by_name,
    }
    .text(None);
    crate::cluster::notices::notify(shared, target, frame);
    Ok(())
}

/// The user id in the path (`/api/rooms/{id}/…/{user}`).
fn path_user(req: &Request) -> Result<u64, ApiError> {
    req.path
        .trim_matches('/')
        .split('/')
        .nth(4)
        .and_then(|u| u.parse().ok())
        .ok_or_else(|| ApiError::BadRequest("the user id in the path is not a number".into()))
}

/// `DELETE /api/rooms/{id}/members/{user}`: removes a member of a lower
/// rank (admins and the owner). Their open subscriptions end with `left
/// {reason: "removed"}`; they may join a public room again (ban them to
/// keep them out).
pub(crate) async fn remove_member(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id, target) = (user(req, shared).await?, room_id(raw)?, path_user(req)?);
    let m = change(shared, id, uid, target, MemberOp::Remove).await?;
    Ok(Response::json(
        200,
        &json!({"room": id, "user": target, "removed": m.changed()}),
    ))
}

#[derive(Deserialize)]
struct NewRole {
    role: String,
}

/// `PUT /api/rooms/{id}/members/{user}` `{"role": "member"|"admin"}`:
/// admins make members admins; the owner also makes admins members.
pub(crate) async fn set_role(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id, target) = (user(req, shared).await?, room_id(raw)?, path_user(req)?);
    let NewRole { role } = body(req)?;
    let role = settable_role(&role)?;
    let m = change(shared, id, uid, target, MemberOp::SetRole(role)).await?;
    Ok(Response::json(
        200,
        &json!({"room": id, "user": target, "role": role_word(role), "changed": m.changed()}),
    ))
}

/// A role a call may set by its word: `member` or `admin` (ownership is
/// handed on, never set).
pub(super) fn settable_role(word: &str) -> Result<Role, ApiError> {
    match word {
        "member" => Ok(Role::Member),
        "admin" => Ok(Role::Admin),
        other => Err(ApiError::BadRequest(format!(
            "role must be member or admin (ownership is transferred), got {other:?}"
        ))),
    }
}

#[derive(Deserialize)]
struct NewOwner {
    user: u64,
}

/// `POST /api/rooms/{id}/owner` `{"user": id}`: the owner hands ownership
/// to a member, and becomes an admin.
pub(crate) async fn transfer(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    let NewOwner { user: target } = body(req)?;
    let m = change(shared, id, uid, target, MemberOp::Transfer).await?;
    Ok(Response::json(
        200,
        &json!({"room": id, "owner": target, "changed": m.changed()}),
    ))
}

/// `PUT /api/rooms/{id}/bans/{user}` (ban: removes them, withdraws their
/// invitation, keeps them out) and `DELETE` (unban).
pub(crate) async fn ban(req: &Request, shared: &Shared, raw: &str, on: bool) -> ApiResult {
    let (uid, id, target) = (user(req, shared).await?, room_id(raw)?, path_user(req)?);
    let op = if on { MemberOp::Ban } else { MemberOp::Unban };
    let m = change(shared, id, uid, target, op).await?;
    Ok(Response::json(
        200,
        &json!({"room": id, "user": target, "banned": on, "changed": m.changed()}),
    ))
}

/// `GET /api/rooms/{id}/bans?after=&limit=` (admins and the owner).
pub(crate) async fn bans(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    let (after, len) = list_query(req, shared)?;
    let (_, standing) = visible_room(shared, uid, id).await?;
    if standing.role.is_none_or(|r| r < Role::Admin) {
        return Err(ApiError::Forbidden(format!(
            "only admins and the owner of room {id} see its bans"
        )));
    }
    let m = directory(shared);
    let page = blocking(move || m.bans_page(id, after, len)).await?;
    let bans: Vec<Value> = page
        .items
        .iter()
        .map(|b| json!({"user": b.user, "by": b.by, "ts": b.ts_ms}))
        .collect();
    Ok(Response::json(
        200,
        &json!({"room": id, "bans": bans, "next": next_json(page.next)}),
    ))
}

/// `DELETE /api/rooms/{id}/invites/{user}` (admins and the owner):
/// withdraws an invitation.
pub(crate) async fn withdraw(req: &Request, shared: &Shared, raw: &str) -> ApiResult {
    let (uid, id, target) = (user(req, shared).await?, room_id(raw)?, path_user(req)?);
    change(shared, id, uid, target, MemberOp::Withdraw).await?;
    Ok(Response::json(
        200,
        &json!({"room": id, "user": target, "invited": false}),
    ))
}

/// `GET /api/invites`: the caller's pending invitations, each with its
/// room, who invited and when.
pub(crate) async fn my_invites(req: &Request, shared: &Shared) -> ApiResult {
    let uid = user(req, shared).await?;
    let m = directory(shared);
    let invites = blocking(move || -> rookery_engine::Result<Vec<Value>> {
        let mut out = Vec::new();
        for inv in m.invites_of(uid)? {
            let Some(room) = m.room(inv.room)? else {
                continue;
            };
            let (by_name, _) = user_label(&m, inv.by)?;
            out.push(
                json!({"room": room_json(&room), "by": inv.by, "by_name": by_name,
                            "ts": inv.ts_ms}),
            );
        }
        Ok(out)
    })
    .await?;
    Ok(Response::json(200, &json!({ "invites": invites })))
}

/// `POST /api/invites/{room}/accept` (become a member) and `/decline`.
pub(crate) async fn answer_invite(
    req: &Request,
    shared: &Shared,
    raw: &str,
    accept: bool,
) -> ApiResult {
    let (uid, id) = (user(req, shared).await?, room_id(raw)?);
    take_join_token(shared, uid).await?;
    let op = if accept {
        MemberOp::Accept
    } else {
        MemberOp::Decline
    };
    change(shared, id, uid, uid, op).await?;
    Ok(Response::json(200, &json!({"room": id, "member": accept})))
}
