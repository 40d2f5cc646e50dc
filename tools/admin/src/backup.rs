//! `backup` (asks a running server for an online backup and waits for
//! it), `restore` (a backup into a new data directory, indexes rebuilt),
//! and the checks `verify` runs on a backup.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rookery_storage::backup::{check_backup, restore as restore_files, MANIFEST_FILE};
use serde_json::{json, Value};

use crate::Outcome;

/// Time between two looks at a running backup.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Time between two progress lines.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// Per request to the server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `dir` is a backup (it has a backup manifest).
pub fn is_backup(dir: &Path) -> bool {
    dir.join(MANIFEST_FILE).is_file()
}

/// Asks the server at `url` for a backup named `name` (default: the time)
/// with API key `key` (scope `backup`), then follows it to its end.
pub fn backup(url: &str, key: &str, name: Option<&str>) -> Result<Outcome> {
    let base = url.trim_end_matches('/');
    let agent = agent();
    let body = match name {
        Some(n) => json!({ "name": n }),
        None => json!({}),
    };
    let started: Value = call(
        agent
            .post(format!("{base}/api/backend/backup"))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .send(body.to_string()),
        "starting the backup",
    )?;
    let name = started["name"]
        .as_str()
        .ok_or_else(|| anyhow!("the server's answer has no name: {started}"))?
        .to_string();
    eprintln!("backup {name}: started, into {}", started["path"]);
    let mut last_report = Instant::now();
    loop {
        std::thread::sleep(POLL_INTERVAL);
        let state: Value = call(
            agent
                .get(format!("{base}/api/backend/backup/{name}"))
                .header("authorization", format!("Bearer {key}"))
                .call(),
            "following the backup",
        )?;
        match state["state"].as_str() {
            Some("running") => {
                if last_report.elapsed() >= PROGRESS_INTERVAL {
                    eprintln!(
                        "backup {name}: {} of {} bytes of log copied",
                        state["bytes_done"], state["bytes_total"]
                    );
                    last_report = Instant::now();
                }
            }
            Some("done") => {
                println!(
                    "backup {name}: done in {:.1} s: {} records, {} users, {} rooms, {} files, {} bytes, at {}",
                    state["took_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
                    state["records"],
                    state["users"],
                    state["rooms"],
                    state["files"],
                    state["bytes"],
                    state["path"]
                );
                return Ok(Outcome::Clean);
            }
            Some("failed") => bail!("backup {name} failed: {}", state["error"]),
            _ => bail!("unexpected answer from the server: {state}"),
        }
    }
}

/// An HTTP agent that answers every status (errors carry the server's
/// message) and waits at most `REQUEST_TIMEOUT` per request.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into()
}

/// The JSON of a 2xx answer; otherwise an error with the server's message.
fn call(
    answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    doing: &str,
) -> Result<Value> {
    let mut resp = answer.with_context(|| doing.to_string())?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("{doing}: reading the answer ({status})"))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{doing}: the answer ({status}) is not JSON"))?;
    if !(200..300).contains(&status) {
        bail!(
            "{doing}: {status} {}: {}",
            v["error"].as_str().unwrap_or("?"),
            v["message"].as_str().unwrap_or("")
        );
    }
    Ok(v)
}

/// Restores `backup` into `data` (new or empty), then opens every shard so
/// that its index is rebuilt, printing what it restored.
pub fn restore(backup: &Path, data: &Path) -> Result<Outcome> {
    let m = restore_files(backup, data)
        .with_context(|| format!("restoring {} into {}", backup.display(), data.display()))?;
    println!(
        "restored {} files ({} bytes) of {} shards into {}",
        m.files.len(),
        m.bytes(),
        m.shards,
        data.display()
    );
    crate::reindex::reindex(data)?;
    println!(
        "restore: ok, {} records, {} users, {} rooms",
        m.records, m.users, m.rooms
    );
    Ok(Outcome::Clean)
}

/// Checks a backup: every file against the manifest, then each shard's log
/// and `meta.redb` (read-only); returns the errors found.
pub fn verify(dir: &Path, out: &mut impl Write) -> Result<usize> {
    let (m, problems) = check_backup(dir).with_context(|| format!("reading {}", dir.display()))?;
    writeln!(
        out,
        "backup: format {}, {} shards, {} files, {} bytes, {} records",
        m.format,
        m.shards,
        m.files.len(),
        m.bytes(),
        m.records
    )?;
    for p in &problems {
        writeln!(out, "  error: {p}")?;
    }
    let mut errors = problems.len();
    for shard in 0..m.shards {
        errors += crate::verify::verify_one(dir, shard, out)?;
    }
    match rookery_storage::meta::count_read_only(&dir.join("meta.redb")) {
        Ok((users, rooms)) => writeln!(out, "meta: ok, {users} users, {rooms} rooms")?,
        Err(e) => {
            writeln!(out, "meta: error: {e}")?;
            errors += 1;
        }
    }
    Ok(errors)
}
