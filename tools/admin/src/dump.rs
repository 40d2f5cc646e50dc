//! `dump`: one room's messages as JSON lines, edits and deletes applied.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use rookery_storage::{shard_of, Meta, Record};
use serde::Serialize;

use crate::data;
use crate::Outcome;

/// One output line: a message as readers see it now.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
struct DumpLine {
    /// Room id.
    room: u64,
    /// Seq in the room.
    seq: u64,
    /// Author's user id.
    sender: u64,
    /// Idempotency key ("" for none).
    client_id: String,
    /// Timestamp, ms since the Unix epoch.
    ts_ms: u64,
    /// Current body; `None` (null) when deleted.
    body: Option<String>,
    /// Whether an edit replaced the original body.
    edited: bool,
    /// Whether the message was deleted.
    deleted: bool,
    /// For a reply, the seq it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<u64>,
    /// For a reply, the first message of its thread.
    #[serde(skip_serializing_if = "Option::is_none")]
    thread: Option<u64>,
    /// The ids of the uploads it carries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    files: Vec<String>,
    /// Reactions on it: each emoji with the users who have it on.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    reactions: BTreeMap<String, std::collections::BTreeSet<u64>>,
}

impl DumpLine {
    /// Applies an edit or delete record to the message.
    fn apply(&mut self, rec: Record) {
        match rec {
            Record::Edit(e) if !self.deleted => {
                self.body = Some(e.body);
                self.edited = true;
            }
            Record::Delete(_) => {
                self.body = None;
                self.deleted = true;
            }
            _ => {}
        }
    }
}

/// Prints room `room` (id or name) from seq `since + 1` on.
pub fn dump(data: &Path, room: &str, since: u64) -> Result<Outcome> {
    let manifest = data::manifest(data)?;
    let meta = data::open_meta(data)?;
    let room = resolve_room(&meta, room)?;
    let shard = shard_of(room, manifest.shards);
    let retention = data::retention(data, manifest.shards, &meta)?;
    drop(meta);
    let from = since.saturating_add(1).max(data::low_seq(&retention, room));
    let mut messages: BTreeMap<u64, DumpLine> = BTreeMap::new();
    let scans = data::scan_shard(data, shard, |_, rec| {
        if rec.room() == room && rec.seq() >= from {
            collect(&mut messages, rec.to_owned_record());
        }
    })?;
    let damaged = data::warn_damage(shard, &scans);
    let mut out = BufWriter::new(std::io::stdout().lock());
    for line in messages.values() {
        data::write_json_line(&mut out, line)?;
    }
    out.flush().context("writing output")?;
    Ok(Outcome::from_damage(damaged))
}

/// Adds a message, or applies an edit or delete to the message it names.
fn collect(messages: &mut BTreeMap<u64, DumpLine>, rec: Record) {
    let reply = rec.reply();
    match rec {
        Record::Message(_) | Record::Reply(_) | Record::Post(_) => {
            let (m, files) = match rec {
                Record::Message(m) => (m, Vec::new()),
                Record::Reply(r) => (r.message, Vec::new()),
                Record::Post(p) => (p.message, p.files),
                _ => unreachable!("a message kind"),
            };
            let line = DumpLine {
                room: m.room,
                seq: m.seq,
                sender: m.sender,
                client_id: m.client_id,
                ts_ms: m.ts_ms,
                body: Some(m.body),
                edited: false,
                deleted: false,
                reply_to: reply.map(|r| r.0),
                thread: reply.map(|r| r.1),
                files: files
                    .iter()
                    .map(|f| format!("{:032x}", f.upload()))
                    .collect(),
                reactions: BTreeMap::new(),
            };
            messages.insert(m.seq, line);
        }
        Record::Edit(ref e) => {
            let seq = e.seq;
            if let Some(line) = messages.get_mut(&seq) {
                line.apply(rec);
            }
        }
        Record::Delete(ref d) => {
            let seq = d.seq;
            if let Some(line) = messages.get_mut(&seq) {
                line.apply(rec);
            }
        }
        Record::React(r) => {
            if let Some(line) = messages.get_mut(&r.seq) {
                let users = line.reactions.entry(r.emoji).or_default();
                if r.on {
                    users.insert(r.by);
                } else {
                    users.remove(&r.by);
                }
                line.reactions.retain(|_, users| !users.is_empty());
            }
        }
    }
}

/// A room id given as digits, or the id of the room with that name.
fn resolve_room(meta: &Meta, room: &str) -> Result<u64> {
    if let Ok(id) = room.parse::<u64>() {
        if meta
            .room(id)
            .with_context(|| format!("looking up room {id}"))?
            .is_none()
        {
            eprintln!(
                "rookery-admin: warning: room {id} is not in meta.redb; dumping what the log holds"
            );
        }
        return Ok(id);
    }
    let public = meta
        .room_by_name(room)
        .with_context(|| format!("looking up room {room:?}"))?;
    if let Some(r) = public {
        return Ok(r.id);
    }
    // Private rooms' names are not indexed (nor unique): the first by id.
    let rooms = meta.rooms().context("listing rooms")?;
    rooms
        .iter()
        .find(|r| r.name.eq_ignore_ascii_case(room))
        .map(|r| r.id)
        .ok_or_else(|| anyhow!("no room named {room:?}"))
}
