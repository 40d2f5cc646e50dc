//! Socket I/O every connection uses: reads through the shard's one scratch
//! buffer (an idle connection holds none), writes under the write deadline
//! (`--conn-write-timeout-ms`), and the lingering close that lets a final
//! answer reach the client.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::http::Response;
use crate::shared::Shared;

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
}

/// Polls the socket for what it has, handing it to `take` (0 at end of
/// stream); the bytes pass through the shard's scratch buffer.
pub(crate) fn poll_read_with(
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

/// Reads what the socket has (waiting until it has something) and hands it
/// to `take`; 0 at end of stream.
pub(crate) async fn read_with(
    stream: &mut TcpStream,
    mut take: impl FnMut(&[u8]),
) -> std::io::Result<usize> {
    futures_lite::future::poll_fn(|cx| poll_read_with(stream, cx, &mut take)).await
}

/// What a read with a deadline gave.
pub(crate) enum Read {
    Bytes(usize),
    Closed,
    TimedOut,
}

/// Reads onto `buf` until `deadline`.
pub(crate) async fn read_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Read {
    let left = deadline.saturating_duration_since(Instant::now());
    let read = async {
        match read_with(stream, |bytes| buf.extend_from_slice(bytes)).await {
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

/// Writes `bytes` under the write deadline: the socket must take some of
/// them at least every `--conn-write-timeout-ms`; false (counted) when it
/// does not, or fails.
pub(crate) async fn write_within(shared: &Shared, stream: &mut TcpStream, bytes: &[u8]) -> bool {
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
    mut stream: TcpStream,
    mut out: Vec<u8>,
    last: Response,
) {
    last.encode(true, &mut out);
    if write_within(shared, &mut stream, &out).await {
        linger_close(stream).await;
    }
}

/// Closes after a final response without losing it: closing a socket with
/// unread input makes the kernel send a reset, which can destroy the
/// response before the client reads it (a client still sending an
/// oversized request, say). So: half-close, then read and discard what
/// still comes, for a bounded time and amount.
pub(crate) async fn linger_close(mut stream: TcpStream) {
    if stream.shutdown(std::net::Shutdown::Write).await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut drained = 0;
    let mut sink = Vec::new();
    while drained < LINGER_BYTES_MAX {
        sink.clear();
        match read_until(&mut stream, &mut sink, deadline).await {
            Read::Bytes(n) => drained += n,
            Read::Closed | Read::TimedOut => break,
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
