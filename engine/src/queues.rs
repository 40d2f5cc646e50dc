//! The shards' command queues as every caller sees them: a call is one
//! [`Command`] on one shard's queue with a reply channel. The queues are
//! bounded in work (`command_queue_len_max` per shard: past it a call is
//! answered `Busy` at once and counted); releases (unsubscribe, closing an
//! inbox), stats and shutdown are always taken, since their number is
//! bounded by the subscriptions and inboxes that exist.
//!
//! Invariant: `queued[shard]` counts the work commands sent to `shard` and
//! not yet received by it (the shard's command loop takes them off).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::consumer::InboxKey;
use crate::error::Result;
use crate::reply::{Pending, Reply};
use crate::shard::{refuse_busy, Command, NewSub};

pub(crate) struct Queues {
    commands: Vec<flume::Sender<Command>>,
    /// Work commands in each shard's queue (shared with the shards).
    queued: Arc<Vec<AtomicUsize>>,
    queue_len_max: usize,
    refused: AtomicU64,
    /// Ids of inboxes and subscriptions, unique in the engine.
    next_id: AtomicU64,
}

impl Queues {
    pub fn new(
        commands: Vec<flume::Sender<Command>>,
        queued: Arc<Vec<AtomicUsize>>,
        queue_len_max: usize,
    ) -> Queues {
        Queues {
            commands,
            queued,
            queue_len_max,
            refused: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.commands.len()
    }

    /// Calls refused because a queue was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A fresh id for an inbox or a subscription.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends the command `make` builds around a reply channel; its answer.
    pub fn call<T: Send + 'static>(
        &self,
        shard: usize,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Pending<T> {
        let (reply, pending) = Pending::channel();
        self.submit(shard, make(reply));
        // Sent, answered `Busy`, or dropped with its reply sender on a
        // closed queue (then the caller sees ShutDown).
        pending
    }

    /// Sends `cmd` to `shard` unless it is work and the shard's queue
    /// holds `command_queue_len_max` work commands already (then it is
    /// answered `Busy`). A closed queue drops it; false then.
    pub fn submit(&self, shard: usize, cmd: Command) -> bool {
        let work = cmd.is_work();
        if work {
            let queued = &self.queued[shard];
            if queued.fetch_add(1, Ordering::AcqRel) >= self.queue_len_max {
                queued.fetch_sub(1, Ordering::AcqRel);
                self.refused.fetch_add(1, Ordering::Relaxed);
                refuse_busy(shard, cmd);
                return true;
            }
        }
        let sent = self.commands[shard].send(cmd).is_ok();
        if !sent && work {
            self.queued[shard].fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }

    /// Registers a subscription into an inbox; `make` turns its id into
    /// what the caller gets once the owner has answered.
    pub fn subscribe_into<T: Send + 'static>(
        &self,
        inbox: InboxKey,
        room: u64,
        since: Option<u64>,
        user: Option<u64>,
        make: impl FnOnce(u64) -> T + Send + 'static,
    ) -> Pending<T> {
        let (reply, pending) = Pending::channel();
        let id = self.next_id();
        // The shard calls this once the owner has answered; dropping it
        // unanswered (shutdown) makes `wait` see `ShutDown`.
        let ready = Box::new(move |r: Result<()>| {
            let _ = reply.send(r.map(|()| make(id)));
        });
        let cmd = Command::Subscribe(NewSub {
            id,
            inbox: inbox.id,
            room,
            since,
            user,
            shared: Some(inbox.shared),
            ready,
        });
        self.submit(inbox.shard, cmd);
        pending
    }

    pub fn unsubscribe(&self, shard: usize, id: u64) {
        self.submit(shard, Command::Unsubscribe { id });
    }

    pub fn close_inbox(&self, shard: usize, inbox: u64) {
        self.submit(shard, Command::CloseInbox { inbox });
    }
}
