//! Work sent to a shard from any thread (the embed API's commands), and
//! the shard's dispatch of it. Commands that wait on storage run as their
//! own task, so the command loop never stalls; a closing shard refuses
//! every command with `ShutDown`.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rookery_storage::meta::DmOpened;
use rookery_storage::{Cursor, ListPage, Retention, RetentionReport, Role, ShardStats};

use super::subscribers::{InboxEntry, Outlet};
use super::types::{HistoryPage, NewSub, PostAck, ReadState, Reply, ThreadPage};
use super::{send, Shard};
use crate::consumer::{Delivery, SubShared, CLOSED_SHUTDOWN};
use crate::error::{Error, Result};
use crate::metrics::{Latencies, ShardCounters, ShardGauges};

/// Work sent to a shard from any thread.
pub(crate) enum Command {
    Post {
        room: u64,
        sender: u64,
        client_id: String,
        body: String,
        /// The seq it replies to.
        to: Option<u64>,
        /// The uploads it carries (the sender's own).
        files: Vec<u128>,
        reply: Reply<PostAck>,
    },
    Edit {
        room: u64,
        seq: u64,
        by: u64,
        body: String,
        reply: Reply<()>,
    },
    Delete {
        room: u64,
        seq: u64,
        by: u64,
        reply: Reply<()>,
    },
    Typing {
        room: u64,
        user: u64,
        reply: Reply<()>,
    },
    /// A user's first (`on`) or last subscription to the room elsewhere
    /// (another cluster node) began or ended.
    Presence {
        room: u64,
        user: u64,
        on: bool,
        reply: Reply<()>,
    },
    History {
        room: u64,
        cursor: Cursor,
        reader: Option<u64>,
        reply: Reply<HistoryPage>,
    },
    Thread {
        room: u64,
        seq: u64,
        after: u64,
        limit: usize,
        reader: Option<u64>,
        reply: Reply<Option<ThreadPage>>,
    },
    React {
        room: u64,
        seq: u64,
        user: u64,
        emoji: String,
        on: bool,
        reply: Reply<bool>,
    },
    /// A page of the room's members with their read markers.
    Markers {
        room: u64,
        after: u64,
        len: usize,
        reply: Reply<ListPage<(u64, u64)>>,
    },
    LastSeq {
        room: u64,
        reply: Reply<u64>,
    },
    MarkRead {
        room: u64,
        user: u64,
        seq: u64,
        reply: Reply<u64>,
    },
    Unread {
        room: u64,
        user: u64,
        reply: Reply<ReadState>,
    },
    Subscribe(NewSub),
    Online {
        room: u64,
        reply: Reply<Vec<u64>>,
    },
    Unsubscribe {
        id: u64,
    },
    /// A consumer's channel: subscriptions name it by `id`.
    OpenInbox {
        id: u64,
        tx: flume::Sender<Delivery>,
        shared: Arc<SubShared>,
    },
    /// Ends every subscription of an inbox (its consumer is gone).
    CloseInbox {
        inbox: u64,
    },
    Stats {
        reply: Reply<(ShardCounters, ShardGauges, Latencies, ShardStats)>,
    },
    Shutdown {
        reply: Reply<()>,
    },
    /// A no-op whose only effect is to wake the shard (see
    /// `EngineConfig::kick_interval`).
    Tick,
    SetRetention {
        room: u64,
        retention: Retention,
        reply: Reply<()>,
    },
    EnforceRetention {
        reply: Reply<RetentionReport>,
    },
    /// The point a backup copies the shard up to (see
    /// `Engine::backup`).
    BackupPoint {
        reply: Reply<rookery_storage::backup::ShardPoint>,
    },
    /// Creates a room (see `Engine::create_room`).
    CreateRoom {
        /// The id the cluster handed out, or `None` for the next here.
        id: Option<u64>,
        name: String,
        private: bool,
        creator: u64,
        reply: Reply<u64>,
    },
    /// Opens (or finds) the direct-message room of two users (see
    /// `Engine::open_dm`).
    OpenDm {
        /// The id the cluster handed out, or `None` for the next here.
        id: Option<u64>,
        user: u64,
        other: u64,
        reply: Reply<DmOpened>,
    },
    /// A change of standing under the room rules (see
    /// `Engine::membership`).
    Membership {
        room: u64,
        actor: u64,
        target: u64,
        op: crate::rules::MemberOp,
        reply: Reply<crate::rules::Membership>,
    },
    /// Makes `user` a member of a public `room` they may join, from memory
    /// when they are one already (see `Engine::ensure_member`).
    EnsureMember {
        room: u64,
        user: u64,
        reply: Reply<()>,
    },
    /// Deletes `room` (see `Engine::delete_room`).
    DeleteRoom {
        room: u64,
        reply: Reply<super::DeletedRoom>,
    },
    /// Adds `user` to `room` with `role`, changes the role, or (`None`)
    /// removes the membership; answers the role before.
    SetMember {
        room: u64,
        user: u64,
        role: Option<Role>,
        reply: Reply<Option<Role>>,
    },
}

