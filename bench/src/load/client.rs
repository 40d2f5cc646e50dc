//! One generator connection over a nonblocking socket: connect, the
//! WebSocket upgrade, frames parsed in place, masked sends, pongs.
//!
//! Frames are parsed straight out of the driver thread's receive buffer;
//! only a frame cut by the end of a read is copied (into `carry`), so the
//! hot path makes no allocation and no copy per frame. Sends go out at
//! once; what the socket does not take waits in `tx` (the driver then
//! watches for writability).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use anyhow::{bail, Context, Result};
use flate2::Decompress;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use super::wire::{self, Incoming, Wire};

/// An upgrade response head longer than this is refused.
const HEAD_BYTES_MAX: usize = 16 << 10;

/// A client connection.
pub struct Client {
    sock: TcpStream,
    wire: Wire,
    /// The upgrade's `Sec-WebSocket-Key`, until the 101 arrives.
    key: Option<String>,
    /// The 101 arrived.
    upgraded: bool,
    /// Bytes of an incomplete frame (or response head) from earlier reads.
    carry: Vec<u8>,
    /// Bytes the socket has not taken yet.
    tx: Vec<u8>,
    /// permessage-deflate, when the server agreed to it.
    inflater: Option<(Decompress, Vec<u8>)>,
    deflate: bool,
    mask: [u8; 4],
}

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    /// The socket has nothing more for now.
    Drained,
    /// The server closed the connection (with its close code, if any).
    Closed(Option<u16>),
}

