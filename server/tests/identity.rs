//! End-to-end tests of identity (issue 14 items 1 to 3). Revocation: a
//! WebSocket lives no longer than what authenticated it; logging out (one
//! session, or all), changing the password, a session running out and a
//! JWT reaching its `exp` each close the connections concerned with 4001,
//! and only those. Namespaces: a JWT subject is never a registered user,
//! and registration can be closed. Names: unique in any case, shown as
//! given; a hidden room never takes a name.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

const TEXT: u8 = 0x1;

fn send(ws: &mut RawWs, frame: Value) {
    ws.write_frame(TEXT, frame.to_string().as_bytes(), true, false);
}

/// A WebSocket authenticated by `token` on the upgrade, past its `hello`.
fn open(port: u16, token: &str) -> RawWs {
    let (mut ws, head) = RawWs::connect(port, &format!("/ws?token={token}"), "");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(next_json(&mut ws).unwrap()["type"], "hello");
    ws
}

/// Still served: a ping is answered.
fn answers(ws: &mut RawWs) -> bool {
    send(ws, json!({"type": "ping", "ref": "p"}));
    next_json(ws).is_some_and(|v| v["type"] == "pong")
}

fn login(port: u16, name: &str, password: &str) -> String {
    let (s, v) = call(
        port,
        "POST",
        "/api/login",
        None,
        Some(&json!({"name": name, "password": password})),
    );
    assert_eq!(s, 200, "{v}");
    v["token"].as_str().unwrap().to_string()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(sub: &str, exp: u64) -> String {
    jwt_with(json!({"sub": sub, "exp": exp}))
}

fn jwt_with(claims: Value) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(b"s3cret"),
    )
    .unwrap()
}

#[test]
fn logout_closes_the_sessions_websockets_and_only_them() {
    let server = start(&[]);
    let p = server.port;
    let first = register(p, "alice");
    let second = login(p, "alice", "pw-secret");
    let mut a = open(p, &first);
    // The other one authenticates with a frame instead of the upgrade.
    let (mut b, _) = RawWs::connect(p, "/ws", "");
    send(&mut b, json!({"type": "auth", "token": second}));
    assert_eq!(next_json(&mut b).unwrap()["type"], "hello");

    let (s, v) = call(p, "POST", "/api/logout", Some(&first), None);
    assert_eq!((s, v["sessions"].as_u64()), (200, Some(1)), "{v}");
    let (code, reason) = closed_with(&mut a);
    assert_eq!(code, 4001);
    assert!(reason.contains("logged out"), "{reason}");
    assert!(answers(&mut b), "the other session's socket lives on");
    // The ended token opens nothing more.
    assert_eq!(call(p, "GET", "/api/me", Some(&first), None).0, 401);
    let (_, head) = RawWs::connect(p, &format!("/ws?token={first}"), "");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    // Everywhere: the second session and a third go, with their sockets.
    let third = login(p, "alice", "pw-secret");
    let mut c = open(p, &third);
    let (s, v) = call(p, "POST", "/api/logout?all=true", Some(&second), None);
    assert_eq!((s, v["sessions"].as_u64()), (200, Some(2)), "{v}");
    assert_eq!(closed_with(&mut b).0, 4001);
    assert_eq!(closed_with(&mut c).0, 4001);
    assert_eq!(call(p, "GET", "/api/me", Some(&third), None).0, 401);
    let (s, v) = call(
        p,
        "POST",
        "/api/logout?all=maybe",
        Some(&login(p, "alice", "pw-secret")),
        None,
    );
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")));
    assert_serving(p);
}

#[test]
fn a_password_change_ends_every_other_session() {
    let server = start(&[]);
    let p = server.port;
    let here = register(p, "bob");
    let elsewhere = login(p, "bob", "pw-secret");
    let mut mine = open(p, &here);
    let mut theirs = open(p, &elsewhere);
    let change = |old: &str, new: &str| {
        call(
            p,
            "POST",
            "/api/password",
            Some(&here),
            Some(&json!({"old": old, "new": new})),
        )
    };
    let (s, v) = change("wrong", "pw-secret-2");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert!(answers(&mut theirs), "a wrong old password changes nothing");
    let (s, v) = change("pw-secret", "");
    assert_eq!(s, 400, "{v}");
    let (s, v) = change("pw-secret", "seven77");
    assert_eq!(s, 400, "a new password under --password-len-min: {v}");
    assert!(answers(&mut theirs), "a refused change ends nothing");
    let (s, v) = change("pw-secret", "pw-secret-2");
    assert_eq!((s, v["sessions_ended"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(closed_with(&mut theirs).0, 4001);
    assert!(answers(&mut mine), "the session that changed it stays");
    assert_eq!(call(p, "GET", "/api/me", Some(&here), None).0, 200);
    assert_eq!(call(p, "GET", "/api/me", Some(&elsewhere), None).0, 401);
    let (s, _) = call(
        p,
        "POST",
        "/api/login",
        None,
        Some(&json!({"name": "bob", "password": "pw-secret"})),
    );
    assert_eq!(s, 401, "the old password is gone");
    login(p, "bob", "pw-secret-2");
}

#[test]
fn a_session_running_out_closes_its_websocket() {
    let server = start(&["--session-ttl-s", "2"]);
    let p = server.port;
    let token = register(p, "carol");
    let mut ws = open(p, &token);
    let (code, reason) = closed_with(&mut ws);
    assert_eq!(code, 4001);
    assert!(reason.contains("expired"), "{reason}");
    assert_eq!(call(p, "GET", "/api/me", Some(&token), None).0, 401);
}

#[test]
fn jwt_connections_are_warned_can_refresh_and_end_at_exp() {
    let server = start(&["--jwt-secret", "s3cret"]);
    let p = server.port;
    // Less than the 30 s warning ahead: the warning comes at once.
    let mut ws = open(p, &jwt("dave", now_s() + 3));
    let warned = next_json(&mut ws).unwrap();
    assert_eq!(warned["type"], "refresh_needed", "{warned}");
    // Another user's token is refused; the connection lives on.
    send(
        &mut ws,
        json!({"type": "refresh", "token": jwt("erin", now_s() + 60), "ref": 1}),
    );
    let v = next_json(&mut ws).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{v}"
    );
    // A newer token of the same user moves the end.
    let exp = now_s() + 4;
    send(
        &mut ws,
        json!({"type": "refresh", "token": jwt("dave", exp), "ref": 2}),
    );
    let v = next_json(&mut ws).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["expires_ms"].as_u64()),
        (Some("refreshed"), Some(exp * 1000)),
        "{v}"
    );
    let began = std::time::Instant::now();
    let (code, reason) = closed_with(&mut ws);
    assert_eq!(code, 4001);
    assert!(reason.contains("token expired"), "{reason}");
    assert!(
        began.elapsed() >= Duration::from_secs(2),
        "not before the new exp"
    );
    // A JWT cannot be logged out.
    let (s, v) = call(
        p,
        "POST",
        "/api/logout",
        Some(&jwt("dave", now_s() + 60)),
        None,
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("JWT"),
        "{v}"
    );
    assert_serving(p);
}

