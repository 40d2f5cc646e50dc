//! Crash test: a child process appends continuously and prints every
//! acknowledged message; the parent kills it with SIGKILL at random moments
//! (20 rounds), then checks with the verifier (`verify::verify_shard`, what
//! `rookery-admin verify` runs) and by reopening the store that every
//! acknowledged message is present exactly once, in order. Every third
//! message of a writer replies to its previous one in the room: after each
//! kill, each acknowledged reply still answers what it answered, and every
//! thread lists exactly the replies the log holds for it. Every fourth
//! message a writer also puts its 👍 on, or takes it off, the message it
//! posted last in a room: after each kill each reaction is as its last
//! acknowledged change left it, or as the change in flight at the kill.
//!
//! SIGKILL leaves the page cache to the kernel: this shows that recovery
//! handles whatever a killed writer left, not what survives a power cut.
//!
//! The child also compacts all the time (a background step every 20 ms and
//! a `compact_all` every 30 ms), so kills land in every phase of a
//! compaction too: rewriting, renamed, switched, deleting the run.
//!
//! The child is this test binary re-run with `ROOKERY_CRASH_CHILD` set,
//! executing only [`crash_child`].

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rookery_storage::{Durability, StorageConfig, Store};

const ROUNDS: u32 = 20;
const WRITERS: u64 = 24;
const ROOMS: u64 = 6;

fn config(dir: &Path) -> StorageConfig {
    let mut cfg = StorageConfig::new(dir);
    cfg.durability = Durability::Sync;
    cfg.segment_bytes_max = 1 << 20;
    cfg.body_bytes_max = 4 << 10;
    cfg.checkpoint_interval_ms = 20;
    cfg.index_cache_bytes = 4 << 20;
    cfg.meta_cache_bytes = 1 << 20;
    cfg.compaction_interval_ms = 20;
    cfg.compaction_keep_recent_segments = 0;
    cfg.compaction_bytes_per_s_max = 0;
    cfg
}

