//! `meta.redb` copied for a backup: every table as one read transaction
//! sees it, written into a new file (redb's files must not be copied while
//! they are written: cberner/redb#634).
//!
//! What a backup leaves out, and why:
//! - `sessions`: a restore must not bring back a session its user signed
//!   out of after the backup; everyone signs in again.
//! - `feed_cursors` and `member_feed`, and the counters `origin` and
//!   `member_feed`: a restored directory is a new origin of events, whose
//!   log positions no webhook has seen (webhooks start at its end).
//!
//! What it changes: a room's `last_seq` is lowered to the last seq the
//! backup's copy of the room's shard holds, and a read receipt to its
//! room's `last_seq` (both never exceed what the restored log holds); the
//! rows saying a message holds an upload are kept only for the messages
//! the copy holds.
//! Uploads are copied with their ids ([`MetaCopy::uploads`]), for their
//! files to be copied after; an upload whose file is gone by then is
//! forgotten in the copy ([`forget_uploads`]), so a restored directory
//! never has a row without its file.
//!
//! Invariant: every table of the file is either copied or named above as
//! left out; a table this code does not know fails the backup rather than
//! vanish from it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    TableHandle, Value,
};

use super::{
    Meta, RoomRow, AVATARS, AVATAR_ROOM, BANS, COUNTERS, DELETED_ROOMS, DMS, DM_ROOMS,
    FEED_CURSORS, FORMER, INVITES, LAST_SEEN, MEMBERS, MEMBER_FEED, NAME_WORDS, ORIGIN_COUNTER,
    PROFILES, RECEIPTS, RETENTION, ROOMS, ROOM_NAMES, SESSIONS, UPLOADS, UPLOAD_HOLDERS,
    UPLOAD_REFS, UPLOAD_USAGE, USERS, USER_INVITES, USER_NAMES, USER_ROOMS,
};
use crate::error::{Error, Result};

/// Rows written per transaction of the new file (a write transaction
/// keeps its dirty pages in memory until it commits).
const COPY_BATCH_ROWS: usize = 20_000;

/// Tables a backup leaves out (see the module's doc).
fn left_out() -> [&'static str; 3] {
    [SESSIONS.name(), FEED_CURSORS.name(), MEMBER_FEED.name()]
}

/// What [`Meta::copy_for_backup`] copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaCopy {
    /// Users copied.
    pub users: u64,
    /// Rooms copied.
    pub rooms: u64,
    /// Rows copied, all tables.
    pub rows: u64,
    /// Rooms whose `last_seq` was lowered to the backup's log.
    pub rooms_lowered: u64,
    /// The uploads copied (their files are the caller's to copy).
    pub uploads: Vec<u128>,
}

