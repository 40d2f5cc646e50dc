//! One webhook's delivery thread: gather a batch from the cursors, POST
//! it until the receiver answers 2xx (backing off between tries), move the
//! cursors past it, save them now and then.
//!
//! The loop is long because a delivery is one sequence; each step is a
//! function. Order: a batch's log events are read before its membership
//! events, so the join that let someone post is never read after their
//! message (the join committed before the post was taken); the two are
//! merged by time. Batches go one at a time, so a room's events arrive
//! in the room's order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rookery_engine::{Engine, Pos, MEMBER_FEED_STREAM};

use super::config::{Hook, Kind};
use super::payload::{self, Encoded};
use super::{HookStats, PresenceQueue};

/// Log bytes one read of one shard takes at most.
const READ_BYTES_MAX: usize = 256 << 10;
/// Cursors are saved at most this often, and within it of the last
/// delivery: a crash re-delivers at most this much.
const SAVE_INTERVAL: Duration = Duration::from_millis(250);
/// How often the backlog is measured (and bounded).
const BACKLOG_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Sleep between empty looks when nothing rings.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// The first retry's delay; each failure doubles it up to the max.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A receiver's answer body read at most (then dropped).
const ANSWER_BYTES_MAX: u64 = 64 << 10;
/// One warning per this long, per webhook, while requests fail.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Where a webhook is: per shard, the next log record; the last
/// membership entry taken.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursors {
    log: Vec<Pos>,
    member: u64,
}

/// What one shard's log gives a batch.
struct Part {
    shard: usize,
    /// The wanted events taken, with their places.
    events: Vec<(Pos, Encoded)>,
    /// Where the next read starts.
    next: Pos,
    /// The time of the first record left out, if one was.
    cut_ts: Option<u64>,
}

/// One batch, and the cursors once it is delivered.
struct Batch {
    events: Vec<Encoded>,
    presence: Vec<Arc<[u8]>>,
    next: Cursors,
}

/// How a delivery ended.
enum Delivery {
    /// The receiver answered 2xx.
    Done,
    /// Told to stop first.
    Stopped,
    /// A shard's backlog passed `backlog_bytes_max` while retrying.
    TooFarBehind,
}

