//! Sessions ended before their time (logout, log out everywhere, a
//! password change), shared by every shard, so that each shard's sweep
//! closes the WebSockets they authenticated (close 4001).
//!
//! New connections cannot use an ended session (it is gone from the
//! database); the set only has to reach connections already open. A sweep
//! looks at it when its generation moved, and an entry is kept for
//! [`REVOKED_KEEP`], long enough for every shard to sweep and for a
//! connection authenticated just before the logout to register. Invariant:
//! the set holds only sessions ended within that window, so its size is
//! bounded by the logout rate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an ended session stays in the set.
pub const REVOKED_KEEP: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Revoked {
    /// Moves on every end: a sweep that saw this generation has nothing
    /// new to look for.
    generation: AtomicU64,
    ended: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Revoked {
    /// Records that the session with this token hash ended at `now`.
    pub fn end(&self, hash: [u8; 32], now: Instant) {
        if let Ok(mut ended) = self.ended.lock() {
            ended.retain(|_, at| now.saturating_duration_since(*at) < REVOKED_KEEP);
            ended.insert(hash, now);
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the session with this token hash was ended.
    pub fn contains(&self, hash: &[u8; 32]) -> bool {
        self.ended.lock().is_ok_and(|e| e.contains_key(hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_sessions_are_kept_for_a_while_and_move_the_generation() {
        let r = Revoked::default();
        let t = Instant::now();
        assert_eq!(r.generation(), 0);
        r.end([1; 32], t);
        assert!(r.contains(&[1; 32]) && !r.contains(&[2; 32]));
        assert_eq!(r.generation(), 1);
        // An end after the window forgets the old ones.
        r.end([2; 32], t + REVOKED_KEEP);
        assert!(!r.contains(&[1; 32]) && r.contains(&[2; 32]));
        assert_eq!(r.generation(), 2);
    }
}
