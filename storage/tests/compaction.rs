//! Compaction: history is the same before and after, deleted text and
//! superseded edits are gone from every file, appends go on during a
//! rewrite, and an interrupted switch is rolled back or forward at open
//! (with and without an index).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rookery_storage::segment::{self, is_compacted};
use rookery_storage::*;

const ROOMS: u64 = 4;

/// Everything history shows of a message.
type Shown = (
    u64,
    u64,
    u64,
    String,
    Option<String>,
    bool,
    Option<(u64, u64)>,
);

async fn snapshot(shard: &ShardStore) -> Vec<(u64, Vec<Shown>)> {
    let mut out = Vec::new();
    for room in 1..=ROOMS {
        let page = shard
            .history(room, Cursor::after(0, 1 << 20))
            .await
            .unwrap();
        let items = page
            .items
            .iter()
            .map(|i| {
                (
                    i.seq(),
                    i.sender(),
                    i.ts_ms(),
                    i.client_id().to_string(),
                    i.body().map(str::to_string),
                    i.edited(),
                    i.changed(),
                )
            })
            .collect();
        out.push((room, items));
    }
    out
}

fn test_config(dir: &Path) -> StorageConfig {
    let mut cfg = config(dir);
    cfg.compaction_interval_ms = 0;
    cfg.compaction_keep_recent_segments = 0;
    cfg.compaction_bytes_per_s_max = 0;
    cfg
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    rookery_storage::verify::files_containing(dir, needle.as_bytes()).unwrap()
}

fn log_ids(dir: &Path) -> Vec<u32> {
    segment::list(&dir.join("shard-0/log")).unwrap()
}

/// Writes rooms 1..=4 of 600 messages across many 64 KiB segments: every
/// 7th message edited twice, every 11th deleted (its body carries a
/// marker), room 4 kept to its last 100 messages.
async fn fill(shard: &ShardStore) {
    for i in 1..=600u64 {
        for room in 1..=ROOMS {
            let body = if i % 11 == 0 {
                format!("MARK{room}x{i}Z {}", "d".repeat(60))
            } else {
                format!("room{room} message {i} {}", "b".repeat(60))
            };
            shard
                .append_message(room, room * 10, &format!("c{i}"), 1_000 + i, &body)
                .await
                .unwrap();
        }
    }
    for room in 1..=ROOMS {
        for i in (7..=600u64).step_by(7) {
            shard
                .edit(
                    room,
                    i,
                    room * 10,
                    5_000 + i,
                    &format!("OLDEDIT{room}x{i}Z"),
                )
                .await
                .unwrap();
            shard
                .edit(
                    room,
                    i,
                    room * 10,
                    6_000 + i,
                    &format!("edit two {room}/{i}"),
                )
                .await
                .unwrap();
        }
        for i in (11..=600u64).step_by(11) {
            shard.delete(room, i, room * 10, 7_000 + i).await.unwrap();
        }
    }
    shard
        .set_retention(
            4,
            Retention {
                max_messages: Some(100),
                max_age_ms: None,
            },
        )
        .await
        .unwrap();
    shard.enforce_retention(10_000).await.unwrap();
}

fn assert_no_marks(dir: &Path, ctx: &str) {
    for room in 1..=ROOMS {
        for i in (11..=600u64).step_by(11) {
            let mark = format!("MARK{room}x{i}Z");
            assert_eq!(
                files_containing(dir, &mark),
                Vec::<PathBuf>::new(),
                "{ctx}: {mark} still on disk"
            );
        }
        for i in (7..=600u64).step_by(7) {
            let old = format!("OLDEDIT{room}x{i}Z");
            assert_eq!(
                files_containing(dir, &old),
                Vec::<PathBuf>::new(),
                "{ctx}: {old} still on disk"
            );
        }
    }
}

