//! The shared metadata database `DATA/meta.redb`.
//!
//! [`Meta`] owns everything that is not a message: users and their password
//! hashes, login sessions, rooms, room membership with roles, and per-user
//! read receipts. The data is small and rarely written, so one redb file
//! serves all shards; every method is a blocking call that runs one redb
//! transaction and must not be called on a shard's reactor thread.
//!
//! Each domain has its file (`users`, `sessions`, `rooms`, `members`,
//! `standing` (bans, invitations and the transactional membership change),
//! `dms` (direct-message rooms), `profiles` (the user directory),
//! `receipts`, `migrate`); this one holds the tables, the row types, the checks every
//! domain shares and the transaction helpers.
//!
//! Invariants kept across all writers:
//!
//! - Ids of users and rooms come from per-kind counters, start at 1 and are
//!   never reused; imports move the counter past the imported id.
//! - Names are 1..=64 bytes of `[A-Za-z0-9_.-]`, stored as given (the
//!   display form) and compared in ASCII lower case. Registered users'
//!   names are unique among registered users; users a backend vouches for
//!   (JWT subjects) live in their own namespace (`user_names` keys them
//!   `jwt:` + subject, a form no registered name can take), so neither can
//!   reach the other. Public rooms' names are unique among public rooms;
//!   private rooms' names are not indexed (a name taken by a private room
//!   must not reveal that room). `user_names` maps exactly the users,
//!   `room_names` exactly the public rooms.
//! - Every room with members has at least one owner, unless it was
//!   imported without one or is a direct-message room, which has none.
//! - A banned user is neither a member nor invited; an invited user is not
//!   a member. Bans, invitations and former members live in `(room, user)`
//!   tables; invitations are mirrored in `(user, room)`, written together.
//! - A room's `last_seq` never moves backwards.
//! - A read receipt never moves backwards, and [`Meta::mark_read`] never
//!   stores more than the room's `last_seq`.
//! - Membership lives in two tables, `(room, user) -> role` and
//!   `(user, room)`, always written together in one transaction.
//! - Every member, receipt and session row names a user (and room) that
//!   exists. Users are never deleted; a room is deleted only by
//!   [`Meta::delete_room`], which removes every row naming it in one
//!   transaction except its retention row (its history stays retired) and
//!   remembers its id in `deleted_rooms`, so that no room takes it again.
//!
//! The account of a new JWT subject ([`Meta::ensure_external_user`]) may
//! commit with [`Durability::None`], its id taken from a block of ids
//! reserved durably beforehand: a crash can lose the account (the subject
//! gets a new id when it next signs in), never hand its id to someone
//! else, and every durable commit that could name the account (the
//! membership a post needs, a room it owns) persists it first. Opening
//! the file skips what is left of the block, so a restart may leave a gap
//! of up to [`USER_ID_BLOCK_LEN`] - 1 user ids.
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

use crate::config::IdFilter;
use crate::error::{Error, Result};

mod backup;
mod dms;
mod feed;
mod members;
mod migrate;
mod profiles;
mod receipts;
mod rooms;
mod sessions;
mod standing;
#[cfg(test)]
mod tests;
mod uploads;
mod users;

pub use backup::{count_read_only, forget_uploads, MetaCopy};
pub use dms::{Dm, DmOpened};
pub use feed::{MemberEvent, MEMBER_FEED_LEN_MAX, MEMBER_FEED_STREAM};
pub use profiles::{
    check_profile, query_words, words_of, Profile, ProfileEdit, SearchCursor, SearchPage,
    DISPLAY_NAME_BYTES_MAX, QUERY_WORDS_MAX, SEARCH_SCAN_ROWS_MAX, STATUS_BYTES_MAX,
    WORDS_PER_USER_MAX, WORD_BYTES_MAX,
};
use rooms::last_seq;
pub use standing::{
    Ban, Invite, MemberChange, MemberView, Standing, INVITES_PER_USER_MAX, SERVER_USER,
};
pub use uploads::{Upload, UPLOAD_CHARGE_BYTES_MIN, UPLOAD_NAME_BYTES_MAX};

