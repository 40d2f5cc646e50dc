//! API keys: how an application backend authenticates to the server API
//! (`/api/backend/...`, docs/api.md). Keys come from `--api-keys-file`, a
//! TOML file the operator writes (`rookery-admin api-key` makes an entry):
//!
//! ```toml
//! [[key]]
//! name = "billing"                  # shown in logs and errors
//! sha256 = "<64 hex digits>"        # SHA-256 of the key; the key itself is never stored
//! scopes = ["publish", "read"]      # what it may do
//! requests_per_s = 100              # its own rate (default 100)
//! burst = 200                       # (default: twice the rate)
//! ```
//!
//! A key is `rk_` and 64 hex digits (32 random bytes). The server keeps
//! only the hashes, so a leaked file or memory dump does not leak a key.
//! Looking a key up by its hash needs no constant-time comparison: the time
//! of a map lookup can at most tell how much of a hash matched, and a
//! hash's prefix says nothing of a key.
//!
//! Invariants: every key in the table was checked (unique name and hash,
//! known scopes, rates in range); a reload (SIGHUP) replaces the whole
//! table or, when the file is bad, keeps the old one and says why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a key opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Scope {
    /// Publish to a room and broadcast to many.
    Publish = 1,
    /// Create rooms.
    Rooms = 2,
    /// Add, remove, ban and unban members.
    Members = 4,
    /// Disconnect a user's connections.
    Users = 8,
    /// Read a room's history and who is online in it.
    Read = 16,
    /// Take online backups of the data directory (`--backup-dir`).
    Backup = 32,
    /// Read the dashboard's stats feed (with `--dashboard-access key`).
    Stats = 64,
}

impl Scope {
    const ALL: [Scope; 7] = [
        Scope::Publish,
        Scope::Rooms,
        Scope::Members,
        Scope::Users,
        Scope::Read,
        Scope::Backup,
        Scope::Stats,
    ];

    /// Its name in the keys file and in errors.
    pub fn word(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Rooms => "rooms",
            Scope::Members => "members",
            Scope::Users => "users",
            Scope::Read => "read",
            Scope::Backup => "backup",
            Scope::Stats => "stats",
        }
    }

    fn parse(word: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.word() == word)
    }
}

/// Keys one file may hold, at most.
pub const KEYS_MAX: usize = 1000;
/// A key's requests per second, at most.
const REQUESTS_PER_S_MAX: u32 = 1_000_000;
/// A key's rate when its entry does not say.
const REQUESTS_PER_S_DEFAULT: u32 = 100;
/// The prefix of every key.
pub const KEY_PREFIX: &str = "rk_";

/// One key, checked.
#[derive(Debug)]
pub struct Key {
    /// Its name: in logs, metrics and errors.
    pub name: Arc<str>,
    /// 8 hex digits of its name's SHA-256: what its posts' `client_id`s
    /// are kept under, apart from every other key's.
    pub tag: String,
    scopes: u8,
    requests_per_s: u32,
    burst: u32,
    /// Tokens left and when they were counted.
    bucket: Mutex<(f64, Instant)>,
}

impl Key {
    /// Requests it may make at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Whether it opens `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes & scope as u8 != 0
    }

    /// Takes one request's token at `now`; when there is none, the
    /// milliseconds until there will be.
    pub fn take(&self, now: Instant) -> Result<(), u64> {
        self.take_n(1, now).map_err(|wait| wait.unwrap_or(u64::MAX))
    }

    /// Takes `n` tokens at once at `now`, or none; when there are not
    /// enough, the milliseconds until there will be (`None`: never, `n`
    /// is more than the burst).
    pub fn take_n(&self, n: u32, now: Instant) -> Result<(), Option<u64>> {
        if n > self.burst {
            return Err(None);
        }
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let rate = f64::from(self.requests_per_s);
        let elapsed = now.saturating_duration_since(b.1).as_secs_f64();
        b.0 = (b.0 + elapsed * rate).min(f64::from(self.burst));
        b.1 = now;
        let want = f64::from(n);
        if b.0 >= want {
            b.0 -= want;
            return Ok(());
        }
        Err(Some((((want - b.0) / rate) * 1000.0).ceil().max(1.0) as u64))
    }
}

/// An entry of the keys file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    sha256: String,
    scopes: Vec<String>,
    requests_per_s: Option<u32>,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    key: Vec<Entry>,
}

type Table = HashMap<[u8; 32], Arc<Key>>;

/// The keys the server accepts, reloadable.
#[derive(Default)]
pub struct ApiKeys {
    path: Option<PathBuf>,
    table: RwLock<Arc<Table>>,
}

/// Why a presented key is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The server has no keys file: the server API is off.
    NoKeys,
    /// Not a key (`rk_` and 64 hex digits), or none the file holds.
    Unknown,
}

