//! Behaviour of one shard store: appends, group commit, history cursors,
//! idempotency, edits and deletes, limits, durability modes, reopen.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use common::*;
use rookery_storage::*;

fn seqs(page: &Page) -> Vec<u64> {
    page.items.iter().map(|i| i.seq()).collect()
}

#[test]
fn many_concurrent_appenders_resolve_once_with_dense_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        let seen: Rc<RefCell<HashMap<u64, Vec<u64>>>> = Rc::default();
        let tasks: Vec<_> = (0..256u64)
            .map(|w| {
                let (shard, seen) = (shard.clone(), seen.clone());
                glommio::spawn_local(async move {
                    for i in 0..40u64 {
                        let room = (w + i) % 5;
                        let a = shard
                            .append_message(room, w, &format!("{w}-{i}"), i, "body")
                            .await
                            .unwrap();
                        assert!(matches!(a, Appended::New { .. }));
                        seen.borrow_mut().entry(room).or_default().push(a.seq());
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let stats = shard.stats();
        assert_eq!(stats.records, 256 * 40);
        assert!(
            stats.batches < stats.records / 4,
            "group commit batched: {stats:?}"
        );
        // The fsync batch size histogram: every record is in a synced
        // batch, and batches hold more than one record.
        let buckets: u64 = stats.sync_batch_records.iter().sum();
        assert!(buckets >= 1 && buckets <= stats.syncs, "{stats:?}");
        assert_eq!(
            stats.unsynced_records, 0,
            "sync mode leaves nothing unsynced"
        );
        assert!(
            stats.sync_batch_records[1..].iter().sum::<u64>() > 0,
            "some syncs covered several records: {stats:?}"
        );
        let mut total = 0;
        for (room, mut got) in seen.take() {
            got.sort_unstable();
            let n = got.len() as u64;
            assert_eq!(
                got,
                (1..=n).collect::<Vec<_>>(),
                "room {room}: every seq once, dense"
            );
            assert_eq!(shard.last_seq(room), n);
            let page = shard.history(room, Cursor::after(0, 10_000)).await.unwrap();
            assert_eq!(seqs(&page), (1..=n).collect::<Vec<_>>());
            total += n;
        }
        assert_eq!(total, 256 * 40);
        shard.close().await.unwrap();
    });
}

#[test]
fn history_cursors_at_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        for i in 1..=130u64 {
            shard
                .append_message(1, 9, "", i, &format!("m{i}"))
                .await
                .unwrap();
        }
        let h = |c: Cursor| {
            let shard = shard.clone();
            async move { shard.history(1, c).await.unwrap() }
        };
        // Newest first, paging backwards to the start.
        let p = h(Cursor::latest(50)).await;
        assert_eq!(seqs(&p), (81..=130).rev().collect::<Vec<_>>());
        let p2 = h(p.next.unwrap()).await;
        assert_eq!(seqs(&p2), (31..=80).rev().collect::<Vec<_>>());
        let p3 = h(p2.next.unwrap()).await;
        assert_eq!(seqs(&p3), (1..=30).rev().collect::<Vec<_>>());
        assert!(p3.next.is_none());
        // Oldest first, paging forwards to the end.
        let p = h(Cursor::after(0, 64)).await;
        assert_eq!(seqs(&p), (1..=64).collect::<Vec<_>>());
        let p = h(p.next.unwrap()).await;
        assert_eq!(seqs(&p), (65..=128).collect::<Vec<_>>());
        let p = h(p.next.unwrap()).await;
        assert_eq!(seqs(&p), vec![129, 130]);
        assert!(p.next.is_none());
        // Edges.
        assert!(h(Cursor::before(1, 10)).await.items.is_empty());
        assert!(h(Cursor::after(130, 10)).await.items.is_empty());
        assert!(h(Cursor::after(u64::MAX, 10)).await.items.is_empty());
        assert_eq!(seqs(&h(Cursor::before(u64::MAX, 2)).await), vec![130, 129]);
        assert_eq!(
            seqs(
                &h(Cursor {
                    after: Some(10),
                    before: Some(14),
                    limit: 10,
                    order: Order::NewestFirst
                })
                .await
            ),
            vec![13, 12, 11]
        );
        assert_eq!(
            seqs(
                &h(Cursor {
                    after: Some(10),
                    before: Some(11),
                    limit: 10,
                    order: Order::OldestFirst
                })
                .await
            ),
            Vec::<u64>::new()
        );
        assert_eq!(
            seqs(&h(Cursor::latest(0)).await),
            vec![130],
            "limit 0 is read as 1"
        );
        assert!(
            shard
                .history(2, Cursor::latest(10))
                .await
                .unwrap()
                .items
                .is_empty(),
            "unknown room is empty"
        );
        let one = shard.get(1, 64).await.unwrap().unwrap();
        assert_eq!(
            (one.seq(), one.body(), one.ts_ms(), one.sender()),
            (64, Some("m64"), 64, 9)
        );
        assert!(shard.get(1, 131).await.unwrap().is_none());
        assert!(shard.get(1, 0).await.unwrap().is_none());
        shard.close().await.unwrap();
    });
}

