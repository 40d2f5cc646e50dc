//! Uploads: what is known of each stored file (its owner, size, content
//! type, name, hash, image size, thumbnail) and each user's usage, which
//! a quota bounds. The files themselves are [`crate::uploads`]'s.
//!
//! Which messages hold an upload is kept as rows, (room, seq, upload) and
//! the same by upload, not as a count: letting go of a message's uploads
//! (its deletion, retention retiring it, its room's deletion) removes its
//! rows, so doing it twice (a delete racing retention) changes nothing.
//! A post counts its uploads `pending` before its append and turns that
//! into rows once the message is durable ([`Meta::hold_uploads`]): a crash
//! between leaves a count too many (the upload is kept), never one too
//! few (an upload freed while a message shows it).
//!
//! Invariants: a user's `upload_usage` is the sum of what the uploads they
//! own are charged ([`Upload::charged`]); an upload is added only if it keeps
//! its owner within the quota given, in the same transaction. An upload is
//! removed only when no row holds it and nothing is pending, and a row is
//! added only for a seq at or above its room's low seq (retention's rows
//! and these are written in one transaction).

use redb::{ReadableTable, WriteTransaction};

use super::*;

/// Bytes of an upload's file name, at most.
pub const UPLOAD_NAME_BYTES_MAX: usize = 255;

/// An upload as `meta.redb` keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Random, 128 bits: who knows it may read the file.
    pub id: u128,
    /// The user who uploaded it.
    pub owner: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// When it was stored, ms since the Unix epoch.
    pub created_ms: u64,
    /// Posts that counted it before their append and have not yet held
    /// it (or given it back): while above 0 it is never removed.
    pub pending: u64,
    /// The content type its bytes were sniffed as.
    pub content_type: String,
    /// The file name the uploader gave (may be empty).
    pub name: String,
    /// SHA-256 of the file (its `ETag`).
    pub sha256: [u8; 32],
    /// An image's width in pixels (0 otherwise).
    pub width: u32,
    /// An image's height in pixels (0 otherwise).
    pub height: u32,
    /// Bytes of its thumbnail (0: none).
    pub thumb_bytes: u64,
}

/// What an upload counts against its owner's quota at least (a row and
/// a file cost something even when the file is tiny).
pub const UPLOAD_CHARGE_BYTES_MIN: u64 = 4096;

impl Upload {
    /// What it counts against its owner's quota: its file (at least
    /// [`UPLOAD_CHARGE_BYTES_MIN`]) and thumbnail.
    pub fn charged(&self) -> u64 {
        self.bytes.max(UPLOAD_CHARGE_BYTES_MIN) + self.thumb_bytes
    }
}

impl Meta {
    /// Bytes `user`'s uploads take (what their quota counts).
    pub fn upload_usage(&self, user: u64) -> Result<u64> {
        self.read(|txn| usage(&txn.open_table(UPLOAD_USAGE)?, user))
    }

    /// Records `upload` (its file is in place) and charges its owner.
    ///
    /// Errors: `TooMany` when the owner's usage would pass `quota_bytes`
    /// (nothing is written); `NotFound` for an unknown owner;
    /// `InvalidInput` for a name over [`UPLOAD_NAME_BYTES_MAX`];
    /// `AlreadyExists` for an id in use.
    pub fn add_upload(&self, upload: &Upload, quota_bytes: u64) -> Result<()> {
        if upload.name.len() > UPLOAD_NAME_BYTES_MAX {
            return Err(Error::InvalidInput(format!(
                "a file name is at most {UPLOAD_NAME_BYTES_MAX} bytes"
            )));
        }
        self.write(|txn| {
            require_user(&txn.open_table(USERS)?, upload.owner)?;
            let mut uploads = txn.open_table(UPLOADS)?;
            if uploads.get(upload.id)?.is_some() {
                return Err(Error::AlreadyExists(format!("upload {:032x}", upload.id)));
            }
            let mut usage_table = txn.open_table(UPLOAD_USAGE)?;
            let used = usage(&usage_table, upload.owner)?;
            let after = used.saturating_add(upload.charged());
            if after > quota_bytes {
                return Err(Error::TooMany(format!(
                    "uploads would take {after} bytes, over the quota of {quota_bytes}"
                )));
            }
            insert_row(&mut uploads, upload)?;
            usage_table.insert(upload.owner, after)?;
            Ok(())
        })
    }

