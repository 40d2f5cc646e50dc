//! `rookery-admin compact`: rewrites every shard's log at once (what the
//! server does in the background): every appended segment in room order,
//! with superseded edits dropped, and every segment holding a deleted
//! message's text, so that no file holds it any more.

use std::path::Path;

use anyhow::{Context, Result};
use rookery_storage::CompactionReport;

use crate::data;
use crate::Outcome;

/// Opens every shard of `data` and runs `compact_all` on it: afterwards no
/// file of the directory holds the text of a message deleted before.
pub fn compact(data_dir: &Path) -> Result<Outcome> {
    let (store, cfg) = data::open_store(data_dir)?;
    let shards = cfg.shards;
    let reports = data::on_executor(cfg.io_memory_bytes, move || async move {
        let mut reports = Vec::new();
        for shard in 0..shards {
            let s = store
                .open_shard(shard)
                .await
                .with_context(|| format!("opening shard {shard}"))?;
            let report = s
                .compact_all()
                .await
                .with_context(|| format!("compacting shard {shard}"));
            s.close()
                .await
                .with_context(|| format!("closing shard {shard}"))?;
            reports.push(report?);
        }
        Ok(reports)
    })?;
    let mut total = CompactionReport::default();
    for (shard, r) in reports.iter().enumerate() {
        println!(
            "shard {shard}: {} segments ({} bytes, {} records) rewritten into {} ({} bytes, {} records); {} bodies dropped",
            r.segments_in, r.bytes_in, r.records_in, r.segments_out, r.bytes_out, r.records_out, r.bodies_dropped
        );
        total.segments_in += r.segments_in;
        total.bytes_in += r.bytes_in;
        total.bytes_out += r.bytes_out;
    }
    println!(
        "compacted {} segments: {} bytes -> {} bytes",
        total.segments_in, total.bytes_in, total.bytes_out
    );
    Ok(Outcome::Clean)
}