impl Meta {
    /// Writes a new database at `to` (which must not exist) holding this
    /// one as one read transaction sees it, less what a backup leaves out;
    /// `last_seqs` gives each room's last seq in the backup's logs (a
    /// room it does not name has none). Durable when it returns. Fails
    /// (`Failed`) at the next batch once `cancel` is set.
    pub fn copy_for_backup(
        &self,
        to: &Path,
        last_seqs: &HashMap<u64, u64>,
        cancel: &AtomicBool,
    ) -> Result<MetaCopy> {
        if to.exists() {
            return Err(Error::AlreadyExists(to.display().to_string()));
        }
        let src = self.db.begin_read()?;
        check_known_tables(&src)?;
        let dst = Database::builder()
            .set_cache_size(16 << 20)
            .create(to)
            .map_err(|e| Error::Database(format!("{}: {e}", to.display())))?;
        let mut out = MetaCopy::default();
        let same = |_: &[u8], v: &[u8]| Some(v.to_vec());
        out.rows += copy_table(&src, &dst, cancel, COUNTERS, |k, v| {
            let name = <&str>::from_bytes(k);
            let dropped = name == ORIGIN_COUNTER || name == super::feed::MEMBER_FEED_COUNTER;
            (!dropped).then(|| v.to_vec())
        })?;
        out.users = copy_table(&src, &dst, cancel, USERS, same)?;
        out.rows += out.users;
        out.rows += copy_table(&src, &dst, cancel, USER_NAMES, same)?;
        let mut room_last: HashMap<u64, u64> = HashMap::new();
        let mut lowered = 0;
        out.rooms = copy_table(&src, &dst, cancel, ROOMS, |k, v| {
            let room = u64::from_bytes(k);
            let (name, private, creator, created, last) = RoomRow::from_bytes(v);
            let held = last_seqs.get(&room).copied().unwrap_or(0);
            let last_seq = last.min(held);
            lowered += (last_seq < last) as u64;
            room_last.insert(room, last_seq);
            let row: (&str, bool, u64, u64, u64) = (name, private, creator, created, last_seq);
            Some(<RoomRow as Value>::as_bytes(&row).to_vec())
        })?;
        out.rooms_lowered = lowered;
        out.rows += out.rooms;
        out.rows += copy_table(&src, &dst, cancel, RECEIPTS, |k, v| {
            let (room, _) = <(u64, u64)>::from_bytes(k);
            let read = u64::from_bytes(v);
            let capped = room_last.get(&room).map_or(read, |&last| read.min(last));
            Some(u64::as_bytes(&capped).as_ref().to_vec())
        })?;
        out.rows += copy_table(&src, &dst, cancel, ROOM_NAMES, same)?;
        out.rows += copy_table(&src, &dst, cancel, MEMBERS, same)?;
        out.rows += copy_table(&src, &dst, cancel, USER_ROOMS, same)?;
        out.rows += copy_table(&src, &dst, cancel, BANS, same)?;
        out.rows += copy_table(&src, &dst, cancel, INVITES, same)?;
        out.rows += copy_table(&src, &dst, cancel, USER_INVITES, same)?;
        out.rows += copy_table(&src, &dst, cancel, FORMER, same)?;
        out.rows += copy_table(&src, &dst, cancel, DELETED_ROOMS, same)?;
        out.rows += copy_table(&src, &dst, cancel, RETENTION, same)?;
        out.rows += copy_table(&src, &dst, cancel, DMS, same)?;
        out.rows += copy_table(&src, &dst, cancel, DM_ROOMS, same)?;
        out.rows += copy_table(&src, &dst, cancel, PROFILES, same)?;
        out.rows += copy_table(&src, &dst, cancel, NAME_WORDS, same)?;
        out.rows += copy_table(&src, &dst, cancel, AVATARS, same)?;
        out.rows += copy_table(&src, &dst, cancel, LAST_SEEN, same)?;
        let mut uploads = Vec::new();
        out.rows += copy_table(&src, &dst, cancel, UPLOADS, |k, v| {
            uploads.push(u128::from_bytes(k));
            Some(v.to_vec())
        })?;
        out.uploads = uploads;
        out.rows += copy_table(&src, &dst, cancel, UPLOAD_USAGE, same)?;
        // A message past what the log copy holds holds nothing in it. Told
        // by the log copy itself: the room's `last_seq` here may lag it
        // (the index pushes it after its commits), and a message the log
        // copy holds must keep its hold.
        // An avatar's hold is kept as it is.
        let kept = |room: u64, seq: u64| {
            room == AVATAR_ROOM || last_seqs.get(&room).is_some_and(|&last| seq <= last)
        };
        out.rows += copy_table(&src, &dst, cancel, UPLOAD_REFS, |k, v| {
            let (room, seq, _) = <(u64, u64, u128)>::from_bytes(k);
            kept(room, seq).then(|| v.to_vec())
        })?;
        out.rows += copy_table(&src, &dst, cancel, UPLOAD_HOLDERS, |k, v| {
            let (_, room, seq) = <(u128, u64, u64)>::from_bytes(k);
            kept(room, seq).then(|| v.to_vec())
        })?;
        // The tables left out exist, empty, as in any file `Meta::open`
        // made; the last commit is durable.
        let mut txn = dst.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.open_table(SESSIONS)?;
        txn.open_table(FEED_CURSORS)?;
        txn.open_table(MEMBER_FEED)?;
        txn.commit()?;
        dst.close()?;
        Ok(out)
    }
}

