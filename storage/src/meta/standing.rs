//! A user's standing in a room (role, ban, invitation) and the one way it
//! changes: [`Meta::change_membership`] reads what a change is decided on
//! and writes the decision in the same transaction, so that two changes
//! to a room never decide on the same stale state (two owners leaving at
//! once cannot leave the room without one). Which changes are allowed is
//! the caller's policy; the invariants of the data are kept here and
//! checked after every change: a banned user is neither a member nor
//! invited, an invited user is not a member, a room with members has an
//! owner, a user holds at most [`INVITES_PER_USER_MAX`] invitations (a
//! new one pushes out their oldest).

use redb::{ReadableTable, WriteTransaction};

use super::*;

/// The id that stands for the server itself (an application backend
/// calling with an API key): no account ever has it (ids start at 1). As
/// the actor of a membership change it has a room owner's powers in every
/// room and holds no standing of its own: its view is an owner's, and a
/// change that would give it a role (handing ownership on) is refused.
pub const SERVER_USER: u64 = 0;

/// Pending invitations one user may hold; a new one past it withdraws
/// their oldest (a flood of invitations cannot grow a user's list, nor
/// keep a real one out).
pub const INVITES_PER_USER_MAX: usize = 100;

/// A ban: who made it and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ban {
    /// The banned user.
    pub user: u64,
    /// The admin or owner who banned them.
    pub by: u64,
    /// When, ms since the Unix epoch.
    pub ts_ms: u64,
}

/// A pending invitation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invite {
    /// The room.
    pub room: u64,
    /// Who invited.
    pub by: u64,
    /// When, ms since the Unix epoch.
    pub ts_ms: u64,
}

/// A user's standing in one room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    /// Their role, if they are a member.
    pub role: Option<Role>,
    /// Banned from the room.
    pub banned: bool,
    /// Invited and not yet answered.
    pub invited: bool,
}

/// What a membership change is decided on, read in the transaction that
/// writes the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberView {
    /// The room is private.
    pub private: bool,
    /// The acting user's standing.
    pub actor: Standing,
    /// The target's standing (the actor's own, for joins and leaves).
    pub target: Standing,
    /// The target is a user that exists.
    pub target_exists: bool,
    /// The target was a member once and is not now.
    pub target_former: bool,
    /// The room's pair of users (lower id first), if it is a
    /// direct-message room.
    pub dm: Option<(u64, u64)>,
}

/// What to write; `None` leaves that part as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberChange {
    /// The target's new role (`Some(None)`: no longer a member).
    pub role: Option<Option<Role>>,
    /// The actor's new role (handing ownership on).
    pub actor_role: Option<Role>,
    /// Ban or unban the target.
    pub ban: Option<bool>,
    /// Invite the target, or withdraw (or answer) their invitation.
    pub invite: Option<bool>,
}

impl MemberChange {
    /// Whether it writes nothing.
    pub fn is_empty(&self) -> bool {
        *self == MemberChange::default()
    }
}

impl Meta {
    /// Decides a change of `target`'s standing in `room` by `actor` with
    /// `decide`, from state read in the same write transaction, and writes
    /// it; returns what it was decided on and what was written. An error
    /// from `decide` writes nothing.
    ///
    /// Errors: `NotFound` for an unknown room or actor (an unknown target
    /// is `decide`'s to answer: `target_exists` is false);
    /// `Database` if the change would break an invariant of the data (a
    /// policy that lets a room lose its last owner, invites a member).
    pub fn change_membership<E: From<Error>>(
        &self,
        room: u64,
        actor: u64,
        target: u64,
        now_ms: u64,
        decide: impl FnOnce(&MemberView) -> std::result::Result<MemberChange, E>,
    ) -> std::result::Result<(MemberView, MemberChange), E> {
        // No quick repair, as in `Meta::write_with`.
        let txn = self.db.begin_write().map_err(Error::from)?;
        let view = read_view(&txn, room, actor, target)?;
        let change = decide(&view)?;
        if !change.is_empty() {
            apply(&txn, room, actor, target, now_ms, &change)?;
            check_room(&txn, room, target, &view, &change)?;
            let was = view.target.role.is_some();
            let is = txn
                .open_table(MEMBERS)
                .map_err(Error::from)?
                .get((room, target))
                .map_err(Error::from)?
                .is_some();
            if was != is {
                self.note_member(&txn, (room, target, actor, is), now_ms)?;
            }
        }
        txn.commit().map_err(Error::from)?;
        self.ring_member_feed();
        Ok((view, change))
    }

