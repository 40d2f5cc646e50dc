//! SQLite baseline for `rookery-bench storage`: a durable chat message log
//! built the way a careful engineer would build it on SQLite, so that the
//! figures for Rookery's own storage are compared against the best SQLite can
//! do for the same job, not a strawman.
//!
//! # Guarantee
//!
//! Same as Rookery's default `sync` durability: [`SqliteStore::append`]
//! returns only after the transaction holding its row has committed with
//! `synchronous=FULL`, i.e. after the WAL has been fsynced. A crash after the
//! return cannot lose the row. Seqs are per room, dense and start at 1; a
//! repeated `(room, sender, client_id)` gets the seq of the original row and
//! adds nothing (the idempotency Rookery's index provides).
//!
//! # Settings, and why they are the best practice
//!
//! - `journal_mode=WAL`: one append-only write to the WAL per commit instead
//!   of rollback journal + database writes, and readers never block the
//!   writer (nor the writer the readers), so `history` runs alongside appends.
//! - `synchronous=FULL`: the WAL is synced at every commit. `NORMAL` would be
//!   faster but may lose the last commits on power loss, which would break the
//!   guarantee above; `FULL` is the setting that matches Rookery's.
//! - One writer thread owns the only write connection and does **group
//!   commit**: it drains every queued append (up to [`MAX_BATCH`]) into ONE
//!   `BEGIN IMMEDIATE` transaction, so one fsync covers the whole batch, then
//!   replies to every caller. Many SQLite connections writing concurrently
//!   would instead serialise on the database lock with one fsync per row and
//!   `SQLITE_BUSY` retries.
//! - Per-room next seqs live in memory (loaded at open with one `GROUP BY`),
//!   statements are prepared once and cached, idempotency is a unique index
//!   probed by the insert itself (`ON CONFLICT ... DO NOTHING`; the existing
//!   seq is looked up only for an actual repeat), and the table is
//!   `WITHOUT ROWID` clustered on `(room, seq)`, so a history page is one
//!   contiguous range scan.
//! - A reasonable page cache (`cache_size`), `temp_store=MEMORY`, a busy
//!   timeout, and a small pool of read-only connections for reads.
//! - No `mmap_size`: reads go through `pread` (SQLite's default), which also
//!   keeps the cold-read measurement honest, since `posix_fadvise` cannot
//!   evict pages a process has mapped (see [`drop_os_cache`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

/// File name of the database inside the directory given to [`SqliteStore::open`].
pub const DB_FILE: &str = "messages.sqlite";

/// Most appends the writer puts in one transaction (one fsync).
pub const MAX_BATCH: usize = 4096;

/// Number of read-only connections serving `history` and `count`.
const READERS: usize = 4;
/// Page cache of the write connection, in KiB (64 MiB).
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// Page cache of each read connection, in KiB (16 MiB).
const READER_CACHE_KIB: i64 = 16 * 1024;
/// How long a connection waits on a lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS messages(
        room      INTEGER NOT NULL,
        seq       INTEGER NOT NULL,
        sender    INTEGER NOT NULL,
        client_id TEXT    NOT NULL,
        ts        INTEGER NOT NULL,
        body      TEXT    NOT NULL,
        PRIMARY KEY (room, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency
        ON messages(room, sender, client_id);";

const INSERT: &str = "
    INSERT INTO messages(room, seq, sender, client_id, ts, body)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)
    ON CONFLICT(room, sender, client_id) DO NOTHING";

const LOOKUP: &str = "SELECT seq FROM messages WHERE room = ?1 AND sender = ?2 AND client_id = ?3";

const LAST_SEQS: &str = "SELECT room, MAX(seq) FROM messages GROUP BY room";

const HISTORY: &str = "
    SELECT seq, sender, ts, client_id, body FROM messages
    WHERE room = ?1 AND seq < ?2
    ORDER BY seq DESC
    LIMIT ?3";

const COUNT: &str = "SELECT COUNT(*) FROM messages";

