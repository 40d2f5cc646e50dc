//! `export`: the whole data directory as JSON lines (see [`crate::format`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rookery_storage::Meta;

use crate::data::{self, RoomRetention};
use crate::format::{Line, RetentionLimits, VERSION};
use crate::Outcome;

/// How many lines of each kind were written.
#[derive(Debug, Default)]
struct Counts {
    /// Users.
    users: u64,
    /// Rooms.
    rooms: u64,
    /// Memberships.
    members: u64,
    /// Bans.
    bans: u64,
    /// Pending invitations.
    invites: u64,
    /// Read receipts.
    receipts: u64,
    /// Log records.
    records: u64,
}

/// Exports `data` to `out` (stdout when `None`).
pub fn export(data: &Path, out: Option<&Path>) -> Result<Outcome> {
    let manifest = data::manifest(data)?;
    let meta = data::open_meta(data)?;
    let rows = data::retention(data, manifest.shards, &meta)?;
    let Some(path) = out else {
        let mut w = BufWriter::new(std::io::stdout().lock());
        let (_, damaged) = write_export(data, manifest.shards, &meta, &rows, &mut w)?;
        w.flush().context("writing output")?;
        return Ok(Outcome::from_damage(damaged));
    };
    let tmp = temp_path(path);
    let written = write_file(data, manifest.shards, &meta, &rows, &tmp);
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let (counts, damaged) = written?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    println!(
        "exported {} users, {} rooms, {} members, {} receipts, {} bans, {} invitations, {} records from {} shards to {}",
        counts.users,
        counts.rooms,
        counts.members,
        counts.receipts,
        counts.bans,
        counts.invites,
        counts.records,
        manifest.shards,
        path.display()
    );
    Ok(Outcome::from_damage(damaged))
}

/// Writes the export to `tmp` and syncs it.
fn write_file(
    data: &Path,
    shards: u32,
    meta: &Meta,
    rows: &HashMap<u64, RoomRetention>,
    tmp: &Path,
) -> Result<(Counts, bool)> {
    let file = File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = BufWriter::new(file);
    let written = write_export(data, shards, meta, rows, &mut w)?;
    let file = w
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    Ok(written)
}

/// `FILE.tmp` next to `FILE`.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes every line; returns the counts and whether a log was damaged.
fn write_export(
    data: &Path,
    shards: u32,
    meta: &Meta,
    rows: &HashMap<u64, RoomRetention>,
    w: &mut impl Write,
) -> Result<(Counts, bool)> {
    let mut counts = Counts::default();
    data::write_json_line(
        w,
        &Line::Header {
            version: VERSION,
            shards,
        },
    )?;
    write_meta(meta, rows, w, &mut counts)?;
    let mut damaged = false;
    for shard in 0..shards {
        damaged |= write_records(data, shard, rows, w, &mut counts)?;
    }
    Ok((counts, damaged))
}

/// Writes users, their profiles, rooms (with retention limits), direct-message pairs,
/// members, bans, invitations and receipts.
fn write_meta(
    meta: &Meta,
    rows: &HashMap<u64, RoomRetention>,
    w: &mut impl Write,
    counts: &mut Counts,
) -> Result<()> {
    for user in meta.users().context("reading users")? {
        data::write_json_line(w, &Line::user(user))?;
        counts.users += 1;
    }
    for p in meta.profiles().context("reading profiles")? {
        let line = Line::Profile {
            user: p.user,
            display_name: p.display_name,
            status: p.status,
            updated_ms: p.updated_ms,
        };
        data::write_json_line(w, &line)?;
    }
    let rooms = meta.rooms().context("reading rooms")?;
    let ids: Vec<u64> = rooms.iter().map(|r| r.id).collect();
    for room in rooms {
        let retention = rows
            .get(&room.id)
            .and_then(|r| RetentionLimits::from_row(r.keep_messages, r.keep_age_ms));
        data::write_json_line(w, &Line::room(room, retention))?;
        counts.rooms += 1;
    }
    for (room, (a, b)) in meta.dm_pairs().context("reading direct messages")? {
        data::write_json_line(
            w,
            &Line::Dm {
                room,
                users: [a, b],
            },
        )?;
    }
    for &room in &ids {
        for (user, role) in meta
            .members(room)
            .with_context(|| format!("reading members of room {room}"))?
        {
            data::write_json_line(
                w,
                &Line::Member {
                    room,
                    user,
                    role: role.into(),
                },
            )?;
            counts.members += 1;
        }
    }
    write_standing(meta, &ids, w, counts)?;
    for (room, user, seq) in meta.receipts().context("reading receipts")? {
        data::write_json_line(w, &Line::Receipt { room, user, seq })?;
        counts.receipts += 1;
    }
    Ok(())
}

/// Writes every room's bans and every user's pending invitations.
fn write_standing(
    meta: &Meta,
    rooms: &[u64],
    w: &mut impl Write,
    counts: &mut Counts,
) -> Result<()> {
    for &room in rooms {
        let mut after = 0;
        loop {
            let page = meta
                .bans_page(room, after, 1000)
                .with_context(|| format!("reading bans of room {room}"))?;
            for b in &page.items {
                let line = Line::Ban {
                    room,
                    user: b.user,
                    by: b.by,
                    ts_ms: b.ts_ms,
                };
                data::write_json_line(w, &line)?;
                counts.bans += 1;
            }
            match page.next {
                Some(next) => after = next,
                None => break,
            }
        }
    }
    for user in meta.users().context("reading users")? {
        for inv in meta
            .invites_of(user.id)
            .with_context(|| format!("reading invitations of user {}", user.id))?
        {
            let line = Line::Invite {
                room: inv.room,
                user: user.id,
                by: inv.by,
                ts_ms: inv.ts_ms,
            };
            data::write_json_line(w, &line)?;
            counts.invites += 1;
        }
    }
    Ok(())
}

/// Writes a shard's live records in log order; returns whether its log is
/// damaged. Records of messages retired by retention are skipped.
fn write_records(
    data: &Path,
    shard: u32,
    rows: &HashMap<u64, RoomRetention>,
    w: &mut impl Write,
    counts: &mut Counts,
) -> Result<bool> {
    let mut result = Ok(());
    let scans = data::scan_shard(data, shard, |_, rec| {
        if result.is_err() || rec.seq() < data::low_seq(rows, rec.room()) {
            return;
        }
        result = data::write_json_line(w, &Line::record(rec.to_owned_record()));
        counts.records += 1;
    })?;
    result?;
    Ok(data::warn_damage(shard, &scans))
}
