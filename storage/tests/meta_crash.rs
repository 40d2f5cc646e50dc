//! Crash test of `meta.redb`: a child process creates users and joins them
//! to rooms as fast as it can (as the server does: the account of a new
//! JWT subject commits without `fdatasync`, its join durably) and prints
//! every one that returned; the parent kills it with SIGKILL at random
//! moments (8 rounds on the same file), reopens the file (redb repairs it:
//! commits do not save the allocator state, see `Meta::write_with`) and
//! checks that every acknowledged membership and its user are there, that
//! an account lost with no durable commit after it comes back under a new
//! id, and that ids were never handed out twice.
//!
//! The child is this test binary re-run with `ROOKERY_META_CRASH_CHILD`
//! set, executing only [`meta_crash_child`].

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rookery_storage::meta::MemberChange;
use rookery_storage::{Meta, Role};

const ROUNDS: u32 = 8;
const ROOMS: u64 = 5;
const CACHE_BYTES: usize = 1 << 20;

/// The child: create rooms (first round), then users and their joins
/// until killed, printing `user ID NAME` and `member ROOM ID` after each
/// commit returns.
#[test]
fn meta_crash_child() {
    let Ok(dir) = std::env::var("ROOKERY_META_CRASH_CHILD") else {
        return;
    };
    let round = std::env::var("ROOKERY_META_CRASH_ROUND").unwrap();
    let meta = Meta::open(&Path::new(&dir).join("meta.redb"), CACHE_BYTES).unwrap();
    let admin = meta.ensure_external_user("admin", 1).unwrap();
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        let name = format!("room-{r}");
        let id = match meta.room_by_name(&name).unwrap() {
            Some(room) => room.id,
            None => meta.create_room(&name, false, admin, 1).unwrap(),
        };
        rooms.push(id);
    }
    let mut out = std::io::stdout().lock();
    // Ends the test harness's "test meta_crash_child ... " line.
    writeln!(out).unwrap();
    if let Ok(name) = std::env::var("ROOKERY_META_CRASH_AGAIN") {
        let user = meta.ensure_external_user(&name, 0).unwrap();
        writeln!(out, "again {user} {name}").unwrap();
    }
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    if std::env::var("ROOKERY_META_CRASH_PARK").is_ok() {
        // Two accounts, then nothing until the kill. The first id handed
        // out after an open starts a reserved block (a durable commit), so
        // the second is inside it: no durable commit after it, it must be
        // lost, and its id never handed out again.
        for part in ["a", "b"] {
            let name = format!("r{round}-parked-{part}");
            let user = meta.ensure_external_user(&name, 0).unwrap();
            writeln!(out, "user {user} {name}").unwrap();
        }
        out.flush().unwrap();
        loop {
            std::thread::park();
        }
    }
    for n in 0u64.. {
        let name = format!("r{round}-u{n}");
        let user = meta.ensure_external_user(&name, n).unwrap();
        writeln!(out, "user {user} {name}").unwrap();
        out.flush().unwrap();
        let room = rooms[(n % ROOMS) as usize];
        let join = MemberChange {
            role: Some(Some(Role::Member)),
            ..MemberChange::default()
        };
        meta.change_membership::<rookery_storage::Error>(room, user, user, n, |_| Ok(join))
            .unwrap();
        writeln!(out, "member {room} {user}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn acknowledged_users_and_joins_survive_sigkill() {
    if std::env::var("ROOKERY_META_CRASH_CHILD").is_ok() {
        return;
    }
    let seed: u64 = rand::random();
    eprintln!("meta crash seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    // Every id handed out, to the name it was handed to.
    let mut ids: HashMap<u64, String> = HashMap::new();
    // Users whose join (a durable commit after their account) returned.
    let mut durable: HashMap<String, u64> = HashMap::new();
    // Users whose account returned but not their join: may be lost.
    let mut unsure: HashMap<String, u64> = HashMap::new();
    let mut members: Vec<(u64, u64)> = Vec::new();
    let (mut again, mut lost_total) = (None::<String>, 0);
    for round in 0..ROUNDS {
        let kill_after = Duration::from_millis(rng.gen_range(5..200));
        // The round before the last parks after one new account, so that
        // at least one account is surely lost and made again.
        let park = round == ROUNDS - 2;
        let lines = run_child(dir.path(), round, kill_after, again.take(), park);
        let mut acked = 0;
        for line in lines {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts[..] {
                ["user" | "again", id, name] => {
                    let id: u64 = id.parse().unwrap();
                    let before = ids.insert(id, name.to_string());
                    assert!(before.is_none(), "seed {seed}: id {id} handed out twice");
                    unsure.insert(name.to_string(), id);
                    acked += 1;
                }
                ["member", room, user] => {
                    let (room, user): (u64, u64) = (room.parse().unwrap(), user.parse().unwrap());
                    members.push((room, user));
                    let name = ids[&user].clone();
                    unsure.remove(&name);
                    durable.insert(name, user);
                }
                _ => {}
            }
        }
        assert!(
            acked > 0,
            "seed {seed} round {round}: the child acknowledged nothing"
        );
        let meta = Meta::open(&dir.path().join("meta.redb"), CACHE_BYTES)
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: reopen: {e}"));
        for (name, &id) in &durable {
            let found = meta.external_user(name).unwrap();
            assert_eq!(
                found.map(|u| u.id),
                Some(id),
                "seed {seed} round {round}: user {name}"
            );
        }
        for (name, id) in std::mem::take(&mut unsure) {
            let surely_lost = park && name.ends_with("-parked-b");
            match meta.external_user(&name).unwrap() {
                Some(_) if surely_lost => {
                    panic!("seed {seed}: {name} survived with no durable commit after it")
                }
                Some(u) => {
                    assert_eq!(u.id, id, "seed {seed} round {round}: user {name}");
                    durable.insert(name, id);
                }
                None => {
                    lost_total += 1;
                    again = Some(name);
                }
            }
        }
        for &(room, user) in &members {
            assert_eq!(
                meta.member_role(room, user).unwrap(),
                Some(Role::Member),
                "seed {seed} round {round}: member {user} of {room}"
            );
        }
        meta.close().unwrap();
    }
    eprintln!(
        "meta crash: {} ids handed out, {lost_total} accounts lost and made again",
        ids.len()
    );
    assert!(lost_total >= 1, "seed {seed}: no account was lost");
}

/// Runs the child until `kill_after` past its ready line, SIGKILLs it, and
/// returns the lines it printed. `again`: a lost user the child makes
/// again before it starts; `park`: the child makes one account and
/// waits to be killed.
fn run_child(
    dir: &Path,
    round: u32,
    kill_after: Duration,
    again: Option<String>,
    park: bool,
) -> Vec<String> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    if park {
        cmd.env("ROOKERY_META_CRASH_PARK", "1");
    }
    if let Some(name) = again {
        cmd.env("ROOKERY_META_CRASH_AGAIN", name);
    }
    let mut child = cmd
        .args([
            "--exact",
            "meta_crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ROOKERY_META_CRASH_CHILD", dir)
        .env("ROOKERY_META_CRASH_ROUND", round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.ends_with("ready") {
                let _ = ready_tx.send(());
            }
            lines.push(line);
        }
        lines
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the child opens meta.redb within 20 s");
    std::thread::sleep(kill_after);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap()
}
