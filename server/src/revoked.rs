//! Sessions ended before their time (logout, log out everywhere, a
//! password change), shared by every shard, so that each shard's sweep
//! closes the WebSockets they authenticated (close 4001).
//!
//! New connections cannot use an ended session (it is gone from the
//! database); the set only has to reach connections already open. Every
//! sweep looks up each session connection in the sessions ended within
//! [`REVOKED_KEEP`]: long enough for every shard to sweep several times
//! (a connection with another deadline pending at one sweep is found at
//! the next) and for a connection authenticated just before the logout to
//! register. Invariant: the set holds only sessions ended within that
//! window, so its size is bounded by the logout rate.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an ended session stays in the set.
pub const REVOKED_KEEP: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Revoked {
    ended: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Revoked {
    /// Records that the session with this token hash ended at `now`.
    pub fn end(&self, hash: [u8; 32], now: Instant) {
        if let Ok(mut ended) = self.ended.lock() {
            ended.insert(hash, now);
        }
    }

    /// Whether the session with this token hash was ended.
    pub fn contains(&self, hash: &[u8; 32]) -> bool {
        self.ended.lock().is_ok_and(|e| e.contains_key(hash))
    }

    /// The sessions ended within [`REVOKED_KEEP`] of `now`; older ones are
    /// forgotten.
    pub fn recent(&self, now: Instant) -> HashSet<[u8; 32]> {
        let Ok(mut ended) = self.ended.lock() else {
            return HashSet::new();
        };
        ended.retain(|_, at| now.saturating_duration_since(*at) < REVOKED_KEEP);
        ended.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_sessions_are_kept_for_a_while() {
        let r = Revoked::default();
        let t = Instant::now();
        assert!(r.recent(t).is_empty());
        r.end([1; 32], t);
        assert!(r.contains(&[1; 32]) && !r.contains(&[2; 32]));
        assert_eq!(r.recent(t + REVOKED_KEEP / 2), HashSet::from([[1; 32]]));
        // Past the window the old one is forgotten.
        r.end([2; 32], t + REVOKED_KEEP);
        assert_eq!(r.recent(t + REVOKED_KEEP), HashSet::from([[2; 32]]));
        assert!(!r.contains(&[1; 32]) && r.contains(&[2; 32]));
    }
}
