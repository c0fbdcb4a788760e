//! The ledger engine against a real SQLite file: holds, settlement, idempotent ids, group
//! commit under concurrency, other processes' transfers, and verify.

use quota_core::{AccountId, Credits, PlatformAccount, Transfer, TransferKind};
use quota_store::{Ledger, LedgerConfig, LedgerError, OutboxEvent, Settlement, Store, StoreConfig};
use std::sync::Arc;

async fn open(dir: &tempfile::TempDir) -> Store {
    open_at(&quota_store::testing::fresh_database_url(dir.path()).await).await
}

/// The database at `url` (a second process's view of it).
async fn open_at(url: &str) -> Store {
    Store::open_and_migrate(&StoreConfig { database_url: url.to_string(), ..Default::default() }).await.unwrap()
}

fn t(id: &str, from: AccountId, to: AccountId, amount: i64, kind: TransferKind) -> Transfer {
    quota_core::transfers::restored(id.into(), from, to, Credits::new(amount), kind, "test".into(), 0)
}

fn promo() -> AccountId {
    AccountId::Platform(PlatformAccount::Promotions)
}
fn revenue() -> AccountId {
    AccountId::Platform(PlatformAccount::Revenue)
}

#[tokio::test]
async fn hold_then_settle_charges_exactly_and_frees_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let ledger = Ledger::start(store.clone(), LedgerConfig::default()).await.unwrap();
    let w = AccountId::wallet("usr_a");
    ledger.transfer(t("w1", promo(), w.clone(), 1000, TransferKind::Welcome)).await.unwrap();
    let hold = ledger.hold(&w, Credits::new(600)).await.unwrap();
    assert_eq!(ledger.available(&w).await.unwrap(), Credits::new(400));
    assert!(matches!(ledger.hold(&w, Credits::new(401)).await, Err(LedgerError::Insufficient { .. })));
    let c = ledger
        .settle(
            hold,
            Settlement {
                transfers: vec![t("c1", w.clone(), revenue(), 250, TransferKind::UsageCharge)],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(c.balance_of(&w), Some(Credits::new(750)));
    assert_eq!(ledger.available(&w).await.unwrap(), Credits::new(750));
    assert_eq!(ledger.open_holds(), 0);
    assert_eq!(store.balance(&w).await.unwrap(), 750);
    assert_eq!(store.balance(&revenue()).await.unwrap(), 250);
    assert!(store.verify_ledger().await.unwrap().ok());
}

#[tokio::test]
async fn dropping_a_hold_releases_it() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::start(open(&dir).await, LedgerConfig::default()).await.unwrap();
    let w = AccountId::wallet("usr_b");
    ledger.transfer(t("w1", promo(), w.clone(), 100, TransferKind::Welcome)).await.unwrap();
    let hold = ledger.hold(&w, Credits::new(100)).await.unwrap();
    assert_eq!(ledger.available(&w).await.unwrap(), Credits::new(0));
    drop(hold);
    // On PostgreSQL the release is queued to the writer; a flush waits for it.
    ledger.flush().await.unwrap();
    assert_eq!(ledger.available(&w).await.unwrap(), Credits::new(100));
}

#[tokio::test]
async fn the_same_transfer_id_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let ledger = Ledger::start(store.clone(), LedgerConfig::default()).await.unwrap();
    let w = AccountId::wallet("usr_c");
    let first = ledger.transfer(t("same", promo(), w.clone(), 500, TransferKind::Welcome)).await.unwrap();
    let again = ledger.transfer(t("same", promo(), w.clone(), 500, TransferKind::Welcome)).await.unwrap();
    assert_eq!(first.duplicates, 0);
    assert_eq!(again.duplicates, 1);
    assert_eq!(ledger.balance(&w).await.unwrap(), Credits::new(500));
    assert_eq!(store.balance(&w).await.unwrap(), 500);
    let report = store.verify_ledger().await.unwrap();
    assert_eq!(report.transfers, 1);
}

