//! One generator thread: an epoll loop over the connections of the virtual
//! users (VUs) it owns, and a timer heap for their schedules.
//!
//! No async runtime and no task per user: a VU is a small state machine
//! (connect → upgrade → (Socket.IO namespace) → join → send on schedule →
//! drain → close), advanced by readiness reports and timers. What a read
//! brings is parsed in place from one receive buffer per thread, so a
//! delivered message costs a scan of its header and a few fields, a
//! histogram record and an accounting step; one `recv` takes every frame
//! the server coalesced into its writes. This is what keeps the generator
//! cheap enough not to be the limit (its CPU per delivery is in the
//! report).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use super::account::{Arrival, Receiver};
use super::client::{Client, Got};
use super::poll::{self, Interest, Poller};
use super::run::{thread_cpu, Shared, Tally};
use super::stages;
use super::wire::{self, Incoming, Wire};
use crate::http_client::jwt;

/// How long a connection attempt (upgrade and join) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leaving user waits for what is still due to it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a draining user looks whether it has everything.
const DRAIN_CHECK: Duration = Duration::from_millis(50);
/// Resolution of the users' active windows.
const WINDOW_STEP: Duration = Duration::from_millis(10);
/// Bytes one `recv` may take.
const RECV_BYTES: usize = 256 << 10;
/// The longest one wait for readiness lasts.
const WAIT_MAX: Duration = Duration::from_millis(100);
/// Readiness reports taken per wait.
const EVENTS_PER_WAIT: usize = 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request written; waiting for the 101.
    Upgrading,
    /// Socket.IO: waiting for the Engine.IO open packet.
    SioOpen,
    /// Socket.IO: namespace connect sent.
    SioConnect,
    /// Join sent.
    Joining,
    /// Joined: sending on schedule, receiving.
    Running,
    /// Window over: waiting for what is still due.
    Draining,
}

/// One open connection and its session state.
struct Conn {
    client: Client,
    phase: Phase,
    /// Loss, duplicate and reorder accounting (from the join on).
    rx: Receiver,
    /// Next send's number (from 1; Socket.IO ack ids, 0 being the join).
    k: u64,
    acked: u64,
    /// When send 1 is due; send k is due `(k - 1) * interval` later.
    base: Instant,
    started: Instant,
    stop_at: Instant,
    drain_until: Instant,
    watching_write: bool,
    /// A join or namespace connect to write after the read in progress.
    owe: Option<Phase>,
    /// The join's answer came in the read in progress.
    just_joined: bool,
    failed: Option<String>,
}

/// A virtual user this thread owns.
struct Vu {
    /// The user's number across all threads (`load-N`).
    i: u32,
    room: usize,
    windows: Vec<(Duration, Duration)>,
    window: usize,
    conn: Option<Conn>,
    /// Bumped when a connection ends: its timers are then stale.
    gen: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// The user's window opens: take a connect slot.
    Start,
    /// Open the connection.
    Connect,
    /// Sends are due.
    Send,
    /// The window closes.
    Stop,
    /// Connect timeout, drain check.
    Check,
}

/// (when, VU, kind, generation).
type Timer = Reverse<(Instant, u32, Kind, u32)>;

/// Counts published to the shared progress counters once per loop turn.
#[derive(Default)]
struct Counts {
    attempted: u64,
    connected: u64,
    failed: u64,
    dropped: u64,
    sent: u64,
    acked: u64,
    delivered: u64,
    errors: u64,
    open: i64,
}

pub(super) struct Driver<'a> {
    shared: &'a Shared,
    poller: Poller,
    vus: Vec<Vu>,
    timers: BinaryHeap<Timer>,
    tally: Tally,
    counts: Counts,
    recv: Vec<u8>,
    text: Vec<u8>,
    frame: Vec<u8>,
    next_connect: Instant,
    pace: Duration,
    interval: Option<Duration>,
    done: usize,
}

