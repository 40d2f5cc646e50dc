//! Uploads through the engine: a file kept whole with its sniffed type,
//! hash and (for an image) size and thumbnail; the limits on a file and on
//! a user's quota; what a client declares checked against the bytes;
//! removal freeing the quota; files a crash left unrecorded removed at
//! start.

mod common;

use std::io::Cursor;

use rookery_engine::{Engine, Error, UploadLimits, Uploads};
use sha2::{Digest, Sha256};

/// A PNG of `w` × `h` pixels.
fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]));
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// `bytes` uploaded by `owner` now (the sweep of uploads never sent goes
/// by when).
fn upload(
    uploads: &Uploads,
    owner: u64,
    bytes: &[u8],
    name: &str,
    declared: Option<&str>,
) -> Result<rookery_engine::Upload, Error> {
    let mut inc = uploads.begin(owner, bytes.len() as u64)?;
    for chunk in bytes.chunks(1000) {
        inc.write(chunk).map_err(Error::Storage)?;
    }
    uploads.finish(inc, owner, name, declared, now())
}

#[test]
fn uploads_are_kept_sniffed_thumbnailed_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::small_config(dir.path(), 1);
    cfg.uploads = UploadLimits {
        file_bytes_max: 200_000,
        quota_bytes_per_user: 300_000,
        thumbnail_edge_px: 64,
        ..UploadLimits::default()
    };
    let engine = Engine::start(cfg.clone()).unwrap();
    let meta = engine.directory();
    let alice = meta.ensure_external_user("alice", 0).unwrap();
    let uploads = engine.uploads();

    // An image: kept whole, sniffed, sized, with a thumbnail within 64 px.
    let image = png(300, 150);
    let up = upload(&uploads, alice, &image, "../cat.png", Some("image/png")).unwrap();
    assert_eq!(
        (up.content_type.as_str(), up.name.as_str()),
        ("image/png", "cat.png")
    );
    assert_eq!(
        (up.width, up.height, up.bytes),
        (300, 150, image.len() as u64)
    );
    assert_eq!(up.sha256, <[u8; 32]>::from(Sha256::digest(&image)));
    assert_eq!(std::fs::read(uploads.file(up.id)).unwrap(), image);
    let thumb =
        image::load_from_memory(&std::fs::read(uploads.thumbnail_file(up.id)).unwrap()).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (64, 32));
    assert_eq!(
        up.thumb_bytes,
        std::fs::metadata(uploads.thumbnail_file(up.id))
            .unwrap()
            .len()
    );
    assert_eq!(uploads.get(up.id).unwrap(), Some(up.clone()));
    assert_eq!(uploads.usage(alice).unwrap(), up.charged());

    // Text is text; markup is opaque; neither gets a thumbnail.
    let text = upload(&uploads, alice, b"notes\n", "a.txt", None).unwrap();
    assert_eq!(text.content_type, "text/plain; charset=utf-8");
    let html = upload(
        &uploads,
        alice,
        b"<html><script>x</script>",
        "a.html",
        Some("text/html"),
    )
    .unwrap();
    assert_eq!(html.content_type, "application/octet-stream");
    assert_eq!((html.width, html.thumb_bytes), (0, 0));
    // A file that says it is an image and is not; a damaged image.
    assert!(matches!(
        upload(&uploads, alice, b"not a png", "x.png", Some("image/png")),
        Err(Error::InvalidInput(_))
    ));
    let mut damaged = png(40, 40);
    damaged.truncate(60);
    let broken = upload(&uploads, alice, &damaged, "b.png", None).unwrap();
    assert_eq!(broken.content_type, "image/png");
    assert_eq!((broken.width, broken.thumb_bytes), (0, 0), "no thumbnail");

    // Limits: one file, then the quota (checked before and when kept).
    assert!(matches!(
        uploads.begin(alice, 200_001),
        Err(Error::TooLarge(_))
    ));
    let used = uploads.usage(alice).unwrap();
    let left = 300_000 - used;
    assert!(matches!(
        uploads.begin(alice, left + 1),
        Err(Error::TooLarge(_))
    ));
    let half = left / 2 + 1;
    let a = uploads.begin(alice, half).unwrap();
    let b = uploads.begin(alice, half).unwrap();
    let fill = vec![b'x'; half as usize];
    let mut kept = 0;
    for mut inc in [a, b] {
        inc.write(&fill).unwrap();
        match uploads.finish(inc, alice, "fill.txt", None, 1) {
            Ok(_) => kept += 1,
            Err(Error::TooLarge(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(
        kept, 1,
        "two that each fit alone: the second passes the quota"
    );
    assert_eq!(uploads.usage(alice).unwrap(), used + half);
    let files = |dir: &std::path::Path| {
        walk(&dir.join("uploads"))
            .into_iter()
            .filter(|p| !p.starts_with(dir.join("uploads/tmp")))
            .count()
    };
    // image + thumb, text, html, broken, fill.
    assert_eq!(files(dir.path()), 6, "the refused one left no file");

    // Removing frees its bytes and its files.
    assert_eq!(uploads.remove(up.id).unwrap().map(|u| u.id), Some(up.id));
    assert!(!uploads.file(up.id).exists() && !uploads.thumbnail_file(up.id).exists());
    assert_eq!(uploads.usage(alice).unwrap(), used + half - up.charged());
    assert_eq!(uploads.remove(up.id).unwrap(), None);
    assert!(uploads.begin(alice, up.bytes).is_ok(), "room again");

    // A file placed but never recorded (a crash between) goes at start.
    let orphan = uploads.file(0xabcdef);
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"orphan").unwrap();
    drop(uploads);
    drop(meta);
    engine.shutdown().unwrap();
    let engine = Engine::start(cfg).unwrap();
    assert!(!orphan.exists(), "an unrecorded file is removed at start");
    let uploads = engine.uploads();
    assert_eq!(uploads.get(text.id).unwrap(), Some(text.clone()));
    assert_eq!(std::fs::read(uploads.file(text.id)).unwrap(), b"notes\n");
    drop(uploads);
    engine.shutdown().unwrap();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Messages carry their sender's uploads: live events and pages show them
/// (not once deleted); another user's upload or a missing one is refused
/// and counts nothing; a retry counts nothing more; deleting the last
/// message that carries an upload frees it, files and quota.
#[test]
fn messages_carry_uploads_and_the_last_delete_frees_them() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(common::small_config(dir.path(), 2)).unwrap();
    let meta = engine.directory();
    let alice = meta.ensure_external_user("alice", 0).unwrap();
    let bob = meta.ensure_external_user("bob", 0).unwrap();
    let room = engine.create_room("files", false, alice).wait().unwrap();
    engine
        .membership(room, bob, bob, rookery_engine::MemberOp::Join)
        .wait()
        .unwrap();
    let uploads = engine.uploads();
    let image = upload(&uploads, alice, &png(100, 50), "cat.png", None).unwrap();
    let text = upload(&uploads, alice, b"notes", "n.txt", None).unwrap();
    let bobs = upload(&uploads, bob, b"his", "b.txt", None).unwrap();
    let sub = engine.subscribe(room, Some(0)).wait().unwrap();

    let ack = engine
        .post_with(room, alice, "c1", "", None, vec![image.id, text.id])
        .wait()
        .unwrap();
    assert_eq!(ack.seq, 1, "files and no text");
    let again = engine
        .post_with(room, alice, "c1", "", None, vec![image.id, text.id])
        .wait()
        .unwrap();
    assert!(again.duplicate);
    let ack2 = engine
        .post_with(room, alice, "", "the same cat", Some(1), vec![image.id])
        .wait()
        .unwrap();
    assert_eq!(ack2.seq, 2);
    for (who, ids) in [
        (alice, vec![bobs.id]),
        (alice, vec![12345]),
        (bob, vec![image.id]),
    ] {
        assert!(matches!(
            engine.post_with(room, who, "", "x", None, ids).wait(),
            Err(Error::NotFound(_))
        ));
    }
    assert!(matches!(
        engine
            .post_with(room, alice, "", "x", None, vec![1; 11])
            .wait(),
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(
        engine.last_seq(room).wait().unwrap(),
        2,
        "refusals take no seq"
    );
    // Refused before anything counts: an upload twice, a body too long;
    // a retry carrying another upload gives its count back. None of them
    // loses the upload.
    let spare = upload(&uploads, alice, b"spare", "s.txt", None).unwrap();
    let long = "x".repeat(70_000);
    for (body, ids) in [
        ("x", vec![spare.id, spare.id]),
        (long.as_str(), vec![spare.id]),
    ] {
        assert!(matches!(
            engine.post_with(room, alice, "", body, None, ids).wait(),
            Err(Error::InvalidInput(_))
        ));
    }
    let retry = engine
        .post_with(room, alice, "c1", "", None, vec![spare.id])
        .wait()
        .unwrap();
    assert!(retry.duplicate && retry.seq == 1);
    let holders = |id: u128| uploads.holders(id, 10).unwrap();
    assert_eq!(
        uploads.get(spare.id).unwrap().map(|u| u.pending),
        Some(0),
        "kept, nothing pending"
    );
    assert!(holders(spare.id).is_empty(), "held by nothing");
    assert_eq!(holders(image.id), [(room, 1), (room, 2)]);
    assert_eq!(holders(text.id), [(room, 1)]);
    assert!(holders(bobs.id).is_empty());

    // Live events and pages carry the files.
    let mut live = Vec::new();
    while live.len() < 2 {
        let e = sub
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap()
            .unwrap();
        if e.kind() == rookery_engine::EventKind::Message {
            live.push(serde_json::from_str::<serde_json::Value>(e.json()).unwrap());
        }
    }
    let hex = |id: u128| format!("{id:032x}");
    assert_eq!(live[0]["files"][0]["id"], hex(image.id));
    assert_eq!(live[0]["files"][0]["name"], "cat.png");
    assert_eq!(live[0]["files"][0]["width"], 100);
    assert_eq!(
        live[0]["files"][0]["thumbnail"],
        format!("/api/uploads/{}/thumbnail", hex(image.id))
    );
    assert_eq!(
        live[0]["files"][1]["content_type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(live[0]["files"][1].get("thumbnail"), None);
    assert_eq!(
        (
            live[1]["reply_to"].as_u64(),
            live[1]["files"].as_array().map(Vec::len)
        ),
        (Some(1), Some(1))
    );
    let page = engine
        .history(room, rookery_engine::Cursor::after(0, 10))
        .wait()
        .unwrap();
    assert_eq!(page.messages[0].files.len(), 2);
    assert_eq!(page.messages[0].files[0].id, image.id);

    // The delete frees the text (carried once), not the image; a second
    // delete racing it lets go of nothing more.
    let used = uploads.usage(alice).unwrap();
    let (first, second) = (engine.delete(room, 1, alice), engine.delete(room, 1, alice));
    let outcomes = [first.wait(), second.wait()];
    assert!(outcomes.iter().any(|o| o.is_ok()), "{outcomes:?}");
    assert!(matches!(
        engine.delete(room, 1, alice).wait(),
        Err(Error::NotFound(_))
    ));
    assert_eq!(uploads.get(text.id).unwrap(), None, "freed");
    assert!(!uploads.file(text.id).exists());
    assert_eq!(uploads.usage(alice).unwrap(), used - text.charged());
    assert_eq!(holders(image.id), [(room, 2)], "still carried by 2");
    let page = engine
        .history(room, rookery_engine::Cursor::after(0, 10))
        .wait()
        .unwrap();
    let deleted = serde_json::to_value(page.messages[0].view()).unwrap();
    assert_eq!(deleted.get("files"), None, "a deleted message shows none");
    // Deleting the last one frees the image.
    engine.delete(room, 2, alice).wait().unwrap();
    assert_eq!(uploads.get(image.id).unwrap(), None);
    assert!(!uploads.file(image.id).exists() && !uploads.thumbnail_file(image.id).exists());
    assert!(
        uploads.get(bobs.id).unwrap().is_some() && holders(bobs.id).is_empty(),
        "bob's untouched"
    );
    drop((sub, uploads, meta));
    engine.shutdown().unwrap();
}

/// What retires messages lets go of their uploads too: retention, and a
/// room's deletion. An upload never sent is removed by its owner (not
/// while a message holds it) or, once old, by the sweep.
#[test]
fn retention_room_deletion_and_the_sweep_free_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::small_config(dir.path(), 2);
    cfg.uploads.unsent_max_age = std::time::Duration::from_secs(30);
    cfg.uploads.sweep_interval = std::time::Duration::from_millis(50);
    let engine = Engine::start(cfg).unwrap();
    let meta = engine.directory();
    let alice = meta.ensure_external_user("alice", 0).unwrap();
    let bob = meta.ensure_external_user("bob", 0).unwrap();
    let uploads = engine.uploads();
    let gone = |up: &rookery_engine::Upload| {
        uploads.get(up.id).unwrap().is_none() && !uploads.file(up.id).exists()
    };

    // Retention keeps the last message: the first one's upload goes, the
    // one the kept message shares stays.
    let room = engine.create_room("kept", false, alice).wait().unwrap();
    let old = upload(&uploads, alice, b"old", "old.txt", None).unwrap();
    let shared = upload(&uploads, alice, b"shared", "s.txt", None).unwrap();
    engine
        .post_with(room, alice, "", "one", None, vec![old.id, shared.id])
        .wait()
        .unwrap();
    engine
        .post_with(room, alice, "", "two", None, vec![shared.id])
        .wait()
        .unwrap();
    let keep_one = rookery_engine::Retention {
        max_messages: Some(1),
        max_age_ms: None,
    };
    engine.set_retention(room, keep_one).wait().unwrap();
    let report = engine.enforce_retention().unwrap();
    assert_eq!(report.messages_expired, 1);
    assert_eq!(report.uploads_freed, [old.id]);
    assert!(gone(&old));
    assert_eq!(uploads.holders(shared.id, 10).unwrap(), [(room, 2)]);
    // The retired message can no longer be deleted; the kept one frees
    // the shared upload.
    assert!(engine.delete(room, 1, alice).wait().is_err());
    engine.delete(room, 2, alice).wait().unwrap();
    assert!(gone(&shared));

    // A room's deletion frees what only its messages held.
    let doomed = engine.create_room("doomed", false, alice).wait().unwrap();
    let inside = upload(&uploads, alice, &png(20, 20), "in.png", None).unwrap();
    engine
        .post_with(doomed, alice, "", "", None, vec![inside.id])
        .wait()
        .unwrap();
    let deleted = engine.delete_room(doomed).wait().unwrap();
    assert_eq!(deleted.messages, 1);
    assert!(gone(&inside) && !uploads.thumbnail_file(inside.id).exists());

    // Never sent: its owner removes it, nobody else; not once sent.
    let unsent = upload(&uploads, alice, b"oops", "oops.txt", None).unwrap();
    assert!(matches!(
        uploads.remove_unsent(bob, unsent.id),
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        uploads.remove_unsent(alice, unsent.id).unwrap().id,
        unsent.id
    );
    assert!(gone(&unsent));
    let sent = upload(&uploads, alice, b"sent", "sent.txt", None).unwrap();
    engine
        .post_with(room, alice, "", "", None, vec![sent.id])
        .wait()
        .unwrap();
    assert!(matches!(
        uploads.remove_unsent(alice, sent.id),
        Err(Error::AlreadyExists(_))
    ));
    // The sweep takes an upload never sent once it is old (this one was
    // stored a minute ago), not one sent.
    let mut inc = uploads.begin(bob, 5).unwrap();
    inc.write(b"later").unwrap();
    let forgotten = uploads
        .finish(inc, bob, "l.txt", None, now() - 60_000)
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !gone(&forgotten) {
        assert!(std::time::Instant::now() < deadline, "never swept");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(uploads.get(sent.id).unwrap().is_some());
    assert_eq!(uploads.usage(bob).unwrap(), 0);
    drop((uploads, meta));
    engine.shutdown().unwrap();
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Another node's upload kept here as a copy (a cluster's room owner keeps
/// the uploads its messages carry): its id, owner and name, its file and
/// thumbnail, charged here; a copy that is not its original is refused
/// and leaves nothing; a second copy of one id is refused, the first kept.
#[test]
fn a_copy_of_another_nodes_upload_is_kept_only_whole() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Engine::start(common::small_config(a_dir.path(), 1)).unwrap();
    let b = Engine::start(common::small_config(b_dir.path(), 1)).unwrap();
    let alice = a.directory().ensure_external_user("alice", 0).unwrap();
    assert_eq!(
        b.directory().ensure_external_user("alice", 0).unwrap(),
        alice
    );
    let image = png(200, 100);
    let original = upload(&a.uploads(), alice, &image, "cat.png", None).unwrap();
    let copy = |bytes: &[u8]| {
        let mut inc = b.uploads().begin(alice, bytes.len() as u64).unwrap();
        inc.write(bytes).unwrap();
        b.uploads().copy_queued(inc, original.clone(), now()).wait()
    };
    // Damaged on the way: refused, nothing kept or charged.
    let mut damaged = image.clone();
    *damaged.last_mut().unwrap() ^= 1;
    assert!(matches!(copy(&damaged), Err(Error::InvalidInput(_))));
    assert!(matches!(copy(&image[..100]), Err(Error::InvalidInput(_))));
    assert_eq!(b.uploads().get(original.id).unwrap(), None);
    assert_eq!(b.uploads().usage(alice).unwrap(), 0);
    // Whole: kept as the original.
    let kept = copy(&image).unwrap();
    assert_eq!(
        (
            kept.id,
            kept.owner,
            &kept.name,
            &kept.content_type,
            kept.sha256
        ),
        (
            original.id,
            alice,
            &original.name,
            &original.content_type,
            original.sha256
        )
    );
    assert_eq!(
        (kept.width, kept.height, kept.thumb_bytes > 0),
        (200, 100, true)
    );
    assert_eq!(std::fs::read(b.uploads().file(kept.id)).unwrap(), image);
    assert!(b.uploads().thumbnail_file(kept.id).exists());
    let charged = a.uploads().usage(alice).unwrap();
    assert_eq!(b.uploads().usage(alice).unwrap(), charged);
    assert_eq!(
        kept.created_ms, original.created_ms,
        "its time, not the copy's"
    );
    // Again (two posts at once): refused, the one kept, charged once.
    assert!(matches!(copy(&image), Err(Error::AlreadyExists(_))));
    assert_eq!(b.uploads().get(original.id).unwrap(), Some(kept));
    assert_eq!(b.uploads().usage(alice).unwrap(), charged);
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}
