//! `stats`: sizes and counts per shard, in total, and from meta.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::data;
use crate::Outcome;

/// Counts of one shard's log (or of all shards).
#[derive(Serialize, Debug, Default, Clone, Copy)]
struct LogCounts {
    /// Segment files.
    segments: u64,
    /// Bytes of segment files.
    bytes: u64,
    /// Valid records.
    records: u64,
    /// Of which messages (including ones retired by retention but still in
    /// the log).
    messages: u64,
    /// Rooms with at least one record.
    rooms: u64,
}

impl LogCounts {
    /// Adds `other`'s counts to these.
    fn add(&mut self, other: &LogCounts) {
        self.segments += other.segments;
        self.bytes += other.bytes;
        self.records += other.records;
        self.messages += other.messages;
        self.rooms += other.rooms;
    }
}

/// One shard's line.
#[derive(Serialize, Debug)]
struct ShardLine {
    /// Shard number.
    shard: u32,
    /// Its counts.
    #[serde(flatten)]
    counts: LogCounts,
}

/// Counts from `meta.redb`.
#[derive(Serialize, Debug)]
struct MetaCounts {
    /// Registered users.
    users: u64,
    /// Rooms.
    rooms: u64,
}

/// Everything `stats` prints.
#[derive(Serialize, Debug)]
struct Stats {
    /// Per shard.
    shards: Vec<ShardLine>,
    /// Sum over the shards.
    total: LogCounts,
    /// From meta.redb.
    meta: MetaCounts,
}

/// Prints the statistics of `data`; `Damaged` when a log could not be read
/// to its end.
pub fn stats(data: &Path, json: bool) -> Result<Outcome> {
    let manifest = data::manifest(data)?;
    let mut shards = Vec::new();
    let mut total = LogCounts::default();
    let mut damaged = false;
    for shard in 0..manifest.shards {
        let (counts, bad) = shard_counts(data, shard)?;
        damaged |= bad;
        total.add(&counts);
        shards.push(ShardLine { shard, counts });
    }
    let meta = data::open_meta(data)?;
    let meta = MetaCounts {
        users: meta.users().context("reading users")?.len() as u64,
        rooms: meta.rooms().context("reading rooms")?.len() as u64,
    };
    let stats = Stats {
        shards,
        total,
        meta,
    };
    let mut out = std::io::stdout().lock();
    if json {
        data::write_json_line(&mut out, &stats)?;
    } else {
        print_table(&stats, &mut out)?;
    }
    Ok(Outcome::from_damage(damaged))
}

/// Counts one shard's log; the flag is set when a segment is damaged.
fn shard_counts(data: &Path, shard: u32) -> Result<(LogCounts, bool)> {
    let mut rooms = HashSet::new();
    let scans = data::scan_shard(data, shard, |_, rec| {
        rooms.insert(rec.room());
    })?;
    let counts = LogCounts {
        segments: scans.len() as u64,
        bytes: scans.iter().map(|s| s.bytes).sum(),
        records: scans.iter().map(|s| s.records).sum(),
        messages: scans.iter().map(|s| s.messages).sum(),
        rooms: rooms.len() as u64,
    };
    Ok((counts, data::warn_damage(shard, &scans)))
}

/// Prints the human table.
fn print_table(s: &Stats, out: &mut impl Write) -> Result<()> {
    writeln!(
        out,
        "{:<6} {:>9} {:>14} {:>11} {:>11} {:>8}",
        "shard", "segments", "bytes", "records", "messages", "rooms"
    )?;
    for line in &s.shards {
        print_row(&line.shard.to_string(), &line.counts, out)?;
    }
    print_row("total", &s.total, out)?;
    writeln!(out, "meta: {} users, {} rooms", s.meta.users, s.meta.rooms)?;
    Ok(())
}

/// Prints one table row.
fn print_row(label: &str, c: &LogCounts, out: &mut impl Write) -> Result<()> {
    writeln!(
        out,
        "{label:<6} {:>9} {:>14} {:>11} {:>11} {:>8}",
        c.segments, c.bytes, c.records, c.messages, c.rooms
    )?;
    Ok(())
}
