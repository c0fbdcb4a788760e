//! Phase *limit* (DESIGN §1, SPEC §7): GCRA rate limits per API key, per (app, user), per client
//! IP on register and login, per OAuth client on the token endpoint. Every limit that applies
//! to a request is checked before any is counted. With `redis_url` the state is shared by every
//! instance (one atomic script per decision); if Redis cannot be reached the limiter falls back
//! to per-instance state, logs it once, counts it in a metric, and keeps serving.

mod bounded;
pub mod gcra;
pub mod lockout;
mod redis_store;

use crate::clock::Clock;
use crate::error::ApiError;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use gcra::{Decision, Micros, Quota};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

/// One limit to check: its storage key and quota.
#[derive(Debug, Clone)]
pub struct Limit {
    pub key: String,
    pub quota: Quota,
}

/// Per-instance limiter state, bounded (SPEC §7): an entry whose allowance is full again
/// (TAT ≤ now) means nothing and is dropped, and past `LOCAL_ENTRIES_MAX` entries the oldest
/// go too ([`bounded::make_room`]). Keys are built only from server-issued or verified values
/// (key ids, app ids, client IPs), never from raw request input.
#[derive(Default)]
struct LocalStore {
    tats: Mutex<HashMap<String, gcra::State>>,
}

/// Hard cap on per-instance limiter entries (~100 bytes each).
const LOCAL_ENTRIES_MAX: usize = 100_000;

/// Whether a check counts the request or only asks whether it would be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Yes,
    /// A dry run: nothing is stored (used to refuse a secret guess before it is made).
    No,
}

impl LocalStore {
    fn check(&self, limits: &[Limit], now: Micros, count: Count) -> Vec<Decision> {
        let mut tats = self.tats.lock();
        let checks: Vec<(Quota, Option<gcra::State>)> =
            limits.iter().map(|l| (l.quota, tats.get(&l.key).copied())).collect();
        let (decisions, new_tats) = gcra::check_all(&checks, now);
        if let (Some(new_tats), Count::Yes) = (new_tats, count) {
            for (l, t) in limits.iter().zip(new_tats) {
                if !tats.contains_key(&l.key) {
                    // TAT ≤ now: the allowance is full again; the TAT itself says how old.
                    bounded::make_room(&mut tats, LOCAL_ENTRIES_MAX, |(tat, _)| *tat <= now, |(tat, _)| *tat);
                }
                tats.insert(l.key.clone(), (t, l.quota.emission_interval()));
            }
        }
        decisions
    }

    fn len(&self) -> usize {
        self.tats.lock().len()
    }
}

pub struct RateLimiter {
    local: LocalStore,
    /// Per-account sign-in lockout (SPEC §1), per instance; Redis when configured.
    lockouts: lockout::LocalLockouts,
    redis: Option<redis_store::RedisStore>,
    clock: Arc<Clock>,
    /// Whether the last Redis call failed (to log the change once, not per request).
    redis_failing: AtomicBool,
    /// Redis is not tried again before this time (µs) after a failure.
    redis_retry_at: AtomicI64,
}

/// How long to stay on per-instance limits after Redis fails before trying it again.
const REDIS_RETRY_AFTER_US: Micros = 1_000_000;

impl RateLimiter {
    pub fn local(clock: Arc<Clock>) -> RateLimiter {
        RateLimiter {
            local: LocalStore::default(),
            lockouts: lockout::LocalLockouts::default(),
            redis: None,
            clock,
            redis_failing: AtomicBool::new(false),
            redis_retry_at: AtomicI64::new(0),
        }
    }

    /// Shared limits in Redis at `url`. Connecting is lazy: an unreachable Redis at start-up
    /// is the same as one that goes away later.
    pub fn with_redis(url: &str, clock: Arc<Clock>) -> Result<RateLimiter, String> {
        let mut limiter = RateLimiter::local(clock);
        limiter.redis = Some(redis_store::RedisStore::new(url)?);
        Ok(limiter)
    }

    /// Check `limits` together; all count or none does.
    pub async fn check(&self, limits: &[Limit]) -> Vec<Decision> {
        self.check_counting(limits, Count::Yes).await
    }

    /// Check `limits` together, counting the request or not (`Count::No`: a dry run).
    pub async fn check_counting(&self, limits: &[Limit], count: Count) -> Vec<Decision> {
        let now = self.clock.now_us();
        if let Some(redis) = self.shared(now) {
            if let Some(d) = self.settle(now, redis.check(limits, count).await) {
                return d;
            }
        }
        self.local.check(limits, now, count)
    }

    /// Redis, unless it failed less than a second ago (then per-instance state is used, and
    /// counted as a fallback).
    fn shared(&self, now: Micros) -> Option<&redis_store::RedisStore> {
        let redis = self.redis.as_ref()?;
        if now >= self.redis_retry_at.load(Ordering::Relaxed) {
            return Some(redis);
        }
        metrics::counter!("quota_ratelimit_redis_fallback_total").increment(1);
        None
    }

    /// What a Redis call answered: `Some` (and a log line if Redis just came back), or `None`
    /// after a failure (logged once, counted, and Redis left alone for a second): the caller
    /// then uses per-instance state.
    fn settle<T>(&self, now: Micros, answer: Result<T, String>) -> Option<T> {
        match answer {
            Ok(value) => {
                if self.redis_failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!("rate limiter: Redis is reachable again; limits are shared across instances");
                }
                Some(value)
            }
            Err(e) => {
                self.redis_retry_at.store(now + REDIS_RETRY_AFTER_US, Ordering::Relaxed);
                if !self.redis_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "rate limiter: Redis unreachable; using per-instance limits until it is back");
                }
                metrics::counter!("quota_ratelimit_redis_fallback_total").increment(1);
                None
            }
        }
    }

    /// How many limiter entries this instance holds in memory (rate limits and lockouts).
    pub fn local_entries(&self) -> usize {
        self.local.len() + self.lockouts.tracked()
    }
}

