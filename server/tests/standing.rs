//! End-to-end tests of standing in a room (issue 14 items 4 and 5), through
//! the binary over HTTP and WebSocket: the owner role, handing it on, the
//! last owner staying, join never changing a role, bans keeping a user
//! out, membership needed to post and type, a removal ending the user's
//! subscriptions at once, and invitations that need the invitee's consent
//! and cannot be used to probe for users.

mod common;

use common::*;
use serde_json::{json, Value};

const TEXT: u8 = 0x1;

/// The next text frame as JSON (pings skipped); `None` once closed.
fn next_json(ws: &mut RawWs) -> Option<Value> {
    loop {
        let f = ws.read_frame()?;
        if f.opcode == TEXT {
            return Some(serde_json::from_slice(&f.payload).unwrap());
        }
    }
}

/// The answer carrying `ref` (events passed over, kept in `seen`).
fn request(ws: &mut RawWs, r: u64, mut frame: Value, seen: &mut Vec<Value>) -> Value {
    frame["ref"] = json!(r);
    ws.write_frame(TEXT, frame.to_string().as_bytes(), true, false);
    loop {
        let v = next_json(ws).expect("connection open");
        if v["ref"] == r {
            return v;
        }
        seen.push(v);
    }
}

fn open(port: u16, token: &str) -> RawWs {
    let (mut ws, head) = RawWs::connect(port, &format!("/ws?token={token}"), "");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(next_json(&mut ws).unwrap()["type"], "hello");
    ws
}

