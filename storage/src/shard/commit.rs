//! The committer: the one task that writes a shard's log. It takes the queue
//! as a batch, writes it (one write, one `fdatasync` in `sync` mode),
//! applies it to the in-memory index, resolves its appenders, and feeds the
//! index thread; it also writes checkpoints.
//!
//! The loop in [`ShardStore::committer`] is the shard's write state machine;
//! each step is a function of its own.

use super::*;

/// Reorders a batch so each room's records are adjacent (stable: a room's
/// records keep their order, so seqs stay increasing in the log). A later
/// history page of the room then touches fewer pages of the log: the log is
/// ordered by time, and this clusters it by room at no extra I/O.
pub(super) fn cluster_by_room(frames: Vec<u8>, items: Vec<Queued>) -> (Vec<u8>, Vec<Queued>) {
    if items.windows(2).all(|w| w[0].room <= w[1].room) {
        return (frames, items);
    }
    let mut starts = Vec::with_capacity(items.len());
    let mut off = 0usize;
    for q in &items {
        starts.push(off);
        off += q.len as usize;
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items[i].room);
    let mut out = Vec::with_capacity(frames.len());
    for &i in &order {
        out.extend_from_slice(&frames[starts[i]..starts[i] + items[i].len as usize]);
    }
    let mut slots: Vec<Option<Queued>> = items.into_iter().map(Some).collect();
    let items = order
        .iter()
        .map(|&i| slots[i].take().expect("each index once"))
        .collect();
    (out, items)
}

impl ShardStore {
    // ---- applying durable records ----------------------------------------

    pub(super) fn apply_message(
        &self,
        st: &mut State,
        room: u64,
        seq: u64,
        entry: Entry,
        segment: u32,
    ) {
        let r = st.rooms.entry(room).or_insert_with(|| Room::new(seq));
        if r.open.no != chunk_of(seq) {
            let full = std::mem::replace(&mut r.open, Rc::new(Chunk::new(chunk_of(seq))));
            if !full.entries.is_empty() {
                Self::send_chunk(st, room, Rc::unwrap_or_clone(full));
            }
        }
        let r = st.rooms.get_mut(&room).expect("inserted");
        Rc::make_mut(&mut r.open).set(seq, entry);
        r.durable_seq = seq;
        r.last_ts_ms = r.last_ts_ms.max(entry.ts_ms);
        if r.open.is_full() {
            let full = Chunk::clone(&r.open);
            Self::send_chunk(st, room, full);
        }
        st.note_in_segment(segment, room, seq);
        st.dirty_rooms.insert(room);
    }

    pub(super) fn send_chunk(st: &mut State, room: u64, chunk: Chunk) {
        st.chunk_cache.remove(&(room, chunk.no));
        let ticket = st.next_ticket;
        st.ops.push(Op::Chunk {
            room,
            no: chunk.no,
            bytes: chunk.encode(),
        });
        st.pending_chunks
            .insert((room, chunk.no), (ticket, Rc::new(chunk)));
    }

    /// A durable reply: its thread row goes to the index thread and stays
    /// readable in memory until committed.
    pub(super) fn apply_reply(st: &mut State, room: u64, thread: u64, seq: u64) {
        let ticket = st.next_ticket;
        if let Some(r) = st.rooms.get_mut(&room) {
            r.has_threads = Some(true);
        }
        st.pending_threads.insert((room, thread, seq), ticket);
        st.ops.push(Op::Thread { room, thread, seq });
    }

    pub(super) fn apply_edit(
        &self,
        st: &mut State,
        room: u64,
        seq: u64,
        pos: Pos,
        deleted: bool,
    ) -> Result<()> {
        if st.rooms.get(&room).is_some_and(|r| seq < r.low_seq) {
            return Ok(()); // retired (replay of a change to a retired message)
        }
        if !deleted && self.is_deleted(st, room, seq)? {
            // A delete is final; a racing edit is ignored, and its text is
            // never shown.
            self.note_hidden_text(st, pos.segment);
            return Ok(());
        }
        let ticket = st.next_ticket;
        if deleted {
            self.note_deleted(st, room, seq);
        }
        if let Some(r) = st.rooms.get_mut(&room) {
            r.has_edits = Some(true);
        }
        st.pending_edits
            .insert((room, seq), (ticket, pos.to_u64(), deleted));
        st.ops.push(Op::Edit {
            room,
            seq,
            pos: pos.to_u64(),
            deleted,
        });
        st.note_in_segment(pos.segment, room, seq);
        Ok(())
    }

