//! Who may post, type and subscribe in the rooms a shard owns (their
//! members), kept in memory by the owner: loaded off the reactor on first
//! use (one load per room at a time), kept current by room creation and
//! standing changes, which all go through the owner, and a removed or
//! banned member's subscriptions ended on every shard.
//!
//! Invariant: a change to a room's members or existence that lands while
//! its access is loading makes that load stale; a stale load is not kept.

use rookery_storage::meta::{DmOpened, MemberChange, SERVER_USER};
use rookery_storage::{Meta, Role};
use rustc_hash::FxHashSet as HashSet;

use super::mesh::Peer;
use super::{now_ms, Shard};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::rules::{self, MemberOp, Membership};

/// Who may post in a room this shard owns.
pub(super) enum Access {
    /// No such room in the metadata (remembered only when rooms need not
    /// exist; forgotten when one is created through
    /// [`crate::Engine::create_room`]).
    Unknown,
    Room {
        private: bool,
        /// The room's members: they alone post, type and subscribe.
        members: HashSet<u64>,
    },
    /// The room is being deleted: nothing more is posted in it (forgotten
    /// when the delete ends).
    Deleting,
}

/// A load of a room's access in flight.
#[derive(Default)]
pub(super) struct Load {
    /// A change to the room landed while it read: load again.
    stale: bool,
    /// Posts waiting for it.
    waiters: Vec<flume::Sender<()>>,
}

impl Access {
    /// Whether `user` may post in `room`; an unknown room as
    /// `rooms_must_exist` says. A private room a user is not in and a
    /// missing one are both `NotFound` (a private room does not reveal
    /// that it exists); a public one says to join it.
    pub(super) fn check(&self, room: u64, user: u64, rooms_must_exist: bool) -> Result<()> {
        match self {
            Access::Unknown if !rooms_must_exist => Ok(()),
            Access::Room { members, .. } if members.contains(&user) => Ok(()),
            // The server (a backend with an API key) posts in any room.
            Access::Room { .. } if user == SERVER_USER => Ok(()),
            Access::Room { private: false, .. } => Err(Error::Forbidden(format!(
                "join room {room} first: only its members post and type in it"
            ))),
            Access::Deleting => Err(Error::NotFound(format!("room {room} (deleted)"))),
            _ => Err(Error::NotFound(format!("room {room}"))),
        }
    }
}

impl Shard {
    /// Whether `user` may post in `room` (owner side): a room they are a
    /// member of (and, unless `rooms_must_exist`, a room the metadata does
    /// not know). From memory; on first use the room is loaded off the
    /// reactor. See [`Access::check`] for the refusals.
    pub(super) async fn may_post(&self, room: u64, user: u64) -> Result<()> {
        let must_exist = self.cfg.rooms_must_exist;
        loop {
            if let Some(a) = self.access.borrow().get(&room) {
                return a.check(room, user, must_exist);
            }
            // One load per room at a time: the others wait for it.
            let wait = {
                let mut loads = self.loads.borrow_mut();
                match loads.get_mut(&room) {
                    Some(load) => {
                        let (tx, rx) = flume::bounded(1);
                        load.waiters.push(tx);
                        Some(rx)
                    }
                    None => {
                        loads.insert(room, Load::default());
                        None
                    }
                }
            };
            if let Some(rx) = wait {
                let _ = rx.recv_async().await;
                continue;
            }
            let meta = self.meta.clone();
            let loaded = glommio::executor()
                .spawn_blocking(move || load_access(&meta, room))
                .await;
            let load = self.loads.borrow_mut().remove(&room).unwrap_or_default();
            for waiter in load.waiters {
                let _ = waiter.send(());
            }
            let loaded = loaded?;
            if load.stale {
                // A member change or the room's creation landed while it
                // loaded: it may be missing. Load again.
                continue;
            }
            if must_exist && matches!(loaded, Access::Unknown) {
                // Not remembered: ids a client makes up must not grow the
                // map (each such post costs one read, under the send rate
                // limit).
                return Err(Error::NotFound(format!("room {room}")));
            }
            self.access.borrow_mut().insert(room, loaded);
        }
    }

    /// Whether `user` is a member of `room` as its loaded access says
    /// (false when it is not loaded).
    pub(super) fn is_member(&self, room: u64, user: u64) -> bool {
        matches!(
            self.access.borrow().get(&room),
            Some(Access::Room { members, .. }) if members.contains(&user)
        )
    }