#[test]
fn idempotent_retries_return_the_original_seq_even_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.idempotency_window_len = 8;
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        let a = shard
            .append_message(3, 1, "k1", 100, "hello")
            .await
            .unwrap();
        assert_eq!(a, Appended::New { seq: 1, ts_ms: 100 });
        // Same key: original seq and ts, nothing stored.
        assert_eq!(
            shard
                .append_message(3, 1, "k1", 999, "other")
                .await
                .unwrap(),
            Appended::Duplicate { seq: 1, ts_ms: 100 }
        );
        // Same client id from another sender, or in another room: new.
        assert_eq!(
            shard
                .append_message(3, 2, "k1", 101, "x")
                .await
                .unwrap()
                .seq(),
            2
        );
        assert_eq!(
            shard
                .append_message(4, 1, "k1", 101, "x")
                .await
                .unwrap()
                .seq(),
            1
        );
        // Two concurrent sends with one key: one message.
        let (x, y) = futures_lite::future::zip(
            shard.append_message(3, 5, "race", 1, "a"),
            shard.append_message(3, 5, "race", 1, "a"),
        )
        .await;
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.seq(), y.seq());
        assert_eq!(shard.last_seq(3), 3);
        shard.close().await.unwrap();
        drop(shard);
        let shard = store.open_shard(0).await.unwrap();
        assert_eq!(
            shard.append_message(3, 1, "k1", 5, "again").await.unwrap(),
            Appended::Duplicate { seq: 1, ts_ms: 100 }
        );
        // The window is bounded: after 8 newer keyed messages, k1 is forgotten.
        for i in 0..8 {
            shard
                .append_message(3, 1, &format!("n{i}"), 200, "filler")
                .await
                .unwrap();
        }
        assert!(matches!(
            shard.append_message(3, 1, "k1", 300, "late").await.unwrap(),
            Appended::New { .. }
        ));
        shard.close().await.unwrap();
    });
}

#[test]
fn edits_and_deletes_are_applied_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        for i in 1..=5u64 {
            shard
                .append_message(8, 1, "", i, &format!("v{i}"))
                .await
                .unwrap();
        }
        shard.edit(8, 2, 1, 10, "v2 edited").await.unwrap();
        shard.edit(8, 2, 1, 11, "v2 edited twice").await.unwrap();
        shard.delete(8, 3, 1, 12).await.unwrap();
        assert!(
            matches!(
                shard.edit(8, 3, 1, 13, "zombie").await,
                Err(Error::NotFound(_))
            ),
            "a delete is final"
        );
        assert!(matches!(
            shard.delete(8, 3, 1, 13).await,
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            shard.edit(8, 99, 1, 13, "nope").await,
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            shard.edit(9, 1, 1, 13, "nope").await,
            Err(Error::NotFound(_))
        ));
        let check = |page: Page| {
            let by: HashMap<u64, &HistoryItem> = page.items.iter().map(|i| (i.seq(), i)).collect();
            assert_eq!(by[&1].body(), Some("v1"));
            assert_eq!(by[&2].body(), Some("v2 edited twice"));
            assert!(by[&2].edited());
            assert_eq!(by[&3].body(), None);
            assert!(by[&3].deleted());
            assert_eq!(by[&4].body(), Some("v4"));
            assert_eq!(page.items.len(), 5, "a deleted message keeps its seq");
        };
        check(shard.history(8, Cursor::latest(10)).await.unwrap());
        shard.close().await.unwrap();
        drop(shard);
        let shard = store.open_shard(0).await.unwrap();
        check(shard.history(8, Cursor::latest(10)).await.unwrap());
        shard.close().await.unwrap();
        drop(shard);
        // Also when the index is rebuilt from the log alone.
        std::fs::remove_file(dir_of(&store).join("shard-0/index.redb")).unwrap();
        let shard = store.open_shard(0).await.unwrap();
        check(shard.history(8, Cursor::latest(10)).await.unwrap());
        assert_eq!(shard.last_seq(8), 5);
        shard.close().await.unwrap();
    });
}

fn dir_of(store: &Store) -> std::path::PathBuf {
    store.data_dir().clone()
}

