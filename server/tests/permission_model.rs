//! A seeded model test of room permissions (issue 14): random sequences of
//! create, invite, accept, decline, join, leave, remove, ban, unban, set
//! role, transfer, post, edit and delete by several users, sent to the
//! binary over HTTP and WebSocket, each answer checked against a plain
//! model of who may do what, and after every step the room's members,
//! roles, bans and the target's invitations compared with the model.
//!
//! The model is written from the rules as docs/security.md states them,
//! not from the server's code. `ROOKERY_MODEL_SEED=n` replays one seed.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::{json, Value};

const TEXT: u8 = 0x1;
const USERS: usize = 5;
const STEPS: usize = 300;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Member,
    Admin,
    Owner,
}

#[derive(Default, Debug)]
struct Room {
    id: u64,
    private: bool,
    roles: BTreeMap<usize, Role>,
    banned: BTreeSet<usize>,
    invited: BTreeSet<usize>,
    /// Were members once, are not now: a ban still reaches them.
    former: BTreeSet<usize>,
    /// (seq, author, deleted)
    messages: Vec<(u64, usize, bool)>,
}

impl Room {
    /// `u` is no longer a member (if they were: then a former one).
    fn drop_member(&mut self, u: usize) {
        if self.roles.remove(&u).is_some() {
            self.former.insert(u);
        }
    }
}

/// What a call should answer: a status (HTTP) and, for refusals, the error
/// code (WebSocket answers are compared by code only).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Want {
    Ok,
    NotFound,
    Forbidden,
    Banned,
    Conflict,
    BadRequest,
}

