//! What a node asks of a room's owner for its WebSocket clients (join,
//! send, edit, delete, typing, read, history) and for its relay (the
//! messages after a seq): one request/reply per operation, answered by the
//! owner with the same checks a WebSocket on the owner gets. Also what a
//! node asks of the home of a rate limit's key (`crate::rates`).
//!
//! The user in an operation is one the asking node authenticated (NATS is
//! the cluster's private network, as for forwarded HTTP requests).

use std::time::Duration;

use rookery_engine::{Cursor, Order};
use serde::{Deserialize, Serialize};

use super::Node;
use crate::app::{self, ApiError, PageQuery};
use crate::limits::Bucket;
use crate::shared::Shared;

/// How long an operation may take before it fails with
/// `room_unavailable`.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1500);

/// Bytes of messages in one replay answer, at most (counted twice over,
/// for JSON escaping): NATS refuses payloads over 1 MiB by default, and an
/// answer it refuses would never arrive.
const REPLAY_BYTES_MAX: usize = 512 << 10;

/// The subject node `node` of cluster `name` answers operations on.
pub fn subject(name: &str, node: u32) -> String {
    format!("rk.{name}.node.{node}.op")
}

/// An operation on a room, for its owner.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Joins a public room (members are left as they are); the room's last
    /// seq and who is online.
    Join {
        room: u64,
        user: u64,
    },
    /// The asking shard's (`node`, `shard`) first subscription of `user`
    /// to `room` began (`on`), or its last ended. Idempotent.
    Presence {
        room: u64,
        user: u64,
        on: bool,
        node: u32,
        shard: u32,
    },
    /// Which of `users` may still follow `room`, and its last seq (a
    /// relay's periodic check).
    Allowed {
        room: u64,
        users: Vec<u64>,
    },
    Post {
        room: u64,
        user: u64,
        client_id: String,
        body: String,
        /// The seq it replies to.
        #[serde(default)]
        reply_to: Option<u64>,
        /// The uploads it carries (the user's own, on the owner's node),
        /// as 32 hex digits each (JSON numbers cannot hold 128 bits).
        #[serde(default)]
        files: Vec<String>,
    },
    Edit {
        room: u64,
        user: u64,
        seq: u64,
        body: String,
    },
    Delete {
        room: u64,
        user: u64,
        seq: u64,
    },
    React {
        room: u64,
        user: u64,
        seq: u64,
        emoji: String,
        on: bool,
    },
    Typing {
        room: u64,
        user: u64,
    },
    Read {
        room: u64,
        user: u64,
        seq: u64,
    },
    /// A history page, as the WebSocket `history` frame shows it.
    History {
        room: u64,
        user: u64,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u64>,
    },
    /// Up to `limit` messages after `after`, as live events, for a node's
    /// relay (no user: the node asks for its subscribers, already checked).
    Replay {
        room: u64,
        after: u64,
        limit: usize,
    },
    /// Opens the direct-message room `room` the cluster gave `user` and
    /// `other` (making it if it is not made yet), as `POST /api/dms` does.
    OpenDm {
        room: u64,
        user: u64,
        other: u64,
    },
    /// Up to `want` tokens of `key`'s bucket, of which the asked node is
    /// the home.
    Take {
        bucket: Bucket,
        key: u64,
        want: u32,
    },
    /// A token of `key`'s bucket returned.
    GiveBack {
        bucket: Bucket,
        key: u64,
    },
}

/// A message as a live event: its seq, time and JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireEvent {
    pub seq: u64,
    pub ts: u64,
    pub json: String,
}

/// The owner's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    Joined {
        last_seq: u64,
        online: Vec<u64>,
    },
    Posted {
        seq: u64,
        ts: u64,
        duplicate: bool,
    },
    Done,
    Read {
        seq: u64,
    },
    Page {
        page: serde_json::Value,
    },
    Events {
        events: Vec<WireEvent>,
    },
    Allowed {
        users: Vec<u64>,
        last_seq: u64,
    },
    Granted {
        tokens: u32,
    },
    /// A direct message opened: the status and body `POST /api/dms`
    /// answers.
    Opened {
        status: u16,
        dm: serde_json::Value,
    },
    Refused {
        retry_after_ms: u64,
    },
    Error {
        status: u16,
        code: String,
        message: String,
    },
}

