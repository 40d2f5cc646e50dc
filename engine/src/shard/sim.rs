//! Deterministic simulation of one room's delivery: the owner's
//! [`Sequencer`] and [`Tail`], subscribers' [`Catchup`] cores on several
//! shards, FIFO mesh links with random delays, a simulated clock, out of
//! order durable completions, edits, typing, consumers that drain fast,
//! slowly or never, subscribers that come and go. Everything random comes
//! from one seed.
//!
//! The glue between the cores follows the shard's (`subscribers.rs`,
//! `owner.rs`, `mesh.rs`): interest reaches the owner before a shard's
//! page request on the same FIFO link, the owner forwards live events to
//! every interested shard, pages come from the tail when it covers them
//! and from the log otherwise, with the owner's head.
//!
//! Checked: each consumer gets seqs in order with no gap and no duplicate
//! from where it started; once quiet, every consumer not closed got every
//! seq up to the head; no consumer ever holds more than the bound; edits
//! offered to a subscriber are never dropped; only a consumer that stopped
//! draining is ever closed. A failing seed prints itself; set
//! `ROOKERY_SIM_SEED` to replay it alone.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::catchup::{Catchup, Limits, Offer, Paged, Pump, State};
use super::room::{Sequencer, Tail};
use crate::event::Event;

const ROOM: u64 = 1;
const LIM: Limits = Limits {
    queue_bytes_max: 8 * 1024,
    volatile_bytes_max: 2 * 1024,
    page_len: 64,
    stuck_timeout: Duration::from_millis(500),
};
const TAIL_LEN: usize = 24;

/// Owner → hosting shard.
enum Down {
    Deliver(Event),
    Page {
        sub: usize,
        events: Vec<Event>,
        head: u64,
    },
}

/// Hosting shard → owner.
enum Up {
    Interest {
        shard: usize,
        on: bool,
    },
    PageRequest {
        shard: usize,
        sub: usize,
        after: u64,
        limit: usize,
    },
}

/// A FIFO link: messages arrive in the order sent, each after a random
/// delay (never before the one sent ahead of it).
struct Link<T> {
    queue: VecDeque<(Duration, T)>,
}

