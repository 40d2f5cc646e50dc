//! This node's place in a cluster (`--nats`): the NATS link, joined before
//! the engine starts, and what `/readyz` and `/metrics` say of it.
//!
//! Invariant: a node that serves has recorded, or matched, the cluster's
//! node list (`rookery_cluster::Link::claim_nodes`); a node given a
//! different list never starts. A single node (no `--nats`) has no `Node`
//! and runs no NATS code.

use rookery_cluster::{ClusterConfig, Link, LinkState};
use serde_json::{json, Value};

/// A node of a cluster.
pub struct Node {
    pub cfg: ClusterConfig,
    pub link: Link,
}

impl Node {
    /// Connects to NATS and records (or checks) the node list; the error
    /// says why this node may not join.
    pub fn join(cfg: ClusterConfig) -> rookery_cluster::Result<Node> {
        let link = Link::connect(&cfg)?;
        futures_lite::future::block_on(link.claim_nodes(&cfg))?;
        Ok(Node { cfg, link })
    }

    /// Whether the NATS link is up.
    pub fn connected(&self) -> bool {
        self.link.state() == LinkState::Connected
    }

    /// The node's view of the cluster, for `/readyz`.
    pub fn view(&self) -> Value {
        let nats = match self.link.state() {
            LinkState::Connected => "connected",
            LinkState::Disconnected => "disconnected",
            LinkState::Pending => "connecting",
        };
        json!({
            "name": self.cfg.name,
            "node": self.cfg.node_id,
            "nodes": self.cfg.nodes,
            "nats": nats,
        })
    }
}
