//! The server's life cycle against the real binary: graceful shutdown
//! (WebSockets closed with 1001, in-flight work finished, data kept), the
//! second signal, and a SIGKILL under load after which every acknowledged
//! message is found exactly once, in order.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;

fn signal(child: &Child, sig: i32) {
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// Waits for the process to exit; its exit code and how long it took.
fn exit_within(child: &mut Child, limit: Duration) -> (Option<i32>, Duration) {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return (s.code(), t.elapsed());
        }
        assert!(t.elapsed() < limit, "no exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_closes_websockets_with_1001_and_keeps_every_acked_message() {
    let mut server = start(&["--durability", "sync"]);
    let p = server.port;
    let token = register(p, "stayer");
    let room = create_room(p, &token, "lasting", false);
    let (mut ws, _) = RawWs::connect(p, &format!("/ws?token={token}"), "");
    next_text_json(&mut ws);
    send_json(&mut ws, json!({"type": "join", "room": room}));
    assert_eq!(next_text_json(&mut ws)["type"], "joined");
    for i in 0..20 {
        send_json(
            &mut ws,
            json!({"type": "send", "room": room, "body": format!("m{i}"), "client_id": format!("c{i}")}),
        );
    }
    let mut acked = 0;
    while acked < 20 {
        if next_text_json(&mut ws)["type"] == "ack" {
            acked += 1;
        }
    }
    // An idle keep-alive HTTP connection is closed too.
    let mut idle = connect(p);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(status(&read_response(&mut idle)), 200);

    signal(&server.child, libc::SIGTERM);
    let close = loop {
        let f = ws.read_frame().expect("a close frame before the end");
        if f.opcode == CLOSE {
            break u16::from_be_bytes([f.payload[0], f.payload[1]]);
        }
    };
    assert_eq!(close, 1001);
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert!(rest.is_empty(), "closed without another response");
    let (code, _) = exit_within(&mut server.child, Duration::from_secs(15));
    assert_eq!(code, Some(0));

    let data = server._dir.path().join("data");
    let (child, port) = spawn_in(&data, free_port(), &["--durability", "sync"]);
    let mut again = Server {
        child,
        port,
        _dir: tempfile::tempdir().unwrap(),
        cluster: None,
    };
    wait_ready(port);
    let bodies: Vec<String> = all_messages(port, &token, room)
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(bodies, (0..20).map(|i| format!("m{i}")).collect::<Vec<_>>());
    signal(&again.child, libc::SIGINT);
    assert_eq!(
        exit_within(&mut again.child, Duration::from_secs(15)).0,
        Some(0)
    );
}

/// A server with `--shutdown-timeout-ms` set, a request in progress on it
/// (held open by the returned socket), and SIGTERM sent.
fn draining(timeout_ms: &str) -> (Server, std::net::TcpStream) {
    let server = start(&["--shutdown-timeout-ms", timeout_ms]);
    let mut partial = connect(server.port);
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost:")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    signal(&server.child, libc::SIGTERM);
    (server, partial)
}

#[test]
fn shutdown_is_bounded_and_a_second_signal_exits_at_once() {
    // A request in progress holds the drain, but only for half the
    // shutdown timeout; storage still stops cleanly: exit 0.
    let (mut server, _partial) = draining("1500");
    let (code, took) = exit_within(&mut server.child, Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // A second signal while draining exits at once (130).
    let (mut server, _partial) = draining("60000");
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.child.try_wait().unwrap().is_none(), "still draining");
    signal(&server.child, libc::SIGTERM);
    let (code, took) = exit_within(&mut server.child, Duration::from_secs(5));
    assert_eq!(code, Some(130));
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// Clients send under load over several connections and rooms; the server
/// is killed with SIGKILL mid-stream and restarted on the same data dir.
/// Every acknowledged message is there exactly once, in each client's send
/// order, with dense seqs; unacknowledged ones may or may not be.
#[test]
fn sigkill_under_load_loses_no_acknowledged_message() {
    let mut server = start(&["--durability", "sync"]);
    let p = server.port;
    let token = register(p, "crash");
    let rooms: Vec<u64> = (0..2)
        .map(|i| create_room(p, &token, &format!("crash{i}"), false))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    // client_id -> (room, seq) of every ack received.
    let acked: Arc<Mutex<HashMap<String, (u64, u64)>>> = Arc::default();
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let (stop, acked, token) = (stop.clone(), acked.clone(), token.clone());
            let room = rooms[c % rooms.len()];
            std::thread::spawn(move || {
                let (mut ws, _) = RawWs::connect(p, &format!("/ws?token={token}"), "");
                // Pipelined: up to 8 sends in flight per connection.
                let (mut sent, mut done) = (0u64, 0u64);
                loop {
                    while sent - done < 8 && !stop.load(Ordering::Relaxed) {
                        let id = format!("k{c}-{sent}");
                        let body = format!("{c}:{sent}");
                        let frame = json!({"type": "send", "room": room, "body": body,
                                           "client_id": id, "ref": id});
                        // The server may be killed between two sends: a
                        // refused write ends this client like a closed read.
                        if ws
                            .try_write_frame(TEXT, frame.to_string().as_bytes(), true, false)
                            .is_err()
                        {
                            return sent;
                        }
                        sent += 1;
                    }
                    let Some(f) = ws.read_frame() else {
                        return sent; // killed
                    };
                    if f.opcode != TEXT {
                        continue;
                    }
                    let v: Value = serde_json::from_slice(&f.payload).unwrap();
                    if v["type"] == "ack" {
                        let id = v["ref"].as_str().unwrap().to_string();
                        let seq = v["seq"].as_u64().unwrap();
                        acked.lock().unwrap().insert(id, (room, seq));
                        done += 1;
                    }
                }
            })
        })
        .collect();
    // Let load build, then kill without warning.
    let t = Instant::now();
    while acked.lock().unwrap().len() < 300 {
        assert!(t.elapsed() < Duration::from_secs(30), "load did not build");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300 && (acked.len() as u64) <= sent);

    let again = restart(&server, &["--durability", "sync"]);
    let port = again.port;
    let mut found: HashMap<String, (u64, u64)> = HashMap::new();
    for &room in &rooms {
        let messages = all_messages(port, &token, room);
        let seqs: Vec<u64> = messages
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "room {room}: dense seqs, no duplicates"
        );
        // Per client, bodies appear in send order, each once.
        let mut last_per_client: HashMap<String, i64> = HashMap::new();
        for m in &messages {
            let body = m["body"].as_str().unwrap();
            let (c, n) = body.split_once(':').unwrap();
            let n: i64 = n.parse().unwrap();
            let last = last_per_client.entry(c.to_string()).or_insert(-1);
            assert!(n > *last, "room {room}: {body} after {c}:{last}");
            *last = n;
            let id = format!("k{c}-{n}");
            assert!(found
                .insert(id, (room, m["seq"].as_u64().unwrap()))
                .is_none());
        }
    }
    for (id, at) in &acked {
        assert_eq!(
            found.get(id),
            Some(at),
            "acked {id} at {at:?} is stored there"
        );
    }
    // And the restarted server accepts more, continuing the sequence.
    let (s, v) = call(
        port,
        "POST",
        &format!("/api/rooms/{}/messages", rooms[0]),
        Some(&token),
        Some(&json!({"body": "after"})),
    );
    assert_eq!(s, 201, "{v}");
    let last = found
        .values()
        .filter(|(r, _)| *r == rooms[0])
        .map(|(_, s)| *s)
        .max();
    assert_eq!(v["seq"].as_u64(), Some(last.unwrap_or(0) + 1));
}

