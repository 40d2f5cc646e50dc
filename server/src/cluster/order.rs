//! Puts a room's messages back in seq order as they come from NATS (at
//! most once, possibly late after a reconnect) and from the owner's
//! replays: free of I/O, so that its rules are tested on their own.
//!
//! Invariants: what `offer` hands out has seqs `head + 1, head + 2, …`
//! (each once, never going back); a message at or below `head` is a
//! duplicate and dropped; one past a gap waits in `held` (at most
//! `held_max`: past it the newest held are dropped, as the owner's replay
//! brings them again) until the gap is filled or known to be empty. A
//! change of a message (an edit, a delete) never comes out before the
//! message: one for a seq past `head` waits (at most `held_max` of them;
//! past it the change is dropped, and history still shows it) and follows
//! its message out, however `head` gets past it.

use std::collections::BTreeMap;

/// Something with a room seq.
pub trait Seq {
    fn seq(&self) -> u64;
}

impl Seq for rookery_engine::Event {
    fn seq(&self) -> u64 {
        rookery_engine::Event::seq(self)
    }
}

pub struct Order<T> {
    /// The last seq handed out; `None` until the room's last seq is known.
    head: Option<u64>,
    held: BTreeMap<u64, T>,
    /// Changes of messages not handed out yet, by the message's seq.
    changes: BTreeMap<u64, Vec<T>>,
    changes_len: usize,
    held_max: usize,
}

impl<T: Seq> Order<T> {
    pub fn new(held_max: usize) -> Order<T> {
        Order {
            head: None,
            held: BTreeMap::new(),
            changes: BTreeMap::new(),
            changes_len: 0,
            held_max,
        }
    }

    pub fn head(&self) -> Option<u64> {
        self.head
    }

    /// The room's last seq, as the owner answered a join: where handing
    /// out starts if it had not; what was held and follows it comes out.
    pub fn start(&mut self, last: u64, out: &mut Vec<T>) {
        if self.head.is_none() {
            self.head = Some(last);
            self.drain(out);
        }
    }

    /// A message: what may be handed out now goes to `out`, in order.
    pub fn offer(&mut self, m: T, out: &mut Vec<T>) {
        let seq = m.seq();
        match self.head {
            Some(head) if seq <= head => {}
            Some(head) if seq == head + 1 => {
                self.head = Some(seq);
                out.push(m);
                self.drain(out);
            }
            _ => {
                self.held.insert(seq, m);
                while self.held.len() > self.held_max {
                    self.held.pop_last();
                }
            }
        }
    }

    /// A change of message `c.seq()`: out now if the message is out,
    /// else after it. False when it was dropped (too many waiting).
    pub fn offer_change(&mut self, c: T, out: &mut Vec<T>) -> bool {
        let seq = c.seq();
        if self.head.is_some_and(|head| seq <= head) {
            out.push(c);
            return true;
        }
        if self.changes_len >= self.held_max {
            return false;
        }
        self.changes.entry(seq).or_default().push(c);
        self.changes_len += 1;
        true
    }

    /// The missing seqs, as `(after, before)`: the owner is to be asked
    /// for the messages after `after`; `before` is the first held.
    pub fn gap(&self) -> Option<(u64, u64)> {
        let head = self.head?;
        let (&first, _) = self.held.first_key_value()?;
        (first > head + 1).then_some((head, first))
    }

    /// The owner has nothing between `head` and the first held (retention
    /// removed them): go on from the first held.
    pub fn skip_gap(&mut self, out: &mut Vec<T>) {
        if let (Some(_), Some((&first, _))) = (self.head, self.held.first_key_value()) {
            self.head = Some(first - 1);
            self.drain(out);
        }
    }

    /// The owner has nothing between `head` and `seq` (a replay's first
    /// message is `seq + 1`): go on from `seq`.
    pub fn skip_to(&mut self, seq: u64, out: &mut Vec<T>) {
        if let Some(head) = self.head {
            self.head = Some(head.max(seq));
            self.drain(out);
        }
    }

