//! End-to-end tests of the `rookery-admin` binary on data directories built
//! through the storage API (64 KiB segments, so several segments exist).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rookery_storage::meta::Role;
use rookery_storage::verify::for_each_record;
use rookery_storage::{ArchivedRecord, Durability, Pos, Retention, StorageConfig, Store};
use serde_json::Value;

/// Messages per room in the fixture.
const PER_ROOM: u64 = 80;
/// Rooms in the fixture.
const ROOMS: u64 = 4;
/// Edits and deletes in the fixture.
const EDITS: u64 = 4;
const DELETES: u64 = 2;
/// Reaction records (three put on, one taken off).
const REACTS: u64 = 4;
/// Retention of the `ops` room: its low seq after enforcement.
const OPS_KEEP: u64 = 40;
const OPS_LOW: u64 = PER_ROOM - OPS_KEEP + 1;

/// Runs `f` on a fresh glommio executor.
fn on_executor<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move { f().await })
        .expect("executor starts")
        .join()
        .expect("executor finishes")
}

/// A small storage config: 64 KiB segments.
fn config(dir: &Path, shards: u32) -> StorageConfig {
    let mut cfg = StorageConfig::new(dir);
    cfg.shards = shards;
    cfg.segment_bytes_max = 64 << 10;
    cfg.body_bytes_max = 8 << 10;
    cfg.checkpoint_interval_ms = 50;
    cfg.index_cache_bytes = 4 << 20;
    cfg.meta_cache_bytes = 1 << 20;
    cfg.durability = Durability::None;
    cfg
}

/// Runs the binary.
fn admin<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rookery-admin"))
        .args(args)
        .output()
        .expect("rookery-admin runs")
}

