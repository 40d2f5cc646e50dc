//! Log records and their on-disk framing.
//!
//! A frame is `[len u32 LE][crc32c u32 LE][rkyv payload][zero pad to 8]`.
//! `len` is the payload length (unpadded, > 0); the CRC covers the four `len`
//! bytes followed by the payload, so a damaged length is caught as surely as
//! a damaged body. Frames start 8-aligned, so an rkyv root read in place from
//! a page-aligned mapping is always aligned.
//!
//! Invariant: every frame this module produces passes [`check_frame`], and
//! [`check_frame`] never reads outside the slice it is given.

use rkyv::rancor;

/// Bytes of frame header before the payload.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Frames and payloads are aligned to this many bytes.
pub const FRAME_ALIGN: usize = 8;
/// Largest payload a frame may carry (a sanity bound checked on read).
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 16 << 20;

/// A chat message, the record that takes a room sequence number.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Message {
    /// Room id.
    pub room: u64,
    /// Dense per-room sequence number, from 1.
    pub seq: u64,
    /// Author's user id.
    pub sender: u64,
    /// Milliseconds since the Unix epoch, never decreasing within a room.
    pub ts_ms: u64,
    /// Client-chosen idempotency key; empty means none.
    pub client_id: String,
    /// Message body (UTF-8, usually JSON text chosen by the server).
    pub body: String,
}

/// A new body for an earlier message.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Edit {
    /// Room id.
    pub room: u64,
    /// Seq of the edited message.
    pub seq: u64,
    /// User who edited.
    pub by: u64,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The replacement body.
    pub body: String,
}

/// Removal of an earlier message's body (the seq stays taken).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Delete {
    /// Room id.
    pub room: u64,
    /// Seq of the deleted message.
    pub seq: u64,
    /// User who deleted.
    pub by: u64,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
}

/// A reaction put on (`on`) or taken off a message by a user.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct React {
    /// Room id.
    pub room: u64,
    /// Seq of the message reacted to.
    pub seq: u64,
    /// Who reacted.
    pub by: u64,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The reaction (an emoji, at most `EMOJI_BYTES_MAX` bytes).
    pub emoji: String,
    /// Put on (true) or taken off (false).
    pub on: bool,
}

/// A message that replies to an earlier one of its room.
///
/// Boxed in [`Record`]: the archived enum is as large as its largest
/// variant, and an archive's root is found from the end of its bytes, so a
/// variant larger than [`Message`] would make every record written before
/// it unreadable (pinned by `ARCHIVED_RECORD_BYTES`).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Reply {
    /// The message itself (its seq is the reply's own).
    pub message: Message,
    /// Seq of the message it answers (lower than its own).
    pub to: u64,
    /// Seq of the first message of the thread: `to` when `to` answers
    /// nothing, else `to`'s own thread. Threads are one level deep.
    pub thread: u64,
}

/// An upload a message carries, as it was when the message was posted (an
/// upload never changes: the message is read with no other lookup).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FileRef {
    /// The upload's id, big-endian (bytes, not a `u128`: an archived
    /// `u128` needs 16-byte alignment, and frames are 8-aligned).
    pub id: [u8; 16],
    /// Its file name (at most `UPLOAD_NAME_BYTES_MAX` bytes).
    pub name: String,
    /// Its sniffed content type.
    pub content_type: String,
    /// Bytes of the file.
    pub bytes: u64,
    /// An image's size in pixels (0 otherwise).
    pub width: u32,
    /// An image's height in pixels (0 otherwise).
    pub height: u32,
    /// Whether it has a thumbnail.
    pub thumb: bool,
}

impl FileRef {
    /// The upload's id.
    pub fn upload(&self) -> u128 {
        u128::from_be_bytes(self.id)
    }
}

impl ArchivedFileRef {
    /// The upload's id.
    pub fn upload(&self) -> u128 {
        u128::from_be_bytes(self.id)
    }
}

