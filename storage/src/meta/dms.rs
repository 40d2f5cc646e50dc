//! Direct messages: each pair of users has at most one private room of
//! their own, found from either side.
//!
//! A direct-message room is an ordinary private room of two users and no
//! owner: nobody in it has powers over the other (invitations, removals,
//! bans and roles are refused by the engine's rules, which read
//! [`MemberView::dm`]). The user who opens it is its first member; the
//! other is invited by them, and is a member only once they accept (as
//! any invitation needs consent: nobody is put in a room, and followed
//! there, against their will). Either may leave, or decline, and come
//! back by joining; nobody else ever joins.
//!
//! Invariant: `dms` holds `(a, b) -> room` and `(b, a) -> room` for each
//! row `room -> (a, b)` of `dm_rooms` (a < b), all three written in one
//! transaction, and both users exist. [`Meta::delete_room`] removes all
//! three with the room.

use redb::{ReadableTable, WriteTransaction};

use super::members::put_member;
use super::*;

/// A direct-message room, as one of its two users sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dm {
    /// The room.
    pub room: Room,
    /// The other user of the pair.
    pub other: u64,
    /// Whether the user asking is a member now (they may have left).
    pub member: bool,
    /// Whether the user asking is invited (the other opened it and they
    /// have not answered).
    pub invited: bool,
}

/// What [`Meta::open_dm`] found or made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmOpened {
    /// The pair's room.
    pub room: u64,
    /// Whether this call created it.
    pub created: bool,
    /// Whether the user who opened it is a member (false: they left it).
    pub member: bool,
}

impl Meta {
    /// The direct-message room of `user` and `other`, created if the pair
    /// has none, with `user` as a member and `other` invited by them. `id` is the room's id when the cluster hands it out
    /// (`None`: the next one here). The room is named `dm-A-B` with the
    /// lower id first.
    ///
    /// Errors: `InvalidInput` if the two are the same user, or for an id
    /// this data directory does not hand out; `NotFound` for an unknown
    /// user; `AlreadyExists` if room `id` exists (as another room) or was
    /// deleted.
    pub fn open_dm(&self, id: Option<u64>, user: u64, other: u64, now_ms: u64) -> Result<DmOpened> {
        if user == other {
            return Err(Error::InvalidInput(
                "a direct message needs two different users".into(),
            ));
        }
        if let Some(id) = id {
            validate_id("room", id)?;
            if self.ids.as_ref().is_some_and(|f| !f.accepts(id)) {
                return Err(Error::InvalidInput(format!(
                    "room id {id} is not one this node hands out"
                )));
            }
        }
        let opened = self.write(|txn| {
            let users = txn.open_table(USERS)?;
            require_user(&users, user)?;
            require_user(&users, other)?;
            drop(users);
            if let Some(room) = txn.open_table(DMS)?.get((user, other))?.map(|g| g.value()) {
                let member = txn.open_table(MEMBERS)?.get((room, user))?.is_some();
                return Ok(DmOpened {
                    room,
                    created: false,
                    member,
                });
            }
            let room = match id {
                Some(id) => {
                    bump_counter(txn, ROOM_COUNTER, id)?;
                    id
                }
                None => next_id(txn, ROOM_COUNTER, self.ids.as_ref())?,
            };
            insert_dm(txn, room, (user, other), now_ms)?;
            put_member(txn, room, user, Role::Member)?;
            self.note_member(txn, (room, user, user, true), now_ms)?;
            super::standing::invite(txn, room, other, user, now_ms)?;
            Ok(DmOpened {
                room,
                created: true,
                member: true,
            })
        })?;
        if opened.created {
            self.ring_member_feed();
        }
        Ok(opened)
    }

    /// The pair of users of room `room` (lower id first), if it is a
    /// direct-message room.
    pub fn dm_pair(&self, room: u64) -> Result<Option<(u64, u64)>> {
        self.read(|txn| Ok(txn.open_table(DM_ROOMS)?.get(room)?.map(|g| g.value())))
    }

    /// The direct-message room of `user` and `other`, if they have one.
    pub fn dm_between(&self, user: u64, other: u64) -> Result<Option<u64>> {
        self.read(|txn| Ok(txn.open_table(DMS)?.get((user, other))?.map(|g| g.value())))
    }

