//! Accounts, sessions, rooms and members, as an application sees them
//! (the server's accounts and rooms): the engine's one door to the
//! metadata (`meta.redb`), so nothing above the engine names a storage
//! type. Every method is a blocking call (one redb transaction): from a
//! shard's reactor, run it on the blocking pool.
//!
//! What changes who may post (creating a room, adding or removing a
//! member) is not here: it goes through the room's owner shard, which
//! keeps that in memory ([`crate::Engine::create_room`],
//! [`crate::Engine::add_member`], [`crate::Engine::remove_member`]).

use std::sync::Arc;

use rookery_storage::Meta;

use crate::error::Result;

pub use rookery_storage::meta::{ListPage, Role, Room, User};

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

    /// The id of `name`, created without a password if new (a user an
    /// application backend vouches for).
    pub fn ensure_external_user(&self, name: &str, now_ms: u64) -> Result<u64> {
        Ok(self.meta.ensure_external_user(name, now_ms)?)
    }

    pub fn user(&self, id: u64) -> Result<Option<User>> {
        Ok(self.meta.user(id)?)
    }

    pub fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        Ok(self.meta.user_by_name(name)?)
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

    /// The seq `user` has read up to in `room` (0 when none).
    pub fn read_seq(&self, room: u64, user: u64) -> Result<u64> {
        Ok(self.meta.read_seq(room, user)?)
    }
}
