//! What a WebSocket connection owes its client, and the one write a
//! reactor turn makes of it.
//!
//! Everything a connection sends (replies, acks, events fanned out by any
//! room, pings, the close frame) is appended to its [`Out`]; a connection
//! with something to send is put on its shard's [`Flusher`] list. The
//! flusher is one task per shard that runs after the tasks already
//! runnable, so that whatever a turn produced for a connection (the acks
//! of its sends, the events of every room it follows) leaves in one
//! nonblocking `send`: under load the syscalls per event fall as the load
//! rises, and no connection task is woken per event. Only a socket that
//! does not take everything wakes its connection task, which then waits
//! for writability, under the write deadline.
//!
//! On a TLS connection the bytes are sealed into records by its session
//! (`tls.rs`) as they leave this buffer, and the records go out in the
//! same one `send`; the session holds at most `tls::SEALED_BYTES_MAX`.
//!
//! Invariants: bytes leave in the order they were appended; one writer at
//! a time (the flusher while the connection is not `blocked`, the
//! connection task while it is); nothing is written after `closed` is set,
//! which the connection sets before its socket is closed (so a reused
//! descriptor is never written to); an idle connection holds no buffer
//! here (drained buffers go back to the shard's pool; a TLS session keeps
//! its own, bounded, `tls.rs`).

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use crate::net::{send, FdWriter};
use crate::tls::{self, Session};

/// Drained buffers kept per shard for reuse, at most.
const POOL_LEN_MAX: usize = 256;
/// Buffers larger than this are freed when drained, not pooled.
const POOL_BUF_BYTES_MAX: usize = 64 << 10;
/// A buffer taken for a connection starts with room for this much.
const BUF_BYTES_MIN: usize = 4 << 10;

/// One connection's unsent bytes.
pub struct Out {
    fd: RawFd,
    /// The connection's TLS session, which seals what leaves.
    tls: Option<Session>,
    buf: RefCell<Vec<u8>>,
    /// On the flusher's list.
    dirty: Cell<bool>,
    /// The socket did not take everything: the connection task writes the
    /// rest once it is writable (the flusher leaves it alone).
    blocked: Cell<bool>,
    /// Since when the socket has taken nothing of what waits (the write
    /// deadline runs from here).
    stalled_since: Cell<Option<Instant>>,
    /// The socket is gone or the connection is closing: nothing more is
    /// written by the flusher, nothing more is appended.
    closed: Cell<bool>,
    /// The connection task, woken when it has to write or may read again.
    task: RefCell<Option<Waker>>,
    /// The connection stopped reading because this held too much; the
    /// flusher wakes it when it drains.
    throttled: Cell<bool>,
}

impl Out {
    pub fn new(fd: RawFd, tls: Option<Session>) -> Rc<Out> {
        Rc::new(Out {
            fd,
            tls,
            buf: RefCell::new(Vec::new()),
            dirty: Cell::new(false),
            blocked: Cell::new(false),
            stalled_since: Cell::new(None),
            closed: Cell::new(false),
            task: RefCell::new(None),
            throttled: Cell::new(false),
        })
    }

    /// The connection's socket.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Whether the connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.buf.borrow().len()
    }

    /// Stops all writing by the flusher (the connection is closing or its
    /// socket is gone); what waits can still be taken with [`Out::take`].
    pub fn close(&self) {
        self.closed.set(true);
    }

    /// Whether the socket is full and the connection task must write.
    pub fn is_blocked(&self) -> bool {
        self.blocked.get()
    }

    /// Since when the socket has taken nothing (while bytes wait).
    pub fn stalled_since(&self) -> Option<Instant> {
        self.stalled_since.get()
    }

    /// Registers the connection task's waker.
    pub fn park(&self, waker: &Waker) {
        let mut t = self.task.borrow_mut();
        match &*t {
            Some(w) if w.will_wake(waker) => {}
            _ => *t = Some(waker.clone()),
        }
    }

    /// Marks the connection as not reading until this drains.
    pub fn set_throttled(&self, on: bool) {
        self.throttled.set(on);
    }

    /// Wakes the connection task (it has something to do).
    pub fn wake(&self) {
        self.wake_task();
    }

    fn wake_task(&self) {
        if let Some(w) = self.task.borrow().as_ref() {
            w.wake_by_ref();
        }
    }
}