/// Row of `users`: (name, created_ms, password_hash).
type UserRow = (&'static str, u64, Option<&'static str>);

/// Row of `profiles`: (display name, status text, updated_ms).
type ProfileRow = (&'static str, &'static str, u64);

/// Row of `uploads`: (owner, bytes, created_ms, refs, content type, file
/// name, sha-256, (width, height) of an image (0s otherwise), bytes of its
/// thumbnail (0: none)).
type UploadRow = (
    u64,
    u64,
    u64,
    u64,
    &'static str,
    &'static str,
    &'static [u8],
    (u32, u32),
    u64,
);

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

/// (room, user) -> (banned by, when ms).
const BANS: TableDefinition<(u64, u64), (u64, u64)> = TableDefinition::new("bans");

/// (room, user) -> (invited by, when ms).
const INVITES: TableDefinition<(u64, u64), (u64, u64)> = TableDefinition::new("invites");

/// (user, room): the mirror of `invites`, for listing a user's invitations.
const USER_INVITES: TableDefinition<(u64, u64), ()> = TableDefinition::new("user_invites");

/// (room, user) -> when they last stopped being a member (ms): whom a ban
/// still reaches after they left.
const FORMER: TableDefinition<(u64, u64), u64> = TableDefinition::new("former_members");

/// (room, user) -> highest seq read.
const RECEIPTS: TableDefinition<(u64, u64), u64> = TableDefinition::new("receipts");

/// Deleted rooms: room -> when (ms). Their ids are never handed out or
/// taken again; their retention row stays, keeping their history retired.
const DELETED_ROOMS: TableDefinition<u64, u64> = TableDefinition::new("deleted_rooms");

/// Per-room retention: room -> (low seq, keep messages, keep age ms). Kept
/// here, not in a shard index, because it is not derivable from the log:
/// after an index rebuild, retired messages must stay retired.
const RETENTION: TableDefinition<u64, (u64, u64, u64)> = TableDefinition::new("retention");

/// Durable readers' positions: (reader, stream) -> position (see
/// `feed.rs`).
const FEED_CURSORS: TableDefinition<(&str, u32), u64> = TableDefinition::new("feed_cursors");

/// The membership feed: entry -> (room, user, by, when ms, joined).
const MEMBER_FEED: TableDefinition<u64, (u64, u64, u64, u64, bool)> =
    TableDefinition::new("member_feed");

/// (user, other) -> their direct-message room, written both ways (see
/// `dms.rs`).
const DMS: TableDefinition<(u64, u64), u64> = TableDefinition::new("dms");

/// Direct-message room -> its pair of users, the lower id first: the
/// mirror of `dms`.
const DM_ROOMS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("dm_rooms");

/// User -> their profile (see `profiles.rs`).
const PROFILES: TableDefinition<u64, ProfileRow> = TableDefinition::new("profiles");

/// User -> the upload their avatar is (see `profiles.rs`); the upload is
/// held by the row (room [`AVATAR_ROOM`], seq = user) of `upload_refs`.
const AVATARS: TableDefinition<u64, u128> = TableDefinition::new("avatars");

/// User -> when they were last active, ms (see `profiles.rs`).
const LAST_SEEN: TableDefinition<u64, u64> = TableDefinition::new("last_seen");

/// The room no room is (ids start at 1) under which an avatar holds its
/// upload (seq = the user).
pub(crate) const AVATAR_ROOM: u64 = 0;

/// (word, user): the words of users' names and display names, lower case,
/// for searching users by prefix (see `profiles.rs`).
const NAME_WORDS: TableDefinition<(&str, u64), ()> = TableDefinition::new("name_words");

