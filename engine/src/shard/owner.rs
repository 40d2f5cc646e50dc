//! The rooms a shard owns: posts made durable and released in seq order
//! to the tail cache and fan-out, edits and deletes, typing, history pages
//! and catch-up pages, read receipts.
//!
//! Invariants: fan-out of a room is in seq order with no gap (the room's
//! [`Sequencer`]); the tail caches of the shard's rooms hold at most
//! `tail_cache_bytes_max` bytes, one room at most a quarter of it; a
//! subscriber's first page is served only after its user's access was
//! checked here, in order with the room's member changes.

use std::rc::Rc;
use std::time::Instant;

use rookery_storage::meta::SERVER_USER;
use rookery_storage::{Appended, Cursor, HistoryItem, Order, Role};
use rustc_hash::FxHashMap as HashMap;

use super::mesh::PageOutcome;
use super::room::{Sequencer, Tail};
use super::types::{
    Attachment, HistoryPage, PostAck, Quote, ReadState, Reply, ReplyTo, StoredMessage, ThreadPage,
    QUOTE_BYTES_MAX,
};
use super::{now_ms, send, Shard};
use crate::error::{Error, Result};
use crate::event::{Event, Message};
use crate::metrics::micros;
use crate::receipts::Receipt;

/// A room this shard owns.
pub(super) struct Owned {
    pub(super) tail: Tail,
    /// The shard's use counter when its tail was last added to or read
    /// (the least recently used tails are dropped first).
    pub(super) used: u64,
    /// Shards (other than this one) with subscribers of the room.
    pub(super) remote: Vec<bool>,
    /// Releases durable messages to fan-out in seq order.
    pub(super) seq: Sequencer,
    /// Online users: the number of shards where each has a subscription.
    pub(super) online: HashMap<u64, u32>,
    pub(super) typing_last: HashMap<u64, Instant>,
}

impl Shard {
    pub(super) fn ensure_owned(&self, room: u64) {
        debug_assert_eq!(self.owner(room), self.id);
        self.owned
            .borrow_mut()
            .entry(room)
            .or_insert_with(|| Owned {
                tail: Tail::default(),
                used: 0,
                remote: vec![false; self.n],
                seq: Sequencer::new(self.store.last_seq(room)),
                online: HashMap::default(),
                typing_last: HashMap::default(),
            });
    }

    /// A post from this shard's own thread (see [`crate::Local::post`]):
    /// run here when this shard owns the room, else sent to its owner over
    /// the shards' mesh (with the turn's other traffic to it).
    pub(crate) async fn post_from_here(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        body: &str,
        to: Option<u64>,
        files: Vec<u128>,
    ) -> Result<PostAck> {
        if self.closing.get() {
            return Err(Error::ShutDown);
        }
        if self.owner(room) == self.id {
            self.post(room, sender, client_id, body, to, files).await
        } else {
            self.post_remote(room, sender, client_id, body, to, files)
                .await
        }
    }

