//! The export format: JSON lines, each an object whose `type` names it.
//!
//! The first line is the header `{"type":"rookery-export","version":1,
//! "shards":N}`; then users, rooms, members, bans, invitations and
//! receipts; then log records
//! (`message`, `edit`, `delete`, `react`) in log order, which keeps every room's
//! records in their original order; a reply is a `message` with
//! `reply_to` and `thread`. Unknown fields are ignored on import.

use rookery_storage::meta::{Role, Room, User};
use rookery_storage::{Delete, Edit, FileRef, Message, Post, React, Record, Reply, Retention};
use serde::{Deserialize, Serialize};

/// Format version written in the header.
pub const VERSION: u32 = 1;

/// One line of an export.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// The first line.
    #[serde(rename = "rookery-export")]
    Header {
        /// Format version, [`VERSION`].
        version: u32,
        /// Shard count of the exported directory.
        shards: u32,
    },
    /// A user, with its password hash (an argon2 PHC string, or null for a
    /// user vouched for by an app backend).
    User {
        /// User id.
        id: u64,
        /// Login name.
        name: String,
        /// Creation time, ms since the Unix epoch.
        created_ms: u64,
        /// Argon2 PHC string.
        password_hash: Option<String>,
    },
    /// A user's profile (after the user's line).
    Profile {
        /// User id.
        user: u64,
        /// The name they show ("" for none).
        display_name: String,
        /// Their status text ("" for none).
        status: String,
        /// When it last changed, ms since the Unix epoch.
        updated_ms: u64,
    },
    /// A room.
    Room {
        /// Room id.
        id: u64,
        /// Room name.
        name: String,
        /// Visible to members only.
        private: bool,
        /// Creator's user id.
        creator: u64,
        /// Creation time, ms since the Unix epoch.
        created_ms: u64,
        /// Highest indexed seq recorded in meta.
        last_seq: u64,
        /// Retention limits, when the room has any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retention: Option<RetentionLimits>,
    },
    /// A direct-message room's pair of users (the room is a `Room` line
    /// before it, both users `User` lines).
    Dm {
        /// Room id.
        room: u64,
        /// The two users, the lower id first.
        users: [u64; 2],
    },
    /// A room membership.
    Member {
        /// Room id.
        room: u64,
        /// User id.
        user: u64,
        /// Role in the room.
        role: RoleName,
    },
    /// A ban from a room.
    Ban {
        /// Room id.
        room: u64,
        /// The banned user's id.
        user: u64,
        /// Who banned them.
        by: u64,
        /// When, ms since the Unix epoch.
        ts_ms: u64,
    },
    /// A pending invitation to a room.
    Invite {
        /// Room id.
        room: u64,
        /// The invited user's id.
        user: u64,
        /// Who invited them.
        by: u64,
        /// When, ms since the Unix epoch.
        ts_ms: u64,
    },
    /// A read receipt.
    Receipt {
        /// Room id.
        room: u64,
        /// User id.
        user: u64,
        /// Highest seq read.
        seq: u64,
    },
    /// A message record.
    Message {
        /// Room id.
        room: u64,
        /// Seq in the room.
        seq: u64,
        /// Author's user id.
        sender: u64,
        /// Timestamp, ms since the Unix epoch.
        ts_ms: u64,
        /// Idempotency key ("" for none).
        client_id: String,
        /// Original body.
        body: String,
        /// For a reply: the seq it answers and the first message of its
        /// thread (absent otherwise).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<u64>,
        /// The uploads it carries (absent when none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        files: Vec<FileLine>,
    },
    /// An edit record.
    Edit {
        /// Room id.
        room: u64,
        /// Seq of the edited message.
        seq: u64,
        /// Editor's user id.
        by: u64,
        /// Timestamp, ms since the Unix epoch.
        ts_ms: u64,
        /// New body.
        body: String,
    },
    /// A delete record.
    Delete {
        /// Room id.
        room: u64,
        /// Seq of the deleted message.
        seq: u64,
        /// User who deleted it.
        by: u64,
        /// Timestamp, ms since the Unix epoch.
        ts_ms: u64,
    },
    /// A reaction record.
    React {
        /// Room id.
        room: u64,
        /// Seq of the message reacted to.
        seq: u64,
        /// Who reacted.
        by: u64,
        /// Timestamp, ms since the Unix epoch.
        ts_ms: u64,
        /// The emoji.
        emoji: String,
        /// Put on (true) or taken off.
        on: bool,
    },
}

/// A room's retention limits (absent field: unlimited).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionLimits {
    /// Keep at most this many newest messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<u64>,
    /// Keep messages younger than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
}

impl RetentionLimits {
    /// The limits of a room whose index row keeps `keep_messages` and
    /// `keep_age_ms` (0 = unlimited); `None` when both are unlimited.
    pub fn from_row(keep_messages: u64, keep_age_ms: u64) -> Option<RetentionLimits> {
        let limits = RetentionLimits {
            max_messages: (keep_messages > 0).then_some(keep_messages),
            max_age_ms: (keep_age_ms > 0).then_some(keep_age_ms),
        };
        (limits.max_messages.is_some() || limits.max_age_ms.is_some()).then_some(limits)
    }

    /// As the storage type.
    pub fn to_retention(self) -> Retention {
        Retention {
            max_messages: self.max_messages,
            max_age_ms: self.max_age_ms,
        }
    }
}

/// A member's role, by name.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    /// Can read and post.
    Member,
    /// Can also manage the room.
    Admin,
    /// Can also manage its admins and hand ownership on.
    Owner,
}