    /// A page of `user`'s direct-message rooms, by the other user's id,
    /// after the user `after`, at most `len` of them, reading at most
    /// [`ROOM_PAGE_SCAN_ROWS_MAX`] rows: those `user` is a member of or
    /// invited to, and those they left or declined when `with_left` is
    /// set.
    pub fn dms_of(
        &self,
        user: u64,
        after: u64,
        len: usize,
        with_left: bool,
    ) -> Result<ListPage<Dm>> {
        self.read(|txn| {
            let (dms, rooms, members, invites) = (
                txn.open_table(DMS)?,
                txn.open_table(ROOMS)?,
                txn.open_table(MEMBERS)?,
                txn.open_table(INVITES)?,
            );
            let mut page = ListPage {
                items: Vec::new(),
                next: None,
            };
            let Some(from) = after.checked_add(1) else {
                return Ok(page);
            };
            let (mut scanned, mut last_read) = (0, after);
            for row in dms.range((user, from)..=(user, u64::MAX))? {
                let (key, room) = row?;
                if page.items.len() == len || scanned == ROOM_PAGE_SCAN_ROWS_MAX {
                    page.next = Some(last_read);
                    break;
                }
                let (other, room) = (key.value().1, room.value());
                (scanned, last_read) = (scanned + 1, other);
                let member = members.get((room, user))?.is_some();
                let invited = invites.get((room, user))?.is_some();
                if !member && !invited && !with_left {
                    continue;
                }
                let row = rooms.get(room)?.ok_or_else(|| {
                    Error::Database(format!(
                        "direct message {user}/{other} names no room {room}"
                    ))
                })?;
                page.items.push(Dm {
                    room: room_from(room, row.value()),
                    other,
                    member,
                    invited,
                });
            }
            Ok(page)
        })
    }

    /// Every direct-message room with its pair (lower id first), by room
    /// id (an export).
    pub fn dm_pairs(&self) -> Result<Vec<(u64, (u64, u64))>> {
        self.read(|txn| {
            txn.open_table(DM_ROOMS)?
                .iter()?
                .map(|row| {
                    let (room, pair) = row?;
                    Ok((room.value(), pair.value()))
                })
                .collect()
        })
    }

    /// Restores the direct-message pairing of room `room` (an import); the
    /// room and both users must exist, and neither the room nor the pair
    /// may have one already.
    ///
    /// Errors: `NotFound` for an unknown room or user, `InvalidInput` for a
    /// pair of one user, `AlreadyExists` if the room or the pair has one.
    pub fn import_dm(&self, room: u64, pair: (u64, u64)) -> Result<()> {
        if pair.0 == pair.1 {
            return Err(Error::InvalidInput(format!(
                "direct message room {room} pairs user {} with themself",
                pair.0
            )));
        }
        self.write(|txn| {
            require_room(&txn.open_table(ROOMS)?, room)?;
            let users = txn.open_table(USERS)?;
            require_user(&users, pair.0)?;
            require_user(&users, pair.1)?;
            drop(users);
            put_pair(txn, room, pair)
        })
    }
}

/// Creates room `id` as the private direct-message room of `pair`.
fn insert_dm(txn: &WriteTransaction, id: u64, pair: (u64, u64), now_ms: u64) -> Result<()> {
    let (lo, hi) = (pair.0.min(pair.1), pair.0.max(pair.1));
    let name = format!("dm-{lo}-{hi}");
    super::rooms::insert_room(txn, id, (name.as_str(), true, pair.0, now_ms, 0))?;
    put_pair(txn, id, pair)
}

/// Writes the three rows that pair `room` with its two users.
fn put_pair(txn: &WriteTransaction, room: u64, pair: (u64, u64)) -> Result<()> {
    let (lo, hi) = (pair.0.min(pair.1), pair.0.max(pair.1));
    let mut dm_rooms = txn.open_table(DM_ROOMS)?;
    if dm_rooms.get(room)?.is_some() {
        return Err(Error::AlreadyExists(format!(
            "room {room} is a direct message already"
        )));
    }
    let mut dms = txn.open_table(DMS)?;
    if dms.get((lo, hi))?.is_some() {
        return Err(Error::AlreadyExists(format!(
            "users {lo} and {hi} have a direct message room already"
        )));
    }
    dm_rooms.insert(room, (lo, hi))?;
    dms.insert((lo, hi), room)?;
    dms.insert((hi, lo), room)?;
    Ok(())
}

/// Removes room `room`'s pairing, if it is a direct-message room (the
/// room itself is being deleted).
pub(super) fn remove_pair(txn: &WriteTransaction, room: u64) -> Result<()> {
    let Some((lo, hi)) = txn.open_table(DM_ROOMS)?.remove(room)?.map(|g| g.value()) else {
        return Ok(());
    };
    let mut dms = txn.open_table(DMS)?;
    for key in [(lo, hi), (hi, lo)] {
        // The pair must map this room (an error undoes the transaction).
        let mapped = dms.remove(key)?.map(|g| g.value());
        if mapped != Some(room) {
            return Err(Error::Database(format!(
                "direct message {}/{} maps {mapped:?}, not room {room}",
                key.0, key.1
            )));
        }
    }
    Ok(())
}
