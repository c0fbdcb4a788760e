//! The server's clock for expiry decisions (OAuth codes and tokens). Real time plus an offset
//! that tests move forward, so expiry is tested deterministically instead of by sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        quota_store::now_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Move this clock forward (tests only: production never calls it).
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX / 2), Ordering::Relaxed);
    }
}