impl<'a> Driver<'a> {
    /// The driver of generator thread `w`: every `threads`-th user.
    pub(super) fn new(shared: &'a Shared, w: usize) -> Result<Driver<'a>> {
        let plan = &shared.plan;
        let users = stages::peak(&plan.stages);
        let mut vus = Vec::new();
        let mut timers = BinaryHeap::new();
        for i in (w as u32..users).step_by(plan.threads) {
            let windows = stages::windows(&plan.stages, i, WINDOW_STEP);
            let idx = vus.len() as u32;
            if let Some(&(start, _)) = windows.first() {
                timers.push(Reverse((shared.epoch + start, idx, Kind::Start, 0)));
            }
            vus.push(Vu {
                i,
                room: i as usize % shared.room_ids.len(),
                windows,
                window: 0,
                conn: None,
                gen: 0,
            });
        }
        let done = vus.iter().filter(|v| v.windows.is_empty()).count();
        Ok(Driver {
            shared,
            poller: Poller::new(EVENTS_PER_WAIT)?,
            vus,
            timers,
            tally: Tally::new(),
            counts: Counts::default(),
            recv: vec![0; RECV_BYTES],
            text: Vec::with_capacity(512),
            frame: Vec::with_capacity(512),
            next_connect: Instant::now(),
            pace: Duration::from_secs_f64(plan.threads as f64 / plan.connect_rate),
            interval: (plan.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.rate)),
            done,
        })
    }

    /// Runs every user's windows to the end; the thread's tally.
    pub(super) fn run(mut self) -> Result<Tally> {
        let started = (Instant::now(), thread_cpu());
        while self.done < self.vus.len() {
            let now = Instant::now();
            self.fire_timers(now);
            if self.done == self.vus.len() {
                break;
            }
            // Every user has a timer or a socket to wait for; the cap only
            // guards against waiting forever should one have neither.
            let wait = self
                .timers
                .peek()
                .map_or(WAIT_MAX, |Reverse((t, ..))| {
                    t.saturating_duration_since(Instant::now())
                })
                .min(WAIT_MAX);
            let ready: Vec<poll::Ready> = {
                let events = self.poller.wait(Some(wait))?;
                events.iter().map(poll::ready).collect()
            };
            for r in ready {
                self.on_ready(r);
            }
            self.publish();
        }
        self.publish();
        self.tally.cpu = thread_cpu().saturating_sub(started.1);
        self.tally.wall = started.0.elapsed();
        Ok(self.tally)
    }

    fn publish(&mut self) {
        let l = &self.shared.live;
        let c = std::mem::take(&mut self.counts);
        for (a, n) in [
            (&l.attempted, c.attempted),
            (&l.connected, c.connected),
            (&l.failed, c.failed),
            (&l.dropped, c.dropped),
            (&l.sent, c.sent),
            (&l.acked, c.acked),
            (&l.delivered, c.delivered),
            (&l.errors, c.errors),
        ] {
            if n > 0 {
                a.fetch_add(n, Ordering::Relaxed);
            }
        }
        if c.open > 0 {
            l.open.fetch_add(c.open as u64, Ordering::Relaxed);
        } else if c.open < 0 {
            l.open.fetch_sub((-c.open) as u64, Ordering::Relaxed);
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((t, idx, kind, gen))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if self.vus[idx as usize].gen != gen {
                continue;
            }
            match kind {
                Kind::Start => {
                    let slot = self.next_connect.max(now);
                    self.next_connect = slot + self.pace;
                    self.timers.push(Reverse((slot, idx, Kind::Connect, gen)));
                }
                Kind::Connect => self.connect(idx, now),
                Kind::Send => self.send_due(idx, now),
                Kind::Stop => self.stop(idx, now),
                Kind::Check => self.check(idx, now),
            }
        }
    }

    fn at(&mut self, t: Instant, idx: u32, kind: Kind) {
        let gen = self.vus[idx as usize].gen;
        self.timers.push(Reverse((t, idx, kind, gen)));
    }

    fn fail(&self, why: String) {
        if let Ok(mut e) = self.shared.first_error.lock() {
            e.get_or_insert(why);
        }
    }

