//! What a cluster keeps in its JetStream key-value buckets, and under
//! which keys: the one place that knows the records' shapes.
//!
//! - The cluster's bucket (`rookery-<name>`): `nodes` (the node list),
//!   `user.<hex of the user's unique key>` → [`UserRecord`],
//!   `boot.<node>` (a node's start marker, see `replica.rs`).
//! - The sessions bucket (`rookery-<name>-sessions`, entries dropped by
//!   JetStream after the session lifetime): `s.<hex of the token hash>` →
//!   [`SessionRecord`] (deleted at logout), `boot.<node>`.
//!
//! Keys hex-encode what they name: user names may hold `.`, which NATS
//! reads as a token separator.

use rookery_engine::{Replicated, User};
use serde::{Deserialize, Serialize};

use crate::auth::hex;

/// A user as the cluster records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: u64,
    pub name: String,
    pub created_ms: u64,
    /// The argon2 PHC string; `None` for a JWT subject.
    pub hash: Option<String>,
}

impl UserRecord {
    pub fn to_user(&self) -> User {
        User {
            id: self.id,
            name: self.name.clone(),
            created_ms: self.created_ms,
            password_hash: self.hash.clone(),
        }
    }
}

/// A user's profile as the cluster records it (key `profile.<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRecord {
    pub user: u64,
    pub display_name: String,
    pub status: String,
    pub updated_ms: u64,
    /// The avatar's upload id, 32 hex digits (absent: none; records
    /// written before avatars have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
}

impl ProfileRecord {
    pub fn to_replicated(&self) -> Replicated {
        Replicated::Profile {
            user: self.user,
            display_name: self.display_name.clone(),
            status: self.status.clone(),
            updated_ms: self.updated_ms,
            avatar: self
                .avatar
                .as_deref()
                .and_then(|hex| u128::from_str_radix(hex, 16).ok()),
        }
    }
}

/// The key of user `user`'s profile.
pub fn profile_key(user: u64) -> String {
    format!("profile.{user}")
}

/// Whether `key` is a profile's.
pub fn is_profile_key(key: &str) -> bool {
    key.starts_with("profile.")
}

/// A session as the cluster records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user: u64,
    pub expires_ms: u64,
}

/// A record (or any message between nodes) as JSON bytes.
pub fn json_bytes(value: &impl Serialize) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(value).expect("records serialize"))
}

/// The key of the user whose unique key (see
/// `Directory::unique_user_key`) is `unique`.
pub fn user_key(unique: &str) -> String {
    format!("user.{}", hex(unique.as_bytes()))
}

/// The key of the session whose token hashes to `hash`.
pub fn session_key(hash: &[u8; 32]) -> String {
    format!("s.{}", hex(hash))
}

/// The key a public room's name is claimed under (the name in lower case,
/// as a single node keeps it unique).
pub fn room_name_key(name: &str) -> String {
    format!("room.{}", hex(name.to_ascii_lowercase().as_bytes()))
}

/// The key the direct-message room of users `a` and `b` is claimed under
/// (the lower id first), its value `{"room": id}`.
pub fn dm_key(a: u64, b: u64) -> String {
    format!("dm.{}.{}", a.min(b), a.max(b))
}

/// The key of the cluster's counter of `kind` ids ("user", "room").
pub fn id_counter_key(kind: &str) -> String {
    format!("ids.{kind}")
}

/// A node's start marker.
pub fn boot_key(node: u32) -> String {
    format!("boot.{node}")
}

/// The node a start marker's key names, if it is one.
pub fn parse_boot_key(key: &str) -> Option<u32> {
    key.strip_prefix("boot.")?.parse().ok()
}

/// The token hash a session key names, if it is one.
pub fn parse_session_key(key: &str) -> Option<[u8; 32]> {
    let digits = key.strip_prefix("s.")?;
    if digits.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash)
}

/// Whether a key of the cluster's bucket names a user.
pub fn is_user_key(key: &str) -> bool {
    key.starts_with("user.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_nats_keys_and_session_keys_round_trip() {
        let k = user_key("jwt:a.b");
        assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'));
        assert_eq!(k.matches('.').count(), 1, "{k}");
        assert!(is_user_key(&k));
        let hash = [0xab; 32];
        assert_eq!(parse_session_key(&session_key(&hash)), Some(hash));
        for bad in ["s.", "s.zz", "user.00", &format!("s.{}", "g".repeat(64))] {
            assert_eq!(parse_session_key(bad), None, "{bad}");
        }
        let r = UserRecord {
            id: 4,
            name: "Ann".into(),
            created_ms: 9,
            hash: None,
        };
        let u = r.to_user();
        assert_eq!((u.id, u.name.as_str(), u.created_ms), (4, "Ann", 9));
        assert!(u.external());
    }
}
