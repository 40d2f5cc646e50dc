//! Who may change whose standing in a room: the one policy every
//! membership change goes through, a pure function of the room's state
//! (read in the transaction that writes the outcome, see
//! [`rookery_storage::Meta::change_membership`]).
//!
//! Ranks are `Member < Admin < Owner`; a room has one owner (its creator
//! until they hand it on). The rules, as docs/security.md tables them:
//!
//! - Anyone not banned joins a public room; a private room is joined by
//!   accepting an invitation. Joining never changes an existing role.
//! - Admins and the owner invite; an invitation is accepted or declined by
//!   its invitee only, and withdrawn by an admin or the owner. Inviting a
//!   user that does not exist answers as if it were invited (ids cannot be
//!   probed).
//! - Admins and the owner remove and ban users of a lower rank, and unban;
//!   a ban reaches members, invitees and former members, also removes the
//!   user and withdraws their invitation, and keeps them from joining,
//!   being invited and posting until it is lifted.
//! - Admins make members admins; the owner also makes admins members.
//!   Nobody changes the owner's role except the owner, by handing
//!   ownership to a member (who becomes owner; the old owner, admin).
//! - Anyone leaves, except the owner, who hands ownership on first.
//! - A direct-message room has two users and no owner: the one who opened
//!   it is a member and the other invited; either joins it (accepting, or
//!   again after leaving), nobody else joins, and nobody (the server's API
//!   included) invites, removes, bans or changes a role in it.
//!
//! Invariant: every outcome leaves a room with members with exactly one
//! owner (a direct-message room with none), and a banned user neither a
//! member nor invited.

use rookery_storage::meta::{MemberChange, MemberView, Standing};

use crate::error::{Error, Result};
use crate::Role;

/// A change of standing, by the acting user, of the target user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberOp {
    /// Join (the actor themself): a public room, or a private one they are
    /// invited to.
    Join,
    /// Leave (the actor themself).
    Leave,
    /// Invite the target.
    Invite,
    /// Accept an invitation (the actor themself).
    Accept,
    /// Decline an invitation (the actor themself).
    Decline,
    /// Withdraw the target's invitation.
    Withdraw,
    /// Remove the target (they may join a public room again).
    Remove,
    /// Ban the target (removing them and withdrawing their invitation).
    Ban,
    /// Lift the target's ban.
    Unban,
    /// Make the target a member or an admin.
    SetRole(Role),
    /// Hand ownership to the target.
    Transfer,
}

impl MemberOp {
    /// Whether the actor acts on themself (the target is the actor).
    pub fn is_own(self) -> bool {
        matches!(
            self,
            MemberOp::Join | MemberOp::Leave | MemberOp::Accept | MemberOp::Decline
        )
    }
}

/// The outcome of [`crate::Engine::membership`]: the target's standing
/// before, and what was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The target's standing before the change.
    pub before: Standing,
    /// What was written (empty: nothing changed).
    pub change: MemberChange,
}

impl Membership {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        !self.change.is_empty()
    }
}

