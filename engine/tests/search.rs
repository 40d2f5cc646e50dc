//! The search index through the embed API: kept current as messages
//! arrive, edits and deletes reflected, rooms kept apart, bounds refused,
//! resumed after a restart without a rebuild, rebuilt from the log when
//! lost or foreign, retired and deleted words taken out of its files.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::small_config;
use rookery_engine::{
    Engine, Error, Retention, Search, SearchConfig, SearchQuery, SearchResults, SEARCH_DEPTH_MAX,
};

/// Results a query here wants (a server's page at most).
const PAGE: usize = 50;

fn config(dir: &Path) -> SearchConfig {
    let mut cfg = SearchConfig::new(dir.join("search"));
    cfg.commit_interval = Duration::from_millis(20);
    cfg.writer_memory_bytes_max = 32 << 20;
    cfg
}

fn query(text: &str, rooms: &[u64]) -> SearchQuery {
    SearchQuery {
        text: text.into(),
        rooms: rooms.to_vec(),
        offset: 0,
        limit: PAGE,
    }
}

/// The (room, seq) of each hit, best first.
fn found(search: &Search, text: &str, rooms: &[u64]) -> Vec<(u64, u64)> {
    let r = search.query(query(text, rooms)).wait().unwrap();
    r.hits.iter().map(|h| (h.room, h.seq)).collect()
}