/// Exit code, stdout and stderr of a run.
fn run<S: AsRef<OsStr>>(args: &[S]) -> (i32, String, String) {
    let out = admin(args);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().expect("exited"),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// Asserts the exit code, showing the output when it differs.
fn expect_code(got: &(i32, String, String), want: i32) {
    assert_eq!(
        got.0, want,
        "exit code; stdout:\n{}\nstderr:\n{}",
        got.1, got.2
    );
}

/// Room ids of the fixture.
#[derive(Debug, Clone, Copy)]
struct Rooms {
    general: u64,
    random: u64,
    dev: u64,
    ops: u64,
}

impl Rooms {
    fn all(&self) -> [u64; 4] {
        [self.general, self.random, self.dev, self.ops]
    }
}

/// The body of message `seq` of `room`: about 600 bytes.
fn body(room: u64, seq: u64) -> String {
    format!("{room}-{seq}-{}", "x".repeat(600))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Builds a data directory: 2 users, 4 rooms with members, a ban, an
/// invitation and receipts,
/// 80 messages per room written round-robin, edits and deletes, and a
/// retention of 40 messages on `ops` (enforced: seqs 1..=40 retired).
fn populate(dir: &Path, shards: u32) -> Rooms {
    let store = Store::open(config(dir, shards)).expect("store opens");
    let meta = store.meta().clone();
    // The server hashes passwords; storage keeps the PHC string it is given.
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
    let alice = meta.create_user("alice", hash, 1_000).unwrap();
    let bob = meta.ensure_external_user("bob", 1_001).unwrap();
    let rooms = Rooms {
        general: meta.create_room("general", false, alice, 2_000).unwrap(),
        random: meta.create_room("random", true, bob, 2_001).unwrap(),
        dev: meta.create_room("dev", false, alice, 2_002).unwrap(),
        ops: meta.create_room("ops", false, bob, 2_003).unwrap(),
    };
    meta.add_member(rooms.general, bob, Role::Member).unwrap();
    meta.add_member(rooms.random, alice, Role::Member).unwrap();
    meta.import_ban(rooms.dev, bob, alice, 3_000).unwrap();
    meta.import_invite(rooms.ops, alice, bob, 3_001).unwrap();
    meta.import_receipt(rooms.general, bob, 10).unwrap();
    meta.import_receipt(rooms.ops, alice, 45).unwrap();
    on_executor(move || async move {
        let shards: Vec<_> = {
            let mut v = Vec::new();
            for k in 0..store.config().shards {
                v.push(store.open_shard(k).await.unwrap());
            }
            v
        };
        let on = |room: u64| &shards[store.shard_of(room) as usize];
        for seq in 1..=PER_ROOM {
            for (i, room) in rooms.all().into_iter().enumerate() {
                let sender = if i % 2 == 0 { alice } else { bob };
                let (cid, ts, text) = (format!("c{seq}"), 10_000 + seq, body(room, seq));
                // In general, 9 replies to 3 and 10 to 9 (so in 3's thread);
                // in ops, 45 to 5, which retention retires below.
                let to = match seq {
                    9 | 10 if room == rooms.general => Some(if seq == 9 { 3 } else { 9 }),
                    45 if room == rooms.ops => Some(5),
                    _ => None,
                };
                let a = match to {
                    Some(to) => {
                        on(room)
                            .append_reply(room, sender, &cid, ts, &text, to)
                            .await
                    }
                    None => on(room).append_message(room, sender, &cid, ts, &text).await,
                }
                .unwrap();
                assert_eq!(a.seq(), seq);
            }
        }
        on(rooms.general)
            .edit(rooms.general, 5, alice, 20_000, "edit one")
            .await
            .unwrap();
        on(rooms.general)
            .edit(rooms.general, 5, alice, 20_001, "edit two")
            .await
            .unwrap();
        on(rooms.general)
            .delete(rooms.general, 7, alice, 20_002)
            .await
            .unwrap();
        // Reactions on general 3: alice's and bob's 👍 stay, bob's 🎉 is
        // put on and taken off.
        let reactions = [
            (alice, "👍", true),
            (bob, "👍", true),
            (bob, "🎉", true),
            (bob, "🎉", false),
        ];
        for (by, emoji, put) in reactions {
            let general = on(rooms.general);
            assert!(general
                .react(rooms.general, 3, by, 20_010, emoji, put)
                .await
                .unwrap());
        }
        on(rooms.ops)
            .edit(rooms.ops, 3, bob, 20_003, "retired edit")
            .await
            .unwrap();
        on(rooms.ops)
            .edit(rooms.ops, 50, bob, 20_004, "ops edit")
            .await
            .unwrap();
        on(rooms.ops)
            .delete(rooms.ops, 51, bob, 20_005)
            .await
            .unwrap();
        let keep = Retention {
            max_messages: Some(OPS_KEEP),
            max_age_ms: None,
        };
        on(rooms.ops).set_retention(rooms.ops, keep).await.unwrap();
        on(rooms.ops).enforce_retention(now_ms()).await.unwrap();
        assert_eq!(on(rooms.ops).low_seq(rooms.ops), OPS_LOW);
        for s in &shards {
            s.close().await.unwrap();
        }
    });
    rooms
}

/// A fresh directory populated with `shards` shards.
fn fixture(shards: u32) -> (tempfile::TempDir, PathBuf, Rooms) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let rooms = populate(&data, shards);
    (tmp, data, rooms)
}

/// Segment files of shard 0 and their total size.
fn segment_files(data: &Path) -> (u64, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(data.join("shard-0/log")).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_str().unwrap().ends_with(".seg") {
            n += 1;
            bytes += e.metadata().unwrap().len();
        }
    }
    (n, bytes)
}

/// Parses JSON lines.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn verify_passes_on_a_healthy_dir() {
    let (_tmp, data, _) = fixture(2);
    let out = run(&[OsStr::new("verify"), data.as_os_str()]);
    expect_code(&out, 0);
    assert!(
        out.1.contains("shard 0:") && out.1.contains("shard 1:"),
        "{}",
        out.1
    );
    assert!(out.1.contains("meta: ok, 2 users, 4 rooms"), "{}", out.1);
    assert!(out.1.contains("verify: ok"), "{}", out.1);
}

#[test]
fn verify_exits_2_on_a_directory_that_is_not_data() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("hello.txt"), "hi").unwrap();
    let out = run(&[OsStr::new("verify"), tmp.path().as_os_str()]);
    expect_code(&out, 2);
    assert!(out.2.contains("not a rookery data directory"), "{}", out.2);
    let missing = tmp.path().join("missing");
    expect_code(&run(&[OsStr::new("verify"), missing.as_os_str()]), 2);
    expect_code(&run(&["verify"]), 2);
}

