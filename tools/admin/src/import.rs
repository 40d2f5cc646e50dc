//! `import`: creates a data directory from an export.
//!
//! Two passes over the file: the first parses and checks every line (so a
//! malformed file writes nothing), the second imports meta through [`Meta`]
//! and records through the shard stores, all shards open on one glommio
//! executor. Appends are issued many at a time so group commit batches them;
//! each one is queued in file order before the next is issued, which keeps
//! every room's records in order.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::Poll;

use anyhow::{anyhow, bail, Context, Result};
use rookery_storage::meta::{Room, User};
use rookery_storage::{shard_of, Meta, Record, ShardStore, StorageConfig, Store};

use crate::data;
use crate::format::{Line, RetentionLimits, VERSION};
use crate::Outcome;

/// Appends in flight at most (two full commit batches).
const INFLIGHT_MAX: usize = 8192;

/// Command-line options of `import`.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Shard count of the new directory (default: the export's).
    pub shards: Option<u32>,
    /// Segment size of the new directory's logs.
    pub segment_bytes: u32,
}

/// What the first pass learnt about the file.
#[derive(Debug, Default)]
struct Plan {
    /// Shard count in the header.
    shards: u32,
    /// Largest message or edit body, in bytes.
    body_bytes_max: usize,
    /// Largest client id, in bytes.
    client_id_bytes_max: usize,
}

/// How many lines of each kind were imported.
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
    /// Messages.
    messages: u64,
    /// Edits.
    edits: u64,
    /// Deletes.
    deletes: u64,
    /// Reactions put on or taken off.
    reactions: u64,
}

/// Imports `from` into the new directory `data`.
pub fn import(data: &Path, from: &Path, opts: Options) -> Result<Outcome> {
    check_target(data)?;
    let plan = check_file(from)?;
    let cfg = config(data, &plan, opts)?;
    let shards = cfg.shards;
    let store = Store::open(cfg.clone()).with_context(|| format!("creating {}", data.display()))?;
    let file = from.to_path_buf();
    let counts = data::on_executor(cfg.io_memory_bytes, move || async move {
        load_all(store, file).await
    })
    .with_context(|| {
        format!(
            "importing into {} (it is incomplete: delete it before retrying)",
            data.display()
        )
    })?;
    println!(
        "imported {} users, {} rooms, {} members, {} receipts, {} bans, {} invitations, {} messages, {} edits, {} deletes, {} reactions into {} ({shards} shards)",
        counts.users,
        counts.rooms,
        counts.members,
        counts.receipts,
        counts.bans,
        counts.invites,
        counts.messages,
        counts.edits,
        counts.deletes,
        counts.reactions,
        data.display()
    );
    Ok(Outcome::Clean)
}

