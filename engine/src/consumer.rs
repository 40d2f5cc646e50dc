//! What a shard hands a subscription's consumer, and the contract between
//! them: a [`Delivery`] through an inbox's channel, with the bytes sent and
//! not yet taken counted in [`SubShared`] (the shard adds, the consumer
//! subtracts), or a [`LocalSink`] on the shard's own thread, called
//! synchronously. Both the hosting shard and the consumer handles
//! (`Inbox`, `LocalInbox`) depend on this module; it depends on neither.

use std::sync::atomic::{AtomicU8, AtomicUsize};
use std::sync::Arc;

use crate::error::Error;
use crate::event::Event;

/// Why an inbox was closed (stored in [`SubShared::closed`]; 0 = open).
pub(crate) const CLOSED_SLOW: u8 = 1;
pub(crate) const CLOSED_SHUTDOWN: u8 = 2;

/// The error a consumer (or a subscribe still waiting) gets for an inbox
/// closed with `reason`.
pub(crate) fn closed_error(reason: u8) -> Error {
    match reason {
        CLOSED_SLOW => Error::SlowConsumer,
        _ => Error::ShutDown,
    }
}

/// State shared by the hosting shard and the consumer of one inbox.
#[derive(Default)]
pub(crate) struct SubShared {
    /// Bytes of events sent and not yet received.
    pub bytes: AtomicUsize,
    /// Why the shard closed the inbox (0 while open).
    pub closed: AtomicU8,
}

/// What a subscribe call needs to know of its inbox.
pub(crate) struct InboxKey {
    pub shard: usize,
    pub id: u64,
    pub shared: Arc<SubShared>,
}

/// One event for one subscription of an inbox.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The subscription (as returned by [`Inbox::subscribe`]).
    pub sub: u64,
    /// The event.
    pub event: Event,
}

/// A consumer on a shard's own thread.
pub trait LocalSink {
    /// Bytes handed to the consumer and not yet taken by it (for a
    /// connection: not yet written to its socket). Live events stop while
    /// this is above `outbound_queue_bytes_max` and resume, in order, once
    /// it drains.
    fn queued_bytes(&self) -> usize;
    /// Takes one event of subscription `sub`: a message, edit, delete,
    /// reaction, typing, presence or receipt event, or [`crate::EventKind::Left`] as the last
    /// event of a subscription the engine ended.
    fn deliver(&self, sub: u64, event: &Event);
    /// Every subscription of the inbox ended: the consumer stayed too slow
    /// ([`Error::SlowConsumer`]) or the shard is stopping
    /// ([`Error::ShutDown`]).
    fn closed(&self, why: Error);
}
