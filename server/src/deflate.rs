//! permessage-deflate (RFC 7692) for the WebSocket endpoint, free of I/O.
//!
//! tungstenite does not implement the extension (it refuses frames with
//! RSV1 set), so this module sits on both sides of it:
//! - [`negotiate`] reads the client's offers and writes the answer;
//! - [`Inflow`] sits between the socket and tungstenite: frames of
//!   compressed messages are collected, unmasked and inflated, and handed
//!   on as one plain (zero-masked) frame; every other byte passes through
//!   untouched, so tungstenite still does all the validation;
//! - [`deflate_frame`] compresses one outbound message into a frame with
//!   RSV1 set.
//!
//! The server always answers with `server_no_context_takeover`: each
//! outbound message is compressed on its own, with one compressor per
//! shard (no per-connection deflate state). A client that asks for a
//! server window below 15 bits gets it granted and every outbound message
//! uncompressed (the compressor only does 15). A client keeps its context
//! across messages unless it offered `client_no_context_takeover`; then its
//! inflater lives only while a message is being inflated.
//!
//! Invariant: inflated output never exceeds the message limit (a
//! decompression bomb is refused as soon as it passes it), and a malformed
//! compressed stream is an error, never a panic.

use std::cell::RefCell;
use std::io::Cursor;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

/// The negotiated parameters of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The client resets its compressor after every message.
    pub client_no_context_takeover: bool,
    /// The server may compress what it sends: false when the client asked
    /// for a window below 15 bits (`server_max_window_bits`), which
    /// miniz_oxide cannot compress for; the server then accepts the offer
    /// and sends every message uncompressed (RSV1 is per message, RFC 7692
    /// §6), and still inflates what the client sends.
    pub server_compresses: bool,
}

/// Why a compressed inbound message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    /// Inflated (or compressed) size over the message limit: close 1009.
    TooBig,
    /// Not a valid deflate stream, or frames out of order: close 1007/1002.
    Corrupt(&'static str),
}

/// Tail every sync-flushed deflate stream ends with (RFC 7692 §7.2.1).
const SYNC_TAIL: [u8; 4] = [0, 0, 0xff, 0xff];
/// Output grown per inflation step.
const INFLATE_STEP_BYTES: usize = 4096;

/// Picks the first acceptable `permessage-deflate` offer of a
/// `Sec-WebSocket-Extensions` header; the parameters and the response
/// header value, or `None` when no offer can be accepted.
pub fn negotiate(offers: Option<&str>) -> Option<(Negotiated, String)> {
    for offer in offers?.split(',') {
        let mut parts = offer.split(';').map(str::trim);
        if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
            continue;
        }
        if let Some((n, server_bits)) = accept_params(parts) {
            let mut answer = String::from("permessage-deflate; server_no_context_takeover");
            if let Some(bits) = server_bits {
                answer.push_str(&format!("; server_max_window_bits={bits}"));
            }
            if n.client_no_context_takeover {
                answer.push_str("; client_no_context_takeover");
            }
            return Some((n, answer));
        }
    }
    None
}

/// The parameters of one offer and the server window it asked for, or
/// `None` when one is unknown, repeated or malformed.
fn accept_params<'a>(params: impl Iterator<Item = &'a str>) -> Option<(Negotiated, Option<u8>)> {
    let mut seen: Vec<&str> = Vec::new();
    let mut n = Negotiated {
        client_no_context_takeover: false,
        server_compresses: true,
    };
    let mut server_bits = None;
    for p in params.filter(|p| !p.is_empty()) {
        let (name, value) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        let bits = |v: Option<&str>| v.and_then(|v| v.parse::<u8>().ok());
        match (name, value) {
            ("server_no_context_takeover", None) => {}
            ("client_no_context_takeover", None) => n.client_no_context_takeover = true,
            // flate2's pure Rust backend always compresses with 15 bits: a
            // smaller window is honoured by not compressing at all.
            ("server_max_window_bits", v) if bits(v).is_some_and(|b| (8..=15).contains(&b)) => {
                server_bits = bits(v);
                n.server_compresses = server_bits == Some(15);
            }
            // The client may use any window: the inflater takes up to 15.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", v) if bits(v).is_some_and(|b| (8..=15).contains(&b)) => {}
            _ => return None,
        }
    }
    Some((n, server_bits))
}