impl ApiKeys {
    /// The keys of `path` (none without one: the server API refuses every
    /// call). A bad file is an error naming the entry and what is wrong.
    pub fn load(path: Option<&Path>) -> Result<ApiKeys, String> {
        let table = match path {
            Some(p) => read_table(p)?,
            None => Table::new(),
        };
        Ok(ApiKeys {
            path: path.map(Path::to_path_buf),
            table: RwLock::new(Arc::new(table)),
        })
    }

    /// Reads the file again and, if it is good, serves its keys from now
    /// on; if not, keeps the keys it had. How many keys it now serves.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        let table = read_table(path)?;
        let n = table.len();
        let mut served = self.table.write().unwrap_or_else(|e| e.into_inner());
        // A key kept keeps what it spent: a reload refills no bucket.
        for (hash, key) in &table {
            if let Some(old) = served.get(hash) {
                let spent = *old.bucket.lock().unwrap_or_else(|e| e.into_inner());
                let mut b = key.bucket.lock().unwrap_or_else(|e| e.into_inner());
                *b = (spent.0.min(f64::from(key.burst)), spent.1);
            }
        }
        *served = Arc::new(table);
        Ok(n)
    }

    /// Whether a keys file was given.
    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// The key `presented` is.
    pub fn identify(&self, presented: &str) -> Result<Arc<Key>, Refusal> {
        if !self.enabled() {
            return Err(Refusal::NoKeys);
        }
        if !is_key_shaped(presented) {
            return Err(Refusal::Unknown);
        }
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let table = self.table.read().unwrap_or_else(|e| e.into_inner()).clone();
        table.get(&hash).cloned().ok_or(Refusal::Unknown)
    }
}

/// Whether `s` has a key's shape: the prefix and 64 lower-case hex digits.
pub fn is_key_shaped(s: &str) -> bool {
    s.strip_prefix(KEY_PREFIX).is_some_and(is_hex_64)
}

/// Whether `s` is 64 lower-case hex digits (a key's body, a SHA-256).
fn is_hex_64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn read_table(path: &Path) -> Result<Table, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--api-keys-file {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("--api-keys-file {}: {e}", path.display()))
}

/// The table a keys file describes, every entry checked.
fn parse(text: &str) -> Result<Table, String> {
    let file: File = toml::from_str(text).map_err(|e| {
        // One line (the error's own text quotes the file over several).
        let line = e
            .span()
            .map_or(0, |s| text[..s.start].matches('\n').count() + 1);
        format!("line {line}: {}", e.message())
    })?;
    if file.key.len() > KEYS_MAX {
        return Err(format!("{} keys; at most {KEYS_MAX}", file.key.len()));
    }
    let mut table = Table::new();
    let mut names = std::collections::HashSet::new();
    for (i, e) in file.key.iter().enumerate() {
        let key = check(e).map_err(|why| format!("key {} ({:?}): {why}", i + 1, e.name))?;
        if !names.insert(e.name.clone()) {
            return Err(format!("two keys are named {:?}", e.name));
        }
        let hash = decode_hash(&e.sha256).expect("checked");
        if table.insert(hash, Arc::new(key)).is_some() {
            return Err(format!("key {:?} has the hash of another key", e.name));
        }
    }
    Ok(table)
}

fn check(e: &Entry) -> Result<Key, String> {
    let name_ok = (1..=64).contains(&e.name.len())
        && e.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !name_ok {
        return Err("a name is 1 to 64 of [A-Za-z0-9_.-]".into());
    }
    if decode_hash(&e.sha256).is_none() {
        return Err("sha256 must be 64 lower-case hex digits".into());
    }
    if e.scopes.is_empty() {
        return Err("scopes is empty: the key could do nothing".into());
    }
    let mut scopes = 0u8;
    for word in &e.scopes {
        let s = Scope::parse(word).ok_or_else(|| {
            let known: Vec<_> = Scope::ALL.iter().map(|s| s.word()).collect();
            format!("unknown scope {word:?} (known: {})", known.join(", "))
        })?;
        scopes |= s as u8;
    }
    let requests_per_s = e.requests_per_s.unwrap_or(REQUESTS_PER_S_DEFAULT);
    if !(1..=REQUESTS_PER_S_MAX).contains(&requests_per_s) {
        return Err(format!("requests_per_s must be 1..={REQUESTS_PER_S_MAX}"));
    }
    let burst = e.burst.unwrap_or(requests_per_s.saturating_mul(2));
    if burst == 0 {
        return Err("burst must be >= 1".into());
    }
    Ok(Key {
        name: e.name.as_str().into(),
        tag: crate::auth::hex(&Sha256::digest(e.name.as_bytes())[..4]),
        scopes,
        requests_per_s,
        burst,
        bucket: Mutex::new((f64::from(burst), Instant::now())),
    })
}

