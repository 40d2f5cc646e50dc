//! Rate limits as a request meets them, on one node or in a cluster.
//!
//! On one node every bucket is this process's (`crate::limits`). In a
//! cluster each key of a bucket (a user, an address, an account name) has
//! a home node, chosen by rendezvous hashing over the node list as a
//! room's owner is, and only the home keeps that key's bucket. So a user
//! whose WebSocket is on one node and whose HTTP requests land round-robin
//! on the others has one budget, as on one node. Another node asks the
//! home for tokens with one request (`Op::Take`).
//!
//! For the frequent buckets (sends, joins) a node takes a lease of up to
//! `burst / (2 × nodes)` tokens at once and spends it locally, so a busy
//! user costs one request per lease, not one per message. Leases hold at
//! most half a burst between them, so a user may at worst spend a burst
//! and a half at once (never more over time: every token came out of the
//! home's bucket). The rare buckets (logins, registrations, rooms,
//! invitations) are asked token by token: exact.
//!
//! While a key's home cannot be asked (down, late, NATS lost), the asking
//! node keeps that key's bucket itself: limits then hold per node, never
//! not at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cluster::ops::{self, Answer, Op};
use crate::cluster::Node;
use crate::limits::{key_of, Bucket, SendLimits};
use crate::shared::Shared;

/// How long a node waits for a key's home before it keeps the bucket
/// itself for this request.
const TAKE_TIMEOUT: Duration = Duration::from_millis(250);

/// Leased keys a node holds at most; past it, every lease is dropped (its
/// tokens are forfeit: a user may be refused early, never late).
const LEASES_MAX: usize = 100_000;

/// Takes one token of `key`'s `bucket`; when there is none, the
/// milliseconds until there will be.
pub async fn take(shared: &Shared, bucket: Bucket, key: u64) -> Result<(), u64> {
    let Some((node, home)) = remote_home(shared, bucket, key) else {
        return take_here(shared, bucket, key, 1).map(|_| ());
    };
    if node.leases.spend(bucket, key) {
        return Ok(());
    }
    let want = lease_len(shared, node, bucket);
    match ask(node, home, &Op::Take { bucket, key, want }).await {
        Some(Answer::Granted { tokens }) if tokens >= 1 => {
            node.leases.add(bucket, key, tokens.min(want) - 1);
            Ok(())
        }
        Some(Answer::Refused { retry_after_ms }) => Err(retry_after_ms),
        _ => take_here(shared, bucket, key, 1).map(|_| ()),
    }
}

/// Returns a token of `key`'s `bucket` (what it paid for did not happen).
pub async fn give_back(shared: &Shared, bucket: Bucket, key: u64) {
    if let Some((node, home)) = remote_home(shared, bucket, key) {
        if ask(node, home, &Op::GiveBack { bucket, key })
            .await
            .is_some()
        {
            return;
        }
    }
    give_back_here(shared, bucket, key);
}

/// A cluster node's login reservation: the tokens a login took from the
/// failed-login buckets of its address and of its account.
pub struct LoginReservation {
    ip: Option<u64>,
    account: u64,
}

/// Reserves a login for account `name` from `ip` in a cluster (the
/// counterpart of `LoginLimits::attempt`, whose buckets are this node's):
/// a token of each bucket; when either is empty, the milliseconds until
/// the login may be tried (counted as a refusal).
pub async fn reserve_login(
    shared: &Shared,
    ip: Option<IpAddr>,
    name: &str,
) -> Result<LoginReservation, u64> {
    let (ip, account) = (ip.map(|ip| key_of(&ip)), key_of(name));
    if let Some(ip) = ip {
        take(shared, Bucket::LoginIp, ip)
            .await
            .map_err(|ms| shared.logins.refuse(ms))?;
    }
    if let Err(ms) = take(shared, Bucket::LoginAccount, account).await {
        if let Some(ip) = ip {
            give_back(shared, Bucket::LoginIp, ip).await;
        }
        return Err(shared.logins.refuse(ms));
    }
    Ok(LoginReservation { ip, account })
}

/// Ends a login that did not fail on its password: its tokens go back.
pub async fn release_login(shared: &Shared, r: LoginReservation) {
    if let Some(ip) = r.ip {
        give_back(shared, Bucket::LoginIp, ip).await;
    }
    give_back(shared, Bucket::LoginAccount, r.account).await;
}

