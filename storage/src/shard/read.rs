//! The read side of a shard: index entries (open chunk, pending chunks,
//! redb), segment mappings, parallel prefetch of cold pages, and records
//! handed out in place.
//!
//! Invariant: only durable records are visible (reads are bounded by each
//! room's durable seq and low seq), and every record handed out has had its
//! frame checked and its archive validated.

use super::*;

/// A record read in place from a mapped segment: no copy, no deserialization.
#[derive(Clone)]
pub struct RecordRef {
    map: Rc<Mmap>,
    payload: u32,
    len: u32,
}

impl RecordRef {
    /// Checks the frame at `offset` of `map` and validates its archive.
    pub(super) fn read(map: &Rc<Mmap>, segment: u32, offset: u32) -> Result<RecordRef> {
        let start = offset as usize;
        let bytes = map
            .get(start..)
            .ok_or_else(|| Error::corrupt(segment, offset, "index points past the segment"))?;
        let (payload, _) =
            check_frame(bytes).map_err(|e| Error::corrupt(segment, offset, e.to_string()))?;
        access_record(payload).map_err(|e| Error::corrupt(segment, offset, e.to_string()))?;
        Ok(RecordRef {
            map: map.clone(),
            payload: offset + FRAME_HEADER_BYTES as u32,
            len: payload.len() as u32,
        })
    }

    /// The archived record.
    pub fn record(&self) -> &ArchivedRecord {
        let bytes = &self.map[self.payload as usize..(self.payload + self.len) as usize];
        // SAFETY: `read` checked the frame's CRC and validated these exact
        // bytes with `rkyv::access`; durable log bytes are never rewritten
        // with different content, and the mapping lives as long as `self`.
        unsafe { rkyv::access_unchecked::<ArchivedRecord>(bytes) }
    }
}

impl std::fmt::Debug for RecordRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.record().fmt(f)
    }
}

/// A message as history shows it: the original record and its latest edit
/// or delete, if any.
#[derive(Debug, Clone)]
pub struct HistoryItem {
    /// The message record.
    pub message: RecordRef,
    /// The latest edit or delete record of this message.
    pub latest_edit: Option<RecordRef>,
    /// How many replies the thread this message starts has (0: none, or
    /// the message is itself a reply).
    pub replies: u64,
    /// The seq of the last of those replies (0 with none).
    pub last_reply: u64,
}

impl HistoryItem {
    pub(super) fn msg(&self) -> &crate::record::ArchivedMessage {
        self.message
            .record()
            .message()
            .expect("history items are built from message records only")
    }
    /// `(to, thread)` when the message is a reply: the seq it answers and
    /// the first message of its thread.
    pub fn reply(&self) -> Option<(u64, u64)> {
        self.message.record().reply()
    }
    /// The uploads the message carries (none for most).
    pub fn files(&self) -> &[crate::record::ArchivedFileRef] {
        self.message.record().files()
    }
    /// The message's seq.
    pub fn seq(&self) -> u64 {
        self.msg().seq.to_native()
    }
    /// The author.
    pub fn sender(&self) -> u64 {
        self.msg().sender.to_native()
    }
    /// When it was posted.
    pub fn ts_ms(&self) -> u64 {
        self.msg().ts_ms.to_native()
    }
    /// The client's idempotency key.
    pub fn client_id(&self) -> &str {
        self.msg().client_id.as_str()
    }
    /// The body with edits applied; `None` when deleted.
    pub fn body(&self) -> Option<&str> {
        match self.latest_edit.as_ref().map(RecordRef::record) {
            Some(ArchivedRecord::Delete(_)) => None,
            Some(ArchivedRecord::Edit(e)) => Some(e.body.as_str()),
            _ => Some(self.msg().body.as_str()),
        }
    }
    /// True when the message was edited (and not deleted).
    pub fn edited(&self) -> bool {
        matches!(
            self.latest_edit.as_ref().map(RecordRef::record),
            Some(ArchivedRecord::Edit(_))
        )
    }
    /// True when the message was deleted.
    pub fn deleted(&self) -> bool {
        self.body().is_none()
    }
    /// Who made the latest edit or the delete, and when (ms since the
    /// Unix epoch); `None` for a message as posted.
    pub fn changed(&self) -> Option<(u64, u64)> {
        match self.latest_edit.as_ref().map(RecordRef::record) {
            Some(ArchivedRecord::Edit(e)) => Some((e.by.to_native(), e.ts_ms.to_native())),
            Some(ArchivedRecord::Delete(d)) => Some((d.by.to_native(), d.ts_ms.to_native())),
            _ => None,
        }
    }
}