/// A shard's output figures, read by `/metrics` from any thread.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// `send`s the flusher made.
    pub writes: AtomicU64,
    /// Bytes written (by the flusher and by blocked connections).
    pub bytes: AtomicU64,
    /// Bytes appended to connections and not yet written.
    pub waiting: AtomicI64,
    /// Bytes held by the pool of drained buffers.
    pub pooled: AtomicU64,
    /// Bytes of TLS records sent (their plaintext counts in `bytes`).
    pub bytes_sealed: AtomicU64,
}

impl FlushStats {
    fn add_waiting(&self, delta: i64) {
        self.waiting.fetch_add(delta, Ordering::Relaxed);
    }
}

/// A shard's flusher: the connections with bytes to write this turn, and
/// the pool of drained buffers.
pub struct Flusher {
    dirty: RefCell<Vec<Rc<Out>>>,
    waker: RefCell<Option<Waker>>,
    pool: RefCell<Vec<Vec<u8>>>,
    stats: Arc<FlushStats>,
    /// Called once per flushing turn (the engine counts it as work).
    on_flush: Box<dyn Fn()>,
    /// The wall clock (ms) read when this turn's first connection got
    /// something to write (see `turn_ms`).
    turn_ms: Cell<u64>,
}

impl Flusher {
    pub fn new(stats: Arc<FlushStats>, on_flush: Box<dyn Fn()>) -> Flusher {
        Flusher {
            dirty: RefCell::default(),
            waker: RefCell::default(),
            pool: RefCell::default(),
            stats,
            on_flush,
            turn_ms: Cell::new(0),
        }
    }

    /// The wall clock in ms, read once per turn: when no connection is
    /// waiting for this turn's flush yet (one clock read per turn, not per
    /// event, for the delivery-latency metric, which has ms resolution).
    pub fn turn_ms(&self) -> u64 {
        if self.dirty.borrow().is_empty() || self.turn_ms.get() == 0 {
            self.turn_ms.set(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            );
        }
        self.turn_ms.get()
    }

    /// Appends to `out` (through `fill`, given its buffer) and makes sure it
    /// is written this turn. Nothing is appended to a closed connection.
    pub fn append(&self, out: &Rc<Out>, fill: impl FnOnce(&mut Vec<u8>)) {
        if out.closed.get() {
            return;
        }
        {
            let mut buf = out.buf.borrow_mut();
            if buf.capacity() == 0 {
                *buf = match self.pool.borrow_mut().pop() {
                    Some(v) => {
                        self.stats
                            .pooled
                            .fetch_sub(v.capacity() as u64, Ordering::Relaxed);
                        v
                    }
                    None => Vec::with_capacity(BUF_BYTES_MIN),
                };
            }
            let before = buf.len();
            fill(&mut buf);
            self.stats.add_waiting((buf.len() - before) as i64);
        }
        self.mark(out);
    }

    /// Appends `bytes` to `out`.
    pub fn push(&self, out: &Rc<Out>, bytes: &[u8]) {
        self.append(out, |b| b.extend_from_slice(bytes));
    }