/// A message that carries uploads, and may reply to an earlier one
/// (`to` 0: it replies to nothing). Boxed in [`Record`], as [`Reply`] is.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Post {
    /// The message itself.
    pub message: Message,
    /// Seq of the message it answers, 0 for none.
    pub to: u64,
    /// Seq of its thread's first message, 0 when it answers none.
    pub thread: u64,
    /// The uploads it carries (at least one).
    pub files: Vec<FileRef>,
}

/// One log record.
///
/// Variants are only ever added at the end, and never larger than
/// [`Message`]: the layout of the records already written must not change.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Record {
    /// A message (takes a seq).
    Message(Message),
    /// An edit of a message.
    Edit(Edit),
    /// A deletion of a message.
    Delete(Delete),
    /// A message replying to an earlier one (takes a seq).
    Reply(Box<Reply>),
    /// A reaction put on or taken off a message.
    React(React),
    /// A message carrying uploads, a reply or not (takes a seq).
    Post(Box<Post>),
}

/// Bytes of the archived [`Record`] enum: what every frame's root is. A
/// change of this size is a change of the log format.
pub const ARCHIVED_RECORD_BYTES: usize = 56;
const _: () = assert!(std::mem::size_of::<ArchivedRecord>() == ARCHIVED_RECORD_BYTES);

impl Record {
    /// The room the record belongs to.
    pub fn room(&self) -> u64 {
        match self {
            Record::Message(m) => m.room,
            Record::Edit(e) => e.room,
            Record::Delete(d) => d.room,
            Record::Reply(r) => r.message.room,
            Record::React(r) => r.room,
            Record::Post(p) => p.message.room,
        }
    }

    /// `(to, thread)` of a reply; `None` for every other kind.
    pub fn reply(&self) -> Option<(u64, u64)> {
        match self {
            Record::Reply(r) => Some((r.to, r.thread)),
            Record::Post(p) if p.to != 0 => Some((p.to, p.thread)),
            _ => None,
        }
    }

    /// The message, for the record kinds that are one (a message or a
    /// reply).
    pub fn message(&self) -> Option<&Message> {
        match self {
            Record::Message(m) => Some(m),
            Record::Reply(r) => Some(&r.message),
            Record::Post(p) => Some(&p.message),
            Record::Edit(_) | Record::Delete(_) | Record::React(_) => None,
        }
    }

    /// The message, mutably (compaction strips deleted bodies).
    pub fn message_mut(&mut self) -> Option<&mut Message> {
        match self {
            Record::Message(m) => Some(m),
            Record::Reply(r) => Some(&mut r.message),
            Record::Post(p) => Some(&mut p.message),
            Record::Edit(_) | Record::Delete(_) | Record::React(_) => None,
        }
    }
}

impl ArchivedRecord {
    /// The room the record belongs to.
    pub fn room(&self) -> u64 {
        match self {
            ArchivedRecord::Message(m) => m.room.to_native(),
            ArchivedRecord::Edit(e) => e.room.to_native(),
            ArchivedRecord::Delete(d) => d.room.to_native(),
            ArchivedRecord::Reply(r) => r.message.room.to_native(),
            ArchivedRecord::React(r) => r.room.to_native(),
            ArchivedRecord::Post(p) => p.message.room.to_native(),
        }
    }

    /// The seq the record is about (its own for a message, the target's for
    /// an edit, delete or reaction).
    pub fn seq(&self) -> u64 {
        match self {
            ArchivedRecord::Message(m) => m.seq.to_native(),
            ArchivedRecord::Edit(e) => e.seq.to_native(),
            ArchivedRecord::Delete(d) => d.seq.to_native(),
            ArchivedRecord::Reply(r) => r.message.seq.to_native(),
            ArchivedRecord::React(r) => r.seq.to_native(),
            ArchivedRecord::Post(p) => p.message.seq.to_native(),
        }
    }