/// Waits (10 s at most) until `text` in `rooms` finds exactly `want`, in
/// any order; the index commits every 20 ms.
fn wait_found(search: &Search, text: &str, rooms: &[u64], want: &[(u64, u64)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut want = want.to_vec();
    want.sort_unstable();
    loop {
        let got = match search.query(query(text, rooms)).wait() {
            Ok(r) => {
                let mut got: Vec<_> = r.hits.iter().map(|h| (h.room, h.seq)).collect();
                got.sort_unstable();
                got
            }
            Err(Error::Busy(_)) => Vec::new(), // opening or rebuilding
            Err(e) => panic!("search failed: {e}"),
        };
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} in {rooms:?} found {got:?}, not {want:?} ({:?})",
            search.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn finds_new_edited_and_deleted_messages_room_by_room() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(small_config(dir.path(), 2)).unwrap();
    let search = Search::start(&engine, config(dir.path())).unwrap();
    engine
        .post(1, 10, "", "the deploy is green")
        .wait()
        .unwrap();
    engine
        .post(1, 11, "", "Déploy? no: DEPLOY tomorrow")
        .wait()
        .unwrap();
    engine
        .post(2, 10, "", "deploy the green build")
        .wait()
        .unwrap();
    engine.post(3, 12, "", "unrelated chatter").wait().unwrap();
    wait_found(&search, "deploy", &[1, 2, 3], &[(1, 1), (1, 2), (2, 1)]);
    // Rooms not asked for are never searched.
    assert_eq!(found(&search, "deploy", &[2]), vec![(2, 1)]);
    assert_eq!(found(&search, "deploy", &[3]), vec![]);
    assert_eq!(found(&search, "deploy", &[]), vec![]);
    // Every word must match; case and accents do not count.
    assert_eq!(found(&search, "GREEN déploy", &[1, 2]).len(), 2);
    wait_found(&search, "green deploy", &[1], &[(1, 1)]);
    // More mentions rank higher.
    assert_eq!(found(&search, "deploy", &[1])[0], (1, 2));
    // An edit replaces the words; a delete takes them away.
    engine.edit(1, 1, 10, "the release is red").wait().unwrap();
    wait_found(&search, "green", &[1, 2], &[(2, 1)]);
    wait_found(&search, "release", &[1], &[(1, 1)]);
    engine.delete(2, 1, 10).wait().unwrap();
    wait_found(&search, "green", &[1, 2], &[]);
    // Reactions change no words; words of nothing find nothing.
    engine.react(1, 2, 12, "👍", true).wait().unwrap();
    assert_eq!(found(&search, "   ", &[1]), vec![]);
    let status = search.status();
    assert!(status.ready && !status.rebuilding && status.failed.is_none());
    assert_eq!(
        status.rebuilds, 1,
        "a new index is built once, from the log"
    );
    search.stop();
    engine.shutdown().unwrap();
}

#[test]
fn pages_run_best_first_without_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(small_config(dir.path(), 2)).unwrap();
    let search = Search::start(&engine, config(dir.path())).unwrap();
    for i in 0..30u64 {
        // Message i says "ping" i+1 times among filler: later ones rank higher.
        let body = format!("{} filler words here", "ping ".repeat(i as usize + 1));
        engine.post(5, 1, "", &body).wait().unwrap();
    }
    let page = |offset, limit| -> SearchResults {
        let mut q = query("ping", &[5]);
        (q.offset, q.limit) = (offset, limit);
        search.query(q).wait().unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while page(20, 20).hits.len() < 10 {
        assert!(Instant::now() < deadline, "{:?}", search.status());
        std::thread::sleep(Duration::from_millis(10));
    }
    let (first, second) = (page(0, 20), page(20, 20));
    assert!(first.more && !second.more);
    assert_eq!(first.hits.len() + second.hits.len(), 30);
    let mut seqs: Vec<u64> = first
        .hits
        .iter()
        .chain(&second.hits)
        .map(|h| h.seq)
        .collect();
    assert!(first.hits.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(seqs[0], 30, "the message with the most mentions first");
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 30, "no message on two pages");
    search.stop();
    engine.shutdown().unwrap();
}

/// Many rooms are searched three ways (engine/src/search/mod.rs,
/// `run_query`): the rooms' documents leading when they are few, the best
/// matches of all rooms filtered when the rooms hold much of what
/// matches, and every match checked when those best ones lie elsewhere.
/// Each must find the same messages.
#[test]
fn many_rooms_are_searched_alike_whatever_their_share() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(small_config(dir.path(), 2)).unwrap();
    // Posted before the index starts: indexed at once by the rebuild.
    let post_all = |room: u64, n: u64, body: &str| {
        let pending: Vec<_> = (0..n).map(|_| engine.post(room, 1, "", body)).collect();
        for p in pending {
            p.wait().unwrap();
        }
    };
    // Room 100 says the word most, rooms 1 and 2 once among others.
    post_all(100, 2_000, "word word word");
    post_all(1, 10, "word and some other words");
    post_all(2, 10, "word and some other words");
    let search = Search::start(&engine, config(dir.path())).unwrap();
    let mine: Vec<(u64, u64)> = (1..=2)
        .flat_map(|r| (1..=10).map(move |s| (r, s)))
        .collect();
    // Few: 20 of 2,020 matches are in rooms 1 and 2.
    wait_found(&search, "word", &[1, 2], &mine);
    // However the rooms were chosen, a match scores its words only (a
    // cluster merges its nodes' parts by score).
    let same_score = |search: &Search| {
        let one = search.query(query("word", &[1])).wait().unwrap();
        let two = search.query(query("word", &[1, 2])).wait().unwrap();
        let first = one.hits[0].score;
        assert!(
            one.hits.iter().chain(&two.hits).all(|h| h.score == first),
            "{one:?} {two:?}"
        );
    };
    same_score(&search);
    search.stop();
    // Many: 600 of 2,600; the 400-odd best matches are all room 100's.
    post_all(1, 290, "word and some other words");
    post_all(2, 290, "word and some other words");
    let search = Search::start(&engine, config(dir.path())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let page = search
            .query(query("word", &[1, 2]))
            .wait()
            .unwrap_or_default();
        if page.hits.len() == PAGE || Instant::now() > deadline {
            break page;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(page.hits.len(), PAGE);
    assert!(page.more);
    assert!(
        page.hits.iter().all(|h| h.room == 1 || h.room == 2),
        "{page:?}"
    );
    same_score(&search);
    // All rooms: the best matches are room 100's.
    let all = search.query(query("word", &[1, 2, 100])).wait().unwrap();
    assert!(
        all.hits.iter().all(|h| h.room == 100) && all.more,
        "{all:?}"
    );
    search.stop();
    engine.shutdown().unwrap();
}

#[test]
fn refuses_what_no_query_may_ask() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(small_config(dir.path(), 1)).unwrap();
    let search = Search::start(&engine, config(dir.path())).unwrap();
    let bad = |q: SearchQuery| match search.query(q).wait() {
        Err(Error::InvalidInput(_)) => {}
        other => panic!("{other:?}"),
    };
    bad(query(&"a".repeat(257), &[1]));
    let mut q = query("a", &[1]);
    q.limit = 0;
    bad(q.clone());
    q.limit = SEARCH_DEPTH_MAX + 1;
    bad(q.clone());
    // The whole depth at once is a query (what a cluster node asks),
    // answered once the new index is open.
    q.limit = SEARCH_DEPTH_MAX;
    q.offset = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match search.query(q.clone()).wait() {
            Ok(page) => break assert_eq!(page, SearchResults::default()),
            Err(Error::Busy(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            other => panic!("{other:?}"),
        }
    }
    q.limit = 10;
    q.offset = 991;
    bad(q);
    let mut cfg = config(dir.path());
    cfg.writer_memory_bytes_max = 1 << 20;
    assert!(matches!(
        Search::start(&engine, cfg),
        Err(Error::InvalidInput(_))
    ));
    search.stop();
    assert!(matches!(
        search.query(query("a", &[1])).wait(),
        Err(Error::ShutDown)
    ));
    engine.shutdown().unwrap();
}

#[test]
fn resumes_after_a_restart_and_rebuilds_a_lost_or_foreign_index() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let engine = Engine::start(small_config(dir.path(), 2)).unwrap();
        let search = Search::start(&engine, config(dir.path())).unwrap();
        (engine, search)
    };
    let (engine, search) = start();
    for room in 1..=4u64 {
        engine.post(room, 1, "", "apples and pears").wait().unwrap();
        engine.post(room, 1, "", "only pears").wait().unwrap();
    }
    engine.edit(2, 2, 1, "apples now").wait().unwrap();
    engine.delete(3, 1, 1).wait().unwrap();
    let apples = [(1, 1), (2, 1), (2, 2), (4, 1)];
    wait_found(&search, "apples", &[1, 2, 3, 4], &apples);
    search.stop();
    engine.shutdown().unwrap();

    // A restart goes on from the committed cursors: no rebuild, and what
    // was posted while the index was stopped is read from the log.
    let engine = Engine::start(small_config(dir.path(), 2)).unwrap();
    engine
        .post(1, 1, "", "apples while stopped")
        .wait()
        .unwrap();
    let search = Search::start(&engine, config(dir.path())).unwrap();
    let mut apples = apples.to_vec();
    apples.push((1, 3));
    wait_found(&search, "apples", &[1, 2, 3, 4], &apples);
    assert_eq!(search.status().rebuilds, 0);
    search.stop();
    engine.shutdown().unwrap();

    // Lost: rebuilt from the log, edits and deletes applied.
    std::fs::remove_dir_all(dir.path().join("search")).unwrap();
    let (engine, search) = start();
    wait_found(&search, "apples", &[1, 2, 3, 4], &apples);
    wait_found(
        &search,
        "pears",
        &[1, 2, 3, 4],
        &[(1, 1), (1, 2), (2, 1), (3, 2), (4, 1), (4, 2)],
    );
    assert_eq!(search.status().rebuilds, 1);
    search.stop();
    engine.shutdown().unwrap();

    // Damaged: a commit whose meta file does not parse is rebuilt too.
    std::fs::write(dir.path().join("search/meta.json"), b"{not json").unwrap();
    let (engine, search) = start();
    wait_found(&search, "apples", &[1, 2, 3, 4], &apples);
    assert_eq!(search.status().rebuilds, 1);
    search.stop();
    engine.shutdown().unwrap();

    // Foreign: an index from another data directory is not trusted.
    let other = tempfile::tempdir().unwrap();
    let engine = Engine::start(small_config(other.path(), 2)).unwrap();
    let search = Search::start(&engine, config(other.path())).unwrap();
    engine.post(9, 1, "", "kiwis").wait().unwrap();
    wait_found(&search, "kiwis", &[9], &[(9, 1)]);
    search.stop();
    engine.shutdown().unwrap();
    std::fs::remove_dir_all(dir.path().join("search")).unwrap();
    copy_dir(&other.path().join("search"), &dir.path().join("search"));
    let (engine, search) = start();
    wait_found(&search, "apples", &[1, 2, 3, 4], &apples);
    assert_eq!(found(&search, "kiwis", &[9]), vec![]);
    assert_eq!(search.status().rebuilds, 1);
    search.stop();
    engine.shutdown().unwrap();
}

