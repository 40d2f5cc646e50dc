//! Typed engine configuration with documented defaults, checked at start.

use std::time::Duration;

use rookery_storage::StorageConfig;

use crate::error::{Error, Result};

/// Configuration of an [`crate::Engine`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Storage settings; `storage.shards` is the number of shards (one
    /// pinned executor each). [`EngineConfig::new`] sets it to the number of
    /// available cores.
    pub storage: StorageConfig,
    /// Encoded events kept per room on its owner for replay. Default 512.
    pub tail_cache_len: usize,
    /// Bytes the tail caches of one shard's rooms hold at most: past it,
    /// the least recently used rooms' caches are dropped (their replays
    /// read the log). Default 4 MiB.
    pub tail_cache_bytes_max: usize,
    /// Bytes of events queued for one subscriber before it is marked
    /// lagging (live delivery stops, catch-up takes over). Default 1 MiB.
    pub outbound_queue_bytes_max: usize,
    /// Volatile events (typing) are dropped for a subscriber whose queue
    /// holds more than this many bytes. Default 256 KiB.
    pub volatile_queue_bytes_max: usize,
    /// A lagging subscriber that does not read anything for this long is
    /// closed ([`crate::Error::SlowConsumer`], close code 4008). Default 30 s.
    pub stuck_timeout: Duration,
    /// A history page stops early (its `next` cursor continues it) once
    /// its messages hold this many bytes; at least one message is always
    /// returned. Default 1 MiB.
    pub history_page_bytes_max: usize,
    /// Events per catch-up page. Default 256.
    pub catch_up_page_len: usize,
    /// How often a shard checks lagging subscribers for drained queues.
    /// Default 2 ms.
    pub lag_poll_interval: Duration,
    /// Slots of each cross-shard channel (rounded up to a power of two).
    /// Default 1024.
    pub mesh_channel_len: usize,
    /// Minimum time between two typing events of one user in one room.
    /// Default 1 s.
    pub typing_interval: Duration,
    /// Minimum time between two `receipt` events of one user in one room
    /// (a receipt stored sooner is shown when it has passed, replaced by
    /// any later one). Default 1 s.
    pub receipt_event_interval: Duration,
    /// Glommio preemption timer. Default 100 ms (glommio's own): see
    /// `kick_interval` for why it is not lower.
    pub preempt_timer: Duration,
    /// How often each shard applies its rooms' retention limits. Default
    /// 60 s.
    pub retention_interval: Duration,
    /// How often a small helper thread looks at the shards' work counters:
    /// a shard that worked and then went quiet is woken once. glommio 0.9.0
    /// can park an executor while tasks are runnable when a preemption is
    /// pending at the top of its loop (fixed upstream after the last
    /// release on crates.io); a wake-up from another thread unparks it, so
    /// a stall lasts at most two of these. Busy and idle shards are left
    /// alone (see the `kick` module). Default 5 ms.
    pub kick_interval: Duration,
    /// Submission queue entries of each of a shard's io_uring rings
    /// (glommio's `ring_depth`; the completion queue has twice as many).
    /// The kernel sizes a ring's table of pending polls from it: every
    /// idle connection holds one poll, and glommio cancels and re-arms its
    /// timers on every reactor turn, each cancel walking one bucket of
    /// that table. At glommio's 128 (8 buckets) a shard with 500 idle
    /// connections spent 7% of its CPU in those walks; at 4096 the table
    /// has the kernel's maximum of 256 buckets. Costs about 0.4 MiB per
    /// ring, three rings per shard. Default 4,096.
    pub ring_depth: usize,
    /// How long an idle shard spins before it parks in the kernel. A parked
    /// shard took 85–150 µs to wake for a cross-shard message on the 2-vCPU
    /// test VM (see docs/benchmarks.md); spinning trades CPU for that
    /// latency. Default 0 (park at once).
    pub spin_before_park: Duration,
    /// Commands (posts, edits, history, subscribes, …) waiting in one
    /// shard's queue; past it a call fails at once with
    /// [`crate::Error::Busy`] and counts in `commands_refused`.
    /// Unsubscribes, inbox closes, stats and shutdown are never refused
    /// (their number is bounded by the subscriptions and inboxes that
    /// exist). Default 65,536.
    pub command_queue_len_max: usize,
    /// Read receipts waiting for the receipt writer; `mark_read` fails with
    /// [`crate::Error::Busy`] when the queue is full. Default 65,536.
    pub receipt_queue_len_max: usize,
    /// Receipts written in one `meta.redb` transaction at most. Default
    /// 4,096.
    pub receipt_batch_len_max: usize,
    /// What uploads may be (file size, quota, thumbnails).
    pub uploads: crate::UploadLimits,
    /// Posts to a room the metadata does not know are refused (`NotFound`),
    /// as a server wants; an embedder that keeps no rooms in the metadata
    /// leaves it off and may post to any room id. Default false.
    pub rooms_must_exist: bool,
    /// Sees every event a room's owner fans out (messages once durable,
    /// edits, deletes, typing, presence) and every end of a user's
    /// subscriptions to a room (removed from a private room, banned), on
    /// the owner's thread, in the room's order: how a cluster node
    /// publishes its rooms' events to the others. It must not block.
    /// Default none.
    pub event_tap: Option<EventTap>,
}

