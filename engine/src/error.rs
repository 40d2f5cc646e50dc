//! The one error type of `rookery-engine`.

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything an engine call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage layer failed (I/O, corruption, a closed store).
    #[error(transparent)]
    Storage(rookery_storage::Error),
    /// A unique name (user, room) is already taken.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The room or message does not exist (or is no longer live).
    #[error("not found: {0}")]
    NotFound(String),
    /// The user may not do this (edit another's message without being a
    /// room admin, post in a private room without being a member).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The user is banned from the room (joining, accepting an
    /// invitation).
    #[error("banned: {0}")]
    Banned(String),
    /// The call conflicts with the room's state (the owner leaving without
    /// handing ownership on, inviting a banned user).
    #[error("conflict: {0}")]
    Conflict(String),
    /// An argument breaks a documented limit.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// What was sent is larger than a limit allows (an upload over the
    /// file limit or over what is left of its owner's quota).
    #[error("too large: {0}")]
    TooLarge(String),
    /// A rate limit refused the call (typing events).
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// A bounded queue is full (read receipts); retry later.
    #[error("busy: {0}")]
    Busy(String),
    /// The engine is shutting down or has stopped.
    #[error("engine is shut down")]
    ShutDown,
    /// The subscription was closed because its consumer stopped reading for
    /// longer than the stuck timeout (WebSocket close code 4008).
    #[error("slow consumer: subscription closed")]
    SlowConsumer,
    /// The engine failed to start (a shard could not open its storage).
    #[error("engine failed to start: {0}")]
    Start(String),
}

/// Storage's refusals of bad input become the engine's own variants (what
/// a caller can act on); the rest stays a storage failure.
impl From<rookery_storage::Error> for Error {
    fn from(e: rookery_storage::Error) -> Self {
        use rookery_storage::Error as S;
        match e {
            S::InvalidInput(m) => Error::InvalidInput(m),
            S::NotFound(m) => Error::NotFound(m),
            S::AlreadyExists(m) => Error::AlreadyExists(m),
            S::TooMany(m) => Error::Conflict(m),
            other => Error::Storage(other),
        }
    }
}
