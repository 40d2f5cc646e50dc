//! The one error type of `rookery-storage`.
//!
//! Every fallible operation of the crate returns [`Error`]. Variants separate
//! what a caller can act on (bad input, missing data, a limit) from what an
//! operator must act on (I/O failure, corruption). Messages name the file and
//! the offset where that helps someone fix a data directory by hand.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in storage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A glommio file or executor operation failed.
    #[error("glommio error: {0}")]
    Glommio(String),
    /// The embedded index or metadata database failed.
    #[error("database error: {0}")]
    Database(String),
    /// The log holds a damaged record that is not a torn tail: data that was
    /// once acknowledged cannot be trusted. `rookery-admin verify` reports it
    /// and `rookery-admin salvage` can cut the log before it.
    #[error("corrupt log: segment {segment} offset {offset}: {reason}")]
    Corrupt {
        /// Segment id (file `{segment:08}.seg`).
        segment: u32,
        /// Byte offset of the damaged record inside the segment.
        offset: u32,
        /// What check failed.
        reason: String,
    },
    /// The index disagrees with the log (for example it points past the end
    /// of the recovered log); the log is the truth, the index must be rebuilt.
    #[error("index inconsistent with log: {0}")]
    IndexMismatch(String),
    /// The data directory was created with another shard count or format.
    #[error("manifest mismatch: {0}")]
    Manifest(String),
    /// A configuration value is out of its allowed range.
    #[error("invalid storage config: {0}")]
    Config(String),
    /// An argument breaks a documented precondition (empty name, body over
    /// the size limit, seq not greater than the room's last seq on import...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A named thing (user, room, message, session) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A unique name (user name, room name) is already taken.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The change would pass a bound on what is stored about one thing
    /// (the reactions on a message).
    #[error("too many: {0}")]
    TooMany(String),
    /// The shard store was shut down, or its background index thread died.
    #[error("storage closed")]
    Closed,
    /// A write, sync or index commit failed earlier; the shard accepts no
    /// more writes until it is reopened (which recovers from the log).
    #[error("shard stopped after a failure: {0}")]
    Failed(String),
}

impl Error {
    /// Wraps an [`std::io::Error`] with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(segment: u32, offset: u32, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            segment,
            offset,
            reason: reason.into(),
        }
    }
}

impl From<glommio::GlommioError<()>> for Error {
    fn from(e: glommio::GlommioError<()>) -> Self {
        Error::Glommio(e.to_string())
    }
}

macro_rules! db_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Database(e.to_string())
            }
        }
    )*};
}

db_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
