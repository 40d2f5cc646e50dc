//! The plain-HTTP listener of `--tls-redirect-from`: every request is
//! answered `308 Permanent Redirect` to the same host, path and query over
//! HTTPS, and the connection closed.
//!
//! It serves nothing else and keeps nothing: each connection counts
//! against its address's connection limit (unless it is a trusted proxy), has `--http-request-timeout-ms`
//! to send one request head of at most `--http-head-bytes-max`, and is
//! closed after its answer. The target's host comes from the request's
//! `Host`, checked to be a host name or address (a header that is not one
//! is 400, so no client can make the server point anywhere but a host).

use std::rc::Rc;
use std::time::Instant;

use glommio::net::TcpListener;

use crate::http::{Request, Response};
use crate::net::{answer_and_close, Socket};
use crate::serve::{count_connection, read_head, Head};
use crate::shared::Shared;

/// Accepts on `listener` until the shard stops.
pub async fn serve(listener: TcpListener, shared: Rc<Shared>) {
    while let Some(accepted) = shared.unless_stopped(listener.accept()).await {
        let Ok(stream) = accepted else {
            glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let Ok(pass) = shared.gate.enter() else {
            break;
        };
        let shared = shared.clone();
        glommio::spawn_local(async move {
            answer(stream, &shared).await;
            drop(pass);
        })
        .detach();
    }
}

async fn answer(stream: glommio::net::TcpStream, shared: &Shared) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let Some(_counted) = count_connection(shared, peer.ip()) else {
        return; // past its address's limit: closed unanswered
    };
    let mut conn = Socket { stream, tls: None };
    let limits = shared.cfg.http_limits();
    let deadline = Instant::now() + shared.cfg.request_timeout();
    let mut buf = Vec::new();
    // A stopping shard closes it.
    let head = shared.unless_stopped(read_head(&mut conn, &mut buf, &limits, deadline));
    let resp = match head.await {
        Some(Head::Request(req)) => redirect(&req, shared.cfg.listen.port()),
        Some(Head::Bad(e)) => {
            let (status, code) = e.status();
            Response::error(status, code, &e.message())
        }
        Some(Head::TimedOut) => {
            Response::error(408, "request_timeout", "request not completed in time")
        }
        Some(Head::Closed) | None => return,
    };
    answer_and_close(shared, conn, Vec::new(), resp).await;
}

/// The answer to `req`: 308 to its URL over HTTPS on `tls_port`, or 400
/// when its `Host` is missing or no host.
pub fn redirect(req: &Request, tls_port: u16) -> Response {
    let Some(host) = req.header("host").and_then(host_of) else {
        return Response::error(
            400,
            "bad_request",
            "a Host header naming this server is needed",
        );
    };
    if !req.path.starts_with('/') {
        return Response::error(400, "bad_request", "the request target must be a path");
    }
    let port = if tls_port == 443 {
        String::new()
    } else {
        format!(":{tls_port}")
    };
    let query = if req.query.is_empty() {
        String::new()
    } else {
        format!("?{}", req.query)
    };
    Response {
        status: 308,
        headers: vec![(
            "location".into(),
            format!("https://{host}{port}{}{query}", req.path),
        )],
        body: Vec::new(),
        error_code: None,
        file: None,
    }
}

/// The host of a `Host` header (its port dropped): a DNS name, an IPv4
/// address or a bracketed IPv6 one; `None` for anything else.
fn host_of(header: &str) -> Option<&str> {
    let host = match header.strip_prefix('[') {
        Some(rest) => {
            let end = rest.find(']')?;
            let v6 = &header[..end + 2];
            v6[1..end + 1].parse::<std::net::Ipv6Addr>().ok()?;
            return port_ok(&rest[end + 1..]).then_some(v6);
        }
        None => match header.split_once(':') {
            Some((host, port)) => port_ok(&format!(":{port}")).then_some(host)?,
            None => header,
        },
    };
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    name_ok.then_some(host)
}

/// Whether what follows a host is nothing or `:` and a port number.
fn port_ok(rest: &str) -> bool {
    match rest.strip_prefix(':') {
        None => rest.is_empty(),
        Some(port) => port.parse::<u16>().is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>, path: &str, query: &str) -> Request {
        let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
        let mut r = Request::get(&headers, "");
        r.path = path.into();
        r.query = query.into();
        r
    }

    fn location(r: &Response) -> Option<&str> {
        r.headers
            .iter()
            .find(|(n, _)| n == "location")
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn requests_go_to_the_same_place_over_https() {
        let r = redirect(&req(Some("chat.example.com"), "/api/me", ""), 443);
        assert_eq!(r.status, 308);
        assert_eq!(location(&r), Some("https://chat.example.com/api/me"));
        let r = redirect(
            &req(Some("chat.example.com:80"), "/ws", "token=a&b=c"),
            8443,
        );
        assert_eq!(
            location(&r),
            Some("https://chat.example.com:8443/ws?token=a&b=c")
        );
        let r = redirect(&req(Some("[::1]:8080"), "/", ""), 443);
        assert_eq!(location(&r), Some("https://[::1]/"));
        let r = redirect(&req(Some("127.0.0.1"), "/x", ""), 443);
        assert_eq!(location(&r), Some("https://127.0.0.1/x"));
    }

    #[test]
    fn a_host_that_is_no_host_is_refused() {
        for bad in [
            None,
            Some(""),
            Some("evil.com/path"),
            Some("evil.com@good.com"),
            Some("a b"),
            Some("host:port"),
            Some("host:99999"),
            Some("[::1"),
            Some("[not-v6]"),
            Some("[::1]x"),
            Some("évil.com"),
        ] {
            let r = redirect(&req(bad, "/", ""), 443);
            assert_eq!((r.status, location(&r)), (400, None), "{bad:?}");
        }
        // An absolute-form target names no other place either.
        let r = redirect(&req(Some("good.com"), "http://evil.com/", ""), 443);
        assert_eq!((r.status, location(&r)), (400, None));
    }
}