impl Op {
    /// The room an operation is on (`None` for a rate limit's).
    fn room(&self) -> Option<u64> {
        Some(match self {
            Op::Join { room, .. }
            | Op::Presence { room, .. }
            | Op::Allowed { room, .. }
            | Op::Post { room, .. }
            | Op::Edit { room, .. }
            | Op::Delete { room, .. }
            | Op::React { room, .. }
            | Op::Typing { room, .. }
            | Op::Read { room, .. }
            | Op::History { room, .. }
            | Op::Replay { room, .. }
            | Op::OpenDm { room, .. } => *room,
            Op::Take { .. } | Op::GiveBack { .. } => return None,
        })
    }
}

/// Asks the owner of the operation's room; its answer, or why not as the
/// client should see it (`room_unavailable`, `cluster_unavailable`, or the
/// owner's own refusal).
pub async fn ask(node: &Node, op: &Op) -> Result<Answer, ApiError> {
    let room = op.room().expect("an operation on a room");
    let owner = node.owner_of(room);
    node.need_nats(room, owner)?;
    ask_node(node, owner, op, OP_TIMEOUT)
        .await
        .map_err(|e| match e {
            Asked::Unanswered(e) => super::unanswered(e, room, owner, OP_TIMEOUT),
            Asked::Refused(e) => e,
        })
}

/// Why [`ask_node`] has no answer.
#[derive(Debug)]
pub enum Asked {
    /// Nobody answered (or NATS failed).
    Unanswered(rookery_cluster::Error),
    /// The node refused, or answered what is not an answer.
    Refused(ApiError),
}

impl std::fmt::Display for Asked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Asked::Unanswered(e) => e.fmt(f),
            Asked::Refused(e) => write!(f, "{:?}", e.parts()),
        }
    }
}

/// Asks node `to` to carry out `op`, waiting `timeout` at most.
pub async fn ask_node(node: &Node, to: u32, op: &Op, timeout: Duration) -> Result<Answer, Asked> {
    let subject = subject(&node.cfg.name, to);
    let asked = Envelope {
        users: node.users_applied(),
        op,
    };
    let answer = node
        .request(to, &subject, super::records::json_bytes(&asked), timeout)
        .await
        .map_err(Asked::Unanswered)?;
    let answer = match serde_json::from_slice(&answer) {
        Ok(Answer::Error {
            status,
            code,
            message,
        }) => Err(ApiError::Remote {
            status,
            code: app::error_code(&code),
            message,
        }),
        Ok(a) => Ok(a),
        Err(e) => Err(ApiError::Internal(format!(
            "node {to} answered garbage: {e}"
        ))),
    };
    answer.map_err(Asked::Refused)
}

/// Joins `user` to `room` through its owner: the room's last seq and who
/// is online.
pub async fn join(node: &Node, room: u64, user: u64) -> Result<(u64, Vec<u64>), ApiError> {
    match ask(node, &Op::Join { room, user }).await? {
        Answer::Joined { last_seq, online } => Ok((last_seq, online)),
        _ => Err(ApiError::Internal("a join answered something else".into())),
    }
}

/// Carries out an operation another node asked of this one (the owner).
pub async fn answer(shared: &Shared, payload: &[u8]) -> Answer {
    let asked: Envelope<Op> = match serde_json::from_slice(payload) {
        Ok(asked) => asked,
        Err(e) => return refusal(ApiError::BadRequest(format!("not an operation: {e}"))),
    };
    if let Some(node) = &shared.cluster {
        node.catch_up_users(asked.users).await;
    }
    execute(shared, asked.op).await.unwrap_or_else(refusal)
}

/// An operation as it travels: with the users bucket's revision the
/// asking node had applied, which the owner waits for (briefly) first.
#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    #[serde(default)]
    users: u64,
    op: T,
}

pub(super) fn refusal(e: ApiError) -> Answer {
    let (status, code, message) = e.parts();
    Answer::Error {
        status,
        code: code.to_string(),
        message,
    }
}

