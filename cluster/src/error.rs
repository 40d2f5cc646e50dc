//! The crate's one error type.

/// What a cluster operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range or malformed; the message names it.
    #[error("{0}")]
    InvalidConfig(String),
    /// No NATS server of the list could be reached in time.
    #[error("connecting to NATS ({servers}): {why}")]
    Connect {
        /// The servers tried.
        servers: String,
        /// The last failure.
        why: String,
    },
    /// Nothing listens on the subject (the node that would answer is down
    /// or not yet subscribed).
    #[error("no responder on {0}")]
    NoResponders(String),
    /// A request got no answer within its deadline.
    #[error("request on {0} timed out")]
    TimedOut(String),
    /// The cluster recorded a different node list than this node was given:
    /// rooms would move away from their logs.
    #[error("this cluster was created with nodes [{recorded}]; this node was started with [{configured}] (changing the node list of a cluster that holds data is not supported)")]
    NodesChanged {
        /// The list the cluster holds.
        recorded: String,
        /// The list given to this node.
        configured: String,
    },
    /// A key-value create found the key already set.
    #[error("key {0} already exists")]
    KeyExists(String),
    /// A key-value update found another revision than the one it expected
    /// (another write came first).
    #[error("key {0} changed meanwhile")]
    Conflict(String),
    /// The link's thread is gone (the link was closed or its runtime
    /// failed).
    #[error("the NATS link is closed")]
    Closed,
    /// Any other failure NATS reported; the message says which.
    #[error("NATS: {0}")]
    Nats(String),
}

/// This crate's result.
pub type Result<T> = std::result::Result<T, Error>;
