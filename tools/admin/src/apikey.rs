//! `rookery-admin api-key`: makes a new key for the server API. It prints
//! the key once (to stdout, for the backend's secret store) and the entry
//! to append to `--api-keys-file` after it, which
//! holds only the key's SHA-256: neither the file nor the server ever holds
//! the key itself. Needs no data directory.

use anyhow::{bail, Result};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Scopes a key may have (docs/operations.md tables them).
const SCOPES: [&str; 7] = [
    "publish", "rooms", "members", "users", "read", "backup", "stats",
];

/// A fresh key and its keys-file entry.
pub fn new_key(
    name: &str,
    scopes: &[String],
    requests_per_s: Option<u32>,
) -> Result<(String, String)> {
    let name_ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !name_ok {
        bail!("--name must be 1 to 64 of [A-Za-z0-9_.-]");
    }
    if scopes.is_empty() {
        bail!("--scopes is empty: the key could do nothing");
    }
    if let Some(s) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        bail!("unknown scope {s:?} (known: {})", SCOPES.join(", "));
    }
    if requests_per_s.is_some_and(|r| !(1..=1_000_000).contains(&r)) {
        bail!("--requests-per-s must be 1..=1000000");
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let key = format!("rk_{}", hex(&bytes));
    let quoted: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
    let mut entry = format!(
        "[[key]]\nname = {name:?}\nsha256 = \"{}\"\nscopes = [{}]\n",
        hex(&Sha256::digest(key.as_bytes())),
        quoted.join(", ")
    );
    if let Some(r) = requests_per_s {
        entry.push_str(&format!("requests_per_s = {r}\n"));
    }
    Ok((key, entry))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_and_its_entry_match() {
        let (key, entry) =
            new_key("billing", &["publish".into(), "read".into()], Some(50)).unwrap();
        assert!(key.starts_with("rk_") && key.len() == 67);
        let hash = hex(&Sha256::digest(key.as_bytes()));
        assert!(entry.contains(&format!("sha256 = \"{hash}\"")), "{entry}");
        assert!(entry.contains(r#"scopes = ["publish", "read"]"#), "{entry}");
        assert!(entry.contains("requests_per_s = 50"), "{entry}");
        assert!(!entry.contains(&key[3..]), "the entry never holds the key");
        let (other, _) = new_key("billing", &["read".into()], None).unwrap();
        assert_ne!(key, other);
    }

    #[test]
    fn bad_names_and_scopes_are_refused() {
        assert!(new_key("a b", &["read".into()], None).is_err());
        assert!(new_key("a", &[], None).is_err());
        assert!(new_key("a", &["read".into()], Some(0)).is_err());
        assert!(new_key("a", &["read".into()], Some(1_000_001)).is_err());
        let err = new_key("a", &["root".into()], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown scope \"root\""), "{err}");
    }
}
