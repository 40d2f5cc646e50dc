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
    uploads.finish(inc, owner, name, declared, 42)
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
