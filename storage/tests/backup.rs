//! Online backup: a backup taken while two shards append, edit, delete and
//! compact holds exactly what was acknowledged before each shard's point;
//! it checks clean, restores into a new directory that opens (indexes
//! rebuilt) with the same history, and `meta.redb` copied without
//! sessions or webhook cursors, with a new origin and its seqs capped at
//! the log. A damaged or tampered backup is found, and refused by restore.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use rookery_storage::backup::{self, BackupOptions, Progress};
use rookery_storage::*;

const PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";

/// What history shows of a room: seq → body (`None`: deleted).
type Model = BTreeMap<(u64, u64), Option<String>>;

/// Appends `n` messages over `rooms` (edits every 7th, deletes every
/// 11th), one at a time, recording what history should show.
async fn write(shards: &[ShardStore], rooms: &[u64], from: u64, n: u64, model: &mut Model) {
    for i in from..from + n {
        let room = rooms[(i % rooms.len() as u64) as usize];
        let shard = &shards[shard_of(room, shards.len() as u32) as usize];
        let body = format!("{i:05}-{}", "b".repeat(200));
        let seq = shard
            .append_message(room, 1, &format!("c{i}"), 1000 + i, &body)
            .await
            .unwrap()
            .seq();
        model.insert((room, seq), Some(body));
        if i % 7 == 0 {
            shard.edit(room, seq, 1, 2000 + i, "edited").await.unwrap();
            model.insert((room, seq), Some("edited".into()));
        }
        if i % 11 == 0 {
            shard.delete(room, seq, 1, 3000 + i).await.unwrap();
            model.insert((room, seq), None);
        }
    }
}

/// Every room's history in `shards`, as a model.
async fn history(shards: &[ShardStore], rooms: &[u64]) -> Model {
    let mut out = Model::new();
    for &room in rooms {
        let shard = &shards[shard_of(room, shards.len() as u32) as usize];
        let page = dense_history(shard, room, "history").await;
        for item in &page.items {
            out.insert((room, item.seq()), item.body().map(str::to_string));
        }
    }
    out
}

#[test]
fn a_backup_under_writes_and_compaction_restores_exactly_what_was_acknowledged_before_it() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(src.path());
    cfg.shards = 2;
    let (to, data) = (out.path().join("b1"), out.path().join("restored"));
    let (to2, cfg2) = (to.clone(), cfg.clone());
    let (model, origin) = run(move || async move {
        let store = open(&cfg2);
        let meta = store.meta().clone();
        let user = meta.create_user("alice", PHC, 1).unwrap();
        let rooms: Vec<u64> = (0..6)
            .map(|i| meta.create_room(&format!("r{i}"), false, user, 1).unwrap())
            .collect();
        meta.create_session(&[7; 32], user, u64::MAX).unwrap();
        meta.save_feed_cursors("hook", &[(0, 0)]).unwrap();
        let shards = vec![
            store.open_shard(0).await.unwrap(),
            store.open_shard(1).await.unwrap(),
        ];
        let mut model = Model::new();
        write(&shards, &rooms, 0, 1200, &mut model).await;
        for s in &shards {
            s.compact().await.unwrap();
        }
        let points: Vec<_> = shards.iter().map(|s| s.backup_point().unwrap()).collect();
        assert!(
            points.iter().all(|p| p.bytes() > 64 << 10),
            "several segments"
        );
        let before = model.clone();
        // The backup runs on its own thread while the shards write,
        // compact and roll on.
        let copier = {
            let (meta, to) = (meta.clone(), to2.clone());
            std::thread::spawn(move || {
                let opts = BackupOptions {
                    bytes_per_s_max: 4 << 20,
                };
                backup::write_backup(&meta, 2, points, None, 5, &to, &opts, &Progress::default())
            })
        };
        let mut i = 1200;
        while !copier.is_finished() {
            write(&shards, &rooms, i, 20, &mut model).await;
            for s in &shards {
                s.compact().await.unwrap();
            }
            meta.mark_read(rooms[0], user, u64::MAX).unwrap();
            i += 20;
        }
        let manifest = copier.join().unwrap().unwrap();
        assert!(i > 1200, "writes went on during the copy");
        assert_eq!(manifest.shards, 2);
        assert_eq!((manifest.users, manifest.rooms), (1, 6));
        for s in &shards {
            s.close().await.unwrap();
        }
        (before, meta.origin())
    });
    let (m, problems) = backup::check_backup(&to).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(m.records >= model.len() as u64, "{m:?}");
    assert!(!to.with_file_name("b1.partial").exists());

    backup::restore(&to, &data).unwrap();
    let mut rcfg = cfg.clone();
    rcfg.data_dir = data.clone();
    let rooms: Vec<u64> = model.keys().map(|k| k.0).collect();
    let (got, meta_view) = run(move || async move {
        let store = open(&rcfg);
        let shards = vec![
            store.open_shard(0).await.unwrap(),
            store.open_shard(1).await.unwrap(),
        ];
        let mut rooms = rooms;
        rooms.dedup();
        let got = history(&shards, &rooms).await;
        let meta = store.meta();
        let view = (
            meta.origin(),
            meta.session(&[7; 32], 1).unwrap(),
            meta.feed_cursors().unwrap(),
            meta.rooms().unwrap(),
            meta.read_seq(rooms[0], 1).unwrap(),
            shards[shard_of(rooms[0], 2) as usize].last_seq(rooms[0]),
        );
        for s in &shards {
            s.close().await.unwrap();
        }
        (got, view)
    });
    assert_eq!(
        got, model,
        "every acknowledged record before the point, nothing after"
    );
    let (new_origin, session, cursors, rooms, read, last) = meta_view;
    assert_ne!(new_origin, origin, "a restored directory is a new origin");
    assert_eq!(session, None, "sessions are not restored");
    assert!(cursors.is_empty(), "webhook cursors are not restored");
    assert_eq!(rooms.len(), 6);
    assert!(
        read <= last,
        "a receipt never passes the restored log: {read} > {last}"
    );
}

