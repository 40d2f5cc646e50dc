//! Read receipts members see: after a member's receipt is stored, the
//! room's subscribers get `receipt {room, user, seq}`, at most one per
//! (room, user) per `receipt_event_interval`. A receipt stored sooner after
//! the last one shown waits (a later one replaces it) and is shown once the
//! interval has passed, so the latest is always shown, late by at most the
//! interval and one flush tick. The events are volatile (dropped for a
//! subscriber that is behind); `Engine::receipts` reads the markers.
//!
//! [`Pacer`] is the rule, with time passed in; the shard drives it.
//! Invariant: the pacer holds only the pairs shown within the last interval
//! or waiting to be shown; [`Pacer::due`] forgets the rest, so it grows with
//! one interval's receipts, never with every reader a room ever had.

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;

use rookery_storage::ListPage;

use super::Shard;
use crate::error::Result;
use crate::event::Event;

/// How often waiting receipts are looked at, as a share of the interval.
const TICKS_PER_INTERVAL: u32 = 4;

/// The last receipt shown of one (room, user), and the one waiting.
#[derive(Debug, Clone, Copy)]
struct Shown {
    seq: u64,
    at: Instant,
    waiting: Option<u64>,
}

/// Which stored receipts become events, and when.
#[derive(Debug)]
pub(crate) struct Pacer {
    interval: Duration,
    shown: HashMap<(u64, u64), Shown>,
}

impl Pacer {
    pub(crate) fn new(interval: Duration) -> Pacer {
        assert!(!interval.is_zero(), "validated by EngineConfig");
        Pacer {
            interval,
            shown: HashMap::default(),
        }
    }

    /// `user`'s receipt in `room` is now `seq`: `Some(seq)` to show it
    /// now, `None` when it was shown already or must wait.
    pub(crate) fn offer(&mut self, room: u64, user: u64, seq: u64, now: Instant) -> Option<u64> {
        match self.shown.get_mut(&(room, user)) {
            Some(s) if seq <= s.seq => None,
            Some(s) if now.saturating_duration_since(s.at) < self.interval => {
                s.waiting = Some(s.waiting.map_or(seq, |w| w.max(seq)));
                None
            }
            other => {
                // One waiting may be ahead of this (offers can come out of
                // order): the highest is shown.
                let seq = seq.max(other.and_then(|s| s.waiting).unwrap_or(0));
                let s = Shown {
                    seq,
                    at: now,
                    waiting: None,
                };
                self.shown.insert((room, user), s);
                Some(seq)
            }
        }
    }

    /// The waiting receipts whose interval has passed, as
    /// `(room, user, seq)`, now shown; pairs with nothing waiting and
    /// nothing shown within the interval are forgotten.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<(u64, u64, u64)> {
        let mut due = Vec::new();
        let interval = self.interval;
        self.shown.retain(|&(room, user), s| {
            if now.saturating_duration_since(s.at) < interval {
                return true;
            }
            match s.waiting.take() {
                Some(seq) => {
                    due.push((room, user, seq));
                    *s = Shown {
                        seq,
                        at: now,
                        waiting: None,
                    };
                    true
                }
                None => false,
            }
        });
        due
    }

    /// Whether nothing is held (the flusher may sleep).
    pub(crate) fn is_empty(&self) -> bool {
        self.shown.is_empty()
    }

    /// How often [`Pacer::due`] should run while something is held.
    pub(crate) fn tick(&self) -> Duration {
        (self.interval / TICKS_PER_INTERVAL).max(Duration::from_millis(1))
    }
}

impl Shard {
    /// Owner side: `user`'s receipt in `room` moved to `seq`; shows it to
    /// the room now or once its interval has passed. Only a member's
    /// receipt is shown (a reader of a public room who never joined reads
    /// unseen).
    pub(super) async fn show_receipt(&self, room: u64, user: u64, seq: u64) {
        if seq == 0 || self.may_post(room, user).await.is_err() {
            return;
        }
        let shown = {
            let mut pacer = self.seen.borrow_mut();
            if pacer.is_empty() {
                self.seen_bell.ring();
            }
            pacer.offer(room, user, seq, Instant::now())
        };
        if let Some(seq) = shown {
            self.fan_out(Event::receipt(room, user, seq));
        }
    }

    /// Shows the receipts whose wait is over; whether some are still held
    /// (the flusher runs again a tick later).
    pub(crate) fn flush_seen(&self) -> bool {
        let due = self.seen.borrow_mut().due(Instant::now());
        for (room, user, seq) in due {
            // A member removed while their receipt waited is not shown.
            if self.owned.borrow().contains_key(&room) && self.is_member(room, user) {
                self.fan_out(Event::receipt(room, user, seq));
            }
        }
        !self.seen.borrow().is_empty()
    }