/// Upload id -> what is known of the file (see `uploads.rs`).
const UPLOADS: TableDefinition<u128, UploadRow> = TableDefinition::new("uploads");

/// User -> bytes of their uploads (what their quota counts).
const UPLOAD_USAGE: TableDefinition<u64, u64> = TableDefinition::new("upload_usage");

/// (room, seq, upload): the uploads each stored message carries (see
/// `uploads.rs`); gone with the message (deleted, retired).
const UPLOAD_REFS: TableDefinition<(u64, u64, u128), ()> = TableDefinition::new("upload_refs");

/// (upload, room, seq): [`UPLOAD_REFS`] by upload (is it held?).
const UPLOAD_HOLDERS: TableDefinition<(u128, u64, u64), ()> =
    TableDefinition::new("upload_holders");

const USER_COUNTER: &str = "user";

/// The highest user id reserved durably for JWT subjects' accounts (see
/// the module doc), in `counters`.
const USER_RESERVED_COUNTER: &str = "user_reserved";

/// User ids reserved by one durable commit for JWT subjects' accounts,
/// which then commit without `fdatasync`: one new subject in this many pays
/// for a durable commit of its own.
pub const USER_ID_BLOCK_LEN: u64 = 64;

const ROOM_COUNTER: &str = "room";

/// The layout version, kept in `counters` (absent: 1, before names were
/// compared in lower case and rooms had owners; 2 before direct messages,
/// rooms with members and no owner, which an older build must not take for
/// rooms to give an owner; 3 before the index of names' words).
const SCHEMA_COUNTER: &str = "schema";

/// The layout this build writes; [`Meta::open`] upgrades older files.
const SCHEMA: u64 = 4;

/// Bytes of a user or room name at most (each of `[A-Za-z0-9_.-]`).
pub const NAME_BYTES_MAX: usize = 64;

/// A registered user.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Unique id, at least 1.
    pub id: u64,
    /// The name as registered (or the JWT subject): unique in lower case
    /// among registered users, or among JWT subjects.
    pub name: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Argon2 PHC string; `None` for users authenticated by an app backend
    /// (JWT subjects), who never sign in with a password.
    pub password_hash: Option<String>,
}

impl User {
    /// Whether an app backend vouches for this user (a JWT subject) rather
    /// than a password.
    pub fn external(&self) -> bool {
        self.password_hash.is_none()
    }
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
    /// The room's name (unique in lower case among public rooms).
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

/// One page of a list ordered by id: at most the asked number of items
/// after a cursor, and the cursor of the next page (`None`: none follows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage<T> {
    /// The items, ordered by id.
    pub items: Vec<T>,
    /// Pass as `after` for the next page.
    pub next: Option<u64>,
}

/// Rows of `rooms` one page of [`Meta::visible_rooms`] reads at most: a
/// user who can see few of many private rooms gets short pages (each with
/// a `next` cursor) rather than a scan of the whole table.
pub const ROOM_PAGE_SCAN_ROWS_MAX: usize = 4096;

/// A member's role in a room, ordered by rank (`Member < Admin < Owner`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Can read and post.
    Member,
    /// Can also invite, remove and ban members, and delete their messages.
    Admin,
    /// Can also manage admins and hand ownership on; the creator at first.
    Owner,
}

impl Role {
    fn to_u8(self) -> u8 {
        match self {
            Role::Member => 0,
            Role::Admin => 1,
            Role::Owner => 2,
        }
    }

    fn from_u8(byte: u8) -> Result<Role> {
        match byte {
            0 => Ok(Role::Member),
            1 => Ok(Role::Admin),
            2 => Ok(Role::Owner),
            _ => Err(Error::Database(format!("unknown role byte {byte}"))),
        }
    }
}

