//! The two protocols the load generator speaks, as pure functions over
//! bytes: Rookery's JSON frames (also spoken by the Node `ws` and `bare`
//! baselines) and Socket.IO 4 (Engine.IO v4 packets over WebSocket) for the
//! Socket.IO baseline; and the server frame header.
//!
//! Hot path without allocation: payloads are classified in place and the
//! few fields a receiver needs are scanned out of the JSON without building
//! a value.

use std::io::Write;

use anyhow::{bail, Context, Result};
use flate2::{Decompress, FlushDecompress};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Which protocol a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Rookery's JSON frames (docs/protocol.md); the Node `ws` baseline too.
    Rookery,
    /// Socket.IO 4 over a WebSocket.
    SocketIo,
}

/// What a received text message was, with the fields the generator needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A message event: its room, seq and body.
    Msg { room: u64, seq: u64, body: &'a [u8] },
    /// The ack of send `r#ref`, with the message's seq.
    Ack { r#ref: u64, seq: u64 },
    /// The answer to a join: the room's last seq at that moment.
    Joined { last_seq: u64 },
    /// An error frame.
    Error(&'a [u8]),
    /// Socket.IO: the Engine.IO open packet (`0{…}`).
    Open,
    /// Socket.IO: connected to the namespace (`40{…}`).
    Connected,
    /// Socket.IO: the namespace connection was refused (`44{…}`).
    Refused(&'a [u8]),
    /// Anything else (hello, presence, typing, Socket.IO handshake).
    Other,
}

/// The header of a server frame at the start of `b`: (header, its length,
/// payload length), or `None` until it is complete.
///
/// Written here rather than calling tungstenite's `FrameHeader::parse`: on
/// this path, once per received frame, that parse reads the `log` crate's
/// global level at every trace point, and under load that shared cache line
/// took about 10% of the generator's CPU (perf, 116k frames/s). Server
/// frames are simple: never masked, so 2, 4 or 10 bytes.
pub fn server_frame_header(b: &[u8]) -> Result<Option<(FrameHeader, usize, u64)>> {
    let (Some(&first), Some(&second)) = (b.first(), b.get(1)) else {
        return Ok(None);
    };
    if second & 0x80 != 0 {
        bail!("a masked frame from the server");
    }
    let (head_len, len) = match second & 0x7f {
        126 => match b.get(2..4) {
            Some(l) => (4, u16::from_be_bytes([l[0], l[1]]) as u64),
            None => return Ok(None),
        },
        127 => match b.get(2..10) {
            Some(l) => (10, u64::from_be_bytes(l.try_into().expect("8 bytes"))),
            None => return Ok(None),
        },
        n => (2, n as u64),
    };
    let opcode = OpCode::from(first & 0x0f);
    if matches!(
        opcode,
        OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_))
    ) {
        bail!("reserved opcode {}", first & 0x0f);
    }
    let header = FrameHeader {
        is_final: first & 0x80 != 0,
        rsv1: first & 0x40 != 0,
        rsv2: first & 0x20 != 0,
        rsv3: first & 0x10 != 0,
        opcode,
        mask: None,
    };
    Ok(Some((header, head_len, len)))
}

/// Inflates one compressed message into `out` (cleared first).
pub fn inflate(d: &mut Decompress, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    d.reset(false);
    for input in [data, &[0, 0, 0xff, 0xff][..]] {
        let mut input = input;
        loop {
            out.reserve(4096);
            let before = d.total_in();
            d.decompress_vec(input, out, FlushDecompress::Sync)
                .context("inflate")?;
            input = &input[(d.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
    }
    Ok(())
}

/// The number after `"key":` in a JSON text, if any.
pub fn num_field(json: &[u8], key: &str) -> Option<u64> {
    num_at(&json[find(json, key.as_bytes())?..])
}

/// The string after `"key":"` up to the next quote (bodies the generator
/// sends have no escapes).
pub fn str_field<'a>(json: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let at = find(json, key.as_bytes())?;
    let rest = json[at..].strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}

/// The position just after `"key":` in `json`.
fn find(json: &[u8], key: &[u8]) -> Option<usize> {
    let n = key.len() + 3;
    json.windows(n)
        .position(|w| w[0] == b'"' && &w[1..n - 2] == key && &w[n - 2..] == b"\":")
        .map(|at| at + n)
}

/// What a text payload is.
pub fn classify(wire: Wire, payload: &[u8]) -> Incoming<'_> {
    match wire {
        Wire::Rookery => classify_json(payload, None),
        Wire::SocketIo => classify_socket_io(payload),
    }
}

fn classify_json(json: &[u8], ack_ref: Option<u64>) -> Incoming<'_> {
    // Events from Rookery and the baselines begin `{"type":"msg",` and
    // carry their fields in a fixed order: read them front to back.
    if let Some(rest) = json.strip_prefix(br#"{"type":"msg","#) {
        return msg_fields(rest).unwrap_or(Incoming::Other);
    }
    let kind = str_field(json, "type");
    match kind {
        Some(b"msg") => msg_fields(json).unwrap_or(Incoming::Other),
        Some(b"ack") => match (
            ack_ref.or_else(|| num_field(json, "ref")),
            num_field(json, "seq"),
        ) {
            (Some(r#ref), Some(seq)) => Incoming::Ack { r#ref, seq },
            _ => Incoming::Other,
        },
        Some(b"joined") => Incoming::Joined {
            last_seq: num_field(json, "last_seq").unwrap_or(0),
        },
        Some(b"error") => Incoming::Error(json),
        _ => Incoming::Other,
    }
}

/// `room`, `seq` and `body` of a message event, scanning forward.
fn msg_fields(json: &[u8]) -> Option<Incoming<'_>> {
    // The usual shape, `"room":R,"seq":S,` right at the start, read without
    // a search (this runs once per delivery).
    if let Some(rest) = json.strip_prefix(br#""room":"#) {
        let (room, n) = num_len(rest)?;
        if let Some(rest) = rest[n..].strip_prefix(br#","seq":"#) {
            let (seq, n) = num_len(rest)?;
            let body = str_field(&rest[n..], "body").unwrap_or_default();
            return Some(Incoming::Msg { room, seq, body });
        }
    }
    let at = find(json, b"room")?;
    let room = num_at(&json[at..])?;
    let json = &json[at..];
    let at = find(json, b"seq")?;
    let seq = num_at(&json[at..])?;
    let json = &json[at..];
    let body = str_field(json, "body").unwrap_or_default();
    Some(Incoming::Msg { room, seq, body })
}

/// The number at the start of `s` and how many digits it took.
fn num_len(s: &[u8]) -> Option<(u64, usize)> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    Some((num_at(&s[..digits])?, digits))
}

/// The number at the start of `s` (digits only, no overflow).
pub fn num_at(s: &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    let mut digits = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add((c - b'0') as u64)?;
        digits += 1;
    }
    (digits > 0).then_some(n)
}

