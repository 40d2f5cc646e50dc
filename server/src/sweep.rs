//! A shard's clock for its WebSocket connections: one task looks at every
//! connection once per `interval` and wakes those with a deadline passed
//! (authentication, heartbeat ping, idle, write stall), whose credential
//! ended (a session logged out or expired, a JWT past its `exp`, warned
//! ahead so that the client can refresh it) or whose user has a notice
//! (an invitation).
//!
//! One timer per shard instead of one per connection: a connection's task
//! then wakes only for its socket and for what the sweep finds, and an idle
//! connection holds no timer. Deadlines are kept to the sweep's resolution
//! (at most a quarter of the shortest of them). `Sweeper::check` is the
//! decision, free of I/O and of the clock (time is passed in).

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::notices::Notices;
use crate::out::Out;
use crate::revoked::Revoked;

/// How long before a JWT's `exp` its connection is told to refresh it.
pub const REFRESH_WARN_AHEAD: Duration = Duration::from_secs(30);

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
    /// Its session was logged out (or ended by a password change): close
    /// (4001).
    Revoked,
    /// Its session or JWT ran out: close (4001).
    Expired,
    /// Its JWT runs out within `REFRESH_WARN_AHEAD`: tell the client.
    RefreshNeeded,
    /// Its user has notices it has not sent: send them.
    Notice,
}

/// What a connection's authentication rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential {
    /// When it runs out.
    pub expires: Instant,
    /// The session's token hash; `None` for a JWT.
    pub session: Option<[u8; 32]>,
    /// The user it authenticates.
    pub user: u64,
}

/// One connection's clock.
pub struct Deadlines {
    out: Rc<Out>,
    heard: Cell<Instant>,
    pinged: Cell<Instant>,
    /// While unauthenticated: when authentication must be done by.
    auth_by: Cell<Option<Instant>>,
    /// Once authenticated: what by.
    credential: Cell<Option<Credential>>,
    /// The client was told its JWT runs out.
    warned: Cell<bool>,
    /// The seq of the last notice sent (or made before it opened).
    pub notice_seen: Cell<u64>,
    due: Cell<Option<Due>>,
}

impl Deadlines {
    /// The client sent something.
    pub fn heard(&self, now: Instant) {
        self.heard.set(now);
    }

    /// The connection authenticated (or refreshed its JWT) with
    /// `credential`.
    pub fn authenticated(&self, credential: Credential) {
        self.auth_by.set(None);
        self.credential.set(Some(credential));
        self.warned.set(false);
    }

    /// A ping went out.
    pub fn pinged(&self, now: Instant) {
        self.pinged.set(now);
    }

    /// What a connection moving to another shard takes along: when it was
    /// last heard and pinged, and whether it was warned of its JWT's end.
    pub fn leaving(&self) -> (Instant, Instant, bool) {
        // A warning found due and not yet sent is sent by the new shard's
        // sweep (the other dues are found again by it).
        let unsent = self.due.take() == Some(Due::RefreshNeeded);
        (
            self.heard.get(),
            self.pinged.get(),
            self.warned.get() && !unsent,
        )
    }

    /// Takes on what a connection brought from another shard (after its
    /// credential: `authenticated` clears `warned`).
    pub fn arrived(&self, heard: Instant, pinged: Instant, warned: bool, notice_seen: u64) {
        self.heard.set(heard);
        self.pinged.set(pinged);
        self.warned.set(warned);
        self.notice_seen.set(notice_seen);
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
    /// Sessions ended by any shard.
    revoked: Arc<Revoked>,
    /// Notices for users, from any shard.
    notices: Arc<Notices>,
    /// How often the sweep runs.
    pub interval: Duration,
}

impl Sweeper {
    pub fn new(
        heartbeat: Duration,
        auth_timeout: Duration,
        write_timeout: Duration,
        revoked: Arc<Revoked>,
        notices: Arc<Notices>,
    ) -> Sweeper {
        let interval = [heartbeat, auth_timeout, write_timeout]
            .into_iter()
            .map(|d| d / 4)
            .fold(Duration::from_secs(1), Duration::min)
            .max(Duration::from_millis(10));
        Sweeper {
            conns: RefCell::new(Vec::new()),
            heartbeat,
            write_timeout,
            revoked,
            notices,
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
            credential: Cell::new(None),
            warned: Cell::new(false),
            notice_seen: Cell::new(self.notices.last_seq()),
            due: Cell::new(None),
        });
        self.conns.borrow_mut().push(Rc::downgrade(&d));
        d
    }

