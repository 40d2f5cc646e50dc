//! A small blocking HTTP/1.1 client on one keep-alive connection, for the
//! benchmarks' setup steps (creating rooms, presenting tokens). Not on any
//! measured path.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub struct HttpClient {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl HttpClient {
    pub fn connect(addr: SocketAddr) -> Result<HttpClient> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(HttpClient { stream, reader })
    }

    /// One request; the status and the JSON body (`Null` when empty).
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            self.stream,
            "{method} {path} HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut status = 0u16;
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("{method} {path}: the server closed the connection");
            }
            if status == 0 {
                status = line
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("{method} {path}: bad status line {line:?}"))?;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut raw = vec![0; len];
        self.reader.read_exact(&mut raw)?;
        let json = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw).unwrap_or(Value::Null)
        };
        Ok((status, json))
    }
}

impl HttpClient {
    /// `POST /api/rooms` with a bearer token; the new room's id.
    pub fn create_room(&mut self, token: &str, name: &str) -> Result<u64> {
        let (status, v) = self.call(
            "POST",
            "/api/rooms",
            Some(token),
            Some(&serde_json::json!({"name": name})),
        )?;
        v["id"]
            .as_u64()
            .with_context(|| format!("creating room {name}: {status} {v}"))
    }

    /// Presents a token once (`GET /api/me`): a JWT user is created on
    /// first sight.
    pub fn present(&mut self, token: &str) -> Result<()> {
        let (status, v) = self.call("GET", "/api/me", Some(token), None)?;
        if status != 200 {
            bail!("presenting a token: {status} {v}");
        }
        Ok(())
    }

    /// Makes the token's user a member of the public `room`.
    pub fn join(&mut self, token: &str, room: u64) -> Result<()> {
        let (status, v) = self.call(
            "POST",
            &format!("/api/rooms/{room}/join"),
            Some(token),
            None,
        )?;
        if status != 200 {
            bail!("joining room {room}: {status} {v}");
        }
        Ok(())
    }
}

/// A JWT (HS256) for user `sub`, valid for a day.
pub fn jwt(secret: &str, sub: &str) -> Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 86_400;
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": sub, "exp": exp}),
        &key,
    )?)
}
