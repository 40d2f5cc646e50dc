//! The NATS client protocol, as much of it as a shard's [`super::Wire`]
//! speaks: what the server sends (`INFO`, `MSG`, `HMSG`, `PING`, `PONG`,
//! `+OK`, `-ERR`) parsed from a byte buffer, and what the client sends
//! (`CONNECT`, `PUB`, `SUB`, `UNSUB`, `PING`, `PONG`) written into one. No
//! I/O: bytes in, operations out, so every case is tested without a
//! server, and the parser is fuzzed.
//!
//! Invariant: the parser never reads past the bytes it was given, never
//! holds more than `CONTROL_LINE_MAX` of an unfinished control line or a
//! payload over its `payload_max`, and consumes exactly the bytes of each
//! operation it returns (an error leaves the connection to be dropped).

use bytes::{Buf, Bytes, BytesMut};

/// The longest control line (the line before a payload) accepted, in
/// bytes: nats-server's own default `max_control_line`.
pub const CONTROL_LINE_MAX: usize = 4096;

/// One operation from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOp {
    /// The server's description of itself (JSON), sent first.
    Info(Bytes),
    /// A message of subscription `sid`; `status` is a header status such
    /// as 503 (no responders), for an `HMSG`.
    Msg {
        subject: String,
        sid: u64,
        reply: Option<String>,
        status: Option<u16>,
        payload: Bytes,
    },
    Ping,
    Pong,
    Ok,
    /// The server refused something; it may close the connection next.
    Err(String),
}

/// Why the server's bytes cannot be parsed; the connection is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A control line longer than `CONTROL_LINE_MAX` without its end.
    #[error("a control line over {CONTROL_LINE_MAX} bytes")]
    LineTooLong,
    /// A payload larger than this connection accepts.
    #[error("a payload of {0} bytes, over the limit")]
    PayloadTooLarge(usize),
    /// Anything else that is not the protocol; the line, cut short.
    #[error("not NATS: {0:?}")]
    Malformed(String),
}

/// Parses one operation from the front of `buf`: `Ok(None)` when its bytes
/// are not all there yet (nothing is consumed), the operation otherwise
/// (its bytes consumed). `payload_max` bounds a message's payload.
pub fn parse(buf: &mut BytesMut, payload_max: usize) -> Result<Option<ServerOp>, ProtoError> {
    let Some(end) = memchr_crlf(buf) else {
        // (`+ 1`: the line's `\r` may have come without its `\n`.)
        if buf.len() > CONTROL_LINE_MAX + 1 {
            return Err(ProtoError::LineTooLong);
        }
        return Ok(None);
    };
    if end > CONTROL_LINE_MAX {
        return Err(ProtoError::LineTooLong);
    }
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| malformed(&buf[..end]))?;
    let (verb, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
    let rest = rest.trim();
    let op = match verb.to_ascii_uppercase().as_str() {
        "MSG" | "HMSG" => {
            let head = MsgHead::parse(rest, verb.len() == 4).ok_or_else(|| malformed(line))?;
            return take_msg(buf, end, head, payload_max);
        }
        "INFO" => ServerOp::Info(Bytes::copy_from_slice(rest.as_bytes())),
        "PING" if rest.is_empty() => ServerOp::Ping,
        "PONG" if rest.is_empty() => ServerOp::Pong,
        "+OK" if rest.is_empty() => ServerOp::Ok,
        "-ERR" => ServerOp::Err(rest.trim_matches('\'').to_string()),
        _ => return Err(malformed(line)),
    };
    buf.advance(end + 2);
    Ok(Some(op))
}

/// The control line of a `MSG` or `HMSG`.
struct MsgHead {
    subject: String,
    sid: u64,
    reply: Option<String>,
    header_len: usize,
    total_len: usize,
}

