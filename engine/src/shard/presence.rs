//! Who is online in a room: each shard counts its subscriptions per
//! (room, user) and tells the owner of the first and the last; the owner
//! counts shards per user and announces a user's first and last.
//!
//! Invariant: a presence event is fanned out only when a user's count of
//! shards crosses between zero and non-zero.

use rustc_hash::FxHashMap as HashMap;

use super::mesh::Peer;
use super::Shard;
use crate::event::Event;

impl Shard {
    /// Counts a user's subscriptions to a room on this shard; the first and
    /// the last are reported to the room's owner.
    pub(super) fn local_presence(&self, room: u64, user: u64, on: bool) {
        let changed = count(&mut self.present.borrow_mut(), (room, user), on);
        if !changed {
            return;
        }
        let owner = self.owner(room);
        if owner == self.id {
            self.presence_changed(room, user, on);
        } else {
            self.push_peer(owner, Peer::Presence { room, user, on });
        }
    }

    /// Owner side: a shard gained its first or lost its last subscription
    /// of `user` in `room`; the user's first and last across all shards are
    /// announced.
    pub(super) fn presence_changed(&self, room: u64, user: u64, on: bool) {
        // An end of presence needs no state (the room may be gone).
        if on {
            self.ensure_owned(room);
        }
        let announce = match self.owned.borrow_mut().get_mut(&room) {
            Some(o) => count(&mut o.online, user, on),
            None => false,
        };
        if announce {
            self.fan_out(Event::presence(room, user, on));
        }
    }

    /// Users online in a room (owner side), ascending.
    pub(super) fn online(&self, room: u64) -> Vec<u64> {
        let mut users: Vec<u64> = self
            .owned
            .borrow()
            .get(&room)
            .map(|o| o.online.keys().copied().collect())
            .unwrap_or_default();
        users.sort_unstable();
        users
    }
}

/// Counts one up (`on`) or down for `key`, forgetting zeros; true when the
/// count crossed between zero and non-zero (a first join or a last leave).
pub(super) fn count<K: std::hash::Hash + Eq + Copy>(
    counts: &mut HashMap<K, u32>,
    key: K,
    on: bool,
) -> bool {
    let n = counts.entry(key).or_insert(0);
    let before = *n;
    *n = if on {
        before + 1
    } else {
        before.saturating_sub(1)
    };
    let after = *n;
    if after == 0 {
        counts.remove(&key);
    }
    (before == 0) != (after == 0)
}