    // ---- the committer -----------------------------------------------------

    /// The one task that writes the log. Loops: wait for work, take the
    /// queue as a batch, write (+ sync), apply, resolve, send index work.
    pub(super) async fn committer(self, mut writer: LogWriter) {
        let inner = self.inner.clone();
        let interval = Duration::from_millis(inner.cfg.checkpoint_interval_ms);
        let mut last_checkpoint = Instant::now();
        let mut last_sync = Instant::now();
        let mut positions = Vec::new();
        let mut sealed = Vec::new();
        self.announce(&writer);
        loop {
            let (has_work, wants_ckpt, closing) = {
                let st = inner.st.borrow();
                (
                    !inner.queue.borrow().items.is_empty(),
                    st.checkpoint_requested,
                    st.closing,
                )
            };
            if !has_work && !wants_ckpt {
                if closing {
                    break;
                }
                // Appends and the checkpoint ticker wake us. (A timer per
                // idle wait cost an io_uring timeout and its cancellation per
                // small batch; under load that starved the reactor.)
                inner.wake_committer.notified().await;
                continue;
            }
            if has_work {
                self.commit_window().await;
                if let Err(e) = self
                    .commit_one(&mut writer, &mut positions, &mut sealed, &mut last_sync)
                    .await
                {
                    self.fail(e.to_string());
                } else {
                    self.announce(&writer);
                }
            }
            let due = last_checkpoint.elapsed() >= interval;
            if inner.st.borrow().checkpoint_requested || due {
                inner.st.borrow_mut().checkpoint_requested = false;
                match self.checkpoint(&mut writer).await {
                    Ok(()) => last_checkpoint = Instant::now(),
                    Err(e) => self.fail(e.to_string()),
                }
            } else {
                let mut st = inner.st.borrow_mut();
                self.send_index(&mut st, false, Vec::new());
            }
            if inner.st.borrow().failed.is_some() {
                self.drain_failed();
                inner.index_progress.notify();
                if inner.st.borrow().closing {
                    break;
                }
                inner.wake_committer.notified().await;
            }
        }
        if inner.st.borrow().failed.is_none() {
            match writer.close().await {
                Ok(s) => self.sealed(s),
                Err(e) => self.fail(e.to_string()),
            }
        }
    }

    /// Tells readers outside the shard that everything the writer wrote
    /// is acknowledged (called once the batch's appends resolved).
    fn announce(&self, writer: &LogWriter) {
        if let Some(feed) = self.feed() {
            feed.publish(writer.end());
            if let Some(feeds) = &self.inner.feeds {
                feeds.doorbell().ring();
            }
        }
    }

    /// Waits up to `commit_window_us` for a small batch to grow.
    pub(super) async fn commit_window(&self) {
        let cfg = &self.inner.cfg;
        if cfg.commit_window_us == 0 {
            return;
        }
        let small = {
            let q = self.inner.queue.borrow();
            q.items.len() < cfg.commit_batch_records_max
                && q.frames.len() < cfg.commit_batch_bytes_max
        };
        if small {
            glommio::timer::sleep(Duration::from_micros(cfg.commit_window_us)).await;
        }
    }

