//! Direct messages: `POST /api/dms` opens the private room of the caller
//! and one other user (the same room for the pair forever, unless the
//! server's API deletes it) and `GET /api/dms` lists the caller's. The
//! other user is invited, and is in the room once they open it too (or
//! accept): nobody is put in a room, or followed there, without consent.
//!
//! A direct-message room is a room like any other for messages, history,
//! receipts and presence; the engine's rules keep its membership to its
//! two users (docs/security.md). In a cluster the pair is claimed in the
//! users bucket (`dm.<lower>.<higher>` → room), so two nodes opening it at
//! once agree on one room; the room's owner node makes it.

use rookery_engine::{Dm, MemberOp};
use serde_json::{json, Value};

use super::rooms::{room_json, user_label, Who};
use super::{body, list_query, next_json, user, ApiError, ApiResult};
use crate::app::{directory, take_join_token, take_room_token};
use crate::auth::blocking;
use crate::cluster::ops::{self, Answer, Op};
use crate::http::{Request, Response};
use crate::protocol::ServerFrame;
use crate::shared::Shared;

/// `POST /api/dms {"user"|"name"|"subject"}`: the caller's direct-message
/// room with that user, made if the pair has none (201; the other user is
/// invited and told) or found (200); a caller who was invited to it, or
/// had left it, is a member from now on. 400 for oneself, 404 for a
/// user that does not exist. A new room takes a room token, any call a
/// join token.
pub(crate) async fn open(req: &Request, shared: &Shared) -> ApiResult {
    let uid = user(req, shared).await?;
    let who: Who = body(req)?;
    take_join_token(shared, uid).await?;
    let other = who.resolve(shared).await?;
    if other == uid {
        return Err(ApiError::BadRequest(
            "a direct message is with another user".into(),
        ));
    }
    let m = directory(shared);
    let exists = other != 0 && blocking(move || m.user(other)).await?.is_some();
    if !exists {
        return Err(ApiError::NotFound("no such user".into()));
    }
    let (status, dm) = match &shared.cluster {
        None => {
            let m = directory(shared);
            if blocking(move || m.dm_between(uid, other)).await?.is_none() {
                take_room_token(shared, uid).await?;
            }
            open_here(shared, None, uid, other).await?
        }
        Some(node) => {
            let room = match node.dm_room(uid, other).await? {
                Some(room) => room,
                None => {
                    take_room_token(shared, uid).await?;
                    node.claim_dm_room(uid, other).await?
                }
            };
            // A claim of a room deleted while the claim stayed (its give-back
            // failed) cannot be opened (409): it is renewed, once.
            match open_on_owner(shared, node, room, uid, other).await {
                Err(e) if e.parts().0 == 409 => {
                    let room = node.renew_dm_room(uid, other, room).await?;
                    open_on_owner(shared, node, room, uid, other).await?
                }
                opened => opened?,
            }
        }
    };
    Ok(Response::json(status, &dm))
}

/// Opens the pair's room `room` on its owner node: here, or asked of it.
async fn open_on_owner(
    shared: &Shared,
    node: &crate::cluster::Node,
    room: u64,
    user: u64,
    other: u64,
) -> Result<(u16, Value), ApiError> {
    if node.owner_of(room) == node.cfg.node_id {
        return open_here(shared, Some(room), user, other).await;
    }
    match ops::ask(node, &Op::OpenDm { room, user, other }).await? {
        Answer::Opened { status, dm } => Ok((status, dm)),
        _ => Err(ApiError::Internal("a dm answered something else".into())),
    }
}

/// On the room's owner (or the one node): finds or makes the pair's
/// room, brings `user` back if they had left, tells `other` of a new
/// room, and answers the status and the direct message as `user` sees
/// it.
pub(crate) async fn open_here(
    shared: &Shared,
    id: Option<u64>,
    user: u64,
    other: u64,
) -> Result<(u16, Value), ApiError> {
    let opened = shared.engine.open_dm(id, user, other).await?;
    if !opened.member {
        shared
            .engine
            .membership(opened.room, user, user, MemberOp::Join)
            .await?;
    }
    let m = directory(shared);
    let room = opened.room;
    let (r, (name, external), (user_name, _)) = blocking(move || -> rookery_engine::Result<_> {
        Ok((m.room(room)?, user_label(&m, other)?, user_label(&m, user)?))
    })
    .await?;
    let r = r.ok_or_else(|| ApiError::Internal("a direct message's room is missing".into()))?;
    let online = shared.engine.online(room).await?.contains(&other);
    if opened.created {
        let frame = ServerFrame::Dm {
            room,
            user,
            name: user_name,
        }
        .text(None);
        crate::cluster::notices::notify(shared, other, frame);
    }
    let dm = json!({"user": other, "name": name, "external": external, "room": room_json(&r),
                    "member": true, "invited": false, "online": online});
    Ok((if opened.created { 201 } else { 200 }, dm))
}

/// `GET /api/dms?after=&limit=&left=`: a page of the caller's direct
/// messages by the other user's id, those they are invited to included
/// (with `left=true`, those they left or declined too), each with the other user's name and whether they have the
/// room open now.
pub(crate) async fn list(req: &Request, shared: &Shared) -> ApiResult {
    let uid = user(req, shared).await?;
    let (after, len) = list_query(req, shared)?;
    let with_left = match req.query_param("left") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "left={other:?} is not true or false"
            )))
        }
    };
    let m = directory(shared);
    let (page, labels) = blocking(move || -> rookery_engine::Result<_> {
        let page = m.dms_of(uid, after, len, with_left)?;
        let labels = page
            .items
            .iter()
            .map(|d| user_label(&m, d.other))
            .collect::<rookery_engine::Result<Vec<_>>>()?;
        Ok((page, labels))
    })
    .await?;
    let mut dms = Vec::with_capacity(page.items.len());
    for (d, (name, external)) in page.items.iter().zip(labels) {
        dms.push(dm_json(shared, d, name, external).await?);
    }
    Ok(Response::json(
        200,
        &json!({ "dms": dms, "next": next_json(page.next) }),
    ))
}

async fn dm_json(shared: &Shared, d: &Dm, name: String, external: bool) -> Result<Value, ApiError> {
    let online = shared.engine.online(d.room.id).await?.contains(&d.other);
    Ok(
        json!({"user": d.other, "name": name, "external": external, "room": room_json(&d.room),
              "member": d.member, "invited": d.invited, "online": online}),
    )
}
