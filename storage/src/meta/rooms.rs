//! Rooms: creation, deletion, lookups, the rooms a user may see, last
//! seqs (never moving backwards) and retention settings, restore.

use redb::{ReadableTable, WriteTransaction};

use super::members::put_member;
use super::*;

impl Meta {
    /// Creates a room with `creator` as its owner and returns its id.
    ///
    /// Errors: `InvalidInput` for a bad name, `AlreadyExists` if a public
    /// room has the name in any case (private rooms' names need not be
    /// unique), `NotFound` for an unknown creator.
    pub fn create_room(&self, name: &str, private: bool, creator: u64, now_ms: u64) -> Result<u64> {
        validate_name("room", name)?;
        self.write(|txn| {
            require_user(&txn.open_table(USERS)?, creator)?;
            let id = next_id(txn, ROOM_COUNTER, self.ids.as_ref())?;
            let row = (name, private, creator, now_ms, 0);
            insert_room(txn, id, row)?;
            put_member(txn, id, creator, Role::Owner)?;
            self.note_member(txn, (id, creator, creator, true), now_ms)?;
            Ok(id)
        })
        .inspect(|_| self.ring_member_feed())
    }

    /// [`Meta::create_room`] with the id `id`, handed out by the cluster
    /// (its counter here is raised to it).
    ///
    /// Errors: as `create_room`; `InvalidInput` also for id 0 or an id
    /// outside this data directory's [`IdFilter`](crate::IdFilter);
    /// `AlreadyExists` if room `id` exists.
    pub fn create_room_with_id(
        &self,
        id: u64,
        name: &str,
        private: bool,
        creator: u64,
        now_ms: u64,
    ) -> Result<()> {
        validate_name("room", name)?;
        validate_id("room", id)?;
        if self.ids.as_ref().is_some_and(|f| !f.accepts(id)) {
            return Err(Error::InvalidInput(format!(
                "room id {id} is not one this node hands out"
            )));
        }
        self.write(|txn| {
            require_user(&txn.open_table(USERS)?, creator)?;
            insert_room(txn, id, (name, private, creator, now_ms, 0))?;
            put_member(txn, id, creator, Role::Owner)?;
            self.note_member(txn, (id, creator, creator, true), now_ms)?;
            bump_counter(txn, ROOM_COUNTER, id)
        })
        .inspect(|_| self.ring_member_feed())
    }

    /// Deletes room `id` and every row naming it (members, bans,
    /// invitations, former members, read receipts, its public name, its
    /// direct-message pair, which may then open a new room) in one
    /// transaction, and returns it as it was, with its members. Its
    /// retention row stays (the caller retires its messages,
    /// [`crate::ShardStore::retire_room`]) and its id is never taken again.
    ///
    /// Errors: `NotFound` for an unknown (or already deleted) room.
    pub fn delete_room(&self, id: u64, now_ms: u64) -> Result<(Room, Vec<(u64, Role)>)> {
        self.write(|txn| {
            let room = match txn.open_table(ROOMS)?.remove(id)? {
                Some(row) => room_from(id, row.value()),
                None => return Err(Error::NotFound(format!("room {id}"))),
            };
            if !room.private {
                let key = room_key(&room.name);
                let mut names = txn.open_table(ROOM_NAMES)?;
                // Checked before removing: the name must map this room.
                let mapped = names.get(key.as_str())?.map(|g| g.value());
                if mapped != Some(id) {
                    return Err(Error::Database(format!(
                        "public room {id}'s name maps {mapped:?}"
                    )));
                }
                names.remove(key.as_str())?;
            }
            let keys = (id, 0)..=(id, u64::MAX);
            let mut members = Vec::new();
            txn.open_table(MEMBERS)?
                .retain_in(keys.clone(), |(_, user), role| {
                    members.push((user, role));
                    false
                })?;
            let mut user_rooms = txn.open_table(USER_ROOMS)?;
            for &(user, _) in &members {
                user_rooms.remove((user, id))?;
            }
            let mut invited = Vec::new();
            txn.open_table(INVITES)?
                .retain_in(keys.clone(), |(_, user), _| {
                    invited.push(user);
                    false
                })?;
            let mut user_invites = txn.open_table(USER_INVITES)?;
            for user in invited {
                user_invites.remove((user, id))?;
            }
            txn.open_table(BANS)?
                .retain_in(keys.clone(), |_, _| false)?;
            txn.open_table(FORMER)?
                .retain_in(keys.clone(), |_, _| false)?;
            txn.open_table(RECEIPTS)?.retain_in(keys, |_, _| false)?;
            super::dms::remove_pair(txn, id)?;
            txn.open_table(DELETED_ROOMS)?.insert(id, now_ms)?;
            let members = members
                .into_iter()
                .map(|(user, role)| Ok((user, Role::from_u8(role)?)))
                .collect::<Result<_>>()?;
            Ok((room, members))
        })
    }