/// A backup of one shard with a few records, for the damage cases.
fn small_backup(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    let to = dir.join("small");
    let cfg = config(&src);
    let to2 = to.clone();
    run(move || async move {
        let store = open(&cfg);
        let meta = store.meta().clone();
        let room = meta.create_room("r", false, 0, 1).unwrap_or(1);
        let shard = store.open_shard(0).await.unwrap();
        write(
            std::slice::from_ref(&shard),
            &[room],
            0,
            50,
            &mut Model::new(),
        )
        .await;
        let point = vec![shard.backup_point().unwrap()];
        let t = std::thread::spawn(move || {
            backup::write_backup(
                &meta,
                1,
                point,
                None,
                1,
                &to2,
                &BackupOptions::default(),
                &Progress::default(),
            )
        });
        while !t.is_finished() {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        t.join().unwrap().unwrap();
        shard.close().await.unwrap();
    });
    to
}

fn problems(dir: &Path) -> Vec<String> {
    backup::check_backup(dir).unwrap().1
}

#[test]
fn damage_and_tampering_are_found_and_restore_refuses_them() {
    let tmp = tempfile::tempdir().unwrap();
    let to = small_backup(tmp.path());
    assert!(problems(&to).is_empty());
    let seg = to.join("shard-0/log").join(segment::file_name(1));

    // A flipped byte in a segment.
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    assert_eq!(
        problems(&to),
        vec!["shard-0/log/00000001.seg: checksum mismatch"]
    );
    let err = backup::restore(&to, &tmp.path().join("r1")).unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(!tmp.path().join("r1").exists(), "nothing written");
    bytes[100] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();

    // A file the manifest does not list; a file cut short.
    std::fs::write(to.join("shard-0/extra"), b"x").unwrap();
    std::fs::write(&seg, &bytes[..bytes.len() - 1]).unwrap();
    let p = problems(&to);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p.iter().any(|p| p.contains("extra: not in the manifest")),
        "{p:?}"
    );
    assert!(
        p.iter().any(|p| p.contains("bytes, the manifest says")),
        "{p:?}"
    );
    std::fs::remove_file(to.join("shard-0/extra")).unwrap();
    std::fs::write(&seg, &bytes).unwrap();

    // A manifest naming a path out of the backup.
    let manifest_path = to.join(backup::MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path).unwrap();
    let evil = text.replace("shard-0/log/00000001.seg", "../../etc/passwd");
    std::fs::write(&manifest_path, evil).unwrap();
    let p = problems(&to);
    assert!(
        p.iter().any(|p| p.contains("../../etc/passwd: not a path")),
        "{p:?}"
    );
    assert!(backup::restore(&to, &tmp.path().join("r2")).is_err());
    std::fs::write(&manifest_path, &text).unwrap();

    // A restore into a directory that holds something is refused.
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("x"), b"x").unwrap();
    let err = backup::restore(&to, &busy).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    // An empty one is fine, as is a new one.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    backup::restore(&to, &empty).unwrap();
    backup::restore(&to, &tmp.path().join("new")).unwrap();
    assert!(Manifest::read(&empty).unwrap().is_some());
}