    /// Restores a ban of `user` in `room` made by `by` at `ts_ms`
    /// (the user must not be a member nor invited).
    ///
    /// Errors: `NotFound` for an unknown room or user, `Database` if the
    /// user is a member or invited.
    pub fn import_ban(&self, room: u64, user: u64, by: u64, ts_ms: u64) -> Result<()> {
        self.import_change(
            room,
            user,
            by,
            ts_ms,
            MemberChange {
                ban: Some(true),
                ..MemberChange::default()
            },
        )
    }

    /// Restores an invitation of `user` to `room` made by `by` at `ts_ms`
    /// (the user must not be a member nor banned).
    ///
    /// Errors: as [`Meta::import_ban`].
    pub fn import_invite(&self, room: u64, user: u64, by: u64, ts_ms: u64) -> Result<()> {
        self.import_change(
            room,
            user,
            by,
            ts_ms,
            MemberChange {
                invite: Some(true),
                ..MemberChange::default()
            },
        )
    }

    fn import_change(
        &self,
        room: u64,
        user: u64,
        by: u64,
        ts_ms: u64,
        change: MemberChange,
    ) -> Result<()> {
        self.change_membership(room, by, user, ts_ms, |v| {
            if v.target.role.is_some() || v.target.banned || v.target.invited {
                return Err(Error::Database(format!(
                    "user {user} already has a standing in room {room}"
                )));
            }
            // A direct message's one invitation is of one of its two by
            // the other; nobody is banned from it.
            let pair = |u: u64| v.dm.is_some_and(|(a, b)| u == a || u == b);
            if v.dm.is_some() && (change.ban.is_some() || !pair(user) || !pair(by)) {
                return Err(Error::InvalidInput(format!(
                    "room {room} is a direct message: only its two users have a standing there"
                )));
            }
            Ok(change)
        })
        .map(drop)
    }

    /// Gives every room with members and no owner one (see the schema
    /// upgrade): for data imported from an export made before owners
    /// existed. Returns how many rooms got one.
    pub fn ensure_owners(&self) -> Result<usize> {
        self.write(super::migrate::name_owners)
    }

    /// `user`'s standing in `room`.
    ///
    /// Errors: `NotFound` for an unknown room.
    pub fn standing(&self, room: u64, user: u64) -> Result<Standing> {
        self.read(|txn| {
            require_room(&txn.open_table(ROOMS)?, room)?;
            standing_in(
                &txn.open_table(MEMBERS)?,
                &txn.open_table(BANS)?,
                &txn.open_table(INVITES)?,
                room,
                user,
            )
        })
    }

    /// A page of `room`'s bans by user id: at most `len` after `after`.
    ///
    /// Errors: `NotFound` for an unknown room.
    pub fn bans_page(&self, room: u64, after: u64, len: usize) -> Result<ListPage<Ban>> {
        self.read(|txn| {
            require_room(&txn.open_table(ROOMS)?, room)?;
            let mut page = ListPage {
                items: Vec::new(),
                next: None,
            };
            let Some(from) = after.checked_add(1) else {
                return Ok(page);
            };
            for entry in txn
                .open_table(BANS)?
                .range((room, from)..=(room, u64::MAX))?
            {
                let (key, value) = entry?;
                if page.items.len() == len {
                    page.next = Some(page.items.last().map_or(after, |b: &Ban| b.user));
                    break;
                }
                let (by, ts_ms) = value.value();
                page.items.push(Ban {
                    user: key.value().1,
                    by,
                    ts_ms,
                });
            }
            Ok(page)
        })
    }

