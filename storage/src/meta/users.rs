//! Users: registration with a password hash, users a backend vouches
//! for (JWT subjects, in their own namespace), lookups by id and name,
//! restore. Invariant: each key of `user_names` (a registered name in
//! lower case, or `jwt:` + subject) maps exactly the row of its id.

use redb::{ReadableTable, WriteTransaction};

use super::*;

impl Meta {
    /// Registers a user with a password hash (a PHC string, `$…`, made by
    /// the caller: this crate never sees a password) and returns its id.
    ///
    /// Errors: `InvalidInput` for a bad name or a hash that is not a PHC
    /// string, `AlreadyExists` if a registered user has the name in any
    /// case (JWT subjects do not take names).
    pub fn create_user(&self, name: &str, password_hash: &str, now_ms: u64) -> Result<u64> {
        validate_name("user", name)?;
        validate_hash(password_hash)?;
        self.write(|txn| {
            let id = next_id(txn, USER_COUNTER, self.ids.as_ref())?;
            insert_user(txn, id, name, now_ms, Some(password_hash))?;
            Ok(id)
        })
    }

    /// Returns the id of the user a backend's JWT names by `subject`,
    /// creating it without a password if it does not exist. Subjects are
    /// their own namespace, matched exactly: `sub: "ceo"` is never the
    /// registered user `ceo`.
    ///
    /// Errors: `InvalidInput` for a bad subject.
    pub fn ensure_external_user(&self, subject: &str, now_ms: u64) -> Result<u64> {
        validate_name("user", subject)?;
        let key = external_key(subject);
        if let Some(id) = self.user_id(&key)? {
            return Ok(id);
        }
        // The account commits without `fdatasync` (the module doc says why
        // that is safe): a durable commit per new subject was a quarter of
        // the server's CPU for a first connect.
        self.write_deciding(|txn| {
            // Re-check: another writer may have created it since the read.
            if let Some(id) = txn.open_table(USER_NAMES)?.get(key.as_str())? {
                return Ok((id.value(), Durability::None));
            }
            let id = next_id(txn, USER_COUNTER, self.ids.as_ref())?;
            insert_user(txn, id, subject, now_ms, None)?;
            Ok((id, reserve_user_ids_through(txn, id)?))
        })
    }

    /// Replaces the password hash of user `id` (a PHC string).
    ///
    /// Errors: `NotFound` for an unknown user, `InvalidInput` for a hash
    /// that is not a PHC string or a user a backend vouches for (who has
    /// no password).
    pub fn set_password(&self, id: u64, password_hash: &str) -> Result<()> {
        validate_hash(password_hash)?;
        self.write(|txn| {
            let mut users = txn.open_table(USERS)?;
            let (name, created_ms) = {
                let row = users
                    .get(id)?
                    .ok_or_else(|| Error::NotFound(format!("user {id}")))?;
                let (name, created_ms, hash) = row.value();
                if hash.is_none() {
                    return Err(Error::InvalidInput(format!(
                        "user {id} is a JWT subject and has no password"
                    )));
                }
                (name.to_string(), created_ms)
            };
            users.insert(id, (name.as_str(), created_ms, Some(password_hash)))?;
            Ok(())
        })
    }

    /// Returns user `id`, if it exists.
    pub fn user(&self, id: u64) -> Result<Option<User>> {
        self.read(|txn| {
            let users = txn.open_table(USERS)?;
            let user = users.get(id)?.map(|row| user_from(id, row.value()));
            Ok(user)
        })
    }