#[tokio::test]
async fn outbox_events_commit_with_their_transfer_and_never_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let ledger = Ledger::start(store.clone(), LedgerConfig::default()).await.unwrap();
    let dev = AccountId::wallet("usr_dev");
    let user = AccountId::wallet("usr_user");
    ledger.transfer(t("w1", promo(), dev.clone(), 100, TransferKind::Welcome)).await.unwrap();
    let event = |id: &str| OutboxEvent {
        id: id.into(),
        kind: "balance.updated".into(),
        developer_id: "usr_dev".into(),
        data: serde_json::json!({"amount": 40}),
        sandbox: false,
        created_at_ms: 0,
        endpoint_id: None,
    };
    let f = || t("fund1", dev.clone(), user.clone(), 40, TransferKind::Funding);
    ledger.transfer_with_events(f(), vec![event("evt_1")]).await.unwrap();
    // The same transfer again (a replay) writes no second event, even under a new event id.
    let again = ledger.transfer_with_events(f(), vec![event("evt_2")]).await.unwrap();
    assert_eq!(again.duplicates, 1);
    // A refused transfer writes none.
    let refused = ledger
        .transfer_with_events(t("fund2", dev.clone(), user, 61, TransferKind::Funding), vec![event("evt_3")])
        .await;
    assert!(matches!(refused, Err(LedgerError::Insufficient { .. })));
    let ids: Vec<String> =
        quota_store::on_pool!(store.pool(), |p| sqlx::query_scalar("SELECT id FROM events ORDER BY seq")
            .fetch_all(p)
            .await
            .unwrap());
    assert_eq!(ids, vec!["evt_1".to_string()]);
    assert_eq!(store.balance(&dev).await.unwrap(), 60);
}

