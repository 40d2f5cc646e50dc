//! A webhook receiver for benchmarks (`rookery-bench load --webhook-sink`,
//! `rookery-bench webhooks`): answers every request 200 at once, checks
//! each signature when given the secret, and measures each message's lag,
//! from the event's timestamp (ms, the room's clock) to its arrival here.
//! One thread per connection (the server keeps one or a few per webhook).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::load::Pct;

/// A request's head and body, at most (a batch of 1,000 events of 64 KiB
/// would be more; the benchmarks send small ones).
const REQUEST_BYTES_MAX: usize = 64 << 20;

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    events: AtomicU64,
    messages: AtomicU64,
    bad_signatures: AtomicU64,
    /// Each message's lag, µs.
    lag_us: Mutex<Option<Histogram<u64>>>,
}

/// A running sink.
pub struct Sink {
    pub addr: SocketAddr,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    /// Listens on `addr` (port 0: any); checks signatures with `secret`.
    pub fn start(addr: SocketAddr, secret: Option<String>) -> Result<Sink> {
        let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (tally.clone(), stop.clone());
        let secret = secret.map(Arc::<str>::from);
        std::thread::Builder::new()
            .name("webhook-sink".into())
            .spawn(move || accept(listener, t, s, secret))?;
        Ok(Sink { addr, tally, stop })
    }

    /// Message events received so far.
    pub fn messages(&self) -> u64 {
        self.tally.messages.load(Ordering::Relaxed)
    }

    /// What it saw, as the report's `webhook` object.
    pub fn report(&self) -> Value {
        let h = self.tally.lag_us.lock().unwrap().clone();
        let lag = h.as_ref().map(Pct::of);
        json!({
            "requests": self.tally.requests.load(Ordering::Relaxed),
            "events": self.tally.events.load(Ordering::Relaxed),
            "messages": self.messages(),
            "bad_signatures": self.tally.bad_signatures.load(Ordering::Relaxed),
            "lag_ms": lag.map(|p| json!({"p50": p.p50, "p95": p.p95, "p99": p.p99, "p999": p.p999, "max": p.max})),
        })
    }

    /// Waits up to `limit` until `messages` message events arrived.
    pub fn wait_for(&self, messages: u64, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while self.messages() < messages {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn accept(
    listener: TcpListener,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    secret: Option<Arc<str>>,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let (t, s, k) = (tally.clone(), stop.clone(), secret.clone());
                std::thread::spawn(move || serve(conn, &t, &s, k.as_deref()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve(mut conn: TcpStream, tally: &Tally, stop: &AtomicBool, secret: Option<&str>) {
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        if let Some((used, ts, sig, body)) = request(&buf) {
            let ok = secret.is_none_or(|k| signed(k, &ts, &sig, &buf[body.clone()]));
            if !ok {
                tally.bad_signatures.fetch_add(1, Ordering::Relaxed);
            }
            tally.requests.fetch_add(1, Ordering::Relaxed);
            count(tally, &buf[body]);
            buf.drain(..used);
            if conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .is_err()
            {
                return;
            }
            continue;
        }
        if buf.len() > REQUEST_BYTES_MAX {
            return;
        }
        match conn.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// A whole request at the front of `buf`: its length, timestamp and
/// signature headers, and where its body is.
fn request(buf: &[u8]) -> Option<(usize, String, String, std::ops::Range<usize>)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = req.parse(buf).ok()? else {
        return None;
    };
    let get = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_string())
            .unwrap_or_default()
    };
    let len: usize = get("content-length").parse().ok()?;
    (buf.len() >= head + len).then(|| {
        (
            head + len,
            get("rookery-timestamp"),
            get("rookery-signature"),
            head..head + len,
        )
    })
}

fn signed(secret: &str, ts: &str, sig: &str, body: &[u8]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    sig.strip_prefix("v1=") == Some(hex.as_str())
}

/// Counts a batch's events and each message's lag.
fn count(tally: &Tally, body: &[u8]) {
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let events = v["events"].as_array().map_or(&[][..], |a| &a[..]);
    tally
        .events
        .fetch_add(events.len() as u64, Ordering::Relaxed);
    let mut lag = tally.lag_us.lock().unwrap();
    let h =
        lag.get_or_insert_with(|| Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds"));
    for e in events.iter().filter(|e| e["type"] == "message") {
        tally.messages.fetch_add(1, Ordering::Relaxed);
        if let Some(ts) = e["ts"].as_u64() {
            let _ = h.record(now_us.saturating_sub(ts * 1000).clamp(1, 600_000_000));
        }
    }
}
