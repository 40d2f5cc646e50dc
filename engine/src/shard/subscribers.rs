//! The subscribers a shard hosts, whatever their room's owner: inboxes and
//! their outlets (a channel to any thread, or a consumer on this thread),
//! live delivery, catch-up pages asked of the owner, the lagging pump.
//!
//! Each subscriber's position and mode is its [`Catchup`] core; this
//! module feeds it events, pages and the time, and carries out what it
//! answers. Invariant: a consumer (inbox) holds at most
//! `outbound_queue_bytes_max` bytes through its subscriptions, and one
//! that stays over it past `stuck_timeout` is closed as slow.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::catchup::{Catchup, Offer, Paged, Pump};
use super::mesh::{PageOutcome, Peer};
use super::types::{NewSub, Ready};
use super::Shard;
use crate::consumer::LocalSink;
use crate::consumer::{closed_error, Delivery, SubShared, CLOSED_SLOW};
use crate::error::Error;
use crate::event::Event;
use crate::metrics::micros;

/// A subscriber hosted on this shard.
pub(super) struct Sub {
    pub(super) id: u64,
    pub(super) inbox: u64,
    pub(super) room: u64,
    /// Whose presence this subscription carries, if anyone's.
    pub(super) user: Option<u64>,
    /// Where its events go: the bound on queued bytes is per consumer (one
    /// connection), lagging is per subscription (per room).
    pub(super) outlet: Outlet,
    /// Its position and mode (live or catching up), free of I/O.
    pub(super) core: Catchup,
    /// The caller's `subscribe`, until the first page answers it.
    pub(super) ready: Option<Ready>,
}

/// Where an inbox's events go.
#[derive(Clone)]
pub(super) enum Outlet {
    /// A channel to a consumer on any thread. Every subscription holds a
    /// clone of the sender; with the last one gone (the inbox closed) the
    /// consumer's channel disconnects. `shared` counts the bytes sent and
    /// not yet received, and says why the inbox closed.
    Channel {
        tx: flume::Sender<Delivery>,
        shared: Arc<SubShared>,
    },
    /// A consumer on this shard's thread, called synchronously.
    Local(Rc<dyn LocalSink>),
}

impl Outlet {
    /// Bytes the consumer holds, not yet taken.
    pub(super) fn queued(&self) -> usize {
        match self {
            Outlet::Channel { shared, .. } => shared.bytes.load(Ordering::Acquire),
            Outlet::Local(sink) => sink.queued_bytes(),
        }
    }

    /// Hands the consumer one event; false when it is gone.
    pub(super) fn push(&self, sub: u64, event: &Event) -> bool {
        match self {
            Outlet::Channel { tx, shared } => {
                shared.bytes.fetch_add(event.len(), Ordering::AcqRel);
                tx.send(Delivery {
                    sub,
                    event: event.clone(),
                })
                .is_ok()
            }
            Outlet::Local(sink) => {
                sink.deliver(sub, event);
                true
            }
        }
    }

    /// Tells the consumer why its inbox ends.
    pub(super) fn closing(&self, reason: u8) {
        match self {
            Outlet::Channel { shared, .. } => shared.closed.store(reason, Ordering::Release),
            Outlet::Local(sink) => sink.closed(closed_error(reason)),
        }
    }
}

/// An open inbox: where its subscriptions deliver.
pub(super) struct InboxEntry {
    pub(super) outlet: Outlet,
    pub(super) subs: Vec<u64>,
}

impl Shard {
    /// Opens an inbox whose events go to `sink` (on this thread).
    pub(crate) fn open_local_inbox(&self, id: u64, sink: Rc<dyn LocalSink>) {
        if self.closing.get() {
            sink.closed(Error::ShutDown);
            return;
        }
        let entry = InboxEntry {
            outlet: Outlet::Local(sink),
            subs: Vec::new(),
        };
        self.inboxes.borrow_mut().insert(id, entry);
    }

    /// Subscribes into a local inbox (see [`crate::LocalInbox`]).
    pub(crate) fn subscribe_local(
        &self,
        inbox: u64,
        id: u64,
        room: u64,
        since: Option<u64>,
        user: Option<u64>,
        ready: Ready,
    ) {
        if self.closing.get() {
            return ready(Err(Error::ShutDown));
        }
        self.subscribe(NewSub {
            id,
            inbox,
            room,
            since,
            user,
            shared: None,
            ready,
        });
    }

    pub(crate) fn unsubscribe_local(&self, id: u64) {
        self.unsubscribe(id);
    }

    pub(crate) fn close_local_inbox(&self, id: u64) {
        self.close_inbox(id, None);
    }

