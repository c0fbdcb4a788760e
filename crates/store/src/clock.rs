//! Wall-clock time in the units the database stores (Unix milliseconds), and RFC 3339 text.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Now, in Unix microseconds (for time-ordered ids).
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Unix milliseconds as an RFC 3339 UTC string with millisecond precision.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

pub use quota_core::calendar::{civil_from_days, days_from_civil};

#[cfg(test)]
mod tests {
    #[test]
    fn days_and_dates_round_trip() {
        for z in [-1000, 0, 59, 60, 10_956, 20_000, 30_000] {
            let (y, m, d) = super::civil_from_days(z);
            assert_eq!(super::days_from_civil(y, m, d), z);
        }
        assert_eq!(super::days_from_civil(2024, 3, 1), 19_783);
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(1_761_955_200_123), "2025-11-01T00:00:00.123Z");
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
