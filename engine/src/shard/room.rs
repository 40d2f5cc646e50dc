//! What an owner keeps per room to order its events, free of I/O: the
//! reorder buffer that turns durable completions into seq order, and the
//! tail cache of the newest events.
//!
//! Invariant: the sequencer hands out each seq exactly once, in order,
//! with no gap (`head` is the highest handed out); the tail holds at most
//! its length bound and knows the bytes it holds.

use std::collections::{BTreeMap, VecDeque};

use crate::event::Event;

/// Releases a room's durable messages in seq order. Appends of one commit
/// batch can complete in any order; fan-out must not.
#[derive(Debug)]
pub(crate) struct Sequencer {
    /// The highest seq released.
    head: u64,
    /// Completed messages waiting for a lower seq.
    waiting: BTreeMap<u64, Event>,
}

impl Sequencer {
    /// A room whose messages up to `head` are already out (after a
    /// restart, what the log holds).
    pub fn new(head: u64) -> Sequencer {
        Sequencer {
            head,
            waiting: BTreeMap::new(),
        }
    }

    /// The highest seq released to fan-out.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// A message is durable: `release` gets it, and every message that
    /// waited for it, in seq order (nothing while a lower seq is still
    /// being written).
    pub fn handle_durable(&mut self, event: Event, release: &mut dyn FnMut(Event)) {
        debug_assert!(
            event.seq() > self.head,
            "seq {} released twice",
            event.seq()
        );
        if event.seq() == self.head + 1 && self.waiting.is_empty() {
            // In order, as nearly always: no detour through the buffer.
            self.head += 1;
            return release(event);
        }
        self.waiting.insert(event.seq(), event);
        while let Some(e) = self.waiting.remove(&(self.head + 1)) {
            self.head += 1;
            release(e);
        }
    }
}

/// A room's tail cache: its newest events (at most `len_max`) and the
/// bytes they hold (kept as they change, for the shard's budget).
#[derive(Default)]
pub(crate) struct Tail {
    events: VecDeque<Event>,
    bytes: usize,
}

impl Tail {
    /// Appends the newest event, dropping the oldest past `len_max`; the
    /// change in bytes held.
    pub fn push(&mut self, e: Event, len_max: usize) -> isize {
        let before = self.bytes;
        self.bytes += e.len();
        self.events.push_back(e);
        if self.events.len() > len_max {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.len();
            }
        }
        self.bytes as isize - before as isize
    }

    /// Replaces the cached event with `fresh`'s seq, if it is cached; the
    /// change in bytes held.
    pub fn replace(&mut self, fresh: Event) -> isize {
        match self.events.iter_mut().find(|e| e.seq() == fresh.seq()) {
            Some(slot) => {
                let delta = fresh.len() as isize - slot.len() as isize;
                self.bytes = (self.bytes as isize + delta) as usize;
                *slot = fresh;
                delta
            }
            None => 0,
        }
    }

    /// Drops the oldest event; the bytes freed.
    pub fn pop_oldest(&mut self) -> usize {
        let freed = self.events.pop_front().map_or(0, |e| e.len());
        self.bytes -= freed;
        freed
    }

    /// Drops every cached event; the bytes freed.
    pub fn clear(&mut self) -> usize {
        self.events = VecDeque::new();
        std::mem::take(&mut self.bytes)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Up to `limit` cached events from seq `from` on, when the cache
    /// covers `from` (or nothing past `head` is asked for).
    pub fn page(&self, from: u64, limit: usize, head: u64) -> Option<Vec<Event>> {
        let covers = self.events.front().is_some_and(|e| e.seq() <= from) || from > head;
        covers.then(|| {
            self.events
                .iter()
                .filter(|e| e.seq() >= from)
                .take(limit)
                .cloned()
                .collect()
        })
    }
}

impl std::ops::Deref for Tail {
    type Target = VecDeque<Event>;
    fn deref(&self) -> &VecDeque<Event> {
        &self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> Event {
        Event::message(1, seq, 7, 1_000, Some("hi"), false)
    }

    fn durable(s: &mut Sequencer, seq: u64) -> Vec<u64> {
        let mut out = Vec::new();
        s.handle_durable(msg(seq), &mut |e| out.push(e.seq()));
        out
    }

    #[test]
    fn completions_out_of_order_are_released_in_order() {
        let mut s = Sequencer::new(10);
        assert_eq!(durable(&mut s, 12), Vec::<u64>::new());
        assert_eq!(durable(&mut s, 13), Vec::<u64>::new());
        assert_eq!(durable(&mut s, 11), vec![11, 12, 13]);
        assert_eq!(durable(&mut s, 14), vec![14]);
        assert_eq!(s.head(), 14);
    }

    #[test]
    fn the_tail_keeps_its_length_and_counts_its_bytes() {
        let mut t = Tail::default();
        for seq in 1..=5 {
            t.push(msg(seq), 3);
        }
        assert_eq!(t.iter().map(Event::seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(t.bytes(), 3 * msg(1).len());
        let fresh = Event::message(1, 4, 7, 1_000, Some("longer body"), true);
        let delta = t.replace(fresh.clone());
        assert_eq!(delta, fresh.len() as isize - msg(4).len() as isize);
        assert_eq!(t.bytes(), 2 * msg(1).len() + fresh.len());
        assert_eq!(t.pop_oldest(), msg(3).len());
        assert_eq!(t.clear(), msg(5).len() + fresh.len());
        assert_eq!(t.bytes(), 0);
    }

    #[test]
    fn a_page_from_the_tail_only_when_it_covers_the_start() {
        let mut t = Tail::default();
        for seq in 5..=8 {
            t.push(msg(seq), 10);
        }
        let seqs = |p: Option<Vec<Event>>| p.map(|v| v.iter().map(Event::seq).collect::<Vec<_>>());
        assert_eq!(seqs(t.page(6, 2, 8)), Some(vec![6, 7]));
        assert_eq!(
            seqs(t.page(4, 2, 8)),
            None,
            "seq 4 is not cached: read the log"
        );
        assert_eq!(seqs(t.page(9, 2, 8)), Some(vec![]), "nothing past the head");
    }
}
