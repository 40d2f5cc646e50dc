//! HTTP/1.1 framing, free of I/O: parse a request from the bytes read so
//! far, encode a response into bytes to write.
//!
//! The connection loop owns the socket and the clock; this module only
//! decides. Invariant: `parse` never consumes bytes of a request it has not
//! fully validated (head within limits, body complete), so pipelined
//! requests are answered one by one, in order, and a bad request is
//! answered without touching the ones after it (the connection is closed
//! after an error response).

use std::fmt::Write as _;

/// Limits on one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of the request line and headers together.
    pub head_bytes_max: usize,
    /// Number of headers.
    pub headers_max: usize,
    /// Bytes of a body (`Content-Length`).
    pub body_bytes_max: usize,
}

/// A parsed request. Header names are lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The raw query string (after `?`), empty if none.
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// The minor HTTP version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    /// The client's address (set by the connection, not parsed).
    pub peer: Option<std::net::IpAddr>,
    /// Who the node that forwarded this request found its bearer token to
    /// be (set only by cluster forwarding, never parsed from a client).
    pub proof: Option<crate::auth::Proof>,
    /// Whether another node forwarded it here (it is never forwarded on).
    pub forwarded: bool,
    /// Whether a node made it (a part of a cluster's search, a chunk of an
    /// upload), not a client: only then are a route's node-only
    /// parameters (`hits=`, `chunk=`) honoured. Never parsed: a client's
    /// request forwarded to another node is still a client's.
    pub node_ask: bool,
}

impl Request {
    /// The first query parameter named `name` (raw, not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }

    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A `GET /` over HTTP/1.1 with these headers and query (for tests,
    /// and for what nodes ask each other).
    pub fn get(headers: &[(&str, &str)], query: &str) -> Request {
        Request {
            method: "GET".into(),
            path: "/".into(),
            query: query.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
            keep_alive: true,
            version: 1,
            peer: None,
            proof: None,
            forwarded: false,
            node_ask: false,
        }
    }

    /// Whether `If-None-Match` (every such header, each a list) matches
    /// `etag` (a quoted strong tag) under RFC 9110's weak comparison:
    /// `W/"x"` matches `"x"`, and `*` matches anything.
    pub fn none_match(&self, etag: &str) -> bool {
        let want = etag.trim_start_matches("W/");
        self.headers
            .iter()
            .filter(|(n, _)| n == "if-none-match")
            .any(|(_, v)| v.trim() == "*" || entity_tags(v).any(|t| t == want))
    }
}

/// The entity tags of an `If-None-Match` list, each with its quotes and
/// without a `W/` prefix; parsing stops at anything that is not one.
fn entity_tags(list: &str) -> impl Iterator<Item = &str> {
    let mut rest = list;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        let tag = rest.strip_prefix("W/").unwrap_or(rest);
        let body = tag.strip_prefix('"')?;
        let end = body.find('"')? + 2;
        let (found, after) = tag.split_at(end);
        rest = after;
        Some(found)
    })
}

/// Why a request is refused; each maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Not HTTP/1.x, bad syntax, bad `Content-Length` (400).
    Malformed(String),
    /// Head over `head_bytes_max` or more than `headers_max` headers (431).
    HeadTooLarge,
    /// Body over `body_bytes_max` (413).
    BodyTooLarge,
    /// `Transfer-Encoding` other than none (501): bodies are sized by
    /// `Content-Length` only.
    Unsupported(String),
    /// A streamed body (an upload) without `Content-Length` (411): its
    /// size is checked before any of it is read.
    LengthRequired,
}

impl HttpError {
    /// Status code and the error code of the JSON body.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            HttpError::Malformed(_) => (400, "bad_request"),
            HttpError::HeadTooLarge => (431, "headers_too_large"),
            HttpError::BodyTooLarge => (413, "body_too_large"),
            HttpError::Unsupported(_) => (501, "not_implemented"),
            HttpError::LengthRequired => (411, "length_required"),
        }
    }

    /// A message for the client.
    pub fn message(&self) -> String {
        match self {
            HttpError::Malformed(m) => format!("malformed request: {m}"),
            HttpError::HeadTooLarge => "request head too large".into(),
            HttpError::BodyTooLarge => "request body too large".into(),
            HttpError::Unsupported(m) => format!("unsupported: {m}"),
            HttpError::LengthRequired => "an upload needs a Content-Length".into(),
        }
    }
}