/// What the rules allow `op` to write, in room `room`, given `v`; `self_`
/// tells whether the target is the actor. `Ok` with an empty change: the
/// call is allowed and changes nothing (joining as a member, inviting the
/// invited, or a user that does not exist).
pub fn decide(
    op: MemberOp,
    room: u64,
    target: u64,
    self_: bool,
    v: &MemberView,
) -> Result<MemberChange> {
    use MemberOp::*;
    let none = MemberChange::default();
    let role = |r: Option<Role>| MemberChange {
        role: Some(r),
        ..none
    };
    let hidden = || Error::NotFound(format!("room {room}"));
    if op.is_own() {
        debug_assert!(self_, "own operations act on the actor");
        return match op {
            Join | Accept if v.actor.banned => {
                Err(Error::Banned(format!("you are banned from room {room}")))
            }
            Join if v.actor.role.is_some() => Ok(none),
            Join if v.dm.is_some_and(|(a, b)| target == a || target == b) => {
                Ok(role(Some(Role::Member)))
            }
            Join | Accept if v.actor.invited => Ok(role(Some(Role::Member))),
            Join if !v.private => Ok(role(Some(Role::Member))),
            Join => Err(hidden()),
            Accept | Decline if !v.actor.invited => {
                Err(Error::NotFound(format!("no invitation to room {room}")))
            }
            Accept => unreachable!("an invited actor is handled above"),
            Decline => Ok(MemberChange {
                invite: Some(false),
                ..none
            }),
            Leave => match v.actor.role {
                // Not in it: nothing to do, unless the room is one they
                // cannot see (a private room answers as a missing one).
                None if v.private && !v.actor.invited && !v.actor.banned => Err(hidden()),
                None => Ok(none),
                Some(Role::Owner) => Err(Error::Conflict(format!(
                    "the owner of room {room} hands ownership to a member before leaving"
                ))),
                Some(_) => Ok(role(None)),
            },
            _ => unreachable!("own operations are matched above"),
        };
    }
    // Acting on others: the actor must see the room, and manage it.
    let Some(actor) = v.actor.role else {
        return Err(if v.private {
            hidden()
        } else {
            Error::Forbidden(format!(
                "only admins and the owner of room {room} manage it"
            ))
        });
    };
    if v.dm.is_some() {
        return Err(Error::Forbidden(format!(
            "room {room} is a direct message: nobody manages its members"
        )));
    }
    if actor < Role::Admin {
        return Err(Error::Forbidden(format!(
            "only admins and the owner of room {room} manage it"
        )));
    }
    if self_ {
        return Err(Error::InvalidInput(
            "act on yourself by leaving (or handing ownership on)".into(),
        ));
    }
    let t = v.target;
    let not_member = || Error::NotFound(format!("user {target} is not a member of room {room}"));
    let outranks = |what: &str| match t.role {
        Some(r) if r >= actor => Err(Error::Forbidden(format!(
            "only a higher rank {what} a room's {}",
            role_word(r)
        ))),
        _ => Ok(()),
    };
    match op {
        Invite if t.banned => Err(Error::Conflict(format!(
            "user {target} is banned from room {room}: unban them first"
        ))),
        // Nothing to do, answered as an invitation: a missing user, one
        // already invited or in. (A user holding the most invitations
        // loses their oldest: storage makes room.)
        Invite if !v.target_exists || t.invited || t.role.is_some() => Ok(none),
        Invite => Ok(MemberChange {
            invite: Some(true),
            ..none
        }),
        // Idempotent, and alike for any id.
        Withdraw if !t.invited => Ok(none),
        Withdraw => Ok(MemberChange {
            invite: Some(false),
            ..none
        }),
        Remove if t.role.is_none() => Err(not_member()),
        Remove => outranks("removes").map(|()| role(None)),
        Ban if t.banned => Ok(none),
        // Those the room knows: members, invitees, and former members
        // (leaving before a ban does not escape it). Anyone else, an id
        // that does not exist included, is answered alike.
        Ban if t.role.is_none() && !t.invited && !v.target_former => Err(Error::NotFound(format!(
            "user {target} was never in room {room}"
        ))),
        Ban => outranks("bans").map(|()| MemberChange {
            ban: Some(true),
            ..none
        }),
        Unban if !t.banned => Ok(none),
        Unban => Ok(MemberChange {
            ban: Some(false),
            ..none
        }),
        SetRole(_) if t.role.is_none() => Err(not_member()),
        SetRole(Role::Owner) => Err(Error::InvalidInput(
            "ownership is handed on, not set: transfer it".into(),
        )),
        SetRole(r) if t.role == Some(r) => Ok(none),
        // An admin makes members admins; only a higher rank changes an
        // admin (the owner).
        SetRole(r) => outranks("changes").map(|()| role(Some(r))),
        Transfer if actor != Role::Owner => Err(Error::Forbidden(format!(
            "only the owner of room {room} hands ownership on"
        ))),
        Transfer if t.role.is_none() => Err(not_member()),
        Transfer => Ok(MemberChange {
            role: Some(Some(Role::Owner)),
            actor_role: Some(Role::Admin),
            ..none
        }),
        Join | Leave | Accept | Decline => unreachable!("own operations return above"),
    }
}

