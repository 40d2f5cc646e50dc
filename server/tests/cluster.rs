//! A node joining a cluster through real NATS servers: the node list is
//! recorded by the first node, a node given another list refuses to start
//! (saying why), a node that finds no NATS fails within its timeout, and
//! `/readyz` and `/metrics` show the node's view.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{call, exchange, start};
use rookery_cluster::testing::Nats;

fn cluster_flags<'a>(nats: &'a str, node: &'a str, nodes: &'a str) -> Vec<&'a str> {
    vec![
        "--nats",
        nats,
        "--node-id",
        node,
        "--cluster-nodes",
        nodes,
        "--cluster-name",
        "e2e",
        "--cluster-kv-replicas",
        "1",
    ]
}

/// Runs the binary to its exit (it must not start); its exit code and
/// standard error.
fn refused_start(args: &[&str], within: Duration) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port().to_string();
    let data = dir.path().join("data");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", data.to_str().unwrap()])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(started.elapsed() < within, "took {:?}", started.elapsed());
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn nodes_join_and_a_changed_node_list_is_refused() {
    let nats = Nats::start(1);
    let url = nats.urls()[0].clone();
    let one = start(&cluster_flags(&url, "1", "1,2,3"));
    let (s, v) = call(one.port, "GET", "/readyz", None, None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["cluster"]["node"], 1, "{v}");
    assert_eq!(v["cluster"]["nodes"], serde_json::json!([1, 2, 3]));
    assert_eq!(v["cluster"]["nats"], "connected");
    let metrics = exchange(
        one.port,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert!(
        metrics.contains("rookery_cluster_nats_connected 1"),
        "{metrics}"
    );
    // The same set in another order joins.
    let two = start(&cluster_flags(&url, "2", "3,2,1"));
    assert_eq!(call(two.port, "GET", "/readyz", None, None).0, 200);
    // Another set is refused before anything serves.
    let (code, err) = refused_start(&cluster_flags(&url, "2", "1,2"), Duration::from_secs(20));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("created with nodes [1,2,3]") && err.contains("started with [1,2]"),
        "{err}"
    );
    // A single node has no cluster in its view.
    let single = start(&[]);
    let (_, v) = call(single.port, "GET", "/readyz", None, None);
    assert!(v.get("cluster").is_none(), "{v}");
}

#[test]
fn a_node_that_finds_no_nats_does_not_start() {
    let nowhere = format!("nats://127.0.0.1:{}", common::free_port());
    let mut args = cluster_flags(&nowhere, "1", "1");
    args.extend(["--cluster-connect-timeout-ms", "1000"]);
    let (code, err) = refused_start(&args, Duration::from_secs(10));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("connecting to NATS"), "{err}");
    // Flags that need --nats, without it: a configuration error (exit 2).
    let (code, err) = refused_start(&["--node-id", "1"], Duration::from_secs(10));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--nats"), "{err}");
}

