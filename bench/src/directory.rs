//! `rookery-bench directory`: the user search (`Meta::search_users`, what
//! `GET /api/users?q=` runs) at a million users.
//!
//! Fills a fresh `meta.redb` with `--users` users named like people
//! (`first_last` with a number, a display name for one in `--profile-every`),
//! in batches of one transaction each, then times each query kind
//! `--rounds` times, one page of `--page-len` users each, cycling through
//! a few queries of each kind: one-letter prefixes, two and three letters,
//! whole words, two words (the second checked against each user found),
//! a word of display names only, and prefixes nobody has. redb's page
//! cache is the server's (16 MiB), far smaller than the file: reads past
//! it come from the kernel's page cache. Reports each kind's
//! p50/p99/max, the users found per page, and the fill rate; `--json`
//! writes it.

use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rookery_storage::meta::{Meta, User};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// Users in the directory.
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// One user in this many sets a display name.
    #[arg(long, default_value_t = 10)]
    profile_every: u64,
    /// Times each query kind runs.
    #[arg(long, default_value_t = 200)]
    rounds: u32,
    /// Users in one page.
    #[arg(long, default_value_t = 20)]
    page_len: usize,
    /// Users per fill transaction.
    #[arg(long, default_value_t = 20_000)]
    batch: usize,
    /// Where `meta.redb` is made (a temporary directory when absent).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Writes the report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

const FIRST: [&str; 16] = [
    "ada", "alan", "grace", "edsger", "barbara", "donald", "frances", "ken", "dennis", "margaret",
    "john", "radia", "leslie", "tony", "niklaus", "shafi",
];
const LAST: [&str; 16] = [
    "lovelace",
    "turing",
    "hopper",
    "dijkstra",
    "liskov",
    "knuth",
    "allen",
    "thompson",
    "ritchie",
    "hamilton",
    "backus",
    "perlman",
    "lamport",
    "hoare",
    "wirth",
    "goldwasser",
];

/// The kinds of query, each cycling through its queries round by round.
pub(crate) const KINDS: [(&str, &[&str]); 7] = [
    ("one letter", &["a", "b", "d", "g", "h", "k", "l", "t"]),
    (
        "two letters",
        &["ma", "ri", "jo", "ha", "wi", "al", "kn", "ho"],
    ),
    (
        "three letters",
        &["lam", "dij", "hop", "tur", "bac", "gol", "mar", "nik"],
    ),
    (
        "a whole word",
        &["dijkstra", "barbara", "liskov", "ritchie", "perlman"],
    ),
    (
        "two words",
        &["grace hop", "ada love", "ken thom", "tony hoare"],
    ),
    (
        "a display name's word",
        &["pioneer", "pion pioneer", "pioneer lamport"],
    ),
    ("nobody", &["zzyzx", "qq", "xylo"]),
];

/// User `i`'s name: a first and a last name from the lists, and `i`.
fn name_of(i: u64) -> String {
    let (f, l) = ((i % 16) as usize, ((i / 16) % 16) as usize);
    format!("{}_{}{}", FIRST[f], LAST[l], i)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("meta.redb");
    anyhow::ensure!(
        !path.exists(),
        "{} exists: give a fresh --dir",
        path.display()
    );
    // The server's page cache for meta.redb (StorageConfig's default).
    let cache = rookery_storage::StorageConfig::new(&dir).meta_cache_bytes;
    let meta = Meta::open(&path, cache).context("opening meta.redb")?;
    let fill_s = fill(&meta, a.users, a.profile_every, a.batch)?;
    eprintln!(
        "directory: {} users in {fill_s:.1} s ({:.0} users/s)",
        a.users,
        a.users as f64 / fill_s
    );
    let mut rows = Vec::new();
    for (kind, queries) in KINDS {
        let mut h = Histogram::<u64>::new(3)?;
        let mut found = Histogram::<u64>::new(3)?;
        for round in 0..a.rounds as usize {
            let q = queries[round % queries.len()];
            let t = Instant::now();
            let page = meta.search_users(q, None, a.page_len)?;
            h.record(t.elapsed().as_micros() as u64)?;
            found.record(page.users.len() as u64)?;
        }
        let ms = |v: u64| v as f64 / 1000.0;
        eprintln!(
            "  {kind:<22} users/page {:>3}  p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            found.value_at_quantile(0.5),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        );
        rows.push(json!({"kind": kind, "queries": queries,
            "users_per_page_p50": found.value_at_quantile(0.5),
            "p50_ms": ms(h.value_at_quantile(0.5)), "p99_ms": ms(h.value_at_quantile(0.99)),
            "max_ms": ms(h.max())}));
    }
    let report = json!({"users": a.users, "profile_every": a.profile_every,
        "page_len": a.page_len, "rounds": a.rounds, "fill_s": fill_s,
        "meta_bytes": std::fs::metadata(&path)?.len(), "queries": rows});
    if let Some(out) = &a.json {
        std::fs::write(out, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

/// Fills the directory with users 1 to `users` (ids from 1; one in
/// `profile_every` with a display name, 2,000 at most), `batch` a
/// transaction; the seconds it took.
pub(crate) fn fill(
    meta: &Meta,
    users: u64,
    profile_every: u64,
    batch_len: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut batch = Vec::with_capacity(batch_len);
    let mut next_report = Instant::now() + Duration::from_secs(10);
    for i in 1..=users {
        batch.push(User {
            id: i,
            name: name_of(i),
            created_ms: 1,
            password_hash: None,
        });
        if batch.len() == batch_len || i == users {
            meta.import_users(&batch)?;
            batch.clear();
            if Instant::now() > next_report {
                eprintln!("directory: {i} users so far");
                next_report += Duration::from_secs(10);
            }
        }
    }
    for i in (1..=users).step_by(profile_every.max(1) as usize) {
        let display = format!("Pioneer {}", LAST[(i % 16) as usize]);
        meta.set_profile(i, &display, "", 1)?;
        if i > 2_000 * profile_every {
            break; // enough profiles for the display-name query
        }
    }
    Ok(started.elapsed().as_secs_f64())
}