    /// `user`'s pending invitations (at most [`INVITES_PER_USER_MAX`]),
    /// by room id.
    pub fn invites_of(&self, user: u64) -> Result<Vec<Invite>> {
        self.read(|txn| {
            let invites = txn.open_table(INVITES)?;
            let mut out = Vec::new();
            for entry in txn
                .open_table(USER_INVITES)?
                .range((user, 0)..=(user, u64::MAX))?
            {
                let room = entry?.0.value().1;
                let (by, ts_ms) = invites
                    .get((room, user))?
                    .ok_or_else(|| Error::Database(format!("invitation {room}/{user} unmirrored")))?
                    .value();
                out.push(Invite { room, by, ts_ms });
            }
            Ok(out)
        })
    }
}

fn standing_in(
    members: &impl ReadableTable<(u64, u64), u8>,
    bans: &impl ReadableTable<(u64, u64), (u64, u64)>,
    invites: &impl ReadableTable<(u64, u64), (u64, u64)>,
    room: u64,
    user: u64,
) -> Result<Standing> {
    let role = members.get((room, user))?.map(|g| g.value());
    Ok(Standing {
        role: role.map(Role::from_u8).transpose()?,
        banned: bans.get((room, user))?.is_some(),
        invited: invites.get((room, user))?.is_some(),
    })
}

fn read_view(txn: &WriteTransaction, room: u64, actor: u64, target: u64) -> Result<MemberView> {
    let rooms = txn.open_table(ROOMS)?;
    let private = rooms
        .get(room)?
        .ok_or_else(|| Error::NotFound(format!("room {room}")))?
        .value()
        .1;
    let users = txn.open_table(USERS)?;
    if actor != SERVER_USER {
        require_user(&users, actor)?;
    }
    let (members, bans, invites) = (
        txn.open_table(MEMBERS)?,
        txn.open_table(BANS)?,
        txn.open_table(INVITES)?,
    );
    let target_exists = users.get(target)?.is_some();
    let target_former = txn.open_table(FORMER)?.get((room, target))?.is_some();
    let dm = txn.open_table(DM_ROOMS)?.get(room)?.map(|g| g.value());
    let actor = match actor {
        SERVER_USER => Standing {
            role: Some(Role::Owner),
            ..Standing::default()
        },
        _ => standing_in(&members, &bans, &invites, room, actor)?,
    };
    Ok(MemberView {
        private,
        actor,
        target: standing_in(&members, &bans, &invites, room, target)?,
        target_exists,
        target_former,
        dm,
    })
}

fn apply(
    txn: &WriteTransaction,
    room: u64,
    actor: u64,
    target: u64,
    now_ms: u64,
    change: &MemberChange,
) -> Result<()> {
    if change.role.is_some() || change.ban.is_some() || change.invite.is_some() {
        require_user(&txn.open_table(USERS)?, target)?;
    }
    if actor == SERVER_USER && change.actor_role.is_some() {
        return Err(Error::Database("the server holds no role in a room".into()));
    }
    if let Some(role) = change.role {
        set_role(txn, room, target, role, now_ms)?;
        if role.is_some() {
            withdraw(txn, room, target)?;
        }
    }
    if let Some(role) = change.actor_role {
        set_role(txn, room, actor, Some(role), now_ms)?;
    }
    match change.ban {
        Some(true) => {
            set_role(txn, room, target, None, now_ms)?;
            withdraw(txn, room, target)?;
            txn.open_table(BANS)?
                .insert((room, target), (actor, now_ms))?;
        }
        Some(false) => {
            txn.open_table(BANS)?.remove((room, target))?;
        }
        None => {}
    }
    match change.invite {
        Some(true) => invite(txn, room, target, actor, now_ms)?,
        Some(false) => withdraw(txn, room, target)?,
        None => {}
    }
    Ok(())
}