    pub(super) fn subscribe(&self, new: NewSub) {
        let NewSub {
            id,
            inbox,
            room,
            since,
            user,
            shared,
            ready,
        } = new;
        let outlet = {
            let mut inboxes = self.inboxes.borrow_mut();
            let Some(entry) = inboxes.get_mut(&inbox) else {
                // Closed (slow consumer) or dropped before this arrived.
                let reason = shared.map_or(0, |s| s.closed.load(Ordering::Acquire));
                ready(Err(closed_error(reason)));
                return;
            };
            entry.subs.push(id);
            entry.outlet.clone()
        };
        let sub = Sub {
            id,
            inbox,
            room,
            user,
            outlet,
            core: Catchup::new(since, Instant::now()),
            ready: Some(ready),
        };
        self.subs.borrow_mut().insert(id, sub);
        let first = {
            let mut local = self.local.borrow_mut();
            let list = local.entry(room).or_default();
            list.push(id);
            list.len() == 1
        };
        let owner = self.owner(room);
        if first && owner != self.id {
            self.push_peer(
                owner,
                Peer::Interest {
                    room,
                    from: self.id,
                    on: true,
                },
            );
        }
        if let Some(user) = user {
            self.local_presence(room, user, true);
        }
        // Interest and presence reach the owner before this request, so its
        // answer (which completes the caller's `subscribe`) proves both.
        self.mark_lagging(id);
        self.request_page(id);
    }

    pub(super) fn unsubscribe(&self, id: u64) {
        let Some(sub) = self.subs.borrow_mut().remove(&id) else {
            return;
        };
        self.lagging.borrow_mut().remove(&id);
        {
            let mut inboxes = self.inboxes.borrow_mut();
            if let Some(entry) = inboxes.get_mut(&sub.inbox) {
                entry.subs.retain(|s| *s != id);
            }
        }
        if let Some(user) = sub.user {
            self.local_presence(sub.room, user, false);
        }
        let last = {
            let mut local = self.local.borrow_mut();
            let list = local.entry(sub.room).or_default();
            list.retain(|s| *s != id);
            let empty = list.is_empty();
            if empty {
                local.remove(&sub.room);
            }
            empty
        };
        let owner = self.owner(sub.room);
        if last && owner != self.id {
            self.push_peer(
                owner,
                Peer::Interest {
                    room: sub.room,
                    from: self.id,
                    on: false,
                },
            );
        }
    }

    /// Offers an event to the local subscribers of its room.
    pub(super) fn deliver_local(&self, event: &Event) {
        // The ids are copied out (an offer may unsubscribe, which changes
        // `local`) into a buffer the shard reuses: no allocation per event.
        let mut ids = self.scratch_ids.take();
        match self.local.borrow().get(&event.room()) {
            Some(list) => ids.extend_from_slice(list),
            None => return self.scratch_ids.set(ids),
        }
        let now = Instant::now();
        for &id in &ids {
            self.offer(id, event, now);
        }
        ids.clear();
        self.scratch_ids.set(ids);
    }

    /// One event for one subscriber: what its core says (deliver, skip,
    /// drop a volatile event, start lagging, or close a consumer whose held
    /// changes overflowed).
    pub(super) fn offer(&self, id: u64, event: &Event, now: Instant) {
        let mut subs = self.subs.borrow_mut();
        let Some(sub) = subs.get_mut(&id) else { return };
        let queued = sub.outlet.queued();
        match sub.core.handle_event(event, queued, now, &self.limits) {
            Offer::Deliver => self.push(sub, event),
            Offer::Skip => {}
            Offer::Dropped => self.counters.borrow_mut().volatile_dropped += 1,
            Offer::Lagged => {
                drop(subs);
                self.counters.borrow_mut().lagged += 1;
                self.mark_lagging(id);
            }
            Offer::Overflow => {
                drop(subs);
                self.close_sub(id, CLOSED_SLOW);
                self.counters.borrow_mut().slow_closed += 1;
            }
        }
    }

    pub(super) fn push(&self, sub: &Sub, event: &Event) {
        if sub.outlet.push(sub.id, event) {
            self.counters.borrow_mut().delivered += 1;
        }
    }

    /// Asks the owner for the next page of a catching-up subscriber.
    pub(super) fn request_page(&self, id: u64) {
        let (room, after, limit, user) = {
            let mut subs = self.subs.borrow_mut();
            let Some(sub) = subs.get_mut(&id) else { return };
            let (after, limit) = sub.core.ask(Instant::now(), &self.limits);
            // The first page also checks that the user may see the room.
            let user = sub.user.filter(|_| sub.ready.is_some());
            (sub.room, after, limit, user)
        };
        let owner = self.owner(room);
        if owner == self.id {
            let me = self.rc();
            glommio::spawn_local(async move {
                match me.serve_page(room, after, limit, user).await {
                    (PageOutcome::Served, events, head) => me.apply_page(id, events, head),
                    (PageOutcome::Refused, ..) => me.page_refused(id, room),
                    (outcome, ..) => me.page_failed(id, outcome),
                }
            })
            .detach();
        } else {
            self.push_peer(
                owner,
                Peer::PageRequest {
                    room,
                    after,
                    limit,
                    from: self.id,
                    sub: id,
                    user,
                },
            );
        }
    }

