//! Deleting a room (owner side): posts refused from the first step, the
//! appends under way finished, every message retired durably, then the
//! room's rows removed from the metadata, and every subscription to it
//! ended on every shard with `left {reason: "deleted"}`.
//!
//! Invariant: nothing appended to the room after its messages were retired
//! (posts and edits hold an [`Appending`] turn from their access check to
//! their fan-out, and the delete waits for the room's turns to end after
//! it has stopped granting new ones). A crash between the steps leaves a
//! room with no history that can be deleted again.

use std::time::Duration;

use rookery_storage::meta::Room;
use rookery_storage::Role;

use super::access::Access;
use super::{now_ms, Shard};
use crate::error::{Error, Result};

/// The reason the `left` event ending a deleted room's subscriptions gives.
pub(crate) const DELETED: &str = "deleted";

/// How often a delete looks whether the room's appends under way ended.
const APPENDS_POLL: Duration = Duration::from_millis(1);

/// What [`crate::Engine::delete_room`] removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedRoom {
    /// The room as it was.
    pub room: Room,
    /// Its members as they were, by user id.
    pub members: Vec<(u64, Role)>,
    /// Messages retired (their text leaves the disk at the next compaction
    /// of the segments that hold them).
    pub messages: u64,
}

/// A post or an edit of a room under way on its owner (between its access
/// check and its fan-out): a delete waits for it.
pub(super) struct Appending<'a> {
    shard: &'a Shard,
    room: u64,
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        let mut turns = self.shard.appending.borrow_mut();
        let n = turns.get_mut(&self.room).expect("a turn was counted");
        *n -= 1;
        if *n == 0 {
            turns.remove(&self.room);
        }
    }
}

impl Shard {
    /// Counts a post or an edit of `room` as under way, after its access
    /// was checked (a room being deleted grants none).
    pub(super) fn appending(&self, room: u64) -> Appending<'_> {
        *self.appending.borrow_mut().entry(room).or_insert(0) += 1;
        Appending { shard: self, room }
    }

    /// Owner side of `Engine::delete_room`.
    pub(super) async fn delete_room(&self, room: u64) -> Result<DeletedRoom> {
        if matches!(self.access.borrow().get(&room), Some(Access::Deleting)) {
            // One delete at a time: the first one's end would let posts in
            // while a second one retires.
            return Err(Error::Conflict(format!("room {room} is being deleted")));
        }
        self.access_changed(room);
        self.access.borrow_mut().insert(room, Access::Deleting);
        let deleted = self.delete_steps(room).await;
        // Done or not, what the metadata says is read again on next use.
        self.forget_room(room);
        deleted
    }

    async fn delete_steps(&self, room: u64) -> Result<DeletedRoom> {
        while self.appending.borrow().contains_key(&room) {
            glommio::timer::sleep(APPENDS_POLL).await;
        }
        let retired = self.store.retire_room(room).await?;
        self.remove_upload_files(retired.uploads_freed).await;
        let meta = self.meta.clone();
        let (gone, members) = glommio::executor()
            .spawn_blocking(move || meta.delete_room(room, now_ms()))
            .await?;
        if let Some(o) = self.owned.borrow_mut().remove(&room) {
            self.tail_bytes.set(self.tail_bytes.get() - o.tail.bytes());
        }
        if let Some(tap) = &self.cfg.event_tap {
            tap.see(crate::config::Tapped::RoomDeleted { room });
        }
        self.revoke_everywhere(room, None, DELETED);
        Ok(DeletedRoom {
            room: gone,
            members,
            messages: retired.messages,
        })
    }
}
