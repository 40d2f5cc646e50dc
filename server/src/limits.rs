//! Limits shared by every shard: open connections per IP and registrations
//! per IP per minute (one small mutex each, taken once per connection or
//! registration), and sends per user (a token bucket per user, shared by
//! every shard since a user may send from several at once; the buckets are
//! spread over 64 stripes, each with its own mutex, so sends of different
//! users rarely meet on one lock, and a stripe is swept of full buckets
//! only when it has doubled since its last sweep: amortised O(1) per
//! send, however many users).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The token buckets a request may draw on. In a cluster each key of a
/// bucket is kept by one node (see `crate::rates`), so these name them on
/// the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    /// Messages per user (`--sends-per-user-per-s`).
    Sends,
    /// Joins and leaves per user (`--joins-per-user-per-s`).
    Joins,
    /// Rooms created per user (`--rooms-per-user-per-min`).
    RoomsCreated,
    /// Invitations per user (`--member-adds-per-user-per-min`).
    MemberAdds,
    /// Failed logins per client address.
    LoginIp,
    /// Failed logins per account name.
    LoginAccount,
    /// Registrations per client address (a minute window).
    Registrations,
    /// User searches and profile changes per user
    /// (`--directory-calls-per-user-per-min`).
    Directory,
}

/// The limits and their state.
pub struct IpLimits {
    connections_max: u32,
    registrations_per_min: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
    /// address key -> (start of the current minute window, registrations
    /// in it).
    registrations: Mutex<HashMap<u64, (Instant, u32)>>,
    /// Connections refused at the limit.
    pub connections_refused: AtomicU64,
    /// Registrations refused at the limit.
    pub registrations_refused: AtomicU64,
}

/// An open connection, counted until dropped.
pub struct Counted {
    limits: Arc<IpLimits>,
    ip: IpAddr,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Ok(mut open) = self.limits.open.lock() {
            if let Some(n) = open.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&self.ip);
                }
            }
        }
    }
}

impl IpLimits {
    pub fn new(connections_max: u32, registrations_per_min: u32) -> Arc<IpLimits> {
        Arc::new(IpLimits {
            connections_max,
            registrations_per_min,
            open: Mutex::default(),
            registrations: Mutex::default(),
            connections_refused: AtomicU64::new(0),
            registrations_refused: AtomicU64::new(0),
        })
    }

    /// Counts a new connection from `ip`; `None` when `ip` already has the
    /// maximum open (the caller counts the refusal it answers).
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Option<Counted> {
        let mut open = self.open.lock().ok()?;
        let n = open.entry(ip).or_default();
        if *n >= self.connections_max {
            return None;
        }
        *n += 1;
        Some(Counted {
            limits: self.clone(),
            ip,
        })
    }