#[test]
fn compaction_keeps_history_and_leaves_no_deleted_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let cfg = test_config(dir.path());
    let (before, after_more) = run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        fill(&shard).await;
        let before = snapshot(&shard).await;
        assert!(
            !files_containing(&path, "MARK1x11Z").is_empty(),
            "the marker was written"
        );
        let appended = log_ids(&path).len();
        let report = shard.compact_all().await.unwrap();
        assert!(report.segments_in as usize >= appended - 1, "{report:?}");
        assert!(
            report.bodies_dropped > 0 && report.records_out < report.records_in,
            "{report:?}"
        );
        assert_eq!(
            snapshot(&shard).await,
            before,
            "history changed by compaction"
        );
        assert_no_marks(&path, "after compact_all");
        // Appends, edits and deletes go on, on compacted messages too.
        for i in 0..50u64 {
            shard
                .append_message(1, 10, "", 9_000 + i, &format!("later {i}"))
                .await
                .unwrap();
        }
        shard
            .edit(2, 3, 20, 9_500, "edited after compaction")
            .await
            .unwrap();
        shard.delete(3, 5, 30, 9_600).await.unwrap();
        assert!(!files_containing(&path, "room3 message 5 ").is_empty());
        let after_more = snapshot(&shard).await;
        // The compacted segment holding room 3's message 5 is rewritten.
        let report = shard.compact_all().await.unwrap();
        assert!(report.segments_in >= 1, "{report:?}");
        assert_eq!(snapshot(&shard).await, after_more);
        assert_eq!(
            files_containing(&path, "room3 message 5 "),
            Vec::<PathBuf>::new()
        );
        assert_no_marks(&path, "after the second compact_all");
        shard.close().await.unwrap();
        (before, after_more)
    });
    assert!(log_ids(dir.path()).iter().any(|&id| is_compacted(id)));
    assert!(before.iter().all(|(_, items)| !items.is_empty()));
    let report = verify::verify_shard(dir.path(), 0).unwrap();
    assert!(report.ok(), "{:?}", report.errors);
    // Reopen from the checkpoint, then rebuild the index from the log:
    // the same history both times.
    for rebuild in [false, true] {
        if rebuild {
            std::fs::remove_file(dir.path().join("shard-0/index.redb")).unwrap();
        }
        let cfg = test_config(dir.path());
        let expected = after_more.clone();
        run(move || async move {
            let store = open(&cfg);
            let shard = store.open_shard(0).await.unwrap();
            assert_eq!(snapshot(&shard).await, expected, "rebuild {rebuild}");
            // Seqs go on from where they were.
            assert_eq!((shard.low_seq(4), shard.last_seq(4)), (501, 600));
            shard.close().await.unwrap();
        });
        let report = verify::verify_shard(dir.path(), 0).unwrap();
        assert!(report.ok(), "rebuild {rebuild}: {:?}", report.errors);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// Opens the data directory, checks its history and verifies it; returns
/// the log's segment ids after the open.
fn reopen_and_check(dir: &Path, expected: &[(u64, Vec<Shown>)], ctx: &str) -> Vec<u32> {
    let cfg = test_config(dir);
    let expected = expected.to_vec();
    let ctx2 = ctx.to_string();
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        assert_eq!(snapshot(&shard).await, expected, "{ctx2}");
        shard.close().await.unwrap();
    });
    let report = verify::verify_shard(dir, 0).unwrap();
    assert!(report.ok(), "{ctx}: {:?}", report.errors);
    log_ids(dir)
}

/// The states a crash can leave during a compaction, built from the files
/// before and after one: each opens to the same history, and the open
/// deletes what the crash left behind.
#[test]
fn an_interrupted_compaction_is_rolled_back_or_forward() {
    let root = tempfile::tempdir().unwrap();
    let (pre, post) = (root.path().join("pre"), root.path().join("post"));
    let cfg = test_config(&pre);
    let expected = run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        fill(&shard).await;
        let s = snapshot(&shard).await;
        shard.close().await.unwrap();
        s
    });
    copy_dir(&pre, &post);
    let cfg = test_config(&post);
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        shard.compact_all().await.unwrap();
        shard.close().await.unwrap();
    });
    let pre_ids = log_ids(&pre);
    let post_ids = log_ids(&post);
    let compacted: Vec<u32> = post_ids
        .iter()
        .copied()
        .filter(|&id| is_compacted(id))
        .collect();
    assert_eq!(compacted.len(), 1, "{post_ids:?}");
    let seg = |dir: &Path, id: u32| segment::path(&dir.join("shard-0/log"), id);

    // 1. Crash while writing: a partial `.seg.tmp` is removed.
    let case = root.path().join("tmp");
    copy_dir(&pre, &case);
    std::fs::write(
        seg(&case, compacted[0]).with_extension("seg.tmp"),
        b"partial",
    )
    .unwrap();
    let ids = reopen_and_check(&case, &expected, "partial rewrite");
    assert!(std::fs::read_dir(case.join("shard-0/log"))
        .unwrap()
        .all(|e| !e.unwrap().path().to_string_lossy().ends_with(".tmp")));
    assert!(ids.iter().all(|&id| !is_compacted(id)), "{ids:?}");

    // 2. Crash after the rename, before the index switched: the compacted
    // file is removed, the run serves.
    let case = root.path().join("renamed");
    copy_dir(&pre, &case);
    std::fs::copy(seg(&post, compacted[0]), seg(&case, compacted[0])).unwrap();
    let ids = reopen_and_check(&case, &expected, "renamed, not switched");
    assert!(!ids.contains(&compacted[0]), "{ids:?}");
    for id in &pre_ids {
        assert!(ids.contains(id), "original {id} kept: {ids:?}");
    }

    // 3. Crash after the switch, before the run's files were deleted: they
    // are deleted now.
    let case = root.path().join("switched");
    copy_dir(&post, &case);
    for &id in &pre_ids {
        std::fs::copy(seg(&pre, id), seg(&case, id)).unwrap();
    }
    let ids = reopen_and_check(&case, &expected, "switched, run not deleted");
    assert!(ids.contains(&compacted[0]));
    for id in &pre_ids {
        assert!(!ids.contains(id), "superseded {id} deleted: {ids:?}");
    }

    // 4. Same, with the index lost: the log is replayed with the compacted
    // file in the run's place (and no message twice).
    let case = root.path().join("no-index");
    copy_dir(&pre, &case);
    std::fs::copy(seg(&post, compacted[0]), seg(&case, compacted[0])).unwrap();
    std::fs::remove_file(case.join("shard-0/index.redb")).unwrap();
    let ids = reopen_and_check(&case, &expected, "no index");
    assert!(ids.contains(&compacted[0]));
    for id in &pre_ids {
        assert!(!ids.contains(id), "superseded {id} deleted: {ids:?}");
    }
}