thread_local! {
    /// The shard's compressor (connections never keep outbound context;
    /// level 1: chat messages are small and latency matters more than the
    /// last percent of size).
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
    /// The shard's room to compress into (see [`deflate_whole`]).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The shard's inflater for clients without context takeover.
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// One outbound message as a compressed, unmasked frame (RSV1 set).
pub fn deflate_frame(payload: &[u8], opcode: Data) -> Frame {
    let mut out = COMPRESSOR.with(|c| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            deflate_whole(&mut c.borrow_mut(), payload, &mut scratch);
            let out = scratch.to_vec();
            if scratch.capacity() > SCRATCH_KEPT_BYTES_MAX {
                *scratch = Vec::new(); // a huge message's room is not kept
            }
            out
        })
    });
    if out.ends_with(&SYNC_TAIL) {
        out.truncate(out.len() - SYNC_TAIL.len());
    }
    let mut frame = Frame::message(out, OpCode::Data(opcode), true);
    frame.header_mut().rsv1 = true;
    frame
}

/// The shard's compression room is dropped after a message needed more.
const SCRATCH_KEPT_BYTES_MAX: usize = 1 << 20;

/// Compresses all of `input` into `out` (cleared first) with one
/// sync-flushed call of a freshly reset `c`, given room for deflate's
/// worst case (stored blocks add 5 bytes per block, fixed Huffman codes at
/// most one bit per byte), so the call never runs out of it.
///
/// One call, not a loop that grows the output: when a call fills the
/// output and the next one resumes the block, miniz_oxide (0.8, and 0.9.1,
/// the newest) sometimes loses bytes at levels 1 to 3. A 60,000-byte
/// random message came back as 58,258 bytes, and one 64 KiB slice of a
/// PDF in a thousand (Autobahn case 12.5.9) as 65,456; the tests below
/// hold both shapes.
fn deflate_whole(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) {
    let mut room = compressed_bytes_max(input.len());
    loop {
        c.reset();
        out.clear();
        out.reserve(room);
        // Compression of a slice into a Vec with room cannot fail: the only
        // errors are for misuse of the stream.
        let _ = c.compress_vec(input, out, FlushCompress::Sync);
        if c.total_in() == input.len() as u64 && out.len() < out.capacity() {
            return;
        }
        // Unreachable with the worst-case room; starting over with more
        // keeps the output whole even so.
        room *= 2;
    }
}

/// The most bytes a sane deflate encoder writes for `len` bytes of input
/// (see [`deflate_whole`]); compressed inbound messages are held to this
/// before they are inflated.
fn compressed_bytes_max(len: usize) -> usize {
    len + len / 8 + 1024
}

/// A compressed message being received: its frames' payloads, unmasked.
struct Message {
    opcode: Data,
    compressed: Vec<u8>,
}

/// The inbound side: turns the socket's bytes into bytes tungstenite can
/// read, inflating compressed messages on the way.
pub struct Inflow {
    negotiated: Negotiated,
    message_bytes_max: usize,
    /// Received bytes not yet handed on.
    input: Vec<u8>,
    /// Payload bytes of an uncompressed frame still to pass through.
    passing: u64,
    /// A compressed message in progress.
    message: Option<Message>,
    /// An uncompressed fragmented message is in progress (its continuation
    /// frames pass through).
    plain_fragments: bool,
    /// After a frame header tungstenite will refuse, everything passes
    /// through so that tungstenite reports the error.
    raw: bool,
    /// The client's inflater, with context takeover (allocated on first
    /// use).
    inflater: Option<Box<Decompress>>,
}

impl Inflow {
    pub fn new(negotiated: Negotiated, message_bytes_max: usize) -> Inflow {
        Inflow {
            negotiated,
            message_bytes_max,
            input: Vec::new(),
            passing: 0,
            message: None,
            plain_fragments: false,
            raw: false,
            inflater: None,
        }
    }

