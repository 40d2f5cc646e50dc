//! This node's place in a cluster (`--nats`, docs/cluster.md): the NATS
//! link, joined before the engine starts; the replica of the cluster's
//! users and sessions, started once the engine is up; requests for rooms
//! this node does not own, forwarded to their owner; what `/readyz` and
//! `/metrics` say of it.
//!
//! Invariant: a node that serves has recorded, or matched, the cluster's
//! node list (`rookery_cluster::Link::claim_nodes`); a node given a
//! different list never starts. A single node (no `--nats`) has no `Node`
//! and runs no NATS code.

pub mod events;
pub mod forward;
pub mod gather;
pub mod notices;
pub mod ops;
pub mod order;
pub mod records;
pub mod relay;
pub mod replica;
pub mod search;
pub mod uploads;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use std::cell::RefCell;

use rookery_cluster::wire::{Wire, WireCounters};
use rookery_cluster::{BucketSpec, ClusterConfig, Link, LinkState};
use serde_json::{json, Value};

use crate::app::ApiError;
use crate::revoked::Revoked;
use replica::Replica;

/// How long a write through the cluster may take to become visible on
/// this node before the request fails with `cluster_unavailable`.
pub const VISIBLE_WITHIN: Duration = Duration::from_secs(5);

/// How long an owner waits, at most, to have the users the asking node had
/// when it asked (a user registered a moment ago, on any node), before
/// it answers anyway. Below the requests' own deadlines.
const USERS_CATCH_UP_MAX: Duration = Duration::from_millis(1000);

/// The queue group in which a node's shards answer operations.
const OPS_QUEUE: &str = "shards";

/// Bytes a shard's wire holds unwritten, at most (past it, publishes are
/// dropped and counted; receivers fill the gaps).
const WIRE_OUT_BYTES_MAX: usize = 8 << 20;

thread_local! {
    /// This shard's own NATS connection (`rookery_cluster::wire`), once
    /// the shard started it: room events, and operations on rooms, go
    /// through it with no thread between the shard and NATS.
    static WIRE: RefCell<Option<Wire>> = const { RefCell::new(None) };
}

/// What an answer crossing NATS may hold, at most: the server's
/// `max_payload` (as this shard's wire heard it; NATS's default 1 MiB
/// otherwise) less room for the answer's own envelope.
pub fn answer_bytes_max() -> usize {
    const ENVELOPE_BYTES: usize = 64 << 10;
    let payload_max = wire().map_or(1 << 20, |w| w.payload_max());
    payload_max
        .saturating_sub(ENVELOPE_BYTES)
        .max(ENVELOPE_BYTES)
}

/// This shard's wire, when it has one.
pub fn wire() -> Option<Wire> {
    WIRE.with(|w| w.borrow().clone())
}

/// This shard's wire when it is connected now: what to send through
/// (the link otherwise).
pub fn connected_wire() -> Option<Wire> {
    wire().filter(Wire::connected)
}

/// A subscription through the link or through a shard's wire.
pub enum NatsSub {
    Link(rookery_cluster::Subscription),
    Wire(rookery_cluster::wire::WireSub),
}

impl NatsSub {
    pub fn messages(&self) -> &flume::Receiver<rookery_cluster::Incoming> {
        match self {
            NatsSub::Link(s) => &s.messages,
            NatsSub::Wire(s) => &s.messages,
        }
    }
}

/// A (node, shard) that tells an owner of a user's presence.
type Reporter = (u32, u32);

/// What a node counts of its cluster traffic (for `/metrics`).
pub struct Counters {
    /// Requests forwarded to the rooms' owners, answered or not.
    pub forwarded: AtomicU64,
    /// Of those, the ones that failed (owner down or late, NATS lost).
    pub forward_failed: AtomicU64,
    /// Time spent in forwarded requests, in microseconds.
    pub forward_micros: AtomicU64,
    /// Requests other nodes forwarded to this one.
    pub answered: AtomicU64,
    /// Gaps in rooms' event streams filled from their owners (messages
    /// NATS lost, handed on), by owner (in the order of the node list).
    pub gap_fills: Box<[AtomicU64]>,
    /// Connections of this node closed as too slow for a room relayed
    /// from another (4008).
    pub relay_slow_closed: AtomicU64,
    /// Subscriptions to relayed rooms that began to lag.
    pub relay_lagged: AtomicU64,
}

