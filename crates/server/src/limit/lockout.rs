//! Per-account sign-in lockout (SPEC §1): `lockout_failures` failed sign-ins for one email
//! within `lockout_window_secs` lock password attempts for that email for `lockout_window_secs`
//! (429 `rate_limit_exceeded` with `Retry-After`). Counted per email whether or not an account
//! has it, so the answer never tells which emails exist; a successful sign-in clears the count.
//! Shared by every instance through Redis when configured (with the limiter's fallback to
//! per-instance state); per instance the table is bounded like the limiter's.
//!
//! Entries are keyed by a hash of the normalized email, never the raw input, and only a failed
//! sign-in (which already passed the per-IP login limit) creates one.

use super::{bounded, gcra::Micros, RateLimiter};
use crate::error::ApiError;
use axum::http::StatusCode;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Most emails tracked per instance.
const LOCKOUT_ENTRIES_MAX: usize = 100_000;

/// Failed sign-ins counted against an email.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// When the first failure of this window happened.
    since_us: Micros,
    /// Locked until then (0: not locked).
    locked_until_us: Micros,
}

/// The per-instance table.
#[derive(Default)]
pub struct LocalLockouts {
    by_email: Mutex<HashMap<[u8; 32], Failures>>,
}

impl LocalLockouts {
    /// Emails tracked.
    pub fn tracked(&self) -> usize {
        self.by_email.lock().len()
    }

    fn locked_for(&self, key: &[u8; 32], now: Micros) -> Option<Micros> {
        let map = self.by_email.lock();
        map.get(key).map(|f| f.locked_until_us - now).filter(|left| *left > 0)
    }

    fn fail(&self, key: [u8; 32], now: Micros, max: u32, window_us: Micros) {
        let mut map = self.by_email.lock();
        if !map.contains_key(&key) {
            let over = |f: &Failures| f.locked_until_us <= now && f.since_us + window_us <= now;
            bounded::make_room(&mut map, LOCKOUT_ENTRIES_MAX, over, |f| f.since_us);
        }
        let f = map.entry(key).or_insert(Failures { count: 0, since_us: now, locked_until_us: 0 });
        if f.since_us + window_us <= now {
            *f = Failures { count: 0, since_us: now, locked_until_us: 0 };
        }
        f.count += 1;
        if f.count >= max {
            f.locked_until_us = now + window_us;
            f.count = 0;
            f.since_us = now;
        }
    }

    fn clear(&self, key: &[u8; 32]) {
        self.by_email.lock().remove(key);
    }
}

fn email_key(email: &str) -> [u8; 32] {
    Sha256::digest(email.trim().to_lowercase().as_bytes()).into()
}

fn redis_keys(key: &[u8; 32]) -> (String, String) {
    let h = hex::encode(key);
    (format!("quota:lockout:failures:{h}"), format!("quota:lockout:locked:{h}"))
}

/// 429 `rate_limit_exceeded`, the same for every email.
fn locked(left_us: Micros) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
        "too many failed sign-ins for this account; password sign-in is paused",
    )
    .with_hint("retry after the number of seconds in Retry-After");
    e.retry_after = Some(((left_us.max(0) + 999_999) / 1_000_000).max(1) as u64);
    e
}

impl RateLimiter {
    /// Refuse a password attempt for `email` while it is locked.
    pub async fn lockout_check(&self, email: &str) -> Result<(), ApiError> {
        let key = email_key(email);
        let now = self.clock.now_us();
        if let Some(redis) = self.shared(now) {
            let (_, lock) = redis_keys(&key);
            if let Some(ttl_ms) = self.settle(now, redis.query(redis::cmd("PTTL").arg(&lock)).await) {
                return if ttl_ms > 0 { Err(locked(ttl_ms * 1000)) } else { Ok(()) };
            }
        }
        match self.lockouts.locked_for(&key, now) {
            Some(left) => Err(locked(left)),
            None => Ok(()),
        }
    }

    /// Count a failed sign-in for `email`.
    pub async fn lockout_failed(&self, email: &str, max: u32, window_us: Micros) {
        let key = email_key(email);
        let now = self.clock.now_us();
        if let Some(redis) = self.shared(now) {
            let (failures, lock) = redis_keys(&key);
            let counted = redis.lockout_fail(&failures, &lock, max, (window_us / 1000).max(1)).await;
            if self.settle(now, counted).is_some() {
                return;
            }
        }
        self.lockouts.fail(key, now, max, window_us);
    }

    /// A successful sign-in: the email's count starts over.
    pub async fn lockout_cleared(&self, email: &str) {
        let key = email_key(email);
        let now = self.clock.now_us();
        self.lockouts.clear(&key);
        if let Some(redis) = self.shared(now) {
            let (failures, lock) = redis_keys(&key);
            self.settle(now, redis.query(redis::cmd("DEL").arg(&failures).arg(&lock)).await);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use std::sync::Arc;
    use std::time::Duration;

    const WINDOW_US: Micros = 15 * 60 * 1_000_000;

    #[tokio::test]
    async fn ten_failures_lock_for_the_window_and_success_clears() {
        let clock = Arc::new(Clock::manual(1_000_000_000));
        let limiter = RateLimiter::local(clock.clone());
        for _ in 0..9 {
            limiter.lockout_failed("a@example.com", 10, WINDOW_US).await;
        }
        assert!(limiter.lockout_check("A@example.com ").await.is_ok(), "nine failures do not lock");
        limiter.lockout_failed("a@example.com", 10, WINDOW_US).await;
        let e = limiter.lockout_check("a@example.com").await.unwrap_err();
        assert_eq!((e.status.as_u16(), e.code, e.retry_after), (429, "rate_limit_exceeded", Some(900)));
        assert!(limiter.lockout_check("b@example.com").await.is_ok(), "other emails are not locked");
        clock.advance(Duration::from_secs(900));
        assert!(limiter.lockout_check("a@example.com").await.is_ok(), "the lock ends after the window");
        for _ in 0..9 {
            limiter.lockout_failed("a@example.com", 10, WINDOW_US).await;
        }
        limiter.lockout_cleared("a@example.com").await;
        limiter.lockout_failed("a@example.com", 10, WINDOW_US).await;
        assert!(limiter.lockout_check("a@example.com").await.is_ok(), "a success started the count over");
    }

    #[tokio::test]
    async fn failures_outside_the_window_do_not_add_up() {
        let clock = Arc::new(Clock::manual(1_000_000_000));
        let limiter = RateLimiter::local(clock.clone());
        for _ in 0..9 {
            limiter.lockout_failed("a@example.com", 10, WINDOW_US).await;
        }
        clock.advance(Duration::from_secs(901));
        limiter.lockout_failed("a@example.com", 10, WINDOW_US).await;
        assert!(limiter.lockout_check("a@example.com").await.is_ok());
    }
}