    /// Subscriber side: applies a page; off the lagging list once live.
    pub(super) fn apply_page(&self, id: u64, events: Vec<Event>, head: u64) {
        let mut subs = self.subs.borrow_mut();
        let Some(sub) = subs.get_mut(&id) else { return };
        if let Some(ready) = sub.ready.take() {
            ready(Ok(()));
        }
        self.latency
            .borrow_mut()
            .page_us
            .saturating_record(micros(sub.core.page_wait(Instant::now())));
        let queued = sub.outlet.queued();
        let Sub { core, outlet, .. } = sub;
        let mut delivered = 0;
        let paged = core.handle_page(events, head, queued, &self.limits, &mut |e| {
            if outlet.push(id, e) {
                delivered += 1;
            }
        });
        drop(subs);
        self.counters.borrow_mut().delivered += delivered;
        match paged {
            Paged::Live => {
                self.lagging.borrow_mut().remove(&id);
            }
            Paged::More => self.request_page(id),
            Paged::Behind => {}
        }
    }

    /// The owner refused a subscription (its user may not see the room):
    /// it ends, and the caller's `subscribe` gets `NotFound`.
    pub(super) fn page_refused(&self, id: u64, room: u64) {
        let ready = self
            .subs
            .borrow_mut()
            .get_mut(&id)
            .and_then(|sub| sub.ready.take());
        self.unsubscribe(id);
        if let Some(ready) = ready {
            ready(Err(Error::NotFound(format!("room {room}"))));
        }
    }

    pub(super) fn page_failed(&self, id: u64, outcome: PageOutcome) {
        let mut subs = self.subs.borrow_mut();
        let Some(sub) = subs.get_mut(&id) else { return };
        let now = Instant::now();
        let failures = sub.core.page_failed(now);
        if let Some(held_back) = self.page_warn.allow(now) {
            tracing::warn!(
                shard = self.id,
                sub = id,
                ?outcome,
                failures,
                held_back,
                "catch-up page failed; retrying, less often while it fails"
            );
        }
        // The owner answered, so it knows about this shard: once it could
        // check the user, the subscription is in place even though its
        // replay must retry.
        if outcome != PageOutcome::Unchecked {
            if let Some(ready) = sub.ready.take() {
                drop(subs);
                ready(Ok(()));
            }
        }
    }

    /// Puts a subscription on the lagging list (the pump looks at it from
    /// now on).
    pub(super) fn mark_lagging(&self, id: u64) {
        self.lagging.borrow_mut().insert(id);
        self.pump_bell.ring();
    }

    /// Whether any subscription lags (the pump sleeps while none does).
    pub(crate) fn any_lagging(&self) -> bool {
        !self.lagging.borrow().is_empty()
    }

    /// Periodic task body: requests pages for lagging subscribers whose
    /// queue drained below half, and closes those stuck past the timeout.
    pub(crate) fn pump_lagging(&self) {
        let ids: Vec<u64> = self.lagging.borrow().iter().copied().collect();
        let now = Instant::now();
        for id in ids {
            let pump = {
                let mut subs = self.subs.borrow_mut();
                let Some(sub) = subs.get_mut(&id) else {
                    continue;
                };
                let queued = sub.outlet.queued();
                sub.core.poll_pump(queued, now, &self.limits)
            };
            match pump {
                Pump::Stuck => {
                    self.close_sub(id, CLOSED_SLOW);
                    self.counters.borrow_mut().slow_closed += 1;
                }
                Pump::Ask => self.request_page(id),
                Pump::Wait => {}
            }
        }
    }

    /// Closes the inbox a subscription delivers into, with every other
    /// subscription of it: its consumer (one connection) is what is slow
    /// or gone.
    pub(super) fn close_sub(&self, id: u64, reason: u8) {
        let inbox = self.subs.borrow().get(&id).map(|s| s.inbox);
        if let Some(inbox) = inbox {
            self.close_inbox(inbox, Some(reason));
        }
    }

    /// Ends every subscription of `inbox` on this shard; with a `reason`,
    /// the consumer learns why (its channel disconnects once all are gone).
    pub(super) fn close_inbox(&self, inbox: u64, reason: Option<u8>) {
        let Some(entry) = self.inboxes.borrow_mut().remove(&inbox) else {
            return;
        };
        if let Some(reason) = reason {
            entry.outlet.closing(reason);
        }
        for id in entry.subs {
            // A subscribe still waiting for its first page (its access
            // check failing all along) learns why, instead of the
            // "shut down" a dropped answer reads as.
            let ready = self
                .subs
                .borrow_mut()
                .get_mut(&id)
                .and_then(|sub| sub.ready.take());
            if let (Some(ready), Some(reason)) = (ready, reason) {
                ready(Err(closed_error(reason)));
            }
            self.unsubscribe(id);
        }
    }
}
