//! Index chunks: the positions of 64 consecutive seqs of one room.
//!
//! Seqs are dense per room, so instead of one index row per message the
//! index stores one row per 64 messages: key `(room, chunk_no)` with
//! `chunk_no = (seq - 1) / 64`, value an array of entries. A chunk is written
//! to redb when it fills and, partially, at each checkpoint; that divides the
//! number of redb inserts by up to 64 (see docs/storage.md).
//!
//! Entry `i` of chunk `c` is seq `c * 64 + i + 1`. An entry whose position is
//! 0 is absent (no frame starts at offset 0: the segment header is there).
//!
//! Encoding: `[version u8 = 1][7 zero bytes]` then per entry
//! `[pos u64 LE][idem u64 LE][ts_ms u64 LE]`, up to the last present entry.

use crate::error::{Error, Result};

/// Seqs per chunk.
pub const CHUNK_LEN: u64 = 64;
const ENTRY_BYTES: usize = 24;
const VERSION: u8 = 1;

/// What the index knows of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Entry {
    /// Packed log position ([`crate::Pos::to_u64`]); 0 = absent.
    pub pos: u64,
    /// Idempotency hash of (sender, client id); 0 = no client id.
    pub idem: u64,
    /// Message timestamp, milliseconds since the Unix epoch.
    pub ts_ms: u64,
}

/// The chunk number holding `seq` (seq >= 1).
pub fn chunk_of(seq: u64) -> u64 {
    debug_assert!(seq >= 1);
    (seq - 1) / CHUNK_LEN
}

/// The slot of `seq` inside its chunk.
pub fn slot_of(seq: u64) -> usize {
    ((seq - 1) % CHUNK_LEN) as usize
}

/// One chunk in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Chunk number.
    pub no: u64,
    /// Entries from slot 0; shorter than 64 while the chunk fills.
    pub entries: Vec<Entry>,
}

impl Chunk {
    /// An empty chunk.
    pub fn new(no: u64) -> Chunk {
        Chunk {
            no,
            entries: Vec::new(),
        }
    }

    /// Sets the entry of `seq`, which must belong to this chunk.
    pub fn set(&mut self, seq: u64, entry: Entry) {
        assert_eq!(
            chunk_of(seq),
            self.no,
            "seq {seq} is not in chunk {}",
            self.no
        );
        let slot = slot_of(seq);
        if self.entries.len() <= slot {
            self.entries.resize(slot + 1, Entry::default());
        }
        self.entries[slot] = entry;
    }

    /// The entry of `seq`, if present.
    pub fn get(&self, seq: u64) -> Option<Entry> {
        if chunk_of(seq) != self.no {
            return None;
        }
        self.entries
            .get(slot_of(seq))
            .copied()
            .filter(|e| e.pos != 0)
    }

    /// Drops entries for seqs above `last_seq` (stale after a crash).
    pub fn truncate_after(&mut self, last_seq: u64) {
        let keep = last_seq.saturating_sub(self.no * CHUNK_LEN).min(CHUNK_LEN) as usize;
        self.entries.truncate(keep);
    }

    /// True when slot 63 is set: no later seq belongs here.
    pub fn is_full(&self) -> bool {
        self.entries.len() == CHUNK_LEN as usize
    }

    /// Encodes the chunk for storage.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.entries.len() * ENTRY_BYTES);
        out.push(VERSION);
        out.extend_from_slice(&[0; 7]);
        for e in &self.entries {
            out.extend_from_slice(&e.pos.to_le_bytes());
            out.extend_from_slice(&e.idem.to_le_bytes());
            out.extend_from_slice(&e.ts_ms.to_le_bytes());
        }
        out
    }

    /// Decodes a stored chunk, checking its shape.
    pub fn decode(no: u64, bytes: &[u8]) -> Result<Chunk> {
        let bad = |why: &str| Error::Database(format!("index chunk {no}: {why}"));
        if bytes.len() < 8 || bytes[0] != VERSION {
            return Err(bad("bad version"));
        }
        let body = &bytes[8..];
        if !body.len().is_multiple_of(ENTRY_BYTES) || body.len() / ENTRY_BYTES > CHUNK_LEN as usize
        {
            return Err(bad("bad length"));
        }
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let entries = body
            .chunks_exact(ENTRY_BYTES)
            .map(|e| Entry {
                pos: word(&e[0..8]),
                idem: word(&e[8..16]),
                ts_ms: word(&e[16..24]),
            })
            .collect();
        Ok(Chunk { no, entries })
    }
}

/// Stable 64-bit idempotency hash of (sender, client id): FNV-1a. Never 0
/// for a non-empty client id; 0 for an empty one (no key).
pub fn idem_hash(sender: u64, client_id: &str) -> u64 {
    if client_id.is_empty() {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sender.to_le_bytes().iter().chain(client_id.as_bytes()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slots_and_chunks() {
        assert_eq!((chunk_of(1), slot_of(1)), (0, 0));
        assert_eq!((chunk_of(64), slot_of(64)), (0, 63));
        assert_eq!((chunk_of(65), slot_of(65)), (1, 0));
    }

    #[test]
    fn truncate_after_drops_stale_entries() {
        let mut c = Chunk::new(1);
        for s in 65..=80 {
            c.set(
                s,
                Entry {
                    pos: s,
                    idem: 0,
                    ts_ms: 0,
                },
            );
        }
        c.truncate_after(70);
        assert_eq!(c.entries.len(), 6);
        assert!(c.get(71).is_none());
        assert_eq!(c.get(70).unwrap().pos, 70);
        c.truncate_after(10);
        assert!(c.entries.is_empty());
    }

    #[test]
    fn decode_rejects_bad_shapes() {
        assert!(Chunk::decode(0, &[]).is_err());
        assert!(Chunk::decode(0, &[2, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(Chunk::decode(0, &[1, 0, 0, 0, 0, 0, 0, 0, 9]).is_err());
        assert!(Chunk::decode(0, &vec![1; 8 + 65 * 24]).is_err());
    }

    #[test]
    fn idem_hash_is_stable_and_keyed() {
        assert_eq!(idem_hash(1, ""), 0);
        assert_ne!(idem_hash(1, "a"), idem_hash(2, "a"));
        assert_ne!(idem_hash(1, "a"), idem_hash(1, "b"));
        // The hash is stored on disk: it must never change between builds.
        assert_eq!(
            idem_hash(42, "hello"),
            0x81ba_0391_f941_63d5 // FNV-1a 64 of 42u64 LE ++ "hello"
        );
    }

    proptest! {
        #[test]
        fn chunks_round_trip(no in 0u64..1000, slots in proptest::collection::btree_map(0u64..64, (1u64.., any::<u64>(), any::<u64>()), 0..64)) {
            let mut c = Chunk::new(no);
            for (slot, (pos, idem, ts_ms)) in &slots {
                c.set(no * 64 + slot + 1, Entry { pos: *pos, idem: *idem, ts_ms: *ts_ms });
            }
            let d = Chunk::decode(no, &c.encode()).unwrap();
            prop_assert_eq!(&d, &c);
            for (slot, (pos, ..)) in &slots {
                prop_assert_eq!(d.get(no * 64 + slot + 1).unwrap().pos, *pos);
            }
        }
    }
}