/// Appends, edits and history reads go on while runs are rewritten; every
/// acknowledged message is there afterwards, once, and after a reopen.
#[test]
fn appends_go_on_during_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    // Slow rewrites, so appends overlap them.
    cfg.compaction_bytes_per_s_max = 1 << 20;
    let cfg2 = cfg.clone();
    let expected = run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        fill(&shard).await;
        let writer = {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                for i in 0..400u64 {
                    let room = i % 3 + 1;
                    let a = shard
                        .append_message(
                            room,
                            99,
                            &format!("during{i}"),
                            50_000 + i,
                            &format!("during {i}"),
                        )
                        .await
                        .unwrap();
                    let target = a.seq() - 100;
                    if i % 5 == 0 && target % 11 != 0 {
                        shard
                            .edit(room, target, 99, 60_000 + i, &format!("re-edit {i}"))
                            .await
                            .unwrap();
                    }
                    if i % 40 == 0 {
                        let page = shard.history(room, Cursor::latest(50)).await.unwrap();
                        assert_eq!(page.items.len(), 50);
                    }
                }
            })
        };
        let mut compactions = 0;
        for _ in 0..3 {
            compactions += shard.compact_all().await.unwrap().segments_out;
        }
        writer.await;
        shard.compact_all().await.unwrap();
        assert!(compactions >= 2, "{compactions}");
        for room in 1..=3 {
            dense_history(&shard, room, "after compaction").await;
        }
        let s = snapshot(&shard).await;
        shard.close().await.unwrap();
        s
    });
    for (room, items) in &expected {
        if *room <= 3 {
            let during = items.iter().filter(|i| i.3.starts_with("during")).count();
            assert!(
                during >= 133,
                "room {room}: {during} appended during compaction"
            );
        }
    }
    let cfg = cfg2;
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        assert_eq!(snapshot(&shard).await, expected);
        shard.close().await.unwrap();
    });
    let report = verify::verify_shard(dir.path(), 0).unwrap();
    assert!(report.ok(), "{:?}", report.errors);
}