/// Socket.IO packets: `42["msg",{…}]` (event), `43N[{…}]` (ack of N).
fn classify_socket_io(p: &[u8]) -> Incoming<'_> {
    if let Some(rest) = p.strip_prefix(b"43") {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let id: Option<u64> = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|s| s.parse().ok());
        let json = &rest[digits..];
        return match id {
            // Join acks use id 0: `430[{"type":"joined",…}]`.
            Some(id) => classify_json(json, Some(id)),
            None => Incoming::Other,
        };
    }
    if let Some(rest) = p.strip_prefix(b"42") {
        return classify_json(rest, None);
    }
    if p.starts_with(b"40") {
        return Incoming::Connected;
    }
    if p.starts_with(b"44") {
        return Incoming::Refused(p);
    }
    if p.starts_with(b"0") {
        return Incoming::Open;
    }
    Incoming::Other
}

/// Writes a `send` whose body is `head` followed by `x`s up to `len` bytes
/// (the bodies the generator sends need no escaping).
pub fn write_send_padded(
    wire: Wire,
    out: &mut Vec<u8>,
    room: u64,
    r#ref: u64,
    vu: u64,
    head: &[u8],
    len: usize,
) {
    let _ = match wire {
        Wire::Rookery => write!(out, r#"{{"type":"send","room":{room},"body":""#),
        // Socket.IO ack ids start at 1 (0 is the join).
        Wire::SocketIo => write!(out, r#"42{}["send",{{"room":{room},"body":""#, r#ref),
    };
    out.extend_from_slice(head);
    out.resize(out.len() + len.saturating_sub(head.len()), b'x');
    let _ = match wire {
        Wire::Rookery => write!(out, r#"","client_id":"v{vu}-{}","ref":{}}}"#, r#ref, r#ref),
        Wire::SocketIo => write!(out, r#"","client_id":"v{vu}-{}"}}]"#, r#ref),
    };
}

/// Writes a `join` of `room` into `out`.
pub fn write_join(wire: Wire, out: &mut Vec<u8>, room: u64) {
    let _ = match wire {
        Wire::Rookery => write!(out, r#"{{"type":"join","room":{room},"ref":"join"}}"#),
        Wire::SocketIo => write!(out, r#"420["join",{{"room":{room}}}]"#),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rookery_frames_are_classified_without_parsing_everything() {
        let msg = br#"{"type":"msg","room":3,"seq":17,"from":2,"ts":5,"body":"t=123;xx"}"#;
        assert_eq!(
            classify(Wire::Rookery, msg),
            Incoming::Msg {
                room: 3,
                seq: 17,
                body: b"t=123;xx"
            }
        );
        let ack = br#"{"duplicate":false,"ref":9,"room":3,"seq":18,"ts":5,"type":"ack"}"#;
        assert_eq!(
            classify(Wire::Rookery, ack),
            Incoming::Ack { r#ref: 9, seq: 18 }
        );
        let joined = br#"{"last_seq":41,"online":[1],"room":3,"type":"joined"}"#;
        assert_eq!(
            classify(Wire::Rookery, joined),
            Incoming::Joined { last_seq: 41 }
        );
        assert!(matches!(
            classify(Wire::Rookery, br#"{"type":"error","code":"x"}"#),
            Incoming::Error(_)
        ));
        assert_eq!(
            classify(Wire::Rookery, br#"{"type":"hello","user":1}"#),
            Incoming::Other
        );
        assert_eq!(classify(Wire::Rookery, b"garbage"), Incoming::Other);
        // A key inside a string is not a field of another name.
        assert_eq!(num_field(br#"{"xseq":1,"seq":2}"#, "seq"), Some(2));
    }

    #[test]
    fn socket_io_packets_are_classified() {
        let msg = br#"42["msg",{"type":"msg","room":1,"seq":2,"body":"t=9;"}]"#;
        assert_eq!(
            classify(Wire::SocketIo, msg),
            Incoming::Msg {
                room: 1,
                seq: 2,
                body: b"t=9;"
            }
        );
        let ack = br#"4312[{"type":"ack","room":1,"seq":5}]"#;
        assert_eq!(
            classify(Wire::SocketIo, ack),
            Incoming::Ack { r#ref: 12, seq: 5 }
        );
        let joined = br#"430[{"type":"joined","room":1,"last_seq":7}]"#;
        assert_eq!(
            classify(Wire::SocketIo, joined),
            Incoming::Joined { last_seq: 7 }
        );
        assert_eq!(classify(Wire::SocketIo, br#"0{"sid":"x"}"#), Incoming::Open);
        assert_eq!(
            classify(Wire::SocketIo, br#"40{"sid":"y"}"#),
            Incoming::Connected
        );
        assert!(matches!(
            classify(Wire::SocketIo, br#"44{"message":"no"}"#),
            Incoming::Refused(_)
        ));
    }

    #[test]
    fn server_frame_headers_parse_like_tungstenite_formats_them() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 1 << 20] {
            for (opcode, rsv1) in [
                (OpCode::Data(Data::Text), false),
                (OpCode::Data(Data::Binary), true),
                (OpCode::Control(Control::Ping), false),
            ] {
                let mut head = Vec::new();
                let h = FrameHeader {
                    opcode,
                    rsv1,
                    ..FrameHeader::default()
                };
                h.format(len as u64, &mut head).unwrap();
                let (got, head_len, got_len) = server_frame_header(&head).unwrap().unwrap();
                assert_eq!((got, head_len, got_len), (h, head.len(), len as u64));
                assert!(server_frame_header(&head[..head.len() - 1])
                    .unwrap()
                    .is_none());
            }
        }
        assert!(server_frame_header(&[0x81, 0x80]).is_err(), "masked");
        assert!(
            server_frame_header(&[0x83, 0x00]).is_err(),
            "reserved opcode"
        );
    }

    #[test]
    fn sends_and_joins_are_written_per_wire() {
        let mut out = Vec::new();
        write_send_padded(Wire::Rookery, &mut out, 4, 7, 2, b"t=1;", 0);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["ref"], 7);
        assert_eq!(v["client_id"], "v2-7");
        out.clear();
        write_send_padded(Wire::SocketIo, &mut out, 4, 7, 2, b"t=1;", 0);
        assert!(
            out.starts_with(b"427[\"send\","),
            "{}",
            String::from_utf8_lossy(&out)
        );
        let v: serde_json::Value = serde_json::from_slice(&out[3..]).unwrap();
        assert_eq!(v[1]["room"], 4);
        out.clear();
        write_join(Wire::SocketIo, &mut out, 4);
        assert_eq!(out, br#"420["join",{"room":4}]"#);
        out.clear();
        write_send_padded(Wire::Rookery, &mut out, 4, 7, 2, b"t=1;", 10);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["body"], "t=1;xxxxxx");
        out.clear();
        write_send_padded(Wire::Rookery, &mut out, 4, 7, 2, b"t=123456;", 4);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["body"], "t=123456;",
            "a head longer than the payload is kept whole"
        );
    }
}