    /// The message, for the record kinds that are one (a message or a
    /// reply).
    pub fn message(&self) -> Option<&ArchivedMessage> {
        match self {
            ArchivedRecord::Message(m) => Some(m),
            ArchivedRecord::Reply(r) => Some(&r.message),
            ArchivedRecord::Post(p) => Some(&p.message),
            ArchivedRecord::Edit(_) | ArchivedRecord::Delete(_) | ArchivedRecord::React(_) => None,
        }
    }

    /// `(to, thread)` of a reply; `None` for every other kind.
    pub fn reply(&self) -> Option<(u64, u64)> {
        match self {
            ArchivedRecord::Reply(r) => Some((r.to.to_native(), r.thread.to_native())),
            ArchivedRecord::Post(p) if p.to != 0 => Some((p.to.to_native(), p.thread.to_native())),
            _ => None,
        }
    }

    /// The uploads a message carries (none for every other kind).
    pub fn files(&self) -> &[ArchivedFileRef] {
        match self {
            ArchivedRecord::Post(p) => &p.files,
            _ => &[],
        }
    }

    /// Copies the archived record out (for tools and tests, not hot paths).
    pub fn to_owned_record(&self) -> Record {
        rkyv::deserialize::<Record, rancor::Error>(self)
            .expect("deserializing a validated archive cannot fail")
    }
}

/// Rounds `n` up to the frame alignment.
pub const fn pad8(n: usize) -> usize {
    (n + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// Total bytes a frame with a payload of `payload_len` occupies.
pub const fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_BYTES + pad8(payload_len)
}

fn frame_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload)
}

/// Appends the frame of `record` to `out` and returns the frame's length.
///
/// The record is validated back from its own bytes before it is framed
/// ("check twice": once before writing, once after reading).
pub fn encode_frame(record: &Record, out: &mut Vec<u8>) -> usize {
    let payload =
        rkyv::to_bytes::<rancor::Error>(record).expect("serializing to memory cannot fail");
    debug_assert!(rkyv::access::<ArchivedRecord, rancor::Error>(&payload).is_ok());
    assert!(!payload.is_empty() && payload.len() <= FRAME_PAYLOAD_BYTES_MAX);
    let len_bytes = (payload.len() as u32).to_le_bytes();
    let start = out.len();
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&frame_crc(len_bytes, &payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out.resize(start + frame_len(payload.len()), 0);
    out.len() - start
}

/// Why the bytes at an offset are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer than 8 bytes remain, or the length word is zero (never-written
    /// space reads as zeros).
    End,
    /// The length word is larger than the bound or than what remains.
    BadLength(u32),
    /// The checksum does not match.
    BadCrc,
    /// The checksum matches but the payload is not a valid archive.
    BadArchive(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::End => write!(f, "end of data"),
            FrameError::BadLength(n) => write!(f, "bad record length {n}"),
            FrameError::BadCrc => write!(f, "record checksum mismatch"),
            FrameError::BadArchive(e) => write!(f, "record fails validation: {e}"),
        }
    }
}

/// Checks the frame at the start of `bytes` (which must start 8-aligned in
/// memory) and returns its payload and its total frame length.
pub fn check_frame(bytes: &[u8]) -> Result<(&[u8], usize), FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::End);
    }
    let len_bytes: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes);
    if len == 0 {
        return Err(FrameError::End);
    }
    let total = frame_len(len as usize);
    if len as usize > FRAME_PAYLOAD_BYTES_MAX || total > bytes.len() {
        return Err(FrameError::BadLength(len));
    }
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let payload = &bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len as usize];
    if frame_crc(len_bytes, payload) != crc {
        return Err(FrameError::BadCrc);
    }
    Ok((payload, total))
}

