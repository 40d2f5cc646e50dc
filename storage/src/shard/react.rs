//! Reactions: a user's emoji put on or taken off a message, kept as log
//! records (`Record::React`), and the per-message state the index derives
//! from them (who has which reaction on, how many have each).
//!
//! Invariant: a message carries at most [`REACTIONS_PER_MESSAGE_MAX`]
//! distinct reactions and at most [`REACTIONS_PER_USER_PER_MESSAGE_MAX`] of
//! one user, counting what is committed, durable and still queued: the
//! check and the queueing happen with no yield between them. Readers see
//! durable reactions only.

use super::*;

/// Longest reaction, in bytes (a family of four with skin tones, spelled
/// canonically, takes 37).
pub const EMOJI_BYTES_MAX: usize = 64;
/// Distinct reactions one message may carry.
pub const REACTIONS_PER_MESSAGE_MAX: usize = 20;
/// Reactions one user may have on one message.
pub const REACTIONS_PER_USER_PER_MESSAGE_MAX: usize = 10;

/// One reaction on a message, as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// How many users have it on (> 0).
    pub count: u64,
    /// Whether the reader asked about has it on.
    pub mine: bool,
}

/// A reaction change not yet committed to the index: queued (not yet
/// durable) or durable.
pub(super) type ReactKey = (u64, u64, String, u64);

impl ShardStore {
    /// Puts `by`'s reaction `emoji` on message `seq` (`on`) or takes it off;
    /// resolves once durable. `Ok(false)` when it already was so (nothing is
    /// written). `NotFound` for a message that does not exist or was
    /// deleted; `TooMany` past the bounds on a message's reactions.
    pub async fn react(
        &self,
        room: u64,
        seq: u64,
        by: u64,
        ts_ms: u64,
        emoji: &str,
        on: bool,
    ) -> Result<bool> {
        self.check_open()?;
        if emoji.is_empty() || emoji.len() > EMOJI_BYTES_MAX {
            return Err(Error::InvalidInput(format!(
                "a reaction is 1 to {EMOJI_BYTES_MAX} bytes, not {}",
                emoji.len()
            )));
        }
        self.wait_for_index_lag().await;
        self.live_message(room, seq).await?;
        let signal = {
            let mut st = self.inner.st.borrow_mut();
            let now = self.reactions_in(&mut st, room, seq, seq, Some(by), true)?;
            let now = now.get(&seq).map(Vec::as_slice).unwrap_or_default();
            let has = |r: &&Reaction| r.emoji == emoji;
            if now.iter().find(has).is_some_and(|r| r.mine) == on {
                return Ok(false);
            }
            if on {
                check_room_for(now, emoji)?;
            }
            let slot = st.next_react_slot;
            st.next_react_slot += 1;
            st.queued_reactions
                .insert((room, seq, slot), ((room, seq, emoji.to_string(), by), on));
            drop(st);
            let rec = Record::React(React {
                room,
                seq,
                by,
                ts_ms,
                emoji: emoji.to_string(),
                on,
            });
            self.enqueue(&rec, room, seq, QueuedKind::React { slot })
        };
        signal.wait().await.map_err(Error::Failed)?;
        Ok(true)
    }