    /// Marks a load of `room`'s access in flight as stale (a change to the
    /// room landed while it read).
    pub(super) fn access_changed(&self, room: u64) {
        if let Some(load) = self.loads.borrow_mut().get_mut(&room) {
            load.stale = true;
        }
    }

    /// Owner side: `room` was just created; what was remembered of it
    /// (that it did not exist) is dropped.
    pub(super) fn forget_room(&self, room: u64) {
        self.access_changed(room);
        self.access.borrow_mut().remove(&room);
    }

    /// Creates a room in the metadata (off the reactor) and makes its
    /// owner forget that it did not exist, before answering.
    pub(super) async fn create_room(
        &self,
        id: Option<u64>,
        name: String,
        private: bool,
        creator: u64,
    ) -> Result<u64> {
        let meta = self.meta.clone();
        let room = glommio::executor()
            .spawn_blocking(move || match id {
                Some(id) => meta
                    .create_room_with_id(id, &name, private, creator, now_ms())
                    .map(|()| id),
                None => meta.create_room(&name, private, creator, now_ms()),
            })
            .await?;
        self.forget_everywhere(room).await;
        Ok(room)
    }

    /// Finds or creates (off the reactor) the direct-message room of
    /// `user` and `other`; a new one is forgotten as in `create_room`.
    pub(super) async fn open_dm(&self, id: Option<u64>, user: u64, other: u64) -> Result<DmOpened> {
        let meta = self.meta.clone();
        let opened = glommio::executor()
            .spawn_blocking(move || meta.open_dm(id, user, other, now_ms()))
            .await?;
        if opened.created {
            self.forget_everywhere(opened.room).await;
        }
        Ok(opened)
    }

    /// Makes the owner of `room` forget what it remembered of it (that it
    /// did not exist), and waits until it has.
    async fn forget_everywhere(&self, room: u64) {
        let owner = self.owner(room);
        if owner == self.id {
            self.forget_room(room);
        } else {
            let (done, forgotten) = flume::bounded(1);
            self.push_peer(owner, Peer::Forget { room, done });
            let _ = forgotten.recv_async().await;
        }
    }

    /// Owner side: decides a change of standing under the room rules in
    /// the transaction that writes it, then applies it here.
    pub(super) async fn membership(
        &self,
        room: u64,
        actor: u64,
        target: u64,
        op: MemberOp,
    ) -> Result<Membership> {
        // (Nothing is kept for the room before the change is known to be
        // one: ids a client makes up must not grow the shard's maps.)
        if actor == SERVER_USER && (op.is_own() || op == MemberOp::Transfer) {
            return Err(Error::InvalidInput(
                "the server is no member: it neither joins, leaves nor holds a room".into(),
            ));
        }
        let meta = self.meta.clone();
        let (view, change) = glommio::executor()
            .spawn_blocking(move || {
                meta.change_membership(room, actor, target, now_ms(), |v| {
                    rules::decide(op, room, target, actor == target, v)
                })
            })
            .await?;
        let reason = if op == MemberOp::Leave {
            "left"
        } else {
            "removed"
        };
        self.applied(room, target, &change, reason);
        Ok(Membership {
            before: view.target,
            change,
        })
    }