/// Flips a payload byte of the middle record of the first (sealed) segment
/// of shard 0; returns the segment and the messages before the damage.
fn damage_first_segment(data: &Path) -> (u32, Vec<(u64, u64)>) {
    let mut records: Vec<(Pos, Option<(u64, u64)>)> = Vec::new();
    let scans = for_each_record(data, 0, |pos, rec| {
        let msg = matches!(rec, ArchivedRecord::Message(_)).then(|| (rec.room(), rec.seq()));
        records.push((pos, msg));
    })
    .unwrap();
    assert!(
        scans.len() >= 3,
        "want several segments, got {}",
        scans.len()
    );
    let first = scans[0].segment;
    let in_first: Vec<&(Pos, Option<(u64, u64)>)> =
        records.iter().filter(|(p, _)| p.segment == first).collect();
    let (bad, _) = *in_first[in_first.len() / 2];
    let path = data.join(format!("shard-0/log/{first:08}.seg"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[bad.offset as usize + 8 + 4] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let before = records
        .iter()
        .filter(|(p, _)| *p < bad)
        .filter_map(|(_, m)| *m)
        .collect();
    (first, before)
}

#[test]
fn verify_finds_a_flipped_byte_and_salvage_repairs() {
    let (_tmp, data, rooms) = fixture(1);
    let (segment, kept) = damage_first_segment(&data);
    let out = run(&[OsStr::new("verify"), data.as_os_str()]);
    expect_code(&out, 1);
    assert!(
        out.1.contains(&format!("error: segment {segment}:")),
        "{}",
        out.1
    );

    let out = run(&[
        OsStr::new("salvage"),
        data.as_os_str(),
        OsStr::new("--shard"),
        OsStr::new("0"),
    ]);
    expect_code(&out, 0);
    assert!(
        out.1.contains(&format!("cut segment {segment} at offset")),
        "{}",
        out.1
    );
    expect_code(&run(&[OsStr::new("verify"), data.as_os_str()]), 0);

    let kept: Vec<(u64, u64)> = kept
        .into_iter()
        .filter(|&(room, _)| room != rooms.ops)
        .collect();
    assert!(kept.len() > 10, "{kept:?}");
    let data2 = data.clone();
    on_executor(move || async move {
        let store = Store::open(config(&data2, 1)).expect("store opens after salvage");
        let shard = store
            .open_shard(0)
            .await
            .expect("shard opens after salvage");
        for &(room, seq) in &kept {
            let item = shard
                .get(room, seq)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("room {room} seq {seq} lost"));
            assert_eq!(item.body(), Some(body(room, seq).as_str()));
        }
        shard.close().await.unwrap();
    });
    let out = run(&[OsStr::new("verify"), data.as_os_str()]);
    expect_code(&out, 0);
    assert!(
        !out.1.contains("no index"),
        "the open rebuilt the index: {}",
        out.1
    );
}

#[test]
fn stats_counts_match_what_was_written() {
    let (_tmp, data, _) = fixture(1);
    let (segments, bytes) = segment_files(&data);
    let messages = ROOMS * PER_ROOM;
    let records = messages + EDITS + DELETES + REACTS;

    let out = run(&[OsStr::new("stats"), data.as_os_str(), OsStr::new("--json")]);
    expect_code(&out, 0);
    let v: Value = serde_json::from_str(out.1.trim()).unwrap();
    for counts in [&v["shards"][0], &v["total"]] {
        assert_eq!(counts["segments"], segments, "{v}");
        assert_eq!(counts["bytes"], bytes, "{v}");
        assert_eq!(counts["records"], records, "{v}");
        assert_eq!(counts["messages"], messages, "{v}");
        assert_eq!(counts["rooms"], ROOMS, "{v}");
    }
    assert_eq!(v["shards"][0]["shard"], 0);
    assert_eq!(v["meta"]["users"], 2);
    assert_eq!(v["meta"]["rooms"], ROOMS);

    let out = run(&[OsStr::new("stats"), data.as_os_str()]);
    expect_code(&out, 0);
    let total: Vec<&str> = out
        .1
        .lines()
        .find(|l| l.starts_with("total"))
        .unwrap()
        .split_whitespace()
        .collect();
    let want = [
        "total".to_string(),
        segments.to_string(),
        bytes.to_string(),
        records.to_string(),
        messages.to_string(),
        ROOMS.to_string(),
    ];
    assert_eq!(total, want, "{}", out.1);
    assert!(out.1.contains("meta: 2 users, 4 rooms"), "{}", out.1);
}

/// Runs `dump` and parses its lines.
fn dump(data: &Path, room: &str, since: Option<u64>) -> Vec<Value> {
    let mut args = vec![
        "dump".to_string(),
        data.display().to_string(),
        "--room".into(),
        room.into(),
    ];
    if let Some(s) = since {
        args.extend(["--since".into(), s.to_string()]);
    }
    let out = run(&args);
    expect_code(&out, 0);
    json_lines(&out.1)
}

#[test]
fn dump_applies_edits_and_deletes_and_since_cuts() {
    let (_tmp, data, rooms) = fixture(2);
    let lines = dump(&data, &rooms.general.to_string(), None);
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=PER_ROOM).collect::<Vec<_>>());
    let at = |seq: u64| &lines[seq as usize - 1];
    assert_eq!(at(5)["body"], "edit two");
    assert_eq!(at(5)["edited"], true);
    assert_eq!(at(5)["deleted"], false);
    assert_eq!(at(7)["body"], Value::Null);
    assert_eq!(at(7)["deleted"], true);
    assert_eq!(at(6)["body"], body(rooms.general, 6));
    assert_eq!(at(6)["edited"], false);
    assert_eq!(at(6)["room"], rooms.general);
    assert_eq!(at(6)["client_id"], "c6");
    assert_eq!(at(6)["ts_ms"], 10_006);
    assert!(at(6)["sender"].as_u64().unwrap() > 0);
    assert_eq!(at(6).get("reply_to"), None);
    assert_eq!(at(6).get("reactions"), None);
    // Two users have 👍 on; 🎉 was taken off again.
    let reactions = at(3)["reactions"].as_object().unwrap();
    assert_eq!(reactions.keys().collect::<Vec<_>>(), ["👍"]);
    assert_eq!(reactions["👍"].as_array().unwrap().len(), 2);
    assert_eq!(
        (&at(9)["reply_to"], &at(9)["thread"]),
        (&3.into(), &3.into())
    );
    assert_eq!(
        (&at(10)["reply_to"], &at(10)["thread"]),
        (&9.into(), &3.into())
    );

    let by_name = dump(&data, "general", None);
    assert_eq!(by_name, lines);

    let since = dump(&data, "general", Some(70));
    let seqs: Vec<u64> = since.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (71..=PER_ROOM).collect::<Vec<_>>());

    // Retention retired ops 1..=40: the dump starts at the low seq.
    let ops = dump(&data, "ops", None);
    let seqs: Vec<u64> = ops.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (OPS_LOW..=PER_ROOM).collect::<Vec<_>>());
    assert_eq!(ops[(50 - OPS_LOW) as usize]["body"], "ops edit");
    assert_eq!(ops[(51 - OPS_LOW) as usize]["deleted"], true);

    let out = run(&[
        OsStr::new("dump"),
        data.as_os_str(),
        OsStr::new("--room"),
        OsStr::new("nosuchroom"),
    ]);
    expect_code(&out, 2);
    assert!(out.2.contains("no room named"), "{}", out.2);
}

