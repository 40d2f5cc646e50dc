//! Coalesced connection writes: what a connection is owed during a reactor
//! turn goes out in one `send`.
//!
//! Anything (a reply, an event fanned out by any room) appends to the
//! connection's buffer and marks it dirty; one flusher task per executor
//! runs after the tasks already runnable and writes each dirty buffer with
//! one nonblocking `send`. Only a socket that does not take everything
//! wakes its connection task, which then waits for writability. So under
//! load a connection costs one syscall per turn, however many frames it
//! was owed: the cost per frame falls as load rises.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// A connection's outbound bytes.
pub struct Out {
    pub fd: RawFd,
    pub buf: RefCell<Vec<u8>>,
    /// In the flusher's list.
    dirty: Cell<bool>,
    /// The socket did not take everything: the connection task writes the
    /// rest when the socket is writable (the flusher leaves it alone).
    pub blocked: Cell<bool>,
    /// The socket is gone; nothing is written any more.
    pub closed: Cell<bool>,
    /// The connection task, to wake when it must write.
    pub task: RefCell<Option<Waker>>,
}

impl Out {
    pub fn new(fd: RawFd) -> Rc<Out> {
        Rc::new(Out {
            fd,
            buf: RefCell::new(Vec::new()),
            dirty: Cell::new(false),
            blocked: Cell::new(false),
            closed: Cell::new(false),
            task: RefCell::new(None),
        })
    }

    fn wake_task(&self) {
        if let Some(w) = self.task.borrow_mut().take() {
            w.wake();
        }
    }
}

/// The executor's flusher: dirty connections and the flusher task's waker.
#[derive(Default)]
pub struct Flusher {
    dirty: RefCell<Vec<Rc<Out>>>,
    waker: RefCell<Option<Waker>>,
}

impl Flusher {
    /// Appends `bytes` to `out` and makes sure it is written this turn.
    pub fn push(&self, out: &Rc<Out>, bytes: &[u8]) {
        if out.closed.get() {
            return;
        }
        out.buf.borrow_mut().extend_from_slice(bytes);
        self.mark(out);
    }

    /// Makes sure what `out` holds is written this turn.
    pub fn mark(&self, out: &Rc<Out>) {
        if out.dirty.get() || out.blocked.get() {
            return;
        }
        out.dirty.set(true);
        self.dirty.borrow_mut().push(out.clone());
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// The flusher task: forever, once per turn with dirty connections.
    pub async fn run(self: Rc<Self>) {
        let mut batch = Vec::new();
        loop {
            futures_lite::future::poll_fn(|cx| {
                if self.dirty.borrow().is_empty() {
                    *self.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            // Let every task already runnable add to the buffers first.
            futures_lite::future::yield_now().await;
            std::mem::swap(&mut batch, &mut *self.dirty.borrow_mut());
            for out in batch.drain(..) {
                out.dirty.set(false);
                if out.closed.get() || out.blocked.get() {
                    continue;
                }
                write_some(&out);
            }
        }
    }
}

/// One nonblocking send of what `out` holds; hands the rest to the
/// connection task.
fn write_some(out: &Out) {
    let mut buf = out.buf.borrow_mut();
    match send(out.fd, &buf) {
        Ok(n) if n == buf.len() => buf.clear(),
        Ok(n) => {
            buf.drain(..n);
            out.blocked.set(true);
            drop(buf);
            out.wake_task();
        }
        Err(_) => {
            out.closed.set(true);
            buf.clear();
            drop(buf);
            out.wake_task();
        }
    }
}

/// `send(2)` without blocking and without SIGPIPE: bytes taken (0 when the
/// socket is full).
pub fn send(fd: RawFd, bytes: &[u8]) -> std::io::Result<usize> {
    loop {
        // SAFETY: `bytes` is valid for its length; `fd` is open while its
        // connection task holds the socket (closed connections are skipped).
        let n = unsafe {
            libc::send(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock => return Ok(0),
            std::io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}
