//! The engine as seen from one of its own shard threads (in a
//! [`crate::ShardTask`], where the server runs its connections): calls whose
//! target is this shard run directly, and consumers take their events
//! synchronously, with no channel and no wake-up in between.
//!
//! A [`LocalSink`] is such a consumer (a connection's output buffer, say):
//! the shard hands it each event as it fans the event out, and asks it how
//! many bytes it holds unwritten, which is the byte bound of lossless
//! backpressure (lagging and catch-up work as for any inbox). Invariant: a
//! sink never calls back into the engine from `deliver` or `closed` (they
//! run inside the shard's own bookkeeping).

use std::future::Future;
use std::rc::Rc;

use crate::consumer::LocalSink;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::shard::{self, PostAck, Shard};

/// The engine on one of its shard threads (see [`Engine::local`]).
#[derive(Clone)]
pub struct Local {
    engine: Engine,
    shard: Rc<Shard>,
}

impl Engine {
    /// The engine as seen from the calling thread, when it is one of the
    /// engine's shards (inside a [`crate::ShardTask`]); `None` elsewhere.
    pub fn local(&self) -> Option<Local> {
        shard::current().map(|shard| Local {
            engine: self.clone(),
            shard,
        })
    }
}

impl Local {
    /// This shard's id.
    pub fn shard(&self) -> usize {
        self.shard.id
    }

    /// Tells the engine that this shard is doing work (for the kick that
    /// bounds glommio 0.9.0's stalls, see `EngineConfig::kick_interval`):
    /// for work on the shard that does not go through the engine.
    pub fn note_work(&self) {
        self.shard.busy();
    }

    /// The engine (for calls to any shard).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Posts a message (see [`Engine::post`]): run here when this shard owns
    /// the room, else sent to its owner over the shards' mesh (with the
    /// turn's other traffic to it) and answered the same way.
    pub async fn post(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        body: &str,
    ) -> Result<PostAck> {
        self.shard
            .post_from_here(room, sender, client_id, body, None, Vec::new())
            .await
    }

    /// Posts a message carrying uploads (see [`Engine::post_with`]),
    /// routed as [`Local::post`] is.
    pub async fn post_with(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        body: &str,
        to: Option<u64>,
        files: Vec<u128>,
    ) -> Result<PostAck> {
        self.shard
            .post_from_here(room, sender, client_id, body, to, files)
            .await
    }

    /// Posts a reply to message `to` (see [`Engine::reply`]), routed as
    /// [`Local::post`] is.
    pub async fn reply(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        body: &str,
        to: u64,
    ) -> Result<PostAck> {
        self.shard
            .post_from_here(room, sender, client_id, body, Some(to), Vec::new())
            .await
    }

    /// An inbox on this shard whose events go to `sink` as they are fanned
    /// out. Dropping it ends its subscriptions.
    pub fn inbox(&self, sink: Rc<dyn LocalSink>) -> LocalInbox {
        let id = self.engine.next_id();
        self.shard.open_local_inbox(id, sink);
        LocalInbox {
            id,
            engine: self.engine.clone(),
            shard: self.shard.clone(),
        }
    }
}

/// Subscriptions whose events go to one [`LocalSink`] (see [`Local::inbox`]).
pub struct LocalInbox {
    id: u64,
    engine: Engine,
    shard: Rc<Shard>,
}

impl LocalInbox {
    /// Subscribes to `room` as `user` (see [`crate::Inbox::subscribe_as`]).
    /// `registered` is called with the subscription's id before anything
    /// else happens: events of the subscription may reach the sink at once
    /// (glommio runs a spawned task right away, so a replay from the tail
    /// cache can arrive before this returns), and always before the future
    /// resolves.
    pub fn subscribe_as(
        &self,
        room: u64,
        since: Option<u64>,
        user: Option<u64>,
        registered: impl FnOnce(u64),
    ) -> impl Future<Output = Result<u64>> {
        let id = self.engine.next_id();
        registered(id);
        let (tx, rx) = flume::bounded(1);
        let ready = Box::new(move |r: Result<()>| {
            let _ = tx.send(r);
        });
        self.shard
            .subscribe_local(self.id, id, room, since, user, ready);
        async move {
            rx.recv_async()
                .await
                .unwrap_or(Err(Error::ShutDown))
                .map(|()| id)
        }
    }

    /// Ends one subscription (events of it already delivered stay so).
    pub fn unsubscribe(&self, sub: u64) {
        self.shard.unsubscribe_local(sub);
    }
}

impl Drop for LocalInbox {
    fn drop(&mut self) {
        self.shard.close_local_inbox(self.id);
    }
}

impl std::fmt::Debug for LocalInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalInbox")
            .field("id", &self.id)
            .field("shard", &self.shard.id)
            .finish()
    }
}