impl Command {
    /// Whether it counts against `command_queue_len_max` (and may be
    /// refused): everything but releases (unsubscribe, closing an inbox),
    /// opening an inbox, stats, shutdown and kicks.
    pub(crate) fn is_work(&self) -> bool {
        !matches!(
            self,
            Command::Unsubscribe { .. }
                | Command::CloseInbox { .. }
                | Command::OpenInbox { .. }
                | Command::Stats { .. }
                | Command::Shutdown { .. }
                | Command::Tick
        )
    }
}

impl Shard {
    /// Handles one command from the embed API. Commands that wait on
    /// storage run as their own task so the command loop never stalls.
    pub(crate) fn handle(self: &Rc<Self>, cmd: Command) {
        if !matches!(cmd, Command::Tick) {
            self.busy();
        }
        if self.closing.get() {
            return refuse(cmd);
        }
        match cmd {
            Command::Post {
                room,
                sender,
                client_id,
                body,
                to,
                files,
                reply,
            } => {
                let me = self.clone();
                answer(reply, async move {
                    me.post(room, sender, &client_id, &body, to, files).await
                });
            }
            Command::Edit {
                room,
                seq,
                by,
                body,
                reply,
            } => {
                let me = self.clone();
                answer(
                    reply,
                    async move { me.change(room, seq, by, Some(&body)).await },
                );
            }
            Command::Delete {
                room,
                seq,
                by,
                reply,
            } => {
                let me = self.clone();
                answer(reply, async move { me.change(room, seq, by, None).await });
            }
            Command::Typing { room, user, reply } => {
                let me = self.clone();
                answer(reply, async move { me.typing(room, user).await });
            }
            Command::Presence {
                room,
                user,
                on,
                reply,
            } => {
                self.presence_changed(room, user, on);
                send(reply, Ok(()));
            }
            Command::History {
                room,
                cursor,
                reader,
                reply,
            } => {
                let me = self.clone();
                answer(reply, async move { me.history(room, cursor, reader).await });
            }
            Command::Thread {
                room,
                seq,
                after,
                limit,
                reader,
                reply,
            } => {
                let me = self.clone();
                answer(reply, async move {
                    me.thread(room, seq, after, limit, reader).await
                });
            }
            Command::React {
                room,
                seq,
                user,
                emoji,
                on,
                reply,
            } => {
                let me = self.clone();
                answer(
                    reply,
                    async move { me.react(room, seq, user, &emoji, on).await },
                );
            }
            Command::Markers {
                room,
                after,
                len,
                reply,
            } => {
                let me = self.clone();
                answer(reply, async move { me.markers(room, after, len).await });
            }
            Command::LastSeq { room, reply } => send(reply, Ok(self.store.last_seq(room))),
            Command::MarkRead {
                room,
                user,
                seq,
                reply,
            } => self.mark_read(room, user, seq, reply),
            Command::Unread { room, user, reply } => send(reply, self.unread(room, user)),
            Command::Subscribe(new) => self.subscribe(new),
            Command::Online { room, reply } => send(reply, Ok(self.online(room))),
            Command::Unsubscribe { id } => self.unsubscribe(id),
            Command::OpenInbox { id, tx, shared } => {
                let entry = InboxEntry {
                    outlet: Outlet::Channel { tx, shared },
                    subs: Vec::new(),
                };
                self.inboxes.borrow_mut().insert(id, entry);
            }
            Command::CreateRoom {
                id,
                name,
                private,
                creator,
                reply,
            } => {
                let me = self.clone();
                answer(reply, async move {
                    me.create_room(id, name, private, creator).await
                });
            }
            Command::OpenDm {
                id,
                user,
                other,
                reply,
            } => {
                let me = self.clone();
                answer(reply, async move { me.open_dm(id, user, other).await });
            }
            Command::SetMember {
                room,
                user,
                role,
                reply,
            } => {
                let me = self.clone();
                answer(reply, async move { me.set_member(room, user, role).await });
            }
            Command::DeleteRoom { room, reply } => {
                let me = self.clone();
                answer(reply, async move { me.delete_room(room).await });
            }
            Command::EnsureMember { room, user, reply } => {
                let me = self.clone();
                answer(reply, async move { me.ensure_member(room, user).await });
            }
            Command::Membership {
                room,
                actor,
                target,
                op,
                reply,
            } => {
                let me = self.clone();
                answer(reply, async move {
                    me.membership(room, actor, target, op).await
                });
            }
            Command::CloseInbox { inbox } => self.close_inbox(inbox, None),
            Command::Stats { reply } => send(
                reply,
                Ok((
                    crate::metrics::ShardCounters {
                        cpu_us: crate::metrics::thread_cpu_us(),
                        ..*self.counters.borrow()
                    },
                    self.gauges(),
                    self.latency.borrow().clone(),
                    self.store.stats(),
                )),
            ),
            Command::Tick => {}
            Command::SetRetention {
                room,
                retention,
                reply,
            } => {
                let me = self.clone();
                answer(reply, async move {
                    me.store
                        .set_retention(room, retention)
                        .await
                        .map_err(Error::from)
                });
            }
            Command::BackupPoint { reply } => {
                send(reply, self.store.backup_point().map_err(Error::from))
            }
            Command::EnforceRetention { reply } => {
                let me = self.clone();
                answer(reply, async move { me.enforce_retention().await });
            }
            Command::Shutdown { reply } => {
                let me = self.clone();
                answer(reply, async move { me.shutdown().await });
            }
        }
    }
}