#[test]
fn limits_are_enforced_without_touching_data() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        let big = "x".repeat(8 << 10 | 1);
        assert!(matches!(
            shard.append_message(1, 1, "", 1, &big).await,
            Err(Error::InvalidInput(_))
        ));
        let long_id = "c".repeat(129);
        assert!(matches!(
            shard.append_message(1, 1, &long_id, 1, "b").await,
            Err(Error::InvalidInput(_))
        ));
        shard.append_message(1, 1, "", 1, "ok").await.unwrap();
        assert!(matches!(
            shard.edit(1, 1, 1, 2, &big).await,
            Err(Error::InvalidInput(_))
        ));
        let m = Message {
            room: 1,
            seq: 1,
            sender: 1,
            ts_ms: 0,
            client_id: String::new(),
            body: "dup".into(),
        };
        assert!(
            matches!(
                shard.import_message(Record::Message(m.clone())).await,
                Err(Error::InvalidInput(_))
            ),
            "import cannot rewrite a seq"
        );
        // An imported reply answers a lower seq, in a thread no later.
        for (to, thread) in [(0u64, 0u64), (5, 5), (6, 6), (2, 3), (2, 0)] {
            let reply = Reply {
                message: Message {
                    seq: 5,
                    ..m.clone()
                },
                to,
                thread,
            };
            assert!(
                matches!(
                    shard.import_message(Record::Reply(Box::new(reply))).await,
                    Err(Error::InvalidInput(_))
                ),
                "reply to {to} in thread {thread}"
            );
        }
        assert!(matches!(
            shard
                .import_change(Record::Message(Message { seq: 5, ..m }))
                .await,
            Err(Error::InvalidInput(_))
        ));
        assert_eq!(shard.last_seq(1), 1);
        assert_eq!(shard.get(1, 1).await.unwrap().unwrap().body(), Some("ok"));
        // Timestamps never go backwards within a room.
        let a = shard
            .append_message(1, 1, "", 0, "earlier clock")
            .await
            .unwrap();
        assert_eq!(a, Appended::New { seq: 2, ts_ms: 1 });
        shard.close().await.unwrap();
        assert!(matches!(
            shard.append_message(1, 1, "", 1, "closed").await,
            Err(Error::Closed)
        ));
        assert!(matches!(
            store.open_shard(1).await,
            Err(Error::InvalidInput(_))
        ));
    });
}

#[test]
fn bad_configs_are_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes_max = 1000;
    assert!(
        matches!(Store::open(cfg.clone()), Err(Error::Config(m)) if m.contains("segment_bytes_max"))
    );
    let mut cfg = config(dir.path());
    cfg.shards = 0;
    assert!(matches!(Store::open(cfg), Err(Error::Config(m)) if m.contains("shards")));
    assert!(Durability::parse("batch:0").is_err());
    assert_eq!(Durability::parse("batch:5").unwrap().name(), "batch");
    assert!(Durability::parse("fast").is_err());
    // A data dir keeps its shard count.
    let cfg = config(dir.path());
    drop(Store::open(cfg.clone()).unwrap());
    let mut other = cfg;
    other.shards = 2;
    assert!(matches!(Store::open(other), Err(Error::Manifest(_))));
}

