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
