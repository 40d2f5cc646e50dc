//! End-to-end test of online backup (issue 17, item 4) through the
//! binaries: while a writer publishes without pause, `rookery-admin backup`
//! asks the server for a backup and waits; `rookery-admin verify` accepts
//! it and `restore` puts it into a new data directory; a server started on
//! that directory has every message acknowledged before the backup began,
//! and nothing that was never sent. The route's refusals (no scope, a bad
//! or taken name, one at a time, no `--backup-dir`) and a damaged backup
//! (verify exit 1, restore refused) are checked on the way.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Publishes and takes backups.
const OPS: &str = "rk_4444444444444444444444444444444444444444444444444444444444444444";
/// Publishes only.
const PUBLISHER: &str = "rk_5555555555555555555555555555555555555555555555555555555555555555";

fn entry(name: &str, key: &str, scopes: &str) -> String {
    let hash: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("[[key]]\nname = \"{name}\"\nsha256 = \"{hash}\"\nscopes = [{scopes}]\nrequests_per_s = 100000\nburst = 100000\n")
}

/// `rookery-admin`, built beside the test's `rookery` by `cargo test
/// --workspace` (as tools/test.sh runs it).
fn admin_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("rookery-admin");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (cargo build -p rookery-admin, or cargo test --workspace)",
        bin.display()
    );
    bin
}

fn admin(args: &[&str]) -> Output {
    Command::new(admin_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What the writer was told: body → (room, seq), in the order of the acks.
type Acked = Arc<Mutex<Vec<(String, u64, u64)>>>;

/// Publishes to `rooms` round robin until `stop`, 2 KiB bodies, recording
/// each acknowledged message.
fn writer(
    port: u16,
    rooms: Vec<u64>,
    stop: Arc<AtomicBool>,
    acked: Acked,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) && sent < 200_000 {
            let room = rooms[sent as usize % rooms.len()];
            let body = format!("m{sent:06}-{}", "x".repeat(2048));
            let path = format!("/api/backend/rooms/{room}/messages");
            let (s, v) = call(
                port,
                "POST",
                &path,
                Some(PUBLISHER),
                Some(&json!({"body": body})),
            );
            assert_eq!(s, 201, "{v}");
            acked
                .lock()
                .unwrap()
                .push((body, room, v["seq"].as_u64().unwrap()));
            sent += 1;
        }
        sent
    })
}