#[test]
fn every_durability_mode_keeps_data_across_clean_reopen() {
    for mode in ["sync", "batch:2", "none"] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.durability = Durability::parse(mode).unwrap();
        run(move || async move {
            let store = open(&cfg);
            let shard = store.open_shard(0).await.unwrap();
            let tasks: Vec<_> = (0..16u64)
                .map(|w| {
                    let shard = shard.clone();
                    glommio::spawn_local(async move {
                        for i in 0..100u64 {
                            shard
                                .append_message(w % 3, w, &format!("{w}/{i}"), i, "payload")
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            shard.close().await.unwrap();
            drop(shard);
            let shard = store.open_shard(0).await.unwrap();
            let total: u64 = (0..3).map(|r| shard.last_seq(r)).sum();
            assert_eq!(total, 1600, "mode {mode}");
            for r in 0..3 {
                let n = shard.last_seq(r);
                assert_eq!(
                    shard
                        .history(r, Cursor::after(0, 5000))
                        .await
                        .unwrap()
                        .items
                        .len() as u64,
                    n
                );
            }
            shard.close().await.unwrap();
        });
    }
}

#[test]
fn segments_roll_and_history_spans_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let log = dir.path().join("shard-0/log");
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        let body = "y".repeat(1000);
        for i in 1..=300u64 {
            shard.append_message(i % 2, 1, "", i, &body).await.unwrap();
        }
        let segs = rookery_storage::segment::list(&log).unwrap();
        assert!(segs.len() >= 4, "300 KB in 64 KiB segments: {segs:?}");
        let page = shard.history(0, Cursor::after(0, 1000)).await.unwrap();
        assert_eq!(seqs(&page), (1..=150).collect::<Vec<_>>());
        assert!(page.items.iter().all(|i| i.body() == Some(body.as_str())));
        shard.close().await.unwrap();
        drop(shard);
        // Sealed segments are cut to their data; the report agrees.
        let report = rookery_storage::verify::verify_shard(store.data_dir(), 0).unwrap();
        assert!(report.ok(), "{:?}", report.errors);
        assert_eq!(report.rooms[&0].messages + report.rooms[&1].messages, 300);
    });
}

#[test]
fn batch_limits_split_the_queue_and_the_window_waits() {
    for (records_max, bytes_max, window_us) in [(1, 4096, 0), (7, 4096, 300), (4096, 4096, 0)] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.commit_batch_records_max = records_max;
        cfg.commit_batch_bytes_max = bytes_max;
        cfg.commit_window_us = window_us;
        run(move || async move {
            let store = open(&cfg);
            let shard = store.open_shard(0).await.unwrap();
            let body = "z".repeat(300);
            let tasks: Vec<_> = (0..64u64)
                .map(|w| {
                    let (shard, body) = (shard.clone(), body.clone());
                    glommio::spawn_local(async move {
                        let mut got = Vec::new();
                        for i in 0..10u64 {
                            got.push(
                                shard
                                    .append_message(1, w, &format!("{w}.{i}"), i, &body)
                                    .await
                                    .unwrap()
                                    .seq(),
                            );
                        }
                        got
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                let got = t.await;
                assert!(
                    got.windows(2).all(|w| w[0] < w[1]),
                    "one writer's seqs increase"
                );
                all.extend(got);
            }
            all.sort_unstable();
            assert_eq!(all, (1..=640).collect::<Vec<_>>());
            let stats = shard.stats();
            assert_eq!(stats.records, 640);
            // Every batch respects both limits.
            let per_batch_max = records_max.min(bytes_max / 320).max(1) as u64;
            assert!(
                stats.batches * per_batch_max >= 640,
                "{stats:?} with at most {per_batch_max} per batch"
            );
            if records_max == 1 {
                assert_eq!(stats.batches, 640);
            }
            shard.close().await.unwrap();
        });
    }
}

#[test]
fn keys_of_a_new_rooms_first_pending_messages_are_remembered() {
    // Found by the engine's model test: the first messages of a room were
    // still in flight when a second append loaded the (empty) key window.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        let a = shard.append_message(1, 1, "k1", 1, "a");
        let b = shard.append_message(1, 1, "k2", 1, "b");
        let (a, b) = futures_lite::future::zip(a, b).await;
        assert_eq!((a.unwrap().seq(), b.unwrap().seq()), (1, 2));
        let again = shard
            .append_message(1, 1, "k1", 2, "a again")
            .await
            .unwrap();
        assert_eq!(again, Appended::Duplicate { seq: 1, ts_ms: 1 });
        shard.close().await.unwrap();
    });
}

/// The log's O_DIRECT I/O stays off glommio's poll (IOPOLL) ring: with a
/// write in flight there an executor never sleeps (it spun at 100% CPU and
/// answered seconds late in `batch`/`none` mode; see `keep_off_poll_ring`).
#[test]
fn log_io_goes_through_the_main_ring_not_the_poll_ring() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.durability = Durability::None;
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        for i in 0..100u64 {
            shard.append_message(1, 1, "", i, "body").await.unwrap();
        }
        shard.close().await.unwrap();
        let stats = glommio::executor().io_stats();
        assert_eq!(stats.poll_ring.file_writes().0, 0, "{stats:?}");
        assert_eq!(stats.poll_ring.file_reads().0, 0, "{stats:?}");
        assert!(stats.main_ring.file_writes().0 > 0, "{stats:?}");
    });
}

/// `Page::cached` says whether a page was served from memory: true for
/// resident records, false once the OS cache of the log was dropped and
/// the page had to be read from disk.
#[test]
fn a_page_reports_whether_it_came_from_memory() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let root = dir.path().to_path_buf();
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        for i in 0..200u64 {
            shard
                .append_message(3, 1, "", i, &"m".repeat(300))
                .await
                .unwrap();
        }
        // The log is written with O_DIRECT, past the OS cache: the first
        // read of fresh records comes from disk, the next from memory.
        shard.history(3, Cursor::latest(50)).await.unwrap();
        let hot = shard.history(3, Cursor::latest(50)).await.unwrap();
        assert_eq!((hot.items.len(), hot.cached), (50, true));
        drop(hot); // its records hold the mapping
        shard.checkpoint_now().await.unwrap();
        shard.release_mappings();
        for entry in std::fs::read_dir(root.join("shard-0").join("log")).unwrap() {
            let file = std::fs::File::open(entry.unwrap().path()).unwrap();
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(rc, 0);
        }
        let cold = shard.history(3, Cursor::latest(50)).await.unwrap();
        assert_eq!(cold.items.len(), 50);
        assert!(!cold.cached, "read from disk after the cache was dropped");
        let again = shard.history(3, Cursor::latest(50)).await.unwrap();
        assert!(again.cached);
        shard.close().await.unwrap();
    });
}