    /// Returns the registered user called `name` in any case, if it
    /// exists (never a JWT subject: see [`Meta::external_user`]).
    pub fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        self.user_by_key(&local_key(name))
    }

    /// Returns the user a backend's JWT names by `subject`, if it exists.
    pub fn external_user(&self, subject: &str) -> Result<Option<User>> {
        self.user_by_key(&external_key(subject))
    }

    /// The users and rooms in this directory (O(1): redb keeps each
    /// table's length).
    pub fn counts(&self) -> Result<(u64, u64)> {
        use redb::ReadableTableMetadata;
        self.read(|txn| Ok((txn.open_table(USERS)?.len()?, txn.open_table(ROOMS)?.len()?)))
    }

    fn user_by_key(&self, key: &str) -> Result<Option<User>> {
        self.read(|txn| {
            let Some(id) = txn.open_table(USER_NAMES)?.get(key)?.map(|g| g.value()) else {
                return Ok(None);
            };
            let users = txn.open_table(USERS)?;
            let user = users.get(id)?.map(|row| user_from(id, row.value()));
            Ok(user)
        })
    }

    /// Returns all users, ordered by id.
    pub fn users(&self) -> Result<Vec<User>> {
        self.read(|txn| {
            let users = txn.open_table(USERS)?;
            users
                .iter()?
                .map(|row| {
                    let (id, row) = row?;
                    Ok(user_from(id.value(), row.value()))
                })
                .collect()
        })
    }

    /// Inserts `user` as-is (restore), moving the id counter past its id.
    ///
    /// Errors: `InvalidInput` for id 0, a bad name or a hash that is not a
    /// PHC string; `AlreadyExists` if the id or the name is taken.
    pub fn import_user(&self, user: &User) -> Result<()> {
        self.import_users(std::slice::from_ref(user))
    }

    /// [`Meta::import_user`] for many users in one transaction (one
    /// `fdatasync`): all of them, or none when one is refused.
    pub fn import_users(&self, users: &[User]) -> Result<()> {
        for user in users {
            validate_name("user", &user.name)?;
            validate_id("user", user.id)?;
            if let Some(hash) = &user.password_hash {
                validate_hash(hash)
                    .map_err(|e| Error::InvalidInput(format!("user {}: {e}", user.id)))?;
            }
        }
        self.write(|txn| {
            for user in users {
                let hash = user.password_hash.as_deref();
                insert_user(txn, user.id, &user.name, user.created_ms, hash)?;
                bump_counter(txn, USER_COUNTER, user.id)?;
            }
            Ok(())
        })
    }

    /// Hands out a user id (one the id filter accepts) without creating
    /// a user: a cluster node takes an id here, claims the name cluster-wide,
    /// then [`Meta::replicate_user`] writes the row.
    pub fn reserve_user_id(&self) -> Result<u64> {
        self.write(|txn| next_id(txn, USER_COUNTER, self.ids.as_ref()))
    }

    /// Writes `user` as the cluster recorded it: inserts it, or replaces
    /// the password hash of the user with its id and name (a password
    /// change). Replaying the same record is harmless.
    ///
    /// Errors: `InvalidInput` for id 0, a bad name or hash; `Database` if
    /// the id or the name already belongs to another user here (the
    /// cluster's record and this file disagree).
    pub fn replicate_user(&self, user: &User) -> Result<()> {
        validate_replicated_user(user)?;
        self.write(|txn| replicate_user_in(txn, user))
    }

    fn user_id(&self, key: &str) -> Result<Option<u64>> {
        self.read(|txn| Ok(txn.open_table(USER_NAMES)?.get(key)?.map(|g| g.value())))
    }
}

/// Checks a user record from the cluster before it is written.
pub(super) fn validate_replicated_user(user: &User) -> Result<()> {
    validate_name("user", &user.name)?;
    validate_id("user", user.id)?;
    if let Some(hash) = user.password_hash.as_deref() {
        validate_hash(hash)?;
    }
    Ok(())
}

/// [`Meta::replicate_user`] in `txn` (the record validated).
pub(super) fn replicate_user_in(txn: &WriteTransaction, user: &User) -> Result<()> {
    let hash = user.password_hash.as_deref();
    let key = user_key(&user.name, hash.is_none());
    let disagree = |what: &str| {
        Error::Database(format!(
            "user {} {:?}: {what} belongs to another user here",
            user.id, user.name
        ))
    };
    let mut names = txn.open_table(USER_NAMES)?;
    let named = names.get(key.as_str())?.map(|g| g.value());
    match named {
        Some(id) if id != user.id => return Err(disagree("the name")),
        Some(_) => {}
        None => {
            names.insert(key.as_str(), user.id)?;
            super::profiles::index_name(txn, user.id, &user.name)?;
        }
    }
    let mut users = txn.open_table(USERS)?;
    if let Some(row) = users.get(user.id)? {
        let (name, _, _) = row.value();
        if user_key(name, hash.is_none()) != key {
            return Err(disagree("the id"));
        }
    }
    users.insert(user.id, (user.name.as_str(), user.created_ms, hash))?;
    bump_counter(txn, USER_COUNTER, user.id)
}

pub(super) fn insert_user(
    txn: &WriteTransaction,
    id: u64,
    name: &str,
    created_ms: u64,
    hash: Option<&str>,
) -> Result<()> {
    let key = user_key(name, hash.is_none());
    let mut names = txn.open_table(USER_NAMES)?;
    if names.get(key.as_str())?.is_some() {
        return Err(taken("user", name));
    }
    let mut users = txn.open_table(USERS)?;
    if users.get(id)?.is_some() {
        return Err(Error::AlreadyExists(format!("user {id}")));
    }
    users.insert(id, (name, created_ms, hash))?;
    names.insert(key.as_str(), id)?;
    drop((users, names));
    super::profiles::index_name(txn, id, name)
}

/// Makes sure user ids up to `id` are reserved durably: if `id` is past
/// the reservation, moves it a block further and says the commit must be
/// durable (`Immediate`); otherwise the commit may be `None`.
fn reserve_user_ids_through(txn: &WriteTransaction, id: u64) -> Result<Durability> {
    let mut counters = txn.open_table(COUNTERS)?;
    let reserved = counters
        .get(USER_RESERVED_COUNTER)?
        .map_or(0, |g| g.value());
    if id <= reserved {
        return Ok(Durability::None);
    }
    let through = id.saturating_add(USER_ID_BLOCK_LEN - 1);
    counters.insert(USER_RESERVED_COUNTER, through)?;
    Ok(Durability::Immediate)
}

/// At open: moves the user id counter past every id reserved so far. A
/// crash may have lost non-durable accounts and the counter's moves past
/// them; their ids were handed out and must not be again.
pub(super) fn skip_reserved_user_ids(txn: &WriteTransaction) -> Result<()> {
    let reserved = txn
        .open_table(COUNTERS)?
        .get(USER_RESERVED_COUNTER)?
        .map_or(0, |g| g.value());
    bump_counter(txn, USER_COUNTER, reserved)
}
