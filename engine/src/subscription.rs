//! The consumer end of a subscription, usable from any thread, blocking or
//! async.
//!
//! The shard that hosts a subscription pushes events into an unbounded
//! channel but never past `outbound_queue_bytes_max` bytes: `bytes` is the
//! shared count (added by the shard, subtracted here on receipt), so memory
//! stays bounded while the channel itself needs no capacity check. When the
//! count is too high the shard marks the subscription lagging and catches it
//! up later from the room's tail cache or the log.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::event::Event;

/// Why a subscription ended (stored in [`SubShared::closed`]; 0 = open).
pub(crate) const CLOSED_SLOW: u8 = 1;
pub(crate) const CLOSED_SHUTDOWN: u8 = 2;

/// State shared by the hosting shard and the consumer.
#[derive(Default)]
pub(crate) struct SubShared {
    /// Bytes of events sent and not yet received.
    pub bytes: AtomicUsize,
    /// Why the shard closed the subscription (`OPEN` while open).
    pub closed: AtomicU8,
}

/// A live subscription to one room: replayed events first (those with
/// `seq > since`), then live ones, in seq order with no gap and no
/// duplicate. Dropping it unsubscribes.
pub struct Subscription {
    pub(crate) id: u64,
    pub(crate) shard: usize,
    pub(crate) room: u64,
    pub(crate) rx: flume::Receiver<Event>,
    pub(crate) shared: Arc<SubShared>,
    pub(crate) engine: Engine,
}

impl Subscription {
    /// The room.
    pub fn room(&self) -> u64 {
        self.room
    }

    /// The shard hosting the subscription.
    pub fn shard(&self) -> usize {
        self.shard
    }

    fn took(&self, e: Event) -> Event {
        self.shared.bytes.fetch_sub(e.len(), Ordering::AcqRel);
        e
    }

    fn ended(&self) -> Error {
        match self.shared.closed.load(Ordering::Acquire) {
            CLOSED_SLOW => Error::SlowConsumer,
            _ => Error::ShutDown,
        }
    }

    /// Waits for the next event.
    pub fn recv(&self) -> Result<Event> {
        self.rx
            .recv()
            .map(|e| self.took(e))
            .map_err(|_| self.ended())
    }

    /// Waits up to `timeout`; `Ok(None)` when nothing came.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Event>> {
        match self.rx.recv_timeout(timeout) {
            Ok(e) => Ok(Some(self.took(e))),
            Err(flume::RecvTimeoutError::Timeout) => Ok(None),
            Err(flume::RecvTimeoutError::Disconnected) => Err(self.ended()),
        }
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Result<Option<Event>> {
        match self.rx.try_recv() {
            Ok(e) => Ok(Some(self.took(e))),
            Err(flume::TryRecvError::Empty) => Ok(None),
            Err(flume::TryRecvError::Disconnected) => Err(self.ended()),
        }
    }

    /// Waits for the next event, on any async runtime.
    pub async fn recv_async(&self) -> Result<Event> {
        self.rx
            .recv_async()
            .await
            .map(|e| self.took(e))
            .map_err(|_| self.ended())
    }

    /// Bytes queued for this consumer right now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Acquire)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.engine.unsubscribe(self.shard, self.id);
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("shard", &self.shard)
            .field("room", &self.room)
            .finish()
    }
}