/// Handle on `meta.redb`. `Send + Sync`; share it through an `Arc`.
#[derive(Debug)]
pub struct Meta {
    db: Database,
    /// Which user and room ids this file may hand out (all when `None`).
    ids: Option<IdFilter>,
    /// This data directory's random id (see `ensure_origin`).
    origin: u64,
    /// Joins and leaves go into the membership feed.
    member_feed: std::sync::atomic::AtomicBool,
    /// The membership feed's last entry written (committed or about to
    /// be): readers look only when it is past theirs.
    member_feed_last: std::sync::atomic::AtomicU64,
    /// Rung once a join or leave is committed (the readers' bell).
    doorbell: std::sync::OnceLock<std::sync::Arc<crate::feed::Doorbell>>,
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
        txn.open_table(BANS)?;
        txn.open_table(INVITES)?;
        txn.open_table(USER_INVITES)?;
        txn.open_table(FORMER)?;
        txn.open_table(DELETED_ROOMS)?;
        txn.open_table(FEED_CURSORS)?;
        txn.open_table(MEMBER_FEED)?;
        txn.open_table(DMS)?;
        txn.open_table(DM_ROOMS)?;
        txn.open_table(PROFILES)?;
        txn.open_table(NAME_WORDS)?;
        txn.open_table(AVATARS)?;
        txn.open_table(LAST_SEEN)?;
        txn.open_table(UPLOADS)?;
        txn.open_table(UPLOAD_USAGE)?;
        txn.open_table(UPLOAD_REFS)?;
        txn.open_table(UPLOAD_HOLDERS)?;
        migrate::upgrade(&txn)?;
        ensure_origin(&txn)?;
        users::skip_reserved_user_ids(&txn)?;
        txn.commit()?;
        let last = txn_counter(&db, feed::MEMBER_FEED_COUNTER)?;
        let origin = txn_counter(&db, ORIGIN_COUNTER)?;
        Ok(Meta {
            origin,
            db,
            ids: None,
            member_feed: Default::default(),
            member_feed_last: last.into(),
            doorbell: Default::default(),
        })
    }

    /// Restricts the user and room ids this file hands out to those
    /// `ids` accepts (the ids a cluster node owns, so that nodes never
    /// hand out the same id). Imported and replicated rows keep theirs.
    pub fn with_id_filter(mut self, ids: Option<IdFilter>) -> Meta {
        self.ids = ids;
        self
    }

    /// Closes the database, reporting the errors that dropping it would
    /// ignore. Pending non-durable commits are made durable.
    pub fn close(self) -> Result<()> {
        Ok(self.db.close()?)
    }

    pub(super) fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T>) -> Result<T> {
        f(&self.db.begin_read()?)
    }

    pub(super) fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T>) -> Result<T> {
        self.write_with(Durability::Immediate, f)
    }

    /// Runs `f` in a write transaction and commits it; an error from `f`
    /// drops the transaction, which aborts it.
    ///
    /// Commits do not save redb's allocator state ("quick repair"): saving
    /// it doubled the CPU of every durable commit (about 100 µs more per
    /// join or new user on the 2-vCPU test VM, a quarter of what a connect
    /// costs), and all it spares is the repair redb does on the first open
    /// after a crash, which walks the file's trees: 42 ms for a 34 MiB
    /// file of 200,000 users and memberships (docs/storage.md).
    pub(super) fn write_with<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&WriteTransaction) -> Result<T>,
    ) -> Result<T> {
        self.write_deciding(|txn| Ok((f(txn)?, durability)))
    }

    /// Like [`Meta::write_with`], but `f` decides how durable its commit
    /// must be from what it found and wrote.
    pub(super) fn write_deciding<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<(T, Durability)>,
    ) -> Result<T> {
        let mut txn = self.db.begin_write()?;
        let (out, durability) = f(&txn)?;
        txn.set_durability(durability)?;
        txn.commit()?;
        Ok(out)
    }
}

// ---- helpers ----

/// Where this data directory's random id is kept, in `counters`.
const ORIGIN_COUNTER: &str = "origin";

