//! Full-text message search: an inverted index (tantivy) derived from
//! every shard's log, written by one thread of its own and queried on a
//! small pool of its own, so that neither indexing nor a query ever runs
//! on a shard or delays a delivery.
//!
//! The index is a durable reader of the log feeds, named [`READER`]: it
//! indexes what the shards acknowledged, in log order, edits and deletes
//! applied, and commits about once per `commit_interval` with the feed
//! positions it read up to carried in the commit itself (see
//! [`indexer`]). A lost, damaged or foreign index is rebuilt from the logs
//! while the engine serves.
//!
//! Invariants:
//! - a query sees only committed documents, each one live message as of
//!   its commit, named by (room, seq);
//! - a result names a message, never its text: the caller reads the text
//!   from the log (what is shown is what the log holds now, so a message
//!   deleted since the last commit is dropped there, not shown);
//! - everything is bounded: a query's words and page, the queries waiting
//!   for the pool, the writer's memory, the changes read per turn.

mod indexer;
mod schema;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rustc_hash::FxHashSet;
use tantivy::collector::TopDocs;
use tantivy::query::doc_predicate_query::{DocPredicateQuery, FunctionPredicate};
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, TermQuery, TermSetQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocId, IndexReader, Term};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::reply::Pending;
use schema::Fields;

/// The name the index's feed cursors are saved under (a server-internal
/// reader: no webhook's name can be it).
pub const READER: &str = "rookery:search";

/// Bytes of query text read at most.
pub const QUERY_BYTES_MAX: usize = 256;

/// Words of a query used at most (every one must match).
pub const QUERY_TERMS_MAX: usize = 8;

/// How deep results go: offset plus limit at most (the collector keeps
/// that many). A server's pages are shorter (`GET /api/search` serves 50
/// at most); a query for the best `SEARCH_DEPTH_MAX` at once is what a
/// cluster node asks of each other node to merge their pages.
pub const SEARCH_DEPTH_MAX: usize = 1_000;

/// How the index is kept.
#[derive(Debug, Clone)]
pub struct SearchConfig {
    /// The index's directory (the server's: `<data dir>/search`). Derived
    /// data: deleting it makes the next start rebuild it.
    pub dir: PathBuf,
    /// How long a message may wait to be searchable, at most about
    /// (default 1 s). Each commit fsyncs the new segments.
    pub commit_interval: Duration,
    /// Memory the writer buffers before it writes a segment (default
    /// 64 MiB, at least 32 MiB; tantivy may use about twice this while it
    /// writes).
    pub writer_memory_bytes_max: usize,
    /// How long a deleted or edited message's old words may stay in the
    /// index's files before the segments holding them are rewritten
    /// (default 10 min: the log's `deleted_text_delay_ms`).
    pub expunge_delay: Duration,
    /// How often retention's low seqs are read, to take retired messages
    /// out of the index (default 60 s; they are never shown meanwhile:
    /// results are read from the log).
    pub retention_check_interval: Duration,
    /// Threads that run queries (default 2).
    pub query_threads: usize,
    /// Queries waiting for a thread at most; past it a query is refused
    /// with `Busy` (default 64).
    pub query_queue_len_max: usize,
}

impl SearchConfig {
    /// The defaults, with the index in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> SearchConfig {
        SearchConfig {
            dir: dir.into(),
            commit_interval: Duration::from_secs(1),
            writer_memory_bytes_max: 64 << 20,
            expunge_delay: Duration::from_secs(600),
            retention_check_interval: Duration::from_secs(60),
            query_threads: 2,
            query_queue_len_max: 64,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::InvalidInput(format!("search: {why}")));
        if self.writer_memory_bytes_max < 32 << 20 {
            return bad("writer_memory_bytes_max must be at least 32 MiB");
        }
        if self.commit_interval.is_zero() || self.commit_interval > Duration::from_secs(60) {
            return bad("commit_interval must be from 1 ms to 60 s");
        }
        if self.query_threads == 0 || self.query_queue_len_max == 0 {
            return bad("query_threads and query_queue_len_max must be at least 1");
        }
        Ok(())
    }
}

/// A search: words that must all appear, in which rooms, which page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// The words (at most [`QUERY_BYTES_MAX`] bytes; the first
    /// [`QUERY_TERMS_MAX`] distinct words count).
    pub text: String,
    /// The rooms to look in (the ones the asker may read).
    pub rooms: Vec<u64>,
    /// Results to skip.
    pub offset: usize,
    /// Results wanted (1 or more; `offset + limit` at most
    /// [`SEARCH_DEPTH_MAX`]).
    pub limit: usize,
}

/// One message that matched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchHit {
    /// Its room.
    pub room: u64,
    /// Its seq.
    pub seq: u64,
    /// BM25 relevance (higher first).
    pub score: f32,
}

