//! The channels between shards: one bounded, FIFO channel per ordered
//! pair of shards, made before the shards start.
//!
//! Why not glommio's channel mesh: its receiver, on every message it takes,
//! writes the sending executor's eventfd if that executor is parked (so a
//! sender waiting for room would see it), whether or not anything waits
//! for room. At chat rates a shard that sent a post to its owner and parked
//! was woken again by the owner taking it: 0.44 wake-ups per post on
//! `k6-1000`, a tenth of all of a shard's parks (docs/benchmarks.md). A
//! flume channel wakes a sender only when one waits for room, and a
//! receiver through its task's waker (glommio's foreign wake-up) only when
//! it waits for a message.
//!
//! Invariants: messages from one shard to another arrive in the order they
//! were sent; a shard never sends to itself; once a shard has closed its
//! ends, the receive loops of its peers for it end.

use std::cell::RefCell;

use super::mesh::Peer;

/// One shard's sending ends: a sender to each other shard.
pub(crate) struct Links {
    pub id: usize,
    /// `to[p]`: to shard `p` (`None` for this shard, and once closed).
    to: RefCell<Vec<Option<flume::Sender<Peer>>>>,
}

/// A shard's receiving ends: `(p, from p)` for every other shard `p`.
pub(crate) type FromPeers = Vec<(usize, flume::Receiver<Peer>)>;

/// The channels of `n` shards, each bounded to `len` messages: element `i`
/// is shard `i`'s sending and receiving ends.
pub(crate) fn links(n: usize, len: usize) -> Vec<(Links, FromPeers)> {
    assert!(len > 0, "a link holds at least one message");
    let mut to: Vec<Vec<Option<flume::Sender<Peer>>>> = (0..n).map(|_| vec![None; n]).collect();
    let mut from: Vec<FromPeers> = (0..n).map(|_| Vec::new()).collect();
    for (a, senders) in to.iter_mut().enumerate() {
        for (b, slot) in senders.iter_mut().enumerate() {
            if a != b {
                let (tx, rx) = flume::bounded(len);
                *slot = Some(tx);
                from[b].push((a, rx));
            }
        }
    }
    to.into_iter()
        .zip(from)
        .enumerate()
        .map(|(id, (to, from))| {
            let to = RefCell::new(to);
            (Links { id, to }, from)
        })
        .collect()
}

impl Links {
    /// Sends `msg` to shard `peer`, waiting for room; `Err` once either
    /// end is closed.
    pub(crate) async fn send_to(&self, peer: usize, msg: Peer) -> Result<(), Peer> {
        assert_ne!(peer, self.id, "a shard does not send to itself");
        let tx = self.to.borrow()[peer].clone();
        match tx {
            Some(tx) => tx.send_async(msg).await.map_err(|e| e.into_inner()),
            None => Err(msg),
        }
    }

    /// Closes this shard's sending ends: each peer's receive loop for this
    /// shard ends once it has taken what was sent before.
    pub(crate) fn close(&self) {
        for tx in self.to.borrow_mut().iter_mut() {
            tx.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interest(room: u64) -> Peer {
        Peer::Interest {
            room,
            from: 0,
            on: true,
        }
    }

    fn room_of(p: Peer) -> u64 {
        match p {
            Peer::Interest { room, .. } => room,
            _ => panic!("not what was sent"),
        }
    }

    #[test]
    fn messages_arrive_in_order_and_a_closed_sender_ends_the_loop() {
        let mut shards = links(3, 4).into_iter();
        let ((s0, _), (_, from)) = (shards.next().unwrap(), shards.next().unwrap());
        assert_eq!(from.iter().map(|f| f.0).collect::<Vec<_>>(), vec![0, 2]);
        futures_lite::future::block_on(async {
            for room in 1..=4 {
                assert!(s0.send_to(1, interest(room)).await.is_ok());
            }
        });
        let rx = &from[0].1;
        assert!(rx.is_full(), "bounded to 4 messages");
        s0.close();
        let got: Vec<u64> = rx.drain().map(room_of).collect();
        assert_eq!(got, vec![1, 2, 3, 4]);
        assert!(rx.recv().is_err(), "closed once drained");
        let refused = futures_lite::future::block_on(s0.send_to(1, interest(5)));
        assert!(refused.is_err(), "a closed link refuses");
    }

    #[test]
    #[should_panic(expected = "does not send to itself")]
    fn a_shard_never_sends_to_itself() {
        let shards = links(2, 4);
        let _ = futures_lite::future::block_on(shards[0].0.send_to(0, interest(1)));
    }
}