/// Gives the data directory a random id if it has none: what tells its
/// events from another directory's (webhook event ids), so it is never
/// copied into another (`rookery-admin import` makes a new directory).
fn ensure_origin(txn: &WriteTransaction) -> Result<()> {
    use std::hash::BuildHasher;
    let mut counters = txn.open_table(COUNTERS)?;
    if counters.get(ORIGIN_COUNTER)?.is_none() {
        // RandomState is keyed from the OS's randomness.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let id = std::hash::RandomState::new().hash_one((nanos, std::process::id()));
        counters.insert(ORIGIN_COUNTER, id.max(1))?;
    }
    Ok(())
}

/// Counter `name` as committed (0 when never set).
fn txn_counter(db: &Database, name: &str) -> Result<u64> {
    let txn = db.begin_read()?;
    Ok(txn
        .open_table(COUNTERS)?
        .get(name)?
        .map_or(0, |g| g.value()))
}

fn validate_name(kind: &str, name: &str) -> Result<()> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if (1..=NAME_BYTES_MAX).contains(&name.len()) && name.bytes().all(allowed) {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "{kind} name must be 1..={NAME_BYTES_MAX} bytes of [A-Za-z0-9_.-] (got {} bytes)",
        name.len()
    )))
}

/// The key a registered user's name is unique under (lower case).
fn local_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// The key a JWT subject is unique under: `jwt:` cannot start a
/// registered name (`:` is not allowed in one).
fn external_key(subject: &str) -> String {
    format!("jwt:{subject}")
}

/// The key of a user row in `user_names`.
fn user_key(name: &str, external: bool) -> String {
    if external {
        external_key(name)
    } else {
        local_key(name)
    }
}

/// The key `name` is unique under among users, once checked: a registered
/// name in lower case, or `jwt:` and a JWT subject (`external`).
///
/// Errors: `InvalidInput` for a name [`Meta::create_user`] would refuse.
pub fn unique_user_key(name: &str, external: bool) -> Result<String> {
    validate_name("user", name)?;
    Ok(user_key(name, external))
}

/// The key a public room's name is unique under.
fn room_key(name: &str) -> String {
    name.to_ascii_lowercase()
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

/// Ids an [`IdFilter`] may turn down in a row before allocation gives up
/// (a filter that accepts one id in N turns down N-1 in a row on average).
const ID_FILTER_TRIES_MAX: u64 = 1 << 16;

/// One change of the cluster's records for [`Meta::replicate_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replicated {
    /// A user inserted, or its password hash replaced.
    User(User),
    /// A session inserted or replaced.
    Session {
        /// The SHA-256 of its bearer token.
        token_hash: [u8; 32],
        /// Its user.
        user: u64,
        /// When it ends, in Unix milliseconds.
        expires_ms: u64,
    },
    /// A session ended (logged out).
    SessionEnded([u8; 32]),
    /// A user's profile set.
    Profile {
        /// The user.
        user: u64,
        /// Their display name ("" for none).
        display_name: String,
        /// Their status text ("" for none).
        status: String,
        /// When it was set, in Unix milliseconds.
        updated_ms: u64,
        /// Their avatar (an upload of theirs; the node that holds it
        /// holds it for them).
        avatar: Option<u128>,
    },
}

/// Hands out the next id of `counter` that `ids` accepts.
fn next_id(txn: &WriteTransaction, counter: &str, ids: Option<&IdFilter>) -> Result<u64> {
    let mut counters = txn.open_table(COUNTERS)?;
    let mut id = counters.get(counter)?.map_or(0, |g| g.value());
    let exhausted = || Error::Database(format!("{counter} ids exhausted"));
    for _ in 0..ID_FILTER_TRIES_MAX {
        id = id.checked_add(1).ok_or_else(exhausted)?;
        if ids.is_none_or(|f| f.accepts(id)) {
            counters.insert(counter, id)?;
            return Ok(id);
        }
    }
    Err(exhausted())
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
