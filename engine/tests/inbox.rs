//! Inboxes: one consumer for many subscriptions (as one connection follows
//! many rooms): per-subscription order, one byte bound for the consumer,
//! unsubscribe of one room, slow-consumer close of the whole inbox, and
//! clean ends.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rookery_engine::{Delivery, Engine, EngineConfig, Error, EventKind, Inbox};

fn config(dir: &Path) -> EngineConfig {
    let mut cfg = common::small_config(dir, 2);
    cfg.storage.durability = rookery_engine::Durability::None;
    cfg
}

/// Receives until `want` message deliveries arrived, by subscription.
fn drain(inbox: &Inbox, want: usize) -> HashMap<u64, Vec<u64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut by_sub: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut n = 0;
    while n < want {
        assert!(Instant::now() < deadline, "timed out with {n} of {want}");
        let Some(Delivery { sub, event }) = inbox.recv_timeout(Duration::from_millis(200)).unwrap()
        else {
            continue;
        };
        if event.kind() == EventKind::Message {
            by_sub.entry(sub).or_default().push(event.seq());
            n += 1;
        }
    }
    by_sub
}

/// Two rooms owned by different shards.
fn two_rooms(engine: &Engine) -> (u64, u64) {
    let a = 1;
    let b = (2..)
        .find(|r| engine.shard_of(*r) != engine.shard_of(a))
        .unwrap();
    (a, b)
}

#[test]
fn one_inbox_follows_rooms_on_both_shards_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path())).unwrap();
    let (a, b) = two_rooms(&engine);
    let inbox = engine.inbox_on(0).unwrap();
    let sa = inbox.subscribe(a, Some(0)).wait().unwrap();
    let sb = inbox.subscribe(b, Some(0)).wait().unwrap();
    assert_ne!(sa, sb);
    let posters: Vec<_> = [a, b]
        .into_iter()
        .map(|room| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for i in 0..300 {
                    engine.post(room, 1, "", &format!("m{i}")).wait().unwrap();
                }
            })
        })
        .collect();
    for p in posters {
        p.join().unwrap();
    }
    let got = drain(&inbox, 600);
    let all: Vec<u64> = (1..=300).collect();
    assert_eq!(got[&sa], all);
    assert_eq!(got[&sb], all);
    assert!(inbox.try_recv().unwrap().is_none(), "nothing extra");
    drop(inbox);
    engine.shutdown().unwrap();
}

#[test]
fn an_inbox_is_bounded_as_a_whole_and_catches_every_room_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.outbound_queue_bytes_max = 32 << 10;
    cfg.volatile_queue_bytes_max = 8 << 10;
    let bound = cfg.outbound_queue_bytes_max;
    let engine = Engine::start(cfg).unwrap();
    let (a, b) = two_rooms(&engine);
    let inbox = engine.inbox_on(1).unwrap();
    let sa = inbox.subscribe(a, Some(0)).wait().unwrap();
    let sb = inbox.subscribe(b, Some(0)).wait().unwrap();
    const N: u64 = 5_000;
    let posters: Vec<_> = [a, b]
        .into_iter()
        .map(|room| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let body = "x".repeat(100);
                for _ in 0..N {
                    engine.post(room, 1, "", &body).wait().unwrap();
                }
            })
        })
        .collect();
    let mut max_queued = 0;
    while posters.iter().any(|t| !t.is_finished()) {
        max_queued = max_queued.max(inbox.queued_bytes());
        std::thread::sleep(Duration::from_millis(1));
    }
    for p in posters {
        p.join().unwrap();
    }
    assert!(max_queued <= bound, "queued {max_queued} > bound {bound}");
    let lagging = engine.metrics().unwrap().gauges.lagging;
    assert_eq!(lagging, 2, "both rooms stopped at the inbox's bound");
    let got = drain(&inbox, 2 * N as usize);
    let all: Vec<u64> = (1..=N).collect();
    assert_eq!(got[&sa], all);
    assert_eq!(got[&sb], all);
    drop(inbox);
    engine.shutdown().unwrap();
}