    /// Takes `bytes` from the socket and appends what tungstenite should
    /// read to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), InflateError> {
        self.input.extend_from_slice(bytes);
        let mut at = 0;
        let result = loop {
            if self.raw {
                out.extend_from_slice(&self.input[at..]);
                at = self.input.len();
                break Ok(());
            }
            if self.passing > 0 {
                let n = (self.input.len() - at).min(self.passing as usize);
                out.extend_from_slice(&self.input[at..at + n]);
                (at, self.passing) = (at + n, self.passing - n as u64);
                if self.passing > 0 {
                    break Ok(());
                }
                continue;
            }
            match self.next_frame(at, out) {
                Ok(Some(used)) => at += used,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.input.drain(..at);
        if self.input.capacity() > INFLATE_STEP_BYTES && self.input.is_empty() {
            self.input = Vec::new(); // idle connections hold no buffer
        }
        result
    }

    /// Handles the frame starting at `input[at..]`: the bytes used, or
    /// `None` when more are needed.
    fn next_frame(&mut self, at: usize, out: &mut Vec<u8>) -> Result<Option<usize>, InflateError> {
        let mut cursor = Cursor::new(&self.input[at..]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(_) => {
                self.raw = true; // tungstenite reports it
                return Ok(Some(0));
            }
        };
        let head_len = cursor.position() as usize;
        if header.rsv2 || header.rsv3 {
            // No extension here defines them (RFC 6455 §5.2): fail the
            // connection, compressed frame or not.
            return Err(InflateError::Corrupt("RSV2 or RSV3 set"));
        }
        let compressed = match header.opcode {
            OpCode::Data(Data::Text | Data::Binary) if header.rsv1 => {
                if self.message.is_some() || self.plain_fragments {
                    return Err(InflateError::Corrupt("a new message began inside another"));
                }
                true
            }
            OpCode::Data(Data::Continue) if self.message.is_some() => {
                if header.rsv1 {
                    return Err(InflateError::Corrupt("RSV1 set on a continuation frame"));
                }
                true
            }
            OpCode::Data(Data::Text | Data::Binary) => {
                if self.message.is_some() {
                    return Err(InflateError::Corrupt("a new message began inside another"));
                }
                self.plain_fragments = !header.is_final;
                false
            }
            OpCode::Data(Data::Continue) => {
                self.plain_fragments &= !header.is_final;
                false
            }
            _ => false,
        };
        if !compressed {
            out.extend_from_slice(&self.input[at..at + head_len]);
            self.passing = len;
            return Ok(Some(head_len));
        }
        if len > compressed_bytes_max(self.message_bytes_max) as u64 {
            return Err(InflateError::TooBig);
        }
        let end = at + head_len + len as usize;
        if self.input.len() < end {
            return Ok(None);
        }
        let mut payload = self.input[at + head_len..end].to_vec();
        if let Some(mask) = header.mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
        } else {
            self.raw = true; // unmasked: tungstenite refuses it
            out.extend_from_slice(&self.input[at..end]);
            return Ok(Some(end - at));
        }
        self.inflate_frame(&header, &payload, out)?;
        Ok(Some(end - at))
    }

    /// Takes one frame of a compressed message; on its last frame, the
    /// message is inflated whole (so the shard's shared inflater is never
    /// left mid-message) and goes to `out` as one plain frame.
    fn inflate_frame(
        &mut self,
        header: &FrameHeader,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        let mut message = match (self.message.take(), header.opcode) {
            (Some(m), _) => m,
            (None, OpCode::Data(opcode)) => Message {
                opcode,
                compressed: Vec::new(),
            },
            (None, OpCode::Control(_)) => unreachable!("only data frames are inflated"),
        };
        if message.compressed.len() + payload.len() > compressed_bytes_max(self.message_bytes_max) {
            return Err(InflateError::TooBig);
        }
        message.compressed.extend_from_slice(payload);
        if !header.is_final {
            self.message = Some(message);
            return Ok(());
        }
        let max = self.message_bytes_max;
        let mut inflated = Vec::new();
        let mut run = |d: &mut Decompress| -> Result<(), InflateError> {
            inflate(d, &message.compressed, &mut inflated, max)?;
            inflate(d, &SYNC_TAIL, &mut inflated, max)
        };
        if self.negotiated.client_no_context_takeover {
            INFLATER.with(|d| {
                let mut d = d.borrow_mut();
                d.reset(false);
                run(&mut d)
            })?;
        } else {
            let d = self
                .inflater
                .get_or_insert_with(|| Box::new(Decompress::new(false)));
            run(d)?;
        }
        let mut frame = Frame::message(inflated, OpCode::Data(message.opcode), true);
        frame.header_mut().mask = Some([0; 4]);
        frame
            .format(out)
            .map_err(|_| InflateError::Corrupt("frame encoding"))
    }
}