/// One page of history.
#[derive(Debug, Clone)]
pub struct Page {
    /// The messages, in the cursor's order.
    pub items: Vec<HistoryItem>,
    /// The cursor for the next page in the same direction, if more exist.
    pub next: Option<Cursor>,
    /// Served from memory: every record was resident, nothing was read
    /// from disk for this page.
    pub cached: bool,
}

pub(super) const PAGE: usize = 4096;
/// Prefetch covers this many bytes from each record's start.
pub(super) const RECORD_BYTES_TYPICAL: usize = 512;

/// Index entries of messages and the positions of their latest changes,
/// by seq.
type Located = (Vec<(u64, Entry)>, HashMap<u64, u64>);

/// A page of a thread.
#[derive(Debug, Clone)]
pub struct ThreadPage {
    /// The thread's first message (its `replies` counts the thread).
    pub first: HistoryItem,
    /// Replies after the cursor, oldest first.
    pub items: Vec<HistoryItem>,
    /// The seq to pass as `after` for the next page, if more exist.
    pub next: Option<u64>,
    /// Served from memory: nothing was read from disk.
    pub cached: bool,
}

/// The entries and edits a history page needs, and its bounds.
pub(super) struct Plan {
    entries: Vec<(u64, Entry)>,
    edits: HashMap<u64, u64>,
    replies: HashMap<u64, (u64, u64)>,
    lo: u64,
    hi: u64,
    lo_page: u64,
    hi_page: u64,
}

/// Offsets of packed positions, grouped by segment.
pub(super) fn by_segment(positions: &[u64]) -> BTreeMap<u32, Vec<usize>> {
    let mut out: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for &p in positions {
        let pos = Pos::from_u64(p);
        out.entry(pos.segment)
            .or_default()
            .push(pos.offset as usize);
    }
    out
}

/// The pages holding `offsets` (and the next [`RECORD_BYTES_TYPICAL`] of
/// each record: a longer record faults its last page in on read) that are
/// not resident in the page cache.
pub(super) fn cold_pages(map: &Mmap, offsets: &[usize]) -> Vec<usize> {
    let (Some(&lo), Some(&hi)) = (offsets.iter().min(), offsets.iter().max()) else {
        return Vec::new();
    };
    if map.is_empty() || lo >= map.len() {
        return Vec::new();
    }
    let first = lo / PAGE;
    let last = (hi + RECORD_BYTES_TYPICAL).min(map.len() - 1) / PAGE;
    let mut resident = vec![0u8; last - first + 1];
    // SAFETY: the range starts page-aligned inside the mapping and ends at or
    // before its last byte; `resident` has one byte per page of the range.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr().add(first * PAGE) as *mut libc::c_void,
            (last - first + 1) * PAGE,
            resident.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Vec::new(); // advisory only
    }
    let mut pages: Vec<usize> = offsets
        .iter()
        .flat_map(|&o| (o / PAGE)..=((o + RECORD_BYTES_TYPICAL).min(map.len() - 1) / PAGE))
        .filter(|p| resident[p - first] & 1 == 0)
        .collect();
    pages.sort_unstable();
    pages.dedup();
    pages
}

/// Pages to read at most in one request (a run of consecutive cold pages
/// longer than this is split).
pub(super) const READ_RUN_PAGES_MAX: usize = 32;

