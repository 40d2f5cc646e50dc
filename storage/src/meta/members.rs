//! Membership with roles, in two tables written together in one
//! transaction: room -> (user, role) and user -> rooms. Members leave
//! through [`Meta::change_membership`], which also remembers them as
//! former members.

use redb::WriteTransaction;

use super::*;

impl Meta {
    /// Makes `user` a member of `room` with `role`, or changes its role;
    /// returns whether it was not a member before.
    ///
    /// Errors: `NotFound` for an unknown room or user; `InvalidInput` for a
    /// direct-message room and anyone but its two, or any role but member.
    pub fn add_member(&self, room: u64, user: u64, role: Role) -> Result<bool> {
        let joined = self.write(|txn| {
            require_room(&txn.open_table(ROOMS)?, room)?;
            require_user(&txn.open_table(USERS)?, user)?;
            if let Some((a, b)) = txn.open_table(DM_ROOMS)?.get(room)?.map(|g| g.value()) {
                if (user != a && user != b) || role != Role::Member {
                    return Err(Error::InvalidInput(format!(
                        "room {room} is a direct message: its members are users {a} and {b}, neither an owner nor an admin"
                    )));
                }
            }
            let joined = put_member(txn, room, user, role)?;
            if joined {
                self.note_member(txn, (room, user, SERVER_USER, true), feed::now_ms())?;
            }
            Ok(joined)
        })?;
        self.ring_member_feed();
        Ok(joined)
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

    /// Returns a page of the members of `room`, ordered by user id: at most
    /// `len` with an id above `after`.
    ///
    /// Errors: `NotFound` for an unknown room.
    pub fn members_page(&self, room: u64, after: u64, len: usize) -> Result<ListPage<(u64, Role)>> {
        self.read(|txn| {
            require_room(&txn.open_table(ROOMS)?, room)?;
            let mut page: ListPage<(u64, Role)> = ListPage {
                items: Vec::new(),
                next: None,
            };
            let Some(from) = after.checked_add(1) else {
                return Ok(page);
            };
            let members = txn.open_table(MEMBERS)?;
            for entry in members.range((room, from)..=(room, u64::MAX))? {
                let (key, role) = entry?;
                let user = key.value().1;
                if page.items.len() == len {
                    page.next = page.items.last().map_or(Some(after), |m| Some(m.0));
                    break;
                }
                page.items.push((user, Role::from_u8(role.value())?));
            }
            Ok(page)
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
}

/// Writes both membership tables; returns whether the user is a new member.
pub(super) fn put_member(txn: &WriteTransaction, room: u64, user: u64, role: Role) -> Result<bool> {
    let old = txn
        .open_table(MEMBERS)?
        .insert((room, user), role.to_u8())?
        .is_none();
    txn.open_table(USER_ROOMS)?.insert((user, room), ())?;
    Ok(old)
}