/// Parses one request from the front of `buf`. `Ok(None)`: more bytes are
/// needed. `Ok(Some((request, n)))`: the request used the first `n` bytes.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, HttpError> {
    Ok(parse_with(buf, limits, |_| false)?.map(|p| match p {
        Parsed::Whole(req, used) => (req, used),
        Parsed::Streamed { .. } => unreachable!("nothing streams"),
    }))
}

/// A request parsed from the front of a buffer.
#[derive(Debug)]
pub enum Parsed {
    /// Head and body, using the first `n` bytes.
    Whole(Request, usize),
    /// A head whose body is streamed (`body` empty): the head used
    /// `head_len` bytes, and `body_len` bytes of body follow (not limited
    /// by `body_bytes_max`: the handler bounds them).
    Streamed {
        req: Request,
        head_len: usize,
        body_len: u64,
    },
}

/// [`parse`], except that a request for which `streams` is true is
/// returned as soon as its head is complete ([`Parsed::Streamed`]); such a
/// request needs a `Content-Length` (411 otherwise, chunked included).
pub fn parse_with(
    buf: &[u8],
    limits: &Limits,
    streams: impl Fn(&Request) -> bool,
) -> Result<Option<Parsed>, HttpError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.headers_max];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.head_bytes_max {
                Err(HttpError::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > limits.head_bytes_max {
        return Err(HttpError::HeadTooLarge);
    }
    let version = req.version.unwrap_or(1);
    let method = req.method.unwrap_or_default().to_string();
    let target = origin_form(req.path.unwrap_or_default());
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    if !path.starts_with('/') {
        return Err(HttpError::Malformed("the target must be a path".into()));
    }
    let mut fields = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::Malformed(format!("header {} is not UTF-8", h.name)))?;
        fields.push((h.name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let request_head = Request {
        method,
        path,
        query,
        keep_alive: keep_alive(version, &fields),
        version,
        headers: fields,
        body: Vec::new(),
        peer: None,
        proof: None,
        forwarded: false,
        node_ask: false,
    };
    // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host.
    let hosts = request_head
        .headers
        .iter()
        .filter(|(n, _)| n == "host")
        .count();
    if hosts > 1 || (hosts == 0 && version == 1) {
        return Err(HttpError::Malformed(
            "an HTTP/1.1 request needs exactly one Host header".into(),
        ));
    }
    if streams(&request_head) {
        if request_head.header("transfer-encoding").is_some() {
            return Err(HttpError::LengthRequired);
        }
        if request_head.header("content-length").is_none() {
            return Err(HttpError::LengthRequired);
        }
        let body_len = content_length(&request_head.headers)? as u64;
        return Ok(Some(Parsed::Streamed {
            req: request_head,
            head_len,
            body_len,
        }));
    }
    if let Some(te) = request_head.header("transfer-encoding") {
        // §6.3: both framings at once is how requests are smuggled past a
        // proxy that reads the other one.
        if request_head.header("content-length").is_some() {
            return Err(HttpError::Malformed(
                "Content-Length with Transfer-Encoding".into(),
            ));
        }
        let codings = request_head
            .headers
            .iter()
            .filter(|(n, _)| n == "transfer-encoding")
            .count();
        if codings > 1 || !te.eq_ignore_ascii_case("chunked") {
            return Err(HttpError::Unsupported(format!("transfer-encoding {te}")));
        }
        let Some((body, used)) = dechunk(&buf[head_len..], limits)? else {
            return Ok(None);
        };
        let mut request = request_head;
        request.body = body;
        return Ok(Some(Parsed::Whole(request, head_len + used)));
    }
    let body_len = content_length(&request_head.headers)?;
    if body_len > limits.body_bytes_max {
        return Err(HttpError::BodyTooLarge);
    }
    let total = head_len + body_len;
    if buf.len() < total {
        return Ok(None);
    }
    let mut request = request_head;
    request.body = buf[head_len..total].to_vec();
    Ok(Some(Parsed::Whole(request, total)))
}

/// The path and query of a target: an absolute-form target
/// (`http://host/path?q`, RFC 9112 §3.2.2) loses its scheme and authority;
/// any other is returned as it is (and must then start with `/`).
fn origin_form(target: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    else {
        return Cow::Borrowed(target);
    };
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => Cow::Borrowed(&rest[i..]),
        Some(i) => Cow::Owned(format!("/{}", &rest[i..])),
        None => Cow::Borrowed("/"),
    }
}

/// Longest chunk-size line (size and extensions) accepted.
const CHUNK_LINE_BYTES_MAX: usize = 1024;

/// A chunked body (RFC 9112 §7.1) from the front of `data`: the body and
/// the bytes it used, `None` while incomplete. Bounded: the body by
/// `body_bytes_max` (413), its encoding by twice that plus 4 KiB (so
/// tiny chunks with long extensions cannot make the connection buffer
/// without limit), each size line by 1 KiB and the trailers by the head
/// limit (both 400/431).
fn dechunk(data: &[u8], limits: &Limits) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let encoded_max = 2 * limits.body_bytes_max + 4096;
    let incomplete = |data: &[u8]| {
        if data.len() > encoded_max {
            Err(HttpError::BodyTooLarge)
        } else {
            Ok(None)
        }
    };
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find_crlf(&data[at..]) else {
            if data.len() - at > CHUNK_LINE_BYTES_MAX {
                return Err(HttpError::Malformed("chunk size line too long".into()));
            }
            return incomplete(data);
        };
        if eol > CHUNK_LINE_BYTES_MAX {
            return Err(HttpError::Malformed("chunk size line too long".into()));
        }
        let line = &data[at..at + eol];
        let digits = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.len() <= 15 && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|d| usize::from_str_radix(d, 16).ok())
            .ok_or_else(|| HttpError::Malformed("bad chunk size".into()))?;
        at += eol + 2;
        if size == 0 {
            return trailers(data, at, limits).map(|end| end.map(|end| (body, end)));
        }
        if body.len() + size > limits.body_bytes_max {
            return Err(HttpError::BodyTooLarge);
        }
        if data.len() < at + size + 2 {
            return incomplete(data);
        }
        if &data[at + size..at + size + 2] != b"\r\n" {
            return Err(HttpError::Malformed(
                "chunk data not followed by CRLF".into(),
            ));
        }
        body.extend_from_slice(&data[at..at + size]);
        at += size + 2;
        if at > encoded_max {
            return Err(HttpError::BodyTooLarge);
        }
    }
}

