//! Traffic between shards over their channels (`links`): what travels
//! ([`Peer`]), how it is handled on arrival, and the outbox that batches a
//! turn's traffic per peer (one flusher task per peer, FIFO).
//!
//! Invariant: everything one shard sends another arrives in the order it
//! was pushed (one outbox queue and one channel per pair), which the
//! catch-up argument in the shard's module doc relies on.

use std::time::Instant;

use super::types::PostAck;
use super::Shard;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::metrics::micros;

/// Traffic between shards (over their channels, `links`).
pub(crate) enum Peer {
    /// Events of rooms the receiving shard has subscribers for, in seq
    /// order per room. Batched: one message carries everything one owner
    /// produced for that shard since its last send.
    Deliver(Vec<Event>, Instant),
    /// The sending shard has its first (`on`) or lost its last
    /// subscription of `user` in `room`.
    Presence { room: u64, user: u64, on: bool },
    /// The sending shard starts (`on`) or stops having subscribers of `room`.
    Interest { room: u64, from: usize, on: bool },
    /// A subscriber on shard `from` wants events after `after`.
    PageRequest {
        room: u64,
        after: u64,
        limit: usize,
        from: usize,
        sub: u64,
        /// For a subscription's first page: its user, whose access the
        /// owner checks (a member removed meanwhile is refused).
        user: Option<u64>,
    },
    /// The answer: events, and `head`, the highest seq fanned out when the
    /// page was sent; `ok` is false when the owner could not read the page.
    PageReply {
        sub: u64,
        events: Vec<Event>,
        head: u64,
        outcome: PageOutcome,
    },
    /// `user` was removed from (or banned in) `room`, or (`None`) the room
    /// was deleted: their subscriptions to it end (with a `left` event
    /// giving `reason`) before any later event of the room.
    Revoke {
        room: u64,
        user: Option<u64>,
        reason: &'static str,
    },
    /// A post from shard `from`, answered with `Posted { token, .. }`.
    Post {
        room: u64,
        sender: u64,
        client_id: String,
        body: String,
        /// The seq it replies to.
        to: Option<u64>,
        /// The uploads it carries.
        files: Vec<u128>,
        from: usize,
        token: u64,
    },
    /// The answer to this shard's `Post` with `token`.
    Posted { token: u64, result: Result<PostAck> },
    /// `room` was just created: its owner forgets that it did not exist,
    /// then answers on `done`.
    Forget { room: u64, done: flume::Sender<()> },
}

/// How the owner answered a page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageOutcome {
    Served,
    /// The page could not be read (the subscriber asks again).
    Failed,
    /// Whether the user may see the room could not be read (the subscriber
    /// asks again; its `subscribe` stays unanswered until the owner could
    /// check).
    Unchecked,
    /// The subscription's user may not see the room (it ends, `NotFound`).
    Refused,
}

impl Shard {
    /// A post from this shard's thread to a room owned by another shard:
    /// sent over the mesh (batched with the turn's other traffic), answered
    /// by `Peer::Posted`.
    pub(super) async fn post_remote(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        body: &str,
        to: Option<u64>,
        files: Vec<u128>,
    ) -> Result<PostAck> {
        let token = self.next_remote_post.get();
        self.next_remote_post.set(token + 1);
        let (tx, rx) = flume::bounded(1);
        self.remote_posts.borrow_mut().insert(token, tx);
        self.push_peer(
            self.owner(room),
            Peer::Post {
                room,
                sender,
                client_id: client_id.to_string(),
                body: body.to_string(),
                to,
                files,
                from: self.id,
                token,
            },
        );
        rx.recv_async().await.unwrap_or(Err(Error::ShutDown))
    }

    /// Handles a message from another shard.
    pub(crate) fn handle_peer(&self, msg: Peer) {
        self.busy();
        match msg {
            Peer::Deliver(events, queued_at) => {
                self.latency
                    .borrow_mut()
                    .hop_us
                    .saturating_record(micros(queued_at.elapsed()));
                for e in &events {
                    self.deliver_local(e);
                }
            }
            Peer::Presence { room, user, on } => self.presence_changed(room, user, on),
            Peer::Interest { room, from, on } => {
                // An end of interest needs no state (the room may be gone).
                if on {
                    self.ensure_owned(room);
                }
                if let Some(o) = self.owned.borrow_mut().get_mut(&room) {
                    o.remote[from] = on;
                }
            }
            Peer::PageRequest {
                room,
                after,
                limit,
                from,
                sub,
                user,
            } => {
                let me = self.rc();
                glommio::spawn_local(async move {
                    let (outcome, events, head) = me.serve_page(room, after, limit, user).await;
                    me.push_peer(
                        from,
                        Peer::PageReply {
                            sub,
                            events,
                            head,
                            outcome,
                        },
                    );
                })
                .detach();
            }
            Peer::Revoke { room, user, reason } => self.revoke(room, user, reason),
            Peer::Post {
                room,
                sender,
                client_id,
                body,
                to,
                files,
                from,
                token,
            } => {
                let me = self.rc();
                glommio::spawn_local(async move {
                    let result = if me.closing.get() {
                        Err(Error::ShutDown)
                    } else {
                        me.post(room, sender, &client_id, &body, to, files).await
                    };
                    me.push_peer(from, Peer::Posted { token, result });
                })
                .detach();
            }
            Peer::Posted { token, result } => {
                if let Some(tx) = self.remote_posts.borrow_mut().remove(&token) {
                    let _ = tx.send(result);
                }
            }
            Peer::Forget { room, done } => {
                self.forget_room(room);
                let _ = done.send(());
            }
            Peer::PageReply {
                sub,
                events,
                head,
                outcome,
            } => match outcome {
                PageOutcome::Served => self.apply_page(sub, events, head),
                PageOutcome::Refused => {
                    let room = self.subs.borrow().get(&sub).map_or(0, |s| s.room);
                    self.page_refused(sub, room);
                }
                outcome => self.page_failed(sub, outcome),
            },
        }
    }

    pub(super) fn push_deliver(&self, peer: usize, event: Event) {
        let mut outbox = self.outbox.borrow_mut();
        if let Some(Peer::Deliver(batch, _)) = outbox[peer].back_mut() {
            batch.push(event);
            return;
        }
        outbox[peer].push_back(Peer::Deliver(vec![event], Instant::now()));
        drop(outbox);
        self.schedule_flush(peer);
    }

    pub(super) fn push_peer(&self, peer: usize, msg: Peer) {
        self.outbox.borrow_mut()[peer].push_back(msg);
        self.schedule_flush(peer);
    }

    /// Starts the flusher of `peer` if it is not running. It runs after the
    /// tasks already queued, so everything they produce for `peer` leaves
    /// in as few messages as possible, in order.
    pub(super) fn schedule_flush(&self, peer: usize) {
        if std::mem::replace(&mut self.flushing.borrow_mut()[peer], true) {
            return;
        }
        let me = self.rc();
        glommio::spawn_local(async move {
            // Let every task already runnable (the other completions of the
            // same commit batch) add to the outbox first.
            futures_lite::future::yield_now().await;
            loop {
                let next = me.outbox.borrow_mut()[peer].pop_front();
                let Some(msg) = next else {
                    me.flushing.borrow_mut()[peer] = false;
                    break;
                };
                me.counters.borrow_mut().mesh_sends += 1;
                if me.senders.send_to(peer, msg).await.is_err() {
                    me.flushing.borrow_mut()[peer] = false;
                    break; // the peer has shut down
                }
            }
        })
        .detach();
    }
}