/// Replies: a reply joins the thread of what it answers (one level deep),
/// threads page in order and count their replies, pending and committed
/// alike, across reopen, an index rebuilt from the log, compaction of a
/// deleted reply's body, and retention.
#[test]
fn replies_form_threads_that_survive_reopen_rebuild_compaction_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.compaction_keep_recent_segments = 0;
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        let room = 4;
        for i in 1..=3u64 {
            shard
                .append_message(room, 1, "", i, &format!("m{i}"))
                .await
                .unwrap();
        }
        // 4 answers 1; 5 answers 4 (a reply): it joins 1's thread too.
        assert_eq!(
            shard
                .append_reply(room, 2, "a", 4, "r4", 1)
                .await
                .unwrap()
                .seq(),
            4
        );
        assert_eq!(
            shard
                .append_reply(room, 3, "b", 5, "r5", 4)
                .await
                .unwrap()
                .seq(),
            5
        );
        // A retry of a reply answers the original seq.
        assert_eq!(
            shard.append_reply(room, 3, "b", 6, "r5", 4).await.unwrap(),
            Appended::Duplicate { seq: 5, ts_ms: 5 }
        );
        for i in 0..7u64 {
            shard
                .append_reply(room, 2, "", 10 + i, &format!("t{i}"), 2)
                .await
                .unwrap();
        }
        // Refused: nothing to answer, a deleted message, seq 0.
        shard.delete(room, 3, 1, 20).await.unwrap();
        for (to, what) in [(3u64, "deleted"), (99, "missing")] {
            assert!(
                matches!(
                    shard.append_reply(room, 1, "", 21, "x", to).await,
                    Err(Error::NotFound(_))
                ),
                "{what}"
            );
        }
        assert!(matches!(
            shard.append_reply(room, 1, "", 21, "x", 0).await,
            Err(Error::InvalidInput(_))
        ));
        assert_eq!(shard.last_seq(room), 12, "refusals take no seq");

        let check = |shard: ShardStore, ctx: &'static str| async move {
            let page = shard.history(room, Cursor::after(0, 50)).await.unwrap();
            let by: HashMap<u64, &HistoryItem> = page.items.iter().map(|i| (i.seq(), i)).collect();
            assert_eq!(by[&1].replies, 2, "{ctx}");
            assert_eq!(by[&2].replies, 7, "{ctx}");
            assert_eq!(by[&4].replies, 0, "{ctx}: a reply starts no thread");
            assert_eq!(by[&4].reply(), Some((1, 1)), "{ctx}");
            assert_eq!(by[&5].reply(), Some((4, 1)), "{ctx}");
            assert_eq!(by[&1].reply(), None, "{ctx}");
            // The thread of a reply is the thread it is in.
            for seq in [1, 4, 5] {
                let t = shard.thread(room, seq, 0, 10).await.unwrap().unwrap();
                assert_eq!(t.first.seq(), 1, "{ctx}");
                assert_eq!(t.first.replies, 2, "{ctx}");
                let replies: Vec<u64> = t.items.iter().map(|i| i.seq()).collect();
                assert_eq!(replies, [4, 5], "{ctx}");
                assert_eq!(t.next, None, "{ctx}");
            }
            // Paged three at a time.
            let mut got = Vec::new();
            let mut after = 0;
            loop {
                let t = shard.thread(room, 2, after, 3).await.unwrap().unwrap();
                assert!(t.items.len() <= 3, "{ctx}");
                got.extend(t.items.iter().map(|i| i.seq()));
                match t.next {
                    Some(n) => after = n,
                    None => break,
                }
            }
            assert_eq!(got, (6..=12).collect::<Vec<_>>(), "{ctx}");
            let bodies: Vec<Option<String>> = shard
                .thread(room, 2, 0, 10)
                .await
                .unwrap()
                .unwrap()
                .items
                .iter()
                .map(|i| i.body().map(str::to_string))
                .collect();
            assert_eq!(bodies[1].as_deref(), Some("t1"), "{ctx}");
            assert!(
                shard.thread(room, 99, 0, 10).await.unwrap().is_none(),
                "{ctx}"
            );
            assert!(
                shard.thread(room + 1, 1, 0, 10).await.unwrap().is_none(),
                "{ctx}"
            );
            shard
        };
        // Pending (not yet committed by the index thread), then committed.
        let shard = check(shard, "pending").await;
        shard.checkpoint_now().await.unwrap();
        let shard = check(shard, "committed").await;
        shard.close().await.unwrap();
        drop(shard);
        let shard = check(store.open_shard(0).await.unwrap(), "reopened").await;
        shard.close().await.unwrap();
        drop(shard);
        std::fs::remove_file(dir_of(&store).join("shard-0/index.redb")).unwrap();
        let shard = check(store.open_shard(0).await.unwrap(), "rebuilt").await;

        // A deleted reply keeps its place in its thread; compaction drops
        // its body and keeps what it answers.
        shard.delete(room, 6, 2, 30).await.unwrap();
        shard.compact_all().await.unwrap();
        let t = shard.thread(room, 2, 0, 10).await.unwrap().unwrap();
        assert!(t.items[0].deleted());
        assert_eq!(t.items[0].reply(), Some((2, 2)));
        let shard = check(shard, "compacted").await;

        // Retention: once 1 and 2 are retired their threads go, and the
        // replies that remain still say what they answered.
        shard
            .set_retention(
                room,
                Retention {
                    max_messages: Some(9),
                    max_age_ms: None,
                },
            )
            .await
            .unwrap();
        shard.enforce_retention(1_000).await.unwrap();
        assert_eq!(shard.low_seq(room), 4);
        assert!(shard.thread(room, 1, 0, 10).await.unwrap().is_none());
        assert!(shard.thread(room, 4, 0, 10).await.unwrap().is_none());
        let kept = shard.history(room, Cursor::after(0, 50)).await.unwrap();
        assert_eq!(kept.items[0].reply(), Some((1, 1)));
        shard.close().await.unwrap();
    });
}

