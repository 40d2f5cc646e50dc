//! Helpers shared by the engine's integration tests.

use std::path::Path;

use rookery_engine::EngineConfig;

/// An engine on `shards` shards with small files and caches, for tests.
pub fn small_config(dir: &Path, shards: u32) -> EngineConfig {
    let mut cfg = EngineConfig::new(dir);
    cfg.storage.shards = shards;
    cfg.storage.segment_bytes_max = 4 << 20;
    cfg.storage.index_cache_bytes = 4 << 20;
    cfg.storage.meta_cache_bytes = 1 << 20;
    cfg.storage.checkpoint_interval_ms = 50;
    cfg
}
