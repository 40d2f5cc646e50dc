//! When users were last active ("last seen" in the directory): a shard
//! notes the user of every request and WebSocket frame it handles, and
//! of every connection it opens and closes, and writes what it noted to
//! the directory every [`FLUSH_INTERVAL`] in one commit
//! (`Meta::note_seen`), so activity costs a map insert, not a write.
//!
//! Invariant: at most [`PENDING_USERS_MAX`] users wait on a shard (past
//! it a note is dropped: someone looks seen a few seconds earlier).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use crate::auth::blocking;
use crate::shared::Shared;

/// How often a shard writes what it noted.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Users noted and not yet written, at most, a shard.
pub const PENDING_USERS_MAX: usize = 100_000;

/// A shard's notes: user -> when they were last active (ms).
#[derive(Default)]
pub struct Seen {
    pending: RefCell<HashMap<u64, u64>>,
}

impl Seen {
    /// `user` is active at `now_ms`.
    pub fn note(&self, user: u64, now_ms: u64) {
        let mut pending = self.pending.borrow_mut();
        if pending.len() < PENDING_USERS_MAX || pending.contains_key(&user) {
            pending.insert(user, now_ms);
        }
    }

    /// What was noted since the last call.
    fn take(&self) -> Vec<(u64, u64)> {
        self.pending.borrow_mut().drain().collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pending.borrow().len()
    }
}

/// Writes the shard's notes every [`FLUSH_INTERVAL`] until it stops (the
/// shard writes the last ones once its connections are closed: [`flush`]).
pub async fn run(shared: std::rc::Rc<Shared>) {
    while shared
        .unless_stopped(glommio::timer::sleep(FLUSH_INTERVAL))
        .await
        .is_some()
    {
        flush(&shared).await;
    }
}

/// Writes what the shard noted since it last did.
pub async fn flush(shared: &Shared) {
    let noted = shared.seen.take();
    if noted.is_empty() {
        return;
    }
    let directory = shared.engine.directory();
    if let Err(e) = blocking(move || directory.note_seen(&noted)).await {
        tracing::warn!(error = %e, "recording when users were last seen failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_keep_the_latest_and_are_bounded() {
        let seen = Seen::default();
        seen.note(1, 10);
        seen.note(1, 20);
        assert_eq!(seen.take(), [(1, 20)]);
        assert!(seen.take().is_empty());
        for user in 0..PENDING_USERS_MAX as u64 + 10 {
            seen.note(user, 5);
        }
        assert_eq!(seen.len(), PENDING_USERS_MAX);
        // One already waiting still moves on.
        seen.note(0, 9);
        assert_eq!(seen.len(), PENDING_USERS_MAX);
        assert!(seen.take().contains(&(0, 9)));
    }
}