/// `exp` and `nbf` are checked with `--jwt-leeway-s` of clock skew
/// (issue 14 item 2).
#[test]
fn jwt_exp_and_nbf_are_checked_with_a_small_leeway() {
    let me = |p: u16, token: &str| call(p, "GET", "/api/me", Some(token), None).0;
    let server = start(&["--jwt-secret", "s3cret"]);
    let p = server.port;
    let now = now_s();
    assert_eq!(me(p, &jwt("fay", now + 60)), 200);
    assert_eq!(me(p, &jwt("fay", now - 2)), 200, "within the 5 s leeway");
    assert_eq!(me(p, &jwt("fay", now - 30)), 401, "expired");
    assert_eq!(
        me(
            p,
            &jwt_with(json!({"sub": "fay", "exp": now + 60, "nbf": now + 30}))
        ),
        401,
        "not yet valid"
    );
    assert_eq!(
        me(
            p,
            &jwt_with(json!({"sub": "fay", "exp": now + 60, "nbf": now - 1}))
        ),
        200
    );
    let strict = start(&["--jwt-secret", "s3cret", "--jwt-leeway-s", "0"]);
    assert_eq!(me(strict.port, &jwt("fay", now - 2)), 401, "no leeway");
}

#[test]
fn jwt_subjects_and_registered_names_never_meet() {
    let server = start(&["--jwt-secret", "s3cret"]);
    let p = server.port;
    let backend = jwt("ceo", now_s() + 600);
    let (s, ceo) = call(p, "GET", "/api/me", Some(&backend), None);
    assert_eq!((s, ceo["external"].as_bool()), (200, Some(true)), "{ceo}");
    let room = create_room(p, &backend, "board", true);
    // Someone registers the name `ceo`: another user, who sees nothing.
    let squatter = register(p, "ceo");
    let (_, v) = call(p, "GET", "/api/me", Some(&squatter), None);
    assert_ne!(v["user"], ceo["user"], "{v}");
    assert_eq!(v["external"], false);
    let (s, _) = call(
        p,
        "GET",
        &format!("/api/rooms/{room}"),
        Some(&squatter),
        None,
    );
    assert_eq!(s, 404, "the backend user's private room stays hidden");
    // The password signs in the registered user, never the subject.
    let (_, v) = call(
        p,
        "GET",
        "/api/me",
        Some(&login(p, "ceo", "pw-secret")),
        None,
    );
    assert_ne!(v["user"], ceo["user"]);
    // A subject matching a registered name in another case is a subject.
    let (_, v) = call(p, "GET", "/api/me", Some(&jwt("CEO", now_s() + 600)), None);
    assert_ne!(v["user"], ceo["user"]);
    assert_eq!(v["external"], true);
}

#[test]
fn registration_can_be_closed() {
    let server = start(&["--jwt-secret", "s3cret", "--registration", "closed"]);
    let p = server.port;
    let (s, v) = try_register(p, "walk-in", "pw-secret");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    assert_eq!(
        call(p, "GET", "/api/me", Some(&jwt("staff", now_s() + 60)), None).0,
        200
    );
    let (s, _) = call(
        p,
        "POST",
        "/api/login",
        None,
        Some(&json!({"name": "walk-in", "password": "pw-secret"})),
    );
    assert_eq!(s, 401, "nothing was registered");
}

#[test]
fn names_are_unique_in_any_case_and_hidden_rooms_take_none() {
    let server = start(&[]);
    let p = server.port;
    let alice = register(p, "Alice");
    let (s, v) = try_register(p, "aLICE", "pw-secret");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    let (s, v) = call(
        p,
        "POST",
        "/api/login",
        None,
        Some(&json!({"name": "ALICE", "password": "pw-secret"})),
    );
    assert_eq!(
        (s, v["name"].as_str()),
        (200, Some("Alice")),
        "shown as registered: {v}"
    );
    // A private room's name: another user creating a room so named learns
    // nothing (created, public or private); public names stay unique.
    create_room(p, &alice, "plans", true);
    let bob = register(p, "bob");
    create_room(p, &bob, "PLANS", true);
    create_room(p, &bob, "plans", false);
    let (s, v) = call(
        p,
        "POST",
        "/api/rooms",
        Some(&alice),
        Some(&json!({"name": "Plans"})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "a public name: {v}"
    );
    assert_serving(p);
}