    /// The upload `id`, if there is one.
    pub fn upload(&self, id: u128) -> Result<Option<Upload>> {
        self.read(|txn| upload_in(&txn.open_table(UPLOADS)?, id))
    }

    /// Forgets upload `id` and frees what it charged its owner; the upload
    /// as it was (`None` if there was none). The caller removes its files.
    pub fn remove_upload(&self, id: u128) -> Result<Option<Upload>> {
        self.write(|txn| remove_in(txn, id))
    }

    /// Counts a post pending for each of `ids`, all `owner`'s uploads,
    /// before its append; the uploads as they now are. All or nothing: `NotFound`
    /// for an id that is no upload or not `owner`'s (another user's
    /// upload is not revealed), and nothing is written.
    pub fn attach_uploads(&self, owner: u64, ids: &[u128]) -> Result<Vec<Upload>> {
        self.write(|txn| {
            let mut uploads = txn.open_table(UPLOADS)?;
            let mut out = Vec::with_capacity(ids.len());
            for &id in ids {
                let mut up = match upload_in(&uploads, id)? {
                    Some(up) if up.owner == owner => up,
                    _ => return Err(Error::NotFound(format!("upload {id:032x}"))),
                };
                up.pending += 1;
                insert_row(&mut uploads, &up)?;
                out.push(up);
            }
            Ok(out)
        })
    }

    /// Gives back counts [`Meta::attach_uploads`] took for a message that
    /// was not stored (a refusal, a retry): each of `ids` counts one post
    /// pending fewer, never below 0, and nothing is removed (the upload
    /// is as it was before the attempt).
    pub fn detach_uploads(&self, ids: &[u128]) -> Result<()> {
        self.write(|txn| {
            let mut uploads = txn.open_table(UPLOADS)?;
            for &id in ids {
                if let Some(mut up) = upload_in(&uploads, id)? {
                    up.pending = up.pending.saturating_sub(1);
                    insert_row(&mut uploads, &up)?;
                }
            }
            Ok(())
        })
    }

    /// Message `seq` of `room` is durable and holds `ids`, which
    /// [`Meta::attach_uploads`] counted pending: each becomes a row of the
    /// message's, unless retention already retired the seq (then nothing
    /// holds it for this message). The uploads nothing holds any more are
    /// removed, their charge freed, and returned (their files are the
    /// caller's to remove).
    pub fn hold_uploads(&self, room: u64, seq: u64, ids: &[u128]) -> Result<Vec<Upload>> {
        self.write(|txn| {
            let live = seq >= low_seq_in(txn, room)?;
            let mut freed = Vec::new();
            for &id in ids {
                let Some(mut up) = upload_in(&txn.open_table(UPLOADS)?, id)? else {
                    continue;
                };
                up.pending = up.pending.saturating_sub(1);
                insert_row(&mut txn.open_table(UPLOADS)?, &up)?;
                if live {
                    hold_in(txn, room, seq, id)?;
                }
                freed.extend(free_if_unheld(txn, id)?);
            }
            Ok(freed)
        })
    }

    /// Message `seq` of `room` is gone (deleted): it holds its uploads no
    /// more. Those nothing holds any more are removed and returned, as by
    /// [`Meta::hold_uploads`]. A second call finds nothing to do.
    pub fn release_uploads(&self, room: u64, seq: u64) -> Result<Vec<Upload>> {
        self.write(|txn| release_range(txn, room, seq, seq + 1))
    }

    /// Removes `owner`'s upload `id` that no message holds (the uploader
    /// changed their mind); the upload as it was. `NotFound` when it is
    /// no upload of theirs; `AlreadyExists` while a message holds it or a
    /// post of it is under way (delete the message instead).
    pub fn remove_unattached(&self, owner: u64, id: u128) -> Result<Upload> {
        self.write(|txn| {
            match upload_in(&txn.open_table(UPLOADS)?, id)? {
                Some(up) if up.owner == owner => {}
                _ => return Err(Error::NotFound(format!("upload {id:032x}"))),
            }
            free_if_unheld(txn, id)?.ok_or_else(|| {
                Error::AlreadyExists(format!(
                    "upload {id:032x} is held (by a message, or as an avatar)"
                ))
            })
        })
    }