/// One stored message, as returned by [`SqliteStore::history`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Per-room sequence number (dense, from 1).
    pub seq: u64,
    /// User id of the sender.
    pub sender: u64,
    /// Timestamp given at append.
    pub ts: u64,
    /// The sender's idempotency key.
    pub client_id: String,
    /// Message body, copied out of SQLite.
    pub body: String,
}

/// Outcome sent back to one appender (errors as text: one failure is shared
/// by the whole batch).
type Reply = std::result::Result<u64, String>;

/// One append waiting for the writer thread.
struct Job {
    room: u64,
    sender: u64,
    client_id: String,
    ts: u64,
    body: String,
    reply: flume::Sender<Reply>,
}

/// The SQLite baseline store: a group-committing writer thread plus a pool of
/// read connections over `dir/messages.sqlite`. `Send + Sync`: share it with
/// `Arc` and call [`append`](Self::append) from as many threads as you like.
pub struct SqliteStore {
    jobs: Option<flume::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    commits: Arc<AtomicU64>,
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/messages.sqlite`, applies the settings
    /// described in the module docs, loads each room's last seq and starts
    /// the writer thread.
    pub fn open(dir: &Path) -> Result<SqliteStore> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(DB_FILE);
        let conn = open_writer(&path)?;
        let last_seqs = load_last_seqs(&conn)?;
        let readers = (0..READERS)
            .map(|_| open_reader(&path).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        let (jobs, queue) = flume::unbounded();
        let commits = Arc::new(AtomicU64::new(0));
        let writer_commits = Arc::clone(&commits);
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, last_seqs, queue, &writer_commits))
            .context("spawning the sqlite writer thread")?;
        Ok(SqliteStore {
            jobs: Some(jobs),
            writer: Some(writer),
            readers,
            next_reader: AtomicUsize::new(0),
            commits,
        })
    }

    /// Appends a message and returns its seq once the row is durable (its
    /// batch's transaction committed and the WAL fsynced). A repeated
    /// `(room, sender, client_id)` returns the original row's seq and stores
    /// nothing. Blocks the calling thread until then.
    pub fn append(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        ts: u64,
        body: &str,
    ) -> Result<u64> {
        let (reply, answer) = flume::bounded(1);
        let job = Job {
            room,
            sender,
            client_id: client_id.to_owned(),
            ts,
            body: body.to_owned(),
            reply,
        };
        let jobs = self.jobs.as_ref().context("sqlite store is closed")?;
        jobs.send(job)
            .map_err(|_| anyhow!("sqlite writer thread has stopped"))?;
        let outcome = answer
            .recv()
            .map_err(|_| anyhow!("sqlite writer thread dropped the append"))?;
        outcome.map_err(|e| anyhow!(e))
    }

    /// Newest-first page of up to `limit` messages of `room` with
    /// `seq < before` (the newest ones if `before` is `None`). Bodies are
    /// copied out. Runs on a read connection: it does not wait for the writer.
    pub fn history(&self, room: u64, before: Option<u64>, limit: usize) -> Result<Vec<Row>> {
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(HISTORY)?;
        let rows = stmt.query_map(params![to_sql(room), before, limit], read_row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .context("reading history")
    }

    /// Number of stored messages (all rooms).
    pub fn count(&self) -> Result<u64> {
        let conn = self.reader();
        let n: i64 = conn.prepare_cached(COUNT)?.query_row([], |r| r.get(0))?;
        Ok(from_sql(n))
    }

    /// Number of transactions the writer has committed so far (one fsync
    /// each): appends / commits is the mean group-commit batch size.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Stops the writer thread after it has committed and answered every
    /// append already queued, then closes all connections. Dropping the store
    /// does the same but cannot report a writer panic.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    /// Closes the job channel and joins the writer; idempotent.
    fn shutdown(&mut self) -> Result<()> {
        drop(self.jobs.take());
        match self.writer.take() {
            Some(writer) => writer
                .join()
                .map_err(|_| anyhow!("sqlite writer thread panicked")),
            None => Ok(()),
        }
    }

    /// A read connection: the first free one, else wait for one in turn.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.readers.len() {
            let slot = &self.readers[(start + i) % self.readers.len()];
            if let Ok(conn) = slot.try_lock() {
                return conn;
            }
        }
        self.readers[start % self.readers.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // A writer panic has nowhere to go from drop; `close` reports it.
        let _ = self.shutdown();
    }
}

/// Drops the OS page cache of every file in `dir` (`fdatasync`, then
/// `posix_fadvise(POSIX_FADV_DONTNEED)`), so that "cold" reads can be
/// measured without root. Pages mapped by a process (SQLite's `-shm` index)
/// stay. A no-op on systems other than Linux.
pub fn drop_os_cache(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            advise_dontneed(&entry.path())?;
        }
    }
    Ok(())
}

/// Syncs one file (dirty pages cannot be dropped) and drops its cached pages.
#[cfg(target_os = "linux")]
fn advise_dontneed(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        // Removed since listed (e.g. the WAL at close): nothing to drop.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    file.sync_data()
        .with_context(|| format!("syncing {}", path.display()))?;
    // SAFETY: `file` owns a valid open descriptor for the whole call.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc))
            .with_context(|| format!("posix_fadvise on {}", path.display()));
    }
    Ok(())
}

/// Not Linux: no portable way to drop a file's cache; do nothing.
#[cfg(not(target_os = "linux"))]
fn advise_dontneed(_path: &Path) -> Result<()> {
    Ok(())
}

/// Opens the write connection: WAL, synchronous=FULL, cache, schema.
fn open_writer(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    anyhow::ensure!(
        mode.eq_ignore_ascii_case("wal"),
        "journal_mode is {mode}, not WAL"
    );
    conn.pragma_update(None, "synchronous", "FULL")?;
    let sync: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
    anyhow::ensure!(sync == 2, "synchronous is {sync}, not FULL (2)");
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.execute_batch(SCHEMA).context("creating the schema")?;
    conn.set_prepared_statement_cache_capacity(16);
    Ok(conn)
}

/// Opens one read-only connection (WAL readers see committed data only).
fn open_reader(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("opening {} for reading", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
    conn.set_prepared_statement_cache_capacity(16);
    Ok(conn)
}

/// Last seq of every room present in the table.
fn load_last_seqs(conn: &Connection) -> Result<HashMap<u64, u64>> {
    let mut stmt = conn.prepare(LAST_SEQS)?;
    let rows = stmt.query_map([], |r| Ok((from_sql(r.get(0)?), from_sql(r.get(1)?))))?;
    rows.collect::<rusqlite::Result<_>>()
        .context("loading last seqs")
}

/// The writer thread: one transaction per batch of queued appends, until
/// every sender is gone (the store closed) and the queue is empty.
fn writer_loop(
    mut conn: Connection,
    mut last_seqs: HashMap<u64, u64>,
    queue: flume::Receiver<Job>,
    commits: &AtomicU64,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = queue.recv() {
        batch.push(first);
        batch.extend(queue.try_iter().take(MAX_BATCH - 1));
        let outcome = commit_batch(&mut conn, &mut last_seqs, &batch);
        if outcome.is_ok() {
            commits.fetch_add(1, Ordering::Relaxed);
        }
        reply_all(&mut batch, outcome);
    }
}

/// Writes `batch` in one transaction and commits it. The in-memory last seqs
/// move only if the commit succeeded (a failed batch is rolled back whole).
fn commit_batch(
    conn: &mut Connection,
    last_seqs: &mut HashMap<u64, u64>,
    batch: &[Job],
) -> rusqlite::Result<Vec<u64>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut taken = HashMap::new();
    let seqs = insert_batch(&tx, last_seqs, &mut taken, batch)?;
    tx.commit()?;
    last_seqs.extend(taken);
    Ok(seqs)
}

/// Inserts each job with the next seq of its room (`taken` holds the seqs
/// used so far in this batch); a repeat gets the existing row's seq.
fn insert_batch(
    conn: &Connection,
    last_seqs: &HashMap<u64, u64>,
    taken: &mut HashMap<u64, u64>,
    batch: &[Job],
) -> rusqlite::Result<Vec<u64>> {
    let mut insert = conn.prepare_cached(INSERT)?;
    let mut lookup = conn.prepare_cached(LOOKUP)?;
    let mut seqs = Vec::with_capacity(batch.len());
    for job in batch {
        let last = taken.get(&job.room).or_else(|| last_seqs.get(&job.room));
        let seq = last.map_or(1, |s| s + 1);
        let (room, sender) = (to_sql(job.room), to_sql(job.sender));
        let values = params![
            room,
            to_sql(seq),
            sender,
            job.client_id,
            to_sql(job.ts),
            job.body
        ];
        if insert.execute(values)? == 1 {
            taken.insert(job.room, seq);
            seqs.push(seq);
        } else {
            let key = params![room, sender, job.client_id];
            seqs.push(lookup.query_row(key, |r| r.get(0).map(from_sql))?);
        }
    }
    Ok(seqs)
}

/// Answers every job of the batch (and empties it). A caller that gave up
/// waiting is simply skipped.
fn reply_all(batch: &mut Vec<Job>, outcome: rusqlite::Result<Vec<u64>>) {
    match outcome {
        Ok(seqs) => {
            for (job, seq) in batch.drain(..).zip(seqs) {
                let _ = job.reply.send(Ok(seq));
            }
        }
        Err(e) => {
            let msg = format!("sqlite batch of {} appends failed: {e}", batch.len());
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(msg.clone()));
            }
        }
    }
}

/// Maps one `HISTORY` result row.
fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        seq: from_sql(r.get(0)?),
        sender: from_sql(r.get(1)?),
        ts: from_sql(r.get(2)?),
        client_id: r.get(3)?,
        body: r.get(4)?,
    })
}

/// u64 ids are stored bit for bit in SQLite's signed 64-bit integers.
fn to_sql(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// Inverse of [`to_sql`].
fn from_sql(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory removed on drop (no `tempfile` dependency, so the
    /// tests build in any crate that has this module's dependencies).
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("rookery-sqlite-store-{}-{n}", std::process::id());
            let dir = std::env::temp_dir().join(name);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn store_is_send_and_sync() {
        assert_send_sync::<SqliteStore>();
    }

    #[test]
    fn concurrent_appends_get_distinct_dense_seqs() {
        let dir = Scratch::new();
        let store = Arc::new(SqliteStore::open(&dir.0).unwrap());
        let (threads, per_thread, rooms) = (16u64, 50u64, 3u64);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let room = (t + i) % rooms + 1;
                            let seq = store.append(room, t, &format!("c{i}"), i, "hi").unwrap();
                            (room, seq)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut by_room: HashMap<u64, Vec<u64>> = HashMap::new();
        for h in handles {
            for (room, seq) in h.join().unwrap() {
                by_room.entry(room).or_default().push(seq);
            }
        }
        let mut total = 0;
        for (room, mut seqs) in by_room {
            seqs.sort_unstable();
            let n = seqs.len() as u64;
            assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "room {room}");
            assert_eq!(store.history(room, None, 10_000).unwrap().len() as u64, n);
            total += n;
        }
        assert_eq!(total, threads * per_thread);
        assert_eq!(store.count().unwrap(), total);
        assert!(store.commits() >= 1 && store.commits() <= total);
    }

    #[test]
    fn repeated_client_id_returns_original_seq() {
        let dir = Scratch::new();
        let store = SqliteStore::open(&dir.0).unwrap();
        let first = store.append(1, 7, "abc", 100, "hello").unwrap();
        assert_eq!(store.append(1, 7, "other", 101, "x").unwrap(), 2);
        assert_eq!(store.append(1, 7, "abc", 999, "changed").unwrap(), first);
        assert_eq!(store.count().unwrap(), 2);
        let newest = store.history(1, None, 10).unwrap();
        assert_eq!(newest.last().unwrap().body, "hello");
        // The key is (room, sender, client_id): other senders and rooms are new rows.
        assert_eq!(store.append(1, 8, "abc", 102, "y").unwrap(), 3);
        assert_eq!(store.append(2, 7, "abc", 103, "z").unwrap(), 1);
        assert_eq!(store.count().unwrap(), 4);
        // The next new message takes the next seq: the repeat used none.
        assert_eq!(store.append(1, 7, "new", 104, "w").unwrap(), 4);
    }

    #[test]
    fn concurrent_repeats_in_one_batch_store_one_row() {
        let dir = Scratch::new();
        let store = Arc::new(SqliteStore::open(&dir.0).unwrap());
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || store.append(5, 1, "same", 1, "b").unwrap())
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 1);
        }
        assert_eq!(store.count().unwrap(), 1);
    }

    #[test]
    fn history_pages_newest_first() {
        let dir = Scratch::new();
        let store = SqliteStore::open(&dir.0).unwrap();
        for i in 1..=10u64 {
            store
                .append(1, i * 10, &format!("c{i}"), 1000 + i, &format!("body {i}"))
                .unwrap();
        }
        store.append(2, 1, "c", 1, "other room").unwrap();
        let seqs = |rows: Vec<Row>| rows.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(store.history(1, None, 3).unwrap()), [10, 9, 8]);
        assert_eq!(seqs(store.history(1, Some(8), 3).unwrap()), [7, 6, 5]);
        assert_eq!(seqs(store.history(1, Some(3), 10).unwrap()), [2, 1]);
        assert!(store.history(1, Some(1), 10).unwrap().is_empty());
        assert!(store.history(1, Some(0), 10).unwrap().is_empty());
        assert!(store.history(1, None, 0).unwrap().is_empty());
        assert!(store.history(3, None, 10).unwrap().is_empty());
        assert_eq!(store.history(1, Some(u64::MAX), 100).unwrap().len(), 10);
        let row = &store.history(1, Some(5), 1).unwrap()[0];
        let want = Row {
            seq: 4,
            sender: 40,
            ts: 1004,
            client_id: "c4".into(),
            body: "body 4".into(),
        };
        assert_eq!(*row, want);
    }

    #[test]
    fn data_survives_reopen_and_seqs_continue() {
        let dir = Scratch::new();
        let store = SqliteStore::open(&dir.0).unwrap();
        for i in 0..5 {
            store.append(1, 1, &format!("a{i}"), i, "r1").unwrap();
        }
        store.append(2, 1, "b0", 0, "r2").unwrap();
        store.append(2, 1, "b1", 1, "r2").unwrap();
        store.close().unwrap();

        let store = SqliteStore::open(&dir.0).unwrap();
        assert_eq!(store.count().unwrap(), 7);
        assert_eq!(store.history(1, None, 1).unwrap()[0].seq, 5);
        assert_eq!(store.append(1, 1, "a5", 5, "r1").unwrap(), 6);
        assert_eq!(store.append(2, 1, "b2", 2, "r2").unwrap(), 3);
        assert_eq!(store.append(3, 1, "c0", 0, "r3").unwrap(), 1);
        // Idempotency holds across the reopen too.
        assert_eq!(store.append(1, 1, "a2", 2, "again").unwrap(), 3);
        assert_eq!(store.count().unwrap(), 10);
        drop(store); // Drop stops the writer as close does.

        let store = SqliteStore::open(&dir.0).unwrap();
        assert_eq!(store.count().unwrap(), 10);
    }

    #[test]
    fn cold_reads_after_dropping_caches() {
        let dir = Scratch::new();
        let store = SqliteStore::open(&dir.0).unwrap();
        let body = "x".repeat(200);
        for i in 0..100 {
            store.append(1, 1, &format!("c{i}"), i, &body).unwrap();
        }

        drop_os_cache(&dir.0).unwrap();
        let rows = store.history(1, None, 50).unwrap();
        assert_eq!(rows.len(), 50);
        assert!(rows.iter().all(|r| r.body == body));
    }

    #[test]
    fn append_after_writer_gone_is_an_error() {
        let dir = Scratch::new();
        let mut store = SqliteStore::open(&dir.0).unwrap();
        store.shutdown().unwrap();
        assert!(store.append(1, 1, "c", 1, "b").is_err());
        assert_eq!(store.count().unwrap(), 0);
    }
}