/// What the owner of a room shows an [`EventTap`].
#[derive(Debug, Clone, Copy)]
pub enum Tapped<'a> {
    /// An event for the room's subscribers.
    Event(&'a crate::Event),
    /// `user` may no longer follow the room: its subscriptions end with a
    /// `left` event giving `reason`.
    Revoked {
        room: u64,
        user: u64,
        reason: &'static str,
    },
    /// The room was deleted: every subscription to it ends with a `left`
    /// event giving `reason: "deleted"`.
    RoomDeleted { room: u64 },
}

/// A function that sees what rooms' owners fan out (see
/// [`EngineConfig::event_tap`]).
#[derive(Clone)]
pub struct EventTap(std::sync::Arc<dyn Fn(Tapped<'_>) + Send + Sync>);

impl EventTap {
    pub fn new(see: impl Fn(Tapped<'_>) + Send + Sync + 'static) -> EventTap {
        EventTap(std::sync::Arc::new(see))
    }

    /// Shows it `tapped` (how a tap passes what it sees on to another).
    pub fn see(&self, tapped: Tapped<'_>) {
        (self.0)(tapped)
    }
}

impl std::fmt::Debug for EventTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventTap")
    }
}

impl EngineConfig {
    /// Defaults, with data in `data_dir` and one shard per available core.
    pub fn new(data_dir: impl Into<std::path::PathBuf>) -> Self {
        let mut storage = StorageConfig::new(data_dir);
        storage.shards = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        EngineConfig {
            storage,
            tail_cache_len: 512,
            tail_cache_bytes_max: 4 << 20,
            outbound_queue_bytes_max: 1 << 20,
            volatile_queue_bytes_max: 256 << 10,
            stuck_timeout: Duration::from_secs(30),
            catch_up_page_len: 256,
            history_page_bytes_max: 1 << 20,
            lag_poll_interval: Duration::from_millis(2),
            mesh_channel_len: 1024,
            typing_interval: Duration::from_secs(1),
            receipt_event_interval: Duration::from_secs(1),
            preempt_timer: Duration::from_millis(100),
            kick_interval: Duration::from_millis(5),
            ring_depth: 4096,
            spin_before_park: Duration::ZERO,
            retention_interval: Duration::from_secs(60),
            command_queue_len_max: 65_536,
            receipt_queue_len_max: 65_536,
            receipt_batch_len_max: 4096,
            uploads: crate::UploadLimits::default(),
            rooms_must_exist: false,
            event_tap: None,
        }
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<()> {
        self.storage.validate()?;
        let check = |ok: bool, msg: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::InvalidInput(msg.to_string()))
            }
        };
        check(self.tail_cache_len >= 1, "tail_cache_len must be >= 1")?;
        check(
            self.outbound_queue_bytes_max >= 4096,
            "outbound_queue_bytes_max must be >= 4096",
        )?;
        check(
            self.volatile_queue_bytes_max <= self.outbound_queue_bytes_max,
            "volatile_queue_bytes_max must be <= outbound_queue_bytes_max",
        )?;
        check(
            self.history_page_bytes_max >= 1,
            "history_page_bytes_max must be >= 1",
        )?;
        check(
            self.catch_up_page_len >= 1,
            "catch_up_page_len must be >= 1",
        )?;
        check(self.mesh_channel_len >= 2, "mesh_channel_len must be >= 2")?;
        check(
            (1..=32_768).contains(&self.ring_depth),
            "ring_depth must be in 1..=32768",
        )?;
        check(
            !self.lag_poll_interval.is_zero(),
            "lag_poll_interval must be > 0",
        )?;
        let up = &self.uploads;
        check(
            up.file_bytes_max >= 1,
            "uploads.file_bytes_max must be >= 1",
        )?;
        check(
            up.quota_bytes_per_user >= up.file_bytes_max,
            "uploads.quota_bytes_per_user must be >= uploads.file_bytes_max",
        )?;
        check(
            (16..=2048).contains(&up.thumbnail_edge_px),
            "uploads.thumbnail_edge_px must be in 16..=2048",
        )?;
        check(
            up.sweep_interval >= Duration::from_millis(10),
            "uploads.sweep_interval must be >= 10 ms",
        )?;
        check(
            up.unsent_max_age >= Duration::from_secs(1),
            "uploads.unsent_max_age must be >= 1 s",
        )?;
        check(
            !self.receipt_event_interval.is_zero(),
            "receipt_event_interval must be > 0",
        )?;
        check(
            self.command_queue_len_max >= 1,
            "command_queue_len_max must be >= 1",
        )?;
        check(
            self.receipt_queue_len_max >= 1,
            "receipt_queue_len_max must be >= 1",
        )?;
        check(
            self.receipt_batch_len_max >= 1,
            "receipt_batch_len_max must be >= 1",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::EngineConfig;
    use crate::Error;

    #[test]
    fn validation_names_the_field_out_of_range() {
        let dir = std::env::temp_dir();
        assert!(EngineConfig::new(&dir).validate().is_ok());
        for (depth, ok) in [
            (0, false),
            (1, true),
            (4096, true),
            (32_768, true),
            (32_769, false),
        ] {
            let mut cfg = EngineConfig::new(&dir);
            cfg.ring_depth = depth;
            match cfg.validate() {
                Ok(()) => assert!(ok, "ring_depth {depth} accepted"),
                Err(Error::InvalidInput(m)) => {
                    assert!(!ok, "ring_depth {depth} refused");
                    assert!(m.contains("ring_depth"), "{m}");
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        let mut cfg = EngineConfig::new(&dir);
        cfg.mesh_channel_len = 1;
        assert!(
            matches!(cfg.validate(), Err(Error::InvalidInput(m)) if m.contains("mesh_channel_len"))
        );
        let mut cfg = EngineConfig::new(&dir);
        cfg.receipt_event_interval = std::time::Duration::ZERO;
        assert!(
            matches!(cfg.validate(), Err(Error::InvalidInput(m)) if m.contains("receipt_event_interval"))
        );
        let mut cfg = EngineConfig::new(&dir);
        cfg.uploads.sweep_interval = std::time::Duration::ZERO;
        assert!(
            matches!(cfg.validate(), Err(Error::InvalidInput(m)) if m.contains("sweep_interval"))
        );
        let mut cfg = EngineConfig::new(&dir);
        cfg.uploads.unsent_max_age = std::time::Duration::from_millis(10);
        assert!(
            matches!(cfg.validate(), Err(Error::InvalidInput(m)) if m.contains("unsent_max_age"))
        );
    }
}
