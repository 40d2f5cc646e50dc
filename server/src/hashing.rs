//! Password hashing and checking (argon2id, tens of milliseconds of CPU
//! each) on a pool of its own: unpinned threads, one per core by default,
//! behind a bounded queue. The shards' blocking pools (metadata reads,
//! which sends and acks wait on) never run a hash, so a password-guessing
//! flood slows logins, not the chat; past the queue bound a login or
//! registration is refused at once (503) instead of queueing without
//! limit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::app::ApiError;

type Job = Box<dyn FnOnce() + Send>;

pub struct HashPool {
    jobs: flume::Sender<Job>,
    /// Password hashes computed or checked (real or decoy).
    pub done: Arc<AtomicU64>,
}

impl HashPool {
    /// Starts `threads` workers (0: one per core) behind a queue of
    /// `queue_max` jobs.
    pub fn start(threads: usize, queue_max: usize) -> std::io::Result<Arc<HashPool>> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (jobs, rx) = flume::bounded::<Job>(queue_max);
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("rookery-hash-{i}"))
                .spawn(move || {
                    // Ends when the pool (every sender) is dropped.
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })?;
        }
        Ok(Arc::new(HashPool {
            jobs,
            done: Arc::default(),
        }))
    }

    /// Runs `f` (a hash or a check) on the pool; `Unavailable` when the
    /// queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = flume::bounded(1);
        let done = self.done.clone();
        let job: Job = Box::new(move || {
            let out = f();
            // Counted before the answer: whoever sees the answer sees it
            // counted.
            done.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(out);
        });
        self.jobs.try_send(job).map_err(|_| {
            ApiError::Unavailable("too many password checks in progress; retry shortly".into())
        })?;
        rx.recv_async()
            .await
            .map_err(|_| ApiError::Internal("a password hashing thread died".into()))
    }
}
