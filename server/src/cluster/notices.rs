//! Notices for a user (an invitation's `invited` event, the server API's
//! disconnect) across nodes.
//! A node that makes a notice queues it for its own connections, as on
//! one node, and publishes it once on `rk.<cluster>.notices`; every other
//! node queues it for its own. At most once, as a notice on one node is
//! (the invitation itself is stored: `GET /api/invites`).
//!
//! Invariant: a node queues a notice once (each message of the node's
//! subscription reaches one of its shards, and its own are skipped), into
//! the node's bounded `Notices`.

use std::rc::Rc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::Node;
use crate::notices::What;
use crate::shared::Shared;

/// The subject every node of cluster `name` hears notices on.
pub fn subject(name: &str) -> String {
    format!("rk.{name}.notices")
}

/// One notice on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct WireNotice {
    /// The node that made it (and queued it already).
    node: u32,
    user: u64,
    /// The whole JSON text frame for the user's WebSockets; `None`: close
    /// them (a disconnect).
    frame: Option<String>,
}

/// Queues `frame` for `user`'s WebSockets on this node and, in a cluster,
/// on every other.
pub fn notify(shared: &Shared, user: u64, frame: String) {
    publish(shared, user, Some(frame.clone()));
    shared
        .notices
        .push(user, What::Frame(frame.into()), Instant::now());
}

/// Closes `user`'s WebSockets open now, on this node and, in a cluster,
/// on every other (each within a sweep interval of hearing it); false
/// when the other nodes could not be told (this node's are closed).
pub fn disconnect(shared: &Shared, user: u64) -> bool {
    shared.notices.push(user, What::Disconnect, Instant::now());
    publish(shared, user, None)
}

/// Publishes a notice for the other nodes; whether it left (always true
/// on one node).
fn publish(shared: &Shared, user: u64, frame: Option<String>) -> bool {
    let Some(node) = &shared.cluster else {
        return true;
    };
    let wire = WireNotice {
        node: node.cfg.node_id,
        user,
        frame,
    };
    let payload = super::records::json_bytes(&wire);
    node.link.try_publish(subject(&node.cfg.name), payload)
}

/// Queues the notices other nodes publish, on this shard, until it stops.
pub async fn hear(shared: Rc<Shared>, node: std::sync::Arc<Node>) {
    let notices = node.notices.clone();
    loop {
        let Some(Ok(m)) = shared.unless_stopped(notices.recv_async()).await else {
            return;
        };
        match serde_json::from_slice::<WireNotice>(&m.payload) {
            Ok(n) if n.node != node.cfg.node_id => {
                let what = n.frame.map_or(What::Disconnect, |f| What::Frame(f.into()));
                shared.notices.push(n.user, what, Instant::now());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("a notice that is not one: {e}"),
        }
    }
}