/// Takes up to `want` tokens of `key`'s `bucket` as this node keeps it:
/// how many, or the milliseconds until there is one. What a home answers
/// to `Op::Take`.
pub fn take_here(shared: &Shared, bucket: Bucket, key: u64, want: u32) -> Result<u32, u64> {
    let now = Instant::now();
    match token_bucket(shared, bucket) {
        Some(tokens) => tokens.take_up_to(key, want.max(1), now),
        None if shared.limits.may_register_key(key, now) => Ok(1),
        // A minute window: at most a minute.
        None => Err(60_000),
    }
}

/// Returns a token to `key`'s `bucket` as this node keeps it. (A
/// registration that failed later still counted, as on one node.)
pub fn give_back_here(shared: &Shared, bucket: Bucket, key: u64) {
    if let Some(tokens) = token_bucket(shared, bucket) {
        tokens.give_back(key, Instant::now());
    }
}

/// This node's token buckets of `bucket` (registrations are counted in a
/// minute window instead: `None`).
fn token_bucket(shared: &Shared, bucket: Bucket) -> Option<&SendLimits> {
    Some(match bucket {
        Bucket::Sends => &shared.sends,
        Bucket::Joins => &shared.rates.joins,
        Bucket::RoomsCreated => &shared.rates.rooms_created,
        Bucket::MemberAdds => &shared.rates.member_adds,
        Bucket::Directory => &shared.rates.directory,
        Bucket::LoginIp => shared.logins.bucket(true),
        Bucket::LoginAccount => shared.logins.bucket(false),
        Bucket::Registrations => return None,
    })
}

/// This node and the node that keeps `key`'s `bucket`, when that is
/// another: rendezvous hashing over the node list, with the bucket mixed
/// in so that one user's buckets spread. `None` on one node, or when the
/// bucket is this node's own.
fn remote_home(shared: &Shared, bucket: Bucket, key: u64) -> Option<(&Node, u32)> {
    let node = shared.cluster.as_deref()?;
    let tag = bucket as u64 + 1;
    let home = node.owner_of(key ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (home != node.cfg.node_id).then_some((node, home))
}

/// Tokens a node asks for at once: a lease for the frequent buckets, one
/// for the others.
fn lease_len(shared: &Shared, node: &Node, bucket: Bucket) -> u32 {
    match (bucket, token_bucket(shared, bucket)) {
        (Bucket::Sends | Bucket::Joins, Some(tokens)) => {
            (tokens.burst() / (2 * node.cfg.nodes.len() as u32)).max(1)
        }
        _ => 1,
    }
}

/// Asks `home`; its answer, or `None` when it cannot be had (the caller
/// keeps the bucket itself).
async fn ask(node: &Node, home: u32, op: &Op) -> Option<Answer> {
    if !node.connected() {
        return None;
    }
    match ops::ask_node(node, home, op, TAKE_TIMEOUT).await {
        Ok(answer) => Some(answer),
        Err(e) => {
            tracing::debug!(home, "a rate limit's home did not answer: {e}");
            None
        }
    }
}

/// Tokens this node holds of buckets other nodes keep.
#[derive(Default)]
pub struct Leases {
    held: Mutex<HashMap<(Bucket, u64), u32>>,
}

impl Leases {
    /// Spends a held token of `key`'s `bucket`, if there is one.
    fn spend(&self, bucket: Bucket, key: u64) -> bool {
        let Ok(mut held) = self.held.lock() else {
            return false;
        };
        match held.get_mut(&(bucket, key)) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                held.remove(&(bucket, key));
                true
            }
            None => false,
        }
    }

    /// Holds `n` more tokens of `key`'s `bucket`.
    fn add(&self, bucket: Bucket, key: u64, n: u32) {
        if n == 0 {
            return;
        }
        let Ok(mut held) = self.held.lock() else {
            return;
        };
        if held.len() >= LEASES_MAX {
            held.clear();
        }
        *held.entry((bucket, key)).or_default() += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_spent_token_by_token_and_bounded() {
        let leases = Leases::default();
        assert!(!leases.spend(Bucket::Sends, 1), "nothing held");
        leases.add(Bucket::Sends, 1, 2);
        leases.add(Bucket::Sends, 2, 0);
        assert!(!leases.spend(Bucket::Joins, 1), "per bucket");
        assert!(!leases.spend(Bucket::Sends, 2), "per key; none added");
        assert!(leases.spend(Bucket::Sends, 1));
        assert!(leases.spend(Bucket::Sends, 1));
        assert!(!leases.spend(Bucket::Sends, 1), "two were held");
        for key in 0..LEASES_MAX as u64 {
            leases.add(Bucket::Joins, key, 1);
        }
        leases.add(Bucket::Sends, 7, 1);
        let held = leases.held.lock().unwrap().len();
        assert_eq!(held, 1, "the full map was dropped before the add");
        assert!(leases.spend(Bucket::Sends, 7));
    }
}