    /// Whether room `id` was deleted ([`Meta::delete_room`]).
    pub fn room_deleted(&self, id: u64) -> Result<bool> {
        self.read(|txn| Ok(txn.open_table(DELETED_ROOMS)?.get(id)?.is_some()))
    }

    /// Returns room `id`, if it exists.
    pub fn room(&self, id: u64) -> Result<Option<Room>> {
        self.read(|txn| {
            let rooms = txn.open_table(ROOMS)?;
            let room = rooms.get(id)?.map(|row| room_from(id, row.value()));
            Ok(room)
        })
    }

    /// Returns the public room called `name` in any case, if it exists
    /// (private rooms are not found by name).
    pub fn room_by_name(&self, name: &str) -> Result<Option<Room>> {
        self.read(|txn| {
            let key = room_key(name);
            let Some(id) = txn
                .open_table(ROOM_NAMES)?
                .get(key.as_str())?
                .map(|g| g.value())
            else {
                return Ok(None);
            };
            let rooms = txn.open_table(ROOMS)?;
            let room = rooms.get(id)?.map(|row| room_from(id, row.value()));
            Ok(room)
        })
    }

    /// Returns all rooms, public and private, ordered by id.
    pub fn rooms(&self) -> Result<Vec<Room>> {
        self.read(|txn| {
            let rooms = txn.open_table(ROOMS)?;
            rooms
                .iter()?
                .map(|row| {
                    let (id, row) = row?;
                    Ok(room_from(id.value(), row.value()))
                })
                .collect()
        })
    }

    /// Returns a page of the rooms `user` may see, every public room and
    /// the private rooms it is a member of, but no direct-message room
    /// ([`Meta::dms_of`] lists those), ordered by id: at most `len`
    /// rooms with an id above `after`, reading at most
    /// [`ROOM_PAGE_SCAN_ROWS_MAX`] rooms (so a page may be short and still
    /// have a `next`).
    ///
    /// Errors: `NotFound` for an unknown user.
    pub fn visible_rooms(&self, user: u64, after: u64, len: usize) -> Result<ListPage<Room>> {
        self.read(|txn| {
            require_user(&txn.open_table(USERS)?, user)?;
            let members = txn.open_table(MEMBERS)?;
            let rooms = txn.open_table(ROOMS)?;
            let dms = txn.open_table(DM_ROOMS)?;
            let mut page = ListPage {
                items: Vec::new(),
                next: None,
            };
            let Some(from) = after.checked_add(1) else {
                return Ok(page);
            };
            let (mut scanned, mut last_read) = (0, after);
            for row in rooms.range(from..)? {
                let (id, row) = row?;
                if page.items.len() == len || scanned == ROOM_PAGE_SCAN_ROWS_MAX {
                    // Rooms follow: the next page starts after the last read.
                    page.next = Some(last_read);
                    break;
                }
                (scanned, last_read) = (scanned + 1, id.value());
                let room = room_from(id.value(), row.value());
                let seen = !room.private || members.get((room.id, user))?.is_some();
                if seen && dms.get(room.id)?.is_none() {
                    page.items.push(room);
                }
            }
            Ok(page)
        })
    }

    /// Raises each room's `last_seq` to the given seq if that is higher, in
    /// one transaction; unknown rooms are ignored. The commit is durable only
    /// if `durable` is set, so `advance_last_seq(&[], true)` persists earlier
    /// non-durable advances. redb reclaims the pages that non-durable commits
    /// free only at the next durable commit: pass `durable` now and then (for
    /// example at shard checkpoints) so that the file does not grow.
    pub fn advance_last_seq(&self, updates: &[(u64, u64)], durable: bool) -> Result<()> {
        if updates.is_empty() && !durable {
            return Ok(());
        }
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        self.write_with(durability, |txn| raise_last_seqs(txn, updates))
    }

