//! Read receipts, written in batches by one thread.
//!
//! A receipt is a redb write in `meta.redb`: too slow for a shard's reactor
//! (the reactor never runs a redb commit) and too costly as one durable
//! transaction per call. Owners hand receipts, already clamped against the
//! room's last seq, to this writer through a bounded queue; it takes
//! whatever has queued up (up to `receipt_batch_len_max`) and commits it in
//! one durable transaction, so batches grow with load and a lone receipt
//! waits for nothing. Each caller is answered only after the commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use rookery_storage::Meta;

use crate::error::{Error, Result};
use crate::reply::Reply;

/// One receipt on its way to `meta.redb`.
pub(crate) struct Receipt {
    pub room: u64,
    pub user: u64,
    pub seq: u64,
    /// The room's last seq on its owner when the receipt was taken.
    pub last: u64,
    pub reply: Reply<u64>,
    /// Told the stored receipt after the caller, when it moved (the owner
    /// then shows it to the room).
    pub moved: Option<flume::Sender<u64>>,
}

/// What the writer's queue carries: a receipt, or `None` to stop after
/// everything queued before it.
pub(crate) type ToWriter = Option<Receipt>;

/// The writer's counters.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    /// Receipts written (stored or refused per item).
    pub written: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
}

/// Starts the writer; it ends at a `None` or when every sender is gone.
pub(crate) fn spawn_writer(
    meta: Arc<Meta>,
    queue_len_max: usize,
    batch_len_max: usize,
    stats: Arc<WriterStats>,
) -> Result<(flume::Sender<ToWriter>, JoinHandle<()>)> {
    let (tx, rx) = flume::bounded::<ToWriter>(queue_len_max);
    let handle = std::thread::Builder::new()
        .name("rookery-receipts".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(batch_len_max);
            let mut running = true;
            while running {
                match rx.recv() {
                    Ok(Some(r)) => batch.push(r),
                    Ok(None) | Err(_) => break,
                }
                while batch.len() < batch_len_max {
                    match rx.try_recv() {
                        Ok(Some(r)) => batch.push(r),
                        Ok(None) => {
                            running = false;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                stats
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                write_batch(&meta, &mut batch);
            }
        })
        .map_err(|e| Error::Start(format!("receipt thread: {e}")))?;
    Ok((tx, handle))
}

/// Commits `batch` (emptying it) and answers every caller.
fn write_batch(meta: &Meta, batch: &mut Vec<Receipt>) {
    let items: Vec<(u64, u64, u64, u64)> = batch
        .iter()
        .map(|r| (r.room, r.user, r.seq, r.last))
        .collect();
    match meta.mark_read_many(&items) {
        Ok(outcomes) => {
            debug_assert_eq!(outcomes.len(), batch.len());
            for (r, out) in batch.drain(..).zip(outcomes) {
                let moved = matches!(out, Ok((_, true)));
                let stored = out.map(|(seq, _)| seq).map_err(Error::from);
                if let (Ok(seq), true, Some(tx)) = (&stored, moved, &r.moved) {
                    let _ = tx.send(*seq);
                }
                let _ = r.reply.send(stored);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, receipts = batch.len(), "writing read receipts failed");
            let msg = match e {
                rookery_storage::Error::Database(m) => m,
                other => other.to_string(),
            };
            for r in batch.drain(..) {
                let err = rookery_storage::Error::Database(msg.clone());
                let _ = r.reply.send(Err(Error::from(err)));
            }
        }
    }
}
