//! Ordering, completeness, replay, idempotency, restart and backpressure of
//! the engine, through its public embed API.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rookery_engine::{Cursor, Engine, EngineConfig, Error, Event, EventKind, Subscription};
use rookery_engine::{MemberOp, Role, SERVER_USER};

fn config(dir: &Path, shards: u32) -> EngineConfig {
    common::small_config(dir, shards)
}

/// Receives until `want` message events arrived (or times out).
fn collect(sub: &Subscription, want: usize) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got
        .iter()
        .filter(|e: &&Event| e.kind() == EventKind::Message)
        .count()
        < want
    {
        assert!(
            Instant::now() < deadline,
            "timed out with {} of {want} messages",
            got.len()
        );
        if let Some(e) = sub.recv_timeout(Duration::from_millis(200)).unwrap() {
            got.push(e);
        }
    }
    got
}

/// Waits until `n` consumers have been closed as slow.
fn wait_slow_closed(engine: &Engine, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.counters().unwrap().slow_closed < n {
        assert!(Instant::now() < deadline, "no consumer was closed as slow");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.kind() == EventKind::Message)
        .map(Event::seq)
        .collect()
}

fn body(e: &Event) -> String {
    let v: serde_json::Value = serde_json::from_str(e.json()).unwrap();
    v["body"].as_str().unwrap_or_default().to_string()
}

#[test]
fn every_subscriber_on_every_shard_sees_each_room_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), 2)).unwrap();
    let rooms: Vec<u64> = (1..=6).collect();
    // Three subscribers per room on each shard.
    let mut subs: Vec<(u64, Subscription)> = Vec::new();
    for &room in &rooms {
        for shard in 0..2 {
            for _ in 0..3 {
                subs.push((
                    room,
                    engine.subscribe_on(shard, room, Some(0)).wait().unwrap(),
                ));
            }
        }
    }
    let posters: Vec<_> = (0..8u64)
        .map(|p| {
            let engine = engine.clone();
            let rooms = rooms.clone();
            std::thread::spawn(move || {
                // Pipelined: many posts in flight, so commits batch.
                let pending: Vec<_> = (0..150u64)
                    .map(|i| {
                        let room = rooms[((p + i) % rooms.len() as u64) as usize];
                        engine.post(room, p + 1, &format!("p{p}-{i}"), &format!("p{p}-{i}"))
                    })
                    .collect();
                for r in pending {
                    r.wait().unwrap();
                }
            })
        })
        .collect();
    for t in posters {
        t.join().unwrap();
    }
    let mut per_room = HashMap::new();
    for &room in &rooms {
        per_room.insert(room, engine.last_seq(room).wait().unwrap());
    }
    assert_eq!(per_room.values().sum::<u64>(), 8 * 150);
    for (room, sub) in &subs {
        let n = per_room[room];
        let got = collect(sub, n as usize);
        assert_eq!(
            seqs(&got),
            (1..=n).collect::<Vec<_>>(),
            "room {room} on shard {}",
            sub.shard()
        );
        assert!(sub.try_recv().unwrap().is_none(), "no extra events");
    }
    let m = engine.metrics().unwrap();
    let (c, latency) = (m.counters, m.latencies);
    assert_eq!(c.posts, 1200);
    assert_eq!(m.gauges.subscribers, 36);
    assert_eq!(
        (m.gauges.lagging, m.gauges.queued_bytes),
        (0, 0),
        "all drained and live"
    );
    assert!(m.gauges.tail_cache_events > 0);
    // Each cached event holds at least its JSON object's braces.
    assert!(m.gauges.tail_cache_bytes > 2 * m.gauges.tail_cache_events);
    assert_eq!(latency.commit_us.len(), 1200, "one commit latency per post");
    // Per shard: one entry each, summing to the engine-wide figures, each
    // shard having done some of the posting. (CPU time is counted in 10 ms
    // ticks, which this test's shards may not reach: the figure is tested
    // in engine::metrics.)
    let shards = engine.shard_metrics().unwrap();
    assert_eq!(shards.len(), engine.shards());
    assert_eq!(shards.iter().map(|s| s.counters.posts).sum::<u64>(), 1200);
    assert_eq!(shards.iter().map(|s| s.gauges.subscribers).sum::<u64>(), 36);
    let counters: Vec<_> = shards.iter().map(|s| s.counters).collect();
    assert!(counters.iter().all(|c| c.posts > 0), "{counters:?}");
    assert!(
        !latency.hop_us.is_empty(),
        "cross-shard deliveries are timed"
    );
    assert!(
        latency.page_us.len() >= 36,
        "every subscription's first page is timed"
    );
    assert!(
        c.mesh_sends < c.forwarded,
        "cross-shard traffic is batched: {c:?}"
    );
    drop(subs);
    engine.shutdown().unwrap();
}

#[test]
fn subscribe_with_since_during_live_traffic_has_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    cfg.tail_cache_len = 16; // force catch-up from storage too
    cfg.catch_up_page_len = 7;
    let engine = Engine::start(cfg).unwrap();
    let room = 42;
    for i in 0..100 {
        engine.post(room, 1, "", &format!("m{i}")).wait().unwrap();
    }
    let poster = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            for i in 100..600 {
                engine.post(room, 2, "", &format!("m{i}")).wait().unwrap();
            }
        })
    };
    let mut subs = Vec::new();
    for k in 0..12u64 {
        std::thread::sleep(Duration::from_millis(3));
        subs.push((
            k * 37,
            engine
                .subscribe_on((k % 2) as usize, room, Some(k * 37))
                .wait()
                .unwrap(),
        ));
    }
    poster.join().unwrap();
    for (since, sub) in &subs {
        let got = collect(sub, (600 - since) as usize);
        assert_eq!(
            seqs(&got),
            (since + 1..=600).collect::<Vec<_>>(),
            "since {since}"
        );
        for e in &got {
            assert_eq!(body(e), format!("m{}", e.seq() - 1));
        }
    }
    // since = None: only what comes after.
    let live = engine.subscribe_on(1, room, None).wait().unwrap();
    engine.post(room, 1, "", "after").wait().unwrap();
    let got = collect(&live, 1);
    assert_eq!(seqs(&got), vec![601]);
    drop((subs, live));
    engine.shutdown().unwrap();
}

