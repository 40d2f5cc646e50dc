//! # rookery-cluster
//!
//! The NATS side of a Rookery cluster (docs/cluster.md): several nodes
//! serve one chat, each room owned by one node. This crate owns what every
//! node needs before it can take part, free of the engine and the server:
//!
//! - [`ClusterConfig`]: the cluster's name, this node's id, the configured
//!   node list and the NATS servers, validated.
//! - [`owner_of`]: which node owns a room (rendezvous hashing over the
//!   *configured* list, so ownership never moves because a node is down).
//! - [`Link`]: the NATS client (`async-nats`, which needs tokio) on a
//!   thread of its own with a current-thread runtime; any thread or
//!   executor talks to it through channels. It also records the node list
//!   in a JetStream key-value bucket, so that a node started with another
//!   list refuses to run ([`Error::NodesChanged`]).
//!
//! - [`wire::Wire`]: a shard's own connection to NATS for the hot path
//!   (room events, requests to rooms' owners), spoken by the shard's
//!   executor with no thread between (`wire/mod.rs` says why).
//!
//! Dependencies point one way: the server uses this crate; this crate uses
//! neither the engine nor storage.

mod config;
mod error;
mod kv;
mod link;
mod owner;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod wire;

pub use config::ClusterConfig;
pub use error::{Error, Result};
pub use kv::{BucketSpec, KvChange};
pub use link::{Incoming, Link, LinkState, Subscription};
pub use owner::owner_of;
