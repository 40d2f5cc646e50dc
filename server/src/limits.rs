//! Limits shared by every shard: open connections per IP and registrations
//! per IP per minute (one small mutex each, taken once per connection or
//! registration), and sends per user (a token bucket per user, on a mutex
//! taken once per send: a user may send from several shards at once).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The limits and their state.
pub struct IpLimits {
    connections_max: u32,
    registrations_per_min: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
    /// ip -> (start of the current minute window, registrations in it).
    registrations: Mutex<HashMap<IpAddr, (Instant, u32)>>,
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

    /// Counts a new connection from `ip`; `None` (and counted as refused)
    /// when `ip` already has the maximum open.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Option<Counted> {
        let mut open = self.open.lock().ok()?;
        let n = open.entry(ip).or_default();
        if *n >= self.connections_max {
            drop(open);
            self.connections_refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(Counted {
            limits: self.clone(),
            ip,
        })
    }

    /// Whether `ip` may register now (at most `registrations_per_min` in a
    /// minute window); counts the attempt when allowed.
    pub fn may_register(&self, ip: IpAddr, now: Instant) -> bool {
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

/// Sends per second per user: a token bucket per user, refilled at
/// `per_s` tokens a second up to `burst`.
pub struct SendLimits {
    per_s: f64,
    burst: f64,
    /// user -> (tokens, when last refilled).
    buckets: Mutex<HashMap<u64, (f64, Instant)>>,
    /// Sends refused at the limit.
    pub refused: AtomicU64,
}

/// Users whose buckets are kept before full ones are forgotten.
const SEND_BUCKETS_MAX: usize = 100_000;

impl SendLimits {
    pub fn new(per_s: u32, burst: u32) -> Arc<SendLimits> {
        Arc::new(SendLimits {
            per_s: per_s as f64,
            burst: burst.max(1) as f64,
            buckets: Mutex::default(),
            refused: AtomicU64::new(0),
        })
    }

    /// Takes a token for one send by `user`; when there is none, the
    /// milliseconds until there will be one (and the refusal is counted).
    pub fn take(&self, user: u64, now: Instant) -> Result<(), u64> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() > SEND_BUCKETS_MAX {
            // Bounded memory: a full bucket is the same as no bucket.
            let (per_s, burst) = (self.per_s, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_s < burst
            });
        }
        let (tokens, at) = buckets.entry(user).or_insert((self.burst, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * self.per_s;
        (*tokens, *at) = ((*tokens + refill).min(self.burst), now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait_ms = ((1.0 - *tokens) / self.per_s * 1000.0).ceil() as u64;
        drop(buckets);
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(wait_ms.max(1))
    }
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
        assert_eq!(limits.connections_refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn registrations_reset_each_minute() {
        let limits = IpLimits::new(1, 2);
        let ip: IpAddr = "::1".parse().unwrap();
        let t = Instant::now();
        assert!(limits.may_register(ip, t));
        assert!(limits.may_register(ip, t));
        assert!(!limits.may_register(ip, t + Duration::from_secs(30)));
        assert!(limits.may_register(ip, t + Duration::from_secs(61)));
        assert_eq!(limits.registrations_refused.load(Ordering::Relaxed), 1);
    }
}
