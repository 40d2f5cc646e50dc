//! Tiny single-thread synchronisation primitives for a shard's tasks.
//!
//! glommio runs every task of a shard on one thread, so these use `Cell` and
//! `RefCell`, never atomics or locks. [`BatchSignal`] is how one commit batch
//! tells all of its appenders the outcome at once (one `Rc` clone per append
//! instead of one channel per append). [`Notify`] wakes every task waiting
//! for a state change (index caught up, queue non-empty).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// What a batch resolves with: `Err` carries the failure's message.
type Outcome = Result<(), String>;

/// The outcome of one commit batch, shared by every append in it.
#[derive(Default)]
pub(crate) struct BatchSignal {
    state: RefCell<(Option<Outcome>, Vec<Waker>)>,
}

impl BatchSignal {
    /// Publishes the outcome and wakes every waiter. Called exactly once.
    pub(crate) fn complete(&self, outcome: Result<(), String>) {
        let wakers = {
            let mut st = self.state.borrow_mut();
            assert!(st.0.is_none(), "a batch completes once");
            st.0 = Some(outcome);
            std::mem::take(&mut st.1)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Waits for the outcome.
    pub(crate) fn wait(self: &Rc<Self>) -> impl Future<Output = Result<(), String>> {
        WaitBatch(self.clone())
    }
}

struct WaitBatch(Rc<BatchSignal>);

impl Future for WaitBatch {
    type Output = Result<(), String>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.0.state.borrow_mut();
        match &st.0 {
            Some(outcome) => Poll::Ready(outcome.clone()),
            None => {
                if !st.1.iter().any(|w| w.will_wake(cx.waker())) {
                    st.1.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// Wakes all current waiters on [`Notify::notify`]. Waiters re-check their
/// condition in a loop, so spurious wake-ups are harmless.
#[derive(Default)]
pub(crate) struct Notify {
    generation: std::cell::Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    /// Wakes every task currently waiting.
    pub(crate) fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Completes after the next [`Notify::notify`].
    pub(crate) fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            generation: self.generation.get(),
        }
    }
}

pub(crate) struct Notified<'a> {
    notify: &'a Notify,
    generation: u64,
}

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.generation {
            return Poll::Ready(());
        }
        let mut wakers = self.notify.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
