//! GCRA (the generic cell rate algorithm), pure: a limit of `limit` requests per `period` is a
//! burst of up to `limit`, refilled continuously (one request every `period / limit`). The
//! state of one limiter is a single number, the theoretical arrival time (TAT). Time is passed
//! in, so tests drive it exactly.

/// Microseconds.
pub type Micros = i64;

/// One limit: `limit` requests per `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub period_us: Micros,
}

impl Quota {
    pub fn per_minute(limit: u32) -> Quota {
        Quota { limit: limit.max(1), period_us: 60_000_000 }
    }

    /// Time between two requests at the steady rate.
    pub fn emission_interval(&self) -> Micros {
        (self.period_us / i64::from(self.limit.max(1))).max(1)
    }

    /// The burst tolerance: `limit` whole intervals. Not `period_us`: the interval is rounded
    /// down to a microsecond, and a tolerance of the whole period would then let one request
    /// more than `limit` through now and then (60 s / 39 leaves 21 µs over).
    pub fn burst_us(&self) -> Micros {
        self.emission_interval() * i64::from(self.limit.max(1))
    }
}

/// What a check decided, with the numbers the response headers carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    /// Requests that could still be made right now.
    pub remaining: u32,
    /// Microseconds until the allowance is full again.
    pub reset_after_us: Micros,
    /// When refused: microseconds until one request would be allowed.
    pub retry_after_us: Micros,
}

/// What is stored per limiter: the TAT and the emission interval it was computed with.
pub type State = (Micros, Micros);

/// The stored TAT in terms of the quota's current interval. When a limit changes (a key's
/// override raised or lowered), the requests already used in the current burst carry over:
/// `used = (tat − now) / old_interval`, and the new TAT is `now + used × new_interval`.
pub fn rescale(state: Option<State>, interval: Micros, now: Micros) -> Micros {
    match state {
        None => now,
        Some((tat, old)) if old == interval || old <= 0 || tat <= now => tat.max(now),
        Some((tat, old)) => now + (((tat - now) as i128 * interval as i128) / old as i128) as Micros,
    }
}

/// Decide a request at `now` against the stored state (None: never seen). Returns the decision
/// and, when allowed, the TAT to store (with `quota.emission_interval()`).
pub fn check(quota: Quota, state: Option<State>, now: Micros) -> (Decision, Option<Micros>) {
    let t = quota.emission_interval();
    let tat = rescale(state, t, now);
    let new_tat = tat + t;
    let allow_at = new_tat - quota.burst_us();
    if now < allow_at {
        let remaining = 0;
        let decision = Decision {
            allowed: false,
            limit: quota.limit,
            remaining,
            reset_after_us: tat - now,
            retry_after_us: allow_at - now,
        };
        return (decision, None);
    }
    let remaining = ((now - allow_at) / t).clamp(0, i64::from(quota.limit)) as u32;
    let decision =
        Decision { allowed: true, limit: quota.limit, remaining, reset_after_us: new_tat - now, retry_after_us: 0 };
    (decision, Some(new_tat))
}

