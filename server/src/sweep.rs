//! A shard's clock for its WebSocket connections: one task looks at every
//! connection once per `interval` and wakes those with a deadline passed
//! (authentication, heartbeat ping, idle, write stall).
//!
//! One timer per shard instead of one per connection: a connection's task
//! then wakes only for its socket and for what the sweep finds, and an idle
//! connection holds no timer. Deadlines are kept to the sweep's resolution
//! (at most a quarter of the shortest of them). `Sweeper::check` is the
//! decision, free of I/O and of the clock (time is passed in).

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use crate::out::Out;

/// What a connection must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The socket took nothing for the write timeout: close.
    WriteTimeout,
    /// Not authenticated in time: close (1008).
    AuthTimeout,
    /// Nothing heard for two heartbeats: close (1001).
    Idle,
    /// A heartbeat since the last ping: ping.
    Ping,
}

/// One connection's clock.
pub struct Deadlines {
    out: Rc<Out>,
    heard: Cell<Instant>,
    pinged: Cell<Instant>,
    /// While unauthenticated: when authentication must be done by.
    auth_by: Cell<Option<Instant>>,
    due: Cell<Option<Due>>,
}

impl Deadlines {
    /// The client sent something.
    pub fn heard(&self, now: Instant) {
        self.heard.set(now);
    }

    /// The connection authenticated.
    pub fn authenticated(&self) {
        self.auth_by.set(None);
    }

    /// A ping went out.
    pub fn pinged(&self, now: Instant) {
        self.pinged.set(now);
    }

    /// What the sweep found due, once.
    pub fn take_due(&self) -> Option<Due> {
        self.due.take()
    }
}

/// The shard's connections and their limits.
pub struct Sweeper {
    conns: RefCell<Vec<Weak<Deadlines>>>,
    heartbeat: Duration,
    write_timeout: Duration,
    /// How often the sweep runs.
    pub interval: Duration,
}

impl Sweeper {
    pub fn new(heartbeat: Duration, auth_timeout: Duration, write_timeout: Duration) -> Sweeper {
        let interval = [heartbeat, auth_timeout, write_timeout]
            .into_iter()
            .map(|d| d / 4)
            .fold(Duration::from_secs(1), Duration::min)
            .max(Duration::from_millis(10));
        Sweeper {
            conns: RefCell::new(Vec::new()),
            heartbeat,
            write_timeout,
            interval,
        }
    }

    /// Starts the clock of a connection (which must authenticate by
    /// `auth_by`, if given).
    pub fn register(&self, out: Rc<Out>, auth_by: Option<Instant>, now: Instant) -> Rc<Deadlines> {
        let d = Rc::new(Deadlines {
            out,
            heard: Cell::new(now),
            pinged: Cell::new(now),
            auth_by: Cell::new(auth_by),
            due: Cell::new(None),
        });
        self.conns.borrow_mut().push(Rc::downgrade(&d));
        d
    }

    /// What is due for a connection at `now`, most urgent first.
    pub fn check(&self, d: &Deadlines, now: Instant) -> Option<Due> {
        let stalled = d
            .out
            .stalled_since()
            .is_some_and(|since| now.saturating_duration_since(since) >= self.write_timeout);
        if stalled {
            return Some(Due::WriteTimeout);
        }
        if d.auth_by.get().is_some_and(|by| now >= by) {
            return Some(Due::AuthTimeout);
        }
        if now.saturating_duration_since(d.heard.get()) > self.heartbeat * 2 {
            return Some(Due::Idle);
        }
        if now.saturating_duration_since(d.pinged.get()) >= self.heartbeat {
            return Some(Due::Ping);
        }
        None
    }

    /// One sweep: marks and wakes the connections with something due, and
    /// forgets the closed ones.
    pub fn sweep(&self, now: Instant) {
        self.conns.borrow_mut().retain(|w| {
            let Some(d) = w.upgrade() else {
                return false;
            };
            if d.due.get().is_none() {
                if let Some(due) = self.check(&d, now) {
                    d.due.set(Some(due));
                    d.out.wake();
                }
            }
            true
        });
    }

    /// The shard's sweep task, until the shard stops.
    pub async fn run(self: Rc<Self>, stopped: impl std::future::Future<Output = ()>) {
        let tick = async {
            loop {
                glommio::timer::sleep(self.interval).await;
                self.sweep(Instant::now());
            }
        };
        futures_lite::future::or(tick, stopped).await;
    }

    /// Connections on the clock (open ones, and closed ones not yet swept).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.conns.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweeper() -> Sweeper {
        Sweeper::new(
            Duration::from_secs(10),
            Duration::from_secs(4),
            Duration::from_secs(6),
        )
    }

    #[test]
    fn deadlines_come_due_in_order_of_urgency() {
        let s = sweeper();
        assert_eq!(
            s.interval,
            Duration::from_secs(1),
            "a quarter of the shortest, at most 1 s"
        );
        let t0 = Instant::now();
        let d = s.register(Out::new(-1), Some(t0 + Duration::from_secs(4)), t0);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(s.check(&d, at(1)), None);
        assert_eq!(s.check(&d, at(4)), Some(Due::AuthTimeout));
        d.authenticated();
        assert_eq!(s.check(&d, at(4)), None);
        assert_eq!(s.check(&d, at(10)), Some(Due::Ping));
        d.pinged(at(10));
        assert_eq!(s.check(&d, at(15)), None);
        assert_eq!(
            s.check(&d, at(21)),
            Some(Due::Idle),
            "nothing heard for two heartbeats"
        );
        d.heard(at(20));
        assert_eq!(s.check(&d, at(21)), Some(Due::Ping));
    }

    #[test]
    fn a_sweep_marks_what_is_due_once_and_forgets_closed_connections() {
        let s = sweeper();
        let t0 = Instant::now();
        let d = s.register(Out::new(-1), None, t0);
        let gone = s.register(Out::new(-1), None, t0);
        drop(gone);
        s.sweep(t0 + Duration::from_secs(10));
        assert_eq!(s.len(), 1);
        assert_eq!(d.take_due(), Some(Due::Ping));
        assert_eq!(d.take_due(), None, "taken once");
    }
}
