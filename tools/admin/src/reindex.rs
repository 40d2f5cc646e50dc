//! `rookery-admin reindex`: deletes every shard's index and rebuilds it
//! from the log (what an open does when `index.redb` is missing), timing
//! each shard.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use rookery_storage::verify::shard_dir;

use crate::data;
use crate::Outcome;

/// Removes each shard's `index.redb` and opens the shard, which replays its
/// whole log into a new index.
pub fn reindex(data_dir: &Path) -> Result<Outcome> {
    // Opening the store first fails while a server holds the directory:
    // nothing is deleted then.
    let (store, cfg) = data::open_store(data_dir)?;
    for shard in 0..cfg.shards {
        let index = shard_dir(data_dir, shard).join("index.redb");
        match std::fs::remove_file(&index) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", index.display())),
        }
    }
    let shards = cfg.shards;
    let took = data::on_executor(cfg.io_memory_bytes, move || async move {
        let mut took = Vec::new();
        for shard in 0..shards {
            let t0 = Instant::now();
            let s = store
                .open_shard(shard)
                .await
                .with_context(|| format!("rebuilding shard {shard}"))?;
            let ms = t0.elapsed().as_millis();
            let replayed = s.stats().replayed;
            s.close()
                .await
                .with_context(|| format!("closing shard {shard}"))?;
            took.push((ms, replayed));
        }
        Ok(took)
    })?;
    for (shard, (ms, records)) in took.iter().enumerate() {
        println!("shard {shard}: index rebuilt from {records} records in {ms} ms");
    }
    Ok(Outcome::Clean)
}