/// Inflates `input` onto `out`, refusing output beyond `max` bytes.
fn inflate(
    d: &mut Decompress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), InflateError> {
    loop {
        out.reserve(INFLATE_STEP_BYTES.min(max + 1 - out.len().min(max)));
        let before = d.total_in();
        let status = d
            .decompress_vec(input, out, FlushDecompress::Sync)
            .map_err(|_| InflateError::Corrupt("invalid deflate data"))?;
        input = &input[(d.total_in() - before) as usize..];
        if out.len() > max {
            return Err(InflateError::TooBig);
        }
        match status {
            // A final block ends this stream; a new one starts after it.
            Status::StreamEnd => {
                d.reset(false);
                if input.is_empty() {
                    return Ok(());
                }
            }
            _ if input.is_empty() && out.len() < out.capacity() => return Ok(()),
            Status::BufError if out.len() < out.capacity() => {
                return Err(InflateError::Corrupt("deflate data makes no progress"));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::coding::Control;

    fn client_frame(payload: &[u8], opcode: OpCode, fin: bool, rsv1: bool) -> Vec<u8> {
        let header = FrameHeader {
            is_final: fin,
            rsv1,
            opcode,
            mask: Some([1, 2, 3, 4]),
            ..FrameHeader::default()
        };
        let f = Frame::from_payload(header, payload.to_vec().into());
        let mut out = Vec::new();
        f.format(&mut out).unwrap();
        out
    }

    fn compressed(text: &[u8]) -> Vec<u8> {
        deflate_frame(text, Data::Text).into_payload().to_vec()
    }

    fn plain_frames(bytes: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
        let mut cur = Cursor::new(bytes);
        let mut frames = Vec::new();
        while let Some((mut h, len)) = FrameHeader::parse(&mut cur).unwrap() {
            let at = cur.position() as usize;
            let mut p = bytes[at..at + len as usize].to_vec();
            if let Some(m) = h.mask.take() {
                p.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i & 3]);
            }
            cur.set_position((at + len as usize) as u64);
            frames.push((h, p));
        }
        frames
    }

    const TAKEOVER: Negotiated = Negotiated {
        client_no_context_takeover: false,
        server_compresses: true,
    };

    #[test]
    fn negotiation_accepts_what_it_can_honour() {
        let (n, answer) = negotiate(Some("permessage-deflate; client_max_window_bits")).unwrap();
        assert!(!n.client_no_context_takeover);
        assert_eq!(answer, "permessage-deflate; server_no_context_takeover");
        assert!(n.server_compresses);
        let (n, answer) = negotiate(Some(
            "permessage-deflate; server_max_window_bits=20, permessage-deflate; client_no_context_takeover",
        ))
        .unwrap();
        assert!(n.client_no_context_takeover, "the second offer was taken");
        assert!(answer.ends_with("client_no_context_takeover"));
        // A small server window is accepted, and honoured by sending
        // uncompressed; 15 bits changes nothing.
        let (n, answer) = negotiate(Some(
            "permessage-deflate; server_max_window_bits=9; client_no_context_takeover",
        ))
        .unwrap();
        assert!(!n.server_compresses && n.client_no_context_takeover);
        assert_eq!(
            answer,
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=9; client_no_context_takeover"
        );
        let (n, _) = negotiate(Some("permessage-deflate; server_max_window_bits=15")).unwrap();
        assert!(n.server_compresses);
        for refused in [
            "x-webkit-deflate-frame",
            "permessage-deflate; mystery",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits=20",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits",
        ] {
            assert_eq!(negotiate(Some(refused)), None, "{refused}");
        }
        assert_eq!(negotiate(None), None);
    }

    #[test]
    fn compressed_messages_round_trip_across_fragments_and_context() {
        let mut inflow = Inflow::new(TAKEOVER, 1 << 20);
        let text = br#"{"type":"send","body":"hello hello hello hello hello"}"#;
        let mut out = Vec::new();
        // Two whole messages, then one split in three fragments fed a byte
        // at a time with a ping in the middle.
        for _ in 0..2 {
            let bytes = client_frame(&compressed(text), OpCode::Data(Data::Text), true, true);
            inflow.feed(&bytes, &mut out).unwrap();
        }
        let c = compressed(text);
        let (a, rest) = c.split_at(5);
        let (b, d) = rest.split_at(5);
        let mut bytes = client_frame(a, OpCode::Data(Data::Text), false, true);
        bytes.extend(client_frame(
            b"hi",
            OpCode::Control(Control::Ping),
            true,
            false,
        ));
        bytes.extend(client_frame(b, OpCode::Data(Data::Continue), false, false));
        bytes.extend(client_frame(d, OpCode::Data(Data::Continue), true, false));
        for byte in bytes {
            inflow.feed(&[byte], &mut out).unwrap();
        }
        let frames = plain_frames(&out);
        let kinds: Vec<_> = frames.iter().map(|(h, _)| h.opcode).collect();
        assert_eq!(
            kinds,
            [
                OpCode::Data(Data::Text),
                OpCode::Data(Data::Text),
                OpCode::Control(Control::Ping),
                OpCode::Data(Data::Text)
            ]
        );
        for (h, p) in &frames {
            assert!(!h.rsv1 && h.is_final);
            if h.opcode == OpCode::Data(Data::Text) {
                assert_eq!(p, text);
            }
        }
    }

    #[test]
    fn bombs_garbage_and_misplaced_bits_are_refused() {
        let bomb = compressed(&vec![b'a'; 200_000]);
        let mut inflow = Inflow::new(TAKEOVER, 64 << 10);
        let bytes = client_frame(&bomb, OpCode::Data(Data::Text), true, true);
        assert_eq!(
            inflow.feed(&bytes, &mut Vec::new()),
            Err(InflateError::TooBig)
        );

        let mut inflow = Inflow::new(TAKEOVER, 64 << 10);
        let bytes = client_frame(&[0xff; 40], OpCode::Data(Data::Text), true, true);
        assert!(matches!(
            inflow.feed(&bytes, &mut Vec::new()),
            Err(InflateError::Corrupt(_))
        ));

        let mut inflow = Inflow::new(TAKEOVER, 64 << 10);
        let mut bytes = client_frame(&compressed(b"x"), OpCode::Data(Data::Text), false, true);
        bytes.extend(client_frame(b"y", OpCode::Data(Data::Continue), true, true));
        assert!(matches!(
            inflow.feed(&bytes, &mut Vec::new()),
            Err(InflateError::Corrupt(_))
        ));
    }

    #[test]
    fn plain_frames_pass_through_byte_for_byte() {
        let mut inflow = Inflow::new(TAKEOVER, 1 << 20);
        let mut bytes = client_frame(b"plain", OpCode::Data(Data::Text), false, false);
        bytes.extend(client_frame(
            b" text",
            OpCode::Data(Data::Continue),
            true,
            false,
        ));
        bytes.extend(client_frame(
            &[7; 300],
            OpCode::Data(Data::Binary),
            true,
            false,
        ));
        let mut out = Vec::new();
        for chunk in bytes.chunks(7) {
            inflow.feed(chunk, &mut out).unwrap();
        }
        assert_eq!(out, bytes);
    }

    /// Deterministic bytes: random (incompressible), text-like (random
    /// letters, about 6 bits a byte, the shape of a long chat message),
    /// repetitive, or segments of the three (the shape of a PDF, whose
    /// slices lost bytes in Autobahn's case 12.5.9).
    fn sample(len: usize, kind: u8, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        match kind {
            0 => (0..len).map(|_| next() as u8).collect(),
            1 => (0..len).map(|_| b'a' + (next() % 26) as u8).collect(),
            2 => (0..len).map(|i| b"chat message "[i % 13]).collect(),
            _ => {
                let mut out = Vec::with_capacity(len);
                while out.len() < len {
                    let (kind, n) = (next() % 3, 1 + next() as usize % 40_000);
                    out.extend(sample(n.min(len - out.len()), kind as u8, next()));
                }
                out
            }
        }
    }

    /// Sizes around every boundary the codec or the frame layer has: the
    /// 125/126 and 65,535/65,536 length encodings, zlib's and miniz's
    /// block sizes, the 60,000-byte message that came back cut, and the
    /// 64 KiB default message limit.
    const SIZES: &[usize] = &[
        0, 1, 125, 126, 4095, 4097, 16_383, 16_385, 32_767, 32_769, 50_000, 58_000, 60_000, 61_548,
        64_000, 65_535, 65_536, 65_537, 100_000, 300_000,
    ];

    #[test]
    fn outbound_messages_of_every_size_inflate_whole() {
        for &len in SIZES {
            for kind in 0..4 {
                let data = sample(len, kind, len as u64);
                // The frame the server sends, and the same at other levels.
                let frame = deflate_frame(&data, Data::Binary);
                let mut other = Vec::new();
                deflate_whole(
                    &mut Compress::new(Compression::new(3), false),
                    &data,
                    &mut other,
                );
                for compressed in [frame.payload(), &other[..]] {
                    let mut d = Decompress::new(false);
                    let mut out = Vec::new();
                    inflate(&mut d, compressed, &mut out, 1 << 20).unwrap();
                    inflate(&mut d, &SYNC_TAIL, &mut out, 1 << 20).unwrap();
                    assert!(
                        out == data,
                        "len {len} kind {kind}: {} bytes back",
                        out.len()
                    );
                }
            }
        }
    }

    #[test]
    fn outbound_slices_of_a_mixed_corpus_inflate_whole() {
        let corpus = sample(4 << 20, 3, 42);
        for (i, slice) in corpus
            .chunks(64 << 10)
            .chain(corpus.chunks(60_000))
            .enumerate()
        {
            let frame = deflate_frame(slice, Data::Binary);
            let mut d = Decompress::new(false);
            let mut out = Vec::new();
            inflate(&mut d, frame.payload(), &mut out, 1 << 20).unwrap();
            inflate(&mut d, &SYNC_TAIL, &mut out, 1 << 20).unwrap();
            assert!(
                out == slice,
                "slice {i}: {} of {} bytes back",
                out.len(),
                slice.len()
            );
        }
    }

    /// What a client encoder sends for `data`: zlib-style sync-flushed raw
    /// deflate at `level`, split into frames of `fragment` bytes (0: one
    /// frame), masked.
    fn client_message(data: &[u8], level: u32, fragment: usize) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(level), false);
        let mut compressed = Vec::new();
        deflate_whole(&mut c, data, &mut compressed);
        compressed.truncate(compressed.len() - SYNC_TAIL.len());
        let chunks: Vec<&[u8]> = match fragment {
            0 => vec![&compressed[..]],
            n => compressed.chunks(n).collect(),
        };
        let mut bytes = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let opcode = if i == 0 { Data::Binary } else { Data::Continue };
            let fin = i + 1 == chunks.len();
            bytes.extend(client_frame(chunk, OpCode::Data(opcode), fin, i == 0));
        }
        bytes
    }

    #[test]
    fn inbound_messages_up_to_the_limit_arrive_whole_and_beyond_it_are_refused() {
        let max = 64 << 10;
        for len in [1, 60_000, max - 1, max, max + 1] {
            for kind in 0..3 {
                let data = sample(len, kind, 7 + len as u64);
                for (level, fragment) in [(0, 0), (1, 0), (6, 0), (9, 16), (6, 1300)] {
                    let bytes = client_message(&data, level, fragment);
                    for negotiated in [true, false] {
                        let negotiated = Negotiated {
                            client_no_context_takeover: negotiated,
                            server_compresses: true,
                        };
                        let mut inflow = Inflow::new(negotiated, max);
                        let mut out = Vec::new();
                        let fed = bytes
                            .chunks(8191)
                            .try_for_each(|chunk| inflow.feed(chunk, &mut out));
                        let what =
                            format!("len {len} kind {kind} level {level} fragment {fragment}");
                        if len > max {
                            assert_eq!(fed, Err(InflateError::TooBig), "{what}");
                            continue;
                        }
                        fed.unwrap();
                        let frames = plain_frames(&out);
                        assert_eq!(frames.len(), 1, "{what}");
                        assert!(frames[0].1 == data, "{what}: {} bytes", frames[0].1.len());
                    }
                }
            }
        }
    }

    #[test]
    fn outbound_frames_inflate_back() {
        let text = "abc".repeat(1000);
        let frame = deflate_frame(text.as_bytes(), Data::Text);
        assert!(frame.header().rsv1);
        assert!(frame.payload().len() < text.len() / 10);
        let mut d = Decompress::new(false);
        let mut out = Vec::new();
        inflate(&mut d, frame.payload(), &mut out, 1 << 20).unwrap();
        inflate(&mut d, &SYNC_TAIL, &mut out, 1 << 20).unwrap();
        assert_eq!(out, text.as_bytes());
    }
}