fn me(port: u16, token: &str) -> u64 {
    call(port, "GET", "/api/me", Some(token), None).1["user"]
        .as_u64()
        .unwrap()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// `(status, error code)` of a call.
fn outcome(port: u16, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, String) {
    let (s, v) = call(port, method, path, Some(token), body.as_ref());
    (s, code(&v).to_string())
}

/// The status of answering an invitation to `room` (`accept` or
/// `decline`).
fn answer(port: u16, token: &str, room: u64, what: &str) -> u16 {
    let path = format!("/api/invites/{room}/{what}");
    call(port, "POST", &path, Some(token), None).0
}

fn role_of(port: u16, token: &str, room: u64) -> Option<String> {
    let (_, v) = call(
        port,
        "GET",
        &format!("/api/rooms/{room}"),
        Some(token),
        None,
    );
    v["role"].as_str().map(str::to_string)
}

#[test]
fn the_owner_hands_on_and_admins_cannot_unseat_them() {
    let server = start(&[]);
    let p = server.port;
    let (ann, ben) = (register(p, "ann"), register(p, "ben"));
    let ben_id = me(p, &ben);
    let ann_id = me(p, &ann);
    let room = create_room(p, &ann, "club", false);
    assert_eq!(role_of(p, &ann, room).as_deref(), Some("owner"));
    // Joining never changes a role: not over HTTP, not over a WebSocket.
    let (s, v) = call(
        p,
        "POST",
        &format!("/api/rooms/{room}/join"),
        Some(&ann),
        None,
    );
    assert_eq!((s, v["changed"].as_bool()), (200, Some(false)), "{v}");
    let mut ws = open(p, &ann);
    let v = request(
        &mut ws,
        1,
        json!({"type": "join", "room": room}),
        &mut Vec::new(),
    );
    assert_eq!(v["type"], "joined", "{v}");
    assert_eq!(role_of(p, &ann, room).as_deref(), Some("owner"));
    // Ben joins and is made an admin; as one he cannot touch the owner.
    assert_eq!(
        outcome(p, "POST", &format!("/api/rooms/{room}/join"), &ben, None).0,
        200
    );
    let member = |u: u64| format!("/api/rooms/{room}/members/{u}");
    let admin = Some(json!({"role": "admin"}));
    assert_eq!(
        outcome(p, "PUT", &member(ben_id), &ann, admin.clone()).0,
        200
    );
    assert_eq!(role_of(p, &ben, room).as_deref(), Some("admin"));
    for (method, body) in [("DELETE", None), ("PUT", Some(json!({"role": "member"})))] {
        assert_eq!(
            outcome(p, method, &member(ann_id), &ben, body),
            (403, "forbidden".into()),
            "{method}"
        );
    }
    let ban = format!("/api/rooms/{room}/bans/{ann_id}");
    assert_eq!(
        outcome(p, "PUT", &ban, &ben, None),
        (403, "forbidden".into())
    );
    let owner = format!("/api/rooms/{room}/owner");
    let to = |u: u64| Some(json!({"user": u}));
    assert_eq!(
        outcome(p, "POST", &owner, &ben, to(ann_id)),
        (403, "forbidden".into())
    );
    assert_eq!(
        outcome(
            p,
            "PUT",
            &member(ann_id),
            &ann,
            Some(json!({"role": "owner"}))
        )
        .0,
        400,
        "ownership is handed on, not set"
    );
    // The last owner does not leave; after handing on, she may.
    let leave = format!("/api/rooms/{room}/leave");
    assert_eq!(
        outcome(p, "POST", &leave, &ann, None),
        (409, "conflict".into())
    );
    assert_eq!(outcome(p, "POST", &owner, &ann, to(ben_id)).0, 200);
    assert_eq!(role_of(p, &ben, room).as_deref(), Some("owner"));
    assert_eq!(role_of(p, &ann, room).as_deref(), Some("admin"));
    assert_eq!(
        outcome(p, "POST", &owner, &ann, to(ben_id)),
        (403, "forbidden".into())
    );
    assert_eq!(outcome(p, "POST", &leave, &ann, None).0, 200);
    assert_eq!(role_of(p, &ann, room), None);
    assert_serving(p);
}

#[test]
fn members_alone_post_and_type_and_a_removal_ends_subscriptions_at_once() {
    let server = start(&[]);
    let p = server.port;
    let (ann, cid) = (register(p, "ann"), register(p, "cid"));
    let cid_id = me(p, &cid);
    let room = create_room(p, &ann, "open", false);
    let messages = format!("/api/rooms/{room}/messages");
    let post =
        |token: &str, body: &str| outcome(p, "POST", &messages, token, Some(json!({"body": body})));
    // Not a member of a public room: posting is refused, nothing stored.
    assert_eq!(post(&cid, "drive-by"), (403, "forbidden".into()));
    let (_, v) = call(p, "GET", &messages, Some(&ann), None);
    assert_eq!(v["messages"].as_array().unwrap().len(), 0, "{v}");
    // Joining is one call (a WebSocket join is one too).
    let mut ws = open(p, &cid);
    let mut seen = Vec::new();
    let v = request(&mut ws, 1, json!({"type": "join", "room": room}), &mut seen);
    assert_eq!(v["type"], "joined", "{v}");
    assert_eq!(role_of(p, &cid, room).as_deref(), Some("member"));
    assert_eq!(post(&cid, "hello").0, 201);
    let v = request(
        &mut ws,
        2,
        json!({"type": "typing", "room": room}),
        &mut seen,
    );
    assert_eq!(v["type"], "ack", "{v}");
    // Removed: the subscription ends with `left` before anything else of
    // the room; typing, posting are refused; a public room lets him back.
    let path = format!("/api/rooms/{room}/members/{cid_id}");
    assert_eq!(outcome(p, "DELETE", &path, &ann, None).0, 200);
    assert_eq!(post(&ann, "after").0, 201);
    let left = loop {
        let v = next_json(&mut ws).unwrap();
        if v["type"] != "presence" && v["type"] != "typing" && v["type"] != "msg" {
            break v;
        }
        assert!(v["body"] != "after", "the room's events stop at once: {v}");
    };
    assert_eq!(
        (left["type"].as_str(), left["reason"].as_str()),
        (Some("left"), Some("removed"))
    );
    // Nothing of the room follows, volatile events included: Ann comes
    // online there, types and posts; Cid's next answers bring none of it.
    let mut ann_ws = open(p, &ann);
    let v = request(
        &mut ann_ws,
        1,
        json!({"type": "join", "room": room}),
        &mut Vec::new(),
    );
    assert_eq!(v["type"], "joined", "{v}");
    let v = request(
        &mut ann_ws,
        2,
        json!({"type": "typing", "room": room}),
        &mut Vec::new(),
    );
    assert_eq!(v["type"], "ack", "{v}");
    assert_eq!(post(&ann, "after again").0, 201);
    std::thread::sleep(std::time::Duration::from_millis(200));
    seen.clear();
    let v = request(
        &mut ws,
        3,
        json!({"type": "typing", "room": room}),
        &mut seen,
    );
    assert_eq!(v["type"], "error", "{v}");
    let v = request(&mut ws, 4, json!({"type": "ping"}), &mut seen);
    assert_eq!(v["type"], "pong", "{v}");
    assert!(
        seen.iter().all(|e| e["room"] != room),
        "after left: {seen:?}"
    );
    assert_eq!(post(&cid, "still here?"), (403, "forbidden".into()));
    assert_eq!(
        outcome(p, "POST", &format!("/api/rooms/{room}/join"), &cid, None).0,
        200
    );
    assert_eq!(post(&cid, "back").0, 201);
    assert_serving(p);
}

#[test]
fn a_ban_keeps_a_user_out_until_lifted() {
    let server = start(&[]);
    let p = server.port;
    let (ann, dan) = (register(p, "ann"), register(p, "dan"));
    let dan_id = me(p, &dan);
    let room = create_room(p, &ann, "hall", false);
    let mut ws = open(p, &dan);
    let mut seen = Vec::new();
    let v = request(&mut ws, 1, json!({"type": "join", "room": room}), &mut seen);
    assert_eq!(v["type"], "joined", "{v}");
    let ban = format!("/api/rooms/{room}/bans/{dan_id}");
    // Someone the room never knew cannot be banned (nor told from an id
    // that does not exist).
    let eve = register(p, "eve");
    let eve_ban = format!("/api/rooms/{room}/bans/{}", me(p, &eve));
    assert_eq!(outcome(p, "PUT", &eve_ban, &ann, None).0, 404);
    assert_eq!(
        outcome(
            p,
            "PUT",
            &format!("/api/rooms/{room}/bans/999999"),
            &ann,
            None
        )
        .0,
        404
    );
    let (s, v) = call(p, "PUT", &ban, Some(&ann), None);
    assert_eq!((s, v["changed"].as_bool()), (200, Some(true)), "{v}");
    let (s, v) = call(p, "PUT", &ban, Some(&ann), None);
    assert_eq!(
        (s, v["changed"].as_bool()),
        (200, Some(false)),
        "again: {v}"
    );
    let left = loop {
        let v = next_json(&mut ws).unwrap();
        if v["type"] == "left" {
            break v;
        }
    };
    assert_eq!(left["reason"], "banned");
    // Everything is refused with `banned` or as a non-member.
    let join = format!("/api/rooms/{room}/join");
    assert_eq!(
        outcome(p, "POST", &join, &dan, None),
        (403, "banned".into())
    );
    let v = request(&mut ws, 2, json!({"type": "join", "room": room}), &mut seen);
    assert_eq!(
        (v["type"].as_str(), code_of(&v)),
        (Some("error"), "banned"),
        "{v}"
    );
    let messages = format!("/api/rooms/{room}/messages");
    assert_eq!(
        outcome(p, "GET", &messages, &dan, None),
        (403, "banned".into())
    );
    assert_eq!(
        outcome(
            p,
            "POST",
            &messages,
            &dan,
            Some(json!({"body": "let me in"}))
        )
        .0,
        403
    );
    let v = request(
        &mut ws,
        3,
        json!({"type": "typing", "room": room}),
        &mut seen,
    );
    assert_eq!(v["type"], "error", "{v}");
    // Invitations do not get round it; the ban list shows it.
    assert_eq!(
        outcome(
            p,
            "POST",
            &format!("/api/rooms/{room}/members"),
            &ann,
            Some(json!({"user": dan_id}))
        ),
        (409, "conflict".into())
    );
    let (_, v) = call(
        p,
        "GET",
        &format!("/api/rooms/{room}/bans"),
        Some(&ann),
        None,
    );
    assert_eq!(v["bans"][0]["user"], dan_id, "{v}");
    assert_eq!(
        outcome(p, "GET", &format!("/api/rooms/{room}/bans"), &dan, None).0,
        403
    );
    // Lifted: he may join again.
    assert_eq!(outcome(p, "DELETE", &ban, &ann, None).0, 200);
    assert_eq!(outcome(p, "POST", &join, &dan, None).0, 200);
    // Leaving first does not escape a ban.
    let leave = format!("/api/rooms/{room}/leave");
    assert_eq!(outcome(p, "POST", &leave, &dan, None).0, 200);
    let (s, v) = call(p, "PUT", &ban, Some(&ann), None);
    assert_eq!((s, v["changed"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(
        outcome(p, "POST", &join, &dan, None),
        (403, "banned".into())
    );
    assert_serving(p);
}

/// Calls on rooms that do not exist are refused without the shard keeping
/// anything for them, and every change of standing is rate-limited.
#[test]
fn made_up_rooms_cost_nothing_and_changes_are_rate_limited() {
    let server = start(&["--joins-per-user-per-s", "1000"]);
    let p = server.port;
    let ann = register(p, "ann");
    let loaded = || metric(p, "rookery_rooms_loaded");
    let before = loaded();
    for id in 1_000..1_060u64 {
        for (method, path) in [
            ("DELETE", format!("/api/rooms/{id}/members/1")),
            ("PUT", format!("/api/rooms/{id}/bans/1")),
            ("POST", format!("/api/rooms/{id}/leave")),
            ("POST", format!("/api/rooms/{id}/join")),
        ] {
            assert_eq!(
                outcome(p, method, &path, &ann, None),
                (404, "not_found".into()),
                "{method} {path}"
            );
        }
    }
    assert_eq!(loaded(), before, "no room was loaded for a made-up id");
    let strict = start(&[]);
    let p = strict.port;
    let (ann, ben) = (register(p, "ann"), register(p, "ben"));
    let ben_id = me(p, &ben);
    let room = create_room(p, &ann, "r", false);
    // The bucket holds 20 (twice the default 10/s) and refills while the
    // loop runs, so what passes is bounded by the burst plus the refill of
    // the time taken, and the calls past it are refused.
    let began = std::time::Instant::now();
    let mut statuses = Vec::new();
    while !statuses.contains(&429) && statuses.len() < 200 {
        let path = format!("/api/rooms/{room}/members/{ben_id}");
        statuses.push(outcome(p, "DELETE", &path, &ann, None).0);
    }
    let refilled = (began.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    let passed = statuses.iter().filter(|&&s| s == 404).count();
    assert!(
        statuses.ends_with(&[429]) && (20..=20 + refilled).contains(&passed),
        "{statuses:?} with {refilled} refilled"
    );
    assert_serving(p);
}

fn code_of(v: &Value) -> &str {
    v["code"].as_str().unwrap_or("")
}

#[test]
fn invitations_need_consent_and_do_not_reveal_users() {
    let server = start(&[]);
    let p = server.port;
    let (ann, eve, fay) = (register(p, "ann"), register(p, "eve"), register(p, "fay"));
    let (eve_id, fay_id) = (me(p, &eve), me(p, &fay));
    let room = create_room(p, &ann, "inner", true);
    let invite = format!("/api/rooms/{room}/members");
    // Eve, a stranger, cannot see the room, leave it, nor invite into it.
    assert_eq!(
        outcome(p, "POST", &format!("/api/rooms/{room}/leave"), &eve, None).0,
        404
    );
    assert_eq!(
        outcome(p, "POST", &invite, &eve, Some(json!({"user": fay_id}))).0,
        404
    );
    // Eve is online: the invitation reaches her WebSocket.
    let mut ws = open(p, &eve);
    let (s, existing) = call(
        p,
        "POST",
        &invite,
        Some(&ann),
        Some(&json!({"user": eve_id})),
    );
    assert_eq!(s, 202, "{existing}");
    let invited = next_json(&mut ws).unwrap();
    assert_eq!(
        (
            invited["type"].as_str(),
            invited["room"].as_u64(),
            invited["name"].as_str()
        ),
        (Some("invited"), Some(room), Some("inner")),
        "{invited}"
    );
    assert_eq!(invited["by_name"], "ann");
    // Probing: a missing id and a missing name answer exactly alike.
    for who in [
        json!({"user": 999_999}),
        json!({"name": "nobody"}),
        json!({"subject": "x"}),
    ] {
        let (s, v) = call(p, "POST", &invite, Some(&ann), Some(&who));
        assert_eq!((s, &v), (202, &existing), "{who}");
    }
    // Invited is not a member: the room shows, its history does not.
    assert_eq!(role_of(p, &eve, room), None);
    let (_, v) = call(p, "GET", &format!("/api/rooms/{room}"), Some(&eve), None);
    assert_eq!(v["invited"], true, "{v}");
    let messages = format!("/api/rooms/{room}/messages");
    assert_eq!(outcome(p, "GET", &messages, &eve, None).0, 404);
    let (_, v) = call(p, "GET", "/api/invites", Some(&eve), None);
    assert_eq!(v["invites"][0]["room"]["id"], room, "{v}");
    assert_eq!(v["invites"][0]["by_name"], "ann", "{v}");
    // Accept: a member.
    assert_eq!(answer(p, &eve, room, "accept"), 200);
    assert_eq!(role_of(p, &eve, room).as_deref(), Some("member"));
    assert_eq!(outcome(p, "GET", &messages, &eve, None).0, 200);
    // Fay declines: not a member, the room gone from her view.
    assert_eq!(
        call(
            p,
            "POST",
            &invite,
            Some(&ann),
            Some(&json!({"name": "FAY"}))
        )
        .0,
        202
    );
    assert_eq!(answer(p, &fay, room, "decline"), 200);
    assert_eq!(
        outcome(p, "GET", &format!("/api/rooms/{room}"), &fay, None).0,
        404
    );
    let (_, v) = call(p, "GET", "/api/invites", Some(&fay), None);
    assert_eq!(v["invites"], json!([]));
    let (_, v) = call(p, "GET", "/api/rooms", Some(&fay), None);
    assert_eq!(
        v["rooms"],
        json!([]),
        "an unanswered invitation adds no room"
    );
    assert_eq!(answer(p, &fay, room, "accept"), 404);
    // Withdrawn before she answers: gone.
    assert_eq!(
        call(
            p,
            "POST",
            &invite,
            Some(&ann),
            Some(&json!({"user": fay_id}))
        )
        .0,
        202
    );
    let withdraw = format!("/api/rooms/{room}/invites/{fay_id}");
    assert_eq!(outcome(p, "DELETE", &withdraw, &ann, None).0, 200);
    assert_eq!(answer(p, &fay, room, "accept"), 404);
    // Members do not invite.
    assert_eq!(
        outcome(p, "POST", &invite, &eve, Some(json!({"user": fay_id}))),
        (403, "forbidden".into())
    );
    assert_serving(p);
}

/// The other users of the caller's direct messages, with the room and
/// whether the caller is in it (`?left=true` lists the ones they left).
fn dms_of(port: u16, token: &str, query: &str) -> Vec<(u64, u64, bool)> {
    let (s, v) = call(port, "GET", &format!("/api/dms{query}"), Some(token), None);
    assert_eq!(s, 200, "{v}");
    v["dms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["user"].as_u64().unwrap(),
                d["room"]["id"].as_u64().unwrap(),
                d["member"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_direct_message_is_one_room_for_two_that_nobody_manages() {
    let server = start(&[]);
    let p = server.port;
    let [ann, bea, cid] = ["ann", "bea", "cid"].map(|n| register(p, n));
    let [ann_id, bea_id, cid_id] = [&ann, &bea, &cid].map(|t| me(p, t));
    // Bea is online: a new direct message reaches her WebSocket.
    let mut bea_ws = open(p, &bea);
    let (s, dm) = call(
        p,
        "POST",
        "/api/dms",
        Some(&ann),
        Some(&json!({"name": "Bea"})),
    );
    assert_eq!(s, 201, "{dm}");
    let room = dm["room"]["id"].as_u64().unwrap();
    assert_eq!(
        (
            dm["user"].as_u64(),
            dm["name"].as_str(),
            dm["member"].as_bool()
        ),
        (Some(bea_id), Some("bea"), Some(true)),
        "{dm}"
    );
    assert_eq!(dm["room"]["private"], true);
    let told = next_json(&mut bea_ws).unwrap();
    assert_eq!(
        (
            told["type"].as_str(),
            told["room"].as_u64(),
            told["user"].as_u64(),
            told["name"].as_str()
        ),
        (Some("dm"), Some(room), Some(ann_id), Some("ann")),
        "{told}"
    );
    // Bea is invited, not put in it: she sees the request, and the room
    // is hers only once she opens it too.
    assert_eq!(dms_of(p, &bea, ""), [(ann_id, room, false)]);
    let (_, request) = call(p, "GET", "/api/dms", Some(&bea), None);
    assert_eq!(
        (&request["dms"][0]["invited"], &request["dms"][0]["online"]),
        (&json!(true), &json!(false)),
        "a request: {request}"
    );
    let history = format!("/api/rooms/{room}/messages");
    assert_eq!(outcome(p, "GET", &history, &bea, None).0, 404);
    let (_, members) = call(
        p,
        "GET",
        &format!("/api/rooms/{room}/members"),
        Some(&ann),
        None,
    );
    assert_eq!(
        members["members"].as_array().map(Vec::len),
        Some(1),
        "{members}"
    );
    // The pair has one room, whoever opens it, by id or name.
    for (token, who) in [
        (&bea, json!({"user": ann_id})),
        (&ann, json!({"name": "bea"})),
    ] {
        let (s, again) = call(p, "POST", "/api/dms", Some(token), Some(&who));
        assert_eq!(
            (s, again["room"]["id"].as_u64()),
            (200, Some(room)),
            "{again}"
        );
    }
    assert_eq!(dms_of(p, &ann, ""), [(bea_id, room, true)]);
    assert_eq!(dms_of(p, &bea, ""), [(ann_id, room, true)]);
    assert!(dms_of(p, &cid, "").is_empty());
    // Not among the rooms: they are listed apart.
    let (_, rooms) = call(p, "GET", "/api/rooms", Some(&ann), None);
    assert!(
        rooms["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["id"] != room),
        "{rooms}"
    );
    // What is refused, and how.
    let refused = [
        (json!({"user": ann_id}), &ann, 400, "bad_request"),
        (json!({"name": "nobody"}), &ann, 404, "not_found"),
        (json!({"user": 999_999}), &ann, 404, "not_found"),
        (json!({"nobody": 1}), &ann, 400, "bad_request"),
    ];
    for (body, token, status, err) in refused {
        assert_eq!(
            outcome(p, "POST", "/api/dms", token, Some(body.clone())),
            (status, err.to_string()),
            "{body}"
        );
    }
    assert_eq!(
        call(p, "POST", "/api/dms", None, Some(&json!({"user": bea_id}))).0,
        401
    );
    assert_eq!(outcome(p, "GET", "/api/dms?left=maybe", &ann, None).0, 400);
    // A room like any other for its two: messages and history.
    let messages = format!("/api/rooms/{room}/messages");
    let post =
        |token: &str, body: &str| outcome(p, "POST", &messages, token, Some(json!({"body": body})));
    assert_eq!(post(&ann, "hi bea").0, 201);
    assert_eq!(post(&bea, "hi ann").0, 201);
    let (s, page) = call(p, "GET", &messages, Some(&bea), None);
    assert_eq!(
        (s, page["messages"].as_array().map(Vec::len)),
        (200, Some(2)),
        "{page}"
    );
    // Nobody else gets in, and nobody manages it: not even its creator.
    assert_eq!(post(&cid, "let me in"), (404, "not_found".into()));
    assert_eq!(outcome(p, "GET", &messages, &cid, None).0, 404);
    assert_eq!(
        outcome(p, "POST", &format!("/api/rooms/{room}/join"), &cid, None).0,
        404
    );
    let managing = [
        (
            "POST",
            format!("/api/rooms/{room}/members"),
            Some(json!({"user": cid_id})),
        ),
        (
            "PUT",
            format!("/api/rooms/{room}/members/{bea_id}"),
            Some(json!({"role": "admin"})),
        ),
        (
            "DELETE",
            format!("/api/rooms/{room}/members/{bea_id}"),
            None,
        ),
        ("PUT", format!("/api/rooms/{room}/bans/{bea_id}"), None),
        (
            "POST",
            format!("/api/rooms/{room}/owner"),
            Some(json!({"user": bea_id})),
        ),
    ];
    for (method, path, body) in managing {
        assert_eq!(
            outcome(p, method, &path, &ann, body.clone()),
            (403, "forbidden".into()),
            "{method} {path}"
        );
        assert_eq!(
            outcome(p, method, &path, &cid, body).0,
            404,
            "{method} {path}: hidden"
        );
    }
    let (_, members) = call(
        p,
        "GET",
        &format!("/api/rooms/{room}/members"),
        Some(&ann),
        None,
    );
    let roles: Vec<(u64, &str)> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user"].as_u64().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    let mut want = [(ann_id, "member"), (bea_id, "member")];
    want.sort();
    assert_eq!(roles, want, "two members, no owner");
    // Bea leaves: it leaves her list, and opening it brings her back with
    // its history.
    assert_eq!(
        outcome(p, "POST", &format!("/api/rooms/{room}/leave"), &bea, None).0,
        200
    );
    assert!(dms_of(p, &bea, "").is_empty());
    assert_eq!(dms_of(p, &bea, "?left=true"), [(ann_id, room, false)]);
    assert_eq!(
        post(&bea, "still here?"),
        (404, "not_found".into()),
        "as to anyone outside"
    );
    assert_eq!(post(&ann, "while away").0, 201);
    let (s, back) = call(
        p,
        "POST",
        "/api/dms",
        Some(&bea),
        Some(&json!({"name": "ann"})),
    );
    assert_eq!(
        (s, back["room"]["id"].as_u64(), back["member"].as_bool()),
        (200, Some(room), Some(true))
    );
    let (_, page) = call(p, "GET", &messages, Some(&bea), None);
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(3), "{page}");
    // A second pair gets its own room; pages go by the other user's id.
    let (s, with_cid) = call(
        p,
        "POST",
        "/api/dms",
        Some(&cid),
        Some(&json!({"user": ann_id})),
    );
    assert_eq!(s, 201, "{with_cid}");
    let cid_room = with_cid["room"]["id"].as_u64().unwrap();
    assert_ne!(cid_room, room);
    assert_eq!(
        dms_of(p, &ann, ""),
        [(bea_id, room, true), (cid_id, cid_room, false)]
    );
    let (_, first) = call(p, "GET", "/api/dms?limit=1", Some(&ann), None);
    assert_eq!(first["next"], json!({"after": bea_id}), "{first}");
    assert_eq!(
        dms_of(p, &ann, &format!("?limit=1&after={bea_id}")),
        [(cid_id, cid_room, false)]
    );
    // Declining a request takes it off the list (it stays among those
    // left), and Ann is not in the room.
    let decline = format!("/api/invites/{cid_room}/decline");
    assert_eq!(outcome(p, "POST", &decline, &ann, None).0, 200);
    assert_eq!(dms_of(p, &ann, ""), [(bea_id, room, true)]);
    assert_eq!(
        dms_of(p, &ann, "?left=true"),
        [(bea_id, room, true), (cid_id, cid_room, false)]
    );
    let cid_history = format!("/api/rooms/{cid_room}/messages");
    assert_eq!(outcome(p, "GET", &cid_history, &ann, None).0, 404);
    assert_serving(p);
}