impl<T> Link<T> {
    fn new() -> Link<T> {
        Link {
            queue: VecDeque::new(),
        }
    }
    fn send(&mut self, now: Duration, delay: Duration, msg: T) {
        let at = self
            .queue
            .back()
            .map_or(now + delay, |(last, _)| (*last).max(now + delay));
        self.queue.push_back((at, msg));
    }
    fn recv(&mut self, now: Duration) -> Option<T> {
        match self.queue.front() {
            Some((at, _)) if *at <= now => self.queue.pop_front().map(|(_, m)| m),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Drain {
    Fast,
    Slow,
    Never,
}

/// A subscriber and its consumer.
struct Sub {
    shard: usize,
    core: Catchup,
    /// Where it started: the first seq it must get (0: from the head).
    first: u64,
    drain: Drain,
    queued: VecDeque<Event>,
    queued_bytes: usize,
    /// Seqs received, in order of receipt.
    got: Vec<u64>,
    /// Edits offered to the core and not yet received.
    edits_owed: usize,
    closed: bool,
    gone: bool,
}

struct Sim {
    rng: StdRng,
    base: Instant,
    now: Duration,
    ticks: u32,
    // The owner.
    seq: Sequencer,
    tail: Tail,
    /// Durable messages by seq. A page may read past the head, but only up
    /// to `durable`: the log makes a commit batch visible whole and in
    /// order, never a later seq before an earlier one.
    log: BTreeMap<u64, Event>,
    durable: u64,
    next_seq: u64,
    /// Appends in flight: (when durable, event).
    writing: Vec<(Duration, Event)>,
    /// Durable appends whose callers have not resumed yet.
    resuming: Vec<(Duration, Event)>,
    interested: Vec<bool>,
    // The hosting shards.
    down: Vec<Link<Down>>,
    up: Vec<Link<Up>>,
    subs: Vec<Sub>,
    /// Per shard: its subscribers still subscribed.
    hosted: Vec<Vec<usize>>,
}

impl Sim {
    fn new(seed: u64, shards: usize) -> Sim {
        Sim {
            rng: StdRng::seed_from_u64(seed),
            base: Instant::now(),
            now: Duration::ZERO,
            ticks: 0,
            seq: Sequencer::new(0),
            tail: Tail::default(),
            log: BTreeMap::new(),
            durable: 0,
            next_seq: 1,
            writing: Vec::new(),
            resuming: Vec::new(),
            interested: vec![false; shards],
            down: (0..shards).map(|_| Link::new()).collect(),
            up: (0..shards).map(|_| Link::new()).collect(),
            subs: Vec::new(),
            hosted: vec![Vec::new(); shards],
        }
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn delay(&mut self) -> Duration {
        Duration::from_micros(self.rng.gen_range(10..1_500))
    }

    // ---- the owner ------------------------------------------------------

    fn post(&mut self) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let body = "x".repeat(self.rng.gen_range(1..400));
        let event = Event::message(ROOM, seq, 7, seq, Some(&body), false);
        let at = self.now + Duration::from_micros(self.rng.gen_range(50..2_000));
        self.writing.push((at, event));
    }

    /// Writes that reached the disk become readable (pages may read them
    /// before fan-out has them); each append's caller resumes a little
    /// later, in any order, and hands its message to the sequencer.
    fn complete_writes(&mut self) {
        let now = self.now;
        let (done, rest): (Vec<_>, Vec<_>) = self.writing.drain(..).partition(|(at, _)| *at <= now);
        self.writing = rest;
        for (_, event) in done {
            self.log.insert(event.seq(), event.clone());
            while self.log.contains_key(&(self.durable + 1)) {
                self.durable += 1;
            }
            let at = now + Duration::from_micros(self.rng.gen_range(0..800));
            self.resuming.push((at, event));
        }
        let (due, rest): (Vec<_>, Vec<_>) = self.resuming.drain(..).partition(|(at, _)| *at <= now);
        self.resuming = rest;
        for (_, event) in due {
            let mut released = Vec::new();
            self.seq.handle_durable(event, &mut |e| released.push(e));
            for e in released {
                self.tail.push(e.clone(), TAIL_LEN);
                self.fan_out(e);
            }
        }
    }

    fn edit(&mut self) {
        let head = self.seq.head();
        if head == 0 {
            return;
        }
        let seq = self.rng.gen_range(1..=head);
        let fresh = Event::message(ROOM, seq, 7, seq, Some("edited"), true);
        self.log.insert(seq, fresh.clone());
        self.tail.replace(fresh);
        self.fan_out(Event::edit(ROOM, seq, 7, seq, "edited"));
    }

    fn fan_out(&mut self, event: Event) {
        for shard in 0..self.down.len() {
            if self.interested[shard] {
                let d = self.delay();
                self.down[shard].send(self.now, d, Down::Deliver(event.clone()));
            }
        }
    }

    fn owner_recv(&mut self) {
        for shard in 0..self.up.len() {
            while let Some(msg) = self.up[shard].recv(self.now) {
                match msg {
                    Up::Interest { shard, on } => self.interested[shard] = on,
                    Up::PageRequest {
                        shard,
                        sub,
                        after,
                        limit,
                    } => {
                        let head = self.seq.head();
                        let events = self.tail.page(after + 1, limit, head).unwrap_or_else(|| {
                            self.log
                                .range(after + 1..=self.durable.max(after))
                                .take(limit)
                                .map(|(_, e)| e.clone())
                                .collect()
                        });
                        let d = self.delay();
                        self.down[shard].send(self.now, d, Down::Page { sub, events, head });
                    }
                }
            }
        }
    }

    // ---- the hosting shards -----------------------------------------------

    fn subscribe(&mut self, shard: usize) {
        let head = self.seq.head();
        let since = match self.rng.gen_range(0..3) {
            0 => None,
            1 => Some(0),
            _ => Some(self.rng.gen_range(0..=head)),
        };
        let drain = match self.rng.gen_range(0..10) {
            0 => Drain::Never,
            1..=3 => Drain::Slow,
            _ => Drain::Fast,
        };
        let id = self.subs.len();
        self.subs.push(Sub {
            shard,
            core: Catchup::new(since, self.instant()),
            first: since.map_or(0, |s| s + 1),
            drain,
            queued: VecDeque::new(),
            queued_bytes: 0,
            got: Vec::new(),
            edits_owed: 0,
            closed: false,
            gone: false,
        });
        self.hosted[shard].push(id);
        if self.hosted[shard].len() == 1 {
            let d = self.delay();
            self.up[shard].send(self.now, d, Up::Interest { shard, on: true });
        }
        self.ask(id);
    }

    fn unsubscribe(&mut self, id: usize) {
        let shard = self.subs[id].shard;
        self.subs[id].gone = true;
        self.hosted[shard].retain(|&s| s != id);
        if self.hosted[shard].is_empty() {
            let d = self.delay();
            self.up[shard].send(self.now, d, Up::Interest { shard, on: false });
        }
    }

    fn ask(&mut self, id: usize) {
        let now = self.instant();
        let (after, limit) = self.subs[id].core.ask(now, &LIM);
        let shard = self.subs[id].shard;
        let d = self.delay();
        self.up[shard].send(
            self.now,
            d,
            Up::PageRequest {
                shard,
                sub: id,
                after,
                limit,
            },
        );
    }

    fn shard_recv(&mut self, shard: usize) -> Result<(), String> {
        while let Some(msg) = self.down[shard].recv(self.now) {
            match msg {
                Down::Deliver(event) => {
                    for id in self.hosted[shard].clone() {
                        self.offer(id, &event)?;
                    }
                }
                Down::Page { sub, events, head } => {
                    if self.subs[sub].gone {
                        continue;
                    }
                    let s = &mut self.subs[sub];
                    let mut handed = Vec::new();
                    let paged = s
                        .core
                        .handle_page(events, head, s.queued_bytes, &LIM, &mut |e| {
                            handed.push(e.clone())
                        });
                    for e in handed {
                        if !e.is_sequenced() {
                            // A held edit or delete, out at last.
                            let owed = &mut self.subs[sub].edits_owed;
                            *owed = owed.checked_sub(1).ok_or("an edit delivered twice")?;
                        }
                        self.hand(sub, e)?;
                    }
                    // As the shard does: `More` asks at once, `Behind`
                    // waits for the pump.
                    if paged == Paged::More {
                        self.ask(sub);
                    }
                }
            }
        }
        Ok(())
    }

    fn offer(&mut self, id: usize, event: &Event) -> Result<(), String> {
        let now = self.instant();
        let s = &mut self.subs[id];
        let offer = s.core.handle_event(event, s.queued_bytes, now, &LIM);
        if !event.is_sequenced() && !event.is_volatile() && offer != Offer::Deliver {
            // Held beside the core: it must come out later.
            s.edits_owed += 1;
        }
        match offer {
            Offer::Deliver => self.hand(id, event.clone()),
            Offer::Overflow => self.close(id, "held changes overflowed"),
            Offer::Skip | Offer::Dropped | Offer::Lagged => Ok(()),
        }
    }

    /// The consumer takes one event.
    fn hand(&mut self, id: usize, e: Event) -> Result<(), String> {
        let s = &mut self.subs[id];
        if s.closed {
            return Err(format!("sub {id}: an event after it was closed"));
        }
        if e.is_sequenced() {
            let want = match s.got.last() {
                Some(&last) => last + 1,
                None if s.first == 0 => e.seq(),
                None => s.first,
            };
            if e.seq() != want {
                return Err(format!(
                    "sub {id}: got seq {} where {want} was due (got so far {:?})",
                    e.seq(),
                    &s.got[s.got.len().saturating_sub(5)..]
                ));
            }
            s.got.push(e.seq());
        }
        s.queued_bytes += e.len();
        s.queued.push_back(e);
        if s.queued_bytes > LIM.queue_bytes_max {
            return Err(format!(
                "sub {id}: holds {} bytes, over the bound",
                s.queued_bytes
            ));
        }
        Ok(())
    }

    fn close(&mut self, id: usize, why: &str) -> Result<(), String> {
        let s = &self.subs[id];
        if s.drain != Drain::Never {
            return Err(format!(
                "sub {id} ({:?}) closed as slow ({why}), though it drains: {:?}, next seq {}, head {}, {} bytes queued, {} held",
                s.drain,
                s.core.state(),
                s.core.next_seq(),
                self.seq.head(),
                s.queued_bytes,
                s.core.held_bytes()
            ));
        }
        self.subs[id].closed = true;
        self.unsubscribe(id);
        Ok(())
    }

    fn drain(&mut self, quiet: bool) {
        for s in self.subs.iter_mut().filter(|s| !s.gone) {
            let n = match (s.drain, quiet) {
                (Drain::Never, _) => 0,
                (Drain::Slow, false) => 1,
                _ => usize::MAX,
            };
            for _ in 0..n {
                match s.queued.pop_front() {
                    Some(e) => s.queued_bytes -= e.len(),
                    None => break,
                }
            }
        }
    }

    fn pump(&mut self) -> Result<(), String> {
        let now = self.instant();
        for id in 0..self.subs.len() {
            if self.subs[id].gone {
                continue;
            }
            let s = &mut self.subs[id];
            match s.core.poll_pump(s.queued_bytes, now, &LIM) {
                Pump::Ask => self.ask(id),
                Pump::Stuck => self.close(id, "stuck")?,
                Pump::Wait => {}
            }
        }
        Ok(())
    }

    /// One tick of 100 µs: the owner, every shard, the consumers.
    fn step(&mut self, busy: bool, quiet: bool) -> Result<(), String> {
        self.now += Duration::from_micros(100);
        if busy {
            if self.rng.gen_bool(0.3) {
                self.post();
            }
            if self.rng.gen_bool(0.01) {
                self.edit();
            }
            if self.rng.gen_bool(0.02) {
                self.fan_out(Event::typing(ROOM, 9));
            }
            if self.rng.gen_bool(0.004) {
                let shard = self.rng.gen_range(0..self.down.len());
                self.subscribe(shard);
            }
            if self.rng.gen_bool(0.001) {
                let live: Vec<usize> = (0..self.subs.len())
                    .filter(|&i| !self.subs[i].gone)
                    .collect();
                if !live.is_empty() {
                    let id = live[self.rng.gen_range(0..live.len())];
                    self.unsubscribe(id);
                }
            }
        }
        self.complete_writes();
        self.owner_recv();
        for shard in 0..self.down.len() {
            self.shard_recv(shard)?;
        }
        self.drain(quiet);
        // The lagging pump looks every millisecond (every 10th tick).
        self.ticks = (self.ticks + 1) % 10;
        if self.ticks == 0 {
            self.pump()?;
        }
        Ok(())
    }

    /// The final check, once every link and write is empty.
    fn check_quiet(&self) -> Result<(), String> {
        let head = self.seq.head();
        for (id, s) in self.subs.iter().enumerate().filter(|(_, s)| !s.gone) {
            let caught_up = s.core.state() == State::Live
                && s.core.next_seq() == head + 1
                && s.got.last().is_none_or(|&last| last == head);
            if !caught_up {
                return Err(format!(
                    "sub {id} ({:?}, from {}) ended {:?} at next seq {} (got up to {:?}), head {head}",
                    s.drain,
                    s.first,
                    s.core.state(),
                    s.core.next_seq(),
                    s.got.last()
                ));
            }
            if s.edits_owed > 0 {
                return Err(format!(
                    "sub {id}: {} held edits never delivered",
                    s.edits_owed
                ));
            }
        }
        Ok(())
    }
}

fn run(seed: u64) -> Result<(), String> {
    let mut sim = Sim::new(seed, 3);
    for shard in 0..3 {
        sim.subscribe(shard);
    }
    for _ in 0..20_000 {
        sim.step(true, false)?;
    }
    // Quiet: no new work; consumers that drain do, until nothing moves.
    for _ in 0..(LIM.stuck_timeout.as_micros() as usize / 100 * 4) {
        sim.step(false, true)?;
    }
    let busy = !sim.writing.is_empty() || !sim.resuming.is_empty();
    if busy || sim.down.iter().any(|l| !l.queue.is_empty()) {
        return Err("still busy after the quiet period".into());
    }
    sim.check_quiet()
}

#[test]
fn one_room_over_a_simulated_mesh_keeps_order_bounds_and_changes() {
    let seeds: Vec<u64> = match std::env::var("ROOKERY_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("ROOKERY_SIM_SEED is a u64")],
        Err(_) => {
            let fresh: u64 = rand::random();
            let fresh = [fresh, fresh.wrapping_add(1), fresh.wrapping_add(2)];
            eprintln!("simulation: fresh seeds {fresh:?} (and 1..=24)");
            (1..=24).chain(fresh).collect()
        }
    };
    for seed in seeds {
        if let Err(e) = run(seed) {
            panic!("simulation seed {seed}: {e}\nreplay: ROOKERY_SIM_SEED={seed} cargo test -p rookery-engine simulated_mesh");
        }
    }
}