    /// The reactions readers see (durable ones) on messages `seqs` of
    /// `room`, by seq, each with whether `reader` has it on. One index read
    /// per run of consecutive seqs (a history page is one run).
    pub fn reactions(
        &self,
        room: u64,
        seqs: &[u64],
        reader: Option<u64>,
    ) -> Result<HashMap<u64, Vec<Reaction>>> {
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut st = self.inner.st.borrow_mut();
        let mut out = HashMap::new();
        let mut i = 0;
        while i < sorted.len() {
            let mut j = i;
            while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
                j += 1;
            }
            out.extend(self.reactions_in(&mut st, room, sorted[i], sorted[j], reader, false)?);
            i = j + 1;
        }
        Ok(out)
    }

    /// Committed reactions with the durable (and, with `queued`, the queued)
    /// changes laid over them, in the order they were made.
    fn reactions_in(
        &self,
        st: &mut State,
        room: u64,
        lo: u64,
        hi: u64,
        reader: Option<u64>,
        queued: bool,
    ) -> Result<HashMap<u64, Vec<Reaction>>> {
        let known = self.has_reactions(st, room)?;
        let st = &*st;
        let mut changes: Vec<(&ReactKey, bool)> = st
            .pending_reactions
            .range((room, lo, String::new(), 0)..)
            .take_while(|(k, _)| k.0 == room && k.1 <= hi)
            .map(|(k, (_, on))| (k, *on))
            .collect();
        if queued {
            // In (seq, slot) order: a key's changes in the order made.
            changes.extend(
                st.queued_reactions
                    .range((room, lo, 0)..=(room, hi, u64::MAX))
                    .map(|(_, (k, on))| (k, *on)),
            );
        }
        if !known && changes.is_empty() {
            return Ok(HashMap::new());
        }
        let keys: Vec<(u64, &str, u64)> = changes
            .iter()
            .map(|(k, _)| (k.1, k.2.as_str(), k.3))
            .collect();
        let (rows, committed) = index::read_reactions(&self.inner.db, room, lo, hi, reader, &keys)?;
        let mut by_seq: BTreeMap<u64, Vec<Reaction>> = BTreeMap::new();
        for (seq, emoji, count, mine) in rows {
            by_seq
                .entry(seq)
                .or_default()
                .push(Reaction { emoji, count, mine });
        }
        let mut state: HashMap<&ReactKey, bool> = HashMap::new();
        for (i, (key, on)) in changes.iter().enumerate() {
            let was = *state.get(key).unwrap_or(&committed[i]);
            state.insert(key, *on);
            if was == *on {
                continue;
            }
            let list = by_seq.entry(key.1).or_default();
            let r = match list.iter_mut().position(|r| r.emoji == key.2) {
                Some(at) => &mut list[at],
                None => {
                    list.push(Reaction {
                        emoji: key.2.clone(),
                        count: 0,
                        mine: false,
                    });
                    list.last_mut().expect("pushed")
                }
            };
            r.count = if *on {
                r.count + 1
            } else {
                r.count.saturating_sub(1)
            };
            if Some(key.3) == reader {
                r.mine = *on;
            }
        }
        Ok(by_seq
            .into_iter()
            .map(|(seq, mut list)| {
                list.retain(|r| r.count > 0);
                // One order whether committed or not: by the emoji's bytes.
                list.sort_by(|a, b| a.emoji.cmp(&b.emoji));
                (seq, list)
            })
            .filter(|(_, list)| !list.is_empty())
            .collect())
    }

    /// Whether redb may hold reactions of the room (looked up once; a
    /// durable reaction sets it).
    fn has_reactions(&self, st: &mut State, room: u64) -> Result<bool> {
        read::room_has(
            st,
            room,
            |r| &mut r.has_reactions,
            |st| {
                st.pending_reactions
                    .range((room, 0, String::new(), 0)..)
                    .next()
                    .is_some_and(|(k, _)| k.0 == room)
            },
            || index::has_reactions(&self.inner.db, room),
        )
    }

    /// A durable reaction change: its row goes to the index thread and
    /// stays readable in memory until committed.
    pub(super) fn apply_react(st: &mut State, key: ReactKey, on: bool) {
        if st.rooms.get(&key.0).is_some_and(|r| key.1 < r.low_seq) {
            return; // retired
        }
        let ticket = st.next_ticket;
        if let Some(r) = st.rooms.get_mut(&key.0) {
            r.has_reactions = Some(true);
        }
        st.ops.push(Op::React {
            room: key.0,
            seq: key.1,
            emoji: key.2.clone(),
            user: key.3,
            on,
        });
        st.pending_reactions.insert(key, (ticket, on));
    }
}

/// `Ok` when `emoji` may go on a message that carries `now` (its reactions
/// with whether the reacting user has each).
fn check_room_for(now: &[Reaction], emoji: &str) -> Result<()> {
    let present = now.iter().any(|r| r.emoji == emoji);
    if !present && now.len() >= REACTIONS_PER_MESSAGE_MAX {
        return Err(Error::TooMany(format!(
            "a message carries at most {REACTIONS_PER_MESSAGE_MAX} distinct reactions"
        )));
    }
    if now.iter().filter(|r| r.mine).count() >= REACTIONS_PER_USER_PER_MESSAGE_MAX {
        return Err(Error::TooMany(format!(
            "one user puts at most {REACTIONS_PER_USER_PER_MESSAGE_MAX} reactions on a message"
        )));
    }
    Ok(())
}
