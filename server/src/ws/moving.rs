//! Moving a WebSocket connection to the shard that owns its room.
//!
//! The kernel spreads new connections over the shards (SO_REUSEPORT), but
//! each room is ordered, written and fanned out by one shard, its owner. A
//! connection served by another shard costs every post a hop to the owner
//! and every event a hop back, each a wake-up of the other core. So at its
//! first join of a room this node owns on another shard, a connection in
//! no room yet is handed to the owner: its socket (a duplicate of the
//! descriptor), its WebSocket and inflate state, the bytes received and
//! not yet handled (the join frame first), the bytes it is owed and not
//! yet written, its credential and deadlines, and its place under the
//! per-address limit. The owner then serves all of that room's traffic
//! for it on one thread.
//!
//! Only first joins move, and a connection moves once: one following
//! several rooms stays with the owner of the first. A move is refused
//! when it would leave the target shard with more connections than the
//! source by more than [`slack`] (rooms everyone joins first must not pile
//! every connection onto one core), for TLS connections (their session
//! stays with the shard that made it), while the socket is full, and while
//! the server stops.
//!
//! Invariants: every frame the client sent is handled once, in order (the
//! join by the new shard, none twice); the bytes owed leave before
//! anything the new shard writes; the old shard writes nothing to the
//! socket once the move is decided. Handoffs in flight are bounded by the
//! open connections (each moves at most once), so the channels between
//! shards need no bound of their own.

use std::os::fd::OwnedFd;
use std::time::Instant;

use tungstenite::protocol::WebSocketContext;

use crate::auth;
use crate::deflate::Inflow;
use crate::limits::Counted;

use super::Endpoint;

/// Connections the target may hold beyond the source after a move, at
/// least.
const SLACK_CONNS_MIN: i64 = 64;
/// ... or this share of both shards' connections, if more (per mille).
const SLACK_PER_MILLE: i64 = 125;

/// The imbalance a move may leave between two shards holding `source` and
/// `target` connections (the moving one counted in `source`).
fn slack(source: i64, target: i64) -> i64 {
    ((source + target) * SLACK_PER_MILLE / 1000).max(SLACK_CONNS_MIN)
}

/// Whether a connection may move from a shard holding `source`
/// connections (itself included) to one holding `target`: after the move
/// (`target + 1` and `source - 1`) the target holds at most the slack
/// more.
pub(crate) fn balanced_after_move(source: i64, target: i64) -> bool {
    target + 2 <= source + slack(source, target)
}

/// A connection on its way to another shard; everything in it is owned,
/// so that it crosses threads.
pub(crate) struct Handoff {
    /// The shard it moves to.
    pub to: usize,
    /// The socket (a duplicate: the old shard closed its own descriptor).
    pub fd: OwnedFd,
    pub endpoint: Endpoint,
    pub ctx: WebSocketContext,
    pub inflow: Option<Box<Inflow>>,
    pub deflate_min: Option<usize>,
    /// Received bytes not yet read by the WebSocket state.
    pub rx: Vec<u8>,
    /// The join frame that decided the move, handled first by the target.
    pub frame: String,
    /// Bytes the client is owed, written before anything else.
    pub owed: Vec<u8>,
    pub proof: auth::Proof,
    /// The deadlines' state (`Instant`s are the same clock on every
    /// thread).
    pub heard: Instant,
    pub pinged: Instant,
    pub warned: bool,
    pub notice_seen: u64,
    /// Its place under the per-address connection limit (set by the task
    /// that held it).
    pub counted: Option<Counted>,
}

/// Every shard's end for handoffs to it.
pub(crate) type Mailboxes = std::sync::Arc<Vec<flume::Sender<Box<Handoff>>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_keeps_shards_within_the_slack() {
        // Balanced shards: a move is allowed until the target holds the
        // slack more than the source.
        assert!(balanced_after_move(500, 500));
        assert!(balanced_after_move(10, 0));
        // Small counts: up to SLACK_CONNS_MIN apart.
        assert!(balanced_after_move(1, 63));
        assert!(!balanced_after_move(1, 64));
        // Large counts: 12.5% of both.
        assert!(balanced_after_move(4000, 4996));
        assert!(!balanced_after_move(4000, 5200));
        // Whatever the counts, a shard never takes every connection.
        let (mut s, mut t) = (10_000i64, 0i64);
        while balanced_after_move(s, t) {
            s -= 1;
            t += 1;
        }
        assert!(t - s <= slack(s, t) + 2, "{s} {t}");
        assert!(s > 4000, "{s} {t}");
    }
}