/// A delete that lands while its message's run is being rewritten (after
/// the rewrite read which messages were deleted) is not lost: the compacted
/// segment is marked in turn and rewritten again.
#[test]
fn a_delete_during_a_rewrite_is_scrubbed_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut cfg = test_config(dir.path());
    cfg.compaction_bytes_per_s_max = 4 << 20; // the rewrite takes ~0.5 s
    cfg.deleted_text_delay_ms = 0;
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        for i in 1..=8000u64 {
            let body = format!("LATE{i}Z {}", "p".repeat(200));
            shard.append_message(1, 1, "", i, &body).await.unwrap();
        }
        // The segment already holds a noted delete (3) when the rewrite
        // starts: the late delete (7) must still count.
        shard.delete(1, 3, 1, 4_000).await.unwrap();
        let compacting = {
            let shard = shard.clone();
            glommio::spawn_local(async move { shard.compact_all().await.unwrap() })
        };
        // The rewrite has read its snapshot once its output file exists.
        let log = path.join("shard-0/log");
        let writing = || {
            std::fs::read_dir(&log)
                .unwrap()
                .any(|e| e.unwrap().path().to_string_lossy().ends_with(".seg.tmp"))
        };
        let t = std::time::Instant::now();
        while !writing() {
            assert!(t.elapsed().as_secs() < 20, "no rewrite started");
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        shard.delete(1, 7, 1, 5_000).await.unwrap();
        let report = compacting.await;
        // The run's rewrite copied the body (its snapshot predates the
        // delete); the mark moved to its output, which `compact_all`
        // rewrote again before returning.
        assert!(
            report.segments_in >= 2 && report.segments_out == 2,
            "{report:?}"
        );
        assert_eq!(files_containing(&path, "LATE7Z"), Vec::<PathBuf>::new());
        assert_eq!(files_containing(&path, "LATE3Z"), Vec::<PathBuf>::new());
        let item = shard.get(1, 7).await.unwrap().unwrap();
        assert!(item.deleted());
        dense_history(&shard, 1, "after the scrub").await;
        shard.close().await.unwrap();
    });
}

/// Deleting an edited message removes the edit's text too, wherever it
/// is: in another segment, or next to a body a compaction already dropped.
#[test]
fn deleting_an_edited_message_removes_the_edit_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let cfg = test_config(dir.path());
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        for i in 1..=600u64 {
            shard
                .append_message(1, 1, "", i, &format!("orig{i} {}", "o".repeat(100)))
                .await
                .unwrap();
        }
        // Edited far from the message (another segment), then deleted.
        shard.edit(1, 5, 1, 1_000, "FAREDIT5Z").await.unwrap();
        // Edited, compacted (the body is dropped, the edit kept beside
        // it), then deleted.
        shard.edit(1, 9, 1, 1_001, "NEAREDIT9Z").await.unwrap();
        shard.compact_all().await.unwrap();
        assert!(!files_containing(&path, "NEAREDIT9Z").is_empty());
        shard.delete(1, 5, 1, 1_002).await.unwrap();
        shard.delete(1, 9, 1, 1_003).await.unwrap();
        shard.compact_all().await.unwrap();
        for gone in ["FAREDIT5Z", "NEAREDIT9Z", "orig5 ", "orig9 "] {
            assert_eq!(
                files_containing(&path, gone),
                Vec::<PathBuf>::new(),
                "{gone}"
            );
        }
        assert!(shard.get(1, 9).await.unwrap().unwrap().deleted());
        dense_history(&shard, 1, "after deletes").await;
        shard.close().await.unwrap();
    });
}

/// `close` waits for a compaction in progress; a compaction or retention
/// pass asked for once `close` started is refused instead of hanging.
#[test]
fn close_waits_for_a_compaction_and_refuses_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.compaction_bytes_per_s_max = 4 << 20;
    let cfg2 = cfg.clone();
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        for i in 1..=4000u64 {
            shard
                .append_message(1, 1, "", i, &"c".repeat(200))
                .await
                .unwrap();
        }
        let first = {
            let shard = shard.clone();
            glommio::spawn_local(async move { shard.compact_all().await })
        };
        glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
        let closing = {
            let shard = shard.clone();
            glommio::spawn_local(async move { shard.close().await })
        };
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        let late = shard.compact().await;
        assert!(matches!(late, Err(Error::Closed)), "{late:?}");
        let late = shard.enforce_retention(0).await;
        assert!(matches!(late, Err(Error::Closed)), "{late:?}");
        let report = first.await.unwrap();
        assert!(report.segments_out >= 1, "{report:?}");
        closing.await.unwrap();
    });
    run(move || async move {
        let store = open(&cfg2);
        let shard = store.open_shard(0).await.unwrap();
        dense_history(&shard, 1, "after reopen").await;
        assert_eq!(shard.last_seq(1), 4000);
        shard.close().await.unwrap();
    });
}

