//! Model test: random sequences of post (with repeated client ids),
//! subscribe (on either shard, with or without `since`), partial reads,
//! unsubscribe and restart, against a plain in-memory model of each room.
//! Every subscriber's stream must be exactly the model's messages after its
//! `since`, in order, once each. Seeded: a failure prints its seed; rerun
//! one with `ENGINE_MODEL_SEED=N`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rookery_engine::{Engine, EngineConfig, EventKind, Subscription};

const ROOMS: u64 = 3;

fn config(dir: &Path) -> EngineConfig {
    let mut cfg = common::small_config(dir, 2);
    cfg.storage.segment_bytes_max = 1 << 20;
    cfg.storage.checkpoint_interval_ms = 20;
    cfg.tail_cache_len = 6;
    cfg.catch_up_page_len = 4;
    cfg.outbound_queue_bytes_max = 4096;
    cfg.volatile_queue_bytes_max = 1024;
    cfg
}

/// A subscription and what it has delivered so far.
struct Watcher {
    sub: Subscription,
    room: u64,
    /// First seq it must deliver; `None` for "from the head": then the
    /// first delivered seq must be above `floor`.
    first: Option<u64>,
    floor: u64,
    got: Vec<(u64, String)>,
}

impl Watcher {
    fn read(&mut self, max: usize) {
        for _ in 0..max {
            match self.sub.try_recv() {
                Ok(Some(e)) if e.kind() == EventKind::Message => {
                    let v: serde_json::Value = serde_json::from_str(e.json()).unwrap();
                    self.got
                        .push((e.seq(), v["body"].as_str().unwrap().to_string()));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Reads until it has delivered `last` (or the stream ended).
    fn drain_to(&mut self, last: u64, ctx: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.got.last().map_or(0, |g| g.0) < last
            && last >= self.first.unwrap_or(self.floor + 1)
        {
            assert!(
                Instant::now() < deadline,
                "{ctx}: stuck at {:?} of {last}",
                self.got.last()
            );
            match self.sub.recv_timeout(Duration::from_millis(100)) {
                Ok(Some(e)) if e.kind() == EventKind::Message => {
                    let v: serde_json::Value = serde_json::from_str(e.json()).unwrap();
                    self.got
                        .push((e.seq(), v["body"].as_str().unwrap().to_string()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }

    /// What it got is a contiguous run of the room's messages starting where
    /// it must, in order, once each (complete up to `last` when `complete`).
    fn check(&self, room: &[String], last: u64, complete: bool, ctx: &str) {
        let Some(&(start, _)) = self.got.first() else {
            assert!(
                !complete || self.first.is_none_or(|f| f > last),
                "{ctx}: room {} delivered nothing",
                self.room
            );
            return;
        };
        match self.first {
            Some(f) => assert_eq!(start, f, "{ctx}: room {} first seq", self.room),
            None => assert!(
                start > self.floor,
                "{ctx}: room {} live-only started at {start} <= {}",
                self.room,
                self.floor
            ),
        }
        for (i, (seq, body)) in self.got.iter().enumerate() {
            assert_eq!(
                *seq,
                start + i as u64,
                "{ctx}: room {} gap or duplicate at {i}",
                self.room
            );
            assert_eq!(
                body,
                &room[*seq as usize - 1],
                "{ctx}: room {} seq {seq} body",
                self.room
            );
        }
        if complete {
            assert_eq!(
                self.got.last().unwrap().0,
                last,
                "{ctx}: room {} incomplete",
                self.room
            );
        }
    }
}

fn one_run(seed: u64, dir: &Path) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut engine = Engine::start(config(dir)).unwrap();
    let mut model: HashMap<u64, Vec<String>> = HashMap::new();
    let mut keys: HashMap<(u64, String), u64> = HashMap::new();
    let mut watchers: Vec<Watcher> = Vec::new();
    for step in 0..160 {
        let ctx = format!("seed {seed} step {step}");
        let room = rng.gen_range(1..=ROOMS);
        let last = model.get(&room).map_or(0, |v| v.len() as u64);
        match rng.gen_range(0..100) {
            0..=49 => {
                let burst = rng.gen_range(1..12);
                let pending: Vec<_> = (0..burst)
                    .map(|i| {
                        let key = if rng.gen_bool(0.2) {
                            format!("k{}", rng.gen_range(0..6))
                        } else {
                            String::new()
                        };
                        let body = format!("s{step}-{i}");
                        (key.clone(), body.clone(), engine.post(room, 1, &key, &body))
                    })
                    .collect();
                // Replies come in seq order per room only for new messages;
                // apply the model in reply order of seqs.
                let mut acks: Vec<_> = pending
                    .into_iter()
                    .map(|(k, b, p)| (k, b, p.wait().unwrap()))
                    .collect();
                acks.sort_by_key(|(_, _, a)| (a.duplicate, a.seq));
                for (key, body, ack) in acks {
                    let msgs = model.entry(room).or_default();
                    if ack.duplicate {
                        assert_eq!(
                            keys.get(&(room, key.clone())),
                            Some(&ack.seq),
                            "{ctx}: duplicate of what"
                        );
                        continue;
                    }
                    assert_eq!(ack.seq, msgs.len() as u64 + 1, "{ctx}: dense seq");
                    msgs.push(body);
                    if !key.is_empty() {
                        if let Some(old) = keys.insert((room, key.clone()), ack.seq) {
                            panic!(
                                "{ctx}: key {key} of room {room} was seq {old}, now new seq {}",
                                ack.seq
                            );
                        }
                    }
                }
            }
            50..=64 => {
                let shard = rng.gen_range(0..2);
                let since = if rng.gen_bool(0.25) {
                    None
                } else {
                    Some(rng.gen_range(0..=last))
                };
                let sub = engine.subscribe_on(shard, room, since).wait().unwrap();
                watchers.push(Watcher {
                    sub,
                    room,
                    first: since.map(|s| s + 1),
                    floor: last,
                    got: Vec::new(),
                });
            }
            65..=84 => {
                if !watchers.is_empty() {
                    let i = rng.gen_range(0..watchers.len());
                    let n = rng.gen_range(0..30);
                    watchers[i].read(n);
                }
            }
            85..=94 => {
                if !watchers.is_empty() {
                    let mut w = watchers.swap_remove(rng.gen_range(0..watchers.len()));
                    w.read(usize::MAX);
                    let room_msgs = model.get(&w.room).cloned().unwrap_or_default();
                    w.check(&room_msgs, room_msgs.len() as u64, false, &ctx);
                }
            }
            _ => {
                for w in &mut watchers {
                    w.read(usize::MAX);
                }
                engine.shutdown().unwrap();
                for w in watchers.drain(..) {
                    let room_msgs = model.get(&w.room).cloned().unwrap_or_default();
                    w.check(&room_msgs, room_msgs.len() as u64, false, &ctx);
                }
                engine = Engine::start(config(dir)).unwrap();
            }
        }
    }
    for w in &mut watchers {
        let last = model.get(&w.room).map_or(0, |v| v.len() as u64);
        w.drain_to(last, &format!("seed {seed} final"));
        let room_msgs = model.get(&w.room).cloned().unwrap_or_default();
        w.check(&room_msgs, last, true, &format!("seed {seed} final"));
    }
    drop(watchers);
    engine.shutdown().unwrap();
}

#[test]
fn engine_matches_the_model() {
    let seeds: Vec<u64> = match std::env::var("ENGINE_MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("ENGINE_MODEL_SEED is a number")],
        Err(_) => {
            let base: u64 = rand::random();
            (0..6).map(|i| base.wrapping_add(i)).collect()
        }
    };
    for seed in seeds {
        println!("engine model seed {seed}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let result = std::panic::catch_unwind(|| one_run(seed, &path));
        assert!(
            result.is_ok(),
            "engine model test failed; rerun with ENGINE_MODEL_SEED={seed}"
        );
    }
}