fn decode_hash(hex: &str) -> Option<[u8; 32]> {
    if !is_hex_64(hex) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const KEY: &str = "rk_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn hash_of(key: &str) -> String {
        crate::auth::hex(&Sha256::digest(key.as_bytes()))
    }

    fn entry(name: &str, key: &str, scopes: &str, extra: &str) -> String {
        format!(
            "[[key]]\nname = {name:?}\nsha256 = {:?}\nscopes = [{scopes}]\n{extra}\n",
            hash_of(key)
        )
    }

    fn keys_of(text: &str) -> ApiKeys {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, text).unwrap();
        let keys = ApiKeys::load(Some(&path)).unwrap();
        // The file may go: the table is in memory.
        drop(dir);
        keys
    }

    #[test]
    fn a_key_is_found_by_its_hash_with_its_scopes() {
        let keys = keys_of(&entry("billing", KEY, r#""publish", "read""#, ""));
        let k = keys.identify(KEY).unwrap();
        assert_eq!(&*k.name, "billing");
        assert!(k.allows(Scope::Publish) && k.allows(Scope::Read));
        assert!(!k.allows(Scope::Members) && !k.allows(Scope::Rooms));
        let other = KEY.replace("ff", "fe");
        assert_eq!(keys.identify(&other).err(), Some(Refusal::Unknown));
        for not_a_key in ["", "rk_", &KEY[..40], &KEY.to_uppercase(), "Bearer x"] {
            assert_eq!(keys.identify(not_a_key).err(), Some(Refusal::Unknown));
        }
        let none = ApiKeys::load(None).unwrap();
        assert_eq!(none.identify(KEY).err(), Some(Refusal::NoKeys));
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let cases = [
            (
                entry("a", KEY, r#""publish", "root""#, ""),
                "unknown scope \"root\"",
            ),
            (entry("a", KEY, "", ""), "scopes is empty"),
            (entry("a b", KEY, r#""read""#, ""), "a name is 1 to 64"),
            (
                entry("a", KEY, r#""read""#, "requests_per_s = 0"),
                "requests_per_s must be",
            ),
            (entry("a", KEY, r#""read""#, "burst = 0"), "burst must be"),
            (
                entry("a", KEY, r#""read""#, "owner = \"x\""),
                "unknown field",
            ),
            (
                entry("a", KEY, r#""read""#, "")
                    + &entry("a", &KEY.replace('0', "1"), r#""read""#, ""),
                "two keys are named",
            ),
            (
                entry("a", KEY, r#""read""#, "") + &entry("b", KEY, r#""read""#, ""),
                "the hash of another key",
            ),
            (
                "[[key]]\nname = \"a\"\nsha256 = \"ABC\"\nscopes = [\"read\"]\n".into(),
                "sha256 must be",
            ),
        ];
        for (text, why) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(why), "{err:?} should say {why:?}");
        }
        assert!(parse("").unwrap().is_empty(), "an empty file: no keys");
    }

    #[test]
    fn a_reload_replaces_the_keys_or_keeps_them_when_the_file_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, entry("old", KEY, r#""read""#, "burst = 1")).unwrap();
        let keys = ApiKeys::load(Some(&path)).unwrap();
        keys.identify(KEY).unwrap().take(Instant::now()).unwrap();
        // A reload keeps what a key spent.
        assert_eq!(keys.reload(), Ok(1));
        assert!(keys.identify(KEY).unwrap().take(Instant::now()).is_err());
        let new_key = KEY.replace('0', "9");
        std::fs::write(&path, entry("new", &new_key, r#""read""#, "")).unwrap();
        assert_eq!(keys.reload(), Ok(1));
        assert!(keys.identify(KEY).is_err(), "a key taken out stops working");
        assert_eq!(&*keys.identify(&new_key).unwrap().name, "new");
        std::fs::write(&path, "[[key]]\nname = 1\n").unwrap();
        assert!(keys.reload().is_err());
        assert_eq!(&*keys.identify(&new_key).unwrap().name, "new", "kept");
    }

    #[test]
    fn each_key_has_its_own_rate() {
        let keys = keys_of(&entry(
            "k",
            KEY,
            r#""publish""#,
            "requests_per_s = 10\nburst = 3",
        ));
        let k = keys.identify(KEY).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            k.take(t0).unwrap();
        }
        let wait = k.take(t0).unwrap_err();
        assert!((1..=100).contains(&wait), "{wait} ms");
        k.take(t0 + Duration::from_millis(100)).unwrap();
        assert!(k.take(t0 + Duration::from_millis(100)).is_err());
        // Several at once, or none.
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(
            k.take_n(3, t1),
            Err(Some(100)),
            "two there, one to wait for"
        );
        k.take_n(2, t1).unwrap();
        assert_eq!(k.take_n(4, t1), Err(None), "more than the burst: never");
        assert_eq!(k.tag.len(), 8);
    }
}