    /// Stores a room's retention limits (0 = unlimited), durably.
    pub fn set_retention(&self, room: u64, keep_messages: u64, keep_age_ms: u64) -> Result<()> {
        self.write_with(Durability::Immediate, |txn| {
            let mut t = txn.open_table(RETENTION)?;
            let low = t.get(room)?.map_or(0, |v| v.value().0);
            t.insert(room, (low, keep_messages, keep_age_ms))?;
            Ok(())
        })
    }

    /// Raises rooms' low seqs (never lowers them), durably, in one
    /// transaction. Called before retired log segments are deleted.
    /// The retired messages hold their uploads no more, in the same
    /// transaction: the uploads nothing holds any more are removed and
    /// returned (their files are the caller's to remove).
    pub fn advance_low_seqs(&self, updates: &[(u64, u64)]) -> Result<Vec<Upload>> {
        self.write_with(Durability::Immediate, |txn| {
            let mut freed = Vec::new();
            for &(room, low) in updates {
                let (old, keep_messages, keep_age_ms) = {
                    let t = txn.open_table(RETENTION)?;
                    let row = t.get(room)?.map(|v| v.value());
                    row.unwrap_or((0, 0, 0))
                };
                if low > old {
                    txn.open_table(RETENTION)?
                        .insert(room, (low, keep_messages, keep_age_ms))?;
                    freed.extend(uploads::release_range(txn, room, old, low)?);
                }
            }
            Ok(freed)
        })
    }

    /// Every room's retention row: (room, low seq, keep messages, keep age ms).
    pub fn retention_rows(&self) -> Result<Vec<(u64, u64, u64, u64)>> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for row in txn.open_table(RETENTION)?.iter()? {
            let (k, v) = row?;
            let (low, km, ka) = v.value();
            out.push((k.value(), low, km, ka));
        }
        Ok(out)
    }

    /// Inserts `room` as-is (restore), moving the id counter past its id.
    /// Members are not added: restore them with [`Meta::add_member`].
    ///
    /// Errors: `InvalidInput` for id 0 or a bad name, `AlreadyExists` if the
    /// id or the name is taken, `NotFound` for an unknown creator.
    pub fn import_room(&self, room: &Room) -> Result<()> {
        validate_name("room", &room.name)?;
        validate_id("room", room.id)?;
        self.write(|txn| {
            require_user(&txn.open_table(USERS)?, room.creator)?;
            let row = (
                room.name.as_str(),
                room.private,
                room.creator,
                room.created_ms,
                room.last_seq,
            );
            insert_room(txn, room.id, row)?;
            bump_counter(txn, ROOM_COUNTER, room.id)
        })
    }
}

pub(super) fn insert_room(
    txn: &WriteTransaction,
    id: u64,
    row: (&str, bool, u64, u64, u64),
) -> Result<()> {
    let (name, private) = (row.0, row.1);
    let key = room_key(name);
    let mut names = txn.open_table(ROOM_NAMES)?;
    if !private && names.get(key.as_str())?.is_some() {
        return Err(taken("room", name));
    }
    let mut rooms = txn.open_table(ROOMS)?;
    if rooms.get(id)?.is_some() {
        return Err(Error::AlreadyExists(format!("room {id}")));
    }
    if txn.open_table(DELETED_ROOMS)?.get(id)?.is_some() {
        return Err(Error::AlreadyExists(format!(
            "room {id} was deleted: its id is not taken again"
        )));
    }
    rooms.insert(id, row)?;
    if !private {
        names.insert(key.as_str(), id)?;
    }
    Ok(())
}

/// The room's `last_seq`; `NotFound` for an unknown room.
pub(super) fn last_seq(rooms: &impl ReadableTable<u64, RoomRow>, id: u64) -> Result<u64> {
    match rooms.get(id)? {
        Some(row) => Ok(row.value().4),
        None => Err(Error::NotFound(format!("room {id}"))),
    }
}

/// Raises each room's `last_seq` to the given seq if that is higher;
/// unknown rooms are ignored.
pub(super) fn raise_last_seqs(txn: &WriteTransaction, updates: &[(u64, u64)]) -> Result<()> {
    let mut rooms = txn.open_table(ROOMS)?;
    for &(id, seq) in updates {
        let (name, private, creator, created) = match rooms.get(id)? {
            Some(row) if seq > row.value().4 => {
                let (name, private, creator, created, _) = row.value();
                (name.to_owned(), private, creator, created)
            }
            _ => continue,
        };
        rooms.insert(id, (name.as_str(), private, creator, created, seq))?;
    }
    Ok(())
}