impl From<Role> for RoleName {
    fn from(role: Role) -> Self {
        match role {
            Role::Member => RoleName::Member,
            Role::Admin => RoleName::Admin,
            Role::Owner => RoleName::Owner,
        }
    }
}

impl From<RoleName> for Role {
    fn from(role: RoleName) -> Self {
        match role {
            RoleName::Member => Role::Member,
            RoleName::Admin => Role::Admin,
            RoleName::Owner => Role::Owner,
        }
    }
}

/// An upload a message carries, as an export line holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLine {
    /// The upload's id (32 hex digits).
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub bytes: u64,
    #[serde(default)]
    pub width: u32,
    #[serde(default)]
    pub height: u32,
    #[serde(default)]
    pub thumb: bool,
}

impl FileLine {
    fn of(f: FileRef) -> FileLine {
        FileLine {
            id: format!("{:032x}", f.upload()),
            name: f.name,
            content_type: f.content_type,
            bytes: f.bytes,
            width: f.width,
            height: f.height,
            thumb: f.thumb,
        }
    }

    /// The reference, `None` for an id that is not 32 hex digits.
    fn into_ref(self) -> Option<FileRef> {
        let id = (self.id.len() == 32)
            .then(|| u128::from_str_radix(&self.id, 16).ok())
            .flatten()?;
        Some(FileRef {
            id: id.to_be_bytes(),
            name: self.name,
            content_type: self.content_type,
            bytes: self.bytes,
            width: self.width,
            height: self.height,
            thumb: self.thumb,
        })
    }
}

impl Line {
    /// The line of a user.
    pub fn user(u: User) -> Line {
        Line::User {
            id: u.id,
            name: u.name,
            created_ms: u.created_ms,
            password_hash: u.password_hash,
        }
    }

    /// The line of a room with its retention limits.
    pub fn room(r: Room, retention: Option<RetentionLimits>) -> Line {
        Line::Room {
            id: r.id,
            name: r.name,
            private: r.private,
            creator: r.creator,
            created_ms: r.created_ms,
            last_seq: r.last_seq,
            retention,
        }
    }

    /// The line of a log record.
    pub fn record(rec: Record) -> Line {
        match rec {
            Record::Message(m) => Line::message(m, None, Vec::new()),
            Record::Reply(r) => Line::message(r.message, Some((r.to, r.thread)), Vec::new()),
            Record::Post(p) => {
                let reply = (p.to != 0).then_some((p.to, p.thread));
                Line::message(p.message, reply, p.files)
            }
            Record::Edit(e) => Line::Edit {
                room: e.room,
                seq: e.seq,
                by: e.by,
                ts_ms: e.ts_ms,
                body: e.body,
            },
            Record::Delete(d) => Line::Delete {
                room: d.room,
                seq: d.seq,
                by: d.by,
                ts_ms: d.ts_ms,
            },
            Record::React(r) => Line::React {
                room: r.room,
                seq: r.seq,
                by: r.by,
                ts_ms: r.ts_ms,
                emoji: r.emoji,
                on: r.on,
            },
        }
    }

    fn message(m: Message, reply: Option<(u64, u64)>, files: Vec<FileRef>) -> Line {
        Line::Message {
            files: files.into_iter().map(FileLine::of).collect(),
            room: m.room,
            seq: m.seq,
            sender: m.sender,
            ts_ms: m.ts_ms,
            client_id: m.client_id,
            body: m.body,
            reply_to: reply.map(|r| r.0),
            thread: reply.map(|r| r.1),
        }
    }

    /// The log record of a `message`, `edit` or `delete` line (`None` for
    /// other lines, for a message with only one of `reply_to` and
    /// `thread`, and for a file whose id is not 32 hex digits).
    pub fn into_record(self) -> Option<Record> {
        Some(match self {
            Line::Message {
                room,
                seq,
                sender,
                ts_ms,
                client_id,
                body,
                reply_to,
                thread,
                files,
            } => {
                let message = Message {
                    room,
                    seq,
                    sender,
                    ts_ms,
                    client_id,
                    body,
                };
                let reply = match (reply_to, thread) {
                    (None, None) => None,
                    (Some(to), Some(thread)) => Some((to, thread)),
                    _ => return None,
                };
                let files: Vec<FileRef> = files
                    .into_iter()
                    .map(FileLine::into_ref)
                    .collect::<Option<_>>()?;
                match (reply, files.is_empty()) {
                    (None, true) => Record::Message(message),
                    (Some((to, thread)), true) => Record::Reply(Box::new(Reply {
                        message,
                        to,
                        thread,
                    })),
                    (reply, false) => Record::Post(Box::new(Post {
                        message,
                        to: reply.map_or(0, |r| r.0),
                        thread: reply.map_or(0, |r| r.1),
                        files,
                    })),
                }
            }
            Line::Edit {
                room,
                seq,
                by,
                ts_ms,
                body,
            } => Record::Edit(Edit {
                room,
                seq,
                by,
                ts_ms,
                body,
            }),
            Line::Delete {
                room,
                seq,
                by,
                ts_ms,
            } => Record::Delete(Delete {
                room,
                seq,
                by,
                ts_ms,
            }),
            Line::React {
                room,
                seq,
                by,
                ts_ms,
                emoji,
                on,
            } => Record::React(React {
                room,
                seq,
                by,
                ts_ms,
                emoji,
                on,
            }),
            _ => return None,
        })
    }
}
