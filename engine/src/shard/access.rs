//! Who may post in the rooms a shard owns, kept in memory by the owner:
//! loaded off the reactor on first use (one load per room at a time), kept
//! current by room creation and member changes, which all go through the
//! owner, and a removed member's subscriptions ended on every shard.
//!
//! Invariant: a change to a room's members or existence that lands while
//! its access is loading makes that load stale; a stale load is not kept.

use rookery_storage::{Meta, Role};
use rustc_hash::FxHashSet as HashSet;

use super::mesh::Peer;
use super::{now_ms, Shard};
use crate::error::{Error, Result};
use crate::event::Event;

/// Who may post in a room this shard owns.
pub(super) enum Access {
    /// No such room in the metadata (remembered only when rooms need not
    /// exist; forgotten when one is created through
    /// [`crate::Engine::create_room`]).
    Unknown,
    Room {
        private: bool,
        /// Members of a private room (empty for a public one: anyone may
        /// post).
        members: HashSet<u64>,
    },
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
    /// Whether `user` may post; an unknown room as `rooms_must_exist`
    /// says.
    pub(super) fn allows(&self, user: u64, rooms_must_exist: bool) -> bool {
        match self {
            Access::Unknown => !rooms_must_exist,
            Access::Room { private, members } => !private || members.contains(&user),
        }
    }
}

impl Shard {
    /// Whether `user` may post in `room` (owner side): a public room, or a
    /// private one they are a member of (and, unless `rooms_must_exist`, a
    /// room the metadata does not know). From memory; on first use the
    /// room is loaded off the reactor. A room that must exist and does
    /// not, and a private room the user is not in, are both `NotFound` (a
    /// private room does not reveal that it exists).
    pub(super) async fn may_post(&self, room: u64, user: u64) -> Result<()> {
        let must_exist = self.cfg.rooms_must_exist;
        loop {
            if let Some(a) = self.access.borrow().get(&room) {
                return if a.allows(user, must_exist) {
                    Ok(())
                } else {
                    Err(Error::NotFound(format!("room {room}")))
                };
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
        name: String,
        private: bool,
        creator: u64,
    ) -> Result<u64> {
        let meta = self.meta.clone();
        let room = glommio::executor()
            .spawn_blocking(move || meta.create_room(&name, private, creator, now_ms()))
            .await?;
        let owner = self.owner(room);
        if owner == self.id {
            self.forget_room(room);
        } else {
            let (done, forgotten) = flume::bounded(1);
            self.push_peer(owner, Peer::Forget { room, done });
            let _ = forgotten.recv_async().await;
        }
        Ok(room)
    }

    /// Owner side: writes a membership change, keeps the access cache
    /// current, and ends a removed member's subscriptions to a private
    /// room on every shard (before any later event of the room).
    pub(super) async fn set_member(
        &self,
        room: u64,
        user: u64,
        role: Option<Role>,
    ) -> Result<Option<Role>> {
        self.ensure_owned(room);
        let meta = self.meta.clone();
        let (before, private) = glommio::executor()
            .spawn_blocking(move || -> Result<(Option<Role>, bool)> {
                let private = meta
                    .room(room)?
                    .ok_or_else(|| Error::NotFound(format!("room {room}")))?
                    .private;
                let before = meta.member_role(room, user)?;
                match role {
                    Some(r) => {
                        meta.add_member(room, user, r)?;
                    }
                    None => {
                        meta.remove_member(room, user)?;
                    }
                }
                Ok((before, private))
            })
            .await?;
        self.access_changed(room);
        if let Some(Access::Room {
            private: true,
            members,
        }) = self.access.borrow_mut().get_mut(&room)
        {
            match role {
                Some(_) => members.insert(user),
                None => members.remove(&user),
            };
        }
        if before.is_some() && role.is_none() && private {
            for peer in (0..self.n).filter(|&p| p != self.id) {
                self.push_peer(peer, Peer::Revoke { room, user });
            }
            self.revoke(room, user);
        }
        Ok(before)
    }

    /// Ends `user`'s subscriptions to `room` on this shard, each with a
    /// `left` event as its last.
    pub(super) fn revoke(&self, room: u64, user: u64) {
        let ids: Vec<u64> = match self.local.borrow().get(&room) {
            Some(ids) => ids.clone(),
            None => return,
        };
        let left = Event::left(room, "removed");
        for id in ids {
            let ended = {
                let subs = self.subs.borrow();
                match subs.get(&id) {
                    Some(sub) if sub.user == Some(user) => {
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
    let members = if r.private {
        meta.members(room)?.into_iter().map(|(u, _)| u).collect()
    } else {
        HashSet::default()
    };
    Ok(Access::Room {
        private: r.private,
        members,
    })
}
