//! A shard's wire (`rookery_cluster::wire`) against a real three-server
//! NATS cluster: messages across servers in order, requests answered by a
//! queue group, no responder, a late answer, a server killed under the
//! wire, and what it refuses.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rookery_cluster::testing::Nats;
use rookery_cluster::wire::{Wire, WireCounters};
use rookery_cluster::Error;

/// Starts `f` on a glommio executor of its own thread.
fn spawn_executor<T: Send + 'static, F>(
    f: impl FnOnce() -> F + Send + 'static,
) -> std::thread::JoinHandle<T>
where
    F: std::future::Future<Output = T> + 'static,
{
    std::thread::spawn(move || {
        glommio::LocalExecutorBuilder::default()
            .make()
            .expect("an executor")
            .run(f())
    })
}

/// Runs `f` on a glommio executor of its own thread, to its end.
fn on_executor<T: Send + 'static, F>(f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T> + 'static,
{
    spawn_executor(f).join().expect("the executor's thread")
}

async fn connected(wire: &Wire) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wire.connected() {
        assert!(Instant::now() < deadline, "the wire did not connect");
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// A request, retried while nobody answers yet: a subscription reaches the
/// other servers of the cluster a moment after it is made.
async fn ask(wire: &Wire, subject: &str, body: &[u8]) -> bytes::Bytes {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match wire.request(subject, body, Duration::from_secs(1)).await {
            Ok(answer) => return answer,
            Err(_) if Instant::now() < deadline => {
                glommio::timer::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("no answer on {subject}: {e}"),
        }
    }
}

#[test]
fn messages_cross_servers_in_order_and_requests_are_answered_once() {
    let nats = Nats::start(3);
    let urls = nats.urls();
    let counters = Arc::new(WireCounters::default());
    let c = counters.clone();
    on_executor(move || async move {
        // Three wires, each on another server of the cluster.
        let wires: Vec<Wire> = (0..3)
            .map(|i| Wire::start(&urls, i, format!("w{i}"), 1 << 20, c.clone()).unwrap())
            .collect();
        for w in &wires {
            connected(w).await;
        }
        // Two answerers in one queue group: each request is answered
        // once, by one of them.
        for (i, w) in wires[1..].iter().enumerate() {
            let sub = w.subscribe("svc.echo", Some("q")).unwrap();
            let w = w.clone();
            glommio::spawn_local(async move {
                while let Ok(m) = sub.messages.recv_async().await {
                    let mut body = m.payload.to_vec();
                    body.push(b'0' + i as u8);
                    w.publish(&m.reply.unwrap(), &body);
                }
            })
            .detach();
        }
        let first = ask(&wires[0], "svc.echo", b"hi").await;
        assert!(first == "hi0" || first == "hi1", "{first:?}");
        for n in 0..200u32 {
            let body = n.to_string();
            let answer = wires[0]
                .request("svc.echo", body.as_bytes(), Duration::from_secs(2))
                .await
                .unwrap();
            assert_eq!(&answer[..answer.len() - 1], body.as_bytes());
        }
        // Nobody listens: at once.
        let t = Instant::now();
        let none = wires[0]
            .request("svc.nobody", b"x", Duration::from_secs(5))
            .await;
        assert!(matches!(none, Err(Error::NoResponders(_))), "{none:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
        // A listener that never answers: the deadline.
        let _mute = wires[2].subscribe("svc.mute", None).unwrap();
        let late = async {
            loop {
                match wires[0]
                    .request("svc.mute", b"x", Duration::from_millis(300))
                    .await
                {
                    Err(Error::NoResponders(_)) => {
                        glommio::timer::sleep(Duration::from_millis(20)).await
                    }
                    other => return other,
                }
            }
        };
        assert!(matches!(late.await, Err(Error::TimedOut(_))));
        // 2,000 messages from one wire reach a subscriber on another
        // server, in order.
        let sub = wires[2].subscribe("room.1", None).unwrap();
        // The subscription has reached the publisher's server once a
        // message published after it arrives.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            wires[0].publish("room.1", b"probe");
            if let Ok(Ok(_)) = glommio::timer::timeout(Duration::from_millis(50), async {
                Ok(sub.messages.recv_async().await)
            })
            .await
            {
                break;
            }
            assert!(Instant::now() < deadline, "the subscription never arrived");
        }
        for n in 0..2000u32 {
            assert!(wires[0].publish("room.1", &n.to_le_bytes()));
        }
        for n in 0..2000u32 {
            let mut m = sub.messages.recv_async().await.unwrap();
            while &m.payload[..] == b"probe" {
                m = sub.messages.recv_async().await.unwrap();
            }
            assert_eq!(m.subject, "room.1");
            assert_eq!(&m.payload[..], &n.to_le_bytes());
        }
        // An unsubscribed subject brings nothing more.
        drop(sub);
        for w in &wires {
            w.stop();
        }
    });
    assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);
    assert_eq!(counters.connects.load(Ordering::Relaxed), 3);
}