/// Salvaging a damaged shard after a crash in the middle of a compaction:
/// the compacted file whose switch never committed goes too (the next open,
/// with no index, could not tell it from a committed one), so the log after
/// the cut is not replayed from it.
#[test]
fn salvage_removes_an_uncommitted_compacted_segment() {
    let root = tempfile::tempdir().unwrap();
    let (pre, post) = (root.path().join("pre"), root.path().join("post"));
    let mut cfg = test_config(&pre);
    cfg.compaction_input_bytes_max = 1 << 20; // several runs
    let cfg2 = StorageConfig {
        data_dir: post.clone(),
        ..cfg.clone()
    };
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        for i in 1..=12_000u64 {
            shard
                .append_message(i % 3 + 1, 1, "", i, &format!("s{i} {}", "v".repeat(150)))
                .await
                .unwrap();
        }
        shard.close().await.unwrap();
    });
    copy_dir(&pre, &post);
    run(move || async move {
        let store = open(&cfg2);
        let shard = store.open_shard(0).await.unwrap();
        let report = shard.compact_all().await.unwrap();
        assert!(report.segments_out >= 2, "{report:?}");
        shard.close().await.unwrap();
    });
    let log = |d: &Path| d.join("shard-0/log");
    let last_compacted = *log_ids(&post)
        .iter()
        .filter(|&&id| is_compacted(id))
        .max()
        .unwrap();
    // The crash: the last run's compacted file is in the log, its switch
    // not committed. Then the shard's third segment is found damaged.
    std::fs::copy(
        segment::path(&log(&post), last_compacted),
        segment::path(&log(&pre), last_compacted),
    )
    .unwrap();
    let damaged = segment::path(&log(&pre), 3);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&damaged, &bytes).unwrap();
    let report = verify::verify_shard(&pre, 0).unwrap();
    assert!(!report.ok());
    let salvage = verify::salvage_shard(&pre, 0).unwrap();
    assert_eq!(salvage.cut.map(|c| c.0), Some(3));
    assert!(!segment::path(&log(&pre), last_compacted).exists());
    let cfg = test_config(&pre);
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        for room in 1..=3 {
            // Dense from 1: no record from after the cut came back.
            let page = dense_history(&shard, room, "after salvage").await;
            assert!(page.items.len() < 4000);
        }
        shard.close().await.unwrap();
    });
}

/// What a derived index (search) rebuilds from: a point's records read in
/// log order, compacted files among appended ones, replay to the bodies
/// history shows (retired seqs left to the reader to filter by the room's
/// low seq).
#[test]
fn a_point_replays_in_log_order_to_what_history_shows() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        fill(&shard).await;
        shard.compact_all().await.unwrap();
        // After the compacted run: new messages, and an edit and a delete
        // of messages the compacted files hold.
        for i in 0..50u64 {
            shard
                .append_message(1, 10, "", 9_000 + i, &format!("later {i}"))
                .await
                .unwrap();
        }
        shard.edit(2, 3, 20, 9_500, "edited after").await.unwrap();
        shard.delete(3, 5, 30, 9_600).await.unwrap();
        let shown = snapshot(&shard).await;
        let point = shard.backup_point().unwrap();
        assert!(point.bytes() > 0);
        let mut replayed: std::collections::BTreeMap<(u64, u64), Option<String>> =
            Default::default();
        let mut files = Vec::new();
        let records = point
            .for_each_record(|pos, record| {
                if files.last() != Some(&pos.segment) {
                    files.push(pos.segment);
                }
                match record {
                    ArchivedRecord::Message(m) => {
                        let key = (m.room.to_native(), m.seq.to_native());
                        replayed.insert(key, Some(m.body.to_string()));
                    }
                    ArchivedRecord::Edit(e) => {
                        let key = (e.room.to_native(), e.seq.to_native());
                        replayed.insert(key, Some(e.body.to_string()));
                    }
                    ArchivedRecord::Delete(d) => {
                        replayed.insert((d.room.to_native(), d.seq.to_native()), None);
                    }
                    _ => {}
                }
                true
            })
            .unwrap();
        assert!(records > 0);
        // Compacted files first (they replace the oldest run), each file
        // read once, through to the appended ones.
        assert!(
            is_compacted(files[0]) && !is_compacted(*files.last().unwrap()),
            "{files:?}"
        );
        let mut once = files.clone();
        once.sort_unstable();
        once.dedup();
        assert_eq!(once.len(), files.len(), "{files:?}");
        for (room, items) in shown {
            let low = shard.low_seq(room);
            let from_point: Vec<(u64, Option<String>)> = replayed
                .range((room, low)..=(room, u64::MAX))
                .map(|(&(_, seq), body)| (seq, body.clone().filter(|b| !b.is_empty())))
                .collect();
            let from_history: Vec<(u64, Option<String>)> =
                items.iter().map(|i| (i.0, i.4.clone())).collect();
            assert_eq!(from_point, from_history, "room {room}");
        }
        shard.close().await.unwrap();
    });
}