    /// A post (a reply to `to` when given, carrying the sender's uploads
    /// `files`), run on the room's owner. A message with files may have an
    /// empty body.
    pub(super) async fn post(
        &self,
        room: u64,
        sender: u64,
        client_id: &str,
        body: &str,
        to: Option<u64>,
        files: Vec<u128>,
    ) -> Result<PostAck> {
        if files.is_empty() {
            require_text(body)?;
        } else {
            // Everything storage would refuse, refused before any upload
            // counts the message.
            check_files(&files)?;
            let limits = &self.cfg.storage;
            if body.len() > limits.body_bytes_max || client_id.len() > limits.client_id_bytes_max {
                return Err(Error::InvalidInput(format!(
                    "a body is at most {} bytes, a client_id {}",
                    limits.body_bytes_max, limits.client_id_bytes_max
                )));
            }
        }
        self.may_post(room, sender).await?;
        // Taken right after the access check, as for any post: a room's
        // deletion waits for the turns taken before it.
        let _turn = self.appending(room);
        // The answered message is read before the append: a cold read
        // then holds back no later post's fan-out (they go in seq order).
        let reply = match to {
            None => None,
            Some(to) => match self.reply_to(room, to).await {
                Ok(reply) => Some(reply),
                // Storage answers a repeat with the original seq even if
                // the message it answered is gone since; else NotFound.
                Err(Error::NotFound(_)) if !client_id.is_empty() => None,
                Err(e) => return Err(e),
            },
        };
        // Each upload counts this message before it is stored: a crash
        // between leaves a count too many (the upload is kept), never one
        // too few (an upload freed while a message shows it).
        let attached = self.attach(sender, &files).await?;
        self.ensure_owned(room);
        let started = Instant::now();
        let appended = match (to, attached.is_empty()) {
            (None, true) => {
                self.store
                    .append_message(room, sender, client_id, now_ms(), body)
                    .await
            }
            (Some(to), true) => {
                self.store
                    .append_reply(room, sender, client_id, now_ms(), body, to)
                    .await
            }
            (to, false) => {
                let refs = attached.iter().map(Attachment::to_ref).collect();
                let to = to.unwrap_or(0);
                self.store
                    .append_post(room, sender, client_id, now_ms(), body, to, refs)
                    .await
            }
        };
        let appended = match appended {
            // A retry stores nothing new, and a refusal stored nothing: the
            // counts taken for them go back. A failed write may be on disk
            // (recovery replays it): its counts stay.
            Ok(Appended::Duplicate { .. })
            | Err(
                rookery_storage::Error::InvalidInput(_)
                | rookery_storage::Error::NotFound(_)
                | rookery_storage::Error::TooMany(_),
            ) if !files.is_empty() => {
                self.detach(files.clone()).await;
                appended?
            }
            other => other?,
        };
        self.latency
            .borrow_mut()
            .commit_us
            .saturating_record(micros(started.elapsed()));
        match appended {
            Appended::Duplicate { seq, ts_ms } => {
                self.counters.borrow_mut().duplicates += 1;
                Ok(PostAck {
                    seq,
                    ts_ms,
                    duplicate: true,
                })
            }
            Appended::New { seq, ts_ms } => {
                self.counters.borrow_mut().posts += 1;
                if !files.is_empty() {
                    // Durable: the message holds its uploads from now on
                    // (before the sender hears of it, so that a delete
                    // always finds what to let go).
                    self.hold(room, seq, files.clone()).await;
                }
                if sender != SERVER_USER {
                    self.note_own_read(room, sender, seq);
                }
                let mut m = Message::live(room, seq, sender, ts_ms, Some(body), false).threaded(
                    reply.as_ref(),
                    0,
                    0,
                );
                m.files = attached.iter().map(Attachment::view).collect();
                self.completed(room, Event::encode_message(room, &m));
                Ok(PostAck {
                    seq,
                    ts_ms,
                    duplicate: false,
                })
            }
        }
    }

