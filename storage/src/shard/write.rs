//! The append side of a shard: limits, idempotency (the per-room window of
//! recent keys), seq assignment and the commit queue.
//!
//! Invariant: seqs are assigned in log order (a record is encoded and
//! queued in the same step that takes its seq). A plain message is queued
//! before the caller's future first yields unless its key matches the
//! idempotency window (then the match is verified first), so plain calls
//! started in order are logged in order; a reply first reads the message it
//! answers, an edit or a delete the message it changes.

use super::*;
use crate::record::{FileRef, Post};

impl ShardStore {
    /// Appends a message; resolves once it is durable (per the durability
    /// mode). A repeated non-empty `(sender, client_id)` within the room's
    /// idempotency window returns the original seq instead.
    pub async fn append_message(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        ts_ms: u64,
        body: &str,
    ) -> Result<Appended> {
        self.append(room, sender, client_id, ts_ms, body, 0, Vec::new())
            .await
    }

    /// Appends a message carrying `files` (1 to [`FILES_PER_MESSAGE_MAX`],
    /// each once), replying to `to` unless it is 0, as
    /// [`ShardStore::append_reply`] does. Which uploads a user may attach
    /// is the caller's to check; storage checks the references' shape.
    #[allow(clippy::too_many_arguments)] // a message's every part
    pub async fn append_post(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        ts_ms: u64,
        body: &str,
        to: u64,
        files: Vec<FileRef>,
    ) -> Result<Appended> {
        check_files(&files)?;
        self.append(room, sender, client_id, ts_ms, body, to, files)
            .await
    }

    /// Appends a message answering message `to` of the room, as
    /// [`ShardStore::append_message`] does. `to` must be a live message
    /// (`NotFound` otherwise, deleted included); the reply joins `to`'s
    /// thread, or starts one at `to`. A repeated `(sender, client_id)`
    /// returns the original seq, whatever it answered.
    pub async fn append_reply(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        ts_ms: u64,
        body: &str,
        to: u64,
    ) -> Result<Appended> {
        if to == 0 {
            return Err(Error::InvalidInput("a reply answers seq 1 or later".into()));
        }
        self.append(room, sender, client_id, ts_ms, body, to, Vec::new())
            .await
    }

    /// Message `seq` of `room`; `NotFound` when it does not exist (or was
    /// retired) or was deleted.
    pub(super) async fn live_message(&self, room: u64, seq: u64) -> Result<HistoryItem> {
        match self.get(room, seq).await? {
            None => Err(Error::NotFound(format!("message {seq} in room {room}"))),
            Some(item) if item.deleted() => Err(Error::NotFound(format!(
                "message {seq} in room {room} was deleted"
            ))),
            Some(item) => Ok(item),
        }
    }

    /// The thread a reply to `to` joins.
    async fn thread_of(&self, room: u64, to: u64) -> Result<u64> {
        let item = self.live_message(room, to).await?;
        Ok(item.reply().map_or(to, |(_, thread)| thread))
    }

    #[allow(clippy::too_many_arguments)] // a message's every part
    async fn append(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        ts_ms: u64,
        body: &str,
        to: u64,
        files: Vec<FileRef>,
    ) -> Result<Appended> {
        self.check_open()?;
        let cfg = &self.inner.cfg;
        if body.len() > cfg.body_bytes_max {
            return Err(Error::InvalidInput(format!(
                "body is {} bytes, limit {}",
                body.len(),
                cfg.body_bytes_max
            )));
        }
        if client_id.len() > cfg.client_id_bytes_max {
            return Err(Error::InvalidInput(format!(
                "client_id is {} bytes, limit {}",
                client_id.len(),
                cfg.client_id_bytes_max
            )));
        }
        self.wait_for_index_lag().await;
        let idem = idem_hash(sender, client_id);
        // The answered message is read first: the duplicate check below
        // then runs just before the seq is taken, with no yield between
        // them unless a key of the window matches (and is verified).
        let thread = match to {
            0 => 0,
            to => match self.thread_of(room, to).await {
                Ok(thread) => thread,
                // A repeat of a reply whose message is gone since still
                // answers the original seq.
                Err(Error::NotFound(m)) => {
                    if idem != 0 {
                        if let Some(found) =
                            self.find_duplicate(room, sender, client_id, idem).await?
                        {
                            return Ok(found);
                        }
                    }
                    return Err(Error::NotFound(m));
                }
                Err(e) => return Err(e),
            },
        };
        if idem != 0 {
            if let Some(found) = self.find_duplicate(room, sender, client_id, idem).await? {
                return Ok(found);
            }
        }
        let (seq, ts_ms, signal) = {
            let mut st = self.inner.st.borrow_mut();
            let window = self.inner.cfg.idempotency_window_len;
            let r = st.rooms.entry(room).or_insert_with(|| Room::new(1));
            let seq = r.next_seq;
            r.next_seq += 1;
            let ts_ms = ts_ms.max(r.last_ts_ms);
            r.last_ts_ms = ts_ms;
            if idem != 0 {
                if let Some(w) = r.idem.as_mut() {
                    w.insert(idem, seq, window);
                }
            }
            let message = Message {
                room,
                seq,
                sender,
                ts_ms,
                client_id: client_id.to_string(),
                body: body.to_string(),
            };
            let rec = match (to, files.is_empty()) {
                (0, true) => Record::Message(message),
                (to, true) => Record::Reply(Box::new(Reply {
                    message,
                    to,
                    thread,
                })),
                (to, false) => Record::Post(Box::new(Post {
                    message,
                    to,
                    thread,
                    files,
                })),
            };
            let kind = QueuedKind::Message {
                idem,
                ts_ms,
                thread,
            };
            let signal = self.enqueue(&rec, room, seq, kind);
            (seq, ts_ms, signal)
        };
        signal.wait().await.map_err(Error::Failed)?;
        Ok(Appended::New { seq, ts_ms })
    }