/// Skips a chunked body's trailer fields (ignored) from `at` up to the
/// empty line; the offset just past it, `None` while incomplete.
fn trailers(data: &[u8], mut at: usize, limits: &Limits) -> Result<Option<usize>, HttpError> {
    let start = at;
    loop {
        let Some(eol) = find_crlf(&data[at..]) else {
            return if data.len() - start > limits.head_bytes_max {
                Err(HttpError::HeadTooLarge)
            } else {
                Ok(None)
            };
        };
        at += eol + 2;
        if eol == 0 {
            return Ok(Some(at));
        }
        if at - start > limits.head_bytes_max {
            return Err(HttpError::HeadTooLarge);
        }
    }
}

fn find_crlf(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == b"\r\n")
}

/// The body length: one valid `Content-Length` (duplicates must agree), or 0.
fn content_length(headers: &[(String, String)]) -> Result<usize, HttpError> {
    let mut len: Option<usize> = None;
    for (_, v) in headers.iter().filter(|(n, _)| n == "content-length") {
        // Digits only (`+2` parses as a number but is not one here).
        let n: usize = v
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| v.parse().ok())
            .flatten()
            .ok_or_else(|| HttpError::Malformed(format!("content-length {v:?}")))?;
        if len.is_some_and(|l| l != n) {
            return Err(HttpError::Malformed("conflicting content-length".into()));
        }
        len = Some(n);
    }
    Ok(len.unwrap_or(0))
}

/// HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0
/// closes it unless `Connection: keep-alive`.
fn keep_alive(version: u8, headers: &[(String, String)]) -> bool {
    let conn = headers
        .iter()
        .find(|(n, _)| n == "connection")
        .map(|(_, v)| v.to_ascii_lowercase());
    match (version, conn.as_deref()) {
        (_, Some(c)) if c.split(',').any(|t| t.trim() == "close") => false,
        (0, Some(c)) => c.split(',').any(|t| t.trim() == "keep-alive"),
        (0, None) => false,
        _ => true,
    }
}

/// A response to encode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The error code of an error response (counted by code in metrics).
    pub error_code: Option<&'static str>,
    /// A body read from a file instead (`body` is then empty): the
    /// connection streams it after the head. Boxed: few responses have
    /// one, and every response would carry its size.
    pub file: Option<Box<FileBody>>,
}

/// `len` bytes of a file from `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBody {
    pub source: FileSource,
    pub offset: u64,
    pub len: u64,
}

/// Where a file body is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// A file on this node's disk.
    Disk(std::path::PathBuf),
    /// Upload `id` (its thumbnail when `thumb`) on another node of the
    /// cluster, read from it in chunks (`cluster::uploads`).
    Node { node: u32, id: u128, thumb: bool },
}