#[test]
fn idempotent_retries_edits_deletes_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), 2)).unwrap();
    let meta = engine.directory();
    let alice = meta.ensure_external_user("alice", 0).unwrap();
    let bob = meta.ensure_external_user("bob", 0).unwrap();
    let room = engine.create_room("general", false, alice).wait().unwrap();
    engine
        .membership(room, bob, bob, MemberOp::Join)
        .wait()
        .unwrap();
    let a = engine.post(room, bob, "k1", "hi").wait().unwrap();
    let b = engine.post(room, bob, "k1", "hi again").wait().unwrap();
    assert!(!a.duplicate && b.duplicate);
    assert_eq!((a.seq, a.ts_ms), (b.seq, b.ts_ms));
    let sub = engine.subscribe(room, Some(1)).wait().unwrap();
    let c = engine.post(room, alice, "k2", "second").wait().unwrap();
    assert_eq!(c.seq, 2);
    // Only authors edit: not Bob Alice's message, nor Alice (the room's
    // admin) Bob's; Bob his own. Empty bodies are refused.
    assert!(matches!(
        engine.edit(room, 2, bob, "hacked").wait(),
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        engine.edit(room, 1, alice, "rewritten").wait(),
        Err(Error::Forbidden(_))
    ));
    for blank in ["", " \n\t "] {
        assert!(matches!(
            engine.edit(room, 1, bob, blank).wait(),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            engine.post(room, bob, "kb", blank).wait(),
            Err(Error::InvalidInput(_))
        ));
    }
    engine.edit(room, 1, bob, "moderated").wait().unwrap();
    engine.delete(room, 2, alice).wait().unwrap();
    assert!(matches!(
        engine.delete(room, 9, alice).wait(),
        Err(Error::NotFound(_))
    ));
    let got = collect(&sub, 1);
    let kinds: Vec<EventKind> = {
        let mut all = got.clone();
        while all.len() < 3 {
            match sub.recv_timeout(Duration::from_secs(10)).unwrap() {
                Some(e) => all.push(e),
                None => break,
            }
        }
        all.iter().map(Event::kind).collect()
    };
    assert_eq!(
        kinds,
        vec![EventKind::Message, EventKind::Edit, EventKind::Delete]
    );
    drop(sub);
    assert_eq!(engine.mark_read(room, bob, 1).wait().unwrap(), 1);
    assert_eq!(engine.unread(room, bob).wait().unwrap().unread(), 1);
    assert_eq!(
        engine.mark_read(room, bob, 99).wait().unwrap(),
        2,
        "clamped"
    );
    assert_eq!(engine.unread(room, bob).wait().unwrap().unread(), 0);
    engine.shutdown().unwrap();
    drop(meta); // the data dir stays locked while any handle to it lives

    // Restart on the same data dir: seqs, history and idempotency resume.
    let engine = Engine::start(config(dir.path(), 2)).unwrap();
    assert_eq!(engine.last_seq(room).wait().unwrap(), 2);
    let again = engine
        .post(room, bob, "k1", "retry after restart")
        .wait()
        .unwrap();
    assert!(again.duplicate && again.seq == 1);
    assert_eq!(engine.post(room, bob, "k3", "third").wait().unwrap().seq, 3);
    let page = engine.history(room, Cursor::latest(10)).wait().unwrap();
    let view: Vec<(u64, Option<String>)> = page
        .messages
        .iter()
        .map(|m| (m.seq, m.body.clone()))
        .collect();
    assert_eq!(
        view,
        vec![
            (3, Some("third".into())),
            (2, None),
            (1, Some("moderated".into()))
        ]
    );
    let sub = engine.subscribe(room, Some(0)).wait().unwrap();
    let got = collect(&sub, 3);
    assert_eq!(seqs(&got), vec![1, 2, 3]);
    assert_eq!(body(&got[0]), "moderated");
    drop(sub);
    engine.shutdown().unwrap();
    // A data dir keeps its shard count.
    assert!(matches!(
        Engine::start(config(dir.path(), 1)),
        Err(Error::Storage(_))
    ));
}

/// `subscribe` resolves only once the owner knows the subscriber's shard: a
/// change made right after it, even to a message older than `since`, is
/// always delivered (an edit sent straight to the owner cannot overtake the
/// subscriber's registration).
#[test]
fn a_change_made_right_after_subscribe_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    // Without an fsync to wait for, an edit is fastest: the race is tight.
    cfg.storage.durability = rookery_engine::Durability::None;
    let engine = Engine::start(cfg).unwrap();
    let room = 11;
    let author = 3;
    engine.post(room, author, "", "original").wait().unwrap();
    let remote = 1 - engine.shard_of(room);
    // Rooms the remote shard does not own: subscribing to them first keeps
    // that shard busy while the edit goes straight to the owner.
    let others: Vec<u64> = (1000..)
        .filter(|r| engine.shard_of(*r) != remote)
        .take(500)
        .collect();
    for round in 0..50 {
        let busy: Vec<_> = others
            .iter()
            .map(|r| engine.subscribe_on(remote, *r, Some(0)))
            .collect();
        let sub = engine.subscribe_on(remote, room, Some(1)).wait().unwrap();
        let body = format!("edit {round}");
        engine.edit(room, 1, author, &body).wait().unwrap();
        let e = sub
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap_or_else(|| panic!("round {round}: the edit never arrived"));
        assert_eq!((e.kind(), e.seq()), (EventKind::Edit, 1), "round {round}");
        assert_eq!(self::body(&e), body);
        for p in busy {
            drop(p.wait().unwrap());
        }
    }
    engine.shutdown().unwrap();
}

#[test]
fn a_stalled_subscriber_stays_bounded_then_gets_everything_in_order() {
    const N: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    cfg.storage.durability = rookery_engine::Durability::None;
    cfg.outbound_queue_bytes_max = 64 << 10;
    cfg.volatile_queue_bytes_max = 16 << 10;
    cfg.typing_interval = Duration::ZERO;
    // Every post is queued before any is waited for.
    cfg.command_queue_len_max = 2 * N as usize;
    let bound = cfg.outbound_queue_bytes_max;
    let engine = Engine::start(cfg).unwrap();
    let room = 5;
    let stalled = engine
        .subscribe_on(1 - engine.shard_of(room), room, Some(0))
        .wait()
        .unwrap();
    let fast = engine
        .subscribe_on(engine.shard_of(room), room, Some(0))
        .wait()
        .unwrap();
    let posters: Vec<_> = (0..4u64)
        .map(|p| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let pending: Vec<_> = (0..N / 4)
                    .map(|i| engine.post(room, p + 1, "", &format!("{p}:{i}")))
                    .collect();
                for (i, r) in pending.into_iter().enumerate() {
                    r.wait().unwrap();
                    if i % 1000 == 0 {
                        let _ = engine.typing(room, p + 1).wait();
                    }
                }
            })
        })
        .collect();
    let fast_reader = std::thread::spawn(move || seqs(&collect(&fast, N as usize)));
    let mut max_queued = 0;
    while posters.iter().any(|t| !t.is_finished()) {
        max_queued = max_queued.max(stalled.queued_bytes());
        std::thread::sleep(Duration::from_millis(1));
    }
    for t in posters {
        t.join().unwrap();
    }
    assert!(max_queued <= bound, "queued {max_queued} > bound {bound}");
    assert_eq!(fast_reader.join().unwrap(), (1..=N).collect::<Vec<_>>());
    // The gauges see the stalled subscriber waiting with a bounded queue.
    let g = engine.metrics().unwrap().gauges;
    // (The fast one ended with its reader thread.)
    assert_eq!((g.subscribers, g.lagging), (1, 1), "{g:?}");
    assert!(g.queued_bytes <= bound as u64, "{g:?}");
    // The stalled one drains and receives every message, in order.
    let got = collect(&stalled, N as usize);
    assert_eq!(seqs(&got), (1..=N).collect::<Vec<_>>());
    let c = engine.counters().unwrap();
    assert!(c.lagged >= 1, "{c:?}");
    assert!(
        c.volatile_dropped >= 1,
        "typing is what gets dropped: {c:?}"
    );
    drop(stalled);
    engine.shutdown().unwrap();
}

#[test]
fn a_stuck_subscriber_is_closed_as_slow_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.storage.durability = rookery_engine::Durability::None;
    cfg.outbound_queue_bytes_max = 8 << 10;
    cfg.volatile_queue_bytes_max = 4 << 10;
    cfg.stuck_timeout = Duration::from_millis(100);
    let engine = Engine::start(cfg).unwrap();
    let sub = engine.subscribe(1, Some(0)).wait().unwrap();
    for i in 0..500 {
        engine
            .post(1, 1, "", &format!("message number {i} with some padding"))
            .wait()
            .unwrap();
    }
    // Nothing read: closed once stuck for the timeout (when, exactly, is
    // the Catchup core's, tested with simulated time in its unit tests).
    wait_slow_closed(&engine, 1);
    // It can still read what was queued, then learns why it ended.
    let mut n = 0;
    let err = loop {
        match sub.recv_timeout(Duration::from_secs(5)) {
            Ok(Some(_)) => n += 1,
            Ok(None) => panic!("the subscription should have been closed"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::SlowConsumer), "{err:?}");
    assert!(n > 0 && n < 500);
    assert_eq!(engine.counters().unwrap().slow_closed, 1);
    drop(sub);
    engine.shutdown().unwrap();
}

