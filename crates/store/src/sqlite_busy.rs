//! How a SQLite connection waits for another's write lock: a busy handler that retries every
//! 50 µs at first, instead of SQLite's own `busy_timeout` schedule.
//!
//! SQLite's schedule sleeps 1, 2, 5, 10, 15, 20, 25 … 100 ms between tries, so a ledger commit
//! that finds the webhook worker's short transaction in progress waited milliseconds after the
//! lock was free (the bench's p99 at one connection went from 0.7 to 4 ms with webhooks on).
//! Here: 50 µs steps for the first 5 ms of a wait, then 1 ms steps, giving up (`SQLITE_BUSY`)
//! after [`GIVE_UP_AFTER`] like the 10 s `busy_timeout` it replaces. Every retry is counted
//! (`quota_sqlite_busy_retries_total`, [`retries`]).

use sqlx::SqliteConnection;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Total wait before a connection gives up on a lock.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(10);
/// Short steps: the length of each and how many.
const SHORT_STEP: Duration = Duration::from_micros(50);
const SHORT_STEPS: u32 = 100;
/// Long steps after the short ones.
const LONG_STEP: Duration = Duration::from_millis(1);

static RETRIES: AtomicU64 = AtomicU64::new(0);

/// How many times any connection of this process waited for a lock and tried again.
pub fn retries() -> u64 {
    RETRIES.load(Ordering::Relaxed)
}

/// The pause before retry number `count` (0-based), or `None`: give up.
pub fn pause_before_retry(count: u32) -> Option<Duration> {
    let short_total = SHORT_STEP * SHORT_STEPS;
    if count < SHORT_STEPS {
        return Some(SHORT_STEP);
    }
    let long_done = LONG_STEP * (count - SHORT_STEPS);
    if short_total + long_done >= GIVE_UP_AFTER {
        return None;
    }
    Some(LONG_STEP)
}

/// SQLite calls this on the connection's own thread when a lock is taken: nonzero means try
/// again. It sleeps that thread only (a sqlx connection has a thread of its own).
extern "C" fn on_busy(_: *mut c_void, count: c_int) -> c_int {
    c_int::from(wait_or_give_up(count))
}

/// The handler itself, for `rusqlite`'s `busy_handler` too (the ledger writer's connection):
/// sleep the calling thread before retry number `count` and say to retry, or give up.
pub(crate) fn wait_or_give_up(count: c_int) -> bool {
    match pause_before_retry(u32::try_from(count).unwrap_or(u32::MAX)) {
        Some(pause) => {
            RETRIES.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("quota_sqlite_busy_retries_total").increment(1);
            std::thread::sleep(pause);
            true
        }
        None => false,
    }
}

/// Install the handler on `conn` (replacing its `busy_timeout`).
pub async fn install(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is this connection's open handle, held locked (no other use meanwhile);
    // `on_busy` is a plain function that never unwinds and ignores its (null) argument.
    let rc = unsafe { libsqlite3_sys::sqlite3_busy_handler(db, Some(on_busy), std::ptr::null_mut()) };
    if rc != libsqlite3_sys::SQLITE_OK {
        return Err(sqlx::Error::Protocol(format!("sqlite3_busy_handler failed: {rc}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_are_short_then_bounded_and_give_up_after_ten_seconds() {
        let mut waited = Duration::ZERO;
        let mut count = 0;
        while let Some(p) = pause_before_retry(count) {
            assert!(p <= Duration::from_millis(1), "retry {count} pauses {p:?}");
            waited += p;
            count += 1;
        }
        assert!(waited >= GIVE_UP_AFTER && waited < GIVE_UP_AFTER + LONG_STEP, "gave up after {waited:?}");
        // The first 5 ms of a wait are tried every 50 µs.
        assert!((0..100).all(|c| pause_before_retry(c) == Some(Duration::from_micros(50))));
    }
}