    /// Appends an edit of message `seq`; resolves once durable. Authorization
    /// is the caller's job; storage checks the message exists and is not
    /// deleted.
    pub async fn edit(&self, room: u64, seq: u64, by: u64, ts_ms: u64, body: &str) -> Result<()> {
        self.check_open()?;
        if body.len() > self.inner.cfg.body_bytes_max {
            return Err(Error::InvalidInput(format!(
                "body is {} bytes, limit {}",
                body.len(),
                self.inner.cfg.body_bytes_max
            )));
        }
        self.change(
            Record::Edit(Edit {
                room,
                seq,
                by,
                ts_ms,
                body: body.to_string(),
            }),
            room,
            seq,
            false,
        )
        .await
    }

    /// Appends a deletion of message `seq`; resolves once durable. A deleted
    /// message stays deleted (later edits are refused).
    pub async fn delete(&self, room: u64, seq: u64, by: u64, ts_ms: u64) -> Result<()> {
        self.check_open()?;
        self.change(
            Record::Delete(Delete {
                room,
                seq,
                by,
                ts_ms,
            }),
            room,
            seq,
            true,
        )
        .await
    }

    pub(super) async fn change(
        &self,
        rec: Record,
        room: u64,
        seq: u64,
        deleted: bool,
    ) -> Result<()> {
        self.wait_for_index_lag().await;
        self.live_message(room, seq).await?;
        let signal = self.enqueue(&rec, room, seq, QueuedKind::Edit { deleted });
        signal.wait().await.map_err(Error::Failed)
    }

    /// Appends a message or a reply with its original seq and timestamp
    /// (restore from an export). The seq must be above the room's last
    /// one; a reply must answer a lower seq, in a thread no later than
    /// that.
    ///
    /// The record is queued before the returned future first yields, so
    /// import calls started in file order are written in file order even
    /// when many are awaited concurrently.
    pub async fn import_message(&self, rec: Record) -> Result<()> {
        self.check_open()?;
        let Some(msg) = rec.message() else {
            return Err(Error::InvalidInput(
                "import_message takes a message or a reply".into(),
            ));
        };
        let thread = match rec.reply() {
            Some((to, thread)) if to == 0 || to >= msg.seq || thread == 0 || thread > to => {
                return Err(Error::InvalidInput(format!(
                    "reply {} answers {to} in thread {thread}",
                    msg.seq
                )))
            }
            Some((_, thread)) => thread,
            None => 0,
        };
        if let Record::Post(p) = &rec {
            check_files(&p.files)?;
            if p.to == 0 && p.thread != 0 {
                return Err(Error::InvalidInput(format!(
                    "message {} answers nothing in thread {}",
                    msg.seq, p.thread
                )));
            }
        }
        let signal = {
            let mut st = self.inner.st.borrow_mut();
            let r = st
                .rooms
                .entry(msg.room)
                .or_insert_with(|| Room::new(msg.seq.max(1)));
            if msg.seq == 0 || msg.seq < r.next_seq {
                return Err(Error::InvalidInput(format!(
                    "seq {} is not above room {}'s last seq {}",
                    msg.seq,
                    msg.room,
                    r.next_seq - 1
                )));
            }
            r.next_seq = msg.seq + 1;
            r.last_ts_ms = r.last_ts_ms.max(msg.ts_ms);
            let idem = idem_hash(msg.sender, &msg.client_id);
            if let (Some(w), true) = (r.idem.as_mut(), idem != 0) {
                w.insert(idem, msg.seq, self.inner.cfg.idempotency_window_len);
            }
            let kind = QueuedKind::Message {
                idem,
                ts_ms: msg.ts_ms,
                thread,
            };
            let (room, seq) = (msg.room, msg.seq);
            self.enqueue(&rec, room, seq, kind)
        };
        signal.wait().await.map_err(Error::Failed)
    }

