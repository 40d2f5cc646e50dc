//! Accounts, sessions, rooms and members, as an application sees them
//! (the server's accounts and rooms): the engine's one door to the
//! metadata (`meta.redb`), so nothing above the engine names a storage
//! type. Every method is a blocking call (one redb transaction): from a
//! shard's reactor, run it on the blocking pool.
//!
//! What changes who may post (creating a room, any change of standing)
//! is not here: it goes through the room's owner shard, which keeps that
//! in memory ([`crate::Engine::create_room`],
//! [`crate::Engine::membership`]).

use std::sync::Arc;

use rookery_storage::Meta;

use crate::error::Result;

pub use rookery_storage::meta::{
    Ban, Dm, DmOpened, Invite, ListPage, MemberChange, MemberEvent, MemberView, Profile,
    ProfileEdit, Role, Room, SearchCursor, SearchPage, Standing, Upload, User,
    INVITES_PER_USER_MAX, MEMBER_FEED_STREAM, QUERY_WORDS_MAX, WORD_BYTES_MAX,
};

/// A handle on the directory (cheap to clone, usable from any thread).
#[derive(Clone)]
pub struct Directory {
    meta: Arc<Meta>,
}

impl Directory {
    pub(crate) fn new(meta: Arc<Meta>) -> Directory {
        Directory { meta }
    }

    // ---- accounts ------------------------------------------------------

    /// Registers `name` with a password hash (a PHC string the caller made;
    /// the engine never sees a password). `InvalidInput` for a bad name or
    /// hash, `AlreadyExists` for a taken name.
    pub fn create_user(&self, name: &str, password_hash: &str, now_ms: u64) -> Result<u64> {
        Ok(self.meta.create_user(name, password_hash, now_ms)?)
    }

    /// The id of the user an application backend vouches for as
    /// `subject` (a JWT's `sub`), created without a password if new.
    /// Subjects are their own namespace: never a registered user.
    pub fn ensure_external_user(&self, subject: &str, now_ms: u64) -> Result<u64> {
        Ok(self.meta.ensure_external_user(subject, now_ms)?)
    }

    pub fn user(&self, id: u64) -> Result<Option<User>> {
        Ok(self.meta.user(id)?)
    }

    /// How many users and rooms the directory holds (on this node).
    pub fn counts(&self) -> Result<(u64, u64)> {
        Ok(self.meta.counts()?)
    }

