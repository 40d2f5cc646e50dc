//! The webhooks file (`--webhooks-file`): which receivers get which
//! events. Read at start (a bad file is a start-up error) and on SIGHUP (a
//! bad file keeps the webhooks that run and says why):
//!
//! ```toml
//! [[webhook]]
//! name = "backend"                      # names its cursor, logs and metrics
//! url = "https://app.example/hooks/rookery"
//! secret = "at least 16 characters"     # signs every request (HMAC-SHA256)
//! events = ["message", "edit", "delete", "join", "leave", "presence"]
//! batch_len_max = 100                   # events per request
//! backlog_bytes_max = 2147483648        # log a receiver may fall behind, per shard
//! timeout_ms = 10000                    # one request, connect to last byte
//! ```
//!
//! Invariant: every webhook in a loaded list was checked (unique name, an
//! http or https URL, a long enough secret, known events, limits in range).

use std::path::Path;

use serde::Deserialize;

/// Webhooks one file may name, at most.
pub const HOOKS_MAX: usize = 32;
/// The shortest secret accepted, in bytes.
const SECRET_BYTES_MIN: usize = 16;
/// A request's events, at most.
const BATCH_LEN_MAX: usize = 1000;
/// The smallest backlog bound (below one segment, a receiver that blinks
/// loses events).
const BACKLOG_BYTES_MIN: u64 = 1 << 20;

/// What a webhook may receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A new message.
    Message,
    /// A message's new body.
    Edit,
    /// A message deleted.
    Delete,
    /// A reaction put on or taken off a message.
    Reaction,
    /// Someone became a member of a room.
    Join,
    /// Someone stopped being a member (left, removed, banned).
    Leave,
    /// Someone came online in a room or went offline (best effort).
    Presence,
}

impl Kind {
    /// Its name in the file and in payloads.
    pub fn word(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Edit => "edit",
            Kind::Delete => "delete",
            Kind::Reaction => "reaction",
            Kind::Join => "join",
            Kind::Leave => "leave",
            Kind::Presence => "presence",
        }
    }
}

/// One receiver.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// Unique in the file: the key of its durable cursor.
    pub name: String,
    /// Where batches are POSTed.
    pub url: String,
    /// The HMAC key of the signature header.
    pub secret: String,
    /// What it receives (default: everything but presence).
    #[serde(default = "durable_kinds")]
    pub events: Vec<Kind>,
    /// Events per request, at most (1..=1000, default 100).
    #[serde(default = "batch_len_default")]
    pub batch_len_max: usize,
    /// How far behind a shard's log the receiver may fall before its
    /// cursor moves on and skips what it did not take (at least 1 MiB,
    /// default 2 GiB). The log up to this much is kept for it.
    #[serde(default = "backlog_default")]
    pub backlog_bytes_max: u64,
    /// One request's time, connect to last byte (100..=60,000 ms, default
    /// 10,000).
    #[serde(default = "timeout_default")]
    pub timeout_ms: u64,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Hook")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl Hook {
    /// Whether it receives `kind`.
    pub fn wants(&self, kind: Kind) -> bool {
        self.events.contains(&kind)
    }
}

fn durable_kinds() -> Vec<Kind> {
    vec![
        Kind::Message,
        Kind::Edit,
        Kind::Delete,
        Kind::Reaction,
        Kind::Join,
        Kind::Leave,
    ]
}
fn batch_len_default() -> usize {
    100
}
fn backlog_default() -> u64 {
    2 << 30
}
fn timeout_default() -> u64 {
    10_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    webhook: Vec<Hook>,
}

/// The webhooks `path` names (none without a file).
pub fn load(path: Option<&Path>) -> Result<Vec<Hook>, String> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--webhooks-file {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("--webhooks-file {}: {e}", path.display()))
}

/// The webhooks of a file's text, checked.
pub fn parse(text: &str) -> Result<Vec<Hook>, String> {
    let file: File = toml::from_str(text).map_err(|e| e.message().to_string())?;
    if file.webhook.len() > HOOKS_MAX {
        return Err(format!("more than {HOOKS_MAX} webhooks"));
    }
    let mut names = std::collections::HashSet::new();
    for hook in &file.webhook {
        check(hook).map_err(|e| format!("webhook {:?}: {e}", hook.name))?;
        if !names.insert(hook.name.to_ascii_lowercase()) {
            return Err(format!("webhook {:?} is named twice", hook.name));
        }
    }
    Ok(file.webhook)
}

fn check(hook: &Hook) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if !(1..=64).contains(&hook.name.len()) || !hook.name.bytes().all(allowed) {
        return Err("name must be 1..=64 bytes of [A-Za-z0-9_.-]".into());
    }
    let uri: ureq::http::Uri = hook
        .url
        .parse()
        .map_err(|e| format!("url {:?}: {e}", hook.url))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err(format!(
            "url {:?} is not an http:// or https:// URL",
            hook.url
        ));
    }
    if hook.secret.len() < SECRET_BYTES_MIN {
        return Err(format!("secret must be at least {SECRET_BYTES_MIN} bytes"));
    }
    if hook.events.is_empty() {
        return Err(
            "events must name at least one of message, edit, delete, join, leave, presence".into(),
        );
    }
    if !(1..=BATCH_LEN_MAX).contains(&hook.batch_len_max) {
        return Err(format!("batch_len_max must be 1..={BATCH_LEN_MAX}"));
    }
    if hook.backlog_bytes_max < BACKLOG_BYTES_MIN {
        return Err(format!(
            "backlog_bytes_max must be at least {BACKLOG_BYTES_MIN}"
        ));
    }
    if !(100..=60_000).contains(&hook.timeout_ms) {
        return Err("timeout_ms must be 100..=60000".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[webhook]]
        name = "a"
        url = "http://127.0.0.1:9/x"
        secret = "0123456789abcdef"
    "#;

    #[test]
    fn defaults_and_refusals() {
        let hooks = parse(GOOD).unwrap();
        assert_eq!(hooks.len(), 1);
        assert!(hooks[0].wants(Kind::Message) && !hooks[0].wants(Kind::Presence));
        assert_eq!(hooks[0].batch_len_max, 100);
        assert!(parse("").unwrap().is_empty());
        assert!(!format!("{:?}", hooks[0]).contains("0123456789abcdef"));
        let bad = [
            (GOOD.replace("\"a\"", "\"a b\""), "name"),
            (GOOD.replace("http://127.0.0.1:9/x", "ftp://h/x"), "http"),
            (GOOD.replace("http://127.0.0.1:9/x", "http:///x"), "url"),
            (GOOD.replace("0123456789abcdef", "short"), "secret"),
            (format!("{GOOD}events = []"), "events"),
            (format!("{GOOD}events = [\"typing\"]"), "unknown variant"),
            (format!("{GOOD}batch_len_max = 0"), "batch_len_max"),
            (format!("{GOOD}backlog_bytes_max = 5"), "backlog_bytes_max"),
            (format!("{GOOD}timeout_ms = 5"), "timeout_ms"),
            (format!("{GOOD}colour = 1"), "unknown field"),
            (format!("{GOOD}{}", GOOD.replace("\"a\"", "\"A\"")), "twice"),
        ];
        for (text, why) in bad {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
    }
}