/// An export split for comparison: meta lines in order, and each room's
/// records in order (the interleaving of rooms depends on the shard count).
#[derive(Debug, PartialEq)]
struct Parsed {
    meta: Vec<Value>,
    records: BTreeMap<u64, Vec<Value>>,
}

/// Parses an export, checking and dropping the header's shard count.
fn parse_export(text: &str) -> Parsed {
    let mut lines = json_lines(text).into_iter();
    let header = lines.next().expect("a header");
    assert_eq!(header["type"], "rookery-export");
    assert_eq!(header["version"], 1);
    assert!(header["shards"].as_u64().unwrap() >= 1);
    let mut parsed = Parsed {
        meta: Vec::new(),
        records: BTreeMap::new(),
    };
    for line in lines {
        match line["type"].as_str().unwrap() {
            "message" | "edit" | "delete" | "react" => parsed
                .records
                .entry(line["room"].as_u64().unwrap())
                .or_default()
                .push(line),
            _ => parsed.meta.push(line),
        }
    }
    parsed
}

/// Exports `data` to `file` and parses it.
fn export_to(data: &Path, file: &Path) -> Parsed {
    let out = run(&[
        OsStr::new("export"),
        data.as_os_str(),
        OsStr::new("--out"),
        file.as_os_str(),
    ]);
    expect_code(&out, 0);
    parse_export(&std::fs::read_to_string(file).unwrap())
}

/// Imports `file` into `data`, with extra arguments.
fn import(data: &Path, file: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("import"),
        data.as_os_str(),
        OsStr::new("--from"),
        file.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    run(&args)
}