#[test]
fn unsubscribing_one_room_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path())).unwrap();
    let (a, b) = two_rooms(&engine);
    let inbox = engine.inbox_on(0).unwrap();
    let sa = inbox.subscribe(a, None).wait().unwrap();
    let sb = inbox.subscribe(b, None).wait().unwrap();
    inbox.unsubscribe(sa);
    // The unsubscribe travels on the same queue as the next subscribe, so
    // once this resolves the first is gone.
    let sb2 = inbox.subscribe(b, None).wait().unwrap();
    engine.post(a, 1, "", "to a").wait().unwrap();
    engine.post(b, 1, "", "to b").wait().unwrap();
    let got = drain(&inbox, 2);
    assert!(!got.contains_key(&sa), "{got:?}");
    assert_eq!((got[&sb].clone(), got[&sb2].clone()), (vec![1], vec![1]));
    assert_eq!(engine.metrics().unwrap().gauges.subscribers, 2);
    drop(inbox);
    // Dropping the inbox ends its subscriptions.
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.metrics().unwrap().gauges.subscribers != 0 {
        assert!(
            Instant::now() < deadline,
            "subscriptions outlived their inbox"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    engine.shutdown().unwrap();
}

#[test]
fn a_stuck_inbox_is_closed_whole_and_refuses_new_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.outbound_queue_bytes_max = 8 << 10;
    cfg.volatile_queue_bytes_max = 4 << 10;
    cfg.stuck_timeout = Duration::from_millis(100);
    let engine = Engine::start(cfg).unwrap();
    let (a, b) = two_rooms(&engine);
    let inbox = engine.inbox_on(0).unwrap();
    inbox.subscribe(a, None).wait().unwrap();
    inbox.subscribe(b, None).wait().unwrap();
    let body = "y".repeat(200);
    for _ in 0..200 {
        engine.post(a, 1, "", &body).wait().unwrap();
    }
    // Nothing read: closed once stuck for the timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.counters().unwrap().slow_closed < 1 {
        assert!(Instant::now() < deadline, "the stuck inbox was not closed");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Whatever was queued is still readable; then the inbox reports why it
    // ended.
    let end = loop {
        match inbox.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stuck inbox was not closed"),
            Err(e) => break e,
        }
    };
    assert!(matches!(end, Error::SlowConsumer), "{end}");
    assert!(matches!(
        inbox.subscribe(b, None).wait(),
        Err(Error::SlowConsumer)
    ));
    let m = engine.metrics().unwrap();
    assert_eq!(m.counters.slow_closed, 1);
    assert_eq!(m.gauges.subscribers, 0, "both rooms of the inbox ended");
    // The engine still serves others.
    let fresh = engine.subscribe(b, None).wait().unwrap();
    engine.post(b, 1, "", "still here").wait().unwrap();
    assert_eq!(fresh.recv().unwrap().seq(), 1);
    drop((inbox, fresh));
    engine.shutdown().unwrap();
}

#[test]
fn a_bad_shard_is_refused_and_shutdown_ends_inboxes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(config(dir.path())).unwrap();
    assert!(matches!(engine.inbox_on(2), Err(Error::InvalidInput(_))));
    assert!(matches!(
        engine.subscribe_on(7, 1, None).wait(),
        Err(Error::InvalidInput(_))
    ));
    let inbox = engine.inbox();
    inbox.subscribe(1, None).wait().unwrap();
    let empty = engine.inbox();
    engine.clone().shutdown().unwrap();
    assert!(matches!(inbox.recv(), Err(Error::ShutDown)));
    assert!(matches!(empty.recv(), Err(Error::ShutDown)));
    assert!(matches!(
        inbox.subscribe(1, None).wait(),
        Err(Error::ShutDown)
    ));
}