/// A page of results, best first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchResults {
    /// The page.
    pub hits: Vec<SearchHit>,
    /// Whether a next page has more (at `offset + limit`, within
    /// [`SEARCH_DEPTH_MAX`]).
    pub more: bool,
}

/// What the index is doing (for the health page and `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchStatus {
    /// Queries are answered.
    pub ready: bool,
    /// Being built from the logs (queries wait for it).
    pub rebuilding: bool,
    /// Why the index stopped, if it did (queries fail).
    pub failed: Option<String>,
    /// Messages in the last committed index.
    pub docs: u64,
    /// Rebuilds since start.
    pub rebuilds: u64,
    /// Expunges (rewrites of segments holding removed words) since start.
    pub expunges: u64,
    /// Queries answered since start.
    pub queries: u64,
}

/// What the indexer shares with the query threads.
#[derive(Default)]
pub(crate) struct Shared {
    stop: AtomicBool,
    view: RwLock<Option<(IndexReader, Fields)>>,
    rebuilding: AtomicBool,
    failed: Mutex<Option<String>>,
    docs: AtomicU64,
    rebuilds: AtomicU64,
    expunges: AtomicU64,
    queries: AtomicU64,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn publish(&self, reader: IndexReader, fields: Fields, docs: u64) {
        self.docs.store(docs, Ordering::Relaxed);
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Some((reader, fields));
    }