    /// The registered user called `name` (in any case).
    pub fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        Ok(self.meta.user_by_name(name)?)
    }

    /// The user a backend vouches for as `subject`.
    pub fn external_user(&self, subject: &str) -> Result<Option<User>> {
        Ok(self.meta.external_user(subject)?)
    }

    // ---- sessions ------------------------------------------------------

    /// Stores a session by the hash of its token, until `expires_ms`.
    pub fn create_session(&self, token_hash: &[u8; 32], user: u64, expires_ms: u64) -> Result<()> {
        Ok(self.meta.create_session(token_hash, user, expires_ms)?)
    }

    /// The user of a live session, and when the session expires.
    pub fn session(&self, token_hash: &[u8; 32], now_ms: u64) -> Result<Option<(u64, u64)>> {
        Ok(self.meta.session(token_hash, now_ms)?)
    }

    /// Ends a session; false when there was none.
    pub fn delete_session(&self, token_hash: &[u8; 32]) -> Result<bool> {
        Ok(self.meta.delete_session(token_hash)?)
    }

    /// Ends every session of `user` but `keep`; the ended ones' hashes and
    /// expiries.
    pub fn delete_sessions_of(
        &self,
        user: u64,
        keep: Option<&[u8; 32]>,
    ) -> Result<Vec<([u8; 32], u64)>> {
        Ok(self.meta.delete_sessions_of(user, keep)?)
    }

    /// Replaces `user`'s password hash (a PHC string made by the caller).
    pub fn set_password(&self, user: u64, password_hash: &str) -> Result<()> {
        Ok(self.meta.set_password(user, password_hash)?)
    }

    // ---- a cluster's replica ----------------------------------------------
    //
    // A cluster node keeps users and sessions as the cluster recorded them
    // (docs/cluster.md): it takes ids here and writes what the cluster's
    // key-value store says, so every read above stays local.

    /// The key `name` is unique under among users (registered names in
    /// lower case; JWT subjects, `external`, apart); `InvalidInput` for a
    /// name registration would refuse.
    pub fn unique_user_key(name: &str, external: bool) -> Result<String> {
        Ok(rookery_storage::meta::unique_user_key(name, external)?)
    }

    /// Writes a user as the cluster recorded it (insert, or a new hash).
    pub fn replicate_user(&self, user: &User) -> Result<()> {
        Ok(self.meta.replicate_user(user)?)
    }

    /// Applies the cluster's changes `writes` in one transaction (all or
    /// none).
    pub fn replicate_batch(&self, writes: &[rookery_storage::Replicated]) -> Result<()> {
        Ok(self.meta.replicate_batch(writes)?)
    }

    /// Writes a session as the cluster recorded it.
    pub fn replicate_session(
        &self,
        token_hash: &[u8; 32],
        user: u64,
        expires_ms: u64,
    ) -> Result<()> {
        Ok(self.meta.replicate_session(token_hash, user, expires_ms)?)
    }

    /// The sessions of `user` but `keep`: hashes and expiries.
    pub fn sessions_of(&self, user: u64, keep: Option<&[u8; 32]>) -> Result<Vec<([u8; 32], u64)>> {
        Ok(self.meta.sessions_of(user, keep)?)
    }

    // ---- profiles and the user directory -------------------------------------

    /// User `user`'s profile, if the user exists.
    pub fn profile(&self, user: u64) -> Result<Option<Profile>> {
        Ok(self.meta.profile(user)?)
    }

    /// Sets user `user`'s display name and status text (`InvalidInput`
    /// past their bounds or with a control character, `NotFound` for an
    /// unknown user).
    pub fn set_profile(
        &self,
        user: u64,
        display_name: &str,
        status: &str,
        now_ms: u64,
    ) -> Result<()> {
        Ok(self.meta.set_profile(user, display_name, status, now_ms)?)
    }

    /// Changes what is given of user `user`'s profile and keeps the rest,
    /// in one transaction; the profile as written (errors as
    /// [`Directory::set_profile`]; `NotFound` for an avatar that is no
    /// upload of theirs, `InvalidInput` for one that is no image).
    pub fn edit_profile(&self, user: u64, edit: &ProfileEdit<'_>, now_ms: u64) -> Result<Profile> {
        Ok(self.meta.edit_profile(user, edit, now_ms)?)
    }

    /// Records when users were last active, `(user, ms)` (never moving
    /// back; not durable on its own: a crash may lose the last seconds).
    pub fn note_seen(&self, seen: &[(u64, u64)]) -> Result<()> {
        Ok(self.meta.note_seen(seen)?)
    }

    /// The words a user search looks for in `query` (each must begin a
    /// word of a user's names), no word twice.
    pub fn query_words(query: &str) -> Vec<String> {
        rookery_storage::meta::query_words(query)
    }

    /// Checks a display name and a status text as
    /// [`Directory::set_profile`] does (`InvalidInput` otherwise).
    pub fn check_profile(display_name: &str, status: &str) -> Result<()> {
        Ok(rookery_storage::meta::check_profile(display_name, status)?)
    }

    /// A page of the users with, for every word of `query`, a word of
    /// their name or display name beginning with it (any case): at most
    /// `len`, after `after`, reading a bounded number of index rows.
    pub fn search_users(
        &self,
        query: &str,
        after: Option<&SearchCursor>,
        len: usize,
    ) -> Result<SearchPage> {
        Ok(self.meta.search_users(query, after, len)?)
    }

    // ---- rooms and members -----------------------------------------------

    pub fn room(&self, id: u64) -> Result<Option<Room>> {
        Ok(self.meta.room(id)?)
    }

    /// A page of the public rooms and the private ones `user` is a member
    /// of, ordered by id: at most `len` after the room id `after` (a page
    /// reads a bounded number of rooms, so it may be short and still have
    /// a `next`).
    pub fn visible_rooms(&self, user: u64, after: u64, len: usize) -> Result<ListPage<Room>> {
        Ok(self.meta.visible_rooms(user, after, len)?)
    }

    /// A page of `user`'s direct-message rooms, by the other user's id:
    /// at most `len` after the user id `after` (a page reads a bounded
    /// number of rows, so it may be short and still have a `next`); those
    /// `user` left only when `with_left` is set.
    pub fn dms_of(
        &self,
        user: u64,
        after: u64,
        len: usize,
        with_left: bool,
    ) -> Result<ListPage<Dm>> {
        Ok(self.meta.dms_of(user, after, len, with_left)?)
    }

    /// The two users of `room` (lower id first), if it is a
    /// direct-message room.
    pub fn dm_pair(&self, room: u64) -> Result<Option<(u64, u64)>> {
        Ok(self.meta.dm_pair(room)?)
    }

    /// The direct-message room of `user` and `other`, if they have one.
    pub fn dm_between(&self, user: u64, other: u64) -> Result<Option<u64>> {
        Ok(self.meta.dm_between(user, other)?)
    }

    /// The rooms `user` is a member of.
    pub fn rooms_of(&self, user: u64) -> Result<Vec<u64>> {
        Ok(self.meta.rooms_of(user)?)
    }

    pub fn member_role(&self, room: u64, user: u64) -> Result<Option<Role>> {
        Ok(self.meta.member_role(room, user)?)
    }

    /// Members of `room` with their roles.
    pub fn members(&self, room: u64) -> Result<Vec<(u64, Role)>> {
        Ok(self.meta.members(room)?)
    }

    /// A page of the members of `room`: at most `len` after the user id
    /// `after`, ordered by id.
    pub fn members_page(&self, room: u64, after: u64, len: usize) -> Result<ListPage<(u64, Role)>> {
        Ok(self.meta.members_page(room, after, len)?)
    }

    /// `user`'s standing in `room`: role, ban, invitation.
    pub fn standing(&self, room: u64, user: u64) -> Result<Standing> {
        Ok(self.meta.standing(room, user)?)
    }

    /// A page of `room`'s bans: at most `len` after the user id `after`.
    pub fn bans_page(&self, room: u64, after: u64, len: usize) -> Result<ListPage<Ban>> {
        Ok(self.meta.bans_page(room, after, len)?)
    }

    /// `user`'s pending invitations, by room id.
    pub fn invites_of(&self, user: u64) -> Result<Vec<Invite>> {
        Ok(self.meta.invites_of(user)?)
    }

    /// The seq `user` has read up to in `room` (0 when none).
    pub fn read_seq(&self, room: u64, user: u64) -> Result<u64> {
        Ok(self.meta.read_seq(room, user)?)
    }

    // ---- durable readers (webhooks) ------------------------------------

    /// This data directory's random id (tells its events from another's).
    pub fn origin(&self) -> u64 {
        self.meta.origin()
    }

    /// Turns the membership feed on or off (see
    /// [`rookery_storage::meta::MemberEvent`]).
    pub fn set_member_feed(&self, on: bool) {
        self.meta.set_member_feed(on)
    }

    /// The last membership feed entry written (0: none).
    pub fn member_feed_end(&self) -> Result<u64> {
        Ok(self.meta.member_feed_end()?)
    }

    /// At least the last membership feed entry committed, without a
    /// transaction: a reader at or past it has nothing to read.
    pub fn member_feed_hint(&self) -> u64 {
        self.meta.member_feed_hint()
    }

    /// Up to `len` membership feed entries after entry `after`.
    pub fn member_feed_page(&self, after: u64, len: usize) -> Result<Vec<MemberEvent>> {
        Ok(self.meta.member_feed_page(after, len)?)
    }

    /// Every durable reader's saved cursors: `(reader, stream, position)`.
    pub fn feed_cursors(&self) -> Result<Vec<(String, u32, u64)>> {
        Ok(self.meta.feed_cursors()?)
    }

    /// Saves reader `name`'s cursors, durably.
    pub fn save_feed_cursors(&self, name: &str, cursors: &[(u32, u64)]) -> Result<()> {
        Ok(self.meta.save_feed_cursors(name, cursors)?)
    }

    /// Forgets reader `name`'s cursors.
    pub fn drop_feed_cursors(&self, name: &str) -> Result<()> {
        Ok(self.meta.drop_feed_cursors(name)?)
    }
}
