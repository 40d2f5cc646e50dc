//! Read receipts: never moving backwards, never past the room's last
//! seq; unread counts.

use redb::ReadableTable;

use super::rooms::{last_seq, raise_last_seqs};
use super::*;

impl Meta {
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
    /// `max(old, min(seq, last_seq))`. Each item gets its own outcome, the
    /// stored receipt and whether it moved: an unknown room or user is
    /// `NotFound` for that item only.
    pub fn mark_read_many(
        &self,
        items: &[(u64, u64, u64, u64)],
    ) -> Result<Vec<Result<(u64, bool)>>> {
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
                    Ok((old, new)) if new != old => {
                        receipts.insert((room, user), new).map(|_| (new, true))
                    }
                    Ok((old, _)) => Ok((old, false)),
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

    /// Returns a page of `room`'s members with their receipts, as
    /// `(user, seq)` ordered by user id: at most `len` members with an id
    /// above `after` (0 for one who has read nothing). One point read per
    /// member, so a page costs `len` reads however many receipts the room
    /// holds of former members.
    ///
    /// Errors: `NotFound` for an unknown room.
    pub fn markers_page(&self, room: u64, after: u64, len: usize) -> Result<ListPage<(u64, u64)>> {
        self.read(|txn| {
            require_room(&txn.open_table(ROOMS)?, room)?;
            let mut page: ListPage<(u64, u64)> = ListPage {
                items: Vec::new(),
                next: None,
            };
            let Some(from) = after.checked_add(1) else {
                return Ok(page);
            };
            let (members, receipts) = (txn.open_table(MEMBERS)?, txn.open_table(RECEIPTS)?);
            for entry in members.range((room, from)..=(room, u64::MAX))? {
                let user = entry?.0.value().1;
                if page.items.len() == len {
                    page.next = page.items.last().map_or(Some(after), |m| Some(m.0));
                    break;
                }
                page.items.push((user, receipt(&receipts, room, user)?));
            }
            Ok(page)
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
}

pub(super) fn receipt(
    receipts: &impl ReadableTable<(u64, u64), u64>,
    room: u64,
    user: u64,
) -> Result<u64> {
    Ok(receipts.get((room, user))?.map_or(0, |g| g.value()))
}

/// Current and next receipt of `user` in `room` for [`Meta::mark_read`].
pub(super) fn receipt_step(
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