/// Uploads are in a backup: each file (and thumbnail) the copy of
/// `meta.redb` names, listed and checked like the segments, and restored
/// with its row; an upload whose file is gone when the backup copies it is
/// forgotten in the copy (no row without its file), its quota freed. A
/// tampered upload file is found.
#[test]
fn uploads_are_backed_up_and_restored_with_their_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, to, data) = (
        tmp.path().join("src"),
        tmp.path().join("b"),
        tmp.path().join("restored"),
    );
    let cfg = config(&src);
    let (cfg2, to2, src2) = (cfg.clone(), to.clone(), src.clone());
    let (kept, gone, owner) = run(move || async move {
        let store = open(&cfg2);
        let meta = store.meta().clone();
        let owner = meta.create_user("alice", PHC, 1).unwrap();
        let files = UploadFiles::open(&src2).unwrap();
        let place = |id: u128, bytes: &[u8], thumb: Option<&[u8]>| {
            let mut inc = files.incoming().unwrap();
            inc.write(bytes).unwrap();
            let sha256 = files.place(inc, id, thumb).unwrap();
            let up = meta::Upload {
                id,
                owner,
                bytes: bytes.len() as u64,
                created_ms: 1,
                pending: 0,
                content_type: "text/plain; charset=utf-8".into(),
                name: "a.txt".into(),
                sha256,
                width: 0,
                height: 0,
                thumb_bytes: thumb.map_or(0, |t| t.len() as u64),
            };
            meta.add_upload(&up, 1 << 30).unwrap();
            up
        };
        let kept = place(0xab01, &[b'k'; 10_000], Some(b"thumbnail"));
        let gone = place(0xcd02, b"soon gone", None);
        // Its file vanishes (as a removal racing the backup would leave).
        std::fs::remove_file(files.path(gone.id)).unwrap();
        let shard = store.open_shard(0).await.unwrap();
        // Messages holding the uploads: one before the backup's point,
        // one after it (not in the copy of the log, nor holding in it).
        let room = meta.create_room("files", false, owner, 1).unwrap();
        let ids = [kept.id, gone.id];
        let post = |n: u64| {
            let (shard, meta) = (&shard, &meta);
            async move {
                let refs = ids.map(|id| rookery_storage::FileRef {
                    id: id.to_be_bytes(),
                    name: "a.txt".into(),
                    content_type: "text/plain; charset=utf-8".into(),
                    bytes: 1,
                    width: 0,
                    height: 0,
                    thumb: false,
                });
                meta.attach_uploads(owner, &ids).unwrap();
                let seq = shard
                    .append_post(room, owner, "", n, "", 0, refs.to_vec())
                    .await
                    .unwrap()
                    .seq();
                meta.hold_uploads(room, seq, &ids).unwrap();
                seq
            }
        };
        assert_eq!(post(10).await, 1);
        let point = vec![shard.backup_point().unwrap()];
        assert_eq!(post(11).await, 2);
        shard.flush().await.unwrap();
        assert_eq!(meta.upload_holders(kept.id, 10).unwrap().len(), 2);
        // The copy is made at once: meta.redb's `last_seq` of the room
        // may lag the log (the index pushes it after its commits), and the
        // message the log copy holds keeps its hold all the same.
        let t = std::thread::spawn(move || {
            backup::write_backup(
                &meta,
                1,
                point,
                Some(&files),
                1,
                &to2,
                &BackupOptions::default(),
                &Progress::default(),
            )
        });
        while !t.is_finished() {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        t.join().unwrap().unwrap();
        shard.close().await.unwrap();
        (kept, gone, owner)
    });
    assert!(problems(&to).is_empty(), "{:?}", problems(&to));
    let file = to.join("uploads/00/0000000000000000000000000000ab01");
    assert_eq!(std::fs::read(&file).unwrap(), vec![b'k'; 10_000]);
    assert!(file.with_extension("thumb").exists());

    // Tampered, then put back.
    std::fs::write(&file, b"evil").unwrap();
    assert!(problems(&to).iter().any(|p| p.contains("ab01")), "found");
    std::fs::write(&file, vec![b'k'; 10_000]).unwrap();

    backup::restore(&to, &data).unwrap();
    let meta = Meta::open(&data.join("meta.redb"), 1 << 20).unwrap();
    assert_eq!(meta.upload(kept.id).unwrap(), Some(kept.clone()));
    assert_eq!(
        meta.upload(gone.id).unwrap(),
        None,
        "forgotten: its file was gone"
    );
    assert_eq!(meta.upload_usage(owner).unwrap(), kept.charged());
    let seqs = |id| -> Vec<u64> {
        let holders = meta.upload_holders(id, 10).unwrap();
        holders.into_iter().map(|(_, seq)| seq).collect()
    };
    assert_eq!(
        seqs(kept.id),
        [1],
        "held only by the message the copy holds"
    );
    assert!(seqs(gone.id).is_empty());
    let files = UploadFiles::open(&data).unwrap();
    assert_eq!(
        std::fs::read(files.path(kept.id)).unwrap(),
        vec![b'k'; 10_000]
    );
    assert_eq!(
        std::fs::read(files.thumb_path(kept.id)).unwrap(),
        b"thumbnail"
    );
    drop(cfg);
}