/// Forgets `ids` in the copy at `path` (their files could not be copied):
/// each row goes and its owner's usage drops by what it was charged.
pub fn forget_uploads(path: &Path, ids: &[u128]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let db = Database::builder()
        .create(path)
        .map_err(|e| Error::Database(format!("{}: {e}", path.display())))?;
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    for &id in ids {
        super::uploads::remove_in(&txn, id)?;
    }
    txn.commit()?;
    Ok(())
}

/// The users and rooms of the `meta.redb` at `path`, opened read-only (a
/// backup's copy is checked without a byte of it changing).
pub fn count_read_only(path: &Path) -> Result<(u64, u64)> {
    use redb::ReadableTableMetadata;
    let db = Database::builder()
        .open_read_only(path)
        .map_err(|e| Error::Database(format!("{}: {e}", path.display())))?;
    let txn = db.begin_read()?;
    check_known_tables(&txn)?;
    let users = txn.open_table(USERS)?.len()?;
    let rooms = txn.open_table(ROOMS)?.len()?;
    Ok((users, rooms))
}

/// Fails when `src` holds a table this module does not know.
fn check_known_tables(src: &ReadTransaction) -> Result<()> {
    let copied = [
        COUNTERS.name(),
        USERS.name(),
        USER_NAMES.name(),
        ROOMS.name(),
        ROOM_NAMES.name(),
        MEMBERS.name(),
        USER_ROOMS.name(),
        BANS.name(),
        INVITES.name(),
        USER_INVITES.name(),
        FORMER.name(),
        RECEIPTS.name(),
        DELETED_ROOMS.name(),
        RETENTION.name(),
        DMS.name(),
        DM_ROOMS.name(),
        PROFILES.name(),
        NAME_WORDS.name(),
        AVATARS.name(),
        LAST_SEEN.name(),
        UPLOADS.name(),
        UPLOAD_USAGE.name(),
        UPLOAD_REFS.name(),
        UPLOAD_HOLDERS.name(),
    ];
    for table in src.list_tables()? {
        let name = table.name();
        if !copied.contains(&name) && !left_out().contains(&name) {
            return Err(Error::Database(format!(
                "meta.redb has a table the backup does not know: {name}"
            )));
        }
    }
    if src.list_multimap_tables()?.next().is_some() {
        return Err(Error::Database(
            "meta.redb has a multimap table the backup does not know".into(),
        ));
    }
    Ok(())
}

/// Copies table `def` of `src` into `dst`, `COPY_BATCH_ROWS` rows per
/// transaction; `map` gets each row's key and value bytes and returns the
/// value to write (`None`: leave the row out). Returns the rows written.
fn copy_table<K: Key + 'static, V: Value + 'static>(
    src: &ReadTransaction,
    dst: &Database,
    cancel: &AtomicBool,
    def: TableDefinition<K, V>,
    mut map: impl FnMut(&[u8], &[u8]) -> Option<Vec<u8>>,
) -> Result<u64> {
    let table = src.open_table(def)?;
    let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(COPY_BATCH_ROWS);
    let mut written = 0u64;
    let flush = |batch: &mut Vec<(Vec<u8>, Vec<u8>)>| -> Result<()> {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Failed("the backup was cancelled".into()));
        }
        let mut txn = dst.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut to = txn.open_table(def)?;
            for (k, v) in batch.iter() {
                to.insert(K::from_bytes(k), V::from_bytes(v))?;
            }
        }
        txn.commit()?;
        batch.clear();
        Ok(())
    };
    for row in table.iter()? {
        let (k, v) = row?;
        let key = K::as_bytes(&k.value()).as_ref().to_vec();
        let value = V::as_bytes(&v.value()).as_ref().to_vec();
        if let Some(value) = map(&key, &value) {
            batch.push((key, value));
            written += 1;
        }
        if batch.len() == COPY_BATCH_ROWS {
            flush(&mut batch)?;
        }
    }
    flush(&mut batch)?;
    Ok(written)
}
