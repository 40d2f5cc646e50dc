//! Online backups on request (`POST /api/backend/backup`, docs/operations.md
//! "Backup and restore"): one at a time, each on a thread of its own, into
//! a directory under `--backup-dir` named by the request.
//!
//! The request names a directory, never a path: a key that may take
//! backups may not make the server write anywhere else. A backup that did
//! not finish (the server stopped during it) leaves `NAME.partial`, which
//! is removed at the next start.
//!
//! Invariant: at most one backup runs, and none after `stop`; the last
//! `JOBS_KEPT` (running or finished) stay answerable by name.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use rookery_engine::backup::{BackupManifest, BackupOptions, Progress};
use rookery_engine::Engine;
use serde_json::{json, Value};

/// Finished backups remembered (their state answerable by name).
const JOBS_KEPT: usize = 16;

/// Longest backup name.
const NAME_BYTES_MAX: usize = 64;

/// Why a backup did not start.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No `--backup-dir`: backups are off.
    Off,
    /// The name is not one a backup may take.
    BadName(String),
    /// Another backup is running, or the name is taken, or the server is
    /// stopping.
    Busy(String),
    /// The backup's thread could not start.
    Failed(String),
}

/// One backup, running or finished.
#[derive(Debug)]
pub struct Job {
    name: String,
    path: PathBuf,
    started_ms: u64,
    started: Instant,
    progress: Progress,
    /// Set once, when it ends.
    outcome: OnceLock<(u64, Result<BackupManifest, String>)>,
}

impl Job {
    /// Its state, as the server API shows it.
    pub fn json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "path": self.path.display().to_string(),
            "started_ms": self.started_ms,
            "bytes_done": self.progress.bytes_done.load(Ordering::Relaxed),
            "bytes_total": self.progress.bytes_total.load(Ordering::Relaxed),
        });
        match self.outcome.get() {
            None => v["state"] = "running".into(),
            Some((ms, Ok(m))) => {
                v["state"] = "done".into();
                v["took_ms"] = (*ms).into();
                v["shards"] = m.shards.into();
                v["records"] = m.records.into();
                v["users"] = m.users.into();
                v["rooms"] = m.rooms.into();
                v["files"] = m.files.len().into();
                v["bytes"] = m.bytes().into();
            }
            Some((ms, Err(e))) => {
                v["state"] = "failed".into();
                v["took_ms"] = (*ms).into();
                v["error"] = e.clone().into();
            }
        }
        v
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct BackupStats {
    /// Backups that finished.
    pub done: std::sync::atomic::AtomicU64,
    /// Backups that failed.
    pub failed: std::sync::atomic::AtomicU64,
    /// When the last one finished, seconds since the Unix epoch (0: none).
    pub last_done_s: std::sync::atomic::AtomicU64,
    /// Bytes of log copied, all backups.
    pub bytes: std::sync::atomic::AtomicU64,
}

/// The server's backups.
#[derive(Debug)]
pub struct Backups {
    dir: Option<PathBuf>,
    opts: BackupOptions,
    jobs: Mutex<VecDeque<Arc<Job>>>,
    /// The running backup's thread (it holds an engine handle).
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set by [`Backups::stop`]: no backup starts after it.
    stopped: std::sync::atomic::AtomicBool,
    pub stats: BackupStats,
}

impl Backups {
    /// Backups under `dir` (`None`: off), which is created if missing and
    /// must not hold the data directory or lie in it. Removes what
    /// unfinished backups left.
    pub fn new(
        dir: Option<&Path>,
        data_dir: &Path,
        bytes_per_s_max: u64,
    ) -> Result<Backups, String> {
        let dir = match dir {
            None => None,
            Some(d) => Some(prepare(d, data_dir)?),
        };
        Ok(Backups {
            dir,
            opts: BackupOptions { bytes_per_s_max },
            jobs: Mutex::new(VecDeque::new()),
            thread: Mutex::new(None),
            stopped: Default::default(),
            stats: BackupStats::default(),
        })
    }

    /// Starts a backup named `name` (default: the time, UTC).
    pub fn start(
        self: &Arc<Self>,
        engine: Engine,
        name: Option<&str>,
    ) -> Result<Arc<Job>, Refused> {
        let dir = self.dir.as_ref().ok_or(Refused::Off)?;
        let started_ms = crate::auth::now_ms();
        let name = match name {
            Some(n) => check_name(n)?.to_string(),
            None => format!("rookery-{}", utc_stamp(started_ms / 1000)),
        };
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if self.stopped.load(Ordering::Relaxed) {
            return Err(Refused::Busy("the server is stopping".into()));
        }
        if let Some(running) = jobs.iter().find(|j| j.outcome.get().is_none()) {
            return Err(Refused::Busy(format!(
                "backup {:?} is running; one at a time",
                running.name
            )));
        }
        let path = dir.join(&name);
        if path.exists() {
            return Err(Refused::Busy(format!("backup {name:?} exists")));
        }
        let job = Arc::new(Job {
            name,
            path,
            started_ms,
            started: Instant::now(),
            progress: Progress::default(),
            outcome: OnceLock::new(),
        });
        let (me, run) = (self.clone(), job.clone());
        let thread = std::thread::Builder::new()
            .name("rookery-backup".into())
            .spawn(move || me.run(engine, &run))
            .map_err(|e| Refused::Failed(format!("cannot start the backup's thread: {e}")))?;
        if jobs.len() == JOBS_KEPT {
            jobs.pop_front();
        }
        jobs.push_back(job.clone());
        // Under the jobs' lock: `stop` finds the thread of any job it sees.
        // (The last one's thread has ended: its job has an outcome.)
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Ok(job)
    }

