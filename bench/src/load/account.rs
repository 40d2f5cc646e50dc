//! Loss, duplicate and reorder accounting for one receiver in one room.
//! Rooms number their messages densely (1, 2, 3, …), so a receiver that
//! joined when the room's last seq was `join_seq` must see every seq after
//! it, once, in order, up to where it stopped. Pure and allocation-free
//! while messages arrive in order (gaps are remembered in a small list
//! until they are filled or counted lost).

/// One receiver's view of one room.
#[derive(Debug, Clone, Default)]
pub struct Receiver {
    join_seq: u64,
    max_seen: u64,
    /// Seqs skipped over (above `join_seq`, below `max_seen`), not yet seen.
    missing: Vec<u64>,
    /// Distinct seqs seen after joining.
    pub delivered: u64,
    /// Seqs seen again.
    pub duplicated: u64,
    /// Seqs that arrived after a higher one (filling a gap late).
    pub reordered: u64,
}

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next one, or a later one (leaving a gap).
    New,
    /// A gap filled late.
    Reordered,
    /// Seen before.
    Duplicate,
    /// From before the join (a server may send what was sequenced while
    /// the join was in progress): not due, not counted.
    BeforeJoin,
}

/// Gaps remembered at most (a receiver with more is far beyond "lost"
/// anyway; the excess is counted lost at once).
const MISSING_MAX: usize = 4096;

impl Receiver {
    /// A receiver that joined when the room's last seq was `join_seq`.
    pub fn new(join_seq: u64) -> Receiver {
        Receiver {
            join_seq,
            max_seen: join_seq,
            ..Receiver::default()
        }
    }

    /// Records the arrival of `seq`.
    pub fn arrive(&mut self, seq: u64) -> Arrival {
        if seq <= self.join_seq {
            return Arrival::BeforeJoin;
        }
        if seq > self.max_seen {
            for gap in self.max_seen + 1..seq {
                if self.missing.len() < MISSING_MAX {
                    self.missing.push(gap);
                }
            }
            self.max_seen = seq;
            self.delivered += 1;
            return Arrival::New;
        }
        if let Some(at) = self.missing.iter().position(|&m| m == seq) {
            self.missing.swap_remove(at);
            self.delivered += 1;
            self.reordered += 1;
            return Arrival::Reordered;
        }
        self.duplicated += 1;
        Arrival::Duplicate
    }

    /// Whether every seq up to `upto` has arrived.
    pub fn complete_to(&self, upto: u64) -> bool {
        self.max_seen >= upto && self.missing.iter().all(|&m| m > upto)
    }

    /// Deliveries expected of this receiver if the room's messages up to
    /// `upto` were all due to it.
    pub fn expected(&self, upto: u64) -> u64 {
        upto.saturating_sub(self.join_seq)
    }

    /// Expected deliveries up to `upto` that never arrived.
    pub fn lost(&self, upto: u64) -> u64 {
        self.expected(upto).saturating_sub(self.delivered_to(upto))
    }

    /// Distinct seqs delivered that are at most `upto`.
    pub fn delivered_to(&self, upto: u64) -> u64 {
        let above = self.max_seen.saturating_sub(upto);
        let missing_above = self.missing.iter().filter(|&&m| m > upto).count() as u64;
        self.delivered
            .saturating_sub(above.saturating_sub(missing_above))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_arrivals_are_all_new_and_nothing_is_lost() {
        let mut r = Receiver::new(10);
        for seq in 11..=20 {
            assert_eq!(r.arrive(seq), Arrival::New);
        }
        assert!(r.complete_to(20));
        assert_eq!((r.expected(20), r.lost(20), r.delivered), (10, 0, 10));
        assert_eq!((r.duplicated, r.reordered), (0, 0));
    }

    #[test]
    fn gaps_duplicates_and_late_arrivals_are_told_apart() {
        let mut r = Receiver::new(0);
        assert_eq!(r.arrive(1), Arrival::New);
        assert_eq!(r.arrive(4), Arrival::New, "2 and 3 skipped");
        assert!(!r.complete_to(4));
        assert_eq!(r.arrive(3), Arrival::Reordered);
        assert_eq!(r.arrive(3), Arrival::Duplicate);
        assert_eq!(r.arrive(1), Arrival::Duplicate);
        assert_eq!((r.delivered, r.duplicated, r.reordered), (3, 2, 1));
        assert_eq!(r.lost(4), 1, "2 never came");
        assert_eq!(r.lost(6), 3, "nor 5 and 6");
        assert!(r.complete_to(1) && !r.complete_to(2));
    }

    #[test]
    fn messages_from_before_the_join_are_not_counted_and_later_ones_do_not_count_early() {
        let mut r = Receiver::new(5);
        assert_eq!(r.arrive(5), Arrival::BeforeJoin, "sequenced while joining");
        assert_eq!(r.arrive(3), Arrival::BeforeJoin);
        assert_eq!(r.duplicated, 0);
        for seq in 6..=9 {
            r.arrive(seq);
        }
        // Expected up to 7 only: 8 and 9 arrived but do not offset losses.
        assert_eq!((r.expected(7), r.lost(7)), (2, 0));
        assert_eq!(r.lost(12), 3);
    }
}
