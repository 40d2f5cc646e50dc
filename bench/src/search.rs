//! `rookery-bench search`: message search (the engine's `Search`, what
//! `GET /api/search` runs before it reads each result's text) at ten
//! million messages.
//!
//! Starts an engine and its search index on a fresh data directory, then
//! posts `--messages` messages over `--rooms` rooms as fast as the engine
//! takes them (`--window` posts in flight per thread, two threads), each
//! of 4 to 16 words drawn from a `--vocabulary` of made-up words with
//! Zipf's law (rank r drawn with weight 1/r, as words of real text are).
//! Measures:
//! - **indexing**: messages per second from the first post until the
//!   index has committed every one (the index follows the log feed while
//!   the posts go on: end to end, so never above the posting rate), and
//!   how many were not yet searchable (committed) when the posting ended;
//! - **rebuild**: the index deleted and built again from the log;
//! - **queries**: p50/p99/max per kind, `--rounds` each: a common, a
//!   middling and a rare word, two words, in one room, in a user's
//!   `--user-rooms` rooms, and in every room.
//!
//! `--json` writes the report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rookery_engine::{Durability, Engine, EngineConfig, Search, SearchConfig, SearchQuery};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// Messages posted and indexed.
    #[arg(long, default_value_t = 10_000_000)]
    messages: u64,
    /// Rooms they are spread over (evenly, in turn).
    #[arg(long, default_value_t = 10_000)]
    rooms: u64,
    /// Distinct words the messages are made of.
    #[arg(long, default_value_t = 50_000)]
    vocabulary: usize,
    /// Rooms a user searching "their rooms" is in.
    #[arg(long, default_value_t = 100)]
    user_rooms: usize,
    /// Times each query kind runs.
    #[arg(long, default_value_t = 200)]
    rounds: u32,
    /// Results per page.
    #[arg(long, default_value_t = 20)]
    page_len: usize,
    /// Posts in flight per posting thread.
    #[arg(long, default_value_t = 2_048)]
    window: usize,
    /// Messages posted per second over both threads (0: as fast as the
    /// engine takes them, which leaves the index little of the CPU).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Shards of the engine.
    #[arg(long, default_value_t = 2)]
    shards: u32,
    /// Where the data directory is made (a temporary directory when
    /// absent; it must not exist).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Writes the report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Word `rank` of the made-up vocabulary: the rank in base 16 spelt with