#[test]
fn export_then_import_round_trips_across_shard_counts() {
    let (tmp, data, rooms) = fixture(1);
    let a_file = tmp.path().join("a.jsonl");
    let a = export_to(&data, &a_file);

    // What the export holds.
    let kinds = |t: &str| a.meta.iter().filter(|l| l["type"] == t).count();
    assert_eq!((kinds("user"), kinds("room"), kinds("receipt")), (2, 4, 2));
    assert_eq!(kinds("member"), 6, "4 creators + 2 added");
    assert_eq!((kinds("ban"), kinds("invite")), (1, 1));
    let alice = a.meta.iter().find(|l| l["name"] == "alice").unwrap();
    assert!(
        alice["password_hash"]
            .as_str()
            .unwrap()
            .starts_with("$argon2"),
        "{alice}"
    );
    let ops_room = a
        .meta
        .iter()
        .find(|l| l["type"] == "room" && l["name"] == "ops")
        .unwrap();
    assert_eq!(ops_room["retention"]["max_messages"], OPS_KEEP);
    let ops = &a.records[&rooms.ops];
    assert_eq!(ops[0]["seq"], OPS_LOW, "retired messages are not exported");
    assert!(ops.iter().all(|l| l["seq"].as_u64().unwrap() >= OPS_LOW));
    let total: usize = a.records.values().map(Vec::len).sum();
    assert_eq!(
        total as u64,
        ROOMS * PER_ROOM - (OPS_LOW - 1) + EDITS - 1 + DELETES + REACTS
    );

    for (name, extra) in [("same", &[][..]), ("three", &["--shards", "3"][..])] {
        let target = tmp.path().join(name);
        let mut args = vec!["--segment-bytes", "65536"];
        args.extend_from_slice(extra);
        let out = import(&target, &a_file, &args);
        expect_code(&out, 0);
        assert!(
            out.1.contains(
                "imported 2 users, 4 rooms, 6 members, 2 receipts, 1 bans, 1 invitations"
            ),
            "{}",
            out.1
        );
        expect_code(&run(&[OsStr::new("verify"), target.as_os_str()]), 0);
        let b = export_to(&target, &tmp.path().join(format!("{name}.jsonl")));
        assert_eq!(b, a, "round trip through {name}");
    }
    let manifest = std::fs::read_to_string(tmp.path().join("three/manifest")).unwrap();
    assert!(manifest.contains("shards=3"), "{manifest}");

    // The export to stdout is the same as to a file.
    let out = run(&[OsStr::new("export"), data.as_os_str()]);
    expect_code(&out, 0);
    assert_eq!(out.1, std::fs::read_to_string(&a_file).unwrap());
}