/// The verifier checks the thread index against the log: a reply's row
/// gone, or a head that miscounts, is found.
#[test]
fn verify_finds_a_missing_thread_row_and_a_miscounted_head() {
    const THREADS: redb::TableDefinition<(u64, u64, u64), ()> =
        redb::TableDefinition::new("threads");
    const HEADS: redb::TableDefinition<(u64, u64), (u64, u64)> =
        redb::TableDefinition::new("thread_heads");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let data = run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        shard.append_message(1, 1, "", 1, "q").await.unwrap();
        for i in 0..3u64 {
            shard.append_reply(1, 2, "", 2 + i, "a", 1).await.unwrap();
        }
        shard.close().await.unwrap();
        dir_of(&store)
    });
    let verify = || rookery_storage::verify::verify_shard(&data, 0).unwrap();
    assert!(verify().ok(), "{:?}", verify().errors);
    let index = data.join("shard-0/index.redb");
    let change = |f: &dyn Fn(&redb::WriteTransaction)| {
        let db = redb::Database::create(&index).unwrap();
        let tx = db.begin_write().unwrap();
        f(&tx);
        tx.commit().unwrap();
    };
    change(&|tx| {
        tx.open_table(THREADS).unwrap().remove((1, 1, 3)).unwrap();
    });
    let errors = verify().errors.join("\n");
    assert!(
        errors.contains("seq 3: a reply in thread 1 the index does not list"),
        "{errors}"
    );
    assert!(errors.contains("head says"), "{errors}");
    change(&|tx| {
        tx.open_table(THREADS)
            .unwrap()
            .insert((1, 1, 3), ())
            .unwrap();
        tx.open_table(HEADS)
            .unwrap()
            .insert((1, 1), (4, 4))
            .unwrap();
    });
    let errors = verify().errors.join("\n");
    assert!(!errors.contains("does not list"), "{errors}");
    assert!(errors.contains("room 1 thread 1 head says"), "{errors}");
    change(&|tx| {
        tx.open_table(HEADS)
            .unwrap()
            .insert((1, 1), (3, 4))
            .unwrap();
        tx.open_table(THREADS)
            .unwrap()
            .insert((1, 1, 9), ())
            .unwrap();
    });
    let errors = verify().errors.join("\n");
    assert!(
        errors.contains("seq 9 is in thread 1, which the log does not say"),
        "{errors}"
    );
}

