//! The least of RFC 6455 this baseline needs: client frames (masked,
//! unfragmented text, ping, close) parsed and unmasked in place, and the
//! header of a server frame.

/// A client frame found at the start of a buffer.
pub struct Frame {
    pub opcode: u8,
    /// Where the (unmasked) payload lies in the buffer.
    pub payload: std::ops::Range<usize>,
    /// Bytes the frame takes.
    pub len: usize,
}

pub const TEXT: u8 = 0x1;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// Frames larger than this close the connection.
pub const FRAME_BYTES_MAX: u64 = 1 << 20;

/// Parses (and unmasks, in place) the frame at the start of `b`:
/// `Ok(None)` until it is complete, `Err` for what this baseline refuses
/// (unmasked, fragmented, oversized).
pub fn parse(b: &mut [u8]) -> Result<Option<Frame>, &'static str> {
    if b.len() < 2 {
        return Ok(None);
    }
    let (first, second) = (b[0], b[1]);
    if first & 0x80 == 0 {
        return Err("fragmented frames are not spoken here");
    }
    if second & 0x80 == 0 {
        return Err("client frames must be masked");
    }
    let (mut at, len) = match second & 0x7f {
        126 if b.len() >= 4 => (4, u16::from_be_bytes([b[2], b[3]]) as u64),
        127 if b.len() >= 10 => (10, u64::from_be_bytes(b[2..10].try_into().expect("8"))),
        126 | 127 => return Ok(None),
        n => (2, n as u64),
    };
    if len > FRAME_BYTES_MAX {
        return Err("frame too large");
    }
    if b.len() < at + 4 {
        return Ok(None);
    }
    let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    at += 4;
    let end = at + len as usize;
    if b.len() < end {
        return Ok(None);
    }
    for (i, byte) in b[at..end].iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
    Ok(Some(Frame {
        opcode: first & 0x0f,
        payload: at..end,
        len: end,
    }))
}

/// Appends the header of an unmasked, final server frame of `len` bytes.
pub fn header(opcode: u8, len: usize, out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends a text frame of `payload`.
pub fn text(payload: &[u8], out: &mut Vec<u8>) {
    header(TEXT, payload.len(), out);
    out.extend_from_slice(payload);
}