/// The child: append forever (until killed), printing `ack room seq body`
/// after each append resolves.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("ROOKERY_CRASH_CHILD") else {
        return;
    };
    let round: u32 = std::env::var("ROOKERY_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let cfg = config(Path::new(&dir));
    common::run(move || async move {
        {
            let store = Store::open(cfg).unwrap();
            let shard = store.open_shard(0).await.unwrap();
            println!("ready");
            let compactor = shard.clone();
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(Duration::from_millis(30)).await;
                    compactor.compact_all().await.unwrap();
                }
            })
            .detach();
            let tasks: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let shard = shard.clone();
                    glommio::spawn_local(async move {
                        let mut last: HashMap<u64, u64> = HashMap::new();
                        let mut reacted: HashMap<(u64, u64), bool> = HashMap::new();
                        for n in 0u64.. {
                            let room = (w + n) % ROOMS + 1;
                            let body = format!("r{round}-w{w}-n{n}");
                            let to = last.get(&room).copied().filter(|_| n % 3 == 2);
                            let appended = match to {
                                Some(to) => {
                                    shard.append_reply(room, w + 1, &body, n, &body, to).await
                                }
                                None => shard.append_message(room, w + 1, &body, n, &body).await,
                            }
                            .unwrap();
                            let seq = appended.seq();
                            let previous = last.insert(room, seq);
                            let to = to.unwrap_or(0);
                            say(&format!("ack {room} {seq} {to} {body}"));
                            if let Some(target) = previous.filter(|_| n % 4 == 3) {
                                let on = !reacted.get(&(room, target)).copied().unwrap_or(false);
                                let key = format!("{room} {target} {} {on}", w + 1);
                                say(&format!("try {key}"));
                                shard.react(room, target, w + 1, n, "👍", on).await.unwrap();
                                reacted.insert((room, target), on);
                                say(&format!("racked {key}"));
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
        }
    });
}

#[test]
fn acknowledged_messages_survive_sigkill() {
    if std::env::var("ROOKERY_CRASH_CHILD").is_ok() {
        return;
    }
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test seed {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashMap<(u64, u64), (u64, String)> = HashMap::new();
    // Per reaction (room, seq, user): its last acknowledged state and the
    // state of its last change tried.
    let mut reactions: Reactions = HashMap::new();
    let mut compacted_rounds = 0;
    for round in 0..ROUNDS {
        let kill_after = Duration::from_millis(rng.gen_range(5..250));
        let (new, reaction_lines) = run_child(dir.path(), round, kill_after);
        for (tried, key, on) in reaction_lines {
            let state = reactions.entry(key).or_insert((false, false));
            if tried {
                state.1 = on;
            } else {
                state.0 = on;
            }
        }
        for (key, body) in new {
            assert!(
                acked.insert(key, body).is_none(),
                "seed {seed}: seq {key:?} acknowledged twice"
            );
        }
        assert_verify_passes(dir.path(), &format!("seed {seed} round {round}"));
        let ids = rookery_storage::segment::list(&dir.path().join("shard-0/log")).unwrap();
        compacted_rounds +=
            ids.iter()
                .any(|&id| rookery_storage::segment::is_compacted(id)) as u32;
        check_store(dir.path(), &acked, &mut reactions, seed, round);
    }
    assert!(
        compacted_rounds >= ROUNDS / 2,
        "seed {seed}: compaction ran in only {compacted_rounds} rounds"
    );
    assert!(
        acked.len() > 100,
        "seed {seed}: the child acknowledged only {} messages",
        acked.len()
    );
    let on = reactions.values().filter(|(on, _)| *on).count();
    assert!(
        on > 10 && on < reactions.len(),
        "seed {seed}: {on} of {} reactions on: both kinds checked",
        reactions.len()
    );
    assert_verify_passes(dir.path(), &format!("seed {seed} final"));
}

/// Verifies the shard's log and index (what `rookery-admin verify` runs)
/// and asserts nothing is wrong that recovery cannot repair.
fn assert_verify_passes(dir: &Path, ctx: &str) {
    let report = rookery_storage::verify::verify_shard(dir, 0)
        .unwrap_or_else(|e| panic!("{ctx}: verify failed: {e}"));
    assert!(report.ok(), "{ctx}: verify found {:?}", report.errors);
}

/// Runs the child until `kill_after` past its first ack, SIGKILLs it, and
/// returns every ack it printed (acks printed before death count).
type Reactions = HashMap<(u64, u64, u64), (bool, bool)>;

/// An acknowledged message: (room, seq), (the seq it answers or 0, body).
type Ack = ((u64, u64), (u64, String));

/// A reaction line of the child: tried (or acknowledged), its key, on.
type ReactionLine = (bool, (u64, u64, u64), bool);

fn run_child(dir: &Path, round: u32, kill_after: Duration) -> (Vec<Ack>, Vec<ReactionLine>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("ROOKERY_CRASH_CHILD", dir)
        .env("ROOKERY_CRASH_ROUND", round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut acks = Vec::new();
        let mut reactions = Vec::new();
        let mut first_ack: Option<Instant> = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let reaction = line
                .strip_prefix("try ")
                .map(|r| (true, r))
                .or_else(|| line.strip_prefix("racked ").map(|r| (false, r)));
            if let Some((tried, rest)) = reaction {
                let f: Vec<&str> = rest.split(' ').collect();
                let n = |i: usize| f[i].parse::<u64>().unwrap();
                reactions.push((tried, (n(0), n(1), n(2)), f[3] == "true"));
            }
            if let Some(rest) = line.strip_prefix("ack ") {
                let mut parts = rest.splitn(4, ' ');
                let room: u64 = parts.next().unwrap().parse().unwrap();
                let seq: u64 = parts.next().unwrap().parse().unwrap();
                let to: u64 = parts.next().unwrap().parse().unwrap();
                acks.push(((room, seq), (to, parts.next().unwrap().to_string())));
                first_ack.get_or_insert_with(Instant::now);
            }
        }
        (acks, reactions)
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    // Let it run: kill at a random moment after it started appending.
    std::thread::sleep(Duration::from_millis(150) + kill_after);
    assert!(Instant::now() < deadline);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap()
}

/// Reopens the store and checks every acknowledged message is present once,
/// with its body and what it replies to, that each writer's messages are
/// in order per room, and that each thread lists the log's replies to it.
fn check_store(
    dir: &Path,
    acked: &HashMap<(u64, u64), (u64, String)>,
    reactions: &mut Reactions,
    seed: u64,
    round: u32,
) {
    let cfg = config(dir);
    let acked = acked.clone();
    let expected = reactions.clone();
    let found = common::run(move || async move {
        {
            let store = Store::open(cfg).unwrap();
            let shard = store.open_shard(0).await.unwrap();
            let mut bodies = HashSet::new();
            for room in 1..=ROOMS {
                let ctx = format!("seed {seed} round {round}");
                let page = common::dense_history(&shard, room, &ctx).await;
                let mut last_n: HashMap<String, u64> = HashMap::new();
                for item in &page.items {
                    let body = item.body().unwrap().to_string();
                    assert!(
                        bodies.insert(body.clone()),
                        "seed {seed} round {round}: {body} stored twice"
                    );
                    // Per writer and round, n grows with seq.
                    let (prefix, n) = body.rsplit_once("-n").unwrap();
                    let n: u64 = n.parse().unwrap();
                    if let Some(prev) = last_n.insert(prefix.to_string(), n) {
                        assert!(prev < n, "seed {seed} round {round}: {body} out of order");
                    }
                }
                for ((r, seq), (to, body)) in acked.iter().filter(|((r, _), _)| *r == room) {
                    let item = page.items.get(*seq as usize - 1);
                    assert_eq!(
                        item.and_then(|i| i.body()),
                        Some(body.as_str()),
                        "seed {seed} round {round}: acked room {r} seq {seq} lost"
                    );
                    let answered = item.and_then(|i| i.reply()).map_or(0, |(to, _)| to);
                    assert_eq!(answered, *to, "{ctx}: room {r} seq {seq} replies to");
                }
                check_threads(&shard, room, &page.items, &ctx).await;
            }
            // Each reaction: as its last acknowledged change left it, or
            // as the change in flight at the kill.
            let mut found = HashMap::new();
            for (&(room, seq, user), &(acked_on, tried_on)) in &expected {
                let now = shard.reactions(room, &[seq], Some(user)).unwrap();
                let on = now
                    .get(&seq)
                    .is_some_and(|list| list.iter().any(|r| r.emoji == "👍" && r.mine));
                assert!(
                    on == acked_on || on == tried_on,
                    "seed {seed} round {round}: user {user}'s 👍 on room {room} seq {seq} is {on}"
                );
                found.insert((room, seq, user), on);
            }
            shard.close().await.unwrap();
            found
        }
    });
    // What recovery kept is the truth the next round starts from.
    for (key, on) in found {
        reactions.insert(key, (on, on));
    }
}

/// Each thread of the room (as the log's replies say) pages exactly its
/// replies, and its first message counts them.
async fn check_threads(
    shard: &rookery_storage::ShardStore,
    room: u64,
    items: &[rookery_storage::HistoryItem],
    ctx: &str,
) {
    let mut threads: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    for item in items {
        if let Some((to, thread)) = item.reply() {
            let root = items[to as usize - 1].reply().map_or(to, |(_, t)| t);
            assert_eq!(thread, root, "{ctx}: room {room} seq {}", item.seq());
            threads.entry(thread).or_default().push(item.seq());
        }
    }
    for item in items {
        let want = threads.get(&item.seq()).map_or(0, Vec::len) as u64;
        assert_eq!(
            item.replies,
            want,
            "{ctx}: room {room} seq {} replies",
            item.seq()
        );
    }
    for (thread, replies) in threads {
        let mut got = Vec::new();
        let mut after = 0;
        loop {
            let page = shard
                .thread(room, thread, after, 97)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(page.first.seq(), thread);
            assert_eq!(page.first.replies, replies.len() as u64, "{ctx}");
            got.extend(page.items.iter().map(|i| i.seq()));
            match page.next {
                Some(n) => after = n,
                None => break,
            }
        }
        assert_eq!(got, replies, "{ctx}: room {room} thread {thread}");
    }
}

/// Prints one line of the child's report, at once.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}
