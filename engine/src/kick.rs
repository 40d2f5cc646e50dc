//! The kicker: a small thread that bounds glommio 0.9.0's stalls.
//!
//! glommio 0.9.0 can park an executor while some of its tasks are runnable
//! (a preemption pending at the top of its loop makes it conclude that
//! nothing ran; fixed upstream after the last release on crates.io). Any
//! wake-up ends such a stall, so a shard that keeps getting events is never
//! stuck for long; the danger is a stall right as a shard goes quiet, with
//! nothing left to wake it.
//!
//! Invariant: a shard whose work counter (`activity`) moved is woken once,
//! with a `Tick`, after the first look at which the counter stands still
//! (a `Tick` does not move the counter). So a stall lasts at most two
//! `kick_interval`s, a busy shard is never kicked (its own events wake it:
//! at 5 ms kicks a busy shard was woken 200 times a second, a fifth of the
//! server's CPU at chat rates), and an idle shard sleeps.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::shard::Command;
use crate::{Error, Result};

/// How long the kicker sleeps at most while no shard works.
const KICK_IDLE_INTERVAL_MAX: Duration = Duration::from_millis(40);

/// What the kicker knows of each shard between two looks; free of I/O and
/// of time, so that its rule is tested alone.
#[derive(Debug)]
pub(crate) struct Watch {
    /// The counter at the last look.
    seen: Vec<u64>,
    /// The counter moved since the shard was last kicked.
    armed: Vec<bool>,
}

impl Watch {
    pub(crate) fn new(counters: &[u64]) -> Self {
        Watch {
            seen: counters.to_vec(),
            armed: vec![false; counters.len()],
        }
    }

    /// One look at shard `s`'s counter: whether to kick it now.
    pub(crate) fn look(&mut self, s: usize, now: u64) -> bool {
        if std::mem::replace(&mut self.seen[s], now) != now {
            self.armed[s] = true;
            return false;
        }
        std::mem::replace(&mut self.armed[s], false)
    }

    /// Whether some shard is being watched for going quiet (the kicker
    /// then looks at the full rate).
    pub(crate) fn watching(&self) -> bool {
        self.armed.iter().any(|&a| a)
    }
}

/// Starts the kicker: each `interval` (backing off to
/// `KICK_IDLE_INTERVAL_MAX` while no shard works), it sends a `Tick` to each
/// shard that just went quiet and has nothing queued; it ends when stopped
/// or when every shard is gone.
pub(crate) fn spawn_kicker(
    shards: Vec<flume::Sender<Command>>,
    activity: Arc<Vec<AtomicU64>>,
    interval: Duration,
) -> Result<(Arc<AtomicBool>, std::thread::JoinHandle<()>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::Builder::new()
        .name("rookery-kick".into())
        .spawn(move || {
            let load = |s: usize| activity[s].load(Ordering::Relaxed);
            let mut watch = Watch::new(&(0..shards.len()).map(load).collect::<Vec<_>>());
            let mut sleep = interval;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(sleep);
                for (s, queue) in shards.iter().enumerate() {
                    // A queue with work already woke its shard.
                    if watch.look(s, load(s)) && queue.is_empty() {
                        let _ = queue.send(Command::Tick);
                    }
                }
                sleep = if watch.watching() {
                    interval
                } else {
                    (sleep * 2).min(KICK_IDLE_INTERVAL_MAX.max(interval))
                };
                if shards.iter().all(flume::Sender::is_disconnected) {
                    break;
                }
            }
        })
        .map_err(|e| Error::Start(format!("kick thread: {e}")))?;
    Ok((stop, handle))
}

#[cfg(test)]
mod tests {
    use super::Watch;

    #[test]
    fn a_shard_is_kicked_once_when_it_goes_quiet() {
        let mut w = Watch::new(&[0, 0]);
        // Idle from the start: never kicked, not watched.
        assert!(!w.look(0, 0));
        assert!(!w.watching());
        // Busy: watched, not kicked, however long it stays busy.
        for n in 1..=5 {
            assert!(!w.look(0, n));
            assert!(w.watching());
        }
        // Quiet: one kick, then nothing while it stays quiet.
        assert!(w.look(0, 5));
        assert!(!w.watching());
        assert!(!w.look(0, 5));
        assert!(!w.look(0, 5));
        // Busy again, then quiet again: kicked again.
        assert!(!w.look(0, 9));
        assert!(w.look(0, 9));
        // Shards are watched apart.
        assert!(!w.look(1, 0));
        assert!(!w.look(1, 1));
        assert!(w.look(1, 1));
    }
}
