//! Socket I/O every connection uses: reads through the shard's one scratch
//! buffer (an idle connection holds none), writes under the write deadline
//! (`--conn-write-timeout-ms`), and the lingering close that lets a final
//! answer reach the client. On a TLS listener the same calls go through
//! the connection's TLS session (`tls.rs`): its handshake first, then
//! plaintext in and out, and `close_notify` before the close.

use std::cell::RefCell;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::http::Response;
use crate::shared::Shared;
use crate::tls::{self, Fed, Session};

/// After a final response, how long and how much unread input is drained
/// before the socket is closed.
pub(crate) const LINGER: Duration = Duration::from_millis(500);
pub(crate) const LINGER_BYTES_MAX: usize = 256 << 10;
/// Bytes read from a socket at a time, into the shard's scratch buffer.
pub(crate) const READ_CHUNK_BYTES: usize = 64 << 10;

/// How long a connection is not read after one of its requests was
/// refused by a rate limit (429 `rate_limited`) at most: its retry delay,
/// up to this. A client that ignores the delay and loops gets one answer
/// per pause, not as many as the shard can refuse, so a few flooding
/// connections cannot take the shard's time from everyone else.
pub(crate) const REFUSED_PAUSE_MAX: Duration = Duration::from_secs(1);

/// The pause after a refusal with a retry delay of `retry_after_ms`.
pub(crate) fn refused_pause(retry_after_ms: u64) -> Duration {
    Duration::from_millis(retry_after_ms).min(REFUSED_PAUSE_MAX)
}

/// Sits out `pause`; the shard stopping ends it early.
pub(crate) async fn sit_out(shared: &Shared, pause: Duration) {
    futures_lite::future::or(glommio::timer::sleep(pause), shared.stopped()).await;
}

thread_local! {
    /// The shard's read buffer: borrowed only inside one `poll_read`, so
    /// every connection on the shard shares it.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK_BYTES].into());
    /// The shard's buffer for plaintext a TLS session yields, likewise.
    static PLAIN: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK_BYTES].into());
}

/// A client connection's socket and, on a TLS listener, its session.
pub(crate) struct Socket {
    pub stream: TcpStream,
    pub tls: Option<Session>,
}

