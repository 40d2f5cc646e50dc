//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;

use rookery_storage::{Durability, StorageConfig, Store};

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
