//! `verify` and `salvage`.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rookery_storage::verify::{salvage_shard, verify_shard, SalvageReport, ShardReport};

use crate::data;
use crate::Outcome;

/// Verifies every shard and `meta.redb`, printing a report; `Damaged` when
/// any error was found.
pub fn verify(data: &Path) -> Result<Outcome> {
    let mut out = std::io::stdout().lock();
    if crate::backup::is_backup(data) {
        let errors = crate::backup::verify(data, &mut out)?;
        if errors == 0 {
            writeln!(out, "verify: ok (a backup)")?;
        } else {
            writeln!(out, "verify: {errors} error(s)")?;
        }
        return Ok(Outcome::from_damage(errors > 0));
    }
    let manifest = data::manifest(data)?;
    let mut errors = 0usize;
    for shard in 0..manifest.shards {
        errors += verify_one(data, shard, &mut out)?;
    }
    errors += check_meta(data, &mut out)?;
    if errors == 0 {
        writeln!(out, "verify: ok ({} shards)", manifest.shards)?;
    } else {
        writeln!(out, "verify: {errors} error(s)")?;
    }
    Ok(Outcome::from_damage(errors > 0))
}

/// Verifies one shard and prints its report; returns its error count.
pub fn verify_one(data: &Path, shard: u32, out: &mut impl Write) -> Result<usize> {
    if !data::has_shard_dir(data, shard) {
        writeln!(out, "shard {shard}: no directory (never opened)")?;
        return Ok(0);
    }
    match verify_shard(data, shard) {
        Ok(report) => print_report(&report, out),
        Err(e) => {
            writeln!(out, "shard {shard}: cannot be verified")?;
            writeln!(out, "  error: {e}")?;
            Ok(1)
        }
    }
}

/// Prints a shard report; returns its error count.
fn print_report(r: &ShardReport, out: &mut impl Write) -> Result<usize> {
    let records: u64 = r.segments.iter().map(|s| s.records).sum();
    writeln!(
        out,
        "shard {}: {} segments, {records} records, {} rooms, checkpoint {}:{}",
        r.shard,
        r.segments.len(),
        r.rooms.len(),
        r.checkpoint.segment,
        r.checkpoint.offset
    )?;
    for e in &r.errors {
        writeln!(out, "  error: {e}")?;
    }
    for n in &r.notes {
        writeln!(out, "  note: {n}")?;
    }
    Ok(r.errors.len())
}

/// Checks that `meta.redb` exists, opens and reads; returns 0 or 1 error.
fn check_meta(data: &Path, out: &mut impl Write) -> Result<usize> {
    let counts = data::open_meta(data).and_then(|meta| {
        let users = meta.users().context("reading users")?.len();
        let rooms = meta.rooms().context("reading rooms")?.len();
        Ok((users, rooms))
    });
    match counts {
        Ok((users, rooms)) => {
            writeln!(out, "meta: ok, {users} users, {rooms} rooms")?;
            Ok(0)
        }
        Err(e) => {
            writeln!(out, "meta: error: {e:#}")?;
            Ok(1)
        }
    }
}

/// Salvages shard `shard` and prints what was cut and moved.
pub fn salvage(data: &Path, shard: u32) -> Result<Outcome> {
    let manifest = data::manifest(data)?;
    if shard >= manifest.shards {
        bail!(
            "shard {shard} does not exist: the directory has {} shards",
            manifest.shards
        );
    }
    if !data::has_log(data, shard) {
        bail!("shard {shard} has no log directory; nothing to salvage");
    }
    let report = salvage_shard(data, shard).with_context(|| format!("salvaging shard {shard}"))?;
    print_salvage(shard, &report, &mut std::io::stdout().lock())?;
    Ok(Outcome::Clean)
}

/// Prints a salvage report.
fn print_salvage(shard: u32, r: &SalvageReport, out: &mut impl Write) -> Result<()> {
    let Some((segment, offset)) = r.cut else {
        writeln!(out, "shard {shard}: no damage in the log; nothing changed")?;
        return Ok(());
    };
    if offset == 0 {
        writeln!(out, "shard {shard}: segment {segment} had a bad header and was removed (a copy is in shard-{shard}/salvaged/)")?;
    } else {
        writeln!(out, "shard {shard}: cut segment {segment} at offset {offset} (the original is in shard-{shard}/salvaged/)")?;
    }
    if !r.moved.is_empty() {
        let list: Vec<String> = r.moved.iter().map(u32::to_string).collect();
        writeln!(
            out,
            "shard {shard}: moved segments {} to shard-{shard}/salvaged/",
            list.join(", ")
        )?;
    }
    writeln!(
        out,
        "shard {shard}: {} valid records after the damage are no longer in the log",
        r.records_dropped
    )?;
    writeln!(
        out,
        "shard {shard}: index removed; the next open rebuilds it from the log"
    )?;
    Ok(())
}