#[test]
fn a_backup_under_load_restores_every_message_acknowledged_before_it() {
    if single_process_only("a backup of one node's data directory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        entry("ops", OPS, r#""publish", "backup""#) + &entry("news", PUBLISHER, r#""publish""#),
    )
    .unwrap();
    std::fs::write(dir.path().join("ops.key"), format!("{OPS}\n")).unwrap();
    std::fs::write(dir.path().join("news.key"), PUBLISHER).unwrap();
    let backups = dir.path().join("backups");
    let server = start(&[
        "--durability",
        "sync",
        "--api-keys-file",
        keys.to_str().unwrap(),
        "--backup-dir",
        backups.to_str().unwrap(),
        // The slowest a backup may go: it runs for seconds, long enough to
        // be asked for a second one.
        "--backup-bytes-per-s-max",
        "1048576",
        "--segment-bytes-max",
        "1048576",
    ]);
    let port = server.port;
    let token = register(port, "owner");
    let rooms: Vec<u64> = (0..4)
        .map(|i| create_room(port, &token, &format!("r{i}"), false))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let w = writer(port, rooms.clone(), stop.clone(), acked.clone());
    // A few MB of log first, over several segments.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 2500 {
        assert!(Instant::now() < deadline, "the writer is too slow");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Refusals: no scope, bad names, an unknown backup.
    let (s, v) = call(port, "POST", "/api/backend/backup", Some(PUBLISHER), None);
    assert_eq!(s, 403, "{v}");
    for name in ["../x", ".hidden", "a/b", "b.partial", ""] {
        let (s, v) = call(
            port,
            "POST",
            "/api/backend/backup",
            Some(OPS),
            Some(&json!({"name": name})),
        );
        assert_eq!(s, 400, "{name:?}: {v}");
    }
    let (s, _) = call(
        port,
        "POST",
        "/api/backend/backup",
        Some(OPS),
        Some(&json!({"path": "/tmp"})),
    );
    assert_eq!(s, 400, "an unknown field");
    let (s, _) = call(port, "GET", "/api/backend/backup/nothing", Some(OPS), None);
    assert_eq!(s, 404);
    let out = admin(&[
        "backup",
        "--url",
        &format!("http://127.0.0.1:{port}"),
        "--key-file",
        dir.path().join("news.key").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("403"), "{}", text(&out));

    // The backup, through rookery-admin, while the writer goes on.
    let before: Vec<(String, u64, u64)> = acked.lock().unwrap().clone();
    let admin_run = {
        let key = dir.path().join("ops.key");
        std::thread::spawn(move || {
            admin(&[
                "backup",
                "--url",
                &format!("http://127.0.0.1:{port}"),
                "--key-file",
                key.to_str().unwrap(),
                "--name",
                "b1",
            ])
        })
    };
    // One at a time: a second one is refused while the first runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    let running = loop {
        let (s, v) = call(port, "GET", "/api/backend/backup/b1", Some(OPS), None);
        if s == 200 {
            break v;
        }
        assert!(Instant::now() < deadline, "the backup did not start");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(running["state"], "running", "{running}");
    let (s, v) = call(
        port,
        "POST",
        "/api/backend/backup",
        Some(OPS),
        Some(&json!({"name": "b2"})),
    );
    assert_eq!(s, 409, "{v}");
    let out = admin_run.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("backup b1: done"), "{}", text(&out));
    let during = acked.lock().unwrap().len() - before.len();
    assert!(during > 0, "messages were acknowledged during the backup");
    stop.store(true, Ordering::Relaxed);
    let sent = w.join().unwrap();
    let (s, v) = call(port, "GET", "/api/backend/backup/b1", Some(OPS), None);
    assert_eq!((s, v["state"].as_str()), (200, Some("done")), "{v}");
    let (s, v) = call(
        port,
        "POST",
        "/api/backend/backup",
        Some(OPS),
        Some(&json!({"name": "b1"})),
    );
    assert_eq!(s, 409, "a name is taken once: {v}");
    assert_eq!(metric(port, "rookery_backups_done_total"), 1.0);
    assert!(metric(port, "rookery_backup_copied_bytes_total") > 4e6);
    // Stopping the server cancels a running backup: it stops in time and
    // cleanly, leaving no backup under the name.
    let (s, v) = call(
        port,
        "POST",
        "/api/backend/backup",
        Some(OPS),
        Some(&json!({"name": "b3"})),
    );
    assert_eq!((s, v["state"].as_str()), (202, Some("running")), "{v}");
    std::thread::sleep(Duration::from_millis(300));
    let mut server = server;
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) },
        0
    );
    let t = Instant::now();
    let code = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the server did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0), "a clean stop with a backup running");
    assert!(
        !backups.join("b3").exists(),
        "a cancelled backup is not a backup"
    );
    drop(server);

    // Verify, restore, and a server on the restored directory.
    let b1 = backups.join("b1");
    let out = admin(&["verify", b1.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("verify: ok (a backup)"),
        "{}",
        text(&out)
    );
    let restored = dir.path().join("restored");
    let out = admin(&[
        "restore",
        b1.to_str().unwrap(),
        "--to",
        restored.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("restore: ok"), "{}", text(&out));
    let port2 = free_port();
    let (mut child, _) = spawn_in(
        &restored,
        port2,
        &["--api-keys-file", keys.to_str().unwrap()],
    );
    wait_ready(port2);
    // Sessions are not in a backup: sign in again.
    let (s, v) = call(port2, "GET", "/api/me", Some(&token), None);
    assert_eq!(s, 401, "a session from before the backup: {v}");
    let (s, v) = call(
        port2,
        "POST",
        "/api/login",
        None,
        Some(&json!({"name": "owner", "password": "pw-secret"})),
    );
    assert_eq!(s, 200, "{v}");
    let token2 = v["token"].as_str().unwrap().to_string();
    let mut found: HashMap<String, (u64, u64)> = HashMap::new();
    for &room in &rooms {
        for m in all_messages(port2, &token2, room) {
            found.insert(
                m["body"].as_str().unwrap().to_string(),
                (room, m["seq"].as_u64().unwrap()),
            );
        }
    }
    for (body, room, seq) in &before {
        assert_eq!(
            found.get(body),
            Some(&(*room, *seq)),
            "{} acknowledged before the backup",
            &body[..7]
        );
    }
    let acked_all = acked.lock().unwrap().clone();
    let all: HashMap<&str, (u64, u64)> = acked_all
        .iter()
        .map(|(b, r, s)| (b.as_str(), (*r, *s)))
        .collect();
    for (body, at) in &found {
        assert_eq!(
            all.get(body.as_str()),
            Some(at),
            "{} was sent and acknowledged",
            &body[..7]
        );
    }
    assert!(
        found.len() < sent as usize,
        "not what came after the backup"
    );
    // This server has no --backup-dir.
    let (s, v) = call(port2, "POST", "/api/backend/backup", Some(OPS), None);
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--backup-dir"),
        "{v}"
    );
    let _ = child.kill();
    let _ = child.wait();

    // A damaged backup: verify finds it, restore refuses it.
    let seg = std::fs::read_dir(b1.join("shard-0/log"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[200] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let out = admin(&["verify", b1.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("checksum mismatch"), "{}", text(&out));
    let out = admin(&[
        "restore",
        b1.to_str().unwrap(),
        "--to",
        dir.path().join("r2").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!dir.path().join("r2").exists());
}
