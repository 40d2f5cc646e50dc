//! Posting counts as reading: a poster's read receipt follows their own
//! posts, so their own messages are never unread to them.
//!
//! A receipt per post would be a `meta.redb` write per post. Instead the
//! owner keeps each (room, poster)'s last own seq in memory, answers
//! `unread` from it at once, and hands the receipts to the batched writer
//! once per [`OWN_READS_FLUSH`], at most one per room and poster.
//! Invariant: an entry stays until the flush after the one that sent it, so
//! `unread` never sees the gap between the hand-off and the commit; the map
//! holds the (room, poster) pairs that posted within two flush periods.

use std::time::Duration;

use super::Shard;
use crate::receipts::Receipt;

/// How often own-post receipts go to the writer (while there are some).
pub(crate) const OWN_READS_FLUSH: Duration = Duration::from_millis(500);

/// A poster's last own message in a room, and whether its receipt went to
/// the writer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OwnRead {
    seq: u64,
    sent: bool,
}

impl Shard {
    /// Owner side: `user` posted `seq` in `room`.
    pub(super) fn note_own_read(&self, room: u64, user: u64, seq: u64) {
        let mut reads = self.own_reads.borrow_mut();
        if reads.is_empty() {
            self.own_reads_bell.ring();
        }
        let e = reads
            .entry((room, user))
            .or_insert(OwnRead { seq, sent: false });
        if seq >= e.seq {
            *e = OwnRead { seq, sent: false };
        }
    }

    /// Owner side: the last seq `user` posted in `room` not yet certainly
    /// in the stored receipts (0 if none).
    pub(super) fn own_read(&self, room: u64, user: u64) -> u64 {
        self.own_reads
            .borrow()
            .get(&(room, user))
            .map_or(0, |e| e.seq)
    }

    /// Sends the receipts of new own posts to the writer and forgets those
    /// sent a flush ago; whether some remain. Own posts take at most half
    /// of the writer's queue, so that receipts users ask for are not
    /// refused for them; the rest wait for the next flush.
    pub(crate) fn flush_own_reads(&self) -> bool {
        let share = self.receipts.capacity().unwrap_or(usize::MAX) / 2;
        let mut reads = self.own_reads.borrow_mut();
        reads.retain(|&(room, user), e| {
            if e.sent {
                return false;
            }
            if self.receipts.len() >= share {
                return true;
            }
            // Nobody waits for the answer: the pending half is dropped.
            let (reply, _) = crate::reply::Pending::<u64>::channel();
            let receipt = Receipt {
                room,
                user,
                seq: e.seq,
                last: self.store.last_seq(room),
                reply,
                moved: None,
            };
            e.sent = self.receipts.try_send(Some(receipt)).is_ok();
            true
        });
        !reads.is_empty()
    }
}
