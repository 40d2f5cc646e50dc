//! What durable readers of the data directory (webhooks) need from
//! `meta.redb`: their cursors, and the membership feed.
//!
//! The membership feed numbers every join and leave from 1, written in the
//! transaction that makes the change, so that a reader that saved a cursor
//! misses none of them after a restart. It is on only while some reader
//! asked for it ([`Meta::set_member_feed`]) and it keeps the newest
//! [`MEMBER_FEED_LEN_MAX`] entries: each entry written removes the one that
//! many places behind it, so the table never grows past the bound even if
//! nobody reads it.
//!
//! A cursor is `(reader name, stream) -> position`: stream `k` below
//! [`MEMBER_FEED_STREAM`] is shard `k`'s log (the position is a
//! [`crate::Pos::to_u64`]), and [`MEMBER_FEED_STREAM`] is the membership
//! feed (the position is the last entry read). [`crate::Store::open`] holds
//! every shard's log from its lowest saved cursor on.

use std::sync::atomic::Ordering;

use redb::WriteTransaction;

use super::*;

/// Entries the membership feed keeps.
pub const MEMBER_FEED_LEN_MAX: u64 = 100_000;

/// The stream number of the membership feed in a reader's cursors.
pub const MEMBER_FEED_STREAM: u32 = u32::MAX;

/// The last membership feed entry written, in `counters`.
pub(super) const MEMBER_FEED_COUNTER: &str = "member_feed";

/// A join or a leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberEvent {
    /// Its number in the feed, from 1.
    pub id: u64,
    /// The room.
    pub room: u64,
    /// Who joined or left.
    pub user: u64,
    /// Who made the change (the user, an admin of the room, or
    /// [`SERVER_USER`]).
    pub by: u64,
    /// When, ms since the Unix epoch.
    pub ts_ms: u64,
    /// A join (else a leave, a removal or a ban).
    pub joined: bool,
}

/// The wall clock, ms since the Unix epoch (for changes made without a
/// caller's time).
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Meta {
    /// This data directory's random id, the same for its whole life
    /// (what tells its events from another directory's).
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// Turns the membership feed on or off (what is in it stays).
    pub fn set_member_feed(&self, on: bool) {
        self.member_feed.store(on, Ordering::Release);
    }

    /// Writes a join or a leave into the feed, if it is on.
    pub(super) fn note_member(
        &self,
        txn: &WriteTransaction,
        change: (u64, u64, u64, bool),
        now_ms: u64,
    ) -> Result<()> {
        if !self.member_feed.load(Ordering::Acquire) {
            return Ok(());
        }
        let (room, user, by, joined) = change;
        let id = next_id(txn, MEMBER_FEED_COUNTER, None)?;
        let mut feed = txn.open_table(MEMBER_FEED)?;
        // Times never go back along the feed (readers merge it with the
        // logs by time).
        let last_ts = feed.last()?.map_or(0, |(_, row)| row.value().3);
        feed.insert(id, (room, user, by, now_ms.max(last_ts), joined))?;
        if id > MEMBER_FEED_LEN_MAX {
            feed.remove(id - MEMBER_FEED_LEN_MAX)?;
        }
        self.member_feed_last.fetch_max(id, Ordering::AcqRel);
        Ok(())
    }

    /// Wakes the feed's readers (after a commit that may have noted a
    /// join or a leave).
    pub(super) fn ring_member_feed(&self) {
        if self.member_feed.load(Ordering::Acquire) {
            if let Some(bell) = self.doorbell.get() {
                bell.ring();
            }
        }
    }

    /// Rings `doorbell` whenever a join or a leave is committed.
    pub fn set_member_doorbell(&self, doorbell: std::sync::Arc<crate::feed::Doorbell>) {
        let _ = self.doorbell.set(doorbell);
    }

    /// At least the last membership feed entry committed (an entry being
    /// written may already count): a reader at or past it has nothing to
    /// read. No transaction.
    pub fn member_feed_hint(&self) -> u64 {
        self.member_feed_last.load(Ordering::Acquire)
    }

    /// The last membership feed entry written (0: none yet).
    pub fn member_feed_end(&self) -> Result<u64> {
        self.read(|txn| {
            Ok(txn
                .open_table(COUNTERS)?
                .get(MEMBER_FEED_COUNTER)?
                .map_or(0, |g| g.value()))
        })
    }

    /// Up to `len` membership feed entries after entry `after`, in order.
    /// Entries the bound removed are not there: the first one returned may
    /// be well past `after + 1`.
    pub fn member_feed_page(&self, after: u64, len: usize) -> Result<Vec<MemberEvent>> {
        self.read(|txn| {
            let feed = txn.open_table(MEMBER_FEED)?;
            let mut out = Vec::new();
            for row in feed.range(after.saturating_add(1)..)?.take(len) {
                let (id, row) = row?;
                let (room, user, by, ts_ms, joined) = row.value();
                out.push(MemberEvent {
                    id: id.value(),
                    room,
                    user,
                    by,
                    ts_ms,
                    joined,
                });
            }
            Ok(out)
        })
    }

    /// Every saved cursor: `(reader, stream, position)`.
    pub fn feed_cursors(&self) -> Result<Vec<(String, u32, u64)>> {
        self.read(|txn| {
            let mut out = Vec::new();
            for row in txn.open_table(FEED_CURSORS)?.iter()? {
                let (key, pos) = row?;
                let (name, stream) = key.value();
                out.push((name.to_string(), stream, pos.value()));
            }
            Ok(out)
        })
    }

    /// Saves reader `name`'s cursors, replacing all it had (durably: a
    /// reader resumes from here after a crash).
    pub fn save_feed_cursors(&self, name: &str, cursors: &[(u32, u64)]) -> Result<()> {
        self.write(|txn| {
            let mut table = txn.open_table(FEED_CURSORS)?;
            // The whole set: a stream the reader no longer reads holds
            // nothing.
            table.retain_in((name, 0)..=(name, u32::MAX), |_, _| false)?;
            for &(stream, pos) in cursors {
                table.insert((name, stream), pos)?;
            }
            Ok(())
        })
    }

    /// Forgets reader `name` (what its cursors held may go).
    pub fn drop_feed_cursors(&self, name: &str) -> Result<()> {
        self.write(|txn| {
            let mut table = txn.open_table(FEED_CURSORS)?;
            table.retain_in((name, 0)..=(name, u32::MAX), |_, _| false)?;
            Ok(())
        })
    }
}