/// Consecutive runs `(first page, pages)` of sorted, distinct `pages`: one
/// read each. A compacted room's page of history is a few consecutive
/// pages: one device request instead of one per page.
pub(super) fn page_runs(pages: &[usize]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &p in pages {
        match runs.last_mut() {
            Some((first, n)) if *first + *n == p && *n < READ_RUN_PAGES_MAX => *n += 1,
            _ => runs.push((p, 1)),
        }
    }
    runs
}

/// Whether redb may hold rows of one kind (edits, threads, reactions) for
/// `room`: the room's flag (`flag`), looked up once. Rows not yet committed
/// (`pending`) count: they reach redb after this look, and the flag would
/// stay false.
pub(super) fn room_has(
    st: &mut State,
    room: u64,
    flag: fn(&mut Room) -> &mut Option<bool>,
    pending: impl FnOnce(&State) -> bool,
    in_redb: impl FnOnce() -> Result<bool>,
) -> Result<bool> {
    if let Some(known) = st.rooms.get_mut(&room).and_then(|r| *flag(r)) {
        return Ok(known);
    }
    let any = pending(st) || in_redb()?;
    if let Some(r) = st.rooms.get_mut(&room) {
        *flag(r) = Some(any);
    }
    Ok(any)
}

impl ShardStore {
    /// Index entries of seqs `lo..=hi` of a room, ascending; absent ones
    /// (which should not exist below `durable_seq`) are an error.
    pub(super) fn entries(
        &self,
        st: &mut State,
        room: u64,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<(u64, Entry)>> {
        let mut out = Vec::with_capacity((hi + 1 - lo) as usize);
        let mut seq = lo;
        while seq <= hi {
            let no = chunk_of(seq);
            let chunk = self.chunk(st, room, no)?;
            let end = hi.min((no + 1) * chunk::CHUNK_LEN);
            for s in seq..=end {
                let e = chunk.as_ref().and_then(|c| c.get(s)).ok_or_else(|| {
                    Error::IndexMismatch(format!("no index entry for room {room} seq {s}"))
                })?;
                out.push((s, e));
            }
            seq = end + 1;
        }
        Ok(out)
    }

    pub(super) fn chunk(&self, st: &mut State, room: u64, no: u64) -> Result<Option<Rc<Chunk>>> {
        if let Some(r) = st.rooms.get(&room) {
            if r.open.no == no {
                return Ok(Some(r.open.clone()));
            }
        }
        if let Some((_, c)) = st.pending_chunks.get(&(room, no)) {
            return Ok(Some(c.clone()));
        }
        if let Some(c) = st.chunk_cache.get(&(room, no)) {
            return Ok(Some(c.clone()));
        }
        st.stats.index_chunk_reads += 1;
        let Some(bytes) = index::read_chunk(&self.inner.db, room, no)? else {
            return Ok(None);
        };
        let chunk = Rc::new(Chunk::decode(no, &bytes)?);
        if st.chunk_cache.len() >= CHUNK_CACHE_LEN_MAX {
            // Bounded simply: start over (a hot set refills in one page each).
            st.chunk_cache.clear();
        }
        st.chunk_cache.insert((room, no), chunk.clone());
        Ok(Some(chunk))
    }

    pub(super) fn map(&self, st: &mut State, segment: u32) -> Result<Rc<Mmap>> {
        if let Some(m) = st.maps.get(&segment) {
            return Ok(m.clone());
        }
        let path = segment::path(&self.inner.log_dir, segment);
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: segment bytes below a durable position are never modified
        // (rewrites of the tail block write identical bytes), and files are
        // only truncated to their data end; we read only durable frames.
        let map = Rc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?);
        st.maps.insert(segment, map.clone());
        Ok(map)
    }

    pub(super) fn read_at(&self, st: &mut State, pos: Pos) -> Result<RecordRef> {
        let map = self.map(st, pos.segment)?;
        RecordRef::read(&map, pos.segment, pos.offset)
    }

