//! The two ends of a call's answer: the shard answers on a [`Reply`], the
//! caller waits on a [`Pending`], blocking (`wait`) or on any async runtime
//! (`.await`). A reply dropped unanswered (the shard stopped) reads as
//! `ShutDown`.

use std::future::{Future, IntoFuture};
use std::pin::Pin;

use crate::error::{Error, Result};

/// A reply channel for a command (works for blocking and async waiters).
pub(crate) type Reply<T> = flume::Sender<Result<T>>;

/// The answer to an engine call, still on its way. `wait()` blocks the
/// calling thread; `.await` works on any executor.
#[must_use = "a call does nothing observable until its reply is awaited"]
pub struct Pending<T>(flume::Receiver<Result<T>>);

impl<T: Send + 'static> Pending<T> {
    /// A reply that is already known.
    pub(crate) fn ready(result: Result<T>) -> Pending<T> {
        let (tx, rx) = flume::bounded(1);
        let _ = tx.send(result);
        Pending(rx)
    }

    /// Whether the reply has arrived (`wait` would not block).
    pub fn is_ready(&self) -> bool {
        !self.0.is_empty() || self.0.is_disconnected()
    }

    /// Blocks until the reply arrives.
    pub fn wait(self) -> Result<T> {
        self.0.recv().unwrap_or(Err(Error::ShutDown))
    }
}

impl<T: Send + 'static> IntoFuture for Pending<T> {
    type Output = Result<T>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.0.recv_async().await.unwrap_or(Err(Error::ShutDown)) })
    }
}

impl<T> Pending<T> {
    /// A pending answer and the reply that answers it.
    pub(crate) fn channel() -> (Reply<T>, Pending<T>) {
        let (tx, rx) = flume::bounded(1);
        (tx, Pending(rx))
    }
}