    /// Opens the connection of the user's current window.
    fn connect(&mut self, idx: u32, now: Instant) {
        let plan = &self.shared.plan;
        let vu = &self.vus[idx as usize];
        let (_, stop) = vu.windows[vu.window];
        self.counts.attempted += 1;
        let addr = plan.addrs[node_of(vu.i, vu.room, self.shared.room_ids.len(), plan.addrs.len())];
        let client = match Client::connect(addr, plan.wire, plan.deflate) {
            Ok(c) => c,
            Err(e) => return self.connect_failed(idx, format!("connect: {e}")),
        };
        if let Err(e) = self
            .poller
            .add(client.fd(), idx as u64, Interest::READ_WRITE)
        {
            return self.connect_failed(idx, format!("epoll: {e}"));
        }
        self.vus[idx as usize].conn = Some(Conn {
            client,
            phase: Phase::Connecting,
            rx: Receiver::new(0),
            k: 1,
            acked: 0,
            base: now,
            started: now,
            stop_at: self.shared.epoch + stop,
            drain_until: now,
            watching_write: true,
            owe: None,
            just_joined: false,
            failed: None,
        });
        self.at(now + CONNECT_TIMEOUT, idx, Kind::Check);
    }

    fn connect_failed(&mut self, idx: u32, why: String) {
        self.counts.failed += 1;
        let i = self.vus[idx as usize].i;
        self.fail(format!("user {i}: {why}"));
        self.end(idx, false);
    }

    /// Ends the current connection (if any; a closing handshake when
    /// `close`) and moves the user to its next window.
    fn end(&mut self, idx: u32, close: bool) {
        let vu = &mut self.vus[idx as usize];
        if let Some(mut c) = vu.conn.take() {
            if matches!(c.phase, Phase::Running | Phase::Draining) {
                self.counts.open -= 1;
            }
            if close {
                c.client.close(&mut self.frame);
            }
        }
        vu.gen = vu.gen.wrapping_add(1);
        vu.window += 1;
        match vu.windows.get(vu.window) {
            Some(&(start, _)) => {
                let t = self.shared.epoch + start;
                self.at(t, idx, Kind::Start);
            }
            None => self.done += 1,
        }
    }

    fn on_ready(&mut self, r: poll::Ready) {
        let idx = r.token as u32;
        let Some(conn) = self.vus.get_mut(idx as usize).and_then(|v| v.conn.as_mut()) else {
            return;
        };
        if conn.phase == Phase::Connecting {
            if !(r.writable || r.closed) {
                return;
            }
            let path = self.upgrade_path(idx);
            let conn = self.vus[idx as usize].conn.as_mut().expect("checked");
            match path.and_then(|p| conn.client.connected(&p)) {
                Ok(()) => conn.phase = Phase::Upgrading,
                Err(e) => return self.connect_failed(idx, format!("{e:#}")),
            }
        } else if r.writable {
            if let Err(e) = conn.client.flush() {
                return self.broken(idx, format!("write: {e}"));
            }
        }
        if r.readable || r.closed {
            self.read(idx);
        }
        self.after_io(idx);
    }

    fn upgrade_path(&self, idx: u32) -> Result<String> {
        let plan = &self.shared.plan;
        Ok(match plan.wire {
            Wire::Rookery => {
                let token = jwt(
                    &plan.jwt_secret,
                    &format!("load-{}", self.vus[idx as usize].i),
                )?;
                format!("/ws?token={token}")
            }
            Wire::SocketIo => "/socket.io/?EIO=4&transport=websocket".to_string(),
        })
    }

