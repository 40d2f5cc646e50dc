//! One subscriber's delivery state machine: live, or catching up from
//! pages; free of I/O and clocks (quinn-proto's manner: the shard feeds it
//! events, pages and the time, and does what it answers).
//!
//! Invariant: every sequenced event handed out has seq `next_seq` at that
//! moment, and `next_seq` only grows, so a subscriber sees each seq once
//! and in order (a forward jump only where retention removed seqs). The
//! bytes the consumer holds never pass `queue_bytes_max` through this
//! subscriber; edits and deletes are never dropped (held beside it while
//! it catches up, `held_bytes` counting them); typing, presence and receipts
//! (the volatile events) are the only events ever dropped. Why a page past `head` makes live delivery
//! safe is in the shard's module doc.

use std::time::{Duration, Instant};

use crate::event::Event;

/// The wait before asking again after the first failed page; it doubles
/// with each failure in a row, up to [`PAGE_RETRY_MAX`].
pub(crate) const PAGE_RETRY_MIN: Duration = Duration::from_millis(10);

/// The longest wait between two asks of a page that keeps failing (a log
/// segment that cannot be read fails every page of every subscriber
/// behind it: without the backoff each asked again every pump tick).
pub(crate) const PAGE_RETRY_MAX: Duration = Duration::from_secs(1);

/// The limits a subscriber keeps (from [`crate::EngineConfig`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Bytes its consumer may hold (`outbound_queue_bytes_max`).
    pub queue_bytes_max: usize,
    /// Bytes its consumer may hold for a volatile event to be offered.
    pub volatile_bytes_max: usize,
    /// Events asked for per catch-up page.
    pub page_len: usize,
    /// How long a lagging consumer may make no progress before it is
    /// closed.
    pub stuck_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Live,
    CatchingUp { in_flight: bool },
}

/// What to do with an offered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Hand it to the consumer.
    Deliver,
    /// Nothing: a duplicate, or a seq a page will bring.
    Skip,
    /// A volatile event dropped (not live, or no room for it).
    Dropped,
    /// The subscriber stopped live delivery: put it on the lagging list.
    Lagged,
    /// Held changes passed the bound: close the consumer (slow).
    Overflow,
}

/// What the lagging pump should do for this subscriber now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pump {
    /// Ask the owner for the next page.
    Ask,
    /// No progress for `stuck_timeout`: close the consumer (slow).
    Stuck,
    /// Nothing yet.
    Wait,
}

/// What a page did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Paged {
    /// Still catching up, the consumer too full for more now: the pump
    /// asks again once it drained.
    Behind,
    /// Still catching up, with room for more: ask for the next page now
    /// (waiting for the pump would let a hot room outrun the catch-up).
    More,
    /// Live from now on: off the lagging list.
    Live,
}

/// A subscriber's position and mode.
#[derive(Debug)]
pub(crate) struct Catchup {
    /// Next seq to deliver; 0 = "start at the head" (no replay).
    next_seq: u64,
    state: State,
    /// When its last page was asked for.
    asked_at: Instant,
    /// Edits and deletes that arrived while it was not live, in order.
    held: Vec<Event>,
    held_bytes: usize,
    /// When the consumer's queue was last seen shrinking while lagging
    /// (never while pages fail: a subscriber whose pages fail for
    /// `stuck_timeout` is stuck too).
    progress_at: Instant,
    progress_bytes: usize,
    /// Pages failed in a row, and when to ask again after the last one.
    failures: u32,
    retry_at: Instant,
}

impl Catchup {
    /// A new subscriber replaying after `since` (none: live events only),
    /// catching up (its first page answers whether it may subscribe).
    pub fn new(since: Option<u64>, now: Instant) -> Catchup {
        Catchup {
            next_seq: since.map_or(0, |s| s + 1),
            state: State::CatchingUp { in_flight: false },
            asked_at: now,
            held: Vec::new(),
            held_bytes: 0,
            progress_at: now,
            progress_bytes: 0,
            failures: 0,
            retry_at: now,
        }
    }

    #[cfg(test)]
    pub fn state(&self) -> State {
        self.state
    }