#[test]
fn a_second_server_on_the_same_port_is_a_start_up_error() {
    let first = common::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", first.port);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(["--listen", &addr, "--durability", "none"])
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&addr), "names the address: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // The first server is untouched.
    common::assert_serving(first.port);
}

/// Starts the binary with `limit` applied in the child before exec; its
/// exit code and stderr.
fn start_limited(limit: impl Fn() -> std::io::Result<()> + Send + Sync + 'static) -> (i32, String) {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rookery"));
    cmd.args(["--listen", "127.0.0.1:0", "--durability", "none"])
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()]);
    // SAFETY: `limit` only makes async-signal-safe system calls.
    unsafe { cmd.pre_exec(limit) };
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), err)
}

#[test]
fn too_little_locked_memory_is_one_line_naming_the_limit() {
    let (code, err) = start_limited(|| {
        let lim = libc::rlimit {
            rlim_cur: 64 << 10,
            rlim_max: 64 << 10,
        };
        // SAFETY: a valid rlimit for this (child) process.
        match unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    });
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("RLIMIT_MEMLOCK") && err.contains("is 64 KiB"),
        "{err}"
    );
    assert!(err.contains("LimitMEMLOCK"), "names the fix: {err}");
}

#[test]
fn io_uring_blocked_by_seccomp_is_one_line_naming_seccomp() {
    // A filter that refuses io_uring_setup with EPERM, as Docker's default
    // profile does, and allows everything else.
    let (code, err) = start_limited(|| {
        let nr = libc::SYS_io_uring_setup as u32;
        let filter = [
            // A = seccomp_data.nr
            libc::sock_filter {
                code: 0x20,
                jt: 0,
                jf: 0,
                k: 0,
            },
            // if A == io_uring_setup: next, else skip one
            libc::sock_filter {
                code: 0x15,
                jt: 0,
                jf: 1,
                k: nr,
            },
            // SECCOMP_RET_ERRNO | EPERM
            libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0x0005_0000 | libc::EPERM as u32,
            },
            // SECCOMP_RET_ALLOW
            libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0x7fff_0000,
            },
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: plain prctl calls on this (child) process; `prog` points
        // at `filter`, alive for the call.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    });
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("io_uring is not permitted") && err.contains("seccomp"),
        "{err}"
    );
}

/// A server killed after it closed connections (leaving them in
/// TIME_WAIT) starts again on the same port at once, while a second server
/// on the port of one that is running is refused.
#[test]
fn a_killed_server_restarts_on_its_port_and_a_second_one_is_refused() {
    let mut server = common::start(&[]);
    for _ in 0..5 {
        let (s, _) = common::call(server.port, "GET", "/healthz", None, None);
        assert_eq!(s, 200);
    }
    let taken = std::process::Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(["--listen", &format!("127.0.0.1:{}", server.port)])
        .args([
            "--data-dir",
            tempfile::tempdir().unwrap().path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(taken.status.code(), Some(2));
    let err = String::from_utf8_lossy(&taken.stderr);
    assert!(err.contains("is another server listening there?"), "{err}");
    let _ = server.child.kill();
    let _ = server.child.wait();
    wait_port_free(server.port);
    let data = server._dir.path().join("data");
    let (child, port) = spawn_in(&data, server.port, &[]);
    let _again = Server {
        child,
        port,
        _dir: tempfile::tempdir().unwrap(),
        cluster: None,
    };
    wait_ready(port);
}
