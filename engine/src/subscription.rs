//! The consumer end of subscriptions, usable from any thread, blocking or
//! async: an [`Inbox`] receives the events of many subscriptions (one
//! consumer, such as a connection, following many rooms); a
//! [`Subscription`] is an inbox with one subscription.
//!
//! The shard that hosts an inbox's subscriptions pushes events into one
//! unbounded channel but never past `outbound_queue_bytes_max` bytes: the
//! inbox's count is shared (added by the shard, subtracted here on
//! receipt), so memory stays bounded per consumer (per connection) while
//! the channel needs no capacity check.
//! When the count is too high the shard marks the subscription that met the
//! full queue lagging ("lagging at seq X", per room) and catches it up from
//! the room's tail cache or the log once the consumer drains; each
//! subscription's events stay in seq order.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::consumer::{closed_error, Delivery, InboxKey, SubShared};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::queues::Queues;
use crate::reply::Pending;

/// Events of many subscriptions hosted on one shard, through one channel:
/// each subscription's events arrive in seq order with no gap and no
/// duplicate; the inbox as a whole holds at most `outbound_queue_bytes_max`
/// bytes. Dropping it ends all its subscriptions.
pub struct Inbox {
    pub(crate) id: u64,
    pub(crate) shard: usize,
    pub(crate) rx: flume::Receiver<Delivery>,
    pub(crate) shared: Arc<SubShared>,
    pub(crate) queues: Arc<Queues>,
}

impl Inbox {
    /// The shard hosting this inbox's subscriptions.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Subscribes to `room` into this inbox: events with `seq > since` are
    /// replayed first (none when `since` is `None`), then live ones follow.
    /// Resolves to the subscription's id (see [`Delivery::sub`]) once the
    /// room's owner knows it: every change made after that reaches it.
    pub fn subscribe(&self, room: u64, since: Option<u64>) -> Pending<u64> {
        self.subscribe_as(room, since, None)
    }

    /// Like [`Inbox::subscribe`], carrying `user`'s presence in the room:
    /// while any subscription of the user to the room is open, on any
    /// shard, the user is online there (`presence` events announce the
    /// first join and the last leave to the room's other live subscribers).
    /// When this resolves, `online` already counts the user.
    pub fn subscribe_as(&self, room: u64, since: Option<u64>, user: Option<u64>) -> Pending<u64> {
        self.queues
            .subscribe_into(self.key(), room, since, user, |id| id)
    }

    /// Ends one subscription of this inbox (events of it already queued are
    /// still received).
    pub fn unsubscribe(&self, sub: u64) {
        self.queues.unsubscribe(self.shard, sub);
    }

    pub(crate) fn key(&self) -> InboxKey {
        InboxKey {
            shard: self.shard,
            id: self.id,
            shared: self.shared.clone(),
        }
    }

    fn took(&self, d: Delivery) -> Delivery {
        self.shared.bytes.fetch_sub(d.event.len(), Ordering::AcqRel);
        d
    }

    /// Why the inbox ended (its channel disconnects only when the shard
    /// closed it, after setting the reason).
    fn ended(&self) -> Error {
        closed_error(self.shared.closed.load(Ordering::Acquire))
    }

    /// Waits for the next event of any of its subscriptions.
    pub fn recv(&self) -> Result<Delivery> {
        self.rx
            .recv()
            .map(|d| self.took(d))
            .map_err(|_| self.ended())
    }

    /// Waits up to `timeout`; `Ok(None)` when nothing came.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Delivery>> {
        match self.rx.recv_timeout(timeout) {
            Ok(d) => Ok(Some(self.took(d))),
            Err(flume::RecvTimeoutError::Timeout) => Ok(None),
            Err(flume::RecvTimeoutError::Disconnected) => Err(self.ended()),
        }
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Result<Option<Delivery>> {
        match self.rx.try_recv() {
            Ok(d) => Ok(Some(self.took(d))),
            Err(flume::TryRecvError::Empty) => Ok(None),
            Err(flume::TryRecvError::Disconnected) => Err(self.ended()),
        }
    }

    /// Waits for the next event, on any async runtime.
    pub async fn recv_async(&self) -> Result<Delivery> {
        self.rx
            .recv_async()
            .await
            .map(|d| self.took(d))
            .map_err(|_| self.ended())
    }

    /// Bytes queued for this consumer right now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Acquire)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.queues.close_inbox(self.shard, self.id);
    }
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("id", &self.id)
            .field("shard", &self.shard)
            .finish()
    }
}

/// A live subscription to one room: replayed events first (those with
/// `seq > since`), then live ones, in seq order with no gap and no
/// duplicate. Dropping it unsubscribes. (An [`Inbox`] with one
/// subscription.)
pub struct Subscription {
    pub(crate) inbox: Inbox,
    pub(crate) room: u64,
}

impl Subscription {
    /// The room.
    pub fn room(&self) -> u64 {
        self.room
    }

    /// The shard hosting the subscription.
    pub fn shard(&self) -> usize {
        self.inbox.shard
    }

    /// Waits for the next event.
    pub fn recv(&self) -> Result<Event> {
        self.inbox.recv().map(|d| d.event)
    }

    /// Waits up to `timeout`; `Ok(None)` when nothing came.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Event>> {
        Ok(self.inbox.recv_timeout(timeout)?.map(|d| d.event))
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Result<Option<Event>> {
        Ok(self.inbox.try_recv()?.map(|d| d.event))
    }

    /// Waits for the next event, on any async runtime.
    pub async fn recv_async(&self) -> Result<Event> {
        self.inbox.recv_async().await.map(|d| d.event)
    }

    /// Bytes queued for this consumer right now.
    pub fn queued_bytes(&self) -> usize {
        self.inbox.queued_bytes()
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("inbox", &self.inbox)
            .field("room", &self.room)
            .finish()
    }
}