    fn mark(&self, out: &Rc<Out>) {
        if out.dirty.get() || out.blocked.get() || out.buf.borrow().is_empty() {
            return;
        }
        out.dirty.set(true);
        self.dirty.borrow_mut().push(out.clone());
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// A drained buffer back to the pool (or freed).
    fn recycle(&self, buf: &RefCell<Vec<u8>>) {
        let mut b = buf.borrow_mut();
        if !b.is_empty() {
            return;
        }
        let v = std::mem::take(&mut *b);
        let mut pool = self.pool.borrow_mut();
        if v.capacity() <= POOL_BUF_BYTES_MAX && pool.len() < POOL_LEN_MAX {
            self.stats
                .pooled
                .fetch_add(v.capacity() as u64, Ordering::Relaxed);
            pool.push(v);
        }
    }

    /// Everything `out` holds, taken out (for the last write before a
    /// close).
    pub fn take(&self, out: &Out) -> Vec<u8> {
        let v = std::mem::take(&mut *out.buf.borrow_mut());
        self.stats.add_waiting(-(v.len() as i64));
        v
    }

    /// Drops `n` written bytes from the front of `buf`.
    fn written(&self, buf: &mut Vec<u8>, n: usize) {
        buf.drain(..n);
        self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.stats.add_waiting(-(n as i64));
    }

    /// The connection task's write while `out` is blocked: polls the
    /// socket's writability through `write` (given the waiting bytes) and
    /// drops what it took. Ready(true) once everything is written,
    /// Ready(false) when the socket failed.
    pub fn poll_write_blocked(
        &self,
        out: &Out,
        mut write: impl FnMut(&[u8]) -> Poll<std::io::Result<usize>>,
    ) -> Poll<bool> {
        if let Some(session) = &out.tls {
            let mut socket = PollWriter {
                write: &mut write,
                pending: false,
            };
            return match self.seal_and_send(out, session, &mut socket) {
                Ok(true) => {
                    out.blocked.set(false);
                    out.stalled_since.set(None);
                    self.recycle(&out.buf);
                    Poll::Ready(true)
                }
                Ok(false) if socket.pending => Poll::Pending,
                Ok(false) | Err(_) => Poll::Ready(false),
            };
        }
        loop {
            let mut buf = out.buf.borrow_mut();
            if buf.is_empty() {
                drop(buf);
                out.blocked.set(false);
                out.stalled_since.set(None);
                self.recycle(&out.buf);
                return Poll::Ready(true);
            }
            match write(&buf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Ready(Ok(n)) => {
                    self.written(&mut buf, n);
                    out.stalled_since.set(Some(Instant::now()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The flusher task: forever, once per turn in which connections got
    /// something to write.
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
            (self.on_flush)();
            std::mem::swap(&mut batch, &mut *self.dirty.borrow_mut());
            for out in batch.drain(..) {
                out.dirty.set(false);
                if !out.closed.get() && !out.blocked.get() {
                    self.write(&out);
                }
            }
        }
    }

    /// Seals what `out` holds into its session and sends the session's
    /// records to `socket`, until everything left (Ok(true)) or the socket
    /// takes no more (Ok(false)).
    fn seal_and_send(
        &self,
        out: &Out,
        session: &Session,
        socket: &mut dyn std::io::Write,
    ) -> std::io::Result<bool> {
        let mut s = session.borrow_mut();
        let mut buf = out.buf.borrow_mut();
        loop {
            while s.wants_write() {
                match s.write_tls(socket) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        if out.blocked.get() {
                            // Progress: the write deadline starts again.
                            out.stalled_since.set(Some(Instant::now()));
                        }
                        self.stats
                            .bytes_sealed
                            .fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            if buf.is_empty() {
                return Ok(true);
            }
            let n = tls::seal(&mut s, &buf)?;
            if n == 0 && !s.wants_write() {
                // Nothing taken and nothing to send: a pass would not move.
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.written(&mut buf, n);
        }
    }

    /// A TLS connection's turn: its bytes sealed and sent without
    /// blocking; the rest is the connection task's to write.
    fn write_tls(&self, out: &Out, session: &Session) {
        if out.buf.borrow().is_empty() && !session.borrow().wants_write() {
            return;
        }
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        match self.seal_and_send(out, session, &mut FdWriter(out.fd)) {
            Ok(true) => {
                self.recycle(&out.buf);
                if out.throttled.get() {
                    out.wake_task();
                }
            }
            // Full, or failed: the connection task writes the rest (or
            // sees the failure on its socket).
            Ok(false) | Err(_) => {
                out.blocked.set(true);
                out.stalled_since.set(Some(Instant::now()));
                out.wake_task();
            }
        }
    }

    /// One nonblocking send of what `out` holds; the rest is the
    /// connection task's to write.
    fn write(&self, out: &Out) {
        if let Some(session) = &out.tls {
            return self.write_tls(out, session);
        }
        let mut buf = out.buf.borrow_mut();
        if buf.is_empty() {
            return;
        }
        let sent = send(out.fd, &buf);
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        match sent {
            Ok(n) if n == buf.len() => {
                self.written(&mut buf, n);
                drop(buf);
                self.recycle(&out.buf);
                if out.throttled.get() {
                    out.wake_task();
                }
            }
            Ok(n) => {
                self.written(&mut buf, n);
                drop(buf);
                out.blocked.set(true);
                out.stalled_since.set(Some(Instant::now()));
                out.wake_task();
            }
            Err(_) => {
                // The connection task sees the failure on its socket.
                drop(buf);
                out.blocked.set(true);
                out.stalled_since.set(Some(Instant::now()));
                out.wake_task();
            }
        }
    }
}

/// An `io::Write` over the connection task's poll of its socket: a poll
/// that is not ready is `WouldBlock` (and remembered).
struct PollWriter<'a, F> {
    write: &'a mut F,
    pending: bool,
}

impl<F: FnMut(&[u8]) -> Poll<std::io::Result<usize>>> std::io::Write for PollWriter<'_, F> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match (self.write)(bytes) {
            Poll::Ready(r) => r,
            Poll::Pending => {
                self.pending = true;
                Err(std::io::ErrorKind::WouldBlock.into())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
