//! A shard's log read from another thread as a feed of changes: every
//! acknowledged record once, in log order, across segment rolls; a saved
//! cursor holds its segments through compaction, and a reader whose
//! segments went anyway is told so.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rookery_storage::*;

/// What a reader keeps of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Message {
        room: u64,
        seq: u64,
        body: String,
    },
    Edit {
        room: u64,
        seq: u64,
        body: String,
    },
    Delete {
        room: u64,
        seq: u64,
    },
    React {
        room: u64,
        seq: u64,
        emoji: String,
        on: bool,
    },
}

fn seen(record: &ArchivedRecord) -> Seen {
    match record {
        ArchivedRecord::Message(_) | ArchivedRecord::Reply(_) | ArchivedRecord::Post(_) => {
            let m = record.message().expect("a message kind");
            Seen::Message {
                room: m.room.into(),
                seq: m.seq.into(),
                body: m.body.to_string(),
            }
        }
        ArchivedRecord::Edit(e) => Seen::Edit {
            room: e.room.into(),
            seq: e.seq.into(),
            body: e.body.to_string(),
        },
        ArchivedRecord::Delete(d) => Seen::Delete {
            room: d.room.into(),
            seq: d.seq.into(),
        },
        ArchivedRecord::React(r) => Seen::React {
            room: r.room.into(),
            seq: r.seq.into(),
            emoji: r.emoji.to_string(),
            on: r.on,
        },
    }
}

/// Reads `feed` from `from` until `want` records or the deadline, in reads
/// of `bytes_max`, sleeping on the doorbell in between.
fn follow(feeds: &LogFeeds, from: Pos, want: usize, bytes_max: usize) -> (Vec<Seen>, Pos, u32) {
    let feed = feeds.shard(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut got, mut at, mut skipped) = (Vec::new(), from, 0);
    while got.len() < want && Instant::now() < deadline {
        let rings = feeds.doorbell().rings();
        let read = feed
            .read(at, bytes_max, |pos, r| {
                assert!(pos >= at, "positions only move forward");
                got.push(seen(r));
            })
            .unwrap();
        at = read.next;
        skipped += read.skipped_segments;
        if read.records == 0 {
            feeds.doorbell().wait(rings, Duration::from_millis(100));
        }
    }
    (got, at, skipped)
}

/// Appends, edits and deletes in three rooms, one at a time (so the log's
/// order is the order of the calls), filling several 64 KiB segments.
async fn write_some(shard: &ShardStore, n: u64) -> Vec<Seen> {
    let mut expect = Vec::new();
    for i in 0..n {
        let room = i % 3 + 1;
        let body = format!("{i:04}-{}", "x".repeat(300));
        let a = shard
            .append_message(room, 9, &format!("c{i}"), 1000 + i, &body)
            .await
            .unwrap();
        let seq = a.seq();
        expect.push(Seen::Message { room, seq, body });
        if i % 7 == 0 {
            shard.edit(room, seq, 9, 2000 + i, "edited").await.unwrap();
            expect.push(Seen::Edit {
                room,
                seq,
                body: "edited".into(),
            });
        }
        if i % 11 == 0 {
            shard.delete(room, seq, 9, 3000 + i).await.unwrap();
            expect.push(Seen::Delete { room, seq });
        }
    }
    expect
}

#[test]
fn a_reader_on_another_thread_sees_every_acknowledged_record_once_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.durability = Durability::None;
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        let feeds = store.feeds().clone();
        let start = feeds.shard(0).acked().expect("published at open");
        assert_eq!(
            feeds
                .shard(0)
                .read(start, 1 << 20, |_, _| {})
                .unwrap()
                .records,
            0
        );
        let n = 600;
        // Messages (600) + edits (86) + deletes (55).
        let total = 600 + 86 + 55;
        let reader = {
            let feeds = feeds.clone();
            std::thread::spawn(move || follow(&feeds, start, total, 4096))
        };
        let expect = write_some(&shard, n).await;
        assert_eq!(expect.len(), total);
        let (got, end, skipped) = reader.join().unwrap();
        assert_eq!(got, expect, "every record once, in order");
        assert_eq!(skipped, 0);
        assert_eq!(Some(end), feeds.shard(0).acked());
        assert!(end.segment > start.segment + 2, "it crossed segments");
        // Read again in reads of one byte: one record per read, the same.
        let (again, _, _) = follow(&feeds, start, total, 1);
        assert_eq!(again, expect);
        assert!(feeds.shard(0).backlog_bytes(start) > 3 * (64 << 10) / 2);
        assert_eq!(feeds.shard(0).backlog_bytes(end), 0);
        // The newest segments up to a bound: the start of one segment, with
        // the backlog from there within the bound.
        let resume = feeds.shard(0).resume_within(100 << 10).unwrap();
        assert_eq!(resume.offset, segment::HEADER_BYTES as u32);
        assert!(resume.segment > start.segment && resume.segment <= end.segment);
        assert!(feeds.shard(0).backlog_bytes(resume) <= 100 << 10);
        shard.close().await.unwrap();
    });
}

#[test]
fn a_saved_cursor_holds_its_segments_through_compaction_and_a_lost_one_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (cursor, expect) = {
        let cfg = cfg.clone();
        run(move || async move {
            let store = open(&cfg);
            let shard = store.open_shard(0).await.unwrap();
            let start = store.feeds().shard(0).acked().unwrap();
            let expect = write_some(&shard, 400).await;
            store
                .meta()
                .save_feed_cursors("hook", &[(0, start.to_u64())])
                .unwrap();
            shard.close().await.unwrap();
            (start, expect)
        })
    };
    // Reopened, the store holds from the saved cursor: neither compaction
    // nor retention touches those segments, and the reader finds
    // everything.
    {
        let cfg = cfg.clone();
        run(move || async move {
            let store = open(&cfg);
            let shard = store.open_shard(0).await.unwrap();
            let report = shard.compact_all().await.unwrap();
            assert_eq!(report.segments_in, 0, "nothing held was rewritten");
            let keep_one = Retention {
                max_messages: Some(1),
                max_age_ms: None,
            };
            for room in 1..=3 {
                shard.set_retention(room, keep_one).await.unwrap();
            }
            let report = shard.enforce_retention(u64::MAX).await.unwrap();
            assert!(report.messages_expired > 390, "{report:?}");
            assert_eq!(report.segments_deleted, 0, "nothing held was deleted");
            let (got, _, skipped) = follow(store.feeds(), cursor, expect.len(), 1 << 20);
            assert_eq!(skipped, 0);
            assert_eq!(got, expect);
            store.meta().drop_feed_cursors("hook").unwrap();
            shard.close().await.unwrap();
        })
    };
    // Without the cursor, the segments go; a reader at the old position is
    // told it skipped them and reads nothing of them.
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        let retired = shard.enforce_retention(u64::MAX).await.unwrap();
        let compacted = shard.compact_all().await.unwrap();
        assert!(
            retired.segments_deleted + compacted.segments_in > 2,
            "{retired:?} {compacted:?}"
        );
        let feed = store.feeds().shard(0);
        let read = feed.read(cursor, 1 << 20, |_, _| {}).unwrap();
        assert!(read.skipped_segments > 2, "{read:?}");
        assert_eq!(read.records, 0);
        assert_eq!(Some(read.next), feed.acked());
        shard.close().await.unwrap();
    });
}