    /// One message with edits applied, if it exists and is live.
    pub async fn get(&self, room: u64, seq: u64) -> Result<Option<HistoryItem>> {
        let page = self
            .history(
                room,
                Cursor {
                    after: Some(seq.saturating_sub(1)),
                    before: Some(seq.saturating_add(1)),
                    limit: 1,
                    order: Order::OldestFirst,
                },
            )
            .await?;
        Ok(page.items.into_iter().next())
    }

    /// A page of history, read in place from the log (records not in the
    /// page cache are first read in parallel through io_uring).
    pub async fn history(&self, room: u64, cursor: Cursor) -> Result<Page> {
        let positions = {
            let mut st = self.inner.st.borrow_mut();
            let Some(plan) = self.plan(&mut st, room, cursor)? else {
                return Ok(Page {
                    items: Vec::new(),
                    next: None,
                    cached: true,
                });
            };
            let positions: Vec<u64> = plan
                .entries
                .iter()
                .map(|(_, e)| e.pos)
                .chain(plan.edits.values().copied())
                .collect();
            if !self.any_cold(&mut st, &positions)? {
                return self.assemble(&mut st, room, cursor, plan);
            }
            positions
        };
        self.prefetch(positions).await?;
        // The state may have moved on while the reads ran: plan again.
        let mut page = self.history_now(room, cursor)?;
        page.cached = false;
        Ok(page)
    }

    /// Index entries and edit positions of the page `cursor` asks for.
    pub(super) fn plan(&self, st: &mut State, room: u64, cursor: Cursor) -> Result<Option<Plan>> {
        let Some(r) = st.rooms.get(&room) else {
            return Ok(None);
        };
        let lo = cursor
            .after
            .map_or(1, |a| a.saturating_add(1))
            .max(r.low_seq);
        let hi = cursor
            .before
            .map_or(r.durable_seq, |b| b.saturating_sub(1))
            .min(r.durable_seq);
        let limit = cursor.limit.max(1) as u64;
        if lo > hi {
            return Ok(None);
        }
        let (lo_page, hi_page) = match cursor.order {
            Order::NewestFirst => (hi.saturating_sub(limit - 1).max(lo), hi),
            Order::OldestFirst => (lo, lo.saturating_add(limit - 1).min(hi)),
        };
        let entries = self.entries(st, room, lo_page, hi_page)?;
        let edits = self.edits(st, room, lo_page, hi_page)?;
        let replies = self.thread_lens(st, room, lo_page, hi_page)?;
        Ok(Some(Plan {
            entries,
            edits,
            replies,
            lo,
            hi,
            lo_page,
            hi_page,
        }))
    }

    /// A page of history from what is mapped now (no prefetch).
    pub fn history_now(&self, room: u64, cursor: Cursor) -> Result<Page> {
        let mut st = self.inner.st.borrow_mut();
        match self.plan(&mut st, room, cursor)? {
            Some(plan) => self.assemble(&mut st, room, cursor, plan),
            None => Ok(Page {
                cached: true,
                items: Vec::new(),
                next: None,
            }),
        }
    }

    /// Reads the records of a plan (in place) into a page.
    pub(super) fn assemble(
        &self,
        st: &mut State,
        room: u64,
        cursor: Cursor,
        plan: Plan,
    ) -> Result<Page> {
        let Plan {
            entries,
            edits,
            replies,
            lo,
            hi,
            lo_page,
            hi_page,
        } = plan;
        let mut items = self.read_items(st, room, entries, &edits, &replies)?;
        let next = match cursor.order {
            Order::NewestFirst => {
                items.reverse();
                (lo_page > lo).then_some(Cursor {
                    before: Some(lo_page),
                    ..cursor
                })
            }
            Order::OldestFirst => (hi_page < hi).then_some(Cursor {
                after: Some(hi_page),
                ..cursor
            }),
        };
        Ok(Page {
            items,
            next,
            cached: true,
        })
    }

