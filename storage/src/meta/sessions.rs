//! Login sessions, by the SHA-256 of their token (the token itself is
//! never stored), with expiry.

use redb::ReadableTable;

use super::*;

impl Meta {
    /// Records a session for `user`, keyed by the hash of its token.
    ///
    /// Errors: `NotFound` for an unknown user, `AlreadyExists` if the hash is
    /// already a session.
    pub fn create_session(&self, token_hash: &[u8; 32], user: u64, expires_ms: u64) -> Result<()> {
        self.write(|txn| {
            require_user(&txn.open_table(USERS)?, user)?;
            let mut sessions = txn.open_table(SESSIONS)?;
            if sessions.get(token_hash.as_slice())?.is_some() {
                return Err(Error::AlreadyExists("session token".into()));
            }
            sessions.insert(token_hash.as_slice(), (user, expires_ms))?;
            Ok(())
        })
    }

    /// Returns the user of a session that exists and has not expired
    /// (`now_ms < expires_ms`), and when it expires.
    pub fn session(&self, token_hash: &[u8; 32], now_ms: u64) -> Result<Option<(u64, u64)>> {
        self.read(|txn| {
            let sessions = txn.open_table(SESSIONS)?;
            let row = sessions.get(token_hash.as_slice())?.map(|g| g.value());
            Ok(row.filter(|&(_, expires)| now_ms < expires))
        })
    }

    /// Deletes every session of `user` but `keep` (if given); returns the
    /// deleted ones' hashes and expiries. Scans the sessions table: for
    /// "log out everywhere" and password changes, not a hot path.
    pub fn delete_sessions_of(
        &self,
        user: u64,
        keep: Option<&[u8; 32]>,
    ) -> Result<Vec<([u8; 32], u64)>> {
        self.write(|txn| {
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut gone = Vec::new();
            let mut doomed = sessions.extract_if(|hash, (owner, _)| {
                owner == user && keep.is_none_or(|k| hash != k.as_slice())
            })?;
            for entry in doomed.by_ref() {
                let (hash, row) = entry?;
                let hash: [u8; 32] = hash
                    .value()
                    .try_into()
                    .map_err(|_| Error::Database("a session key is not 32 bytes".into()))?;
                gone.push((hash, row.value().1));
            }
            doomed.close()?;
            Ok(gone)
        })
    }

    /// Writes a session as the cluster recorded it (inserted or replaced).
    /// Its user need not be here yet: the user's record may arrive after
    /// the session's.
    pub fn replicate_session(
        &self,
        token_hash: &[u8; 32],
        user: u64,
        expires_ms: u64,
    ) -> Result<()> {
        self.write(|txn| {
            let mut sessions = txn.open_table(SESSIONS)?;
            sessions.insert(token_hash.as_slice(), (user, expires_ms))?;
            Ok(())
        })
    }

    /// Applies `writes`, the cluster's changes in their order, in one
    /// transaction: all of them or, on an error, none (the caller may then
    /// apply them one by one to find the one this file disagrees with).
    /// A node catching up with many changes pays one commit for many.
    ///
    /// Errors: as [`Meta::replicate_user`]; every record is checked before
    /// anything is written.
    pub fn replicate_batch(&self, writes: &[Replicated]) -> Result<()> {
        for w in writes {
            match w {
                Replicated::User(user) => super::users::validate_replicated_user(user)?,
                Replicated::Profile {
                    display_name,
                    status,
                    ..
                } => super::profiles::check_profile(display_name, status)?,
                _ => {}
            }
        }
        self.write(|txn| {
            for w in writes {
                match w {
                    Replicated::User(user) => super::users::replicate_user_in(txn, user)?,
                    Replicated::Session {
                        token_hash,
                        user,
                        expires_ms,
                    } => {
                        let mut sessions = txn.open_table(SESSIONS)?;
                        sessions.insert(token_hash.as_slice(), (*user, *expires_ms))?;
                    }
                    Replicated::SessionEnded(token_hash) => {
                        txn.open_table(SESSIONS)?.remove(token_hash.as_slice())?;
                    }
                    Replicated::Profile {
                        user,
                        display_name,
                        status,
                        updated_ms,
                        avatar,
                    } => super::profiles::replicate_profile_in(
                        txn,
                        *user,
                        display_name,
                        status,
                        *updated_ms,
                        *avatar,
                    )?,
                }
            }
            Ok(())
        })
    }

    /// The hashes of `user`'s sessions but `keep` (if given). Scans the
    /// sessions table, like [`Meta::delete_sessions_of`].
    pub fn sessions_of(&self, user: u64, keep: Option<&[u8; 32]>) -> Result<Vec<([u8; 32], u64)>> {
        self.read(|txn| {
            let sessions = txn.open_table(SESSIONS)?;
            let mut found = Vec::new();
            for entry in sessions.iter()? {
                let (hash, row) = entry?;
                let (owner, expires) = row.value();
                let hash: [u8; 32] = hash
                    .value()
                    .try_into()
                    .map_err(|_| Error::Database("a session key is not 32 bytes".into()))?;
                if owner == user && keep.is_none_or(|k| &hash != k) {
                    found.push((hash, expires));
                }
            }
            Ok(found)
        })
    }

    /// Deletes a session; returns whether it existed.
    pub fn delete_session(&self, token_hash: &[u8; 32]) -> Result<bool> {
        self.write(|txn| {
            let mut sessions = txn.open_table(SESSIONS)?;
            let existed = sessions.remove(token_hash.as_slice())?.is_some();
            Ok(existed)
        })
    }

    /// Deletes every session expired at `now_ms`; returns how many.
    pub fn purge_expired_sessions(&self, now_ms: u64) -> Result<usize> {
        self.write(|txn| {
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut expired = sessions.extract_if(|_, (_, expires)| expires <= now_ms)?;
            let mut removed = 0;
            for entry in expired.by_ref() {
                entry?;
                removed += 1;
            }
            expired.close()?;
            Ok(removed)
        })
    }
}
