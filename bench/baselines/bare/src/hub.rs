//! Rooms and their traffic on one executor: the rooms it owns (sequence,
//! bounded history, idempotency keys, which executors have members), the
//! members it hosts, and the messages between executors (one owner per
//! room, `room % executors`, so every member sees one order).
//!
//! Each event is encoded once, as a whole WebSocket frame, and the same
//! bytes are appended to every member's buffer and sent once per executor.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::rc::Rc;
use std::sync::Arc;

use glommio::channels::channel_mesh::Senders;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::out::{Flusher, Out};
use crate::ws;

/// Traffic between executors.
pub enum Peer {
    Post {
        room: u64,
        from: usize,
        conn: u64,
        user: Arc<str>,
        client_id: String,
        body: Vec<u8>,
        r#ref: Option<Vec<u8>>,
    },
    /// A reply frame for connection `conn` of the receiving executor.
    Reply { conn: u64, frame: Vec<u8> },
    Join {
        room: u64,
        from: usize,
        conn: u64,
        since: Option<u64>,
        r#ref: Option<Vec<u8>>,
    },
    /// The join's answer (and replayed history) for `conn`: from now on
    /// it receives the room's events.
    Joined {
        room: u64,
        conn: u64,
        frames: Vec<u8>,
    },
    /// Events of rooms the receiving executor has members of, in order.
    Deliver(Vec<(u64, Arc<[u8]>)>),
    /// The sending executor has no member of `room` any more.
    Leave { room: u64, from: usize },
}

/// A room this executor owns.
#[derive(Default)]
struct Room {
    seq: u64,
    /// The newest events, as frames, with their seq.
    history: VecDeque<(u64, Arc<[u8]>)>,
    /// (user, client_id) → seq, for the messages still in `history`.
    idem: HashMap<(Arc<str>, String), u64>,
    /// Executors (other than this one) with members.
    remote: Vec<bool>,
}

/// A member hosted here; `live` once its join was answered.
struct Member {
    conn: u64,
    out: Rc<Out>,
    live: bool,
}

/// One client frame's fields (the rest is ignored).
#[derive(Deserialize)]
struct ClientFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    room: Option<u64>,
    since: Option<u64>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
    client_id: Option<String>,
    #[serde(rename = "ref", borrow)]
    r#ref: Option<&'a RawValue>,
}