/// A node of a three-node test cluster: restartable on its port and data.
struct ClusterNode {
    id: u32,
    port: u16,
    args: Vec<String>,
    data: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl ClusterNode {
    fn start(dir: &std::path::Path, nats: &str, id: u32) -> ClusterNode {
        ClusterNode::start_with(dir, nats, id, &[])
    }

    fn start_with(dir: &std::path::Path, nats: &str, id: u32, extra: &[&str]) -> ClusterNode {
        let mut args = [
            "--nats",
            nats,
            "--node-id",
            &id.to_string(),
            "--cluster-nodes",
            "1,2,3",
            "--cluster-name",
            "e2e",
            "--durability",
            "sync",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut node = ClusterNode {
            id,
            port: common::free_port(),
            args,
            data: dir.join(format!("node-{id}")),
            child: None,
        };
        node.restart();
        node
    }

    fn restart(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        // The same port as before: a restarted server binds over the
        // connections its previous life closed (TIME_WAIT).
        common::wait_port_free(self.port);
        let (child, _) = common::spawn_in(&self.data, self.port, &args);
        self.child = Some(child);
        common::wait_ready(self.port);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Nodes 1, 2 and 3 of a cluster on `nats`, and their ports.
fn three_nodes(dir: &std::path::Path, nats: &str) -> (Vec<ClusterNode>, Vec<u16>) {
    let nodes: Vec<ClusterNode> = (1..=3)
        .map(|id| ClusterNode::start(dir, nats, id))
        .collect();
    let ports = nodes.iter().map(|n| n.port).collect();
    (nodes, ports)
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `call` with a token. A session or user made on one node is good on
/// every other at once (a node that has not copied it yet asks the
/// cluster), so nothing here retries.
fn call_as(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    call(port, method, path, Some(token), body)
}

/// Posts `body` with client id `id` to `room` through `port` as the holder
/// of `token`; the status and the answer.
fn post_message(
    port: u16,
    token: &str,
    room: u64,
    body: &str,
    id: &str,
) -> (u16, serde_json::Value) {
    let body = serde_json::json!({"body": body, "client_id": id});
    let path = format!("/api/rooms/{room}/messages");
    call(port, "POST", &path, Some(token), Some(&body))
}

fn seqs_and_bodies(v: &serde_json::Value) -> Vec<(u64, String)> {
    let mut all: Vec<(u64, String)> = v["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {v}"))
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["body"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    all.sort();
    all
}

#[test]
fn any_node_serves_any_room_and_a_dead_owner_fails_fast() {
    let nats = Nats::start(3);
    let urls = nats.urls().join(",");
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, ports) = three_nodes(dir.path(), &urls);
    let port = |i: usize| ports[i % 3];

    // Accounts are cluster-wide: registered on one node, signed in on
    // another, the token good on the third; a name is taken everywhere.
    let ann = common::register(port(0), "ann");
    let (s, v) = call(
        port(1),
        "POST",
        "/api/login",
        None,
        Some(&serde_json::json!({"name": "ANN", "password": "pw-secret"})),
    );
    assert_eq!(s, 200, "{v}");
    let ann2 = v["token"].as_str().unwrap().to_string();
    let (s, me) = call_as(port(2), "GET", "/api/me", &ann, None);
    assert_eq!((s, me["name"].as_str()), (200, Some("ann")), "{me}");
    let (s, v) = call(
        port(2),
        "POST",
        "/api/register",
        None,
        Some(&serde_json::json!({"name": "Ann", "password": "x-secret"})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    let bob = common::register(port(2), "bob");

    // A room created on a node is owned by it.
    let rooms: Vec<u64> = (0..3)
        .map(|i| common::create_room(port(i), &ann, &format!("room-{i}"), false))
        .collect();
    for (i, room) in rooms.iter().enumerate() {
        assert_eq!(rookery_cluster::owner_of(*room, &[1, 2, 3]), nodes[i].id);
    }

    // Every room route works through every node; order and client_id
    // idempotency hold whichever node a request comes through.
    for (i, room) in rooms.iter().enumerate() {
        let (s, v) = call_as(
            port(i + 1),
            "POST",
            &format!("/api/rooms/{room}/join"),
            &bob,
            None,
        );
        assert_eq!(s, 200, "{v}");
        for k in 0..6u64 {
            let token = if k % 2 == 0 { &ann } else { &ann2 };
            let (body, id) = (format!("m{k}"), format!("c{k}"));
            let (s, v) = post_message(port(i + k as usize), token, *room, &body, &id);
            assert_eq!((s, v["seq"].as_u64()), (201, Some(k + 1)), "{v}");
        }
        let (s, v) = post_message(port(i + 2), &ann, *room, "m3", "c3");
        assert_eq!(
            (s, v["seq"].as_u64(), v["duplicate"].as_bool()),
            (200, Some(4), Some(true)),
            "{v}"
        );
        for j in 0..3 {
            let (s, v) = call_as(
                port(j),
                "GET",
                &format!("/api/rooms/{room}/messages?limit=10"),
                &bob,
                None,
            );
            assert_eq!(s, 200, "{v}");
            let want: Vec<(u64, String)> = (0..6).map(|k| (k + 1, format!("m{k}"))).collect();
            assert_eq!(
                seqs_and_bodies(&v),
                want,
                "room {room} through node {}",
                j + 1
            );
        }
    }

    // Search spans every node's rooms: each node indexes the rooms it
    // owns, and the node asked merges their best and pages them.
    let m3: Vec<(u64, u64)> = rooms.iter().map(|r| (*r, 4)).collect();
    assert_eq!(searched(port(0), &bob, "q=m3", m3.len()), m3);
    let (s, first) = call_as(port(1), "GET", "/api/search?q=m3&limit=2", &bob, None);
    assert_eq!(
        (s, &first["next"]),
        (200, &serde_json::json!({"offset": 2}))
    );
    let (s, rest) = call_as(
        port(2),
        "GET",
        "/api/search?q=m3&limit=2&offset=2",
        &bob,
        None,
    );
    assert_eq!(
        (s, &rest["next"]),
        (200, &serde_json::Value::Null),
        "{rest}"
    );
    let mut paged = [found_in(&first), found_in(&rest)].concat();
    paged.sort_unstable();
    assert_eq!(paged, m3, "{first} {rest}");
    // One room is searched by its owner, whichever node is asked.
    let one = format!("q=m3&room={}", rooms[1]);
    assert_eq!(searched(port(0), &bob, &one, 1), vec![(rooms[1], 4)]);

    // Lists span every node: rooms (paged by id), unread counts and
    // invitations; public names are unique cluster-wide.
    let (s, v) = call_as(port(1), "GET", "/api/rooms?limit=2", &bob, None);
    assert_eq!(s, 200, "{v}");
    let mut sorted = rooms.clone();
    sorted.sort();
    let listed = |v: &serde_json::Value| -> Vec<u64> {
        v["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(listed(&v), sorted[..2].to_vec(), "{v}");
    let after = v["next"]["after"].as_u64().expect("a next page");
    let (_, v) = call_as(
        port(2),
        "GET",
        &format!("/api/rooms?limit=2&after={after}"),
        &bob,
        None,
    );
    assert_eq!(
        (listed(&v), v["next"].is_null()),
        (sorted[2..].to_vec(), true),
        "{v}"
    );
    let (s, v) = call_as(port(0), "GET", "/api/me/unread", &bob, None);
    assert_eq!(s, 200, "{v}");
    let unread: Vec<(u64, u64)> = v["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["room"].as_u64().unwrap(), r["unread"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        unread,
        sorted.iter().map(|r| (*r, 6)).collect::<Vec<_>>(),
        "{v}"
    );
    let secret = common::create_room(port(2), &ann, "secret", true);
    let bob_id = call_as(port(0), "GET", "/api/me", &bob, None).1["user"]
        .as_u64()
        .unwrap();
    let (s, v) = call_as(
        port(0),
        "POST",
        &format!("/api/rooms/{secret}/members"),
        &ann,
        Some(&serde_json::json!({"user": bob_id})),
    );
    assert_eq!((s, v["invited"].as_bool()), (202, Some(true)), "{v}");
    let (s, v) = call_as(port(1), "GET", "/api/invites", &bob, None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["invites"][0]["room"]["id"].as_u64(), Some(secret), "{v}");
    let (s, v) = call_as(
        port(1),
        "POST",
        "/api/rooms",
        &bob,
        Some(&serde_json::json!({"name": "ROOM-0"})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );

    // Bob follows rooms[1] from node 1; node 2 owns it.
    let mut bob_ws = ws_connect(port(0), &bob);
    ws_send(
        &mut bob_ws,
        serde_json::json!({"type": "join", "room": rooms[1]}),
    );
    ws_until(&mut bob_ws, |f| f["type"] == "joined");
    // Whether the owner, asked through node 3, counts bob online in a
    // room, within 20 s.
    let bob_online_in = |room: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut probe = ws_connect(port(2), &ann);
            ws_send(
                &mut probe,
                serde_json::json!({"type": "join", "room": room}),
            );
            let got = ws_until(&mut probe, |f| {
                f["type"] == "joined" || f["type"] == "error"
            });
            let online = &got.last().unwrap()["online"];
            if online
                .as_array()
                .is_some_and(|a| a.iter().any(|u| u.as_u64() == Some(bob_id)))
            {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    assert!(bob_online_in(rooms[1]), "bob online before the restart");

    // The owner of rooms[1] dies: its room fails fast on the other nodes
    // with room_unavailable and Retry-After; the others' rooms go on.
    nodes[1].kill();
    let room = rooms[1];
    for j in [0, 2] {
        let started = Instant::now();
        let raw = common::get_raw(port(j), &format!("/api/rooms/{room}/messages"), &bob, "");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(common::status(&raw), 503, "{raw}");
        assert!(raw.contains("room_unavailable"), "{raw}");
        assert_eq!(common::header(&raw, "retry-after"), Some("1"), "{raw}");
    }
    let (s, v) = post_message(port(2), &bob, rooms[0], "still here", "c-live");
    assert_eq!((s, v["seq"].as_u64()), (201, Some(7)), "{v}");
    // The dashboard's feed shows the nodes as node 1 saw them.
    let (s, feed) = call(port(0), "GET", "/api/stats", None, None);
    assert_eq!(s, 200, "{feed}");
    let states: Vec<(u64, &str)> = feed["cluster"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_u64().unwrap(), p["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        vec![(1, "this node"), (2, "down"), (3, "up")],
        "{feed}"
    );
    assert!(feed["cluster"]["forwarded"].as_u64().unwrap() > 0, "{feed}");
    // Lists leave its rooms out and say so.
    let raw = common::get_raw(port(0), "/api/rooms", &bob, "");
    assert_eq!(common::status(&raw), 200, "{raw}");
    assert_eq!(
        common::header(&raw, "x-rookery-partial"),
        Some("2"),
        "{raw}"
    );
    // So does search: the dead node's rooms are left out and named.
    let raw = common::get_raw(port(0), "/api/search?q=m3", &bob, "");
    assert_eq!(common::status(&raw), 200, "{raw}");
    assert_eq!(
        common::header(&raw, "x-rookery-partial"),
        Some("2"),
        "{raw}"
    );
    let body: serde_json::Value =
        serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let mut left = found_in(&body);
    left.sort_unstable();
    assert_eq!(left, vec![(rooms[0], 4), (rooms[2], 4)], "{raw}");
    // Sign-in does not need the dead node.
    let (s, v) = call(
        port(2),
        "POST",
        "/api/login",
        None,
        Some(&serde_json::json!({"name": "bob", "password": "pw-secret"})),
    );
    assert_eq!(s, 200, "{v}");

    // Back: everything it acknowledged is there, through any node.
    nodes[1].restart();
    let (s, v) = call_as(
        port(0),
        "GET",
        &format!("/api/rooms/{room}/messages?limit=10"),
        &bob,
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(seqs_and_bodies(&v).len(), 6, "{v}");
    // The restarted owner forgot who other nodes had present in its
    // rooms; node 1 tells it again: bob is online in rooms[1] again.
    assert!(
        bob_online_in(room),
        "bob is not online in room {room} after its owner restarted"
    );
    drop(bob_ws);

    // Logging out on one node ends the session on every node.
    let (s, _) = call(port(2), "POST", "/api/logout", Some(&ann2), None);
    assert_eq!(s, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, v) = call(port(0), "GET", "/api/me", Some(&ann2), None);
        if s == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "still signed in on node 1: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A search page whose messages take more than one NATS answer (20 of
    // 60 KB in a room of node 2's, asked through node 1): their node shows
    // them in several.
    let room = common::create_room(port(1), &ann, "bulky", false);
    assert_eq!(rookery_cluster::owner_of(room, &[1, 2, 3]), 2);
    let bulky = "bulky ".repeat(10_000);
    for k in 0..20 {
        let (s, v) = post_message(port(0), &ann, room, &bulky, &format!("b{k}"));
        assert_eq!(s, 201, "{v}");
    }
    let page = searched(port(0), &ann, "q=bulky&limit=20", 20);
    assert!(page.iter().all(|(r, _)| *r == room), "{page:?}");
}

/// Uploads `body` as `name` through `port`; the upload's JSON.
fn upload_to(port: u16, token: &str, name: &str, body: &[u8]) -> serde_json::Value {
    let mut raw = format!(
        "POST /api/uploads?name={name} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    let resp = exchange(port, &raw).unwrap();
    assert_eq!(common::status(&resp), 201, "{resp}");
    serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

/// `GET path` through `port`: status, the named headers, and the body's
/// bytes.
fn fetch(port: u16, token: &str, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
    let raw = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n{extra}\r\n"
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    std::io::Write::write_all(&mut s, raw.as_bytes()).unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut out).unwrap();
    let at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..at]).into_owned();
    (common::status(&head), head, out[at + 4..].to_vec())
}

/// Uploads reach every node: a message carries an upload received by
/// another node than its room's owner (to which it moves), any node
/// serves it whole, by range, and its thumbnail, also with the node that
/// received it dead; a delete is refused while a message holds it; the
/// message's delete frees it everywhere.
#[test]
fn uploads_are_carried_to_rooms_and_served_by_every_node() {
    let nats = Nats::start(3);
    let urls = nats.urls().join(",");
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, ports) = three_nodes(dir.path(), &urls);
    let ann = common::register(ports[0], "ann");
    // A room of node 2's; files received by node 1, and by node 3.
    let room = common::create_room(ports[1], &ann, "files", false);
    assert_eq!(rookery_cluster::owner_of(room, &[1, 2, 3]), 2);
    // Ten chunks of 128 KiB and a part of one.
    let big: Vec<u8> = (0..1_300_007u32).map(|i| (i * 7 % 251) as u8).collect();
    let big_up = upload_to(ports[0], &ann, "big.bin", &big);
    let image = {
        let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    };
    let image_up = upload_to(ports[2], &ann, "pic.png", &image);
    let (big_id, image_id) = (
        big_up["id"].as_str().unwrap(),
        image_up["id"].as_str().unwrap(),
    );
    // Posted through node 3 over HTTP (forwarded to node 2) and through
    // node 1 over a WebSocket (an operation for node 2).
    let (s, v) = call_as(
        ports[2],
        "POST",
        &format!("/api/rooms/{room}/messages"),
        &ann,
        Some(&serde_json::json!({"body": "", "files": [big_id]})),
    );
    assert_eq!(s, 201, "{v}");
    let seq = v["seq"].as_u64().unwrap();
    let mut ws = ws_connect(ports[0], &ann);
    ws_send(
        &mut ws,
        serde_json::json!({"type": "send", "room": room, "body": "look", "files": [image_id]}),
    );
    let acked = ws_until(&mut ws, |f| f["type"] == "ack" || f["type"] == "error");
    assert_eq!(acked.last().unwrap()["type"], "ack", "{acked:?}");
    // Every node serves both, whole and in part, with the same validator.
    let etag = format!("\"{}\"", big_up["sha256"].as_str().unwrap());
    for &port in &ports {
        let (s, head, body) = fetch(port, &ann, &format!("/api/uploads/{big_id}"), "");
        assert_eq!((s, body.len()), (200, big.len()), "{head}");
        assert!(body == big, "node {port}: the bytes differ");
        assert_eq!(common::header(&head, "etag"), Some(etag.as_str()), "{head}");
        let (s, head, body) = fetch(
            port,
            &ann,
            &format!("/api/uploads/{big_id}"),
            "Range: bytes=500000-600000\r\n",
        );
        assert_eq!(s, 206, "{head}");
        assert!(
            body == big[500_000..=600_000],
            "node {port}: the range differs"
        );
        let (s, head, body) = fetch(port, &ann, &format!("/api/uploads/{image_id}"), "");
        assert_eq!((s, body), (200, image.clone()), "{head}");
        assert_eq!(common::header(&head, "content-type"), Some("image/png"));
        let (s, head, thumb) = fetch(
            port,
            &ann,
            &format!("/api/uploads/{image_id}/thumbnail"),
            "",
        );
        assert_eq!(s, 200, "{head}");
        assert!(thumb.starts_with(b"\x89PNG"), "{head}");
    }
    // Removing: not while a message holds a copy anywhere (the original
    // is held by nothing on its node), through any node; one never sent
    // is removed through another node than its own.
    let path = format!("/api/uploads/{big_id}");
    for &port in &ports {
        let (s, v) = call_as(port, "DELETE", &path, &ann, None);
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (409, Some("conflict")),
            "{v}"
        );
    }
    let unsent = upload_to(ports[0], &ann, "oops.txt", b"oops");
    let path = format!("/api/uploads/{}", unsent["id"].as_str().unwrap());
    let (s, v) = call_as(ports[2], "DELETE", &path, &ann, None);
    assert_eq!((s, v["deleted"].as_bool()), (200, Some(true)), "{v}");
    for &port in &ports {
        assert_eq!(fetch(port, &ann, &path, "").0, 404);
        assert_eq!(call_as(port, "DELETE", &path, &ann, None).0, 404);
    }
    // A node's ask for a chunk, from a client: the file, as any GET.
    let (s, head, body) = fetch(
        ports[1],
        &ann,
        &format!("/api/uploads/{big_id}?chunk=0&len=10"),
        "",
    );
    assert_eq!((s, body.len()), (200, big.len()), "{head}");
    assert_eq!(common::header(&head, "x-rookery-upload"), None, "{head}");
    // Moved: the node that received each file let it go once the room's
    // owner kept its copy.
    let file_of =
        |node: &ClusterNode, id: &str| node.data.join(format!("uploads/{}/{id}", &id[..2]));
    assert!(
        !file_of(&nodes[0], big_id).exists(),
        "node 1 let the big file go"
    );
    assert!(
        !file_of(&nodes[2], image_id).exists(),
        "node 3 let the image go"
    );
    assert!(file_of(&nodes[1], big_id).exists() && file_of(&nodes[1], image_id).exists());
    // With node 1 dead, every other node still serves it.
    nodes[0].kill();
    let (s, _, body) = fetch(ports[2], &ann, &format!("/api/uploads/{big_id}"), "");
    assert!(s == 200 && body == big, "{s}");
    nodes[0].restart();
    // The message goes: its owner frees the upload, and no node has it.
    drop(ws);
    let mut ws = ws_connect(ports[2], &ann);
    ws_send(
        &mut ws,
        serde_json::json!({"type": "delete", "room": room, "seq": seq}),
    );
    let acked = ws_until(&mut ws, |f| f["type"] == "ack" || f["type"] == "error");
    assert_eq!(acked.last().unwrap()["type"], "ack", "{acked:?}");
    for &port in &ports {
        let (s, head, _) = fetch(port, &ann, &format!("/api/uploads/{big_id}"), "");
        assert_eq!(s, 404, "{head}");
    }
    assert!(!file_of(&nodes[1], big_id).exists(), "node 2 freed it");
    // An upload that is no one's anywhere is refused, as on one node.
    let (s, v) = call_as(
        ports[2],
        "POST",
        &format!("/api/rooms/{room}/messages"),
        &ann,
        Some(&serde_json::json!({"body": "x", "files": [format!("{:032x}", 12345)]})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
}

/// The (room, seq) of a search page's results, in its order.
fn found_in(page: &serde_json::Value) -> Vec<(u64, u64)> {
    page["results"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    let seq = r["message"]["seq"].as_u64().unwrap();
                    (r["room"].as_u64().unwrap(), seq)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The (room, seq) of `query`'s results through `port`, sorted, once they
/// are `n` (the indexes commit within a second); at most 10 s, polled
/// gently (searches share the directory's rate limit).
fn searched(port: u16, token: &str, query: &str, n: usize) -> Vec<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = call_as(port, "GET", &format!("/api/search?{query}"), token, None);
        let mut got = found_in(&v);
        got.sort_unstable();
        if s == 200 && got.len() == n {
            return got;
        }
        assert!(matches!(s, 200 | 503), "{s} {v}");
        assert!(Instant::now() < deadline, "{query}: {s} {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

type Ws = tungstenite::WebSocket<std::net::TcpStream>;

fn ws_connect(port: u16, token: &str) -> Ws {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let url = format!("ws://127.0.0.1:{port}/ws?token={token}");
    let mut ws = tungstenite::client(url, stream).unwrap().0;
    assert_eq!(ws_recv(&mut ws)["type"], "hello");
    ws
}

fn ws_send(ws: &mut Ws, v: serde_json::Value) {
    ws.send(tungstenite::Message::text(v.to_string())).unwrap();
}

fn ws_recv(ws: &mut Ws) -> serde_json::Value {
    loop {
        match ws.read().unwrap() {
            tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Frames until one satisfies `want` (all returned, that one last).
fn ws_until(
    ws: &mut Ws,
    mut want: impl FnMut(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "timed out; got {got:?}");
        let v = ws_recv(ws);
        let done = want(&v);
        got.push(v);
        if done {
            return got;
        }
    }
}

/// The seqs of `msg` frames of `room` among `frames`.
fn msg_seqs(frames: &[serde_json::Value], room: u64) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "msg" && f["room"].as_u64() == Some(room))
        .map(|f| f["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn websockets_on_every_node_follow_every_room_in_order() {
    let nats = Nats::start(3);
    let urls = nats.urls().join(",");
    let dir = tempfile::tempdir().unwrap();
    // Node 3 has no wires: its NATS traffic all goes through its link,
    // and it answers operations in the same queue group as the others'
    // wires would (docs/cluster.md).
    let nodes: Vec<ClusterNode> = (1..=3)
        .map(|id| {
            let extra: &[&str] = if id == 3 {
                &["--cluster-wires", "false"]
            } else {
                &[]
            };
            ClusterNode::start_with(dir.path(), &urls, id, extra)
        })
        .collect();
    let port = |i: usize| nodes[i % 3].port;
    let ann = common::register(port(0), "ann");
    let bob = common::register(port(1), "bob");
    let rooms: Vec<u64> = (0..3)
        .map(|i| common::create_room(port(i), &ann, &format!("r{i}"), false))
        .collect();
    // Bob follows every room from every node; ann posts from node 1.
    let mut bobs: Vec<Ws> = (0..3).map(|i| ws_connect(port(i), &bob)).collect();
    for ws in &mut bobs {
        for room in &rooms {
            ws_send(
                ws,
                serde_json::json!({"type": "join", "room": room, "ref": room}),
            );
            ws_until(ws, |f| {
                f["type"] == "joined" && f["room"].as_u64() == Some(*room)
            });
        }
    }
    let mut anns = ws_connect(port(0), &ann);
    let per_room = 20u64;
    for k in 0..per_room {
        for room in &rooms {
            let send = serde_json::json!({"type": "send", "room": room, "body": format!("m{k}"),
                "client_id": format!("c{room}-{k}"), "ref": k});
            ws_send(&mut anns, send);
        }
    }
    let mut acked = 0;
    while acked < per_room as usize * rooms.len() {
        let f = ws_recv(&mut anns);
        assert_ne!(f["type"], "error", "{f}");
        acked += usize::from(f["type"] == "ack");
    }
    let want: Vec<u64> = (1..=per_room).collect();
    for (i, ws) in bobs.iter_mut().enumerate() {
        let mut got: Vec<serde_json::Value> = Vec::new();
        while rooms
            .iter()
            .any(|r| msg_seqs(&got, *r).len() < per_room as usize)
        {
            got.extend(ws_until(ws, |f| f["type"] == "msg"));
        }
        for room in &rooms {
            assert_eq!(msg_seqs(&got, *room), want, "room {room} on node {}", i + 1);
        }
    }

    // Edits, typing and reads in a room another node owns.
    let far = rooms[2];
    ws_send(
        &mut anns,
        serde_json::json!({"type": "edit", "room": far, "seq": 3, "body": "edited"}),
    );
    ws_send(&mut anns, serde_json::json!({"type": "join", "room": far}));
    ws_until(&mut anns, |f| f["type"] == "joined" || f["type"] == "error");
    ws_send(
        &mut anns,
        serde_json::json!({"type": "typing", "room": far}),
    );
    let got = ws_until(&mut bobs[1], |f| f["type"] == "typing");
    assert!(
        got.iter()
            .any(|f| f["type"] == "edit" && f["seq"] == 3 && f["body"] == "edited"),
        "{got:?}"
    );
    ws_send(
        &mut bobs[0],
        serde_json::json!({"type": "read", "room": far, "seq": 5, "ref": "r"}),
    );
    let got = ws_until(&mut bobs[0], |f| {
        f["type"] == "receipt" || f["type"] == "error"
    });
    assert_eq!(got.last().unwrap()["seq"], 5, "{got:?}");
    ws_send(
        &mut bobs[0],
        serde_json::json!({"type": "history", "room": far, "limit": 3, "ref": "h"}),
    );
    let got = ws_until(&mut bobs[0], |f| {
        f["type"] == "history" || f["type"] == "error"
    });
    let page = got.last().unwrap();
    assert_eq!(
        (page["ref"].as_str(), page["room"].as_u64()),
        (Some("h"), Some(far)),
        "{page}"
    );
    assert_eq!(page["messages"].as_array().unwrap().len(), 3, "{page}");

    // A join with `since` on another node replays what was missed, once.
    let mut late = ws_connect(port(1), &bob);
    ws_send(
        &mut late,
        serde_json::json!({"type": "join", "room": rooms[0], "since": 15}),
    );
    let mut got = ws_until(&mut late, |f| f["type"] == "joined");
    let (s, _) = post_message(port(2), &ann, rooms[0], "after", "late-1");
    assert_eq!(s, 201);
    got.extend(ws_until(&mut late, |f| {
        f["type"] == "msg" && f["seq"] == per_room + 1
    }));
    assert_eq!(
        msg_seqs(&got, rooms[0]),
        (16..=per_room + 1).collect::<Vec<_>>(),
        "{got:?}"
    );
    // Leaving stops the room's events; the owner's own rooms go on.
    ws_send(
        &mut late,
        serde_json::json!({"type": "leave", "room": rooms[0]}),
    );
    ws_until(&mut late, |f| f["type"] == "left");

    // Presence across nodes: a user following a room from another node is
    // online in it (first join, last leave), seen from every node.
    let cy = common::register(port(2), "cy");
    let cy_id = call_as(port(2), "GET", "/api/me", &cy, None).1["user"]
        .as_u64()
        .unwrap();
    let mut cys = ws_connect(port(1), &cy);
    ws_send(
        &mut cys,
        serde_json::json!({"type": "join", "room": rooms[0]}),
    );
    let joined = ws_until(&mut cys, |f| f["type"] == "joined");
    let online = joined.last().unwrap()["online"].clone();
    assert!(
        online
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u.as_u64() == Some(cy_id)),
        "{online}"
    );
    let is = |state: &'static str| {
        move |f: &serde_json::Value| {
            f["type"] == "presence" && f["user"].as_u64() == Some(cy_id) && f["state"] == state
        }
    };
    ws_until(&mut bobs[0], is("online"));
    ws_until(&mut bobs[2], is("online"));
    let mut again = ws_connect(port(1), &cy);
    ws_send(
        &mut again,
        serde_json::json!({"type": "join", "room": rooms[0]}),
    );
    ws_until(&mut again, |f| f["type"] == "joined");
    drop(cys);
    drop(again);
    ws_until(&mut bobs[0], is("offline"));

    // Removed from a private room another node owns: the subscription ends
    // with `left` there too, and nothing of the room follows.
    let secret = common::create_room(port(2), &ann, "secret", true);
    let bob_id = call_as(port(0), "GET", "/api/me", &bob, None).1["user"]
        .as_u64()
        .unwrap();
    let members = format!("/api/rooms/{secret}/members");
    let (s, v) = call_as(
        port(1),
        "POST",
        &members,
        &ann,
        Some(&serde_json::json!({"user": bob_id})),
    );
    assert_eq!(s, 202, "{v}");
    // The invitation, made on node 3 (the owner) through node 2, reaches
    // bob's WebSockets on every node.
    for ws in &mut bobs {
        let got = ws_until(ws, |f| f["type"] == "invited" && f["room"] == secret);
        assert_eq!(got.last().unwrap()["by"], user_id_of(port(0), &ann));
    }
    let (s, v) = call_as(
        port(0),
        "POST",
        &format!("/api/invites/{secret}/accept"),
        &bob,
        None,
    );
    assert_eq!(s, 200, "{v}");
    ws_send(
        &mut bobs[0],
        serde_json::json!({"type": "join", "room": secret}),
    );
    ws_until(&mut bobs[0], |f| {
        f["type"] == "joined" && f["room"] == secret
    });
    let post = |room: u64, id: &str| {
        let (s, v) = post_message(port(1), &ann, room, id, id);
        assert_eq!(s, 201, "{v}");
    };
    post(secret, "before");
    ws_until(&mut bobs[0], |f| f["type"] == "msg" && f["room"] == secret);
    let (s, v) = call(
        port(1),
        "DELETE",
        &format!("{members}/{bob_id}"),
        Some(&ann),
        None,
    );
    assert_eq!(s, 200, "{v}");
    let got = ws_until(&mut bobs[0], |f| f["type"] == "left");
    assert_eq!(
        (
            got.last().unwrap()["room"].as_u64(),
            got.last().unwrap()["reason"].as_str()
        ),
        (Some(secret), Some("removed"))
    );
    post(secret, "after");
    post(rooms[1], "sentinel");
    let got = ws_until(&mut bobs[0], |f| {
        f["type"] == "msg" && f["body"] == "sentinel"
    });
    assert!(!got.iter().any(|f| f["room"] == secret), "{got:?}");
    // Nodes 1 and 2 talk to NATS through their shards' wires, node 3
    // through its link only; all of the above crossed between them.
    let connects = |i: usize| common::metric(nodes[i].port, "rookery_cluster_wire_connects_total");
    assert!(
        connects(0) >= 1.0 && connects(1) >= 1.0,
        "wires on nodes 1 and 2"
    );
    assert_eq!(connects(2), 0.0, "no wire on node 3");
}

#[test]
fn without_nats_a_node_serves_its_own_rooms_and_recovers_by_itself() {
    let mut nats = Nats::start(3);
    let urls = nats.urls().join(",");
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<ClusterNode> = (1..=3)
        .map(|id| ClusterNode::start(dir.path(), &urls, id))
        .collect();
    let port = |i: usize| nodes[i].port;
    let ann = common::register(port(0), "ann");
    let own = common::create_room(port(0), &ann, "own", false);
    let far = common::create_room(port(1), &ann, "far", false);
    let mut ws = ws_connect(port(0), &ann);
    for room in [own, far] {
        ws_send(&mut ws, serde_json::json!({"type": "join", "room": room}));
        ws_until(&mut ws, |f| f["type"] == "joined" && f["room"] == room);
    }
    let post = |at: usize, room: u64, id: &str| post_message(port(at), &ann, room, id, id);
    assert_eq!(post(0, far, "f1").0, 201);
    ws_until(&mut ws, |f| f["type"] == "msg" && f["room"] == far);

    for s in &mut nats.servers {
        s.kill();
    }
    // Node 1's own room, to its own clients: as before.
    assert_eq!(post(0, own, "o1").0, 201);
    ws_until(&mut ws, |f| f["type"] == "msg" && f["body"] == "o1");
    // Another node's room: refused at once, and said why.
    let started = Instant::now();
    let (s, v) = post(0, far, "f-refused");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("cluster_unavailable")),
        "{v}"
    );
    // Node 2 keeps serving its own room meanwhile; node 1 cannot hear it.
    assert_eq!(post(1, far, "f2").0, 201);

    for s in &mut nats.servers {
        s.restart();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = post(0, far, "f3");
        if s == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {s} {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The message node 1 did not hear while NATS was gone (the owner's
    // client may also have kept it and sent it on reconnecting) is there,
    // in order, once.
    let got = ws_until(&mut ws, |f| f["type"] == "msg" && f["body"] == "f3");
    let far_msgs: Vec<(u64, &str)> = got
        .iter()
        .filter(|f| f["type"] == "msg" && f["room"] == far)
        .map(|f| (f["seq"].as_u64().unwrap(), f["body"].as_str().unwrap()))
        .collect();
    assert_eq!(far_msgs, vec![(2, "f2"), (3, "f3")], "{got:?}");
    // Fills are counted per owner. (f2 may also have come through NATS
    // itself: the owner's client keeps what it published while
    // disconnected and sends it on reconnecting; then nothing was filled.)
    let filled = |peer: u32| {
        let name = format!("rookery_cluster_gap_fills_total{{peer=\"{peer}\"}}");
        common::metric(port(0), &name)
    };
    assert_eq!(filled(3), 0.0, "node 3 owns no room here");
    assert!(filled(2) <= 1.0, "one gap at most: f2");
}

/// A reader of a room another node owns that stops reading lags, as on
/// one node: it is not closed, and once it reads again it gets every
/// message, in order, once.
#[test]
fn a_slow_reader_of_a_remote_room_lags_and_catches_up() {
    let nats = Nats::start(1);
    let url = nats.urls()[0].clone();
    let node = |id: &str| {
        let mut args = cluster_flags(&url, id, "1,2");
        args.extend([
            "--conn-output-bytes-max",
            "65536",
            "--ws-stuck-timeout-ms",
            "30000",
        ]);
        let dir = tempfile::tempdir().unwrap();
        let (child, port) = common::spawn_in(&dir.path().join("data"), common::free_port(), &args);
        common::wait_ready(port);
        common::Server {
            child,
            port,
            _dir: dir,
            cluster: None,
        }
    };
    let (one, two) = (node("1"), node("2"));
    let ann = common::register(one.port, "ann");
    let room = common::create_room(one.port, &ann, "busy", false);
    let join = serde_json::json!({"type": "join", "room": room});
    let (mut reader, _) = common::RawWs::connect_small(two.port, &format!("/ws?token={ann}"), 4096);
    common::send_json(&mut reader, join);
    common::next_text_json(&mut reader); // hello
    assert_eq!(common::next_text_json(&mut reader)["type"], "joined");

    // Far more than the reader's bound and its socket hold, posted on the
    // owner while the reader reads nothing.
    // (The server's socket may hold its 4 MiB of send buffer first.)
    let n = 3000u64;
    let mut writer = ws_connect(one.port, &ann);
    let body = "x".repeat(4000);
    for i in 0..n {
        ws_send(
            &mut writer,
            serde_json::json!({"type": "send", "room": room, "body": body, "client_id": format!("m{i}")}),
        );
    }
    let acks = ws_until(&mut writer, |f| f["type"] == "ack" && f["seq"] == n);
    assert_eq!(acks.iter().filter(|f| f["type"] == "ack").count() as u64, n);
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::metric(two.port, "rookery_lagged_total") < 1.0 {
        assert!(Instant::now() < deadline, "the reader never lagged");
        std::thread::sleep(Duration::from_millis(20));
    }

    // It reads again: every message, in order, once; it was not closed.
    let mut seqs = Vec::new();
    while seqs.last() != Some(&n) {
        let f = reader.read_frame().expect("the lagging reader was closed");
        assert_ne!(f.opcode, 0x8, "closed: {:?}", f.payload);
        if f.opcode == 0x1 {
            let v: serde_json::Value = serde_json::from_slice(&f.payload).unwrap();
            if v["type"] == "msg" {
                seqs.push(v["seq"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    assert_eq!(
        common::metric(two.port, "rookery_slow_consumer_disconnects_total"),
        0.0
    );

    // History pages larger than NATS carries (1 MiB), asked through the
    // other node: cut short, their cursors going on, nothing lost.
    let quotes = common::create_room(one.port, &ann, "quotes", false);
    let body = "\"".repeat(4000); // 8 KB of JSON each
    let m = 150u64;
    for i in 0..m {
        ws_send(
            &mut writer,
            serde_json::json!({"type": "send", "room": quotes, "body": body, "client_id": format!("q{i}")}),
        );
    }
    ws_until(&mut writer, |f| f["type"] == "ack" && f["seq"] == m);
    let mut seen = Vec::new();
    let mut path = format!("/api/rooms/{quotes}/messages?limit={m}");
    loop {
        let (s, v) = call_as(two.port, "GET", &path, &ann, None);
        assert_eq!(s, 200, "{path}: {v}");
        let page = v["messages"].as_array().unwrap();
        assert!(
            !page.is_empty() && page.len() < m as usize,
            "{}",
            page.len()
        );
        seen.extend(page.iter().map(|x| x["seq"].as_u64().unwrap()));
        match v["next"]["before"].as_u64() {
            Some(before) => {
                path = format!("/api/rooms/{quotes}/messages?limit={m}&before={before}")
            }
            None => break,
        }
    }
    assert_eq!(seen, (1..=m).rev().collect::<Vec<_>>());
    // The same through a WebSocket on the other node.
    let mut ws = ws_connect(two.port, &ann);
    ws_send(
        &mut ws,
        serde_json::json!({"type": "history", "room": quotes, "limit": m, "ref": "h"}),
    );
    let got = ws_until(&mut ws, |f| f["type"] == "history" || f["type"] == "error");
    let page = got.last().unwrap();
    assert_eq!(page["type"], "history", "{page}");
    let len = page["messages"].as_array().unwrap().len() as u64;
    assert!(len > 0 && len < m, "{len}");
    assert_eq!(page["next"]["before"].as_u64(), Some(m - len + 1), "{page}");
}

/// The user id of the holder of `token`.
fn user_id_of(port: u16, token: &str) -> serde_json::Value {
    call_as(port, "GET", "/api/me", token, None).1["user"].clone()
}

/// A small deterministic generator (the seed is printed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Every message of a room through `port`, oldest first (history pages).
fn whole_history(port: u16, token: &str, room: u64) -> Vec<(u64, String)> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("/api/rooms/{room}/messages?after={after}&limit=100");
        let (s, v) = call_as(port, "GET", &path, token, None);
        assert_eq!(s, 200, "{v}");
        let page = seqs_and_bodies(&v);
        if page.is_empty() {
            return all;
        }
        after = page.last().unwrap().0;
        all.extend(page);
    }
}

#[test]
fn chaos_nodes_and_nats_servers_killed_nothing_acknowledged_is_lost() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("chaos seed {seed}");
    let mut rng = Lcg(seed);
    let mut nats = Nats::start(3);
    let urls = nats.urls().join(",");
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, ports) = three_nodes(dir.path(), &urls);
    let ann = common::register(ports[0], "ann");
    // Two rooms owned by each node.
    let rooms: Vec<(u64, usize)> = (0..6)
        .map(|i| {
            (
                common::create_room(ports[i % 3], &ann, &format!("c{i}"), false),
                i % 3,
            )
        })
        .collect();

    // Posts with a client id each, through a random live node, retried
    // (through any node) until acknowledged: each is acknowledged once,
    // and a retry gets the seq of the first.
    let mut acked: Vec<std::collections::BTreeMap<u64, String>> =
        vec![Default::default(); rooms.len()];
    let mut next_id = 0u64;
    let mut post_until_acked = |rng: &mut Lcg, down: Option<usize>, r: usize| {
        let id = format!("m{next_id}");
        next_id += 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let via = loop {
                let n = rng.below(3);
                if Some(n) != down {
                    break n;
                }
            };
            let answer =
                std::panic::catch_unwind(|| post_message(ports[via], &ann, rooms[r].0, &id, &id));
            if let Ok((200 | 201, v)) = answer {
                let seq = v["seq"].as_u64().unwrap();
                if let Some(prev) = acked[r].insert(seq, id.clone()) {
                    assert_eq!(prev, id, "seq {seq} acknowledged twice");
                }
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    let mut to_unavailable = Vec::new();
    let mut to_service = Vec::new();
    let events: Vec<bool> = {
        // 10 node kills and 5 NATS kills, shuffled.
        let mut e: Vec<bool> = [vec![true; 10], vec![false; 5]].concat();
        for i in (1..e.len()).rev() {
            e.swap(i, rng.below(i + 1));
        }
        e
    };
    let started = Instant::now();
    for node_kill in events {
        for _ in 0..10 {
            let r = rng.below(rooms.len());
            assert!(
                post_until_acked(&mut rng, None, r),
                "no ack in room {}",
                rooms[r].0
            );
        }
        if node_kill {
            let victim = rng.below(3);
            nodes[victim].kill();
            let killed = Instant::now();
            // A room of the dead node, asked through another node.
            let (room, _) = *rooms.iter().find(|(_, owner)| *owner == victim).unwrap();
            let other = ports[(victim + 1) % 3];
            loop {
                let raw = common::get_raw(
                    other,
                    &format!("/api/rooms/{room}/messages?limit=1"),
                    &ann,
                    "",
                );
                if raw.contains("room_unavailable") {
                    to_unavailable.push(killed.elapsed());
                    break;
                }
                assert!(
                    killed.elapsed() < Duration::from_secs(5),
                    "never unavailable: {raw}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            // Rooms of the live nodes go on meanwhile.
            for _ in 0..5 {
                let r = loop {
                    let r = rng.below(rooms.len());
                    if rooms[r].1 != victim {
                        break r;
                    }
                };
                assert!(post_until_acked(&mut rng, Some(victim), r));
            }
            let back = Instant::now();
            nodes[victim].restart();
            loop {
                let (s, _) = call(
                    other,
                    "GET",
                    &format!("/api/rooms/{room}/messages?limit=1"),
                    Some(&ann),
                    None,
                );
                if s == 200 {
                    to_service.push(back.elapsed());
                    break;
                }
                assert!(
                    back.elapsed() < Duration::from_secs(30),
                    "room {room} never came back"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            let victim = rng.below(3);
            nats.servers[victim].kill();
            for _ in 0..5 {
                let r = rng.below(rooms.len());
                assert!(post_until_acked(&mut rng, None, r));
            }
            nats.servers[victim].restart();
        }
    }
    let took = started.elapsed();

    // Every room, seen through every node: every acknowledged message
    // once, in order, seqs dense from 1.
    let total: usize = acked.iter().map(|a| a.len()).sum();
    for (r, (room, _)) in rooms.iter().enumerate() {
        let views: Vec<Vec<(u64, String)>> = ports
            .iter()
            .map(|p| whole_history(*p, &ann, *room))
            .collect();
        assert!(
            views.windows(2).all(|w| w[0] == w[1]),
            "room {room} differs between nodes"
        );
        let seen = &views[0];
        let seqs: Vec<u64> = seen.iter().map(|m| m.0).collect();
        assert_eq!(
            seqs,
            (1..=seen.len() as u64).collect::<Vec<_>>(),
            "room {room}: seqs not dense"
        );
        for (seq, id) in &acked[r] {
            let found: Vec<&(u64, String)> = seen.iter().filter(|m| &m.1 == id).collect();
            assert_eq!(
                found,
                vec![&(*seq, id.clone())],
                "room {room}: {id} (seq {seq})"
            );
        }
    }
    let ms = |d: &[Duration]| -> Vec<u128> { d.iter().map(Duration::as_millis).collect() };
    eprintln!(
        "chaos: {total} messages acknowledged in {:?}; death to room_unavailable (ms): {:?}; return to service (ms): {:?}",
        took,
        ms(&to_unavailable),
        ms(&to_service)
    );
    assert!(
        to_unavailable.iter().all(|d| *d < Duration::from_secs(2)),
        "{to_unavailable:?}"
    );
}

/// nginx in front of the nodes, plain round-robin (no stickiness), passing
/// WebSocket upgrades, run from a directory of its own; killed when
/// dropped.
struct Nginx {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstreams: &[u16]) -> Nginx {
        let binary = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file())
            .expect("nginx is not installed: tools/test.sh installs Debian's nginx package");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let port = common::free_port();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("server 127.0.0.1:{p};\n"))
            .collect();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             upstream rookery {{\n{servers}}}\n\
             map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
             server {{\n listen 127.0.0.1:{port};\n location / {{\n proxy_pass http://rookery;\n\
             proxy_http_version 1.1;\n proxy_set_header Upgrade $http_upgrade;\n\
             proxy_set_header Connection $connection_upgrade;\n proxy_set_header Host $host;\n\
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n proxy_read_timeout 60s;\n }}\n }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = std::process::Command::new(binary)
            .args([
                "-p",
                &d.to_string(),
                "-c",
                path.to_str().unwrap(),
                "-e",
                &format!("{d}/error.log"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn behind_nginx_round_robin_reconnects_land_on_other_nodes_and_lose_nothing() {
    let nats = Nats::start(3);
    let urls = nats.urls().join(",");
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<ClusterNode> = (1..=3)
        .map(|id| ClusterNode::start(dir.path(), &urls, id))
        .collect();
    let nginx = Nginx::start(&nodes.iter().map(|n| n.port).collect::<Vec<_>>());
    let front = nginx.port;
    // Everything through nginx: accounts, rooms (made on whichever node
    // nginx picks, so owned by several), messages.
    let ann = common::register(front, "ann");
    let bob = common::register(front, "bob");
    let rooms: Vec<u64> = (0..3)
        .map(|i| common::create_room(front, &ann, &format!("n{i}"), false))
        .collect();
    let owners: std::collections::BTreeSet<u32> = rooms
        .iter()
        .map(|r| rookery_cluster::owner_of(*r, &[1, 2, 3]))
        .collect();
    assert!(owners.len() >= 2, "rooms on one node only: {rooms:?}");
    let mut last = vec![0u64; rooms.len()];
    let mut seen: Vec<Vec<u64>> = vec![Vec::new(); rooms.len()];
    let mut landed = std::collections::BTreeSet::new();
    let mut sent = 0u64;
    let post_each = |sent: &mut u64| {
        for room in &rooms {
            *sent += 1;
            let (body, id) = (format!("b{sent}"), format!("c{sent}"));
            let (s, v) = post_message(front, &ann, *room, &body, &id);
            assert_eq!(s, 201, "{v}");
        }
    };
    let per_room = |sent: u64| sent / rooms.len() as u64;
    for round in 0..6 {
        let stream = std::net::TcpStream::connect(("127.0.0.1", front)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let url = format!("ws://127.0.0.1:{front}/ws?token={bob}");
        let mut ws = tungstenite::client(url, stream).unwrap().0;
        let hello = ws_recv(&mut ws);
        landed.insert(hello["node"].as_u64().expect("hello names the node"));
        let take = |f: &serde_json::Value, seen: &mut Vec<Vec<u64>>, last: &mut Vec<u64>| {
            if f["type"] == "msg" {
                let i = rooms.iter().position(|r| f["room"] == *r).unwrap();
                let seq = f["seq"].as_u64().unwrap();
                seen[i].push(seq);
                last[i] = seq;
            }
        };
        for (i, room) in rooms.iter().enumerate() {
            let since = if round == 0 {
                serde_json::Value::Null
            } else {
                last[i].into()
            };
            ws_send(
                &mut ws,
                serde_json::json!({"type": "join", "room": room, "since": since}),
            );
            // The replay of a room joined before may still be arriving.
            for f in ws_until(&mut ws, |f| f["type"] == "joined" && f["room"] == *room) {
                take(&f, &mut seen, &mut last);
            }
        }
        // One message per room while connected (and, below, one while it
        // is away, which the next join's `since` brings back).
        post_each(&mut sent);
        while (0..rooms.len()).any(|i| last[i] < per_room(sent)) {
            let f = ws_recv(&mut ws);
            take(&f, &mut seen, &mut last);
        }
        drop(ws);
        if round < 5 {
            post_each(&mut sent);
        }
    }
    for (i, room) in rooms.iter().enumerate() {
        assert_eq!(seen[i], (1..=11).collect::<Vec<_>>(), "room {room}");
    }
    assert!(
        landed.len() >= 2,
        "every reconnect landed on one node: {landed:?}"
    );
}