    /// Reads and accounts for what the server sent.
    fn read(&mut self, idx: u32) {
        let shared = self.shared;
        let epoch = shared.epoch;
        let vu = &mut self.vus[idx as usize];
        let room = vu.room;
        // Against several nodes: whether this user's node owns the room
        // (room k was created through node k mod n).
        let nodes = shared.plan.addrs.len();
        let rooms = shared.room_ids.len();
        let local = (nodes > 1).then(|| node_of(vu.i, room, rooms, nodes) == room % nodes);
        let Some(conn) = vu.conn.as_mut() else { return };
        let now = Instant::now();
        let now_us = now.saturating_duration_since(epoch).as_micros() as u64;
        let interval = self.interval;
        let tally = &mut self.tally;
        let counts = &mut self.counts;
        let mut top = 0u64;
        let Conn {
            client,
            phase,
            rx,
            acked,
            base,
            owe,
            just_joined,
            failed,
            ..
        } = conn;
        let result = client.read(&mut self.recv, &mut |incoming| {
            match (incoming, *phase) {
                (Incoming::Msg { seq, body, .. }, Phase::Running | Phase::Draining) => {
                    if matches!(rx.arrive(seq), Arrival::New | Arrival::Reordered) {
                        counts.delivered += 1;
                        if let Some(sched) = sched_us(body) {
                            let us = now_us.saturating_sub(sched).max(1);
                            let _ = tally.deliver_us.record(us);
                            let _ = match local {
                                Some(true) => tally.deliver_local_us.record(us),
                                Some(false) => tally.deliver_remote_us.record(us),
                                None => Ok(()),
                            };
                        }
                    }
                }
                (Incoming::Ack { r#ref, seq }, Phase::Running | Phase::Draining) => {
                    *acked += 1;
                    counts.acked += 1;
                    top = top.max(seq);
                    if let Some(iv) = interval {
                        let due = *base + iv.mul_f64(r#ref.saturating_sub(1) as f64);
                        let us = now.saturating_duration_since(due).as_micros() as u64;
                        let _ = tally.ack_us.record(us.max(1));
                    }
                }
                (Incoming::Error(_), Phase::Running | Phase::Draining) => counts.errors += 1,
                // The open packet may come in the same read as the 101.
                (Incoming::Open, Phase::Upgrading | Phase::SioOpen) => {
                    *owe = Some(Phase::SioConnect)
                }
                (Incoming::Connected, Phase::SioConnect) => *owe = Some(Phase::Joining),
                (Incoming::Joined { last_seq }, Phase::Joining) => {
                    *rx = Receiver::new(last_seq);
                    *phase = Phase::Running;
                    *just_joined = true;
                }
                (Incoming::Error(e) | Incoming::Refused(e), _) => {
                    failed
                        .get_or_insert_with(|| format!("refused: {}", String::from_utf8_lossy(e)));
                }
                _ => {}
            }
            Ok(())
        });
        if top > 0 {
            shared.max_acked[room].fetch_max(top, Ordering::AcqRel);
        }
        let running = conn.phase == Phase::Running || conn.phase == Phase::Draining;
        let why = match result {
            Ok(Got::Drained) => return self.progress(idx, now),
            Ok(Got::Closed(code)) => format!("closed by the server ({code:?})"),
            Err(e) => format!("{e:#}"),
        };
        if running {
            self.broken(idx, why);
        } else {
            self.connect_failed(idx, why);
        }
    }

    /// After a read: the handshake's next step, the join, the drain's end.
    fn progress(&mut self, idx: u32, now: Instant) {
        let plan = &self.shared.plan;
        let vu = &mut self.vus[idx as usize];
        let Some(conn) = vu.conn.as_mut() else { return };
        if let Some(why) = conn.failed.take() {
            if conn.phase != Phase::Running && conn.phase != Phase::Draining {
                return self.connect_failed(idx, why);
            }
        }
        if conn.phase == Phase::Upgrading && conn.client.upgraded() && conn.owe.is_none() {
            conn.owe = Some(match plan.wire {
                Wire::Rookery => Phase::Joining,
                Wire::SocketIo => Phase::SioOpen,
            });
        }
        let room_id = self.shared.room_ids[vu.room];
        match conn.owe.take() {
            Some(Phase::SioOpen) => conn.phase = Phase::SioOpen,
            Some(Phase::SioConnect) => {
                let token = match jwt(&plan.jwt_secret, &format!("load-{}", vu.i)) {
                    Ok(t) => t,
                    Err(e) => return self.connect_failed(idx, format!("{e:#}")),
                };
                self.text.clear();
                let _ = write!(self.text, r#"40{{"token":"{token}"}}"#);
                conn.phase = Phase::SioConnect;
                if let Err(e) = write_text(conn, &self.text, &mut self.frame) {
                    return self.connect_failed(idx, format!("write: {e}"));
                }
            }
            Some(Phase::Joining) => {
                self.text.clear();
                wire::write_join(plan.wire, &mut self.text, room_id);
                conn.phase = Phase::Joining;
                if let Err(e) = write_text(conn, &self.text, &mut self.frame) {
                    return self.connect_failed(idx, format!("write: {e}"));
                }
            }
            _ => {}
        }
        if std::mem::take(&mut conn.just_joined) {
            self.joined(idx, now);
        } else if conn.phase == Phase::Draining {
            self.check(idx, now);
        }
    }

    /// Joined: the schedule starts.
    fn joined(&mut self, idx: u32, now: Instant) {
        let interval = self.interval;
        let conn = self.vus[idx as usize].conn.as_mut().expect("joined");
        self.counts.connected += 1;
        self.counts.open += 1;
        // Spread the users' schedules over one interval.
        conn.base = now + interval.map_or(Duration::ZERO, |iv| iv.mul_f64(rand::random::<f64>()));
        let (base, stop_at) = (conn.base, conn.stop_at);
        if interval.is_some() && base < stop_at {
            self.at(base, idx, Kind::Send);
        }
        self.at(stop_at, idx, Kind::Stop);
    }

    /// Sends every message due by `now` (open loop: late ones go at once
    /// and count their lateness).
    fn send_due(&mut self, idx: u32, now: Instant) {
        let Some(iv) = self.interval else { return };
        let plan = &self.shared.plan;
        let epoch = self.shared.epoch;
        let vu = &mut self.vus[idx as usize];
        let (room_id, user) = (self.shared.room_ids[vu.room], vu.i as u64);
        let Some(conn) = vu.conn.as_mut() else { return };
        if conn.phase != Phase::Running {
            return;
        }
        let mut next = None;
        loop {
            let due = conn.base + iv.mul_f64((conn.k - 1) as f64);
            if due >= conn.stop_at {
                break;
            }
            if due > now {
                next = Some(due);
                break;
            }
            let sched = due.saturating_duration_since(epoch).as_micros() as u64;
            let mut body = [0u8; 32];
            let mut cur = std::io::Cursor::new(&mut body[..]);
            let _ = write!(cur, "t={sched};");
            let head = cur.position() as usize;
            self.text.clear();
            wire::write_send_padded(
                plan.wire,
                &mut self.text,
                room_id,
                conn.k,
                user,
                &body[..head],
                plan.payload,
            );
            if let Err(e) = write_text(conn, &self.text, &mut self.frame) {
                return self.broken(idx, format!("send: {e}"));
            }
            self.counts.sent += 1;
            let _ = self
                .tally
                .slip_us
                .record(now.saturating_duration_since(due).as_micros().max(1) as u64);
            conn.k += 1;
        }
        if let Some(t) = next {
            self.at(t, idx, Kind::Send);
        }
        self.after_io(idx);
    }

    /// The window closed: stop sending, drain.
    fn stop(&mut self, idx: u32, now: Instant) {
        let Some(conn) = self.vus[idx as usize].conn.as_mut() else {
            return;
        };
        if conn.phase != Phase::Running {
            return;
        }
        conn.phase = Phase::Draining;
        conn.drain_until = now + DRAIN_TIMEOUT;
        self.check(idx, now);
    }

    /// Connect timeout; drain completion.
    fn check(&mut self, idx: u32, now: Instant) {
        let room = self.vus[idx as usize].room;
        let Some(conn) = self.vus[idx as usize].conn.as_mut() else {
            return;
        };
        match conn.phase {
            Phase::Running => {}
            Phase::Draining => {
                let upto = self.shared.max_acked[room].load(Ordering::Acquire);
                let complete = conn.rx.complete_to(upto) && conn.acked + 1 >= conn.k;
                if complete || now >= conn.drain_until {
                    // What is missing at the deadline counts as lost.
                    self.account(idx, upto);
                    return self.end(idx, true);
                }
                self.at(now + DRAIN_CHECK, idx, Kind::Check);
            }
            _ if now >= conn.started + CONNECT_TIMEOUT => {
                self.connect_failed(
                    idx,
                    format!("connect and join took over {CONNECT_TIMEOUT:?}"),
                );
            }
            _ => {}
        }
    }

    /// A running connection broke: everything acknowledged by now was due
    /// to it.
    fn broken(&mut self, idx: u32, why: String) {
        let vu = &self.vus[idx as usize];
        let (i, room) = (vu.i, vu.room);
        self.counts.dropped += 1;
        self.fail(format!("user {i}: {why}"));
        let upto = self.shared.max_acked[room].load(Ordering::Acquire);
        self.account(idx, upto);
        self.end(idx, false);
    }

    /// Adds the session's receive accounting to the tally, due up to `upto`.
    fn account(&mut self, idx: u32, upto: u64) {
        let Some(conn) = self.vus[idx as usize].conn.as_ref() else {
            return;
        };
        let rx = &conn.rx;
        let t = &mut self.tally;
        t.expected += rx.expected(upto);
        t.delivered += rx.delivered_to(upto);
        t.lost += rx.lost(upto);
        t.duplicated += rx.duplicated;
        t.reordered += rx.reordered;
    }

    /// Watches for writability only while bytes wait for the socket.
    fn after_io(&mut self, idx: u32) {
        let Some(conn) = self.vus.get_mut(idx as usize).and_then(|v| v.conn.as_mut()) else {
            return;
        };
        if conn.phase == Phase::Connecting {
            return;
        }
        let want = conn.client.backlogged();
        if want != conn.watching_write {
            let interest = if want {
                Interest::READ_WRITE
            } else {
                Interest::READ
            };
            if self
                .poller
                .modify(conn.client.fd(), idx as u64, interest)
                .is_ok()
            {
                conn.watching_write = want;
            }
        }
    }
}

/// Frames and writes one text message.
fn write_text(conn: &mut Conn, text: &[u8], frame: &mut Vec<u8>) -> std::io::Result<()> {
    conn.client.frame_text(text, frame);
    conn.client.write(frame)
}

/// The due time (µs since the epoch) a message body starts with (`t=N;`).
fn sched_us(body: &[u8]) -> Option<u64> {
    wire::num_at(body.strip_prefix(b"t=")?)
}

/// Runs generator thread `w` to its end.
pub(super) fn run(shared: &Shared, w: usize) -> Result<Tally> {
    Driver::new(shared, w)
        .map_err(|e| anyhow!("generator thread {w}: {e:#}"))?
        .run()
}

/// The node user `i` (in room `room` of `rooms`) connects to, of `nodes`:
/// the room's members go round the nodes (`i / rooms` counts the room's
/// members before this one), so each node has about a `1 / nodes` share of
/// every room whatever the number of rooms; room `k` is created through,
/// and so owned by, node `k mod nodes`.
fn node_of(i: u32, room: usize, rooms: usize, nodes: usize) -> usize {
    (room + i as usize / rooms.max(1)) % nodes.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_are_read_from_bodies() {
        assert_eq!(sched_us(b"t=123;xxxx"), Some(123));
        assert_eq!(sched_us(b"t=;"), None);
        assert_eq!(sched_us(b"x=1;"), None);
        assert_eq!(sched_us(b"t=99999999999999999999999;"), None);
    }

    #[test]
    fn each_rooms_members_go_round_the_nodes() {
        for rooms in [1usize, 5, 6, 50] {
            for room in 0..rooms {
                let mut per_node = [0u32; 3];
                for g in 0..30u32 {
                    let i = room as u32 + g * rooms as u32;
                    per_node[super::node_of(i, room, rooms, 3)] += 1;
                }
                assert_eq!(per_node, [10, 10, 10], "rooms {rooms}, room {room}");
            }
        }
    }
}
