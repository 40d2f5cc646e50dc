//! # rookery-engine
//!
//! Thread-per-core chat engine: shards (one pinned glommio executor per
//! core), rooms owned by one shard each (`shard_of(room)`), messages made
//! durable by the owner and fanned out to subscribers on every shard, in
//! order, with no gap, no duplicate and bounded memory. docs/engine.md walks
//! the path of one message; docs/architecture.md places the engine between
//! the server and storage.
//!
//! The embed API is [`Engine`]: a `Send + Sync + Clone` handle usable from
//! any thread. Calls return a [`Pending`] reply: `.wait()` blocks, `.await`
//! works on any async runtime.
//!
//! ```
//! use rookery_engine::{Engine, EngineConfig};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let mut cfg = EngineConfig::new(dir.path());
//! cfg.storage.shards = 2;
//! cfg.storage.segment_bytes_max = 1 << 20;
//! let engine = Engine::start(cfg).unwrap();
//!
//! let sub = engine.subscribe(7, Some(0)).wait().unwrap();
//! let ack = engine.post(7, 1, "c-1", "hello").wait().unwrap();
//! assert_eq!(ack.seq, 1);
//! let event = sub.recv().unwrap();
//! assert_eq!(event.seq(), 1);
//! assert!(event.json().contains("\"body\":\"hello\""));
//! drop(sub);
//! engine.shutdown().unwrap();
//! ```

mod config;
mod consumer;
mod directory;
pub mod emoji;
mod engine;
mod error;
mod event;
mod kick;
mod local;
mod metrics;
mod queues;
mod receipts;
mod reply;
mod rules;
mod search;
mod shard;
mod subscription;
mod uploads;

pub use config::{EngineConfig, EventTap, Tapped};
pub use consumer::{Delivery, LocalSink};
pub use directory::{
    Ban, Directory, Dm, DmOpened, Invite, ListPage, MemberChange, MemberEvent, MemberView, Profile,
    ProfileEdit, Role, Room, SearchCursor, SearchPage, Standing, Upload, User,
    INVITES_PER_USER_MAX, MEMBER_FEED_STREAM, QUERY_WORDS_MAX, WORD_BYTES_MAX,
};
pub use engine::{Engine, ShardTask};
pub use error::{Error, Result};
pub use event::{Event, EventKind, Message};
pub use local::{Local, LocalInbox};
pub use metrics::{micros_histogram, Latencies, Metrics, ShardCounters, ShardGauges};
pub use reply::Pending;
pub use rookery_storage::backup;
pub use rookery_storage::meta::{NAME_BYTES_MAX, SERVER_USER};
pub use rookery_storage::{
    dir_bytes, ArchivedFileRef, ArchivedRecord, Cursor, Doorbell, Durability, FeedRead, IdFilter,
    LogFeed, LogFeeds, Order, Pos, Replicated, Retention, RetentionReport, ShardStats,
    StorageConfig, FILES_PER_MESSAGE_MAX, INTERNAL_READER_PREFIX, QUIET_LOG_DIRECTIVE,
    SYNC_BATCH_BOUNDS,
};
pub use rules::{decide, role_word, MemberOp, Membership};
pub use search::{
    Search, SearchConfig, SearchHit, SearchQuery, SearchResults, SearchStatus, QUERY_BYTES_MAX,
    QUERY_TERMS_MAX, SEARCH_DEPTH_MAX,
};
pub use shard::{
    Attachment, DeletedRoom, HistoryPage, PostAck, Quote, ReadState, ReplyTo, StoredMessage,
    ThreadPage, QUOTE_BYTES_MAX,
};
pub use subscription::{Inbox, Subscription};
pub use uploads::{sniff, UploadLimits, Uploads, DECODES_AT_ONCE, INLINE_TYPES};