    /// The records of index entries, with their latest changes and thread
    /// lengths, checked to be the messages they are said to be.
    fn read_items(
        &self,
        st: &mut State,
        room: u64,
        entries: Vec<(u64, Entry)>,
        edits: &HashMap<u64, u64>,
        replies: &HashMap<u64, (u64, u64)>,
    ) -> Result<Vec<HistoryItem>> {
        let mut items = Vec::with_capacity(entries.len());
        for (seq, e) in entries {
            let message = self.read_at(st, Pos::from_u64(e.pos))?;
            let rec = message.record();
            if rec.seq() != seq || rec.room() != room || rec.message().is_none() {
                return Err(Error::IndexMismatch(format!(
                    "room {room} seq {seq} points at another record"
                )));
            }
            let latest_edit = match edits.get(&seq) {
                Some(pos) => Some(self.read_at(st, Pos::from_u64(*pos))?),
                None => None,
            };
            items.push(HistoryItem {
                message,
                latest_edit,
                replies: replies.get(&seq).map_or(0, |r| r.0),
                last_reply: replies.get(&seq).map_or(0, |r| r.1),
            });
        }
        Ok(items)
    }

    /// `(replies, last reply's seq)` of each thread that starts in
    /// `lo..=hi`, committed and
    /// pending (a pending row the committed head already counts, one at
    /// or below its last seq, is not counted twice).
    pub(super) fn thread_lens(
        &self,
        st: &mut State,
        room: u64,
        lo: u64,
        hi: u64,
    ) -> Result<HashMap<u64, (u64, u64)>> {
        let has_threads = room_has(
            st,
            room,
            |r| &mut r.has_threads,
            |st| {
                st.pending_threads
                    .range((room, 0, 0)..=(room, u64::MAX, u64::MAX))
                    .next()
                    .is_some()
            },
            || index::has_threads(&self.inner.db, room),
        )?;
        let mut heads: HashMap<u64, (u64, u64)> = HashMap::new();
        if !has_threads || lo > hi {
            return Ok(HashMap::new());
        }
        for (thread, n, last) in index::read_thread_heads(&self.inner.db, room, lo, hi)? {
            heads.insert(thread, (n, last));
        }
        for &(_, thread, seq) in st
            .pending_threads
            .range((room, lo, 0)..=(room, hi, u64::MAX))
            .map(|(k, _)| k)
        {
            let h = heads.entry(thread).or_insert((0, 0));
            if seq > h.1 {
                *h = (h.0 + 1, seq);
            }
        }
        Ok(heads)
    }

    /// Up to `len` live replies of a thread above `after`, ascending:
    /// committed rows and pending ones.
    fn thread_seqs(
        &self,
        st: &State,
        room: u64,
        thread: u64,
        after: u64,
        len: usize,
    ) -> Result<Vec<u64>> {
        let Some(r) = st.rooms.get(&room) else {
            return Ok(Vec::new());
        };
        let (low, durable) = (r.low_seq, r.durable_seq);
        let mut seqs: BTreeSet<u64> = index::read_thread(&self.inner.db, room, thread, after, len)?
            .into_iter()
            .collect();
        if after < u64::MAX {
            seqs.extend(
                st.pending_threads
                    .range((room, thread, after + 1)..=(room, thread, u64::MAX))
                    .map(|(k, _)| k.2),
            );
        }
        Ok(seqs
            .into_iter()
            .filter(|&s| s >= low && s <= durable)
            .take(len)
            .collect())
    }