#[test]
fn a_killed_server_is_replaced_and_subscriptions_come_back() {
    let mut nats = Nats::start(3);
    let urls = nats.urls();
    let counters = Arc::new(WireCounters::default());
    // The subscriber's wire starts on server 0, which is killed.
    let (tx, rx) = flume::bounded::<()>(1);
    let (killed_tx, killed) = flume::bounded::<()>(1);
    let (c, c2) = (counters.clone(), counters.clone());
    let (u, u2) = (urls.clone(), urls.clone());
    let subscriber = spawn_executor(move || async move {
        let w = Wire::start(&u, 0, "sub".into(), 1 << 20, c).unwrap();
        connected(&w).await;
        let sub = w.subscribe("after", None).unwrap();
        tx.send_async(()).await.unwrap();
        killed.recv_async().await.unwrap();
        // Back on another server: a second connection.
        let deadline = Instant::now() + Duration::from_secs(10);
        while c2.connects.load(Ordering::Relaxed) < 2 {
            assert!(Instant::now() < deadline, "no new connection");
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        connected(&w).await;
        let m = sub.messages.recv_async().await.unwrap();
        assert_eq!(&m.payload[..], b"again");
        w.stop();
    });
    rx.recv().unwrap();
    nats.servers[0].kill();
    killed_tx.send(()).unwrap();
    // The publisher, on server 2, publishes until the subscriber (back on
    // server 1 or 2) gets one.
    let publisher = spawn_executor(move || async move {
        let w = Wire::start(&u2, 2, "pub".into(), 1 << 20, Default::default()).unwrap();
        connected(&w).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            w.publish("after", b"again");
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    });
    subscriber
        .join()
        .expect("the subscriber got a message after the kill");
    drop(publisher);
    assert_eq!(counters.connects.load(Ordering::Relaxed), 2);
}

#[test]
fn what_the_server_would_refuse_is_not_sent() {
    let nats = Nats::start(1);
    let urls = nats.urls();
    let counters = Arc::new(WireCounters::default());
    let c = counters.clone();
    on_executor(move || async move {
        // Not connected (nothing listens where it connects): publishes
        // are dropped, requests fail at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let nowhere = Wire::start(
            &[format!("nats://127.0.0.1:{port}")],
            0,
            "x".into(),
            1 << 20,
            c.clone(),
        )
        .unwrap();
        glommio::timer::sleep(Duration::from_millis(200)).await;
        assert!(!nowhere.connected() && !nowhere.publish("s", b"lost"));
        let t = Instant::now();
        let failed = nowhere.request("s", b"", Duration::from_secs(5)).await;
        assert!(matches!(failed, Err(Error::Closed)) && t.elapsed() < Duration::from_secs(1));
        nowhere.stop();
        let w = Wire::start(&urls, 0, "w".into(), 64 << 10, c).unwrap();
        assert!(!w.publish("s", b"early"));
        connected(&w).await;
        assert!(w.subscribe("has space", None).is_err());
        assert!(w.subscribe("ok", Some("bad queue")).is_err());
        assert!(!w.publish("has space", b"x"));
        // Over the server's max_payload (1 MiB by default).
        assert!(!w.publish("s", &vec![0u8; (1 << 20) + 1]));
        // Over the output bound (64 KiB here), written faster than the
        // socket takes: some are dropped, none is split.
        let sub = w.subscribe("big", None).unwrap();
        glommio::timer::sleep(Duration::from_millis(100)).await;
        let sent = (0..20)
            .filter(|_| w.publish("big", &[7u8; 30 << 10]))
            .count();
        assert!((2..20).contains(&sent), "{sent} of 20 fit");
        for _ in 0..sent {
            let m = sub.messages.recv_async().await.unwrap();
            assert_eq!(m.payload.len(), 30 << 10);
        }
        // Still connected and serving.
        assert!(w.connected() && w.publish("s", b"fine"));
        w.stop();
    });
    assert!(counters.unsent.load(Ordering::Relaxed) >= 5);
}