    fn unpublish(&self) {
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn rebuilding(&self, on: bool) {
        self.rebuilding.store(on, Ordering::Relaxed);
    }

    fn fail(&self, why: String) {
        self.unpublish();
        self.rebuilding(false);
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    fn view(&self) -> Result<(IndexReader, Fields)> {
        if let Some(v) = self.view.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(v.clone());
        }
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        Err(Error::Busy(match failed.as_ref() {
            Some(why) => format!("search is unavailable: {why}"),
            None => "the search index is being built; retry shortly".into(),
        }))
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The search index of a running engine: start it once, query it from
/// any thread, stop it before the engine (`Send + Sync + Clone`).
#[derive(Clone)]
pub struct Search {
    inner: Arc<Inner>,
}

struct Inner {
    /// Wakes the indexer to stop (no engine handle: the search must not
    /// keep the engine's files open once it and the engine are stopped).
    doorbell: Arc<rookery_storage::Doorbell>,
    shared: Arc<Shared>,
    jobs: Mutex<Option<flume::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Search {
    /// Opens the index in `cfg.dir` (or starts rebuilding it from the
    /// logs) on a thread of its own, and starts the query threads.
    /// Returns at once: queries fail with `Busy` until the index is open.
    pub fn start(engine: &Engine, cfg: SearchConfig) -> Result<Search> {
        cfg.validate()?;
        let shared = Arc::new(Shared::default());
        let spawn_err = |e: std::io::Error| Error::Start(format!("search thread: {e}"));
        let mut threads = Vec::with_capacity(cfg.query_threads + 1);
        let (tx, rx) = flume::bounded::<Job>(cfg.query_queue_len_max);
        for i in 0..cfg.query_threads {
            let rx = rx.clone();
            let t = std::thread::Builder::new()
                .name(format!("rookery-search-{i}"))
                .spawn(move || {
                    // Ends when the search stops (every sender is gone).
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })
                .map_err(spawn_err)?;
            threads.push(t);
        }
        let (e, s) = (engine.clone(), shared.clone());
        let indexer = std::thread::Builder::new()
            .name("rookery-search-index".into())
            .spawn(move || indexer::run(e, cfg, s))
            .map_err(spawn_err)?;
        threads.push(indexer);
        Ok(Search {
            inner: Arc::new(Inner {
                doorbell: engine.feeds().doorbell().clone(),
                shared,
                jobs: Mutex::new(Some(tx)),
                threads: Mutex::new(threads),
            }),
        })
    }

    /// The messages of `q.rooms` holding every word of `q.text`, best
    /// first. `InvalidInput` for text past [`QUERY_BYTES_MAX`] or a page
    /// out of bounds; `Busy` while the index is being built or when too
    /// many queries wait; `ShutDown` once stopped.
    pub fn query(&self, q: SearchQuery) -> Pending<SearchResults> {
        if let Err(e) = check(&q) {
            return Pending::ready(Err(e));
        }
        if q.rooms.is_empty() || schema::terms(&q.text, 1).is_empty() {
            // Nothing to look for, or nowhere: nothing found, index or not.
            return Pending::ready(Ok(SearchResults::default()));
        }
        let (reply, pending) = Pending::channel();
        let shared = self.inner.shared.clone();
        let job: Job = Box::new(move || {
            // A panic in the library fails this query, not the thread.
            let run = std::panic::AssertUnwindSafe(|| {
                shared.view().and_then(|(reader, fields)| {
                    run_query(&reader, &fields, &q).map_err(|e| Error::Busy(format!("search: {e}")))
                })
            });
            let out = std::panic::catch_unwind(run)
                .unwrap_or_else(|_| Err(Error::Busy("search: the query failed".into())));
            shared.queries.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(out);
        });
        let jobs = self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
        match jobs.as_ref().map(|j| j.try_send(job)) {
            None => Pending::ready(Err(Error::ShutDown)),
            Some(Err(_)) => Pending::ready(Err(Error::Busy(
                "too many searches in progress; retry shortly".into(),
            ))),
            Some(Ok(())) => pending,
        }
    }

    /// What the index is doing.
    pub fn status(&self) -> SearchStatus {
        let s = &self.inner.shared;
        let ready = s.view.read().unwrap_or_else(|p| p.into_inner()).is_some();
        SearchStatus {
            ready,
            rebuilding: s.rebuilding.load(Ordering::Relaxed),
            failed: s.failed.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            docs: s.docs.load(Ordering::Relaxed),
            rebuilds: s.rebuilds.load(Ordering::Relaxed),
            expunges: s.expunges.load(Ordering::Relaxed),
            queries: s.queries.load(Ordering::Relaxed),
        }
    }

    /// Commits what the indexer read and stops its threads (waits for a
    /// query under way, and for a rebuild to reach its next shard). Call
    /// it before [`Engine::shutdown`]; later queries fail with `ShutDown`.
    pub fn stop(&self) {
        self.inner.shared.stop.store(true, Ordering::Relaxed);
        self.inner.doorbell.ring();
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let threads =
            std::mem::take(&mut *self.inner.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        self.inner.shared.unpublish();
    }
}

/// Refuses what no query may ask.
fn check(q: &SearchQuery) -> Result<()> {
    let bad = |why: String| Err(Error::InvalidInput(why));
    if q.text.len() > QUERY_BYTES_MAX {
        return bad(format!("a search is at most {QUERY_BYTES_MAX} bytes"));
    }
    if q.limit == 0 {
        return bad("a query wants one result or more".into());
    }
    if q.offset
        .checked_add(q.limit)
        .is_none_or(|d| d > SEARCH_DEPTH_MAX)
    {
        return bad(format!(
            "results go {SEARCH_DEPTH_MAX} deep at most: narrow the search"
        ));
    }
    Ok(())
}

/// The rooms' documents are the smaller side by this factor or more:
/// a bitset of them leads the intersection with the words'.
const ROOMS_SPARSE_RATIO: u64 = 8;

/// Best matches over all rooms read at most, to filter by room, before a
/// query falls back to scoring every match.
const OVERFETCH_MAX: u64 = 10_000;

/// Runs `q` on the reader's current searcher. How depends on where the
/// words' matches lie (measured by `rookery-bench search`, docs/
/// benchmarks.md):
/// - one room: its term intersects with the words' postings, and tantivy
///   skips blocks that cannot reach the top (block-max WAND);
/// - rooms that hold few documents next to the words' matches: a bitset
///   of the rooms' documents leads the intersection;
/// - rooms that hold much of what matches (a common word over many
///   rooms): the best matches of all rooms, pruned as above, over-fetched
///   by the share of the index the rooms hold, then kept if in the rooms;
///   when too few are, every match is scored and checked (slow path).
fn run_query(
    reader: &IndexReader,
    fields: &Fields,
    q: &SearchQuery,
) -> tantivy::Result<SearchResults> {
    let terms = schema::terms(&q.text, QUERY_TERMS_MAX);
    if terms.is_empty() || q.rooms.is_empty() {
        return Ok(SearchResults::default());
    }
    let words: Vec<Term> = terms
        .iter()
        .map(|t| Term::from_field_text(fields.body, t))
        .collect();
    let text = |extra: Option<Box<dyn Query>>| -> BooleanQuery {
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = words
            .iter()
            .map(|t| {
                let q: Box<dyn Query> =
                    Box::new(TermQuery::new(t.clone(), IndexRecordOption::WithFreqs));
                (Occur::Must, q)
            })
            .collect();
        clauses.extend(extra.map(|e| (Occur::Must, e)));
        BooleanQuery::new(clauses)
    };
    let searcher = reader.searcher();
    let page = TopDocs::with_limit(q.limit + 1).and_offset(q.offset);
    let rooms: FxHashSet<u64> = q.rooms.iter().copied().collect();
    let top: Vec<(f32, tantivy::DocAddress)> = if let [room] = q.rooms[..] {
        let term = Term::from_field_u64(fields.room, room);
        let room = TermQuery::new(term, IndexRecordOption::Basic);
        searcher.search(&text(Some(unscored(room))), &page.order_by_score())?
    } else {
        let distinct: Vec<u64> = rooms.iter().copied().collect();
        let room_docs = room_docs(&searcher, fields, &distinct)?;
        let mut text_docs = u64::MAX;
        for w in &words {
            text_docs = text_docs.min(searcher.doc_freq(w)?);
        }
        if room_docs.saturating_mul(ROOMS_SPARSE_RATIO) <= text_docs {
            let set = rooms.iter().map(|&r| Term::from_field_u64(fields.room, r));
            let set = unscored(TermSetQuery::new(set));
            searcher.search(&text(Some(set)), &page.order_by_score())?
        } else {
            let share = (searcher.num_docs() / room_docs.max(1)).max(1);
            let want = (q.offset + q.limit + 1) as u64;
            let n = want.saturating_mul(2 * share).min(OVERFETCH_MAX) as usize;
            let best = searcher.search(&text(None), &TopDocs::with_limit(n).order_by_score())?;
            let complete = best.len() < n; // every match was read
            let mut kept = Vec::with_capacity(want as usize);
            let mut room_of = Values::new(&searcher, "room");
            for (score, address) in best {
                if rooms.contains(&room_of.get(address)?) {
                    kept.push((score, address));
                }
            }
            if complete || kept.len() as u64 >= want {
                kept.into_iter().skip(q.offset).collect()
            } else {
                let filter = rooms_filter(rooms.clone());
                searcher.search(&text(Some(filter)), &page.order_by_score())?
            }
        }
    };
    // No next page past the depth a query may reach.
    let more = top.len() > q.limit && q.offset + q.limit < SEARCH_DEPTH_MAX;
    let mut hits = Vec::with_capacity(top.len().min(q.limit));
    let (mut room_of, mut seq_of) = (
        Values::new(&searcher, "room"),
        Values::new(&searcher, "seq"),
    );
    for (score, address) in top.into_iter().take(q.limit) {
        hits.push(SearchHit {
            room: room_of.get(address)?,
            seq: seq_of.get(address)?,
            score,
        });
    }
    Ok(SearchResults { hits, more })
}

/// Rooms whose documents are counted at most to tell how many the
/// rooms of a query hold (each count is a term lookup per segment): past
/// it, an even sample is counted and scaled.
const ROOMS_COUNTED_MAX: usize = 256;

/// About how many documents `rooms` hold.
fn room_docs(searcher: &tantivy::Searcher, fields: &Fields, rooms: &[u64]) -> tantivy::Result<u64> {
    let step = rooms.len().div_ceil(ROOMS_COUNTED_MAX).max(1);
    let mut counted = 0u64;
    let mut docs = 0u64;
    for &r in rooms.iter().step_by(step) {
        docs += searcher.doc_freq(&Term::from_field_u64(fields.room, r))?;
        counted += 1;
    }
    Ok(docs.saturating_mul(rooms.len() as u64) / counted.max(1))
}

/// A fast field read document by document, its column opened once per
/// segment.
struct Values<'a> {
    searcher: &'a tantivy::Searcher,
    name: &'static str,
    columns: Vec<Option<tantivy::columnar::Column<u64>>>,
}

impl<'a> Values<'a> {
    fn new(searcher: &'a tantivy::Searcher, name: &'static str) -> Values<'a> {
        let columns = vec![None; searcher.segment_readers().len()];
        Values {
            searcher,
            name,
            columns,
        }
    }

    fn get(&mut self, address: tantivy::DocAddress) -> tantivy::Result<u64> {
        let ord = address.segment_ord as usize;
        if self.columns[ord].is_none() {
            let segment = self.searcher.segment_reader(address.segment_ord);
            self.columns[ord] = Some(segment.fast_fields().u64(self.name)?);
        }
        let column = self.columns[ord].as_ref().expect("opened above");
        Ok(column.first(address.doc_id).unwrap_or(0))
    }
}

/// Matches the documents of `rooms`, adding nothing to the score: the
/// room of each document the words match, checked against the set.
/// `q` as a clause that selects documents and adds nothing to their
/// score. Every way of choosing rooms then scores a match the same (its
/// words' BM25): pages taken by different plans, or a cluster's nodes'
/// parts, merge in one order.
fn unscored(q: impl Query) -> Box<dyn Query> {
    Box::new(ConstScoreQuery::new(Box::new(q), 0.0))
}

fn rooms_filter(rooms: FxHashSet<u64>) -> Box<dyn Query> {
    let set = Arc::new(rooms);
    let predicate = FunctionPredicate::from(move |segment: &tantivy::SegmentReader| {
        let column = segment.fast_fields().u64("room")?.first_or_default_col(0);
        let set = set.clone();
        Ok(move |doc: DocId| set.contains(&column.get_val(doc)))
    });
    let q: DocPredicateQuery = predicate.into();
    unscored(q)
}