/// Check several limits together: allowed only if every one allows, and then every one counts
/// (no partial increments). Returns the decisions (the most restrictive first) and new TATs.
pub fn check_all(checks: &[(Quota, Option<State>)], now: Micros) -> (Vec<Decision>, Option<Vec<Micros>>) {
    let results: Vec<(Decision, Option<Micros>)> = checks.iter().map(|(q, tat)| check(*q, *tat, now)).collect();
    let allowed = results.iter().all(|(d, _)| d.allowed);
    let decisions: Vec<Decision> = results.iter().map(|(d, _)| *d).collect();
    if !allowed {
        return (decisions, None);
    }
    (decisions, Some(results.iter().map(|(_, t)| t.expect("allowed checks have a TAT")).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: Micros = 60_000_000;

    #[test]
    fn a_burst_of_exactly_the_limit_passes_then_one_is_refused() {
        let q = Quota::per_minute(100);
        let mut tat = None;
        for i in 0..100 {
            let (d, t) = check(q, tat, 0);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 99 - i);
            tat = t.map(|t| (t, q.emission_interval()));
        }
        let (d, t) = check(q, tat, 0);
        assert!(!d.allowed);
        assert!(t.is_none());
        assert_eq!(d.retry_after_us, 600_000, "one slot refills every 0.6 s");
    }

    #[test]
    fn the_allowance_refills_continuously() {
        let q = Quota::per_minute(60);
        let s = |t: Option<Micros>| t.map(|t| (t, q.emission_interval()));
        let mut tat = None;
        for _ in 0..60 {
            tat = s(check(q, tat, 0).1);
        }
        assert!(!check(q, tat, 999_999).0.allowed);
        let (d, t) = check(q, tat, 1_000_000);
        assert!(d.allowed, "one request per second comes back");
        assert_eq!(d.remaining, 0);
        // After a full minute idle, the whole burst is back.
        let (d, _) = check(q, s(t), 1_000_000 + MIN);
        assert_eq!(d.remaining, 59);
    }

    #[test]
    fn several_limits_count_all_or_nothing() {
        let wide = Quota::per_minute(100);
        let narrow = Quota::per_minute(1);
        let (_, tats) = check_all(&[(wide, None), (narrow, None)], 0);
        let tats = tats.unwrap();
        let wide_state = Some((tats[0], wide.emission_interval()));
        let (d, refused) = check_all(&[(wide, wide_state), (narrow, Some((tats[1], narrow.emission_interval())))], 0);
        assert!(refused.is_none());
        assert!(d[0].allowed && !d[1].allowed);
        // The wide limit was not charged for the refused request.
        let (d, _) = check(wide, wide_state, 0);
        assert_eq!(d.remaining, 98);
    }

    #[test]
    fn a_changed_limit_keeps_the_requests_already_used() {
        let two = Quota::per_minute(2);
        let sixty = Quota::per_minute(60);
        let one = Quota::per_minute(1);
        let mut state = None;
        for _ in 0..2 {
            state = check(two, state, 0).1.map(|t| (t, two.emission_interval()));
        }
        assert!(!check(two, state, 0).0.allowed);
        // Raised to 60/min: 2 of 60 used, so 58 remain at once.
        let (d, t) = check(sixty, state, 0);
        assert!(d.allowed);
        assert_eq!(d.remaining, 57);
        // Lowered to 1/min with 3 used: refused until the excess has drained.
        let state = t.map(|t| (t, sixty.emission_interval()));
        let (d, _) = check(one, state, 0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_us, 3 * MIN);
    }

    #[test]
    fn a_limit_that_does_not_divide_the_minute_never_lets_one_more_through() {
        // The counterexample proptest found: at 39/min the interval rounds down by 21 µs a
        // minute, and a tolerance of the whole period let a 401st request in 556.9 s through.
        let q = Quota::per_minute(39);
        let t = q.emission_interval();
        let mut tat = None;
        let mut passed = 0i64;
        let mut now = 0;
        // Greedy: each request as soon as the limiter allows one.
        while now <= 556_922_881 {
            let (d, new_tat) = check(q, tat, now);
            if d.allowed {
                passed += 1;
                tat = new_tat.map(|x| (x, t));
            } else {
                now += d.retry_after_us;
            }
        }
        assert!(passed <= 39 + 556_922_881 / t, "{passed} passed");
    }

    proptest! {
        /// Between any two passed requests, no more pass than the burst plus what refilled.
        #[test]
        fn never_more_than_the_limit_per_window(limit in 1u32..200, gaps in proptest::collection::vec(0i64..2_000_000, 1..600)) {
            let q = Quota::per_minute(limit);
            let mut tat = None;
            let mut now = 0;
            let mut passed: Vec<Micros> = Vec::new();
            for g in gaps {
                now += g;
                let (d, t) = check(q, tat, now);
                if d.allowed { tat = t.map(|t| (t, q.emission_interval())); passed.push(now); }
            }
            let t = q.emission_interval();
            for i in 0..passed.len() {
                for j in i..passed.len() {
                    let n = (j - i + 1) as i64;
                    prop_assert!(n <= i64::from(limit) + (passed[j] - passed[i]) / t, "{} passed in {} µs at {}/min", n, passed[j] - passed[i], limit);
                }
            }
        }
    }
}
