//! Model test: random sequences of appends (with repeated client ids),
//! edits, deletes, history reads, compactions, rooms retired whole (a
//! deleted room), reopens and index rebuilds, checked
//! against a plain in-memory model. Seeded and reproducible: a failure
//! prints its seed; rerun one with `MODEL_SEED=N`.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rookery_storage::*;

const ROOMS: u64 = 4;
const WINDOW: usize = 16;

#[derive(Debug, Clone)]
struct ModelMsg {
    sender: u64,
    client_id: String,
    ts_ms: u64,
    body: String,
    edit: Option<String>,
    deleted: bool,
}

#[derive(Default)]
struct Model {
    rooms: HashMap<u64, Vec<ModelMsg>>,
    /// Per room, the lowest seq not retired (absent: 1).
    low: HashMap<u64, u64>,
}

impl Model {
    fn append(
        &mut self,
        room: u64,
        sender: u64,
        client_id: &str,
        ts_ms: u64,
        body: &str,
    ) -> Appended {
        let low = self.low(room);
        let msgs = self.rooms.entry(room).or_default();
        let last = msgs.len();
        if !client_id.is_empty() {
            let from = last.saturating_sub(WINDOW).max(low as usize - 1);
            for (i, m) in msgs.iter().enumerate().skip(from) {
                if m.sender == sender && m.client_id == client_id {
                    return Appended::Duplicate {
                        seq: i as u64 + 1,
                        ts_ms: m.ts_ms,
                    };
                }
            }
        }
        let ts_ms = msgs.last().map_or(ts_ms, |m| m.ts_ms.max(ts_ms));
        msgs.push(ModelMsg {
            sender,
            client_id: client_id.into(),
            ts_ms,
            body: body.into(),
            edit: None,
            deleted: false,
        });
        Appended::New {
            seq: msgs.len() as u64,
            ts_ms,
        }
    }

    fn low(&self, room: u64) -> u64 {
        self.low.get(&room).copied().unwrap_or(1)
    }

    /// Retires every message of `room`; how many were live.
    fn retire(&mut self, room: u64) -> u64 {
        let next = self.rooms.get(&room).map_or(0, Vec::len) as u64 + 1;
        let low = self.low(room);
        self.low.insert(room, next);
        next - low
    }

    fn change(&mut self, room: u64, seq: u64, edit: Option<&str>) -> bool {
        if seq < self.low(room) {
            return false;
        }
        let Some(m) = self
            .rooms
            .get_mut(&room)
            .and_then(|v| v.get_mut((seq as usize).wrapping_sub(1)))
        else {
            return false;
        };
        if m.deleted {
            return false;
        }
        match edit {
            Some(b) => m.edit = Some(b.into()),
            None => m.deleted = true,
        }
        true
    }

    /// Expected (seq, body) of a history page.
    fn page(&self, room: u64, c: Cursor) -> Vec<(u64, Option<String>)> {
        let msgs = self.rooms.get(&room).cloned().unwrap_or_default();
        let low = self.low(room);
        let mut all: Vec<(u64, Option<String>)> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| {
                (
                    i as u64 + 1,
                    if m.deleted {
                        None
                    } else {
                        Some(m.edit.clone().unwrap_or(m.body.clone()))
                    },
                )
            })
            .filter(|(s, _)| *s >= low)
            .filter(|(s, _)| c.after.is_none_or(|a| *s > a) && c.before.is_none_or(|b| *s < b))
            .collect();
        let limit = c.limit.max(1);
        match c.order {
            Order::NewestFirst => {
                all.reverse();
                all.truncate(limit);
            }
            Order::OldestFirst => all.truncate(limit),
        }
        all
    }
}

fn random_cursor(rng: &mut StdRng, last: u64) -> Cursor {
    let limit = rng.gen_range(0..12);
    let pick = |rng: &mut StdRng| {
        if rng.gen_bool(0.3) {
            None
        } else {
            Some(rng.gen_range(0..=last + 2))
        }
    };
    Cursor {
        after: pick(rng),
        before: pick(rng),
        limit,
        order: if rng.gen_bool(0.5) {
            Order::NewestFirst
        } else {
            Order::OldestFirst
        },
    }
}

