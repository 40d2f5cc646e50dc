//! The shared metadata database `DATA/meta.redb`.
//!
//! [`Meta`] owns everything that is not a message: users and their password
//! hashes, login sessions, rooms, room membership with roles, and per-user
//! read receipts. The data is small and rarely written, so one redb file
//! serves all shards; every method is a blocking call that runs one redb
//! transaction and must not be called on a shard's reactor thread.
//!
//! Invariants kept across all writers:
//!
//! - Ids of users and rooms come from per-kind counters, start at 1 and are
//!   never reused; imports move the counter past the imported id.
//! - User names and room names are unique (case-sensitive), 1..=64 bytes of
//!   `[A-Za-z0-9_.-]`; each name table maps exactly the rows of its id table.
//! - A room's `last_seq` never moves backwards.
//! - A read receipt never moves backwards, and [`Meta::mark_read`] never
//!   stores more than the room's `last_seq`.
//! - Membership lives in two tables, `(room, user) -> role` and
//!   `(user, room)`, always written together in one transaction.
//! - Every member, receipt and session row names a user (and room) that
//!   exists; rooms and users are never deleted.
//!
//! [`Meta::advance_last_seq`] may commit with [`Durability::None`]: after a
//! crash `last_seq` can lag behind the shard logs, and recovery re-advances it
//! from the shard indexes, which remain the truth for sequence numbers. A
//! clean close, or any later durable commit, persists it.

use std::path::Path;

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

use crate::error::{Error, Result};

/// Row of `users`: (name, created_ms, password_hash).
type UserRow = (&'static str, u64, Option<&'static str>);
/// Row of `rooms`: (name, private, creator, created_ms, last_seq).
type RoomRow = (&'static str, bool, u64, u64, u64);

/// Last id handed out, per kind (`"user"`, `"room"`).
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const USERS: TableDefinition<u64, UserRow> = TableDefinition::new("users");
const USER_NAMES: TableDefinition<&str, u64> = TableDefinition::new("user_names");
/// Token hash -> (user, expires_ms).
const SESSIONS: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("sessions");
const ROOMS: TableDefinition<u64, RoomRow> = TableDefinition::new("rooms");
const ROOM_NAMES: TableDefinition<&str, u64> = TableDefinition::new("room_names");
/// (room, user) -> role.
const MEMBERS: TableDefinition<(u64, u64), u8> = TableDefinition::new("members");
/// (user, room): the mirror of `members`, for listing a user's rooms.
const USER_ROOMS: TableDefinition<(u64, u64), ()> = TableDefinition::new("user_rooms");
/// (room, user) -> highest seq read.
const RECEIPTS: TableDefinition<(u64, u64), u64> = TableDefinition::new("receipts");
/// Per-room retention: room -> (low seq, keep messages, keep age ms). Kept
/// here, not in a shard index, because it is not derivable from the log:
/// after an index rebuild, retired messages must stay retired.
const RETENTION: TableDefinition<u64, (u64, u64, u64)> = TableDefinition::new("retention");

const USER_COUNTER: &str = "user";
const ROOM_COUNTER: &str = "room";
const MAX_NAME_LEN: usize = 64;

/// A registered user.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Unique id, at least 1.
    pub id: u64,
    /// Unique login name.
    pub name: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Argon2 PHC string; `None` for users authenticated by an app backend.
    pub password_hash: Option<String>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("created_ms", &self.created_ms)
            .field("has_password", &self.password_hash.is_some())
            .finish()
    }
}

/// A chat room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    /// Unique id, at least 1.
    pub id: u64,
    /// Unique room name.
    pub name: String,
    /// Private rooms are visible to their members only.
    pub private: bool,
    /// User who created the room.
    pub creator: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Highest message seq known to be indexed in the room (0: none).
    pub last_seq: u64,
}

/// A member's role in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Can read and post.
    Member,
    /// Can also manage the room and its members.
    Admin,
}

impl Role {
    fn to_u8(self) -> u8 {
        match self {
            Role::Member => 0,
            Role::Admin => 1,
        }
    }

    fn from_u8(byte: u8) -> Result<Role> {
        match byte {
            0 => Ok(Role::Member),
            1 => Ok(Role::Admin),
            _ => Err(Error::Database(format!("unknown role byte {byte}"))),
        }
    }
}

/// Handle on `meta.redb`. `Send + Sync`; share it through an `Arc`.
#[derive(Debug)]
pub struct Meta {
    db: Database,
}