#[test]
fn import_refuses_a_non_empty_target_and_a_malformed_line() {
    let (tmp, data, _) = fixture(1);
    let file = tmp.path().join("a.jsonl");
    export_to(&data, &file);

    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("something"), "x").unwrap();
    let out = import(&busy, &file, &["--segment-bytes", "65536"]);
    expect_code(&out, 2);
    assert!(out.2.contains("not empty"), "{}", out.2);
    let out = import(&data, &file, &[]);
    expect_code(&out, 2);

    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[3] = r#"{"type":"user","id":"#;
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let target = tmp.path().join("new");
    let out = import(&target, &bad, &["--segment-bytes", "65536"]);
    expect_code(&out, 2);
    assert!(out.2.contains("line 4"), "{}", out.2);
    assert!(!target.exists(), "nothing is written for a malformed file");

    lines[3] = r#"{"type":"message","room":1,"seq":1}"#;
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let out = import(&target, &bad, &["--segment-bytes", "65536"]);
    expect_code(&out, 2);
    assert!(out.2.contains("line 4"), "{}", out.2);

    // A reply must answer an earlier message, in its thread, with both
    // fields; the file is refused before anything is written.
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let reply = lines
        .iter()
        .position(|l| l.contains(r#""reply_to":9"#))
        .expect("the reply to 9 is exported");
    for (from, to, why) in [
        (
            r#""reply_to":9"#,
            r#""reply_to":99"#,
            "not an earlier message",
        ),
        (r#""thread":3"#, r#""thread":9"#, "not 3"),
        (r#","thread":3"#, "", "only one of"),
    ] {
        let mut changed = lines.clone();
        changed[reply] = changed[reply].replace(from, to);
        std::fs::write(&bad, changed.join("\n")).unwrap();
        let out = import(&target, &bad, &["--segment-bytes", "65536"]);
        expect_code(&out, 2);
        let line = format!("line {}", reply + 1);
        assert!(
            out.2.contains(&line) && out.2.contains(why),
            "{why}: {}",
            out.2
        );
        assert!(!target.exists(), "{why}: nothing is written");
    }
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    rookery_storage::verify::files_containing(dir, needle.as_bytes()).unwrap()
}

#[test]
fn compact_removes_deleted_and_replaced_text_and_keeps_history() {
    let (_tmp, data, rooms) = fixture(2);
    let names = ["general", "random", "dev", "ops"];
    let before: Vec<Vec<Value>> = names.iter().map(|n| dump(&data, n, None)).collect();
    // Text that no history shows: a deleted body, a replaced edit, a
    // retired message and a retired message's edit.
    let gone = [
        format!("{}-7-x", rooms.general),
        "edit one".to_string(),
        format!("{}-3-x", rooms.ops),
        "retired edit".to_string(),
        format!("{}-51-x", rooms.ops),
    ];
    for g in &gone {
        assert!(!files_containing(&data, g).is_empty(), "{g} was written");
    }
    let out = run(&[OsStr::new("compact"), data.as_os_str()]);
    expect_code(&out, 0);
    assert!(out.1.contains("bodies dropped"), "{}", out.1);
    for g in &gone {
        assert_eq!(
            files_containing(&data, g),
            Vec::<PathBuf>::new(),
            "{g} is still on disk"
        );
    }
    let after: Vec<Vec<Value>> = names.iter().map(|n| dump(&data, n, None)).collect();
    assert_eq!(after, before, "history changed by compaction");
    expect_code(&run(&[OsStr::new("verify"), data.as_os_str()]), 0);
    // What history shows is still there.
    assert!(!files_containing(&data, "edit two").is_empty());
    assert!(!files_containing(&data, &format!("{}-6-x", rooms.general)).is_empty());
}

#[test]
fn reindex_rebuilds_every_index_from_the_log() {
    let (_tmp, data, _rooms) = fixture(2);
    let names = ["general", "random", "dev", "ops"];
    let before: Vec<Vec<Value>> = names.iter().map(|n| dump(&data, n, None)).collect();
    let out = run(&[OsStr::new("reindex"), data.as_os_str()]);
    expect_code(&out, 0);
    for shard in 0..2 {
        assert!(
            out.1
                .contains(&format!("shard {shard}: index rebuilt from ")),
            "{}",
            out.1
        );
        assert!(data.join(format!("shard-{shard}/index.redb")).is_file());
    }
    let after: Vec<Vec<Value>> = names.iter().map(|n| dump(&data, n, None)).collect();
    assert_eq!(after, before);
    expect_code(&run(&[OsStr::new("verify"), data.as_os_str()]), 0);
    let out = run(&[OsStr::new("reindex"), OsStr::new("/nonexistent/rookery")]);
    expect_code(&out, 2);
    // While another process holds the directory, nothing is deleted.
    let held = Store::open(config(&data, 2)).unwrap();
    let out = run(&[OsStr::new("reindex"), data.as_os_str()]);
    expect_code(&out, 2);
    assert!(data.join("shard-0/index.redb").is_file());
    assert!(data.join("shard-1/index.redb").is_file());
    drop(held);
}

#[test]
fn a_direct_message_round_trips_as_one_and_gets_no_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (ann, bea, room) = {
        let store = Store::open(config(&data, 1)).expect("store opens");
        let meta = store.meta().clone();
        let ann = meta.ensure_external_user("ann", 1_000).unwrap();
        let bea = meta.ensure_external_user("bea", 1_001).unwrap();
        let room = meta.open_dm(None, bea, ann, 2_000).unwrap().room;
        drop((meta, store));
        (ann, bea, room)
    };
    let file = tmp.path().join("dm.jsonl");
    let a = export_to(&data, &file);
    let dm: Vec<&Value> = a.meta.iter().filter(|l| l["type"] == "dm").collect();
    assert_eq!(dm.len(), 1, "{:?}", a.meta);
    assert_eq!(dm[0]["room"], room);
    assert_eq!(dm[0]["users"], serde_json::json!([ann, bea]));
    let target = tmp.path().join("copy");
    expect_code(&import(&target, &file, &[]), 0);
    let store = Store::open(config(&target, 1)).expect("the copy opens");
    let meta = store.meta();
    assert_eq!(meta.dm_between(ann, bea).unwrap(), Some(room));
    // Bea opened it: she is its one member, Ann her invitee, and no owner.
    assert_eq!(meta.members(room).unwrap(), [(bea, Role::Member)]);
    let invites = meta.invites_of(ann).unwrap();
    assert_eq!(
        (invites.len(), invites[0].room, invites[0].by),
        (1, room, bea)
    );
    drop(store);
    assert_eq!(export_to(&target, &tmp.path().join("again.jsonl")), a);
}