    /// Whether the address whose key ([`key_of`]) is `ip` may register now
    /// (at most `registrations_per_min` in a minute window); counts the
    /// attempt when allowed.
    pub fn may_register_key(&self, ip: u64, now: Instant) -> bool {
        let Ok(mut regs) = self.registrations.lock() else {
            return false;
        };
        if regs.len() > 100_000 {
            // Bounded memory: forget windows that are over.
            regs.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let (start, count) = regs.entry(ip).or_insert((now, 0));
        if now.duration_since(*start) >= Duration::from_secs(60) {
            (*start, *count) = (now, 0);
        }
        if *count >= self.registrations_per_min {
            self.registrations_refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *count += 1;
        true
    }
}

/// The per-user limits on actions that cost other users or the server
/// more than the sender: each a token bucket per user, shared by every
/// shard and by HTTP and WebSocket.
pub struct UserRates {
    /// Joins and leaves (--joins-per-user-per-s, burst twice that): each
    /// announces presence to every member of the room.
    pub joins: SendLimits,
    /// Rooms created (--rooms-per-user-per-min): each is stored for good
    /// and listed to every user.
    pub rooms_created: SendLimits,
    /// Members added or given a role by an admin
    /// (--member-adds-per-user-per-min).
    pub member_adds: SendLimits,
    /// User searches and profile changes
    /// (--directory-calls-per-user-per-min): each reads or writes the
    /// directory's index.
    pub directory: SendLimits,
}

impl UserRates {
    pub fn new(
        joins_per_s: u32,
        rooms_per_min: u32,
        member_adds_per_min: u32,
        directory_per_min: u32,
    ) -> Arc<UserRates> {
        Arc::new(UserRates {
            joins: SendLimits::with_rate(joins_per_s as f64, 2 * joins_per_s),
            rooms_created: SendLimits::per_minute(rooms_per_min),
            member_adds: SendLimits::per_minute(member_adds_per_min),
            directory: SendLimits::per_minute(directory_per_min),
        })
    }
}

/// Sends per second per user: a token bucket per user, refilled at
/// `per_s` tokens a second up to `burst`.
pub struct SendLimits {
    per_s: f64,
    burst: f64,
    stripes: Box<[Mutex<Stripe>]>,
    /// Sends refused at the limit.
    pub refused: AtomicU64,
    /// Buckets looked at by sweeps (how much sweeping costs; tests check
    /// it stays proportional to the buckets made).
    pub swept: AtomicU64,
}

/// Some users' buckets.
struct Stripe {
    /// user -> (tokens, when last refilled).
    buckets: HashMap<u64, (f64, Instant)>,
    /// Sweep when this many buckets are held.
    sweep_at: usize,
}

const SEND_STRIPES: usize = 64;

/// Buckets a stripe holds before its first sweep (full buckets are
/// forgotten: a full bucket is the same as none). Past a sweep that kept
/// `n`, the next comes at `2n`: memory stays within twice the users who
/// sent within the last `burst / per_s` seconds.
const STRIPE_SWEEP_MIN: usize = 100_000 / SEND_STRIPES;

impl SendLimits {
    pub fn new(per_s: u32, burst: u32) -> Arc<SendLimits> {
        Arc::new(SendLimits::with_rate(per_s as f64, burst))
    }

    /// Token buckets refilled at `per_min` a minute, up to `per_min`.
    pub fn per_minute(per_min: u32) -> SendLimits {
        SendLimits::with_rate(per_min as f64 / 60.0, per_min)
    }

    fn with_rate(per_s: f64, burst: u32) -> SendLimits {
        SendLimits {
            per_s,
            burst: burst.max(1) as f64,
            stripes: (0..SEND_STRIPES)
                .map(|_| {
                    Mutex::new(Stripe {
                        buckets: HashMap::new(),
                        sweep_at: STRIPE_SWEEP_MIN,
                    })
                })
                .collect(),
            refused: AtomicU64::new(0),
            swept: AtomicU64::new(0),
        }
    }

    /// The stripe holding `key`'s bucket. Fibonacci hashing: consecutive
    /// ids land on different stripes.
    fn stripe(&self, key: u64) -> &Mutex<Stripe> {
        &self.stripes[(key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SEND_STRIPES]
    }

    /// A bucket's tokens at `now`: refilled since `at`, up to the burst.
    fn refilled(&self, (tokens, at): (f64, Instant), now: Instant) -> f64 {
        (tokens + now.saturating_duration_since(at).as_secs_f64() * self.per_s).min(self.burst)
    }

    /// Milliseconds until a bucket holding `tokens` has a whole one.
    fn wait_ms(&self, tokens: f64) -> u64 {
        (((1.0 - tokens) / self.per_s * 1000.0).ceil() as u64).max(1)
    }

    /// Whether `key` has a token now, without taking it; when not, the
    /// milliseconds until it will.
    pub fn peek(&self, key: u64, now: Instant) -> Result<(), u64> {
        let Ok(st) = self.stripe(key).lock() else {
            return Ok(());
        };
        let Some(&bucket) = st.buckets.get(&key) else {
            return Ok(());
        };
        let tokens = self.refilled(bucket, now);
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(self.wait_ms(tokens))
        }
    }

    /// Takes a token for one send by `user`; when there is none, the
    /// milliseconds until there will be one (and the refusal is counted).
    pub fn take(&self, user: u64, now: Instant) -> Result<(), u64> {
        self.take_up_to(user, 1, now).map(|_| ())
    }

    /// Takes between one and `want` tokens of `key`'s bucket (as many as
    /// it holds); when it holds none, the milliseconds until it will (and
    /// the refusal is counted).
    pub fn take_up_to(&self, key: u64, want: u32, now: Instant) -> Result<u32, u64> {
        debug_assert!(want >= 1);
        let Ok(mut st) = self.stripe(key).lock() else {
            return Ok(1);
        };
        if st.buckets.len() >= st.sweep_at {
            self.sweep(&mut st, now);
        }
        let bucket = st.buckets.entry(key).or_insert((self.burst, now));
        *bucket = (self.refilled(*bucket, now), now);
        if bucket.0 >= 1.0 {
            let got = bucket.0.floor().min(f64::from(want.max(1)));
            bucket.0 -= got;
            return Ok(got as u32);
        }
        let wait_ms = self.wait_ms(bucket.0);
        drop(st);
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(wait_ms)
    }

    /// The most tokens a bucket holds.
    pub fn burst(&self) -> u32 {
        self.burst as u32
    }

    /// Returns a token taken for `key` (up to the burst): what it paid for
    /// did not happen.
    pub fn give_back(&self, key: u64, now: Instant) {
        let Ok(mut st) = self.stripe(key).lock() else {
            return;
        };
        if let Some(bucket) = st.buckets.get_mut(&key) {
            *bucket = ((self.refilled(*bucket, now) + 1.0).min(self.burst), now);
        }
    }

    /// Forgets the stripe's full buckets; the next sweep comes when it has
    /// twice what is left (at least `STRIPE_SWEEP_MIN`).
    fn sweep(&self, st: &mut Stripe, now: Instant) {
        self.swept
            .fetch_add(st.buckets.len() as u64, Ordering::Relaxed);
        let (per_s, burst) = (self.per_s, self.burst);
        st.buckets.retain(|_, (tokens, at)| {
            *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_s < burst
        });
        st.sweep_at = (st.buckets.len() * 2).max(STRIPE_SWEEP_MIN);
    }

    /// Buckets held (for tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.lock().unwrap().buckets.len())
            .sum()
    }
}

/// Failed logins, per client address and per account name. Each login
/// takes a token from both buckets before its password is checked, and a
/// login finding either empty is refused before any hashing (so a
/// password-guessing loop costs the server no hashing once limited); a
/// login that succeeds, or ends for another reason than a wrong password,
/// gives its tokens back. Taking first means logins in flight count: eight
/// connections guessing at once cannot pass a limit of one eight times
/// over while their hashes run.
pub struct LoginLimits {
    per_ip: SendLimits,
    per_account: SendLimits,
    /// Logins refused at a limit.
    pub refused: AtomicU64,
}

/// A login's reservation in both buckets: given back on drop unless
/// [`LoginAttempt::failed`] spent it.
pub struct LoginAttempt {
    limits: Arc<LoginLimits>,
    ip: Option<u64>,
    account: u64,
    spent: bool,
}

impl LoginAttempt {
    /// The password was wrong: the tokens stay taken.
    pub fn failed(mut self) {
        self.spent = true;
    }
}

impl Drop for LoginAttempt {
    fn drop(&mut self) {
        if self.spent {
            return;
        }
        let now = Instant::now();
        if let Some(ip) = self.ip {
            self.limits.per_ip.give_back(ip, now);
        }
        self.limits.per_account.give_back(self.account, now);
    }
}

impl LoginLimits {
    pub fn new(per_ip_per_min: u32, per_account_per_min: u32) -> Arc<LoginLimits> {
        Arc::new(LoginLimits {
            per_ip: SendLimits::per_minute(per_ip_per_min),
            per_account: SendLimits::per_minute(per_account_per_min),
            refused: AtomicU64::new(0),
        })
    }