impl Want {
    fn of_status(s: u16, code: &str) -> Want {
        match (s, code) {
            (200..=299, _) => Want::Ok,
            (404, _) | (_, "not_found") => Want::NotFound,
            (403, "banned") | (_, "banned") => Want::Banned,
            (403, _) | (_, "forbidden") => Want::Forbidden,
            (409, _) | (_, "conflict") => Want::Conflict,
            (400, _) | (_, "bad_request") => Want::BadRequest,
            _ => panic!("unexpected answer {s} {code}"),
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One call to the server by the acting user, made once the model has
/// said what it wants.
enum Req {
    Http(&'static str, String, Option<Value>),
    Ws(Value),
}

struct World {
    port: u16,
    tokens: Vec<String>,
    ids: Vec<u64>,
    sockets: Vec<RawWs>,
    rooms: Vec<Room>,
    next_ref: u64,
    /// Answers seen, by operation: the test must see each allowed and
    /// refused, or it proves little.
    seen: BTreeSet<(usize, bool)>,
}

impl World {
    fn http(&self, user: usize, method: &str, path: &str, body: Option<Value>) -> (Want, Value) {
        let (s, v) = call(
            self.port,
            method,
            path,
            Some(&self.tokens[user]),
            body.as_ref(),
        );
        let code = v["error"]["code"].as_str().unwrap_or("").to_string();
        (Want::of_status(s, &code), v)
    }

    fn ws(&mut self, user: usize, mut frame: Value) -> Want {
        self.next_ref += 1;
        let r = self.next_ref;
        frame["ref"] = json!(r);
        let ws = &mut self.sockets[user];
        ws.write_frame(TEXT, frame.to_string().as_bytes(), true, false);
        loop {
            let f = ws.read_frame().expect("connection open");
            if f.opcode != TEXT {
                continue;
            }
            let v: Value = serde_json::from_slice(&f.payload).unwrap();
            if v["ref"] != r {
                continue; // an invitation or another event
            }
            return match v["type"].as_str() {
                Some("error") => Want::of_status(0, v["code"].as_str().unwrap()),
                _ => Want::Ok,
            };
        }
    }
}

/// The refusal of acting on others in `room` as `a` (None: allowed to go
/// on to the operation's own rules).
fn manage(room: &Room, a: usize, t: usize) -> Option<Want> {
    match room.roles.get(&a) {
        None if room.private => Some(Want::NotFound),
        None => Some(Want::Forbidden),
        Some(Role::Member) => Some(Want::Forbidden),
        Some(_) if a == t => Some(Want::BadRequest),
        Some(_) => None,
    }
}

/// Whether `a` outranks `t` (who may not be a member).
fn outranks(room: &Room, a: usize, t: usize) -> bool {
    room.roles
        .get(&t)
        .is_none_or(|rt| Some(rt) < room.roles.get(&a))
}

/// Reading the room: members; anyone unbanned for a public room.
fn read_refusal(room: &Room, a: usize) -> Option<Want> {
    if room.roles.contains_key(&a) {
        None
    } else if room.banned.contains(&a) {
        Some(Want::Banned)
    } else if room.private {
        Some(Want::NotFound)
    } else {
        None
    }
}

fn step(w: &mut World, rng: &mut Rng, log: &mut Vec<String>) {
    let (a, t) = (rng.below(USERS), rng.below(USERS));
    let op = rng.below(15);
    if w.rooms.is_empty() || (op == 0 && w.rooms.len() < 4) {
        let private = rng.below(2) == 0;
        let name = format!("r{}", w.rooms.len());
        let (got, v) = w.http(
            a,
            "POST",
            "/api/rooms",
            Some(json!({"name": name, "private": private})),
        );
        assert_eq!(got, Want::Ok, "create: {v}");
        let mut room = Room {
            id: v["id"].as_u64().unwrap(),
            private,
            ..Room::default()
        };
        room.roles.insert(a, Role::Owner);
        w.rooms.push(room);
        log.push(format!(
            "user {a} creates room {} (private {private})",
            w.rooms.len() - 1
        ));
        return;
    }
    let ri = rng.below(w.rooms.len());
    // Half the time the actor manages the room and the target is someone
    // it knows (a member, invited or banned): the interesting cases.
    let (a, t) = {
        let r = &w.rooms[ri];
        let managers: Vec<usize> = r
            .roles
            .iter()
            .filter(|(_, &x)| x >= Role::Admin)
            .map(|(&u, _)| u)
            .collect();
        let known: Vec<usize> = r
            .roles
            .keys()
            .chain(&r.invited)
            .chain(&r.banned)
            .copied()
            .collect();
        let a = if !managers.is_empty() && rng.below(2) == 0 {
            managers[rng.below(managers.len())]
        } else {
            a
        };
        let t = if !known.is_empty() && rng.below(2) == 0 {
            known[rng.below(known.len())]
        } else {
            t
        };
        let pick = |set: &BTreeSet<usize>, rng: &mut Rng, or: usize| {
            let v: Vec<usize> = set.iter().copied().collect();
            if v.is_empty() || rng.below(2) == 0 {
                or
            } else {
                v[rng.below(v.len())]
            }
        };
        match op {
            // Answering: often someone invited.
            2 | 3 => (pick(&r.invited, rng, a), t),
            // Unbanning: often someone banned.
            8 => (a, pick(&r.banned, rng, t)),
            // Removing, banning, changing roles: often a peer or superior.
            6 | 7 | 9 | 10 => {
                let others: BTreeSet<usize> = r.roles.keys().copied().filter(|&u| u != a).collect();
                (a, pick(&others, rng, t))
            }
            _ => (a, t),
        }
    };
    let id = w.rooms[ri].id;
    // Two in three role changes make an admin.
    let (tid, role_pick) = (w.ids[t], rng.below(3).min(1));
    let r = &w.rooms[ri];
    let is_member = |u: usize| r.roles.contains_key(&u);
    let (name, want, call): (String, Want, Req) = match op {
        0 | 1 => {
            let want = manage(r, a, t).unwrap_or(if r.banned.contains(&t) {
                Want::Conflict
            } else {
                Want::Ok
            });
            let call = Req::Http(
                "POST",
                format!("/api/rooms/{id}/members"),
                Some(json!({"user": tid})),
            );
            (format!("{a} invites {t}"), want, call)
        }
        2 => {
            let want = if r.banned.contains(&a) {
                Want::Banned
            } else if r.invited.contains(&a) {
                Want::Ok
            } else {
                Want::NotFound
            };
            let call = Req::Http("POST", format!("/api/invites/{id}/accept"), None);
            (format!("{a} accepts"), want, call)
        }
        3 => {
            let want = if r.invited.contains(&a) {
                Want::Ok
            } else {
                Want::NotFound
            };
            let call = Req::Http("POST", format!("/api/invites/{id}/decline"), None);
            (format!("{a} declines"), want, call)
        }
        4 => {
            let want = if r.banned.contains(&a) {
                Want::Banned
            } else if is_member(a) || r.invited.contains(&a) || !r.private {
                Want::Ok
            } else {
                Want::NotFound
            };
            let call = Req::Http("POST", format!("/api/rooms/{id}/join"), None);
            (format!("{a} joins"), want, call)
        }
        5 => {
            let stranger =
                r.private && !is_member(a) && !r.invited.contains(&a) && !r.banned.contains(&a);
            let want = if r.roles.get(&a) == Some(&Role::Owner) {
                Want::Conflict
            } else if stranger {
                Want::NotFound
            } else {
                Want::Ok
            };
            let call = Req::Http("POST", format!("/api/rooms/{id}/leave"), None);
            (format!("{a} leaves"), want, call)
        }
        6 => {
            let want = manage(r, a, t).unwrap_or(if !is_member(t) {
                Want::NotFound
            } else if !outranks(r, a, t) {
                Want::Forbidden
            } else {
                Want::Ok
            });
            let call = Req::Http("DELETE", format!("/api/rooms/{id}/members/{tid}"), None);
            (format!("{a} removes {t}"), want, call)
        }
        7 => {
            let known = is_member(t) || r.invited.contains(&t) || r.former.contains(&t);
            let want = manage(r, a, t).unwrap_or(if r.banned.contains(&t) {
                Want::Ok
            } else if !known {
                Want::NotFound
            } else if !outranks(r, a, t) {
                Want::Forbidden
            } else {
                Want::Ok
            });
            let call = Req::Http("PUT", format!("/api/rooms/{id}/bans/{tid}"), None);
            (format!("{a} bans {t}"), want, call)
        }
        8 => {
            let want = manage(r, a, t).unwrap_or(Want::Ok);
            let call = Req::Http("DELETE", format!("/api/rooms/{id}/bans/{tid}"), None);
            (format!("{a} unbans {t}"), want, call)
        }
        9 => {
            let role = if role_pick == 0 {
                Role::Member
            } else {
                Role::Admin
            };
            let want = manage(r, a, t).unwrap_or(match r.roles.get(&t) {
                None => Want::NotFound,
                Some(&rt) if rt == role => Want::Ok,
                Some(_) if !outranks(r, a, t) => Want::Forbidden,
                Some(_) => Want::Ok,
            });
            let word = if role == Role::Member {
                "member"
            } else {
                "admin"
            };
            let call = Req::Http(
                "PUT",
                format!("/api/rooms/{id}/members/{tid}"),
                Some(json!({"role": word})),
            );
            (format!("{a} makes {t} {word}"), want, call)
        }
        10 => {
            let want = manage(r, a, t).unwrap_or(if r.roles.get(&a) != Some(&Role::Owner) {
                Want::Forbidden
            } else if !is_member(t) {
                Want::NotFound
            } else {
                Want::Ok
            });
            let call = Req::Http(
                "POST",
                format!("/api/rooms/{id}/owner"),
                Some(json!({"user": tid})),
            );
            (format!("{a} hands room to {t}"), want, call)
        }
        11 | 12 => {
            let want = read_refusal(r, a).unwrap_or(if is_member(a) {
                Want::Ok
            } else {
                Want::Forbidden
            });
            let call = Req::Http(
                "POST",
                format!("/api/rooms/{id}/messages"),
                Some(json!({"body": "hi"})),
            );
            (format!("{a} posts"), want, call)
        }
        _ => {
            let live: Vec<(u64, usize)> = r
                .messages
                .iter()
                .filter(|m| !m.2)
                .map(|m| (m.0, m.1))
                .collect();
            if live.is_empty() {
                return;
            }
            let (seq, author) = live[rng.below(live.len())];
            let edit = op == 13;
            let allowed = if edit {
                author == a
            } else {
                author == a || r.roles.get(&a).is_some_and(|&x| x >= Role::Admin)
            };
            let want = read_refusal(r, a).unwrap_or(if !is_member(a) || !allowed {
                Want::Forbidden
            } else {
                Want::Ok
            });
            let frame = if edit {
                json!({"type": "edit", "room": id, "seq": seq, "body": "changed"})
            } else {
                json!({"type": "delete", "room": id, "seq": seq})
            };
            let call = Req::Ws(frame);
            (
                format!(
                    "{a} {} seq {seq} of {author}",
                    if edit { "edits" } else { "deletes" }
                ),
                want,
                call,
            )
        }
    };
    let name = format!("room {ri}: {name}");
    log.push(name.clone());
    let got = match call {
        Req::Http(method, path, body) => w.http(a, method, &path, body).0,
        Req::Ws(frame) => w.ws(a, frame),
    };
    let kind = match op {
        1 => 0,
        12 => 11,
        other => other,
    };
    w.seen.insert((kind, got == Want::Ok));
    assert_eq!(got, want, "step {name}\nhistory:\n{}", log.join("\n"));
    if got == Want::Ok {
        apply(w, ri, op, a, t, role_pick);
    }
}

/// The model's own change for an allowed operation.
fn apply(w: &mut World, ri: usize, op: usize, a: usize, t: usize, role_pick: usize) {
    let id = w.rooms[ri].id;
    let seq_now = || {
        let (_, v) = w.http(a, "GET", &format!("/api/rooms/{id}/messages?limit=1"), None);
        v["messages"][0]["seq"].as_u64().unwrap()
    };
    let seq = matches!(op, 11 | 12).then(seq_now);
    let r = &mut w.rooms[ri];
    match op {
        0 | 1 if !r.roles.contains_key(&t) => {
            r.invited.insert(t);
        }
        2 | 4 if !r.roles.contains_key(&a) => {
            r.invited.remove(&a);
            r.roles.insert(a, Role::Member);
        }
        3 => {
            r.invited.remove(&a);
        }
        5 => r.drop_member(a),
        6 => r.drop_member(t),
        7 => {
            r.drop_member(t);
            r.invited.remove(&t);
            r.banned.insert(t);
        }
        8 => {
            r.banned.remove(&t);
        }
        9 => {
            let role = if role_pick == 0 {
                Role::Member
            } else {
                Role::Admin
            };
            r.roles.insert(t, role);
        }
        10 => {
            r.roles.insert(t, Role::Owner);
            r.roles.insert(a, Role::Admin);
        }
        11 | 12 => {
            // The seq the server gave: the latest of the room.
            r.messages.push((seq.expect("read for posts"), a, false));
        }
        // Edits change nothing the model keeps; which message a delete
        // hit is re-read by `sync_deletes`.
        _ => {}
    }
}

/// The server's view of room `ri` and of every user's invitations, equal
/// to the model's.
fn compare(w: &World, ri: usize, log: &[String]) {
    let r = &w.rooms[ri];
    let Some((&owner, _)) = r.roles.iter().find(|(_, &role)| role == Role::Owner) else {
        return;
    };
    let (_, v) = w.http(
        owner,
        "GET",
        &format!("/api/rooms/{}/members?limit=100", r.id),
        None,
    );
    let got: BTreeMap<u64, String> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user"].as_u64().unwrap(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: BTreeMap<u64, String> = r
        .roles
        .iter()
        .map(|(&u, role)| (w.ids[u], format!("{role:?}").to_lowercase()))
        .collect();
    assert_eq!(
        got,
        want,
        "members of room {ri}\nhistory:\n{}",
        log.join("\n")
    );
    let (_, v) = w.http(
        owner,
        "GET",
        &format!("/api/rooms/{}/bans?limit=100", r.id),
        None,
    );
    let got: BTreeSet<u64> = v["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["user"].as_u64().unwrap())
        .collect();
    let want: BTreeSet<u64> = r.banned.iter().map(|&u| w.ids[u]).collect();
    assert_eq!(got, want, "bans of room {ri}\nhistory:\n{}", log.join("\n"));
    for u in 0..USERS {
        let (_, v) = w.http(u, "GET", "/api/invites", None);
        let got = v["invites"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["room"]["id"] == r.id);
        assert_eq!(
            got,
            r.invited.contains(&u),
            "user {u}'s invitation to room {ri}\nhistory:\n{}",
            log.join("\n")
        );
    }
}

/// Messages' deleted flags, re-read (a delete the model allowed).
fn sync_deletes(w: &mut World, ri: usize) {
    let r = &w.rooms[ri];
    let Some((&owner, _)) = r.roles.iter().find(|(_, &role)| role == Role::Owner) else {
        return;
    };
    let (_, v) = w.http(
        owner,
        "GET",
        &format!("/api/rooms/{}/messages?limit=100", r.id),
        None,
    );
    let deleted: BTreeSet<u64> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["deleted"] == true)
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    for m in &mut w.rooms[ri].messages {
        m.2 = deleted.contains(&m.0);
    }
}

fn run(seed: u64) -> BTreeSet<(usize, bool)> {
    let server = start(&[
        "--joins-per-user-per-s",
        "100000",
        "--rooms-per-user-per-min",
        "100000",
        "--member-adds-per-user-per-min",
        "100000",
        "--sends-per-user-per-s",
        "100000",
        "--sends-per-user-burst",
        "100000",
    ]);
    let p = server.port;
    let tokens: Vec<String> = (0..USERS).map(|i| register(p, &format!("u{i}"))).collect();
    let ids = tokens
        .iter()
        .map(|t| {
            call(p, "GET", "/api/me", Some(t), None).1["user"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let sockets = tokens
        .iter()
        .map(|t| RawWs::connect(p, &format!("/ws?token={t}"), "").0)
        .collect();
    let mut w = World {
        port: p,
        tokens,
        ids,
        sockets,
        rooms: Vec::new(),
        next_ref: 0,
        seen: BTreeSet::new(),
    };
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut log = vec![format!("seed {seed}")];
    for _ in 0..STEPS {
        let before = w.rooms.len();
        step(&mut w, &mut rng, &mut log);
        for ri in 0..w.rooms.len().max(before) {
            sync_deletes(&mut w, ri);
            compare(&w, ri, &log);
        }
    }
    assert_serving(p);
    if std::env::var_os("ROOKERY_MODEL_LOG").is_some() {
        eprintln!("{}", log.join("\n"));
    }
    w.seen
}

#[test]
fn room_permissions_match_the_model() {
    let seeds: Vec<u64> = match std::env::var("ROOKERY_MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("ROOKERY_MODEL_SEED is a number")],
        // Against a cluster every step waits for the nodes to agree: two
        // seeds there keep the CI run within its time.
        Err(_) if common::clustered() => vec![1, 2],
        Err(_) => vec![1, 2, 3, 4],
    };
    let mut seen = BTreeSet::new();
    for seed in &seeds {
        seen.extend(run(*seed));
    }
    if seeds.len() > 1 {
        // Invite (0, 1), accept, decline, join, leave, remove, ban, unban,
        // set role, transfer, post (11, 12), edit, delete.
        for op in [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14] {
            for ok in [true, false] {
                assert!(
                    seen.contains(&(op, ok)),
                    "operation {op} was never {}: {seen:?}",
                    if ok { "allowed" } else { "refused" }
                );
            }
        }
    }
}
