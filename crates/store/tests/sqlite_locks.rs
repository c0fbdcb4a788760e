//! Waiting for SQLite's write lock: a connection that finds it taken waits through Quota's busy
//! handler (short retries), not SQLite's millisecond sleeps, and gets the lock once it is free.

use quota_store::{sqlite_busy, Store, StoreConfig};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_writer_that_finds_the_lock_taken_retries_through_the_busy_handler_then_writes() {
    if quota_store::testing::on_postgres() {
        eprintln!("skipped: SQLite's lock only");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = quota_store::testing::fresh_database_url(dir.path()).await;
    let store = Store::open_and_migrate(&StoreConfig { database_url: url, ..Default::default() }).await.unwrap();
    let before = sqlite_busy::retries();
    let first = store.pool().begin_write().await.unwrap();
    let second = {
        let store = store.clone();
        tokio::spawn(async move { store.pool().begin_write().await?.commit().await })
    };
    // The second writer is waiting once the handler has been asked to retry (bounded).
    let deadline = Instant::now() + Duration::from_secs(9);
    while sqlite_busy::retries() == before {
        assert!(Instant::now() < deadline, "the busy handler was never called: SQLite's own is installed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!second.is_finished(), "the second writer got the lock while the first held it");
    first.commit().await.unwrap();
    second.await.unwrap().expect("the second writer gets the lock once it is free and commits");
}