    fn drain(&mut self, out: &mut Vec<T>) {
        let Some(mut head) = self.head else { return };
        while let Some(entry) = self.held.first_entry() {
            let seq = *entry.key();
            if seq <= head {
                entry.remove();
            } else if seq == head + 1 {
                out.push(entry.remove());
                head = seq;
            } else {
                break;
            }
        }
        self.head = Some(head);
        // The changes of every message now out follow it.
        while let Some(entry) = self.changes.first_entry() {
            if *entry.key() > head {
                break;
            }
            let changes = entry.remove();
            self.changes_len -= changes.len();
            out.extend(changes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Seq for u64 {
        fn seq(&self) -> u64 {
            *self
        }
    }

    fn offer_all(o: &mut Order<u64>, seqs: &[u64]) -> Vec<u64> {
        let mut out = Vec::new();
        for s in seqs {
            o.offer(*s, &mut out);
        }
        out
    }

    #[test]
    fn in_order_once_and_gaps_wait_for_their_fill() {
        let mut o = Order::new(100);
        // Before the start: held.
        assert!(offer_all(&mut o, &[6, 5]).is_empty());
        let mut out = Vec::new();
        o.start(4, &mut out);
        assert_eq!(out, vec![5, 6]);
        assert_eq!(offer_all(&mut o, &[6, 7, 7, 3]), vec![7]);
        // 8 and 9 lost: 10 and 11 wait.
        assert!(offer_all(&mut o, &[11, 10]).is_empty());
        assert_eq!(o.gap(), Some((7, 10)));
        // The fill brings 8..11; 10 and 11 come out once.
        assert_eq!(offer_all(&mut o, &[8, 9, 10, 11]), vec![8, 9, 10, 11]);
        assert_eq!((o.gap(), o.head()), (None, Some(11)));
        // A later start changes nothing.
        o.start(2, &mut out);
        assert_eq!(o.head(), Some(11));
    }

    /// A message (`'m'`) or a change of one (`'e'`).
    impl Seq for (u64, char) {
        fn seq(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn a_change_never_comes_out_before_its_message() {
        let mut o: Order<(u64, char)> = Order::new(2);
        let mut out = Vec::new();
        // Before the start: the change waits for its message.
        assert!(o.offer_change((3, 'e'), &mut out));
        o.start(2, &mut out);
        assert!(out.is_empty());
        o.offer((3, 'm'), &mut out);
        assert_eq!(out, vec![(3, 'm'), (3, 'e')]);
        // A change of a message already out: at once.
        out.clear();
        assert!(o.offer_change((2, 'e'), &mut out));
        assert_eq!(out, vec![(2, 'e')]);
        // 4 lost, 5 held; changes of 4 and 5 wait, a third is dropped.
        out.clear();
        o.offer((5, 'm'), &mut out);
        assert!(o.offer_change((5, 'e'), &mut out));
        assert!(o.offer_change((4, 'e'), &mut out));
        assert!(!o.offer_change((4, 'x'), &mut out));
        assert!(out.is_empty());
        // The fill brings 4: each change right after its message's turn.
        o.offer((4, 'm'), &mut out);
        assert_eq!(out, vec![(4, 'm'), (5, 'm'), (4, 'e'), (5, 'e')]);
        // Skipped past (retention removed the message): the change goes
        // out all the same, once.
        out.clear();
        assert!(o.offer_change((7, 'e'), &mut out));
        o.offer((8, 'm'), &mut out);
        o.skip_gap(&mut out);
        assert_eq!(out, vec![(8, 'm'), (7, 'e')]);
        out.clear();
        o.skip_to(20, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn an_empty_gap_is_skipped_and_held_messages_stay_bounded() {
        let mut o = Order::new(3);
        let mut out = Vec::new();
        o.start(0, &mut out);
        assert!(offer_all(&mut o, &[5, 9, 7, 6, 8]).is_empty());
        // The three lowest are kept.
        assert_eq!(o.gap(), Some((0, 5)));
        o.skip_gap(&mut out);
        assert_eq!(out, vec![5, 6, 7]);
        assert_eq!(o.gap(), None);
        // 8 and 9 were dropped: they come again (from the owner) in order.
        assert_eq!(offer_all(&mut o, &[9, 8]), vec![8, 9]);
        let mut nothing: Order<u64> = Order::new(3);
        nothing.skip_gap(&mut out);
        assert_eq!(nothing.head(), None);
        // Retention removed 10..=12 of a gap 10..=14: the owner's replay
        // starts at 13, which is where the order goes on.
        let mut part = Order::new(10);
        let mut out = Vec::new();
        part.start(9, &mut out);
        assert!(offer_all(&mut part, &[15]).is_empty());
        part.skip_to(12, &mut out);
        assert!(out.is_empty());
        assert_eq!(offer_all(&mut part, &[13, 14]), vec![13, 14, 15]);
        part.skip_to(3, &mut out);
        assert_eq!(part.head(), Some(15));
    }
}