    /// Takes the queue (up to the batch limits), writes it, syncs it as the
    /// mode says, applies it and resolves its appenders.
    pub(super) async fn commit_one(
        &self,
        writer: &mut LogWriter,
        positions: &mut Vec<Pos>,
        sealed: &mut Vec<Sealed>,
        last_sync: &mut Instant,
    ) -> Result<()> {
        let inner = &self.inner;
        let (frames, items, signal) = self.take_batch();
        let (frames, items) = cluster_by_room(frames, items);
        inner.queue.borrow_mut().inflight = Some(signal.clone());
        positions.clear();
        sealed.clear();
        let lens: Vec<u32> = items.iter().map(|q| q.len).collect();
        // In `sync` mode batches are written through: durable when the
        // write returns, no separate `fdatasync` (see `LogWriter`).
        let through = matches!(inner.cfg.durability, Durability::Sync) && inner.cfg.write_through;
        let outcome = async {
            writer
                .write(&frames, &lens, now_ms(), positions, sealed, through)
                .await?;
            let sync = match inner.cfg.durability {
                Durability::Sync => true,
                Durability::Batch { interval } => last_sync.elapsed() >= interval,
                Durability::None => false,
            };
            if sync {
                writer.sync().await?;
                *last_sync = Instant::now();
            }
            Ok::<_, Error>(sync)
        }
        .await;
        let result = match outcome {
            Ok(synced) => {
                for s in sealed.iter() {
                    self.sealed(*s);
                }
                // On an error the batch's appenders still get their answer
                // below (an early return would leave them waiting).
                self.apply_batch(&items, positions, writer.segment())
                    .map(|()| {
                        let mut st = inner.st.borrow_mut();
                        st.stats.batches += 1;
                        st.stats.records += items.len() as u64;
                        st.stats.bytes += frames.len() as u64;
                        st.stats.syncs += synced as u64 + sealed.len() as u64;
                        st.stats.unsynced_records += items.len() as u64;
                        if synced || !sealed.is_empty() {
                            st.stats.synced();
                        }
                    })
            }
            Err(e) => Err(e),
        };
        signal.complete(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        inner.queue.borrow_mut().inflight = None;
        result
    }

    pub(super) fn take_batch(&self) -> (Vec<u8>, Vec<Queued>, Rc<BatchSignal>) {
        let cfg = &self.inner.cfg;
        let mut q = self.inner.queue.borrow_mut();
        let (mut n, mut bytes) = (0, 0usize);
        while n < q.items.len()
            && n < cfg.commit_batch_records_max
            && (n == 0 || bytes + q.items[n].len as usize <= cfg.commit_batch_bytes_max)
        {
            bytes += q.items[n].len as usize;
            n += 1;
        }
        if n == q.items.len() {
            let frames = std::mem::take(&mut q.frames);
            let items = std::mem::take(&mut q.items);
            let signal = std::mem::replace(&mut q.signal, Rc::new(BatchSignal::default()));
            return (frames, items, signal);
        }
        // Split: the rest stays queued under the same signal, which resolves
        // with the later batch. The head gets a signal of its own, and the
        // appenders in it wait on the shared one — so resolve the head's
        // records via the shared signal only when all are done.
        let frames: Vec<u8> = q.frames.drain(..bytes).collect();
        let items: Vec<Queued> = q.items.drain(..n).collect();
        (frames, items, Rc::new(BatchSignal::default()))
    }

    pub(super) fn apply_batch(
        &self,
        items: &[Queued],
        positions: &[Pos],
        active: u32,
    ) -> Result<()> {
        let mut st = self.inner.st.borrow_mut();
        let st = &mut *st;
        if st.active != active {
            st.active = active;
            st.segments.entry(active).or_default();
        }
        for (q, pos) in items.iter().zip(positions) {
            match q.kind {
                QueuedKind::Message {
                    idem,
                    ts_ms,
                    thread,
                } => {
                    self.apply_message(
                        st,
                        q.room,
                        q.seq,
                        Entry {
                            pos: pos.to_u64(),
                            idem,
                            ts_ms,
                        },
                        pos.segment,
                    );
                    if thread != 0 {
                        Self::apply_reply(st, q.room, thread, q.seq);
                    }
                }
                QueuedKind::Edit { deleted } => {
                    self.apply_edit(st, q.room, q.seq, *pos, deleted)?
                }
                QueuedKind::React { slot } => {
                    let (key, on) = st
                        .queued_reactions
                        .remove(&(q.room, q.seq, slot))
                        .expect("a queued reaction is applied once");
                    Self::apply_react(st, key, on);
                    st.note_in_segment(pos.segment, q.room, q.seq);
                }
            }
        }
        st.ops_records += items.len();
        Ok(())
    }

    pub(super) fn sealed(&self, s: Sealed) {
        let mut st = self.inner.st.borrow_mut();
        st.segments.entry(s.segment).or_default().sealed_end = Some(s.end);
        st.maps.remove(&s.segment);
        st.readers.remove(&s.segment);
    }

    /// Syncs the log and sends a durable checkpoint of all dirty state.
    pub(super) async fn checkpoint(&self, writer: &mut LogWriter) -> Result<()> {
        let roll = std::mem::take(&mut self.inner.st.borrow_mut().roll_requested);
        if roll {
            if let Some(sealed) = writer.roll_if_written(now_ms()).await? {
                self.sealed(sealed);
                let mut st = self.inner.st.borrow_mut();
                st.active = writer.segment();
                let active = st.active;
                st.segments.entry(active).or_default();
                drop(st);
                // Readers outside the shard move on to the new segment now,
                // not at the next append: the sealed one is no longer held
                // by a reader that read all of it, and compaction may take
                // it (a deleted message's text leaves a quiet server too).
                self.announce(writer);
            }
        }
        writer.sync().await?;
        let synced = writer.synced();
        {
            let mut st = self.inner.st.borrow_mut();
            let st = &mut *st;
            st.stats.syncs += 1;
            st.stats.synced();
            let rooms: Vec<u64> = st.dirty_rooms.drain().collect();
            let mut last_seqs = Vec::with_capacity(rooms.len());
            for room in rooms {
                let r = &st.rooms[&room];
                let (row, open) = (r.row(), Chunk::clone(&r.open));
                last_seqs.push((room, row.last_seq));
                if !open.entries.is_empty() {
                    Self::send_chunk(st, room, open);
                }
                st.ops.push(Op::Room { room, row });
            }
            let segs: Vec<(u32, u64)> = st.dirty_segments.drain().collect();
            for (segment, room) in segs {
                if let Some(max_seq) = st.segments.get(&segment).and_then(|s| s.rooms.get(&room)) {
                    st.ops.push(Op::SegmentRoom {
                        segment,
                        room,
                        max_seq: *max_seq,
                    });
                }
            }
            st.ops.push(Op::Checkpoint(synced.to_u64()));
            let ticket = st.next_ticket;
            st.checkpoint_tickets.push_back((ticket, synced));
            self.send_index(st, true, last_seqs);
        }
        Ok(())
    }

    /// Sends the accumulated index ops as one batch to the index thread.
    pub(super) fn send_index(
        &self,
        st: &mut State,
        durable: bool,
        meta_last_seqs: Vec<(u64, u64)>,
    ) {
        if st.ops.is_empty() {
            return;
        }
        let batch = Batch {
            ops: std::mem::take(&mut st.ops),
            records: std::mem::take(&mut st.ops_records),
            ticket: st.next_ticket,
            durable,
            meta_last_seqs,
        };
        st.lag_records += batch.records;
        st.next_ticket += 1;
        st.stats.index_batches += 1;
        let sent = self
            .inner
            .index_tx
            .borrow()
            .as_ref()
            .map(|tx| tx.send(batch).is_ok());
        if sent != Some(true) {
            st.failed
                .get_or_insert_with(|| "index thread is gone".to_string());
        }
    }

    /// Task: receives commit reports from the index thread.
    pub(super) async fn index_acks(self, rx: flume::Receiver<Committed>) {
        while let Ok(c) = rx.recv_async().await {
            {
                let mut st = self.inner.st.borrow_mut();
                let st = &mut *st;
                if let Err(e) = c.result {
                    st.failed.get_or_insert(e);
                }
                st.acked_ticket = c.ticket;
                st.lag_records = st.lag_records.saturating_sub(c.records);
                st.pending_chunks.retain(|_, (t, _)| *t > c.ticket);
                st.pending_edits.retain(|_, (t, _, _)| *t > c.ticket);
                st.pending_threads.retain(|_, t| *t > c.ticket);
                st.pending_reactions.retain(|_, (t, _)| *t > c.ticket);
                while st
                    .checkpoint_tickets
                    .front()
                    .is_some_and(|(t, _)| *t <= c.ticket)
                {
                    let (_, pos) = st.checkpoint_tickets.pop_front().expect("checked");
                    st.checkpoint = pos;
                }
            }
            self.inner.index_progress.notify();
        }
    }

    pub(super) fn fail(&self, reason: String) {
        tracing::error!(shard = self.inner.shard, %reason, "shard store failed; refusing writes");
        self.inner.st.borrow_mut().failed.get_or_insert(reason);
    }

    /// After a failure, resolves everything queued with the failure.
    pub(super) fn drain_failed(&self) {
        let reason = self.inner.st.borrow().failed.clone().unwrap_or_default();
        let mut q = self.inner.queue.borrow_mut();
        q.frames.clear();
        q.items.clear();
        let signal = std::mem::replace(&mut q.signal, Rc::new(BatchSignal::default()));
        drop(q);
        signal.complete(Err(reason));
        self.inner.st.borrow_mut().checkpoint_requested = false;
    }
}

/// Asks the committer for a checkpoint every `checkpoint_interval_ms` while
/// some room has unindexed changes: one long-lived timer per shard.
pub(super) async fn checkpoint_ticker(inner: std::rc::Weak<Inner>) {
    let Some(interval) = inner
        .upgrade()
        .map(|i| Duration::from_millis(i.cfg.checkpoint_interval_ms))
    else {
        return;
    };
    loop {
        glommio::timer::sleep(interval).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut st = inner.st.borrow_mut();
        if st.closing {
            return;
        }
        if !st.dirty_rooms.is_empty() {
            st.checkpoint_requested = true;
            drop(st);
            inner.wake_committer.notify();
        }
    }
}