    /// What is due for a connection at `now`, most urgent first;
    /// `ended` tells whether a session was revoked, `noticed` whether a
    /// user has a notice after a seq.
    pub fn check(
        &self,
        d: &Deadlines,
        now: Instant,
        ended: &dyn Fn(&[u8; 32]) -> bool,
        noticed: &dyn Fn(u64, u64) -> bool,
    ) -> Option<Due> {
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
        if let Some(c) = d.credential.get() {
            if c.session.is_some_and(|h| ended(&h)) {
                return Some(Due::Revoked);
            }
            if now >= c.expires {
                return Some(Due::Expired);
            }
            if c.session.is_none() && !d.warned.get() && now + REFRESH_WARN_AHEAD >= c.expires {
                d.warned.set(true);
                return Some(Due::RefreshNeeded);
            }
        }
        if now.saturating_duration_since(d.heard.get()) > self.heartbeat * 2 {
            return Some(Due::Idle);
        }
        if now.saturating_duration_since(d.pinged.get()) >= self.heartbeat {
            return Some(Due::Ping);
        }
        match d.credential.get() {
            Some(c) if noticed(c.user, d.notice_seen.get()) => Some(Due::Notice),
            _ => None,
        }
    }

    /// One sweep: marks and wakes the connections with something due, and
    /// forgets the closed ones.
    pub fn sweep(&self, now: Instant) {
        // Every sweep within the window: a connection with another
        // deadline pending now is found at the next one.
        let recent = self.revoked.recent(now);
        let ended = |h: &[u8; 32]| recent.contains(h);
        let notes = self.notices.recent(now);
        let noticed = |user: u64, seen: u64| notes.get(&user).is_some_and(|&s| s > seen);
        self.conns.borrow_mut().retain(|w| {
            let Some(d) = w.upgrade() else {
                return false;
            };
            if d.due.get().is_none() {
                if let Some(due) = self.check(&d, now, &ended, &noticed) {
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
            Arc::default(),
            Arc::default(),
        )
    }

    const NONE_ENDED: &dyn Fn(&[u8; 32]) -> bool = &|_| false;
    const NO_NOTICE: &dyn Fn(u64, u64) -> bool = &|_, _| false;

    #[test]
    fn deadlines_come_due_in_order_of_urgency() {
        let s = sweeper();
        assert_eq!(
            s.interval,
            Duration::from_secs(1),
            "a quarter of the shortest, at most 1 s"
        );
        let t0 = Instant::now();
        let d = s.register(Out::new(-1, None), Some(t0 + Duration::from_secs(4)), t0);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(s.check(&d, at(1), NONE_ENDED, NO_NOTICE), None);
        assert_eq!(
            s.check(&d, at(4), NONE_ENDED, NO_NOTICE),
            Some(Due::AuthTimeout)
        );
        let far = Credential {
            expires: at(3600),
            session: Some([7; 32]),
            user: 1,
        };
        d.authenticated(far);
        assert_eq!(s.check(&d, at(4), NONE_ENDED, NO_NOTICE), None);
        assert_eq!(s.check(&d, at(10), NONE_ENDED, NO_NOTICE), Some(Due::Ping));
        d.pinged(at(10));
        assert_eq!(s.check(&d, at(15), NONE_ENDED, NO_NOTICE), None);
        assert_eq!(
            s.check(&d, at(21), NONE_ENDED, NO_NOTICE),
            Some(Due::Idle),
            "nothing heard for two heartbeats"
        );
        d.heard(at(20));
        assert_eq!(s.check(&d, at(21), NONE_ENDED, NO_NOTICE), Some(Due::Ping));
    }

    /// A session's connection ends when the session is revoked or runs
    /// out; a JWT's is warned once ahead of its `exp`, and a refresh moves
    /// the deadline.
    #[test]
    fn credentials_end_connections_and_jwts_are_warned_first() {
        let s = sweeper();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let session = s.register(Out::new(-1, None), None, t0);
        session.authenticated(Credential {
            expires: at(8),
            session: Some([1; 32]),
            user: 1,
        });
        let revoked: &dyn Fn(&[u8; 32]) -> bool = &|h| *h == [1; 32];
        assert_eq!(s.check(&session, at(1), NONE_ENDED, NO_NOTICE), None);
        assert_eq!(
            s.check(&session, at(1), revoked, NO_NOTICE),
            Some(Due::Revoked)
        );
        assert_eq!(
            s.check(&session, at(8), NONE_ENDED, NO_NOTICE),
            Some(Due::Expired)
        );

        let jwt = s.register(Out::new(-1, None), None, t0);
        jwt.authenticated(Credential {
            expires: at(40),
            session: None,
            user: 1,
        });
        assert_eq!(s.check(&jwt, at(5), NONE_ENDED, NO_NOTICE), None);
        assert_eq!(
            s.check(&jwt, at(10), NONE_ENDED, NO_NOTICE),
            Some(Due::RefreshNeeded)
        );
        // (Heard and pinged: the heartbeat is not what is tested here.)
        jwt.heard(at(10));
        jwt.pinged(at(10));
        assert_eq!(
            s.check(&jwt, at(11), NONE_ENDED, NO_NOTICE),
            None,
            "warned once"
        );
        assert_eq!(
            s.check(&jwt, at(40), NONE_ENDED, NO_NOTICE),
            Some(Due::Expired)
        );
        jwt.authenticated(Credential {
            expires: at(100),
            session: None,
            user: 1,
        });
        jwt.heard(at(40));
        jwt.pinged(at(40));
        assert_eq!(
            s.check(&jwt, at(40), NONE_ENDED, NO_NOTICE),
            None,
            "refreshed"
        );
        assert_eq!(
            s.check(&jwt, at(71), NONE_ENDED, NO_NOTICE),
            Some(Due::RefreshNeeded)
        );
    }

    /// A sweep finds sessions ended on any shard, also for a connection
    /// that had another deadline pending when the session ended.
    #[test]
    fn a_sweep_finds_sessions_ended_on_any_shard() {
        let revoked = Arc::new(Revoked::default());
        let s = Sweeper::new(
            Duration::from_secs(10),
            Duration::from_secs(4),
            Duration::from_secs(6),
            revoked.clone(),
            Arc::default(),
        );
        let t0 = Instant::now();
        let d = s.register(Out::new(-1, None), None, t0);
        d.authenticated(Credential {
            expires: t0 + Duration::from_secs(3600),
            session: Some([9; 32]),
            user: 1,
        });
        s.sweep(t0 + Duration::from_secs(1));
        assert_eq!(d.take_due(), None);
        revoked.end([9; 32], t0);
        s.sweep(t0 + Duration::from_secs(2));
        assert_eq!(d.take_due(), Some(Due::Revoked));
        // Busy with a ping when its session ends: revoked at the next sweep.
        let busy = s.register(Out::new(-1, None), None, t0);
        busy.authenticated(Credential {
            expires: t0 + Duration::from_secs(3600),
            session: Some([8; 32]),
            user: 1,
        });
        s.sweep(t0 + Duration::from_secs(10));
        revoked.end([8; 32], t0 + Duration::from_secs(10));
        s.sweep(t0 + Duration::from_secs(11));
        assert_eq!(busy.take_due(), Some(Due::Ping), "pending before the end");
        busy.pinged(t0 + Duration::from_secs(11));
        s.sweep(t0 + Duration::from_secs(12));
        assert_eq!(busy.take_due(), Some(Due::Revoked));
    }

    #[test]
    fn a_sweep_marks_what_is_due_once_and_forgets_closed_connections() {
        let s = sweeper();
        let t0 = Instant::now();
        let d = s.register(Out::new(-1, None), None, t0);
        let gone = s.register(Out::new(-1, None), None, t0);
        drop(gone);
        s.sweep(t0 + Duration::from_secs(10));
        assert_eq!(s.len(), 1);
        assert_eq!(d.take_due(), Some(Due::Ping));
        assert_eq!(d.take_due(), None, "taken once");
    }

    /// A notice reaches the open connections of its user only, once, and
    /// only those opened before it.
    #[test]
    fn notices_wake_their_users_connections() {
        let notices = Arc::new(Notices::default());
        let s = Sweeper::new(
            Duration::from_secs(10),
            Duration::from_secs(4),
            Duration::from_secs(6),
            Arc::default(),
            notices.clone(),
        );
        let t0 = Instant::now();
        let cred = |user| Credential {
            expires: t0 + Duration::from_secs(3600),
            session: None,
            user,
        };
        let (a, b) = (
            s.register(Out::new(-1, None), None, t0),
            s.register(Out::new(-1, None), None, t0),
        );
        a.authenticated(cred(7));
        b.authenticated(cred(8));
        notices.push(7, crate::notices::What::Frame("{}".into()), t0);
        s.sweep(t0 + Duration::from_secs(1));
        assert_eq!(a.take_due(), Some(Due::Notice));
        assert_eq!(b.take_due(), None, "another user's notice");
        a.notice_seen.set(notices.last_seq());
        s.sweep(t0 + Duration::from_secs(2));
        assert_eq!(a.take_due(), None, "sent once");
        let late = s.register(Out::new(-1, None), None, t0);
        late.authenticated(cred(7));
        s.sweep(t0 + Duration::from_secs(3));
        assert_eq!(late.take_due(), None, "made before it opened");
    }
}