impl Response {
    /// The delay its `Retry-After` header asks for, in ms (1 s when it has
    /// none).
    pub fn retry_after_ms(&self) -> u64 {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .map_or(1000, |s| s.saturating_mul(1000))
    }

    /// A JSON response.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).expect("JSON values serialize"),
            error_code: None,
            file: None,
        }
    }

    /// The typed error body of docs/api.md: `{"error":{"code","message"}}`.
    pub fn error(status: u16, code: &'static str, message: &str) -> Response {
        let mut r = Response::json(
            status,
            &serde_json::json!({"error": {"code": code, "message": message}}),
        );
        r.error_code = Some(code);
        r
    }

    /// Appends the encoded response to `out`; `close` adds
    /// `Connection: close`.
    pub fn encode(&self, close: bool, out: &mut Vec<u8>) {
        let mut head = String::with_capacity(128);
        let _ = write!(head, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (n, v) in &self.headers {
            let _ = write!(head, "{n}: {v}\r\n");
        }
        // 101, 204 and 304 carry no body, and no length of one.
        if !matches!(self.status, 101 | 204 | 304) {
            let len = self.file.as_ref().map_or(self.body.len() as u64, |f| f.len);
            let _ = write!(head, "content-length: {len}\r\n");
        }
        if close {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&self.body);
    }
}

