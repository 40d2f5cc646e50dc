//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;

use rookery_storage::{Cursor, Durability, Page, ShardStore, StorageConfig, Store};

/// Runs `f` on a fresh glommio executor and returns its output.
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move { f().await })
        .expect("executor starts")
        .join()
        .expect("executor finishes")
}

/// A small config for tests: 64 KiB segments, fast checkpoints.
pub fn config(dir: &Path) -> StorageConfig {
    let mut cfg = StorageConfig::new(dir);
    cfg.segment_bytes_max = 64 << 10;
    cfg.body_bytes_max = 8 << 10;
    cfg.checkpoint_interval_ms = 50;
    cfg.index_cache_bytes = 4 << 20;
    cfg.meta_cache_bytes = 1 << 20;
    cfg.durability = Durability::Sync;
    cfg
}

pub fn open(cfg: &StorageConfig) -> Store {
    Store::open(cfg.clone()).expect("store opens")
}

/// All of `room`'s history, oldest first, asserting its seqs are dense
/// from 1 (`ctx` names the case in the failure).
pub async fn dense_history(shard: &ShardStore, room: u64, ctx: &str) -> Page {
    let page = shard
        .history(room, Cursor::after(0, 1 << 20))
        .await
        .unwrap();
    let seqs: Vec<u64> = page.items.iter().map(|i| i.seq()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{ctx}: room {room}: seqs dense"
    );
    page
}