impl Counters {
    fn new(nodes: usize) -> Counters {
        Counters {
            forwarded: AtomicU64::new(0),
            forward_failed: AtomicU64::new(0),
            forward_micros: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            gap_fills: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            relay_slow_closed: AtomicU64::new(0),
            relay_lagged: AtomicU64::new(0),
        }
    }

    /// Gap fills from each peer: (node id, count).
    pub fn gap_fills_by_peer<'a>(
        &'a self,
        nodes: &'a [u32],
    ) -> impl Iterator<Item = (u32, u64)> + 'a {
        nodes
            .iter()
            .zip(self.gap_fills.iter())
            .map(|(id, n)| (*id, n.load(Ordering::Relaxed)))
    }

    /// Counts a gap in a room of `owner` filled from it.
    pub fn gap_filled(&self, nodes: &[u32], owner: u32) {
        if let Some(i) = nodes.iter().position(|n| *n == owner) {
            self.gap_fills[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What this node last saw of another: 0 nothing yet, 1 it answered, 2
/// nobody answered for it (down).
const PEER_UNKNOWN: u8 = 0;
const PEER_UP: u8 = 1;
const PEER_DOWN: u8 = 2;

/// A request to `owner`, the node of `room`, that got no answer within
/// `timeout`, as the client sees it.
pub fn unanswered(e: rookery_cluster::Error, room: u64, owner: u32, timeout: Duration) -> ApiError {
    use rookery_cluster::Error::{NoResponders, TimedOut};
    match e {
        NoResponders(_) => {
            ApiError::RoomUnavailable(format!("room {room} is on node {owner}, which is down"))
        }
        TimedOut(_) => ApiError::RoomUnavailable(format!(
            "node {owner}, which owns room {room}, did not answer within {} ms",
            timeout.as_millis()
        )),
        e => ApiError::ClusterUnavailable(e.to_string()),
    }
}

/// The room a direct message's claim names (see `Node::claim_dm_room`).
fn dm_room_of(key: &str, value: &[u8]) -> Result<u64, ApiError> {
    serde_json::from_slice::<Value>(value)
        .ok()
        .and_then(|v| v["room"].as_u64())
        .filter(|&room| room > 0)
        .ok_or_else(|| ApiError::Internal(format!("the cluster's {key} names no room")))
}

/// A node of a cluster.
pub struct Node {
    pub cfg: ClusterConfig,
    pub link: Link,
    pub counters: Counters,
    /// Tokens of rate limits other nodes keep, leased to this one.
    pub leases: crate::rates::Leases,
    /// Requests other nodes forward to this one (shared by the shards).
    pub requests: rookery_cluster::Subscription,
    /// What the shards' wires count, summed.
    pub wire_counters: Arc<WireCounters>,
    /// Whether shards get wires (`--cluster-wires`).
    wires: bool,
    /// Per configured node (in `cfg.nodes` order): how many times this
    /// node saw it start (its start marker change), so that relays tell
    /// a restarted owner again who is present (it forgot).
    starts: Box<[AtomicU64]>,
    /// Notices for users, from every node (shared by the shards).
    pub notices: rookery_cluster::Subscription,
    /// The cluster's bucket (node list, users) and the sessions bucket.
    pub buckets: [String; 2],
    /// Set once the engine is up ([`Node::start_replica`]).
    replica: OnceLock<Arc<Replica>>,
    /// The engine, once up (to forget what a restarted node said).
    engine: OnceLock<rookery_engine::Engine>,
    /// Per configured node (in `cfg.nodes` order): how its last request
    /// went (`PEER_*`), for the dashboard.
    peers: Vec<AtomicU8>,
    /// Owner side: which (node, shard) pairs of other nodes say a user is
    /// present in a room this node owns (`Op::Presence`): the engine
    /// counts the user once per pair set, so a repeated `on` or off
    /// changes nothing, and a node that restarts is forgotten.
    present_from: Mutex<HashMap<(u64, u64), HashSet<Reporter>>>,
}

impl Node {
    /// Connects to NATS, records (or checks) the node list and opens the
    /// cluster's buckets (sessions kept by JetStream for `session_ttl`);
    /// the error says why this node may not join.
    /// Without `wires`, the link carries everything (`--cluster-wires`).
    pub fn join(
        cfg: ClusterConfig,
        session_ttl: Duration,
        wires: bool,
    ) -> rookery_cluster::Result<Node> {
        let link = Link::connect(&cfg)?;
        use futures_lite::future::block_on as block;
        block(link.claim_nodes(&cfg))?;
        let buckets = [cfg.bucket(), format!("{}-sessions", cfg.bucket())];
        let timeout = Duration::from_millis(cfg.connect_timeout_ms);
        let sessions = BucketSpec {
            name: buckets[1].clone(),
            replicas: cfg.kv_replicas,
            // A session's record outlives the session by a minute at most.
            max_age: Some(session_ttl + Duration::from_secs(60)),
        };
        let users = BucketSpec {
            name: buckets[0].clone(),
            replicas: cfg.kv_replicas,
            max_age: None,
        };
        block(link.open_bucket(users, timeout))?;
        block(link.open_bucket(sessions, timeout))?;
        // The id counters exist from the start, so that handing out an id
        // is always a compare-and-set of one (`Node::next_id`).
        for kind in ["room", "user"] {
            let key = records::id_counter_key(kind);
            match block(link.kv_create(&buckets[0], &key, records::json_bytes(&0u64))) {
                Ok(_) | Err(rookery_cluster::Error::KeyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let requests = block(link.subscribe(&forward::subject(&cfg.name, cfg.node_id)))?;
        let notices = block(link.subscribe(&notices::subject(&cfg.name)))?;
        let peers = cfg
            .nodes
            .iter()
            .map(|_| AtomicU8::new(PEER_UNKNOWN))
            .collect();
        let counters = Counters::new(cfg.nodes.len());
        let starts = cfg.nodes.iter().map(|_| AtomicU64::new(0)).collect();
        Ok(Node {
            cfg,
            link,
            counters,
            leases: crate::rates::Leases::default(),
            requests,
            wire_counters: Arc::default(),
            wires,
            starts,
            notices,
            engine: OnceLock::new(),
            peers,
            present_from: Mutex::new(HashMap::new()),
            buckets,
            replica: OnceLock::new(),
        })
    }

    /// This shard's subscription to the operations other nodes ask of
    /// this one, in the queue group of the node's shards (each operation
    /// is answered once, by one of them): through the shard's wire
    /// ([`Node::start_wire`]) when it has one, else through the link.
    pub async fn subscribe_ops(&self, shard: usize) -> rookery_cluster::Result<NatsSub> {
        if let Some(sub) = self.start_wire(shard).await {
            return Ok(sub);
        }
        let subject = ops::subject(&self.cfg.name, self.cfg.node_id);
        let sub = self.link.subscribe_in(&subject, Some(OPS_QUEUE)).await?;
        Ok(NatsSub::Link(sub))
    }

    /// Starts shard `shard`'s wire and waits, at most the connect timeout,
    /// until it is connected; then subscribes it to the node's operations.
    /// None (and no wire) when the NATS servers need what only the link
    /// speaks (TLS) or the wire did not connect in time: the link then
    /// carries this shard's traffic.
    async fn start_wire(&self, shard: usize) -> Option<NatsSub> {
        if !self.wires || !Wire::supports(&self.cfg.nats) {
            return None;
        }
        let name = format!(
            "rookery-{}-{}-shard-{shard}",
            self.cfg.name, self.cfg.node_id
        );
        // Nodes and shards start at different servers of the list.
        let first = self.cfg.node_id as usize + shard;
        let wire = match Wire::start(
            &self.cfg.nats,
            first,
            name,
            WIRE_OUT_BYTES_MAX,
            self.wire_counters.clone(),
        ) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "the shard's wire did not start; the link carries its traffic");
                return None;
            }
        };
        let deadline =
            std::time::Instant::now() + Duration::from_millis(self.cfg.connect_timeout_ms);
        while !wire.connected() && std::time::Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        let subject = ops::subject(&self.cfg.name, self.cfg.node_id);
        let sub = match wire.connected() {
            true => wire.subscribe(&subject, Some(OPS_QUEUE)).ok(),
            false => None,
        };
        let Some(sub) = sub else {
            tracing::warn!(
                shard,
                "the shard's wire did not connect; the link carries its traffic"
            );
            wire.stop();
            return None;
        };
        WIRE.with(|w| *w.borrow_mut() = Some(wire));
        Some(NatsSub::Wire(sub))
    }

    /// Where node `node` is in the configured list (`cfg.nodes`), which
    /// the per-node arrays follow.
    fn index_of(&self, node: u32) -> Option<usize> {
        self.cfg.nodes.iter().position(|n| *n == node)
    }

    /// How many times node `node` was seen to start (see `starts`).
    pub fn starts_of(&self, node: u32) -> u64 {
        self.index_of(node)
            .map_or(0, |i| self.starts[i].load(Ordering::Relaxed))
    }

    /// The revision of the users bucket this node's copy has applied (0
    /// before the copy starts): sent with every request to another node.
    pub fn users_applied(&self) -> u64 {
        self.replica().map_or(0, |r| r.applied(replica::USERS))
    }

    /// Waits, at most `USERS_CATCH_UP_MAX`, until this node has the users
    /// the asking node had (`revision`, its [`Node::users_applied`]), so
    /// that a user it knows is known here too.
    pub async fn catch_up_users(&self, revision: u64) {
        if let Some(r) = self.replica() {
            r.wait(replica::USERS, revision, USERS_CATCH_UP_MAX).await;
        }
    }

    /// Ends this shard's wire, if it has one.
    pub fn stop_wire(&self) {
        if let Some(w) = WIRE.with(|w| w.borrow_mut().take()) {
            w.stop();
        }
    }

    /// Starts the replica of users and sessions into the engine's
    /// directory and waits until it has caught up (at most the connect
    /// timeout).
    pub fn start_replica(
        self: &Arc<Self>,
        engine: rookery_engine::Engine,
        revoked: Arc<Revoked>,
    ) -> anyhow::Result<()> {
        let timeout = Duration::from_millis(self.cfg.connect_timeout_ms);
        let dir = engine.directory();
        let _ = self.engine.set(engine);
        let me = Arc::downgrade(self);
        let restarted = Box::new(move |node: u32| {
            if let Some(me) = me.upgrade() {
                me.forget_presence_of(node);
                if let Some(i) = me.index_of(node) {
                    me.starts[i].fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let replica = Replica::start(
            &self.link,
            self.buckets.clone(),
            self.cfg.node_id,
            dir,
            revoked,
            restarted,
            timeout,
        )?;
        if !replica.wait_caught_up(timeout) {
            anyhow::bail!(
                "the cluster's users and sessions were not copied within {} ms",
                timeout.as_millis()
            );
        }
        let _ = self.replica.set(replica);
        Ok(())
    }

    /// Claims a public room's name for this node, cluster-wide; `Conflict`
    /// when another room has it.
    pub async fn claim_room_name(self: &Arc<Self>, name: &str) -> Result<Arc<Node>, ApiError> {
        let key = records::room_name_key(name);
        // Unique per claim: a create that finds its own value counts as
        // done (rookery_cluster), which two claims of one name must not.
        static CLAIMS: AtomicU64 = AtomicU64::new(0);
        let claim = CLAIMS.fetch_add(1, Ordering::Relaxed);
        let value =
            json!({ "node": self.cfg.node_id, "claim": claim, "ms": crate::auth::now_ms() });
        let value = bytes::Bytes::from(value.to_string());
        match self.link.kv_create(&self.buckets[0], &key, value).await {
            Ok(_) => Ok(self.clone()),
            Err(rookery_cluster::Error::KeyExists(_)) => {
                Err(ApiError::Conflict(format!("room name {name:?}")))
            }
            Err(e) => Err(crate::accounts::cluster_error(e)),
        }
    }

    /// Gives a claimed name back (its room could not be made). A failure
    /// leaves the name taken; it is logged.
    pub async fn release_room_name(&self, name: &str) {
        let key = records::room_name_key(name);
        if let Err(e) = self.link.kv_delete(&self.buckets[0], &key).await {
            tracing::warn!(name, error = %e, "a room name stays claimed");
        }
    }

    /// The direct-message room the cluster gave users `a` and `b`, if it
    /// gave them one.
    pub async fn dm_room(&self, a: u64, b: u64) -> Result<Option<u64>, ApiError> {
        let key = records::dm_key(a, b);
        let got = self.link.kv_get(&self.buckets[0], &key).await;
        match got.map_err(crate::accounts::cluster_error)? {
            Some((value, _)) => dm_room_of(&key, &value).map(Some),
            None => Ok(None),
        }
    }

    /// Claims a new room id for the direct messages of `a` and `b`; the id
    /// that holds when another node claimed the pair first. The room is
    /// made by its owner when first opened (`Op::OpenDm`), so a claim whose
    /// room was never made (a node stopped between) is made by the next.
    pub async fn claim_dm_room(&self, a: u64, b: u64) -> Result<u64, ApiError> {
        let key = records::dm_key(a, b);
        let id = self.next_id("room").await?;
        let value = bytes::Bytes::from(json!({ "room": id }).to_string());
        // Twice: a claim found and then gone was given back meanwhile.
        for _ in 0..2 {
            let made = self
                .link
                .kv_create(&self.buckets[0], &key, value.clone())
                .await;
            match made {
                Ok(_) => return Ok(id),
                Err(rookery_cluster::Error::KeyExists(_)) => {
                    if let Some(room) = self.dm_room(a, b).await? {
                        return Ok(room);
                    }
                }
                Err(e) => return Err(crate::accounts::cluster_error(e)),
            }
        }
        Err(ApiError::Conflict(format!(
            "the direct message of users {a} and {b} is being made and deleted at once"
        )))
    }

    /// Replaces the pair's claim of room `stale`, which cannot be opened
    /// (it was deleted and the claim not given back), with a new room id;
    /// the room the pair's claim names now.
    pub async fn renew_dm_room(&self, a: u64, b: u64, stale: u64) -> Result<u64, ApiError> {
        let key = records::dm_key(a, b);
        let got = self.link.kv_get(&self.buckets[0], &key).await;
        match got.map_err(crate::accounts::cluster_error)? {
            Some((value, revision)) if dm_room_of(&key, &value)? == stale => {
                let id = self.next_id("room").await?;
                let value = bytes::Bytes::from(json!({ "room": id }).to_string());
                let set = self
                    .link
                    .kv_update(&self.buckets[0], &key, value, revision)
                    .await;
                match set {
                    Ok(_) => Ok(id),
                    // Another node renewed it first: theirs holds.
                    Err(rookery_cluster::Error::Conflict(_)) => match self.dm_room(a, b).await? {
                        Some(room) => Ok(room),
                        None => self.claim_dm_room(a, b).await,
                    },
                    Err(e) => Err(crate::accounts::cluster_error(e)),
                }
            }
            Some((value, _)) => dm_room_of(&key, &value),
            None => self.claim_dm_room(a, b).await,
        }
    }

    /// Gives the pair's claim back (its room was deleted): their next
    /// direct message makes a new room. A failure is logged; the next open
    /// of the pair then finds the deleted room and renews the claim
    /// ([`Node::renew_dm_room`]).
    pub async fn release_dm_room(&self, a: u64, b: u64) {
        let key = records::dm_key(a, b);
        if let Err(e) = self.link.kv_delete(&self.buckets[0], &key).await {
            tracing::warn!(a, b, error = %e, "a deleted direct message stays claimed");
        }
    }

    /// Owner side: `from` (a node's shard) says `user` is present in
    /// `room` (`on`) or no longer; the engine hears the user's first and
    /// last. Idempotent.
    pub async fn presence_from(
        &self,
        engine: &rookery_engine::Engine,
        room: u64,
        user: u64,
        on: bool,
        from: (u32, u32),
    ) -> rookery_engine::Result<()> {
        let change = {
            let Ok(mut all) = self.present_from.lock() else {
                return Ok(());
            };
            let set = all.entry((room, user)).or_default();
            let was = !set.is_empty();
            if on {
                set.insert(from);
            } else {
                set.remove(&from);
            }
            let now = !set.is_empty();
            if !now {
                all.remove(&(room, user));
            }
            (was != now).then_some(now)
        };
        match change {
            Some(now) => engine.presence(room, user, now).await,
            None => Ok(()),
        }
    }

    /// Node `node` restarted (its start marker changed): what it said of
    /// presence in this node's rooms no longer holds. Runs on the
    /// replica's thread.
    fn forget_presence_of(&self, node: u32) {
        if node == self.cfg.node_id {
            return;
        }
        let gone: Vec<(u64, u64)> = {
            let Ok(mut all) = self.present_from.lock() else {
                return;
            };
            let mut gone = Vec::new();
            all.retain(|key, set| {
                let before = set.len();
                set.retain(|(n, _)| *n != node);
                if set.is_empty() && before > 0 {
                    gone.push(*key);
                }
                !set.is_empty()
            });
            gone
        };
        let Some(engine) = self.engine.get() else {
            return;
        };
        for (room, user) in gone {
            let _ = engine.presence(room, user, false).wait();
        }
    }

    /// The replica, once started.
    pub fn replica(&self) -> Option<&Arc<Replica>> {
        self.replica.get()
    }

    /// Whether the NATS link is up.
    pub fn connected(&self) -> bool {
        self.link.state() == LinkState::Connected
    }

    /// The node that owns `room`.
    pub fn owner_of(&self, room: u64) -> u32 {
        rookery_cluster::owner_of(room, &self.cfg.nodes)
    }

    /// Refuses at once, with `cluster_unavailable`, what needs node
    /// `owner` (for `room`) while NATS cannot be reached.
    pub fn need_nats(&self, room: u64, owner: u32) -> Result<(), ApiError> {
        if self.connected() {
            return Ok(());
        }
        Err(ApiError::ClusterUnavailable(format!(
            "room {room} is on node {owner} and NATS is unreachable"
        )))
    }

    /// Sends a request to node `to` on `subject` and notes, for the
    /// dashboard, whether it answered.
    pub async fn request(
        &self,
        to: u32,
        subject: &str,
        payload: bytes::Bytes,
        timeout: Duration,
    ) -> rookery_cluster::Result<bytes::Bytes> {
        use rookery_cluster::Error::{NoResponders, TimedOut};
        let answered = match connected_wire() {
            Some(w) => w.request(subject, &payload, timeout).await,
            None => self.link.request(subject, payload, timeout).await,
        };
        self.heard(to, !matches!(answered, Err(NoResponders(_) | TimedOut(_))));
        answered
    }

    /// Notes how a request to node `node` went: answered (`up`) or not
    /// (nobody listens for it, or it is late).
    fn heard(&self, node: u32, up: bool) {
        if let Some(i) = self.index_of(node) {
            let state = if up { PEER_UP } else { PEER_DOWN };
            self.peers[i].store(state, Ordering::Relaxed);
        }
    }

    /// The nodes as this one sees them, for the dashboard: itself, and
    /// each other node as its last request went.
    pub fn nodes_view(&self) -> Value {
        let nodes: Vec<Value> = self
            .cfg
            .nodes
            .iter()
            .zip(&self.peers)
            .map(|(id, seen)| {
                let state = match seen.load(Ordering::Relaxed) {
                    _ if *id == self.cfg.node_id => "this node",
                    PEER_UP => "up",
                    PEER_DOWN => "down",
                    _ => "not asked yet",
                };
                json!({"id": id, "state": state})
            })
            .collect();
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut view = self.view();
        view["peers"] = Value::Array(nodes);
        view["forwarded"] = load(&c.forwarded).into();
        view["forward_failed"] = load(&c.forward_failed).into();
        view["answered"] = load(&c.answered).into();
        view["gap_fills"] = c
            .gap_fills_by_peer(&self.cfg.nodes)
            .map(|(_, n)| n)
            .sum::<u64>()
            .into();
        view
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
            "replica": if self.replica().is_some_and(|r| r.caught_up()) { "caught_up" } else { "starting" },
        })
    }
}