    /// Counts a message more for each of `sender`'s uploads `ids` (off the
    /// reactor); the uploads as the message carries them. `NotFound` for
    /// one that is no upload of theirs (nothing is counted).
    async fn attach(&self, sender: u64, ids: &[u128]) -> Result<Vec<Attachment>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (meta, ids) = (self.meta.clone(), ids.to_vec());
        let uploads = glommio::executor()
            .spawn_blocking(move || meta.attach_uploads(sender, &ids))
            .await?;
        Ok(uploads
            .into_iter()
            .map(|u| Attachment {
                id: u.id,
                name: u.name,
                content_type: u.content_type,
                bytes: u.bytes,
                width: u.width,
                height: u.height,
                thumb: u.thumb_bytes > 0,
            })
            .collect())
    }

    /// Gives back the counts taken for a message not stored (off the
    /// reactor; a failure is logged: an upload kept too long is never one
    /// freed too soon).
    async fn detach(&self, ids: Vec<u128>) {
        let meta = self.meta.clone();
        let done = glommio::executor()
            .spawn_blocking(move || meta.detach_uploads(&ids))
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "giving back upload counts failed");
        }
    }

    /// Message `seq` of `room`, durable, holds `ids` (counted by
    /// [`Shard::attach`]); an upload freed meanwhile (retention retired the
    /// seq) goes, files and all (off the reactor). A failure is logged: an
    /// upload kept too long is never one freed too soon.
    async fn hold(&self, room: u64, seq: u64, ids: Vec<u128>) {
        let meta = self.meta.clone();
        self.free_with(move || Ok(ids_of(meta.hold_uploads(room, seq, &ids)?)))
            .await;
    }

    /// Message `seq` of `room` is deleted: the uploads nothing holds any
    /// more go, files and all (off the reactor; doing it twice changes
    /// nothing). A failure is logged, as for [`Shard::hold`].
    pub(super) async fn release(&self, room: u64, seq: u64) {
        let meta = self.meta.clone();
        self.free_with(move || Ok(ids_of(meta.release_uploads(room, seq)?)))
            .await;
    }

    /// What a reply to `to` answers, as its event shows it; `NotFound` when
    /// `to` is not a live message, `InvalidInput` for 0.
    async fn reply_to(&self, room: u64, to: u64) -> Result<ReplyTo> {
        if to == 0 {
            return Err(Error::InvalidInput("a reply answers seq 1 or later".into()));
        }
        match self.store.get(room, to).await? {
            Some(item) if !item.deleted() => Ok(ReplyTo {
                to,
                thread: item.reply().map_or(to, |(_, thread)| thread),
                quote: Some(Quote::of(&item)),
            }),
            Some(_) => Err(Error::NotFound(format!(
                "message {to} in room {room} was deleted"
            ))),
            None => Err(Error::NotFound(format!("message {to} in room {room}"))),
        }
    }

    /// Messages of stored items, with the quotes of the replies among them
    /// (from the items themselves when they hold the answered message,
    /// else one read each).
    pub(super) async fn stored(
        &self,
        room: u64,
        items: &[HistoryItem],
        reader: Option<u64>,
    ) -> Result<Vec<StoredMessage>> {
        self.stored_with(room, items, None, reader).await
    }

    /// [`Shard::stored`], with one more message known already (a thread's
    /// first, which its replies quote). Each quoted message is read once.
    /// Reactions say whether `reader` has each on.
    async fn stored_with(
        &self,
        room: u64,
        items: &[HistoryItem],
        known: Option<&StoredMessage>,
        reader: Option<u64>,
    ) -> Result<Vec<StoredMessage>> {
        let mut out: Vec<StoredMessage> = items.iter().map(StoredMessage::from_item).collect();
        // A deleted message shows no reactions (they cannot be taken off).
        let seqs: Vec<u64> = out
            .iter()
            .filter(|m| m.body.is_some())
            .map(|m| m.seq)
            .collect();
        let mut reactions = self.store.reactions(room, &seqs, reader)?;
        for m in &mut out {
            m.reactions = reactions.remove(&m.seq).unwrap_or_default();
        }
        if out.iter().all(|m| m.reply.is_none()) {
            return Ok(out);
        }
        let mut quotes: HashMap<u64, Option<Quote>> = out
            .iter()
            .chain(known)
            .map(|m| (m.seq, Some(Quote::of_stored(m))))
            .collect();
        for m in &mut out {
            let Some(to) = m.reply.as_ref().map(|r| r.to) else {
                continue;
            };
            let quote = match quotes.get(&to) {
                Some(q) => q.clone(),
                None => {
                    let q = self.store.get(room, to).await?.map(|item| Quote::of(&item));
                    quotes.insert(to, q.clone());
                    q
                }
            };
            m.reply.as_mut().expect("a reply").quote = quote;
        }
        Ok(out)
    }

    /// A durable message: release it, and any that waited for it, in seq
    /// order to the tail cache and fan-out.
    pub(super) fn completed(&self, room: u64, event: Event) {
        // A buffer the shard reuses: no allocation per post.
        let mut ready = self.scratch_events.take();
        {
            let mut owned = self.owned.borrow_mut();
            let o = owned.get_mut(&room).expect("owned before appending");
            o.seq.handle_durable(event, &mut |e| ready.push(e));
            for e in &ready {
                self.cache(o, e.clone());
            }
        }
        self.trim_tails();
        for e in ready.drain(..) {
            self.fan_out(e);
        }
        self.scratch_events.set(ready);
    }

    /// Hands an event to local subscribers and, once per shard, to every
    /// other shard with subscribers of the room.
    pub(super) fn fan_out(&self, event: Event) {
        let room = event.room();
        if let Some(tap) = &self.cfg.event_tap {
            tap.see(crate::config::Tapped::Event(&event));
        }
        for peer in 0..self.n {
            let on = self
                .owned
                .borrow()
                .get(&room)
                .is_some_and(|o| o.remote[peer]);
            if on {
                self.counters.borrow_mut().forwarded += 1;
                self.push_deliver(peer, event.clone());
            }
        }
        self.deliver_local(&event);
    }

    pub(super) async fn change(
        &self,
        room: u64,
        seq: u64,
        by: u64,
        body: Option<&str>,
    ) -> Result<()> {
        // Members only, as for posting (a user who left or was removed
        // no longer changes what the room shows).
        self.may_post(room, by).await?;
        let _turn = self.appending(room);
        let item = self
            .store
            .get(room, seq)
            .await?
            .ok_or_else(|| Error::NotFound(format!("message {seq} in room {room}")))?;
        let author = item.sender();
        let has_files = !item.files().is_empty();
        drop(item);
        // Only its author edits a message (an admin rewriting it would put
        // words under the author's name); the author or an admin deletes.
        match body {
            Some(b) => {
                require_text(b)?;
                if author != by {
                    return Err(Error::Forbidden("only its author edits a message".into()));
                }
            }
            None if author != by && !self.manages(room, by).await? => {
                return Err(Error::Forbidden(
                    "only the author, a room admin or its owner deletes a message".into(),
                ));
            }
            None => {}
        }
        let ts = now_ms();
        let event = match body {
            Some(b) => {
                self.store.edit(room, seq, by, ts, b).await?;
                Event::edit(room, seq, by, ts, b)
            }
            None => {
                self.store.delete(room, seq, by, ts).await?;
                // Durable: the uploads it held lose a message, and those
                // no message holds any more are freed.
                if has_files {
                    self.release(room, seq).await;
                }
                Event::delete(room, seq, by, ts)
            }
        };
        self.ensure_owned(room);
        self.refresh_or_drop(room, seq, true).await;
        self.fan_out(event);
        Ok(())
    }

    /// Puts `user`'s reaction `emoji` on message `seq` (`on`) or takes it
    /// off; members only. `Ok(false)` when it already was so (nothing is
    /// stored or sent). The emoji is stored in its canonical spelling
    /// ([`crate::emoji::canonical`]).
    pub(super) async fn react(
        &self,
        room: u64,
        seq: u64,
        user: u64,
        emoji: &str,
        on: bool,
    ) -> Result<bool> {
        let emoji = crate::emoji::canonical(emoji)
            .ok_or_else(|| Error::InvalidInput(format!("{emoji:?} is not one emoji")))?;
        if emoji.len() > rookery_storage::EMOJI_BYTES_MAX {
            return Err(Error::InvalidInput(format!(
                "a reaction is at most {} bytes",
                rookery_storage::EMOJI_BYTES_MAX
            )));
        }
        self.may_post(room, user).await?;
        let _turn = self.appending(room);
        let ts = now_ms();
        if !self.store.react(room, seq, user, ts, &emoji, on).await? {
            return Ok(false);
        }
        self.counters.borrow_mut().reactions += 1;
        self.ensure_owned(room);
        // The count after the change, read and sent in one step: events
        // leave in the order their counts were read, so a client sets the
        // count (never adds to it) and a page read meanwhile agrees.
        let count = self
            .store
            .reactions(room, &[seq], None)?
            .remove(&seq)
            .and_then(|list| list.into_iter().find(|r| r.emoji == emoji))
            .map_or(0, |r| r.count);
        self.fan_out(Event::react(room, seq, user, ts, &emoji, on, count));
        self.refresh_or_drop(room, seq, false).await;
        Ok(true)
    }

    /// Re-encodes what the tail cache holds of message `seq` (see
    /// [`Shard::refresh_cached`]); on a failed read, drops the room's cache
    /// rather than keep a stale one (its replays then read the log).
    async fn refresh_or_drop(&self, room: u64, seq: u64, quotes: bool) {
        if let Err(e) = self.refresh_cached(room, seq, quotes).await {
            tracing::warn!(shard = self.id, room, error = %e, "refreshing the tail cache failed; dropped it");
            if let Some(o) = self.owned.borrow_mut().get_mut(&room) {
                let freed = o.tail.clear();
                self.tail_bytes.set(self.tail_bytes.get() - freed);
            }
        }
    }

    /// Whether `user` is an admin or the owner of `room` (read off the
    /// reactor).
    async fn manages(&self, room: u64, user: u64) -> Result<bool> {
        let meta = self.meta.clone();
        let role = glommio::executor()
            .spawn_blocking(move || meta.member_role(room, user))
            .await?;
        Ok(role.is_some_and(|r| r >= Role::Admin))
    }

    /// Re-encodes cached messages after a change of `seq`: the message
    /// itself and (with `quotes`: an edit or a delete) the replies that
    /// quote it, so catch-up from the cache shows the current body, quotes
    /// and reactions.
    pub(super) async fn refresh_cached(&self, room: u64, seq: u64, quotes: bool) -> Result<()> {
        let stale: Vec<u64> = self.owned.borrow().get(&room).map_or(Vec::new(), |o| {
            o.tail
                .iter()
                .filter(|e| e.seq() == seq || (quotes && e.reply_to() == seq))
                .map(|e| e.seq())
                .collect()
        });
        for s in stale {
            let Some(item) = self.store.get(room, s).await? else {
                continue;
            };
            let mut m = self.stored(room, &[item], None).await?.remove(0);
            // Read again with no yield before the cache takes it: a
            // reaction changed while the quote was read is not lost.
            if m.body.is_some() {
                m.reactions = self
                    .store
                    .reactions(room, &[s], None)?
                    .remove(&s)
                    .unwrap_or_default();
            }
            let fresh = m.event(room);
            if let Some(o) = self.owned.borrow_mut().get_mut(&room) {
                let delta = o.tail.replace(fresh);
                self.tail_bytes
                    .set((self.tail_bytes.get() as isize + delta) as usize);
            }
        }
        Ok(())
    }

    /// Adds a fanned-out event to its room's tail cache. One room keeps at
    /// most a quarter of the shard's budget (a room of large messages must
    /// not push every other room out, nor lose its whole cache at once).
    pub(super) fn cache(&self, o: &mut Owned, event: Event) {
        let delta = o.tail.push(event, self.cfg.tail_cache_len);
        let mut bytes = (self.tail_bytes.get() as isize + delta) as usize;
        let room_max = self.cfg.tail_cache_bytes_max / 4;
        while o.tail.bytes() > room_max && o.tail.len() > 1 {
            bytes -= o.tail.pop_oldest();
        }
        self.tail_bytes.set(bytes);
        o.used = self.next_use();
    }

    pub(super) fn next_use(&self) -> u64 {
        let n = self.uses.get() + 1;
        self.uses.set(n);
        n
    }

    /// Keeps the tail caches of the rooms owned here within
    /// `tail_cache_bytes_max`: past it, the least recently used rooms'
    /// caches are dropped until three quarters of it is left (their
    /// catch-up and replay then read the log).
    pub(super) fn trim_tails(&self) {
        let max = self.cfg.tail_cache_bytes_max;
        if self.tail_bytes.get() <= max {
            return;
        }
        let mut owned = self.owned.borrow_mut();
        let mut by_use: Vec<(u64, u64)> = owned
            .iter()
            .filter(|(_, o)| !o.tail.is_empty())
            .map(|(&room, o)| (o.used, room))
            .collect();
        by_use.sort_unstable();
        for (_, room) in by_use {
            if self.tail_bytes.get() <= max / 4 * 3 {
                break;
            }
            if let Some(o) = owned.get_mut(&room) {
                let freed = o.tail.clear();
                self.tail_bytes.set(self.tail_bytes.get() - freed);
                self.counters.borrow_mut().tail_evictions += 1;
            }
        }
    }

    /// A typing event, from a member only (checked in order with the
    /// room's member changes, so a removed user's typing never follows
    /// their `left`).
    pub(super) async fn typing(&self, room: u64, user: u64) -> Result<()> {
        self.may_post(room, user).await?;
        self.ensure_owned(room);
        {
            let mut owned = self.owned.borrow_mut();
            let o = owned.get_mut(&room).expect("ensured");
            let now = Instant::now();
            if o.typing_last
                .get(&user)
                .is_some_and(|t| now.duration_since(*t) < self.cfg.typing_interval)
            {
                return Err(Error::RateLimited("typing".into()));
            }
            o.typing_last.insert(user, now);
        }
        self.fan_out(Event::typing(room, user));
        Ok(())
    }

    /// A page of history, cut short (with a cursor to the rest) once its
    /// bodies pass `history_page_bytes_max`: a reply is bounded in bytes as
    /// well as in messages.
    pub(super) async fn history(
        &self,
        room: u64,
        cursor: Cursor,
        reader: Option<u64>,
    ) -> Result<HistoryPage> {
        let page = self.store.history(room, cursor).await?;
        let len = self.within_page_bytes(&page.items);
        let messages = self.stored(room, &page.items[..len], reader).await?;
        let next = match messages.last() {
            Some(last) if messages.len() < page.items.len() => Some(match cursor.order {
                Order::NewestFirst => Cursor::before(last.seq, cursor.limit),
                Order::OldestFirst => Cursor::after(last.seq, cursor.limit),
            }),
            _ => page.next,
        };
        Ok(HistoryPage {
            messages,
            next,
            cached: page.cached,
        })
    }

    /// How many of `items` a page holds within `history_page_bytes_max`
    /// (at least one).
    fn within_page_bytes(&self, items: &[HistoryItem]) -> usize {
        let budget = self.cfg.history_page_bytes_max;
        let mut bytes = 0usize;
        let mut len = 0;
        for item in items {
            if bytes >= budget {
                break;
            }
            bytes += item.body().map_or(0, str::len) + item.client_id().len() + 64;
            bytes += item.reply().map_or(0, |_| QUOTE_BYTES_MAX + 64);
            len += 1;
        }
        len
    }

    /// A page of the thread `seq` is in (see [`crate::Engine::thread`]),
    /// with the replies' quotes, cut short (with a cursor to the rest)
    /// like a history page once past `history_page_bytes_max`.
    pub(super) async fn thread(
        &self,
        room: u64,
        seq: u64,
        after: u64,
        limit: usize,
        reader: Option<u64>,
    ) -> Result<Option<ThreadPage>> {
        let Some(page) = self.store.thread(room, seq, after, limit).await? else {
            return Ok(None);
        };
        let len = self.within_page_bytes(&page.items);
        let first = self
            .stored(room, std::slice::from_ref(&page.first), reader)
            .await?;
        let first = first.into_iter().next().expect("one message");
        let messages = self
            .stored_with(room, &page.items[..len], Some(&first), reader)
            .await?;
        let next = match messages.last() {
            Some(last) if len < page.items.len() => Some(last.seq),
            _ => page.next,
        };
        Ok(Some(ThreadPage {
            first,
            messages,
            next,
            cached: page.cached,
        }))
    }

    /// Owner side: a page for a subscriber, refused when `user` is given
    /// and may not see the room (checked here, on the owner, in order with
    /// the room's member changes and `Revoke`s).
    pub(super) async fn serve_page(
        &self,
        room: u64,
        after: u64,
        limit: usize,
        user: Option<u64>,
    ) -> (PageOutcome, Vec<Event>, u64) {
        if let Some(user) = user {
            match self.may_post(room, user).await {
                Ok(()) => {}
                // Not (or no longer) a member: refused, not retried.
                Err(Error::NotFound(_) | Error::Forbidden(_) | Error::Banned(_)) => {
                    return (PageOutcome::Refused, Vec::new(), 0)
                }
                Err(e) => {
                    if let Some(held_back) = self.page_warn.allow(Instant::now()) {
                        tracing::warn!(shard = self.id, room, error = %e, held_back, "checking a subscriber's access failed");
                    }
                    return (PageOutcome::Unchecked, Vec::new(), 0);
                }
            }
        }
        match self.read_page(room, after, limit).await {
            Ok((events, head)) => (PageOutcome::Served, events, head),
            Err(e) => {
                if let Some(held_back) = self.page_warn.allow(Instant::now()) {
                    tracing::warn!(shard = self.id, room, error = %e, held_back, "serving a catch-up page failed");
                }
                (PageOutcome::Failed, Vec::new(), 0)
            }
        }
    }

    /// Owner side: events after `after` (from the tail cache when it covers
    /// them, else from storage) and the current fan-out head.
    pub(super) async fn read_page(
        &self,
        room: u64,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Event>, u64)> {
        self.ensure_owned(room);
        // Retention may have retired the oldest cached events.
        let from = (after + 1).max(self.store.low_seq(room));
        let use_now = self.next_use();
        let cached = {
            let mut owned = self.owned.borrow_mut();
            let o = owned.get_mut(&room).expect("ensured");
            o.used = use_now;
            o.tail.page(from, limit, o.seq.head())
        };
        let events = match cached {
            Some(events) => {
                self.counters.borrow_mut().cache_hits += 1;
                events
            }
            None => {
                self.counters.borrow_mut().cache_misses += 1;
                let page = self
                    .store
                    .history(room, Cursor::after(after, limit))
                    .await?;
                self.stored(room, &page.items, None)
                    .await?
                    .iter()
                    .map(|m| m.event(room))
                    .collect()
            }
        };
        let head = self.owned.borrow()[&room].seq.head();
        Ok((events, head))
    }

    /// Owner side: hands the receipt, with the room's current last seq, to
    /// the receipt writer, which answers `reply` after its batch commits
    /// and, when the receipt moved, tells `moved`: the owner then shows it
    /// to the room ([`super::seen`]), apart from the answer.
    pub(super) fn mark_read(self: &Rc<Self>, room: u64, user: u64, seq: u64, reply: Reply<u64>) {
        let (moved, stored) = flume::bounded(1);
        let receipt = Receipt {
            room,
            user,
            seq,
            last: self.store.last_seq(room),
            reply,
            moved: Some(moved),
        };
        match self.receipts.try_send(Some(receipt)) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(Some(r))) => {
                self.counters.borrow_mut().receipts_refused += 1;
                send(
                    r.reply,
                    Err(Error::Busy("the read-receipt queue is full".into())),
                );
                return;
            }
            Err(flume::TrySendError::Disconnected(Some(r))) => {
                return send(r.reply, Err(Error::ShutDown));
            }
            Err(_) => unreachable!("a receipt was sent"),
        }
        let me = self.clone();
        glommio::spawn_local(async move {
            if let Ok(stored) = stored.recv_async().await {
                me.show_receipt(room, user, stored).await;
            }
        })
        .detach();
    }

    /// Owner side: the room's last seq and the user's receipt (two point
    /// reads).
    pub(super) fn unread(&self, room: u64, user: u64) -> Result<ReadState> {
        let last_seq = self.store.last_seq(room);
        let read = self
            .meta
            .read_seq(room, user)?
            .max(self.own_read(room, user));
        Ok(ReadState { last_seq, read })
    }
}

/// A message's upload ids: at most `FILES_PER_MESSAGE_MAX`, each once.
fn check_files(ids: &[u128]) -> Result<()> {
    let max = rookery_storage::FILES_PER_MESSAGE_MAX;
    if ids.len() > max {
        return Err(Error::InvalidInput(format!(
            "a message carries at most {max} files"
        )));
    }
    for (i, id) in ids.iter().enumerate() {
        if ids[..i].contains(id) {
            return Err(Error::InvalidInput(format!(
                "upload {id:032x} is attached twice"
            )));
        }
    }
    Ok(())
}

/// The ids of `uploads`.
fn ids_of(uploads: Vec<rookery_storage::meta::Upload>) -> Vec<u128> {
    uploads.into_iter().map(|u| u.id).collect()
}

/// A message's body must say something: not empty, nor only whitespace.
fn require_text(body: &str) -> Result<()> {
    if body.trim().is_empty() {
        return Err(Error::InvalidInput("the body is empty".into()));
    }
    Ok(())
}