    /// Owner side of `Engine::ensure_member`: a member is answered from
    /// the access cache; anyone else goes through a `Join` decided in the
    /// transaction that writes it, except that a private room is joined by
    /// no one this way (invited or not: it answers as a missing one, and
    /// a banned user learns they are banned).
    pub(super) async fn ensure_member(&self, room: u64, user: u64) -> Result<()> {
        match self.may_post(room, user).await {
            Ok(()) => return Ok(()),
            Err(Error::Forbidden(_)) => {} // a public room, not a member
            // A missing room is not remembered: answered at once. A private
            // one needs the user's standing (banned or not).
            Err(Error::NotFound(m)) if !self.access.borrow().contains_key(&room) => {
                return Err(Error::NotFound(m))
            }
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let meta = self.meta.clone();
        let (_, change) = glommio::executor()
            .spawn_blocking(move || {
                meta.change_membership(room, user, user, now_ms(), |v| {
                    let hidden = v.private && v.actor.role.is_none() && !v.actor.banned;
                    if hidden {
                        return Err(Error::NotFound(format!("room {room}")));
                    }
                    rules::decide(MemberOp::Join, room, user, true, v)
                })
            })
            .await?;
        self.applied(room, user, &change, "left");
        Ok(())
    }

    /// Owner side: sets or removes a membership with no rule but the
    /// data's (see `Engine::add_member`); answers the role before.
    pub(super) async fn set_member(
        &self,
        room: u64,
        user: u64,
        role: Option<Role>,
    ) -> Result<Option<Role>> {
        let meta = self.meta.clone();
        let (view, change) = glommio::executor()
            .spawn_blocking(move || {
                meta.change_membership::<Error>(room, user, user, now_ms(), |v| {
                    if v.dm.is_some() {
                        return Err(Error::Forbidden(format!(
                            "room {room} is a direct message: its members are its two users"
                        )));
                    }
                    if v.target.banned && role.is_some() {
                        return Err(Error::Conflict(format!(
                            "user {user} is banned from room {room}: unban them first"
                        )));
                    }
                    // Decided here, in the transaction: the owner's role
                    // is handed on by the owner, never set.
                    let demoted = role.is_some_and(|r| r != Role::Owner);
                    if v.target.role == Some(Role::Owner) && demoted {
                        return Err(Error::Conflict(format!(
                            "user {user} owns room {room}: ownership is handed on by its owner"
                        )));
                    }
                    let role = (v.target.role != role).then_some(role);
                    Ok(MemberChange {
                        role,
                        ..MemberChange::default()
                    })
                })
            })
            .await?;
        self.applied(room, user, &change, "removed");
        Ok(view.target.role)
    }

    /// Keeps the access cache current after `change` to `target` in
    /// `room`, and ends a user's subscriptions to it on every shard when
    /// they lose their membership (before any later event of the room),
    /// with `left {reason}`: `banned` for a ban, else `reason` (`left` when
    /// they left, `removed`).
    fn applied(&self, room: u64, target: u64, change: &MemberChange, reason: &'static str) {
        if change.is_empty() {
            return;
        }
        self.access_changed(room);
        let member = match (change.ban, change.role) {
            (Some(true), _) => Some(false),
            (_, Some(role)) => Some(role.is_some()),
            _ => None,
        };
        let Some(member) = member else {
            return;
        };
        let was = match self.access.borrow_mut().get_mut(&room) {
            Some(Access::Room { members, .. }) if member => !members.insert(target),
            Some(Access::Room { members, .. }) => members.remove(&target),
            _ => true,
        };
        if !member && was {
            let reason = if change.ban == Some(true) {
                "banned"
            } else {
                reason
            };
            if let Some(tap) = &self.cfg.event_tap {
                tap.see(crate::config::Tapped::Revoked {
                    room,
                    user: target,
                    reason,
                });
            }
            self.revoke_everywhere(room, Some(target), reason);
        }
    }

    /// [`Shard::revoke`] on every shard: on the others through the same
    /// FIFO channels as the room's events, so before any later event.
    pub(super) fn revoke_everywhere(&self, room: u64, user: Option<u64>, reason: &'static str) {
        for peer in (0..self.n).filter(|&p| p != self.id) {
            self.push_peer(peer, Peer::Revoke { room, user, reason });
        }
        self.revoke(room, user, reason);
    }

    /// Ends `user`'s subscriptions to `room` on this shard (everyone's for
    /// `None`: the room was deleted), each with a `left` event (giving
    /// `reason`) as its last.
    pub(super) fn revoke(&self, room: u64, user: Option<u64>, reason: &'static str) {
        let ids: Vec<u64> = match self.local.borrow().get(&room) {
            Some(ids) => ids.clone(),
            None => return,
        };
        let left = Event::left(room, reason);
        for id in ids {
            let ended = {
                let subs = self.subs.borrow();
                match subs.get(&id) {
                    Some(sub) if user.is_none() || sub.user == user => {
                        sub.outlet.push(id, &left);
                        true
                    }
                    _ => false,
                }
            };
            if ended {
                self.unsubscribe(id);
            }
        }
    }
}

/// Who may post in `room`, from the metadata (blocking).
pub(super) fn load_access(meta: &Meta, room: u64) -> Result<Access> {
    let Some(r) = meta.room(room)? else {
        return Ok(Access::Unknown);
    };
    let members = meta.members(room)?.into_iter().map(|(u, _)| u).collect();
    Ok(Access::Room {
        private: r.private,
        members,
    })
}