/// Refuses a target that exists and is not an empty directory.
fn check_target(data: &Path) -> Result<()> {
    match std::fs::read_dir(data).map(|mut entries| entries.next().is_none()) {
        Ok(true) => Ok(()),
        Ok(false) => bail!(
            "{} is not empty: import only into a new or empty directory",
            data.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading {}", data.display())),
    }
}

/// The storage config of the new directory, sized so the largest record of
/// the export fits.
fn config(data: &Path, plan: &Plan, opts: Options) -> Result<StorageConfig> {
    let mut cfg = StorageConfig::new(data);
    cfg.shards = opts.shards.unwrap_or(plan.shards);
    cfg.segment_bytes_max = opts.segment_bytes;
    cfg.body_bytes_max = plan.body_bytes_max.max(1);
    cfg.client_id_bytes_max = cfg.client_id_bytes_max.max(plan.client_id_bytes_max);
    cfg.validate().with_context(|| {
        format!(
            "the largest body in the export is {} bytes and the largest client id {} bytes; \
             --segment-bytes must hold twice that",
            plan.body_bytes_max, plan.client_id_bytes_max
        )
    })?;
    Ok(cfg)
}

// ---- first pass ----

/// Parses and checks every line of `from`.
fn check_file(from: &Path) -> Result<Plan> {
    let file = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut checker = Checker::default();
    for (i, text) in BufReader::new(file).lines().enumerate() {
        let no = i + 1;
        let text = text.with_context(|| format!("{}: reading line {no}", from.display()))?;
        checker
            .check(no, &text)
            .with_context(|| format!("{}: line {no}", from.display()))?;
    }
    if checker.plan.shards == 0 {
        bail!(
            "{}: empty file, expected a rookery-export header",
            from.display()
        );
    }
    Ok(checker.plan)
}

/// State of the first pass.
#[derive(Debug, Default)]
struct Checker {
    /// What was learnt so far.
    plan: Plan,
    /// Last message seq seen per room.
    last_seq: HashMap<u64, u64>,
    /// The thread of every reply seen, by (room, seq).
    threads: HashMap<(u64, u64), u64>,
    /// The first message seq of each room (an export leaves out what
    /// retention retired).
    first_seq: HashMap<u64, u64>,
}

impl Checker {
    /// Checks line number `no`.
    fn check(&mut self, no: usize, text: &str) -> Result<()> {
        let line = parse(text)?;
        match line {
            Line::Header { version, shards } if no == 1 => {
                if version != VERSION {
                    bail!("export format version {version}; this build reads version {VERSION}");
                }
                if shards == 0 {
                    bail!("header says 0 shards");
                }
                self.plan.shards = shards;
            }
            _ if no == 1 => bail!("expected a rookery-export header first"),
            Line::Header { .. } => bail!("a second header"),
            Line::Message {
                room,
                seq,
                client_id,
                body,
                reply_to,
                thread,
                ..
            } => {
                let last = self.last_seq.entry(room).or_insert(0);
                if seq <= *last {
                    bail!("message seq {seq} of room {room} is not above the previous seq {last}");
                }
                *last = seq;
                self.first_seq.entry(room).or_insert(seq);
                self.check_reply(room, seq, reply_to, thread)?;
                self.plan.body_bytes_max = self.plan.body_bytes_max.max(body.len());
                self.plan.client_id_bytes_max = self.plan.client_id_bytes_max.max(client_id.len());
            }
            Line::Edit {
                room,
                seq,
                ref body,
                ..
            } => {
                self.plan.body_bytes_max = self.plan.body_bytes_max.max(body.len());
                self.check_target_message(room, seq)?;
            }
            Line::Delete { room, seq, .. } => self.check_target_message(room, seq)?,
            Line::React {
                room,
                seq,
                ref emoji,
                ..
            } => {
                if emoji.is_empty() || emoji.len() > rookery_storage::EMOJI_BYTES_MAX {
                    bail!(
                        "a reaction is 1 to {} bytes, not {}",
                        rookery_storage::EMOJI_BYTES_MAX,
                        emoji.len()
                    );
                }
                self.check_target_message(room, seq)?
            }
            // Checked here, in the pass that writes nothing.
            Line::Profile {
                ref display_name,
                ref status,
                ..
            } => rookery_storage::meta::check_profile(display_name, status)?,
            Line::User { .. }
            | Line::Room { .. }
            | Line::Dm { .. }
            | Line::Member { .. }
            | Line::Ban { .. }
            | Line::Invite { .. }
            | Line::Receipt { .. } => {}
        }
        Ok(())
    }

    /// An edit or delete must follow the message it changes.
    /// A reply answers an earlier message of its room, in that message's
    /// thread (or the one it starts); both fields or neither.
    fn check_reply(
        &mut self,
        room: u64,
        seq: u64,
        reply_to: Option<u64>,
        thread: Option<u64>,
    ) -> Result<()> {
        let (to, thread) = match (reply_to, thread) {
            (None, None) => return Ok(()),
            (Some(to), Some(thread)) => (to, thread),
            _ => bail!("message seq {seq} of room {room} has only one of reply_to and thread"),
        };
        if to == 0 || to >= seq {
            bail!("message seq {seq} of room {room} replies to {to}, not an earlier message");
        }
        let first = *self.first_seq.get(&room).unwrap_or(&seq);
        if to < first {
            // What it answers was retired: its thread is not in the file.
            if thread == 0 || thread > to {
                bail!(
                    "message seq {seq} of room {room} replies to {to} in thread {thread}, after it"
                );
            }
            self.threads.insert((room, seq), thread);
            return Ok(());
        }
        let want = self.threads.get(&(room, to)).copied().unwrap_or(to);
        if thread != want {
            bail!(
                "message seq {seq} of room {room} replies to {to} in thread {thread}, not {want}"
            );
        }
        self.threads.insert((room, seq), thread);
        Ok(())
    }

    fn check_target_message(&self, room: u64, seq: u64) -> Result<()> {
        if seq == 0 || self.last_seq.get(&room).is_none_or(|&last| seq > last) {
            bail!("change of room {room} seq {seq} comes before that message");
        }
        Ok(())
    }
}

/// Parses one line.
fn parse(text: &str) -> Result<Line> {
    serde_json::from_str(text).map_err(|e| {
        // serde_json counts lines inside the text: always 1 here.
        let msg = e.to_string().replace(" at line 1 column ", " at column ");
        anyhow!("malformed line: {msg}")
    })
}

// ---- second pass ----

/// Opens every shard, loads the file and closes every shard.
async fn load_all(store: Store, from: PathBuf) -> Result<Counts> {
    let mut shards = Vec::new();
    for k in 0..store.config().shards {
        match store.open_shard(k).await {
            Ok(s) => shards.push(s),
            Err(e) => {
                close_all(&shards).await?;
                return Err(e).with_context(|| format!("opening shard {k}"));
            }
        }
    }
    let loaded = load(store.meta(), &shards, &from).await;
    let closed = close_all(&shards).await;
    let counts = loaded?;
    closed?;
    Ok(counts)
}

/// Closes every shard, returning the first error.
async fn close_all(shards: &[ShardStore]) -> Result<()> {
    let mut result = Ok(());
    for s in shards {
        let closed = s
            .close()
            .await
            .with_context(|| format!("closing shard {}", s.shard()));
        result = result.and(closed);
    }
    result
}

/// Imports every line of `from`.
async fn load(meta: &Meta, shards: &[ShardStore], from: &Path) -> Result<Counts> {
    let file = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut loader = Loader {
        file: from,
        meta,
        shards,
        inflight: VecDeque::new(),
        retention: Vec::new(),
        counts: Counts::default(),
    };
    for (i, text) in BufReader::new(file).lines().enumerate() {
        let no = i + 1;
        let text = text.with_context(|| loader.at(no))?;
        let line = parse(&text).with_context(|| loader.at(no))?;
        loader.line(no, line).await?;
    }
    loader.finish().await?;
    // An export made before rooms had owners: each room gets one, as the
    // schema upgrade does.
    meta.ensure_owners().context("naming rooms' owners")?;
    Ok(loader.counts)
}

/// An append that has been queued and is waiting to be durable.
type Pending<'a> = Pin<Box<dyn Future<Output = rookery_storage::Result<()>> + 'a>>;

/// State of the second pass.
struct Loader<'a> {
    /// The export file, for error messages.
    file: &'a Path,
    /// The new directory's meta.
    meta: &'a Meta,
    /// Its shards, by number.
    shards: &'a [ShardStore],
    /// Queued appends with their line numbers, oldest first.
    inflight: VecDeque<(usize, Pending<'a>)>,
    /// Retention limits, applied once every record is in.
    retention: Vec<(u64, RetentionLimits)>,
    /// What was imported.
    counts: Counts,
}

impl<'a> Loader<'a> {
    /// `FILE: line N`, the context of an error about line `no`.
    fn at(&self, no: usize) -> String {
        format!("{}: line {no}", self.file.display())
    }

    /// Imports one line; errors name the line they are about.
    async fn line(&mut self, no: usize, line: Line) -> Result<()> {
        if matches!(
            line,
            Line::Message { .. } | Line::Edit { .. } | Line::Delete { .. } | Line::React { .. }
        ) {
            let record = line.into_record().expect("a record line");
            return self.record(no, record).await;
        }
        self.meta_line(line).with_context(|| self.at(no))
    }

    /// Imports a header (nothing to do) or a meta line.
    fn meta_line(&mut self, line: Line) -> Result<()> {
        match line {
            Line::Header { .. } => {}
            Line::User {
                id,
                name,
                created_ms,
                password_hash,
            } => {
                self.meta.import_user(&User {
                    id,
                    name,
                    created_ms,
                    password_hash,
                })?;
                self.counts.users += 1;
            }
            Line::Room {
                id,
                name,
                private,
                creator,
                created_ms,
                last_seq,
                retention,
            } => {
                self.meta.import_room(&Room {
                    id,
                    name,
                    private,
                    creator,
                    created_ms,
                    last_seq,
                })?;
                self.retention.extend(retention.map(|r| (id, r)));
                self.counts.rooms += 1;
            }
            Line::Profile {
                user,
                display_name,
                status,
                updated_ms,
            } => {
                self.meta
                    .set_profile(user, &display_name, &status, updated_ms)?;
            }
            Line::Dm { room, users } => {
                self.meta.import_dm(room, (users[0], users[1]))?;
            }
            Line::Member { room, user, role } => {
                self.meta.add_member(room, user, role.into())?;
                self.counts.members += 1;
            }
            Line::Ban {
                room,
                user,
                by,
                ts_ms,
            } => {
                self.meta.import_ban(room, user, by, ts_ms)?;
                self.counts.bans += 1;
            }
            Line::Invite {
                room,
                user,
                by,
                ts_ms,
            } => {
                self.meta.import_invite(room, user, by, ts_ms)?;
                self.counts.invites += 1;
            }
            Line::Receipt { room, user, seq } => {
                self.meta.import_receipt(room, user, seq)?;
                self.counts.receipts += 1;
            }
            Line::Message { .. } | Line::Edit { .. } | Line::Delete { .. } | Line::React { .. } => {
                unreachable!("handled by line()")
            }
        }
        Ok(())
    }

    /// Queues a record on its shard; waits for the oldest appends when too
    /// many are in flight.
    async fn record(&mut self, no: usize, rec: Record) -> Result<()> {
        let shards: &'a [ShardStore] = self.shards;
        let shard = &shards[shard_of(rec.room(), shards.len() as u32) as usize];
        let mut pending: Pending<'a> = match rec {
            Record::Message(_) | Record::Reply(_) | Record::Post(_) => {
                self.counts.messages += 1;
                Box::pin(shard.import_message(rec))
            }
            other => {
                match other {
                    Record::Edit(_) => self.counts.edits += 1,
                    Record::React(_) => self.counts.reactions += 1,
                    _ => self.counts.deletes += 1,
                }
                Box::pin(shard.import_change(other))
            }
        };
        // The first poll queues the record (in file order); only waiting for
        // durability is left for later.
        match poll_once(&mut pending).await {
            Some(done) => done.with_context(|| self.at(no))?,
            None => self.inflight.push_back((no, pending)),
        }
        while self.inflight.len() > INFLIGHT_MAX {
            self.wait_oldest().await?;
        }
        Ok(())
    }

    /// Waits for the oldest queued append.
    async fn wait_oldest(&mut self) -> Result<()> {
        if let Some((no, pending)) = self.inflight.pop_front() {
            pending.await.with_context(|| self.at(no))?;
        }
        Ok(())
    }

    /// Waits for every append, then sets retention limits.
    async fn finish(&mut self) -> Result<()> {
        while !self.inflight.is_empty() {
            self.wait_oldest().await?;
        }
        for (room, limits) in self.retention.drain(..) {
            let shard = &self.shards[shard_of(room, self.shards.len() as u32) as usize];
            shard
                .set_retention(room, limits.to_retention())
                .await
                .with_context(|| format!("setting the retention of room {room}"))?;
        }
        Ok(())
    }
}

/// Polls `fut` once: its output if it is ready, `None` if it is pending.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *fut).poll(cx) {
            Poll::Ready(out) => Some(out),
            Poll::Pending => None,
        })
    })
    .await
}