#[test]
fn calls_after_shutdown_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), 2)).unwrap();
    let other = engine.clone();
    let sub = engine.subscribe(3, None).wait().unwrap();
    engine.shutdown().unwrap();
    assert!(matches!(
        other.post(3, 1, "", "late").wait(),
        Err(Error::ShutDown)
    ));
    assert!(matches!(sub.recv(), Err(Error::ShutDown)));
}

#[test]
fn presence_is_per_user_across_shards_and_typing_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    cfg.typing_interval = Duration::from_secs(60);
    let engine = Engine::start(cfg).unwrap();
    let room = 9;
    let watcher = engine
        .subscribe_as(0, room, None, Some(100))
        .wait()
        .unwrap();
    let wait_online = |want: Vec<u64>| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = engine.online(room).wait().unwrap();
            if now == want {
                return;
            }
            assert!(Instant::now() < deadline, "online {now:?}, want {want:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // Once `subscribe` returns, the owner counts the user online.
    assert_eq!(engine.online(room).wait().unwrap(), vec![100]);
    // User 7 connects twice, on both shards: one "online", one "offline".
    let a = engine.subscribe_as(0, room, None, Some(7)).wait().unwrap();
    let b = engine.subscribe_as(1, room, None, Some(7)).wait().unwrap();
    assert_eq!(engine.online(room).wait().unwrap(), vec![7, 100]);
    // Both are registered once both see a message posted now.
    let seq = engine.post(room, 1, "", "sync").wait().unwrap().seq;
    for s in [&a, &b] {
        while s
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .expect("event")
            .seq()
            != seq
        {}
    }
    drop(a);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        engine.online(room).wait().unwrap(),
        vec![7, 100],
        "still online on shard 1"
    );
    drop(b);
    wait_online(vec![100]);
    engine.typing(room, 7).wait().unwrap();
    assert!(matches!(
        engine.typing(room, 7).wait(),
        Err(Error::RateLimited(_))
    ));
    let mut states = Vec::new();
    while let Some(e) = watcher.recv_timeout(Duration::from_millis(300)).unwrap() {
        let v: serde_json::Value = serde_json::from_str(e.json()).unwrap();
        states.push(format!(
            "{}:{}:{}",
            v["type"].as_str().unwrap(),
            v["user"],
            v["state"].as_str().unwrap_or("")
        ));
    }
    states.retain(|s| !s.starts_with("msg"));
    assert_eq!(
        states,
        // A subscriber's own arrival is announced before it is live, so
        // it sees only the others'.
        vec!["presence:7:online", "presence:7:offline", "typing:7:"],
        "first join and last leave only"
    );
    drop(watcher);
    engine.shutdown().unwrap();
}

#[test]
fn retention_through_the_engine_trims_history_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    // Without an fsync to wait for, an edit is fastest: the race is tight.
    cfg.storage.durability = rookery_engine::Durability::None;
    let engine = Engine::start(cfg).unwrap();
    let room = 11;
    for i in 1..=30 {
        engine.post(room, 1, "", &format!("m{i}")).wait().unwrap();
    }
    engine
        .set_retention(
            room,
            rookery_engine::Retention {
                max_messages: Some(10),
                max_age_ms: None,
            },
        )
        .wait()
        .unwrap();
    let report = engine.enforce_retention().unwrap();
    assert_eq!(report.messages_expired, 20);
    let page = engine.history(room, Cursor::after(0, 100)).wait().unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (21..=30).collect::<Vec<_>>()
    );
    // A subscriber asking for everything gets what is left, then live ones.
    let sub = engine.subscribe(room, Some(0)).wait().unwrap();
    engine.post(room, 1, "", "m31").wait().unwrap();
    let got = collect(&sub, 11);
    assert_eq!(seqs(&got), (21..=31).collect::<Vec<_>>());
    drop(sub);
    engine.shutdown().unwrap();
}