impl MsgHead {
    fn parse(rest: &str, headers: bool) -> Option<MsgHead> {
        let f: Vec<&str> = rest.split_ascii_whitespace().collect();
        let sizes = if headers { 2 } else { 1 };
        let named = match f.len().checked_sub(sizes)? {
            n @ (2 | 3) => n,
            _ => return None,
        };
        let number = |s: &str| -> Option<usize> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let total_len = number(f[f.len() - 1])?;
        let header_len = if headers { number(f[named])? } else { 0 };
        if header_len > total_len {
            return None;
        }
        Some(MsgHead {
            subject: f[0].to_string(),
            sid: number(f[1])? as u64,
            reply: (named == 3).then(|| f[2].to_string()),
            header_len,
            total_len,
        })
    }
}

fn take_msg(
    buf: &mut BytesMut,
    line_end: usize,
    head: MsgHead,
    payload_max: usize,
) -> Result<Option<ServerOp>, ProtoError> {
    if head.total_len > payload_max {
        return Err(ProtoError::PayloadTooLarge(head.total_len));
    }
    let start = line_end + 2;
    let need = start + head.total_len + 2;
    if buf.len() < need {
        buf.reserve(need - buf.len());
        return Ok(None);
    }
    if &buf[need - 2..need] != b"\r\n" {
        return Err(ProtoError::Malformed(format!(
            "a payload of {} bytes not followed by CRLF",
            head.total_len
        )));
    }
    let status = if head.header_len > 0 {
        header_status(&buf[start..start + head.header_len])
    } else {
        None
    };
    // Copied out (events are small): a payload kept by a slow reader
    // must not pin the connection's whole read buffer.
    let payload = Bytes::copy_from_slice(&buf[start + head.header_len..need - 2]);
    buf.advance(need);
    Ok(Some(ServerOp::Msg {
        subject: head.subject,
        sid: head.sid,
        reply: head.reply,
        status,
        payload,
    }))
}

/// The status of a header block's first line (`NATS/1.0 503`), if any.
fn header_status(block: &[u8]) -> Option<u16> {
    let first = block.split(|&b| b == b'\r').next()?;
    let text = std::str::from_utf8(first).ok()?;
    let code = text
        .strip_prefix("NATS/1.0")?
        .split_ascii_whitespace()
        .next()?;
    code.parse().ok()
}

fn memchr_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn malformed(line: impl AsRef<[u8]>) -> ProtoError {
    let line = line.as_ref();
    let cut = &line[..line.len().min(64)];
    ProtoError::Malformed(String::from_utf8_lossy(cut).into_owned())
}

/// A subject or queue name the protocol can carry: not empty, no
/// whitespace or control characters.
pub fn valid_subject(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b > b' ' && b != 0x7f)
}

/// What a client sends, written into a buffer.
pub mod write {
    use super::valid_subject;