impl Client {
    /// Starts a nonblocking connect; the upgrade request is written once
    /// the socket is writable (see [`Client::connected`]).
    pub fn connect(addr: SocketAddr, wire: Wire, deflate: bool) -> io::Result<Client> {
        let SocketAddr::V4(v4) = addr else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "IPv4 addresses only",
            ));
        };
        // SAFETY: plain socket(2); the descriptor is owned by the stream below.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh socket nobody else owns.
        let sock = unsafe { TcpStream::from_raw_fd(fd) };
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `sa` is a valid sockaddr_in for the length given.
        let r = unsafe {
            libc::connect(
                fd,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        sock.set_nodelay(true)?;
        Ok(Client {
            sock,
            wire,
            key: None,
            upgraded: false,
            carry: Vec::new(),
            tx: Vec::new(),
            inflater: None,
            deflate,
            mask: rand::random(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Whether the server's 101 arrived.
    pub fn upgraded(&self) -> bool {
        self.upgraded
    }

    /// Whether bytes wait for the socket to take them.
    pub fn backlogged(&self) -> bool {
        !self.tx.is_empty()
    }

    /// The connect finished (the socket became writable): writes the
    /// upgrade request for `path`.
    pub fn connected(&mut self, path: &str) -> Result<()> {
        if let Some(e) = self.sock.take_error()? {
            bail!("connect: {e}");
        }
        let key = tungstenite::handshake::client::generate_key();
        let ext = if self.deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let addr = self.sock.peer_addr().context("connect")?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
        );
        self.key = Some(key);
        self.carry.reserve(512);
        self.write(req.as_bytes()).context("upgrade")
    }

    /// Writes `bytes` after whatever is still waiting.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if !self.tx.is_empty() {
            self.tx.extend_from_slice(bytes);
            return self.flush();
        }
        let sent = send(&self.sock, bytes)?;
        if sent < bytes.len() {
            self.tx.extend_from_slice(&bytes[sent..]);
        }
        Ok(())
    }

    /// Writes what waits, as far as the socket takes it.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.tx.is_empty() {
            return Ok(());
        }
        let sent = send(&self.sock, &self.tx)?;
        self.tx.drain(..sent);
        if self.tx.is_empty() {
            self.tx = Vec::new();
        }
        Ok(())
    }

    /// Frames `payload` as one masked text frame into `out` (cleared).
    pub fn frame_text(&self, payload: &[u8], out: &mut Vec<u8>) {
        frame(OpCode::Data(Data::Text), payload, self.mask, out);
    }

    /// Sends a close frame (normal closure); the socket closes on drop.
    pub fn close(&mut self, scratch: &mut Vec<u8>) {
        frame(
            OpCode::Control(Control::Close),
            &1000u16.to_be_bytes(),
            self.mask,
            scratch,
        );
        let _ = self.write(scratch);
    }

    /// Reads what the socket has (through `scratch`) and hands every
    /// complete message to `each`, in order.
    pub fn read(
        &mut self,
        scratch: &mut [u8],
        each: &mut impl FnMut(Incoming<'_>) -> Result<()>,
    ) -> Result<Got> {
        loop {
            let n = match self.sock.read(scratch) {
                Ok(0) => return Ok(Got::Closed(None)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Got::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => bail!("read: {e}"),
            };
            let closed = if self.carry.is_empty() {
                let used = self.parse(&scratch[..n], each)?;
                self.carry.extend_from_slice(&scratch[used.0..n]);
                used.1
            } else {
                let mut carry = std::mem::take(&mut self.carry);
                carry.extend_from_slice(&scratch[..n]);
                let used = self.parse(&carry, each);
                let used = match used {
                    Ok(u) => u,
                    Err(e) => {
                        self.carry = carry;
                        return Err(e);
                    }
                };
                carry.drain(..used.0);
                self.carry = carry;
                used.1
            };
            if let Some(code) = closed {
                return Ok(Got::Closed(code));
            }
            if self.carry.is_empty() && self.carry.capacity() > 64 << 10 {
                self.carry = Vec::new();
            }
            self.flush().context("write")?;
            if n < scratch.len() {
                return Ok(Got::Drained);
            }
        }
    }

    /// Parses `data`: the upgrade response (until it is read), then frames.
    /// How many bytes were used, and the close code if a close frame came.
    #[allow(clippy::type_complexity)]
    fn parse(
        &mut self,
        data: &[u8],
        each: &mut impl FnMut(Incoming<'_>) -> Result<()>,
    ) -> Result<(usize, Option<Option<u16>>)> {
        let mut at = 0;
        if self.key.is_some() {
            match self.upgrade_response(data)? {
                Some(used) => at = used,
                None => return Ok((0, None)),
            }
        }
        loop {
            let Some((header, head_len, len)) = wire::server_frame_header(&data[at..])? else {
                return Ok((at, None));
            };
            let start = at + head_len;
            let end = start + len as usize;
            if data.len() < end {
                return Ok((at, None));
            }
            at = end;
            let payload = &data[start..end];
            match header.opcode {
                OpCode::Data(Data::Text) if header.rsv1 => {
                    let (d, out) = self.inflater.as_mut().context("RSV1 without deflate")?;
                    wire::inflate(d, payload, out)?;
                    each(wire::classify(self.wire, out))?;
                }
                OpCode::Data(Data::Text) => {
                    if self.wire == Wire::SocketIo && payload == b"2" {
                        // Engine.IO ping: the pong is a text packet "3".
                        let mut f = Vec::new();
                        frame(OpCode::Data(Data::Text), b"3", self.mask, &mut f);
                        self.tx.extend_from_slice(&f);
                        continue;
                    }
                    each(wire::classify(self.wire, payload))?;
                }
                OpCode::Control(Control::Ping) => {
                    let mut f = Vec::new();
                    frame(OpCode::Control(Control::Pong), payload, self.mask, &mut f);
                    self.tx.extend_from_slice(&f);
                }
                OpCode::Control(Control::Close) => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    return Ok((at, Some(code)));
                }
                _ => {}
            }
        }
    }

    /// Reads the 101 at the start of `data`: the bytes it took, or `None`
    /// until the whole head is there.
    fn upgrade_response(&mut self, data: &[u8]) -> Result<Option<usize>> {
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            if data.len() > HEAD_BYTES_MAX {
                bail!("upgrade: response head too long");
            }
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 101") {
            bail!("upgrade refused: {}", head.lines().next().unwrap_or(""));
        }
        let key = self.key.take().expect("checked by the caller");
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes()).to_ascii_lowercase();
        if !head.contains(&format!("sec-websocket-accept: {accept}")) {
            bail!("upgrade: wrong Sec-WebSocket-Accept");
        }
        self.upgraded = true;
        if head.contains("permessage-deflate") {
            self.inflater = Some((Decompress::new(false), Vec::with_capacity(4096)));
        }
        Ok(Some(end + 4))
    }
}

/// Writes what the (nonblocking) socket takes of `bytes`: 0 when it is
/// full. (Rust programs ignore SIGPIPE: a closed peer is an error here.)
fn send(mut sock: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match sock.write(bytes) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A masked client frame of `payload` into `out` (cleared first).
fn frame(opcode: OpCode, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.clear();
    let header = FrameHeader {
        opcode,
        mask: Some(mask),
        ..FrameHeader::default()
    };
    let _ = header.format(payload.len() as u64, out);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}