    /// Reserves a login for `name` from `ip`; when either bucket is empty,
    /// the milliseconds until it may be tried (counted as a refusal).
    pub fn attempt(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        name: &str,
        now: Instant,
    ) -> Result<LoginAttempt, u64> {
        let (ip, account) = (ip.map(|ip| key_of(&ip)), key_of(name));
        let ip_ok = ip.map_or(Ok(()), |ip| self.per_ip.peek(ip, now));
        let account_ok = self.per_account.peek(account, now);
        match (ip_ok, account_ok) {
            (Ok(()), Ok(())) => {}
            (Err(a), Err(b)) => return Err(self.refuse(a.max(b))),
            (Err(ms), _) | (_, Err(ms)) => return Err(self.refuse(ms)),
        }
        // Another shard may have taken the last token since the peek.
        if let Some(ip) = ip {
            self.per_ip.take(ip, now).map_err(|ms| self.refuse(ms))?;
        }
        if let Err(ms) = self.per_account.take(account, now) {
            if let Some(ip) = ip {
                self.per_ip.give_back(ip, now);
            }
            return Err(self.refuse(ms));
        }
        Ok(LoginAttempt {
            limits: self.clone(),
            ip,
            account,
            spent: false,
        })
    }

    /// Counts a refused login; `ms` passes through.
    pub fn refuse(&self, ms: u64) -> u64 {
        self.refused.fetch_add(1, Ordering::Relaxed);
        ms
    }