/// Reactions: on and off are idempotent, counted per emoji with the
/// reader's own marked, bounded per message and per user, refused on a
/// missing or deleted message, and the same through pending, committed,
/// reopen, an index rebuilt from the log, compaction and retention.
#[test]
fn reactions_count_bound_and_survive_reopen_rebuild_compaction_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.compaction_keep_recent_segments = 0;
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        let room = 6;
        for i in 1..=3u64 {
            shard.append_message(room, 1, "", i, "m").await.unwrap();
        }
        assert!(shard.react(room, 1, 10, 5, "👍", true).await.unwrap());
        assert!(
            !shard.react(room, 1, 10, 5, "👍", true).await.unwrap(),
            "already on"
        );
        assert!(shard.react(room, 1, 11, 5, "👍", true).await.unwrap());
        assert!(shard.react(room, 1, 11, 5, "🎉", true).await.unwrap());
        assert!(shard.react(room, 2, 12, 5, "😀", true).await.unwrap());
        assert!(shard.react(room, 2, 12, 5, "😀", false).await.unwrap());
        assert!(
            !shard.react(room, 2, 12, 5, "😀", false).await.unwrap(),
            "already off"
        );
        // Toggled across segments: on, off, on again.
        assert!(shard.react(room, 3, 13, 5, "🔥", true).await.unwrap());
        shard.checkpoint_now().await.unwrap();
        assert!(shard.react(room, 3, 13, 5, "🔥", false).await.unwrap());
        assert!(shard.react(room, 3, 13, 5, "🔥", true).await.unwrap());
        // Refused, writing nothing.
        shard.delete(room, 2, 1, 6).await.unwrap();
        for (seq, emoji) in [(2u64, "👍"), (9, "👍")] {
            assert!(matches!(
                shard.react(room, seq, 10, 7, emoji, true).await,
                Err(Error::NotFound(_))
            ));
        }
        for emoji in ["", &"x".repeat(EMOJI_BYTES_MAX + 1)] {
            assert!(matches!(
                shard.react(room, 1, 10, 7, emoji, true).await,
                Err(Error::InvalidInput(_))
            ));
        }
        let view = |shard: &ShardStore, reader| {
            let mut got: Vec<(u64, String, u64, bool)> = shard
                .reactions(room, &[1, 2, 3], Some(reader))
                .unwrap()
                .into_iter()
                .flat_map(|(seq, list)| {
                    list.into_iter()
                        .map(move |r| (seq, r.emoji, r.count, r.mine))
                })
                .collect();
            got.sort();
            got
        };
        let want = |reader: u64| {
            let mut v = vec![
                (1, "👍".to_string(), 2, reader == 10 || reader == 11),
                (1, "🎉".to_string(), 1, reader == 11),
                (3, "🔥".to_string(), 1, reader == 13),
            ];
            v.sort();
            v
        };
        let check = |shard: &ShardStore, ctx: &str| {
            for reader in [10, 11, 13, 99] {
                assert_eq!(view(shard, reader), want(reader), "{ctx}: reader {reader}");
            }
        };
        check(&shard, "pending");
        shard.checkpoint_now().await.unwrap();
        check(&shard, "committed");
        shard.close().await.unwrap();
        drop(shard);
        let shard = store.open_shard(0).await.unwrap();
        check(&shard, "reopened");
        shard.close().await.unwrap();
        drop(shard);
        std::fs::remove_file(dir_of(&store).join("shard-0/index.redb")).unwrap();
        let shard = store.open_shard(0).await.unwrap();
        check(&shard, "rebuilt");
        shard.compact_all().await.unwrap();
        check(&shard, "compacted");
        shard.close().await.unwrap();
        drop(shard);
        std::fs::remove_file(dir_of(&store).join("shard-0/index.redb")).unwrap();
        let shard = store.open_shard(0).await.unwrap();
        check(&shard, "rebuilt from the compacted log");

        // The bounds: 20 distinct reactions on a message, 10 by one user.
        shard.append_message(room, 1, "", 8, "busy").await.unwrap();
        for i in 0..REACTIONS_PER_USER_PER_MESSAGE_MAX {
            shard
                .react(room, 4, 20, 9, &format!("e{i}"), true)
                .await
                .unwrap();
        }
        assert!(matches!(
            shard.react(room, 4, 20, 9, "one more", true).await,
            Err(Error::TooMany(_))
        ));
        for i in REACTIONS_PER_USER_PER_MESSAGE_MAX..REACTIONS_PER_MESSAGE_MAX {
            shard
                .react(room, 4, 21, 9, &format!("e{i}"), true)
                .await
                .unwrap();
        }
        assert!(matches!(
            shard.react(room, 4, 22, 9, "e99", true).await,
            Err(Error::TooMany(_))
        ));
        // An existing reaction may still be added to, and taking one off
        // makes room.
        assert!(shard.react(room, 4, 22, 9, "e0", true).await.unwrap());
        assert!(shard.react(room, 4, 20, 9, "e1", false).await.unwrap());
        assert!(shard.react(room, 4, 20, 9, "e99", true).await.unwrap());
        let on4 = &shard.reactions(room, &[4], Some(22)).unwrap()[&4];
        assert_eq!(on4.len(), REACTIONS_PER_MESSAGE_MAX);
        let e0 = on4.iter().find(|r| r.emoji == "e0").unwrap();
        assert_eq!((e0.count, e0.mine), (2, true));
        // Concurrent reactions cannot pass the bound between them.
        let tasks: Vec<_> = (0..40u64)
            .map(|u| {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    shard
                        .react(room, 3, 100 + u, 9, &format!("c{u}"), true)
                        .await
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await {
                Ok(true) => ok += 1,
                Err(Error::TooMany(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ok, REACTIONS_PER_MESSAGE_MAX - 1, "🔥 was there");
        assert_eq!(
            shard.reactions(room, &[3], None).unwrap()[&3].len(),
            REACTIONS_PER_MESSAGE_MAX
        );

        // Retention retires a message's reactions with it.
        shard
            .set_retention(
                room,
                Retention {
                    max_messages: Some(1),
                    max_age_ms: None,
                },
            )
            .await
            .unwrap();
        shard.enforce_retention(1_000).await.unwrap();
        assert!(shard.reactions(room, &[1, 3], Some(10)).unwrap().is_empty());
        shard.close().await.unwrap();
        drop(shard);
        let data = dir_of(&store);
        drop(store);
        let report = rookery_storage::verify::verify_shard(&data, 0).unwrap();
        assert!(report.ok(), "{:?}", report.errors);
    });
}

/// Messages carrying uploads: their file references are read back with the
/// message (pending, committed, reopened, index rebuilt from the log,
/// compacted after a delete), a post may reply and joins the thread, a
/// retry answers the original seq, and bad references are refused without
/// taking a seq.
#[test]
fn posts_carry_their_files_through_reopen_rebuild_and_compaction() {
    use rookery_storage::{FileRef, FILES_PER_MESSAGE_MAX};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.compaction_keep_recent_segments = 0;
    let file = |id: u128, name: &str| FileRef {
        id: id.to_be_bytes(),
        name: name.into(),
        content_type: "image/png".into(),
        bytes: 1000 + id as u64,
        width: 64,
        height: 32,
        thumb: true,
    };
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        let room = 4;
        shard.append_message(room, 1, "", 1, "m1").await.unwrap();
        let two = vec![file(7, "a.png"), file(8, "b.png")];
        let posted = shard
            .append_post(room, 2, "p", 2, "look", 0, two.clone())
            .await
            .unwrap();
        assert_eq!(posted.seq(), 2);
        assert_eq!(
            shard
                .append_post(room, 2, "p", 3, "look", 0, two.clone())
                .await
                .unwrap(),
            Appended::Duplicate { seq: 2, ts_ms: 2 },
            "a retry answers the original seq"
        );
        let reply = shard
            .append_post(room, 3, "", 4, "", 1, vec![file(9, "c.png")])
            .await
            .unwrap();
        assert_eq!(reply.seq(), 3);
        // Refused, taking no seq: no file, too many, one twice, a reply to
        // nothing.
        let many: Vec<FileRef> = (0..=FILES_PER_MESSAGE_MAX as u128)
            .map(|i| file(100 + i, "x"))
            .collect();
        for (files, to) in [
            (vec![], 0),
            (many, 0),
            (vec![file(5, "x"), file(5, "y")], 0),
            (vec![file(6, "x")], 99),
        ] {
            let got = shard.append_post(room, 1, "", 5, "x", to, files).await;
            assert!(
                matches!(got, Err(Error::InvalidInput(_) | Error::NotFound(_))),
                "{got:?}"
            );
        }
        assert_eq!(shard.last_seq(room), 3);

        let check = |shard: ShardStore, ctx: &'static str| async move {
            let page = shard.history(room, Cursor::after(0, 50)).await.unwrap();
            let by: HashMap<u64, &HistoryItem> = page.items.iter().map(|i| (i.seq(), i)).collect();
            let ids = |seq: u64| -> Vec<(u128, String)> {
                by[&seq]
                    .files()
                    .iter()
                    .map(|f| (f.upload(), f.name.to_string()))
                    .collect()
            };
            assert_eq!(ids(1), [], "{ctx}");
            assert_eq!(ids(2), [(7, "a.png".into()), (8, "b.png".into())], "{ctx}");
            assert_eq!(ids(3), [(9, "c.png".into())], "{ctx}");
            let f = &by[&2].files()[1];
            assert_eq!(
                (f.bytes.to_native(), f.width.to_native(), f.thumb),
                (1008, 64, true),
                "{ctx}"
            );
            assert_eq!(by[&3].reply(), Some((1, 1)), "{ctx}: a post may reply");
            assert_eq!(by[&1].replies, 1, "{ctx}: and counts in its thread");
            assert_eq!(by[&2].body(), Some("look"), "{ctx}");
            shard
        };
        let shard = check(shard, "pending").await;
        shard.checkpoint_now().await.unwrap();
        let shard = check(shard, "committed").await;
        shard.close().await.unwrap();
        drop(shard);
        let shard = check(store.open_shard(0).await.unwrap(), "reopened").await;
        shard.close().await.unwrap();
        drop(shard);
        std::fs::remove_file(dir_of(&store).join("shard-0/index.redb")).unwrap();
        let shard = check(store.open_shard(0).await.unwrap(), "rebuilt").await;
        // Deleted and compacted: the body goes, the references stay (they
        // say which uploads the message held).
        shard.delete(room, 2, 2, 9).await.unwrap();
        shard.compact_all().await.unwrap();
        let item = shard.get(room, 2).await.unwrap().unwrap();
        assert!(item.deleted());
        assert_eq!(item.files().len(), 2);
        assert!(
            item.files()
                .iter()
                .all(|f| f.name.is_empty() && f.content_type.is_empty()),
            "what it carried goes with its text; the ids stay"
        );
        shard.close().await.unwrap();
    });
}