    /// Removes at most `max` uploads stored before `before_ms` that no
    /// message ever held or holds (uploaded and never sent); them, for
    /// their files to be removed.
    pub fn sweep_unattached(&self, before_ms: u64, max: usize) -> Result<Vec<Upload>> {
        let stale: Vec<u128> = self.read(|txn| {
            let uploads = txn.open_table(UPLOADS)?;
            let holders = txn.open_table(UPLOAD_HOLDERS)?;
            let mut out = Vec::new();
            for entry in uploads.iter()? {
                let (k, v) = entry?;
                let up = from_row(k.value(), v.value())?;
                if up.created_ms < before_ms && up.pending == 0 && !held(&holders, up.id)? {
                    out.push(up.id);
                    if out.len() == max {
                        break;
                    }
                }
            }
            Ok(out)
        })?;
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        // Checked again in the write: a post may have taken one since.
        self.write(|txn| {
            let mut freed = Vec::new();
            for id in stale {
                freed.extend(free_if_unheld(txn, id)?);
            }
            Ok(freed)
        })
    }

    /// The messages (room, seq) that hold upload `id`, at most `max`.
    pub fn upload_holders(&self, id: u128, max: usize) -> Result<Vec<(u64, u64)>> {
        self.read(|txn| {
            let holders = txn.open_table(UPLOAD_HOLDERS)?;
            holders
                .range(holders_of(id))?
                .take(max)
                .map(|entry| {
                    let (_, room, seq) = entry?.0.value();
                    Ok((room, seq))
                })
                .collect()
        })
    }

    /// Every upload's id, ordered (for checks of the files against the
    /// table).
    pub fn upload_ids(&self) -> Result<Vec<u128>> {
        self.read(|txn| {
            let uploads = txn.open_table(UPLOADS)?;
            uploads.iter()?.map(|entry| Ok(entry?.0.value())).collect()
        })
    }
}

/// Messages `[from, to)` of `room` hold their uploads no more (deleted
/// or retired): their rows go, and the uploads nothing holds any more are
/// removed and returned.
pub(super) fn release_range(
    txn: &WriteTransaction,
    room: u64,
    from: u64,
    to: u64,
) -> Result<Vec<Upload>> {
    if from >= to {
        return Ok(Vec::new());
    }
    let rows: Vec<(u64, u128)> = {
        let refs = txn.open_table(UPLOAD_REFS)?;
        let rows = refs.range((room, from, 0)..(room, to, 0))?;
        rows.map(|entry| {
            let (_, seq, id) = entry?.0.value();
            Ok((seq, id))
        })
        .collect::<Result<_>>()?
    };
    let mut freed = Vec::new();
    for (seq, id) in rows {
        unhold_in(txn, room, seq, id)?;
        freed.extend(free_if_unheld(txn, id)?);
    }
    Ok(freed)
}

/// (`room`, `seq`) holds upload `id` (a message, or an avatar).
pub(super) fn hold_in(txn: &WriteTransaction, room: u64, seq: u64, id: u128) -> Result<()> {
    txn.open_table(UPLOAD_REFS)?.insert((room, seq, id), ())?;
    txn.open_table(UPLOAD_HOLDERS)?
        .insert((id, room, seq), ())?;
    Ok(())
}

/// (`room`, `seq`) holds upload `id` no more (nothing is freed here).
pub(super) fn unhold_in(txn: &WriteTransaction, room: u64, seq: u64, id: u128) -> Result<()> {
    txn.open_table(UPLOAD_REFS)?.remove((room, seq, id))?;
    txn.open_table(UPLOAD_HOLDERS)?.remove((id, room, seq))?;
    Ok(())
}

/// Removes upload `id` if no message holds it and no post is pending;
/// the upload removed.
fn free_if_unheld(txn: &WriteTransaction, id: u128) -> Result<Option<Upload>> {
    let pending = match upload_in(&txn.open_table(UPLOADS)?, id)? {
        Some(up) => up.pending,
        None => return Ok(None),
    };
    if pending > 0 || held(&txn.open_table(UPLOAD_HOLDERS)?, id)? {
        return Ok(None);
    }
    remove_in(txn, id)
}

