//! Recovery and retention: torn tails, corruption in the middle, index
//! rebuilt from the log, arbitrary segment bytes, and space reclaimed by
//! retention with the index kept consistent.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::*;
use proptest::prelude::*;
use rookery_storage::segment::{self, HEADER_BYTES};
use rookery_storage::verify::verify_shard;
use rookery_storage::*;

fn log_dir(data: &Path) -> PathBuf {
    data.join("shard-0/log")
}

fn last_segment(data: &Path) -> PathBuf {
    let ids = segment::list(&log_dir(data)).unwrap();
    segment::path(&log_dir(data), *ids.last().unwrap())
}

/// Writes `n` messages in room 1 (bodies "b{seq}") and closes.
fn populate(cfg: &StorageConfig, n: u64, body_len: usize) {
    let cfg = cfg.clone();
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        for i in 1..=n {
            let body = format!("b{i}-{}", "p".repeat(body_len));
            shard
                .append_message(1, 7, &format!("c{i}"), i, &body)
                .await
                .unwrap();
        }
        shard.close().await.unwrap();
    });
}

/// Reopens and returns the seqs of room 1, or the open error.
fn reopen_seqs(cfg: &StorageConfig) -> Result<(Vec<u64>, ShardStats)> {
    let cfg = cfg.clone();
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await?;
        let page = shard.history(1, Cursor::after(0, 100_000)).await?;
        for item in &page.items {
            assert!(
                item.body()
                    .unwrap()
                    .starts_with(&format!("b{}-", item.seq())),
                "record content intact"
            );
        }
        let stats = shard.stats();
        shard.close().await?;
        Ok((page.items.iter().map(|i| i.seq()).collect(), stats))
    })
}

/// The offset of each frame in a segment file, read with the scanner.
fn frame_offsets(path: &Path, id: u32) -> Vec<u32> {
    let bytes = std::fs::read(path).unwrap();
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&bytes);
    let mut offs = Vec::new();
    segment::scan(&aligned, id, HEADER_BYTES as u32, true, |o, _, _| {
        offs.push(o);
        Ok(())
    })
    .unwrap();
    offs
}

#[test]
fn torn_tail_after_the_checkpoint_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    populate(&cfg, 40, 50);
    // Lose the index (checkpoint 0: everything is replayed) and cut the last
    // record of the last segment in half, as a crash mid-write would.
    std::fs::remove_file(dir.path().join("shard-0/index.redb")).unwrap();
    let path = last_segment(dir.path());
    let id: u32 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let offs = frame_offsets(&path, id);
    let cut = *offs.last().unwrap() as u64 + 12;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let (seqs, stats) = reopen_seqs(&cfg).unwrap();
    let lost = 40 - seqs.len() as u64;
    assert_eq!(lost, 1, "only the torn record is gone");
    assert_eq!(seqs, (1..=39).collect::<Vec<_>>());
    assert_eq!(stats.torn_bytes, 12);
    // The shard keeps working and the cut stays cut.
    let cfg2 = cfg.clone();
    run(move || async move {
        let store = open(&cfg2);
        let shard = store.open_shard(0).await.unwrap();
        assert_eq!(
            shard
                .append_message(1, 7, "again", 99, "b40-again")
                .await
                .unwrap()
                .seq(),
            40
        );
        shard.close().await.unwrap();
    });
    assert!(verify_shard(dir.path(), 0).unwrap().ok());
}

#[test]
fn garbage_after_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    populate(&cfg, 25, 10);
    let path = last_segment(dir.path());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&[0x37, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3])
        .unwrap();
    drop(f);
    let report = verify_shard(dir.path(), 0).unwrap();
    assert!(
        report.ok(),
        "a torn tail is a note, not an error: {:?}",
        report.errors
    );
    assert!(report.notes.iter().any(|n| n.contains("torn tail")));
    let (seqs, stats) = reopen_seqs(&cfg).unwrap();
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
    assert_eq!(stats.torn_bytes, 11);
}