impl Meta {
    /// Opens `path`, creating the file and any missing table, with a page
    /// cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Meta> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| Error::Database(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write()?;
        txn.open_table(COUNTERS)?;
        txn.open_table(USERS)?;
        txn.open_table(USER_NAMES)?;
        txn.open_table(SESSIONS)?;
        txn.open_table(ROOMS)?;
        txn.open_table(ROOM_NAMES)?;
        txn.open_table(MEMBERS)?;
        txn.open_table(USER_ROOMS)?;
        txn.open_table(RECEIPTS)?;
        txn.open_table(RETENTION)?;
        txn.commit()?;
        Ok(Meta { db })
    }

    /// Closes the database, reporting the errors that dropping it would
    /// ignore. Pending non-durable commits are made durable.
    pub fn close(self) -> Result<()> {
        Ok(self.db.close()?)
    }

    // ---- users ----

    /// Registers a user with a password hash (a PHC string, `$…`, made by
    /// the caller: this crate never sees a password) and returns its id.
    ///
    /// Errors: `InvalidInput` for a bad name or a hash that is not a PHC
    /// string, `AlreadyExists` if the name is taken.
    pub fn create_user(&self, name: &str, password_hash: &str, now_ms: u64) -> Result<u64> {
        validate_name("user", name)?;
        validate_hash(password_hash)?;
        self.write(|txn| {
            let id = next_id(txn, USER_COUNTER)?;
            insert_user(txn, id, name, now_ms, Some(password_hash))?;
            Ok(id)
        })
    }

    /// Returns the id of user `name`, creating it without a password if it
    /// does not exist (users vouched for by an app backend's JWT).
    ///
    /// Errors: `InvalidInput` for a bad name.
    pub fn ensure_external_user(&self, name: &str, now_ms: u64) -> Result<u64> {
        validate_name("user", name)?;
        if let Some(id) = self.user_id(name)? {
            return Ok(id);
        }
        self.write(|txn| {
            // Re-check: another writer may have created it since the read.
            if let Some(id) = txn.open_table(USER_NAMES)?.get(name)? {
                return Ok(id.value());
            }
            let id = next_id(txn, USER_COUNTER)?;
            insert_user(txn, id, name, now_ms, None)?;
            Ok(id)
        })
    }

    /// Returns user `id`, if it exists.
    pub fn user(&self, id: u64) -> Result<Option<User>> {
        self.read(|txn| {
            let users = txn.open_table(USERS)?;
            let user = users.get(id)?.map(|row| user_from(id, row.value()));
            Ok(user)
        })
    }

    /// Returns the user called `name`, if it exists.
    pub fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        self.read(|txn| {
            let Some(id) = txn.open_table(USER_NAMES)?.get(name)?.map(|g| g.value()) else {
                return Ok(None);
            };
            let users = txn.open_table(USERS)?;
            let user = users.get(id)?.map(|row| user_from(id, row.value()));
            Ok(user)
        })
    }

    /// Returns all users, ordered by id.
    pub fn users(&self) -> Result<Vec<User>> {
        self.read(|txn| {
            let users = txn.open_table(USERS)?;
            users
                .iter()?
                .map(|row| {
                    let (id, row) = row?;
                    Ok(user_from(id.value(), row.value()))
                })
                .collect()
        })
    }

    /// Inserts `user` as-is (restore), moving the id counter past its id.
    ///
    /// Errors: `InvalidInput` for id 0, a bad name or a hash that is not a
    /// PHC string; `AlreadyExists` if the id or the name is taken.
    pub fn import_user(&self, user: &User) -> Result<()> {
        validate_name("user", &user.name)?;
        validate_id("user", user.id)?;
        if let Some(hash) = &user.password_hash {
            validate_hash(hash)
                .map_err(|e| Error::InvalidInput(format!("user {}: {e}", user.id)))?;
        }
        self.write(|txn| {
            let hash = user.password_hash.as_deref();
            insert_user(txn, user.id, &user.name, user.created_ms, hash)?;
            bump_counter(txn, USER_COUNTER, user.id)
        })
    }

    fn user_id(&self, name: &str) -> Result<Option<u64>> {
        self.read(|txn| Ok(txn.open_table(USER_NAMES)?.get(name)?.map(|g| g.value())))
    }

    // ---- sessions ----

    /// Records a session for `user`, keyed by the hash of its token.
    ///
    /// Errors: `NotFound` for an unknown user, `AlreadyExists` if the hash is
    /// already a session.
    pub fn create_session(&self, token_hash: &[u8; 32], user: u64, expires_ms: u64) -> Result<()> {
        self.write(|txn| {
            require_user(&txn.open_table(USERS)?, user)?;
            let mut sessions = txn.open_table(SESSIONS)?;
            if sessions.get(token_hash.as_slice())?.is_some() {
                return Err(Error::AlreadyExists("session token".into()));
            }
            sessions.insert(token_hash.as_slice(), (user, expires_ms))?;
            Ok(())
        })
    }

    /// Returns the user of a session that exists and has not expired
    /// (`now_ms < expires_ms`).
    pub fn session(&self, token_hash: &[u8; 32], now_ms: u64) -> Result<Option<u64>> {
        self.read(|txn| {
            let sessions = txn.open_table(SESSIONS)?;
            let row = sessions.get(token_hash.as_slice())?.map(|g| g.value());
            Ok(row.and_then(|(user, expires)| (now_ms < expires).then_some(user)))
        })
    }

    /// Deletes a session; returns whether it existed.
    pub fn delete_session(&self, token_hash: &[u8; 32]) -> Result<bool> {
        self.write(|txn| {
            let mut sessions = txn.open_table(SESSIONS)?;
            let existed = sessions.remove(token_hash.as_slice())?.is_some();
            Ok(existed)
        })
    }

    /// Deletes every session expired at `now_ms`; returns how many.
    pub fn purge_expired_sessions(&self, now_ms: u64) -> Result<usize> {
        self.write(|txn| {
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut expired = sessions.extract_if(|_, (_, expires)| expires <= now_ms)?;
            let mut removed = 0;
            for entry in expired.by_ref() {
                entry?;
                removed += 1;
            }
            expired.close()?;
            Ok(removed)
        })
    }

    // ---- rooms ----

    /// Creates a room with `creator` as its admin and returns its id.
    ///
    /// Errors: `InvalidInput` for a bad name, `AlreadyExists` if the name is
    /// taken, `NotFound` for an unknown creator.
    pub fn create_room(&self, name: &str, private: bool, creator: u64, now_ms: u64) -> Result<u64> {
        validate_name("room", name)?;
        self.write(|txn| {
            require_user(&txn.open_table(USERS)?, creator)?;
            let id = next_id(txn, ROOM_COUNTER)?;
            let row = (name, private, creator, now_ms, 0);
            insert_room(txn, id, row)?;
            put_member(txn, id, creator, Role::Admin)?;
            Ok(id)
        })
    }

    /// Returns room `id`, if it exists.
    pub fn room(&self, id: u64) -> Result<Option<Room>> {
        self.read(|txn| {
            let rooms = txn.open_table(ROOMS)?;
            let room = rooms.get(id)?.map(|row| room_from(id, row.value()));
            Ok(room)
        })
    }

    /// Returns the room called `name`, if it exists.
    pub fn room_by_name(&self, name: &str) -> Result<Option<Room>> {
        self.read(|txn| {
            let Some(id) = txn.open_table(ROOM_NAMES)?.get(name)?.map(|g| g.value()) else {
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

    /// Returns the rooms `user` may see: every public room and the private
    /// rooms it is a member of, ordered by id.
    ///
    /// Errors: `NotFound` for an unknown user.
    pub fn visible_rooms(&self, user: u64) -> Result<Vec<Room>> {
        self.read(|txn| {
            require_user(&txn.open_table(USERS)?, user)?;
            let members = txn.open_table(MEMBERS)?;
            let rooms = txn.open_table(ROOMS)?;
            let mut visible = Vec::new();
            for row in rooms.iter()? {
                let (id, row) = row?;
                let room = room_from(id.value(), row.value());
                if !room.private || members.get((room.id, user))?.is_some() {
                    visible.push(room);
                }
            }
            Ok(visible)
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
    pub fn advance_low_seqs(&self, updates: &[(u64, u64)]) -> Result<()> {
        self.write_with(Durability::Immediate, |txn| {
            let mut t = txn.open_table(RETENTION)?;
            for &(room, low) in updates {
                let (old, keep_messages, keep_age_ms) =
                    t.get(room)?.map_or((0, 0, 0), |v| v.value());
                if low > old {
                    t.insert(room, (low, keep_messages, keep_age_ms))?;
                }
            }
            Ok(())
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

    // ---- members ----

    /// Makes `user` a member of `room` with `role`, or changes its role;
    /// returns whether it was not a member before.
    ///
    /// Errors: `NotFound` for an unknown room or user.
    pub fn add_member(&self, room: u64, user: u64, role: Role) -> Result<bool> {
        self.write(|txn| {
            require_room(&txn.open_table(ROOMS)?, room)?;
            require_user(&txn.open_table(USERS)?, user)?;
            put_member(txn, room, user, role)
        })
    }

    /// Removes `user` from `room`; returns whether it was a member. Its read
    /// receipt is kept.
    ///
    /// Errors: `NotFound` for an unknown room or user.
    pub fn remove_member(&self, room: u64, user: u64) -> Result<bool> {
        self.write(|txn| {
            require_room(&txn.open_table(ROOMS)?, room)?;
            require_user(&txn.open_table(USERS)?, user)?;
            let removed = txn.open_table(MEMBERS)?.remove((room, user))?.is_some();
            txn.open_table(USER_ROOMS)?.remove((user, room))?;
            Ok(removed)
        })
    }

    /// Returns `user`'s role in `room`, or `None` if it is not a member.
    ///
    /// Errors: `NotFound` for an unknown room or user.
    pub fn member_role(&self, room: u64, user: u64) -> Result<Option<Role>> {
        self.read(|txn| {
            require_room(&txn.open_table(ROOMS)?, room)?;
            require_user(&txn.open_table(USERS)?, user)?;
            let role = txn
                .open_table(MEMBERS)?
                .get((room, user))?
                .map(|g| g.value());
            role.map(Role::from_u8).transpose()
        })
    }

    /// Returns the members of `room` with their roles, ordered by user id.
    ///
    /// Errors: `NotFound` for an unknown room.
    pub fn members(&self, room: u64) -> Result<Vec<(u64, Role)>> {
        self.read(|txn| {
            require_room(&txn.open_table(ROOMS)?, room)?;
            let members = txn.open_table(MEMBERS)?;
            members
                .range((room, 0)..=(room, u64::MAX))?
                .map(|entry| {
                    let (key, role) = entry?;
                    Ok((key.value().1, Role::from_u8(role.value())?))
                })
                .collect()
        })
    }

    /// Returns the ids of the rooms `user` is a member of, ordered.
    ///
    /// Errors: `NotFound` for an unknown user.
    pub fn rooms_of(&self, user: u64) -> Result<Vec<u64>> {
        self.read(|txn| {
            require_user(&txn.open_table(USERS)?, user)?;
            let user_rooms = txn.open_table(USER_ROOMS)?;
            user_rooms
                .range((user, 0)..=(user, u64::MAX))?
                .map(|entry| Ok(entry?.0.value().1))
                .collect()
        })
    }

    // ---- read receipts ----

    /// Records that `user` has read `room` up to `seq`, and returns the stored
    /// receipt: `max(old, min(seq, last_seq))`. Writes nothing when that does
    /// not change the receipt.
    ///
    /// Errors: `NotFound` for an unknown room or user.
    pub fn mark_read(&self, room: u64, user: u64, seq: u64) -> Result<u64> {
        let (old, new) = self.read(|txn| {
            let (rooms, users) = (txn.open_table(ROOMS)?, txn.open_table(USERS)?);
            receipt_step(&rooms, &users, &txn.open_table(RECEIPTS)?, room, user, seq)
        })?;
        if new == old {
            return Ok(old);
        }
        self.write(|txn| {
            let (rooms, users) = (txn.open_table(ROOMS)?, txn.open_table(USERS)?);
            let mut receipts = txn.open_table(RECEIPTS)?;
            let (old, new) = receipt_step(&rooms, &users, &receipts, room, user, seq)?;
            if new != old {
                receipts.insert((room, user), new)?;
            }
            Ok(new)
        })
    }

    /// Records many receipts in one durable transaction (how the engine
    /// batches them). Each `(room, user, seq, last_seq)` first raises the
    /// room's stored `last_seq` to `last_seq` (the owner's in-memory value,
    /// which the index thread may not have written yet), then stores
    /// `max(old, min(seq, last_seq))`. Each item gets its own outcome: an
    /// unknown room or user is `NotFound` for that item only.
    pub fn mark_read_many(&self, items: &[(u64, u64, u64, u64)]) -> Result<Vec<Result<u64>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let raise: Vec<(u64, u64)> = items.iter().map(|i| (i.0, i.3)).collect();
        self.write(|txn| {
            raise_last_seqs(txn, &raise)?;
            let (rooms, users) = (txn.open_table(ROOMS)?, txn.open_table(USERS)?);
            let mut receipts = txn.open_table(RECEIPTS)?;
            let mut out = Vec::with_capacity(items.len());
            for &(room, user, seq, _) in items {
                let step = receipt_step(&rooms, &users, &receipts, room, user, seq);
                let stored = match step {
                    Ok((old, new)) if new != old => receipts.insert((room, user), new).map(|_| new),
                    Ok((old, _)) => Ok(old),
                    Err(e) => {
                        out.push(Err(e));
                        continue;
                    }
                };
                out.push(Ok(stored?));
            }
            Ok(out)
        })
    }

    /// Returns the highest seq `user` has read in `room` (0 if none). The
    /// user is not checked: an unknown one has read nothing.
    ///
    /// Errors: `NotFound` for an unknown room.
    pub fn read_seq(&self, room: u64, user: u64) -> Result<u64> {
        self.read(|txn| {
            last_seq(&txn.open_table(ROOMS)?, room)?;
            receipt(&txn.open_table(RECEIPTS)?, room, user)
        })
    }

    /// Returns how many messages of `room` `user` has not read:
    /// `last_seq - read_seq`, saturating. Two point lookups.
    ///
    /// Errors: `NotFound` for an unknown room.
    pub fn unread(&self, room: u64, user: u64) -> Result<u64> {
        self.read(|txn| {
            let last = last_seq(&txn.open_table(ROOMS)?, room)?;
            let read = receipt(&txn.open_table(RECEIPTS)?, room, user)?;
            Ok(last.saturating_sub(read))
        })
    }

    /// Returns `(room, unread)` for every room `user` is a member of,
    /// ordered by room id.
    ///
    /// Errors: `NotFound` for an unknown user.
    pub fn unread_all(&self, user: u64) -> Result<Vec<(u64, u64)>> {
        self.read(|txn| {
            require_user(&txn.open_table(USERS)?, user)?;
            let rooms = txn.open_table(ROOMS)?;
            let receipts = txn.open_table(RECEIPTS)?;
            let user_rooms = txn.open_table(USER_ROOMS)?;
            user_rooms
                .range((user, 0)..=(user, u64::MAX))?
                .map(|entry| {
                    let room = entry?.0.value().1;
                    let last = last_seq(&rooms, room)?;
                    Ok((room, last.saturating_sub(receipt(&receipts, room, user)?)))
                })
                .collect()
        })
    }

    /// Returns every receipt as `(room, user, seq)`, ordered, for export.
    pub fn receipts(&self) -> Result<Vec<(u64, u64, u64)>> {
        self.read(|txn| {
            let receipts = txn.open_table(RECEIPTS)?;
            receipts
                .iter()?
                .map(|entry| {
                    let (key, seq) = entry?;
                    let (room, user) = key.value();
                    Ok((room, user, seq.value()))
                })
                .collect()
        })
    }

    /// Stores a receipt for restore: like [`Meta::mark_read`] but not clamped
    /// to the room's `last_seq` (which may be restored later). It still never
    /// moves an existing receipt backwards.
    ///
    /// Errors: `NotFound` for an unknown room or user.
    pub fn import_receipt(&self, room: u64, user: u64, seq: u64) -> Result<()> {
        self.write(|txn| {
            require_room(&txn.open_table(ROOMS)?, room)?;
            require_user(&txn.open_table(USERS)?, user)?;
            let mut receipts = txn.open_table(RECEIPTS)?;
            if seq > receipt(&receipts, room, user)? {
                receipts.insert((room, user), seq)?;
            }
            Ok(())
        })
    }

    // ---- transactions ----

    fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T>) -> Result<T> {
        f(&self.db.begin_read()?)
    }

    fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T>) -> Result<T> {
        self.write_with(Durability::Immediate, f)
    }

    /// Runs `f` in a write transaction and commits it; an error from `f`
    /// drops the transaction, which aborts it.
    fn write_with<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&WriteTransaction) -> Result<T>,
    ) -> Result<T> {
        let mut txn = self.db.begin_write()?;
        // Durable commits also save redb's allocator state, so reopening
        // after a crash needs no full repair (and read-only opens work).
        txn.set_quick_repair(matches!(durability, Durability::Immediate));
        txn.set_durability(durability)?;
        let out = f(&txn)?;
        txn.commit()?;
        Ok(out)
    }
}

// ---- helpers ----

fn validate_name(kind: &str, name: &str) -> Result<()> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if (1..=MAX_NAME_LEN).contains(&name.len()) && name.bytes().all(allowed) {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "{kind} name must be 1..={MAX_NAME_LEN} bytes of [A-Za-z0-9_.-] (got {} bytes)",
        name.len()
    )))
}

fn validate_id(kind: &str, id: u64) -> Result<()> {
    if id == 0 {
        return Err(Error::InvalidInput(format!("{kind} id 0")));
    }
    Ok(())
}

/// A password hash as stored: a PHC string (`$id$…`, printable ASCII, at
/// most 512 bytes). Checked before writing; which algorithm made it is the
/// caller's business.
fn validate_hash(hash: &str) -> Result<()> {
    let phc = hash.len() > 1
        && hash.len() <= 512
        && hash.starts_with('$')
        && hash.bytes().all(|b| b.is_ascii_graphic());
    if phc {
        Ok(())
    } else {
        Err(Error::InvalidInput(
            "a password hash must be a PHC string ($id$…) of at most 512 bytes".into(),
        ))
    }
}

fn taken(kind: &str, name: &str) -> Error {
    Error::AlreadyExists(format!("{kind} name {name:?}"))
}

fn user_from(id: u64, (name, created_ms, hash): (&str, u64, Option<&str>)) -> User {
    User {
        id,
        name: name.to_owned(),
        created_ms,
        password_hash: hash.map(str::to_owned),
    }
}

fn room_from(
    id: u64,
    (name, private, creator, created_ms, last_seq): (&str, bool, u64, u64, u64),
) -> Room {
    Room {
        id,
        name: name.to_owned(),
        private,
        creator,
        created_ms,
        last_seq,
    }
}

fn require_user(users: &impl ReadableTable<u64, UserRow>, id: u64) -> Result<()> {
    match users.get(id)? {
        Some(_) => Ok(()),
        None => Err(Error::NotFound(format!("user {id}"))),
    }
}

fn require_room(rooms: &impl ReadableTable<u64, RoomRow>, id: u64) -> Result<()> {
    last_seq(rooms, id).map(drop)
}

/// The room's `last_seq`; `NotFound` for an unknown room.
fn last_seq(rooms: &impl ReadableTable<u64, RoomRow>, id: u64) -> Result<u64> {
    match rooms.get(id)? {
        Some(row) => Ok(row.value().4),
        None => Err(Error::NotFound(format!("room {id}"))),
    }
}

fn receipt(receipts: &impl ReadableTable<(u64, u64), u64>, room: u64, user: u64) -> Result<u64> {
    Ok(receipts.get((room, user))?.map_or(0, |g| g.value()))
}

/// Current and next receipt of `user` in `room` for [`Meta::mark_read`].
fn receipt_step(
    rooms: &impl ReadableTable<u64, RoomRow>,
    users: &impl ReadableTable<u64, UserRow>,
    receipts: &impl ReadableTable<(u64, u64), u64>,
    room: u64,
    user: u64,
    seq: u64,
) -> Result<(u64, u64)> {
    let last = last_seq(rooms, room)?;
    require_user(users, user)?;
    let old = receipt(receipts, room, user)?;
    Ok((old, old.max(seq.min(last))))
}

/// Raises each room's `last_seq` to the given seq if that is higher;
/// unknown rooms are ignored.
fn raise_last_seqs(txn: &WriteTransaction, updates: &[(u64, u64)]) -> Result<()> {
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

/// Hands out the next id of `counter`.
fn next_id(txn: &WriteTransaction, counter: &str) -> Result<u64> {
    let mut counters = txn.open_table(COUNTERS)?;
    let last = counters.get(counter)?.map_or(0, |g| g.value());
    let id = last
        .checked_add(1)
        .ok_or_else(|| Error::Database(format!("{counter} ids exhausted")))?;
    counters.insert(counter, id)?;
    Ok(id)
}

/// Makes sure `counter` never hands out `id` or anything below it.
fn bump_counter(txn: &WriteTransaction, counter: &str, id: u64) -> Result<()> {
    let mut counters = txn.open_table(COUNTERS)?;
    let last = counters.get(counter)?.map_or(0, |g| g.value());
    if id > last {
        counters.insert(counter, id)?;
    }
    Ok(())
}

fn insert_user(
    txn: &WriteTransaction,
    id: u64,
    name: &str,
    created_ms: u64,
    hash: Option<&str>,
) -> Result<()> {
    let mut names = txn.open_table(USER_NAMES)?;
    if names.get(name)?.is_some() {
        return Err(taken("user", name));
    }
    let mut users = txn.open_table(USERS)?;
    if users.get(id)?.is_some() {
        return Err(Error::AlreadyExists(format!("user {id}")));
    }
    users.insert(id, (name, created_ms, hash))?;
    names.insert(name, id)?;
    Ok(())
}

fn insert_room(txn: &WriteTransaction, id: u64, row: (&str, bool, u64, u64, u64)) -> Result<()> {
    let name = row.0;
    let mut names = txn.open_table(ROOM_NAMES)?;
    if names.get(name)?.is_some() {
        return Err(taken("room", name));
    }
    let mut rooms = txn.open_table(ROOMS)?;
    if rooms.get(id)?.is_some() {
        return Err(Error::AlreadyExists(format!("room {id}")));
    }
    rooms.insert(id, row)?;
    names.insert(name, id)?;
    Ok(())
}

/// Writes both membership tables; returns whether the user is a new member.
fn put_member(txn: &WriteTransaction, room: u64, user: u64, role: Role) -> Result<bool> {
    let old = txn
        .open_table(MEMBERS)?
        .insert((room, user), role.to_u8())?
        .is_none();
    txn.open_table(USER_ROOMS)?.insert((user, room), ())?;
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    fn fresh() -> (tempfile::TempDir, Meta) {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Meta::open(&dir.path().join("meta.redb"), 1 << 20).expect("open");
        (dir, meta)
    }

    /// A user without password: no argon2 cost.
    fn user(meta: &Meta, name: &str) -> u64 {
        meta.ensure_external_user(name, 1).expect("user")
    }

    #[test]
    fn names_are_validated_and_unique() {
        let (_dir, meta) = fresh();
        let alice = user(&meta, "alice");
        let too_long = "x".repeat(65);
        for bad in ["", "a b", "émile", "a/b", "a:b", too_long.as_str()] {
            assert!(matches!(
                meta.ensure_external_user(bad, 1),
                Err(Error::InvalidInput(_))
            ));
            assert!(matches!(
                meta.create_user(bad, PHC, 1),
                Err(Error::InvalidInput(_))
            ));
            assert!(matches!(
                meta.create_room(bad, false, alice, 1),
                Err(Error::InvalidInput(_))
            ));
        }
        let longest = "A.b_c-9".repeat(9) + "x";
        assert_eq!(longest.len(), 64);
        assert!(meta.create_room(&longest, false, alice, 1).is_ok());

        assert!(matches!(
            meta.create_user("alice", PHC, 1),
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(meta.ensure_external_user("alice", 2).unwrap(), alice);
        meta.create_room("lobby", false, alice, 1).unwrap();
        assert!(matches!(
            meta.create_room("lobby", true, alice, 1),
            Err(Error::AlreadyExists(_))
        ));
        // Case-sensitive: a different name.
        assert!(meta.create_room("Lobby", false, alice, 1).is_ok());
        assert!(matches!(
            meta.create_room("nobody", false, 99, 1),
            Err(Error::NotFound(_))
        ));
        assert_eq!(meta.users().unwrap().len(), 1);
    }

    /// A PHC string as the server stores (the hash of nothing in
    /// particular: this crate never hashes).
    const PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";

    #[test]
    fn password_hashes_are_stored_as_given_and_never_shown() {
        let (_dir, meta) = fresh();
        let id = meta.create_user("bob", PHC, 7).unwrap();
        for bad in ["", "hunter2", &"$".repeat(513)] {
            assert!(matches!(
                meta.create_user("carol", bad, 1),
                Err(Error::InvalidInput(_))
            ));
        }
        let stored = meta.user(id).unwrap().unwrap();
        assert_eq!((stored.name.as_str(), stored.created_ms), ("bob", 7));
        assert_eq!(stored.password_hash.as_deref(), Some(PHC));
        assert!(
            !format!("{stored:?}").contains("argon2"),
            "Debug leaks the hash"
        );
        assert_eq!(meta.user_by_name("bob").unwrap(), Some(stored));
        let ext = user(&meta, "ext");
        assert_eq!(meta.user(ext).unwrap().unwrap().password_hash, None);
    }

    #[test]
    fn sessions_expire_and_delete() {
        let (_dir, meta) = fresh();
        let alice = user(&meta, "alice");
        let (a, b) = ([1u8; 32], [2u8; 32]);
        meta.create_session(&a, alice, 100).unwrap();
        meta.create_session(&b, alice, 200).unwrap();
        assert!(matches!(
            meta.create_session(&a, alice, 500),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            meta.create_session(&[3; 32], 99, 500),
            Err(Error::NotFound(_))
        ));

        assert_eq!(meta.session(&a, 99).unwrap(), Some(alice));
        assert_eq!(meta.session(&a, 100).unwrap(), None);
        assert_eq!(meta.session(&[3; 32], 0).unwrap(), None);

        assert_eq!(meta.purge_expired_sessions(150).unwrap(), 1);
        assert_eq!(meta.session(&b, 150).unwrap(), Some(alice));
        assert!(meta.delete_session(&b).unwrap());
        assert!(!meta.delete_session(&b).unwrap());
        assert_eq!(meta.session(&b, 150).unwrap(), None);
        assert_eq!(meta.purge_expired_sessions(u64::MAX).unwrap(), 0);
    }

    #[test]
    fn private_rooms_are_visible_to_members_only() {
        let (_dir, meta) = fresh();
        let (alice, bob) = (user(&meta, "alice"), user(&meta, "bob"));
        let lobby = meta.create_room("lobby", false, alice, 1).unwrap();
        let secret = meta.create_room("secret", true, alice, 2).unwrap();
        let ids = |rooms: Vec<Room>| rooms.into_iter().map(|r| r.id).collect::<Vec<_>>();

        assert_eq!(ids(meta.visible_rooms(alice).unwrap()), [lobby, secret]);
        assert_eq!(ids(meta.visible_rooms(bob).unwrap()), [lobby]);
        assert_eq!(ids(meta.rooms().unwrap()), [lobby, secret]);
        meta.add_member(secret, bob, Role::Member).unwrap();
        assert_eq!(ids(meta.visible_rooms(bob).unwrap()), [lobby, secret]);
        assert!(matches!(meta.visible_rooms(99), Err(Error::NotFound(_))));

        let room = meta.room_by_name("secret").unwrap().unwrap();
        assert_eq!(
            (room.id, room.private, room.creator, room.created_ms),
            (secret, true, alice, 2)
        );
        assert_eq!(meta.room(secret).unwrap(), Some(room));
        assert_eq!(meta.room(99).unwrap(), None);
    }

    #[test]
    fn membership_tables_stay_consistent() {
        let (_dir, meta) = fresh();
        let (alice, bob) = (user(&meta, "alice"), user(&meta, "bob"));
        let room = meta.create_room("r", false, alice, 1).unwrap();
        assert_eq!(meta.members(room).unwrap(), [(alice, Role::Admin)]);
        assert_eq!(meta.rooms_of(alice).unwrap(), [room]);
        assert_eq!(meta.rooms_of(bob).unwrap(), Vec::<u64>::new());

        assert!(meta.add_member(room, bob, Role::Member).unwrap());
        assert!(!meta.add_member(room, bob, Role::Admin).unwrap());
        assert_eq!(meta.member_role(room, bob).unwrap(), Some(Role::Admin));
        assert_eq!(
            meta.members(room).unwrap(),
            [(alice, Role::Admin), (bob, Role::Admin)]
        );
        assert_eq!(meta.rooms_of(bob).unwrap(), [room]);

        assert!(meta.remove_member(room, bob).unwrap());
        assert!(!meta.remove_member(room, bob).unwrap());
        assert_eq!(meta.member_role(room, bob).unwrap(), None);
        assert_eq!(meta.members(room).unwrap(), [(alice, Role::Admin)]);
        assert_eq!(meta.rooms_of(bob).unwrap(), Vec::<u64>::new());

        for result in [
            meta.add_member(99, bob, Role::Member),
            meta.add_member(room, 99, Role::Member),
            meta.remove_member(99, bob),
            meta.remove_member(room, 99),
        ] {
            assert!(matches!(result, Err(Error::NotFound(_))));
        }
        assert!(matches!(meta.member_role(99, bob), Err(Error::NotFound(_))));
        assert!(matches!(meta.members(99), Err(Error::NotFound(_))));
        assert!(matches!(meta.rooms_of(99), Err(Error::NotFound(_))));
    }

    #[test]
    fn receipts_clamp_and_never_move_backwards() {
        let (_dir, meta) = fresh();
        let alice = user(&meta, "alice");
        let room = meta.create_room("r", false, alice, 1).unwrap();
        assert_eq!(meta.read_seq(room, alice).unwrap(), 0);
        assert_eq!(
            meta.mark_read(room, alice, 5).unwrap(),
            0,
            "clamped to last_seq 0"
        );

        meta.advance_last_seq(&[(room, 10)], false).unwrap();
        assert_eq!(meta.mark_read(room, alice, 5).unwrap(), 5);
        assert_eq!(
            meta.mark_read(room, alice, 3).unwrap(),
            5,
            "never backwards"
        );
        assert_eq!(meta.mark_read(room, alice, 50).unwrap(), 10, "clamped");
        assert_eq!(meta.read_seq(room, alice).unwrap(), 10);
        assert!(matches!(
            meta.mark_read(99, alice, 1),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            meta.mark_read(room, 99, 1),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(meta.read_seq(99, alice), Err(Error::NotFound(_))));

        meta.import_receipt(room, alice, 40).unwrap();
        meta.import_receipt(room, alice, 20).unwrap();
        assert_eq!(meta.receipts().unwrap(), [(room, alice, 40)]);
    }

    #[test]
    fn receipts_in_a_batch_have_their_own_outcomes() {
        let (_dir, meta) = fresh();
        let (alice, bob) = (user(&meta, "alice"), user(&meta, "bob"));
        let room = meta.create_room("r", false, alice, 1).unwrap();
        let out = meta
            .mark_read_many(&[
                (room, alice, 5, 8), // raises last_seq to 8, stores 5
                (room, bob, 50, 8),  // clamped to 8
                (99, alice, 1, 1),   // unknown room
                (room, 99, 1, 8),    // unknown user
                (room, alice, 3, 8), // never backwards
            ])
            .unwrap();
        assert_eq!(out.len(), 5);
        assert_eq!(*out[0].as_ref().unwrap(), 5);
        assert_eq!(*out[1].as_ref().unwrap(), 8);
        assert!(matches!(out[2], Err(Error::NotFound(_))));
        assert!(matches!(out[3], Err(Error::NotFound(_))));
        assert_eq!(*out[4].as_ref().unwrap(), 5);
        assert_eq!(meta.room(room).unwrap().unwrap().last_seq, 8);
        assert_eq!(meta.unread(room, alice).unwrap(), 3);
        assert_eq!(meta.unread(room, bob).unwrap(), 0);
        assert!(meta.mark_read_many(&[]).unwrap().is_empty());
    }

    #[test]
    fn unread_follows_last_seq() {
        let (_dir, meta) = fresh();
        let (alice, bob) = (user(&meta, "alice"), user(&meta, "bob"));
        let a = meta.create_room("a", false, alice, 1).unwrap();
        let b = meta.create_room("b", false, bob, 1).unwrap();
        meta.add_member(b, alice, Role::Member).unwrap();

        meta.advance_last_seq(&[(a, 7), (b, 3), (999, 5)], false)
            .unwrap();
        assert_eq!(meta.unread(a, alice).unwrap(), 7);
        meta.mark_read(a, alice, 4).unwrap();
        assert_eq!(meta.unread(a, alice).unwrap(), 3);
        assert_eq!(meta.unread_all(alice).unwrap(), [(a, 3), (b, 3)]);
        assert_eq!(meta.unread_all(bob).unwrap(), [(b, 3)]);

        meta.advance_last_seq(&[(a, 9), (b, 1)], true).unwrap();
        assert_eq!(meta.unread(a, alice).unwrap(), 5);
        assert_eq!(
            meta.room(b).unwrap().unwrap().last_seq,
            3,
            "never decreases"
        );
        meta.advance_last_seq(&[], false).unwrap();
        assert!(matches!(meta.unread(99, alice), Err(Error::NotFound(_))));
        assert!(matches!(meta.unread_all(99), Err(Error::NotFound(_))));

        // A receipt above last_seq (possible after import) reads as 0 unread.
        meta.import_receipt(b, bob, 100).unwrap();
        assert_eq!(meta.unread(b, bob).unwrap(), 0);
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let (alice, room) = {
            let meta = Meta::open(&path, 1 << 20).unwrap();
            let alice = user(&meta, "alice");
            let room = meta.create_room("r", true, alice, 1).unwrap();
            meta.create_session(&[9; 32], alice, DAY).unwrap();
            meta.advance_last_seq(&[(room, 12)], false).unwrap();
            meta.mark_read(room, alice, 8).unwrap();
            meta.close().unwrap();
            (alice, room)
        };
        let meta = Meta::open(&path, 1 << 20).unwrap();
        assert_eq!(meta.user_by_name("alice").unwrap().unwrap().id, alice);
        assert_eq!(meta.room(room).unwrap().unwrap().last_seq, 12);
        assert_eq!(meta.member_role(room, alice).unwrap(), Some(Role::Admin));
        assert_eq!(meta.rooms_of(alice).unwrap(), [room]);
        assert_eq!(meta.session(&[9; 32], 0).unwrap(), Some(alice));
        assert_eq!(meta.unread(room, alice).unwrap(), 4);
        assert!(user(&meta, "bob") > alice, "counter survives");
    }

    #[test]
    fn imports_bump_counters() {
        let (_dir, meta) = fresh();
        let imported = User {
            id: 10,
            name: "old".into(),
            created_ms: 5,
            password_hash: None,
        };
        meta.import_user(&imported).unwrap();
        assert_eq!(meta.user(10).unwrap(), Some(imported.clone()));
        assert!(matches!(
            meta.import_user(&imported),
            Err(Error::AlreadyExists(_))
        ));
        let renamed = User {
            name: "new".into(),
            ..imported.clone()
        };
        assert!(matches!(
            meta.import_user(&renamed),
            Err(Error::AlreadyExists(_))
        ));
        let zero = User {
            id: 0,
            name: "zero".into(),
            ..imported.clone()
        };
        assert!(matches!(
            meta.import_user(&zero),
            Err(Error::InvalidInput(_))
        ));
        let bad_hash = User {
            id: 11,
            name: "h".into(),
            password_hash: Some("x".into()),
            ..imported
        };
        assert!(matches!(
            meta.import_user(&bad_hash),
            Err(Error::InvalidInput(_))
        ));
        let next_user = user(&meta, "fresh");
        assert_eq!(next_user, 11);

        let room = Room {
            id: 42,
            name: "archive".into(),
            private: false,
            creator: 10,
            created_ms: 3,
            last_seq: 77,
        };
        meta.import_room(&room).unwrap();
        assert_eq!(meta.room(42).unwrap(), Some(room.clone()));
        assert!(matches!(
            meta.import_room(&room),
            Err(Error::AlreadyExists(_))
        ));
        let orphan = Room {
            id: 43,
            name: "orphan".into(),
            creator: 99,
            ..room
        };
        assert!(matches!(meta.import_room(&orphan), Err(Error::NotFound(_))));
        assert_eq!(meta.create_room("next", false, next_user, 4).unwrap(), 43);
        assert_eq!(
            meta.members(42).unwrap(),
            Vec::new(),
            "import adds no member"
        );
    }
}