/// `a`..`p`, then 0 to 4 letters of `r`..`z` from its hash (lengths vary
/// as words' do); distinct per rank, as the first part ends where the
/// letters past `p` begin.
fn word(rank: usize) -> String {
    let mut w = String::new();
    let mut n = rank;
    loop {
        w.push((b'a' + (n % 16) as u8) as char);
        n /= 16;
        if n == 0 {
            break;
        }
    }
    let h = (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for i in 0..(h >> 60) as usize % 5 {
        w.push((b'r' + ((h >> (8 * i + 8)) % 9) as u8) as char);
    }
    w
}

/// Draws ranks with Zipf's law over `n` words.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Zipf {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|r| {
                total += 1.0 / r as f64;
                total
            })
            .collect();
        Zipf { cumulative }
    }

    fn draw(&self, rng: &mut impl Rng) -> usize {
        let x = rng.gen::<f64>() * self.cumulative.last().copied().unwrap_or(1.0);
        self.cumulative.partition_point(|&c| c < x)
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    // The middling words are ranks 900..1100.
    anyhow::ensure!(
        a.rooms >= 1 && a.vocabulary >= 1_100,
        "--rooms >= 1, --vocabulary >= 1100"
    );
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().join("data"));
    anyhow::ensure!(
        !dir.exists(),
        "{} exists: give a fresh --dir",
        dir.display()
    );
    let mut cfg = EngineConfig::new(&dir);
    cfg.storage.shards = a.shards;
    cfg.storage.durability = Durability::None;
    let engine = Engine::start(cfg).context("starting the engine")?;
    let search = Search::start(&engine, SearchConfig::new(dir.join("search")))?;
    wait_ready(&search, 0, Duration::from_secs(60))?;

    // Indexing: posts as fast as the engine takes them, the index
    // following; done when it has committed every message.
    let zipf = Arc::new(Zipf::new(a.vocabulary));
    let words: Arc<Vec<String>> = Arc::new((0..a.vocabulary).map(word).collect());
    let started = Instant::now();
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let (engine, zipf, words) = (engine.clone(), zipf.clone(), words.clone());
            let pace = Pace {
                n: a.messages,
                rooms: a.rooms,
                window: a.window,
                per_thread_per_s: a.rate.div_ceil(2),
            };
            std::thread::spawn(move || post_all(&engine, &zipf, &words, t, &pace))
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a posting thread panicked"))??;
    }
    let posted_s = started.elapsed().as_secs_f64();
    let behind_at_end = a.messages.saturating_sub(search.status().docs);
    eprintln!(
        "search: {} messages posted in {posted_s:.1} s ({:.0}/s), {behind_at_end} not yet searchable",
        a.messages,
        a.messages as f64 / posted_s
    );
    wait_ready(&search, a.messages, Duration::from_secs(3_600))?;
    let indexed_s = started.elapsed().as_secs_f64();
    eprintln!(
        "search: indexed in {indexed_s:.1} s ({:.0} messages/s)",
        a.messages as f64 / indexed_s
    );

    // Rebuild: the index lost, built again from the log.
    search.stop();
    std::fs::remove_dir_all(dir.join("search"))?;
    let rebuilding = Instant::now();
    let search = Search::start(&engine, SearchConfig::new(dir.join("search")))?;
    wait_ready(&search, a.messages, Duration::from_secs(3_600))?;
    let rebuild_s = rebuilding.elapsed().as_secs_f64();
    eprintln!(
        "search: rebuilt from the log in {rebuild_s:.1} s ({:.0} messages/s)",
        a.messages as f64 / rebuild_s
    );

    let rows = queries(&search, &a, &words)?;
    let index_bytes = rookery_storage::dir_bytes(&dir.join("search"));
    let log_bytes = rookery_storage::dir_bytes(&dir) - index_bytes;
    search.stop();
    engine.shutdown()?;
    let report = json!({"messages": a.messages, "rooms": a.rooms, "vocabulary": a.vocabulary,
        "user_rooms": a.user_rooms, "page_len": a.page_len, "rounds": a.rounds,
        "shards": a.shards, "durability": "none", "rate": a.rate,
        "posted_per_sec": a.messages as f64 / posted_s,
        "indexed_per_sec": a.messages as f64 / indexed_s,
        "unsearchable_when_posting_ended": behind_at_end,
        "rebuild_per_sec": a.messages as f64 / rebuild_s,
        "index_bytes": index_bytes, "data_bytes": log_bytes, "queries": rows});
    if let Some(out) = &a.json {
        std::fs::write(out, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

/// How a posting thread posts.
struct Pace {
    n: u64,
    rooms: u64,
    window: usize,
    /// 0: unpaced.
    per_thread_per_s: u64,
}

/// Posts thread `t`'s half of `n` messages (message `i` to room
/// `i % rooms + 1`), `window` in flight, at its pace.
fn post_all(
    engine: &Engine,
    zipf: &Zipf,
    words: &[String],
    t: u64,
    p: &Pace,
) -> anyhow::Result<()> {
    let (n, rooms, window) = (p.n, p.rooms, p.window);
    let mut rng = rand::rngs::StdRng::seed_from_u64(t);
    let mut pending = std::collections::VecDeque::with_capacity(window);
    let mut body = String::new();
    let started = Instant::now();
    for (k, i) in (t..n).step_by(2).enumerate() {
        if p.per_thread_per_s > 0 && k % 1_000 == 0 {
            let due = Duration::from_secs_f64(k as f64 / p.per_thread_per_s as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        body.clear();
        for k in 0..rng.gen_range(4..=16) {
            if k > 0 {
                body.push(' ');
            }
            body.push_str(&words[zipf.draw(&mut rng)]);
        }
        pending.push_back(engine.post(i % rooms + 1, 1 + t, "", &body));
        if pending.len() >= window {
            pending.pop_front().expect("full").wait()?;
        }
    }
    for p in pending {
        p.wait()?;
    }
    Ok(())
}

/// Waits until the index answers and has committed `docs` messages.
fn wait_ready(search: &Search, docs: u64, most: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + most;
    loop {
        let s = search.status();
        if let Some(why) = s.failed {
            anyhow::bail!("the search index failed: {why}");
        }
        if s.ready && s.docs >= docs {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the index is not ready: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Times every query kind; one JSON row each.
fn queries(search: &Search, a: &Args, words: &[String]) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let all: Vec<u64> = (1..=a.rooms).collect();
    let user_rooms = |rng: &mut rand::rngs::StdRng| -> Vec<u64> {
        (0..a.user_rooms.min(a.rooms as usize))
            .map(|_| rng.gen_range(1..=a.rooms))
            .collect()
    };
    // Ranks by how often they occur: among the 10 most common, around the
    // 1,000th, and in the last tenth.
    let v = a.vocabulary;
    let common = |rng: &mut rand::rngs::StdRng| words[rng.gen_range(0..10)].clone();
    let middling = |rng: &mut rand::rngs::StdRng| words[rng.gen_range(900..1_100)].clone();
    let rare = |rng: &mut rand::rngs::StdRng| words[rng.gen_range(v * 9 / 10..v)].clone();
    type Pick<'a> = Box<dyn Fn(&mut rand::rngs::StdRng) -> (String, Vec<u64>) + 'a>;
    let kinds: Vec<(&str, Pick)> = vec![
        (
            "a common word, one room",
            Box::new(|r| (common(r), vec![r.gen_range(1..=a.rooms)])),
        ),
        (
            "a rare word, one room",
            Box::new(|r| (rare(r), vec![r.gen_range(1..=a.rooms)])),
        ),
        (
            "a common word, a user's rooms",
            Box::new(|r| (common(r), user_rooms(r))),
        ),
        (
            "a middling word, a user's rooms",
            Box::new(|r| (middling(r), user_rooms(r))),
        ),
        (
            "a rare word, a user's rooms",
            Box::new(|r| (rare(r), user_rooms(r))),
        ),
        (
            "two words, a user's rooms",
            Box::new(|r| (format!("{} {}", common(r), middling(r)), user_rooms(r))),
        ),
        (
            "a common word, every room",
            Box::new(|r| (common(r), all.clone())),
        ),
        (
            "a rare word, every room",
            Box::new(|r| (rare(r), all.clone())),
        ),
    ];
    let mut rows = Vec::new();
    for (kind, pick) in kinds {
        let mut h = Histogram::<u64>::new(3)?;
        let mut found = Histogram::<u64>::new(3)?;
        for _ in 0..a.rounds {
            let (text, rooms) = pick(&mut rng);
            let q = SearchQuery {
                text,
                rooms,
                offset: 0,
                limit: a.page_len,
            };
            let t = Instant::now();
            let page = search.query(q).wait()?;
            h.record(t.elapsed().as_micros() as u64)?;
            found.record(page.hits.len() as u64)?;
        }
        let ms = |v: u64| v as f64 / 1000.0;
        eprintln!(
            "  {kind:<32} found/page {:>3}  p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            found.value_at_quantile(0.5),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        );
        rows.push(
            json!({"kind": kind, "found_per_page_p50": found.value_at_quantile(0.5),
            "p50_ms": ms(h.value_at_quantile(0.5)), "p99_ms": ms(h.value_at_quantile(0.99)),
            "max_ms": ms(h.max())}),
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct_and_zipf_favours_low_ranks() {
        let words: std::collections::HashSet<String> = (0..50_000).map(word).collect();
        assert_eq!(words.len(), 50_000);
        assert!(words.iter().all(|w| (1..=8).contains(&w.len())));
        let z = Zipf::new(1_000);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let draws: Vec<usize> = (0..10_000).map(|_| z.draw(&mut rng)).collect();
        let first = draws.iter().filter(|&&r| r == 0).count();
        let late = draws.iter().filter(|&&r| r >= 500).count();
        assert!(
            first > late / 2,
            "rank 0 drawn {first} times, ranks 500+ {late}"
        );
        assert!(draws.iter().all(|&r| r < 1_000));
    }
}
