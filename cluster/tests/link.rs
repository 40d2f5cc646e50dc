//! The link against a real three-server NATS cluster with JetStream.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rookery_cluster::testing::Nats;
use rookery_cluster::{ClusterConfig, Error, Link, LinkState};

fn config(nats: Vec<String>, node_id: u32, nodes: Vec<u32>) -> ClusterConfig {
    ClusterConfig {
        name: "test".into(),
        node_id,
        nodes,
        nats,
        kv_replicas: 3,
        connect_timeout_ms: 20_000,
    }
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    futures_lite::future::block_on(f)
}

/// Answers every request on `subject` with its payload reversed, from a
/// thread of its own (which holds a clone of the link and is left running
/// when the test ends).
fn serve_reversed(link: &Link, subject: &str) -> std::thread::JoinHandle<()> {
    let requests = block(link.subscribe(subject)).unwrap();
    let link = link.clone();
    std::thread::spawn(move || {
        while let Ok(m) = requests.recv() {
            let mut body = m.payload.to_vec();
            body.reverse();
            if let Some(reply) = m.reply {
                block(link.publish(&reply, Bytes::from(body))).unwrap();
            }
        }
    })
}

/// A request, retried while nobody answers yet: a subscription made on one
/// connection reaches the NATS servers a moment later.
fn ask(link: &Link, subject: &str, body: &'static [u8], within: Duration) -> Bytes {
    let deadline = Instant::now() + within;
    loop {
        match block(link.request(subject, Bytes::from_static(body), Duration::from_secs(1))) {
            Ok(answer) => return answer,
            // No responder yet, or a NATS server just died and the
            // client is reconnecting.
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("no answer on {subject} within {within:?}: {e}"),
        }
    }
}