/// The reason phrase of the statuses this server sends.
fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        206 => "Partial Content",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        head_bytes_max: 1024,
        headers_max: 8,
        body_bytes_max: 64,
    };

    #[test]
    fn a_streamed_body_is_left_to_its_handler() {
        let streams = |r: &Request| r.path == "/up";
        let buf = b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\n\r\nabc";
        match parse_with(buf, &LIMITS, streams).unwrap().unwrap() {
            Parsed::Streamed {
                req,
                head_len,
                body_len,
            } => {
                assert_eq!((req.path.as_str(), req.body.len()), ("/up", 0));
                assert_eq!((head_len, body_len), (buf.len() - 3, 5_000_000));
            }
            Parsed::Whole(..) => panic!("streamed"),
        }
        for framing in ["", "Transfer-Encoding: chunked\r\n"] {
            let raw = format!("POST /up HTTP/1.1\r\nHost: t\r\n{framing}\r\n");
            assert_eq!(
                parse_with(raw.as_bytes(), &LIMITS, streams).unwrap_err(),
                HttpError::LengthRequired
            );
        }
        // Another route keeps the body limit.
        let raw = b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 65\r\n\r\n";
        assert_eq!(
            parse_with(raw, &LIMITS, streams).unwrap_err(),
            HttpError::BodyTooLarge
        );
        assert_eq!(HttpError::LengthRequired.status(), (411, "length_required"));
    }

    #[test]
    fn pipelined_requests_parse_one_at_a_time_in_order() {
        let buf = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\nHost: t\r\n";
        let (a, n) = parse(buf, &LIMITS).unwrap().unwrap();
        assert_eq!(
            (a.method.as_str(), a.path.as_str(), a.query.as_str()),
            ("GET", "/a", "x=1")
        );
        assert!(a.keep_alive);
        let (b, m) = parse(&buf[n..], &LIMITS).unwrap().unwrap();
        assert_eq!((b.path.as_str(), b.body.as_slice()), ("/b", &b"abc"[..]));
        assert_eq!(parse(&buf[n + m..], &LIMITS).unwrap(), None, "partial head");
    }

    #[test]
    fn if_none_match_uses_weak_comparison_over_lists() {
        let with = |values: &[&str]| {
            let raw: String = values
                .iter()
                .map(|v| format!("If-None-Match: {v}\r\n"))
                .collect();
            let text = format!("GET / HTTP/1.1\r\nHost: h\r\n{raw}\r\n");
            parse(text.as_bytes(), &LIMITS).unwrap().unwrap().0
        };
        let etag = "\"abc\"";
        for yes in [
            &["\"abc\""][..],
            &["W/\"abc\""],
            &["\"x\", \"abc\""],
            &["\"x\",W/\"abc\""],
            &["*"],
            &["\"x\"", "\"abc\""],
        ] {
            assert!(with(yes).none_match(etag), "{yes:?}");
        }
        for no in [&["\"abd\""][..], &["abc"], &["\"x\", \"ab"], &[]] {
            assert!(!with(no).none_match(etag), "{no:?}");
        }
    }

    #[test]
    fn a_body_is_awaited_until_complete() {
        let buf = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nab";
        assert_eq!(parse(buf, &LIMITS).unwrap(), None);
    }

    #[test]
    fn every_limit_and_bad_input_has_its_status() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (b"GARBAGE\r\n\r\n".to_vec(), 400),
            (b"GET x HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
            (
                b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n".to_vec(),
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec(),
                400,
            ),
            (b"GET / HTTP/1.1\r\nHost: t\r\nX: \xff\r\n\r\n".to_vec(), 400),
            (
                b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 65\r\n\r\n".to_vec(),
                413,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
                501,
            ),
            // RFC 9112 strictness: digits only, one Host, one framing.
            (
                b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +2\r\n\r\nab".to_vec(),
                400,
            ),
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400),
            (
                b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nab".to_vec(),
                400,
            ),
            (
                format!("GET / HTTP/1.1\r\nHost: t\r\n{}\r\n", "H: v\r\n".repeat(9)).into_bytes(),
                431,
            ),
            (
                format!("GET /{} HTTP/1.1\r\nHost: t\r\n", "a".repeat(1100)).into_bytes(),
                431,
            ),
        ];
        for (buf, status) in cases {
            let err = parse(&buf, &LIMITS).expect_err(&String::from_utf8_lossy(&buf));
            assert_eq!(err.status().0, status, "{err:?}");
        }
    }

    #[test]
    fn chunked_bodies_are_read_whole_and_bounded() {
        let head = "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
        let raw = format!("{head}5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-T: 1\r\n\r\nGET /next");
        let (r, used) = parse(raw.as_bytes(), &LIMITS).unwrap().unwrap();
        assert_eq!(r.body, b"hello, world");
        assert_eq!(&raw.as_bytes()[used..], b"GET /next", "stops at its end");
        // Any prefix is incomplete, not an error.
        let full = &raw.as_bytes()[..used];
        for cut in head.len()..full.len() {
            assert_eq!(parse(&full[..cut], &LIMITS).unwrap(), None, "cut at {cut}");
        }
        let status = |body: String| {
            let raw = format!("{head}{body}");
            parse(raw.as_bytes(), &LIMITS).unwrap_err().status().0
        };
        assert_eq!(status("zz\r\n".into()), 400, "not hex");
        assert_eq!(status("+5\r\nhello\r\n".into()), 400);
        assert_eq!(status("3\r\nabcXY".into()), 400, "no CRLF after the data");
        assert_eq!(status("41\r\n".into()), 413, "over the body limit (64)");
        assert_eq!(
            status(format!("1;{}\r\n", "e".repeat(2000))),
            400,
            "long line"
        );
        let padded = format!("1;{}\r\nx\r\n", "e".repeat(1000)).repeat(10);
        assert_eq!(
            status(padded),
            413,
            "encoding past twice the limit plus 4 KiB"
        );
        let te = |v: &str| {
            let raw =
                format!("POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: {v}\r\n\r\n0\r\n\r\n");
            parse(raw.as_bytes(), &LIMITS)
                .map(|r| r.is_some())
                .map_err(|e| e.status().0)
        };
        assert_eq!(te("gzip"), Err(501));
        assert_eq!(te("Chunked"), Ok(true));
    }

    #[test]
    fn absolute_form_targets_are_their_path_and_query() {
        let target = |raw: &str| {
            let text = format!("GET {raw} HTTP/1.1\r\nHost: example.com\r\n\r\n");
            let (r, _) = parse(text.as_bytes(), &LIMITS).unwrap().unwrap();
            (r.path, r.query)
        };
        assert_eq!(
            target("http://example.com/a?x=1"),
            ("/a".into(), "x=1".into())
        );
        assert_eq!(target("https://example.com"), ("/".into(), String::new()));
        assert_eq!(target("http://example.com?x=1"), ("/".into(), "x=1".into()));
        assert_eq!(target("/b"), ("/b".into(), String::new()));
        // HTTP/1.0 may leave Host out.
        assert!(parse(b"GET / HTTP/1.0\r\n\r\n", &LIMITS).unwrap().is_some());
    }

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        let ka = |raw: &[u8]| parse(raw, &LIMITS).unwrap().unwrap().0.keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn responses_encode_with_length_and_close() {
        let mut out = Vec::new();
        Response::error(404, "not_found", "no route").encode(true, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("content-type: application/json\r\n"));
        assert!(text.contains("connection: close\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
    }

    proptest! {
        /// Arbitrary bytes never panic the parser, and whatever it accepts
        /// lies within the buffer and the limits.
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(Some((req, n))) = parse(&buf, &LIMITS) {
                prop_assert!(n <= buf.len());
                prop_assert!(req.body.len() <= LIMITS.body_bytes_max);
                prop_assert!(req.headers.len() <= LIMITS.headers_max);
            }
        }
    }
}