    /// A page of the thread message `seq` of `room` is in (the thread it
    /// starts, or the one it replies in): the thread's first message, then
    /// up to `limit` replies with seqs above `after`, oldest first. `None`
    /// when `seq` or the thread's first message is not stored (never was,
    /// or retired); a deleted message keeps its place and its thread.
    pub async fn thread(
        &self,
        room: u64,
        seq: u64,
        after: u64,
        limit: usize,
    ) -> Result<Option<ThreadPage>> {
        let Some(item) = self.get(room, seq).await? else {
            return Ok(None);
        };
        let thread = item.reply().map_or(seq, |(_, t)| t);
        let first = if thread == seq {
            item
        } else {
            match self.get(room, thread).await? {
                Some(first) => first,
                None => return Ok(None),
            }
        };
        let limit = limit.max(1);
        let mut cached = true;
        let positions = {
            let mut st = self.inner.st.borrow_mut();
            let seqs = self.thread_seqs(&st, room, thread, after, limit.saturating_add(1))?;
            let (entries, edits) = self.entries_of(&mut st, room, &seqs)?;
            let positions: Vec<u64> = entries
                .iter()
                .map(|(_, e)| e.pos)
                .chain(edits.values().copied())
                .collect();
            self.any_cold(&mut st, &positions)?.then_some(positions)
        };
        if let Some(positions) = positions {
            self.prefetch(positions).await?;
            cached = false;
        }
        // The state may have moved on while the reads ran: read again.
        let mut st = self.inner.st.borrow_mut();
        let mut seqs = self.thread_seqs(&st, room, thread, after, limit.saturating_add(1))?;
        let more = seqs.len() > limit;
        seqs.truncate(limit);
        let (entries, edits) = self.entries_of(&mut st, room, &seqs)?;
        let items = self.read_items(&mut st, room, entries, &edits, &HashMap::new())?;
        let next = more.then(|| *seqs.last().expect("more than limit"));
        let replies = self.thread_lens(&mut st, room, thread, thread)?;
        Ok(Some(ThreadPage {
            first: HistoryItem {
                replies: replies.get(&thread).map_or(0, |r| r.0),
                last_reply: replies.get(&thread).map_or(0, |r| r.1),
                ..first
            },
            items,
            next,
            cached,
        }))
    }

    /// Index entries and latest changes of scattered seqs of a room.
    fn entries_of(&self, st: &mut State, room: u64, seqs: &[u64]) -> Result<Located> {
        let mut entries = Vec::with_capacity(seqs.len());
        let mut edits = HashMap::new();
        for &s in seqs {
            entries.extend(self.entries(st, room, s, s)?);
            edits.extend(self.edits(st, room, s, s)?);
        }
        Ok((entries, edits))
    }

    /// Unmaps every segment mapping this shard holds for reads; the next read
    /// maps again. Lets the OS evict the pages (used by `rookery-bench` to
    /// measure cold reads; mapped pages cannot be evicted otherwise). The
    /// prefetch handles stay open: an open file pins no page.
    pub fn release_mappings(&self) {
        self.inner.st.borrow_mut().maps.clear();
    }

    /// Reads into the page cache, in parallel through io_uring, the pages of
    /// these positions that are not resident, so a cold page of history
    /// costs about one device round trip instead of one per record (page
    /// faults on a mapping are served one at a time). Hot pages cost one
    /// `mincore` call per segment touched and no I/O.
    pub(super) async fn prefetch(&self, positions: Vec<u64>) -> Result<()> {
        let mut reads = Vec::new();
        for (segment, offsets) in by_segment(&positions) {
            // Advisory: a segment compaction deleted since the plan was made
            // is skipped (the caller plans again after the prefetch).
            let map = {
                let mut st = self.inner.st.borrow_mut();
                match self.map(&mut st, segment) {
                    Ok(map) => map,
                    Err(_) if st.failed.is_none() => continue,
                    Err(e) => return Err(e),
                }
            };
            let pages = cold_pages(&map, &offsets);
            if pages.is_empty() {
                continue;
            }
            let Ok(file) = self.reader(segment).await else {
                continue;
            };
            for (first, count) in page_runs(&pages) {
                let file = file.clone();
                // Tasks, not bare futures: all reads must be in flight at once.
                reads.push(glommio::spawn_local(async move {
                    file.read_at((first * PAGE) as u64, count * PAGE)
                        .await
                        .map(|_| ())
                }));
            }
        }
        for r in reads {
            r.await.map_err(|e| Error::Glommio(e.to_string()))?;
        }
        Ok(())
    }

