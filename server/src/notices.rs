//! Events for one user rather than a room (an invitation, or the server
//! API's disconnect), shared by every shard, so that each shard's sweep
//! hands them to that user's open WebSockets within one sweep interval.
//!
//! A connection receives the notices made after it opened; older ones a
//! client lists over HTTP (`GET /api/invites`). Invariant: at most
//! [`NOTICES_MAX`] notices are kept, none older than [`NOTICE_KEEP`], so
//! the set is bounded whatever the rate of invitations (a notice that
//! falls out before a sweep finds it is not sent; the invitation itself
//! is stored).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a notice waits for the sweeps.
pub const NOTICE_KEEP: Duration = Duration::from_secs(10);

/// Notices kept at most.
pub const NOTICES_MAX: usize = 4096;

struct Notice {
    seq: u64,
    at: Instant,
    user: u64,
    what: What,
}

/// What a notice tells a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    /// Send this frame (a whole JSON text).
    Frame(Arc<str>),
    /// Close: the server API disconnected the user (4003).
    Disconnect,
}

#[derive(Default)]
struct State {
    last: u64,
    queue: VecDeque<Notice>,
}

#[derive(Default)]
pub struct Notices {
    state: Mutex<State>,
}

impl Notices {
    /// Queues `what` for `user`'s connections.
    pub fn push(&self, user: u64, what: What, now: Instant) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        s.last += 1;
        let seq = s.last;
        if s.queue.len() == NOTICES_MAX {
            s.queue.pop_front();
        }
        s.queue.push_back(Notice {
            seq,
            at: now,
            user,
            what,
        });
    }

    /// The seq of the latest notice (a new connection starts after it).
    pub fn last_seq(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.last)
    }

    /// The users with notices kept at `now`, each with the seq of their
    /// latest; older notices are dropped. (A map: the sweep looks each
    /// connection's user up once.)
    pub fn recent(&self, now: Instant) -> HashMap<u64, u64> {
        let Ok(mut s) = self.state.lock() else {
            return HashMap::new();
        };
        while s
            .queue
            .front()
            .is_some_and(|n| now.saturating_duration_since(n.at) >= NOTICE_KEEP)
        {
            s.queue.pop_front();
        }
        let mut latest = HashMap::new();
        for n in &s.queue {
            latest.insert(n.user, n.seq);
        }
        latest
    }

    /// `user`'s notices after seq `after`, oldest first.
    pub fn for_user(&self, user: u64, after: u64) -> Vec<(u64, What)> {
        let Ok(s) = self.state.lock() else {
            return Vec::new();
        };
        s.queue
            .iter()
            .filter(|n| n.user == user && n.seq > after)
            .map(|n| (n.seq, n.what.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_per_user_ordered_and_bounded() {
        let n = Notices::default();
        let t = Instant::now();
        let frame = |s: &str| What::Frame(s.into());
        n.push(1, frame("a"), t);
        n.push(2, frame("b"), t);
        n.push(1, What::Disconnect, t);
        let got: Vec<What> = n.for_user(1, 0).into_iter().map(|(_, w)| w).collect();
        assert_eq!(got, [frame("a"), What::Disconnect]);
        assert_eq!(n.for_user(1, 1).len(), 1, "after seq 1");
        assert_eq!(n.recent(t), HashMap::from([(1, 3), (2, 2)]));
        assert!(
            n.recent(t + NOTICE_KEEP).is_empty(),
            "kept for a while only"
        );
        for i in 0..NOTICES_MAX + 10 {
            n.push(9, frame(&i.to_string()), t);
        }
        assert_eq!(n.for_user(9, 0).len(), NOTICES_MAX, "bounded in count");
        assert!(n.for_user(1, 0).is_empty(), "the oldest went first");
        assert_eq!(n.last_seq(), 3 + NOTICES_MAX as u64 + 10);
    }
}