async fn execute(shared: &Shared, op: Op) -> Result<Answer, ApiError> {
    let engine = &shared.engine;
    Ok(match op {
        Op::Join { room, user } => {
            engine.ensure_member(room, user).await?;
            let (last, online) = futures_lite::future::zip(
                std::future::IntoFuture::into_future(engine.last_seq(room)),
                std::future::IntoFuture::into_future(engine.online(room)),
            )
            .await;
            Answer::Joined {
                last_seq: last?,
                online: online?,
            }
        }
        Op::OpenDm { room, user, other } => {
            let (status, dm) = crate::routes::open_dm_here(shared, Some(room), user, other).await?;
            Answer::Opened { status, dm }
        }
        Op::Presence {
            room,
            user,
            on,
            node,
            shard,
        } => {
            let here = shared
                .cluster
                .as_ref()
                .ok_or_else(|| ApiError::Internal("not a cluster node".into()))?;
            here.presence_from(engine, room, user, on, (node, shard))
                .await?;
            Answer::Done
        }
        Op::Allowed { room, users } => {
            let mut allowed = Vec::with_capacity(users.len());
            for user in users {
                if app::readable_room(shared, user, room).await.is_ok() {
                    allowed.push(user);
                }
            }
            Answer::Allowed {
                users: allowed,
                last_seq: engine.last_seq(room).await?,
            }
        }
        Op::Post {
            room,
            user,
            client_id,
            body,
            reply_to,
            files,
        } => {
            let files = app::upload_ids(&files)?;
            let post = || async {
                let files = files.clone();
                Ok(engine
                    .post_with(room, user, &client_id, &body, reply_to, files)
                    .await?)
            };
            let ack = super::uploads::carrying(shared, user, room, &files, post).await?;
            Answer::Posted {
                seq: ack.seq,
                ts: ack.ts_ms,
                duplicate: ack.duplicate,
            }
        }
        Op::Edit {
            room,
            user,
            seq,
            body,
        } => {
            app::readable_room(shared, user, room).await?;
            engine.edit(room, seq, user, &body).await?;
            Answer::Done
        }
        Op::Delete { room, user, seq } => {
            app::readable_room(shared, user, room).await?;
            engine.delete(room, seq, user).await?;
            Answer::Done
        }
        Op::React {
            room,
            user,
            seq,
            emoji,
            on,
        } => {
            app::readable_room(shared, user, room).await?;
            engine.react(room, seq, user, &emoji, on).await?;
            Answer::Done
        }
        Op::Typing { room, user } => {
            engine.typing(room, user).await?;
            Answer::Done
        }
        Op::Read { room, user, seq } => {
            app::readable_room(shared, user, room).await?;
            Answer::Read {
                seq: engine.mark_read(room, user, seq).await?,
            }
        }
        Op::History {
            room,
            user,
            before,
            after,
            limit,
        } => {
            app::readable_room(shared, user, room).await?;
            let q = PageQuery {
                before,
                after,
                limit,
                bytes_max: Some(super::answer_bytes_max()),
                reader: Some(user),
            };
            let (page, _) = app::history_page(shared, room, q).await?;
            let page = serde_json::to_value(&page)
                .map_err(|e| ApiError::Internal(format!("a history page: {e}")))?;
            Answer::Page { page }
        }
        Op::Take { bucket, key, want } => {
            match crate::rates::take_here(shared, bucket, key, want) {
                Ok(tokens) => Answer::Granted { tokens },
                Err(retry_after_ms) => Answer::Refused { retry_after_ms },
            }
        }
        Op::GiveBack { bucket, key } => {
            crate::rates::give_back_here(shared, bucket, key);
            Answer::Done
        }
        Op::Replay { room, after, limit } => {
            let cursor = Cursor {
                after: Some(after),
                before: None,
                limit: limit.clamp(1, shared.cfg.history_page_len_max),
                order: Order::OldestFirst,
            };
            let page = engine.history(room, cursor).await?;
            // Under NATS's payload limit: the rest comes with the next ask.
            let mut bytes = 0;
            let mut events = Vec::new();
            for m in &page.messages {
                let e = m.event(room);
                bytes += e.payload().len() * 2 + 64;
                if bytes > REPLAY_BYTES_MAX && !events.is_empty() {
                    break;
                }
                events.push(WireEvent {
                    seq: e.seq(),
                    ts: e.ts_ms(),
                    json: e.json().to_string(),
                });
            }
            Answer::Events { events }
        }
    })
}