    /// True when any of these positions is on a page not in the page cache.
    pub(super) fn any_cold(&self, st: &mut State, positions: &[u64]) -> Result<bool> {
        for (segment, offsets) in by_segment(positions) {
            let map = self.map(st, segment)?;
            if !cold_pages(&map, &offsets).is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A buffered io_uring handle on a segment, for prefetching.
    pub(super) async fn reader(&self, segment: u32) -> Result<Rc<glommio::io::BufferedFile>> {
        if let Some(f) = self.inner.st.borrow().readers.get(&segment) {
            return Ok(f.clone());
        }
        let path = segment::path(&self.inner.log_dir, segment);
        let f = Rc::new(
            glommio::io::BufferedFile::open(&path)
                .await
                .map_err(|e| Error::Glommio(format!("opening {}: {e}", path.display())))?,
        );
        {
            use std::os::fd::AsRawFd;
            // History reads are random: no kernel readahead around them (a
            // cold page of history would otherwise read 128 KiB for 16).
            // SAFETY: fadvise on an open descriptor; advisory.
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM);
            }
        }
        let mut st = self.inner.st.borrow_mut();
        // A segment compacted away while it opened keeps no handle (the
        // handle would hold the deleted file's blocks until close).
        if st.segments.contains_key(&segment) {
            st.readers.insert(segment, f.clone());
        }
        Ok(f)
    }

    /// Latest edit/delete positions for seqs `lo..=hi`.
    pub(super) fn edits(
        &self,
        st: &mut State,
        room: u64,
        lo: u64,
        hi: u64,
    ) -> Result<HashMap<u64, u64>> {
        // A room without edit rows reads none (most rooms, most pages);
        // whether it has any is looked up once.
        let has_edits = room_has(
            st,
            room,
            |r| &mut r.has_edits,
            |st| {
                st.pending_edits
                    .range((room, 0)..=(room, u64::MAX))
                    .next()
                    .is_some()
            },
            || index::has_edits(&self.inner.db, room),
        )?;
        let mut out: HashMap<u64, u64> = if has_edits {
            index::read_edits(&self.inner.db, room, lo, hi)?
                .into_iter()
                .map(|(s, p, _)| (s, p))
                .collect()
        } else {
            HashMap::new()
        };
        for (&(_, seq), &(_, pos, _)) in st.pending_edits.range((room, lo)..=(room, hi)) {
            out.insert(seq, pos);
        }
        Ok(out)
    }

    /// Is message (room, seq) deleted, according to the durable state?
    pub(super) fn is_deleted(&self, st: &State, room: u64, seq: u64) -> Result<bool> {
        Ok(self
            .latest_change(st, room, seq)?
            .is_some_and(|(_, deleted)| deleted))
    }

    /// The latest edit or delete `(pos, deleted)` of message (room, seq):
    /// one not yet committed to the index, else the index's.
    pub(super) fn latest_change(
        &self,
        st: &State,
        room: u64,
        seq: u64,
    ) -> Result<Option<(u64, bool)>> {
        if let Some(&(_, pos, deleted)) = st.pending_edits.get(&(room, seq)) {
            return Ok(Some((pos, deleted)));
        }
        Ok(index::read_edits(&self.inner.db, room, seq, seq)?
            .first()
            .map(|&(_, pos, deleted)| (pos, deleted)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_runs_join_consecutive_pages_up_to_the_bound() {
        assert_eq!(page_runs(&[]), Vec::<(usize, usize)>::new());
        assert_eq!(
            page_runs(&[3, 4, 5, 9, 11, 12]),
            vec![(3, 3), (9, 1), (11, 2)]
        );
        let long: Vec<usize> = (100..100 + READ_RUN_PAGES_MAX + 3).collect();
        assert_eq!(
            page_runs(&long),
            vec![(100, READ_RUN_PAGES_MAX), (100 + READ_RUN_PAGES_MAX, 3)]
        );
    }
}