/// Validates a payload as an archived record and returns it, in place.
///
/// `payload` must be 8-aligned in memory (frames in a mapping always are).
pub fn access_record(payload: &[u8]) -> Result<&ArchivedRecord, FrameError> {
    if !(payload.as_ptr() as usize).is_multiple_of(FRAME_ALIGN) {
        return Err(FrameError::BadArchive("misaligned payload".into()));
    }
    rkyv::access::<ArchivedRecord, rancor::Error>(payload)
        .map_err(|e| FrameError::BadArchive(e.to_string()))
}

/// Checks a frame and validates its record: the full read-side check.
pub fn decode_frame(bytes: &[u8]) -> Result<(&ArchivedRecord, usize), FrameError> {
    let (payload, total) = check_frame(bytes)?;
    Ok((access_record(payload)?, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An 8-aligned copy of bytes, as a mapping or DMA buffer provides.
    pub(crate) fn aligned(bytes: &[u8]) -> rkyv::util::AlignedVec {
        let mut v = rkyv::util::AlignedVec::<16>::new();
        v.extend_from_slice(bytes);
        v
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        let s = ".{0,200}";
        prop_oneof![
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), s, s).prop_map(
                |(room, seq, sender, ts_ms, client_id, body)| Record::Message(Message {
                    room,
                    seq,
                    sender,
                    ts_ms,
                    client_id,
                    body
                })
            ),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), s).prop_map(
                |(room, seq, by, ts_ms, body)| Record::Edit(Edit {
                    room,
                    seq,
                    by,
                    ts_ms,
                    body
                })
            ),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(room, seq, by, ts_ms)| Record::Delete(Delete {
                    room,
                    seq,
                    by,
                    ts_ms
                })
            ),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                s,
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(room, seq, sender, body, to, thread)| Record::Reply(
                    Box::new(Reply {
                        message: Message {
                            room,
                            seq,
                            sender,
                            ts_ms: seq ^ to,
                            client_id: String::new(),
                            body
                        },
                        to,
                        thread
                    })
                )),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                ".{0,8}",
                any::<bool>()
            )
                .prop_map(|(room, seq, by, emoji, on)| Record::React(React {
                    room,
                    seq,
                    by,
                    ts_ms: seq ^ by,
                    emoji,
                    on
                })),
            (
                any::<u64>(),
                any::<u64>(),
                s,
                any::<u64>(),
                proptest::collection::vec((any::<u128>(), ".{0,20}", any::<u64>()), 1..4)
            )
                .prop_map(|(room, seq, body, to, files)| Record::Post(Box::new(
                    Post {
                        message: Message {
                            room,
                            seq,
                            sender: 1,
                            ts_ms: seq,
                            client_id: String::new(),
                            body
                        },
                        to,
                        thread: to / 2,
                        files: files
                            .into_iter()
                            .map(|(id, name, bytes)| FileRef {
                                id: u128::to_be_bytes(id),
                                name,
                                content_type: "image/png".into(),
                                bytes,
                                width: bytes as u32,
                                height: 3,
                                thumb: bytes % 2 == 0,
                            })
                            .collect(),
                    }
                ))),
        ]
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Frames written before replies existed (captured from that build)
    /// still encode to the same bytes and decode: adding a record kind
    /// must not change the format of the kinds already on disk.
    #[test]
    fn frames_of_the_first_format_are_unchanged() {
        let golden = [
            (
                Record::Message(Message {
                    room: 7,
                    seq: 3,
                    sender: 9,
                    ts_ms: 1_700_000_000_000,
                    client_id: "c1".into(),
                    body: "hello".into(),
                }),
                "380000008300ac6900000000000000000700000000000000030000000000000009000000000000000068e5cf8b0100006331ffffffffffff68656c6c6fffffff",
            ),
            (
                Record::Edit(Edit {
                    room: 7,
                    seq: 3,
                    by: 9,
                    ts_ms: 1_700_000_000_001,
                    body: "hi".into(),
                }),
                "380000006628369501000000000000000700000000000000030000000000000009000000000000000168e5cf8b0100006869ffffffffffff0000000000000000",
            ),
            (
                Record::Delete(Delete {
                    room: 7,
                    seq: 3,
                    by: 9,
                    ts_ms: 1_700_000_000_002,
                }),
                "3800000076b38df802000000000000000700000000000000030000000000000009000000000000000268e5cf8b01000000000000000000000000000000000000",
            ),
        ];
        for (record, frame) in golden {
            let mut out = Vec::new();
            encode_frame(&record, &mut out);
            assert_eq!(hex(&out), frame);
            let buf = aligned(&out);
            let (archived, _) = decode_frame(&buf).unwrap();
            assert_eq!(archived.to_owned_record(), record);
        }
    }

    #[test]
    fn a_reply_is_a_message_with_its_target_and_thread() {
        let r = Record::Reply(Box::new(Reply {
            message: Message {
                room: 7,
                seq: 5,
                sender: 9,
                ts_ms: 1,
                client_id: "k".into(),
                body: "a longer body than fits inline".into(),
            },
            to: 4,
            thread: 2,
        }));
        let mut out = Vec::new();
        encode_frame(&r, &mut out);
        let buf = aligned(&out);
        let (archived, _) = decode_frame(&buf).unwrap();
        assert_eq!((archived.room(), archived.seq()), (7, 5));
        assert_eq!(archived.reply(), Some((4, 2)));
        assert_eq!(
            archived.message().map(|m| m.body.as_str()),
            Some("a longer body than fits inline")
        );
        assert_eq!(r.message().map(|m| m.seq), Some(5));
    }

    proptest! {
        #[test]
        fn frames_round_trip(records in proptest::collection::vec(arb_record(), 1..20)) {
            let mut buf = Vec::new();
            let mut lens = Vec::new();
            for r in &records {
                lens.push(encode_frame(r, &mut buf));
            }
            let buf = aligned(&buf);
            let mut off = 0;
            for (r, len) in records.iter().zip(lens) {
                prop_assert_eq!(len % FRAME_ALIGN, 0);
                let (archived, total) = decode_frame(&buf[off..]).unwrap();
                prop_assert_eq!(total, len);
                prop_assert_eq!(&archived.to_owned_record(), r);
                prop_assert_eq!(archived.room(), r.room());
                off += total;
            }
            prop_assert_eq!(decode_frame(&buf[off..]).unwrap_err(), FrameError::End);
        }

        #[test]
        fn any_single_byte_flip_is_detected(r in arb_record(), pos in any::<prop::sample::Index>(), x in 1u8..=255) {
            let mut buf = Vec::new();
            let len = encode_frame(&r, &mut buf);
            let payload_end = FRAME_HEADER_BYTES + u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
            let i = pos.index(payload_end);
            buf[i] ^= x;
            let buf = aligned(&buf);
            prop_assert!(decode_frame(&buf[..len]).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let buf = aligned(&bytes);
            let _ = decode_frame(&buf);
        }
    }

    #[test]
    fn zero_length_is_end_and_oversize_is_bad_length() {
        let buf = aligned(&[0u8; 16]);
        assert_eq!(check_frame(&buf).unwrap_err(), FrameError::End);
        let mut b = vec![0u8; 16];
        b[0..4].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(
            check_frame(&aligned(&b)).unwrap_err(),
            FrameError::BadLength(100)
        );
        assert_eq!(check_frame(&aligned(&b[..7])).unwrap_err(), FrameError::End);
    }

    #[test]
    fn crc_valid_garbage_is_rejected_by_validation() {
        let payload = [0xffu8; 24];
        let len_bytes = (payload.len() as u32).to_le_bytes();
        let mut b = Vec::new();
        b.extend_from_slice(&len_bytes);
        b.extend_from_slice(&frame_crc(len_bytes, &payload).to_le_bytes());
        b.extend_from_slice(&payload);
        let b = aligned(&b);
        assert!(matches!(decode_frame(&b), Err(FrameError::BadArchive(_))));
    }
}