/// Answers a command a closing shard will not run: `ShutDown`.
pub(super) fn refuse(cmd: Command) {
    if let Command::Subscribe(NewSub {
        shared: Some(shared),
        ..
    })
    | Command::OpenInbox { shared, .. } = &cmd
    {
        shared.closed.store(CLOSED_SHUTDOWN, Ordering::Release);
    }
    refuse_with(cmd, || Error::ShutDown);
}

/// Answers a command its shard's full queue did not take (see
/// `EngineConfig::command_queue_len_max`): `Busy`.
pub(crate) fn refuse_busy(shard: usize, cmd: Command) {
    refuse_with(cmd, || {
        Error::Busy(format!("shard {shard}'s command queue is full"))
    });
}

/// Answers `cmd`'s caller with `error()` (a shutdown is answered `Ok`:
/// the shard is going anyway).
fn refuse_with(cmd: Command, error: impl Fn() -> Error) {
    match cmd {
        Command::Post { reply, .. } => send(reply, Err(error())),
        Command::Edit { reply, .. }
        | Command::Delete { reply, .. }
        | Command::Typing { reply, .. }
        | Command::Presence { reply, .. }
        | Command::SetRetention { reply, .. } => send(reply, Err(error())),
        Command::History { reply, .. } => send(reply, Err(error())),
        Command::Thread { reply, .. } => send(reply, Err(error())),
        Command::React { reply, .. } => send(reply, Err(error())),
        Command::Markers { reply, .. } => send(reply, Err(error())),
        Command::LastSeq { reply, .. }
        | Command::MarkRead { reply, .. }
        | Command::CreateRoom { reply, .. } => send(reply, Err(error())),
        Command::Unread { reply, .. } => send(reply, Err(error())),
        Command::OpenDm { reply, .. } => send(reply, Err(error())),
        Command::Stats { reply } => send(reply, Err(error())),
        Command::Shutdown { reply } => send(reply, Ok(())),
        Command::Subscribe(NewSub { ready, .. }) => ready(Err(error())),
        Command::Online { reply, .. } => send(reply, Err(error())),
        Command::EnforceRetention { reply } => send(reply, Err(error())),
        Command::BackupPoint { reply } => send(reply, Err(error())),
        Command::SetMember { reply, .. } => send(reply, Err(error())),
        Command::DeleteRoom { reply, .. } => send(reply, Err(error())),
        Command::Membership { reply, .. } => send(reply, Err(error())),
        Command::EnsureMember { reply, .. } => send(reply, Err(error())),
        Command::OpenInbox { .. }
        | Command::Unsubscribe { .. }
        | Command::CloseInbox { .. }
        | Command::Tick => {}
    }
}

/// Runs `work` as its own task on this shard and answers `reply` with its
/// result (the command loop goes on meanwhile).
fn answer<T: 'static>(
    reply: Reply<T>,
    work: impl std::future::Future<Output = Result<T>> + 'static,
) {
    glommio::spawn_local(async move { send(reply, work.await) }).detach();
}
