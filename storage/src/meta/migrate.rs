//! Upgrades of `meta.redb` from older layouts, run inside the transaction
//! that opens the file. Schema 1 → 2: name keys are lower case (JWT
//! subjects under `jwt:`), private rooms leave the name index, and each
//! room with members gets an owner ([`name_owners`]). Two names that
//! differ only in case cannot both be kept: the upgrade then fails and
//! names them, and the file is left as it was. Schema 2 → 3 adds the
//! direct-message tables, empty; 3 → 4 indexes the words of every user's
//! name (`profiles.rs`).

use redb::{ReadableTable, WriteTransaction};

use super::*;

/// Brings the file to [`SCHEMA`]; a no-op when it is there already.
pub(super) fn upgrade(txn: &WriteTransaction) -> Result<()> {
    let mut counters = txn.open_table(COUNTERS)?;
    let version = counters.get(SCHEMA_COUNTER)?.map_or(1, |g| g.value());
    if version == SCHEMA {
        return Ok(());
    }
    if version > SCHEMA {
        return Err(Error::Database(format!(
            "meta.redb has schema {version}, newer than this build's {SCHEMA}"
        )));
    }
    if version < 2 {
        rekey_users(txn)?;
        rekey_rooms(txn)?;
        name_owners(txn)?;
    }
    // 2 -> 3: the direct-message tables, created empty by `Meta::open`.
    // 3 -> 4: the index of the words of users' names.
    if version < 4 {
        super::profiles::index_all(txn)?;
    }
    counters.insert(SCHEMA_COUNTER, SCHEMA)?;
    Ok(())
}

fn rekey_users(txn: &WriteTransaction) -> Result<()> {
    let users: Vec<(u64, String, bool)> = txn
        .open_table(USERS)?
        .iter()?
        .map(|row| {
            let (id, row) = row?;
            let (name, _, hash) = row.value();
            Ok((id.value(), name.to_owned(), hash.is_none()))
        })
        .collect::<Result<_>>()?;
    let mut names = txn.open_table(USER_NAMES)?;
    names.retain(|_, _| false)?;
    for (id, name, external) in users {
        let key = user_key(&name, external);
        if let Some(other) = names.insert(key.as_str(), id)? {
            return Err(Error::Database(format!(
                "users {} and {id} ({name:?}) have the same name in lower case, which \
                 schema 2 does not allow: export with the older build (rookery-admin \
                 export), rename one in the export and import it",
                other.value()
            )));
        }
    }
    Ok(())
}

fn rekey_rooms(txn: &WriteTransaction) -> Result<()> {
    let public: Vec<(u64, String)> = txn
        .open_table(ROOMS)?
        .iter()?
        .filter_map(|row| match row {
            Ok((id, row)) => {
                let (name, private, ..) = row.value();
                (!private).then(|| Ok((id.value(), name.to_owned())))
            }
            Err(e) => Some(Err(e.into())),
        })
        .collect::<Result<_>>()?;
    let mut names = txn.open_table(ROOM_NAMES)?;
    names.retain(|_, _| false)?;
    for (id, name) in public {
        if let Some(other) = names.insert(room_key(&name).as_str(), id)? {
            return Err(Error::Database(format!(
                "public rooms {} and {id} ({name:?}) have the same name in lower case",
                other.value()
            )));
        }
    }
    Ok(())
}

/// Each room with members and no owner gets one: its creator if still an
/// admin, else its lowest-id admin, else its creator if still a member,
/// else its lowest-id member. Returns how many rooms got one. (Also run
/// after an import of an export made before owners existed.)
pub(super) fn name_owners(txn: &WriteTransaction) -> Result<usize> {
    let rooms: Vec<(u64, u64)> = txn
        .open_table(ROOMS)?
        .iter()?
        .map(|row| {
            let (id, row) = row?;
            Ok((id.value(), row.value().2))
        })
        .collect::<Result<_>>()?;
    let mut members = txn.open_table(MEMBERS)?;
    let dms = txn.open_table(DM_ROOMS)?;
    let mut named = 0;
    for (room, creator) in rooms {
        if dms.get(room)?.is_some() {
            continue; // a direct message has no owner
        }
        let mut roles: Vec<(u64, u8)> = Vec::new();
        for entry in members.range((room, 0)..=(room, u64::MAX))? {
            let (key, role) = entry?;
            roles.push((key.value().1, role.value()));
        }
        if roles.is_empty() || roles.iter().any(|&(_, r)| r == Role::Owner.to_u8()) {
            continue;
        }
        let admins: Vec<u64> = roles
            .iter()
            .filter(|&&(_, r)| r == Role::Admin.to_u8())
            .map(|&(u, _)| u)
            .collect();
        let pool: Vec<u64> = if admins.is_empty() {
            roles.iter().map(|&(u, _)| u).collect()
        } else {
            admins
        };
        let owner = if pool.contains(&creator) {
            creator
        } else {
            pool[0]
        };
        members.insert((room, owner), Role::Owner.to_u8())?;
        named += 1;
    }
    Ok(named)
}