/// Receipts are written in batches (one durable meta transaction for many
/// callers), never move back, and a full writer queue refuses with `Busy`
/// without losing the receipts it accepted.
#[test]
fn read_receipts_are_batched_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    cfg.receipt_queue_len_max = 8;
    let engine = Engine::start(cfg).unwrap();
    let meta = engine.directory();
    let owner = meta.ensure_external_user("owner", 0).unwrap();
    let users: Vec<u64> = (0..200)
        .map(|i| meta.ensure_external_user(&format!("u{i}"), 0).unwrap())
        .collect();
    let room = engine.create_room("receipts", false, owner).wait().unwrap();
    for i in 0..10 {
        engine
            .post(room, owner, "", &format!("m{i}"))
            .wait()
            .unwrap();
    }
    // Everyone marks seq 1..=10 at once, from 4 threads, without waiting.
    let outcomes: Vec<(u64, u64, Result<u64, Error>)> = std::thread::scope(|s| {
        let handles: Vec<_> = users
            .chunks(50)
            .map(|chunk| {
                let engine = engine.clone();
                s.spawn(move || {
                    let pending: Vec<_> = chunk
                        .iter()
                        .flat_map(|&u| (1..=10).map(move |seq| (u, seq)))
                        .map(|(u, seq)| (u, seq, engine.mark_read(room, u, seq)))
                        .collect();
                    pending
                        .into_iter()
                        .map(|(u, seq, p)| (u, seq, p.wait()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let busy = outcomes
        .iter()
        .filter(|o| matches!(o.2, Err(Error::Busy(_))))
        .count();
    let mut best: HashMap<u64, u64> = HashMap::new();
    for (u, seq, r) in &outcomes {
        match r {
            Ok(stored) => {
                assert!(stored >= seq, "a receipt never moves back");
                let b = best.entry(*u).or_default();
                *b = (*b).max(*stored);
            }
            Err(Error::Busy(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let m = engine.metrics().unwrap();
    assert_eq!(m.counters.receipts_refused, busy as u64);
    assert!(busy > 0, "a queue of 8 overflows under 2,000 receipts");
    assert!(
        m.receipt_batches < m.receipts_written,
        "batched: {} receipts in {} transactions",
        m.receipts_written,
        m.receipt_batches
    );
    // What was acknowledged is stored, and unread follows it.
    for (u, b) in &best {
        assert_eq!(meta.read_seq(room, *u).unwrap(), *b);
        assert_eq!(engine.unread(room, *u).wait().unwrap().unread(), 10 - b);
    }
    // Unknown rooms (for meta) and users are refused, not stored.
    assert!(matches!(
        engine.mark_read(room + 1000, owner, 1).wait(),
        Err(Error::Storage(_)) | Err(Error::NotFound(_))
    ));
    drop(meta);
    engine.shutdown().unwrap();
}

/// `start_with_task` runs the task once on every shard's executor, where it
/// can use the engine asynchronously (as the server's listeners do).
#[test]
fn a_task_runs_on_every_shard_and_uses_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = flume::unbounded::<(usize, String, u64)>();
    let task: rookery_engine::ShardTask = std::sync::Arc::new(move |shard, engine: Engine| {
        let tx = tx.clone();
        Box::pin(async move {
            let thread = std::thread::current().name().unwrap_or("").to_string();
            let ack = engine.post(100 + shard as u64, 1, "", "from a shard").await;
            let _ = tx.send((shard, thread, ack.map(|a| a.seq).unwrap_or(0)));
        })
    });
    let engine = Engine::start_with_task(config(dir.path(), 2), task).unwrap();
    let mut seen: Vec<(usize, String, u64)> = (0..2)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    seen.sort();
    assert_eq!(
        seen.iter().map(|s| (s.0, s.2)).collect::<Vec<_>>(),
        [(0, 1), (1, 1)]
    );
    assert!(
        seen.iter().all(|s| s.1.starts_with("rookery-shard")),
        "{seen:?}"
    );
    engine.shutdown().unwrap();
}

/// Who may post is the owner's, in memory, and follows the member changes
/// that go through the engine: a private room takes posts from members
/// only (others get `NotFound`, as for a room that does not exist), a
/// member added or removed is let in or out at once, a removed member's
/// subscription ends with a `left` event (and a new one is refused), and a
/// room created through the
/// engine takes posts at once even if its id was asked about before.
#[test]
fn who_may_post_follows_member_changes_and_room_creation() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    cfg.rooms_must_exist = true;
    let engine = Engine::start(cfg).unwrap();
    let meta = engine.directory();
    let (alice, bob) = (
        meta.ensure_external_user("alice", 0).unwrap(),
        meta.ensure_external_user("bob", 0).unwrap(),
    );
    // An id nobody created yet: refused, and not remembered.
    let next = engine.create_room("first", false, alice).wait().unwrap() + 1;
    assert!(matches!(
        engine.post(next, alice, "", "early").wait(),
        Err(Error::NotFound(_))
    ));
    let room = engine.create_room("secret", true, alice).wait().unwrap();
    assert_eq!(room, next, "ids are handed out in order");
    engine
        .post(room, alice, "a1", "admins post")
        .wait()
        .unwrap();
    assert!(matches!(
        engine.post(room, bob, "b1", "not a member").wait(),
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        engine.add_member(room, bob, Role::Member).wait().unwrap(),
        None
    );
    engine.post(room, bob, "b2", "now a member").wait().unwrap();
    let sub = engine
        .subscribe_as(1, room, None, Some(bob))
        .wait()
        .unwrap();
    assert_eq!(
        engine.remove_member(room, bob).wait().unwrap(),
        Some(Role::Member)
    );
    let left = sub.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(left.kind(), EventKind::Left);
    assert_eq!(
        left.json(),
        format!(r#"{{"type":"left","room":{room},"reason":"removed"}}"#)
    );
    assert!(matches!(
        engine.post(room, bob, "b3", "removed").wait(),
        Err(Error::NotFound(_))
    ));
    // Nothing of the room reaches the removed member's subscription.
    engine.post(room, alice, "a2", "after").wait().unwrap();
    assert!(sub
        .recv_timeout(Duration::from_millis(200))
        .unwrap()
        .is_none());
    drop(sub);
    // Nor can they subscribe again, on either shard: the owner checks the
    // user before it serves a subscription's first page.
    for shard in 0..2 {
        assert!(matches!(
            engine.subscribe_as(shard, room, Some(0), Some(bob)).wait(),
            Err(Error::NotFound(_))
        ));
    }
    engine.shutdown().unwrap();
}

/// Tail caches stay within the shard's byte budget: the least recently
/// used rooms' caches are dropped, and a replay of such a room reads the
/// log, whole and in order.
#[test]
fn tail_caches_stay_within_their_budget_and_replays_read_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    cfg.tail_cache_bytes_max = 16 << 10;
    let engine = Engine::start(cfg).unwrap();
    let body = "x".repeat(200);
    let rooms: Vec<u64> = (1..=20).collect();
    let posts: Vec<_> = rooms
        .iter()
        .flat_map(|&room| (0..30).map(move |i| (room, i)))
        .map(|(room, i)| engine.post(room, 1, &format!("c{i}"), &body))
        .collect();
    for p in posts {
        p.wait().unwrap();
    }
    let m = engine.metrics().unwrap();
    assert!(m.counters.tail_evictions > 0, "{:?}", m.counters);
    assert!(
        m.gauges.tail_cache_bytes <= 2 * (16 << 10),
        "{} bytes cached",
        m.gauges.tail_cache_bytes
    );
    // The first room's cache went first; its replay comes from the log.
    let sub = engine.subscribe(rooms[0], Some(0)).wait().unwrap();
    let got = collect(&sub, 30);
    assert_eq!(seqs(&got), (1..=30).collect::<Vec<u64>>());
    assert!(engine.metrics().unwrap().counters.cache_misses > 0);
    drop(sub);
    engine.shutdown().unwrap();
}

#[test]
fn a_full_command_queue_refuses_with_busy_and_stores_only_what_it_took() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.command_queue_len_max = 1;
    let engine = Engine::start(cfg).unwrap();
    let room = 1;
    // Far faster than the shard can take them: most find the queue full.
    let pending: Vec<_> = (0..5_000)
        .map(|i| engine.post(room, 7, &format!("c{i}"), "hi"))
        .collect();
    let (mut stored, mut busy) = (0u64, 0u64);
    for p in pending {
        match p.wait() {
            Ok(ack) => {
                assert!(!ack.duplicate);
                stored += 1;
            }
            Err(Error::Busy(_)) => busy += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(busy > 0, "a queue of one never filled in 5,000 posts");
    assert_eq!(stored + busy, 5_000);
    assert_eq!(
        engine.last_seq(room).wait().unwrap(),
        stored,
        "refused posts stored nothing"
    );
    assert_eq!(engine.metrics().unwrap().commands_refused, busy);
    // The count went back down: the shard still takes work.
    let ack = engine
        .post(room, 7, "after", "still serving")
        .wait()
        .unwrap();
    assert_eq!(ack.seq, stored + 1);
    engine.shutdown().unwrap();
}

/// Posting counts as reading (issue 14 item 7): a poster's own messages are
/// never unread to them, at once and after a restart; others' are.
#[test]
fn posting_advances_the_posters_read_marker() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), 2)).unwrap();
    let meta = engine.directory();
    let alice = meta.ensure_external_user("alice", 0).unwrap();
    let bob = meta.ensure_external_user("bob", 0).unwrap();
    let room = engine.create_room("talk", false, alice).wait().unwrap();
    engine
        .membership(room, bob, bob, MemberOp::Join)
        .wait()
        .unwrap();
    for i in 0..120 {
        engine
            .post(room, alice, &format!("a{i}"), "mine")
            .wait()
            .unwrap();
    }
    assert_eq!(
        engine.unread(room, alice).wait().unwrap().unread(),
        0,
        "at once"
    );
    assert_eq!(engine.unread(room, bob).wait().unwrap().unread(), 120);
    engine.post(room, bob, "b1", "theirs").wait().unwrap();
    assert_eq!(engine.unread(room, alice).wait().unwrap().unread(), 1);
    assert_eq!(
        engine.unread(room, bob).wait().unwrap().unread(),
        0,
        "bob read up to his post"
    );
    // The receipts reach meta.redb (batched, within a flush period).
    let deadline = Instant::now() + Duration::from_secs(10);
    while meta.read_seq(room, alice).unwrap() < 120 {
        assert!(
            Instant::now() < deadline,
            "alice's receipt was never stored"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    engine
        .post(room, alice, "a-last", "mine again")
        .wait()
        .unwrap();
    engine.shutdown().unwrap();
    drop(meta);
    // After a restart (the last one flushed at shutdown).
    let engine = Engine::start(config(dir.path(), 2)).unwrap();
    assert_eq!(engine.unread(room, alice).wait().unwrap().unread(), 0);
    assert_eq!(
        engine.unread(room, bob).wait().unwrap().unread(),
        1,
        "alice's last"
    );
    engine.shutdown().unwrap();
}

/// `ensure_member` (a subscription that joins): a member stays as they
/// are (no role change, nothing written), a public room is joined, and a
/// banned user, a private room (invited or not) and a missing room are
/// refused, with nothing written.
#[test]
fn ensure_member_joins_public_rooms_only_and_keeps_roles() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    cfg.rooms_must_exist = true;
    let engine = Engine::start(cfg).unwrap();
    let meta = engine.directory();
    let [alice, bob, cid, dan] =
        ["alice", "bob", "cid", "dan"].map(|n| meta.ensure_external_user(n, 0).unwrap());
    let open = engine.create_room("open", false, alice).wait().unwrap();
    let secret = engine.create_room("secret", true, alice).wait().unwrap();
    // Posting before joining is refused; after, it is taken.
    assert!(matches!(
        engine.post(open, bob, "b0", "early").wait(),
        Err(Error::Forbidden(_))
    ));
    engine.ensure_member(open, bob).wait().unwrap();
    engine.post(open, bob, "b1", "joined").wait().unwrap();
    assert_eq!(meta.standing(open, bob).unwrap().role, Some(Role::Member));
    // Again, and for the owner: nothing changes.
    engine.ensure_member(open, bob).wait().unwrap();
    engine.ensure_member(open, alice).wait().unwrap();
    assert_eq!(meta.standing(open, alice).unwrap().role, Some(Role::Owner));
    // Banned: refused as banned, still not a member.
    engine.ensure_member(open, cid).wait().unwrap();
    engine
        .membership(open, alice, cid, MemberOp::Ban)
        .wait()
        .unwrap();
    assert!(matches!(
        engine.ensure_member(open, cid).wait(),
        Err(Error::Banned(_))
    ));
    assert_eq!(meta.standing(open, cid).unwrap().role, None);
    // A private room answers as a missing one, invited or not; the
    // invitation stays (accepted only by `Accept`).
    assert!(matches!(
        engine.ensure_member(secret, dan).wait(),
        Err(Error::NotFound(_))
    ));
    engine
        .membership(secret, alice, dan, MemberOp::Invite)
        .wait()
        .unwrap();
    assert!(matches!(
        engine.ensure_member(secret, dan).wait(),
        Err(Error::NotFound(_))
    ));
    let standing = meta.standing(secret, dan).unwrap();
    assert_eq!((standing.role, standing.invited), (None, true));
    engine
        .membership(secret, dan, dan, MemberOp::Accept)
        .wait()
        .unwrap();
    engine.ensure_member(secret, dan).wait().unwrap();
    // A room that does not exist.
    assert!(matches!(
        engine.ensure_member(secret + 100, bob).wait(),
        Err(Error::NotFound(_))
    ));
    engine.shutdown().unwrap();
}

#[test]
fn the_event_tap_sees_each_owned_event_once_in_room_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    let seen: Arc<Mutex<Vec<(u64, u64, EventKind)>>> = Default::default();
    let (sink, seen_all) = (seen.clone(), seen.clone());
    cfg.event_tap = Some(rookery_engine::EventTap::new(move |t| match t {
        rookery_engine::Tapped::Event(e) => {
            sink.lock().unwrap().push((e.room(), e.seq(), e.kind()))
        }
        rookery_engine::Tapped::Revoked { room, user, .. } => {
            sink.lock().unwrap().push((room, user, EventKind::Left))
        }
        rookery_engine::Tapped::RoomDeleted { room } => {
            sink.lock().unwrap().push((room, 0, EventKind::Left))
        }
    }));
    let engine = Engine::start(cfg).unwrap();
    let sub = engine.subscribe(2, None).wait().unwrap();
    for room in [1u64, 2] {
        for i in 0..5 {
            engine.post(room, 7, &format!("c{i}"), "hi").wait().unwrap();
        }
    }
    // A retry is not an event; an edit and typing are.
    engine.post(1, 7, "c0", "hi").wait().unwrap();
    engine.edit(2, 3, 7, "edited").wait().unwrap();
    engine.typing(2, 7).wait().unwrap();
    collect(&sub, 5);
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 12 {
        assert!(Instant::now() < deadline, "{:?}", seen.lock().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 12, "{seen:?}");
    for room in [1u64, 2] {
        let seqs: Vec<u64> = seen
            .iter()
            .filter(|(r, _, k)| *r == room && *k == EventKind::Message)
            .map(|(_, s, _)| *s)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5], "room {room}: {seen:?}");
    }
    let room2: Vec<EventKind> = seen.iter().filter(|(r, ..)| *r == 2).map(|e| e.2).collect();
    assert_eq!(
        &room2[5..],
        &[EventKind::Edit, EventKind::Typing],
        "{seen:?}"
    );
    // A member removed from a private room: its end is tapped, once.
    let meta = engine.directory();
    let [ann, bob] = ["ann", "bob"].map(|n| meta.ensure_external_user(n, 0).unwrap());
    let private = engine.create_room("p", true, ann).wait().unwrap();
    engine
        .add_member(private, bob, Role::Member)
        .wait()
        .unwrap();
    engine.remove_member(private, bob).wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ended = || {
        let all = seen_all.lock().unwrap();
        all.iter()
            .filter(|t| **t == (private, bob, EventKind::Left))
            .count()
    };
    while ended() == 0 {
        assert!(Instant::now() < deadline, "no revocation tapped");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(ended(), 1);
    engine.shutdown().unwrap();
}

#[test]
fn presence_counted_elsewhere_joins_the_engines_own() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), 2)).unwrap();
    let watcher = engine.subscribe(4, None).wait().unwrap();
    let local = engine.subscribe_as(1, 4, None, Some(9)).wait().unwrap();
    let states = |want: usize| -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < want {
            assert!(Instant::now() < deadline, "{got:?}");
            if let Some(e) = watcher.recv_timeout(Duration::from_millis(50)).unwrap() {
                if e.kind() == EventKind::Presence {
                    got.push(e.json().to_string());
                }
            }
        }
        got
    };
    assert!(states(1)[0].contains(r#""user":9,"state":"online""#));
    // Another node's subscriptions of user 9 and 11: 9 stays online until
    // both its own and the other's end; 11 comes and goes.
    engine.presence(4, 9, true).wait().unwrap();
    engine.presence(4, 11, true).wait().unwrap();
    assert_eq!(engine.online(4).wait().unwrap(), vec![9, 11]);
    drop(local);
    engine.presence(4, 11, false).wait().unwrap();
    assert_eq!(engine.online(4).wait().unwrap(), vec![9]);
    engine.presence(4, 9, false).wait().unwrap();
    // Dropping `local` reaches the room's owner from the subscription's
    // shard (shard to shard), the calls above from this thread (its
    // command queue): the two may arrive in either order, so 9 goes
    // offline once both have.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !engine.online(4).wait().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "9 stays online");
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = states(3);
    assert!(got[0].contains(r#""user":11,"state":"online""#), "{got:?}");
    assert!(got[1].contains(r#""user":11,"state":"offline""#), "{got:?}");
    assert!(got[2].contains(r#""user":9,"state":"offline""#), "{got:?}");
    engine.shutdown().unwrap();
}

/// The server (`SERVER_USER`, an application backend's API key) posts in
/// any room that exists without being a member, bans and unbans with an
/// owner's powers, and never joins, leaves or takes ownership; adding a
/// banned user is a conflict, for it as for any embedder.
#[test]
fn the_server_posts_and_moderates_without_being_a_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    cfg.rooms_must_exist = true;
    let engine = Engine::start(cfg).unwrap();
    let meta = engine.directory();
    let [alice, bob] = ["alice", "bob"].map(|n| meta.ensure_external_user(n, 0).unwrap());
    let room = engine.create_room("news", true, alice).wait().unwrap();
    engine.add_member(room, bob, Role::Member).wait().unwrap();
    let sub = engine
        .subscribe_as(1, room, None, Some(bob))
        .wait()
        .unwrap();
    let ack = engine
        .post(room, SERVER_USER, "s1", "from the server")
        .wait()
        .unwrap();
    assert_eq!((ack.seq, ack.duplicate), (1, false));
    let page = engine.history(room, Cursor::latest(10)).wait().unwrap();
    assert_eq!(page.messages[0].sender, SERVER_USER);
    assert!(matches!(
        engine.post(room + 1, SERVER_USER, "s2", "nowhere").wait(),
        Err(Error::NotFound(_))
    ));
    // A ban with an owner's powers ends bob's subscription; the owner is
    // beyond it.
    let ban = engine
        .membership(room, SERVER_USER, bob, MemberOp::Ban)
        .wait()
        .unwrap();
    assert!(ban.changed());
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let e = sub.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
        kinds.push(e.kind());
    }
    assert_eq!(kinds, [EventKind::Message, EventKind::Left]);
    assert!(matches!(
        engine
            .membership(room, SERVER_USER, alice, MemberOp::Ban)
            .wait(),
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        engine.add_member(room, bob, Role::Member).wait(),
        Err(Error::Conflict(_))
    ));
    // Nor is the owner given another role (it is handed on).
    assert!(matches!(
        engine.add_member(room, alice, Role::Admin).wait(),
        Err(Error::Conflict(_))
    ));
    assert_eq!(meta.standing(room, bob).unwrap().role, None);
    engine
        .membership(room, SERVER_USER, bob, MemberOp::Unban)
        .wait()
        .unwrap();
    assert_eq!(
        engine.add_member(room, bob, Role::Member).wait().unwrap(),
        None
    );
    for op in [MemberOp::Join, MemberOp::Leave, MemberOp::Transfer] {
        let target = if op == MemberOp::Transfer {
            bob
        } else {
            SERVER_USER
        };
        assert!(
            matches!(
                engine.membership(room, SERVER_USER, target, op).wait(),
                Err(Error::InvalidInput(_))
            ),
            "{op:?}"
        );
    }
    assert!(meta
        .members(room)
        .unwrap()
        .iter()
        .all(|(u, _)| *u != SERVER_USER));
    assert_eq!(meta.member_role(room, alice).unwrap(), Some(Role::Owner));
    engine.shutdown().unwrap();
}

/// A deleted room: posts under way finish first, every message is retired,
/// every subscription on every shard ends with `left {reason: "deleted"}`,
/// and the room answers as a missing one from then on (and after a
/// restart); its public name is free for a new room.
#[test]
fn a_deleted_room_ends_its_subscriptions_and_answers_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    cfg.rooms_must_exist = true;
    let deleted: Arc<Mutex<Vec<u64>>> = Default::default();
    let sink = deleted.clone();
    cfg.event_tap = Some(rookery_engine::EventTap::new(move |t| {
        if let rookery_engine::Tapped::RoomDeleted { room } = t {
            sink.lock().unwrap().push(room);
        }
    }));
    let engine = Engine::start(cfg.clone()).unwrap();
    let meta = engine.directory();
    let [alice, bob] = ["alice", "bob"].map(|n| meta.ensure_external_user(n, 0).unwrap());
    let room = engine.create_room("lobby", false, alice).wait().unwrap();
    engine.add_member(room, bob, Role::Member).wait().unwrap();
    let subs: Vec<Subscription> = (0..2)
        .map(|shard| {
            engine
                .subscribe_as(shard, room, None, Some(bob))
                .wait()
                .unwrap()
        })
        .collect();
    // A poster that goes on until the room is gone.
    let poster = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            let mut acked = 0u64;
            for i in 0..100_000 {
                match engine.post(room, alice, &format!("p{i}"), "hello").wait() {
                    Ok(_) => acked += 1,
                    Err(Error::NotFound(_)) => return acked,
                    Err(e) => panic!("post {i}: {e}"),
                }
            }
            panic!("the room was never deleted")
        })
    };
    while engine
        .history(room, Cursor::latest(1))
        .wait()
        .unwrap()
        .messages
        .is_empty()
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let gone = engine.delete_room(room).wait().unwrap();
    let acked = poster.join().unwrap();
    assert_eq!(gone.room.id, room);
    assert_eq!(gone.members, [(alice, Role::Owner), (bob, Role::Member)]);
    assert_eq!(
        gone.messages, acked,
        "every acknowledged post, and nothing more, retired"
    );
    for sub in &subs {
        let deadline = Instant::now() + Duration::from_secs(10);
        let left = loop {
            assert!(Instant::now() < deadline, "no left event");
            match sub.recv_timeout(Duration::from_millis(200)).unwrap() {
                Some(e) if e.kind() == EventKind::Left => break e,
                _ => {}
            }
        };
        assert_eq!(
            left.json(),
            format!(r#"{{"type":"left","room":{room},"reason":"deleted"}}"#)
        );
    }
    assert_eq!(*deleted.lock().unwrap(), [room]);
    // Missing from now on: posts, edits, subscriptions, members, a second delete.
    assert!(matches!(
        engine.post(room, alice, "late", "x").wait(),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        engine.edit(room, 1, alice, "x").wait(),
        Err(Error::NotFound(_))
    ));
    for shard in 0..2 {
        assert!(matches!(
            engine
                .subscribe_as(shard, room, Some(0), Some(alice))
                .wait(),
            Err(Error::NotFound(_))
        ));
    }
    assert!(matches!(
        engine.add_member(room, bob, Role::Member).wait(),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        engine.delete_room(room).wait(),
        Err(Error::NotFound(_))
    ));
    // Two deletes at once: one deletes, the other is refused (409 while
    // the first runs, 404 after it); the shard goes on.
    let twice = engine.create_room("twice", false, alice).wait().unwrap();
    engine.post(twice, alice, "", "one").wait().unwrap();
    let (first, second) = (engine.delete_room(twice), engine.delete_room(twice));
    let outcomes = [first.wait(), second.wait()];
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(outcomes
        .iter()
        .any(|o| matches!(o, Err(Error::Conflict(_)) | Err(Error::NotFound(_)))));
    assert!(engine
        .history(room, Cursor::after(0, 100))
        .wait()
        .unwrap()
        .messages
        .is_empty());
    assert!(meta.rooms_of(bob).unwrap().is_empty());
    // The name is free; the new room starts its own history.
    let again = engine.create_room("lobby", false, bob).wait().unwrap();
    assert!(again > room);
    assert_eq!(engine.post(again, bob, "", "fresh").wait().unwrap().seq, 1);
    drop((meta, subs));
    engine.shutdown().unwrap();
    // And so after a restart.
    let engine = Engine::start(cfg).unwrap();
    assert!(engine
        .history(room, Cursor::after(0, 100))
        .wait()
        .unwrap()
        .messages
        .is_empty());
    assert!(matches!(
        engine.post(room, alice, "x", "x").wait(),
        Err(Error::NotFound(_))
    ));
    assert_eq!(engine.directory().room(room).unwrap(), None);
    engine.shutdown().unwrap();
}

fn json(e: &Event) -> serde_json::Value {
    serde_json::from_str(e.json()).unwrap()
}

/// Replies through the engine: live events, history and replay (from the
/// tail cache and, after a restart, from the log) carry what a reply
/// answers, its thread and a quote of the answered message; threads page;
/// bad targets are refused and take no seq.
#[test]
fn replies_quote_what_they_answer_live_in_history_in_replay_and_in_threads() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), 2)).unwrap();
    let meta = engine.directory();
    let alice = meta.ensure_external_user("alice", 0).unwrap();
    let bob = meta.ensure_external_user("bob", 0).unwrap();
    let room = engine.create_room("general", false, alice).wait().unwrap();
    engine
        .membership(room, bob, bob, MemberOp::Join)
        .wait()
        .unwrap();
    let sub = engine.subscribe(room, Some(0)).wait().unwrap();
    let long = format!("  \n first line {}\nsecond line", "é".repeat(150));
    assert_eq!(engine.post(room, alice, "", &long).wait().unwrap().seq, 1);
    assert_eq!(engine.post(room, alice, "", "other").wait().unwrap().seq, 2);
    assert_eq!(
        engine
            .reply(room, bob, "r", "answer", 1)
            .wait()
            .unwrap()
            .seq,
        3
    );
    // A retry answers the original seq; a reply to a reply joins 1's thread.
    assert!(
        engine
            .reply(room, bob, "r", "answer", 1)
            .wait()
            .unwrap()
            .duplicate
    );
    assert_eq!(
        engine
            .reply(room, alice, "", "to bob", 3)
            .wait()
            .unwrap()
            .seq,
        4
    );
    engine.delete(room, 2, alice).wait().unwrap();
    for (to, want) in [(2u64, "deleted"), (9, "missing"), (0, "zero")] {
        let got = engine.reply(room, bob, "", "x", to).wait();
        assert!(
            matches!(got, Err(Error::NotFound(_) | Error::InvalidInput(_))),
            "{want}: {got:?}"
        );
    }
    assert_eq!(
        engine.last_seq(room).wait().unwrap(),
        4,
        "refusals take no seq"
    );

    let quote_1 = format!("first line {}", "é".repeat(94));
    assert_eq!(
        quote_1.len(),
        199,
        "cut to 200 bytes at a character boundary"
    );
    let check = |v: &serde_json::Value, to: u64, from: u64, text: &str, ctx: &str| {
        assert_eq!(v["reply_to"], to, "{ctx}: {v}");
        assert_eq!(v["thread"], 1, "{ctx}: {v}");
        assert_eq!(v["quote"]["from"], from, "{ctx}: {v}");
        assert_eq!(v["quote"]["text"], text, "{ctx}: {v}");
    };
    let live = collect(&sub, 4);
    let live: Vec<serde_json::Value> = live
        .iter()
        .filter(|e| e.kind() == EventKind::Message)
        .map(json)
        .collect();
    check(&live[2], 1, alice, &quote_1, "live");
    check(&live[3], 3, bob, "answer", "live");
    assert_eq!(live[0].get("reply_to"), None);
    drop(sub);

    engine
        .edit(room, 3, bob, "answer, edited\nmore")
        .wait()
        .unwrap();
    let verify = |engine: &Engine, ctx: &str| {
        let page = engine.history(room, Cursor::after(0, 10)).wait().unwrap();
        let views: Vec<serde_json::Value> = page
            .messages
            .iter()
            .map(|m| serde_json::to_value(m.view()).unwrap())
            .collect();
        assert_eq!(views[0]["replies"], 2, "{ctx}");
        assert_eq!(views[1].get("replies"), None, "{ctx}");
        check(&views[2], 1, alice, &quote_1, ctx);
        // The quote shows the edit, from the page itself.
        check(&views[3], 3, bob, "answer, edited", ctx);
        // Only the newest page: the quoted message is read apart.
        let newest = engine.history(room, Cursor::latest(1)).wait().unwrap();
        let v = serde_json::to_value(newest.messages[0].view()).unwrap();
        check(&v, 3, bob, "answer, edited", ctx);
        for seq in [1, 3, 4] {
            let t = engine
                .thread(room, seq, 0, 10, None)
                .wait()
                .unwrap()
                .unwrap();
            assert_eq!((t.first.seq, t.first.replies), (1, 2), "{ctx}");
            let seqs: Vec<u64> = t.messages.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, [3, 4], "{ctx}");
        }
        let t = engine.thread(room, 1, 0, 1, None).wait().unwrap().unwrap();
        assert_eq!((t.messages.len(), t.next), (1, Some(3)), "{ctx}");
        let t = engine.thread(room, 1, 3, 1, None).wait().unwrap().unwrap();
        assert_eq!((t.messages[0].seq, t.next), (4, None), "{ctx}");
        // A deleted message keeps its place (and would keep its thread).
        let t = engine.thread(room, 2, 0, 10, None).wait().unwrap().unwrap();
        assert_eq!(
            (t.first.body.as_deref(), t.messages.len()),
            (None, 0),
            "{ctx}"
        );
        assert!(
            engine
                .thread(room, 9, 0, 10, None)
                .wait()
                .unwrap()
                .is_none(),
            "{ctx}"
        );
        // Replay after `since` quotes too.
        let sub = engine.subscribe(room, Some(2)).wait().unwrap();
        let replay: Vec<serde_json::Value> = collect(&sub, 2)
            .iter()
            .filter(|e| e.kind() == EventKind::Message)
            .map(json)
            .collect();
        check(&replay[0], 1, alice, &quote_1, ctx);
        assert_eq!(replay[1]["reply_to"], 3, "{ctx}");
    };
    verify(&engine, "running");
    engine.shutdown().unwrap();
    drop(meta);
    let engine = Engine::start(config(dir.path(), 2)).unwrap();
    verify(&engine, "restarted");
    engine.shutdown().unwrap();
}