pub(super) struct Worker {
    hook: Hook,
    engine: Engine,
    stop: Arc<AtomicBool>,
    presence: Arc<PresenceQueue>,
    stats: Arc<HookStats>,
    agent: ureq::Agent,
    /// The webhook reads the logs (it wants messages, edits or deletes).
    reads_log: bool,
    reads_members: bool,
    /// The shard the next batch starts with (each in turn).
    first_shard: usize,
    /// The data directory's id, first in every event id.
    origin: u64,
    /// The wait before the next retry (kept across batches given up for
    /// the backlog bound, so a dead receiver is not hit faster).
    backoff: Duration,
    last_warning: Option<Instant>,
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl Worker {
    pub(super) fn new(
        hook: Hook,
        engine: Engine,
        stop: Arc<AtomicBool>,
        presence: Arc<PresenceQueue>,
        stats: Arc<HookStats>,
    ) -> Worker {
        let timeout = Duration::from_millis(hook.timeout_ms);
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent("rookery-webhook")
            // Signed bodies go straight to the receiver, whatever the
            // environment's HTTP(S)_PROXY says.
            .proxy(None)
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::new(),
            CachedResolver::default(),
        );
        let reads_log = [Kind::Message, Kind::Edit, Kind::Delete]
            .into_iter()
            .any(|k| hook.wants(k));
        let reads_members = hook.wants(Kind::Join) || hook.wants(Kind::Leave);
        let origin = engine.directory().origin();
        Worker {
            hook,
            engine,
            stop,
            presence,
            stats,
            agent,
            reads_log,
            reads_members,
            first_shard: 0,
            origin,
            backoff: BACKOFF_FIRST,
            last_warning: None,
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Logs a warning unless one was logged lately.
    fn warn(&mut self, what: std::fmt::Arguments<'_>) {
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() >= WARN_INTERVAL)
        {
            self.last_warning = Some(Instant::now());
            tracing::warn!(webhook = %self.hook.name, "{what}");
        }
    }

    pub(super) fn run(mut self) {
        let mut at = match self.resume() {
            Ok(at) => at,
            Err(e) => {
                tracing::error!(webhook = %self.hook.name, "cannot start: {e}");
                return;
            }
        };
        let mut saved = at.clone();
        let mut saved_at = Instant::now();
        let mut checked_at: Option<Instant> = None;
        let doorbell = self.engine.feeds().doorbell().clone();
        // Not the URL: it may carry a token.
        tracing::info!(webhook = %self.hook.name, "webhook started");
        while !self.stopped() {
            let rings = doorbell.rings();
            if checked_at.is_none_or(|t| t.elapsed() >= BACKLOG_CHECK_INTERVAL) {
                checked_at = Some(Instant::now());
                self.bound_backlog(&mut at);
            }
            let batch = self.gather(&at);
            let quiet = batch.events.is_empty() && batch.presence.is_empty();
            // A batch with nothing to send may still have moved a cursor
            // (over events this webhook does not want): read on at once.
            let idle = quiet && batch.next == at;
            if !quiet {
                match self.deliver(&batch, &at) {
                    Delivery::Done => {}
                    Delivery::Stopped => break,
                    // Fell too far behind while retrying: bound, gather anew.
                    Delivery::TooFarBehind => {
                        checked_at = None;
                        continue;
                    }
                }
                self.stats.delivered.fetch_add(
                    (batch.events.len() + batch.presence.len()) as u64,
                    Ordering::Relaxed,
                );
            }
            at = batch.next;
            // Saved at most every SAVE_INTERVAL (and within it once
            // quiet): a save is a durable meta.redb commit, two fdatasyncs
            // that chat's own writes would queue behind. Saving whenever
            // the webhook caught up cost a commit per message at chat
            // rates, and doubled the server's CPU per message.
            let due = SAVE_INTERVAL.saturating_sub(saved_at.elapsed());
            if at != saved && due.is_zero() {
                if self.save(&at) {
                    saved = at.clone();
                }
                saved_at = Instant::now();
            }
            if idle {
                let wait = if at != saved {
                    due.max(Duration::from_millis(1))
                } else {
                    IDLE_WAIT
                };
                doorbell.wait(rings, wait);
            }
        }
        if at != saved {
            self.save(&at);
        }
    }

    /// The saved cursors, or (a new webhook) the ends of the logs and of
    /// the membership feed, saved at once so that the log is held from
    /// there.
    fn resume(&mut self) -> Result<Cursors, String> {
        let directory = self.engine.directory();
        let feeds = self.engine.feeds();
        let saved = directory.feed_cursors().map_err(|e| e.to_string())?;
        let mine: Vec<(u32, u64)> = saved
            .into_iter()
            .filter(|(name, _, _)| name == &self.hook.name)
            .map(|(_, stream, pos)| (stream, pos))
            .collect();
        let mut at = Cursors {
            log: Vec::with_capacity(feeds.len()),
            member: 0,
        };
        for shard in 0..feeds.len() {
            let pos = mine.iter().find(|(s, _)| *s as usize == shard);
            let end = feeds.shard(shard).acked().ok_or("a shard has not opened")?;
            at.log.push(pos.map_or(end, |(_, p)| Pos::from_u64(*p)));
        }
        at.member = match mine.iter().find(|(s, _)| *s == MEMBER_FEED_STREAM) {
            Some((_, p)) => *p,
            None => directory.member_feed_end().map_err(|e| e.to_string())?,
        };
        // Held before it is saved: nothing may take the segment between.
        self.hold(&at);
        if !self.save(&at) {
            return Err("cannot save its cursor".into());
        }
        Ok(at)
    }

    /// Saves the cursors durably, then lets the shards drop what is behind
    /// them. False (logged) when `meta.redb` refused.
    fn save(&mut self, at: &Cursors) -> bool {
        let mut cursors: Vec<(u32, u64)> = Vec::new();
        if self.reads_log {
            cursors.extend(
                at.log
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (i as u32, p.to_u64())),
            );
        }
        if self.reads_members {
            cursors.push((MEMBER_FEED_STREAM, at.member));
        }
        if let Err(e) = self
            .engine
            .directory()
            .save_feed_cursors(&self.hook.name, &cursors)
        {
            self.warn(format_args!("saving the cursor failed: {e}"));
            return false;
        }
        self.hold(at);
        true
    }