#[tokio::test]
async fn a_wallet_debit_beyond_the_balance_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let ledger = Ledger::start(store.clone(), LedgerConfig::default()).await.unwrap();
    let a = AccountId::wallet("usr_d");
    let b = AccountId::wallet("usr_e");
    ledger.transfer(t("w1", promo(), a.clone(), 100, TransferKind::Welcome)).await.unwrap();
    let err = ledger.transfer(t("f1", a.clone(), b.clone(), 101, TransferKind::Funding)).await.unwrap_err();
    assert!(matches!(err, LedgerError::Insufficient { .. }));
    assert_eq!(store.verify_ledger().await.unwrap().transfers, 1);
    assert!(matches!(
        ledger.transfer(t("bad", a.clone(), b, 0, TransferKind::Funding)).await,
        Err(LedgerError::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_holds_never_overspend() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let ledger = Ledger::start(store.clone(), LedgerConfig::default()).await.unwrap();
    let w = AccountId::wallet("usr_f");
    ledger.transfer(t("w1", promo(), w.clone(), 50 * 7, TransferKind::Welcome)).await.unwrap();
    let wins = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (ledger, w, wins) = (ledger.clone(), w.clone(), wins.clone());
        tasks.push(tokio::spawn(async move {
            if let Ok(hold) = ledger.hold(&w, Credits::new(7)).await {
                tokio::task::yield_now().await;
                ledger
                    .settle(
                        hold,
                        Settlement {
                            transfers: vec![t(&format!("c{i}"), w.clone(), revenue(), 7, TransferKind::UsageCharge)],
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                wins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(wins.load(std::sync::atomic::Ordering::SeqCst), 50);
    assert_eq!(store.balance(&w).await.unwrap(), 0);
    let report = store.verify_ledger().await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.transfers, 51);
}

#[tokio::test]
async fn another_process_credit_reaches_the_cached_balance() {
    let dir = tempfile::tempdir().unwrap();
    let url = quota_store::testing::fresh_database_url(dir.path()).await;
    let store = open_at(&url).await;
    let ledger = Ledger::start(store.clone(), LedgerConfig::default()).await.unwrap();
    let w = AccountId::wallet("usr_g");
    assert_eq!(ledger.balance(&w).await.unwrap(), Credits::new(0));
    // The admin CLI writes directly, as another process would.
    let other = open_at(&url).await;
    other
        .commit_direct(
            &[t("cli1", AccountId::Platform(PlatformAccount::Adjustments), w.clone(), 999, TransferKind::AdminCredit)],
            "cli",
        )
        .await
        .unwrap();
    // The next batch the writer runs catches up first; a flush forces one.
    ledger.flush().await.unwrap();
    assert_eq!(ledger.balance(&w).await.unwrap(), Credits::new(999));
    // And the cached balance is not counted twice by later loads.
    ledger.transfer(t("w2", promo(), w.clone(), 1, TransferKind::Welcome)).await.unwrap();
    assert_eq!(ledger.balance(&w).await.unwrap(), Credits::new(1000));
    assert_eq!(store.balance(&w).await.unwrap(), 1000);
}

#[tokio::test]
async fn a_settlement_above_its_hold_is_refused_and_a_negative_wallet_fails_verify() {
    // SPEC §4.3(3): the caller caps a charge at its hold; a settlement that debits the held
    // account more is refused before anything is written (and the planner asserts it again).
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let ledger = Ledger::start(store.clone(), LedgerConfig::default()).await.unwrap();
    let w = AccountId::wallet("usr_h");
    ledger.transfer(t("w1", promo(), w.clone(), 10, TransferKind::Welcome)).await.unwrap();
    let hold = ledger.hold(&w, Credits::new(10)).await.unwrap();
    let settled = ledger
        .settle(
            hold,
            Settlement {
                transfers: vec![t("c1", w.clone(), revenue(), 15, TransferKind::UsageCharge)],
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(settled, Err(LedgerError::AboveHold { .. })), "{settled:?}");
    // On PostgreSQL the release is queued to the writer; a flush waits for it.
    ledger.flush().await.unwrap();
    assert_eq!(ledger.balance(&w).await.unwrap(), Credits::new(10));
    assert_eq!(ledger.held(&w).await.unwrap(), Credits::new(0), "the refused settlement's hold is released");
    let report = store.verify_ledger().await.unwrap();
    assert!(report.ok());
    assert_eq!(report.transfers, 1);
    // A wallet below zero (here made by an operator's transfer from it) fails verify.
    quota_store::on_pool!(store.pool(), |p| sqlx::query(
        "INSERT INTO transfers (id, from_account, to_account, amount, kind, cause, created_at, origin) \
         VALUES ('x1', $1, 'platform:revenue', 15, 'usage_charge', 'test', 0, 'test')"
    )
    .bind(w.to_string())
    .execute(p)
    .await
    .map(|_| ())
    .unwrap());
    let report = store.verify_ledger().await.unwrap();
    assert!(!report.ok());
    assert_eq!(report.negative_accounts, vec![(w.to_string(), -5)]);
}

#[tokio::test]
async fn a_hold_is_refused_only_when_the_available_balance_is_short_or_the_balance_is_negative() {
    // SPEC §4.3.2, §4.5. The url is shared so that another process can make a refund debt.
    let dir = tempfile::tempdir().unwrap();
    let url = quota_store::testing::fresh_database_url(dir.path()).await;
    let store = open_at(&url).await;
    let ledger = Ledger::start(store.clone(), LedgerConfig::default()).await.unwrap();
    let w = AccountId::wallet("usr_rule");
    // An empty wallet may still start a free request (the old rule refused any hold at 0).
    drop(ledger.hold(&w, Credits::new(0)).await.unwrap());
    assert!(matches!(ledger.hold(&w, Credits::new(1)).await, Err(LedgerError::Insufficient { .. })));
    ledger.transfer(t("w1", promo(), w.clone(), 10, TransferKind::Welcome)).await.unwrap();
    // The whole available balance can be held, and not a credit more.
    let first = ledger.hold(&w, Credits::new(6)).await.unwrap();
    let second = ledger.hold(&w, Credits::new(4)).await.unwrap();
    match ledger.hold(&w, Credits::new(1)).await {
        Err(LedgerError::Insufficient { available, needed }) => {
            assert_eq!((available, needed), (Credits::new(0), Credits::new(1)))
        }
        other => panic!("expected Insufficient, got {:?}", other.map(|h| h.amount())),
    }
    drop((first, second));
    ledger.flush().await.unwrap();
    // A debt (another process reverses more than the wallet holds, as a refunded top-up's
    // reversal would) starts no request, not even a free one.
    let other = open_at(&url).await;
    let reversal =
        t("rev1", w.clone(), AccountId::Platform(PlatformAccount::PaymentsClearing), 15, TransferKind::Topup);
    other.commit_direct(&[reversal], "cli").await.unwrap();
    ledger.flush().await.unwrap();
    assert_eq!(ledger.balance(&w).await.unwrap(), Credits::new(-5));
    assert!(matches!(ledger.hold(&w, Credits::new(0)).await, Err(LedgerError::Insufficient { .. })));
}

#[tokio::test]
async fn a_hold_never_settled_expires_and_frees_its_credits() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough for the check below to see the hold even on a loaded machine (on PostgreSQL
    // it is a round trip away); short enough to wait for.
    let config = LedgerConfig {
        hold_ttl: std::time::Duration::from_millis(1_000),
        tick: std::time::Duration::from_millis(5),
        ..Default::default()
    };
    let ledger = Ledger::start(open(&dir).await, config).await.unwrap();
    let w = AccountId::wallet("usr_stuck");
    ledger.transfer(t("w1", promo(), w.clone(), 100, TransferKind::Welcome)).await.unwrap();
    // A request stuck past every timeout: its hold is neither settled nor dropped.
    std::mem::forget(ledger.hold(&w, Credits::new(100)).await.unwrap());
    assert_eq!(ledger.available(&w).await.unwrap(), Credits::new(0));
    // The writer's tick frees it; poll for that, bounded.
    let mut freed = false;
    for _ in 0..1_000 {
        if ledger.open_holds() == 0 {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(freed, "the expired hold was not released");
    assert_eq!(ledger.available(&w).await.unwrap(), Credits::new(100));
    assert_eq!(ledger.balance(&w).await.unwrap(), Credits::new(100), "expiry charges nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_run_by_two_instances_at_once_folds_each_record_once_and_keeps_those_owing_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let url = quota_store::testing::fresh_database_url(dir.path()).await;
    let (a, b) = (open_at(&url).await, open_at(&url).await);
    let ledger = Ledger::start(a.clone(), LedgerConfig::default()).await.unwrap();
    const DAY: i64 = quota_store::usage::DAY_MS;
    for i in 0..50 {
        let record = quota_store::usage::UsageRecord {
            id: format!("req_{i}"),
            client_request_id: None,
            created_at: DAY + i,
            developer_id: "usr_dev".into(),
            key_id: Some("key_1".into()),
            app_id: None,
            payer_account: "wallet:usr_dev".into(),
            billing_mode: "developer".into(),
            model: "gpt-4o-mini".into(),
            provider: "openai".into(),
            input_tokens: 10,
            cached_tokens: 0,
            cache_write_tokens: 0,
            output_tokens: 5,
            base_cost: 7,
            markup: 0,
            total: 7,
            status: "succeeded".into(),
            latency_ms: 1,
            sandbox: false,
            // Every tenth record still owes its `usage.completed` event.
            pending_event: (i % 10 == 0).then(|| format!("evt_{i}")),
        };
        ledger.record(record).await.unwrap();
    }
    ledger.flush().await.unwrap();
    let folded = |store: Store| async move {
        let rows = store.usage_aggregates("usr_dev", 0, 10 * DAY).await.unwrap();
        (rows.iter().map(|r| r.requests).sum::<i64>(), rows.iter().map(|r| r.total).sum::<i64>())
    };
    // Both instances' retention jobs fire at the same moment; records owing an event stay.
    let (ra, rb) = tokio::join!(a.expire_usage(3 * DAY), b.expire_usage(3 * DAY));
    assert_eq!(ra.unwrap() + rb.unwrap(), 45, "each record deleted once, none owing an event");
    assert_eq!(folded(a.clone()).await, (50, 350), "raw and folded records each counted once");
    // Once the events are in the outbox, the next run folds the rest, still once.
    assert_eq!(a.dispatch_events(4 * DAY, 500).await.unwrap(), 5);
    let events: i64 = quota_store::on_pool!(a.pool(), |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE type = 'usage.completed' AND id LIKE 'evt_%'"
    )
    .fetch_one(p)
    .await
    .unwrap());
    assert_eq!(events, 5);
    let (ra, rb) = tokio::join!(a.expire_usage(3 * DAY), b.expire_usage(3 * DAY));
    assert_eq!(ra.unwrap() + rb.unwrap(), 5);
    assert_eq!(folded(a.clone()).await, (50, 350), "folded once");
}

#[tokio::test]
async fn the_wal_starts_over_under_continuous_writes() {
    // Back-to-back commits leave no moment fully checkpointed, so SQLite alone would append to
    // the WAL forever. Keep the writer busy until the checkpointer has made the WAL start over
    // twice (bounded: 60 s). Without the RESTART checkpoint this never happens.
    if quota_store::testing::on_postgres() {
        eprintln!("skipped the_wal_starts_over_under_continuous_writes on PostgreSQL: it has no SQLite WAL");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let restart_frames = 200;
    let config = LedgerConfig { wal_restart_frames: restart_frames, ..LedgerConfig::default() };
    let ledger = Ledger::start(open(&dir).await, config).await.unwrap();
    let w = AccountId::wallet("usr_wal");
    let started = std::time::Instant::now();
    let mut n = 0;
    while ledger.wal_restarts() < 2 {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "no WAL restart after {n} rounds of writes");
        let round: Vec<_> = (0..20)
            .map(|i| {
                let (ledger, w, id) = (ledger.clone(), w.clone(), format!("wal-{n}-{i}"));
                tokio::spawn(async move { ledger.transfer(t(&id, promo(), w, 1, TransferKind::Welcome)).await })
            })
            .collect();
        for r in round {
            r.await.unwrap().unwrap();
        }
        n += 1;
    }
    assert_eq!(ledger.available(&w).await.unwrap(), Credits::new(n * 20));
}

#[tokio::test]
async fn the_ledger_runs_on_an_in_memory_database() {
    // `sqlite::memory:` (StoreConfig): the writer's own connection must open the pool's
    // database, not a second, empty one.
    if quota_store::testing::on_postgres() {
        eprintln!("skipped the_ledger_runs_on_an_in_memory_database on PostgreSQL");
        return;
    }
    let store = open_at("sqlite::memory:").await;
    let ledger = Ledger::start(store.clone(), LedgerConfig::default()).await.unwrap();
    let w = AccountId::wallet("usr_mem");
    ledger.transfer(t("w1", promo(), w.clone(), 100, TransferKind::Welcome)).await.unwrap();
    let hold = ledger.hold(&w, Credits::new(40)).await.unwrap();
    let settlement = Settlement {
        transfers: vec![t("c1", w.clone(), revenue(), 30, TransferKind::UsageCharge)],
        ..Default::default()
    };
    ledger.settle(hold, settlement).await.unwrap();
    assert_eq!(store.balance(&w).await.unwrap(), 70);
    assert!(store.verify_ledger().await.unwrap().ok());
}