    /// `CONNECT` with the client's options (`json`, an object).
    pub fn connect(out: &mut Vec<u8>, json: &str) {
        out.extend_from_slice(b"CONNECT ");
        out.extend_from_slice(json.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// `PUB subject [reply] len` and the payload.
    pub fn publish(out: &mut Vec<u8>, subject: &str, reply: Option<&str>, payload: &[u8]) {
        assert!(valid_subject(subject), "a subject without spaces");
        out.extend_from_slice(b"PUB ");
        out.extend_from_slice(subject.as_bytes());
        if let Some(reply) = reply {
            assert!(valid_subject(reply), "a reply subject without spaces");
            out.push(b' ');
            out.extend_from_slice(reply.as_bytes());
        }
        out.push(b' ');
        out.extend_from_slice(payload.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
    }

    /// `SUB subject [queue] sid`.
    pub fn subscribe(out: &mut Vec<u8>, subject: &str, queue: Option<&str>, sid: u64) {
        assert!(valid_subject(subject), "a subject without spaces");
        out.extend_from_slice(b"SUB ");
        out.extend_from_slice(subject.as_bytes());
        if let Some(queue) = queue {
            assert!(valid_subject(queue), "a queue group without spaces");
            out.push(b' ');
            out.extend_from_slice(queue.as_bytes());
        }
        out.push(b' ');
        out.extend_from_slice(sid.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// `UNSUB sid`.
    pub fn unsubscribe(out: &mut Vec<u8>, sid: u64) {
        out.extend_from_slice(format!("UNSUB {sid}\r\n").as_bytes());
    }

    pub fn ping(out: &mut Vec<u8>) {
        out.extend_from_slice(b"PING\r\n");
    }

    pub fn pong(out: &mut Vec<u8>) {
        out.extend_from_slice(b"PONG\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8]) -> Result<Vec<ServerOp>, ProtoError> {
        let mut buf = BytesMut::from(bytes);
        let mut ops = Vec::new();
        while let Some(op) = parse(&mut buf, 1 << 20)? {
            ops.push(op);
        }
        assert!(buf.is_empty(), "left: {buf:?}");
        Ok(ops)
    }

    fn msg(subject: &str, sid: u64, reply: Option<&str>, payload: &[u8]) -> ServerOp {
        ServerOp::Msg {
            subject: subject.into(),
            sid,
            reply: reply.map(Into::into),
            status: None,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn every_server_operation_parses() {
        let ops = all(b"INFO {\"max_payload\":1048576}\r\nPING\r\npong\r\n+OK\r\n-ERR 'Unknown Protocol Operation'\r\nMSG a.b 7 5\r\nhello\r\nMSG a.b 7 _INBOX.x 0\r\n\r\nmsg  c  12\t3\r\nx\r\n\r\n").unwrap();
        assert_eq!(
            ops,
            vec![
                ServerOp::Info(Bytes::from_static(b"{\"max_payload\":1048576}")),
                ServerOp::Ping,
                ServerOp::Pong,
                ServerOp::Ok,
                ServerOp::Err("Unknown Protocol Operation".into()),
                msg("a.b", 7, None, b"hello"),
                msg("a.b", 7, Some("_INBOX.x"), b""),
                msg("c", 12, None, b"x\r\n"),
            ]
        );
    }

    #[test]
    fn a_header_message_carries_its_status_and_payload() {
        let headers = b"NATS/1.0 503\r\n\r\n";
        let mut bytes = format!(
            "HMSG _INBOX.a.1 3 {} {}\r\n",
            headers.len(),
            headers.len() + 2
        )
        .into_bytes();
        bytes.extend_from_slice(headers);
        bytes.extend_from_slice(b"ok\r\n");
        let ops = all(&bytes).unwrap();
        assert_eq!(
            ops,
            vec![ServerOp::Msg {
                subject: "_INBOX.a.1".into(),
                sid: 3,
                reply: None,
                status: Some(503),
                payload: Bytes::from_static(b"ok"),
            }]
        );
        let plain = b"NATS/1.0\r\nK: v\r\n\r\n";
        let mut bytes = format!("HMSG s 1 r {} {}\r\n", plain.len(), plain.len()).into_bytes();
        bytes.extend_from_slice(plain);
        bytes.extend_from_slice(b"\r\n");
        let ServerOp::Msg {
            status,
            reply,
            payload,
            ..
        } = all(&bytes).unwrap().remove(0)
        else {
            panic!("not a message");
        };
        assert_eq!(
            (status, reply.as_deref(), payload.len()),
            (None, Some("r"), 0)
        );
    }

    #[test]
    fn an_operation_split_anywhere_waits_for_its_bytes() {
        let whole = b"MSG room.1 4 reply 11\r\nhello world\r\nPING\r\n";
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            let first = parse(&mut buf, 1 << 20).unwrap();
            if cut < 36 {
                assert_eq!(first, None, "cut at {cut}");
                assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
                buf.extend_from_slice(&whole[cut..]);
                assert_eq!(
                    parse(&mut buf, 1 << 20).unwrap(),
                    Some(msg("room.1", 4, Some("reply"), b"hello world"))
                );
            }
        }
    }

    #[test]
    fn bad_input_is_refused() {
        let cases: [(&[u8], ProtoError); 7] = [
            (b"HELLO\r\n", ProtoError::Malformed("HELLO".into())),
            (b"MSG a 1\r\n", ProtoError::Malformed("MSG a 1".into())),
            (
                b"MSG a x 1\r\nz\r\n",
                ProtoError::Malformed("MSG a x 1".into()),
            ),
            (
                b"MSG a 1 -1\r\n",
                ProtoError::Malformed("MSG a 1 -1".into()),
            ),
            (
                b"MSG a 1 2\r\nabcd\r\n",
                ProtoError::Malformed("a payload of 2 bytes not followed by CRLF".into()),
            ),
            (
                b"HMSG a 1 5 2\r\n",
                ProtoError::Malformed("HMSG a 1 5 2".into()),
            ),
            (
                b"MSG a 1 2000000\r\n",
                ProtoError::PayloadTooLarge(2_000_000),
            ),
        ];
        for (bytes, want) in cases {
            let mut buf = BytesMut::from(bytes);
            assert_eq!(parse(&mut buf, 1 << 20), Err(want), "{bytes:?}");
        }
        let mut long = BytesMut::from(&[b'x'; CONTROL_LINE_MAX + 2][..]);
        assert_eq!(parse(&mut long, 1 << 20), Err(ProtoError::LineTooLong));
        let mut ping = BytesMut::from(&b"PING extra\r\n"[..]);
        assert!(parse(&mut ping, 1 << 20).is_err());
    }

    #[test]
    fn client_operations_are_written_as_the_protocol_says() {
        let mut out = Vec::new();
        write::connect(&mut out, r#"{"verbose":false}"#);
        write::subscribe(&mut out, "rk.c.room.1", None, 3);
        write::subscribe(&mut out, "rk.c.ops.2", Some("shards"), 4);
        write::publish(&mut out, "rk.c.room.1", None, b"ab");
        write::publish(&mut out, "rk.c.ops.2", Some("_INBOX.z.1"), b"");
        write::unsubscribe(&mut out, 3);
        write::ping(&mut out);
        write::pong(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "CONNECT {\"verbose\":false}\r\nSUB rk.c.room.1 3\r\nSUB rk.c.ops.2 shards 4\r\nPUB rk.c.room.1 2\r\nab\r\nPUB rk.c.ops.2 _INBOX.z.1 0\r\n\r\nUNSUB 3\r\nPING\r\nPONG\r\n"
        );
        assert!(!valid_subject("a b") && !valid_subject("") && valid_subject("a.*.>"));
    }

    proptest::proptest! {
        /// Any bytes, fed in any chunks: no panic, no operation made of
        /// bytes it was not given, and an error or a prefix consumed.
        #[test]
        fn random_bytes_never_panic(bytes: Vec<u8>, chunk in 1usize..64) {
            let mut buf = BytesMut::new();
            for piece in bytes.chunks(chunk) {
                buf.extend_from_slice(piece);
                loop {
                    let before = buf.len();
                    match parse(&mut buf, 4096) {
                        Ok(Some(_)) => proptest::prop_assert!(buf.len() < before),
                        Ok(None) => break,
                        Err(_) => return Ok(()),
                    }
                }
            }
        }

        /// Messages written as a server writes them come back whole,
        /// however the bytes are cut.
        #[test]
        fn messages_round_trip(
            payloads in proptest::collection::vec(proptest::collection::vec(0u8.., 0..300), 1..8),
            chunk in 1usize..50,
        ) {
            let mut wire = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                wire.extend_from_slice(format!("MSG s.{i} {i} {}\r\n", p.len()).as_bytes());
                wire.extend_from_slice(p);
                wire.extend_from_slice(b"\r\n");
            }
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(op) = parse(&mut buf, 4096).unwrap() {
                    got.push(op);
                }
            }
            let want: Vec<ServerOp> = payloads
                .iter()
                .enumerate()
                .map(|(i, p)| msg(&format!("s.{i}"), i as u64, None, p))
                .collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