/// Check one limit outside `/v1` (per IP on register and login, per client on the token
/// endpoint): 429 `rate_limit_exceeded` with the headers when refused.
pub async fn check_one(limiter: &RateLimiter, key: String, per_minute: u32) -> Result<(), ApiError> {
    check_one_counting(limiter, key, per_minute, Count::Yes).await
}

/// As [`check_one`], counting the request or not.
pub async fn check_one_counting(
    limiter: &RateLimiter,
    key: String,
    per_minute: u32,
    count: Count,
) -> Result<(), ApiError> {
    let decisions = limiter.check_counting(&[Limit { key, quota: Quota::per_minute(per_minute) }], count).await;
    match decisions.first() {
        Some(d) if !d.allowed => {
            let mut e = refusal(d);
            e.rate_limit = Some(Box::new(*d));
            Err(e)
        }
        _ => Ok(()),
    }
}

/// The decision shown to the client: the most restrictive of those checked.
pub fn shown(decisions: &[Decision]) -> Option<Decision> {
    decisions.iter().copied().min_by_key(|d| (d.allowed, d.remaining))
}

fn ceil_secs(us: Micros) -> i64 {
    (us.max(0) + 999_999) / 1_000_000
}

/// `X-RateLimit-*` and the IETF draft pair (`RateLimit-Policy`, `RateLimit`, draft-07 syntax).
pub fn apply_headers(headers: &mut HeaderMap, d: &Decision, window_secs: i64, now_unix: i64) {
    let reset_in = ceil_secs(d.reset_after_us);
    let pairs = [
        ("x-ratelimit-limit", d.limit.to_string()),
        ("x-ratelimit-remaining", d.remaining.to_string()),
        ("x-ratelimit-reset", (now_unix + reset_in).to_string()),
        ("ratelimit-policy", format!("{};w={window_secs}", d.limit)),
        ("ratelimit", format!("limit={}, remaining={}, reset={reset_in}", d.limit, d.remaining)),
    ];
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

/// 429 `rate_limit_exceeded` with `Retry-After`.
pub fn refusal(d: &Decision) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
        format!("rate limit of {} requests per minute exceeded", d.limit),
    )
    .with_hint("retry after the number of seconds in Retry-After; nothing was charged");
    e.retry_after = Some(ceil_secs(d.retry_after_us).max(1) as u64);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_limits_refill_on_the_injected_clock() {
        let clock = Arc::new(Clock::manual(1_000_000_000));
        let limiter = RateLimiter::local(clock.clone());
        let limit = [Limit { key: "k".into(), quota: Quota::per_minute(2) }];
        assert!(limiter.check(&limit).await[0].allowed);
        assert!(limiter.check(&limit).await[0].allowed);
        let refused = limiter.check(&limit).await[0];
        assert!(!refused.allowed);
        assert_eq!(refusal(&refused).retry_after, Some(30));
        clock.advance(std::time::Duration::from_micros(29_999_999));
        assert!(!limiter.check(&limit).await[0].allowed);
        clock.advance(std::time::Duration::from_micros(1));
        assert!(limiter.check(&limit).await[0].allowed);
    }

    #[tokio::test]
    async fn a_flood_of_distinct_keys_stays_under_the_hard_cap() {
        let clock = Arc::new(Clock::manual(1_000_000_000));
        let limiter = RateLimiter::local(clock.clone());
        // Every entry still refilling (none has expired): only the cap bounds the table.
        for i in 0..(LOCAL_ENTRIES_MAX * 2 + 7) {
            let limit = [Limit {
                key: format!("ip:login:10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                quota: Quota::per_minute(5),
            }];
            assert!(limiter.check(&limit).await[0].allowed);
        }
        assert!(limiter.local_entries() <= LOCAL_ENTRIES_MAX, "{} entries", limiter.local_entries());
        // The newest keys are kept (the oldest went): the last one is still counted.
        let last = LOCAL_ENTRIES_MAX * 2 + 6;
        let key = format!("ip:login:10.{}.{}.{}", last >> 16, (last >> 8) & 255, last & 255);
        let limit = [Limit { key, quota: Quota::per_minute(1) }];
        assert!(!limiter.check(&limit).await[0].allowed, "its state survived the evictions");
    }

    #[tokio::test]
    async fn entries_whose_allowance_is_full_again_are_dropped_first() {
        let clock = Arc::new(Clock::manual(1_000_000_000));
        let limiter = RateLimiter::local(clock.clone());
        for i in 0..LOCAL_ENTRIES_MAX {
            limiter.check(&[Limit { key: format!("old{i}"), quota: Quota::per_minute(60) }]).await;
        }
        clock.advance(std::time::Duration::from_secs(2));
        limiter.check(&[Limit { key: "new".into(), quota: Quota::per_minute(60) }]).await;
        assert_eq!(limiter.local_entries(), 1, "every refilled entry went at once");
    }

    #[test]
    fn headers_name_limit_remaining_and_reset() {
        let d = Decision { allowed: true, limit: 100, remaining: 42, reset_after_us: 34_800_000, retry_after_us: 0 };
        let mut h = HeaderMap::new();
        apply_headers(&mut h, &d, 60, 1_000);
        assert_eq!(h["x-ratelimit-limit"], "100");
        assert_eq!(h["x-ratelimit-remaining"], "42");
        assert_eq!(h["x-ratelimit-reset"], "1035");
        assert_eq!(h["ratelimit-policy"], "100;w=60");
        assert_eq!(h["ratelimit"], "limit=100, remaining=42, reset=35");
    }
}