    #[cfg(test)]
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes of the edits and deletes held while it catches up.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// One event of the room, its consumer holding `queued` bytes.
    pub fn handle_event(
        &mut self,
        event: &Event,
        queued: usize,
        now: Instant,
        lim: &Limits,
    ) -> Offer {
        if event.is_volatile() {
            // Typing, presence, receipts: only for live subscribers with room in
            // their queue; these are what pressure drops first.
            let live = self.state == State::Live && self.next_seq != 0;
            return if live && queued + event.len() <= lim.volatile_bytes_max {
                Offer::Deliver
            } else {
                Offer::Dropped
            };
        }
        if !event.is_sequenced() {
            return self.handle_change(event, queued, now, lim);
        }
        if self.state != State::Live || event.seq() < self.next_seq {
            return Offer::Skip; // catching up (pages carry it), or a duplicate
        }
        if event.seq() > self.next_seq || queued + event.len() > lim.queue_bytes_max {
            // Full (or a gap, which FIFO delivery rules out): stop live
            // delivery at next_seq and catch up when the consumer drains.
            self.start_lagging(queued, now);
            return Offer::Lagged;
        }
        debug_assert_eq!(event.seq(), self.next_seq, "live delivery is gap-free");
        self.next_seq += 1;
        Offer::Deliver
    }

    /// Edits and deletes are never dropped: while the subscriber catches
    /// up (or its queue is full) they wait beside it and are delivered
    /// when it is live again. A page may already show the change; applying
    /// it twice is harmless.
    fn handle_change(&mut self, event: &Event, queued: usize, now: Instant, lim: &Limits) -> Offer {
        if self.state == State::Live
            && self.held.is_empty()
            && queued + event.len() <= lim.queue_bytes_max
        {
            return Offer::Deliver;
        }
        self.held_bytes += event.len();
        self.held.push(event.clone());
        self.debug_check();
        let was_live = self.state == State::Live;
        if was_live {
            self.start_lagging(queued, now);
        }
        if self.held_bytes > lim.queue_bytes_max {
            Offer::Overflow
        } else if was_live {
            Offer::Lagged
        } else {
            Offer::Skip
        }
    }

    /// Debug builds: `held_bytes` is what `held` holds.
    fn debug_check(&self) {
        debug_assert_eq!(
            self.held_bytes,
            self.held.iter().map(Event::len).sum::<usize>(),
            "held bytes accounted"
        );
    }

    fn start_lagging(&mut self, queued: usize, now: Instant) {
        self.state = State::CatchingUp { in_flight: false };
        self.progress_at = now;
        self.progress_bytes = queued;
    }

    /// Asks for the next page: `(after, limit)` for the owner (limit 0:
    /// no replay, only the head).
    pub fn ask(&mut self, now: Instant, lim: &Limits) -> (u64, usize) {
        self.state = State::CatchingUp { in_flight: true };
        self.asked_at = now;
        let limit = if self.next_seq == 0 { 0 } else { lim.page_len };
        (self.next_seq.saturating_sub(1), limit)
    }