    /// The bucket of failed logins per address (`true`) or per account.
    pub fn bucket(&self, per_ip: bool) -> &SendLimits {
        if per_ip {
            &self.per_ip
        } else {
            &self.per_account
        }
    }
}

/// A bucket key for an address or a name: the same on every node of a
/// cluster (they run one build, and `DefaultHasher`'s default keys are
/// fixed), so that a key's bucket is found at one home.
pub fn key_of(v: &(impl std::hash::Hash + ?Sized)) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_follow_a_token_bucket_per_user() {
        let limits = SendLimits::new(10, 3);
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(limits.take(1, t), Ok(()), "the burst");
        }
        let retry = limits.take(1, t).unwrap_err();
        assert!((1..=100).contains(&retry), "{retry} ms until a token");
        assert_eq!(limits.take(2, t), Ok(()), "per user");
        // 10 per second: one token after 100 ms, not two.
        let later = t + Duration::from_millis(100);
        assert_eq!(limits.take(1, later), Ok(()));
        assert!(limits.take(1, later).is_err());
        // Refills stop at the burst.
        let much_later = t + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limits.take(1, much_later), Ok(()));
        }
        assert!(limits.take(1, much_later).is_err());
        assert_eq!(limits.refused.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn many_users_cost_amortised_sweeps_and_idle_buckets_are_forgotten() {
        let limits = SendLimits::new(1, 2);
        let t = Instant::now();
        let users = 300_000u64;
        // Every bucket stays below full for two seconds: nothing to forget
        // yet, so sweeps must not come at every send.
        for user in 0..users {
            assert_eq!(limits.take(user, t), Ok(()));
        }
        let swept = limits.swept.load(Ordering::Relaxed);
        assert!(
            swept <= 4 * users,
            "swept {swept} buckets for {users} users"
        );
        assert_eq!(limits.held() as u64, users);
        // Still limited per user while held.
        assert!(limits.take(7, t).is_ok() && limits.take(7, t).is_err());
        // A minute later those buckets are full again: the next sweep of a
        // stripe forgets them.
        let later = t + Duration::from_secs(60);
        for user in users..2 * users {
            assert_eq!(limits.take(user, later), Ok(()));
        }
        assert!(
            (limits.held() as u64) < users + users / 2,
            "{} buckets held after the old ones filled up",
            limits.held()
        );
    }

    #[test]
    fn connections_are_counted_until_dropped() {
        let limits = IpLimits::new(2, 1);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let a = limits.connect(ip).unwrap();
        let _b = limits.connect(ip).unwrap();
        assert!(limits.connect(ip).is_none());
        assert!(limits.connect(other).is_some(), "per address");
        drop(a);
        assert!(limits.connect(ip).is_some());
    }

    #[test]
    fn registrations_reset_each_minute() {
        let limits = IpLimits::new(1, 2);
        let ip: IpAddr = "::1".parse().unwrap();
        let ip = key_of(&ip);
        let t = Instant::now();
        assert!(limits.may_register_key(ip, t));
        assert!(limits.may_register_key(ip, t));
        assert!(!limits.may_register_key(ip, t + Duration::from_secs(30)));
        assert!(limits.may_register_key(ip, t + Duration::from_secs(61)));
        assert_eq!(limits.registrations_refused.load(Ordering::Relaxed), 1);
    }

    /// Logins in flight count against the limit; a success and an attempt
    /// that ends for another reason give their tokens back; either bucket
    /// empty refuses.
    #[test]
    fn login_attempts_reserve_tokens_and_successes_give_them_back() {
        let limits = LoginLimits::new(3, 2);
        let t = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        // Three guesses at once from one address, two accounts: the third
        // finds the address's bucket empty although none has failed yet.
        let a = limits.attempt(Some(ip), "ann", t).unwrap();
        let b = limits.attempt(Some(ip), "bob", t).unwrap();
        let c = limits.attempt(Some(ip), "bob", t).unwrap();
        assert!(limits.attempt(Some(ip), "cid", t).is_err(), "address spent");
        // A success gives back; failures keep the tokens spent.
        drop(a);
        b.failed();
        c.failed();
        assert!(limits.attempt(None, "bob", t).is_err(), "account spent");
        let d = limits.attempt(Some(ip), "dan", t).unwrap();
        d.failed();
        assert!(limits.attempt(Some(ip), "eve", t).is_err());
        assert_eq!(limits.refused.load(Ordering::Relaxed), 3);
        // Tokens come back with time: 3 a minute is one per 20 s.
        let later = t + Duration::from_secs(21);
        assert!(limits.attempt(Some(ip), "eve", later).is_ok());
    }
}