/// The role's name as the API shows it.
pub fn role_word(r: Role) -> &'static str {
    match r {
        Role::Member => "member",
        Role::Admin => "admin",
        Role::Owner => "owner",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery_storage::meta::Standing;

    fn member(role: Role) -> Standing {
        Standing {
            role: Some(role),
            ..Standing::default()
        }
    }

    fn view(private: bool, actor: Standing, target: Standing) -> MemberView {
        MemberView {
            private,
            actor,
            target,
            target_exists: true,
            target_former: false,
            dm: None,
        }
    }

    fn kind(r: Result<MemberChange>) -> &'static str {
        match r {
            Ok(c) if c.is_empty() => "noop",
            Ok(_) => "ok",
            Err(Error::NotFound(_)) => "404",
            Err(Error::Forbidden(_)) => "403",
            Err(Error::Banned(_)) => "banned",
            Err(Error::Conflict(_)) => "409",
            Err(Error::InvalidInput(_)) => "400",
            Err(e) => panic!("unexpected {e}"),
        }
    }

    /// The rules the module doc states, one line each.
    #[test]
    fn the_rules_as_stated() {
        use MemberOp::*;
        let none = Standing::default();
        let banned = Standing {
            banned: true,
            ..none
        };
        let invited = Standing {
            invited: true,
            ..none
        };
        let (m, a, o) = (
            member(Role::Member),
            member(Role::Admin),
            member(Role::Owner),
        );
        let own = |op, private, s| kind(decide(op, 1, 2, true, &view(private, s, s)));
        let on = |op, actor, target| kind(decide(op, 1, 2, false, &view(false, actor, target)));
        assert_eq!(own(Join, false, none), "ok");
        assert_eq!(own(Join, true, none), "404", "a private room stays hidden");
        assert_eq!(own(Join, true, invited), "ok");
        assert_eq!(own(Join, false, banned), "banned");
        assert_eq!(own(Join, false, o), "noop", "joining never changes a role");
        assert_eq!(own(Leave, false, o), "409", "the owner hands on first");
        assert_eq!(own(Leave, false, a), "ok");
        assert_eq!(own(Leave, true, none), "404", "a stranger learns nothing");
        assert_eq!(own(Leave, false, none), "noop");
        assert_eq!(own(Accept, true, none), "404");
        assert_eq!(own(Decline, true, invited), "ok");
        assert_eq!(on(Invite, m, none), "403", "members do not invite");
        assert_eq!(on(Invite, a, none), "ok");
        assert_eq!(on(Invite, a, banned), "409");
        assert_eq!(on(Invite, a, m), "noop");
        let missing = MemberView {
            target_exists: false,
            ..view(false, a, none)
        };
        assert_eq!(
            kind(decide(Invite, 1, 2, false, &missing)),
            "noop",
            "answered alike"
        );
        assert_eq!(on(Withdraw, a, none), "noop", "idempotent");
        assert_eq!(on(Remove, a, m), "ok");
        assert_eq!(on(Remove, a, a), "403", "an admin does not remove an admin");
        assert_eq!(on(Remove, o, a), "ok");
        assert_eq!(on(Remove, a, o), "403", "nobody removes the owner");
        assert_eq!(on(Ban, a, m), "ok");
        assert_eq!(on(Ban, a, invited), "ok");
        assert_eq!(on(Ban, a, none), "404", "a stranger, or no one");
        let former = MemberView {
            target_former: true,
            ..view(false, a, none)
        };
        assert_eq!(
            kind(decide(Ban, 1, 2, false, &former)),
            "ok",
            "leaving does not escape a ban"
        );
        assert_eq!(on(Ban, a, banned), "noop");
        assert_eq!(on(Ban, o, o), "403");
        assert_eq!(on(Unban, a, banned), "ok");
        assert_eq!(on(Unban, m, banned), "403");
        assert_eq!(on(Unban, a, none), "noop");
        assert_eq!(on(SetRole(Role::Admin), a, m), "ok");
        assert_eq!(on(SetRole(Role::Member), a, a), "403");
        assert_eq!(on(SetRole(Role::Member), o, a), "ok");
        assert_eq!(on(SetRole(Role::Owner), o, a), "400");
        assert_eq!(on(Transfer, a, m), "403");
        assert_eq!(on(Transfer, o, none), "404");
        assert_eq!(on(Transfer, o, m), "ok");
        // A direct message of users 2 and 3.
        let dm = |actor, target| MemberView {
            dm: Some((2, 3)),
            ..view(true, actor, target)
        };
        let in_dm = |op, who, actor, target| kind(decide(op, 1, who, who == 2, &dm(actor, target)));
        assert_eq!(in_dm(Join, 2, none, none), "ok", "back after leaving");
        assert_eq!(in_dm(Join, 2, m, m), "noop");
        assert_eq!(in_dm(Leave, 2, m, m), "ok", "either may leave");
        assert_eq!(in_dm(Invite, 4, m, none), "403", "nobody invites");
        assert_eq!(in_dm(Remove, 3, m, m), "403");
        assert_eq!(in_dm(Ban, 3, o, m), "403", "not even the server's API");
        assert_eq!(in_dm(SetRole(Role::Admin), 3, o, m), "403");
        assert_eq!(in_dm(Transfer, 3, o, m), "403");
        let outsider = MemberView {
            dm: Some((2, 3)),
            ..view(true, none, none)
        };
        assert_eq!(
            kind(decide(Join, 1, 4, true, &outsider)),
            "404",
            "hidden from others"
        );
        assert_eq!(kind(decide(Invite, 1, 2, false, &outsider)), "404");
        let private_stranger = view(true, none, m);
        assert_eq!(kind(decide(Remove, 1, 2, false, &private_stranger)), "404");
        assert_eq!(kind(decide(Remove, 1, 1, true, &view(false, a, a))), "400");
    }
}
