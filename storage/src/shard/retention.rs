//! Retention: per-room limits by count and age, low seqs made durable in
//! `meta.redb` before anything is deleted, and deletion of sealed segments
//! that hold nothing live (and nothing a reader outside the shard holds).

use super::*;

impl ShardStore {
    /// Sets a room's retention limits, durably (applied by
    /// [`ShardStore::enforce_retention`]).
    pub async fn set_retention(&self, room: u64, retention: Retention) -> Result<()> {
        let (km, ka) = (
            retention.max_messages.unwrap_or(0),
            retention.max_age_ms.unwrap_or(0),
        );
        if let Some(meta) = self.inner.meta.clone() {
            glommio::executor()
                .spawn_blocking(move || meta.set_retention(room, km, ka))
                .await?;
        }
        let mut st = self.inner.st.borrow_mut();
        let r = st.rooms.entry(room).or_insert_with(|| Room::new(1));
        r.keep_messages = km;
        r.keep_age_ms = ka;
        st.dirty_rooms.insert(room);
        Ok(())
    }

    /// A room's retention limits.
    pub fn retention(&self, room: u64) -> Retention {
        let st = self.inner.st.borrow();
        st.rooms
            .get(&room)
            .map_or(Retention::default(), |r| Retention {
                max_messages: (r.keep_messages > 0).then_some(r.keep_messages),
                max_age_ms: (r.keep_age_ms > 0).then_some(r.keep_age_ms),
            })
    }

    /// Applies every room's retention at time `now_ms`: moves low seqs,
    /// makes that durable, then deletes sealed segments that hold nothing
    /// live.
    pub async fn enforce_retention(&self, now_ms: u64) -> Result<RetentionReport> {
        let _turn = self.maintenance_open().await?;
        let mut report = RetentionReport::default();
        let mut lows = Vec::new();
        {
            let mut st = self.inner.st.borrow_mut();
            let st = &mut *st;
            let rooms: Vec<u64> = st
                .rooms
                .iter()
                .filter(|(_, r)| r.keep_messages > 0 || r.keep_age_ms > 0)
                .map(|(id, _)| *id)
                .collect();
            for room in rooms {
                let new_low = self.retention_low(st, room, now_ms)?;
                let retired = raise_low(st, room, new_low);
                if retired > 0 {
                    report.messages_expired += retired;
                    lows.push((room, new_low));
                }
            }
        }
        // The new low seqs are durable before any segment goes.
        report.uploads_freed = self.persist_lows(lows).await?;
        let dead: Vec<(u32, u64)> = {
            let st = self.inner.st.borrow();
            st.segments
                .iter()
                .filter(|(id, info)| {
                    (**id < st.checkpoint.segment || segment::is_compacted(**id))
                        && !self.held(**id)
                        && info.sealed_end.is_some()
                        && info
                            .rooms
                            .iter()
                            .all(|(room, max)| st.rooms.get(room).is_none_or(|r| *max < r.low_seq))
                })
                .map(|(id, info)| (*id, info.sealed_end.unwrap_or(0) as u64))
                .collect()
        };
        for (id, bytes) in dead {
            let path = segment::path(&self.inner.log_dir, id);
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            let mut st = self.inner.st.borrow_mut();
            st.segments.remove(&id);
            st.maps.remove(&id);
            st.readers.remove(&id);
            st.scrub.remove(&id);
            st.ops.push(Op::DropSegment { segment: id });
            report.segments_deleted += 1;
            report.bytes_reclaimed += bytes;
        }
        if report.segments_deleted > 0 {
            sync_dir(&self.inner.log_dir)?;
        }
        Ok(report)
    }

    /// The low seq a room's retention asks for at `now_ms`.
    pub(super) fn retention_low(&self, st: &mut State, room: u64, now_ms: u64) -> Result<u64> {
        let r = &st.rooms[&room];
        let (low, last, keep, age) = (r.low_seq, r.durable_seq, r.keep_messages, r.keep_age_ms);
        let mut new_low = low;
        if keep > 0 && last >= keep {
            new_low = new_low.max(last + 1 - keep);
        }
        if age > 0 && last >= new_low {
            // Timestamps never decrease within a room: binary search for the
            // first seq young enough.
            let cutoff = now_ms.saturating_sub(age);
            let (mut a, mut b) = (new_low, last + 1);
            while a < b {
                let mid = a + (b - a) / 2;
                let e = self.entries(st, room, mid, mid)?[0].1;
                if e.ts_ms < cutoff {
                    a = mid + 1;
                } else {
                    b = mid;
                }
            }
            new_low = a;
        }
        Ok(new_low)
    }

    /// Retires every message of `room` (the room was deleted): waits until
    /// what is queued is durable, then raises the room's low seq past its
    /// last seq, durably in `meta.redb`, before answering; the next
    /// compaction or retention pass removes their text from disk. Returns
    /// how many messages it retired, and the uploads only they held.
    ///
    /// The caller makes sure no append of the room is under way (nothing
    /// appended to it after this is retired).
    pub async fn retire_room(&self, room: u64) -> Result<Retired> {
        let _turn = self.maintenance_open().await?;
        // Everything queued now (the room's last appends among it) is
        // durable once the queue's current batch is.
        let pending = {
            let q = self.inner.queue.borrow();
            match q.items.is_empty() {
                false => Some(q.signal.clone()),
                true => q.inflight.clone(),
            }
        };
        if let Some(signal) = pending {
            signal.wait().await.map_err(Error::Failed)?;
        }
        let (low, retired) = {
            let mut st = self.inner.st.borrow_mut();
            let Some(r) = st.rooms.get_mut(&room) else {
                return Ok(Retired::default());
            };
            if r.durable_seq + 1 != r.next_seq {
                // The caller's contract, broken: refused, not retired under
                // an append.
                return Err(Error::InvalidInput(format!(
                    "room {room} has appends under way: it cannot be retired now"
                )));
            }
            let low = r.next_seq;
            let retired = raise_low(&mut st, room, low);
            if retired > 0 {
                // Its idempotency window is read again (from the low seq).
                st.rooms.get_mut(&room).expect("present").idem = None;
            }
            (low, retired)
        };
        let uploads_freed = match retired {
            0 => Vec::new(),
            _ => self.persist_lows(vec![(room, low)]).await?,
        };
        Ok(Retired {
            messages: retired,
            uploads_freed,
        })
    }

    /// Makes raised low seqs durable in `meta.redb` (the retired messages'
    /// hold on their uploads goes with them: the ids of the uploads that
    /// frees are returned), then writes a checkpoint (with their `Retire`
    /// ops).
    async fn persist_lows(&self, lows: Vec<(u64, u64)>) -> Result<Vec<u128>> {
        let mut freed = Vec::new();
        if let (Some(meta), false) = (self.inner.meta.clone(), lows.is_empty()) {
            let uploads = glommio::executor()
                .spawn_blocking(move || meta.advance_low_seqs(&lows))
                .await?;
            freed = uploads.into_iter().map(|u| u.id).collect();
        }
        self.checkpoint_now().await?;
        Ok(freed)
    }
}

/// Raises `room`'s low seq to `low` if that is higher (its index below it
/// dropped at the next checkpoint); how many messages that retired.
fn raise_low(st: &mut State, room: u64, low: u64) -> u64 {
    let r = st.rooms.get_mut(&room).expect("a room with a state");
    if low <= r.low_seq {
        return 0;
    }
    let retired = low - r.low_seq;
    r.low_seq = low;
    st.ops.push(Op::Retire { room, low_seq: low });
    st.dirty_rooms.insert(room);
    retired
}