impl Socket {
    pub(crate) fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// Polls the connection for what it has, handing it to `take` (0 at end
/// of stream); the bytes pass through the shard's scratch buffers. On TLS,
/// `take` gets plaintext (records not yet complete wait in the session).
pub(crate) fn poll_read_with(
    conn: &mut Socket,
    cx: &mut std::task::Context<'_>,
    take: &mut impl FnMut(&[u8]),
) -> Poll<std::io::Result<usize>> {
    let Some(session) = conn.tls.clone() else {
        return poll_raw(&mut conn.stream, cx, take);
    };
    let fd = conn.fd();
    loop {
        let mut fed = Ok(Fed::Plain(0));
        match poll_raw(&mut conn.stream, cx, &mut |raw| {
            fed = feed(&session, raw, take)
        }) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
            Poll::Ready(Ok(_)) => {}
            other => return other,
        }
        // What the session must answer (an alert, a key update) leaves
        // now if the socket takes it, else with the next write.
        let _ = send_sealed(&mut session.borrow_mut(), fd);
        match fed {
            Ok(Fed::Plain(0)) => continue, // a record not yet complete
            Ok(Fed::Plain(n)) => return Poll::Ready(Ok(n)),
            Ok(Fed::Closed) => return Poll::Ready(Ok(0)),
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// [`tls::feed`] through the shard's plaintext buffer.
fn feed(session: &Session, raw: &[u8], take: &mut impl FnMut(&[u8])) -> std::io::Result<Fed> {
    PLAIN.with(|plain| {
        tls::feed(
            &mut session.borrow_mut(),
            raw,
            &mut plain.borrow_mut(),
            take,
        )
    })
}

fn poll_raw(
    stream: &mut TcpStream,
    cx: &mut std::task::Context<'_>,
    take: &mut impl FnMut(&[u8]),
) -> Poll<std::io::Result<usize>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        match Pin::new(&mut *stream).poll_read(cx, &mut scratch) {
            Poll::Ready(Ok(n)) => {
                take(&scratch[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    })
}

/// Reads what the connection has (waiting until it has something) and
/// hands it to `take`; 0 at end of stream.
pub(crate) async fn read_with(
    conn: &mut Socket,
    mut take: impl FnMut(&[u8]),
) -> std::io::Result<usize> {
    futures_lite::future::poll_fn(|cx| poll_read_with(conn, cx, &mut take)).await
}

/// What a read with a deadline gave.
pub(crate) enum Read {
    Bytes(usize),
    Closed,
    TimedOut,
}

/// Reads onto `buf` until `deadline`.
pub(crate) async fn read_until(conn: &mut Socket, buf: &mut Vec<u8>, deadline: Instant) -> Read {
    by_deadline(
        read_with(conn, |bytes| buf.extend_from_slice(bytes)),
        deadline,
    )
    .await
}

/// What `read` gave, unless `deadline` came first.
async fn by_deadline(
    read: impl std::future::Future<Output = std::io::Result<usize>>,
    deadline: Instant,
) -> Read {
    let left = deadline.saturating_duration_since(Instant::now());
    let read = async {
        match read.await {
            Ok(0) | Err(_) => Read::Closed,
            Ok(n) => Read::Bytes(n),
        }
    };
    futures_lite::future::or(read, async {
        glommio::timer::sleep(left).await;
        Read::TimedOut
    })
    .await
}

/// A TLS connection's handshake, by `deadline`: false (closed) when it
/// fails or does not finish in time. Plaintext the client sent right
/// after it (its first request) is put in `buf`. A plain connection has
/// none: true at once.
pub(crate) async fn handshake(
    shared: &Shared,
    conn: &mut Socket,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> bool {
    let Some(session) = conn.tls.clone() else {
        return true;
    };
    loop {
        let sealed = take_sealed(&mut session.borrow_mut());
        if !sealed.is_empty() && !write_raw_within(shared, &mut conn.stream, &sealed).await {
            return false;
        }
        if !session.borrow().is_handshaking() {
            return true;
        }
        // One read at a time: what it makes the session answer is sent
        // (under the write deadline) before the next.
        let mut fed = Ok(Fed::Plain(0));
        let mut keep = |bytes: &[u8]| buf.extend_from_slice(bytes);
        let read = read_raw_until(&mut conn.stream, deadline, |raw| {
            fed = feed(&session, raw, &mut keep)
        })
        .await;
        if !matches!((read, fed), (Read::Bytes(_), Ok(Fed::Plain(_)))) {
            // The alert that says why, if the session has one.
            let alert = take_sealed(&mut session.borrow_mut());
            let _ = send(conn.fd(), &alert);
            return false;
        }
    }
}

/// Reads once from the socket itself by `deadline`, handing the bytes to
/// `take`.
async fn read_raw_until(
    stream: &mut TcpStream,
    deadline: Instant,
    mut take: impl FnMut(&[u8]),
) -> Read {
    let read = futures_lite::future::poll_fn(|cx| poll_raw(stream, cx, &mut take));
    by_deadline(read, deadline).await
}

/// Everything the session has sealed and not sent, taken out of it.
fn take_sealed(session: &mut rustls::ServerConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while session.wants_write() {
        if session.write_tls(&mut out).is_err() {
            break;
        }
    }
    out
}

/// Sends what the session has sealed, as far as the socket takes it
/// without blocking: Ok(true) when all of it left.
pub(crate) fn send_sealed(
    session: &mut rustls::ServerConnection,
    fd: RawFd,
) -> std::io::Result<bool> {
    while session.wants_write() {
        match session.write_tls(&mut FdWriter(fd)) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Writes `bytes` under the write deadline: the socket must take some of
/// them at least every `--conn-write-timeout-ms`; false (counted) when it
/// does not, or fails. On TLS they are sealed first, after what the
/// session held already.
pub(crate) async fn write_within(shared: &Shared, conn: &mut Socket, bytes: &[u8]) -> bool {
    let Some(session) = conn.tls.clone() else {
        return write_raw_within(shared, &mut conn.stream, bytes).await;
    };
    let mut at = 0;
    loop {
        let sealed = {
            let mut s = session.borrow_mut();
            match tls::seal(&mut s, &bytes[at..]) {
                Ok(n) => at += n,
                Err(_) => return false, // the session failed
            }
            take_sealed(&mut s)
        };
        // A pass that moves nothing would loop without yielding.
        if sealed.is_empty() && at < bytes.len() {
            return false;
        }
        if !write_raw_within(shared, &mut conn.stream, &sealed).await {
            return false;
        }
        if at == bytes.len() {
            return true;
        }
    }
}

async fn write_raw_within(shared: &Shared, stream: &mut TcpStream, bytes: &[u8]) -> bool {
    let timeout = Duration::from_millis(shared.cfg.conn_write_timeout_ms);
    let mut at = 0;
    while at < bytes.len() {
        let write = async { Some(stream.write(&bytes[at..]).await) };
        let wrote = futures_lite::future::or(write, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
        match wrote {
            Some(Ok(n)) if n > 0 => at += n,
            Some(_) => return false,
            None => {
                if let Some(h) = shared.my_http() {
                    h.write_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                return false;
            }
        }
    }
    true
}

/// Writes `out` (responses already due) and a last response, then closes
/// with a linger.
pub(crate) async fn answer_and_close(
    shared: &Shared,
    mut conn: Socket,
    mut out: Vec<u8>,
    last: Response,
) {
    last.encode(true, &mut out);
    if write_within(shared, &mut conn, &out).await {
        linger_close(conn).await;
    }
}

/// Closes after a final response without losing it: closing a socket with
/// unread input makes the kernel send a reset, which can destroy the
/// response before the client reads it (a client still sending an
/// oversized request, say). So: half-close (after `close_notify` on TLS),
/// then read and discard what still comes, for a bounded time and amount.
pub(crate) async fn linger_close(mut conn: Socket) {
    if let Some(session) = conn.tls.take() {
        let mut s = session.borrow_mut();
        s.send_close_notify();
        let _ = send_sealed(&mut s, conn.fd());
    }
    if conn
        .stream
        .shutdown(std::net::Shutdown::Write)
        .await
        .is_err()
    {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut drained = 0;
    let mut sink = Vec::new();
    while drained < LINGER_BYTES_MAX {
        sink.clear();
        match read_until(&mut conn, &mut sink, deadline).await {
            Read::Bytes(n) => drained += n,
            Read::Closed | Read::TimedOut => break,
        }
    }
}

/// An `io::Write` over a socket that never blocks: `WouldBlock` when it
/// is full. Vectored writes go out in one `sendmsg`.
pub(crate) struct FdWriter(pub RawFd);

impl std::io::Write for FdWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_vectored(&[IoSlice::new(bytes)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match send_vectored(self.0, bufs)? {
            0 if bufs.iter().any(|b| !b.is_empty()) => Err(std::io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `send(2)` without blocking and without SIGPIPE: the bytes taken (0 when
/// the socket is full).
pub(crate) fn send(fd: RawFd, bytes: &[u8]) -> std::io::Result<usize> {
    send_vectored(fd, &[IoSlice::new(bytes)])
}

/// [`send`] of several buffers at once (`sendmsg(2)`).
///
/// A direct syscall, not glommio's stream: the flusher writes for
/// connections whose tasks are parked, and glommio's own writes are the
/// same nonblocking `send` (its stream keeps no write state the flusher
/// could upset).
pub(crate) fn send_vectored(fd: RawFd, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
    loop {
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` and each is
        // valid for its length; `fd` is open: a connection stops every
        // writer before it closes its socket.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len() as _;
            libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock => return Ok(0),
            std::io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

/// The client's address for a request that came over `peer`: `peer`
/// itself, unless it is a trusted proxy; then the last address of
/// `X-Forwarded-For` (or, without it, `Forwarded: for=`) that is not a
/// trusted proxy itself, walking from the nearest hop back. A header a
/// client made up can only add entries to the left of what the proxies
/// appended, so those are never reached while a hop on the right is
/// untrusted.
pub(crate) fn client_ip(
    peer: std::net::IpAddr,
    req: &crate::http::Request,
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| is_trusted_proxy(trusted, ip);
    if !is_trusted(&peer) {
        return peer;
    }
    let listed = |name: &str| -> Vec<std::net::IpAddr> {
        req.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .filter_map(|entry| forwarded_addr(entry, name == "forwarded"))
            .collect()
    };
    let mut hops = listed("x-forwarded-for");
    if hops.is_empty() {
        hops = listed("forwarded");
    }
    hops.iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(hops.first())
        .copied()
        .unwrap_or(peer)
}

/// Whether `ip` is one of the `--trusted-proxies`.
pub(crate) fn is_trusted_proxy(trusted: &[ipnet::IpNet], ip: &std::net::IpAddr) -> bool {
    trusted.iter().any(|n| n.contains(ip))
}

/// One entry of `X-Forwarded-For` (an address) or of `Forwarded` (its
/// `for=` parameter: `for=192.0.2.1`, `for="[2001:db8::1]:443"`).
fn forwarded_addr(entry: &str, rfc7239: bool) -> Option<std::net::IpAddr> {
    let raw = if rfc7239 {
        entry.split(';').find_map(|p| {
            p.trim()
                .strip_prefix("for=")
                .or_else(|| p.trim().strip_prefix("For="))
        })?
    } else {
        entry
    };
    let raw = raw.trim().trim_matches('"');
    if let Ok(ip) = raw.parse() {
        return Some(ip);
    }
    // `[v6]:port` or `v4:port`.
    let host = match raw.strip_prefix('[') {
        Some(rest) => rest.split(']').next()?,
        None => raw.rsplit_once(':')?.0,
    };
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> crate::http::Request {
        crate::http::Request::get(headers, "")
    }

    #[test]
    fn the_client_is_the_last_untrusted_forwarded_hop_behind_a_trusted_proxy() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: std::net::IpAddr = "10.0.0.5".parse().unwrap();
        let outsider: std::net::IpAddr = "203.0.113.9".parse().unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        // Not a trusted peer: its headers are ignored.
        let spoof = req(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(client_ip(outsider, &spoof, &trusted), outsider);
        // A made-up entry on the left is never reached.
        let chain = req(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.0.0.9")]);
        assert_eq!(client_ip(proxy, &chain, &trusted), ip("198.51.100.7"));
        // RFC 7239, with a port and an IPv6 address.
        let fwd = req(&[("forwarded", "for=\"[2001:db8::1]:443\";proto=https")]);
        assert_eq!(client_ip(proxy, &fwd, &trusted), ip("2001:db8::1"));
        let fwd4 = req(&[("forwarded", "for=192.0.2.60:8080")]);
        assert_eq!(client_ip(proxy, &fwd4, &trusted), ip("192.0.2.60"));
        // Nothing usable: the proxy itself.
        assert_eq!(client_ip(proxy, &req(&[]), &trusted), proxy);
        assert_eq!(
            client_ip(proxy, &req(&[("x-forwarded-for", "junk")]), &trusted),
            proxy
        );
    }
}