    /// Holds each shard's log from `at`'s segment (nothing when the
    /// webhook does not read the logs).
    fn hold(&self, at: &Cursors) {
        let held = match self.reads_log {
            true => at.log.iter().map(|p| Some(p.segment)).collect(),
            false => Vec::new(),
        };
        self.engine.feeds().hold_for(&self.hook.name, Some(held));
    }

    /// Measures what is pending (for `/metrics`); each shard's log bytes
    /// behind (none when the webhook does not read the logs).
    fn measure(&self, at: &Cursors) -> Vec<u64> {
        let feeds = self.engine.feeds();
        let behind: Vec<u64> = match self.reads_log {
            true => (at.log.iter().enumerate())
                .map(|(shard, pos)| feeds.shard(shard).backlog_bytes(*pos))
                .collect(),
            false => Vec::new(),
        };
        self.stats
            .backlog_bytes
            .store(behind.iter().sum(), Ordering::Relaxed);
        if self.reads_members {
            let end = self
                .engine
                .directory()
                .member_feed_end()
                .unwrap_or(at.member);
            self.stats
                .pending_members
                .store(end.saturating_sub(at.member), Ordering::Relaxed);
        }
        behind
    }

    /// Whether a shard's log backlog is past `backlog_bytes_max`.
    fn too_far_behind(&self, behind: &[u64]) -> bool {
        behind.iter().any(|b| *b > self.hook.backlog_bytes_max)
    }

    /// Moves a log cursor that fell more than `backlog_bytes_max` behind
    /// to where that much is left (counted and logged), and measures.
    fn bound_backlog(&mut self, at: &mut Cursors) {
        let mut behind = self.measure(at);
        if !self.too_far_behind(&behind) {
            return;
        }
        let feeds = self.engine.feeds().clone();
        for (shard, pos) in at.log.iter_mut().enumerate() {
            if behind[shard] <= self.hook.backlog_bytes_max {
                continue;
            }
            let feed = feeds.shard(shard);
            // Never back: within one segment there is nowhere to skip to
            // (the bound is at least a segment).
            let Some(resume) = feed
                .resume_within(self.hook.backlog_bytes_max)
                .filter(|r| r > pos)
            else {
                continue;
            };
            let left = feed.backlog_bytes(resume);
            let skipped = behind[shard].saturating_sub(left);
            self.stats
                .skipped_bytes
                .fetch_add(skipped, Ordering::Relaxed);
            tracing::warn!(
                webhook = %self.hook.name,
                shard,
                skipped_bytes = skipped,
                backlog_bytes_max = self.hook.backlog_bytes_max,
                "the receiver fell too far behind: events skipped"
            );
            *pos = resume;
            behind[shard] = left;
        }
        self.stats
            .backlog_bytes
            .store(behind.iter().sum(), Ordering::Relaxed);
    }