    /// Appends an edit or delete record as exported (restore). Queued before
    /// the future first yields, like [`ShardStore::import_message`].
    pub async fn import_change(&self, rec: Record) -> Result<()> {
        self.check_open()?;
        let (room, seq, deleted) = match &rec {
            Record::Edit(e) => (e.room, e.seq, false),
            Record::Delete(d) => (d.room, d.seq, true),
            Record::React(r) => {
                let key = (r.room, r.seq, r.emoji.clone(), r.by);
                let slot = {
                    let mut st = self.inner.st.borrow_mut();
                    let slot = st.next_react_slot;
                    st.next_react_slot += 1;
                    st.queued_reactions
                        .insert((r.room, r.seq, slot), (key, r.on));
                    slot
                };
                let signal = self.enqueue(&rec, r.room, r.seq, QueuedKind::React { slot });
                return signal.wait().await.map_err(Error::Failed);
            }
            Record::Message(_) | Record::Reply(_) | Record::Post(_) => {
                return Err(Error::InvalidInput(
                    "import_change takes an edit, a delete or a reaction".into(),
                ))
            }
        };
        let signal = self.enqueue(&rec, room, seq, QueuedKind::Edit { deleted });
        signal.wait().await.map_err(Error::Failed)
    }

    pub(super) fn enqueue(
        &self,
        rec: &Record,
        room: u64,
        seq: u64,
        kind: QueuedKind,
    ) -> Rc<BatchSignal> {
        let mut q = self.inner.queue.borrow_mut();
        let len = encode_frame(rec, &mut q.frames) as u32;
        q.items.push(Queued {
            room,
            seq,
            len,
            kind,
        });
        let signal = q.signal.clone();
        drop(q);
        self.inner.wake_committer.notify();
        signal
    }

    pub(super) async fn wait_for_index_lag(&self) {
        while self.inner.st.borrow().lag_records > self.inner.cfg.index_lag_records_max {
            self.inner.index_progress.notified().await;
        }
    }

    /// Waits until everything queued so far is durable (or failed).
    pub async fn flush(&self) -> Result<()> {
        let signal = {
            let q = self.inner.queue.borrow();
            if !q.items.is_empty() {
                Some(q.signal.clone())
            } else {
                q.inflight.clone()
            }
        };
        match signal {
            Some(s) => s.wait().await.map_err(Error::Failed),
            None => Ok(()),
        }
    }

    pub(super) async fn find_duplicate(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        idem: u64,
    ) -> Result<Option<Appended>> {
        let candidate = {
            let mut st = self.inner.st.borrow_mut();
            self.ensure_idem_window(&mut st, room)?;
            let cap = self.inner.cfg.idempotency_window_len;
            st.rooms.get(&room).and_then(|r| {
                r.idem
                    .as_ref()
                    .and_then(|w| w.get(idem, r.next_seq - 1, cap))
            })
        };
        let Some(seq) = candidate else {
            return Ok(None);
        };
        if seq > self.last_seq(room) {
            self.flush().await?;
        }
        match self.get(room, seq).await? {
            Some(item) if item.sender() == sender && item.client_id() == client_id => {
                Ok(Some(Appended::Duplicate {
                    seq,
                    ts_ms: item.ts_ms(),
                }))
            }
            _ => Ok(None),
        }
    }

    /// Loads a room's idempotency window from its index entries (first use
    /// after open).
    pub(super) fn ensure_idem_window(&self, st: &mut State, room: u64) -> Result<()> {
        let cap = self.inner.cfg.idempotency_window_len;
        // A room without messages starts with an empty window, so the keys
        // of its first (still pending) messages are remembered too.
        let r = st.rooms.entry(room).or_insert_with(|| Room::new(1));
        if r.idem.is_some() {
            return Ok(());
        }
        let hi = r.durable_seq;
        let lo = hi.saturating_sub(cap as u64).max(r.low_seq).max(1);
        let mut window = IdemWindow::default();
        if hi >= lo {
            for (seq, e) in self.entries(st, room, lo, hi)? {
                if e.idem != 0 {
                    window.insert(e.idem, seq, cap);
                }
            }
        }
        st.rooms.get_mut(&room).expect("checked").idem = Some(window);
        Ok(())
    }
}

/// Uploads one message may carry, at most.
pub const FILES_PER_MESSAGE_MAX: usize = 10;

/// Bytes of a file reference's content type, at most.
pub const CONTENT_TYPE_BYTES_MAX: usize = 128;

/// A message's file references: 1 to [`FILES_PER_MESSAGE_MAX`], each upload
/// once, names and types within their bounds.
fn check_files(files: &[FileRef]) -> Result<()> {
    if files.is_empty() || files.len() > FILES_PER_MESSAGE_MAX {
        return Err(Error::InvalidInput(format!(
            "a message carries 1 to {FILES_PER_MESSAGE_MAX} files, not {}",
            files.len()
        )));
    }
    for (i, f) in files.iter().enumerate() {
        if files[..i].iter().any(|g| g.id == f.id) {
            return Err(Error::InvalidInput(format!(
                "upload {:032x} is attached twice",
                f.upload()
            )));
        }
        if f.name.len() > crate::meta::UPLOAD_NAME_BYTES_MAX
            || f.content_type.len() > CONTENT_TYPE_BYTES_MAX
        {
            return Err(Error::InvalidInput(format!(
                "upload {:032x}: a name or type too long",
                f.upload()
            )));
        }
    }
    Ok(())
}