#[test]
fn requests_are_answered_across_links_and_no_responder_fails_fast() {
    let nats = Nats::start(3);
    let urls = nats.urls();
    let a = Link::connect(&config(vec![urls[0].clone()], 1, vec![1, 2])).unwrap();
    let b = Link::connect(&config(vec![urls[2].clone()], 2, vec![1, 2])).unwrap();
    assert_eq!(a.state(), LinkState::Connected);
    let _responder = serve_reversed(&a, "test.reverse");
    // Interest crosses the NATS cluster's routes asynchronously.
    let answer = ask(&b, "test.reverse", b"abc", Duration::from_secs(10));
    assert_eq!(&answer[..], b"cba");
    let started = Instant::now();
    match block(b.request("test.nobody", Bytes::new(), Duration::from_secs(5))) {
        Err(Error::NoResponders(s)) => assert_eq!(s, "test.nobody"),
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop((a, b));
}

#[test]
fn publishes_arrive_in_order() {
    let nats = Nats::start(1);
    let cfg = config(nats.urls(), 1, vec![1]);
    let (a, b) = (Link::connect(&cfg).unwrap(), Link::connect(&cfg).unwrap());
    let rx = block(b.subscribe("test.order")).unwrap();
    // Make sure the subscription is in place: b's subscriptions are sent
    // in order, so once its later one answers, the first is registered.
    let _responder = serve_reversed(&b, "test.ping");
    ask(&a, "test.ping", b"x", Duration::from_secs(10));
    for i in 0..2_000u32 {
        block(a.publish("test.order", Bytes::from(i.to_le_bytes().to_vec()))).unwrap();
    }
    for i in 0..2_000u32 {
        let m = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(m.subject, "test.order");
        assert_eq!(u32::from_le_bytes(m.payload[..4].try_into().unwrap()), i);
    }
    assert_eq!(b.dropped(), 0);
}

#[test]
fn the_node_list_is_recorded_once_and_a_different_one_is_refused() {
    let nats = Nats::start(3);
    let urls = nats.urls();
    let first = config(urls.clone(), 1, vec![1, 2, 3]);
    let link = Link::connect(&first).unwrap();
    block(link.claim_nodes(&first)).unwrap();
    // The same set, in another order, through another server: accepted.
    let same = config(vec![urls[1].clone()], 3, vec![3, 2, 1]);
    let other = Link::connect(&same).unwrap();
    block(other.claim_nodes(&same)).unwrap();
    // A different set: refused, naming both lists.
    let changed = config(vec![urls[2].clone()], 1, vec![1, 2]);
    match block(other.claim_nodes(&changed)) {
        Err(e @ Error::NodesChanged { .. }) => {
            let m = e.to_string();
            assert!(m.contains("[1,2,3]") && m.contains("[1,2]"), "{m}");
        }
        r => panic!("{r:?}"),
    }
    // Another cluster name is another cluster.
    let apart = ClusterConfig {
        name: "other".into(),
        ..changed
    };
    block(other.claim_nodes(&apart)).unwrap();
}

#[test]
fn connecting_to_nothing_fails_within_the_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = ClusterConfig {
        connect_timeout_ms: 1_000,
        ..config(vec![format!("nats://127.0.0.1:{port}")], 1, vec![1])
    };
    let started = Instant::now();
    match Link::connect(&cfg) {
        Err(Error::Connect { servers, .. }) => assert!(servers.contains(&port.to_string())),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_dead_nats_server_is_survived() {
    let mut nats = Nats::start(3);
    let urls = nats.urls();
    // Both links know every server; the one they use is killed.
    let a = Link::connect(&config(urls.clone(), 1, vec![1, 2])).unwrap();
    let b = Link::connect(&config(urls.clone(), 2, vec![1, 2])).unwrap();
    let _responder = serve_reversed(&a, "test.reverse");
    let reverse = || ask(&b, "test.reverse", b"ab", Duration::from_secs(15));
    assert_eq!(&reverse()[..], b"ba");
    for victim in 0..3 {
        nats.servers[victim].kill();
        assert_eq!(&reverse()[..], b"ba", "after killing server {victim}");
        nats.servers[victim].restart();
    }
}

#[test]
fn key_value_writes_are_conditional_and_watches_see_every_change_in_order() {
    let nats = Nats::start(3);
    let urls = nats.urls();
    let a = Link::connect(&config(vec![urls[0].clone()], 1, vec![1, 2])).unwrap();
    let b = Link::connect(&config(vec![urls[2].clone()], 2, vec![1, 2])).unwrap();
    let spec = rookery_cluster::BucketSpec {
        name: "test-kv".into(),
        replicas: 3,
        max_age: None,
    };
    let within = Duration::from_secs(20);
    block(a.open_bucket(spec.clone(), within)).unwrap();
    block(b.open_bucket(spec, within)).unwrap();
    let bucket = "test-kv";
    let v = |s: &'static str| Bytes::from_static(s.as_bytes());

    // Written before the watch starts: seen as history.
    let r1 = block(a.kv_create(bucket, "user.1", v("alice"))).unwrap();
    match block(b.kv_create(bucket, "user.1", v("mallory"))) {
        Err(Error::KeyExists(k)) => assert_eq!(k, "user.1"),
        other => panic!("a second create must fail with KeyExists, got {other:?}"),
    }
    assert_eq!(
        block(b.kv_get(bucket, "user.1")).unwrap(),
        Some((v("alice"), r1))
    );
    assert_eq!(block(b.kv_get(bucket, "user.2")).unwrap(), None);
    let changes = block(b.watch(bucket)).unwrap();

    // An update needs the revision it read: the second of two fails.
    let r2 = block(a.kv_update(bucket, "user.1", v("alice2"), r1)).unwrap();
    assert!(r2 > r1);
    match block(b.kv_update(bucket, "user.1", v("stale"), r1)) {
        Err(Error::Conflict(k)) => assert_eq!(k, "user.1"),
        other => panic!("a stale update must fail with Conflict, got {other:?}"),
    }
    let r3 = block(b.kv_put(bucket, "session.x", v("1"))).unwrap();
    block(a.kv_delete(bucket, "session.x")).unwrap();
    assert_eq!(block(a.kv_get(bucket, "session.x")).unwrap(), None);

    // The watch's first view of a key is its value when the watch's
    // consumer started (which may be after `watch` returned): alice at r1,
    // or already alice2 at r2. Everything after comes one by one.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen
        .last()
        .is_none_or(|c: &rookery_cluster::KvChange| c.value.is_some())
        && Instant::now() < deadline
    {
        if let Ok(c) = changes.recv_timeout(Duration::from_millis(100)) {
            seen.push(c);
        }
    }
    let got: Vec<_> = seen
        .iter()
        .map(|c| (c.key.as_str(), c.value.clone(), c.revision))
        .collect();
    let users: Vec<_> = got.iter().filter(|c| c.0 == "user.1").cloned().collect();
    assert!(
        users
            == [
                ("user.1", Some(v("alice")), r1),
                ("user.1", Some(v("alice2")), r2)
            ]
            || users == [("user.1", Some(v("alice2")), r2)],
        "{got:?}"
    );
    // The same for session.x: its put, then its delete; or, if the
    // consumer started after the delete, only the delete (a bucket keeps
    // one revision per key).
    let sessions: Vec<_> = got
        .iter()
        .filter(|c| c.0 == "session.x")
        .map(|c| (c.1.clone(), c.2))
        .collect();
    let deleted = sessions.last().filter(|(v, r)| v.is_none() && *r > r3);
    assert!(deleted.is_some(), "{got:?}");
    assert!(
        sessions.len() == 1 || sessions[..] == [(Some(v("1")), r3), deleted.unwrap().clone()],
        "{got:?}"
    );
    assert!(got.windows(2).all(|w| w[0].2 < w[1].2), "in revision order");
}

/// Subscriptions the NATS server holds (its `/subsz`).
fn subscriptions(monitor: u16) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", monitor)).unwrap();
    s.write_all(b"GET /subsz HTTP/1.0\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["num_subscriptions"].as_u64().unwrap()
}

#[test]
fn dropping_a_subscription_ends_it_at_once() {
    let nats = Nats::start(1);
    let monitor = nats.servers[0].monitor_port;
    let link = Link::connect(&config(nats.urls(), 1, vec![1])).unwrap();
    let before = subscriptions(monitor);
    let sub = block(link.subscribe("quiet.room")).unwrap();
    block(link.publish("quiet.room", Bytes::from_static(b"x"))).unwrap();
    let got = sub.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(&got.payload[..], b"x");
    assert_eq!(subscriptions(monitor), before + 1);
    drop(sub);
    // Gone with no message on the subject needed to notice.
    let deadline = Instant::now() + Duration::from_secs(5);
    while subscriptions(monitor) != before {
        assert!(Instant::now() < deadline, "still subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
}