fn set_role(
    txn: &WriteTransaction,
    room: u64,
    user: u64,
    role: Option<Role>,
    now_ms: u64,
) -> Result<()> {
    match role {
        Some(r) => {
            super::members::put_member(txn, room, user, r)?;
        }
        None => {
            if txn.open_table(MEMBERS)?.remove((room, user))?.is_some() {
                txn.open_table(FORMER)?.insert((room, user), now_ms)?;
            }
            txn.open_table(USER_ROOMS)?.remove((user, room))?;
        }
    }
    Ok(())
}

/// Invites `target` to `room` on behalf of `by`, withdrawing the target's
/// oldest invitation first when they hold the most.
pub(super) fn invite(
    txn: &WriteTransaction,
    room: u64,
    target: u64,
    by: u64,
    now_ms: u64,
) -> Result<()> {
    evict_oldest_invite(txn, target)?;
    txn.open_table(INVITES)?
        .insert((room, target), (by, now_ms))?;
    txn.open_table(USER_INVITES)?.insert((target, room), ())?;
    Ok(())
}

/// Makes room for one more invitation of `user`: at the bound, their
/// oldest is withdrawn.
fn evict_oldest_invite(txn: &WriteTransaction, user: u64) -> Result<()> {
    let rooms: Vec<u64> = txn
        .open_table(USER_INVITES)?
        .range((user, 0)..=(user, u64::MAX))?
        .map(|e| Ok(e?.0.value().1))
        .collect::<Result<_>>()?;
    if rooms.len() < INVITES_PER_USER_MAX {
        return Ok(());
    }
    let invites = txn.open_table(INVITES)?;
    let mut oldest: Option<(u64, u64)> = None;
    for room in rooms {
        let ts = invites.get((room, user))?.map_or(0, |g| g.value().1);
        if oldest.is_none_or(|(t, _)| ts < t) {
            oldest = Some((ts, room));
        }
    }
    drop(invites);
    match oldest {
        Some((_, room)) => withdraw(txn, room, user),
        None => Ok(()),
    }
}

fn withdraw(txn: &WriteTransaction, room: u64, user: u64) -> Result<()> {
    txn.open_table(INVITES)?.remove((room, user))?;
    txn.open_table(USER_INVITES)?.remove((user, room))?;
    Ok(())
}

/// Checks the invariants a change of `target`'s standing could break,
/// after it is applied and before it commits. The room's members are
/// counted only when the change touched an owner (the target was one, or
/// the actor's role changed while it was one): no other change can leave
/// a room without its owner, and counting on every join made a join into
/// a room of 20,000 members cost 3.8 ms of CPU (now 0.14–0.17 ms, as in
/// an empty room).
fn check_room(
    txn: &WriteTransaction,
    room: u64,
    target: u64,
    before: &MemberView,
    change: &MemberChange,
) -> Result<()> {
    let (members, bans, invites) = (
        txn.open_table(MEMBERS)?,
        txn.open_table(BANS)?,
        txn.open_table(INVITES)?,
    );
    let s = standing_in(&members, &bans, &invites, room, target)?;
    let broken = if s.banned && (s.role.is_some() || s.invited) {
        Some("a banned user is still a member or invited")
    } else if s.invited && s.role.is_some() {
        Some("an invited user is already a member")
    } else {
        None
    };
    let owner = Some(Role::Owner);
    let touched_owner =
        before.target.role == owner || (change.actor_role.is_some() && before.actor.role == owner);
    let ownerless = touched_owner && {
        let (mut count, mut owners) = (0, 0);
        for entry in members.range((room, 0)..=(room, u64::MAX))? {
            count += 1;
            owners += usize::from(entry?.1.value() == Role::Owner.to_u8());
        }
        count > 0 && owners == 0
    };
    let invited = txn
        .open_table(USER_INVITES)?
        .range((target, 0)..=(target, u64::MAX))?
        .count();
    let broken = broken
        .or(ownerless.then_some("the room would have members and no owner"))
        .or((invited > INVITES_PER_USER_MAX).then_some("the user would hold too many invitations"));
    match broken {
        Some(why) => Err(Error::Database(format!(
            "refused a membership change of user {target} in room {room}: {why}"
        ))),
        None => Ok(()),
    }
}