async fn one_run(seed: u64, dir: PathBuf) {
    let mut cfg = config(&dir);
    cfg.idempotency_window_len = WINDOW;
    cfg.compaction_interval_ms = 0;
    cfg.compaction_keep_recent_segments = 0;
    cfg.compaction_bytes_per_s_max = 0;
    let mut rng = StdRng::seed_from_u64(seed);
    let store = open(&cfg);
    let mut shard = store.open_shard(0).await.unwrap();
    let mut model = Model::default();
    let mut ts = 0u64;
    for step in 0..400 {
        ts += rng.gen_range(0..3);
        let room = rng.gen_range(0..ROOMS);
        let last = model.rooms.get(&room).map_or(0, |v| v.len() as u64);
        let ctx = format!("seed {seed} step {step}");
        match rng.gen_range(0..100) {
            0..=44 => {
                let sender = rng.gen_range(1..4);
                let cid = if rng.gen_bool(0.3) {
                    String::new()
                } else {
                    format!("k{}", rng.gen_range(0..25))
                };
                let body = format!("b{step}");
                let got = shard
                    .append_message(room, sender, &cid, ts, &body)
                    .await
                    .unwrap();
                assert_eq!(
                    got,
                    model.append(room, sender, &cid, ts, &body),
                    "{ctx}: append"
                );
            }
            45..=54 => {
                // A burst of concurrent appends with fresh keys.
                let n = rng.gen_range(2..20);
                let tasks: Vec<_> = (0..n)
                    .map(|i| {
                        let shard = shard.clone();
                        let cid = format!("burst-{step}-{i}");
                        glommio::spawn_local(async move {
                            shard.append_message(room, 9, &cid, ts, &cid).await.unwrap()
                        })
                    })
                    .collect();
                let mut got = Vec::new();
                for t in tasks {
                    got.push(t.await);
                }
                // Seqs are given in queue order, which is task order.
                for (i, g) in got.into_iter().enumerate() {
                    let cid = format!("burst-{step}-{i}");
                    assert_eq!(g, model.append(room, 9, &cid, ts, &cid), "{ctx}: burst {i}");
                }
            }
            55..=62 => {
                let seq = rng.gen_range(0..=last + 1);
                let body = format!("e{step}");
                let ok = shard.edit(room, seq, 1, ts, &body).await.is_ok();
                assert_eq!(
                    ok,
                    model.change(room, seq, Some(&body)),
                    "{ctx}: edit {seq}"
                );
            }
            63..=67 => {
                let seq = rng.gen_range(0..=last + 1);
                let ok = shard.delete(room, seq, 1, ts).await.is_ok();
                assert_eq!(ok, model.change(room, seq, None), "{ctx}: delete {seq}");
            }
            68..=90 => {
                let c = random_cursor(&mut rng, last);
                let page = shard.history(room, c).await.unwrap();
                let got: Vec<(u64, Option<String>)> = page
                    .items
                    .iter()
                    .map(|i| (i.seq(), i.body().map(String::from)))
                    .collect();
                assert_eq!(got, model.page(room, c), "{ctx}: history {c:?}");
            }
            91..=92 => {
                // Seal what is written and rewrite every run.
                shard.compact_all().await.unwrap();
            }
            93 => {
                // One background step (the oldest run, and small compacted
                // segments merged).
                shard.compact().await.unwrap();
            }
            94..=96 => {
                shard.close().await.unwrap();
                drop(shard);
                shard = store.open_shard(0).await.unwrap();
            }
            97 => {
                // The room is deleted: every message retired at once.
                let got = shard.retire_room(room).await.unwrap().messages;
                assert_eq!(got, model.retire(room), "{ctx}: retire");
            }
            _ => {
                shard.close().await.unwrap();
                drop(shard);
                std::fs::remove_file(dir.join("shard-0/index.redb")).unwrap();
                shard = store.open_shard(0).await.unwrap();
            }
        }
    }
    for room in 0..ROOMS {
        let all = Cursor::after(0, 100_000);
        let got: Vec<(u64, Option<String>)> = shard
            .history(room, all)
            .await
            .unwrap()
            .items
            .iter()
            .map(|i| (i.seq(), i.body().map(String::from)))
            .collect();
        assert_eq!(got, model.page(room, all), "seed {seed}: final room {room}");
    }
    shard.close().await.unwrap();
}

#[test]
fn storage_matches_the_model() {
    let seeds: Vec<u64> = match std::env::var("MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("MODEL_SEED is a number")],
        Err(_) => {
            let base: u64 = rand::random();
            (0..12).map(|i| base.wrapping_add(i)).collect()
        }
    };
    for seed in seeds {
        println!("model seed {seed}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let result = std::panic::catch_unwind(|| run(move || one_run(seed, path)));
        assert!(
            result.is_ok(),
            "model test failed; rerun with MODEL_SEED={seed}"
        );
    }
}