    /// The next batch from `at`: up to `batch_len_max` of the logs'
    /// events and as many joins and leaves, merged by time, so that an
    /// event goes out after every event older than it from any source
    /// (a join before its member's first message; a room's events in the
    /// room's order); then presence.
    ///
    /// Where a source was cut (its next event is not in this batch), the
    /// other sources keep only what is not newer than that event: the
    /// log's first record left out bounds the joins and leaves, and the
    /// first join or leave left out (or the last taken, when the page was
    /// full) bounds the log, whose cursors go back to the first event
    /// dropped.
    fn gather(&mut self, at: &Cursors) -> Batch {
        let max = self.hook.batch_len_max;
        let mut next = at.clone();
        let mut parts = Vec::new();
        if self.reads_log {
            let n = self.engine.feeds().len();
            self.first_shard = (self.first_shard + 1) % n;
            let mut taken = 0;
            for i in 0..n {
                let shard = (self.first_shard + i) % n;
                let part = self.read_shard(shard, at.log[shard], max - taken.min(max));
                taken += part.events.len();
                next.log[shard] = part.next;
                parts.push(part);
            }
        }
        // The log's events older than its first event left out.
        let log_limit = parts.iter().filter_map(|p| p.cut_ts).min();
        let mut members = Vec::new();
        let mut members_limit = None;
        let directory = self.engine.directory();
        if self.reads_members && directory.member_feed_hint() > at.member {
            match directory.member_feed_page(at.member, max) {
                Ok(page) => {
                    if let Some(first) = page.first() {
                        let lost = first.id.saturating_sub(at.member + 1);
                        self.stats
                            .skipped_members
                            .fetch_add(lost, Ordering::Relaxed);
                    }
                    for e in &page {
                        if log_limit.is_some_and(|l| e.ts_ms > l) {
                            members_limit = Some(e.ts_ms);
                            break;
                        }
                        next.member = e.id;
                        if self.hook.wants(payload::member_kind(e)) {
                            members.push(payload::member_event(self.origin, e));
                        }
                    }
                    if members_limit.is_none() && page.len() >= max {
                        // More may follow, none older than the last.
                        members_limit = page.last().map(|e| e.ts_ms);
                    }
                }
                Err(e) => self.warn(format_args!("reading the membership feed failed: {e}")),
            }
        }
        let mut lists = vec![members];
        for part in parts {
            let mut events = part.events;
            if let Some(limit) = members_limit {
                if let Some(cut) = events.iter().position(|(_, e)| e.ts_ms > limit) {
                    next.log[part.shard] = events[cut].0;
                    events.truncate(cut);
                }
            }
            lists.push(events.into_iter().map(|(_, e)| e).collect());
        }
        Batch {
            events: payload::merge(lists),
            presence: self.presence.take(max),
            next,
        }
    }

    /// Up to `take` wanted events of shard `shard`'s log from `from`, and
    /// where the next read starts; the time of the first record left out
    /// when one was (the read was cut by `take` or by its byte budget).
    /// A read that fails takes nothing (logged; tried again next time).
    fn read_shard(&mut self, shard: usize, from: Pos, take: usize) -> Part {
        let feeds = self.engine.feeds().clone();
        let feed = feeds.shard(shard);
        let mut part = Part {
            shard,
            events: Vec::new(),
            next: from,
            cut_ts: None,
        };
        let mut stop_at = None;
        let (hook, origin) = (&self.hook, self.origin);
        let read = feed.read(from, READ_BYTES_MAX, |pos, record| {
            if stop_at.is_some() {
                return;
            }
            if part.events.len() >= take {
                stop_at = Some(pos);
                part.cut_ts = Some(payload::record_ts(record));
                return;
            }
            if hook.wants(payload::record_kind(record)) {
                part.events
                    .push((pos, payload::record_event(origin, shard, pos, record)));
            }
        });
        match read {
            Ok(read) => {
                part.next = stop_at.unwrap_or(read.next);
                self.note_skipped(shard, read.skipped_segments);
                if part.cut_ts.is_none() && feed.acked().is_some_and(|end| read.next < end) {
                    // Cut by the byte budget: the next record's time.
                    let _ = feed.read(read.next, 1, |_, record| {
                        part.cut_ts.get_or_insert(payload::record_ts(record));
                    });
                }
            }
            Err(e) => {
                part.events.clear();
                part.cut_ts = Some(0);
                self.warn(format_args!("reading shard {shard}'s log failed: {e}"));
            }
        }
        part
    }

    /// Counts and logs segments a read jumped over because they were gone.
    fn note_skipped(&mut self, shard: usize, segments: u32) {
        if segments == 0 {
            return;
        }
        self.stats
            .skipped_segments
            .fetch_add(segments as u64, Ordering::Relaxed);
        tracing::warn!(
            webhook = %self.hook.name,
            shard,
            segments,
            "log segments were gone before the webhook read them: events skipped"
        );
    }