    /// How long the last page took to come, at `now`.
    pub fn page_wait(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.asked_at)
    }

    /// A page from the owner: `events` after the seq asked for and `head`,
    /// the highest seq the owner had fanned out when it sent them. Every
    /// event to hand to the consumer goes to `deliver`, in order, while
    /// `queued` (what the consumer held before) plus what was handed stays
    /// within the bound.
    pub fn handle_page(
        &mut self,
        events: Vec<Event>,
        head: u64,
        queued: usize,
        lim: &Limits,
        deliver: &mut dyn FnMut(&Event),
    ) -> Paged {
        self.state = State::CatchingUp { in_flight: false };
        self.failures = 0;
        if self.next_seq == 0 {
            self.next_seq = head + 1;
        }
        let mut queued = queued;
        for e in events {
            if e.seq() < self.next_seq {
                continue;
            }
            if queued + e.len() > lim.queue_bytes_max {
                return Paged::Behind; // the pump asks again when drained
            }
            // A jump forward means retention removed the seqs in between.
            debug_assert!(e.seq() >= self.next_seq, "next_seq only grows");
            self.next_seq = e.seq() + 1;
            queued += e.len();
            deliver(&e);
        }
        if self.next_seq <= head {
            return if queued <= lim.queue_bytes_max / 2 {
                Paged::More
            } else {
                Paged::Behind
            };
        }
        if queued + self.held_bytes > lim.queue_bytes_max {
            return Paged::Behind; // room for the held changes first
        }
        for e in self.held.drain(..) {
            deliver(&e);
        }
        self.held_bytes = 0;
        self.debug_check();
        self.state = State::Live;
        Paged::Live
    }

    /// The owner could not answer the page: ask again later, twice as
    /// late as after the previous failure in a row (from
    /// [`PAGE_RETRY_MIN`] to [`PAGE_RETRY_MAX`]). Returns the failures in
    /// a row, this one included.
    pub fn page_failed(&mut self, now: Instant) -> u32 {
        self.state = State::CatchingUp { in_flight: false };
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(16);
        let wait = PAGE_RETRY_MIN.saturating_mul(1 << doublings);
        self.retry_at = now + wait.min(PAGE_RETRY_MAX);
        self.failures
    }

    /// The lagging pump's look at this subscriber, its consumer holding
    /// `queued` bytes: ask for a page once the queue drained below half,
    /// close it once it made no progress for `stuck_timeout`.
    pub fn poll_pump(&mut self, queued: usize, now: Instant, lim: &Limits) -> Pump {
        if self.failures == 0 && (queued < self.progress_bytes || queued == 0) {
            self.progress_at = now;
        }
        self.progress_bytes = queued;
        if now.saturating_duration_since(self.progress_at) > lim.stuck_timeout {
            return Pump::Stuck;
        }
        let idle = self.state == State::CatchingUp { in_flight: false };
        if idle && now >= self.retry_at && queued <= lim.queue_bytes_max / 2 {
            Pump::Ask
        } else {
            Pump::Wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits {
        queue_bytes_max: 4096,
        volatile_bytes_max: 1024,
        page_len: 4,
        stuck_timeout: Duration::from_secs(30),
    };

    fn msg(seq: u64) -> Event {
        Event::message(1, seq, 7, 1_000, Some("hello"), false)
    }

    fn page(c: &mut Catchup, events: Vec<Event>, head: u64, queued: usize) -> (Paged, Vec<u64>) {
        let mut got = Vec::new();
        let paged = c.handle_page(events, head, queued, &LIM, &mut |e| got.push(e.seq()));
        (paged, got)
    }

    fn live_at(next: u64, now: Instant) -> Catchup {
        let mut c = Catchup::new(Some(next - 1), now);
        c.ask(now, &LIM);
        assert_eq!(page(&mut c, vec![], next - 1, 0).0, Paged::Live);
        c
    }

    #[test]
    fn a_page_past_the_head_makes_it_live_and_later_events_flow_in_order() {
        let now = Instant::now();
        let mut c = Catchup::new(Some(2), now);
        assert_eq!(c.ask(now, &LIM), (2, 4));
        assert_eq!(
            page(&mut c, vec![msg(3), msg(4)], 4, 0),
            (Paged::Live, vec![3, 4])
        );
        assert_eq!(
            c.handle_event(&msg(4), 0, now, &LIM),
            Offer::Skip,
            "a duplicate"
        );
        assert_eq!(c.handle_event(&msg(5), 0, now, &LIM), Offer::Deliver);
        assert_eq!(c.next_seq(), 6);
    }

    #[test]
    fn no_replay_starts_at_the_owners_head() {
        let now = Instant::now();
        let mut c = Catchup::new(None, now);
        assert_eq!(c.ask(now, &LIM), (0, 0));
        assert_eq!(page(&mut c, vec![], 41, 0), (Paged::Live, vec![]));
        assert_eq!(c.next_seq(), 42);
    }

    #[test]
    fn a_page_short_of_the_head_asks_again_and_events_meanwhile_are_skipped() {
        let now = Instant::now();
        let mut c = Catchup::new(Some(0), now);
        c.ask(now, &LIM);
        let got = page(&mut c, vec![msg(1), msg(2)], 9, 0);
        assert_eq!(got, (Paged::More, vec![1, 2]));
        assert_eq!(c.handle_event(&msg(10), 0, now, &LIM), Offer::Skip);
        assert_eq!(c.ask(now, &LIM), (2, 4));
        // Over half full after the page: the pump asks once it drained.
        let queued = LIM.queue_bytes_max / 2 + 1 - msg(3).len();
        let got = page(&mut c, vec![msg(3)], 9, queued);
        assert_eq!(got, (Paged::Behind, vec![3]));
        let full = LIM.queue_bytes_max / 2 + 1;
        assert_eq!(c.poll_pump(full, now, &LIM), Pump::Wait);
        assert_eq!(c.poll_pump(0, now, &LIM), Pump::Ask);
    }

    #[test]
    fn a_full_queue_stops_live_delivery_at_next_seq() {
        let now = Instant::now();
        let mut c = live_at(5, now);
        let full = LIM.queue_bytes_max;
        assert_eq!(c.handle_event(&msg(5), full, now, &LIM), Offer::Lagged);
        assert_eq!(c.next_seq(), 5, "the undelivered seq is asked for again");
        assert_eq!(c.poll_pump(full, now, &LIM), Pump::Wait, "not drained");
        assert_eq!(c.poll_pump(100, now, &LIM), Pump::Ask);
    }

    #[test]
    fn pages_stop_at_the_byte_bound() {
        let now = Instant::now();
        let mut c = Catchup::new(Some(0), now);
        c.ask(now, &LIM);
        let len = msg(1).len();
        let queued = LIM.queue_bytes_max - 2 * len;
        let (paged, got) = page(&mut c, vec![msg(1), msg(2), msg(3)], 3, queued);
        assert_eq!((paged, got), (Paged::Behind, vec![1, 2]));
        assert_eq!(c.next_seq(), 3);
    }

    #[test]
    fn changes_are_held_while_catching_up_and_delivered_after_the_page() {
        let now = Instant::now();
        let mut c = Catchup::new(Some(0), now);
        let edit = Event::edit(1, 1, 7, 2_000, "new");
        assert_eq!(c.handle_event(&edit, 0, now, &LIM), Offer::Skip);
        assert_eq!(c.held_bytes(), edit.len());
        c.ask(now, &LIM);
        let (paged, got) = page(&mut c, vec![msg(1)], 1, 0);
        assert_eq!(paged, Paged::Live);
        assert_eq!(got, vec![1, 1], "the message, then its edit");
        assert_eq!(c.held_bytes(), 0);
    }

    #[test]
    fn a_change_meeting_a_full_queue_lags_and_too_many_overflow() {
        let now = Instant::now();
        let mut c = live_at(2, now);
        let edit = Event::edit(1, 1, 7, 2_000, "new");
        assert_eq!(
            c.handle_event(&edit, LIM.queue_bytes_max, now, &LIM),
            Offer::Lagged
        );
        let mut last = Offer::Skip;
        for _ in 0..LIM.queue_bytes_max / edit.len() + 1 {
            last = c.handle_event(&edit, 0, now, &LIM);
        }
        assert_eq!(last, Offer::Overflow);
    }

    #[test]
    fn volatile_events_only_reach_live_subscribers_with_room() {
        let now = Instant::now();
        let typing = Event::typing(1, 9);
        let mut c = Catchup::new(Some(0), now);
        assert_eq!(c.handle_event(&typing, 0, now, &LIM), Offer::Dropped);
        let mut c = live_at(1, now);
        assert_eq!(c.handle_event(&typing, 0, now, &LIM), Offer::Deliver);
        assert_eq!(
            c.handle_event(&typing, LIM.volatile_bytes_max, now, &LIM),
            Offer::Dropped
        );
        assert_eq!(c.next_seq(), 1, "volatile events carry no seq");
    }

    #[test]
    fn a_consumer_that_never_drains_is_stuck_after_the_timeout() {
        let t0 = Instant::now();
        let mut c = live_at(1, t0);
        let full = LIM.queue_bytes_max;
        assert_eq!(c.handle_event(&msg(1), full, t0, &LIM), Offer::Lagged);
        assert_eq!(c.poll_pump(full, t0 + LIM.stuck_timeout, &LIM), Pump::Wait);
        let late = t0 + LIM.stuck_timeout + Duration::from_millis(1);
        assert_eq!(c.poll_pump(full, late, &LIM), Pump::Stuck);
    }

    #[test]
    fn progress_resets_the_stuck_clock() {
        let t0 = Instant::now();
        let mut c = live_at(1, t0);
        let full = LIM.queue_bytes_max;
        c.handle_event(&msg(1), full, t0, &LIM);
        let t1 = t0 + LIM.stuck_timeout;
        assert_eq!(
            c.poll_pump(full - 1, t1, &LIM),
            Pump::Wait,
            "shrank: progress"
        );
        let t2 = t1 + LIM.stuck_timeout;
        assert_eq!(c.poll_pump(full - 1, t2, &LIM), Pump::Wait);
        assert_eq!(
            c.poll_pump(full - 1, t2 + Duration::from_millis(1), &LIM),
            Pump::Stuck
        );
    }

    #[test]
    fn failed_pages_are_asked_again_later_and_later_then_stuck() {
        let t0 = Instant::now();
        let mut c = Catchup::new(Some(0), t0);
        let mut now = t0;
        let mut asks = 0;
        let mut waits = Vec::new();
        let mut last_ask = t0;
        // The pump ticks every 2 ms; every page fails at once.
        loop {
            match c.poll_pump(0, now, &LIM) {
                Pump::Ask => {
                    asks += 1;
                    waits.push(now - last_ask);
                    last_ask = now;
                    c.ask(now, &LIM);
                    c.page_failed(now);
                }
                Pump::Wait => {}
                Pump::Stuck => break,
            }
            now += Duration::from_millis(2);
            assert!(now - t0 < LIM.stuck_timeout * 2, "never stuck");
        }
        assert!(now - t0 > LIM.stuck_timeout, "stuck only after the timeout");
        // 10, 20, ... 640 ms, then 1 s apart: about 37 asks in 30 s, not 15,000.
        assert!((30..=45).contains(&asks), "{asks} asks");
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert!(waits
            .iter()
            .all(|w| *w <= PAGE_RETRY_MAX + Duration::from_millis(2)));
    }

    #[test]
    fn a_served_page_ends_the_failure_streak() {
        let t0 = Instant::now();
        let mut c = Catchup::new(Some(0), t0);
        c.ask(t0, &LIM);
        assert_eq!(c.page_failed(t0), 1);
        assert_eq!(c.poll_pump(0, t0, &LIM), Pump::Wait, "backing off");
        let t1 = t0 + PAGE_RETRY_MIN;
        assert_eq!(c.poll_pump(0, t1, &LIM), Pump::Ask);
        c.ask(t1, &LIM);
        assert_eq!(c.page_failed(t1), 2);
        let t2 = t1 + 2 * PAGE_RETRY_MIN;
        assert_eq!(c.poll_pump(0, t2, &LIM), Pump::Ask);
        c.ask(t2, &LIM);
        let (paged, _) = page(&mut c, vec![msg(1)], 5, 0);
        assert_eq!(paged, Paged::More);
        c.ask(t2, &LIM);
        assert_eq!(c.page_failed(t2), 1, "a new streak");
        let t3 = t2 + PAGE_RETRY_MIN;
        assert_eq!(
            c.poll_pump(0, t3, &LIM),
            Pump::Ask,
            "the backoff starts again from its least"
        );
        // Progress counts again once pages are served: never stuck while
        // the consumer drains.
        c.ask(t3, &LIM);
        page(&mut c, vec![msg(2)], 5, 0);
        let late = t3 + LIM.stuck_timeout * 2;
        assert_eq!(c.poll_pump(0, late, &LIM), Pump::Ask);
    }

    #[test]
    fn retention_gaps_jump_forward() {
        let now = Instant::now();
        let mut c = Catchup::new(Some(0), now);
        c.ask(now, &LIM);
        assert_eq!(
            page(&mut c, vec![msg(7), msg(8)], 8, 0),
            (Paged::Live, vec![7, 8])
        );
        assert_eq!(c.next_seq(), 9);
    }
}
