//! The server's one clock, for every time-based decision that tests must control: OAuth code
//! and token expiry, rate-limit refills. In production it is the system clock; tests either
//! shift it (`advance` on a system clock) or freeze it at an exact instant (`manual`) so that
//! expiry and refill are tested without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Clock {
    /// Frozen clocks read `micros` as the time; others add it to the system time.
    frozen: bool,
    micros: AtomicI64,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock stopped at `unix_us` that moves only by `advance`.
    pub fn manual(unix_us: i64) -> Clock {
        Clock { frozen: true, micros: AtomicI64::new(unix_us) }
    }

    /// Now, in Unix microseconds.
    pub fn now_us(&self) -> i64 {
        let v = self.micros.load(Ordering::SeqCst);
        if self.frozen {
            v
        } else {
            quota_store::clock::now_us() as i64 + v
        }
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.now_us().div_euclid(1000)
    }

    /// Move this clock forward (tests only: production never calls it).
    pub fn advance(&self, by: Duration) {
        self.micros.fetch_add(i64::try_from(by.as_micros()).unwrap_or(i64::MAX / 2), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clocks_move_only_when_told() {
        let c = Clock::manual(1_000_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance(Duration::from_micros(1));
        assert_eq!(c.now_us(), 1_000_001);
        let s = Clock::system();
        let before = s.now_ms();
        s.advance(Duration::from_secs(3600));
        assert!(s.now_ms() >= before + 3_600_000);
    }
}