#[test]
fn retired_and_deleted_words_leave_the_index_files() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(small_config(dir.path(), 1)).unwrap();
    let mut cfg = config(dir.path());
    cfg.expunge_delay = Duration::from_millis(50);
    cfg.retention_check_interval = Duration::from_millis(50);
    // Posted before the index starts: built in a segment or two (one per
    // rebuild worker), where a few removals stay below the merge policy's
    // share of deleted documents (only an expunge rewrites them).
    for i in 0..100 {
        engine
            .post(1, 1, "", &format!("old{i} kept"))
            .wait()
            .unwrap();
    }
    engine.post(2, 1, "", "secretword kept").wait().unwrap();
    engine.post(2, 1, "", "other kept").wait().unwrap();
    let search = Search::start(&engine, cfg).unwrap();
    // Two pages of results: every message is found.
    let found_all = |kept: &[(u64, u64)]| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut got = Vec::new();
            for offset in [0, 50, 100] {
                let mut q = query("kept", &[1, 2]);
                q.offset = offset;
                let page = search.query(q).wait().unwrap_or_default();
                got.extend(page.hits.iter().map(|h| (h.room, h.seq)));
            }
            got.sort_unstable();
            if got == kept {
                return;
            }
            assert!(Instant::now() < deadline, "{} found", got.len());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let mut kept: Vec<_> = (1..=100).map(|s| (1, s)).chain([(2, 1), (2, 2)]).collect();
    found_all(&kept);
    engine
        .set_retention(
            1,
            Retention {
                max_messages: Some(98),
                max_age_ms: None,
            },
        )
        .wait()
        .unwrap();
    engine.enforce_retention().unwrap();
    engine.delete(2, 1, 1).wait().unwrap();
    kept.retain(|&(room, seq)| !(room == 1 && seq <= 2 || room == 2 && seq == 1));
    found_all(&kept);
    // Read as tantivy sees the committed files: until a merge rewrites
    // them, the segments still know removed words (a delete only marks
    // the document); within the expunge delay they no longer do.
    // Read while the indexer writes: a file a merge removed between
    // reading the commit and opening it makes it read again.
    let doc_freqs = |words: &[&str]| -> Vec<u64> {
        let read = || -> tantivy::Result<Vec<u64>> {
            let index = tantivy::Index::open_in_dir(dir.path().join("search"))?;
            let body = index.schema().get_field("body")?;
            let searcher = index.reader()?.searcher();
            let freq = |w: &&str| searcher.doc_freq(&tantivy::Term::from_field_text(body, w));
            words.iter().map(freq).collect()
        };
        for _ in 0..50 {
            if let Ok(freqs) = read() {
                return freqs;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the index cannot be read")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    // (The count goes up once the rewrite is committed and shown.)
    while doc_freqs(&["secretword", "old0", "old1"]) != [0, 0, 0] || search.status().expunges == 0 {
        assert!(Instant::now() < deadline, "{:?}", search.status());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        doc_freqs(&["old2", "old99", "other", "kept"]),
        [1, 1, 1, 99]
    );
    search.stop();
    engine.shutdown().unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