#[test]
fn flipped_byte_in_the_middle_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    populate(&cfg, 200, 600);
    let ids = segment::list(&log_dir(dir.path())).unwrap();
    assert!(ids.len() >= 3);
    let victim = segment::path(&log_dir(dir.path()), ids[1]);
    let offs = frame_offsets(&victim, ids[1]);
    let at = offs[offs.len() / 2] as u64 + 30;
    flip(&victim, at);
    // Checkpointed region: open succeeds (it is not replayed), but reading the
    // damaged record is an error, not a panic, and verify names it.
    let cfg2 = cfg.clone();
    let damaged = ids[1];
    let read_errors = run(move || async move {
        let store = open(&cfg2);
        let shard = store.open_shard(0).await.unwrap();
        let mut errors = 0;
        let mut ok = 0;
        for seq in 1..=200 {
            match shard.get(1, seq).await {
                Ok(Some(_)) => ok += 1,
                Err(Error::Corrupt { segment, .. }) => {
                    assert_eq!(segment, damaged);
                    errors += 1
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(ok, 199);
        shard.close().await.unwrap();
        errors
    });
    assert_eq!(read_errors, 1);
    let report = verify_shard(dir.path(), 0).unwrap();
    assert!(!report.ok());
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains(&format!("segment {}", ids[1]))),
        "{:?}",
        report.errors
    );
    // Replayed region: open refuses with Corrupt naming segment and offset.
    std::fs::remove_file(dir.path().join("shard-0/index.redb")).unwrap();
    match reopen_seqs(&cfg) {
        Err(Error::Corrupt {
            segment, offset, ..
        }) => {
            assert_eq!(segment, ids[1]);
            assert_eq!(offset as u64, at - 30);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // Salvage cuts the log before the damage; what precedes it survives.
    let salvage = rookery_storage::verify::salvage_shard(dir.path(), 0).unwrap();
    assert_eq!(salvage.cut, Some((ids[1], (at - 30) as u32)));
    let (seqs, _) = reopen_seqs(&cfg).unwrap();
    assert!(!seqs.is_empty() && seqs == (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(verify_shard(dir.path(), 0).unwrap().ok());
}

fn flip(path: &Path, at: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    std::io::Read::read_exact(&mut f, &mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x5a]).unwrap();
}

#[test]
fn log_shorter_than_the_checkpoint_is_an_index_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    populate(&cfg, 30, 20);
    let path = last_segment(dir.path());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(HEADER_BYTES as u64 + 8)
        .unwrap();
    // The last segment of a clean close is the one the checkpoint points into
    // (or past); cutting it below the checkpoint means acknowledged data is
    // gone: refuse rather than silently serve less.
    let r = reopen_seqs(&cfg);
    assert!(
        matches!(r, Err(Error::Corrupt { .. }) | Err(Error::IndexMismatch(_))),
        "{r:?}"
    );
}

#[test]
fn index_is_rebuilt_from_the_log_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    populate(&cfg, 500, 100);
    let (before, _) = reopen_seqs(&cfg).unwrap();
    std::fs::remove_file(dir.path().join("shard-0/index.redb")).unwrap();
    let (after, stats) = reopen_seqs(&cfg).unwrap();
    assert_eq!(before, after);
    assert_eq!(stats.replayed, 500);
    assert!(verify_shard(dir.path(), 0).unwrap().ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Whatever bytes a segment holds, open either succeeds or returns an
    /// error: it never panics or reads out of bounds.
    #[test]
    fn arbitrary_segment_bytes_give_a_clean_result(body in proptest::collection::vec(any::<u8>(), 0..3000), keep_header in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        std::fs::create_dir_all(log_dir(dir.path())).unwrap();
        let mut bytes = Vec::new();
        if keep_header {
            bytes.extend_from_slice(&segment::Header::appended(0, 1, 0).encode());
        }
        bytes.extend_from_slice(&body);
        std::fs::write(segment::path(&log_dir(dir.path()), 1), &bytes).unwrap();
        let cfg2 = cfg.clone();
        let outcome = run(move || async move {
            let store = open(&cfg2);
            match store.open_shard(0).await {
                Ok(shard) => {
                    shard.append_message(1, 1, "", 1, "after").await.unwrap();
                    shard.close().await.unwrap();
                    true
                }
                Err(_) => false,
            }
        });
        prop_assert!(outcome || !keep_header || !body.is_empty());
        let _ = verify_shard(dir.path(), 0);
    }
}

#[test]
fn retention_by_count_and_age_reclaims_segments_and_keeps_the_index_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let cfg2 = cfg.clone();
    run(move || async move {
        let store = open(&cfg2);
        let shard = store.open_shard(0).await.unwrap();
        let body = "r".repeat(900);
        // Room 1: 200 messages, ts 1000..1199. Room 2: 200 messages.
        for i in 0..200u64 {
            shard
                .append_message(1, 1, "", 1000 + i, &body)
                .await
                .unwrap();
            shard
                .append_message(2, 1, "", 1000 + i, &body)
                .await
                .unwrap();
        }
        shard
            .edit(1, 10, 1, 2000, "edited before retirement")
            .await
            .unwrap();
        let segs_before = segment::list(&dir_log(&store)).unwrap().len();
        shard
            .set_retention(
                1,
                Retention {
                    max_messages: Some(50),
                    max_age_ms: None,
                },
            )
            .await
            .unwrap();
        shard
            .set_retention(
                2,
                Retention {
                    max_messages: None,
                    max_age_ms: Some(60),
                },
            )
            .await
            .unwrap();
        // now = 1200: room 2 keeps ts >= 1140 (60 messages).
        let report = shard.enforce_retention(1200).await.unwrap();
        assert_eq!(report.messages_expired, 150 + 140);
        assert_eq!(shard.low_seq(1), 151);
        assert_eq!(shard.low_seq(2), 141);
        assert!(report.segments_deleted > 0, "{report:?}");
        assert!(report.bytes_reclaimed >= report.segments_deleted * (32 << 10));
        assert_eq!(
            segment::list(&dir_log(&store)).unwrap().len(),
            segs_before - report.segments_deleted as usize
        );
        let p1 = shard.history(1, Cursor::after(0, 1000)).await.unwrap();
        assert_eq!(p1.items.first().unwrap().seq(), 151);
        assert_eq!(p1.items.len(), 50);
        assert!(shard.get(1, 10).await.unwrap().is_none());
        assert_eq!(
            shard
                .history(2, Cursor::after(0, 1000))
                .await
                .unwrap()
                .items
                .len(),
            60
        );
        // Idempotent: a second pass removes nothing more.
        assert_eq!(
            shard.enforce_retention(1200).await.unwrap(),
            RetentionReport::default()
        );
        // Seqs keep going.
        assert_eq!(
            shard
                .append_message(1, 1, "", 3000, "new")
                .await
                .unwrap()
                .seq(),
            201
        );
        shard.close().await.unwrap();
        drop(shard);
        let report = verify_shard(store.data_dir(), 0).unwrap();
        assert!(report.ok(), "{:?}", report.errors);
        assert_eq!(report.rooms[&1].messages, 51);
        let shard = store.open_shard(0).await.unwrap();
        assert_eq!(shard.low_seq(1), 151);
        assert_eq!(
            shard.retention(1),
            Retention {
                max_messages: Some(50),
                max_age_ms: None
            }
        );
        assert_eq!(
            shard
                .history(1, Cursor::after(0, 1000))
                .await
                .unwrap()
                .items
                .len(),
            51
        );
        shard.close().await.unwrap();
        drop(shard);
        // A full rebuild from the log honours the retired range too.
        std::fs::remove_file(store.data_dir().join("shard-0/index.redb")).unwrap();
        let shard = store.open_shard(0).await.unwrap();
        let p = shard.history(1, Cursor::after(0, 1000)).await.unwrap();
        assert_eq!(
            p.items.iter().map(|i| i.seq()).collect::<Vec<_>>(),
            (151..=201).collect::<Vec<_>>()
        );
        assert_eq!((shard.low_seq(1), shard.last_seq(1)), (151, 201));
        assert_eq!(
            shard.retention(2),
            Retention {
                max_messages: None,
                max_age_ms: Some(60)
            }
        );
        assert_eq!(
            shard
                .append_message(1, 1, "", 4000, "after rebuild")
                .await
                .unwrap()
                .seq(),
            202
        );
        shard.close().await.unwrap();
    });
}

#[test]
fn a_retired_room_reads_empty_and_compaction_removes_its_text() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let cfg2 = cfg.clone();
    run(move || async move {
        let store = open(&cfg2);
        let shard = store.open_shard(0).await.unwrap();
        let (gone, kept) = ("g".repeat(900), "k".repeat(900));
        // Rooms 1 and 2 interleaved over several segments; room 1's last
        // appends still queued when it is retired.
        for i in 0..150u64 {
            shard
                .append_message(1, 1, "", 1000 + i, &gone)
                .await
                .unwrap();
            shard
                .append_message(2, 1, "", 1000 + i, &kept)
                .await
                .unwrap();
        }
        shard
            .edit(1, 10, 1, 2000, "edited, then retired")
            .await
            .unwrap();
        let queued: Vec<_> = (0..20u64)
            .map(|i| {
                let shard = shard.clone();
                let body = gone.clone();
                glommio::spawn_local(async move {
                    shard.append_message(1, 1, "", 3000 + i, &body).await
                })
            })
            .collect();
        // Queued, not yet durable: retiring waits for them.
        glommio::yield_if_needed().await;
        glommio::executor().yield_now().await;
        assert!(shard.last_seq(1) < 170, "appends still under way");
        assert_eq!(shard.retire_room(1).await.unwrap().messages, 170);
        for task in queued {
            assert!(task.await.unwrap().seq() > 150);
        }
        assert_eq!((shard.low_seq(1), shard.last_seq(1)), (171, 170));
        assert!(shard
            .history(1, Cursor::after(0, 1000))
            .await
            .unwrap()
            .items
            .is_empty());
        assert!(shard.get(1, 10).await.unwrap().is_none());
        assert!(shard.edit(1, 20, 1, 4000, "too late").await.is_err());
        // Twice is nothing more; room 2 is untouched.
        assert_eq!(shard.retire_room(1).await.unwrap().messages, 0);
        assert_eq!(dense_history(&shard, 2, "kept").await.items.len(), 150);
        // Compaction leaves room 1's text out of every file.
        let report = shard.compact_all().await.unwrap();
        assert!(report.records_out < report.records_in, "{report:?}");
        for seg in segment::list(&dir_log(&store)).unwrap() {
            let bytes = std::fs::read(segment::path(&dir_log(&store), seg)).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(&gone[..64]),
                "segment {seg} holds retired text"
            );
            assert!(!text.contains("edited, then retired"), "segment {seg}");
        }
        shard.close().await.unwrap();
        drop(shard);
        let report = verify_shard(store.data_dir(), 0).unwrap();
        assert!(report.ok(), "{:?}", report.errors);
        // The low seq is durable, and a rebuilt index honours it.
        std::fs::remove_file(store.data_dir().join("shard-0/index.redb")).unwrap();
        let shard = store.open_shard(0).await.unwrap();
        assert_eq!(shard.low_seq(1), 171);
        assert!(shard
            .history(1, Cursor::after(0, 1000))
            .await
            .unwrap()
            .items
            .is_empty());
        assert_eq!(
            dense_history(&shard, 2, "kept, reopened").await.items.len(),
            150
        );
        shard.close().await.unwrap();
    });
}

fn dir_log(store: &Store) -> PathBuf {
    store.data_dir().join("shard-0/log")
}