/// Reactions through the engine: members only, one emoji each, live
/// `react` events, counts with the reader's own on history and thread
/// pages, counts (never anyone's own) on replays from the tail cache and
/// the log, and the same after a restart.
#[test]
fn reactions_are_stored_sent_counted_and_replayed() {
    // The canonical spelling: VS16 after every pictograph.
    const FAMILY: &str = "👨\u{FE0F}\u{200D}👩\u{FE0F}\u{200D}👧\u{FE0F}";
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path(), 2)).unwrap();
    let meta = engine.directory();
    let alice = meta.ensure_external_user("alice", 0).unwrap();
    let bob = meta.ensure_external_user("bob", 0).unwrap();
    let carol = meta.ensure_external_user("carol", 0).unwrap();
    let room = engine.create_room("general", false, alice).wait().unwrap();
    engine
        .membership(room, bob, bob, MemberOp::Join)
        .wait()
        .unwrap();
    let sub = engine.subscribe(room, Some(0)).wait().unwrap();
    engine.post(room, alice, "", "hello").wait().unwrap();
    engine.post(room, alice, "", "second").wait().unwrap();
    assert!(engine.react(room, 1, bob, "👍", true).wait().unwrap());
    assert!(
        !engine.react(room, 1, bob, "👍", true).wait().unwrap(),
        "already on"
    );
    assert!(engine.react(room, 1, alice, "👍", true).wait().unwrap());
    assert!(engine.react(room, 1, alice, "👨‍👩‍👧", true).wait().unwrap());
    assert!(engine.react(room, 1, alice, "👨‍👩‍👧", false).wait().unwrap());
    assert!(engine.react(room, 2, alice, "1️⃣", true).wait().unwrap());
    // Refused: not a member, not one emoji, no such message.
    assert!(matches!(
        engine.react(room, 1, carol, "👍", true).wait(),
        Err(Error::Forbidden(_) | Error::NotFound(_))
    ));
    for bad in ["", "lol", "👍 ", "a👍", "\u{202e}👍", "1", &"👍".repeat(9)] {
        assert!(
            matches!(
                engine.react(room, 1, bob, bad, true).wait(),
                Err(Error::InvalidInput(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        engine.react(room, 9, bob, "👍", true).wait(),
        Err(Error::NotFound(_))
    ));
    // Live: the five changes, in order, after the two messages.
    let mut reacts = Vec::new();
    let mut counts: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reacts.len() < 5 {
        assert!(Instant::now() < deadline, "got {reacts:?}");
        if let Some(e) = sub.recv_timeout(Duration::from_millis(200)).unwrap() {
            if e.kind() == EventKind::React {
                let v = json(&e);
                reacts.push((
                    v["seq"].as_u64().unwrap(),
                    v["by"].as_u64().unwrap(),
                    v["emoji"].as_str().unwrap().to_string(),
                    v["on"].as_bool().unwrap(),
                ));
                counts.push(v["count"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(
        reacts,
        [
            (1, bob, "👍\u{FE0F}".to_string(), true),
            (1, alice, "👍\u{FE0F}".to_string(), true),
            (1, alice, FAMILY.to_string(), true),
            (1, alice, FAMILY.to_string(), false),
            (2, alice, "1️⃣".to_string(), true),
        ]
    );
    assert_eq!(
        counts,
        [1, 2, 1, 0, 1],
        "each event says the count after it"
    );
    drop(sub);
    let verify = |engine: &Engine, ctx: &str| {
        for (reader, me) in [(Some(bob), true), (Some(carol), false), (None, false)] {
            let page = engine
                .history_of(room, Cursor::after(0, 10), reader)
                .wait()
                .unwrap();
            let v = serde_json::to_value(page.messages[0].view()).unwrap();
            let mut want = serde_json::json!({"emoji": "👍\u{FE0F}", "count": 2});
            if me {
                want["me"] = true.into();
            }
            assert_eq!(
                v["reactions"],
                serde_json::json!([want]),
                "{ctx}: {reader:?}"
            );
            let t = engine
                .thread(room, 2, 0, 10, Some(alice))
                .wait()
                .unwrap()
                .unwrap();
            let first = serde_json::to_value(t.first.view()).unwrap();
            assert_eq!(
                first["reactions"],
                serde_json::json!([{"emoji": "1️⃣", "count": 1, "me": true}]),
                "{ctx}"
            );
        }
        // A replay (from the tail cache, or the log after a restart)
        // counts, with nobody's own.
        let sub = engine.subscribe(room, Some(0)).wait().unwrap();
        let replay: Vec<serde_json::Value> = collect(&sub, 2)
            .iter()
            .filter(|e| e.kind() == EventKind::Message)
            .map(json)
            .collect();
        assert_eq!(
            replay[0]["reactions"],
            serde_json::json!([{"emoji": "👍\u{FE0F}", "count": 2}]),
            "{ctx}"
        );
        assert_eq!(
            replay[1]["reactions"],
            serde_json::json!([{"emoji": "1️⃣", "count": 1}]),
            "{ctx}"
        );
    };
    verify(&engine, "running");
    engine.shutdown().unwrap();
    drop(meta);
    let engine = Engine::start(config(dir.path(), 2)).unwrap();
    verify(&engine, "restarted");
    engine.shutdown().unwrap();
}

/// Members see each other's receipts: a `receipt` event per stored
/// receipt of a member, at most one per user and room per
/// `receipt_event_interval` (the latest one shown when it has passed);
/// a non-member's receipt is stored but not shown; `receipts` pages every
/// member's marker, own posts counting as read.
#[test]
fn receipts_are_shown_to_members_paced_and_paged() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2);
    let interval = Duration::from_millis(400);
    cfg.receipt_event_interval = interval;
    let engine = Engine::start(cfg).unwrap();
    let meta = engine.directory();
    let [alice, bob, carol, dave] =
        ["alice", "bob", "carol", "dave"].map(|n| meta.ensure_external_user(n, 0).unwrap());
    let room = engine.create_room("seen", false, alice).wait().unwrap();
    for u in [bob, dave] {
        engine
            .membership(room, u, u, MemberOp::Join)
            .wait()
            .unwrap();
    }
    let watcher = engine.subscribe(room, Some(0)).wait().unwrap();
    for i in 0..10 {
        engine
            .post(room, alice, "", &format!("m{i}"))
            .wait()
            .unwrap();
    }
    collect(&watcher, 10);

    let first = Instant::now();
    assert_eq!(engine.mark_read(room, bob, 3).wait().unwrap(), 3);
    assert_eq!(engine.mark_read(room, bob, 5).wait().unwrap(), 5);
    assert_eq!(engine.mark_read(room, bob, 7).wait().unwrap(), 7);
    assert_eq!(
        engine.mark_read(room, bob, 6).wait().unwrap(),
        7,
        "never back"
    );
    assert_eq!(engine.mark_read(room, carol, 5).wait().unwrap(), 5);
    assert_eq!(
        engine.mark_read(room, dave, 40).wait().unwrap(),
        10,
        "clamped"
    );

    let mut shown: Vec<(u64, u64, Instant)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Until bob's latest is shown, then two quiet intervals.
    let mut quiet_from = None;
    loop {
        let now = Instant::now();
        assert!(now < deadline, "receipts shown so far: {shown:?}");
        if quiet_from.is_some_and(|q: Instant| now.duration_since(q) > interval * 2) {
            break;
        }
        if let Some(e) = watcher.recv_timeout(Duration::from_millis(50)).unwrap() {
            assert_eq!(e.kind(), EventKind::Receipt, "{}", e.json());
            let v = json(&e);
            assert_eq!(
                (v["type"].as_str(), v["room"].as_u64()),
                (Some("receipt"), Some(room))
            );
            let (user, seq) = (v["user"].as_u64().unwrap(), v["seq"].as_u64().unwrap());
            shown.push((user, seq, Instant::now()));
            if (user, seq) == (bob, 7) {
                quiet_from = Some(Instant::now());
            }
        }
    }
    let of = |u: u64| -> Vec<u64> { shown.iter().filter(|s| s.0 == u).map(|s| s.1).collect() };
    assert_eq!(
        of(bob),
        [3, 7],
        "the first at once, the latest after the interval"
    );
    assert_eq!(of(dave), [10]);
    assert_eq!(of(carol), Vec::<u64>::new(), "not a member: read unseen");
    let bob_at: Vec<Instant> = shown.iter().filter(|s| s.0 == bob).map(|s| s.2).collect();
    assert!(
        bob_at[1].duration_since(first) >= interval,
        "one event per interval"
    );

    // A read that changes nothing shows nothing; a member removed while
    // their receipt waits is not shown.
    assert_eq!(engine.mark_read(room, bob, 7).wait().unwrap(), 7);
    assert_eq!(engine.mark_read(room, dave, 3).wait().unwrap(), 10);
    assert_eq!(engine.post(room, alice, "", "m11").wait().unwrap().seq, 11);
    assert_eq!(engine.mark_read(room, dave, 11).wait().unwrap(), 11);
    assert_eq!(engine.mark_read(room, bob, 8).wait().unwrap(), 8);
    assert_eq!(engine.mark_read(room, bob, 9).wait().unwrap(), 9);
    engine
        .membership(room, alice, bob, MemberOp::Remove)
        .wait()
        .unwrap();
    let until = Instant::now() + interval * 3;
    let mut after = Vec::new();
    while Instant::now() < until {
        if let Some(e) = watcher.recv_timeout(Duration::from_millis(50)).unwrap() {
            let v = json(&e);
            after.push(format!("{}:{}:{}", v["type"], v["user"], v["seq"]));
        }
    }
    assert_eq!(
        after,
        [
            "\"msg\":null:11".to_string(),
            format!("\"receipt\":{dave}:11"),
            format!("\"receipt\":{bob}:8"),
        ],
        "no event for unchanged reads, none for bob's 9 once removed"
    );
    engine
        .membership(room, bob, bob, MemberOp::Join)
        .wait()
        .unwrap();

    // Every member's marker; alice's own posts count as read.
    let page = engine.receipts(room, 0, 10).wait().unwrap();
    assert_eq!(page.items, [(alice, 11), (bob, 9), (dave, 11)]);
    assert_eq!(page.next, None);
    let page = engine.receipts(room, 0, 2).wait().unwrap();
    assert_eq!(page.items, [(alice, 11), (bob, 9)]);
    assert_eq!(page.next, Some(bob));
    let rest = engine.receipts(room, bob, 2).wait().unwrap();
    assert_eq!(rest.items, [(dave, 11)]);
    assert!(matches!(
        engine.receipts(room + 1000, 0, 10).wait(),
        Err(Error::NotFound(_) | Error::Storage(_))
    ));
    drop(watcher);
    drop(meta);
    engine.shutdown().unwrap();
    // Markers are durable: they survive a restart.
    let engine = Engine::start(config(dir.path(), 2)).unwrap();
    let page = engine.receipts(room, 0, 10).wait().unwrap();
    assert_eq!(page.items, [(alice, 11), (bob, 9), (dave, 11)]);
    engine.shutdown().unwrap();
}