pub struct Hub {
    pub id: usize,
    n: usize,
    history_max: usize,
    owned: RefCell<HashMap<u64, Room>>,
    members: RefCell<HashMap<u64, Vec<Member>>>,
    conns: RefCell<HashMap<u64, Rc<Out>>>,
    next_conn: Cell<u64>,
    pub flusher: Rc<Flusher>,
    senders: Senders<Peer>,
    outbox: RefCell<Vec<Vec<Peer>>>,
    sending: RefCell<Vec<bool>>,
    scratch: RefCell<Vec<u8>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Hub {
    pub fn new(senders: Senders<Peer>, history_max: usize) -> Rc<Hub> {
        let n = senders.nr_consumers().max(1);
        Rc::new(Hub {
            id: senders.peer_id(),
            n,
            history_max,
            owned: RefCell::default(),
            members: RefCell::default(),
            conns: RefCell::default(),
            next_conn: Cell::new(1),
            flusher: Rc::new(Flusher::default()),
            senders,
            outbox: RefCell::new((0..n).map(|_| Vec::new()).collect()),
            sending: RefCell::new(vec![false; n]),
            scratch: RefCell::new(Vec::with_capacity(1024)),
        })
    }

    fn owner(&self, room: u64) -> usize {
        (room % self.n as u64) as usize
    }

    /// Registers a connection; its id.
    pub fn open(&self, out: Rc<Out>) -> u64 {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        self.conns.borrow_mut().insert(id, out);
        id
    }

    /// A connection is gone: its memberships end.
    pub fn close(self: &Rc<Self>, conn: u64, rooms: &[u64]) {
        self.conns.borrow_mut().remove(&conn);
        for &room in rooms {
            let empty = {
                let mut members = self.members.borrow_mut();
                let list = members.entry(room).or_default();
                list.retain(|m| m.conn != conn);
                let empty = list.is_empty();
                if empty {
                    members.remove(&room);
                }
                empty
            };
            let owner = self.owner(room);
            if empty && owner != self.id {
                self.to_peer(
                    owner,
                    Peer::Leave {
                        room,
                        from: self.id,
                    },
                );
            }
        }
    }

    fn reply(&self, out: &Rc<Out>, json: &[u8]) {
        let mut s = self.scratch.borrow_mut();
        s.clear();
        ws::text(json, &mut s);
        self.flusher.push(out, &s);
    }

    /// Handles one text frame of connection `conn` (user `user`); rooms it
    /// joined are added to `rooms`.
    pub fn frame(
        self: &Rc<Self>,
        conn: u64,
        out: &Rc<Out>,
        user: &Arc<str>,
        text: &[u8],
        rooms: &mut Vec<u64>,
    ) {
        let f: ClientFrame = match serde_json::from_slice(text) {
            Ok(f) => f,
            Err(_) => {
                return self.reply(
                    out,
                    br#"{"type":"error","code":"bad_json","message":"a frame must be JSON"}"#,
                )
            }
        };
        let r#ref = f.r#ref.map(|r| r.get().as_bytes().to_vec());
        match (f.kind, f.room) {
            ("send", Some(room)) => {
                let body = f.body.map_or(&b"\"\""[..], |b| b.get().as_bytes()).to_vec();
                let client_id = f.client_id.unwrap_or_default();
                let owner = self.owner(room);
                if owner == self.id {
                    let ack = self.post(room, user.clone(), client_id, &body, r#ref.as_deref());
                    self.flusher.push(out, &ack);
                } else {
                    self.to_peer(
                        owner,
                        Peer::Post {
                            room,
                            from: self.id,
                            conn,
                            user: user.clone(),
                            client_id,
                            body,
                            r#ref,
                        },
                    );
                }
            }
            ("join", Some(room)) => {
                if rooms.contains(&room) {
                    return;
                }
                rooms.push(room);
                let owner = self.owner(room);
                let live = owner == self.id;
                self.members
                    .borrow_mut()
                    .entry(room)
                    .or_default()
                    .push(Member {
                        conn,
                        out: out.clone(),
                        live,
                    });
                if live {
                    let frames = self.join(room, None, f.since, r#ref.as_deref());
                    self.flusher.push(out, &frames);
                } else {
                    self.to_peer(
                        owner,
                        Peer::Join {
                            room,
                            from: self.id,
                            conn,
                            since: f.since,
                            r#ref,
                        },
                    );
                }
            }
            ("ping", _) => {
                let mut s = Vec::with_capacity(64);
                s.extend_from_slice(br#"{"type":"pong""#);
                push_ref(&mut s, r#ref.as_deref());
                self.reply(out, &s);
            }
            _ => {
                let mut s = Vec::with_capacity(96);
                s.extend_from_slice(
                    br#"{"type":"error","code":"unknown_type","message":"unknown type""#,
                );
                push_ref(&mut s, r#ref.as_deref());
                self.reply(out, &s);
            }
        }
    }

    /// Owner side: sequences a message, fans it out; the ack frame.
    fn post(
        &self,
        room: u64,
        user: Arc<str>,
        client_id: String,
        body: &[u8],
        r#ref: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut owned = self.owned.borrow_mut();
        let r = owned.entry(room).or_insert_with(|| Room {
            remote: vec![false; self.n],
            ..Room::default()
        });
        let ts = now_ms();
        let key = (!client_id.is_empty()).then(|| (user.clone(), client_id));
        if let Some(&seq) = key.as_ref().and_then(|k| r.idem.get(k)) {
            return ack_frame(room, seq, ts, true, r#ref);
        }
        r.seq += 1;
        let seq = r.seq;
        let mut json = Vec::with_capacity(96 + body.len());
        let _ = write!(json, r#"{{"type":"msg","room":{room},"seq":{seq},"from":"#);
        let _ = serde_json::to_writer(&mut json, &*user);
        let _ = write!(json, r#","ts":{ts},"body":"#);
        json.extend_from_slice(body);
        json.push(b'}');
        let mut frame = Vec::with_capacity(json.len() + 4);
        ws::text(&json, &mut frame);
        let frame: Arc<[u8]> = frame.into();
        r.history.push_back((seq, frame.clone()));
        if let Some(k) = key {
            r.idem.insert(k, seq);
        }
        if r.history.len() > self.history_max {
            if let Some((old, _)) = r.history.pop_front() {
                r.idem.retain(|_, s| *s > old);
            }
        }
        let remote: Vec<usize> = (0..self.n).filter(|&p| r.remote[p]).collect();
        drop(owned);
        for p in remote {
            self.deliver_to_peer(p, room, frame.clone());
        }
        self.deliver_local(room, &frame);
        ack_frame(room, seq, ts, false, r#ref)
    }

    /// Owner side: registers executor `from`'s interest (when remote) and
    /// answers the join: `joined`, then the history after `since`.
    fn join(
        &self,
        room: u64,
        from: Option<usize>,
        since: Option<u64>,
        r#ref: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut owned = self.owned.borrow_mut();
        let r = owned.entry(room).or_insert_with(|| Room {
            remote: vec![false; self.n],
            ..Room::default()
        });
        if let Some(p) = from {
            r.remote[p] = true;
        }
        let mut json = Vec::with_capacity(96);
        let _ = write!(
            json,
            r#"{{"type":"joined","room":{room},"last_seq":{},"online":[]"#,
            r.seq
        );
        push_ref(&mut json, r#ref);
        let mut frames = Vec::with_capacity(json.len() + 4);
        ws::text(&json, &mut frames);
        if let Some(since) = since {
            for (seq, f) in &r.history {
                if *seq > since {
                    frames.extend_from_slice(f);
                }
            }
        }
        frames
    }

    fn deliver_local(&self, room: u64, frame: &[u8]) {
        if let Some(list) = self.members.borrow().get(&room) {
            for m in list.iter().filter(|m| m.live) {
                self.flusher.push(&m.out, frame);
            }
        }
    }

    /// Handles a message from another executor.
    pub fn peer(self: &Rc<Self>, msg: Peer) {
        match msg {
            Peer::Post {
                room,
                from,
                conn,
                user,
                client_id,
                body,
                r#ref,
            } => {
                let ack = self.post(room, user, client_id, &body, r#ref.as_deref());
                self.to_peer(from, Peer::Reply { conn, frame: ack });
            }
            Peer::Reply { conn, frame } => {
                if let Some(out) = self.conns.borrow().get(&conn) {
                    self.flusher.push(out, &frame);
                }
            }
            Peer::Join {
                room,
                from,
                conn,
                since,
                r#ref,
            } => {
                let frames = self.join(room, Some(from), since, r#ref.as_deref());
                self.to_peer(from, Peer::Joined { room, conn, frames });
            }
            Peer::Joined { room, conn, frames } => {
                let mut members = self.members.borrow_mut();
                if let Some(m) = members
                    .get_mut(&room)
                    .and_then(|l| l.iter_mut().find(|m| m.conn == conn))
                {
                    m.live = true;
                    self.flusher.push(&m.out, &frames);
                }
            }
            Peer::Deliver(events) => {
                for (room, frame) in events {
                    self.deliver_local(room, &frame);
                }
            }
            Peer::Leave { room, from } => {
                if let Some(r) = self.owned.borrow_mut().get_mut(&room) {
                    r.remote[from] = false;
                }
            }
        }
    }

    fn deliver_to_peer(&self, peer: usize, room: u64, frame: Arc<[u8]>) {
        let mut outbox = self.outbox.borrow_mut();
        if let Some(Peer::Deliver(batch)) = outbox[peer].last_mut() {
            batch.push((room, frame));
            return;
        }
        outbox[peer].push(Peer::Deliver(vec![(room, frame)]));
        drop(outbox);
        self.schedule_send(peer);
    }

    fn to_peer(&self, peer: usize, msg: Peer) {
        self.outbox.borrow_mut()[peer].push(msg);
        self.schedule_send(peer);
    }

    /// Sends `peer`'s outbox after the tasks already runnable, so that
    /// everything one turn produced for it leaves in few messages.
    fn schedule_send(&self, peer: usize) {
        if std::mem::replace(&mut self.sending.borrow_mut()[peer], true) {
            return;
        }
        let me = HUB.with(|h| h.borrow().clone()).expect("the hub is set");
        glommio::spawn_local(async move {
            futures_lite::future::yield_now().await;
            loop {
                let batch = std::mem::take(&mut me.outbox.borrow_mut()[peer]);
                if batch.is_empty() {
                    me.sending.borrow_mut()[peer] = false;
                    break;
                }
                for msg in batch {
                    if me.senders.send_to(peer, msg).await.is_err() {
                        me.sending.borrow_mut()[peer] = false;
                        return;
                    }
                }
            }
        })
        .detach();
    }
}

thread_local! {
    /// This executor's hub (for tasks it spawns).
    pub static HUB: RefCell<Option<Rc<Hub>>> = const { RefCell::new(None) };
}

fn push_ref(json: &mut Vec<u8>, r#ref: Option<&[u8]>) {
    if let Some(r) = r#ref {
        json.extend_from_slice(br#","ref":"#);
        json.extend_from_slice(r);
    }
    json.push(b'}');
}

fn ack_frame(room: u64, seq: u64, ts: u64, duplicate: bool, r#ref: Option<&[u8]>) -> Vec<u8> {
    let mut json = Vec::with_capacity(96);
    let _ = write!(
        json,
        r#"{{"type":"ack","room":{room},"seq":{seq},"ts":{ts},"duplicate":{duplicate}"#
    );
    push_ref(&mut json, r#ref);
    let mut frame = Vec::with_capacity(json.len() + 4);
    ws::text(&json, &mut frame);
    frame
}