    /// Removes what unfinished backups left (`NAME.partial`: the server
    /// was killed during one). Called once at start, with logging set up.
    pub fn remove_unfinished(&self) {
        let Some(dir) = &self.dir else { return };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".partial") && entry.path().is_dir() {
                tracing::warn!(path = %entry.path().display(), "removing an unfinished backup");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// The backup named `name`, if it is running or among the last ones.
    pub fn job(&self, name: &str) -> Option<Arc<Job>> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.iter().rev().find(|j| j.name == name).cloned()
    }

    /// Cancels a running backup and waits for its thread to end (the
    /// server is stopping: the engine must have no other handle left).
    pub fn stop(&self) {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        self.stopped.store(true, Ordering::Relaxed);
        for job in jobs.iter().filter(|j| j.outcome.get().is_none()) {
            job.progress.cancel.store(true, Ordering::Relaxed);
        }
        drop(jobs);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    fn run(&self, engine: Engine, job: &Job) {
        tracing::info!(backup = %job.name, path = %job.path.display(), "backup started");
        // A panic is a failed backup, never a backup that runs forever
        // (which would refuse every later one).
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine
                .backup(&job.path, &self.opts, &job.progress)
                .map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|_| Err("the backup's thread panicked (see the log)".into()));
        drop(engine);
        let ms = job.started.elapsed().as_millis() as u64;
        let copied = job.progress.bytes_done.load(Ordering::Relaxed);
        self.stats.bytes.fetch_add(copied, Ordering::Relaxed);
        match &outcome {
            Ok(m) => {
                self.stats.done.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .last_done_s
                    .store(crate::auth::now_ms() / 1000, Ordering::Relaxed);
                tracing::info!(
                    backup = %job.name,
                    ms,
                    bytes = m.bytes(),
                    records = m.records,
                    "backup done"
                );
            }
            Err(_) if job.progress.cancel.load(Ordering::Relaxed) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(backup = %job.name, ms, "backup cancelled: the server is stopping");
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(backup = %job.name, ms, "backup failed: {e}");
            }
        }
        let outcome = match outcome {
            Err(_) if job.progress.cancel.load(Ordering::Relaxed) => {
                Err("cancelled: the server stopped".to_string())
            }
            other => other,
        };
        let _ = job.outcome.set((ms, outcome));
    }
}

/// Creates `dir` if needed and checks it is apart from the data
/// directory.
fn prepare(dir: &Path, data_dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("--backup-dir {}: {e}", dir.display()))?;
    let canon = dir
        .canonicalize()
        .map_err(|e| format!("--backup-dir {}: {e}", dir.display()))?;
    // The data directory may not exist yet: then its absolute path.
    let data = data_dir
        .canonicalize()
        .or_else(|_| std::path::absolute(data_dir))
        .unwrap_or_else(|_| data_dir.to_path_buf());
    if canon.starts_with(&data) || data.starts_with(&canon) {
        return Err(format!(
            "--backup-dir {} and --data-dir {} must not hold one another",
            dir.display(),
            data_dir.display()
        ));
    }
    Ok(canon)
}

/// `name` if a backup may take it: 1..=64 bytes of `[A-Za-z0-9._-]`, not
/// starting with a dot, not ending in `.partial`.
fn check_name(name: &str) -> Result<&str, Refused> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if (1..=NAME_BYTES_MAX).contains(&name.len())
        && name.bytes().all(allowed)
        && !name.starts_with('.')
        && !name.ends_with(".partial")
    {
        return Ok(name);
    }
    Err(Refused::BadName(format!(
        "a backup's name is 1..={NAME_BYTES_MAX} bytes of [A-Za-z0-9._-], not starting with '.' \
         nor ending in .partial"
    )))
}

/// `YYYYMMDD-HHMMSS` (UTC) of `secs` since the Unix epoch.
fn utc_stamp(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(1_796_563_845), "20261206-133045");
    }

    #[test]
    fn names_are_single_safe_path_components() {
        for good in ["nightly", "2026-12-04", "a.b_c-1"] {
            assert_eq!(check_name(good), Ok(good));
        }
        let long = "x".repeat(65);
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "x.partial",
            "a b",
            &long,
        ] {
            assert!(
                matches!(check_name(bad), Err(Refused::BadName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_backup_dir_must_be_apart_from_the_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let inside = data.join("backups");
        assert!(prepare(&inside, &data)
            .unwrap_err()
            .contains("must not hold"));
        assert!(prepare(tmp.path(), &data)
            .unwrap_err()
            .contains("must not hold"));
        let apart = tmp.path().join("backups");
        std::fs::create_dir_all(apart.join("old.partial/shard-0")).unwrap();
        std::fs::create_dir_all(apart.join("kept")).unwrap();
        let b = Backups::new(Some(&apart), &data, 1 << 20).unwrap();
        assert!(apart.join("old.partial").exists(), "kept until start");
        b.remove_unfinished();
        assert!(
            !apart.join("old.partial").exists(),
            "an unfinished backup is removed"
        );
        assert!(apart.join("kept").exists());
    }
}