    /// POSTs the batch until the receiver answers 2xx, unless told to stop
    /// or the webhook falls too far behind first (then the batch stays
    /// undelivered: the cursors, at `at`, do not move).
    fn deliver(&mut self, batch: &Batch, at: &Cursors) -> Delivery {
        let events = batch
            .events
            .iter()
            .map(|e| &e.json[..])
            .chain(batch.presence.iter().map(|p| &p[..]));
        let body = payload::body(&self.hook.name, events);
        let mut measured = Instant::now();
        loop {
            if self.stopped() {
                return Delivery::Stopped;
            }
            match self.post(&body) {
                Ok(status) if (200..300).contains(&status) => {
                    self.record_lag(batch);
                    self.backoff = BACKOFF_FIRST;
                    return Delivery::Done;
                }
                Ok(status) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    self.warn(format_args!("the receiver answered {status}; retrying"));
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    self.warn(format_args!("the request failed: {e}; retrying"));
                }
            }
            if !self.sleep(jittered(self.backoff)) {
                return Delivery::Stopped;
            }
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            if measured.elapsed() >= BACKLOG_CHECK_INTERVAL {
                measured = Instant::now();
                if self.too_far_behind(&self.measure(at)) {
                    return Delivery::TooFarBehind;
                }
            }
        }
    }

    /// One signed POST; the receiver's status.
    fn post(&self, body: &[u8]) -> Result<u16, ureq::Error> {
        let timestamp = unix_now().as_secs();
        let signature = payload::sign(self.hook.secret.as_bytes(), timestamp, body);
        let mut answer = self
            .agent
            .post(&self.hook.url)
            .header("content-type", "application/json")
            .header("rookery-webhook", &self.hook.name)
            .header("rookery-timestamp", timestamp.to_string())
            .header("rookery-signature", signature)
            .send(body)?;
        // Read (a bounded part of) the answer so the connection is reused.
        let _ = answer
            .body_mut()
            .with_config()
            .limit(ANSWER_BYTES_MAX)
            .read_to_vec();
        Ok(answer.status().as_u16())
    }

    /// Each delivered durable event's age, by its timestamp.
    fn record_lag(&self, batch: &Batch) {
        let now_us = unix_now().as_micros() as u64;
        let mut lag = self.stats.lag.lock().unwrap_or_else(|p| p.into_inner());
        for e in &batch.events {
            let _ = lag.record(now_us.saturating_sub(e.ts_ms * 1000).max(1));
        }
    }

    /// Sleeps `d` unless told to stop first; false if told.
    fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.stopped() {
                return false;
            }
            std::thread::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50)),
            );
        }
        !self.stopped()
    }
}

/// `d` give or take a fifth (receivers that came back are not hit by every
/// webhook at once).
fn jittered(d: Duration) -> Duration {
    let fifth = d.as_millis() as u64 / 5;
    let spread = rand::random::<u64>() % (2 * fifth + 1);
    Duration::from_millis(d.as_millis() as u64 - fifth + spread)
}

/// How long a receiver's resolved addresses are used before they are
/// looked up again.
const RESOLVED_TTL: Duration = Duration::from_secs(30);

/// ureq resolves the host before every request, even one that reuses a
/// pooled connection, and with a timeout set it does so on a new thread:
/// a thread per request was an eighth of a webhook's CPU at chat rates.
/// This keeps the answer for [`RESOLVED_TTL`].
#[derive(Debug, Default)]
struct CachedResolver {
    last: std::sync::Mutex<
        Option<(
            String,
            Instant,
            ureq::unversioned::resolver::ResolvedSocketAddrs,
        )>,
    >,
}

impl ureq::unversioned::resolver::Resolver for CachedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        use ureq::unversioned::resolver::DefaultResolver;
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map_or("", |a| a.as_str())
        );
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, at, addrs)) = last.as_ref() {
            if *k == key && at.elapsed() < RESOLVED_TTL {
                return Ok(addrs.clone());
            }
        }
        let addrs = DefaultResolver::default().resolve(uri, config, timeout)?;
        *last = Some((key, Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}