    /// Owner side: a page of the room's members with their markers (see
    /// [`rookery_storage::Meta::markers_page`]), each raised to the member's
    /// last own post not yet stored as a receipt ([`super::own_reads`]).
    pub(super) async fn markers(
        &self,
        room: u64,
        after: u64,
        len: usize,
    ) -> Result<ListPage<(u64, u64)>> {
        let meta = self.meta.clone();
        let mut page = glommio::executor()
            .spawn_blocking(move || meta.markers_page(room, after, len))
            .await?;
        for (user, seq) in &mut page.items {
            *seq = (*seq).max(self.own_read(room, *user));
        }
        Ok(page)
    }

    /// How long the flusher sleeps between two looks.
    pub(crate) fn seen_tick(&self) -> Duration {
        self.seen.borrow().tick()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn one_receipt_per_interval_and_the_latest_is_shown_late() {
        let t0 = Instant::now();
        let mut p = Pacer::new(SECOND);
        assert_eq!(p.offer(1, 7, 5, t0), Some(5), "the first is shown at once");
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(p.offer(1, 7, 6, ms(100)), None, "within the interval");
        assert_eq!(p.offer(1, 7, 9, ms(200)), None);
        assert_eq!(
            p.offer(1, 7, 8, ms(300)),
            None,
            "an older one changes nothing"
        );
        assert_eq!(
            p.offer(1, 8, 2, ms(300)),
            Some(2),
            "another user has their own"
        );
        assert_eq!(p.offer(2, 7, 4, ms(300)), Some(4), "so has another room");
        assert!(p.due(ms(999)).is_empty(), "not before the interval");
        let mut due = p.due(ms(1000));
        due.sort_unstable();
        assert_eq!(due, [(1, 7, 9)], "the latest waiting one, once");
        assert_eq!(p.offer(1, 7, 10, ms(1500)), None, "shown at 1000: waits");
        assert_eq!(p.due(ms(1999)), []);
        assert_eq!(p.due(ms(2000)), [(1, 7, 10)]);
        assert_eq!(p.offer(1, 7, 10, ms(2100)), None, "already shown");
        assert_eq!(p.offer(1, 7, 3, ms(5000)), None, "never backwards");
    }

    #[test]
    fn a_lower_offer_after_the_interval_shows_the_one_waiting() {
        // Offers may come out of order (two reads of one user awaited in
        // parallel): the waiting one is never lost to a lower one.
        let t0 = Instant::now();
        let mut p = Pacer::new(SECOND);
        assert_eq!(p.offer(1, 7, 5, t0), Some(5));
        assert_eq!(p.offer(1, 7, 9, t0 + SECOND / 2), None);
        assert_eq!(p.offer(1, 7, 6, t0 + SECOND), Some(9));
        assert!(p.due(t0 + SECOND * 3).is_empty());
    }

    #[test]
    fn pairs_with_nothing_waiting_are_forgotten_after_the_interval() {
        let t0 = Instant::now();
        let mut p = Pacer::new(SECOND);
        for user in 0..1000 {
            assert_eq!(p.offer(1, user, 3, t0), Some(3));
        }
        assert!(!p.is_empty());
        assert!(p.due(t0 + SECOND / 2).is_empty());
        assert!(!p.is_empty(), "kept within the interval");
        assert!(p.due(t0 + SECOND).is_empty(), "nothing was waiting");
        assert!(p.is_empty(), "all forgotten: memory is one interval's");
        assert_eq!(
            p.offer(1, 5, 4, t0 + SECOND * 2),
            Some(4),
            "a forgotten pair is shown at once again"
        );
    }

    #[test]
    fn every_receipt_is_eventually_shown_and_never_more_than_once_a_second() {
        // A reader moving every 30 ms for 10 s: events at least 1 s apart,
        // and the last one is the last receipt.
        let t0 = Instant::now();
        let mut p = Pacer::new(SECOND);
        let mut shown: Vec<(Instant, u64)> = Vec::new();
        let mut now = t0;
        for seq in 1..=333u64 {
            now = t0 + Duration::from_millis(30 * seq);
            if let Some(s) = p.offer(1, 7, seq, now) {
                shown.push((now, s));
            }
            if seq % 8 == 0 {
                shown.extend(p.due(now).into_iter().map(|(_, _, s)| (now, s)));
            }
        }
        while !p.is_empty() {
            now += p.tick();
            shown.extend(p.due(now).into_iter().map(|(_, _, s)| (now, s)));
        }
        assert_eq!(shown.last().map(|s| s.1), Some(333));
        for pair in shown.windows(2) {
            assert!(pair[1].0.duration_since(pair[0].0) >= SECOND);
            assert!(pair[1].1 > pair[0].1);
        }
        assert!((9..=11).contains(&shown.len()), "{} shown", shown.len());
    }
}