/// Whether a message holds upload `id`.
fn held(holders: &impl ReadableTable<(u128, u64, u64), ()>, id: u128) -> Result<bool> {
    Ok(holders.range(holders_of(id))?.next().transpose()?.is_some())
}

/// `room`'s low seq as retention recorded it (0: none).
fn low_seq_in(txn: &WriteTransaction, room: u64) -> Result<u64> {
    Ok(txn
        .open_table(RETENTION)?
        .get(room)?
        .map_or(0, |v| v.value().0))
}

/// Removes upload `id` in `txn` (and every row that holds it) and frees
/// what it charged its owner.
pub(super) fn remove_in(txn: &WriteTransaction, id: u128) -> Result<Option<Upload>> {
    let holders: Vec<(u64, u64)> = {
        let table = txn.open_table(UPLOAD_HOLDERS)?;
        let rows = table.range(holders_of(id))?;
        rows.map(|entry| {
            let (_, room, seq) = entry?.0.value();
            Ok((room, seq))
        })
        .collect::<Result<_>>()?
    };
    for (room, seq) in holders {
        unhold_in(txn, room, seq, id)?;
        if room == AVATAR_ROOM {
            // An avatar whose upload goes is no avatar any more.
            let mut avatars = txn.open_table(AVATARS)?;
            let names_it = avatars.get(seq)?.is_some_and(|v| v.value() == id);
            if names_it {
                avatars.remove(seq)?;
            }
        }
    }
    let mut uploads = txn.open_table(UPLOADS)?;
    let Some(upload) = uploads
        .remove(id)?
        .map(|r| from_row(id, r.value()))
        .transpose()?
    else {
        return Ok(None);
    };
    let mut usage_table = txn.open_table(UPLOAD_USAGE)?;
    let left = usage(&usage_table, upload.owner)?.saturating_sub(upload.charged());
    if left == 0 {
        usage_table.remove(upload.owner)?;
    } else {
        usage_table.insert(upload.owner, left)?;
    }
    Ok(Some(upload))
}

fn usage(table: &impl ReadableTable<u64, u64>, user: u64) -> Result<u64> {
    Ok(table.get(user)?.map_or(0, |g| g.value()))
}

fn insert_row(table: &mut redb::Table<'_, u128, UploadRow>, u: &Upload) -> Result<()> {
    table.insert(
        u.id,
        (
            u.owner,
            u.bytes,
            u.created_ms,
            u.pending,
            u.content_type.as_str(),
            u.name.as_str(),
            &u.sha256[..],
            (u.width, u.height),
            u.thumb_bytes,
        ),
    )?;
    Ok(())
}

/// A row as read: [`UploadRow`] borrowing from the page it is on.
type RowRef<'a> = (
    u64,
    u64,
    u64,
    u64,
    &'a str,
    &'a str,
    &'a [u8],
    (u32, u32),
    u64,
);

/// Upload `id` of `uploads`, read back and checked, if there is one.
pub(super) fn upload_in(
    uploads: &impl ReadableTable<u128, UploadRow>,
    id: u128,
) -> Result<Option<Upload>> {
    uploads
        .get(id)?
        .map(|r| from_row(id, r.value()))
        .transpose()
}

/// The keys of `upload_holders` rows that hold upload `id`.
fn holders_of(id: u128) -> std::ops::RangeInclusive<(u128, u64, u64)> {
    (id, 0, 0)..=(id, u64::MAX, u64::MAX)
}

/// A row read back, checked (the hash is 32 bytes).
pub(super) fn from_row(id: u128, r: RowRef<'_>) -> Result<Upload> {
    let (owner, bytes, created_ms, pending, content_type, name, sha, (width, height), thumb_bytes) =
        r;
    let sha256: [u8; 32] = sha
        .try_into()
        .map_err(|_| Error::Database(format!("upload {id:032x}: a hash of {} bytes", sha.len())))?;
    Ok(Upload {
        id,
        owner,
        bytes,
        created_ms,
        pending,
        content_type: content_type.to_string(),
        name: name.to_string(),
        sha256,
        width,
        height,
        thumb_bytes,
    })
}
